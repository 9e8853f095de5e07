#![allow(clippy::unwrap_used)]
//! Finite-difference gradient checks for every trainable building block, in f64.
//!
//! candle's fused softmax, RMSNorm and RoPE kernels return no gradient at all; a model built on
//! them would "train" with frozen pieces and no error. Each block here is differentiated by
//! candle's autograd and compared with central differences `(f(x+h) − f(x−h)) / 2h`.

use candle_core::{DType, Device, Tensor, Var};
use hone::model::config::{ModelConfig, RopeScaling};
use hone::model::fused::{self, CausalMask};
use hone::model::ops::{log_softmax_last_dim, softmax_last_dim, softmax_last_dim_composed, Linear, RmsNorm, Rotary};
use hone::model::Model;
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::loss::{logsumexp_last, sft_loss, softplus, target_logps};

const H: f64 = 1e-5;

fn random(shape: &[usize], seed: u64) -> Tensor {
    // A small deterministic generator keeps the test free of global RNG state.
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A scalar objective with non-uniform weights so every output element matters differently.
fn weighted_sum(out: &Tensor) -> Tensor {
    let w = random(out.dims(), 99);
    (out * w).unwrap().sum_all().unwrap()
}

/// Checks d f / d x for every element of every input.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = f(&tensors).backward().unwrap();
    for (k, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name}: input {k} received no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = inputs[k].flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut xs = inputs.to_vec();
                xs[k] = Tensor::from_vec(v, inputs[k].shape(), &Device::Cpu).unwrap();
                f(&xs).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(H) - eval(-H)) / (2.0 * H);
            let err = (numeric - analytic[i]).abs();
            assert!(
                err <= 1e-6 * (1.0 + numeric.abs()),
                "{name}: input {k} element {i}: autograd {} vs finite difference {numeric}",
                analytic[i]
            );
        }
    }
}

#[test]
fn softmax_and_log_softmax_have_true_gradients() {
    let x = random(&[3, 7], 1);
    check("softmax", std::slice::from_ref(&x), |xs| weighted_sum(&softmax_last_dim(&xs[0]).unwrap()));
    check("log_softmax", std::slice::from_ref(&x), |xs| weighted_sum(&log_softmax_last_dim(&xs[0]).unwrap()));
    check("logsumexp", std::slice::from_ref(&x), |xs| weighted_sum(&logsumexp_last(&xs[0]).unwrap()));
    check("softplus", &[(x * 5.0).unwrap()], |xs| weighted_sum(&softplus(&xs[0]).unwrap()));
}

#[test]
fn rms_norm_has_gradients_for_input_and_weight() {
    check("rms_norm", &[random(&[2, 3, 8], 2), random(&[8], 3)], |xs| {
        weighted_sum(&candle_core::Module::forward(&RmsNorm::new(xs[1].clone(), 1e-6), &xs[0]).unwrap())
    });
}

#[test]
fn linear_has_gradients_for_input_weight_and_bias() {
    check("linear", &[random(&[2, 3, 5], 4), random(&[4, 5], 5), random(&[4], 6)], |xs| {
        weighted_sum(&candle_core::Module::forward(&Linear::new(xs[1].clone(), Some(xs[2].clone())), &xs[0]).unwrap())
    });
}

#[test]
fn rotary_embedding_has_gradients_at_an_offset() {
    let rotary = Rotary::new(8, 32, 10_000.0, &RopeScaling::Default, DType::F64, &Device::Cpu).unwrap();
    check("rope", &[random(&[1, 2, 5, 8], 7)], |xs| weighted_sum(&rotary.apply(&xs[0], 3).unwrap()));
}

fn tiny_config(arch: &str, tied: bool) -> ModelConfig {
    let json = serde_json::json!({
        "architectures": [arch], "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 16,
        "tie_word_embeddings": tied
    });
    ModelConfig::from_value(json, std::path::Path::new("tiny/config.json")).unwrap()
}

fn tiny_batch() -> TokenBatch {
    let seqs = [
        Sequence::with_completion_from(vec![1, 4, 2, 9, 3, 7], 2),
        Sequence::with_completion_from(vec![5, 6, 10, 2], 1),
    ];
    TokenBatch::new(&seqs, 0, &Device::Cpu).unwrap()
}

/// The whole decoder (attention with GQA, RoPE, RMSNorm, SwiGLU, head) against finite
/// differences on a sample of every parameter, for both families and both head layouts.
#[test]
fn whole_decoder_gradients_match_finite_differences() {
    for (arch, tied) in [("LlamaForCausalLM", true), ("Qwen2ForCausalLM", false)] {
        let model = Model::fresh(tiny_config(arch, tied), &Device::Cpu, DType::F64, 7).unwrap();
        let batch = tiny_batch();
        let loss = || sft_loss(&target_logps(model.decoder(), &batch).unwrap()).unwrap();
        let grads = loss().backward().unwrap();
        for (name, var) in model.parameters() {
            let g: Vec<f64> = grads
                .get(&var)
                .unwrap_or_else(|| panic!("{arch}: {name} got no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base = var.as_tensor().copy().unwrap();
            let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
            // Up to 6 elements per tensor, spread across it.
            let step = (flat.len() / 6).max(1);
            for i in (0..flat.len()).step_by(step) {
                let eval = |delta: f64| {
                    let mut v = flat.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, base.shape(), &Device::Cpu).unwrap()).unwrap();
                    let l = loss().to_scalar::<f64>().unwrap();
                    var.set(&base).unwrap();
                    l
                };
                // Richardson extrapolation of two central differences cancels their h² error term,
                // which the whole decoder's third derivatives can push past the tolerance at h = H.
                let central = |h: f64| (eval(h) - eval(-h)) / (2.0 * h);
                let numeric = (4.0 * central(H / 2.0) - central(H)) / 3.0;
                assert!(
                    (numeric - g[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
                    "{arch} {name}[{i}]: autograd {} vs finite difference {numeric}",
                    g[i]
                );
            }
        }
    }
}

/// Every parameter, in every layer, gets a non-zero gradient from the SFT loss.
#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    for (arch, tied) in [("LlamaForCausalLM", true), ("LlamaForCausalLM", false), ("Qwen2ForCausalLM", false)] {
        let model = Model::fresh(tiny_config(arch, tied), &Device::Cpu, DType::F32, 3).unwrap();
        let params = model.parameters();
        let expected = 1 + 2 * 9 + 1 + usize::from(!tied) + if arch.starts_with("Qwen") { 2 * 3 } else { 0 };
        assert_eq!(params.len(), expected, "{arch} tied={tied}: {:?}", params.iter().map(|p| &p.0).collect::<Vec<_>>());
        let grads = sft_loss(&target_logps(model.decoder(), &tiny_batch()).unwrap()).unwrap().backward().unwrap();
        for (name, var) in &params {
            let g = grads.get(var).unwrap_or_else(|| panic!("{arch}: {name} got no gradient"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{arch} tied={tied}: {name} has a zero gradient");
        }
    }
}

/// Values and input gradients (of the same weighted sum) of two implementations agree.
fn same_as_composed(
    name: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) {
    let run = |f: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors);
        let grads = weighted_sum(&out).backward().unwrap();
        let mut values = vec![out.flatten_all().unwrap().to_vec1::<f64>().unwrap()];
        for v in &vars {
            values.push(grads.get(v).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap());
        }
        values
    };
    let (a, b) = (run(&fused), run(&composed));
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        let what = if k == 0 { "value".to_string() } else { format!("gradient of input {}", k - 1) };
        assert_eq!(x.len(), y.len(), "{name}: {what} sizes");
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{name}: {what}[{i}]: fused {p} vs composed {q}");
        }
    }
}

/// The additive mask the composed attention path uses.
fn additive_mask(s: usize, kv_len: usize, offset: usize, window: usize) -> Tensor {
    let mask: Vec<f64> = (0..s)
        .flat_map(|i| {
            let q = offset + i;
            (0..kv_len).map(move |j| if j > q || q - j >= window { f64::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(mask, (s, kv_len), &Device::Cpu).unwrap()
}

#[test]
fn fused_softmax_matches_composed_and_finite_differences() {
    let x = random(&[2, 3, 7], 11);
    let fused_sm = |xs: &[Tensor]| fused::softmax(&xs[0], 1.0, None).unwrap();
    check("fused softmax", std::slice::from_ref(&x), |xs| weighted_sum(&fused_sm(xs)));
    same_as_composed("softmax", std::slice::from_ref(&x), fused_sm, |xs| softmax_last_dim_composed(&xs[0]).unwrap());
    // Scaled and masked as in attention: 2 stacked query groups of s = 3 rows over kv_len = 7
    // keys, queries at positions 4..7, with and without a sliding window.
    for window in [usize::MAX, 3] {
        let mask = CausalMask { s: 3, offset: 4, window };
        let scale = 0.37;
        let f = |xs: &[Tensor]| fused::softmax(&xs[0], scale, Some(mask)).unwrap();
        check("fused masked softmax", std::slice::from_ref(&x), |xs| weighted_sum(&f(xs)));
        same_as_composed("masked softmax", std::slice::from_ref(&x), f, |xs| {
            let scores = (&xs[0] * scale).unwrap().broadcast_add(&additive_mask(3, 7, 4, window)).unwrap();
            softmax_last_dim_composed(&scores).unwrap()
        });
    }
}

#[test]
fn fused_rms_norm_matches_composed() {
    let inputs = [random(&[2, 3, 19], 12), random(&[19], 13)];
    let norm = |xs: &[Tensor]| RmsNorm::new(xs[1].clone(), 1e-6);
    check("fused rms_norm", &inputs, |xs| weighted_sum(&fused::rms_norm(&xs[0], &xs[1], 1e-6).unwrap()));
    same_as_composed(
        "rms_norm",
        &inputs,
        |xs| candle_core::Module::forward(&norm(xs), &xs[0]).unwrap(),
        |xs| norm(xs).forward_composed(&xs[0]).unwrap(),
    );
}

#[test]
fn fused_rotary_matches_composed_on_strided_input() {
    let rotary = Rotary::new(8, 32, 10_000.0, &RopeScaling::Default, DType::F64, &Device::Cpu).unwrap();
    // [batch, seq, heads, dim] viewed as [batch, heads, seq, dim], as the attention does.
    let x = random(&[2, 5, 3, 8], 14);
    let view = |t: &Tensor| t.transpose(1, 2).unwrap();
    check("fused rope", std::slice::from_ref(&x), |xs| weighted_sum(&rotary.apply(&view(&xs[0]), 3).unwrap()));
    same_as_composed(
        "rope",
        std::slice::from_ref(&x),
        |xs| rotary.apply(&view(&xs[0]), 3).unwrap(),
        |xs| rotary.apply_composed(&view(&xs[0]), 3).unwrap(),
    );
}

#[test]
fn fused_swiglu_matches_composed() {
    let inputs = [(random(&[2, 3, 10], 15) * 4.0).unwrap(), random(&[2, 3, 10], 16)];
    check("fused swiglu", &inputs, |xs| weighted_sum(&fused::swiglu(&xs[0], &xs[1]).unwrap()));
    same_as_composed(
        "swiglu",
        &inputs,
        |xs| fused::swiglu(&xs[0], &xs[1]).unwrap(),
        |xs| (xs[0].silu().unwrap() * &xs[1]).unwrap(),
    );
}

#[test]
fn fused_target_logps_match_composed() {
    let logits = (random(&[5, 9], 17) * 3.0).unwrap();
    let targets = Tensor::from_vec(vec![0u32, 8, 3, 3, 5], (5, 1), &Device::Cpu).unwrap();
    let f = |xs: &[Tensor]| fused::target_logps(&xs[0], &targets).unwrap();
    check("fused target_logps", std::slice::from_ref(&logits), |xs| weighted_sum(&f(xs)));
    same_as_composed("target_logps", std::slice::from_ref(&logits), f, |xs| {
        let picked = xs[0].gather(&targets, 1).unwrap().squeeze(1).unwrap();
        picked.sub(&logsumexp_last(&xs[0]).unwrap()).unwrap()
    });
}

#[test]
fn fused_linear_matches_composed() {
    let inputs = [random(&[6, 5], 41), random(&[3, 5], 42)];
    let f = |xs: &[Tensor]| fused::linear(&xs[0], &xs[1]).unwrap();
    check("fused linear", &inputs, |xs| weighted_sum(&f(xs)));
    same_as_composed("linear", &inputs, f, |xs| xs[0].matmul(&xs[1].t().unwrap()).unwrap());
}

#[test]
fn fused_head_logps_match_composed() {
    let (rows, weight) = (random(&[5, 4], 18), (random(&[9, 4], 19) * 2.0).unwrap());
    let targets = Tensor::from_vec(vec![0u32, 8, 3, 3, 5], (5, 1), &Device::Cpu).unwrap();
    let inputs = [rows, weight];
    let f = |xs: &[Tensor]| fused::head_target_logps(&xs[0], &xs[1], &targets).unwrap();
    check("fused head logps", &inputs, |xs| weighted_sum(&f(xs)));
    same_as_composed("head logps", &inputs, f, |xs| {
        let logits = xs[0].matmul(&xs[1].t().unwrap()).unwrap();
        let picked = logits.gather(&targets, 1).unwrap().squeeze(1).unwrap();
        picked.sub(&logsumexp_last(&logits).unwrap()).unwrap()
    });
}

/// The composed reference blocks keep their own finite-difference checks (they run on every
/// device the fused kernels do not cover).
#[test]
fn composed_blocks_have_true_gradients() {
    check("composed softmax", &[random(&[3, 7], 18)], |xs| weighted_sum(&softmax_last_dim_composed(&xs[0]).unwrap()));
    check("composed rms_norm", &[random(&[2, 3, 8], 19), random(&[8], 20)], |xs| {
        weighted_sum(&RmsNorm::new(xs[1].clone(), 1e-6).forward_composed(&xs[0]).unwrap())
    });
    let rotary = Rotary::new(8, 32, 10_000.0, &RopeScaling::Default, DType::F64, &Device::Cpu).unwrap();
    check("composed rope", &[random(&[1, 2, 5, 8], 21)], |xs| weighted_sum(&rotary.apply_composed(&xs[0], 3).unwrap()));
}

/// Causal attention the plain way: every score computed, the mask added, softmax, `P·V`.
fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, window: usize) -> Tensor {
    let (b, kv, rows, _) = q.dims4().unwrap();
    let s = k.dim(2).unwrap();
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap().reshape((b, kv, rows / s, s, s)).unwrap();
    let probs = softmax_last_dim_composed(&scores.broadcast_add(&additive_mask(s, s, 0, window)).unwrap()).unwrap();
    probs.reshape((b, kv, rows, s)).unwrap().matmul(v).unwrap()
}

#[test]
fn blocked_causal_attention_matches_composed_and_finite_differences() {
    // 2 query heads per KV head, 10 positions in blocks of 4 (the last one short), with and
    // without a sliding window; one block covering everything is the plain computation.
    let (q, k, v) = (random(&[2, 2, 20, 3], 21), random(&[2, 2, 10, 3], 22), random(&[2, 2, 10, 3], 23));
    for (window, block) in [(usize::MAX, 4), (3, 4), (usize::MAX, 10), (5, 1)] {
        let inputs = [q.clone(), k.clone(), v.clone()];
        same_as_composed(
            &format!("attention window {window} block {block}"),
            &inputs,
            |xs| fused::causal_attention(&xs[0], &xs[1], &xs[2], 0.41, window, block).unwrap(),
            |xs| attention_composed(&xs[0], &xs[1], &xs[2], 0.41, window),
        );
    }
    let small = [random(&[1, 2, 10, 2], 24), random(&[1, 2, 5, 2], 25), random(&[1, 2, 5, 2], 26)];
    check("blocked attention", &small, |xs| {
        weighted_sum(&fused::causal_attention(&xs[0], &xs[1], &xs[2], 0.7, usize::MAX, 2).unwrap())
    });
}

/// Attention from projection rows to output rows the composed way: RoPE, head layout, every
/// score, the mask, softmax, `P·V`, back to rows.
fn attention_rows_composed(
    xs: &[Tensor],
    shape: fused::HeadShape,
    rotary: &Rotary,
    scale: f64,
    window: usize,
) -> Tensor {
    let fused::HeadShape { batch: b, seq: s, heads, kv_heads: kv, head_dim: d } = shape;
    let heads_of = |x: &Tensor, n: usize| x.reshape((b, s, n, d)).unwrap().transpose(1, 2).unwrap();
    let q = rotary.apply_composed(&heads_of(&xs[0], heads), 0).unwrap().contiguous().unwrap();
    let k = rotary.apply_composed(&heads_of(&xs[1], kv), 0).unwrap().contiguous().unwrap();
    let v = heads_of(&xs[2], kv).contiguous().unwrap();
    let out = attention_composed(&q.reshape((b, kv, heads / kv * s, d)).unwrap(), &k, &v, scale, window);
    out.reshape((b, heads, s, d)).unwrap().transpose(1, 2).unwrap().reshape((b * s, heads * d)).unwrap()
}

#[test]
fn attention_rows_matches_composed_and_finite_differences() {
    // 70 positions: two blocks of the kernel (64 + 6), 2 query heads per KV head.
    let shape = fused::HeadShape { batch: 2, seq: 70, heads: 4, kv_heads: 2, head_dim: 4 };
    let rotary = Rotary::new(4, 80, 10_000.0, &RopeScaling::Default, DType::F64, &Device::Cpu).unwrap();
    let inputs = [random(&[140, 16], 31), random(&[140, 8], 32), random(&[140, 8], 33)];
    let tables = rotary.fused_tables(&inputs[0]).unwrap().clone();
    for window in [usize::MAX, 9] {
        same_as_composed(
            &format!("attention rows window {window}"),
            &inputs,
            |xs| fused::attention_rows(&xs[0], &xs[1], &xs[2], shape, &tables, (0.5, window)).unwrap(),
            |xs| attention_rows_composed(xs, shape, &rotary, 0.5, window),
        );
    }
    let small = fused::HeadShape { batch: 1, seq: 5, heads: 2, kv_heads: 1, head_dim: 4 };
    let inputs = [random(&[5, 8], 34), random(&[5, 4], 35), random(&[5, 4], 36)];
    check("attention rows", &inputs, |xs| {
        weighted_sum(&fused::attention_rows(&xs[0], &xs[1], &xs[2], small, &tables, (0.7, usize::MAX)).unwrap())
    });
}

#[test]
fn kernel_exp_is_within_two_ulp_of_the_library_exp() {
    let mut worst = 0f64;
    for i in 0..=1_750_000 {
        let x = -87.0 + f64::from(i) * 1e-4;
        #[allow(clippy::cast_possible_truncation)]
        let x = x as f32;
        let want = f64::from(x).exp();
        let got = f64::from(fused::exp_f32(x));
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst <= 2.0 * f64::from(f32::EPSILON), "relative error {worst}");
    assert!(fused::exp_f32(f32::NAN).is_nan());
    assert!(fused::exp_f32(f32::NEG_INFINITY) < 1e-37);
    assert!(fused::exp_f32(f32::INFINITY) > 1e38);
    assert_eq!(fused::exp_f32(0.0).to_bits(), 1f32.to_bits());
}

#![allow(clippy::unwrap_used)]
//! f32 precision at real depth: per-record summed log-probs of a model of the real 135M Llama
//! shape (vocab 49152, hidden 576, 30 layers, 9 heads / 3 KV heads, MLP 1536, tied) against
//! transformers in float64.
//!
//! The tiny oracle fixtures hide rounding that only a 30-layer model with a 49k vocabulary
//! shows (the LM head's logsumexp over 49152 terms, softmax and norm reductions, long dot
//! products). The weights are drawn here by a documented generator ([`Draw`]) independent of any
//! RNG crate and of `Model::fresh`, at trained-like scales: a final norm that makes the model
//! confident, so the completion log-probs are close to 0 and rounding in the logsumexp is not
//! hidden under large values. They are never committed: `write_precision_weights` (ignored; run
//! by hand) writes them with `config.json` as a model directory for
//! `tests/fixtures/gen/make_precision_135m.py`, which loads them in transformers in float64,
//! picks the records (random prompts, greedy completions) and writes only
//! `tests/fixtures/precision_135m/expected.json`.
//!
//! The bound is the issue's: |Δ| / max(1, |ref|) ≤ 5e-5 per record. Before the LM head's and the
//! kernels' reductions accumulated in f64, hone's f32 was off by up to 4.7e-3 here (log-probs too
//! high: an f32 running sum over the vocabulary drops the tail after the maximum). transformers'
//! own float32 end to end is off by up to ~1e-4 on these records (`expected.json` keeps its values
//! too, and a failure prints them beside hone's).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hone::model::{Decoder, ModelConfig};
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::loss::{per_sequence_sum, target_logps};

/// The bound on |Δ| / max(1, |ref|) per record.
const TOLERANCE: f64 = 5e-5;

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "max_position_embeddings": 2048, "tie_word_embeddings": true,
        "hidden_act": "silu", "attention_bias": false, "mlp_bias": false,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float32"
    })
}

/// The weight generator: value `i` of tensor `name` is a function of (`name`, `i`) only, so it is
/// the same on every machine and in every order. `splitmix64` of `fnv1a(name) + i·φ` gives 64
/// random bits; the top 24 make a uniform in [-1, 1), scaled by `std·√3` (a uniform with that
/// standard deviation), plus `mean`.
struct Draw;

impl Draw {
    fn fnv1a(name: &str) -> u64 {
        name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }

    fn splitmix64(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn tensor(name: &str, shape: &[usize], mean: f32, std: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let base = Self::fnv1a(name);
        let half_width = std * 3f32.sqrt();
        let values: Vec<f32> = (0..n as u64)
            .map(|i| {
                let bits = Self::splitmix64(base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
                let unit = (bits >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                mean + unit * half_width
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }
}

/// Every weight by its transformers name. Trained-like scales: projections at std 0.02 (the
/// HF init range), output projections scaled down with depth as in GPT-2, the embedding at 0.05,
/// norms around 1, and a final norm near 1.5 so the predictions are confident
/// (completion log-probs about -0.1 to -1.3 per record) with a long tail of tiny probabilities.
fn weights() -> HashMap<String, Tensor> {
    let (v, h, i, layers, kv) = (49152, 576, 1536, 30, 192);
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], mean: f32, std: f32| {
        let t = Draw::tensor(&name, shape, mean, std);
        w.insert(name, t);
    };
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 0.05);
    let out_std = 0.02 / (2.0 * layers as f32).sqrt();
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), &[h, h], 0.0, 0.02);
        put(format!("{p}.self_attn.k_proj.weight"), &[kv, h], 0.0, 0.02);
        put(format!("{p}.self_attn.v_proj.weight"), &[kv, h], 0.0, 0.02);
        put(format!("{p}.self_attn.o_proj.weight"), &[h, h], 0.0, out_std);
        put(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, 0.02);
        put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, 0.02);
        put(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, out_std);
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.2);
        put(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0, 0.2);
    }
    put("model.norm.weight".into(), &[h], 1.5, 0.25);
    w
}

fn config() -> ModelConfig {
    ModelConfig::from_value(config_json(), Path::new("<precision-135m>")).unwrap()
}

fn decoder(weights: HashMap<String, Tensor>, dtype: DType) -> Decoder {
    let vb = VarBuilder::from_tensors(weights, dtype, &Device::Cpu);
    Decoder::new(&config(), &vb).unwrap()
}

/// Summed log-probs of each record's completion: for f32 as the trainer computes them
/// (`per_sequence_sum`), for f64 summed here in order (the sum's matrix is f32).
fn summed_logps(decoder: &Decoder, records: &[(Vec<u32>, usize)]) -> Vec<f64> {
    let seqs: Vec<Sequence> =
        records.iter().map(|(ids, prompt)| Sequence::with_completion_from(ids.clone(), *prompt)).collect();
    let batch = TokenBatch::new(&seqs, 0, &Device::Cpu).unwrap();
    let token = target_logps(decoder, &batch).unwrap();
    if token.dtype() == DType::F32 {
        return per_sequence_sum(&token, &batch).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    }
    let token: Vec<f64> = token.to_vec1().unwrap();
    let mut start = 0;
    batch
        .targets_per_sequence
        .iter()
        .map(|&n| {
            start += n;
            token[start - n..start].iter().sum()
        })
        .collect()
}

struct Expected {
    records: Vec<(Vec<u32>, usize)>,
    float64: Vec<f64>,
    torch_float32: Vec<f64>,
}

fn expected() -> Expected {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/precision_135m/expected.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let recs = json["records"].as_array().unwrap();
    let records = recs
        .iter()
        .map(|r| {
            let ids =
                r["ids"].as_array().unwrap().iter().map(|v| u32::try_from(v.as_u64().unwrap()).unwrap()).collect();
            (ids, usize::try_from(r["prompt_len"].as_u64().unwrap()).unwrap())
        })
        .collect();
    let float64 = recs.iter().map(|r| r["logp_sum_float64"].as_f64().unwrap()).collect();
    let torch_float32 = recs.iter().map(|r| r["logp_sum_torch_float32"].as_f64().unwrap()).collect();
    Expected { records, float64, torch_float32 }
}

fn relative(a: f64, reference: f64) -> f64 {
    (a - reference).abs() / reference.abs().max(1.0)
}

#[test]
fn f32_summed_log_probs_match_float64_at_the_135m_shape() {
    let exp = expected();
    let got = summed_logps(&decoder(weights(), DType::F32), &exp.records);
    let mut report = String::new();
    let mut worst = 0f64;
    for (k, ((&g, &r), &t)) in got.iter().zip(&exp.float64).zip(&exp.torch_float32).enumerate() {
        let err = relative(g, r);
        worst = worst.max(err);
        report.push_str(&format!(
            "record {k}: hone f32 {g:.8} float64 {r:.8} |Δ|rel {err:.2e} (torch f32 {:.2e})\n",
            relative(t, r)
        ));
    }
    assert!(worst <= TOLERANCE, "worst relative error {worst:.2e} > {TOLERANCE:.0e}\n{report}");
}

/// Writes the weights and `config.json` as a model directory (f32 safetensors) into
/// `$HONE_PRECISION_DIR` for the fixture generator:
/// `HONE_PRECISION_DIR=/tmp/p135 cargo test --release --test model_precision -- --ignored write`
#[test]
#[ignore = "writes the generator's input; run by hand"]
fn write_precision_weights() {
    let dir = std::path::PathBuf::from(std::env::var("HONE_PRECISION_DIR").expect("set HONE_PRECISION_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors: Vec<(String, Tensor)> = weights().into_iter().collect();
    let bytes = hone::model::weights::safetensors_bytes(&tensors, DType::F32).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config_json()).unwrap()).unwrap();
}

/// hone's f64 path against the float64 reference: checks the fixture itself (same weights, same
/// records, same positions). They agree to ~2.5e-7 relative, not to f64 rounding: both take
/// RoPE's cos/sin tables in f32 (transformers computes them in float32 even for a float64
/// model), and the two libraries' f32 cos/sin differ in the last bit; not traced further. Slow (an f64 copy of the model): run by hand with
/// `cargo test --release --test model_precision -- --ignored float64`.
#[test]
#[ignore = "slow: builds an f64 copy of the 135M model"]
fn float64_path_matches_the_reference() {
    let exp = expected();
    let d64 = decoder(weights(), DType::F64);
    for (k, (r, &want)) in exp.records.iter().zip(&exp.float64).enumerate() {
        let got = summed_logps(&d64, std::slice::from_ref(r))[0];
        eprintln!("record {k}: hone f64 {got:.12} float64 {want:.12}");
        assert!(relative(got, want) < 1e-6, "record {k}: {got} against {want}");
    }
}

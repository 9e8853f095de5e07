#![allow(clippy::unwrap_used)]
//! GRPO and KTO losses against TRL 1.16's own loss code (`tests/fixtures/losses/rl.json`, made by
//! `tests/fixtures/gen/make_rl_losses.py`): GRPO's loss and its gradient with respect to every
//! per-token log-prob for each aggregation, with and without the KL term, on- and off-policy;
//! TRL's group-normalised advantages; KTO's loss, KL estimate and metrics from TRL's log-probs, and
//! end to end on the Llama oracle models (loss and the policy's grad norm). Gradients are also
//! checked against central finite differences in f64.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, fixture, floats, ids, num};
use hone::model::Model;
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::loss::{per_sequence_sum, target_logps};
use hone::train::optim::grad_norm;
use hone::train::rl::{
    group_advantages, grpo_loss, kl_completion_order, kto_loss, GrpoConfig, GrpoInputs, GrpoLossType,
    ImportanceSampling, KtoConfig, KtoInputs, ScaleRewards,
};
use serde_json::Value;

fn fx() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("losses/rl.json")).unwrap()).unwrap()
}

fn tensor(v: &Value, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(floats(v), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

fn loss_type(name: &str) -> GrpoLossType {
    match name {
        "grpo" => GrpoLossType::Grpo,
        "bnpo" => GrpoLossType::Bnpo,
        "dr_grpo" => GrpoLossType::DrGrpo,
        "dapo" => GrpoLossType::Dapo,
        other => panic!("{other}"),
    }
}

#[test]
fn advantages_match_trls_group_normalisation() {
    let g = &fx()["grpo"];
    let rewards = floats(&g["rewards"]);
    let adv = group_advantages(&rewards, 4, ScaleRewards::Group).unwrap();
    for (i, (a, b)) in adv.advantages.iter().zip(floats(&g["advantages"])).enumerate() {
        assert_close(&format!("advantage {i}"), *a, b, 1e-5);
    }
    let m = &g["reward_metrics"];
    assert_close("reward", adv.reward_mean, num(&m["reward"]), 1e-6);
    assert_close("reward_std", adv.reward_std, num(&m["reward_std"]), 1e-6);
    assert_close("frac_reward_zero_std", adv.frac_zero_std, num(&m["frac_reward_zero_std"]), 0.0);
    // Bad groups are refused, not trained on.
    assert!(group_advantages(&rewards, 1, ScaleRewards::Group).is_err());
    assert!(group_advantages(&rewards, 3, ScaleRewards::Group).is_err());
    assert!(group_advantages(&[1.0, f64::NAN], 2, ScaleRewards::Group).is_err());
    // Without scaling only the group mean is removed.
    let centred = group_advantages(&[1.0, 3.0], 2, ScaleRewards::None).unwrap();
    assert_eq!(centred.advantages, [-1.0, 1.0]);
}

#[test]
fn grpo_loss_and_gradient_match_trl_for_every_aggregation() {
    let g = &fx()["grpo"];
    let shape: Vec<usize> = g["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let mask = tensor(&g["mask"], &shape, DType::F32);
    let old = tensor(&g["old_logps"], &shape, DType::F32);
    let reference = tensor(&g["ref_logps"], &shape, DType::F32);
    let adv = group_advantages(&floats(&g["rewards"]), 4, ScaleRewards::Group).unwrap();
    let advantages = Tensor::new(adv.advantages.iter().map(|&a| a as f32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for case in cases {
        let name = format!("{} β={} on-policy={}", case["loss_type"], case["beta"], case["on_policy"]);
        let policy = Var::from_tensor(&tensor(&g["policy_logps"], &shape, DType::F32)).unwrap();
        let cfg = GrpoConfig {
            loss_type: loss_type(case["loss_type"].as_str().unwrap()),
            beta: num(&case["beta"]),
            max_completion_length: g["max_completion_length"].as_u64().unwrap() as usize,
            ..GrpoConfig::default()
        };
        let on_policy = case["on_policy"].as_bool().unwrap();
        let out = grpo_loss(
            &cfg,
            &GrpoInputs {
                policy: policy.as_tensor(),
                old: (!on_policy).then_some(&old),
                reference: Some(&reference),
                mask: &mask,
                advantages: &advantages,
                step_tokens: None,
            },
        )
        .unwrap();
        assert_close(&format!("{name} loss"), scalar(&out.loss), num(&case["loss"]), 2e-6);
        let grads = out.loss.backward().unwrap();
        let grad = to_vec(grads.get(&policy).unwrap());
        for (i, (a, b)) in grad.iter().zip(floats(&case["grad"])).enumerate() {
            assert_close(&format!("{name} d loss / d logp[{i}]"), *a, b, 1e-6);
        }
        let m = &case["metrics"];
        match out.kl {
            Some(kl) => assert_close(&format!("{name} kl"), kl, num(&m["kl"]), 1e-6),
            None => assert!(m.get("kl").is_none(), "{name}: TRL logged a KL"),
        }
        assert_close(&format!("{name} clip low"), out.clip_low, num(&m["clip_ratio/low_mean"]), 1e-7);
        assert_close(&format!("{name} clip high"), out.clip_high, num(&m["clip_ratio/high_mean"]), 1e-7);
        assert_close(&format!("{name} clip region"), out.clip_region, num(&m["clip_ratio/region_mean"]), 1e-7);
    }
}

#[test]
fn grpo_needs_the_reference_when_beta_is_set() {
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let a = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let cfg = GrpoConfig { beta: 0.04, ..GrpoConfig::default() };
    let inputs = GrpoInputs { policy: &x, old: None, reference: None, mask: &x, advantages: &a, step_tokens: None };
    assert!(grpo_loss(&cfg, &inputs).err().unwrap().to_string().contains("reference"));
}

/// Central differences in f64 for each aggregation and both ratio levels, away from the clip
/// boundaries (where the objective has kinks).
#[test]
fn grpo_gradients_match_finite_differences() {
    let g = &fx()["grpo"];
    let shape = [8usize, 6];
    let base = floats(&g["policy_logps"]);
    let old = tensor(&g["old_logps"], &shape, DType::F64);
    let reference = tensor(&g["ref_logps"], &shape, DType::F64);
    let mask = tensor(&g["mask"], &shape, DType::F64);
    let advantages = Tensor::new(floats(&g["advantages"]), &Device::Cpu).unwrap();
    for loss_type in [GrpoLossType::Grpo, GrpoLossType::Bnpo, GrpoLossType::DrGrpo, GrpoLossType::Dapo] {
        for importance_sampling in [ImportanceSampling::Token, ImportanceSampling::Sequence] {
            let cfg = GrpoConfig {
                loss_type,
                importance_sampling,
                beta: 0.04,
                max_completion_length: 8,
                ..GrpoConfig::default()
            };
            let f = |p: &Tensor| {
                let inputs = GrpoInputs {
                    policy: p,
                    old: Some(&old),
                    reference: Some(&reference),
                    mask: &mask,
                    advantages: &advantages,
                    step_tokens: None,
                };
                grpo_loss(&cfg, &inputs).unwrap().loss
            };
            let var = Var::from_tensor(&Tensor::from_vec(base.clone(), &shape, &Device::Cpu).unwrap()).unwrap();
            let analytic = to_vec(f(var.as_tensor()).backward().unwrap().get(&var).unwrap());
            let h = 1e-6;
            for i in 0..base.len() {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    scalar(&f(&Tensor::from_vec(v, &shape, &Device::Cpu).unwrap()))
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                assert_close(&format!("{loss_type:?} {importance_sampling:?} element {i}"), analytic[i], numeric, 1e-6);
            }
        }
    }
}

fn kto_inputs(k: &Value, dtype: DType) -> (Tensor, Tensor, Tensor, Tensor, Vec<bool>) {
    let n = k["labels"].as_array().unwrap().len();
    let t = |key: &str| tensor(&k[key], &[n], dtype);
    let labels = k["labels"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    (t("policy_logps"), t("ref_logps"), t("policy_kl_logps"), t("ref_kl_logps"), labels)
}

fn kto_config(k: &Value) -> KtoConfig {
    KtoConfig {
        beta: num(&k["beta"]),
        desirable_weight: num(&k["desirable_weight"]),
        undesirable_weight: num(&k["undesirable_weight"]),
    }
}

#[test]
fn kto_loss_kl_and_metrics_match_trl_from_its_log_probs() {
    let k = &fx()["kto"];
    let (policy, reference, policy_kl, reference_kl, labels) = kto_inputs(k, DType::F32);
    let out = kto_loss(
        &kto_config(k),
        &KtoInputs {
            policy: &policy,
            reference: &reference,
            labels: &labels,
            policy_kl: &policy_kl,
            reference_kl: &reference_kl,
        },
    )
    .unwrap();
    let m = &k["metrics"];
    assert_close("loss", scalar(&out.loss), num(&k["loss"]), 1e-5);
    assert_close("kl", out.kl, num(&m["kl"]), 1e-4);
    assert_close("rewards/chosen", out.rewards_chosen.unwrap(), num(&m["rewards/chosen"]), 1e-5);
    assert_close("rewards/rejected", out.rewards_rejected.unwrap(), num(&m["rewards/rejected"]), 1e-5);
    assert_close("rewards/margins", out.margins.unwrap(), num(&m["rewards/margins"]), 1e-5);
    assert_close("logps/chosen", out.logps_chosen.unwrap(), num(&m["logps/chosen"]), 1e-3);
    assert_close("logps/rejected", out.logps_rejected.unwrap(), num(&m["logps/rejected"]), 1e-3);
    // A batch of one label has no margin, and no metric of the other label.
    let only = vec![true; labels.len()];
    let out = kto_loss(
        &kto_config(k),
        &KtoInputs {
            policy: &policy,
            reference: &reference,
            labels: &only,
            policy_kl: &policy_kl,
            reference_kl: &reference_kl,
        },
    )
    .unwrap();
    assert!(out.rewards_rejected.is_none() && out.margins.is_none());
}

#[test]
fn kto_gradient_matches_finite_differences() {
    let k = &fx()["kto"];
    let (policy, reference, policy_kl, reference_kl, labels) = kto_inputs(k, DType::F64);
    let cfg = kto_config(k);
    let f = |p: &Tensor| {
        let inputs = KtoInputs {
            policy: p,
            reference: &reference,
            labels: &labels,
            policy_kl: &policy_kl,
            reference_kl: &reference_kl,
        };
        kto_loss(&cfg, &inputs).unwrap().loss
    };
    let var = Var::from_tensor(&policy).unwrap();
    let analytic = to_vec(f(var.as_tensor()).backward().unwrap().get(&var).unwrap());
    let base = to_vec(&policy);
    let h = 1e-5;
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            scalar(&f(&Tensor::new(v, &Device::Cpu).unwrap()))
        };
        assert_close(&format!("element {i}"), analytic[i], (at(h) - at(-h)) / (2.0 * h), 1e-8);
    }
}

#[test]
fn kl_pairs_rotate_completions_within_each_batch_as_trl() {
    let k = &fx()["kto"];
    let completions: Vec<Vec<u32>> = k["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let kl: Vec<Vec<u32>> = k["kl_completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let order = kl_completion_order(completions.len(), completions.len());
    for (i, &j) in order.iter().enumerate() {
        assert_eq!(kl[i], completions[j], "example {i}");
    }
    assert_eq!(kl_completion_order(5, 2), [1, 0, 3, 2, 4]);
    assert_eq!(kl_completion_order(3, 8), [2, 0, 1]);
}

/// KTO on hone's own log-probs of the oracle models: TRL's loss and the policy's grad norm.
#[test]
fn kto_end_to_end_on_the_oracle_models_matches_trls_loss_and_grad_norm() {
    let k = &fx()["kto"];
    let policy = Model::load(&fixture("llama/model"), &Device::Cpu, DType::F32).unwrap();
    let reference = Model::load(&fixture("llama/ref"), &Device::Cpu, DType::F32).unwrap();
    let prompts: Vec<Vec<u32>> = k["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let join = |key: &str| -> Vec<Sequence> {
        prompts
            .iter()
            .zip(k[key].as_array().unwrap())
            .map(|(p, c)| {
                let mut all = p.clone();
                all.extend(ids(c));
                Sequence::with_completion_from(all, p.len())
            })
            .collect()
    };
    let sums = |model: &Model, seqs: &[Sequence]| {
        let batch = TokenBatch::new(seqs, 1, &Device::Cpu).unwrap();
        per_sequence_sum(&target_logps(model.decoder(), &batch).unwrap(), &batch).unwrap()
    };
    let (matched, mismatched) = (join("completion_ids"), join("kl_completion_ids"));
    let pol = sums(&policy, &matched);
    let pol_kl = sums(&policy, &mismatched).detach();
    let rf = sums(&reference, &matched).detach();
    let rf_kl = sums(&reference, &mismatched).detach();
    for (name, t, key) in
        [("policy", &pol, "policy_logps"), ("policy KL", &pol_kl, "policy_kl_logps"), ("ref", &rf, "ref_logps")]
    {
        for (i, (a, b)) in to_vec(t).iter().zip(floats(&k[key])).enumerate() {
            assert_close(&format!("{name} log-prob {i}"), *a, b, 1e-3);
        }
    }
    let labels: Vec<bool> = k["labels"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    let out = kto_loss(
        &kto_config(k),
        &KtoInputs { policy: &pol, reference: &rf, labels: &labels, policy_kl: &pol_kl, reference_kl: &rf_kl },
    )
    .unwrap();
    assert_close("loss", scalar(&out.loss), num(&k["loss"]), 1e-5);
    let grads = out.loss.backward().unwrap();
    let norm = grad_norm(&policy.parameters(), &grads).unwrap();
    let want = num(&k["grad_norm"]);
    assert_close("grad norm", norm, want, 1e-4 * want);
}

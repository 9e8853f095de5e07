#![allow(clippy::unwrap_used)]
//! Robust DPO and conservative DPO (cDPO) against TRL 1.16 on the public Llama oracle set
//! (`tests/fixtures/losses/robust_dpo.json`, made by `tests/fixtures/gen/make_robust_dpo.py` with
//! TRL's own `DPOTrainer.compute_loss`).
//!
//! With `d = (πc − rc) − (πr − rr)` and `L(z) = −log σ(z)`:
//! robust `= ((1−ε)·L(βd) − ε·L(−βd)) / (1 − 2ε)` (TRL's `loss_type="robust"`),
//! cDPO `= (1−ε)·L(βd) + ε·L(−βd)` (TRL 1.16's `"aot"` on one pair; its `"sigmoid"` ignores ε).

mod common;

use candle_core::{Device, Tensor};
use common::{assert_close, expected, fixture, floats, ids, num};
use hone::config::{PrefLossKind, PrefTerm};
use hone::model::Model;
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::examples::PairExample;
use hone::train::loss::{
    per_sequence_sum, preference_losses, preference_losses_with_noise, target_logps, LabelNoise, PreferenceLogps,
    PreferenceLoss,
};
use hone::train::objective::{evaluate, MicroBatch, PairTerm, Weights};
use serde_json::Value;

const PAD: u32 = 1;

fn trl() -> Value {
    let text = std::fs::read_to_string(fixture("losses/robust_dpo.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn column(examples: &[Value], key: &str) -> Tensor {
    let v: Vec<f32> = examples.iter().map(|e| num(&e[key]) as f32).collect();
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
}

fn noises(eps: f64) -> [(LabelNoise, &'static str); 2] {
    [(LabelNoise::Robust(eps), "robust_loss"), (LabelNoise::Conservative(eps), "cdpo_loss")]
}

#[test]
fn robust_and_cdpo_losses_match_trl_from_its_log_probs() {
    let fx = trl();
    let beta = num(&fx["meta"]["beta"]);
    for set in ["conversational", "plain"] {
        let examples = fx[set]["examples"].as_array().unwrap();
        let ones = Tensor::ones(examples.len(), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (pc, pr) = (column(examples, "policy_chosen_logps"), column(examples, "policy_rejected_logps"));
        let (rc, rr) = (column(examples, "ref_chosen_logps"), column(examples, "ref_rejected_logps"));
        let lp = PreferenceLogps {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_tokens: &ones,
            rejected_tokens: &ones,
        };
        // ε = 0 is plain DPO, for both noise models.
        let plain = vec_f64(&preference_losses(PreferenceLoss::Sigmoid, beta, &lp).unwrap());
        for noise in [LabelNoise::Robust(0.0), LabelNoise::Conservative(0.0)] {
            let zero = vec_f64(&preference_losses_with_noise(PreferenceLoss::Sigmoid, beta, noise, &lp).unwrap());
            for (i, (a, b)) in zero.iter().zip(&plain).enumerate() {
                assert_close(&format!("{set} row {i} {noise:?} vs sigmoid"), *a, *b, 1e-7);
                assert_close(&format!("{set} row {i} sigmoid vs TRL"), *b, num(&examples[i]["sigmoid_loss"]), 1e-5);
            }
        }
        for by in fx[set]["by_epsilon"].as_array().unwrap() {
            let eps = num(&by["label_smoothing"]);
            for (noise, key) in noises(eps) {
                let losses = preference_losses_with_noise(PreferenceLoss::Sigmoid, beta, noise, &lp).unwrap();
                for (i, (a, b)) in vec_f64(&losses).iter().zip(floats(&by[key])).enumerate() {
                    assert_close(&format!("{set} ε={eps} row {i} {key}"), *a, b, 1e-5);
                }
                let mean = f64::from(losses.mean_all().unwrap().to_scalar::<f32>().unwrap());
                assert_close(&format!("{set} ε={eps} batch {key}"), mean, num(&by["batch"][key]), 1e-5);
            }
        }
        // Robust's gradient pushes the margin up less than cDPO's does not: the two differ for ε > 0.
        let r = vec_f64(
            &preference_losses_with_noise(PreferenceLoss::Sigmoid, beta, LabelNoise::Robust(0.1), &lp).unwrap(),
        );
        let c = vec_f64(
            &preference_losses_with_noise(PreferenceLoss::Sigmoid, beta, LabelNoise::Conservative(0.1), &lp).unwrap(),
        );
        assert!(r.iter().zip(&c).all(|(a, b)| (a - b).abs() > 1e-4), "{r:?} {c:?}");
    }
}

#[test]
fn ipo_with_label_smoothing_is_an_error_not_a_silent_skip() {
    let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let lp = PreferenceLogps {
        policy_chosen: &x,
        policy_rejected: &x,
        ref_chosen: &x,
        ref_rejected: &x,
        chosen_tokens: &x,
        rejected_tokens: &x,
    };
    let err = preference_losses_with_noise(PreferenceLoss::Ipo, 0.1, LabelNoise::Robust(0.1), &lp).unwrap_err();
    assert!(err.to_string().contains("sigmoid loss only"), "{err}");
}

#[test]
fn the_pref_table_chooses_the_noise_model() {
    let term = |loss, label_smoothing| PrefTerm {
        data: vec![],
        lambda: 1.0,
        beta: 0.1,
        loss,
        label_smoothing,
        reference: None,
    };
    assert_eq!(LabelNoise::of(&term(PrefLossKind::Robust, 0.2)), LabelNoise::Robust(0.2));
    assert_eq!(LabelNoise::of(&term(PrefLossKind::Robust, 0.0)), LabelNoise::Robust(0.0));
    assert_eq!(LabelNoise::of(&term(PrefLossKind::Sigmoid, 0.2)), LabelNoise::Conservative(0.2));
    assert_eq!(LabelNoise::of(&term(PrefLossKind::Sigmoid, 0.0)), LabelNoise::Clean);
    assert_eq!(LabelNoise::of(&term(PrefLossKind::Ipo, 0.0)), LabelNoise::Clean);
}

/// The objective's DPO term with label noise, on hone's own log-probs of the oracle models: the
/// batch loss TRL's `DPOTrainer` computes on the same 8 pairs (1e-4, as the plain DPO oracle test).
#[test]
fn the_objective_computes_trls_robust_and_cdpo_batch_loss_on_the_oracle_models() {
    let policy = Model::load(&fixture("llama/model"), &Device::Cpu, candle_core::DType::F32).unwrap();
    let reference = Model::load(&fixture("llama/ref"), &Device::Cpu, candle_core::DType::F32).unwrap();
    let fx = trl();
    let oracle = expected("llama");
    let beta = num(&fx["meta"]["beta"]);
    for set in ["conversational", "plain"] {
        let pairs: Vec<PairExample> = oracle["dpo"][set]["examples"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, e)| PairExample {
                prompt: ids(&e["prompt_ids"]),
                chosen: ids(&e["chosen_ids"]),
                rejected: ids(&e["rejected_ids"]),
                hash: i as u64,
            })
            .collect();
        // Reference log-probs from hone's reference model, as the trainer's cache holds them.
        let seqs: Vec<Sequence> = pairs
            .iter()
            .map(PairExample::chosen_sequence)
            .chain(pairs.iter().map(PairExample::rejected_sequence))
            .collect();
        let batch = TokenBatch::new(&seqs, PAD, &Device::Cpu).unwrap();
        let sums = vec_f64(&per_sequence_sum(&target_logps(reference.decoder(), &batch).unwrap(), &batch).unwrap());
        let n = pairs.len();
        let mb = MicroBatch {
            pairs: pairs.iter().enumerate().map(|(i, p)| (p, (sums[i], sums[n + i]))).collect(),
            ..MicroBatch::default()
        };
        let weights = Weights { sft: 1.0, lm: 1.0, pref: 1.0, safe: 0.0 };
        for by in fx[set]["by_epsilon"].as_array().unwrap() {
            let eps = num(&by["label_smoothing"]);
            for (noise, key) in noises(eps) {
                let term = PairTerm { beta, loss: PreferenceLoss::Sigmoid, noise };
                let out = evaluate(policy.decoder(), &mb, weights, Some(term), None, PAD).unwrap();
                assert_close(
                    &format!("{set} ε={eps} objective {key}"),
                    out.pref.unwrap(),
                    num(&by["batch"][key]),
                    1e-4,
                );
                let total = f64::from(out.loss.to_scalar::<f32>().unwrap());
                assert_close(&format!("{set} ε={eps} total"), total, num(&by["batch"][key]), 1e-4);
            }
        }
    }
}

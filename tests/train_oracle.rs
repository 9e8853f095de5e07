#![allow(clippy::unwrap_used)]
//! Losses, log-probs and one AdamW step against transformers and TRL on both oracle sets
//! (`tests/fixtures/{llama,qwen2}/expected.json`; formulas in their READMEs).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, expected, fixture, floats, ids, num};
use hone::model::Model;
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::loss::{per_sequence_sum, preference_losses, sft_loss, target_logps, PreferenceLogps, PreferenceLoss};
use hone::train::optim::{grad_norm, AdamW, AdamWConfig};
use serde_json::Value;

const PAD: u32 = 1;

fn load(name: &str) -> Model {
    load_from("llama", name)
}

fn load_from(set: &str, name: &str) -> Model {
    Model::load(&fixture(&format!("{set}/{name}")), &Device::Cpu, DType::F32).expect("fixture model loads")
}

fn sft_sequences(exp: &Value) -> Vec<Sequence> {
    exp["sft"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Sequence {
            ids: ids(&e["input_ids"]),
            targets: e["assistant_masks"].as_array().unwrap().iter().map(|m| m.as_u64() == Some(1)).collect(),
        })
        .collect()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
}

#[test]
fn sft_token_logps_and_losses_match_transformers() {
    let model = load("model");
    let exp = expected("llama");
    let seqs = sft_sequences(&exp);
    for (i, (seq, e)) in seqs.iter().zip(exp["sft"]["examples"].as_array().unwrap()).enumerate() {
        assert_eq!(seq.num_targets() as u64, e["num_loss_tokens"].as_u64().unwrap(), "example {i}");
        let batch = TokenBatch::new(std::slice::from_ref(seq), PAD, &Device::Cpu).unwrap();
        let logps = target_logps(model.decoder(), &batch).unwrap();
        for (t, (a, b)) in vec_f64(&logps).iter().zip(floats(&e["loss_token_logps"])).enumerate() {
            assert_close(&format!("example {i} token {t} log-prob"), *a, b, 1e-4);
        }
        let loss = f64::from(sft_loss(&logps).unwrap().to_scalar::<f32>().unwrap());
        assert_close(&format!("example {i} loss"), loss, num(&e["loss"]), 1e-5 * num(&e["loss"]));
    }
    // All eight right-padded in one batch: the token-weighted mean, not a mean of means.
    let batch = TokenBatch::new(&seqs, PAD, &Device::Cpu).unwrap();
    let logps = target_logps(model.decoder(), &batch).unwrap();
    let loss = f64::from(sft_loss(&logps).unwrap().to_scalar::<f32>().unwrap());
    let want = num(&exp["sft"]["batch"]["loss"]);
    assert_close("batch loss", loss, want, 1e-5 * want);
    assert_eq!(batch.num_targets() as u64, exp["sft"]["batch"]["num_loss_tokens"].as_u64().unwrap());
}

/// Sequence log-probs of chosen and rejected for every row of one preference set.
fn pair_logps(model: &Model, examples: &[Value]) -> (Tensor, Tensor, Tensor, Tensor) {
    let seq = |e: &Value, key: &str| {
        let prompt = ids(&e["prompt_ids"]);
        let mut all = prompt.clone();
        all.extend(ids(&e[key]));
        Sequence::with_completion_from(all, prompt.len())
    };
    let chosen: Vec<Sequence> = examples.iter().map(|e| seq(e, "chosen_ids")).collect();
    let rejected: Vec<Sequence> = examples.iter().map(|e| seq(e, "rejected_ids")).collect();
    let run = |seqs: &[Sequence]| {
        let batch = TokenBatch::new(seqs, PAD, &Device::Cpu).unwrap();
        let lp = target_logps(model.decoder(), &batch).unwrap();
        let counts: Vec<f32> = batch.targets_per_sequence.iter().map(|&n| n as f32).collect();
        (per_sequence_sum(&lp, &batch).unwrap(), Tensor::new(counts, &Device::Cpu).unwrap())
    };
    let (c, nc) = run(&chosen);
    let (r, nr) = run(&rejected);
    (c, r, nc, nr)
}

#[test]
fn dpo_and_ipo_match_trl_on_conversational_and_plain_rows() {
    let policy = load("model");
    let reference = load("ref");
    let exp = expected("llama");
    let beta = num(&exp["dpo"]["beta"]);
    for set in ["conversational", "plain"] {
        let examples = exp["dpo"][set]["examples"].as_array().unwrap();
        let (pc, pr, nc, nr) = pair_logps(&policy, examples);
        let (rc, rr, _, _) = pair_logps(&reference, examples);
        for (i, e) in examples.iter().enumerate() {
            for (field, t) in [
                ("policy_chosen_logps", &pc),
                ("policy_rejected_logps", &pr),
                ("ref_chosen_logps", &rc),
                ("ref_rejected_logps", &rr),
            ] {
                assert_close(&format!("{set} row {i} {field}"), vec_f64(t)[i], num(&e[field]), 1e-3);
            }
            assert_eq!(vec_f64(&nc)[i] as u64, e["num_chosen_tokens"].as_u64().unwrap());
        }
        let lp = PreferenceLogps {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_tokens: &nc,
            rejected_tokens: &nr,
        };
        let sig = preference_losses(PreferenceLoss::Sigmoid, beta, &lp).unwrap();
        let ipo = preference_losses(PreferenceLoss::Ipo, beta, &lp).unwrap();
        for (i, e) in examples.iter().enumerate() {
            assert_close(&format!("{set} row {i} sigmoid loss"), vec_f64(&sig)[i], num(&e["dpo_sigmoid_loss"]), 1e-4);
            assert_close(&format!("{set} row {i} ipo loss"), vec_f64(&ipo)[i], num(&e["ipo_loss"]), 1e-3);
        }
        let b = &exp["dpo"][set]["batch"];
        let mean = |t: &Tensor| f64::from(t.mean_all().unwrap().to_scalar::<f32>().unwrap());
        assert_close(&format!("{set} batch sigmoid loss"), mean(&sig), num(&b["dpo_sigmoid_loss"]), 1e-4);
        assert_close(&format!("{set} batch ipo loss"), mean(&ipo), num(&b["ipo_loss"]), 1e-3);
        let rewards_c = ((&pc - &rc).unwrap() * beta).unwrap();
        let rewards_r = ((&pr - &rr).unwrap() * beta).unwrap();
        assert_close(&format!("{set} rewards/chosen"), mean(&rewards_c), num(&b["rewards/chosen"]), 1e-4);
        assert_close(&format!("{set} rewards/rejected"), mean(&rewards_r), num(&b["rewards/rejected"]), 1e-4);
        assert_close(
            &format!("{set} rewards/margins"),
            mean(&(&rewards_c - &rewards_r).unwrap()),
            num(&b["rewards/margins"]),
            1e-4,
        );
        let acc = rewards_c.gt(&rewards_r).unwrap().to_dtype(DType::F32).unwrap();
        assert_close(&format!("{set} rewards/accuracies"), mean(&acc), num(&b["rewards/accuracies"]), 1e-9);
        assert_close(&format!("{set} logps/chosen"), mean(&pc), num(&b["logps/chosen"]), 1e-3);
    }
}

#[test]
fn one_adamw_step_matches_torch_grad_norm_and_post_step_loss() {
    for set in ["llama", "qwen2"] {
        adamw_step(set);
    }
}

fn adamw_step(set: &str) {
    let model = load_from(set, "model");
    let exp = expected(set);
    let opt = &exp["optimizer_step"];
    let batch = TokenBatch::new(&sft_sequences(&exp), PAD, &Device::Cpu).unwrap();
    let loss = sft_loss(&target_logps(model.decoder(), &batch).unwrap()).unwrap();
    assert_close("loss before", f64::from(loss.to_scalar::<f32>().unwrap()), num(&opt["loss_before"]), 1e-5);
    let grads = loss.backward().unwrap();
    let params = model.parameters();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<String> =
        opt["trainable_parameter_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(names, want_names, "parameters in transformers' named_parameters() order");
    let norm = grad_norm(&params, &grads).unwrap();
    let want = num(&opt["grad_norm_before_step"]);
    assert_close("grad norm", norm, want, 1e-4 * want);
    let mut adamw = AdamW::new(params, AdamWConfig { lr: 1e-3, ..AdamWConfig::default() }).unwrap();
    adamw.step(&grads, 1.0).unwrap();
    let after = sft_loss(&target_logps(model.decoder(), &batch).unwrap()).unwrap();
    assert_close(
        "loss after one step",
        f64::from(after.to_scalar::<f32>().unwrap()),
        num(&opt["loss_after_one_step"]),
        1e-4,
    );
}

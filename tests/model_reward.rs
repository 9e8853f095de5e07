#![allow(clippy::unwrap_used)]
//! Reward models against transformers and TRL 1.16 (`tests/fixtures/reward`, made by
//! `tests/fixtures/gen/make_reward_model.py`): sequence-classification scores at the last non-pad
//! token, TRL's `RewardTrainer` loss (plain, with margins, with `center_rewards_coefficient`) and
//! metrics, one AdamW step, and directories that round-trip.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, floats, ids, num};
use hone::model::{ModelError, RewardModel};
use hone::train::optim::{grad_norm, AdamW, AdamWConfig};
use hone::train::reward::{reward_metrics, BradleyTerry};
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reward/expected.json")).unwrap()).unwrap()
}

fn load(set: &str) -> RewardModel {
    RewardModel::load(&fixture(&format!("reward/{set}")), &Device::Cpu, DType::F32).unwrap()
}

/// Chosen then rejected sequences, as TRL's collator stacks them.
fn sequences(e: &Value) -> (Vec<Vec<u32>>, usize) {
    let chosen: Vec<Vec<u32>> = e["chosen_ids"].as_array().unwrap().iter().map(ids).collect();
    let n = chosen.len();
    let mut all = chosen;
    all.extend(e["rejected_ids"].as_array().unwrap().iter().map(ids));
    (all, n)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[test]
fn scores_loss_and_metrics_match_trl_on_both_families() {
    let exp = expected();
    for set in ["llama", "qwen2"] {
        let e = &exp[set];
        let model = load(set);
        assert_eq!(model.pad_token_id(), Some(u32::try_from(e["pad_token_id"].as_u64().unwrap()).unwrap()));
        let (seqs, n) = sequences(e);
        let scores = model.scores(&seqs).unwrap();
        let want: Vec<f64> = floats(&e["rewards_chosen"]).into_iter().chain(floats(&e["rewards_rejected"])).collect();
        for (i, (a, b)) in to_vec(&scores).iter().zip(&want).enumerate() {
            assert_close(&format!("{set} score {i}"), *a, *b, 1e-4);
        }
        let (c, r) = (scores.narrow(0, 0, n).unwrap(), scores.narrow(0, n, n).unwrap());
        let loss = BradleyTerry::default().loss(&c, &r, None).unwrap();
        assert_close(&format!("{set} loss"), scalar(&loss), num(&e["loss"]), 1e-5);
        let m = reward_metrics(&c, &r).unwrap();
        let trl = &e["trl_metrics"];
        assert_close(&format!("{set} accuracy"), m.accuracy, num(&trl["accuracy"]), 1e-6);
        assert_close(&format!("{set} margins"), m.margins, num(&trl["margin"]), 1e-5);
        assert_close(&format!("{set} min"), m.min, num(&trl["min_reward"]), 1e-4);
        assert_close(&format!("{set} mean"), m.mean, num(&trl["mean_reward"]), 1e-5);
        assert_close(&format!("{set} max"), m.max, num(&trl["max_reward"]), 1e-4);
        assert_close(&format!("{set} rewards/chosen"), m.chosen, num(&e["rewards/chosen"]), 1e-5);
        assert_close(&format!("{set} rewards/rejected"), m.rejected, num(&e["rewards/rejected"]), 1e-5);
    }
}

#[test]
fn the_score_is_read_before_trailing_pad_ids_as_transformers_does() {
    // The Qwen2 set pads with EOS, and its plain completions end in EOS.
    let e = &expected()["qwen2"];
    let model = load("qwen2");
    let pad = model.pad_token_id().unwrap();
    let (seqs, _) = sequences(e);
    let ending = seqs.iter().filter(|s| s.last() == Some(&pad)).count();
    assert_eq!(ending as u64, e["sequences_ending_in_pad_id"].as_u64().unwrap());
    assert!(ending > 0);
    for (s, p) in seqs.iter().zip(model.score_positions(&seqs)) {
        assert_ne!(s[p], pad);
        assert!(s[p + 1..].iter().all(|&t| t == pad));
    }
    // Alone or in a padded batch, a sequence gets the same score.
    let batch = to_vec(&model.scores(&seqs).unwrap());
    for (i, s) in seqs.iter().enumerate().take(4) {
        let alone = to_vec(&model.scores(std::slice::from_ref(s)).unwrap())[0];
        assert_close(&format!("sequence {i} alone"), alone, batch[i], 1e-5);
    }
}

#[test]
fn margins_and_centering_match_trl() {
    let e = &expected()["llama"];
    let model = load("llama");
    let (seqs, n) = sequences(e);
    let scores = model.scores(&seqs).unwrap();
    let (c, r) = (scores.narrow(0, 0, n).unwrap(), scores.narrow(0, n, n).unwrap());
    let margins =
        Tensor::new(floats(&e["margins"]).iter().map(|&x| x as f32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let with_margin = BradleyTerry::default().loss(&c, &r, Some(&margins)).unwrap();
    assert_close("loss with margins", scalar(&with_margin), num(&e["loss_margin"]), 1e-5);
    let centered = BradleyTerry { center_rewards_coefficient: Some(num(&e["center_rewards_coefficient"])) };
    assert_close("centred loss", scalar(&centered.loss(&c, &r, None).unwrap()), num(&e["loss_center"]), 1e-5);
}

#[test]
fn one_adamw_step_matches_torch_grad_norm_and_post_step_loss() {
    let e = &expected()["llama"];
    let step = &e["optimizer_step"];
    let model = load("llama");
    let params = model.parameters();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = step["parameter_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, want, "transformers' named_parameters() order");
    let (seqs, n) = sequences(e);
    let loss_of = || {
        let s = model.scores(&seqs).unwrap();
        BradleyTerry::default().loss(&s.narrow(0, 0, n).unwrap(), &s.narrow(0, n, n).unwrap(), None).unwrap()
    };
    let loss = loss_of();
    assert_close("loss before", scalar(&loss), num(&step["loss_before"]), 1e-5);
    let grads = loss.backward().unwrap();
    let norm = grad_norm(&params, &grads).unwrap();
    let want_norm = num(&step["grad_norm"]);
    assert_close("grad norm", norm, want_norm, 1e-4 * want_norm);
    let mut adamw = AdamW::new(params, AdamWConfig { lr: num(&step["lr"]), ..AdamWConfig::default() }).unwrap();
    adamw.step(&grads, 1.0).unwrap();
    assert_close("loss after one step", scalar(&loss_of()), num(&step["loss_after"]), 1e-4);
}

#[test]
fn a_saved_reward_model_loads_back_with_the_same_scores() {
    let e = &expected()["qwen2"];
    let (seqs, _) = sequences(e);
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [
        ("from-seqcls", load("qwen2")),
        ("from-causal", RewardModel::from_causal_lm(&fixture("qwen2/model"), &Device::Cpu, DType::F32, 7).unwrap()),
    ] {
        let out = dir.path().join(name);
        model.save(&out, DType::F32).unwrap();
        let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"], serde_json::json!(["Qwen2ForSequenceClassification"]));
        assert_eq!(config["id2label"].as_object().unwrap().len(), 1);
        assert!(config["pad_token_id"].is_u64());
        assert!(out.join("tokenizer.json").exists());
        let back = RewardModel::load(&out, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(to_vec(&back.scores(&seqs).unwrap()), to_vec(&model.scores(&seqs).unwrap()), "{name}");
        let names: Vec<String> = back.parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.last().map(String::as_str), Some("score.weight"));
        assert!(!names.iter().any(|n| n.starts_with("lm_head")), "a sequence-classification model has no LM head");
    }
}

#[test]
fn a_fresh_head_is_seeded_and_starts_from_the_causal_lm() {
    let dir = fixture("llama/model");
    let a = RewardModel::from_causal_lm(&dir, &Device::Cpu, DType::F32, 1).unwrap();
    let b = RewardModel::from_causal_lm(&dir, &Device::Cpu, DType::F32, 1).unwrap();
    let c = RewardModel::from_causal_lm(&dir, &Device::Cpu, DType::F32, 2).unwrap();
    let seqs = vec![vec![0, 5, 9, 12], vec![0, 7]];
    assert_eq!(to_vec(&a.scores(&seqs).unwrap()), to_vec(&b.scores(&seqs).unwrap()));
    assert_ne!(to_vec(&a.scores(&seqs).unwrap()), to_vec(&c.scores(&seqs).unwrap()));
    // The decoder is the causal LM's, the head the only new parameter; pad id from config.json.
    let seqcls = load("llama");
    let (pa, pl) = (a.parameters(), seqcls.parameters());
    assert_eq!(pa.len(), pl.len());
    let embed = |p: &[(String, candle_core::Var)]| to_vec(&p[0].1.as_tensor().flatten_all().unwrap());
    assert_eq!(embed(&pa), embed(&pl));
    assert_eq!(a.pad_token_id(), Some(1));
}

#[test]
fn causal_lms_and_multi_label_heads_are_refused_with_the_file_named() {
    let err = RewardModel::load(&fixture("llama/model"), &Device::Cpu, DType::F32).err().unwrap();
    assert!(matches!(err, ModelError::UnsupportedArchitecture { .. }), "{err}");
    assert!(err.to_string().contains("LlamaForSequenceClassification"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("reward/llama")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["id2label"] = serde_json::json!({"0": "bad", "1": "good"});
    std::fs::write(&path, config.to_string()).unwrap();
    let err = RewardModel::load(dir.path(), &Device::Cpu, DType::F32).err().unwrap();
    assert!(err.to_string().contains("config.json: id2label: a reward model has one label"), "{err}");
    assert!(RewardModel::load(&fixture("reward/llama"), &Device::Cpu, DType::F32).unwrap().scores(&[vec![]]).is_err());
}

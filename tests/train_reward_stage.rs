#![allow(clippy::unwrap_used, clippy::float_cmp)] // exact equality is the point of the resume test
//! A reward-model stage (`[stage.rm]`) through the trainer: one step on TRL's fixture batch gives
//! TRL 1.16 `RewardTrainer`'s loss, metrics, grad norm and post-step loss
//! (`tests/fixtures/reward/expected.json`, made by `tests/fixtures/gen/make_reward_model.py`);
//! the data is tokenized as TRL does; the export is a sequence-classification directory with the
//! trained scores; the policy is untouched; a stopped stage resumes bit-exactly.

mod common;
mod memory_host;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::{assert_close, fixture, floats, ids, num};
use hone::config::Pipeline;
use hone::data::{ChatTemplate, TextTokenizer};
use hone::model::RewardModel;
use hone::train::plan::load_stage_data;
use hone::train::reward::BradleyTerry;
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reward/expected.json")).unwrap()).unwrap()
}

/// A one-stage reward-model pipeline on the Llama oracle: the whole fixture batch in one step,
/// TRL's optimizer settings (AdamW lr 1e-3, no decay, no clipping, constant rate).
fn rm_pipeline(data: &Path, rm: &str) -> Pipeline {
    let text = format!(
        r#"
[run]
seed = 3
checkpoint_every = 0
sample_every = 0

[model]
path = "{model}"

[[stage]]
name = "rm"
batch_size = 8
max_steps = 1
lr = 1e-3
schedule = "constant"
max_grad_norm = 0.0
rm = {{ data = ["{data}"] {rm} }}
"#,
        model = fixture("llama/model").display(),
        data = data.display(),
    );
    toml::from_str(&text).unwrap()
}

fn run(p: &Pipeline, dir: &Path) -> MemoryHost {
    let mut host = MemoryHost::new(dir, p);
    let mut trainer = Trainer::new(p.clone(), RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);
    host
}

fn fixture_rm() -> String {
    format!(", model = \"{}\"", fixture("reward/llama").display())
}

fn scores(model: &RewardModel, e: &Value) -> (candle_core::Tensor, candle_core::Tensor) {
    let chosen: Vec<Vec<u32>> = e["chosen_ids"].as_array().unwrap().iter().map(ids).collect();
    let n = chosen.len();
    let mut seqs = chosen;
    seqs.extend(e["rejected_ids"].as_array().unwrap().iter().map(ids));
    let s = model.scores(&seqs).unwrap();
    (s.narrow(0, 0, n).unwrap(), s.narrow(0, n, n).unwrap())
}

#[test]
fn rm_data_is_tokenized_as_trl_reward_trainer_does() {
    let exp = expected();
    for (set, model, data) in
        [("llama", "llama/model", "llama/prefs.jsonl"), ("qwen2", "qwen2/model", "qwen2/prefs_plain.jsonl")]
    {
        let p = rm_pipeline(&fixture(data), "");
        let tok = TextTokenizer::from_dir(&fixture(model)).unwrap();
        let template = ChatTemplate::for_tokenizer(&tok).unwrap();
        let data = load_stage_data(&p.stages[0], &[], &tok, template.as_ref()).unwrap();
        let want = |k: &str| -> Vec<Vec<u32>> { exp[set][k].as_array().unwrap().iter().map(ids).collect() };
        assert_eq!(data.rm_pairs.iter().map(|p| p.chosen.clone()).collect::<Vec<_>>(), want("chosen_ids"), "{set}");
        assert_eq!(data.rm_pairs.iter().map(|p| p.rejected.clone()).collect::<Vec<_>>(), want("rejected_ids"), "{set}");
        assert!(data.pairs.is_empty() && data.sft.is_empty(), "rm pairs train nothing else");
    }
}

#[test]
fn one_rm_step_matches_trl_and_exports_the_trained_model() {
    let e = &expected()["llama"];
    let step = &e["optimizer_step"];
    let dir = tempfile::tempdir().unwrap();
    let p = rm_pipeline(&fixture("llama/prefs.jsonl"), &fixture_rm());
    let host = run(&p, dir.path());
    let m = &host.metrics()[0].2;
    assert_close("loss", m["loss"].as_f64().unwrap(), num(&step["loss_before"]), 1e-5);
    assert_close("loss/rm", m["loss/rm"].as_f64().unwrap(), num(&e["loss"]), 1e-5);
    let norm = num(&step["grad_norm"]);
    assert_close("grad_norm", m["grad_norm"].as_f64().unwrap(), norm, 1e-4 * norm);
    for (key, want) in [
        ("rewards/chosen", num(&e["rewards/chosen"])),
        ("rewards/rejected", num(&e["rewards/rejected"])),
        ("rewards/margins", num(&e["rewards/margins"])),
        ("accuracy", num(&e["accuracy"])),
    ] {
        assert_close(key, m[key].as_f64().unwrap(), want, 1e-5);
    }
    // The export is the reward model after TRL's step: its loss is TRL's post-step loss.
    let saved = host.events.iter().find(|ev| ev.0 == "reward_model_saved").unwrap();
    let export = PathBuf::from(saved.3["path"].as_str().unwrap());
    assert_eq!(export, dir.path().join("exports/rm"));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(export.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["LlamaForSequenceClassification"]));
    assert_eq!(config["pad_token_id"], serde_json::json!(1));
    assert_eq!(config["id2label"].as_object().unwrap().len(), 1);
    let trained = RewardModel::load(&export, &Device::Cpu, DType::F32).unwrap();
    let (c, r) = scores(&trained, e);
    let after = BradleyTerry::default().loss(&c, &r, None).unwrap().to_scalar::<f32>().unwrap();
    assert_close("loss after the step", f64::from(after), num(&step["loss_after"]), 1e-4);
    // A reward-model stage is not evaluated, and no gate decides on it.
    assert!(!host.events.iter().any(|ev| ev.0 == "eval_finished" || ev.0 == "gate_decided"));
}

#[test]
fn margins_and_centering_reach_the_stage_loss_as_in_trl() {
    let e = &expected()["llama"];
    let dir = tempfile::tempdir().unwrap();
    // The fixture's rows with TRL's `margin` column.
    let margins = floats(&e["margins"]);
    let rows: Vec<String> = std::fs::read_to_string(fixture("llama/prefs.jsonl"))
        .unwrap()
        .lines()
        .zip(&margins)
        .map(|(line, m)| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v["margin"] = serde_json::json!(m);
            v.to_string()
        })
        .collect();
    let with_margins = dir.path().join("prefs_margin.jsonl");
    std::fs::write(&with_margins, rows.join("\n") + "\n").unwrap();
    let host = run(&rm_pipeline(&with_margins, &fixture_rm()), &dir.path().join("a"));
    assert_close("loss with margins", host.metrics()[0].2["loss"].as_f64().unwrap(), num(&e["loss_margin"]), 1e-5);

    let center = format!("{}, center_rewards_coefficient = {}", fixture_rm(), num(&e["center_rewards_coefficient"]));
    let host = run(&rm_pipeline(&fixture("llama/prefs.jsonl"), &center), &dir.path().join("b"));
    assert_close("centred loss", host.metrics()[0].2["loss"].as_f64().unwrap(), num(&e["loss_center"]), 1e-5);

    // A margin that is not a number is refused with its line.
    std::fs::write(&with_margins, rows[0].replace("\"margin\":0.5", "\"margin\":\"big\"") + "\n").unwrap();
    let p = rm_pipeline(&with_margins, "");
    let mut host = MemoryHost::new(dir.path(), &p);
    let err = Trainer::new(p, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap().run().err().unwrap();
    assert!(err.to_string().contains("prefs_margin.jsonl:1: margin: expected a finite number"), "{err}");
}

/// A reward model from the policy itself (fresh seeded head), trained a few steps in batches of 2.
fn from_policy(steps: u64) -> Pipeline {
    let mut p = rm_pipeline(&fixture("llama/prefs.jsonl"), "");
    p.stages[0].batch_size = 2;
    p.stages[0].max_steps = Some(steps);
    p.stages[0].epochs = 3;
    p.stages[0].lr = 3e-3;
    p
}

#[test]
fn a_reward_model_from_the_policy_learns_and_leaves_the_policy_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = from_policy(12);
    let mut host = MemoryHost::new(dir.path(), &p);
    let mut trainer = Trainer::new(p.clone(), RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    trainer.run().unwrap();
    let policy_after: Vec<Vec<f32>> = trainer
        .policy()
        .parameters()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    drop(trainer);
    let original = hone::model::Model::load(&fixture("llama/model"), &Device::Cpu, DType::F32).unwrap();
    let policy_before: Vec<Vec<f32>> =
        original.parameters().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
    assert_eq!(policy_after, policy_before, "a reward-model stage never changes the policy");
    let loss = host.series("rm", "loss");
    assert_eq!(loss.len(), 12);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(mean(&loss[8..]) < mean(&loss[..4]), "the Bradley-Terry loss falls: {loss:?}");
    // Its export scores the training pairs' chosen answers above the rejected ones.
    let trained = RewardModel::load(&dir.path().join("exports/rm"), &Device::Cpu, DType::F32).unwrap();
    let (c, r) = scores(&trained, &expected()["llama"]);
    let (c, r): (Vec<f32>, Vec<f32>) = (c.to_vec1().unwrap(), r.to_vec1().unwrap());
    let wins = c.iter().zip(&r).filter(|(a, b)| a > b).count();
    assert!(wins >= 6, "chosen above rejected on {wins} of 8 pairs");
}

#[test]
fn a_stopped_reward_model_stage_resumes_bit_exactly() {
    let mut p = from_policy(9);
    p.run.checkpoint_every = 2;
    let full_dir = tempfile::tempdir().unwrap();
    let full = run(&p, full_dir.path());
    let want: Vec<(u64, f64, f64)> = full
        .metrics()
        .iter()
        .map(|m| (m.1, m.2["loss"].as_f64().unwrap(), m.2["rewards/margins"].as_f64().unwrap()))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let mut got: Vec<(u64, f64, f64)> = Vec::new();
    let mut resume_from: Option<PathBuf> = None;
    for stop_at in [3usize, 6, usize::MAX] {
        let mut host = MemoryHost::new(dir.path(), &p);
        host.stop_after_metrics = (stop_at != usize::MAX).then_some(stop_at - got.len());
        let mut trainer = match &resume_from {
            None => Trainer::new(p.clone(), RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap(),
            Some(ck) => {
                Trainer::resume(p.clone(), RunOptions::default(), &mut host, Device::Cpu, DType::F32, ck).unwrap()
            }
        };
        let finished = trainer.run().unwrap();
        drop(trainer);
        got.extend(
            host.metrics()
                .iter()
                .map(|m| (m.1, m.2["loss"].as_f64().unwrap(), m.2["rewards/margins"].as_f64().unwrap())),
        );
        if stop_at == usize::MAX {
            assert_eq!(finished, Finished::Completed);
        } else {
            assert_eq!(finished, Finished::Stopped);
            let ck = host.checkpoints.last().unwrap().1.clone();
            assert!(ck.join("reward_model.safetensors").exists(), "the checkpoint keeps the reward model");
            resume_from = Some(ck);
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "global steps");
        assert_eq!(g.1.to_bits(), w.1.to_bits(), "loss at step {}", g.0);
        assert_eq!(g.2.to_bits(), w.2.to_bits(), "margins at step {}", g.0);
    }
    let weights = |d: &Path| std::fs::read(d.join("exports/rm/model.safetensors")).unwrap();
    assert!(weights(dir.path()) == weights(full_dir.path()), "the resumed export is the uninterrupted one");
}

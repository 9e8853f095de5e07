//! The trainer on the sample pipeline: the losses move the right way, a stopped run resumes
//! bit-exactly, and non-finite steps are skipped or halt the run.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // exact equality is the point of the resume test

mod memory_host;

use std::path::PathBuf;

use candle_core::{DType, Device};
use hone::config::{load_pipeline, Pipeline};
use hone::train::trainer::{Finished, RunOptions, Trainer};
use hone::train::TrainError;
use memory_host::{MemoryHost, Recorded};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

/// The sample pipeline, its paths resolved as `hone run` resolves them.
fn pipeline() -> Pipeline {
    pipeline_with_eval(false)
}

fn pipeline_with_eval(with_eval: bool) -> Pipeline {
    let mut p = load_pipeline(&sample().join("pipeline.toml")).unwrap().pipeline;
    // Evaluation is exercised by its own test (and the CLI tests); the others train only.
    if !with_eval {
        p.eval = None;
    }
    p
}

fn first_last_mean(v: &[f64], k: usize) -> (f64, f64) {
    let k = k.min(v.len() / 2).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&v[..k]), mean(&v[v.len() - k..]))
}

#[test]
fn sample_pipeline_learns_each_term() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline();
    let mut host = MemoryHost::new(tmp.path(), &p);
    let mut trainer = Trainer::new(p, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);

    let (first, last) = first_last_mean(&host.series("sft", "loss/sft"), 3);
    assert!(last < first * 0.8, "SFT loss should fall: {first} -> {last}");
    let acc = host.series("dpo", "rewards/accuracies");
    let (_, acc_last) = first_last_mean(&acc, 3);
    assert!(acc_last > 0.5, "DPO reward accuracy should rise above 0.5: {acc:?}");
    let (ul_first, ul_last) = first_last_mean(&host.series("safety", "loss/safe"), 3);
    assert!(ul_last < ul_first, "unlikelihood of unsafe tokens should fall: {ul_first} -> {ul_last}");
    // Every metrics event carries the objective's parts and the λ values in force.
    for (_, _, m) in host.metrics() {
        for key in ["loss", "lambda/pref", "lambda/safe", "learning_rate", "grad_norm", "tokens_per_second", "epoch"] {
            assert!(m.contains_key(key), "metrics without {key}: {m:?}");
        }
    }
    let dpo = host.metrics().into_iter().find(|m| m.0 == "dpo").unwrap().2;
    let weighted = dpo["weighted/pref"].as_f64().unwrap();
    assert!((weighted - 0.5 * dpo["loss/pref"].as_f64().unwrap()).abs() < 1e-12);
    assert!(host.events.iter().any(|e| e.0 == "lambda_changed"), "adaptive λ_safe updates");
    // Global steps are strictly increasing across stages.
    let steps: Vec<u64> = host.metrics().iter().map(|m| m.1).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
}

#[test]
fn a_stopped_run_resumes_bit_exactly() {
    let mut p = pipeline();
    p.run.checkpoint_every = 0;
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = MemoryHost::new(full_dir.path(), &p);
    Trainer::new(p.clone(), RunOptions::default(), &mut full, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let want: Vec<(u64, f64)> = full.metrics().iter().map(|m| (m.1, m.2["loss"].as_f64().unwrap())).collect();

    // Stop at a few points (mid SFT, mid DPO, mid safety), resume each time from the newest checkpoint.
    let got = memory_host::losses_through_stops(&p, &RunOptions::default(), &[5, 17, 31]);
    memory_host::assert_same_losses(&got, &want);
}

#[test]
fn non_finite_steps_are_skipped_or_halt() {
    let mut p = pipeline();
    p.stages.truncate(1);
    let tmp = tempfile::tempdir().unwrap();
    let mut host = MemoryHost::new(tmp.path(), &p);
    let options = RunOptions { inject_nan_at: vec![2], max_steps: Some(5), ..RunOptions::default() };
    Trainer::new(p.clone(), options.clone(), &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let warning = host.events.iter().find(|e| e.0 == "warning").expect("a warning for the NaN step");
    assert_eq!(warning.2, Some(2));
    assert!(warning.3["message"].as_str().unwrap().contains("non-finite loss"));
    assert_eq!(host.metrics().len(), 5, "the run goes on after a skipped step");

    p.run.nan_policy = hone::config::NanPolicy::Halt;
    let mut host = MemoryHost::new(tmp.path(), &p);
    let err = Trainer::new(p, options, &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 2, .. }), "{err}");
    assert!(host.events.iter().any(|e| e.0 == "error"));
}

fn labels(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("l{i}"),
                "prompt": [{"role": "user", "content": format!("Is {i} even?")}],
                "chosen": [{"role": "assistant", "content": if i % 2 == 0 { "Yes, it is even." } else { "No, it is odd." }}],
                "rejected": [{"role": "assistant", "content": "I am not sure."}],
                "labeler": "test",
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn labels_appended_during_dpo_join_training_at_the_next_step_and_resume_exactly() {
    let p = pipeline();
    let dpo_first_step = 12; // after the 12 SFT steps
    let label_step = dpo_first_step + 3;
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = MemoryHost::new(full_dir.path(), &p);
    full.label_at = Some((label_step, labels(3)));
    Trainer::new(p.clone(), RunOptions::default(), &mut full, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let admitted: Vec<&Recorded> = full.events.iter().filter(|e| e.0 == "labels_admitted").collect();
    assert_eq!(admitted.len(), 1, "{:?}", full.events.iter().map(|e| (&e.0, e.2)).collect::<Vec<_>>());
    assert_eq!(admitted[0].2, Some(label_step), "admitted at the next step boundary");
    assert_eq!(admitted[0].3["count"], 3);
    assert_eq!(admitted[0].3["byte_offset"].as_u64().unwrap(), labels(3).len() as u64);
    let want: Vec<(u64, f64)> = full.metrics().iter().map(|m| (m.1, m.2["loss"].as_f64().unwrap())).collect();

    // Stop after the admission, resume: the pool is rebuilt identically.
    let dir = tempfile::tempdir().unwrap();
    let mut first = MemoryHost::new(dir.path(), &p);
    first.label_at = Some((label_step, labels(3)));
    first.stop_after_metrics = Some(label_step as usize + 4);
    let finished =
        Trainer::new(p.clone(), RunOptions::default(), &mut first, Device::Cpu, DType::F32).unwrap().run().unwrap();
    assert_eq!(finished, Finished::Stopped);
    let mut got: Vec<(u64, f64)> = first.metrics().iter().map(|m| (m.1, m.2["loss"].as_f64().unwrap())).collect();
    let ck = first.checkpoints.last().unwrap().1.clone();
    // Editing labels the run already trained on makes the resume refuse.
    let labels_path = dir.path().join("labels.jsonl");
    let original = std::fs::read_to_string(&labels_path).unwrap();
    std::fs::write(&labels_path, original.replacen("even", "EVEN", 1)).unwrap();
    let mut refused = MemoryHost::new(dir.path(), &p);
    let err = Trainer::resume(p.clone(), RunOptions::default(), &mut refused, Device::Cpu, DType::F32, &ck)
        .unwrap()
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("refusing to resume"), "{err}");
    std::fs::write(&labels_path, original).unwrap();
    let mut second = MemoryHost::new(dir.path(), &p);
    Trainer::resume(p, RunOptions::default(), &mut second, Device::Cpu, DType::F32, &ck).unwrap().run().unwrap();
    got.extend(second.metrics().iter().map(|m| (m.1, m.2["loss"].as_f64().unwrap())));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.0, g.1.to_bits()), (w.0, w.1.to_bits()), "step {}", g.0);
    }
}

#[test]
fn the_base_model_and_every_stage_are_evaluated_and_gated_against_the_baseline() {
    let p = pipeline_with_eval(true);
    assert!(p.eval.is_some(), "the sample pipeline has an [eval] table");
    let tmp = tempfile::tempdir().unwrap();
    let mut host = MemoryHost::new(tmp.path(), &p);
    let options = RunOptions { max_steps: Some(2), ..RunOptions::default() };
    Trainer::new(p, options, &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let evaluated: Vec<String> =
        host.events.iter().filter(|e| e.0 == "eval_finished").map(|e| e.1.clone().unwrap()).collect();
    assert_eq!(evaluated, ["base", "sft", "dpo", "safety"]);
    // The baseline (sft) and the base model are not gated; later stages are, against sft.
    let gated: Vec<(String, String)> = host
        .events
        .iter()
        .filter(|e| e.0 == "gate_decided")
        .map(|e| (e.1.clone().unwrap(), e.3["decision"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(gated.len(), 2, "{gated:?}");
    assert_eq!(gated[0].0, "dpo");
    // A tiny random model refuses nothing: the safety gates fail, the loop goes back to iterate.
    assert!(gated.iter().all(|(_, d)| d == "iterate"), "{gated:?}");
    let first = host.events.iter().find(|e| e.0 == "eval_finished").unwrap();
    assert!(first.3["win_rate"].is_null(), "no baseline for the base model");
}

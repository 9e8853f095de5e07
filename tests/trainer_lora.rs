//! The trainer with a LoRA adapter on the sample pipeline: only the adapter trains and is
//! checkpointed in PEFT's layout, a stopped run resumes bit-exactly (dropout masks included), and
//! DPO's reference is the base with the adapters off (no second model).
#![allow(clippy::unwrap_used, clippy::float_cmp)] // exact equality is the point of the resume test

mod memory_host;

use std::path::PathBuf;

use candle_core::{DType, Device};
use hone::config::{load_pipeline, LoraSettings, Pipeline, TargetModules};
use hone::train::trainer::{RunOptions, Trainer};
use memory_host::MemoryHost;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

/// The sample pipeline (paths resolved as `hone run` resolves them, no evaluation) training a
/// LoRA adapter.
fn pipeline(dropout: f64) -> Pipeline {
    let mut p = load_pipeline(&sample().join("pipeline.toml")).unwrap().pipeline;
    p.eval = None;
    for s in &mut p.stages {
        s.lr = 1e-2;
    }
    p.model.lora =
        Some(LoraSettings { r: 4, alpha: 8.0, dropout, target_modules: TargetModules::One("all-linear".into()) });
    p
}

fn options(max_steps: u64) -> RunOptions {
    RunOptions { max_steps: Some(max_steps), ..RunOptions::default() }
}

#[test]
fn a_stopped_lora_run_with_dropout_resumes_bit_exactly() {
    let mut p = pipeline(0.1);
    p.run.checkpoint_every = 0;
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = MemoryHost::new(full_dir.path(), &p);
    Trainer::new(p.clone(), options(6), &mut full, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let want: Vec<(u64, f64)> = full.metrics().iter().map(|m| (m.1, m.2["loss"].as_f64().unwrap())).collect();
    assert_eq!(want.len(), 18);
    // Each checkpoint is the adapter in PEFT's layout beside the optimizer and trainer state;
    // the frozen base is never copied.
    let (_, ck) = full.checkpoints.last().unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(ck).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    );

    let got = memory_host::losses_through_stops(&p, &options(6), &[4, 9, 14]);
    memory_host::assert_same_losses(&got, &want);
}

#[test]
fn lora_dpo_scores_the_reference_on_the_base_with_adapters_off() {
    let mut p = pipeline(0.0);
    p.stages.retain(|s| s.name == "dpo");
    let dir = tempfile::tempdir().unwrap();
    let mut host = MemoryHost::new(dir.path(), &p);
    let mut trainer = Trainer::new(p.clone(), options(4), &mut host, Device::Cpu, DType::F32).unwrap();
    trainer.run().unwrap();
    let names: Vec<String> = trainer.policy().parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| n.contains(".lora_A.") || n.contains(".lora_B.")), "{names:?}");
    drop(trainer);
    // No reference model was saved or loaded: it is the policy's base.
    assert!(!dir.path().join("references").exists());
    // A fresh adapter (B = 0) is the base, so the first step's rewards are exactly zero and the
    // DPO loss is ln 2; after updates the policy moves away from its reference.
    let dpo = host.metrics();
    let first = &dpo[0].2;
    assert_eq!(first["rewards/chosen"].as_f64().unwrap(), 0.0);
    assert_eq!(first["rewards/rejected"].as_f64().unwrap(), 0.0);
    assert!((first["loss/pref"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(dpo.last().unwrap().2["rewards/margins"].as_f64().unwrap() != 0.0);
}

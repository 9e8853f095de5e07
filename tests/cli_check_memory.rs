//! `hone check`'s memory lines: per stage the estimated peak (weights, gradients, AdamW,
//! reference, activations) with and without gradient checkpointing, and a warning when the
//! estimate exceeds the device's memory.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const HONE: &str = env!("CARGO_BIN_EXE_hone");

/// A copy of the sample world (without the weights: `hone check` reads the config and the
/// tokenizer only), with `edit` applied to the model's `config.json` and `pipeline` to the
/// pipeline's text.
fn world(dir: &Path, edit: impl Fn(&mut serde_json::Value), pipeline: impl Fn(String) -> String) -> PathBuf {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-data");
    std::fs::create_dir_all(dir.join("model")).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(from.join("model").join(name), dir.join("model").join(name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("model/config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("model/config.json"), config.to_string()).unwrap();
    let text = pipeline(std::fs::read_to_string(from.join("pipeline.toml")).unwrap());
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(pipeline: &Path) -> String {
    let out = Command::new(HONE).args(["check", pipeline.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn check_prints_each_stages_memory_with_and_without_checkpointing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(&world(tmp.path(), |_| {}, |t| t));
    let stages = out.lines().filter(|l| l.starts_with("stage ")).count();
    assert!(stages >= 3, "{out}");
    assert_eq!(out.matches("memory on cpu (estimate").count(), stages, "{out}");
    assert_eq!(out.matches("gradient checkpointing off (chosen)").count(), stages, "{out}");
    assert!(out.contains("reference: held while training (live labels"), "{out}");
    assert!(out.contains("weights 5.2 MB + gradients 5.2 MB + AdamW 10.5 MB"), "{out}");
    assert!(!out.contains("warning: estimated peak"), "{out}");

    let out = check(&world(tmp.path(), |_| {}, |t| t.replace("[run]\n", "[run]\ngradient_checkpointing = true\n")));
    assert_eq!(out.matches("gradient checkpointing on (chosen)").count(), stages, "{out}");
}

#[test]
fn check_warns_when_the_estimate_exceeds_the_device() {
    if !cfg!(target_os = "linux") {
        return; // the machine's memory is read from /proc/meminfo
    }
    let tmp = tempfile::tempdir().unwrap();
    // A 70B-parameter shape: over a terabyte to fine-tune in f32 with AdamW.
    let big = |c: &mut serde_json::Value| {
        for (k, v) in [
            ("hidden_size", 8192),
            ("intermediate_size", 28672),
            ("num_hidden_layers", 80),
            ("num_attention_heads", 64),
            ("num_key_value_heads", 8),
            ("head_dim", 128),
        ] {
            c[k] = v.into();
        }
    };
    let out = check(&world(tmp.path(), big, |t| t));
    let stages = out.lines().filter(|l| l.starts_with("stage ")).count();
    assert!(stages >= 3, "{out}");
    assert_eq!(out.matches("warning: estimated peak").count(), stages, "{out}");
    assert!(out.contains("exceeds the device's") && out.contains("gradient_checkpointing = true"), "{out}");
}

#[test]
fn check_counts_a_lora_run_as_a_frozen_base_and_its_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let lora =
        |t: String| t.replace("[model]\n", "[model]\nlora = { r = 8, alpha = 16, target_modules = \"all-linear\" }\n");
    let out = check(&world(tmp.path(), |_| {}, lora));
    let stages = out.lines().filter(|l| l.starts_with("stage ")).count();
    assert_eq!(out.matches("LoRA r 8 (alpha 16):").count(), stages, "{out}");
    assert!(out.contains("frozen base (1312384 parameters) in f32"), "{out}");
    // Gradients and AdamW's two moments for the 116,736 adapter parameters only.
    assert!(out.contains("gradients 467 kB + AdamW 934 kB"), "{out}");
    // No second model: the live-label reference is the base with the adapters off.
    assert!(out.contains("reference: the policy's frozen base with its adapters off"), "{out}");
    assert!(!out.contains("reference: held while training"), "{out}");
    let bf16 = |t: String| lora(t).replace("[run]\n", "[run]\ndtype = \"bf16\"\n");
    let out = check(&world(tmp.path(), |_| {}, bf16));
    assert!(out.contains("frozen base (1312384 parameters) in bf16"), "{out}");
}

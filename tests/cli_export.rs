#![allow(clippy::unwrap_used)]
//! `hone run` with `[model] lora` through the worker, then `hone export`: the PEFT adapter of the
//! stage and the merged full model, which loads as a plain model with the adapter's logits.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use hone::model::{AdapterInit, Model};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

fn hone(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hone")).args(args).output().unwrap();
    assert!(out.status.success(), "hone {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn logits(model: &Model) -> Tensor {
    let ids = Tensor::new(&[[5u32, 17, 42, 9, 3, 28]], &Device::Cpu).unwrap();
    model.decoder().forward(&ids, None).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    n.sort();
    n
}

#[test]
fn a_lora_run_exports_its_adapter_and_a_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("pipeline.toml");
    let text = format!(
        "[run]\nname = \"lora\"\nseed = 3\n\n[model]\npath = \"{}\"\nlora = {{ r = 4, alpha = 16, target_modules = \"all-linear\" }}\n\n\
         [[stage]]\nname = \"sft\"\nbatch_size = 4\nlr = 1e-2\nsft = {{ data = [\"{}\"] }}\n",
        sample().join("model").display(),
        sample().join("sft.jsonl").display()
    );
    std::fs::write(&pipeline, text).unwrap();
    let runs = tmp.path().join("runs");
    let run = hone(&[
        "run",
        pipeline.to_str().unwrap(),
        "--headless",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--max-steps",
        "3",
    ]);
    let run = PathBuf::from(run);
    let checkpoints: Vec<PathBuf> =
        std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!checkpoints.is_empty());
    for ck in &checkpoints {
        let files = names(ck);
        assert!(
            files.contains(&"adapter_config.json".into()) && files.contains(&"adapter_model.safetensors".into()),
            "{files:?}"
        );
        assert!(!files.contains(&"model.safetensors".into()), "the frozen base is not copied: {files:?}");
    }
    let adapter = PathBuf::from(hone(&["export", run.to_str().unwrap(), "--stage", "sft"]));
    assert_eq!(adapter, run.join("exports/sft"));
    assert_eq!(names(&adapter), ["adapter_config.json", "adapter_model.safetensors"]);
    let merged = PathBuf::from(hone(&["export", run.to_str().unwrap(), "--stage", "sft", "--merge"]));
    assert!(
        names(&merged).contains(&"model.safetensors".to_string())
            && names(&merged).contains(&"tokenizer.json".to_string())
    );
    let base = Model::load(&sample().join("model"), &Device::Cpu, DType::F32).unwrap();
    let with =
        Model::load_with_adapter(&sample().join("model"), &Device::Cpu, DType::F32, &AdapterInit::Dir(adapter.clone()))
            .unwrap();
    let full = Model::load(&merged, &Device::Cpu, DType::F32).unwrap();
    let (b, w, f) = (logits(&base), logits(&with), logits(&full));
    assert!(max_diff(&w, &f) < 1e-4, "merged model = base + adapter");
    assert!(max_diff(&b, &w) > 1e-3, "training moved the adapter");
    // The same export again (as after a crash) succeeds and changes nothing; an export directory
    // with other contents is never overwritten.
    let config = std::fs::read(adapter.join("adapter_config.json")).unwrap();
    assert_eq!(hone(&["export", run.to_str().unwrap(), "--stage", "sft"]), adapter.display().to_string());
    assert_eq!(std::fs::read(adapter.join("adapter_config.json")).unwrap(), config);
    std::fs::write(adapter.join("adapter_config.json"), b"{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["export", run.to_str().unwrap(), "--stage", "sft"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists with other contents"));
    assert_eq!(std::fs::read(adapter.join("adapter_config.json")).unwrap(), b"{}");
    let out = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["export", run.to_str().unwrap(), "--stage", "dpo"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such stage"), "{}", String::from_utf8_lossy(&out.stderr));
}

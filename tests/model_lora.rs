#![allow(clippy::unwrap_used)]
//! LoRA against PEFT (`tests/fixtures/lora/`, made by `tests/fixtures/gen/make_lora.py`): a random
//! non-zero adapter on the Qwen2 fixture, its per-record SFT log-probs through `hone score
//! --adapter`, one AdamW step on the adapter alone, the merged model's logits, and hone's saved
//! adapter against the PEFT-written one (keys, shapes, dtypes, config fields).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, expected, fixture, floats, ids, num};
use hone::model::{AdapterInit, LoraSpec, Model, Precision, Targets};
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::loss::{sft_loss, target_logps};
use hone::train::optim::{grad_norm, AdamW, AdamWConfig};
use serde_json::Value;

const PAD: u32 = 1;

fn base() -> std::path::PathBuf {
    fixture("qwen2/model")
}

fn peft_adapter() -> std::path::PathBuf {
    fixture("lora/adapter")
}

fn with_adapter(dir: &Path) -> Model {
    Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &AdapterInit::Dir(dir.to_path_buf())).unwrap()
}

fn sft_batch() -> TokenBatch {
    let exp = expected("qwen2");
    let seqs: Vec<Sequence> = exp["sft"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Sequence {
            ids: ids(&e["input_ids"]),
            targets: e["assistant_masks"].as_array().unwrap().iter().map(|m| m.as_u64() == Some(1)).collect(),
        })
        .collect();
    TokenBatch::new(&seqs, PAD, &Device::Cpu).unwrap()
}

fn loss_of(model: &Model, batch: &TokenBatch) -> Tensor {
    sft_loss(&target_logps(model.decoder(), batch).unwrap()).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    f64::from(t.to_scalar::<f32>().unwrap())
}

fn score_lines(extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["score", "--model"])
        .arg(base())
        .arg("--data")
        .arg(fixture("qwen2/sft.jsonl"))
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn score_with_a_peft_adapter_matches_peft_per_record() {
    let exp = expected("lora");
    let adapter = peft_adapter();
    let lines = score_lines(&["--adapter", adapter.to_str().unwrap()]);
    let plain = score_lines(&[]);
    let records = exp["sft_records"].as_array().unwrap();
    assert_eq!(lines.len(), records.len() + 1, "one line per record and a summary");
    for (i, (line, want)) in lines.iter().zip(records).enumerate() {
        assert_eq!(line["num_loss_tokens"], want["num_loss_tokens"], "record {i}");
        let w = num(&want["logp"]);
        assert_close(&format!("record {i} log-prob"), num(&line["logp"]), w, 1e-5 * w.abs());
        // The adapter is not a no-op: the base alone scores differently.
        assert!((num(&plain[i]["logp"]) - w).abs() > 1e-2, "record {i}: the adapter changed nothing");
    }
}

#[test]
fn one_adamw_step_on_the_adapter_alone_matches_torch() {
    let exp = expected("lora");
    let opt = &exp["optimizer_step"];
    let model = with_adapter(&peft_adapter());
    let batch = sft_batch();
    model.set_adapters_enabled(false);
    let base_before = scalar(&loss_of(&model, &batch));
    model.set_adapters_enabled(true);
    let loss = loss_of(&model, &batch);
    assert_close("loss before", scalar(&loss), num(&opt["loss_before"]), 1e-5);
    let grads = loss.backward().unwrap();
    let params = model.parameters();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> =
        opt["trainable_parameter_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, want, "only the adapter trains, in PEFT's named_parameters() order");
    let norm = grad_norm(&params, &grads).unwrap();
    let want_norm = num(&opt["grad_norm_before_step"]);
    assert_close("grad norm", norm, want_norm, 1e-4 * want_norm);
    let config = AdamWConfig { lr: 1e-3, weight_decay: 0.01, ..AdamWConfig::default() };
    let mut adamw = AdamW::new(params, config).unwrap();
    adamw.step(&grads, 1.0).unwrap();
    assert_close("loss after one step", scalar(&loss_of(&model, &batch)), num(&opt["loss_after_one_step"]), 1e-4);
    // The base did not move: with the adapters off, the loss is the one before the step.
    model.set_adapters_enabled(false);
    assert_eq!(scalar(&loss_of(&model, &batch)).to_bits(), base_before.to_bits());
}

#[test]
fn the_merged_model_has_peft_merge_and_unload_logits() {
    let exp = expected("lora");
    let want = &exp["merged_logits"];
    let model = with_adapter(&peft_adapter());
    let dir = tempfile::tempdir().unwrap();
    hone::durable::write_dir(&dir.path().join("merged"), &model.merged_files(DType::F32).unwrap()).unwrap();
    let merged = Model::load(&dir.path().join("merged"), &Device::Cpu, DType::F32).unwrap();
    assert!(merged.lora().is_none());
    let record = expected("qwen2")["sft"]["examples"][0]["input_ids"].clone();
    let ids = Tensor::new(ids(&record), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = merged.decoder().forward(&ids, None).unwrap().squeeze(0).unwrap();
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    for (p, row) in want["positions"].as_array().unwrap().iter().zip(want["rows"].as_array().unwrap()) {
        let p = usize::try_from(p.as_u64().unwrap()).unwrap();
        for (v, (got, w)) in rows[p].iter().zip(floats(row)).enumerate() {
            assert_close(&format!("position {p} logit {v}"), f64::from(*got), w, 2e-5);
        }
    }
    let all: Vec<f64> = rows.iter().flatten().map(|v| f64::from(*v)).collect();
    let sum: f64 = all.iter().sum();
    let sq: f64 = all.iter().map(|v| v * v).sum();
    assert_close("sum of logits", sum, num(&want["sum"]), 1e-3);
    assert_close("sum of squared logits", sq, num(&want["sum_of_squares"]), 1e-6 * num(&want["sum_of_squares"]));
    // The same numbers as the adapter applied on the fly.
    let live = with_adapter(&peft_adapter()).decoder().forward(&ids, None).unwrap().squeeze(0).unwrap();
    let diff = (live - logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "merged vs unmerged: {diff}");
}

fn safetensors_layout(path: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (format!("{:?}", v.dtype()), v.shape().to_vec()))).collect()
}

fn spec(r: usize, alpha: f64, dropout: f64) -> LoraSpec {
    LoraSpec { r, alpha, dropout, targets: Targets::AllLinear, rslora: false }
}

#[test]
fn hone_saves_the_adapter_as_peft_does() {
    let init = AdapterInit::Fresh { spec: spec(4, 8.0, 0.0), seed: 7 };
    let model = Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &init).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("adapter");
    hone::durable::write_dir(&ours, &model.files(DType::F32).unwrap()).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&ours).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);
    let (a, b) = (
        safetensors_layout(&ours.join("adapter_model.safetensors")),
        safetensors_layout(&peft_adapter().join("adapter_model.safetensors")),
    );
    assert_eq!(a, b, "keys, dtypes and shapes as PEFT writes them");
    let metadata = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        safetensors::SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone()
    };
    assert_eq!(
        metadata(&ours.join("adapter_model.safetensors")),
        metadata(&peft_adapter().join("adapter_model.safetensors"))
    );
    let read = |p: &Path| -> serde_json::Map<String, Value> {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap()).unwrap()
    };
    let (ours_cfg, peft_cfg) = (read(&ours), read(&peft_adapter()));
    let mut peft_keys: Vec<&String> = peft_cfg.keys().filter(|k| *k != "peft_version").collect();
    let mut our_keys: Vec<&String> = ours_cfg.keys().collect();
    peft_keys.sort();
    our_keys.sort();
    assert_eq!(our_keys, peft_keys, "every field PEFT writes (but peft_version, which names PEFT's release)");
    for (k, v) in &peft_cfg {
        if ["peft_version", "base_model_name_or_path", "target_modules"].contains(&k.as_str()) {
            continue;
        }
        assert_eq!(&ours_cfg[k], v, "field {k}");
    }
    // Same projections targeted: PEFT lists all-linear's modules in full, hone by name.
    let modules = hone::model::lora::projection_modules(2);
    let targets = |c: &serde_json::Map<String, Value>| {
        let t = Targets::Names(
            c["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect(),
        );
        modules.iter().filter(|m| t.matches(m)).cloned().collect::<Vec<_>>()
    };
    assert_eq!(targets(&ours_cfg), targets(&peft_cfg));
    assert_eq!(targets(&ours_cfg).len(), 14);
    assert_eq!(ours_cfg["base_model_name_or_path"], Value::String(base().display().to_string()));
    // A fresh adapter is the base (B = 0), and what hone saved loads back to the same numbers.
    let batch = sft_batch();
    let plain = Model::load(&base(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(scalar(&loss_of(&model, &batch)).to_bits(), scalar(&loss_of(&plain, &batch)).to_bits());
    let again = with_adapter(&ours);
    assert_eq!(again.lora(), model.lora());
    assert_eq!(scalar(&loss_of(&again, &batch)).to_bits(), scalar(&loss_of(&model, &batch)).to_bits());
}

#[test]
fn fresh_adapters_are_initialised_as_peft_from_the_seed() {
    let init = |seed| AdapterInit::Fresh { spec: spec(8, 16.0, 0.0), seed };
    let a = Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &init(1)).unwrap();
    let b = Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &init(1)).unwrap();
    let c = Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &init(2)).unwrap();
    let values = |m: &Model, i: usize| m.parameters()[i].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(values(&a, 0), values(&b, 0), "same seed, same draws");
    assert_ne!(values(&a, 0), values(&c, 0));
    let (name, var) = &a.parameters()[0];
    assert!(name.ends_with("q_proj.lora_A.weight"), "{name}");
    let fan_in = var.dim(1).unwrap();
    let bound = 1.0 / (fan_in as f32).sqrt();
    let v = values(&a, 0);
    assert!(
        v.iter().all(|x| x.abs() <= bound) && v.iter().any(|x| x.abs() > bound * 0.9),
        "U(-1/sqrt(in), 1/sqrt(in))"
    );
    assert!(values(&a, 1).iter().all(|x| *x == 0.0), "B starts at zero");
}

#[test]
fn dropout_masks_replay_from_their_seed() {
    let init = AdapterInit::Dir(peft_adapter());
    let model = Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &init).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The fixture adapter with lora_dropout 0.3.
    let adapter = dir.path().join("a");
    std::fs::create_dir(&adapter).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(peft_adapter().join("adapter_config.json")).unwrap()).unwrap();
    cfg["lora_dropout"] = 0.3.into();
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    std::fs::copy(peft_adapter().join("adapter_model.safetensors"), adapter.join("adapter_model.safetensors")).unwrap();
    let dropped = with_adapter(&adapter);
    let batch = sft_batch();
    let eval = scalar(&loss_of(&dropped, &batch));
    assert_eq!(eval.to_bits(), scalar(&loss_of(&model, &batch)).to_bits(), "no seed: no dropout (eval mode)");
    let at = |seed| {
        dropped.set_dropout_seed(Some(seed));
        let l = scalar(&loss_of(&dropped, &batch));
        dropped.set_dropout_seed(None);
        l
    };
    assert_eq!(at(5).to_bits(), at(5).to_bits(), "the same seed replays the same masks");
    assert_ne!(at(5).to_bits(), at(6).to_bits());
    assert_ne!(at(5).to_bits(), eval.to_bits());
}

fn load_err(dir: &Path) -> String {
    match Model::load_with_adapter(&base(), &Device::Cpu, DType::F32, &AdapterInit::Dir(dir.to_path_buf())) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn adapters_that_do_not_fit_the_model_are_refused_with_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str, edit: &dyn Fn(&mut Value)| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(peft_adapter().join("adapter_config.json")).unwrap())
                .unwrap();
        edit(&mut cfg);
        std::fs::write(d.join("adapter_config.json"), cfg.to_string()).unwrap();
        std::fs::copy(peft_adapter().join("adapter_model.safetensors"), d.join("adapter_model.safetensors")).unwrap();
        d
    };
    // r disagrees with the weights' shapes.
    let d = copy("rank", &|c| c["r"] = 8.into());
    let e = load_err(&d);
    assert!(e.contains("adapter_model.safetensors") && e.contains("lora_A.weight") && e.contains("shape"), "{e}");
    // Targets the model does not have.
    let d = copy("targets", &|c| c["target_modules"] = serde_json::json!(["c_attn"]));
    let e = load_err(&d);
    assert!(e.contains("adapter_config.json: target_modules:") && e.contains("c_attn"), "{e}");
    // Targets narrower than the weights: tensors left over.
    let d = copy("narrow", &|c| c["target_modules"] = serde_json::json!(["q_proj"]));
    let e = load_err(&d);
    assert!(e.contains("adapter_model.safetensors") && e.contains("no targeted projection"), "{e}");
    // No adapter_config.json.
    let d = tmp.path().join("empty");
    std::fs::create_dir(&d).unwrap();
    let e = load_err(&d);
    assert!(e.contains("empty/adapter_config.json") && e.contains("missing"), "{e}");
}

/// The fixture adapter over the fixture base, held for training in `dtype`.
fn training(dtype: DType) -> Model {
    let init = AdapterInit::Dir(peft_adapter());
    Model::load_lora_training(&base(), &Device::Cpu, Precision::for_training(dtype), &init).unwrap()
}

#[test]
fn a_bf16_frozen_base_under_f32_adapters_tracks_the_f32_path() {
    let (full, half) = (training(DType::F32), training(DType::BF16));
    let batch = sft_batch();
    let (want, got) = (loss_of(&full, &batch), loss_of(&half, &batch));
    // bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.2% per operand): through every
    // matmul of the network, 1% on the loss and 5% on the gradient norm.
    let (w, g) = (scalar(&want), scalar(&got));
    assert!((w - g).abs() <= 1e-2 * w.abs(), "loss: f32 {w} vs bf16 base {g}");
    assert!(w.to_bits() != g.to_bits(), "the bf16 path ran in f32");
    let (gw, gg) = (want.backward().unwrap(), got.backward().unwrap());
    let (nw, ng) = (grad_norm(&full.parameters(), &gw).unwrap(), grad_norm(&half.parameters(), &gg).unwrap());
    assert!((nw - ng).abs() <= 5e-2 * nw, "grad norm: f32 {nw} vs bf16 base {ng}");
    // The adapters, their gradients and so AdamW's moments stay f32.
    for (name, var) in half.parameters() {
        assert_eq!(var.dtype(), DType::F32, "{name}");
        assert_eq!(gg.get(var.as_tensor()).unwrap().dtype(), DType::F32, "{name}'s gradient");
    }
}

#[test]
fn the_memory_estimate_counts_the_weights_as_held() {
    for dtype in [DType::F32, DType::BF16] {
        let model = training(dtype);
        let spec = model.lora().unwrap().clone();
        let plan = hone::memory::MemoryPlan {
            config: &model.config,
            total_params: hone::memory::parameter_count(&model.config),
            trainable_params: hone::memory::adapter_parameters(&model.config, &spec),
            reference: false,
            sequences: 1,
            seq_len: 8,
            target_rows: 8,
            precision: Precision::for_training(dtype),
            checkpointing: false,
            lora: Some(&spec),
        };
        let estimate = hone::memory::estimate(&plan);
        assert_eq!(estimate.weights, model.weight_bytes(), "{dtype:?}");
        assert_eq!(plan.trainable_params, model.num_parameters() as u64, "{dtype:?}");
    }
    // The base's matrices are what halve: bf16 saves 2 bytes on every base matrix element.
    let (f32_bytes, bf16_bytes) = (training(DType::F32).weight_bytes(), training(DType::BF16).weight_bytes());
    assert!(bf16_bytes < f32_bytes && 2 * bf16_bytes > f32_bytes, "{f32_bytes} vs {bf16_bytes}");
}

//! Model directories in and out: saving in the layout transformers loads, bf16 weights,
//! sharded files, and clear errors for broken directories.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // exact equality is the point: saving must not change a bit

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, ids};
use hone::model::Model;

fn logits(model: &Model) -> Tensor {
    logits_of(model, "llama")
}

fn logits_of(model: &Model, set: &str) -> Tensor {
    let input = Tensor::new(ids(&expected(set)["sft"]["examples"][0]["input_ids"]), &Device::Cpu).unwrap();
    model.decoder().forward(&input.unsqueeze(0).unwrap(), None).unwrap().to_dtype(DType::F32).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn tensor_names(dir: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect();
    names.sort();
    names
}

#[test]
fn saved_directory_reloads_bit_identically_with_the_original_tensor_layout() {
    for set in ["llama", "qwen2"] {
        let src = fixture(&format!("{set}/model"));
        let model = Model::load(&src, &Device::Cpu, DType::F32).unwrap();
        let out = tempfile::tempdir().unwrap();
        model.save(out.path(), DType::F32).unwrap();
        // Same tensor names and shapes as transformers wrote (a tied head is not duplicated).
        assert_eq!(tensor_names(out.path()), tensor_names(&src), "{set}");
        for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert!(out.path().join(f).exists(), "{set}: {f} saved");
        }
        let again = Model::load(out.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(max_diff(&logits_of(&model, set), &logits_of(&again, set)), 0.0, "{set}");
        assert_eq!(again.config.rope_theta, model.config.rope_theta);
    }
}

#[test]
fn bf16_weights_load_and_convert() {
    let model = Model::load(&fixture("llama/model"), &Device::Cpu, DType::F32).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save(out.path(), DType::BF16).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let as_f32 = Model::load(out.path(), &Device::Cpu, DType::F32).unwrap();
    let diff = max_diff(&logits(&model), &logits(&as_f32));
    // bf16 keeps 8 bits of mantissa: logits of size ~10 move by a few hundredths, not more.
    assert!(diff > 0.0 && diff < 0.25, "bf16 round trip moved logits by {diff}");
    let as_bf16 = Model::load(out.path(), &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(as_bf16.decoder().dtype(), DType::BF16);
    let diff = max_diff(&logits(&model), &logits(&as_bf16));
    assert!(diff < 1.0, "bf16 compute moved logits by {diff}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_directories_fail_with_a_message_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("llama/model"), &dir);
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();

    // A config that disagrees with the weights names the tensor and both shapes.
    std::fs::write(&config_path, config.replace("\"intermediate_size\": 172", "\"intermediate_size\": 170")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("170") && err.contains("172"), "{err}");

    // Untied config without lm_head.weight: the missing tensor is named.
    std::fs::write(&config_path, config.replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"))
        .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("lm_head.weight") && err.contains("missing"), "{err}");

    // Malformed JSON points at line and column.
    std::fs::write(&config_path, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  oops\n}").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json:3:"), "{err}");

    // No weights at all.
    std::fs::write(&config_path, &config).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");

    // Not a model directory.
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("llama/model"), &dir);
    let model = Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let err = model.check_tokenizer_len(955).unwrap_err().to_string();
    assert!(err.contains("955") && err.contains("954"), "{err}");
    assert!(model.check_tokenizer_len(954).is_ok());
    // The padded Qwen2 vocabulary (842 rows for 836 tokens) is fine.
    let qwen = Model::load(&fixture("qwen2/model"), &Device::Cpu, DType::F32).unwrap();
    assert!(qwen.check_tokenizer_len(836).is_ok());
}

#[test]
fn integer_weights_are_refused_with_the_tensor_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("llama/model"), &dir);
    let model = Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        model.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    tensors[0].1 = tensors[0].1.to_dtype(DType::I64).unwrap();
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.embed_tokens.weight") && err.contains("I64"), "{err}");
}

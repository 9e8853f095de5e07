#![allow(clippy::unwrap_used)]
//! The decoder against transformers: activations, logits and greedy ids of the oracle sets
//! (`tests/fixtures/llama`, the public tiny Llama; `tests/fixtures/qwen2`, hone's Qwen2 set made
//! the same way by `tests/fixtures/gen/make_qwen2.py`; see their READMEs).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, expected, fixture, floats, ids, num};
use hone::model::generate::{generate, Sampling};
use hone::model::Model;

fn policy() -> Model {
    load("llama")
}

fn load(set: &str) -> Model {
    Model::load(&fixture(&format!("{set}/model")), &Device::Cpu, DType::F32).expect("fixture model loads")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn logits_and_final_norm_match_transformers_within_1e_4() {
    let model = policy();
    let debug = candle_core::safetensors::load(fixture("llama/debug_tensors.safetensors"), &Device::Cpu).unwrap();
    let input = debug["input_ids"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let hidden = model.decoder().hidden_states(&input, None).unwrap().squeeze(0).unwrap();
    let norm_diff = max_abs_diff(&hidden, &debug["final_norm_output"]);
    assert!(norm_diff < 1e-4, "final norm output differs by {norm_diff}");
    let logits = model.decoder().lm_head(&hidden).unwrap();
    let diff = max_abs_diff(&logits, &debug["logits"]);
    assert!(diff < 1e-4, "logits differ by {diff}");
}

/// Summary statistics of the sft[0] logits (every position, every vocabulary row, padded rows
/// included) for both families.
#[test]
fn logits_statistics_match_transformers_for_both_families() {
    for set in ["llama", "qwen2"] {
        let model = load(set);
        let exp = expected(set);
        let l = &exp["logits"];
        let input =
            Tensor::new(ids(&exp["sft"]["examples"][0]["input_ids"]), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.decoder().forward(&input, None).unwrap().squeeze(0).unwrap();
        assert_eq!(logits.dims(), [num(&l["seq_len"]) as usize, num(&l["vocab_size"]) as usize], "{set}");
        let flat: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let sum: f64 = flat.iter().map(|&x| f64::from(x)).sum();
        let sum_sq: f64 = flat.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        assert_close(&format!("{set} sum of logits"), sum, num(&l["sum_all_logits"]), 1e-4 * flat.len() as f64);
        let want_sq = num(&l["sum_sq_all_logits"]);
        assert_close(&format!("{set} sum of squared logits"), sum_sq, want_sq, 1e-5 * want_sq.abs());
        let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        assert_eq!(argmax, ids(&l["per_position_argmax"]), "{set}");
        let last: Vec<f32> = logits.get(logits.dim(0).unwrap() - 1).unwrap().to_vec1().unwrap();
        for (i, (a, e)) in last.iter().zip(floats(&l["last_position_logits"])).enumerate() {
            assert_close(&format!("{set} last-position logit {i}"), f64::from(*a), e, 1e-4);
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_ids_exactly() {
    for set in ["llama", "qwen2"] {
        let model = load(set);
        let exp = expected(set);
        for (i, case) in exp["generation"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["prompt_ids"]);
            let sampling = Sampling { max_new_tokens: 20, ..Sampling::default() };
            let out = generate(&model, &prompt, &model.generation.eos_token_ids, &sampling).unwrap();
            assert_eq!(out.new_token_ids, ids(&case["new_token_ids"]), "prompt {i}");
            assert_eq!(out.stopped_on_eos, case["stopped_on_eos"].as_bool().unwrap(), "prompt {i}");
        }
    }
}

#[test]
fn kv_cache_gives_the_same_logits_as_a_full_forward() {
    let model = policy();
    let exp = expected("llama");
    let prompt = ids(&exp["sft"]["examples"][1]["input_ids"]);
    let d = model.decoder();
    let full = d.forward(&Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None).unwrap();
    let mut cache = hone::model::KvCache::new(d.num_layers());
    let split = prompt.len() / 2;
    let mut parts = vec![d
        .forward(&Tensor::new(&prompt[..split], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache))
        .unwrap()];
    for &t in &prompt[split..] {
        parts.push(
            d.forward(&Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache)).unwrap(),
        );
    }
    let cached = Tensor::cat(&parts, 1).unwrap();
    let diff = max_abs_diff(&full, &cached);
    assert!(diff < 1e-4, "cached logits differ by {diff}");
}

#![allow(clippy::unwrap_used)]
//! The Llama port against transformers: activations, logits and greedy ids of the public oracle
//! (`tests/fixtures/llama`, a tiny random Llama scored by transformers 5.24; see its README).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, expected, fixture, floats, ids, num};
use hone::model::generate::{generate, Sampling};
use hone::model::Model;

fn policy() -> Model {
    Model::load(&fixture("llama/model"), &Device::Cpu, DType::F32).expect("fixture model loads")
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

    let exp = expected("llama");
    let l = &exp["logits"];
    let flat: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let sum: f64 = flat.iter().map(|&x| f64::from(x)).sum();
    let sum_sq: f64 = flat.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    assert_close("sum of logits", sum, num(&l["sum_all_logits"]), 1e-4 * flat.len() as f64);
    assert_close(
        "sum of squared logits",
        sum_sq,
        num(&l["sum_sq_all_logits"]),
        1e-5 * num(&l["sum_sq_all_logits"]).abs(),
    );
    let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    assert_eq!(argmax, ids(&l["per_position_argmax"]));
    let last: Vec<f32> = logits.get(58).unwrap().to_vec1().unwrap();
    for (i, (a, e)) in last.iter().zip(floats(&l["last_position_logits"])).enumerate() {
        assert_close(&format!("last-position logit {i}"), f64::from(*a), e, 1e-4);
    }
}

#[test]
fn greedy_generation_matches_transformers_ids_exactly() {
    let model = policy();
    let exp = expected("llama");
    for (i, case) in exp["generation"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let sampling = Sampling { max_new_tokens: 20, ..Sampling::default() };
        let out = generate(&model, &prompt, &model.generation.eos_token_ids, &sampling).unwrap();
        assert_eq!(out.new_token_ids, ids(&case["new_token_ids"]), "prompt {i}");
        assert_eq!(out.stopped_on_eos, case["stopped_on_eos"].as_bool().unwrap(), "prompt {i}");
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

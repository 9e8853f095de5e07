#![allow(clippy::unwrap_used)]
//! Batched generation against one-prompt-at-a-time generation on the oracle sets: left padding,
//! per-row positions and per-row stopping must give every row exactly the tokens it gets alone.

mod common;

use candle_core::{DType, Device};
use common::{expected, fixture, ids};
use hone::model::generate::{generate, generate_batch, Sampling};
use hone::model::Model;

fn load(set: &str) -> Model {
    Model::load(&fixture(&format!("{set}/model")), &Device::Cpu, DType::F32).expect("fixture model loads")
}

/// The oracle prompts plus shortened copies, so the batch mixes several lengths (and therefore
/// several padding amounts), in an order where the longest prompt is not first.
fn prompts(set: &str) -> Vec<Vec<u32>> {
    let exp = expected(set);
    let mut out: Vec<Vec<u32>> = Vec::new();
    for case in exp["generation"].as_array().unwrap() {
        let p = ids(&case["prompt_ids"]);
        out.push(p[..p.len() / 2].to_vec());
        out.push(p.clone());
        out.push(p[..p.len() - 1].to_vec());
    }
    out.push(out[0][..2].to_vec());
    let lengths: std::collections::BTreeSet<usize> = out.iter().map(Vec::len).collect();
    assert!(lengths.len() >= 4, "{set}: prompts of several lengths, got {lengths:?}");
    out
}

fn check(set: &str, sampling: &Sampling, stops: &[u32]) {
    let model = load(set);
    let prompts = prompts(set);
    let batched = generate_batch(&model, &prompts, stops, sampling).unwrap();
    assert_eq!(batched.len(), prompts.len());
    for (i, (prompt, row)) in prompts.iter().zip(&batched).enumerate() {
        let alone = generate(&model, prompt, stops, sampling).unwrap();
        assert_eq!(row.generated, alone, "{set} prompt {i} (length {})", prompt.len());
    }
}

#[test]
fn batched_greedy_ids_equal_unbatched_greedy_ids_on_both_families() {
    for set in ["llama", "qwen2"] {
        let model = load(set);
        let sampling = Sampling { max_new_tokens: 20, ..Sampling::default() };
        check(set, &sampling, &model.generation.eos_token_ids);
    }
}

#[test]
fn rows_stop_independently_on_any_eos_id() {
    // Stop on the tokens the oracle's greedy answers produce early, so rows finish at different
    // steps and leave the batch while others continue.
    for set in ["llama", "qwen2"] {
        let model = load(set);
        let exp = expected(set);
        let mut stops = model.generation.eos_token_ids.clone();
        for case in exp["generation"].as_array().unwrap() {
            let new = ids(&case["new_token_ids"]);
            stops.push(new[new.len().min(3) - 1]);
        }
        let sampling = Sampling { max_new_tokens: 16, ..Sampling::default() };
        let batched = generate_batch(&model, &prompts(set), &stops, &sampling).unwrap();
        let lengths: std::collections::BTreeSet<usize> =
            batched.iter().map(|r| r.generated.new_token_ids.len()).collect();
        assert!(lengths.len() > 1, "{set}: rows should stop at different steps, got {lengths:?}");
        assert!(batched.iter().any(|r| r.generated.stopped_on_eos), "{set}");
        check(set, &sampling, &stops);
        // A row that stops earlier finishes no later than a row that runs longer.
        for a in &batched {
            for b in &batched {
                if a.generated.new_token_ids.len() < b.generated.new_token_ids.len() {
                    assert!(a.elapsed <= b.elapsed);
                }
            }
        }
    }
}

#[test]
fn batched_sampling_equals_unbatched_sampling_with_the_same_seed() {
    for set in ["llama", "qwen2"] {
        let model = load(set);
        let sampling = Sampling { temperature: 0.9, top_p: 0.9, seed: 7, max_new_tokens: 12 };
        check(set, &sampling, &model.generation.eos_token_ids);
    }
}

#[test]
fn empty_prompts_are_refused_and_an_empty_batch_is_empty() {
    let model = load("llama");
    let sampling = Sampling::default();
    assert!(generate_batch(&model, &[vec![1, 2], vec![]], &[], &sampling).is_err());
    assert!(generate_batch(&model, &[], &[], &sampling).unwrap().is_empty());
}

/// bf16 on the CPU takes the composed attention path (additive padding mask, composed softmax
/// and RoPE), the one CUDA uses: batching must not change its ids either.
#[test]
fn the_composed_attention_path_batches_exactly_too() {
    for set in ["llama", "qwen2"] {
        let model = Model::load(&fixture(&format!("{set}/model")), &Device::Cpu, DType::BF16).unwrap();
        let prompts = prompts(set);
        let stops = model.generation.eos_token_ids.clone();
        let sampling = Sampling { max_new_tokens: 12, ..Sampling::default() };
        let batched = generate_batch(&model, &prompts, &stops, &sampling).unwrap();
        for (i, (prompt, row)) in prompts.iter().zip(&batched).enumerate() {
            let alone = generate(&model, prompt, &stops, &sampling).unwrap();
            assert_eq!(row.generated, alone, "{set} bf16 prompt {i}");
        }
    }
}

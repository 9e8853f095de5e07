//! Gradient checkpointing (`model::checkpoint`): the gradients are bit-identical to the plain
//! graph's on the CPU (one backward pass of both families, adapters under a frozen base, and
//! whole training runs), and the
//! activations the graph keeps for the backward pass shrink at least 3x at 30 layers. The kept
//! bytes are measured on the graph itself: every distinct storage reachable from the loss
//! (candle's `sorted_nodes`, the nodes backward will visit), parameters excluded. The same
//! measurement checks `memory::estimate`'s activation count.
#![allow(clippy::unwrap_used)]

mod memory_host;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use hone::config::load_pipeline;
use hone::memory::{estimate, layer_floats, MemoryPlan};
use hone::model::{LoraSpec, Model, ModelConfig, Precision, Targets};
use hone::train::batch::{Sequence, TokenBatch};
use hone::train::loss::{sft_loss, target_logps};
use hone::train::trainer::{RunOptions, Trainer};
use memory_host::MemoryHost;

fn config(arch: &str, tied: bool, layers: usize, hidden: usize, vocab: usize) -> ModelConfig {
    let json = serde_json::json!({
        "architectures": [arch], "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": tied
    });
    ModelConfig::from_value(json, std::path::Path::new("test/config.json")).unwrap()
}

/// Sequences of different lengths (right padding) with prompts that are not scored.
fn batch(vocab: u32, lengths: &[usize]) -> TokenBatch {
    let mut state = 7u32;
    let seqs: Vec<Sequence> = lengths
        .iter()
        .map(|&n| {
            let ids = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (state >> 8) % vocab
                })
                .collect();
            Sequence::with_completion_from(ids, n / 4)
        })
        .collect();
    TokenBatch::new(&seqs, 0, &Device::Cpu).unwrap()
}

fn gradients(model: &Model, batch: &TokenBatch) -> Vec<(String, Vec<u32>)> {
    let loss = sft_loss(&target_logps(model.decoder(), batch).unwrap()).unwrap();
    let grads = model.decoder().backward(&loss).unwrap();
    model
        .parameters()
        .into_iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient"));
            // A gradient that still carries candle's graph would keep every activation alive.
            assert!(g.sorted_nodes().is_empty(), "{name}'s gradient is attached to the graph");
            let bits = g.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
            (name, bits)
        })
        .collect()
}

/// The gradients of `model` with gradient checkpointing equal the plain graph's, bit for bit,
/// twice in a row (a second backward pass must not see the first one's gradients).
fn assert_checkpointing_keeps_the_gradients(what: &str, model: &mut Model, data: &TokenBatch) {
    model.set_gradient_checkpointing(false);
    let plain = gradients(model, data);
    model.set_gradient_checkpointing(true);
    let checkpointed = gradients(model, data);
    let again = gradients(model, data);
    assert_eq!(plain.len(), checkpointed.len());
    for ((name, a), (_, b)) in plain.iter().zip(&checkpointed) {
        assert!(a == b, "{what}: {name}: checkpointed gradient differs");
    }
    assert!(checkpointed == again, "{what}: a second checkpointed backward pass differs");
}

#[test]
fn checkpointed_gradients_are_bit_identical_for_both_families() {
    for (arch, tied) in [("LlamaForCausalLM", true), ("Qwen2ForCausalLM", false)] {
        let cfg = config(arch, tied, 3, 32, 97);
        let data = batch(97, &[23, 17, 9]);
        let mut model = Model::fresh(cfg, &Device::Cpu, DType::F32, 11).unwrap();
        assert_checkpointing_keeps_the_gradients(arch, &mut model, &data);
    }
}

#[test]
fn checkpointed_adapters_on_a_frozen_base_get_their_gradients() {
    // The frozen embedding's output tracks no gradient: a checkpointed layer's op on it must still
    // join the graph (it did not, and a LoRA run with checkpointing trained nothing).
    let cfg = config("LlamaForCausalLM", true, 3, 32, 97);
    let data = batch(97, &[23, 17, 9]);
    let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, targets: Targets::AllLinear, rslora: false };
    let precision = Precision::for_training(DType::F32);
    let mut model = Model::fresh_with_adapter(cfg, &Device::Cpu, precision, &spec, 5).unwrap();
    // Fresh adapters have B = 0, so A's gradient would be 0 whatever happened: move B off zero.
    for (name, var) in model.parameters() {
        if name.contains("lora_B") {
            var.set(&var.as_tensor().ones_like().unwrap().affine(0.01, 0.0).unwrap()).unwrap();
        }
    }
    assert_checkpointing_keeps_the_gradients("LoRA", &mut model, &data);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Metrics (timing removed) and final weights of a short run of the sample pipeline.
fn sample_run(checkpointing: bool) -> (Vec<String>, Vec<Vec<u32>>) {
    let mut p = load_pipeline(&root().join("sample-data/pipeline.toml")).unwrap().pipeline;
    p.eval = None;
    p.run.sample_every = 0;
    p.run.gradient_checkpointing = checkpointing;
    let tmp = tempfile::tempdir().unwrap();
    let mut host = MemoryHost::new(tmp.path(), &p);
    // The SFT stage (the DPO stage's graph is the same decoder over more rows; its reference
    // scoring would triple the test's time).
    let options = RunOptions { stages: Some(vec!["sft".into()]), max_steps: Some(3), ..RunOptions::default() };
    let mut trainer = Trainer::new(p, options, &mut host, Device::Cpu, DType::F32).unwrap();
    trainer.run().unwrap();
    let weights = trainer
        .policy()
        .parameters()
        .iter()
        .map(|(_, v)| {
            v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        })
        .collect();
    drop(trainer);
    let metrics = host
        .metrics()
        .into_iter()
        .map(|(stage, step, mut fields)| {
            fields.shift_remove("tokens_per_second");
            format!("{stage} {step} {}", serde_json::Value::Object(fields))
        })
        .collect();
    (metrics, weights)
}

#[test]
fn a_checkpointed_run_logs_the_same_metrics_and_ends_with_the_same_weights() {
    let (plain_metrics, plain_weights) = sample_run(false);
    let (metrics, weights) = sample_run(true);
    assert!(!plain_metrics.is_empty());
    assert_eq!(metrics, plain_metrics);
    assert!(weights == plain_weights, "the final weights differ");
}

/// Bytes of the distinct storages the graph of `loss` holds for the backward pass (parameters
/// excluded). A storage is sized by the furthest element any of its views reaches.
fn graph_bytes(loss: &Tensor) -> u64 {
    let mut extents: HashMap<usize, u64> = HashMap::new();
    for node in loss.sorted_nodes() {
        if node.is_variable() {
            continue;
        }
        let (storage, layout) = node.storage_and_layout();
        let key = std::ptr::from_ref(&*storage).addr();
        let reach = layout.dims().iter().zip(layout.stride()).map(|(&d, &s)| d.saturating_sub(1) * s).sum::<usize>()
            + layout.start_offset()
            + 1;
        let bytes = (reach * node.dtype().size_in_bytes()) as u64;
        let e = extents.entry(key).or_insert(0);
        *e = (*e).max(bytes);
    }
    extents.values().sum()
}

fn kept_for_backward(model: &Model, data: &TokenBatch) -> u64 {
    let loss = sft_loss(&target_logps(model.decoder(), data).unwrap()).unwrap();
    graph_bytes(&loss)
}

#[test]
fn checkpointing_keeps_at_most_a_third_of_the_activations_at_30_layers() {
    let (layers, seq, rows) = (30, 64, 4);
    let cfg = config("LlamaForCausalLM", true, layers, 64, 256);
    let data = batch(256, &vec![seq; rows]);
    let mut model = Model::fresh(cfg.clone(), &Device::Cpu, DType::F32, 3).unwrap();
    let plain = kept_for_backward(&model, &data);
    model.set_gradient_checkpointing(true);
    let checkpointed = kept_for_backward(&model, &data);
    eprintln!("kept for backward: plain {plain} bytes, checkpointed {checkpointed} bytes");
    assert!(plain >= 3 * checkpointed, "plain {plain} bytes, checkpointed {checkpointed}: less than 3x");

    // The estimate counts the same graph (its checkpointed figure also holds the one layer
    // recomputed during backward and that layer's activation gradients, which this forward-only
    // measurement does not see).
    let params = model.num_parameters() as u64;
    let plan = |checkpointing| MemoryPlan {
        config: &cfg,
        total_params: params,
        trainable_params: params,
        reference: false,
        sequences: rows,
        seq_len: seq,
        target_rows: data.target_ids.dim(0).unwrap(),
        precision: Precision::for_training(DType::F32),
        checkpointing,
        lora: None,
    };
    let estimated = estimate(&plan(false)).activations;
    let ratio = estimated as f64 / plain as f64;
    assert!((0.9..=1.1).contains(&ratio), "estimated {estimated} bytes of activations, the graph holds {plain}");
    let one_layer = layer_floats(&cfg, seq, false).0 * (rows * seq) as u64 * 4;
    let estimated = estimate(&plan(true)).activations - 2 * one_layer;
    let ratio = estimated as f64 / checkpointed as f64;
    assert!((0.8..=1.25).contains(&ratio), "estimated {estimated} bytes checkpointed, the graph holds {checkpointed}");
}

#[test]
fn the_estimate_counts_what_a_lora_graph_keeps_for_backward() {
    let (layers, seq, rows) = (6, 64, 4);
    let cfg = config("LlamaForCausalLM", true, layers, 64, 256);
    let data = batch(256, &vec![seq; rows]);
    let spec = hone::model::LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: hone::model::Targets::AllLinear,
        rslora: false,
    };
    let precision = Precision::for_training(DType::F32);
    let model = Model::fresh_with_adapter(cfg.clone(), &Device::Cpu, precision, &spec, 3).unwrap();
    let kept = kept_for_backward(&model, &data);
    let plan = MemoryPlan {
        config: &cfg,
        total_params: hone::memory::parameter_count(&cfg),
        trainable_params: hone::memory::adapter_parameters(&cfg, &spec),
        reference: false,
        sequences: rows,
        seq_len: seq,
        target_rows: data.target_ids.dim(0).unwrap(),
        precision,
        checkpointing: false,
        lora: Some(&spec),
    };
    let estimated = estimate(&plan).activations;
    let ratio = estimated as f64 / kept as f64;
    assert!((0.9..=1.1).contains(&ratio), "estimated {estimated} bytes of activations, the graph holds {kept}");
}

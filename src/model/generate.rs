//! Autoregressive generation with a KV cache: greedy, or temperature and nucleus (top-p)
//! sampling from a seeded generator. Stops after emitting any of the model's EOS ids.
//!
//! [`generate_batch`] answers many prompts at once: prompts are left-padded to a common length,
//! each row's attention skips its padding and each row is rotated at its own positions, so a row's
//! tokens are those it would get alone (greedy, and sampled: every row draws from its own
//! generator seeded with the same seed). A row leaves the batch (and the KV cache) when it stops.

use std::time::{Duration, Instant};

use crate::rng::{seeded, unit_f32, StableRng};
use candle_core::{Tensor, D};

use super::{KvCache, Model, ModelError};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 keeps all).
    pub top_p: f64,
    /// Seed of the sampling generator.
    pub seed: u64,
    /// Upper bound on new tokens.
    pub max_new_tokens: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0, max_new_tokens: 64 }
    }
}

/// What one generation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// New ids, including the stop token when one was emitted.
    pub new_token_ids: Vec<u32>,
    /// Whether generation ended on an EOS id (rather than the token limit).
    pub stopped_on_eos: bool,
}

/// Generates a continuation of `prompt_ids`, stopping on any id in `stop_ids`.
pub fn generate(
    model: &Model,
    prompt_ids: &[u32],
    stop_ids: &[u32],
    sampling: &Sampling,
) -> Result<Generated, ModelError> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Dtype("generate: the prompt has no tokens".into()));
    }
    let decoder = model.decoder();
    let device = decoder.device();
    let room = model.config.max_position_embeddings.saturating_sub(prompt_ids.len());
    let limit = sampling.max_new_tokens.min(room);
    let mut rng = seeded(sampling.seed);
    let mut cache = KvCache::new(decoder.num_layers());
    let mut out = Vec::new();
    let mut input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
    for _ in 0..limit {
        let logits = decoder.forward_last(&input, Some(&mut cache))?.squeeze(0)?;
        let next = pick(&logits, sampling, &mut rng)?;
        out.push(next);
        if stop_ids.contains(&next) {
            return Ok(Generated { new_token_ids: out, stopped_on_eos: true });
        }
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    Ok(Generated { new_token_ids: out, stopped_on_eos: false })
}

/// What one row of a batched generation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchGenerated {
    /// The tokens, as [`generate`] would give them for this prompt alone.
    pub generated: Generated,
    /// Wall time from the start of the batch (prefill of the whole batch included) to the end of
    /// the decoding step in which this row stopped: the latency a request served in this batch
    /// would see.
    pub elapsed: Duration,
}

/// Generates a continuation of every prompt in one left-padded batch, stopping each row on any
/// id in `stop_ids` or at its token limit (`max_new_tokens`, and the model's position limit).
/// Rows are returned in prompt order.
pub fn generate_batch(
    model: &Model,
    prompts: &[Vec<u32>],
    stop_ids: &[u32],
    sampling: &Sampling,
) -> Result<Vec<BatchGenerated>, ModelError> {
    generate_batch_seeded(model, prompts, stop_ids, sampling, &vec![sampling.seed; prompts.len()])
}

/// [`generate_batch`] with each row's own sampling seed (`seeds[i]` for prompt `i`, in place of
/// `sampling.seed`): several samples of one prompt in one batch, each the one
/// [`generate`] gives that prompt alone with that seed.
pub fn generate_batch_seeded(
    model: &Model,
    prompts: &[Vec<u32>],
    stop_ids: &[u32],
    sampling: &Sampling,
    seeds: &[u64],
) -> Result<Vec<BatchGenerated>, ModelError> {
    if seeds.len() != prompts.len() {
        return Err(ModelError::Dtype(format!("generate_batch: {} seeds for {} prompts", seeds.len(), prompts.len())));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Dtype(format!("generate_batch: prompt {i} has no tokens")));
    }
    let started = Instant::now();
    let decoder = model.decoder();
    let device = decoder.device();
    let max_positions = model.config.max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let limits: Vec<usize> =
        prompts.iter().map(|p| sampling.max_new_tokens.min(max_positions.saturating_sub(p.len()))).collect();
    let mut results: Vec<Option<BatchGenerated>> = vec![None; prompts.len()];
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut rngs: Vec<StableRng> = seeds.iter().map(|&seed| seeded(seed)).collect();
    // Rows still generating, by prompt index; rows with no room finish before the first step.
    let mut active: Vec<usize> = Vec::new();
    for (i, &limit) in limits.iter().enumerate() {
        if limit == 0 {
            let generated = Generated { new_token_ids: Vec::new(), stopped_on_eos: false };
            results[i] = Some(BatchGenerated { generated, elapsed: started.elapsed() });
        } else {
            active.push(i);
        }
    }
    if active.is_empty() {
        return Ok(results.into_iter().flatten().collect());
    }
    // Padding ids are never seen by a real position; any valid id does.
    let pad_id = prompts[active[0]][0];
    let padded: Vec<u32> =
        active.iter().flat_map(|&i| std::iter::repeat_n(pad_id, pads[i]).chain(prompts[i].iter().copied())).collect();
    let mut input = Tensor::from_vec(padded, (active.len(), longest), device)?;
    let mut row_pads: Vec<usize> = active.iter().map(|&i| pads[i]).collect();
    let mut cache = KvCache::new(decoder.num_layers());
    while !active.is_empty() {
        let logits = decoder.forward_last_left_padded(&input, &row_pads, &mut cache)?;
        let mut next_ids = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (row, &i) in active.iter().enumerate() {
            let next = pick(&logits.get(row)?, sampling, &mut rngs[i])?;
            outs[i].push(next);
            let stopped = stop_ids.contains(&next);
            if stopped || outs[i].len() >= limits[i] {
                let generated = Generated { new_token_ids: std::mem::take(&mut outs[i]), stopped_on_eos: stopped };
                results[i] = Some(BatchGenerated { generated, elapsed: started.elapsed() });
            } else {
                keep.push(row);
                next_ids.push(next);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.keep_rows(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
            row_pads = keep.iter().map(|&r| row_pads[r]).collect();
        }
        input = Tensor::from_vec(next_ids, (active.len(), 1), device)?;
    }
    Ok(results.into_iter().flatten().collect())
}

fn pick(logits: &Tensor, sampling: &Sampling, rng: &mut StableRng) -> Result<u32, ModelError> {
    if sampling.temperature <= 0.0 {
        return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
    }
    let scaled = (logits / sampling.temperature)?;
    let probs = super::ops::softmax_last_dim(&scaled)?.to_vec1::<f32>()?;
    Ok(sample_top_p(&probs, sampling.top_p, unit_f32(rng)))
}

/// Nucleus sampling over `probs` with a uniform draw `u` in `[0, 1)`: sort by probability, keep
/// the smallest prefix whose mass reaches `top_p` (always at least one token), renormalise, and
/// walk the cumulative mass to `u`.
pub fn sample_top_p(probs: &[f32], top_p: f64, u: f32) -> u32 {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut kept = 0;
    let mut mass = 0.0f64;
    for &i in &order {
        kept += 1;
        mass += f64::from(probs[i]);
        if mass >= top_p {
            break;
        }
    }
    #[allow(clippy::cast_possible_truncation)]
    let target = f64::from(u) * mass;
    let mut acc = 0.0f64;
    for &i in &order[..kept] {
        acc += f64::from(probs[i]);
        if acc > target {
            return u32::try_from(i).unwrap_or(u32::MAX);
        }
    }
    u32::try_from(order[kept - 1]).unwrap_or(u32::MAX)
}

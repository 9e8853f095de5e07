//! Scoring without training: per-example SFT losses and summed completion log-probs of
//! preference pairs, batched to bound memory. `hone score`, evaluation and the DPO reference
//! cache all use these, so every number hone shows comes from one implementation.

use candle_core::{Result, Tensor};

use super::batch::{Sequence, TokenBatch};
use super::loss::{per_sequence_sum, target_logps};
use crate::model::Decoder;

/// The id that pads batches: the tokenizer's pad, else the model's, else its first EOS, else 0.
/// Padding never reaches a loss (it is never a target), so any id is correct; this one keeps
/// batches readable.
pub fn pad_id(tok: &crate::data::TextTokenizer, model: &crate::model::Model) -> u32 {
    tok.specials()
        .pad
        .as_ref()
        .map(|(_, id)| *id)
        .or(model.generation.pad_token_id)
        .or(model.generation.eos_token_ids.first().copied())
        .unwrap_or(0)
}

/// Sequences per forward pass when scoring.
pub const SCORE_BATCH: usize = 8;

/// Summed target log-probs and target counts of each sequence, in input order.
pub fn sequence_logps(decoder: &Decoder, seqs: &[Sequence], pad_id: u32) -> Result<Vec<(f64, usize)>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(SCORE_BATCH) {
        let batch = TokenBatch::new(chunk, pad_id, decoder.device())?;
        let sums = per_sequence_sum(&target_logps(decoder, &batch)?.detach(), &batch)?;
        let sums: Vec<f64> = to_f64(&sums)?;
        out.extend(sums.into_iter().zip(batch.targets_per_sequence.iter().copied()));
    }
    Ok(out)
}

/// A tensor's values as f64 (any float dtype).
pub fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Log-probs of one preference pair's completions under one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    /// Σ log p(chosen completion | prompt).
    pub chosen: f64,
    /// Σ log p(rejected completion | prompt).
    pub rejected: f64,
    /// Tokens in the chosen completion.
    pub chosen_tokens: usize,
    /// Tokens in the rejected completion.
    pub rejected_tokens: usize,
}

/// Chosen and rejected log-probs of tokenized pairs `(prompt, chosen, rejected)`.
pub fn pair_logps(decoder: &Decoder, pairs: &[(Vec<u32>, Vec<u32>, Vec<u32>)], pad_id: u32) -> Result<Vec<PairLogps>> {
    let seq = |prompt: &[u32], completion: &[u32]| {
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(completion);
        Sequence::with_completion_from(ids, prompt.len())
    };
    let mut seqs = Vec::with_capacity(pairs.len() * 2);
    for (p, c, r) in pairs {
        seqs.push(seq(p, c));
        seqs.push(seq(p, r));
    }
    let scored = sequence_logps(decoder, &seqs, pad_id)?;
    Ok(scored
        .chunks(2)
        .map(|cr| PairLogps { chosen: cr[0].0, rejected: cr[1].0, chosen_tokens: cr[0].1, rejected_tokens: cr[1].1 })
        .collect())
}

/// The preference metrics TRL logs for a batch, from per-pair rewards `β·(log π − log π_ref)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardSummary {
    /// Mean chosen reward.
    pub chosen: f64,
    /// Mean rejected reward.
    pub rejected: f64,
    /// Mean of chosen − rejected.
    pub margins: f64,
    /// Share of pairs with chosen > rejected (strictly).
    pub accuracies: f64,
}

/// Batch means of the rewards (TRL's `rewards/*`).
pub fn summarize_rewards(rewards: &[(f64, f64)]) -> RewardSummary {
    let n = rewards.len().max(1) as f64;
    let mean = |f: &dyn Fn(&(f64, f64)) -> f64| rewards.iter().map(f).sum::<f64>() / n;
    RewardSummary {
        chosen: mean(&|r| r.0),
        rejected: mean(&|r| r.1),
        margins: mean(&|r| r.0 - r.1),
        accuracies: mean(&|r| if r.0 > r.1 { 1.0 } else { 0.0 }),
    }
}

/// `-log σ(x)`, stable for large |x|.
pub fn neg_log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    }
}

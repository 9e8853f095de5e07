//! One micro-batch of hone's objective `L = w_sft·L_sft + λ_pref·L_pref + λ_safe·L_safe`.
//!
//! Every sequence of every term goes through the policy in one forward pass; the terms are then
//! read off the per-token log-probs: SFT and unlikelihood as token means, DPO from per-sequence
//! sums against cached reference log-probs.

use candle_core::{DType, Device, Result, Tensor};

use super::batch::{Sequence, TokenBatch};
use super::examples::PairExample;
use super::loss::{
    per_sequence_sum, preference_losses_with_noise, target_logps, unlikelihood, LabelNoise, PreferenceLogps,
    PreferenceLoss,
};
use crate::model::Decoder;

/// Settings of a preference-style term (DPO or safe-vs-unsafe DPO).
#[derive(Debug, Clone, Copy)]
pub struct PairTerm {
    /// β.
    pub beta: f64,
    /// Sigmoid or IPO.
    pub loss: PreferenceLoss,
    /// Label smoothing of the sigmoid loss (cDPO or robust DPO); `Clean` for plain DPO and IPO.
    pub noise: LabelNoise,
}

/// The sequences of one micro-batch, by term.
#[derive(Default)]
pub struct MicroBatch<'a> {
    /// SFT sequences (including chosen/safe responses when the SFT term trains on them).
    pub sft: Vec<Sequence>,
    /// Plain-text sequences of the language-modelling term.
    pub lm: Vec<Sequence>,
    /// Preference pairs with their reference log-probs (chosen, rejected).
    pub pairs: Vec<(&'a PairExample, (f64, f64))>,
    /// Unsafe responses for the unlikelihood term.
    pub unsafe_seqs: Vec<Sequence>,
    /// Safe-vs-unsafe pairs (safety DPO) with reference log-probs.
    pub safety_pairs: Vec<(&'a PairExample, (f64, f64))>,
}

/// The weights of the terms this step.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    /// w_sft.
    pub sft: f64,
    /// w_lm.
    pub lm: f64,
    /// λ_pref.
    pub pref: f64,
    /// λ_safe.
    pub safe: f64,
}

/// Per pair: (β·(πc − rc), β·(πr − rr), πc, πr).
pub type RewardRow = (f64, f64, f64, f64);

/// The scalar loss to differentiate and what the dashboard shows about it.
pub struct Outcome {
    /// `w_sft·L_sft + λ_pref·L_pref + λ_safe·L_safe` as a graph node.
    pub loss: Tensor,
    /// L_sft, if the term was present.
    pub sft: Option<f64>,
    /// L_lm, if present.
    pub lm: Option<f64>,
    /// L_pref, if present.
    pub pref: Option<f64>,
    /// L_safe, if present.
    pub safe: Option<f64>,
    /// Per pair: (β·(πc − rc), β·(πr − rr), πc, πr).
    pub rewards: Vec<RewardRow>,
    /// Tokens the policy processed (padding excluded).
    pub tokens: usize,
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// Every sequence of a micro-batch, in the order the objective reads them off:
/// sft | lm | unsafe | pair chosen, pair rejected | safety chosen, safety rejected.
fn sequences(mb: &MicroBatch) -> Vec<Sequence> {
    let mut seqs: Vec<Sequence> = Vec::new();
    seqs.extend(mb.sft.iter().cloned());
    seqs.extend(mb.lm.iter().cloned());
    seqs.extend(mb.unsafe_seqs.iter().cloned());
    for pairs in [&mb.pairs, &mb.safety_pairs] {
        seqs.extend(pairs.iter().map(|(p, _)| p.chosen_sequence()));
        seqs.extend(pairs.iter().map(|(p, _)| p.rejected_sequence()));
    }
    seqs
}

/// A token-level selector: 1/N on the N target tokens of sequences `from..to`, 0 elsewhere
/// (none when they have no target).
fn token_selector(batch: &TokenBatch, from: usize, to: usize, device: &Device, dtype: DType) -> Result<Option<Tensor>> {
    let counts = &batch.targets_per_sequence;
    let before: usize = counts[..from].iter().sum();
    let inside: usize = counts[from..to].iter().sum();
    if inside == 0 {
        return Ok(None);
    }
    let mut w = vec![0f64; batch.num_targets()];
    for x in &mut w[before..before + inside] {
        *x = 1.0 / inside as f64;
    }
    Ok(Some(Tensor::from_vec(w, batch.num_targets(), device)?.to_dtype(dtype)?))
}

/// Forward, then each term's loss.
pub fn evaluate(
    policy: &Decoder,
    mb: &MicroBatch,
    weights: Weights,
    pref: Option<PairTerm>,
    safety_pair: Option<PairTerm>,
    pad_id: u32,
) -> Result<Outcome> {
    let seqs = sequences(mb);
    let batch = TokenBatch::new(&seqs, pad_id, policy.device())?;
    let logps = target_logps(policy, &batch)?;
    let device = logps.device().clone();
    let dtype = logps.dtype();
    let n_sft = mb.sft.len();
    let n_lm = mb.lm.len();
    let n_unsafe = mb.unsafe_seqs.len();
    let selector = |from: usize, to: usize| token_selector(&batch, from, to, &device, dtype);
    let mut total = Tensor::zeros((), dtype, &device)?;
    let mut out = Outcome {
        loss: total.clone(),
        sft: None,
        lm: None,
        pref: None,
        safe: None,
        rewards: Vec::new(),
        tokens: batch.real_tokens,
    };
    if let Some(sel) = selector(0, n_sft)? {
        let l = (logps.mul(&sel)?.sum_all()?.neg())?;
        out.sft = Some(scalar(&l)?);
        total = (total + (l * weights.sft)?)?;
    }
    if let Some(sel) = selector(n_sft, n_sft + n_lm)? {
        // Token mean over the text tokens, exactly as the SFT term over response tokens.
        let l = (logps.mul(&sel)?.sum_all()?.neg())?;
        out.lm = Some(scalar(&l)?);
        total = (total + (l * weights.lm)?)?;
    }
    let text_seqs = n_sft + n_lm;
    if let Some(sel) = selector(text_seqs, text_seqs + n_unsafe)? {
        let l = unlikelihood(&logps)?.mul(&sel)?.sum_all()?;
        out.safe = Some(scalar(&l)?);
        total = (total + (l * weights.safe)?)?;
    }
    let sums = per_sequence_sum(&logps, &batch)?;
    let mut offset = text_seqs + n_unsafe;
    if let (Some(term), false) = (pref, mb.pairs.is_empty()) {
        let (losses, rewards) = pair_losses(&sums, offset, &mb.pairs, term, &batch)?;
        let l = losses.mean_all()?;
        out.pref = Some(scalar(&l)?);
        out.rewards = rewards;
        total = (total + (l * weights.pref)?)?;
        offset += 2 * mb.pairs.len();
    }
    if let (Some(term), false) = (safety_pair, mb.safety_pairs.is_empty()) {
        let (losses, _) = pair_losses(&sums, offset, &mb.safety_pairs, term, &batch)?;
        let l = losses.mean_all()?;
        out.safe = Some(out.safe.unwrap_or(0.0) + scalar(&l)?);
        total = (total + (l * weights.safe)?)?;
    }
    out.loss = total;
    Ok(out)
}

type PairLosses = (Tensor, Vec<RewardRow>);

fn pair_losses(
    sums: &Tensor,
    offset: usize,
    pairs: &[(&PairExample, (f64, f64))],
    term: PairTerm,
    batch: &TokenBatch,
) -> Result<PairLosses> {
    let n = pairs.len();
    let device = sums.device();
    let dtype = sums.dtype();
    let chosen = sums.narrow(0, offset, n)?;
    let rejected = sums.narrow(0, offset + n, n)?;
    let vec = |v: Vec<f64>| -> Result<Tensor> { Tensor::from_vec(v, n, device)?.to_dtype(dtype) };
    let ref_c = vec(pairs.iter().map(|(_, r)| r.0).collect())?;
    let ref_r = vec(pairs.iter().map(|(_, r)| r.1).collect())?;
    let counts = &batch.targets_per_sequence;
    let n_c = vec((0..n).map(|i| counts[offset + i] as f64).collect())?;
    let n_r = vec((0..n).map(|i| counts[offset + n + i] as f64).collect())?;
    let lp = PreferenceLogps {
        policy_chosen: &chosen,
        policy_rejected: &rejected,
        ref_chosen: &ref_c,
        ref_rejected: &ref_r,
        chosen_tokens: &n_c,
        rejected_tokens: &n_r,
    };
    let losses = preference_losses_with_noise(term.loss, term.beta, term.noise, &lp)?;
    let pc = super::score::to_f64(&chosen)?;
    let pr = super::score::to_f64(&rejected)?;
    let rewards = (0..n)
        .map(|i| {
            let (rc, rr) = pairs[i].1;
            (term.beta * (pc[i] - rc), term.beta * (pr[i] - rr), pc[i], pr[i])
        })
        .collect();
    Ok((losses, rewards))
}

//! The loss terms of hone's objective as free functions over tensors, with TRL's conventions:
//! token-weighted SFT cross-entropy over response tokens, summed sequence log-probs, sigmoid DPO
//! and TRL's length-normalised IPO.

use candle_core::{Result, Tensor, D};

use super::batch::TokenBatch;
use crate::model::ops::accumulation_dtype;
use crate::model::Decoder;

/// Log-probability `[n]` (f32) of every target token in `batch` under `decoder`. Only the rows
/// that predict a target go through the LM head; `log p = logit[y] − logsumexp(logits)`.
pub fn target_logps(decoder: &Decoder, batch: &TokenBatch) -> Result<Tensor> {
    let hidden = decoder.hidden_states(&batch.ids, None)?;
    let (b, s, h) = hidden.dims3()?;
    let rows = hidden.reshape((b * s, h))?.index_select(&batch.predictor_rows, 0)?;
    let logits = decoder.lm_head(&rows)?;
    let logits = logits.to_dtype(accumulation_dtype(logits.dtype()))?;
    if crate::model::fused::fused_path(&logits) {
        return crate::model::fused::target_logps(&logits, &batch.target_ids);
    }
    let picked = logits.gather(&batch.target_ids, 1)?.squeeze(1)?;
    picked.sub(&logsumexp_last(&logits)?)
}

/// `log Σ exp(x)` over the last dimension, stable, differentiable (the max is detached; the
/// result does not depend on it).
pub fn logsumexp_last(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let sum = xs.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    sum.log()?.add(&max)?.squeeze(D::Minus1)
}

/// Per-sequence sums `[batch]` of per-target values `[n]`.
pub fn per_sequence_sum(values: &Tensor, batch: &TokenBatch) -> Result<Tensor> {
    batch.membership.matmul(&values.unsqueeze(1)?)?.squeeze(1)
}

/// The SFT loss: mean negative log-likelihood over all target tokens of the batch (token-weighted,
/// as transformers' `ForCausalLMLoss` with ignore index -100).
pub fn sft_loss(token_logps: &Tensor) -> Result<Tensor> {
    let n = token_logps.dim(0)?;
    if n == 0 {
        return Tensor::zeros((), token_logps.dtype(), token_logps.device());
    }
    token_logps.mean_all()?.neg()
}

/// Which preference loss to use (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// `-log σ(β·(Δθ − Δref))`.
    Sigmoid,
    /// TRL's IPO: `((Δθ − Δref)_length-normalised − 1/(2β))²`.
    Ipo,
}

impl std::str::FromStr for PreferenceLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sigmoid" => Ok(Self::Sigmoid),
            "ipo" => Ok(Self::Ipo),
            other => Err(format!("{other:?} is not a preference loss (sigmoid, ipo)")),
        }
    }
}

/// Inputs of a preference loss for a batch of pairs, each `[pairs]`.
pub struct PreferenceLogps<'a> {
    /// Σ log π_θ(y+|x).
    pub policy_chosen: &'a Tensor,
    /// Σ log π_θ(y−|x).
    pub policy_rejected: &'a Tensor,
    /// Σ log π_ref(y+|x).
    pub ref_chosen: &'a Tensor,
    /// Σ log π_ref(y−|x).
    pub ref_rejected: &'a Tensor,
    /// Completion tokens of each chosen response (IPO's length normalisation).
    pub chosen_tokens: &'a Tensor,
    /// Completion tokens of each rejected response.
    pub rejected_tokens: &'a Tensor,
}

/// Per-pair preference losses `[pairs]`.
pub fn preference_losses(kind: PreferenceLoss, beta: f64, lp: &PreferenceLogps) -> Result<Tensor> {
    let chosen = lp.policy_chosen.sub(lp.ref_chosen)?;
    let rejected = lp.policy_rejected.sub(lp.ref_rejected)?;
    match kind {
        PreferenceLoss::Sigmoid => softplus(&((rejected - chosen)? * beta)?),
        PreferenceLoss::Ipo => {
            let diff = chosen.div(lp.chosen_tokens)?.sub(&rejected.div(lp.rejected_tokens)?)?;
            (diff - 1.0 / (2.0 * beta))?.sqr()
        }
    }
}

/// `log(1 + eˣ)` computed stably as `max(x, 0) + log(1 + e^−|x|)`; `−log σ(z) = softplus(−z)`.
pub fn softplus(xs: &Tensor) -> Result<Tensor> {
    xs.relu()?.add(&(xs.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// Unlikelihood `−log(1 − p)` per token from log-probs `log p`, with `1 − p` floored at 1e-6 so a
/// token the model is certain of gives a large, finite penalty.
pub fn unlikelihood(token_logps: &Tensor) -> Result<Tensor> {
    (token_logps.exp()?.neg()? + 1.0)?.maximum(1e-6)?.log()?.neg()
}

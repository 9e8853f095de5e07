//! The loss terms of hone's objective as free functions over tensors, with TRL's conventions:
//! token-weighted SFT cross-entropy over response tokens, summed sequence log-probs, sigmoid DPO
//! (optionally conservative or robust to flipped labels) and TRL's length-normalised IPO.

use candle_core::{Result, Tensor, D};

use super::batch::TokenBatch;
use crate::model::ops::accumulation_dtype;
use crate::model::Decoder;

/// Log-probability `[n]` (f32) of every target token in `batch` under `decoder`. Only the rows
/// that predict a target go through the LM head; `log p = logit[y] − logsumexp(logits)`.
pub fn target_logps(decoder: &Decoder, batch: &TokenBatch) -> Result<Tensor> {
    let rows = decoder.hidden_rows(&batch.ids)?.index_select(&batch.predictor_rows, 0)?;
    if let Some(logps) = decoder.fused_head_logps(&rows, &batch.target_ids) {
        return logps?.to_dtype(accumulation_dtype(rows.dtype()));
    }
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

/// How the sigmoid loss treats its labels: TRL's `label_smoothing` ε, the probability that a
/// preference label is flipped. Valid for ε in [0, 0.5) (checked by the config; at 0 both are the
/// plain sigmoid loss).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LabelNoise {
    /// Labels are taken as given.
    #[default]
    Clean,
    /// Conservative DPO (cDPO, Mitchell 2023): the expected sigmoid loss under a label that is wrong
    /// with probability ε, `(1−ε)·L(βd) + ε·L(−βd)` with `L(z) = −log σ(z)`. TRL ≤ 0.x applied this to
    /// `loss_type="sigmoid"`; TRL 1.16's sigmoid ignores `label_smoothing`, and the same formula is its
    /// `aot` loss on one pair.
    Conservative(f64),
    /// Robust DPO (Chowdhury et al. 2024), TRL 1.16's `loss_type="robust"`: the unbiased estimator
    /// `((1−ε)·L(βd) − ε·L(−βd)) / (1 − 2ε)`.
    Robust(f64),
}

impl LabelNoise {
    /// The noise model a `[stage.pref]` table asks for: `robust` with its ε, `sigmoid` with
    /// ε > 0 is cDPO, anything else clean.
    #[must_use]
    pub fn of(pref: &crate::config::PrefTerm) -> Self {
        use crate::config::PrefLossKind;
        match (pref.loss, pref.label_smoothing) {
            (PrefLossKind::Robust, e) => Self::Robust(e),
            (PrefLossKind::Sigmoid, e) if e > 0.0 => Self::Conservative(e),
            _ => Self::Clean,
        }
    }

    /// The flip probability ε (0 for clean labels).
    #[must_use]
    pub fn epsilon(self) -> f64 {
        match self {
            Self::Clean => 0.0,
            Self::Conservative(e) | Self::Robust(e) => e,
        }
    }
}

/// Per-pair preference losses `[pairs]`.
pub fn preference_losses(kind: PreferenceLoss, beta: f64, lp: &PreferenceLogps) -> Result<Tensor> {
    preference_losses_with_noise(kind, beta, LabelNoise::Clean, lp)
}

/// Per-pair preference losses `[pairs]` under a label-noise model. Label noise is defined for the
/// sigmoid loss only; IPO with noise is an error (the config refuses it before a run starts).
pub fn preference_losses_with_noise(
    kind: PreferenceLoss,
    beta: f64,
    noise: LabelNoise,
    lp: &PreferenceLogps,
) -> Result<Tensor> {
    let chosen = lp.policy_chosen.sub(lp.ref_chosen)?;
    let rejected = lp.policy_rejected.sub(lp.ref_rejected)?;
    match kind {
        PreferenceLoss::Sigmoid => {
            // d = Δθ − Δref; L(βd) = softplus(−βd), L(−βd) = softplus(βd).
            let z = ((chosen - rejected)? * beta)?;
            match noise {
                LabelNoise::Clean => softplus(&z.neg()?),
                LabelNoise::Conservative(e) => {
                    softplus(&z.neg()?)?.affine(1.0 - e, 0.0)? + softplus(&z)?.affine(e, 0.0)?
                }
                LabelNoise::Robust(e) => {
                    let scale = 1.0 / (1.0 - 2.0 * e);
                    softplus(&z.neg()?)?.affine((1.0 - e) * scale, 0.0)? - softplus(&z)?.affine(e * scale, 0.0)?
                }
            }
        }
        PreferenceLoss::Ipo if noise != LabelNoise::Clean => {
            Err(candle_core::Error::Msg("label smoothing applies to the sigmoid loss only, not IPO".into()))
        }
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

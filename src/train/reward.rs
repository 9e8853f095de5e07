//! The reward model's training loss as TRL 1.16's `RewardTrainer.compute_loss` defines it, and the
//! metrics hone logs for it.
//!
//! Bradley-Terry: `L = mean_i −log σ(r_c,i − r_r,i − m_i)` with an optional per-pair margin `m`
//! (the dataset's `margin` column), plus `c · mean_i (r_c,i + r_r,i)²` when
//! `center_rewards_coefficient = c` is set (Eisenstein et al. 2023, Eq. 2: keeps rewards centred
//! on zero). Scores come from `model::RewardModel::scores`.

use candle_core::{DType, Result, Tensor};

use super::loss::softplus;

/// Settings of the Bradley-Terry loss.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BradleyTerry {
    /// TRL's `center_rewards_coefficient` (`None`: no centring term).
    pub center_rewards_coefficient: Option<f64>,
}

/// What the dashboard shows about a batch of scored pairs (batch means, as TRL averages them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardMetrics {
    /// `rewards/chosen`: mean score of the chosen responses.
    pub chosen: f64,
    /// `rewards/rejected`: mean score of the rejected responses.
    pub rejected: f64,
    /// `rewards/margins`: mean of `r_c − r_r` (TRL logs it as `margin`; the dataset margin is not
    /// subtracted).
    pub margins: f64,
    /// `accuracy`: share of pairs with `r_c > r_r` (strictly, as TRL).
    pub accuracy: f64,
    /// TRL's `min_reward` over all scores of the batch.
    pub min: f64,
    /// TRL's `mean_reward`.
    pub mean: f64,
    /// TRL's `max_reward`.
    pub max: f64,
}

impl BradleyTerry {
    /// The batch loss (a scalar graph node) from chosen and rejected scores `[pairs]` and
    /// optional margins `[pairs]`.
    pub fn loss(&self, chosen: &Tensor, rejected: &Tensor, margins: Option<&Tensor>) -> Result<Tensor> {
        let mut diff = chosen.sub(rejected)?;
        if let Some(m) = margins {
            diff = diff.sub(&m.to_dtype(diff.dtype())?)?;
        }
        let mut loss = softplus(&diff.neg()?)?.mean_all()?;
        if let Some(c) = self.center_rewards_coefficient {
            let center = chosen.add(rejected)?.sqr()?.mean_all()?;
            loss = (loss + (center * c)?)?;
        }
        Ok(loss)
    }
}

/// The metrics of a batch from chosen and rejected scores `[pairs]`.
pub fn reward_metrics(chosen: &Tensor, rejected: &Tensor) -> Result<RewardMetrics> {
    let c: Vec<f64> = chosen.to_dtype(DType::F64)?.to_vec1()?;
    let r: Vec<f64> = rejected.to_dtype(DType::F64)?.to_vec1()?;
    if c.len() != r.len() {
        candle_core::bail!("{} chosen scores but {} rejected", c.len(), r.len());
    }
    let n = c.len().max(1) as f64;
    let all = c.iter().chain(&r);
    Ok(RewardMetrics {
        chosen: c.iter().sum::<f64>() / n,
        rejected: r.iter().sum::<f64>() / n,
        margins: c.iter().zip(&r).map(|(a, b)| a - b).sum::<f64>() / n,
        accuracy: c.iter().zip(&r).filter(|(a, b)| a > b).count() as f64 / n,
        min: all.clone().copied().fold(f64::INFINITY, f64::min),
        mean: all.clone().sum::<f64>() / (2.0 * n),
        max: all.copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

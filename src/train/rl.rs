//! The losses of online RL (GRPO) and of unpaired thumbs-up/down feedback (KTO) as TRL 1.16
//! defines them, as pure functions over log-prob tensors (differentiable in the policy's
//! log-probs), with the numbers its trainers log.
//!
//! GRPO (TRL's `GRPOTrainer._compute_loss`, `importance_sampling_level="token"`): with the
//! per-token ratio `ρ = exp(log π − log π_old)` and the completion's group-normalised advantage `A`,
//! each completion token costs `−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·k3` where
//! `k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1` (multiplied by `ρ` when the KL is
//! bias-corrected, TRL's default); `loss_type` decides how tokens are averaged. Without old
//! log-probs (one update per generation) `π_old` is the detached policy, so `ρ = 1` with
//! `ρ`'s gradient.
//!
//! KTO (TRL's `KTOTrainer._compute_loss`, `loss_type="kto"`): with the batch's KL estimate
//! `z = max(0, mean(log π(y'|x) − log π_ref(y'|x)))` over mismatched pairs (detached), a desirable
//! completion costs `w_d·(1 − σ(β·(r − z)))` and an undesirable one `w_u·(1 − σ(β·(z − r)))`, with
//! `r = log π(y|x) − log π_ref(y|x)`; the loss is the mean over the batch.
//!
//! Nothing here generates, scores or batches: the GRPO and KTO stages do (`trainer::grpo`,
//! `trainer::kto`).

use candle_core::{DType, Result, Tensor, D};

use super::loss::softplus;

/// How GRPO's per-token losses become one number (TRL's `loss_type`, the ones sharing the clipped
/// objective).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrpoLossType {
    /// Mean over each completion's tokens, then over completions (length-biased).
    Grpo,
    /// Mean over the batch's completion tokens.
    Bnpo,
    /// Sum over tokens divided by `completions × max_completion_length` (Dr. GRPO).
    DrGrpo,
    /// Sum over tokens divided by the active tokens of the whole optimizer step (DAPO): TRL
    /// 1.16's default.
    #[default]
    Dapo,
}

/// Where importance ratios are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportanceSampling {
    /// One ratio per token (TRL's default).
    #[default]
    Token,
    /// One ratio per completion, from the mean per-token log-ratio (GSPO).
    Sequence,
}

/// GRPO settings with TRL 1.16's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoConfig {
    /// The aggregation (`loss_type`).
    pub loss_type: GrpoLossType,
    /// KL coefficient β (TRL 1.16's default is 0: no reference model).
    pub beta: f64,
    /// Lower clip ε.
    pub epsilon_low: f64,
    /// Upper clip ε (DAPO recommends 0.28; TRL defaults it to `epsilon`).
    pub epsilon_high: f64,
    /// Two-sided clipping: the unclipped ratio is capped at `delta` (INTELLECT-2).
    pub delta: Option<f64>,
    /// Token or sequence importance ratios.
    pub importance_sampling: ImportanceSampling,
    /// Multiply the per-token KL by the ratio (TRL's `use_bias_correction_kl`, default true).
    pub bias_corrected_kl: bool,
    /// The `dr_grpo` constant.
    pub max_completion_length: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            loss_type: GrpoLossType::Dapo,
            beta: 0.0,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            delta: None,
            importance_sampling: ImportanceSampling::Token,
            bias_corrected_kl: true,
            max_completion_length: 512,
        }
    }
}

/// Per-token log-probs `[completions, tokens]` of one micro-batch of completions.
pub struct GrpoInputs<'a> {
    /// log π(token) under the policy being trained (the graph node to differentiate).
    pub policy: &'a Tensor,
    /// log π_old(token) under the policy that sampled (`None`: the detached policy).
    pub old: Option<&'a Tensor>,
    /// log π_ref(token) under the reference (needed when β ≠ 0).
    pub reference: Option<&'a Tensor>,
    /// 1 on completion tokens, 0 on padding.
    pub mask: &'a Tensor,
    /// One advantage per completion `[completions]`.
    pub advantages: &'a Tensor,
    /// For DAPO: the active tokens of the whole optimizer step (all its micro-batches); `None`:
    /// this micro-batch's. With the whole step's count the caller must not divide by the number of
    /// micro-batches again.
    pub step_tokens: Option<f64>,
}

/// The GRPO loss and what TRL logs about it.
pub struct GrpoOutput {
    /// The scalar loss (a graph node).
    pub loss: Tensor,
    /// TRL's `kl`: the masked token mean of the (bias-corrected) k3 estimate, when β ≠ 0.
    pub kl: Option<f64>,
    /// `clip_ratio/low_mean`: share of tokens with `ρ < 1 − ε_low` and a negative advantage.
    pub clip_low: f64,
    /// `clip_ratio/high_mean`: share with `ρ > 1 + ε_high` and a positive advantage.
    pub clip_high: f64,
    /// `clip_ratio/region_mean`: either.
    pub clip_region: f64,
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// GRPO's loss for one micro-batch.
pub fn grpo_loss(cfg: &GrpoConfig, x: &GrpoInputs) -> Result<GrpoOutput> {
    let policy = x.policy;
    let (b, _) = policy.dims2()?;
    let mask = x.mask.to_dtype(policy.dtype())?;
    let adv = x.advantages.to_dtype(policy.dtype())?.reshape((b, 1))?;
    let old = match x.old {
        Some(o) => o.to_dtype(policy.dtype())?,
        None => policy.detach(),
    };
    let log_ratio = policy.sub(&old)?;
    let seq_tokens = mask.sum_keepdim(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
    let log_weights = match cfg.importance_sampling {
        ImportanceSampling::Token => log_ratio,
        ImportanceSampling::Sequence => log_ratio.mul(&mask)?.sum_keepdim(D::Minus1)?.div(&seq_tokens)?,
    };
    let coef_1 = log_weights.exp()?;
    let coef_2 = coef_1.clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)?;
    let unclipped = match cfg.delta {
        Some(d) => coef_1.clamp(f64::NEG_INFINITY, d)?,
        None => coef_1.clone(),
    };
    let mut per_token = unclipped.broadcast_mul(&adv)?.minimum(&coef_2.broadcast_mul(&adv)?)?.neg()?;
    let active = mask.sum_all()?;
    // TRL's `global_masked_mean`: a token mean, or a mean over completions for per-sequence values.
    let masked_mean = |t: &Tensor| -> Result<f64> {
        if t.dim(1)? == 1 && mask.dim(1)? != 1 {
            return scalar(&t.mean_all()?);
        }
        Ok(scalar(&t.mul(&mask)?.sum_all()?)? / scalar(&active)?.max(1.0))
    };
    let mut kl = None;
    if cfg.beta != 0.0 {
        let Some(reference) = x.reference else {
            candle_core::bail!("GRPO with β = {} needs the reference model's log-probs", cfg.beta);
        };
        let d = reference.to_dtype(policy.dtype())?.sub(policy)?;
        let mut per_token_kl = ((d.exp()? - &d)? - 1.0)?;
        if cfg.bias_corrected_kl {
            per_token_kl = per_token_kl.broadcast_mul(&coef_1)?;
        }
        kl = Some(masked_mean(&per_token_kl.detach())?);
        per_token = (per_token.broadcast_add(&(per_token_kl * cfg.beta)?))?;
    }
    let per_token = per_token.broadcast_as(mask.shape())?.mul(&mask)?;
    let loss = match cfg.loss_type {
        GrpoLossType::Grpo => per_token.sum_keepdim(D::Minus1)?.div(&seq_tokens)?.mean_all()?,
        GrpoLossType::Bnpo => (per_token.sum_all()? / scalar(&active)?.max(1.0))?,
        GrpoLossType::DrGrpo => (per_token.sum_all()? / (b * cfg.max_completion_length) as f64)?,
        GrpoLossType::Dapo => {
            let tokens = match x.step_tokens {
                Some(t) => t,
                None => scalar(&active)?,
            };
            (per_token.sum_all()? / tokens.max(1.0))?
        }
    };
    let coef = unclipped.detach().to_dtype(DType::F32)?;
    let adv = adv.to_dtype(DType::F32)?;
    let low = coef.lt(1.0 - cfg.epsilon_low)?.broadcast_mul(&adv.lt(0.0)?)?.to_dtype(DType::F32)?;
    let high = coef.gt(1.0 + cfg.epsilon_high)?.broadcast_mul(&adv.gt(0.0)?)?.to_dtype(DType::F32)?;
    let region = low.maximum(&high)?;
    let f32_mask_mean = |t: &Tensor| masked_mean(&t.to_dtype(policy.dtype())?);
    Ok(GrpoOutput {
        loss,
        kl,
        clip_low: f32_mask_mean(&low)?,
        clip_high: f32_mask_mean(&high)?,
        clip_region: f32_mask_mean(&region)?,
    })
}

/// How rewards are scaled into advantages (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (TRL's default).
    #[default]
    Group,
    /// Divide by the whole batch's standard deviation.
    Batch,
    /// Only subtract the group mean (Dr. GRPO).
    None,
}

/// Group-normalised advantages with the reward statistics TRL logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// One per completion, in the order of the rewards.
    pub advantages: Vec<f64>,
    /// `reward`: mean reward of the batch.
    pub reward_mean: f64,
    /// `reward_std`: its sample standard deviation.
    pub reward_std: f64,
    /// `frac_reward_zero_std`: share of completions whose group (or batch, with
    /// [`ScaleRewards::Batch`]) has rewards of zero spread, hence no learning signal.
    pub frac_zero_std: f64,
}

/// Sample standard deviation (Bessel-corrected, as TRL's `nanstd`); NaN for fewer than 2 values.
fn std(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (var * n / (n - 1.0)).sqrt()
}

/// TRL's advantages (`sum_then_normalize`): `(r − mean_group) / (std + 1e-4)`, completions of one
/// prompt being `group_size` consecutive rewards.
pub fn group_advantages(rewards: &[f64], group_size: usize, scale: ScaleRewards) -> Result<Advantages> {
    if group_size < 2 {
        candle_core::bail!("a GRPO group needs at least 2 completions (got {group_size})");
    }
    if rewards.is_empty() || rewards.len() % group_size != 0 {
        candle_core::bail!("{} rewards do not make groups of {group_size}", rewards.len());
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        candle_core::bail!("reward {i} is not a finite number ({})", rewards[i]);
    }
    let batch_std = std(rewards);
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut zero_std = 0usize;
    for group in rewards.chunks(group_size) {
        let mean = group.iter().sum::<f64>() / group_size as f64;
        let spread = match scale {
            ScaleRewards::Batch => batch_std,
            ScaleRewards::Group | ScaleRewards::None => std(group),
        };
        // torch.isclose(std, 0): |std| ≤ 1e-8.
        if spread.abs() <= 1e-8 {
            zero_std += group_size;
        }
        for r in group {
            let centred = r - mean;
            advantages.push(if scale == ScaleRewards::None { centred } else { centred / (spread + 1e-4) });
        }
    }
    Ok(Advantages {
        reward_mean: rewards.iter().sum::<f64>() / rewards.len() as f64,
        reward_std: batch_std,
        frac_zero_std: zero_std as f64 / rewards.len() as f64,
        advantages,
    })
}

/// KTO settings with TRL 1.16's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoConfig {
    /// β.
    pub beta: f64,
    /// Weight of desirable (thumbs-up) losses.
    pub desirable_weight: f64,
    /// Weight of undesirable (thumbs-down) losses.
    pub undesirable_weight: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self { beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.0 }
    }
}

/// Per-sequence summed completion log-probs `[n]` of one KTO batch.
pub struct KtoInputs<'a> {
    /// log π(y|x) of each example (the graph node to differentiate).
    pub policy: &'a Tensor,
    /// log π_ref(y|x).
    pub reference: &'a Tensor,
    /// Thumbs up (true) or down, per example.
    pub labels: &'a [bool],
    /// log π(y'|x) on the mismatched pairs ([`kl_completion_order`]); not differentiated.
    pub policy_kl: &'a Tensor,
    /// log π_ref(y'|x) on the mismatched pairs.
    pub reference_kl: &'a Tensor,
}

/// The KTO loss and TRL's metrics (means over the examples of each label; `None` when the batch
/// has none of that label).
pub struct KtoOutput {
    /// The scalar loss (a graph node).
    pub loss: Tensor,
    /// `kl`: the batch's clamped KL estimate.
    pub kl: f64,
    /// `rewards/chosen`: mean β·(log π − log π_ref) of desirable examples.
    pub rewards_chosen: Option<f64>,
    /// `rewards/rejected`: the same over undesirable examples.
    pub rewards_rejected: Option<f64>,
    /// `rewards/margins`: chosen minus rejected, when both are present.
    pub margins: Option<f64>,
    /// `logps/chosen`: mean log π of desirable examples.
    pub logps_chosen: Option<f64>,
    /// `logps/rejected`.
    pub logps_rejected: Option<f64>,
}

/// KTO's loss for one batch.
pub fn kto_loss(cfg: &KtoConfig, x: &KtoInputs) -> Result<KtoOutput> {
    let n = x.policy.dim(0)?;
    if x.labels.len() != n {
        candle_core::bail!("{n} log-probs but {} labels", x.labels.len());
    }
    let dtype = x.policy.dtype();
    let device = x.policy.device();
    let kl = scalar(&x.policy_kl.sub(x.reference_kl)?.mean_all()?)?.max(0.0);
    let logratio = x.policy.sub(&x.reference.to_dtype(dtype)?)?;
    // s = +1 for desirable, −1 for undesirable: loss_i = w_i · (1 − σ(s·β·(r − z))) = w_i · σ(−s·β·(r − z)).
    let sign: Vec<f64> = x.labels.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect();
    let weight: Vec<f64> =
        x.labels.iter().map(|&l| if l { cfg.desirable_weight } else { cfg.undesirable_weight }).collect();
    let sign = Tensor::from_vec(sign, n, device)?.to_dtype(dtype)?;
    let weight = Tensor::from_vec(weight, n, device)?.to_dtype(dtype)?;
    let z = ((logratio.clone() - kl)? * cfg.beta)?.mul(&sign)?;
    // σ(−z) = exp(−softplus(z)), stable for either sign of z.
    let losses = softplus(&z)?.neg()?.exp()?.mul(&weight)?;
    let loss = if n == 0 { Tensor::zeros((), dtype, device)? } else { losses.mean_all()? };
    let rewards: Vec<f64> = logratio.to_dtype(DType::F64)?.to_vec1()?;
    let logps: Vec<f64> = x.policy.to_dtype(DType::F64)?.to_vec1()?;
    let mean_where = |values: &[f64], want: bool| -> Option<f64> {
        let picked: Vec<f64> = values.iter().zip(x.labels).filter(|(_, &l)| l == want).map(|(v, _)| *v).collect();
        (!picked.is_empty()).then(|| picked.iter().sum::<f64>() / picked.len() as f64)
    };
    let rewards_chosen = mean_where(&rewards, true).map(|r| cfg.beta * r);
    let rewards_rejected = mean_where(&rewards, false).map(|r| cfg.beta * r);
    Ok(KtoOutput {
        loss,
        kl,
        rewards_chosen,
        rewards_rejected,
        margins: rewards_chosen.zip(rewards_rejected).map(|(c, r)| c - r),
        logps_chosen: mean_where(&logps, true),
        logps_rejected: mean_where(&logps, false),
    })
}

/// For each example, the example whose completion forms its mismatched KL pair, as TRL builds
/// them: within each consecutive chunk of `batch_size` examples the completions are rotated by one,
/// `(x₁, y_k), (x₂, y₁), …, (x_k, y_{k−1})`.
#[must_use]
pub fn kl_completion_order(n: usize, batch_size: usize) -> Vec<usize> {
    let size = batch_size.max(1);
    (0..n)
        .map(|i| {
            let start = i - i % size;
            let len = size.min(n - start);
            if i == start {
                start + len - 1
            } else {
                i - 1
            }
        })
        .collect()
}

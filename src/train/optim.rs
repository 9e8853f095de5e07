//! AdamW as torch implements it (decoupled weight decay, bias-corrected moments, `eps` added to
//! the corrected second moment's square root), with its state exposed so checkpoints can resume
//! exactly, plus global gradient-norm clipping.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

/// AdamW hyper-parameters (torch's defaults except the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (the schedule sets it each step).
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
}

/// AdamW over a fixed list of named parameters.
pub struct AdamW {
    /// Hyper-parameters; `lr` may change between steps.
    pub config: AdamWConfig,
    params: Vec<(String, Var)>,
    moments: Vec<Moments>,
    step: u64,
}

impl AdamW {
    /// Zero-initialised moments for `params`.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let moments = params
            .iter()
            .map(|(_, v)| Ok(Moments { m: v.zeros_like()?, v: v.zeros_like()? }))
            .collect::<Result<_>>()?;
        Ok(Self { config, params, moments, step: 0 })
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Parameter names and moments, for checkpoints.
    pub fn state(&self) -> impl Iterator<Item = (&str, &Moments)> {
        self.params.iter().map(|(n, _)| n.as_str()).zip(&self.moments)
    }

    /// Restores moments and the step count saved by [`AdamW::state`].
    pub fn restore(&mut self, step: u64, moments: Vec<Moments>) -> Result<()> {
        if moments.len() != self.params.len() {
            candle_core::bail!("optimizer state has {} entries for {} parameters", moments.len(), self.params.len());
        }
        for ((name, var), m) in self.params.iter().zip(&moments) {
            if m.m.shape() != var.shape() || m.v.shape() != var.shape() {
                candle_core::bail!("optimizer state for {name}: shape {:?}, parameter {:?}", m.m.shape(), var.shape());
            }
        }
        self.moments = moments;
        self.step = step;
        Ok(())
    }

    /// The parameters this optimizer updates, in order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update from the gradients in a `GradStore` (see [`AdamW::step_with`]).
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        let grads = gradients_of(&self.params, grads);
        self.step_with(&grads, grad_scale)
    }

    /// One update from per-parameter gradients (aligned with the parameters), scaled by
    /// `grad_scale` (the clipping coefficient). Parameters without a gradient are left alone, as
    /// torch skips them.
    pub fn step_with(&mut self, grads: &[Option<Tensor>], grad_scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.step += 1;
        let c = self.config;
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let step_size = c.lr / bias1;
        let bias2_sqrt = bias2.sqrt();
        for (((_, var), mom), g) in self.params.iter().zip(self.moments.iter_mut()).zip(grads) {
            let Some(g) = g else { continue };
            let g = if (grad_scale - 1.0).abs() > 0.0 { (g * grad_scale)? } else { g.clone() };
            let m = ((&mom.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&mom.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let mut theta = var.as_tensor().clone();
            if c.weight_decay != 0.0 {
                theta = (theta * (1.0 - c.lr * c.weight_decay))?;
            }
            let next = (theta - (m.div(&denom)? * step_size)?)?;
            var.set(&next)?;
            mom.m = m;
            mom.v = v;
        }
        Ok(())
    }
}

/// The gradients of `params` in a `GradStore`, in parameter order.
pub fn gradients_of(params: &[(String, Var)], grads: &GradStore) -> Vec<Option<Tensor>> {
    params.iter().map(|(_, v)| grads.get(v).cloned()).collect()
}

/// The global L2 norm of all gradients of `params` (`torch.nn.utils.clip_grad_norm_`'s total).
pub fn grad_norm(params: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    global_norm(&gradients_of(params, grads))
}

/// The global L2 norm of a list of gradients (NaN or infinite when any element is).
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// The factor torch's clipping multiplies gradients by: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

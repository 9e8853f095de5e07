//! AdamW as torch implements it (decoupled weight decay, bias-corrected moments, `eps` added to
//! the corrected second moment's square root), with its state exposed so checkpoints can resume
//! exactly, plus global gradient-norm clipping.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

use crate::model::fused::{adamw_update, fused_path, AdamWStep};

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
            if fused_path(g) && g.dtype() == var.dtype() && mom.m.dtype() == var.dtype() {
                // The same operations per element in two passes (bit-identical results).
                let step = fused_step(&c, grad_scale, step_size, bias2_sqrt);
                let [next, m, v] = adamw_update(var.as_tensor(), &mom.m, &mom.v, g, step)?;
                var.set(&next)?;
                mom.m = m;
                mom.v = v;
                continue;
            }
            let [next, m, v] = composed_update(var.as_tensor(), mom, g, &c, grad_scale, step_size, bias2_sqrt)?;
            var.set(&next)?;
            mom.m = m;
            mom.v = v;
        }
        Ok(())
    }
}

/// The update of one parameter from candle's element-wise ops (every device and dtype; on the
/// CPU in f32/f64 `fused::adamw_update` computes the same values bit for bit): the new
/// parameter and moments.
/// The scalars of the fused update for `c` at this step.
fn fused_step(c: &AdamWConfig, grad_scale: f64, step_size: f64, bias2_sqrt: f64) -> AdamWStep {
    AdamWStep {
        grad_scale: ((grad_scale - 1.0).abs() > 0.0).then_some(grad_scale),
        beta1: c.beta1,
        beta2: c.beta2,
        inv_bias2_sqrt: 1.0 / bias2_sqrt,
        eps: c.eps,
        decay: (c.weight_decay != 0.0).then_some(1.0 - c.lr * c.weight_decay),
        step_size,
    }
}

fn composed_update(
    theta: &Tensor,
    mom: &Moments,
    g: &Tensor,
    c: &AdamWConfig,
    grad_scale: f64,
    step_size: f64,
    bias2_sqrt: f64,
) -> Result<[Tensor; 3]> {
    let g = if (grad_scale - 1.0).abs() > 0.0 { (g * grad_scale)? } else { g.clone() };
    let m = ((&mom.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
    let v = ((&mom.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
    let mut theta = theta.clone();
    if c.weight_decay != 0.0 {
        theta = (theta * (1.0 - c.lr * c.weight_decay))?;
    }
    let next = (theta - (m.div(&denom)? * step_size)?)?;
    Ok([next, m, v])
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Device, Tensor};

    use super::{composed_update, fused_step, AdamWConfig, Moments};
    use crate::model::fused::adamw_update;

    fn values(n: usize, seed: u64, dtype: DType) -> Tensor {
        let mut state = seed;
        let v: Vec<f64> = (0..n)
            .map(|i| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let x = ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 10f64.powi((i % 9) as i32 - 6);
                if i % 17 == 0 {
                    -0.0
                } else {
                    x
                }
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    #[test]
    fn the_fused_update_is_bit_identical_to_the_composed_one() {
        for dtype in [DType::F32, DType::F64] {
            for (weight_decay, grad_scale, t) in [(0.0, 1.0, 1), (0.01, 0.37, 7), (0.1, 1.0, 1000)] {
                let c = AdamWConfig { lr: 3e-4, weight_decay, ..AdamWConfig::default() };
                let n = 40_000;
                let theta = values(n, 1, dtype);
                let mom = Moments { m: values(n, 2, dtype), v: values(n, 3, dtype).abs().unwrap() };
                let g = values(n, 4, dtype);
                let bias1 = 1.0 - c.beta1.powi(t);
                let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
                let step_size = c.lr / bias1;
                let want = composed_update(&theta, &mom, &g, &c, grad_scale, step_size, bias2_sqrt).unwrap();
                let step = fused_step(&c, grad_scale, step_size, bias2_sqrt);
                let got = adamw_update(&theta, &mom.m, &mom.v, &g, step).unwrap();
                for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                    let a = a.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                    let b = b.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                        assert_eq!(x.to_bits(), y.to_bits(), "{dtype:?} wd {weight_decay} t {t}: output {k}[{i}]");
                    }
                }
            }
        }
    }
}

//! One AdamW update of a parameter in two passes over memory instead of a dozen.
//!
//! The composed update (`train::optim`) is a chain of candle element-wise ops, each allocating
//! a full-size tensor: at 135M parameters that is ~13 passes over 540 MB a step, most of them
//! on freshly mapped pages. These kernels compute the same chain per element with the same
//! operations in the same order (candle's `x * c` is `x · c + 0` in the tensor's dtype, `x / c`
//! is `x · (1/c) + 0`, `x + c` is `x · 1 + c`), so the results are bit-identical to the composed
//! path: checkpoints and golden metrics do not move.

use candle_core::{bail, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{stacked, Fused, Inputs, Kernel, Real};

/// The scalars of one AdamW step, as `train::optim::AdamW::step_with` derives them.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// The clipping coefficient the gradient is multiplied by, `None` when it is 1.
    pub grad_scale: Option<f64>,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// `1 / sqrt(1 − β₂ᵗ)`.
    pub inv_bias2_sqrt: f64,
    /// ε.
    pub eps: f64,
    /// `1 − lr · weight_decay`, `None` without weight decay.
    pub decay: Option<f64>,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
}

/// The updated `(parameter, m, v)` of one parameter `theta` with moments `m`, `v` and gradient
/// `g` (all of one shape and dtype; CPU, f32 or f64).
pub fn adamw_update(theta: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, step: AdamWStep) -> Result<[Tensor; 3]> {
    let moments = m.contiguous()?.apply_op3_no_bwd(&v.contiguous()?, &g.contiguous()?, &Fused(MomentsOp(step)))?;
    let next = theta.contiguous()?.apply_op2_no_bwd(&moments, &Fused(ParamOp(step)))?;
    Ok([next, moments.get(0)?, moments.get(1)?])
}

/// Elements per parallel task (element-wise: any split gives the same result).
const CHUNK: usize = 1 << 14;

struct MomentsOp(AdamWStep);

fn moments<T: Real>(m: &[T], v: &[T], g: &[T], s: AdamWStep) -> Vec<T> {
    let n = m.len();
    let c = |x: f64| T::from_f64(x);
    let (b1, nb1, b2, nb2) = (c(s.beta1), c(1.0 - s.beta1), c(s.beta2), c(1.0 - s.beta2));
    let scale = s.grad_scale.map(c);
    let zero = T::zero();
    let mut out = vec![zero; 2 * n];
    let (om, ov) = out.split_at_mut(n);
    om.par_chunks_mut(CHUNK)
        .zip(ov.par_chunks_mut(CHUNK))
        .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)))
        .for_each(|((om, ov), ((m, v), g))| {
            for ((om, ov), ((&m, &v), &g)) in om.iter_mut().zip(ov.iter_mut()).zip(m.iter().zip(v).zip(g)) {
                let g = match scale {
                    Some(k) => g * k + zero,
                    None => g,
                };
                *om = (m * b1 + zero) + (g * nb1 + zero);
                *ov = (v * b2 + zero) + ((g * g) * nb2 + zero);
            }
        });
    out
}

impl Kernel<3> for MomentsOp {
    const NAME: &'static str = "hone-adamw-moments";

    fn shape(&self, [lm, lv, lg]: [&Layout; 3]) -> Result<Shape> {
        if lm.shape() != lv.shape() || lm.shape() != lg.shape() {
            bail!("adamw: m {:?}, v {:?} and gradient {:?} differ", lm.shape(), lv.shape(), lg.shape());
        }
        Ok(stacked(2, lm))
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 3>) -> Result<Vec<T>> {
        let [m, v, g] = inputs.floats()?;
        Ok(moments::<T>(m, v, g, self.0))
    }
}

struct ParamOp(AdamWStep);

fn param<T: Real>(theta: &[T], mv: &[T], s: AdamWStep) -> Vec<T> {
    let n = theta.len();
    let c = |x: f64| T::from_f64(x);
    let (inv_b2, eps, step_size) = (c(s.inv_bias2_sqrt), c(s.eps), c(s.step_size));
    let decay = s.decay.map(c);
    let (zero, one) = (T::zero(), T::one());
    let (m, v) = mv.split_at(n);
    let mut out = vec![zero; n];
    out.par_chunks_mut(CHUNK).zip(theta.par_chunks(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK))).for_each(
        |(o, ((t, m), v))| {
            for (o, ((&t, &m), &v)) in o.iter_mut().zip(t.iter().zip(m).zip(v)) {
                let denom = ((v.sqrt() * inv_b2 + zero) * one) + eps;
                let t = match decay {
                    Some(k) => t * k + zero,
                    None => t,
                };
                *o = t - ((m / denom) * step_size + zero);
            }
        },
    );
    out
}

impl Kernel<2> for ParamOp {
    const NAME: &'static str = "hone-adamw-param";

    fn shape(&self, [lt, lmv]: [&Layout; 2]) -> Result<Shape> {
        if lmv.shape().elem_count() != 2 * lt.shape().elem_count() {
            bail!("adamw: moments {:?} for a parameter {:?}", lmv.shape(), lt.shape());
        }
        Ok(lt.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 2>) -> Result<Vec<T>> {
        let [theta, mv] = inputs.floats()?;
        Ok(param::<T>(theta, mv, self.0))
    }
}

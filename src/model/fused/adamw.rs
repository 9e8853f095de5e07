//! One AdamW update of a parameter in two passes over memory instead of a dozen.
//!
//! The composed update (`train::optim`) is a chain of candle element-wise ops, each allocating
//! a full-size tensor: at 135M parameters that is ~13 passes over 540 MB a step, most of them
//! on freshly mapped pages. These kernels compute the same chain per element with the same
//! operations in the same order (candle's `x * c` is `x · c + 0` in the tensor's dtype, `x / c`
//! is `x · (1/c) + 0`, `x + c` is `x · 1 + c`), so the results are bit-identical to the composed
//! path: checkpoints and golden metrics do not move.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{contiguous, ternary, Real, Ternary};

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
    let moments = m.contiguous()?.apply_op3_no_bwd(&v.contiguous()?, &g.contiguous()?, &MomentsOp(step))?;
    let next = theta.contiguous()?.apply_op2_no_bwd(&moments, &ParamOp(step))?;
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

impl Ternary for MomentsOp {
    const LABEL: &'static str = "adamw";

    fn kernel<T: Real>(&self, [m, v, g]: [&[T]; 3], _: [&Layout; 3]) -> Result<Vec<T>> {
        Ok(moments::<T>(m, v, g, self.0))
    }
}

impl CustomOp3 for MomentsOp {
    fn name(&self) -> &'static str {
        "hone-adamw-moments"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() || l1.shape() != l3.shape() {
            bail!("adamw: m {:?}, v {:?} and gradient {:?} differ", l1.shape(), l2.shape(), l3.shape());
        }
        let out = ternary(self, [(s1, l1), (s2, l2), (s3, l3)])?;
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((out, Shape::from(dims)))
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

impl CustomOp2 for ParamOp {
    fn name(&self) -> &'static str {
        "hone-adamw-param"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l2.shape().elem_count() != 2 * l1.shape().elem_count() {
            bail!("adamw: moments {:?} for a parameter {:?}", l2.shape(), l1.shape());
        }
        let name = self.name();
        let out = match s1.dtype() {
            DType::F32 => {
                f32::to_cpu_storage_owned(param::<f32>(contiguous(s1, l1, name)?, contiguous(s2, l2, name)?, self.0))
            }
            DType::F64 => {
                f64::to_cpu_storage_owned(param::<f64>(contiguous(s1, l1, name)?, contiguous(s2, l2, name)?, self.0))
            }
            other => bail!("adamw: no fused kernel for {other:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

//! SwiGLU, `silu(gate) · up`, fused forward and backward.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{contiguous, ternary, Real, Ternary};

/// `silu(gate) · up`, element-wise (same shapes).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGluOp)
}

struct SwiGluOp;

fn swiglu_fwd<T: Real>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); g.len()];
    out.par_chunks_mut(4096).zip(g.par_chunks(4096).zip(u.par_chunks(4096))).for_each(|(o, (g, u))| {
        for ((o, &gv), &uv) in o.iter_mut().zip(g).zip(u) {
            *o = (gv / ((-gv).exp_k() + T::one())) * uv;
        }
    });
    out
}

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "hone-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("swiglu: gate {:?} and up {:?} differ", l1.shape(), l2.shape());
        }
        let name = self.name();
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(swiglu_fwd(contiguous(s1, l1, name)?, contiguous(s2, l2, name)?)),
            DType::F64 => f64::to_cpu_storage_owned(swiglu_fwd(contiguous(s1, l1, name)?, contiguous(s2, l2, name)?)),
            other => bail!("swiglu: no fused kernel for {other:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One kernel returns `[2, ..]`: the gate gradient, then the up gradient.
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBwd)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

struct SwiGluBwd;

fn swiglu_bwd<T: Real>(g: &[T], u: &[T], grad: &[T]) -> Vec<T> {
    let len = g.len();
    let mut out = vec![T::zero(); 2 * len];
    let (dg, du) = out.split_at_mut(len);
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)).zip(grad.par_chunks(4096)))
        .for_each(|((dg, du), ((g, u), gr))| {
            for ((dg, du), ((&gv, &uv), &grv)) in dg.iter_mut().zip(du.iter_mut()).zip(g.iter().zip(u).zip(gr)) {
                let sig = T::one() / ((-gv).exp_k() + T::one());
                let silu = gv * sig;
                *dg = grv * uv * (sig * (T::one() + gv * (T::one() - sig)));
                *du = grv * silu;
            }
        });
    out
}

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "hone-swiglu-bwd"
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
        let out = ternary(self, [(s1, l1), (s2, l2), (s3, l3)])?;
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((out, Shape::from(dims)))
    }
}

impl Ternary for SwiGluBwd {
    const LABEL: &'static str = "swiglu bwd";

    fn kernel<T: Real>(&self, [g, u, grad]: [&[T]; 3], _: [&Layout; 3]) -> Result<Vec<T>> {
        Ok(swiglu_bwd(g, u, grad))
    }
}

//! SwiGLU, `silu(gate) · up`, fused forward and backward.

use candle_core::{bail, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Fused, Inputs, Kernel, Real};

/// `silu(gate) · up`, element-wise (same shapes).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Fused(SwiGluOp))
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

impl Kernel<2> for SwiGluOp {
    const NAME: &'static str = "hone-swiglu";

    fn shape(&self, [lg, lu]: [&Layout; 2]) -> Result<Shape> {
        if lg.shape() != lu.shape() {
            bail!("swiglu: gate {:?} and up {:?} differ", lg.shape(), lu.shape());
        }
        Ok(lg.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 2>) -> Result<Vec<T>> {
        let [g, u] = inputs.floats()?;
        Ok(swiglu_fwd(g, u))
    }

    fn grads(&self, [gate, up]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 2]> {
        // One kernel returns `[2, ..]`: the gate gradient, then the up gradient.
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &Fused(SwiGluBwd))?;
        Ok([Some(both.get(0)?), Some(both.get(1)?)])
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

impl Kernel<3> for SwiGluBwd {
    const NAME: &'static str = "hone-swiglu-bwd";

    fn shape(&self, [l, ..]: [&Layout; 3]) -> Result<Shape> {
        Ok(super::stacked(2, l))
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 3>) -> Result<Vec<T>> {
        let [g, u, grad] = inputs.floats()?;
        Ok(swiglu_bwd(g, u, grad))
    }
}

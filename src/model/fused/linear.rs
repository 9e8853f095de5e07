//! The product `x Wᵀ` of a trained linear layer as one node of the graph.
//!
//! candle's `x.matmul(&w.t())` is two nodes: the transpose and the matmul. Its backward pass
//! computes `xᵀ·g` `[in, out]`, adds it into a zero-filled buffer for the transposed view, then
//! adds that, through strides, into another zero-filled buffer for the weight: two extra passes
//! over every weight per step, one of them strided (the slow path of candle's binary ops). Here
//! the forward pass is the same gemm call on the same layouts, and the backward pass computes
//! `g·W` and `gᵀ·x` `[out, in]` directly.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `x Wᵀ` for rows `x` `[n, in]` and a weight `[out, in]` (CPU; any float dtype candle's matmul
/// takes, both the same), differentiable in both.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.apply_op2(weight, LinearOp)
}

struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "hone-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = lx.shape().dims2()?;
        let (out, k2) = lw.shape().dims2()?;
        if k != k2 {
            bail!("linear: input {:?} against weight {:?}", lx.shape(), lw.shape());
        }
        let product = x.matmul(w, (1, n, out, k), lx, &lw.transpose(0, 1)?)?;
        Ok((product, Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach();
        let dx = if x.track_op() { Some(grad.matmul(&weight.detach())?) } else { None };
        let dw = if weight.track_op() { Some(grad.t()?.matmul(&x.detach())?) } else { None };
        Ok((dx, dw))
    }
}

//! The product `x Wᵀ` with a frozen weight (the base under a LoRA adapter): in the graph it is
//! an op of `x` alone, so the backward pass computes `x`'s gradient (`g W`) and nothing else.
//!
//! candle's own matmul backward computes both operands' gradients whatever they track, so a
//! detached base weight would still get a full-size gradient, computed (a third of the backward
//! matmuls' work) and kept in the gradient store until the step ends: the memory LoRA is meant to
//! save. Owns no tensors beyond the weight it multiplies by.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::checkpoint::Handover;
use super::ops::matmul_in;

/// `x Wᵀ` for rows `x` `[n, in]` and a frozen `[out, in]` weight, the product in `compute`
/// (`None`: the operands' own dtype) and the result in `x`'s dtype; only `x` gets a gradient.
pub fn frozen_product(x: &Tensor, weight: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    let output = matmul_in(&x.detach(), &weight.t()?, compute)?;
    if !x.track_op() {
        return Ok(output);
    }
    let output = Handover::new(output.contiguous()?)?;
    x.apply_op1(FrozenProduct { weight: weight.clone(), compute, output })
}

/// The custom op of [`frozen_product`].
struct FrozenProduct {
    weight: Tensor,
    compute: Option<DType>,
    output: Handover,
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(&self, _input: &CpuStorage, _layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn cuda_fwd(&self, _input: &CudaStorage, _layout: &Layout) -> Result<(CudaStorage, Shape)> {
        self.output.cuda()
    }

    /// `g W` in the dtype the forward product ran in, as candle's matmul backward computes the
    /// left operand's gradient, so the gradients equal the plain graph's.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        matmul_in(&grad_res.detach(), &self.weight, self.compute).map(Some)
    }
}

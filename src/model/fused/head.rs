//! The LM head and the target log-probabilities as one node of the graph:
//! `log softmax(rows · Wᵀ)[y]` per row, for the rows that predict a target.
//!
//! As two nodes (the head's matmul, then [`super::target_logps`]) the backward pass gives the
//! `[targets, vocab]` logits a zero-filled gradient buffer and adds the kernel's gradient into it,
//! two more passes over the largest tensor of the step (151 MB at the 135M shape), and the
//! transposed weight a strided add. Here the logits' gradient from the same kernel goes straight
//! into the two products `dRows = dLogits · W` and `dW = dLogitsᵀ · rows`.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{target_logps, target_logps_grad};
use crate::model::checkpoint::Handover;

/// `log softmax(rows · weightᵀ)[targets]` `[n]` for `rows` `[n, hidden]`, `weight` `[vocab,
/// hidden]` and `targets` `[n]` (u32), differentiable in `rows` and (when it tracks gradients)
/// `weight`. CPU f32/f64 only ([`super::fused_path`]).
pub fn head_target_logps(rows: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = rows.detach().matmul(&weight.detach().t()?)?;
    let targets = targets.flatten_all()?.contiguous()?;
    let logps = target_logps(&logits, &targets)?;
    if !(rows.track_op() || weight.track_op()) {
        return Ok(logps);
    }
    let op = HeadOp { targets, logits: Mutex::new(Some(logits)), output: Handover::new(logps)? };
    rows.apply_op2(weight, op)
}

struct HeadOp {
    targets: Tensor,
    /// The forward pass's logits `[n, vocab]`, taken (and freed) by the backward pass.
    logits: Mutex<Option<Tensor>>,
    output: Handover,
}

impl CustomOp2 for HeadOp {
    fn name(&self) -> &'static str {
        "hone-head-target-logp"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn bwd(
        &self,
        rows: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let taken =
            self.logits.lock().map_err(|_| candle_core::Error::Msg("head logps: a poisoned lock".into()))?.take();
        let Some(logits) = taken else { bail!("head logps: backward ran twice") };
        let d_logits = target_logps_grad(&logits, &self.targets, grad)?;
        drop(logits);
        let d_rows = d_logits.matmul(&weight.detach())?;
        let d_weight = if weight.track_op() { Some(d_logits.t()?.matmul(&rows.detach())?) } else { None };
        Ok((Some(d_rows), d_weight))
    }
}

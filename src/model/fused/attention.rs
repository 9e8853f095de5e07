//! Causal self-attention of whole sequences (training and prompt scoring: no cache, no padding)
//! that skips the masked half of the score matrix, forward and backward.
//!
//! Query rows are taken in blocks of `block` positions; block `j` (positions `r0..r1`) needs only
//! the keys `0..r1`, so its scores, softmax and `P·V` are `r1` wide instead of `s`. The matmuls
//! run on candle's gemm as before; only their sizes shrink: with blocks of 64, a sequence of 128
//! computes 3/4 of the full matrices, 256 computes 5/8 and 1024 about 1/2. The probabilities of
//! each block are kept for the backward pass (half the memory of the full matrix), which is
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = scale · P ∘ (dP − Σ dP∘P)` (the fused softmax backward),
//! `dQ = dS·K`, `dK = dSᵀ·Q`, each per block. `dK` and `dV` sum the blocks' partial products in
//! block order, so the result is fixed for any thread count (it differs from one full-width
//! matmul only in that summation order).

use std::sync::Mutex;

use candle_core::{bail, DType, Device, Layout, Result, Shape, Tensor};

use super::softmax::{SoftmaxBwd, SoftmaxOp};
use super::{CausalMask, Fused, Inputs, Kernel, Real};

/// Query positions per block of [`causal_attention`] in the decoder.
pub const ATTENTION_BLOCK: usize = 64;

/// `softmax(scale · Q·Kᵀ + causal mask)·V` for `q` `[batch, kv_heads, groups·s, head_dim]` (the
/// query heads sharing a KV head stacked along the rows, group-major) and `k`, `v` `[batch,
/// kv_heads, s, head_dim]`, queries and keys at positions `0..s`, with an optional sliding
/// `window` (`usize::MAX` for none). Returns `[batch, kv_heads, groups·s, head_dim]`. Query
/// positions go in blocks of `block`; see the module documentation.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, window: usize, block: usize) -> Result<Tensor> {
    let (b, kv, rows, d) = q.dims4()?;
    let (kb, kkv, s, kd) = k.dims4()?;
    if (kb, kkv, kd) != (b, kv, d) || v.dims() != k.dims() || s == 0 || rows % s != 0 || block == 0 {
        bail!("causal_attention: q {:?}, k {:?}, v {:?} do not fit together", q.dims(), k.dims(), v.dims());
    }
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Fused(AttentionOp::new(scale, window, block)))
}

/// The op of [`causal_attention`], for kernels that run it inside their own op
/// (`attention_rows`): its forward on contiguous inputs, its `bwd` called directly.
pub(super) struct AttentionOp {
    scale: f64,
    window: usize,
    block: usize,
    /// Each block's probabilities from the forward pass, taken by the backward pass (which
    /// recomputes them if they are missing).
    probs: Mutex<Vec<Tensor>>,
}

/// The shape of one attention call: batch·kv_heads, groups, positions, head width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    kv: usize,
    g: usize,
    s: usize,
    d: usize,
}

impl AttentionOp {
    pub(super) fn new(scale: f64, window: usize, block: usize) -> Self {
        Self { scale, window, block, probs: Mutex::new(Vec::new()) }
    }

    /// The query blocks `(r0, r1)`.
    fn blocks(&self, s: usize) -> Vec<(usize, usize)> {
        (0..s.div_ceil(self.block)).map(|j| (j * self.block, ((j + 1) * self.block).min(s))).collect()
    }

    /// The rows `r0..r1` of every group of `x` `[b, kv, g, s, d]` as `[b, kv, g·(r1−r0), d]`.
    fn rows_of(x: &Tensor, dims: Dims, (r0, r1): (usize, usize)) -> Result<Tensor> {
        let Dims { b, kv, g, s, d } = dims;
        if r0 == 0 && r1 == s {
            return x.reshape((b, kv, g * s, d));
        }
        x.narrow(3, r0, r1 - r0)?.contiguous()?.reshape((b, kv, g * (r1 - r0), d))
    }

    /// The probabilities of block `(r0, r1)`: `[b, kv, g·n, r1]`.
    fn block_probs(&self, q_block: &Tensor, k: &Tensor, (r0, r1): (usize, usize)) -> Result<Tensor> {
        let scores = q_block.matmul(&k.narrow(2, 0, r1)?.t()?)?;
        let mask = CausalMask { s: r1 - r0, offset: r0, window: self.window };
        scores.apply_op1_no_bwd(&Fused(SoftmaxOp { scale: self.scale, mask: Some(mask) }))
    }

    fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T], dims: Dims) -> Result<Vec<T>> {
        let Dims { b, kv, g, s, d } = dims;
        let cpu = Device::Cpu;
        let q = Tensor::from_slice(q, (b, kv, g, s, d), &cpu)?;
        let k = Tensor::from_slice(k, (b, kv, s, d), &cpu)?;
        let v = Tensor::from_slice(v, (b, kv, s, d), &cpu)?;
        let mut outs = Vec::new();
        let mut probs = Vec::new();
        for blk in self.blocks(s) {
            let p = self.block_probs(&Self::rows_of(&q, dims, blk)?, &k, blk)?;
            outs.push(p.matmul(&v.narrow(2, 0, blk.1)?)?.reshape((b, kv, g, blk.1 - blk.0, d))?);
            probs.push(p);
        }
        *self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: a poisoned lock".into()))? = probs;
        Tensor::cat(&outs, 3)?.flatten_all()?.to_vec1::<T>()
    }

    fn backward<T: Real>(&self, q: &Tensor, k: &Tensor, v: &Tensor, grad: &Tensor) -> Result<[Tensor; 3]> {
        let (b, kv, rows, d) = q.dims4()?;
        let s = k.dim(2)?;
        let dims = Dims { b, kv, g: rows / s, s, d };
        let q = q.detach().reshape((b, kv, dims.g, s, d))?;
        let (k, v) = (k.detach(), v.detach());
        let grad = grad.detach().contiguous()?.reshape((b, kv, dims.g, s, d))?;
        let mut saved = std::mem::take(
            &mut *self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: a poisoned lock".into()))?,
        );
        let blocks = self.blocks(s);
        if saved.len() != blocks.len() {
            saved.clear();
        }
        let mut dq = Vec::with_capacity(blocks.len());
        let mut dk = vec![T::zero(); b * kv * s * d];
        let mut dv = vec![T::zero(); b * kv * s * d];
        for (j, &blk) in blocks.iter().enumerate() {
            let (r0, r1) = blk;
            let qb = Self::rows_of(&q, dims, blk)?;
            let gb = Self::rows_of(&grad, dims, blk)?;
            let p = match saved.get(j) {
                Some(p) => p.clone(),
                None => self.block_probs(&qb, &k, blk)?,
            };
            let (kb, vb) = (k.narrow(2, 0, r1)?, v.narrow(2, 0, r1)?);
            add_rows(&mut dv, &p.t()?.matmul(&gb)?, s, r1, d)?;
            let dp = gb.matmul(&vb.t()?)?;
            let ds = p.apply_op2_no_bwd(&dp, &Fused(SoftmaxBwd { scale: self.scale }))?;
            dq.push(ds.matmul(&kb)?.reshape((b, kv, dims.g, r1 - r0, d))?);
            add_rows(&mut dk, &ds.t()?.matmul(&qb)?, s, r1, d)?;
        }
        let dq = Tensor::cat(&dq, 3)?.reshape((b, kv, rows, d))?;
        let dk = Tensor::from_vec(dk, (b, kv, s, d), &Device::Cpu)?;
        let dv = Tensor::from_vec(dv, (b, kv, s, d), &Device::Cpu)?;
        Ok([dq, dk, dv])
    }
}

/// Adds `part` `[b, kv, r1, d]` to the first `r1` positions of each `[s, d]` head of `acc`.
fn add_rows<T: Real>(acc: &mut [T], part: &Tensor, s: usize, r1: usize, d: usize) -> Result<()> {
    let part = part.flatten_all()?.to_vec1::<T>()?;
    for (head, p) in acc.chunks_exact_mut(s * d).zip(part.chunks_exact(r1 * d)) {
        for (a, &x) in head[..r1 * d].iter_mut().zip(p) {
            *a += x;
        }
    }
    Ok(())
}

fn dims_of(lq: &Layout, lk: &Layout) -> Result<Dims> {
    let (b, kv, rows, d) = lq.shape().dims4()?;
    let s = lk.shape().dims4()?.2;
    Ok(Dims { b, kv, g: rows / s.max(1), s, d })
}

impl Kernel<3> for AttentionOp {
    const NAME: &'static str = "hone-causal-attention";

    fn shape(&self, [lq, ..]: [&Layout; 3]) -> Result<Shape> {
        Ok(lq.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 3>) -> Result<Vec<T>> {
        let [q, k, v] = inputs.floats()?;
        self.forward::<T>(q, k, v, dims_of(inputs.layout(0), inputs.layout(1))?)
    }

    fn grads(&self, [q, k, v]: [&Tensor; 3], _res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 3]> {
        let [dq, dk, dv] = match q.dtype() {
            DType::F32 => self.backward::<f32>(q, k, v, grad)?,
            DType::F64 => self.backward::<f64>(q, k, v, grad)?,
            other => bail!("causal_attention bwd: no fused kernel for {other:?}"),
        };
        Ok([Some(dq), Some(dk), Some(dv)])
    }
}

//! Fused CPU kernels, each a candle custom op with an explicit backward pass.
//!
//! The composed versions in [`super::ops`] make one pass over memory (and one allocation) per
//! primitive op, forward and backward. These kernels do each block in one or two passes per row.
//! They run for f32 and f64 tensors on the CPU only ([`fused_path`]); every other device and
//! dtype keeps the composed path, which is also the reference the tests compare against.
//!
//! Determinism: every kernel reduces each row in a fixed order and rows are independent, so the
//! results do not depend on the number of threads or on timing. Column reductions (the RMSNorm
//! weight gradient) sum fixed-size row chunks and then the chunk partials in order.

use std::sync::Arc;

use candle_core::{bail, DType, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

mod adamw;
mod attention;
mod attention_rows;
mod head;
mod kernel;
mod linear;
mod softmax;
mod swiglu;
pub use adamw::{adamw_update, AdamWStep};
pub use attention::{causal_attention, ATTENTION_BLOCK};
pub use attention_rows::{attention_rows, HeadShape};
pub use head::head_target_logps;
use kernel::{Fused, Inputs, Kernel};
pub use linear::linear;
pub use softmax::{softmax, softmax_left_padded, CausalMask};
pub use swiglu::swiglu;

/// Whether `t` can take the fused path: a CPU tensor in f32 or f64.
pub fn fused_path(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The element types the kernels are written for.
trait Real: WithDType + Float + num_traits::NumAssign + Send + Sync {
    /// `e^self` as the kernels compute it (see [`exp_f32`]).
    fn exp_k(self) -> Self;
}

impl Real for f32 {
    fn exp_k(self) -> Self {
        exp_f32(self)
    }
}

impl Real for f64 {
    fn exp_k(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 without a library call, so loops over rows vectorise: `x = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2` (`n` rounded by the 1.5·2²³ trick, `ln 2` split in two so `r` is exact), the
/// Cephes minimax polynomial for `e^r`, and `2^n` built in the exponent bits. Within about 1 ulp
/// of `f32::exp` (`tests/gradients.rs` measures it). Inputs are clamped to `[-87, 88]`, so the
/// result stays a normal number: below that, `e^x` is under f32's smallest normal (1e-38) and
/// every kernel adds it to sums of at least 1; above it, it overflows. NaN stays NaN.
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_66) * r + 0.5;
    // t's low mantissa bits hold n (two's complement, t in [2²³, 2²⁴)): 2^n's exponent field
    // is n + 127, in 1..=254 for the clamped range.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    (p * r * r + r + 1.0) * scale
}

/// Σ x accumulated in f64 with eight independent accumulators (fixed order, vectorisable).
fn sum_wide<T: Real>(x: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += wide(c[k]);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| wide(v)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Writes `e^(x − shift)` of every element of `x` to `out` and returns their sum (in f64).
fn exp_into<T: Real>(x: &[T], shift: T, out: &mut [T]) -> f64 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - shift).exp_k();
    }
    sum_wide(&out[..x.len().min(out.len())])
}

/// Rows per parallel task: fixed, so results never depend on the thread count.
const ROW_CHUNK: usize = 32;

fn last_dim(l: &Layout, op: &str) -> Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => bail!("{op}: needs a non-empty last dimension"),
    }
}

/// `v` as f64 (exact for f32 and f64): reductions accumulate in f64 (see [`dot`]).
fn wide<T: Real>(v: T) -> f64 {
    <T as WithDType>::to_f64(v)
}

/// Σ a·b accumulated in f64 with eight independent accumulators (vectorisable; the order is
/// fixed). The products are exact in f64 for f32 inputs, so an f32 row of any length loses no
/// more than one rounding at the end; f32 accumulators lost ~√n·ε over the 576..1536-wide rows of
/// real models, and that error compounds over 30 layers.
fn dot<T: Real>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += wide(x[k]) * wide(y[k]);
        }
    }
    let mut tail = 0f64;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += wide(x) * wide(y);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Applies `f(row_index, input_rows..., output_row)` to every row, in parallel over fixed chunks.
fn map_rows<T: Real>(n: usize, rows: usize, f: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); rows * n];
    out.par_chunks_mut(ROW_CHUNK * n).enumerate().for_each(|(c, chunk)| {
        for (i, row) in chunk.chunks_exact_mut(n).enumerate() {
            f(c * ROW_CHUNK + i, row);
        }
    });
    out
}

/// The shape of `k` outputs of `l`'s shape stacked along a new first dimension.
fn stacked(k: usize, l: &Layout) -> Shape {
    let mut dims = vec![k];
    dims.extend_from_slice(l.dims());
    Shape::from(dims)
}

fn cast<T: Real>(v: f32) -> T {
    T::from_f64(f64::from(v))
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x · rsqrt(mean x² + eps) · w` over the last dimension of `xs`, with `w` of that size.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op2(&weight.contiguous()?, Fused(RmsNormOp { eps }))
}

struct RmsNormOp {
    eps: f64,
}

/// `1 / sqrt(mean x² + eps)`, computed in f64 and rounded once.
fn inv_rms<T: Real>(x: &[T], eps: f64) -> T {
    T::from_f64(1.0 / (dot(x, x) / x.len() as f64 + eps).sqrt())
}

fn rms_fwd<T: Real>(x: &[T], w: &[T], n: usize, eps: f64) -> Result<Vec<T>> {
    if w.len() != n {
        bail!("rms_norm: weight of {} for rows of {n}", w.len());
    }
    Ok(map_rows(n, x.len() / n, |r, y| {
        let x = &x[r * n..(r + 1) * n];
        let s = inv_rms(x, eps);
        for ((y, &xv), &wv) in y.iter_mut().zip(x).zip(w) {
            *y = (xv * s) * wv;
        }
    }))
}

impl Kernel<2> for RmsNormOp {
    const NAME: &'static str = "hone-rms-norm";

    fn shape(&self, [lx, _]: [&Layout; 2]) -> Result<Shape> {
        Ok(lx.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 2>) -> Result<Vec<T>> {
        let [x, w] = inputs.floats()?;
        rms_fwd(x, w, last_dim(inputs.layout(0), Self::NAME)?, self.eps)
    }

    fn grads(&self, [x, w]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 2]> {
        let n = w.elem_count();
        let rows = x.elem_count() / n;
        // One kernel returns `[rows + 1, n]`: the input gradient, then the weight gradient.
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &Fused(RmsNormBwd { eps: self.eps }))?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok([Some(dx), Some(dw)])
    }
}

struct RmsNormBwd {
    eps: f64,
}

fn rms_bwd<T: Real>(x: &[T], w: &[T], g: &[T], n: usize, eps: f64) -> Vec<T> {
    let rows = x.len() / n;
    // dx_k = s·g_k·w_k − x_k·s³·(Σ_j g_j·w_j·x_j)/n;  dw_k = Σ_rows g_k·x_k·s.
    let mut out = vec![T::zero(); (rows + 1) * n];
    let (dx, _) = out.split_at_mut(rows * n);
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(ROW_CHUNK * n)
        .enumerate()
        .map(|(c, chunk)| {
            let mut dw = vec![T::zero(); n];
            let mut gw = vec![T::zero(); n];
            for (i, dxr) in chunk.chunks_exact_mut(n).enumerate() {
                let r = c * ROW_CHUNK + i;
                let xr = &x[r * n..(r + 1) * n];
                let gr = &g[r * n..(r + 1) * n];
                let s = inv_rms(xr, eps);
                for ((o, &gv), &wv) in gw.iter_mut().zip(gr).zip(w) {
                    *o = gv * wv;
                }
                let k = T::from_f64(wide(s).powi(3) * dot(&gw, xr) / n as f64);
                for (((d, &gwv), &xv), (acc, &gv)) in dxr.iter_mut().zip(&gw).zip(xr).zip(dw.iter_mut().zip(gr)) {
                    *d = s * gwv - xv * k;
                    *acc += gv * (xv * s);
                }
            }
            dw
        })
        .collect();
    let dw = &mut out[rows * n..];
    for p in &partials {
        for (acc, &v) in dw.iter_mut().zip(p) {
            *acc += v;
        }
    }
    out
}

impl Kernel<3> for RmsNormBwd {
    const NAME: &'static str = "hone-rms-norm-bwd";

    fn shape(&self, [lx, ..]: [&Layout; 3]) -> Result<Shape> {
        let n = last_dim(lx, Self::NAME)?;
        Ok(Shape::from((lx.shape().elem_count() / n + 1, n)))
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 3>) -> Result<Vec<T>> {
        let [x, w, g] = inputs.floats()?;
        Ok(rms_bwd(x, w, g, last_dim(inputs.layout(0), Self::NAME)?, self.eps))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding (rotate-half layout)

/// Rotary tables `[positions, head_dim]` as f32 values (the f64 model uses the same values).
#[derive(Debug)]
pub struct RopeTables {
    /// cos of every (position, dimension).
    pub cos: Vec<f32>,
    /// sin of every (position, dimension).
    pub sin: Vec<f32>,
    /// Width of a head.
    pub head_dim: usize,
}

/// Rotates `xs` `[batch, heads, seq, head_dim]` (any strides) for positions `offset..`; the
/// result is contiguous.
pub fn rope(xs: &Tensor, tables: &Arc<RopeTables>, offset: usize) -> Result<Tensor> {
    xs.apply_op1(Fused(RopeOp { tables: tables.clone(), offset, inverse: false }))
}

/// The inverse rotation of [`rope`] (its backward) for `xs` `[batch, heads, seq, head_dim]` (any
/// strides), outside the graph; the result is contiguous.
pub(super) fn rope_inverse(xs: &Tensor, tables: &Arc<RopeTables>, offset: usize) -> Result<Tensor> {
    xs.apply_op1_no_bwd(&Fused(RopeOp { tables: tables.clone(), offset, inverse: true }))
}

struct RopeOp {
    tables: Arc<RopeTables>,
    offset: usize,
    /// The transpose (inverse) rotation: sin negated. It is the backward of the forward one.
    inverse: bool,
}

fn rope_fwd<T: Real>(x: &[T], l: &Layout, t: &RopeTables, offset: usize, inverse: bool) -> Result<Vec<T>> {
    let (b, h, s, d) = l.shape().dims4()?;
    if d != t.head_dim || d % 2 != 0 {
        bail!("rope: head_dim {d} against tables of {}", t.head_dim);
    }
    if (offset + s) * d > t.cos.len() {
        bail!("rope: position {} is past the rotary table", offset + s);
    }
    let st = l.stride();
    let start = l.start_offset();
    let half = d / 2;
    let mut out = vec![T::zero(); b * h * s * d];
    out.par_chunks_mut(s * d).enumerate().for_each(|(bh, block)| {
        let (bi, hi) = (bh / h, bh % h);
        let mut row = vec![T::zero(); d];
        for (si, o) in block.chunks_exact_mut(d).enumerate() {
            let base = start + bi * st[0] + hi * st[1] + si * st[2];
            for (k, v) in row.iter_mut().enumerate() {
                *v = x[base + k * st[3]];
            }
            let p = (offset + si) * d;
            let cos = &t.cos[p..p + d];
            let sin = &t.sin[p..p + d];
            for i in 0..half {
                let (a, bb) = (row[i], row[i + half]);
                if inverse {
                    o[i] = a * cast(cos[i]) + bb * cast(sin[i + half]);
                    o[i + half] = bb * cast(cos[i + half]) - a * cast(sin[i]);
                } else {
                    o[i] = a * cast(cos[i]) - bb * cast(sin[i]);
                    o[i + half] = bb * cast(cos[i + half]) + a * cast(sin[i + half]);
                }
            }
        }
    });
    Ok(out)
}

impl Kernel<1> for RopeOp {
    const NAME: &'static str = "hone-rope";

    fn shape(&self, [l]: [&Layout; 1]) -> Result<Shape> {
        Ok(l.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 1>) -> Result<Vec<T>> {
        rope_fwd(inputs.strided(0)?, inputs.layout(0), &self.tables, self.offset, self.inverse)
    }

    fn grads(&self, _args: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 1]> {
        let op = RopeOp { tables: self.tables.clone(), offset: self.offset, inverse: !self.inverse };
        Ok([Some(grad.apply_op1(Fused(op))?)])
    }
}

// ---------------------------------------------------------------------------------------------
// Target log-probabilities: logit[y] − logsumexp(logits)

/// `log softmax(logits)[y]` per row: `logits` `[n, vocab]`, `targets` `[n, 1]` or `[n]` (u32);
/// returns `[n]`.
pub fn target_logps(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.flatten_all()?.contiguous()?;
    logits.contiguous()?.apply_op2(&targets, Fused(TargetLogpOp))
}

/// The gradient of [`target_logps`] with respect to `logits`, for the incoming gradient `grad`
/// `[n]`, outside the graph (`targets` flat and contiguous).
pub(super) fn target_logps_grad(logits: &Tensor, targets: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let grad = grad.to_dtype(logits.dtype())?.contiguous()?;
    logits.apply_op3_no_bwd(targets, &grad, &Fused(TargetLogpBwd))
}

struct TargetLogpOp;

/// The targets (input 1) of `logits` `[rows, vocab]` (input 0), checked, and `vocab`.
fn targets_of<'a, const N: usize>(inputs: &Inputs<'a, N>) -> Result<(&'a [u32], usize)> {
    let (rows, vocab) = inputs.layout(0).shape().dims2()?;
    let t: &[u32] = inputs.float(1)?;
    if t.len() != rows {
        bail!("target_logps: {} targets for {rows} rows", t.len());
    }
    if let Some(&bad) = t.iter().find(|&&y| y as usize >= vocab) {
        bail!("target_logps: target {bad} out of a vocabulary of {vocab}");
    }
    Ok((t, vocab))
}

/// The maximum of a row.
fn row_max<T: Real>(x: &[T]) -> T {
    x.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v))
}

/// Σ exp(x − max) over a row, each term written to `out` when given, the sum accumulated in f64.
///
/// A confident prediction puts ~1 at the maximum and spreads the rest over tens of thousands of
/// terms below f32's half-ulp of 1: an f32 running sum drops every one of them after the maximum
/// (transformers' 8/16-lane sums drop fewer), so the logsumexp comes out low and log-probs high
/// (at the 135M shape: 14x PyTorch's f32 error; `tests/model_precision.rs`).
fn exp_sum<T: Real>(x: &[T], max: T, out: Option<&mut [T]>) -> f64 {
    if let Some(out) = out {
        exp_into(x, max, out)
    } else {
        let mut buf = [T::zero(); 512];
        x.chunks(buf.len()).map(|c| exp_into(c, max, &mut buf)).sum()
    }
}

fn target_fwd<T: Real>(x: &[T], t: &[u32], vocab: usize) -> Vec<T> {
    let mut out = vec![T::zero(); t.len()];
    out.par_chunks_mut(ROW_CHUNK).enumerate().for_each(|(c, chunk)| {
        for (i, o) in chunk.iter_mut().enumerate() {
            let r = c * ROW_CHUNK + i;
            let row = &x[r * vocab..(r + 1) * vocab];
            let max = row_max(row);
            let sum = exp_sum(row, max, None);
            // (x_y − max) is exact in f64; the log-prob is rounded once, not after adding max back.
            *o = T::from_f64((wide(row[t[r] as usize]) - wide(max)) - sum.ln());
        }
    });
    out
}

impl Kernel<2> for TargetLogpOp {
    const NAME: &'static str = "hone-target-logp";

    fn shape(&self, [l, _]: [&Layout; 2]) -> Result<Shape> {
        Ok(Shape::from(l.shape().dims2()?.0))
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 2>) -> Result<Vec<T>> {
        let (t, vocab) = targets_of(inputs)?;
        Ok(target_fwd(inputs.float(0)?, t, vocab))
    }

    fn grads(&self, [logits, targets]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 2]> {
        Ok([Some(target_logps_grad(logits, targets, grad)?), None])
    }
}

struct TargetLogpBwd;

fn target_bwd<T: Real>(x: &[T], t: &[u32], g: &[T], vocab: usize) -> Vec<T> {
    // d/dx_j (x_y − lse) = [j = y] − softmax(x)_j, times the incoming gradient of the row.
    map_rows(vocab, t.len(), |r, o| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let sum = exp_sum(row, row_max(row), Some(o));
        let k = T::from_f64(-wide(g[r]) / sum);
        for o in o.iter_mut() {
            *o *= k;
        }
        let y = t[r] as usize;
        o[y] += g[r];
    })
}

impl Kernel<3> for TargetLogpBwd {
    const NAME: &'static str = "hone-target-logp-bwd";

    fn shape(&self, [l, ..]: [&Layout; 3]) -> Result<Shape> {
        Ok(l.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 3>) -> Result<Vec<T>> {
        let (t, vocab) = targets_of(inputs)?;
        Ok(target_bwd(inputs.float(0)?, t, inputs.float(2)?, vocab))
    }
}

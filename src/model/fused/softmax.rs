//! Softmax over attention scores, optionally scaled and causally masked, with its backward pass;
//! and the forward-only left-padded variant batched generation uses.

use candle_core::{bail, Layout, Result, Shape, Tensor};

use num_traits::Float;

use super::{dot, last_dim, map_rows, sum_wide, wide, Fused, Inputs, Kernel, Real};

/// The causal (and optionally sliding-window) mask of attention scores `[.., s, kv_len]` for
/// queries at positions `offset..offset+s`.
#[derive(Debug, Clone, Copy)]
pub struct CausalMask {
    /// Query rows per block.
    pub s: usize,
    /// Position of the first query.
    pub offset: usize,
    /// Sliding window, `usize::MAX` for none.
    pub window: usize,
}

/// `softmax(scale · x)` over the last dimension, with masked positions excluded (probability 0).
pub fn softmax(xs: &Tensor, scale: f64, mask: Option<CausalMask>) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Fused(SoftmaxOp { scale, mask }))
}

pub(super) struct SoftmaxOp {
    pub scale: f64,
    pub mask: Option<CausalMask>,
}

/// The allowed key range `lo..hi` of row `r`.
fn allowed(mask: Option<CausalMask>, r: usize, n: usize) -> (usize, usize) {
    match mask {
        None => (0, n),
        Some(m) => {
            let q = m.offset + r % m.s;
            let lo = (q + 1).saturating_sub(m.window);
            (lo.min(n), (q + 1).min(n))
        }
    }
}

fn softmax_fwd<T: Real>(x: &[T], n: usize, scale: f64, mask: Option<CausalMask>) -> Vec<T> {
    softmax_rows(x, n, scale, |r| allowed(mask, r, n))
}

/// Softmax of each row of `x` over its allowed key range (`range(row)`); keys outside it get
/// probability 0, and a row with an empty range is all zeros.
fn softmax_rows<T: Real>(x: &[T], n: usize, scale: f64, range: impl Fn(usize) -> (usize, usize) + Sync) -> Vec<T> {
    let scale = T::from_f64(scale);
    map_rows(n, x.len() / n, |r, y| {
        let (lo, hi) = range(r);
        if lo >= hi {
            return;
        }
        let xr = &x[r * n + lo..r * n + hi];
        let max = xr.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v * scale));
        // Accumulated in f64: a peaked row (attention on one key) would otherwise drop the
        // small terms after its peak, as the LM head's logsumexp did (see `exp_sum`).
        for (o, &v) in y[lo..hi].iter_mut().zip(xr) {
            *o = v * scale;
        }
        let sum = exp_into_self(&mut y[lo..hi], max);
        let inv = 1.0 / sum;
        for o in &mut y[lo..hi] {
            *o = T::from_f64(wide(*o) * inv);
        }
    })
}

/// Replaces every element `v` of `y` by `e^(v − shift)` and returns their sum (in f64).
fn exp_into_self<T: Real>(y: &mut [T], shift: T) -> f64 {
    for o in y.iter_mut() {
        *o = (*o - shift).exp_k();
    }
    sum_wide(y)
}

impl Kernel<1> for SoftmaxOp {
    const NAME: &'static str = "hone-softmax";

    fn shape(&self, [l]: [&Layout; 1]) -> Result<Shape> {
        Ok(l.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 1>) -> Result<Vec<T>> {
        let n = last_dim(inputs.layout(0), Self::NAME)?;
        Ok(softmax_fwd(inputs.float(0)?, n, self.scale, self.mask))
    }

    fn grads(&self, _args: [&Tensor; 1], res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 1]> {
        Ok([Some(res.apply_op2_no_bwd(&grad.contiguous()?, &Fused(SoftmaxBwd { scale: self.scale }))?)])
    }
}

pub(super) struct SoftmaxBwd {
    pub scale: f64,
}

fn softmax_bwd<T: Real>(y: &[T], g: &[T], n: usize, scale: f64) -> Vec<T> {
    let scale = T::from_f64(scale);
    // dx = scale · y · (g − Σ g·y); masked positions have y = 0 and get 0.
    map_rows(n, y.len() / n, |r, dx| {
        let yr = &y[r * n..(r + 1) * n];
        let gr = &g[r * n..(r + 1) * n];
        let d = T::from_f64(dot(gr, yr));
        for ((o, &yv), &gv) in dx.iter_mut().zip(yr).zip(gr) {
            *o = scale * (yv * (gv - d));
        }
    })
}

impl Kernel<2> for SoftmaxBwd {
    const NAME: &'static str = "hone-softmax-bwd";

    fn shape(&self, [l, _]: [&Layout; 2]) -> Result<Shape> {
        Ok(l.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 2>) -> Result<Vec<T>> {
        let [y, g] = inputs.floats()?;
        Ok(softmax_bwd(y, g, last_dim(inputs.layout(0), Self::NAME)?, self.scale))
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax of a left-padded batch (generation only, no backward)

/// `softmax(scale · x)` over the last dimension of attention scores `[batch, .., s, kv_len]`
/// whose batch row `b` starts with `key_start[b]` padding keys: those keys are masked on top of
/// `mask`, so a row's probabilities over its real keys are computed exactly as without padding
/// (same range, same summation order). Query rows that are themselves padding come out all 0.
/// Forward only: it serves batched generation.
pub fn softmax_left_padded(xs: &Tensor, scale: f64, mask: CausalMask, key_start: &[usize]) -> Result<Tensor> {
    let batch = xs.dim(0)?;
    if key_start.len() != batch {
        bail!("softmax_left_padded: {} padding counts for a batch of {batch}", key_start.len());
    }
    xs.contiguous()?.apply_op1(Fused(PaddedSoftmaxOp { scale, mask, key_start: key_start.to_vec() }))
}

struct PaddedSoftmaxOp {
    scale: f64,
    mask: CausalMask,
    key_start: Vec<usize>,
}

impl PaddedSoftmaxOp {
    fn run<T: Real>(&self, x: &[T], n: usize) -> Vec<T> {
        let rows_per_batch = (x.len() / n / self.key_start.len().max(1)).max(1);
        softmax_rows(x, n, self.scale, |r| {
            let (lo, hi) = allowed(Some(self.mask), r, n);
            let start = self.key_start.get(r / rows_per_batch).copied().unwrap_or(0);
            (lo.max(start), hi)
        })
    }
}

impl Kernel<1> for PaddedSoftmaxOp {
    const NAME: &'static str = "hone-softmax-left-padded";

    fn shape(&self, [l]: [&Layout; 1]) -> Result<Shape> {
        Ok(l.shape().clone())
    }

    fn kernel<T: Real>(&self, inputs: &Inputs<'_, 1>) -> Result<Vec<T>> {
        Ok(self.run(inputs.float(0)?, last_dim(inputs.layout(0), Self::NAME)?))
    }
}

//! Differentiable building blocks composed from candle's primitive ops.
//!
//! candle's fused `softmax_last_dim`, `rms_norm` and `rope` kernels have no backward pass, so a
//! model built on them trains silently wrong. Everything here is written with ops that carry
//! gradients, and `tests/gradients.rs` checks each block against finite differences.
//!
//! On the CPU in f32/f64 the blocks run as the fused kernels of [`super::fused`] (custom ops with
//! explicit backward passes); the `*_composed` functions are the reference path, used for every
//! other device and dtype and compared with the fused one in the tests.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor, D};

use super::config::RopeScaling;
use super::fused::{self, fused_path, RopeTables};

/// Softmax over the last dimension (fused on the CPU, else [`softmax_last_dim_composed`]).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fused_path(xs) {
        fused::softmax(xs, 1.0, None)
    } else {
        softmax_last_dim_composed(xs)
    }
}

/// Softmax over the last dimension from primitive ops. The row maximum is subtracted for
/// stability and detached: softmax is invariant to that shift, so its gradient contribution is
/// exactly zero.
pub fn softmax_last_dim_composed(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// Log-softmax over the last dimension, `x - max - log Σ exp(x - max)`.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The dtype reductions run in: f32 for f32/bf16/f16 activations, f64 stays f64.
pub fn accumulation_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Root-mean-square layer norm as Llama/Qwen2 define it: statistics in f32, the weight applied
/// after casting back to the input dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Wraps a `[hidden]` weight.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }
}

impl RmsNorm {
    /// The norm from primitive ops (the reference for the fused kernel).
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(accumulation_dtype(dtype))?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_rms)?.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if fused_path(xs) && xs.dtype() == self.weight.dtype() {
            fused::rms_norm(xs, &self.weight, self.eps)
        } else {
            self.forward_composed(xs)
        }
    }
}

/// A linear layer `x Wᵀ + b` over the last dimension, flattening leading dimensions so the
/// product is one matrix multiplication.
///
/// With a compute dtype other than the weight's (mixed precision: f32 master weights, bf16
/// matmuls, as `torch.autocast` runs a `Linear`), the input and the weight are cast for the
/// product and the result is cast back to the weight's dtype, so everything around the matmuls
/// (norms, softmax, residual sums, the loss) stays in the master dtype. candle's cast is
/// differentiable: the weight's gradient arrives in the master dtype.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    compute: Option<DType>,
    /// The weight is never trained (a LoRA base): its product gives only the input a gradient
    /// ([`super::frozen::frozen_product`]).
    frozen: bool,
}

impl Linear {
    /// `weight` is `[out, in]` as Hugging Face stores it.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, compute: None, frozen: false }
    }

    /// The same layer with its weight frozen: the backward pass computes no gradient for it.
    #[must_use]
    pub fn frozen(self) -> Self {
        Self { frozen: true, ..self }
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The weight, when the layer is the plain product `x Wᵀ` for `xs` (no bias, no compute dtype,
    /// the weight in `xs`'s dtype), so a fused kernel may multiply by it directly.
    pub fn plain_weight(&self, xs: &Tensor) -> Option<&Tensor> {
        (self.bias.is_none() && self.compute.is_none() && self.weight.dtype() == xs.dtype()).then_some(&self.weight)
    }

    /// Runs the product in `dtype` (`None` or the dtype of both operands: no casts).
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.compute = dtype;
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let (last, lead) = dims.split_last().ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows: usize = lead.iter().product();
        let out = self.weight.dim(0)?;
        // A weight held narrower than the activations (a bf16 frozen base under f32 master
        // activations) multiplies in its own dtype when no compute dtype is set.
        let compute = self.compute.or_else(|| (xs.dtype() != self.weight.dtype()).then(|| self.weight.dtype()));
        // Rows already (the decoder's activations) stay as they are: a reshape is a graph node,
        // and its backward zero-fills and adds a full-size copy of the gradient.
        let rows = if lead.len() == 1 { xs.clone() } else { xs.reshape((rows, *last))? };
        let flat = if self.frozen {
            super::frozen::frozen_product(&rows, &self.weight, compute)?
        } else if compute.is_none() && fused_path(&rows) && rows.dtype() == self.weight.dtype() {
            note_matmul(rows.dtype());
            fused::linear(&rows, &self.weight)?
        } else {
            matmul_in(&rows, &self.weight.t()?, compute)?
        };
        let flat = match &self.bias {
            Some(b) => flat.broadcast_add(b)?,
            None => flat,
        };
        if lead.len() == 1 {
            return Ok(flat);
        }
        let mut shape = lead.to_vec();
        shape.push(out);
        flat.reshape(shape)
    }
}

thread_local! {
    /// The dtypes of the model's matmuls on this thread while [`record_matmul_dtypes`] runs.
    static MATMUL_DTYPES: RefCell<Option<Vec<DType>>> = const { RefCell::new(None) };
}

/// `a @ b` for the model's forward pass: every matmul of the decoder goes through here, so
/// [`record_matmul_dtypes`] can tell which dtype they ran in.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    note_matmul(a.dtype());
    a.matmul(b)
}

/// Records a forward matmul in `dtype` for [`record_matmul_dtypes`] (for kernels that multiply
/// without [`matmul`]).
pub(crate) fn note_matmul(dtype: DType) {
    MATMUL_DTYPES.with(|log| {
        if let Some(log) = log.borrow_mut().as_mut() {
            log.push(dtype);
        }
    });
}

/// `a @ b` computed in `compute` (both operands cast) and cast back to `a`'s dtype; plain
/// [`matmul`] when `compute` is `None`.
pub fn matmul_in(a: &Tensor, b: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    match compute {
        Some(dtype) if dtype != a.dtype() || dtype != b.dtype() => {
            matmul(&a.to_dtype(dtype)?, &b.to_dtype(dtype)?)?.to_dtype(a.dtype())
        }
        _ => matmul(a, b),
    }
}

/// Runs `f` and returns, with its result, the dtype of every forward matmul of the model it ran
/// on this thread, in order (the check that mixed precision multiplies in bf16).
pub fn record_matmul_dtypes<R>(f: impl FnOnce() -> R) -> (R, Vec<DType>) {
    let previous = MATMUL_DTYPES.with(|log| log.borrow_mut().replace(Vec::new()));
    let out = f();
    let seen = MATMUL_DTYPES.with(|log| std::mem::replace(&mut *log.borrow_mut(), previous)).unwrap_or_default();
    (out, seen)
}

/// Precomputed rotary tables in the Hugging Face "rotate half" layout: dimension `i` pairs with
/// `i + head_dim/2`.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// The same tables as plain f32 values, for the fused CPU kernel.
    tables: Arc<RopeTables>,
}

/// The inverse frequencies `1 / θ^(2i/d)`, computed in f32 as transformers does, then scaled.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    #[allow(clippy::cast_precision_loss)]
    let base: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    match scaling {
        RopeScaling::Default => base,
        #[allow(clippy::cast_possible_truncation)]
        RopeScaling::Linear { factor } => base.iter().map(|f| f / *factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            #[allow(clippy::cast_possible_truncation)]
            base.iter()
                .map(|&f| {
                    let f = f64::from(f);
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    let out = if medium {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                    out as f32
                })
                .collect()
        }
    }
}

impl Rotary {
    /// Builds `cos`/`sin` tables of shape `[max_positions, head_dim]` in `dtype`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        scaling: &RopeScaling,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let inv = inverse_frequencies(head_dim, theta, scaling);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for p in 0..max_positions {
            #[allow(clippy::cast_precision_loss)]
            let pos = p as f32;
            for k in 0..head_dim {
                let angle = pos * inv[k % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let tables = Arc::new(RopeTables { cos: cos.clone(), sin: sin.clone(), head_dim });
        let cos = Tensor::from_vec(cos, (max_positions, head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, head_dim), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin, tables })
    }

    /// Rotates `xs` of shape `[batch, heads, seq, head_dim]` for positions `offset..offset+seq`
    /// (fused on the CPU, where the result is contiguous whatever the strides of `xs`).
    pub fn apply(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        self.check_positions(xs, offset)?;
        if fused_path(xs) && xs.dtype() == self.cos.dtype() {
            fused::rope(xs, &self.tables, offset)
        } else {
            self.apply_composed(xs, offset)
        }
    }

    /// The tables of the fused kernel, for `xs` when the fused rotation applies to it.
    pub fn fused_tables(&self, xs: &Tensor) -> Option<&Arc<RopeTables>> {
        (fused_path(xs) && xs.dtype() == self.cos.dtype()).then_some(&self.tables)
    }

    fn check_positions(&self, xs: &Tensor, offset: usize) -> Result<()> {
        let (_, _, seq, _) = xs.dims4()?;
        let max = self.cos.dim(0)?;
        if offset + seq > max {
            candle_core::bail!(
                "position {} is past the rotary table's {max} positions (max_position_embeddings)",
                offset + seq
            );
        }
        Ok(())
    }

    /// The rotation from primitive ops (the reference for the fused kernel).
    pub fn apply_composed(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        self.check_positions(xs, offset)?;
        let (_, _, seq, dim) = xs.dims4()?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        let half = dim / 2;
        let x1 = xs.narrow(D::Minus1, 0, half)?;
        let x2 = xs.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        xs.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
    }
}

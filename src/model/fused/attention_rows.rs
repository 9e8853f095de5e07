//! Causal self-attention of whole sequences from the projections' rows to the output projection's
//! rows, as one node of the graph: RoPE on the queries and keys, the head layout, the blocked
//! attention of [`super::causal_attention`] and the way back to rows.
//!
//! Composed from reshapes, transposes, RoPE and the attention op, the same computation is about
//! ten graph nodes per layer, and candle's backward pass gives every node's input a zero-filled
//! gradient buffer plus a full-size add (a strided one after a transpose): about 6.5 activations'
//! worth of extra memory passes per layer. Here the inputs `q`, `k`, `v` (`[b·s, heads·d]`, as the
//! projections write them) get one gradient each, and the backward pass runs the same kernels in
//! the same order (the attention op's backward, RoPE's inverse rotation), so the values equal the
//! composed graph's.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

use super::attention::AttentionOp;
use super::kernel::{Fused, Kernel};
use super::{rope, rope_inverse, RopeTables, ATTENTION_BLOCK};

/// The shape of one attention call over rows.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl HeadShape {
    /// `x` `[b·s, n·d]` viewed as `[b, n, s, d]` (a strided view, no copy).
    fn heads_of(self, x: &Tensor, n: usize) -> Result<Tensor> {
        x.reshape((self.batch, self.seq, n, self.head_dim))?.transpose(1, 2)
    }

    /// `x` `[b, n, s, d]` (any strides) as rows `[b·s, n·d]` (contiguous).
    fn rows_of(self, x: &Tensor, n: usize) -> Result<Tensor> {
        x.reshape((self.batch, n, self.seq, self.head_dim))?
            .transpose(1, 2)?
            .reshape((self.batch * self.seq, n * self.head_dim))
    }
}

/// `softmax(scale · Q·Kᵀ + causal mask)·V` for rows `q` `[b·s, heads·d]` and `k`, `v` `[b·s,
/// kv_heads·d]` of whole sequences (positions `0..s`), queries and keys rotated by `tables` first,
/// with an optional sliding `window` (`usize::MAX` for none). Returns `[b·s, heads·d]`.
pub fn attention_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: HeadShape,
    tables: &Arc<RopeTables>,
    (scale, window): (f64, usize),
) -> Result<Tensor> {
    let HeadShape { batch: b, seq: s, heads, kv_heads: kv, head_dim: d } = shape;
    if kv == 0
        || heads % kv != 0
        || q.dims() != [b * s, heads * d]
        || k.dims() != [b * s, kv * d]
        || v.dims() != k.dims()
    {
        bail!("attention_rows: q {:?}, k {:?}, v {:?} do not fit {shape:?}", q.dims(), k.dims(), v.dims());
    }
    let qr = rope(&shape.heads_of(&q.detach(), heads)?, tables, 0)?.reshape((b, kv, heads / kv * s, d))?;
    let kr = rope(&shape.heads_of(&k.detach(), kv)?, tables, 0)?;
    let vh = shape.heads_of(&v.detach(), kv)?.contiguous()?;
    let op = Fused(AttentionOp::new(scale, window, ATTENTION_BLOCK));
    let out = qr.apply_op3_no_bwd(&kr, &vh, &op)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return shape.rows_of(&out, heads);
    }
    let saved = Saved { q: qr, k: kr, v: vh, out, op };
    q.apply_op3(k, v, AttentionRowsOp { shape, tables: tables.clone(), saved: Mutex::new(Some(saved)) })
}

/// What the backward pass needs from the forward one.
struct Saved {
    /// Rotated queries `[b, kv, g·s, d]`, rotated keys and values `[b, kv, s, d]`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// The attention output `[b, kv, g·s, d]`.
    out: Tensor,
    /// The attention op, holding the block probabilities for its backward pass.
    op: Fused<AttentionOp>,
}

struct AttentionRowsOp {
    shape: HeadShape,
    tables: Arc<RopeTables>,
    saved: Mutex<Option<Saved>>,
}

impl AttentionRowsOp {
    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<Saved>>> {
        self.saved.lock().map_err(|_| candle_core::Error::Msg("attention_rows: a poisoned lock".into()))
    }
}

/// `out` `[b, n, s, d]` (contiguous) written as rows `[b·s, n·d]`.
fn head_rows<T: Copy>(out: &[T], shape: HeadShape) -> Vec<T> {
    let HeadShape { batch: b, seq: s, heads: n, head_dim: d, .. } = shape;
    let mut rows = Vec::with_capacity(out.len());
    for bi in 0..b {
        for t in 0..s {
            for h in 0..n {
                let at = ((bi * n + h) * s + t) * d;
                rows.extend_from_slice(&out[at..at + d]);
            }
        }
    }
    rows
}

impl CustomOp3 for AttentionRowsOp {
    fn name(&self) -> &'static str {
        "hone-attention-rows"
    }

    /// The output was computed when the op was built; this writes it as rows.
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let guard = self.saved()?;
        let Some(saved) = guard.as_ref() else { bail!("attention_rows: forward ran twice") };
        let (storage, layout) = saved.out.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { bail!("attention_rows: the output is not on the CPU") };
        if !layout.is_contiguous() {
            bail!("attention_rows: the attention output is not contiguous");
        }
        let at = layout.start_offset();
        let n = layout.shape().elem_count();
        let rows = match cpu.dtype() {
            DType::F32 => CpuStorage::F32(head_rows(&cpu.as_slice::<f32>()?[at..at + n], self.shape)),
            DType::F64 => CpuStorage::F64(head_rows(&cpu.as_slice::<f64>()?[at..at + n], self.shape)),
            other => bail!("attention_rows: no fused kernel for {other:?}"),
        };
        let HeadShape { batch, seq, heads, head_dim, .. } = self.shape;
        Ok((rows, Shape::from((batch * seq, heads * head_dim))))
    }

    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved()?.take() else { bail!("attention_rows: backward ran twice") };
        let shape = self.shape;
        let HeadShape { batch: b, seq: s, heads, kv_heads: kv, head_dim: d } = shape;
        let g = shape.heads_of(&grad.detach(), heads)?.contiguous()?.reshape((b, kv, heads / kv * s, d))?;
        let [dq, dk, dv] = saved.op.0.grads([&saved.q, &saved.k, &saved.v], &saved.out, &g)?;
        let (Some(dq), Some(dk), Some(dv)) = (dq, dk, dv) else { bail!("attention_rows: missing gradients") };
        let dq = rope_inverse(&dq.reshape((b, heads, s, d))?, &self.tables, 0)?;
        let dk = rope_inverse(&dk, &self.tables, 0)?;
        Ok((Some(shape.rows_of(&dq, heads)?), Some(shape.rows_of(&dk, kv)?), Some(shape.rows_of(&dv, kv)?)))
    }
}

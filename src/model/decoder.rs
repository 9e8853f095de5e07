//! The decoder shared by the Llama and Qwen2 families: embeddings, pre-norm blocks of grouped-query
//! attention with RoPE and a SwiGLU MLP, a final RMSNorm and the (tied or untied) LM head.
//! Module and tensor names follow transformers, so `VarBuilder` paths are the checkpoint keys.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::checkpoint::{checkpoint, SideGrads};
use super::config::ModelConfig;
use super::fused::{self, fused_path, CausalMask};
use super::lora::{LoraBuild, Projection};
use super::ops::{matmul_in, softmax_last_dim, Linear, RmsNorm, Rotary};

/// Keys and values of the positions seen so far, one entry per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![None; layers] }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(Option::as_ref).and_then(|(k, _)| k.dim(2).ok()).unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the batch rows `rows` (in that order): finished rows of a batched generation
    /// leave the cache so later steps do not compute them.
    pub fn keep_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(first) = self.layers.iter().flatten().next() else { return Ok(()) };
        let index = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), first.0.device())?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.contiguous()?.index_select(&index, 0)?;
            *v = v.contiguous()?.index_select(&index, 0)?;
        }
        Ok(())
    }
}

/// Rotates the new positions of each batch row separately: row `b`'s first `pads[b]` cached
/// positions are padding, so its real position is the padded one minus `pads[b]`. Padding
/// positions are left unrotated (they are masked everywhere).
fn rotate_left_padded(rotary: &Rotary, xs: &Tensor, offset: usize, pads: &[usize]) -> Result<Tensor> {
    let s = xs.dim(2)?;
    let rows = pads
        .iter()
        .enumerate()
        .map(|(b, &pad)| {
            let row = xs.narrow(0, b, 1)?;
            let first_real = pad.saturating_sub(offset).min(s);
            if first_real == s {
                return row.contiguous();
            }
            let real = rotary.apply(&row.narrow(2, first_real, s - first_real)?, offset + first_real - pad)?;
            if first_real == 0 {
                Ok(real)
            } else {
                Tensor::cat(&[&row.narrow(2, 0, first_real)?.contiguous()?, &real], 2)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}

fn init_for(fan_in: usize) -> Init {
    #[allow(clippy::cast_precision_loss)]
    let stdev = 1.0 / (fan_in as f64).sqrt();
    Init::Randn { mean: 0.0, stdev }
}

fn linear(vb: &VarBuilder, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let weight = vb.get_with_hints((out, inp), "weight", init_for(inp))?;
    let bias = if bias { Some(vb.get_with_hints(out, "bias", Init::Const(0.0))?) } else { None };
    Ok(Linear::new(weight, bias))
}

/// A projection of a decoder layer: the linear layer, with a LoRA adapter when `lora` targets it.
fn projection(vb: &VarBuilder, out: usize, inp: usize, bias: bool, lora: Option<&LoraBuild>) -> Result<Projection> {
    Projection::new(linear(vb, out, inp, bias)?, vb, out, inp, lora)
}

fn rms_norm(vb: &VarBuilder, size: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm::new(vb.get_with_hints(size, "weight", Init::Const(1.0))?, eps))
}

#[derive(Clone)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    /// The dtype of the attention matmuls (`None`: the activations' own).
    compute: Option<DType>,
}

impl Attention {
    fn new(cfg: &ModelConfig, window: Option<usize>, vb: &VarBuilder, lora: Option<&LoraBuild>) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Ok(Self {
            q_proj: projection(&vb.pp("q_proj"), cfg.num_attention_heads * d, h, cfg.qkv_bias, lora)?,
            k_proj: projection(&vb.pp("k_proj"), cfg.num_key_value_heads * d, h, cfg.qkv_bias, lora)?,
            v_proj: projection(&vb.pp("v_proj"), cfg.num_key_value_heads * d, h, cfg.qkv_bias, lora)?,
            o_proj: projection(&vb.pp("o_proj"), h, cfg.num_attention_heads * d, cfg.o_bias, lora)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            window,
            compute: None,
        })
    }

    /// `xs` is `[b·s, hidden]`: the decoder carries its activations as rows, so the projections
    /// need no reshape (each reshape is a node whose backward zero-fills and adds a full copy).
    fn forward(
        &self,
        xs: &Tensor,
        (b, s): (usize, usize),
        rotary: &Rotary,
        offset: usize,
        pads: Option<&[usize]>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let d = self.head_dim;
        // A whole sequence (training, scoring) takes the blocked kernel that skips the masked
        // half of the scores; one block's worth of positions gains nothing from it.
        let whole = cache.is_none() && pads.is_none() && offset == 0 && s > fused::ATTENTION_BLOCK;
        let (q, k, v) = (self.q_proj.forward(xs)?, self.k_proj.forward(xs)?, self.v_proj.forward(xs)?);
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (d as f64).sqrt();
        if let Some(tables) = rotary.fused_tables(&q).filter(|_| whole) {
            // Rows in, rows out: one graph node from the projections to the output projection.
            let shape = fused::HeadShape { batch: b, seq: s, heads: self.heads, kv_heads: self.kv_heads, head_dim: d };
            let window = self.window.unwrap_or(usize::MAX);
            return self.o_proj.forward(&fused::attention_rows(&q, &k, &v, shape, tables, (scale, window))?);
        }
        let q = q.reshape((b, s, self.heads, d))?.transpose(1, 2)?;
        let k = k.reshape((b, s, self.kv_heads, d))?.transpose(1, 2)?;
        let v = v.reshape((b, s, self.kv_heads, d))?.transpose(1, 2)?;
        let (q, k) = match pads {
            Some(p) => (rotate_left_padded(rotary, &q, offset, p)?, rotate_left_padded(rotary, &k, offset, p)?),
            None => (rotary.apply(&q, offset)?, rotary.apply(&k, offset)?),
        };
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        // Grouped-query attention without copying keys: the query heads that share a KV head
        // are stacked along the sequence axis, so one batched matmul serves the whole group.
        let groups = self.heads / self.kv_heads;
        let q = q.contiguous()?.reshape((b, self.kv_heads, groups * s, d))?;
        let probs = if fused_path(&q) {
            // Scale, causal/window mask and softmax in one kernel; k's transpose is a strided view.
            let scores = matmul_in(&q, &k.t()?, self.compute)?;
            let mask = CausalMask { s, offset, window: self.window.unwrap_or(usize::MAX) };
            match pads {
                Some(p) => fused::softmax_left_padded(&scores, scale, mask, p)?,
                None => fused::softmax(&scores, scale, Some(mask))?,
            }
        } else {
            let scores = (matmul_in(&q, &k.t()?.contiguous()?, self.compute)? * scale)?;
            let scores = scores.reshape((b, self.kv_heads, groups, s, kv_len))?;
            let scores = match attention_mask(s, kv_len, offset, self.window, scores.dtype(), scores.device())? {
                Some(mask) => scores.broadcast_add(&mask)?,
                None => scores,
            };
            let scores = match pads {
                Some(p) => {
                    scores.broadcast_add(&padding_mask(p, s, kv_len, offset, scores.dtype(), scores.device())?)?
                }
                None => scores,
            };
            softmax_last_dim(&scores)?.reshape((b, self.kv_heads, groups * s, kv_len))?
        };
        let out = matmul_in(&probs, &v.contiguous()?, self.compute)?;
        let out = out.reshape((b, self.heads, s, d))?.transpose(1, 2)?.reshape((b * s, self.heads * d))?;
        self.o_proj.forward(&out)
    }
}

/// Additive causal (and optionally sliding-window) mask `[s, kv_len]` for queries at positions
/// `offset..offset+s`; `None` when nothing needs masking (a single new token, no window).
fn attention_mask(
    s: usize,
    kv_len: usize,
    offset: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let window = window.unwrap_or(usize::MAX);
    if s == 1 && kv_len <= window {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| {
            let qpos = offset + i;
            (0..kv_len).map(move |j| if j > qpos || qpos - j >= window { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (s, kv_len), device)?.to_dtype(dtype)?))
}

/// Additive mask `[batch, 1, 1, s, kv_len]` hiding each row's leading padding keys. A query that
/// is itself padding keeps its own key, so its softmax stays finite (its output is never used).
fn padding_mask(
    pads: &[usize],
    s: usize,
    kv_len: usize,
    offset: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = pads
        .iter()
        .flat_map(|&pad| {
            (0..s).flat_map(move |i| {
                let qpos = offset + i;
                (0..kv_len).map(move |j| if j < pad && j != qpos { f32::NEG_INFINITY } else { 0.0 })
            })
        })
        .collect();
    Tensor::from_vec(mask, (pads.len(), 1, 1, s, kv_len), device)?.to_dtype(dtype)
}

#[derive(Clone)]
struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Mlp {
    fn new(cfg: &ModelConfig, vb: &VarBuilder, lora: Option<&LoraBuild>) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: projection(&vb.pp("gate_proj"), i, h, cfg.mlp_bias, lora)?,
            up_proj: projection(&vb.pp("up_proj"), i, h, cfg.mlp_bias, lora)?,
            down_proj: projection(&vb.pp("down_proj"), h, i, cfg.mlp_bias, lora)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?;
        let up = self.up_proj.forward(xs)?;
        let hidden = if fused_path(&gate) { fused::swiglu(&gate, &up)? } else { (gate.silu()? * up)? };
        self.down_proj.forward(&hidden)
    }
}

#[derive(Clone)]
struct Block {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Block {
    fn new(cfg: &ModelConfig, layer: usize, vb: &VarBuilder, lora: Option<&LoraBuild>) -> Result<Self> {
        // Requested in transformers' named_parameters() order: attention, MLP, then the norms.
        let window = cfg.sliding_windows.get(layer).copied().flatten();
        let self_attn = Attention::new(cfg, window, &vb.pp("self_attn"), lora)?;
        let mlp = Mlp::new(cfg, &vb.pp("mlp"), lora)?;
        Ok(Self {
            self_attn,
            mlp,
            input_layernorm: rms_norm(&vb.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            post_attention_layernorm: rms_norm(&vb.pp("post_attention_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
        })
    }

    /// `xs` is `[b·s, hidden]` for a batch of `b` sequences of `s` positions.
    fn forward(
        &self,
        xs: &Tensor,
        dims: (usize, usize),
        rotary: &Rotary,
        offset: usize,
        pads: Option<&[usize]>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(xs)?;
        let xs = (xs + self.self_attn.forward(&h, dims, rotary, offset, pads, cache)?)?;
        let h = self.post_attention_layernorm.forward(&xs)?;
        xs + self.mlp.forward(&h)?
    }

    fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        let a = &mut self.self_attn;
        for linear in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
            linear.set_compute_dtype(dtype);
        }
        for linear in [&mut self.mlp.gate_proj, &mut self.mlp.up_proj, &mut self.mlp.down_proj] {
            linear.set_compute_dtype(dtype);
        }
        a.compute = dtype;
    }
}

/// A causal language model of the Llama/Qwen2 families.
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    dtype: DType,
    device: Device,
    /// Set when gradient checkpointing is on: where checkpointed layers leave their parameters'
    /// gradients until [`Decoder::backward`] collects them.
    checkpointing: Option<SideGrads>,
    compute: Option<DType>,
}

impl Decoder {
    /// Builds the model, requesting every tensor from `vb` by its transformers name.
    pub fn new(cfg: &ModelConfig, vb: &VarBuilder) -> Result<Self> {
        Self::with_lora(cfg, vb, None)
    }

    /// Builds the model with a LoRA adapter on every projection `lora` targets (the adapters'
    /// tensors come from `lora`'s store, the base's from `vb`).
    pub fn with_lora(cfg: &ModelConfig, vb: &VarBuilder, lora: Option<&LoraBuild>) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = m.pp("embed_tokens").get_with_hints(
            (cfg.vocab_size, cfg.hidden_size),
            "weight",
            Init::Randn { mean: 0.0, stdev: 0.02 },
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, i, &m.pp("layers").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(&m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.clone(), None)
        } else {
            linear(&vb.pp("lm_head"), cfg.vocab_size, cfg.hidden_size, false)?
        };
        // Under a LoRA adapter the head is part of the frozen base.
        let lm_head = if lora.is_some() { lm_head.frozen() } else { lm_head };
        let rotary = Rotary::new(
            cfg.head_dim,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            &cfg.rope_scaling,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            checkpointing: None,
            compute: None,
        })
    }

    /// Turns gradient checkpointing on or off: with it, a training forward pass (no KV cache)
    /// keeps only each layer's input for the backward pass and recomputes the layer there
    /// (`model::checkpoint`). Gradients must then come from [`Decoder::backward`].
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on.then(SideGrads::new);
    }

    /// Whether gradient checkpointing is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpointing.is_some()
    }

    /// Runs every matmul (projections, attention, LM head) in `dtype`, keeping the weights and
    /// everything between the matmuls in the weights' dtype: mixed precision with master
    /// weights, as `torch.autocast` does. The weights' own dtype turns it off.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        let compute = (dtype != self.dtype).then_some(dtype);
        for layer in &mut self.layers {
            layer.set_compute_dtype(compute);
        }
        self.lm_head.set_compute_dtype(compute);
        self.compute = compute;
    }

    /// The dtype the matmuls run in.
    pub fn compute_dtype(&self) -> DType {
        self.compute.unwrap_or(self.dtype)
    }

    /// The gradients of `loss` (candle's `backward`, plus the parameters' gradients that
    /// checkpointed layers computed in their own backward passes), detached: candle leaves a
    /// parameter's gradient attached to the ops that made it, so a kept gradient would keep
    /// every activation of the forward pass alive until it is dropped.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut store = match (loss.backward(), &self.checkpointing) {
            (Ok(mut store), Some(side)) => {
                side.drain_into(&mut store)?;
                store
            }
            (Ok(store), None) => store,
            (Err(e), side) => {
                if let Some(side) = side {
                    side.clear()?;
                }
                return Err(e);
            }
        };
        let ids: Vec<_> = store.get_ids().copied().collect();
        for id in ids {
            if let Some(g) = store.get_id(id).map(Tensor::detach) {
                store.insert_id(id, g);
            }
        }
        Ok(store)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Final-norm hidden states `[batch, seq, hidden]` for `ids` `[batch, seq]` (u32), placed at
    /// positions `cache.len()..` when a cache is given. Right padding needs no mask: causal
    /// attention keeps valid positions from seeing the padding after them.
    pub fn hidden_states(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let rows = self.hidden_states_inner(ids, None, cache)?;
        rows.reshape((b, s, rows.dim(1)?))
    }

    /// The same hidden states as rows `[batch·seq, hidden]` (row `i·seq + t` is sequence `i`'s
    /// position `t`), as the decoder computes them: no reshape node in the graph.
    pub fn hidden_rows(&self, ids: &Tensor) -> Result<Tensor> {
        self.hidden_states_inner(ids, None, None)
    }

    /// Final-norm hidden states as rows `[b·s, hidden]`.
    fn hidden_states_inner(
        &self,
        ids: &Tensor,
        pads: Option<&[usize]>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let dims = ids.dims2()?;
        // A bf16 frozen base's embedding rows join the master-dtype residual stream.
        let mut xs = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.to_dtype(self.dtype)?;
        // Checkpointing serves training passes; a pass with a cache (generation) keeps state
        // across calls and runs plainly.
        let checkpointing = self.checkpointing.as_ref().filter(|_| cache.is_none() && pads.is_none());
        if checkpointing.is_some() && !xs.track_op() {
            // A checkpointed layer's op joins the graph only when its input tracks gradients;
            // under a frozen embedding (a LoRA base) the input is made a variable, or no adapter
            // would get a gradient.
            xs = candle_core::Var::from_tensor(&xs)?.into_inner();
        }
        for (i, layer) in self.layers.iter().enumerate() {
            xs = if let Some(side) = checkpointing {
                let (layer, rotary) = (layer.clone(), self.rotary.clone());
                checkpoint(&xs, move |x| layer.forward(x, dims, &rotary, 0, None, None), side)?
            } else {
                let slot = cache.as_mut().map(|c| &mut c.layers[i]);
                layer.forward(&xs, dims, &self.rotary, offset, pads, slot)?
            };
        }
        self.norm.forward(&xs)
    }

    /// Logits for the given hidden states (any leading shape).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// `log softmax(lm_head(rows))[targets]` `[n]` through the fused head kernel
    /// ([`fused::head_target_logps`]: no `[n, vocab]` gradient buffer in the graph), or `None`
    /// where it does not apply (not the CPU in f32/f64, a compute dtype, a biased head).
    pub fn fused_head_logps(&self, rows: &Tensor, targets: &Tensor) -> Option<Result<Tensor>> {
        let weight = self.lm_head.plain_weight(rows).filter(|_| fused_path(rows))?;
        super::ops::note_matmul(rows.dtype());
        Some(fused::head_target_logps(rows, weight, targets))
    }

    /// Logits `[batch, seq, vocab]` for every position.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.lm_head(&self.hidden_states(ids, cache)?)
    }

    /// Logits of the last position only `[batch, vocab]`, the cheap path for generation.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden_states(ids, cache)?;
        let s = h.dim(1)?;
        self.lm_head(&h.narrow(1, s - 1, 1)?.squeeze(1)?)?.to_dtype(DType::F32)
    }

    /// Logits of the last position `[batch, vocab]` of a left-padded batch: row `b`'s first
    /// `pads[b]` positions (counted from the start of `cache`, which must hold this batch's
    /// earlier positions) are padding. Each row sees only its own tokens at its own positions,
    /// so its logits are those of the row alone.
    pub fn forward_last_left_padded(&self, ids: &Tensor, pads: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        if pads.len() != ids.dim(0)? {
            candle_core::bail!(
                "forward_last_left_padded: {} padding counts for a batch of {}",
                pads.len(),
                ids.dim(0)?
            );
        }
        let (b, s) = ids.dims2()?;
        let rows = self.hidden_states_inner(ids, Some(pads), Some(cache))?;
        let h = rows.reshape((b, s, rows.dim(1)?))?;
        self.lm_head(&h.narrow(1, s - 1, 1)?.squeeze(1)?)?.to_dtype(DType::F32)
    }

    /// Number of decoder layers (the size of a [`KvCache`]).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Width of the logits.
    pub fn vocab_size(&self) -> Result<usize> {
        self.lm_head.weight().dim(0)
    }
}

//! Gradient checkpointing: a layer whose activations are not kept for the backward pass but
//! recomputed in it, as `torch.utils.checkpoint` does for transformers' decoder layers.
//!
//! candle has no checkpointing, so [`checkpoint`] builds it from a custom op. The forward pass
//! runs the layer on a detached copy of its input and keeps only the output: the layer's graph
//! (every intermediate activation) is dropped at once. The output enters the graph as a custom op
//! of the input, so the outer graph holds one tensor per layer (the input). Its backward pass
//! recomputes the layer with a graph, backpropagates the incoming gradient through it, returns
//! the input's gradient to candle and puts the parameters' gradients in a [`SideGrads`] store,
//! because a custom op can only return its argument's gradient. [`SideGrads::drain_into`] adds
//! them to candle's `GradStore` after `backward()` (see `Decoder::backward`).
//!
//! The recomputation runs the same kernels on the same values, and every parameter of a layer is
//! used by that layer only, so the gradients are bit-identical to those of the plain graph on the
//! CPU (`tests/checkpointing.rs`). Owns no model structure: the layer is a closure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, TensorId, Var};

/// Parameter gradients computed inside checkpointed layers' backward passes, waiting to be added
/// to the `GradStore` of the `backward()` call that produced them.
#[derive(Debug, Clone, Default)]
pub struct SideGrads {
    grads: Arc<Mutex<HashMap<TensorId, Tensor>>>,
}

impl SideGrads {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<TensorId, Tensor>>> {
        self.grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpointed gradients: a backward pass panicked".into()))
    }

    /// Adds every gradient of `grads` except `skip`'s (the recomputed layer's input).
    fn absorb(&self, grads: &GradStore, skip: TensorId) -> Result<()> {
        let mut side = self.lock()?;
        for &id in grads.get_ids() {
            if id == skip {
                continue;
            }
            // candle's gradients of variables still carry the ops that made them (a weight's
            // gradient is a matmul of the layer's activations): detached, they no longer keep
            // the recomputed layer alive.
            let Some(g) = grads.get_id(id).map(Tensor::detach) else { continue };
            let sum = match side.remove(&id) {
                Some(previous) => (previous + g)?.detach(),
                None => g,
            };
            side.insert(id, sum);
        }
        Ok(())
    }

    /// Moves the gathered gradients into `store`, adding to a gradient it already has for the
    /// same tensor; the side store is empty afterwards.
    pub fn drain_into(&self, store: &mut GradStore) -> Result<()> {
        let drained: Vec<(TensorId, Tensor)> = self.lock()?.drain().collect();
        for (id, g) in drained {
            let sum = match store.get_id(id) {
                Some(existing) => (existing + &g)?,
                None => g,
            };
            store.insert_id(id, sum);
        }
        Ok(())
    }

    /// Drops anything gathered (a backward pass that failed half-way).
    pub fn clear(&self) -> Result<()> {
        self.lock()?.clear();
        Ok(())
    }
}

/// The layer as the op sees it: input to output, with a graph when the input tracks gradients.
type Layer = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// `layer(xs)` whose intermediate activations are recomputed in the backward pass instead of
/// being kept. `layer` must be deterministic and must not read or write state outside its
/// parameters (no cache): it runs twice.
pub fn checkpoint<F>(xs: &Tensor, layer: F, side: &SideGrads) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    // The layer's graph lives only for this statement: just the output's values are kept.
    let output = Handover::new(layer(&xs.detach())?.detach())?;
    xs.apply_op1(Checkpointed { layer: Box::new(layer), output, side: side.clone() })
}

/// A tensor computed outside a custom op, handed over as the op's forward result: the op's
/// forward copies its storage and drops it. Shared by [`checkpoint`] and the frozen product of
/// `model::frozen`.
pub(crate) struct Handover(Mutex<Option<Tensor>>);

impl Handover {
    /// Holds `output`, which must be a fresh contiguous tensor.
    pub(crate) fn new(output: Tensor) -> Result<Self> {
        let layout = output.layout();
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("custom op: a precomputed output must be a fresh contiguous tensor");
        }
        Ok(Self(Mutex::new(Some(output))))
    }

    fn take(&self) -> Result<Tensor> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("custom op: poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("custom op: forward ran twice".into()))
    }

    /// The output's CPU storage.
    pub(crate) fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("custom op: the output is not on the CPU"),
        }
    }

    /// The output's GPU storage.
    pub(crate) fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("custom op: the output is not on the GPU"),
        }
    }
}

/// The custom op of [`checkpoint`]: forward hands over the precomputed output, backward
/// recomputes the layer.
struct Checkpointed {
    layer: Layer,
    /// The output computed in [`checkpoint`], taken (and so freed) by the forward pass.
    output: Handover,
    side: SideGrads,
}

impl CustomOp1 for Checkpointed {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }

    fn cpu_fwd(&self, _input: &CpuStorage, _layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn cuda_fwd(&self, _input: &CudaStorage, _layout: &Layout) -> Result<(CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let input = Var::from_tensor(&arg.detach())?;
        let output = (self.layer)(input.as_tensor())?;
        // d/dθ Σ(y · g) = gᵀ ∂y/∂θ: the vector-Jacobian product the outer graph asks for. The sum's
        // backward hands `g · 1 = g` to `y` exactly, so the layer sees the same gradient.
        let grads = output.mul(&grad_res.detach())?.sum_all()?.backward()?;
        self.side.absorb(&grads, input.as_tensor().id())?;
        Ok(grads.get(input.as_tensor()).map(Tensor::detach))
    }
}

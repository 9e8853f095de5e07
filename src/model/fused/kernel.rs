//! The one place where a fused op meets candle: a [`Kernel`] is written once, generic over the
//! float type, and [`Fused`] turns it into a candle custom op of one, two or three inputs that
//! runs the kernel in the dtype of its first input (f32 or f64; any other is an error).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

use super::Real;

/// A fused op over `N` inputs.
pub(super) trait Kernel<const N: usize>: Send + Sync {
    /// The op's name for candle and for errors.
    const NAME: &'static str;

    /// Checks that the inputs fit together and returns the shape of the output.
    fn shape(&self, layouts: [&Layout; N]) -> Result<Shape>;

    /// The output (contiguous, of that shape) in the float type of the first input.
    fn kernel<T: Real>(&self, inputs: &Inputs<'_, N>) -> Result<Vec<T>>;

    /// The gradients of the inputs given the output `res` and its gradient; none by default
    /// (forward-only ops).
    fn grads(&self, _args: [&Tensor; N], _res: &Tensor, _grad: &Tensor) -> Result<[Option<Tensor>; N]> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// The inputs of a [`Kernel`] as candle hands them over (any strides).
pub(super) struct Inputs<'a, const N: usize> {
    name: &'static str,
    args: [(&'a CpuStorage, &'a Layout); N],
}

impl<'a, const N: usize> Inputs<'a, N> {
    /// Input `i`, which must be contiguous.
    pub fn float<T: WithDType>(&self, i: usize) -> Result<&'a [T]> {
        let (s, l) = self.args[i];
        contiguous(s, l, self.name)
    }

    /// Every input, each of which must be contiguous.
    pub fn floats<T: WithDType>(&self) -> Result<[&'a [T]; N]> {
        let mut out = [&[][..]; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.float(i)?;
        }
        Ok(out)
    }

    /// The whole storage of input `i`, to be read through its layout.
    pub fn strided<T: WithDType>(&self, i: usize) -> Result<&'a [T]> {
        self.args[i].0.as_slice::<T>()
    }

    /// The layout of input `i`.
    pub fn layout(&self, i: usize) -> &'a Layout {
        self.args[i].1
    }
}

/// The contiguous elements of `s` under layout `l`.
pub(super) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: the fused kernel needs a contiguous input"),
    }
}

/// A [`Kernel`] as a candle custom op.
pub(super) struct Fused<K>(pub K);

impl<K> Fused<K> {
    fn run<const N: usize>(&self, args: [(&CpuStorage, &Layout); N]) -> Result<(CpuStorage, Shape)>
    where
        K: Kernel<N>,
    {
        let shape = self.0.shape(args.map(|(_, l)| l))?;
        let inputs = Inputs { name: K::NAME, args };
        let out = match args[0].0.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(self.0.kernel(&inputs)?),
            DType::F64 => f64::to_cpu_storage_owned(self.0.kernel(&inputs)?),
            other => bail!("{}: no fused kernel for {other:?}", K::NAME),
        };
        Ok((out, shape))
    }
}

impl<K: Kernel<1>> CustomOp1 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run([(s, l)])
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [d] = self.0.grads([arg], res, grad)?;
        Ok(d)
    }
}

impl<K: Kernel<2>> CustomOp2 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2)])
    }

    fn bwd(&self, a1: &Tensor, a2: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [d1, d2] = self.0.grads([a1, a2], res, grad)?;
        Ok((d1, d2))
    }
}

impl<K: Kernel<3>> CustomOp3 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [d1, d2, d3] = self.0.grads([a1, a2, a3], res, grad)?;
        Ok((d1, d2, d3))
    }
}

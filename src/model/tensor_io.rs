//! Safetensors files read and written one tensor at a time, so neither loading a model nor saving
//! a checkpoint holds a whole file's bytes: a reader keeps the header and reads each tensor's
//! bytes from the file when the model asks for it; a writer takes the tensors themselves and
//! converts each to bytes while writing it. At 135M parameters in f32 a file is 0.54 GB and a
//! checkpoint's optimizer state 1.08 GB, which would otherwise sit on top of the training state.
//!
//! The bytes are those of `safetensors::serialize`: the same header (tensors ordered by name,
//! `__metadata__` first, padded with spaces to 8 bytes) and the same data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};

use super::ModelError;

/// The header's length field: a little-endian u64 before the JSON.
const LEN_BYTES: u64 = 8;
/// The largest header accepted (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;
/// Elements converted to bytes per write.
const CHUNK: usize = 1 << 16;

/// A safetensors file opened for reading tensor by tensor: its header is parsed and checked
/// against the file's length, and nothing else is read until [`TensorFile::read`].
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    file: File,
    /// Where the data section starts.
    data_start: u64,
    metadata: Metadata,
}

impl TensorFile {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let bad = |message: String| ModelError::Weights { path: path.to_path_buf(), message };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; LEN_BYTES as usize];
        file.read_exact(&mut len).map_err(|_| bad("not a safetensors file: shorter than its header length".into()))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || LEN_BYTES + n > file_len {
            return Err(bad(format!("header length {n} does not fit a file of {file_len} bytes")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| bad(format!("the header is not valid: {e}")))?;
        let data_start = LEN_BYTES + n;
        if data_start + metadata.data_len() as u64 != file_len {
            return Err(bad(format!(
                "the header describes {} bytes of tensors but the file holds {}",
                metadata.data_len(),
                file_len - data_start
            )));
        }
        Ok(Self { path: path.to_path_buf(), file, data_start, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the tensors in the file.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// The shape of tensor `name`, if the file holds it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.metadata.info(name).map(|i| i.shape.as_slice())
    }

    /// Tensor `name` on `device`, in the file's dtype (read from the file now).
    pub fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        use candle_core::safetensors::Load;
        let at = |e: String| candle_core::Error::Msg(format!("tensor {name} in {}: {e}", self.path.display()));
        let info = self.metadata.info(name).ok_or_else(|| at("not in the file".into()))?;
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file.read_exact_at(&mut bytes, self.data_start + start as u64).map_err(|e| at(e.to_string()))?;
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), &bytes)
            .map_err(|e| at(e.to_string()))?;
        view.load(device)
    }
}

/// Tensors to be written as one safetensors file in one dtype, each converted to bytes only as it
/// is written. The tensors are shared with their owner (no copy): write the file before the
/// owner changes them (an optimizer step updates parameters in place).
#[derive(Debug, Clone)]
pub struct SafetensorsOut {
    /// Sorted by name, names unique.
    tensors: Vec<(String, Tensor)>,
    dtype: DType,
}

impl SafetensorsOut {
    /// `tensors` (a later tensor of a repeated name replaces the earlier) to be saved in `dtype`.
    pub fn new(tensors: Vec<(String, Tensor)>, dtype: DType) -> Result<Self, ModelError> {
        safetensors_dtype(dtype)?;
        let mut by_name: Vec<(String, Tensor)> =
            tensors.into_iter().collect::<std::collections::BTreeMap<_, _>>().into_iter().collect();
        by_name.shrink_to_fit();
        Ok(Self { tensors: by_name, dtype })
    }

    /// The length field and the JSON header, padded to 8 bytes as `safetensors::serialize` does.
    fn header(&self) -> io::Result<Vec<u8>> {
        let dtype = safetensors_dtype(self.dtype).map_err(io::Error::other)?;
        let mut offset = 0;
        let infos = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let len = t.elem_count() * self.dtype.size_in_bytes();
                let info = TensorInfo { dtype, shape: t.dims().to_vec(), data_offsets: (offset, offset + len) };
                offset += len;
                (name.clone(), info)
            })
            .collect();
        let format = HashMap::from([("format".to_string(), "pt".to_string())]);
        let metadata = Metadata::new(Some(format), infos).map_err(io::Error::other)?;
        let mut json = serde_json::to_vec(&metadata).map_err(io::Error::other)?;
        json.resize(json.len().next_multiple_of(LEN_BYTES as usize), b' ');
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        Ok(out)
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        let data: usize = self.tensors.iter().map(|(_, t)| t.elem_count() * self.dtype.size_in_bytes()).sum();
        self.header().map_or(0, |h| h.len() as u64) + data as u64
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Writes the file to `out`, one tensor at a time.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.header()?)?;
        for (_, t) in &self.tensors {
            write_tensor(out, t, self.dtype)?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.write_to(&mut bytes).map_err(|e| ModelError::Dtype(e.to_string()))?;
        Ok(bytes)
    }
}

/// The contents of one file to write: bytes, or tensors serialised as they are written.
#[derive(Debug, Clone)]
pub enum FileOut {
    /// The whole file.
    Bytes(Vec<u8>),
    /// A safetensors file of these tensors.
    Tensors(SafetensorsOut),
}

impl FileOut {
    /// Writes the contents to `out`.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Self::Bytes(b) => out.write_all(b),
            Self::Tensors(t) => t.write_to(out),
        }
    }

    /// The contents' length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Tensors(t) => t.len(),
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The contents in memory.
    pub fn into_bytes(self) -> Result<Vec<u8>, ModelError> {
        match self {
            Self::Bytes(b) => Ok(b),
            Self::Tensors(t) => t.to_bytes(),
        }
    }
}

fn safetensors_dtype(dtype: DType) -> Result<safetensors::Dtype, ModelError> {
    match dtype {
        DType::F32 => Ok(safetensors::Dtype::F32),
        DType::BF16 => Ok(safetensors::Dtype::BF16),
        DType::F16 => Ok(safetensors::Dtype::F16),
        DType::F64 => Ok(safetensors::Dtype::F64),
        other => Err(ModelError::Dtype(format!("cannot save dtype {other:?}"))),
    }
}

/// Writes `t`'s elements in `dtype` as little-endian bytes, converting a chunk at a time (a
/// tensor already in `dtype` on the CPU is read in place).
fn write_tensor(out: &mut dyn Write, t: &Tensor, dtype: DType) -> io::Result<()> {
    let t = t.to_dtype(dtype).and_then(|t| t.to_device(&Device::Cpu)).and_then(|t| t.contiguous());
    let t = t.map_err(io::Error::other)?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Err(io::Error::other("a tensor copied to the CPU is not there")) };
    let range = layout.start_offset()..layout.start_offset() + layout.shape().elem_count();
    match cpu {
        CpuStorage::F32(v) => write_le(out, &v[range], f32::to_le_bytes),
        CpuStorage::BF16(v) => write_le(out, &v[range], half::bf16::to_le_bytes),
        CpuStorage::F16(v) => write_le(out, &v[range], half::f16::to_le_bytes),
        CpuStorage::F64(v) => write_le(out, &v[range], f64::to_le_bytes),
        _ => Err(io::Error::other(format!("cannot save dtype {dtype:?}"))),
    }
}

fn write_le<T: Copy, const N: usize>(out: &mut dyn Write, values: &[T], bytes: fn(T) -> [u8; N]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK.min(values.len()) * N);
    for chunk in values.chunks(CHUNK) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|&v| bytes(v)));
        out.write_all(&buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tensors() -> Vec<(String, Tensor)> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((3, 4)).unwrap();
        let wide = Tensor::arange(0f32, (3 * CHUNK + 5) as f32, &dev).unwrap();
        // A strided view and a narrowed one: both saved as their logical contents.
        let t = a.t().unwrap();
        let n = wide.narrow(0, 7, 2 * CHUNK + 1).unwrap();
        vec![("z.weight".into(), a), ("b.view".into(), t), ("m.narrow".into(), n), ("a.bias".into(), wide)]
    }

    /// A tensor as `safetensors::serialize` takes it, its bytes from candle's own conversion.
    struct Reference(Tensor);

    impl safetensors::View for Reference {
        fn dtype(&self) -> safetensors::Dtype {
            safetensors_dtype(self.0.dtype()).unwrap()
        }
        fn shape(&self) -> &[usize] {
            self.0.dims()
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            let flat = self.0.flatten_all().unwrap();
            let bytes: Vec<u8> = match self.0.dtype() {
                DType::F32 => flat.to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::BF16 => flat.to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::F16 => flat.to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => flat.to_vec1::<f64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            bytes.into()
        }
        fn data_len(&self) -> usize {
            self.0.elem_count() * self.0.dtype().size_in_bytes()
        }
    }

    #[test]
    fn streamed_files_are_the_bytes_of_safetensors_serialize() {
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
            let out = SafetensorsOut::new(tensors(), dtype).unwrap();
            let got = out.to_bytes().unwrap();
            assert_eq!(got.len() as u64, out.len());
            let views: Vec<(String, Reference)> = tensors()
                .into_iter()
                .map(|(n, t)| (n, Reference(t.to_dtype(dtype).unwrap().contiguous().unwrap())))
                .collect();
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            assert_eq!(got, safetensors::serialize(views, Some(meta)).unwrap(), "{dtype:?}");
        }
    }

    #[test]
    fn a_written_file_reads_back_tensor_by_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let mut file = File::create(&path).unwrap();
        SafetensorsOut::new(tensors(), DType::F32).unwrap().write_to(&mut file).unwrap();
        drop(file);
        let read = TensorFile::open(&path).unwrap();
        assert_eq!(read.names().len(), 4);
        for (name, t) in tensors() {
            assert_eq!(read.shape(&name), Some(t.dims()));
            let back = read.read(&name, &Device::Cpu).unwrap();
            let (want, got) = (t.flatten_all().unwrap(), back.flatten_all().unwrap());
            assert_eq!(want.to_vec1::<f32>().unwrap(), got.to_vec1::<f32>().unwrap(), "{name}");
        }
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let bytes = SafetensorsOut::new(tensors(), DType::F32).unwrap().to_bytes().unwrap();
        for bad in [&bytes[..bytes.len() - 1], &bytes[..4], b"{\"not\": \"safetensors\"}".as_slice()] {
            std::fs::write(&path, bad).unwrap();
            let err = TensorFile::open(&path).unwrap_err().to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
        }
    }
}

//! Reading GGUF files — the single-file format of llama.cpp, Ollama and LM Studio — and
//! translating them into what the rest of rdla reads from a Hugging Face checkpoint: a
//! `config.json`, tensors by HF key in PyTorch layout, and a `tokenizer.json`.
//!
//! # The format
//!
//! A GGUF file (versions 2 and 3; version 1 used 32-bit counts and is refused, as is a
//! big-endian file) is, all little-endian:
//!
//! ```text
//! magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv × (string key | u32 value type | value)          value: scalar, string or array
//! n_tensors × (string name | u32 n_dims | n_dims × u64 ne | u32 ggml type | u64 offset)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset, offset a multiple of the alignment
//! ```
//!
//! with `string = u64 length | UTF-8 bytes` and `array = u32 element type | u64 count |
//! elements`. Dimensions are listed fastest-varying first: `ne[0]` is the length of a row,
//! so a 2-D tensor with `ne = [in, out]` is a PyTorch `[out, in]` matrix.
//!
//! [`GgufFile::open`] memory-maps the file read-only and validates everything up front: every
//! length and count is checked against the bytes actually left in the file *before* anything
//! is allocated for it, dimensions are checked for overflow and block alignment, and every
//! tensor's data range for alignment and bounds. A truncated or corrupt file is an error
//! ([`GgufError`]) naming what is wrong, never a panic or a huge allocation.
//!
//! # Tensor types
//!
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K are
//! dequantised to `f32` bit-for-bit as llama.cpp's reference `dequantize_row_*` does (see
//! `dequant.rs`). Files using other types (IQ*, TQ*, MXFP4, …) open and list fine; reading
//! such a tensor is [`GgufError::UnsupportedTensorType`], naming the tensor and the type.
//!
//! # The Hugging Face view
//!
//! [`GgufFile::hf_config`], [`GgufFile::hf_tensors`] / [`GgufFile::read_hf`] and
//! [`GgufFile::tokenizer_json`] undo what llama.cpp's `convert_hf_to_gguf.py` did, per
//! architecture (`llama`, `qwen2`, `qwen3`, `phi3`, `gemma2`, `gemma3`, `gpt2`, `gptneox`;
//! see `hf/`):
//! tensor renaming, the Q/K row permutation of Llama-family rotary attention, GPT-2's Conv1D
//! transposition and GPT-NeoX's fused-QKV reordering; hyper-parameters from `{arch}.*` keys;
//! and the tokenizer rebuilt from `tokenizer.ggml.*`.

mod dequant;
mod error;
mod hf;
mod meta;
mod parse;
mod quote;
mod sniff;
mod tokenizer;
mod types;
pub mod write;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use error::{GgufError, Result};
pub use hf::{HfTensor, HfTransform};
pub use meta::{MetaArray, MetaValue};
pub use quote::{MAX_CHARS, Quoted, quote};
pub use sniff::{FileKind, MIN_GGUF_LEN, identify};
pub use types::{GgmlType, file_type_name};

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The largest number of dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order, fastest-varying first (`ne[0]` = row length).
    pub dims: Vec<u64>,
    /// The storage type.
    pub ggml_type: GgmlType,
    /// Where the tensor's bytes lie in the file (absolute offsets).
    pub data: Range<u64>,
}

impl TensorInfo {
    /// The number of elements (validated at open not to overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in PyTorch order (slowest-varying first), i.e. `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Backing {
    /// The mapped file, and the file itself for positioned reads of whole tensors.
    Map(memmap2::Mmap, File),
    Bytes(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m, _) => m,
            Backing::Bytes(b) => b,
        }
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// Memory-map a file read-only.
#[allow(unsafe_code)] // memory-mapping is the only way to read multi-GB model files without copying them
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this process. A GGUF file being truncated
    // or rewritten by another process while it is mapped is outside what we can guard
    // against (the same contract every memory-mapping model reader has); everything read
    // from the map is bounds-checked against its length, which is fixed at map time.
    unsafe { memmap2::Mmap::map(file) }
}

/// Drop a read-only map's pages from this process's resident memory (they stay in the page
/// cache and are read back from the file when next touched).
#[allow(unsafe_code)] // madvise(MADV_DONTNEED) on a read-only private file mapping
pub fn release_map_pages(map: &memmap2::Mmap) {
    #[cfg(unix)]
    {
        // SAFETY: the map is read-only and private and this process never writes to it, so
        // dropping its pages only makes the next access fault them back in from the file:
        // every slice into it keeps reading the file's bytes. A failure only means the pages
        // stay resident.
        let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }
    #[cfg(not(unix))]
    let _ = map;
}

impl GgufFile {
    /// Drop the file's mapped pages from this process's resident memory (a streamed
    /// layer's blocks were read and converted; the page cache keeps them for the next read).
    pub fn release_pages(&self) {
        if let Backing::Map(m, _) = &self.backing {
            release_map_pages(m);
        }
    }

    /// Open `path` read-only, memory-map it and validate the header and every tensor's
    /// data range.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // An empty file cannot be mapped on every platform; it is not a GGUF file either.
        let backing = if len < 64 {
            Backing::Bytes(std::fs::read(path).map_err(io)?)
        } else {
            Backing::Map(map_file(&file).map_err(io)?, file)
        };
        Self::from_backing(path.to_path_buf(), backing)
    }

    /// Parse a GGUF file held in memory (for tests and for data that did not come from a file).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_backing(PathBuf::from("<memory>"), Backing::Bytes(bytes))
    }

    fn from_backing(path: PathBuf, backing: Backing) -> Result<Self> {
        let header = parse::parse(backing.bytes())?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            backing,
            version: header.version,
            alignment: header.alignment,
            data_start: header.data_start,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The tensor data alignment in force (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the tensor data section starts in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The metadata key/value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The index into [`Self::tensors`] of the tensor called `name`, if any.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The metadata value at `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The value at `key` as `conv` reads it: `None` when the key is absent,
    /// [`GgufError::WrongType`] (wanting `expected`) when `conv` does not accept the value.
    pub(crate) fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        conv(v).map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        })
    }

    /// A required string.
    pub(crate) fn get_str(&self, key: &str) -> Result<&str> {
        self.get_as(key, "string", MetaValue::as_str)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// An optional number (an `f32` widened through its shortest decimal form), which must
    /// be finite: a NaN or an infinity is [`GgufError::BadNumber`] naming the key, never
    /// passed on (a JSON config cannot hold it, and a default would silently take its place).
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.checked_f64(key, "a finite number", |_| true)
    }

    /// An optional number that must be finite and greater than 0 (a norm epsilon, a rotary
    /// base, a soft-cap, a scale or scaling factor).
    pub(crate) fn opt_positive(&self, key: &str) -> Result<Option<f64>> {
        self.checked_f64(key, "a finite number greater than 0", |v| v > 0.0)
    }

    fn checked_f64(
        &self,
        key: &str,
        must: &'static str,
        ok: impl Fn(f64) -> bool,
    ) -> Result<Option<f64>> {
        match self.get_as(key, "number", MetaValue::as_f64)? {
            Some(value) if !value.is_finite() || !ok(value) => Err(GgufError::BadNumber {
                key: key.to_string(),
                index: None,
                value,
                must,
            }),
            v => Ok(v),
        }
    }

    /// An optional bool.
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get_as(key, "bool", MetaValue::as_bool)
    }

    /// A one-line description of how the weights are stored, e.g.
    /// `Q4_K_M (Q4_K ×112, Q6_K ×14, F32 ×61)`: the `general.file_type` name when the file
    /// has one, then the tensor count per type, most common first.
    pub fn quantization_summary(&self) -> String {
        let counts = count_by_type(&self.tensors);
        let detail = counts
            .iter()
            .map(|(ty, n)| format!("{ty} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let head = match self
            .metadata
            .get("general.file_type")
            .and_then(MetaValue::as_u64)
        {
            Some(ft) => file_type_name(ft)
                .map(str::to_string)
                .unwrap_or_else(|| format!("file type {ft}")),
            None => {
                // No declared file type: name the most common type among matrices.
                let mats = count_by_type(self.tensors.iter().filter(|t| t.dims.len() >= 2));
                match mats.first() {
                    Some((ty, _)) => format!("mostly {ty}"),
                    None => "no matrices".to_string(),
                }
            }
        };
        format!("{head} ({detail})")
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let bytes = self.backing.bytes();
        let start = usize::try_from(t.data.start).ok();
        let end = usize::try_from(t.data.end).ok();
        start
            .zip(end)
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: t.data.start,
                end: t.data.end,
                len: bytes.len() as u64,
            })
    }

    /// A tensor's bytes for a whole-tensor read: a positioned read from the file (Unix), so a
    /// file truncated or replaced since it was opened is an I/O error here rather than a
    /// fault on a mapped page that is gone (a model whose layers stream reads them for as
    /// long as it is open); the bytes in memory otherwise.
    fn read_tensor_bytes(&self, t: &TensorInfo) -> Result<std::borrow::Cow<'_, [u8]>> {
        let bytes = self.tensor_bytes(t)?; // the range checked against the length at open
        #[cfg(unix)]
        if let Backing::Map(_, file) = &self.backing {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; bytes.len()];
            file.read_exact_at(&mut buf, t.data.start)
                .map_err(|error| GgufError::Io {
                    path: self.path.clone(),
                    error,
                })?;
            return Ok(std::borrow::Cow::Owned(buf));
        }
        Ok(std::borrow::Cow::Borrowed(bytes))
    }

    /// Dequantise a tensor to `f32`, in GGUF element order (row-major over the PyTorch
    /// shape [`TensorInfo::shape`]). Bit-exact with llama.cpp's reference dequantisation.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        if !t.ggml_type.is_supported() {
            return Err(GgufError::UnsupportedTensorType {
                tensor: t.name.clone(),
                ty: t.ggml_type.name().to_string(),
            });
        }
        let bytes = self.read_tensor_bytes(t)?;
        let bytes: &[u8] = &bytes;
        let (block_elems, block_bytes) = t.ggml_type.block_layout();
        let n = parse::checked_n_elements(&t.dims).unwrap_or(u64::MAX);
        let expect_bytes = (n / block_elems as u64).checked_mul(block_bytes as u64);
        if !n.is_multiple_of(block_elems as u64) || expect_bytes != Some(bytes.len() as u64) {
            return Err(GgufError::BadDims {
                tensor: t.name.clone(),
                dims: t.dims.clone(),
                reason: format!(
                    "{} bytes of {} data do not hold that many elements",
                    bytes.len(),
                    t.ggml_type
                ),
            });
        }
        let mut out = Vec::with_capacity(n as usize);
        dequant::dequantize_into(t.ggml_type, bytes, &mut out);
        Ok(out)
    }
}

/// How many of `tensors` there are of each type, most common first (ties by type id).
fn count_by_type<'a>(tensors: impl IntoIterator<Item = &'a TensorInfo>) -> Vec<(GgmlType, usize)> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in tensors {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.ggml_type, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.id().cmp(&b.0.id())));
    counts
}

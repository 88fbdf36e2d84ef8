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
//! architecture (`llama`, `qwen2`, `qwen3`, `gpt2`, `gptneox`; see `hf.rs`):
//! tensor renaming, the Q/K row permutation of Llama-family rotary attention, GPT-2's Conv1D
//! transposition and GPT-NeoX's fused-QKV reordering; hyper-parameters from `{arch}.*` keys;
//! and the tokenizer rebuilt from `tokenizer.ggml.*`.

mod dequant;
mod error;
mod hf;
mod meta;
mod tokenizer;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use error::{GgufError, Result};
pub use hf::{HfTensor, HfTransform};
pub use meta::{MetaArray, MetaValue};
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
    Map(memmap2::Mmap),
    Bytes(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
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

impl GgufFile {
    /// Open `path` read-only, memory-map it and validate the header and every tensor's
    /// data range.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // An empty file cannot be mapped on every platform; it is not a GGUF file either.
        let backing = if len < 64 {
            Backing::Bytes(std::fs::read(path).map_err(io)?)
        } else {
            Backing::Map(map_file(&file).map_err(io)?)
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

    pub(crate) fn get_str(&self, key: &str) -> Result<&str> {
        let v = self
            .metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))?;
        v.as_str().ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected: "string",
            found: v.type_name(),
        })
    }

    /// A one-line description of how the weights are stored, e.g.
    /// `Q4_K_M (Q4_K ×112, Q6_K ×14, F32 ×61)`: the `general.file_type` name when the file
    /// has one, then the tensor count per type, most common first.
    pub fn quantization_summary(&self) -> String {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in &self.tensors {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ggml_type, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.id().cmp(&b.0.id())));
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
                let mut mats: Vec<(GgmlType, usize)> = Vec::new();
                for t in self.tensors.iter().filter(|t| t.dims.len() >= 2) {
                    match mats.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                        Some((_, n)) => *n += 1,
                        None => mats.push((t.ggml_type, 1)),
                    }
                }
                mats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.id().cmp(&b.0.id())));
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
        let len = bytes.len() as u64;
        let range = usize::try_from(t.data.start).ok()..usize::try_from(t.data.end).ok();
        match range {
            Range {
                start: Some(s),
                end: Some(e),
            } if s <= e => bytes.get(s..e).ok_or(GgufError::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: t.data.start,
                end: t.data.end,
                len,
            }),
            _ => Err(GgufError::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: t.data.start,
                end: t.data.end,
                len,
            }),
        }
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
        let bytes = self.tensor_bytes(t)?;
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

mod parse {
    //! The header parser. Every read goes through [`Cursor`], which checks the bytes are
    //! there before touching them; every count is checked against the bytes left before
    //! anything is allocated for it.

    use super::*;

    pub(super) struct Header {
        pub version: u32,
        pub alignment: u64,
        pub data_start: u64,
        pub metadata: BTreeMap<String, MetaValue>,
        pub tensors: Vec<TensorInfo>,
    }

    struct Cursor<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Cursor<'a> {
        fn remaining(&self) -> u64 {
            (self.buf.len() - self.pos) as u64
        }

        fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
            if n > self.remaining() {
                return Err(GgufError::Truncated {
                    what: what(),
                    offset: self.pos as u64,
                    needed: n,
                    len: self.buf.len() as u64,
                });
            }
            let s = &self.buf[self.pos..self.pos + n as usize];
            self.pos += n as usize;
            Ok(s)
        }

        fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
            let s = self.take(N as u64, what)?;
            let mut a = [0u8; N];
            a.copy_from_slice(s);
            Ok(a)
        }

        fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
            self.array::<4>(what).map(u32::from_le_bytes)
        }

        fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
            self.array::<8>(what).map(u64::from_le_bytes)
        }

        fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
            let at = self.pos as u64;
            let len = self.u64(what)?;
            if len > self.remaining() {
                return Err(GgufError::AbsurdCount {
                    what: format!("length of {} (string at offset {at})", what()),
                    count: len,
                    len: self.buf.len() as u64,
                });
            }
            let bytes = self.take(len, what)?;
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                GgufError::Corrupt(format!(
                    "{} (string at offset {at}) is not valid UTF-8",
                    what()
                ))
            })
        }
    }

    pub(super) fn checked_n_elements(dims: &[u64]) -> Option<u64> {
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
    }

    fn scalar(c: &mut Cursor<'_>, ty: u32, what: &dyn Fn() -> String) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(c.array::<1>(what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(c.array::<1>(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(c.array::<2>(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(c.array::<2>(what)?)),
            4 => MetaValue::U32(c.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(c.array::<4>(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(c.array::<4>(what)?)),
            7 => MetaValue::Bool(c.array::<1>(what)?[0] != 0),
            8 => MetaValue::String(c.string(what)?),
            10 => MetaValue::U64(c.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(c.array::<8>(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(c.array::<8>(what)?)),
            _ => unreachable_type(ty)?,
        })
    }

    fn unreachable_type(ty: u32) -> Result<MetaValue> {
        Err(GgufError::Corrupt(format!(
            "value type {ty} where a scalar was expected"
        )))
    }

    fn array(c: &mut Cursor<'_>, key: &str, total: u64) -> Result<MetaArray> {
        let what = || format!("array `{key}`");
        let elem = c.u32(&what)?;
        let count = c.u64(&what)?;
        if elem == 9 {
            return Err(GgufError::Corrupt(format!(
                "metadata key `{key}`: nested arrays are not supported"
            )));
        }
        let min = meta::min_encoded_size(elem).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_string(),
            type_id: elem,
        })?;
        if count.checked_mul(min).is_none_or(|b| b > c.remaining()) {
            return Err(GgufError::AbsurdCount {
                what: format!(
                    "length of array `{key}` (of {})",
                    meta::value_type_name(elem)
                ),
                count,
                len: total,
            });
        }
        // `count` is now bounded by the bytes left in the file.
        let n = count as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty, $size:expr) => {{
                let bytes = c.take(count * $size, &what)?;
                MetaArray::$variant(
                    bytes
                        .chunks_exact($size)
                        .map(|ch| {
                            let mut a = [0u8; $size];
                            a.copy_from_slice(ch);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            0 => MetaArray::U8(c.take(count, &what)?.to_vec()),
            1 => fixed!(I8, i8, 1),
            2 => fixed!(U16, u16, 2),
            3 => fixed!(I16, i16, 2),
            4 => fixed!(U32, u32, 4),
            5 => fixed!(I32, i32, 4),
            6 => fixed!(F32, f32, 4),
            7 => MetaArray::Bool(c.take(count, &what)?.iter().map(|&b| b != 0).collect()),
            8 => {
                // Grown as the strings are actually read: a claimed count alone never
                // reserves more than a little memory.
                let mut v = Vec::with_capacity(n.min(4096));
                for i in 0..n {
                    v.push(c.string(&|| format!("element {i} of array `{key}`"))?);
                }
                MetaArray::String(v)
            }
            10 => fixed!(U64, u64, 8),
            11 => fixed!(I64, i64, 8),
            12 => fixed!(F64, f64, 8),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id: elem,
                });
            }
        })
    }

    pub(super) fn parse(buf: &[u8]) -> Result<Header> {
        let total = buf.len() as u64;
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.array::<4>(&|| "the magic number".to_string())?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32(&|| "the version".to_string())?;
        if version & 0xFFFF == 0 && version != 0 {
            return Err(GgufError::BigEndian { raw: version });
        }
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&|| "the tensor count".to_string())?;
        let n_kv = c.u64(&|| "the metadata count".to_string())?;
        // Each key/value pair takes at least 13 bytes (key length, type, 1-byte value), each
        // tensor info at least 24 (name length, n_dims, type, offset).
        if n_kv.checked_mul(13).is_none_or(|b| b > c.remaining()) {
            return Err(GgufError::AbsurdCount {
                what: "metadata count".to_string(),
                count: n_kv,
                len: total,
            });
        }
        if n_tensors.checked_mul(24).is_none_or(|b| b > c.remaining()) {
            return Err(GgufError::AbsurdCount {
                what: "tensor count".to_string(),
                count: n_tensors,
                len: total,
            });
        }

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let ty = c.u32(&|| format!("type of metadata `{key}`"))?;
            let value = match ty {
                9 => MetaValue::Array(array(&mut c, &key, total)?),
                0..=8 | 10..=12 => scalar(&mut c, ty, &|| format!("value of metadata `{key}`"))?,
                _ => return Err(GgufError::UnknownValueType { key, type_id: ty }),
            };
            if metadata.contains_key(&key) {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                Some(a) => {
                    return Err(GgufError::BadValue {
                        key: "general.alignment".to_string(),
                        reason: format!("{a} is not a power of two"),
                    });
                }
                None => {
                    return Err(GgufError::WrongType {
                        key: "general.alignment".to_string(),
                        expected: "unsigned integer",
                        found: v.type_name(),
                    });
                }
            },
        };

        struct RawInfo {
            name: String,
            dims: Vec<u64>,
            ty: GgmlType,
            offset: u64,
            n_bytes: u64,
        }
        let mut raw = Vec::new();
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let what = || format!("info of tensor `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::BadDims {
                    tensor: name,
                    dims: vec![],
                    reason: format!("{n_dims} dimensions (at most {MAX_DIMS})"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                tensor: name.clone(),
                type_id,
            })?;
            let Some(n) = checked_n_elements(&dims) else {
                return Err(GgufError::BadDims {
                    tensor: name,
                    dims,
                    reason: "the number of elements overflows".to_string(),
                });
            };
            let (block_elems, block_bytes) = ty.block_layout();
            if dims
                .first()
                .is_some_and(|&ne0| ne0 % block_elems as u64 != 0)
            {
                return Err(GgufError::BadDims {
                    tensor: name,
                    dims,
                    reason: format!(
                        "the row length is not a multiple of the {ty} block size {block_elems}"
                    ),
                });
            }
            let Some(n_bytes) = (n / block_elems as u64).checked_mul(block_bytes as u64) else {
                return Err(GgufError::BadDims {
                    tensor: name,
                    dims,
                    reason: "the size in bytes overflows".to_string(),
                });
            };
            if offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            raw.push(RawInfo {
                name,
                dims,
                ty,
                offset,
                n_bytes,
            });
        }

        let header_end = c.pos as u64;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for r in raw {
            let start = data_start.checked_add(r.offset);
            let end = start.and_then(|s| s.checked_add(r.n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= total => tensors.push(TensorInfo {
                    name: r.name,
                    dims: r.dims,
                    ggml_type: r.ty,
                    data: start..end,
                }),
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        tensor: r.name,
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len: total,
                    });
                }
            }
        }
        Ok(Header {
            version,
            alignment,
            data_start,
            metadata,
            tensors,
        })
    }
}

//! The header parser. Every read goes through [`Cursor`], which checks the bytes are there
//! before touching them; every count is checked against the bytes left before anything is
//! allocated for it.

use std::collections::{BTreeMap, HashSet};

use crate::error::{GgufError, Result};
use crate::meta::{self, MetaArray, MetaValue};
use crate::quote::quote;
use crate::types::GgmlType;
use crate::{DEFAULT_ALIGNMENT, MAX_DIMS, TensorInfo};

/// Everything the header says, validated.
pub(crate) struct Header {
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

/// The product of `dims`, if it neither overflows nor exceeds `i64::MAX` (ggml's limit).
pub(crate) fn checked_n_elements(dims: &[u64]) -> Option<u64> {
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
    let what = || format!("array {}", quote(key));
    let elem = c.u32(&what)?;
    let count = c.u64(&what)?;
    if elem == 9 {
        return Err(GgufError::Corrupt(format!(
            "metadata key {}: nested arrays are not supported",
            quote(key)
        )));
    }
    let min = meta::min_encoded_size(elem).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id: elem,
    })?;
    if count.checked_mul(min).is_none_or(|b| b > c.remaining()) {
        return Err(GgufError::AbsurdCount {
            what: format!(
                "length of array {} (of {})",
                quote(key),
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
                v.push(c.string(&|| format!("element {i} of array {}", quote(key)))?);
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

/// Parse and validate a whole GGUF header, and place every tensor's data in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Header> {
    let total = buf.len() as u64;
    let mut c = Cursor { buf, pos: 0 };
    let (version, n_tensors, n_kv) = preamble(&mut c, total)?;
    let metadata = metadata(&mut c, n_kv, total)?;
    let alignment = alignment(&metadata)?;
    let raw = tensor_infos(&mut c, n_tensors, alignment)?;
    let header_end = c.pos as u64;
    let data_start = header_end.div_ceil(alignment) * alignment;
    let tensors = place_tensors(raw, data_start, total)?;
    no_shared_bytes(&tensors)?;
    Ok(Header {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
    })
}

/// Magic, version and the two counts: `(version, n_tensors, n_kv)`.
fn preamble(c: &mut Cursor<'_>, total: u64) -> Result<(u32, u64, u64)> {
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
    for (what, count, min) in [
        ("metadata count", n_kv, 13),
        ("tensor count", n_tensors, 24),
    ] {
        if count.checked_mul(min).is_none_or(|b| b > c.remaining()) {
            return Err(GgufError::AbsurdCount {
                what: what.to_string(),
                count,
                len: total,
            });
        }
    }
    Ok((version, n_tensors, n_kv))
}

/// The `n_kv` key/value pairs.
fn metadata(c: &mut Cursor<'_>, n_kv: u64, total: u64) -> Result<BTreeMap<String, MetaValue>> {
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let ty = c.u32(&|| format!("type of metadata {}", quote(&key)))?;
        let value = match ty {
            9 => MetaValue::Array(array(c, &key, total)?),
            0..=8 | 10..=12 => scalar(c, ty, &|| format!("value of metadata {}", quote(&key)))?,
            _ => return Err(GgufError::UnknownValueType { key, type_id: ty }),
        };
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// `general.alignment` (a power of two), or [`DEFAULT_ALIGNMENT`].
fn alignment(metadata: &BTreeMap<String, MetaValue>) -> Result<u64> {
    let Some(v) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v.as_u64() {
        Some(a) if a.is_power_of_two() => Ok(a),
        Some(a) => Err(GgufError::BadValue {
            key: "general.alignment".to_string(),
            reason: format!("{a} is not a power of two"),
        }),
        None => Err(GgufError::WrongType {
            key: "general.alignment".to_string(),
            expected: "unsigned integer",
            found: v.type_name(),
        }),
    }
}

/// A tensor info as read, its data not yet placed.
struct RawInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    n_bytes: u64,
}

/// The `n_tensors` tensor infos, each validated, names unique.
fn tensor_infos(c: &mut Cursor<'_>, n_tensors: u64, alignment: u64) -> Result<Vec<RawInfo>> {
    let mut raw = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let info = tensor_info(c, i, alignment)?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        raw.push(info);
    }
    Ok(raw)
}

/// Tensor info `i`: its dimensions checked for count, overflow and block alignment, its
/// offset for `alignment`.
fn tensor_info(c: &mut Cursor<'_>, i: u64, alignment: u64) -> Result<RawInfo> {
    let name = c.string(&|| format!("name of tensor {i}"))?;
    let what = || format!("info of tensor {}", quote(&name));
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
    let bad_dims = |name: String, dims: Vec<u64>, reason: String| GgufError::BadDims {
        tensor: name,
        dims,
        reason,
    };
    let Some(n) = checked_n_elements(&dims) else {
        let reason = "the number of elements overflows".to_string();
        return Err(bad_dims(name, dims, reason));
    };
    let (block_elems, block_bytes) = ty.block_layout();
    if dims
        .first()
        .is_some_and(|&ne0| ne0 % block_elems as u64 != 0)
    {
        let reason =
            format!("the row length is not a multiple of the {ty} block size {block_elems}");
        return Err(bad_dims(name, dims, reason));
    }
    let Some(n_bytes) = (n / block_elems as u64).checked_mul(block_bytes as u64) else {
        let reason = "the size in bytes overflows".to_string();
        return Err(bad_dims(name, dims, reason));
    };
    if offset % alignment != 0 {
        return Err(GgufError::Misaligned {
            tensor: name,
            offset,
            alignment,
        });
    }
    Ok(RawInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// Absolute data ranges for the tensors, each checked to lie within the `total` bytes.
fn place_tensors(raw: Vec<RawInfo>, data_start: u64, total: u64) -> Result<Vec<TensorInfo>> {
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
    Ok(tensors)
}

/// No two tensors' data overlap: a tensor's bytes are its own (a writer that points two
/// tensors at the same bytes, or at overlapping ones, wrote a corrupt file). Tensors of no
/// bytes overlap nothing.
fn no_shared_bytes(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<(usize, &TensorInfo)> = tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.data.is_empty())
        .collect();
    order.sort_by_key(|&(i, t)| (t.data.start, i));
    // the tensor reaching furthest so far: any later start before its end overlaps it
    let mut furthest: Option<(usize, &TensorInfo)> = None;
    for (i, t) in order {
        if let Some((j, f)) = furthest
            && t.data.start < f.data.end
        {
            // named in file order
            let (first, second) = if j < i { (f, t) } else { (t, f) };
            return Err(GgufError::OverlappingTensors {
                first: first.name.clone(),
                second: second.name.clone(),
                start: t.data.start,
                end: t.data.end.min(f.data.end),
            });
        }
        if furthest.is_none_or(|(_, f)| t.data.end > f.data.end) {
            furthest = Some((i, t));
        }
    }
    Ok(())
}

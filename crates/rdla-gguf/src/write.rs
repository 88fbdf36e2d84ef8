//! Writing GGUF files (version 3, little-endian, alignment 32) one tensor at a time: the
//! header — metadata and every tensor's name, dimensions, type and offset — first, then each
//! tensor's bytes in the order declared, so a writer never holds more than one tensor (the
//! benchmark's 40 GB checkpoints are written with a tensor's worth of memory).
//!
//! The layout is the one [`crate::GgufFile::open`] reads (see the crate's documentation);
//! every tensor's byte length is checked against its type's block layout as it is written,
//! and [`GgufWriter::finish`] refuses a file with tensors still missing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::meta::{MetaArray, MetaValue};
use crate::types::GgmlType;

/// The data section's alignment this writer uses (GGUF's default; `general.alignment` is not
/// written).
pub const ALIGNMENT: u64 = 32;

/// A tensor to be written: its name, its dimensions fastest-varying first (`ne`: a PyTorch
/// `[out, in]` matrix is `[in, out]`), and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: &[u64], ty: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
        }
    }

    /// Its size in bytes, or why the dimensions do not fit the type's blocks.
    pub fn bytes(&self) -> Result<u64> {
        let (block, size) = self.ty.block_layout();
        let (block, size) = (block as u64, size as u64);
        let row = self.dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(GgufError::Corrupt(format!(
                "tensor {}: a row of {row} values is not whole {} blocks of {block}",
                self.name,
                self.ty.name()
            )));
        }
        let n = self
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| GgufError::Corrupt(format!("tensor {}: too large", self.name)))?;
        Ok(n / block * size)
    }
}

/// `v`'s GGUF value type id and payload.
pub fn encode_value(v: &MetaValue) -> (u32, Vec<u8>) {
    fn array<T>(ty: u32, v: &[T], enc: impl Fn(&T) -> Vec<u8>) -> Vec<u8> {
        let mut p = ty.to_le_bytes().to_vec();
        p.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            p.extend(enc(x));
        }
        p
    }
    match v {
        MetaValue::U8(x) => (0, vec![*x]),
        MetaValue::I8(x) => (1, x.to_le_bytes().to_vec()),
        MetaValue::U16(x) => (2, x.to_le_bytes().to_vec()),
        MetaValue::I16(x) => (3, x.to_le_bytes().to_vec()),
        MetaValue::U32(x) => (4, x.to_le_bytes().to_vec()),
        MetaValue::I32(x) => (5, x.to_le_bytes().to_vec()),
        MetaValue::F32(x) => (6, x.to_le_bytes().to_vec()),
        MetaValue::Bool(x) => (7, vec![u8::from(*x)]),
        MetaValue::String(x) => (8, string_bytes(x)),
        MetaValue::U64(x) => (10, x.to_le_bytes().to_vec()),
        MetaValue::I64(x) => (11, x.to_le_bytes().to_vec()),
        MetaValue::F64(x) => (12, x.to_le_bytes().to_vec()),
        MetaValue::Array(a) => (
            9,
            match a {
                MetaArray::U8(v) => array(0, v, |x| vec![*x]),
                MetaArray::I8(v) => array(1, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::U16(v) => array(2, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::I16(v) => array(3, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::U32(v) => array(4, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::I32(v) => array(5, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::F32(v) => array(6, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::Bool(v) => array(7, v, |x| vec![u8::from(*x)]),
                MetaArray::String(v) => array(8, v, |x| string_bytes(x)),
                MetaArray::U64(v) => array(10, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::I64(v) => array(11, v, |x| x.to_le_bytes().to_vec()),
                MetaArray::F64(v) => array(12, v, |x| x.to_le_bytes().to_vec()),
            },
        ),
    }
}

/// A GGUF string: `u64` length, then the UTF-8 bytes.
pub fn string_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// A GGUF file being written: the header is on disk once [`GgufWriter::create`] returns;
/// [`GgufWriter::write_tensor`] takes each declared tensor's bytes in order.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    tensors: Vec<(TensorSpec, u64)>,
    next: usize,
    written: u64,
}

impl GgufWriter {
    /// Create `path` (refusing one that exists: a writer never replaces a file) and write the
    /// header: `metadata` in the order given, then the tensors' infos.
    pub fn create(
        path: &Path,
        metadata: &[(String, MetaValue)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self> {
        let io = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        let mut sized = Vec::with_capacity(tensors.len());
        for t in tensors {
            let n = t.bytes()?;
            sized.push((t, n));
        }
        let mut h = b"GGUF".to_vec();
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(sized.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            let (ty, payload) = encode_value(v);
            h.extend(string_bytes(k));
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend(payload);
        }
        let mut offset = 0u64;
        for (t, n) in &sized {
            h.extend(string_bytes(&t.name));
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + n).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        h.resize(
            (h.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize,
            0,
        );
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&h).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            tensors: sized,
            next: 0,
            written: 0,
        })
    }

    fn io(&self, error: std::io::Error) -> GgufError {
        GgufError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// The next declared tensor, if any is left.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next).map(|(t, _)| t)
    }

    /// Write the next declared tensor's bytes (exactly its size), padded to the alignment.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let Some((t, n)) = self.tensors.get(self.next) else {
            return Err(GgufError::Corrupt(
                "a tensor written past the ones declared".into(),
            ));
        };
        if data.len() as u64 != *n {
            return Err(GgufError::Corrupt(format!(
                "tensor {}: {} bytes given, its {} {:?} needs {n}",
                t.name,
                data.len(),
                t.ty.name(),
                t.dims
            )));
        }
        let pad = (self.written + n).div_ceil(ALIGNMENT) * ALIGNMENT - (self.written + n);
        self.out.write_all(data).map_err(|e| self.io(e))?;
        self.out
            .write_all(&vec![0u8; pad as usize])
            .map_err(|e| self.io(e))?;
        self.written += n + pad;
        self.next += 1;
        Ok(())
    }

    /// Flush the file; every declared tensor must have been written.
    pub fn finish(mut self) -> Result<()> {
        if let Some((t, _)) = self.tensors.get(self.next) {
            return Err(GgufError::Corrupt(format!(
                "tensor {} (and any after it) was declared but not written",
                t.name
            )));
        }
        self.out.flush().map_err(|e| self.io(e))?;
        let file = self.out.get_ref();
        file.sync_all().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written here reads back through the parser: metadata in order and by value,
    /// every tensor's name, dims, type and bytes (F32, Q8_0 and Q4_K, with the padding between);
    /// a wrong length, a tensor too many, or one missing is refused; an existing file is
    /// never replaced.
    #[test]
    fn a_written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.gguf");
        let meta = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String("llama".into()),
            ),
            ("llama.block_count".to_string(), MetaValue::U32(1)),
            (
                "tokenizer.ggml.tokens".to_string(),
                MetaValue::Array(MetaArray::String(vec!["a".into(), "b".into()])),
            ),
            (
                "tokenizer.ggml.scores".to_string(),
                MetaValue::Array(MetaArray::F32(vec![0.0, -1.5])),
            ),
        ];
        let specs = vec![
            TensorSpec::new("norm", &[3], GgmlType::F32),
            TensorSpec::new("q8", &[64, 2], GgmlType::Q8_0),
            TensorSpec::new("q4k", &[256, 1], GgmlType::Q4_K),
        ];
        let data: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (0..s.bytes().unwrap())
                    .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
                    .collect()
            })
            .collect();
        assert_eq!(data[1].len(), 2 * 2 * 34);
        assert_eq!(data[2].len(), 144);
        let mut w = GgufWriter::create(&path, &meta, specs.clone()).unwrap();
        assert!(w.write_tensor(&data[0][1..]).is_err(), "a short tensor");
        for d in &data {
            w.write_tensor(d).unwrap();
        }
        assert!(w.write_tensor(&data[0]).is_err(), "one too many");
        w.finish().unwrap();

        let f = crate::GgufFile::open(&path).unwrap();
        for (k, v) in &meta {
            assert_eq!(f.metadata().get(k), Some(v), "{k}");
        }
        for (s, d) in specs.iter().zip(&data) {
            let t = f.tensor(&s.name).unwrap();
            assert_eq!(t.ggml_type, s.ty, "{}", s.name);
            assert_eq!(t.dims, s.dims, "{}", s.name);
            assert_eq!(f.tensor_bytes(t).unwrap(), &d[..], "{}", s.name);
        }
        // never over an existing file
        assert!(GgufWriter::create(&path, &meta, specs.clone()).is_err());
        // a tensor declared and not written
        let other = dir.path().join("short.gguf");
        let mut w = GgufWriter::create(&other, &meta, specs).unwrap();
        w.write_tensor(&data[0]).unwrap();
        assert!(w.finish().is_err());
    }
}

//! Shared test helpers: fixture paths and a tiny GGUF writer for hand-made (and broken) files.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(
        // at run time: a test binary built in another checkout sharing the target directory
        // (CI's clone) must read this checkout's files
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../tests/fixtures/gguf")
    .join(name)
}

/// Read a safetensors file of f32 tensors into `(name -> (shape, data))`.
pub fn load_safetensors(name: &str) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}");
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (k, (v.shape().to_vec(), data))
        })
        .collect()
}

/// Assert that `ours` encodes `text` to the same ids as `reference`, with and without
/// special tokens; `label` starts the failure message.
pub fn assert_same_ids(
    ours: &tokenizers::Tokenizer,
    reference: &tokenizers::Tokenizer,
    text: &str,
    label: &str,
) {
    for special in [false, true] {
        let a = ours.encode(text, special).unwrap();
        let b = reference.encode(text, special).unwrap();
        assert_eq!(
            a.get_ids(),
            b.get_ids(),
            "{label}{text:?} (add_special_tokens={special}): {:?} vs {:?}",
            a.get_tokens(),
            b.get_tokens()
        );
    }
}

/// A metadata value for [`Gguf`], already encoded (type id + payload).
pub struct Kv {
    pub key: String,
    pub ty: u32,
    pub payload: Vec<u8>,
}

pub fn string_bytes(s: &str) -> Vec<u8> {
    rdla_gguf::write::string_bytes(s)
}

/// A value of GGUF type `ty`, encoded as `payload`.
fn kv(key: &str, ty: u32, payload: Vec<u8>) -> Kv {
    Kv {
        key: key.into(),
        ty,
        payload,
    }
}

pub fn kv_u32(key: &str, v: u32) -> Kv {
    kv(key, 4, v.to_le_bytes().to_vec())
}

pub fn kv_f32(key: &str, v: f32) -> Kv {
    kv(key, 6, v.to_le_bytes().to_vec())
}

pub fn kv_bool(key: &str, v: bool) -> Kv {
    kv(key, 7, vec![u8::from(v)])
}

pub fn kv_str(key: &str, v: &str) -> Kv {
    kv(key, 8, string_bytes(v))
}

/// An array of `len` elements of GGUF type `elem_ty`, already encoded as `elems`.
fn kv_array(key: &str, elem_ty: u32, len: usize, elems: impl IntoIterator<Item = u8>) -> Kv {
    let mut payload = elem_ty.to_le_bytes().to_vec();
    payload.extend_from_slice(&(len as u64).to_le_bytes());
    payload.extend(elems);
    kv(key, 9, payload)
}

pub fn kv_str_array(key: &str, v: &[&str]) -> Kv {
    kv_array(key, 8, v.len(), v.iter().flat_map(|s| string_bytes(s)))
}

pub fn kv_i32_array(key: &str, v: &[i32]) -> Kv {
    kv_array(key, 5, v.len(), v.iter().flat_map(|x| x.to_le_bytes()))
}

pub fn kv_f32_array(key: &str, v: &[f32]) -> Kv {
    kv_array(key, 6, v.len(), v.iter().flat_map(|x| x.to_le_bytes()))
}

pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

pub fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> Tensor {
    Tensor {
        name: name.into(),
        dims: dims.to_vec(),
        ty: 0,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A GGUF file under construction.
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<Kv>,
    pub tensors: Vec<Tensor>,
}

impl Default for Gguf {
    fn default() -> Self {
        Self {
            version: 3,
            alignment: 32,
            kvs: vec![kv_str("general.architecture", "test")],
            tensors: Vec::new(),
        }
    }
}

/// Where things landed in a built file, for targeted corruption.
#[derive(Debug, Default)]
pub struct Layout {
    /// Offset of each tensor info's u64 data offset field.
    pub tensor_offset_fields: Vec<usize>,
    /// Offset of each tensor info's first dimension.
    pub tensor_dims_fields: Vec<usize>,
    /// Offset of each tensor info's type field.
    pub tensor_type_fields: Vec<usize>,
    /// Offset of each metadata value's payload.
    pub kv_payloads: Vec<usize>,
    pub data_start: usize,
}

impl Gguf {
    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut lay = Layout::default();
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            b.extend(string_bytes(&kv.key));
            b.extend_from_slice(&kv.ty.to_le_bytes());
            lay.kv_payloads.push(b.len());
            b.extend_from_slice(&kv.payload);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            b.extend(string_bytes(&t.name));
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            lay.tensor_dims_fields.push(b.len());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            lay.tensor_type_fields.push(b.len());
            b.extend_from_slice(&t.ty.to_le_bytes());
            lay.tensor_offset_fields.push(b.len());
            b.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        while !(b.len() as u64).is_multiple_of(self.alignment) {
            b.push(0);
        }
        lay.data_start = b.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            while ((b.len() - lay.data_start) as u64) < off {
                b.push(0);
            }
            b.extend_from_slice(&t.data);
        }
        (b, lay)
    }
}

/// `v` encoded as GGUF type id and payload.
fn encode(v: &rdla_gguf::MetaValue) -> (u32, Vec<u8>) {
    rdla_gguf::write::encode_value(v)
}

/// The file `f` written again with its metadata as `edit` leaves it (keys in sorted order)
/// and every tensor (name, dims, type, bytes) as it is.
pub fn rewrite(
    f: &rdla_gguf::GgufFile,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, rdla_gguf::MetaValue>),
) -> Vec<u8> {
    rewrite_with(f, edit, Vec::new())
}

/// [`rewrite`], with `extra` tensors after the file's own.
pub fn rewrite_with(
    f: &rdla_gguf::GgufFile,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, rdla_gguf::MetaValue>),
    extra: Vec<Tensor>,
) -> Vec<u8> {
    let mut meta = f.metadata().clone();
    edit(&mut meta);
    let g = Gguf {
        version: f.version(),
        alignment: f.alignment(),
        kvs: meta
            .iter()
            .map(|(k, v)| {
                let (ty, payload) = encode(v);
                kv(k, ty, payload)
            })
            .collect(),
        tensors: f
            .tensors()
            .iter()
            .map(|t| Tensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ggml_type.id(),
                data: f.tensor_bytes(t).unwrap().to_vec(),
            })
            .chain(extra)
            .collect(),
    };
    g.build()
}

/// A fixture (`{name}.gguf`) with its metadata edited by `edit`, opened from memory.
pub fn edited(
    name: &str,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, rdla_gguf::MetaValue>),
) -> rdla_gguf::GgufFile {
    let f = rdla_gguf::GgufFile::open(&fixture(&format!("{name}.gguf"))).unwrap();
    rdla_gguf::GgufFile::from_bytes(rewrite(&f, edit)).unwrap()
}

//! Reading checkpoint tensors as `f32`, whatever the file format: `model.safetensors`,
//! sharded safetensors with `model.safetensors.index.json`, or `pytorch_model.bin`.
//! Files are opened read-only; nothing is ever written. A safetensors file is memory-mapped
//! to validate its header, and tensor data is read in chunks with positioned reads, so the
//! file's pages never count towards the process's resident memory (only the `f32` copy does).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{ModelError, Result, io_err};

/// A dense row-major `f32` tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// An empty tensor standing for one of `shape` that was not read (a token matrix left on
    /// disk, or a block's MLP when only its attention is needed).
    pub fn placeholder(shape: Vec<usize>) -> Self {
        Self {
            shape,
            data: Vec::new(),
        }
    }

    /// Whether this stands for a tensor that was not read ([`HostTensor::placeholder`]).
    pub fn is_placeholder(&self) -> bool {
        self.data.is_empty() && self.shape.iter().product::<usize>() > 0
    }

    /// Element at a full multi-index.
    pub fn at(&self, idx: &[usize]) -> f32 {
        let mut flat = 0;
        for (i, &n) in idx.iter().zip(&self.shape) {
            flat = flat * n + i;
        }
        self.data[flat]
    }

    /// Nested JSON arrays.
    pub fn to_json(&self) -> serde_json::Value {
        fn rec(shape: &[usize], data: &[f32]) -> serde_json::Value {
            if shape.len() <= 1 {
                return serde_json::Value::from(
                    data.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                );
            }
            let stride: usize = shape[1..].iter().product();
            serde_json::Value::Array(
                data.chunks(stride.max(1))
                    .take(shape[0])
                    .map(|c| rec(&shape[1..], c))
                    .collect(),
            )
        }
        rec(&self.shape, &self.data)
    }
}

/// Loading progress reported to a callback: bytes of tensor data read so far and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Progress callback; returning `false` cancels the load.
pub type ProgressFn<'a> = dyn FnMut(LoadProgress) -> bool + 'a;

#[derive(Debug, Clone)]
enum Location {
    Safetensors {
        file: usize,
        dtype: safetensors::Dtype,
        start: usize,
        end: usize,
    },
    Pytorch {
        dtype: pytorch_reader::DType,
    },
    /// Tensor `index` of the GGUF file's HF view (dequantised, layout changes undone).
    Gguf {
        index: usize,
    },
}

/// A GGUF file read as the Hugging Face checkpoint it was converted from.
struct GgufSource {
    file: Arc<rdla_gguf::GgufFile>,
    tensors: Vec<rdla_gguf::HfTensor>,
}

#[derive(Debug, Clone)]
struct Entry {
    shape: Vec<usize>,
    loc: Location,
    nbytes: u64,
}

/// Bytes read per chunk when converting tensor data.
const READ_CHUNK: usize = 4 << 20;

/// One safetensors file: its path, and a handle for positioned reads.
struct SfFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// An open checkpoint: the tensor index, and the files behind it.
pub struct WeightStore {
    /// What was opened, for messages.
    pub description: String,
    files: Vec<SfFile>,
    torch: HashMap<String, pytorch_reader::Tensor>,
    torch_path: PathBuf,
    entries: BTreeMap<String, Entry>,
    gguf: Option<GgufSource>,
    /// Every file that makes up the checkpoint.
    pub paths: Vec<PathBuf>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("description", &self.description)
            .field("tensors", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// `key` is not in the checkpoint (under that one spelling).
pub(crate) fn missing(key: &str) -> ModelError {
    ModelError::MissingTensor {
        key: key.to_string(),
        tried: vec![key.to_string()],
    }
}

/// Memory-map a file read-only.
#[allow(unsafe_code)] // memory-mapping is the only way to read multi-GB checkpoints without copying them
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only and private to this process; a checkpoint file being
    // truncated by another process while rdla runs is outside what we can guard against,
    // the same contract every safetensors reader has.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))
}

fn safetensors_src(dtype: safetensors::Dtype) -> Option<SrcType> {
    use safetensors::Dtype as D;
    match dtype {
        D::F32 => Some(SrcType::F32),
        D::F16 => Some(SrcType::F16),
        D::BF16 => Some(SrcType::Bf16),
        D::F64 => Some(SrcType::F64),
        _ => None,
    }
}

/// Read bytes `[start, end)` of a safetensors file in chunks, converting to `f32` as it goes.
fn read_converted(
    sf: &SfFile,
    start: usize,
    end: usize,
    src: SrcType,
    n: usize,
) -> Result<Vec<f32>> {
    let io = |error| ModelError::Io {
        path: sf.path.clone(),
        error,
    };
    let mut out = Vec::with_capacity(n);
    let chunk = READ_CHUNK - READ_CHUNK % src.size();
    let mut buf = vec![0u8; chunk.min(end - start)];
    let mut file = sf
        .file
        .lock()
        .map_err(|_| ModelError::Device("weight file lock poisoned".into()))?;
    file.seek(SeekFrom::Start(start as u64)).map_err(io)?;
    let mut off = start;
    while off < end {
        let len = chunk.min(end - off);
        file.read_exact(&mut buf[..len]).map_err(io)?;
        convert_into(&buf[..len], src, &mut out);
        off += len;
    }
    Ok(out)
}

/// The canonical `blobs/` folder of the Hugging Face cache repository whose snapshot `dir`
/// is (`…/models--org--name/snapshots/<revision>`), if it is one.
fn hf_cache_blobs(dir: &Path) -> Option<PathBuf> {
    let snapshots = dir.parent()?;
    let repo = snapshots.parent()?;
    let is_repo = repo
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("models--"));
    if snapshots.file_name()? != "snapshots" || !is_repo {
        return None;
    }
    repo.join("blobs").canonicalize().ok()
}

impl WeightStore {
    /// Find and open the weights in a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        if single.is_file() {
            Self::open_safetensors(vec![single])
        } else if index.is_file() {
            Self::open_sharded(&index)
        } else if bin.is_file() {
            Self::open_pytorch(&bin)
        } else {
            Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    fn open_sharded(index: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(index).map_err(io_err(index))?;
        let idx: Index = serde_json::from_str(&text).map_err(|e| ModelError::ShardIndex {
            path: index.to_path_buf(),
            reason: e.to_string(),
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let bad = |reason: String| ModelError::ShardIndex {
            path: index.to_path_buf(),
            reason,
        };
        let mut shards: Vec<String> = idx.weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        if shards.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        // shards live in the model folder: a plain file name, resolved inside it (no absolute
        // paths, no `..`, no link leading out of the folder, except, in a Hugging Face cache
        // snapshot, into the same repository's `blobs/`, where the cache keeps every file)
        let root = dir.canonicalize().map_err(io_err(dir))?;
        let blobs = hf_cache_blobs(dir).or_else(|| hf_cache_blobs(&root));
        let mut paths = Vec::with_capacity(shards.len());
        for s in &shards {
            let plain = Path::new(s)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(bad(format!(
                    "shard `{s}` is not a file name inside the model folder"
                )));
            }
            let p = dir.join(s);
            if !p.is_file() {
                return Err(bad(format!("shard {} is missing", p.display())));
            }
            let real = p.canonicalize().map_err(io_err(&p))?;
            if !real.starts_with(&root) && !blobs.as_ref().is_some_and(|b| real.starts_with(b)) {
                return Err(bad(format!(
                    "shard `{s}` resolves to {}, outside the model folder",
                    real.display()
                )));
            }
            paths.push(p);
        }
        let mut store = Self::open_safetensors(paths)?;
        for (key, shard) in &idx.weight_map {
            let in_shard = match store.entries.get(key) {
                Some(Entry {
                    loc: Location::Safetensors { file, .. },
                    ..
                }) => shards.get(*file) == Some(shard),
                _ => false,
            };
            if !in_shard {
                return Err(bad(format!(
                    "`{key}` is listed in {shard} but not stored there"
                )));
            }
        }
        store.description = format!("{} safetensors shards", store.files.len());
        Ok(store)
    }

    /// Open one or more safetensors files as one store.
    pub fn open_safetensors(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let map = map_file(path)?;
            // the header is validated on the map; the data pages are never touched through it
            let bad = |reason: String| ModelError::Safetensors {
                path: path.clone(),
                reason,
            };
            // `deserialize` validates the header against the buffer: a truncated file fails here.
            safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if let Some(Entry {
                    loc: Location::Safetensors { file, .. },
                    ..
                }) = entries.get(&name)
                {
                    return Err(bad(format!(
                        "tensor `{name}` is also stored in {}: a checkpoint must store each tensor once",
                        paths[*file].display()
                    )));
                }
                entries.insert(
                    name.clone(),
                    Entry {
                        shape: info.shape.clone(),
                        loc: Location::Safetensors {
                            file: i,
                            dtype: info.dtype,
                            start: base + s,
                            end: base + e,
                        },
                        nbytes: (e - s) as u64,
                    },
                );
            }
            drop(map);
            let file = File::open(path).map_err(io_err(path))?;
            files.push(SfFile {
                path: path.clone(),
                file: Mutex::new(file),
            });
        }
        Ok(Self {
            description: "model.safetensors".into(),
            files,
            torch: HashMap::new(),
            torch_path: PathBuf::new(),
            entries,
            gguf: None,
            paths,
        })
    }

    /// Open a PyTorch zip/pickle checkpoint.
    pub fn open_pytorch(path: &Path) -> Result<Self> {
        let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| ModelError::Pytorch {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let torch = reader.into_tensors();
        let mut entries = BTreeMap::new();
        for (name, t) in &torch {
            entries.insert(
                name.clone(),
                Entry {
                    shape: t.shape().to_vec(),
                    loc: Location::Pytorch { dtype: t.dtype() },
                    nbytes: t.byte_len() as u64,
                },
            );
        }
        Ok(Self {
            description: "pytorch_model.bin".into(),
            files: Vec::new(),
            torch,
            torch_path: path.to_path_buf(),
            entries,
            gguf: None,
            paths: vec![path.to_path_buf()],
        })
    }

    /// Open a GGUF file: its tensors under their Hugging Face names and layouts
    /// (dequantised to `f32` when read).
    pub fn open_gguf(file: rdla_gguf::GgufFile) -> Result<Self> {
        let tensors = file.hf_tensors()?;
        let entries = tensors
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let nbytes = file
                    .tensors()
                    .get(t.source)
                    .map_or(0, |s| file.tensor_bytes(s).map_or(0, |b| b.len() as u64));
                (
                    t.name.clone(),
                    Entry {
                        shape: t.shape.clone(),
                        loc: Location::Gguf { index },
                        nbytes,
                    },
                )
            })
            .collect();
        Ok(Self {
            description: format!(
                "{} (GGUF v{}, {})",
                file.path()
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                file.version(),
                file.quantization_summary()
            ),
            paths: vec![file.path().to_path_buf()],
            files: Vec::new(),
            torch: HashMap::new(),
            torch_path: PathBuf::new(),
            entries,
            gguf: Some(GgufSource {
                file: Arc::new(file),
                tensors,
            }),
        })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// Bytes of tensor data behind `key`.
    pub fn nbytes(&self, key: &str) -> u64 {
        self.entries.get(key).map_or(0, |e| e.nbytes)
    }

    /// The file and element type of a safetensors tensor of `n` elements stored in `len`
    /// bytes: its dtype must convert to `f32` and its bytes hold exactly `n` elements.
    fn safetensors_span(
        &self,
        key: &str,
        n: usize,
        file: usize,
        dtype: safetensors::Dtype,
        len: usize,
    ) -> Result<(&SfFile, SrcType)> {
        let sf = self.files.get(file).ok_or_else(|| missing(key))?;
        let src = safetensors_src(dtype).ok_or_else(|| ModelError::UnsupportedDtype {
            key: key.to_string(),
            dtype: format!("{dtype:?}"),
        })?;
        if len != n * src.size() {
            return Err(ModelError::Safetensors {
                path: sf.path.clone(),
                reason: format!("tensor `{key}` has {len} bytes for {n} elements"),
            });
        }
        Ok((sf, src))
    }

    /// Read one tensor, converting it to `f32`.
    pub fn read_f32(&self, key: &str) -> Result<HostTensor> {
        let entry = self.entries.get(key).ok_or_else(|| missing(key))?;
        let n: usize = entry.shape.iter().product();
        let data = match &entry.loc {
            Location::Safetensors {
                file,
                dtype,
                start,
                end,
            } => {
                let (sf, src) = self.safetensors_span(key, n, *file, *dtype, *end - *start)?;
                read_converted(sf, *start, *end, src, n)?
            }
            Location::Pytorch { dtype } => {
                let t = self.torch.get(key).ok_or_else(|| missing(key))?;
                let bytes = t.read().map_err(|e| ModelError::Pytorch {
                    path: self.torch_path.clone(),
                    reason: e.to_string(),
                })?;
                use pytorch_reader::DType as D;
                let src = match dtype {
                    D::F32 => SrcType::F32,
                    D::F16 => SrcType::F16,
                    D::BF16 => SrcType::Bf16,
                    D::F64 => SrcType::F64,
                    other => {
                        return Err(ModelError::UnsupportedDtype {
                            key: key.to_string(),
                            dtype: format!("{other:?}"),
                        });
                    }
                };
                let mut out = Vec::with_capacity(n);
                convert_into(&bytes, src, &mut out);
                out
            }
            Location::Gguf { index } => {
                let g = self.gguf.as_ref().ok_or_else(|| missing(key))?;
                let t = g.tensors.get(*index).ok_or_else(|| missing(key))?;
                let data = g.file.read_hf(t)?;
                if data.len() != n {
                    return Err(ModelError::WrongShape {
                        key: key.to_string(),
                        expected: entry.shape.clone(),
                        actual: vec![data.len()],
                    });
                }
                data
            }
        };
        // a branch-free fold vectorises; `any` with its early exit does not
        if !data.iter().fold(true, |ok, v| ok & v.is_finite()) {
            return Err(ModelError::NonFinite {
                key: key.to_string(),
            });
        }
        Ok(HostTensor::new(entry.shape.clone(), data))
    }
}

/// A `[rows, cols]` matrix read a block of rows at a time from where it lies (a
/// memory-mapped safetensors file, or a GGUF file's blocks), converted to `f32` as read: an
/// embedding or an `lm_head` without a resident `f32` copy.
#[derive(Clone)]
pub struct RowReader {
    key: String,
    rows: usize,
    cols: usize,
    src: RowSrc,
}

#[derive(Clone)]
enum RowSrc {
    Mapped {
        map: Arc<memmap2::Mmap>,
        path: PathBuf,
        start: usize,
        ty: SrcType,
    },
    Gguf {
        file: Arc<rdla_gguf::GgufFile>,
        tensor: rdla_gguf::HfTensor,
    },
}

impl std::fmt::Debug for RowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowReader")
            .field("key", &self.key)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl RowReader {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored key, for messages.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Drop the mapped pages read so far from this process's resident memory (after a pass
    /// over every row: they would otherwise count as the process's own memory).
    pub fn release_pages(&self) {
        match &self.src {
            RowSrc::Mapped { map, .. } => rdla_gguf::release_map_pages(map),
            RowSrc::Gguf { file, .. } => file.release_pages(),
        }
    }

    /// Bytes of the matrix as stored.
    pub fn stored_bytes(&self) -> u64 {
        match &self.src {
            RowSrc::Mapped { ty, .. } => (self.rows * self.cols * ty.size()) as u64,
            RowSrc::Gguf { file, tensor } => file
                .tensors()
                .get(tensor.source)
                .map_or(0, |t| file.tensor_bytes(t).map_or(0, |b| b.len() as u64)),
        }
    }

    /// Rows `r` as `f32` (row-major, `cols` each) handed to `f`: in place when they are
    /// stored as aligned little-endian `f32` (no copy), else converted into `scratch`.
    pub fn with_rows<R>(
        &self,
        r: Range<usize>,
        scratch: &mut Vec<f32>,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R> {
        if let RowSrc::Mapped {
            map,
            start,
            ty: SrcType::F32,
            ..
        } = &self.src
            && cfg!(target_endian = "little")
            && r.start <= r.end
            && r.end <= self.rows
        {
            let row = self.cols * 4;
            if let Some(Ok(rows)) = map
                .get(start + r.start * row..start + r.end * row)
                .map(bytemuck::try_cast_slice::<u8, f32>)
            {
                return Ok(f(rows));
            }
        }
        scratch.clear();
        self.read(r, scratch)?;
        Ok(f(scratch))
    }

    /// Append rows `r` (row-major, `cols` each) to `out`.
    pub fn read(&self, r: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        if r.start > r.end || r.end > self.rows {
            return Err(ModelError::WrongShape {
                key: format!("{} rows {r:?}", self.key),
                expected: vec![self.rows, self.cols],
                actual: vec![r.end, self.cols],
            });
        }
        match &self.src {
            RowSrc::Mapped {
                map,
                path,
                start,
                ty,
            } => {
                let row = self.cols * ty.size();
                let bytes = map
                    .get(start + r.start * row..start + r.end * row)
                    .ok_or_else(|| ModelError::Safetensors {
                        path: path.clone(),
                        reason: format!("tensor `{}` lies past the end of the file", self.key),
                    })?;
                convert_into(bytes, *ty, out);
                Ok(())
            }
            RowSrc::Gguf { file, tensor } => match file.read_hf_rows(tensor, r, out) {
                Some(res) => Ok(res?),
                None => Err(missing(&self.key)),
            },
        }
    }
}

impl WeightStore {
    /// Whether 2-D tensors can generally be read where they lie ([`WeightStore::rows`]): not
    /// for a PyTorch checkpoint.
    pub fn reads_rows_in_place(&self) -> bool {
        self.torch.is_empty()
    }

    /// A reader for the rows of the 2-D tensor `key` where it lies, when its storage allows
    /// one: safetensors in f32/f16/bf16/f64, or GGUF rows of whole blocks with no layout change.
    /// `None` for PyTorch checkpoints and other layouts (those are read whole).
    pub fn rows(&self, key: &str) -> Option<RowReader> {
        let entry = self.entries.get(key)?;
        let [rows, cols] = entry.shape[..] else {
            return None;
        };
        let src = match &entry.loc {
            Location::Safetensors {
                file,
                dtype,
                start,
                end,
            } => {
                let (sf, ty) = self
                    .safetensors_span(key, rows * cols, *file, *dtype, *end - *start)
                    .ok()?;
                RowSrc::Mapped {
                    map: Arc::new(map_file(&sf.path).ok()?),
                    path: sf.path.clone(),
                    start: *start,
                    ty,
                }
            }
            Location::Pytorch { .. } => return None,
            Location::Gguf { index } => {
                let g = self.gguf.as_ref()?;
                let tensor = g.tensors.get(*index)?.clone();
                if !g.file.has_hf_rows(&tensor) {
                    return None;
                }
                RowSrc::Gguf {
                    file: Arc::clone(&g.file),
                    tensor,
                }
            }
        };
        Some(RowReader {
            key: key.to_string(),
            rows,
            cols,
            src,
        })
    }
}

#[derive(Clone, Copy)]
enum SrcType {
    F32,
    F16,
    Bf16,
    F64,
}

impl SrcType {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::F64 => 8,
        }
    }
}

/// Append little-endian bytes as `f32` (the checkpoint formats are little-endian).
fn convert_into(bytes: &[u8], src: SrcType, out: &mut Vec<f32>) {
    match src {
        SrcType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        SrcType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        SrcType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        SrcType::F64 => {
            out.extend(bytes.chunks_exact(8).map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
    }
}

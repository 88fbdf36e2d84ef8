//! The processed model on a Burn device: its weights, loading, and (in [`forward`] and
//! [`cache`]) its forward pass and the activation cache it leaves.

pub mod ablate;
pub mod blocks;
pub mod cache;
pub mod forward;
pub mod layer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};

use crate::arch::{self, Canonical};
use crate::config::{self, ModelConfig};
use crate::error::{ModelError, Result, io_err};
use crate::process::{self, Processing};
use crate::rotary::LayerRotary;
use crate::tokenizer::Tokenizer;
use crate::vocab::{Extremes, StoredVocab, Unembedding, VocabProcessing, VocabSketch};
use crate::weights::{HostTensor, ProgressFn, WeightStore};

pub use blocks::{Blocks, Deferred, LayerSource, LayerStream, MlpBlocks, Part};
pub use cache::Cache;
pub use forward::{BatchRun, Observer};

/// Processed weights, stacked over layers (TransformerLens layout with a leading layer axis).
#[derive(Debug, Clone)]
pub struct Weights {
    /// `[V, d]`, when resident (else the embedding's rows are read where they lie through
    /// [`Weights::w_u`]'s [`Unembedding::Stored`]).
    pub w_e: Option<Tensor<2>>,
    /// `[n_ctx, d]` (learned positions only)
    pub w_pos: Option<Tensor<2>>,
    /// `[d]` each, present only when not folded.
    pub ln_f: Option<(Tensor<1>, Tensor<1>)>,
    /// The blocks, held or streamed ([`Model::blocks`] reads a range of them).
    pub layers: Arc<LayerSource>,
    /// `[d, V]`
    pub w_u: Unembedding,
    /// `[V]`
    pub b_u: Tensor<1>,
}

/// Move a host tensor onto the device (zero-copy on the CPU backend).
fn upload<const D: usize>(t: HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data, t.shape), device)
}

impl Weights {
    /// Upload the processed model-wide tensors and the stacked blocks; token matrices left
    /// on disk (`stored`) stay there.
    fn upload(
        c: Canonical,
        layers: LayerSource,
        stored: Option<StoredVocab>,
        device: &Device,
    ) -> Self {
        let (w_e, w_u, b_u) = match stored {
            Some(s) => {
                let v = s.b_u().len();
                let b_u = Tensor::from_data(TensorData::new(s.b_u().to_vec(), [v]), device);
                (None, Unembedding::Stored(Arc::new(s)), b_u)
            }
            None => (
                Some(upload(c.w_e, device)),
                Unembedding::Resident(upload(c.w_u, device)),
                upload(c.b_u, device),
            ),
        };
        Self {
            w_e,
            w_pos: c.w_pos.map(|t| upload(t, device)),
            ln_f: c.ln_f.map(|ln| {
                let d = ln.w.len();
                (
                    Tensor::from_data(TensorData::new(ln.w, [d]), device),
                    Tensor::from_data(TensorData::new(ln.b, [d]), device),
                )
            }),
            layers: Arc::new(layers),
            w_u,
            b_u,
        }
    }
}

/// A loaded model: config, tokenizer and processed weights on a device.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub processing: Processing,
    pub tokenizer: Tokenizer,
    pub weights: Weights,
    pub device: Device,
    /// The model directory.
    pub dir: PathBuf,
    /// A short display name (the directory's name, or the HF repo name in a cache).
    pub name: String,
    /// Which weight files were read.
    pub weights_source: String,
    /// Bytes of the weight files on disk.
    pub disk_bytes: u64,
    /// What rdla must never write into: the model's folder (or its file, for a single-file
    /// model).
    pub protected: Vec<PathBuf>,
    /// The weight files read.
    pub files: Vec<PathBuf>,
    /// The quantised copy of `W_U` that narrows vocabulary readouts on the CPU, built on
    /// first use.
    vocab_sketch: OnceLock<VocabSketch>,
    /// The runs of the tokens recent batches started with ([`Model::run_batch_whole`] runs
    /// a batch's common opening once, and the rest of each prompt against its keys and
    /// values): the most recent [`forward::PREFIX_RUNS`] (their caches within 64 MiB), by
    /// their tokens.
    prefix_runs: std::sync::Mutex<Vec<(Vec<u32>, Arc<Cache>)>>,
}

/// Whether `path` is a GGUF file: by its magic bytes, so Ollama's blobs (`sha256-…`, no
/// extension) count too.
pub fn is_gguf(path: &Path) -> bool {
    matches!(rdla_gguf::identify(path), Ok(rdla_gguf::FileKind::Gguf))
}

/// What [`Model::load`] reads for a path the user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A single GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder.
    Folder(PathBuf),
}

/// Whether `path` ends in `.gguf` (any case).
fn has_gguf_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
}

/// What to load for `path`:
///
/// * a file that is a GGUF file (by its magic) is that GGUF model;
/// * any other file named `.gguf`, or a file whose folder has no `config.json` and that is
///   recognisably not a model (empty, too short, zeros from an interrupted download, an old
///   GGML/GGJT file, an image, a web page, …) is [`ModelError::NotAModel`], saying what it is;
/// * a folder with a `config.json`, or any other file (one inside a model folder), is the
///   Hugging Face model in that folder;
/// * a folder without `config.json` holding exactly one `.gguf` file (LM Studio's layout;
///   vision projectors, `mmproj*.gguf`, aside) is that file; several are
///   [`ModelError::SeveralGguf`], listing them.
pub fn locate_model(path: &Path) -> Result<ModelLocation> {
    if path.is_dir() {
        if path.join("config.json").exists() {
            return Ok(ModelLocation::Folder(path.to_path_buf()));
        }
        let mut ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                has_gguf_extension(p)
                    && p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("mmproj"))
            })
            .collect();
        ggufs.sort();
        return match ggufs.as_slice() {
            [] => Ok(ModelLocation::Folder(path.to_path_buf())),
            [one] => locate_model(one),
            _ => Err(ModelError::SeveralGguf {
                dir: path.to_path_buf(),
                files: ggufs
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect(),
            }),
        };
    }
    if !path.is_file() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    let kind = rdla_gguf::identify(path).map_err(io_err(path))?;
    if kind == rdla_gguf::FileKind::Gguf {
        return Ok(ModelLocation::Gguf(path.to_path_buf()));
    }
    let dir = model_dir(path)?;
    let beside_config = dir.join("config.json").exists();
    if has_gguf_extension(path) || (!beside_config && kind.is_recognised()) {
        return Err(ModelError::NotAModel {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(ModelLocation::Folder(dir))
}

/// Resolve a user-supplied path (a directory, or any file inside one) to the model directory.
pub fn model_dir(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        Ok(path.to_path_buf())
    } else if path.is_file() {
        Ok(path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf))
    } else {
        Err(ModelError::NotFound(path.to_path_buf()))
    }
}

/// Read and validate `config.json` in `dir`.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ModelError::NoConfig {
            dir: dir.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::ConfigJson { path, source })?;
    config::from_value(&value)
}

/// The most folder entries [`protected_paths`] resolves (a model folder holds a handful).
const MAX_PROTECTED_ENTRIES: usize = 10_000;

/// What exports must never write into: the model folder (as given and canonical), and the
/// canonical path of every file in it and of every weight file read. A Hugging Face cache
/// snapshot's files are links into the repository's `blobs/`, so protecting the snapshot
/// folder alone left the weights writable through their blob paths.
pub fn protected_paths(dir: Option<&Path>, files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for f in files {
        add(f.clone());
        if let Ok(real) = f.canonicalize() {
            add(real);
        }
    }
    if let Some(dir) = dir {
        add(dir.to_path_buf());
        if let Ok(real) = dir.canonicalize() {
            add(real);
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            // files only: a link to some other folder must not fence that folder off
            for e in entries.take(MAX_PROTECTED_ENTRIES).flatten() {
                let p = e.path();
                if p.is_file()
                    && let Ok(real) = p.canonicalize()
                {
                    add(real);
                }
            }
        }
    }
    out
}

fn display_name(dir: &Path) -> String {
    // HF cache layout: .../models--org--name/snapshots/<hash>
    let parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(i) = parts.iter().rposition(|p| p == "snapshots")
        && i >= 1
        && let Some(repo) = parts[i - 1].strip_prefix("models--")
    {
        return repo.replacen("--", "/", 1);
    }
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl Model {
    /// Load a Hugging Face model directory (or a file inside one) onto `device`.
    pub fn load(
        path: &Path,
        device: &Device,
        processing: Processing,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Self> {
        let dir = match locate_model(path)? {
            ModelLocation::Gguf(file) => {
                return Self::load_gguf(&file, device, processing, progress);
            }
            ModelLocation::Folder(dir) => dir,
        };
        let config = read_config(&dir)?;
        let tokenizer = Tokenizer::from_dir(&dir, config.bos_token_id)?;
        let store = WeightStore::open_dir(&dir)?;
        Self::from_store(&dir, config, tokenizer, store, device, processing, progress)
    }

    /// Load a single GGUF file (llama.cpp's format: Ollama, LM Studio): its metadata becomes
    /// the Hugging Face config, its tensors are dequantised to `f32` under their HF names,
    /// its vocabulary becomes a `tokenizer.json`. The file is only read.
    pub fn load_gguf(
        path: &Path,
        device: &Device,
        processing: Processing,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Self> {
        let file = rdla_gguf::GgufFile::open(path)?;
        let config = config::from_value(&file.hf_config()?)?;
        let tokenizer = Tokenizer::from_json(&file.tokenizer_json()?, config.bos_token_id, path)?;
        let store = WeightStore::open_gguf(file)?;
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut model =
            Self::from_store(&dir, config, tokenizer, store, device, processing, progress)?;
        model.name = path
            .file_stem()
            .map_or_else(|| model.name.clone(), |s| s.to_string_lossy().into_owned());
        model.dir = path.to_path_buf();
        model.protected = protected_paths(None, &[path.to_path_buf()]);
        Ok(model)
    }

    /// Build from an already-open checkpoint.
    pub fn from_store(
        dir: &Path,
        config: ModelConfig,
        tokenizer: Tokenizer,
        store: WeightStore,
        device: &Device,
        processing: Processing,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Self> {
        // Each block is processed and packed as soon as it is read, so the host holds the
        // packed model plus one block, never a second full copy. On the CPU the token matrices
        // stay where they lie when their rows can be read there. A model whose processed
        // blocks do not fit the budget (with room for a prompt) reads no block now: its
        // layers stream, each read where it lies when it is used.
        let leave = *device == Device::flex();
        let in_place = leave && store.reads_rows_in_place();
        let gpu = !leave;
        let stream = crate::memory::should_stream(&config, in_place, gpu);
        let model = || {
            format!(
                "this {} ({} layers, d_model {}, vocabulary {}) in f32",
                config.family.hf_class(),
                config.n_layers,
                config.d_model,
                config.d_vocab
            )
        };
        if stream {
            crate::memory::check_budget(
                || format!("streaming the layers of {}", model()),
                crate::memory::global_bytes(&config, in_place)
                    + 2 * crate::memory::block_bytes(&config),
                0,
                gpu,
            )?;
        } else {
            crate::memory::check_budget(
                || format!("loading {}", model()),
                crate::memory::model_bytes(&config, in_place),
                0,
                gpu,
            )?;
        }
        let processing = processing.for_config(&config);
        let norm = config.norm;
        // no block is read now: a model that fits reads them all when a layer is first used
        // (`LayerSource::Deferred`), one that does not reads each when it is used
        let mut canon = arch::load_streaming(
            &config,
            &store,
            progress,
            &mut |_| {
                Err(ModelError::Device(
                    "a block was read while opening the model".into(),
                ))
            },
            leave,
            true,
        )?;
        let vocab_proc = VocabProcessing {
            embed_scale: canon.embed_scale,
            centre_embed: processing.center_writing_weights
                && processing.fold_ln
                && norm == crate::config::Norm::LayerNorm,
            fold: canon
                .ln_f
                .as_ref()
                .filter(|_| processing.fold_ln)
                .map(|ln| (ln.w.clone(), ln.b.clone())),
            centre_cols: processing.fold_ln
                && canon.ln_f.is_some()
                && norm == crate::config::Norm::LayerNorm,
            centre_vocab: processing.center_unembed,
        };
        let stored = match &canon.stored {
            Some(keys) => {
                let reader =
                    |key: &str| store.rows(key).ok_or_else(|| crate::weights::missing(key));
                let lm_head = keys.lm_head.as_deref().map(reader).transpose()?;
                Some(StoredVocab::open(
                    reader(&keys.embed)?,
                    lm_head,
                    vocab_proc,
                )?)
            }
            None => None,
        };
        process::process_globals(&mut canon, processing, norm);
        let (description, paths) = (store.description.clone(), store.paths.clone());
        // block 0 is read (and kept), the others' tensors checked from the header
        let first = arch::read_layer_checking_others(&config, &store)?;
        let layers = if stream {
            let capacity = crate::memory::layer_capacity(&config, in_place, 0, gpu);
            let stream = LayerStream::new(
                Arc::new(store),
                config.clone(),
                processing,
                device.clone(),
                capacity,
            );
            stream.insert(0, stream.prepare(first));
            LayerSource::Streamed(Box::new(stream))
        } else {
            LayerSource::Deferred(Box::new(Deferred::new(
                Arc::new(store),
                config.clone(),
                processing,
                device.clone(),
                first,
            )))
        };
        let weights = Weights::upload(canon, layers, stored, device);
        Ok(Self {
            name: display_name(dir),
            dir: dir.to_path_buf(),
            weights_source: description,
            disk_bytes: paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum(),
            protected: protected_paths(Some(dir), &paths),
            files: paths,
            config,
            processing,
            tokenizer,
            weights,
            device: device.clone(),
            vocab_sketch: OnceLock::new(),
            prefix_runs: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The `k` tokens the vector `c` (`[d]`, on the host, already centred and scaled as a
    /// final-norm input) writes most and least: `c · W_U`'s extremes, exactly. On the CPU a
    /// quantised sketch of `W_U` (built on first use) narrows the candidates, so a readout
    /// reads a quarter of the bytes ([`crate::vocab`]); on a GPU it is the full product.
    pub fn vocab_extremes(&self, c: &[f32], k: usize) -> Result<Extremes> {
        let sketch = if self.on_cpu() {
            // two threads racing here build the same sketch; one is kept
            self.prepare_vocab_readouts()?;
            self.vocab_sketch.get()
        } else {
            None
        };
        crate::vocab::extremes(c, &self.weights.w_u, sketch, k)
    }

    /// Build what vocabulary readouts use on the CPU (the `i8` sketch of `W_U`, one pass over
    /// the unembedding) now, so that the first readout does not wait for it. The explorer
    /// calls this on its worker once a computation is on screen and nothing else is asked.
    pub fn prepare_vocab_readouts(&self) -> Result<()> {
        if self.on_cpu() && self.vocab_sketch.get().is_none() {
            let _ = self
                .vocab_sketch
                .set(VocabSketch::build(&self.weights.w_u)?);
        }
        Ok(())
    }

    /// Check a token sequence fits the model (and its cache the budget, spilled to a file if
    /// need be: [`Model::plan_prompt`]; or, on a resident model, with its layers streamed:
    /// [`Model::plan_prompt_or_stream`]).
    pub fn check_tokens(&self, ids: &[u32]) -> Result<()> {
        match self.plan_prompt(ids) {
            Err(ModelError::OverBudget { .. } | ModelError::OutOfMemory { .. })
                if self.can_stream_for(ids.len()) =>
            {
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }

    /// [`Model::plan_prompt`], except that a resident model whose prompt does not fit beside
    /// its layers (not even with its cache spilled), and would with them streamed, drops its
    /// layers and streams them from then on ([`Model::stream_from_now`]) instead of refusing
    /// the prompt.
    pub fn plan_prompt_or_stream(&mut self, ids: &[u32]) -> Result<bool> {
        match self.plan_prompt(ids) {
            Err(e @ (ModelError::OverBudget { .. } | ModelError::OutOfMemory { .. })) => {
                if !self.can_stream_for(ids.len()) {
                    return Err(e);
                }
                self.stream_from_now()?;
                self.plan_prompt(ids)
            }
            r => r,
        }
    }

    /// Whether this resident model, its layers streamed, would fit an `n`-token prompt (its
    /// cache held, or spilled on the CPU) within the budget; `false` for a model that streams
    /// already or has no files to read its layers from.
    fn can_stream_for(&self, n: usize) -> bool {
        if self.streams_layers() || self.files.is_empty() {
            return false;
        }
        let prompt = crate::memory::prompt_bytes(&self.config, n);
        let fits = |p: u64| self.check_streamed(String::new, p).is_ok();
        fits(prompt)
            || (self.on_cpu() && fits(prompt - crate::memory::spillable_bytes(&self.config, n)))
    }

    /// Whether a prompt needing `prompt` bytes fits the budget beside this model with its
    /// layers streamed: the model-wide tensors held, two layers (one in use, the next being
    /// read) and the prompt's cache.
    fn check_streamed(&self, what: impl Fn() -> String, prompt: u64) -> Result<()> {
        crate::memory::check_budget(
            what,
            prompt + 2 * crate::memory::block_bytes(&self.config),
            crate::memory::global_bytes(&self.config, self.tokens_in_place()),
            !self.on_cpu(),
        )
    }

    /// Stream this model's layers from now on: the resident processed layers are dropped and
    /// each is read again where it lies in the checkpoint (processed exactly as at loading)
    /// when it is used, within the budget, as if the model had been opened too large to hold
    /// ([`LayerSource::Streamed`]). A model that streams already is left as it is.
    pub fn stream_from_now(&mut self) -> Result<()> {
        if self.streams_layers() {
            return Ok(());
        }
        let store = match locate_model(&self.dir)? {
            ModelLocation::Gguf(file) => WeightStore::open_gguf(rdla_gguf::GgufFile::open(&file)?)?,
            ModelLocation::Folder(dir) => WeightStore::open_dir(&dir)?,
        };
        let (in_place, gpu) = (self.tokens_in_place(), !self.on_cpu());
        let capacity = crate::memory::layer_capacity(&self.config, in_place, 0, gpu);
        self.weights.layers = Arc::new(LayerSource::Streamed(Box::new(LayerStream::new(
            Arc::new(store),
            self.config.clone(),
            self.processing,
            self.device.clone(),
            capacity,
        ))));
        Ok(())
    }

    /// Check a token sequence fits the model and its forward pass the budget: `Ok(false)`
    /// when the prompt's cache is held in memory, `Ok(true)` when it must spill to a
    /// memory-mapped temporary file ([`crate::spill`]; the CPU only) because the whole
    /// prompt does not fit beside the model but everything except the cache does. A prompt
    /// that does not fit even so is refused with the smaller, spilled, estimate.
    pub fn plan_prompt(&self, ids: &[u32]) -> Result<bool> {
        if ids.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        if ids.len() > self.config.n_ctx {
            return Err(ModelError::PromptTooLong {
                len: ids.len(),
                n_ctx: self.config.n_ctx,
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.config.d_vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: self.config.d_vocab,
            });
        }
        let n = ids.len();
        let prompt = crate::memory::prompt_bytes(&self.config, n);
        let can_spill = self.on_cpu();
        if !(can_spill && crate::spill::forced()) {
            match self.fits(n, prompt, "") {
                Ok(()) => return Ok(false),
                Err(e @ (ModelError::OverBudget { .. } | ModelError::OutOfMemory { .. }))
                    if !can_spill =>
                {
                    return Err(e);
                }
                Err(ModelError::OverBudget { .. } | ModelError::OutOfMemory { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let spilled = prompt - crate::memory::spillable_bytes(&self.config, n);
        self.fits(n, spilled, " (its cache spilled to a temporary file)")
            .map(|()| true)
    }

    /// Whether an `n`-token prompt needing `prompt` bytes fits beside the model (a streaming
    /// model: beside two layers, the rest of the budget holding processed layers).
    fn fits(&self, n: usize, prompt: u64, how: &str) -> Result<()> {
        let what = || format!("a {n}-token prompt on this model{how}");
        match self.weights.layers.stream() {
            None => crate::memory::check_budget(what, prompt, self.held_bytes(), !self.on_cpu()),
            Some(stream) => {
                // the rest of the budget holds processed layers
                self.check_streamed(|| format!("{} with its layers streamed", what()), prompt)?;
                stream.set_capacity(crate::memory::layer_capacity(
                    &self.config,
                    self.tokens_in_place(),
                    prompt,
                    !self.on_cpu(),
                ));
                Ok(())
            }
        }
    }

    /// Layers `ls`'s processed blocks: a view of the resident ones, or read (and cached)
    /// where they lie when the layers stream.
    pub fn blocks(&self, ls: &std::ops::Range<usize>) -> Result<Blocks> {
        self.weights.layers.blocks(ls, Part::Whole)
    }

    /// [`Model::blocks`] for a caller that reads no MLP weight: a streamed layer not held is
    /// read without its MLP (most of its bytes), and [`Blocks::mlp`] may be absent.
    pub fn attention_blocks(&self, ls: &std::ops::Range<usize>) -> Result<Blocks> {
        self.weights.layers.blocks(ls, Part::Attention)
    }

    /// Read every layer's blocks now if the model holds its layers and has not read them
    /// yet (opening is lazy: the first forward pass reads them otherwise). For work that
    /// times its forward passes (a census, a benchmark): the reading is the model's loading.
    /// Nothing for a model whose layers stream.
    pub fn read_layers(&self) -> Result<()> {
        if let LayerSource::Deferred(d) = &*self.weights.layers {
            d.blocks()?;
        }
        Ok(())
    }

    /// Whether the layers stream from the checkpoint (they did not fit the memory budget).
    pub fn streams_layers(&self) -> bool {
        self.weights.layers.stream().is_some()
    }

    /// How many layers a batched expression takes at once: all of them when they are
    /// resident, as many as the layer cache holds when they stream.
    pub fn layer_chunk(&self) -> usize {
        self.weights
            .layers
            .stream()
            .map_or(self.config.n_layers, |s| s.capacity().max(1))
    }

    /// The rotary tables of every layer for a prompt of `n` positions (`None` without
    /// rotary).
    pub fn rotary_tables(&self, n: usize) -> Option<LayerRotary> {
        LayerRotary::new(&self.config, n, &self.device)
    }

    /// Logits at every position `[P, V]` from a cache (the forward computes only the last).
    pub fn all_logits(&self, cache: &Cache) -> Result<Tensor<2>> {
        let resid = cache.components.clone().sum_dim(0).squeeze_dim::<2>(0); // [P, d]
        let xn = self.centred(resid) / cache.final_scale.clone().unsqueeze_dim::<2>(1);
        let wb = self.weights.ln_f.as_ref().map(|(w, b)| {
            (
                w.clone().unsqueeze_dim::<2>(0),
                b.clone().unsqueeze_dim::<2>(0),
            )
        });
        self.logits(Self::ln_affine(xn, wb))
    }

    /// Logits of final-norm outputs `x` `[n, d]`: `x W_U + b_U` `[n, V]`.
    pub fn logits(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let b_u = self.weights.b_u.clone().unsqueeze_dim::<2>(0);
        match &self.weights.w_u {
            Unembedding::Resident(w_u) => Ok(x.matmul(w_u.clone()) + b_u),
            u @ Unembedding::Stored(_) => {
                let [n, _] = x.dims();
                let out = u.products(&to_vec(x)?)?;
                let v = out.len() / n.max(1);
                Ok(Tensor::<2>::from_data(TensorData::new(out, [n, v]), &self.device) + b_u)
            }
        }
    }

    /// Embedding rows of `ids` `[n, d]`, processed.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor<2>> {
        let n = ids.len();
        match (&self.weights.w_e, &self.weights.w_u) {
            (Some(w_e), _) => {
                let idx: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
                let idx = Tensor::<1, burn::tensor::Int>::from_data(
                    TensorData::new(idx, [n]),
                    &self.device,
                );
                Ok(w_e.clone().select(0, idx))
            }
            (None, Unembedding::Stored(s)) => {
                let d = self.config.d_model;
                Ok(Tensor::from_data(
                    TensorData::new(s.embed_rows(ids)?, [n, d]),
                    &self.device,
                ))
            }
            (None, Unembedding::Resident(_)) => Err(ModelError::Device(
                "the embedding is neither resident nor stored".into(),
            )),
        }
    }

    /// Whether the embedding and unembedding are read where they lie on disk (else both are
    /// held, processed, in `f32`).
    pub fn tokens_in_place(&self) -> bool {
        matches!(self.weights.w_u, Unembedding::Stored(_))
    }

    /// About how many bytes the loaded model holds in memory (the estimate checked before
    /// loading; the readout sketch included when the token matrices are read in place).
    pub fn held_bytes(&self) -> u64 {
        let in_place = self.tokens_in_place();
        match self.weights.layers.stream() {
            None => crate::memory::model_bytes(&self.config, in_place),
            Some(s) => {
                crate::memory::global_bytes(&self.config, in_place)
                    + s.capacity() as u64 * crate::memory::block_bytes(&self.config)
            }
        }
    }

    /// Columns `ids` of the processed unembedding `[d, n]`.
    pub fn unembed_columns(&self, ids: &[u32]) -> Result<Tensor<2>> {
        self.weights.w_u.columns_at(ids, &self.device)
    }
}

/// Read a tensor back to the host as `f32`.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))
}

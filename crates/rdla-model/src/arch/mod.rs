//! The model families. Each module is one family (or a few that share a layout): its
//! `config.json` spelling and conversion into a [`ModelConfig`], its key table mapping a Hugging
//! Face checkpoint onto the TransformerLens weight layout ([`Canonical`]), its key prefix and HF
//! class names, gathered in one [`Family`] value. [`FAMILIES`] is the registry: detection by
//! `model_type` / `architectures`, the "supported families" message and dispatch all read it.
//! Adding a family whose blocks the forward pass already computes is one new module and one
//! line here; a family that needs new maths also adds a [`ModelConfig`] field that the forward
//! pass, the cache queries and the engine read. Reading it from a GGUF file is a separate entry
//! in `rdla-gguf`'s own registry (`hf::family`, its tensor tables and its config).

pub mod gemma;
pub mod gpt2;
pub mod gpt_neo;
pub mod gpt_neox;
pub mod llama;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, LoadProgress, ProgressFn, WeightStore};

/// LayerNorm (or RMSNorm, with `b` all zero) parameters, before folding.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormParams {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

/// One block in TransformerLens layout.
///
/// Shapes: `w_q [H, d_model, d_head]`, `w_k/w_v [KV, d_model, d_head]` (KV = H without
/// grouped-query attention), `b_q [H, d_head]`, `b_k/b_v [KV, d_head]`,
/// `w_o [H, d_head, d_model]`, `b_o [d_model]`, `w_in [d_model, d_mlp]` (the linear path of
/// a gated MLP), `b_in [d_mlp]`, `w_gate [d_model, d_mlp]` (gated MLPs only),
/// `w_out [d_mlp, d_model]`, `b_out [d_model]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonLayer {
    pub ln1: Option<LayerNormParams>,
    pub w_q: HostTensor,
    pub b_q: HostTensor,
    pub w_k: HostTensor,
    pub b_k: HostTensor,
    pub w_v: HostTensor,
    pub b_v: HostTensor,
    pub w_o: HostTensor,
    pub b_o: HostTensor,
    pub ln2: Option<LayerNormParams>,
    pub w_in: HostTensor,
    pub b_in: HostTensor,
    pub w_gate: Option<HostTensor>,
    pub w_out: HostTensor,
    pub b_out: HostTensor,
    /// Per-head RMSNorm weights `[dh]` of the queries and keys (Qwen3), applied to each head's
    /// query/key before the rotary map; not folded (the norm's scale depends on the projection).
    pub qk_norm: Option<(HostTensor, HostTensor)>,
    /// The effective weights `[d]` of the RMSNorms on the attention's and the MLP's outputs
    /// (Gemma's post-norms, `1 + w` already added); not folded: they multiply the block's
    /// output after its frozen scale.
    pub post_norm: Option<(HostTensor, HostTensor)>,
}

/// A whole model in TransformerLens layout: `w_e [V, d]`, `w_pos [n_ctx, d]` (learned
/// positions only), `w_u [d, V]`, `b_u [V]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Canonical {
    pub w_e: HostTensor,
    pub w_pos: Option<HostTensor>,
    pub layers: Vec<CanonLayer>,
    pub ln_f: Option<LayerNormParams>,
    pub w_u: HostTensor,
    pub b_u: HostTensor,
    /// What the embedding's stored rows are multiplied by (Gemma: `sqrt(d_model)`).
    pub embed_scale: f32,
    /// Where the embedding and unembedding were left on disk instead of being read
    /// ([`Keys::embedding`]); `w_e` and `w_u` are then empty placeholders of their shapes.
    pub stored: Option<StoredKeys>,
}

/// The stored keys of token matrices left where they lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeys {
    pub embed: String,
    /// The untied unembedding `[V, d]`; `None`: tied to the embedding.
    pub lm_head: Option<String>,
}

impl Canonical {
    /// Multiply the embedding by `s` (also when it stays on disk: rows are scaled as read).
    pub fn scale_embedding(&mut self, s: f32) {
        self.w_e.data.iter_mut().for_each(|x| *x *= s);
        self.embed_scale *= s;
    }

    /// The model-wide tensors of a checkpoint without an unembedding bias (every supported
    /// family: `b_U = 0` before processing); the blocks go to the streaming sink instead.
    pub fn without_blocks(
        w_e: HostTensor,
        w_pos: Option<HostTensor>,
        ln_f: LayerNormParams,
        w_u: HostTensor,
    ) -> Self {
        let v = w_u.shape[1];
        Self {
            w_e,
            w_pos,
            layers: Vec::new(),
            ln_f: Some(ln_f),
            w_u,
            b_u: HostTensor::zeros(vec![v]),
            embed_scale: 1.0,
            stored: None,
        }
    }
}

/// Receives each block, in layer order, as soon as it has been read.
pub type LayerSink<'a> = dyn FnMut(CanonLayer) -> Result<()> + 'a;

/// One model family: how to read its config and its checkpoint.
pub struct Family {
    /// `model_type` values in `config.json`.
    pub model_types: &'static [&'static str],
    /// HF classes in `architectures` (the first is the name shown to users).
    pub classes: &'static [&'static str],
    /// Prefixes of the block and embedding keys (`transformer.`, `model.`, …), tried in
    /// order; keys are also found without one.
    pub prefix: &'static [&'static str],
    /// Keys of an untied unembedding (outside the prefix), tried in order.
    pub lm_head: &'static [&'static str],
    /// `config.json` → validated config.
    pub config: fn(&serde_json::Value) -> Result<ModelConfig>,
    /// The key table: read the model-wide tensors, and the blocks through [`Keys::blocks`]
    /// (which hands each to the sink).
    pub load: fn(&ModelConfig, &mut Keys<'_, '_>, &mut LayerSink<'_>) -> Result<Canonical>,
    /// The key table of one block: read block `l`.
    pub layer: fn(&ModelConfig, &mut Keys<'_, '_>, usize) -> Result<CanonLayer>,
}

impl Family {
    /// The HF class name (`LlamaForCausalLM`).
    pub fn hf_class(&self) -> &'static str {
        self.classes.first().copied().unwrap_or("?")
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hf_class())
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.hf_class() == other.hf_class()
    }
}

impl serde::Serialize for Family {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.hf_class())
    }
}

/// Every family rdla can load.
pub static FAMILIES: &[&Family] = &[
    &gpt2::FAMILY,
    &gpt_neo::FAMILY,
    &gpt_neox::FAMILY,
    &llama::LLAMA,
    &llama::QWEN2,
    &llama::MISTRAL,
    &llama::PHI3,
    &llama::QWEN3,
    &gemma::GEMMA2,
    &gemma::GEMMA3,
];

/// `model_type` (or, when it is absent, an `architectures` entry) → family.
pub fn detect(model_type: &str, architectures: Option<&[String]>) -> Result<&'static Family> {
    let archs = architectures.unwrap_or_default();
    let found = if model_type.is_empty() {
        FAMILIES
            .iter()
            .find(|f| archs.iter().any(|a| f.classes.contains(&a.as_str())))
    } else {
        FAMILIES
            .iter()
            .find(|f| f.model_types.contains(&model_type))
    };
    found
        .copied()
        .ok_or_else(|| ModelError::UnknownArchitecture {
            model_type: if model_type.is_empty() {
                "<missing>".into()
            } else {
                model_type.to_string()
            },
            architectures: archs.to_vec(),
            supported: supported(),
        })
}

/// "gpt2 (GPT2LMHeadModel), …" for error messages.
pub fn supported() -> String {
    FAMILIES
        .iter()
        .map(|f| format!("{} ({})", f.model_types.join("/"), f.hf_class()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read the checkpoint in `store` for `cfg`'s architecture.
pub fn load_canonical(
    cfg: &ModelConfig,
    store: &WeightStore,
    progress: &mut ProgressFn<'_>,
) -> Result<Canonical> {
    let mut layers = Vec::with_capacity(cfg.n_layers);
    let mut canon = load_streaming(
        cfg,
        store,
        progress,
        &mut |layer| {
            layers.push(layer);
            Ok(())
        },
        false,
        false,
    )?;
    canon.layers = layers;
    Ok(canon)
}

/// Read the checkpoint, handing each block to `sink` as soon as it is read (so a caller can
/// process and pack one block at a time instead of holding two copies of the model). The
/// returned [`Canonical`] holds everything but the blocks (`layers` is empty).
///
/// With `leave_token_matrices`, an embedding and unembedding whose rows can be read where
/// they lie ([`WeightStore::rows`]) are not read: the result names them in
/// [`Canonical::stored`] instead.
///
/// With `skip_blocks`, no block is read (the sink is never called): the layers are read one
/// at a time later, with [`read_layer`].
pub fn load_streaming(
    cfg: &ModelConfig,
    store: &WeightStore,
    progress: &mut ProgressFn<'_>,
    sink: &mut LayerSink<'_>,
    leave_token_matrices: bool,
    skip_blocks: bool,
) -> Result<Canonical> {
    let family = cfg.family;
    let mut keys = Keys::new(store, progress, family.prefix, family.lm_head);
    keys.leave_token_matrices = leave_token_matrices;
    keys.skip_blocks = skip_blocks;
    keys.check_layers(cfg.n_layers)?;
    let mut canon = (family.load)(cfg, &mut keys, sink)?;
    keys.finish()?;
    canon.stored = keys.stored.take();
    Ok(canon)
}

/// Read block 0, and check that every other block has the tensors block 0 was read from,
/// with the same shapes, from the checkpoint's header alone (nothing else is read): a
/// streaming model finds a missing or misshapen tensor when it opens, not in the middle of
/// a forward pass.
pub fn read_layer_checking_others(cfg: &ModelConfig, store: &WeightStore) -> Result<CanonLayer> {
    let family = cfg.family;
    let mut quiet = |_: LoadProgress| true;
    let mut keys = Keys::new(store, &mut quiet, family.prefix, family.lm_head);
    keys.asked = Some(Vec::new());
    let first = (family.layer)(cfg, &mut keys, 0)?;
    let asked = keys.asked.take().unwrap_or_default();
    for l in 1..cfg.n_layers {
        for a in &asked {
            let name = in_layer(&a.name, l);
            if a.optional && !keys.has(&name) {
                continue;
            }
            keys.checked(&name, &a.shape)?;
        }
    }
    Ok(first)
}

/// Read block `l` alone (the layer streamer: a layer is read again each time it is needed
/// and not held). Without `mlp`, the MLP's tensors (every key under `mlp.`) are not read:
/// they are placeholders of their shapes ([`HostTensor::is_placeholder`]), most of a
/// block's bytes left on disk when an expansion needs the attention alone. Also returns the
/// stored bytes read.
pub fn read_layer(
    cfg: &ModelConfig,
    store: &WeightStore,
    l: usize,
    mlp: bool,
) -> Result<(CanonLayer, u64)> {
    let family = cfg.family;
    let mut quiet = |_: LoadProgress| true;
    let mut keys = Keys::new(store, &mut quiet, family.prefix, family.lm_head);
    keys.skip_mlp = !mlp;
    let layer = (family.layer)(cfg, &mut keys, l)?;
    Ok((layer, keys.done))
}

/// Whether `name` is one of a block's MLP tensors (`h.3.mlp.c_fc.weight`,
/// `layers.3.mlp.down_proj.weight`: every family's, and GGUF's once named as Hugging Face's).
fn is_mlp_key(name: &str) -> bool {
    name.contains(".mlp.")
}

/// Tensor lookup with the architecture's optional prefix (`transformer.`, `gpt_neox.`,
/// `model.`), shape checks and progress.
pub struct Keys<'a, 'p> {
    store: &'a WeightStore,
    progress: &'a mut ProgressFn<'p>,
    done: u64,
    total: u64,
    prefix: &'static [&'static str],
    /// The untied unembedding's keys (outside the prefix).
    lm_head: &'static [&'static str],
    /// Leave the token matrices on disk where their rows can be read there.
    leave_token_matrices: bool,
    /// Read no block ([`load_streaming`]'s `skip_blocks`).
    skip_blocks: bool,
    /// Leave a block's MLP tensors unread ([`read_layer`] without `mlp`).
    skip_mlp: bool,
    stored: Option<StoredKeys>,
    /// The names and shapes asked for, when recorded ([`read_layer_checking_others`]).
    asked: Option<Vec<Asked>>,
}

/// A tensor a key table asked for: its name, its shape and whether it may be absent (an
/// optional bias).
#[derive(Debug, Clone)]
struct Asked {
    name: String,
    shape: Vec<usize>,
    optional: bool,
}

/// `name` of block 0 (`layers.0.…`, `h.0.…`) as block `l`'s.
fn in_layer(name: &str, l: usize) -> String {
    for head in ["layers", "h"] {
        if let Some(rest) = name.strip_prefix(&format!("{head}.0.")) {
            return format!("{head}.{l}.{rest}");
        }
    }
    name.to_string()
}

impl<'a, 'p> Keys<'a, 'p> {
    fn new(
        store: &'a WeightStore,
        progress: &'a mut ProgressFn<'p>,
        prefix: &'static [&'static str],
        lm_head: &'static [&'static str],
    ) -> Self {
        let total = store.keys().map(|k| store.nbytes(k)).sum();
        Self {
            store,
            progress,
            done: 0,
            total,
            prefix,
            lm_head,
            leave_token_matrices: false,
            skip_blocks: false,
            skip_mlp: false,
            stored: None,
            asked: None,
        }
    }

    /// Read every block of `cfg`'s model in order, handing each to `sink` (none when blocks
    /// are skipped).
    pub fn blocks(&mut self, cfg: &ModelConfig, sink: &mut LayerSink<'_>) -> Result<()> {
        if self.skip_blocks {
            let bytes: u64 = self
                .store
                .keys()
                .filter(|k| block_layer(self.prefix, k).is_some())
                .map(|k| self.store.nbytes(k))
                .sum();
            self.done += bytes;
            return self.report();
        }
        for l in 0..cfg.n_layers {
            sink((cfg.family.layer)(cfg, self, l)?)?;
        }
        Ok(())
    }

    /// A checkpoint with more layers than its config declares is refused (reading only the
    /// declared ones would silently truncate the model): any block key `layers.{l}.…` /
    /// `h.{l}.…` (after the family's prefix) with `l ≥ n_layers`.
    fn check_layers(&self, n_layers: usize) -> Result<()> {
        for key in self.store.keys() {
            if let Some(layer) = block_layer(self.prefix, key).filter(|&l| l >= n_layers) {
                return Err(ModelError::UnexpectedLayer {
                    key: key.to_string(),
                    layer,
                    n_layers,
                });
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.done = self.total;
        self.report()
    }

    fn report(&mut self) -> Result<()> {
        let go_on = (self.progress)(LoadProgress {
            bytes_done: self.done.min(self.total),
            bytes_total: self.total,
        });
        if go_on {
            Ok(())
        } else {
            Err(ModelError::Cancelled)
        }
    }

    fn candidates(&self, name: &str) -> Vec<String> {
        self.prefix
            .iter()
            .map(|p| format!("{p}{name}"))
            .chain(std::iter::once(name.to_string()))
            .collect()
    }

    /// The stored key for `name`, if any spelling of it exists.
    pub fn find(&self, name: &str) -> Option<String> {
        self.candidates(name)
            .into_iter()
            .find(|k| self.store.contains(k))
    }

    /// Whether any spelling of `name` is stored.
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The stored key of `name`, its shape checked (without reading it).
    fn checked(&self, name: &str, shape: &[usize]) -> Result<String> {
        let key = self.find(name).ok_or_else(|| ModelError::MissingTensor {
            key: name.to_string(),
            tried: self.candidates(name),
        })?;
        let actual = self.store.shape(&key).unwrap_or_default();
        if actual != shape {
            return Err(ModelError::WrongShape {
                key,
                expected: shape.to_vec(),
                actual: actual.to_vec(),
            });
        }
        Ok(key)
    }

    fn ask(&mut self, name: &str, shape: &[usize], optional: bool) {
        if let Some(asked) = &mut self.asked {
            asked.push(Asked {
                name: name.to_string(),
                shape: shape.to_vec(),
                optional,
            });
        }
    }

    /// Read `name` and check its shape.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.ask(name, shape, false);
        self.read(name, shape)
    }

    fn read(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let key = self.checked(name, shape)?;
        if self.skip_mlp && is_mlp_key(name) {
            return Ok(HostTensor::placeholder(shape.to_vec()));
        }
        let t = self.store.read_f32(&key)?;
        self.done += self.store.nbytes(&key);
        self.report()?;
        Ok(t)
    }

    /// The embedding `name` `[V, d]`: read like [`Keys::get`], or — when token matrices are
    /// left on disk and its rows (and an untied `lm_head`'s) can be read where they lie — an
    /// empty placeholder, with the key recorded.
    pub fn embedding(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let key = self.find(name);
        let lm_head = self.lm_head_key();
        let readable = |k: &str| {
            self.store
                .rows(k)
                .is_some_and(|r| [r.rows(), r.cols()] == shape)
        };
        let leave = self.leave_token_matrices
            && key
                .as_deref()
                .is_some_and(|k| self.store.shape(k) == Some(shape) && readable(k))
            && lm_head.is_none_or(readable);
        match key {
            Some(key) if leave => {
                self.done += self.store.nbytes(&key) + lm_head.map_or(0, |k| self.store.nbytes(k));
                self.report()?;
                self.stored = Some(StoredKeys {
                    embed: key,
                    lm_head: lm_head.map(str::to_string),
                });
                Ok(HostTensor::placeholder(shape.to_vec()))
            }
            _ => self.get(name, shape),
        }
    }

    pub fn layer_norm(&mut self, prefix: &str, d: usize) -> Result<LayerNormParams> {
        Ok(LayerNormParams {
            w: self.get(&format!("{prefix}.weight"), &[d])?.data,
            b: self.get(&format!("{prefix}.bias"), &[d])?.data,
        })
    }

    /// An RMSNorm: its weight, and a zero bias.
    pub fn rms_norm(&mut self, prefix: &str, d: usize) -> Result<LayerNormParams> {
        Ok(LayerNormParams {
            w: self.get(&format!("{prefix}.weight"), &[d])?.data,
            b: vec![0.0; d],
        })
    }

    /// `name` if stored, else zeros of `shape` (an optional bias).
    pub fn get_or_zeros(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.ask(name, shape, true);
        if self.has(name) {
            self.read(name, shape)
        } else {
            Ok(HostTensor::zeros(shape.to_vec()))
        }
    }

    /// Run `blocks` (which reads the blocks) and return the unembedding `[d, V]`. For a tied
    /// model the transpose of `w_e` — the largest single host operation of a load — runs on a
    /// second thread meanwhile.
    pub fn unembed_while(
        &mut self,
        cfg: &ModelConfig,
        w_e: &HostTensor,
        blocks: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<HostTensor> {
        if self.stored.is_some() {
            blocks(self)?;
            return Ok(HostTensor::placeholder(vec![cfg.d_model, cfg.d_vocab]));
        }
        if !cfg.tie_word_embeddings || self.lm_head_key().is_some() {
            blocks(self)?;
            return self.unembed(cfg, w_e);
        }
        std::thread::scope(|s| {
            let transposer = s.spawn(|| transpose(w_e));
            let read = blocks(self);
            let w_u = transposer
                .join()
                .map_err(|_| ModelError::Device("the unembedding transpose panicked".into()))?;
            read.map(|()| w_u)
        })
    }

    /// The unembedding `[d, V]`: `lm_head.weight` (`embed_out.weight`) transposed, or the
    /// tied embedding.
    pub fn unembed(&mut self, cfg: &ModelConfig, w_e: &HostTensor) -> Result<HostTensor> {
        let (d, v) = (cfg.d_model, cfg.d_vocab);
        // lm_head lives outside the prefix; an untied model must have it.
        let lm = if let Some(key) = self.lm_head_key() {
            Some(self.get(key, &[v, d])?)
        } else if !cfg.tie_word_embeddings {
            return Err(ModelError::MissingTensor {
                key: self.lm_head[0].into(),
                tried: self.lm_head.iter().map(|k| (*k).to_string()).collect(),
            });
        } else {
            None
        };
        let src = lm.as_ref().unwrap_or(w_e);
        Ok(transpose(src))
    }

    /// The stored key of the untied unembedding, if there is one.
    fn lm_head_key(&self) -> Option<&'static str> {
        self.lm_head
            .iter()
            .copied()
            .find(|k| self.store.contains(k))
    }
}

/// The layer of a block key `layers.{l}.…` / `h.{l}.…` (after one of the family's
/// prefixes); `None` for any other key (a multimodal checkpoint's vision tower has blocks of
/// its own under other names).
fn block_layer(prefix: &[&str], key: &str) -> Option<usize> {
    let bare = prefix
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key);
    let mut parts = bare.split('.');
    match (parts.next(), parts.next()) {
        (Some("layers" | "h"), Some(l)) => l.parse::<usize>().ok(),
        _ => None,
    }
}

/// `[r, c] -> [c, r]`, the output's rows split over the cores (a `[V, d]` embedding or a
/// `[d_mlp, d]` projection is large, and a streamed layer has three). A placeholder stays one,
/// of the transposed shape.
pub fn transpose(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    if t.is_placeholder() {
        return HostTensor::placeholder(vec![c, r]);
    }
    let mut out = vec![0.0; r * c];
    let _ = crate::par::par_parts(&mut out, r.max(1), 1 << 16, |first, part| {
        transpose_rows(&t.data, r, c, first / r.max(1), part);
        Ok::<(), std::convert::Infallible>(())
    });
    HostTensor::new(vec![c, r], out)
}

/// Rows `j_first..` of the transpose `[c, r]` of `src [r, c]` into `part` (a whole number of
/// rows of length `r`), in cache-sized tiles.
fn transpose_rows(src: &[f32], r: usize, c: usize, j_first: usize, part: &mut [f32]) {
    const TILE: usize = 32;
    let rows = part.len() / r.max(1);
    for j0 in (0..rows).step_by(TILE) {
        for i0 in (0..r).step_by(TILE) {
            for j in j0..(j0 + TILE).min(rows) {
                let col = j_first + j;
                let end = (i0 + TILE).min(r);
                for (i, x) in part[j * r + i0..j * r + end].iter_mut().enumerate() {
                    *x = src[(i0 + i) * c + col];
                }
            }
        }
    }
}

/// Columns `[off, off + H·dh)` of an `[d, cols]` matrix (Conv1D, input-major) as `[H, d, dh]`.
pub fn heads_from_in_major(w: &HostTensor, off: usize, h: usize, dh: usize) -> HostTensor {
    let (d, cols) = (w.shape[0], w.shape[1]);
    let mut out = vec![0.0; h * d * dh];
    for hh in 0..h {
        for m in 0..d {
            for k in 0..dh {
                out[(hh * d + m) * dh + k] = w.data[m * cols + off + hh * dh + k];
            }
        }
    }
    HostTensor::new(vec![h, d, dh], out)
}

/// An `nn.Linear` weight `[H·dh, d]` (output-major) as `[H, d, dh]`: each head's `[dh, d]`
/// rows transposed, the heads split over the cores.
pub fn heads_from_out_major(w: &HostTensor, h: usize, dh: usize) -> HostTensor {
    let d = w.shape[1];
    let per_head = d * dh;
    let mut out = vec![0.0; h * per_head];
    let _ = crate::par::par_parts(&mut out, per_head.max(1), 1 << 16, |first, part| {
        for (i, head) in part.chunks_exact_mut(per_head.max(1)).enumerate() {
            let hh = first / per_head.max(1) + i;
            transpose_rows(&w.data[hh * per_head..(hh + 1) * per_head], dh, d, 0, head);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    HostTensor::new(vec![h, d, dh], out)
}

/// A slice of a bias vector as `[H, dh]`.
pub fn bias_heads(b: &[f32], off: usize, h: usize, dh: usize) -> HostTensor {
    HostTensor::new(vec![h, dh], b[off..off + h * dh].to_vec())
}

/// Reinterpret with a new shape (same element count).
pub fn reshape(t: HostTensor, shape: Vec<usize>) -> HostTensor {
    HostTensor::new(shape, t.data)
}

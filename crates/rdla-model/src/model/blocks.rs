//! The processed blocks, resident or streamed.
//!
//! [`Blocks`] is the weights of a range of layers stacked over a leading layer axis
//! (TransformerLens layout). A model whose processed blocks fit its memory budget holds them
//! all ([`LayerSource::Resident`]) and a range is a view. One that does not fit streams them
//! ([`LayerSource::Streamed`]): a block is read from the checkpoint where it lies (its stored
//! precision: f32, f16, bf16, GGUF blocks), processed exactly as at loading (the same
//! `process::process_layer`), uploaded, and kept in a least-recently-used cache of processed
//! layers sized by the budget; the forward pass prepares the next layer on another thread
//! while the current one computes, and an expansion fetches the layers it reads — only their
//! attention ([`Part::Attention`]) when it reads no MLP weight: most of a block's bytes are
//! its MLP's (`3·d·d_mlp` of a gated MLP against `2·d·(H + KV)·d_head`).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor, TensorData};

use crate::arch::{self, CanonLayer};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::process::{self, Processing};
use crate::weights::{HostTensor, WeightStore};

/// What an expansion reads of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The attention's weights and the norms ([`Blocks::mlp`] may be absent).
    Attention,
    /// Everything.
    Whole,
}

/// Processed block weights of a range of layers `Lb`, stacked over a leading layer axis.
#[derive(Debug, Clone)]
pub struct Blocks {
    /// LayerNorm weight and bias `[Lb, d]` each, present only when not folded.
    pub ln1: Option<(Tensor<2>, Tensor<2>)>,
    pub ln2: Option<(Tensor<2>, Tensor<2>)>,
    /// `[Lb, H, d, dh]`
    pub w_q: Tensor<4>,
    /// `[Lb, KV, d, dh]` (KV = H without grouped-query attention)
    pub w_k: Tensor<4>,
    pub w_v: Tensor<4>,
    /// `[Lb, H, dh]`
    pub b_q: Tensor<3>,
    /// `[Lb, KV, dh]`
    pub b_k: Tensor<3>,
    pub b_v: Tensor<3>,
    /// `[Lb, H, dh, d]`
    pub w_o: Tensor<4>,
    /// `[Lb, d]`
    pub b_o: Tensor<2>,
    /// The MLPs' weights; absent when only the attention was read ([`Part::Attention`]).
    pub mlp: Option<MlpBlocks>,
    /// Per-head RMSNorm weights of queries and keys `[Lb, dh]` each (Qwen3, Gemma 3).
    pub qk_norm: Option<(Tensor<2>, Tensor<2>)>,
    /// Weights of the post-attention and post-MLP RMSNorms `[Lb, d]` each (Gemma).
    pub post_norm: Option<(Tensor<2>, Tensor<2>)>,
}

/// The MLP weights of a range of layers `Lb`.
#[derive(Debug, Clone)]
pub struct MlpBlocks {
    /// `[Lb, d, d_mlp]` (the linear path of a gated MLP)
    pub w_in: Tensor<3>,
    /// `[Lb, d, d_mlp]`, gated MLPs only
    pub w_gate: Option<Tensor<3>>,
    /// `[Lb, d_mlp]`
    pub b_in: Tensor<2>,
    /// `[Lb, d_mlp, d]`
    pub w_out: Tensor<3>,
    /// `[Lb, d]`
    pub b_out: Tensor<2>,
}

impl MlpBlocks {
    fn narrow(&self, ls: &Range<usize>) -> Self {
        Self {
            w_in: narrow(&self.w_in, ls),
            w_gate: self.w_gate.as_ref().map(|t| narrow(t, ls)),
            b_in: narrow(&self.b_in, ls),
            w_out: narrow(&self.w_out, ls),
            b_out: narrow(&self.b_out, ls),
        }
    }

    fn cat(parts: &[&Self]) -> Self {
        let cat =
            |f: &dyn Fn(&Self) -> Tensor<3>| Tensor::cat(parts.iter().map(|m| f(m)).collect(), 0);
        let cat2 =
            |f: &dyn Fn(&Self) -> Tensor<2>| Tensor::cat(parts.iter().map(|m| f(m)).collect(), 0);
        let gates: Option<Vec<Tensor<3>>> = parts.iter().map(|m| m.w_gate.clone()).collect();
        Self {
            w_in: cat(&|m| m.w_in.clone()),
            w_gate: gates.map(|g| Tensor::cat(g, 0)),
            b_in: cat2(&|m| m.b_in.clone()),
            w_out: cat(&|m| m.w_out.clone()),
            b_out: cat2(&|m| m.b_out.clone()),
        }
    }
}

/// `t`'s layers `ls` (relative to its own first layer).
fn narrow<const D: usize>(t: &Tensor<D>, ls: &Range<usize>) -> Tensor<D> {
    t.clone().narrow(0, ls.start, ls.len())
}

fn narrow_pair(
    p: &Option<(Tensor<2>, Tensor<2>)>,
    ls: &Range<usize>,
) -> Option<(Tensor<2>, Tensor<2>)> {
    p.as_ref().map(|(a, b)| (narrow(a, ls), narrow(b, ls)))
}

/// Concatenate along the layer axis.
fn cat<const D: usize>(parts: &[Blocks], f: impl Fn(&Blocks) -> Tensor<D>) -> Tensor<D> {
    Tensor::cat(parts.iter().map(f).collect(), 0)
}

fn cat_opt<const D: usize>(
    parts: &[Blocks],
    f: impl Fn(&Blocks) -> Option<Tensor<D>>,
) -> Option<Tensor<D>> {
    let v: Option<Vec<Tensor<D>>> = parts.iter().map(f).collect();
    v.map(|v| Tensor::cat(v, 0))
}

fn cat_pair(
    parts: &[Blocks],
    f: impl Fn(&Blocks) -> &Option<(Tensor<2>, Tensor<2>)>,
) -> Option<(Tensor<2>, Tensor<2>)> {
    Some((
        cat_opt(parts, |b| f(b).as_ref().map(|p| p.0.clone()))?,
        cat_opt(parts, |b| f(b).as_ref().map(|p| p.1.clone()))?,
    ))
}

impl Blocks {
    /// Layers `ls` of these blocks (indices relative to the first held layer): views, no copy.
    pub fn narrow(&self, ls: &Range<usize>) -> Self {
        Self {
            ln1: narrow_pair(&self.ln1, ls),
            ln2: narrow_pair(&self.ln2, ls),
            w_q: narrow(&self.w_q, ls),
            w_k: narrow(&self.w_k, ls),
            w_v: narrow(&self.w_v, ls),
            b_q: narrow(&self.b_q, ls),
            b_k: narrow(&self.b_k, ls),
            b_v: narrow(&self.b_v, ls),
            w_o: narrow(&self.w_o, ls),
            b_o: narrow(&self.b_o, ls),
            mlp: self.mlp.as_ref().map(|m| m.narrow(ls)),
            qk_norm: narrow_pair(&self.qk_norm, ls),
            post_norm: narrow_pair(&self.post_norm, ls),
        }
    }

    /// Consecutive layers' blocks, one after the other (a copy).
    fn cat(parts: &[Self]) -> Self {
        Self {
            ln1: cat_pair(parts, |b| &b.ln1),
            ln2: cat_pair(parts, |b| &b.ln2),
            w_q: cat(parts, |b| b.w_q.clone()),
            w_k: cat(parts, |b| b.w_k.clone()),
            w_v: cat(parts, |b| b.w_v.clone()),
            b_q: cat(parts, |b| b.b_q.clone()),
            b_k: cat(parts, |b| b.b_k.clone()),
            b_v: cat(parts, |b| b.b_v.clone()),
            w_o: cat(parts, |b| b.w_o.clone()),
            b_o: cat(parts, |b| b.b_o.clone()),
            mlp: parts
                .iter()
                .map(|b| b.mlp.as_ref())
                .collect::<Option<Vec<_>>>()
                .map(|m| MlpBlocks::cat(&m)),
            qk_norm: cat_pair(parts, |b| &b.qk_norm),
            post_norm: cat_pair(parts, |b| &b.post_norm),
        }
    }

    /// The layer axis' length.
    pub fn n_layers(&self) -> usize {
        self.w_q.dims()[0]
    }

    /// The MLPs' weights (an error, not a panic, if only the attention was read: a caller
    /// that reads the MLP fetches [`Part::Whole`]).
    pub fn mlp(&self) -> Result<&MlpBlocks> {
        self.mlp.as_ref().ok_or_else(|| {
            ModelError::Device(
                "these layers were read without their MLP weights (an attention-only read)".into(),
            )
        })
    }
}

/// One weight stacked over layers, filled one block at a time.
#[derive(Debug, Default)]
struct Stack {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Stack {
    /// Append one layer's tensor: moved as is into a stack of one layer (a streamed layer is
    /// not copied), copied after the others otherwise.
    fn push(&mut self, shape: Vec<usize>, data: Vec<f32>, n_layers: usize) {
        if self.data.is_empty() {
            self.shape = shape;
            if n_layers == 1 {
                self.data = data;
                return;
            }
            self.data.reserve_exact(n_layers * data.len());
        }
        self.data.extend_from_slice(&data);
    }

    fn push_t(&mut self, t: HostTensor, n_layers: usize) {
        self.push(t.shape, t.data, n_layers);
    }

    fn upload<const D: usize>(self, n_layers: usize, device: &Device) -> Tensor<D> {
        let mut shape = vec![n_layers];
        shape.extend(self.shape);
        Tensor::from_data(TensorData::new(self.data, shape), device)
    }
}

fn upload_pair(
    p: Option<(Stack, Stack)>,
    n: usize,
    device: &Device,
) -> Option<(Tensor<2>, Tensor<2>)> {
    p.map(|(a, b)| (a.upload(n, device), b.upload(n, device)))
}

/// Host buffers for every stacked block weight. Blocks arrive one at a time (already
/// processed) and are appended, so loading never holds more than one extra block.
#[derive(Debug, Default)]
pub(crate) struct LayerStacks {
    n_layers: usize,
    pub(crate) count: usize,
    w_q: Stack,
    w_k: Stack,
    w_v: Stack,
    b_q: Stack,
    b_k: Stack,
    b_v: Stack,
    w_o: Stack,
    b_o: Stack,
    w_in: Stack,
    b_in: Stack,
    w_gate: Option<Stack>,
    w_out: Stack,
    b_out: Stack,
    qk_norm: Option<(Stack, Stack)>,
    post_norm: Option<(Stack, Stack)>,
    /// LayerNorm weights and biases (only when not folded).
    ln1: Option<(Stack, Stack)>,
    ln2: Option<(Stack, Stack)>,
}

impl LayerStacks {
    pub(crate) fn new(n_layers: usize) -> Self {
        Self {
            n_layers,
            ..Self::default()
        }
    }

    pub(crate) fn push(&mut self, l: CanonLayer) {
        let n = self.n_layers;
        for (stack, t) in [
            (&mut self.w_q, l.w_q),
            (&mut self.w_k, l.w_k),
            (&mut self.w_v, l.w_v),
            (&mut self.b_q, l.b_q),
            (&mut self.b_k, l.b_k),
            (&mut self.b_v, l.b_v),
            (&mut self.w_o, l.w_o),
            (&mut self.b_o, l.b_o),
        ] {
            stack.push_t(t, n);
        }
        // a block read without its MLP has placeholders there: its stack holds no MLP
        if !l.w_in.is_placeholder() {
            for (stack, t) in [
                (&mut self.w_in, l.w_in),
                (&mut self.b_in, l.b_in),
                (&mut self.w_out, l.w_out),
                (&mut self.b_out, l.b_out),
            ] {
                stack.push_t(t, n);
            }
            if let Some(g) = l.w_gate {
                self.w_gate.get_or_insert_with(Stack::default).push_t(g, n);
            }
        }
        for (dst, src) in [
            (&mut self.qk_norm, l.qk_norm),
            (&mut self.post_norm, l.post_norm),
        ] {
            if let Some((a, b)) = src {
                let (sa, sb) = dst.get_or_insert_with(Default::default);
                sa.push_t(a, n);
                sb.push_t(b, n);
            }
        }
        for (dst, src) in [(&mut self.ln1, l.ln1), (&mut self.ln2, l.ln2)] {
            if let Some(ln) = src {
                let (w, b) = dst.get_or_insert_with(Default::default);
                w.push(vec![ln.w.len()], ln.w, n);
                b.push(vec![ln.b.len()], ln.b, n);
            }
        }
        self.count += 1;
    }

    /// The stacked blocks on `device` (zero-copy on the CPU backend).
    pub(crate) fn upload(self, device: &Device) -> Blocks {
        let n = self.n_layers;
        Blocks {
            ln1: upload_pair(self.ln1, n, device),
            ln2: upload_pair(self.ln2, n, device),
            w_q: self.w_q.upload(n, device),
            w_k: self.w_k.upload(n, device),
            w_v: self.w_v.upload(n, device),
            b_q: self.b_q.upload(n, device),
            b_k: self.b_k.upload(n, device),
            b_v: self.b_v.upload(n, device),
            w_o: self.w_o.upload(n, device),
            b_o: self.b_o.upload(n, device),
            mlp: (!self.w_in.data.is_empty()).then(|| MlpBlocks {
                w_in: self.w_in.upload(n, device),
                w_gate: self.w_gate.map(|g| g.upload(n, device)),
                b_in: self.b_in.upload(n, device),
                w_out: self.w_out.upload(n, device),
                b_out: self.b_out.upload(n, device),
            }),
            qk_norm: upload_pair(self.qk_norm, n, device),
            post_norm: upload_pair(self.post_norm, n, device),
        }
    }
}

/// Where the processed blocks are.
#[derive(Debug)]
pub enum LayerSource {
    /// Every layer, held.
    Resident(Box<Blocks>),
    /// Every layer held once it is read: all of them, when a layer is first used (a model
    /// that fits opens without reading its blocks).
    Deferred(Box<Deferred>),
    /// Read from the checkpoint when used.
    Streamed(Box<LayerStream>),
}

/// The blocks of a model that fits its budget, read when they are first used: the forward
/// pass takes layer after layer, and each is read where it lies, processed exactly as at
/// loading and appended to the stacks as it goes (so the first forward pass shows its
/// progress and can be cancelled layer by layer); once the last is in, the stacks are
/// uploaded and held like [`LayerSource::Resident`]'s. Anything else that asks first (a range
/// of layers, a layer out of order) has the rest read at once.
pub struct Deferred {
    store: Arc<WeightStore>,
    config: ModelConfig,
    processing: Processing,
    device: Device,
    filling: Mutex<Filling>,
    held: std::sync::OnceLock<Blocks>,
}

/// The stacks read so far.
struct Filling {
    stacks: Option<LayerStacks>,
    /// The next layer to read.
    next: usize,
    /// Block 0, read (and the other blocks' tensors checked) when the model was opened.
    first: Option<CanonLayer>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("read", &self.held.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Deferred {
    pub(crate) fn new(
        store: Arc<WeightStore>,
        config: ModelConfig,
        processing: Processing,
        device: Device,
        first: CanonLayer,
    ) -> Self {
        let n = config.n_layers;
        Self {
            store,
            config,
            processing,
            device,
            filling: Mutex::new(Filling {
                stacks: Some(LayerStacks::new(n)),
                next: 0,
                first: Some(first),
            }),
            held: std::sync::OnceLock::new(),
        }
    }

    /// Whether every block has been read.
    pub fn is_read(&self) -> bool {
        self.held.get().is_some()
    }

    fn filling(&self) -> std::sync::MutexGuard<'_, Filling> {
        self.filling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read layer `f.next` (block 0 as read at opening), processed, onto the stacks; the
    /// stacks uploaded and held once the last is in. With `keep`, also returns a copy of the
    /// processed layer (for the forward pass that asked for it).
    fn read_next(&self, f: &mut Filling, keep: bool) -> Result<Option<CanonLayer>> {
        let l = f.next;
        let mut layer = match (l, f.first.take()) {
            (0, Some(b)) => b,
            _ => arch::read_layer(&self.config, &self.store, l, true)?.0,
        };
        process::process_layer(&mut layer, self.processing, self.config.norm);
        let stacks = f
            .stacks
            .as_mut()
            .ok_or_else(|| ModelError::Device("the model's blocks were read already".into()))?;
        let kept = keep.then(|| layer.clone());
        stacks.push(layer);
        f.next += 1;
        if f.next == self.config.n_layers
            && let Some(done) = f.stacks.take()
        {
            let _ = self.held.set(done.upload(&self.device));
        }
        Ok(kept)
    }

    /// Every layer's processed blocks: held, or the rest read now.
    pub fn blocks(&self) -> Result<&Blocks> {
        if let Some(b) = self.held.get() {
            return Ok(b);
        }
        let mut f = self.filling();
        while self.held.get().is_none() && f.next < self.config.n_layers {
            self.read_next(&mut f, false)?;
        }
        self.held
            .get()
            .ok_or_else(|| ModelError::Device("the model's blocks were not kept".into()))
    }

    /// Layers `ls`: the next one to read alone (read now, as the forward pass asks for it),
    /// else a view of every layer's blocks.
    fn range(&self, ls: &Range<usize>) -> Result<Blocks> {
        if self.held.get().is_none() && ls.len() == 1 {
            let mut f = self.filling();
            if f.next == ls.start
                && self.held.get().is_none()
                && let Some(layer) = self.read_next(&mut f, true)?
            {
                let mut one = LayerStacks::new(1);
                one.push(layer);
                return Ok(one.upload(&self.device));
            }
        }
        Ok(self.blocks()?.narrow(ls))
    }
}

/// The least-recently-used processed layers, most recent last.
#[derive(Debug, Default)]
struct Lru {
    /// How many processed layers may be held.
    capacity: usize,
    held: VecDeque<(usize, Blocks)>,
}

impl Lru {
    /// Layer `l`, if held with `part` (a whole layer serves an attention-only request).
    fn take(&mut self, l: usize, part: Part) -> Option<Blocks> {
        let i = self
            .held
            .iter()
            .position(|(k, b)| *k == l && (part == Part::Attention || b.mlp.is_some()))?;
        let entry = self.held.remove(i)?;
        let b = entry.1.clone();
        self.held.push_back(entry);
        Some(b)
    }

    /// Hold `b` as layer `l` (replacing an attention-only entry by a whole one).
    fn insert(&mut self, l: usize, b: Blocks) {
        if let Some(i) = self.held.iter().position(|(k, _)| *k == l) {
            if self.held[i].1.mlp.is_some() || b.mlp.is_none() {
                return;
            }
            self.held.remove(i);
        }
        self.held.push_back((l, b));
        while self.held.len() > self.capacity.max(1) {
            self.held.pop_front();
        }
    }
}

/// Blocks read from the checkpoint on demand, processed, and cached within a budget.
pub struct LayerStream {
    store: Arc<WeightStore>,
    config: ModelConfig,
    processing: Processing,
    device: Device,
    lru: Mutex<Lru>,
}

impl std::fmt::Debug for LayerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerStream")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl LayerStream {
    pub(crate) fn new(
        store: Arc<WeightStore>,
        config: ModelConfig,
        processing: Processing,
        device: Device,
        capacity: usize,
    ) -> Self {
        Self {
            store,
            config,
            processing,
            device,
            lru: Mutex::new(Lru {
                capacity,
                held: VecDeque::new(),
            }),
        }
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        // a panic while the lock was held leaves a cache that is still consistent
        self.lru
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many processed layers are held at most.
    pub fn capacity(&self) -> usize {
        self.lru().capacity
    }

    /// Hold at most `capacity` processed layers (at least one).
    pub fn set_capacity(&self, capacity: usize) {
        let mut lru = self.lru();
        lru.capacity = capacity.max(1);
        while lru.held.len() > lru.capacity {
            lru.held.pop_front();
        }
    }

    /// Layer `l`'s processed blocks `[1, …]` (at least `part` of them): from the cache, or
    /// read, processed and cached.
    pub fn layer(&self, l: usize, part: Part) -> Result<Blocks> {
        if let Some(b) = self.lru().take(l, part) {
            return Ok(b);
        }
        let b = self.read(l, part)?;
        self.lru().insert(l, b.clone());
        Ok(b)
    }

    /// Hold layer `l`'s processed blocks, already read.
    pub(crate) fn insert(&self, l: usize, b: Blocks) {
        self.lru().insert(l, b);
    }

    /// Read, process and upload `part` of layer `l` (counted in
    /// [`crate::memory::streamed_layers`]).
    fn read(&self, l: usize, part: Part) -> Result<Blocks> {
        if l >= self.config.n_layers {
            return Err(ModelError::Device(format!(
                "layer {l} of a {}-layer model",
                self.config.n_layers
            )));
        }
        let (layer, bytes) = arch::read_layer(&self.config, &self.store, l, part == Part::Whole)?;
        crate::memory::count_streamed_layer(bytes);
        Ok(self.prepare(layer))
    }

    /// Process and upload a block as read (its buffers move onto the device: no copy on
    /// the CPU backend).
    pub(crate) fn prepare(&self, mut layer: CanonLayer) -> Blocks {
        process::process_layer(&mut layer, self.processing, self.config.norm);
        let mut stack = LayerStacks::new(1);
        stack.push(layer);
        stack.upload(&self.device)
    }
}

impl LayerSource {
    /// `part` of layers `ls` of the model (or more): a view of the resident blocks, or the
    /// streamed layers (one layer from the cache as is; several concatenated).
    pub fn blocks(&self, ls: &Range<usize>, part: Part) -> Result<Blocks> {
        match self {
            Self::Resident(b) => Ok(b.narrow(ls)),
            Self::Deferred(d) => d.range(ls),
            Self::Streamed(s) => {
                let parts = ls
                    .clone()
                    .map(|l| s.layer(l, part))
                    .collect::<Result<Vec<_>>>()?;
                match parts.as_slice() {
                    [] => Err(ModelError::Device("an empty range of layers".into())),
                    [one] => Ok(one.clone()),
                    _ => Ok(Blocks::cat(&parts)),
                }
            }
        }
    }

    /// The stream, when the layers stream.
    pub fn stream(&self) -> Option<&LayerStream> {
        match self {
            Self::Resident(_) | Self::Deferred(_) => None,
            Self::Streamed(s) => Some(s),
        }
    }
}

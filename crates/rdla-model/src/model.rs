//! The processed model on a Burn device, and its cached forward pass.

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::act;
use crate::arch::{self, Canonical};
use crate::config::{self, AttnSpan, ModelConfig, Norm};
use crate::error::{ModelError, Result, io_err};
use crate::fused;
use crate::layout::{Comp, Layout};
use crate::process::{self, Processing};
use crate::tokenizer::Tokenizer;
use crate::weights::{HostTensor, ProgressFn, WeightStore};

/// Masked attention scores on GPU backends (TransformerLens uses -inf; a large finite value
/// keeps every backend NaN-free — shaders may assume no infinities — and gives the same
/// softmax). The CPU path (`fused::attention_pattern_into`) skips masked keys instead.
const MASK_VALUE: f32 = -1.0e30;

/// Processed weights, stacked over layers (TransformerLens layout with a leading layer axis).
#[derive(Debug, Clone)]
pub struct Weights {
    /// `[V, d]`
    pub w_e: Tensor<2>,
    /// `[n_ctx, d]` (learned positions only)
    pub w_pos: Option<Tensor<2>>,
    /// LayerNorm weight and bias `[L, d]` each, present only when not folded.
    pub ln1: Option<(Tensor<2>, Tensor<2>)>,
    pub ln2: Option<(Tensor<2>, Tensor<2>)>,
    /// `[d]` each, present only when not folded.
    pub ln_f: Option<(Tensor<1>, Tensor<1>)>,
    /// `[L, H, d, dh]`
    pub w_q: Tensor<4>,
    /// `[L, KV, d, dh]` (KV = H without grouped-query attention)
    pub w_k: Tensor<4>,
    pub w_v: Tensor<4>,
    /// `[L, H, dh]`
    pub b_q: Tensor<3>,
    /// `[L, KV, dh]`
    pub b_k: Tensor<3>,
    pub b_v: Tensor<3>,
    /// `[L, H, dh, d]`
    pub w_o: Tensor<4>,
    /// `[L, d]`
    pub b_o: Tensor<2>,
    /// `[L, d, d_mlp]` (the linear path of a gated MLP)
    pub w_in: Tensor<3>,
    /// `[L, d, d_mlp]`, gated MLPs only
    pub w_gate: Option<Tensor<3>>,
    /// `[L, d_mlp]`
    pub b_in: Tensor<2>,
    /// `[L, d_mlp, d]`
    pub w_out: Tensor<3>,
    /// `[L, d]`
    pub b_out: Tensor<2>,
    /// `[d, V]`
    pub w_u: Tensor<2>,
    /// `[V]`
    pub b_u: Tensor<1>,
}

/// Move a host tensor onto the device (zero-copy on the CPU backend).
fn upload<const D: usize>(t: HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data, t.shape), device)
}

/// One weight stacked over layers, filled one block at a time.
#[derive(Debug, Default)]
struct Stack {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Stack {
    fn push(&mut self, shape: &[usize], data: &[f32], n_layers: usize) {
        if self.data.is_empty() {
            self.data.reserve_exact(n_layers * data.len());
            self.shape = shape.to_vec();
        }
        self.data.extend_from_slice(data);
    }

    fn push_t(&mut self, t: &HostTensor, n_layers: usize) {
        self.push(&t.shape, &t.data, n_layers);
    }

    fn upload<const D: usize>(self, n_layers: usize, device: &Device) -> Tensor<D> {
        let mut shape = vec![n_layers];
        shape.extend(self.shape);
        Tensor::from_data(TensorData::new(self.data, shape), device)
    }
}

/// Host buffers for every stacked block weight. Blocks arrive one at a time (already
/// processed) and are appended, so loading never holds more than one extra block.
#[derive(Debug, Default)]
struct LayerStacks {
    n_layers: usize,
    count: usize,
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
    /// LayerNorm weights and biases (only when not folded).
    ln1: Option<(Stack, Stack)>,
    ln2: Option<(Stack, Stack)>,
}

impl LayerStacks {
    fn new(n_layers: usize) -> Self {
        Self {
            n_layers,
            ..Self::default()
        }
    }

    fn push(&mut self, l: &arch::CanonLayer) {
        let n = self.n_layers;
        for (stack, t) in [
            (&mut self.w_q, &l.w_q),
            (&mut self.w_k, &l.w_k),
            (&mut self.w_v, &l.w_v),
            (&mut self.b_q, &l.b_q),
            (&mut self.b_k, &l.b_k),
            (&mut self.b_v, &l.b_v),
            (&mut self.w_o, &l.w_o),
            (&mut self.b_o, &l.b_o),
            (&mut self.w_in, &l.w_in),
            (&mut self.b_in, &l.b_in),
            (&mut self.w_out, &l.w_out),
            (&mut self.b_out, &l.b_out),
        ] {
            stack.push_t(t, n);
        }
        if let Some(g) = &l.w_gate {
            self.w_gate.get_or_insert_with(Stack::default).push_t(g, n);
        }
        for (dst, src) in [(&mut self.ln1, &l.ln1), (&mut self.ln2, &l.ln2)] {
            if let Some(ln) = src {
                let (w, b) = dst.get_or_insert_with(Default::default);
                w.push(&[ln.w.len()], &ln.w, n);
                b.push(&[ln.b.len()], &ln.b, n);
            }
        }
        self.count += 1;
    }
}

impl Weights {
    /// Upload the processed model-wide tensors and the stacked blocks.
    fn upload(c: Canonical, stacks: LayerStacks, device: &Device) -> Self {
        let n = stacks.n_layers;
        let ln =
            |p: Option<(Stack, Stack)>| p.map(|(w, b)| (w.upload(n, device), b.upload(n, device)));
        let Canonical {
            w_e,
            w_pos,
            ln_f,
            w_u,
            b_u,
            ..
        } = c;
        Self {
            w_e: upload(w_e, device),
            w_pos: w_pos.map(|t| upload(t, device)),
            ln1: ln(stacks.ln1),
            ln2: ln(stacks.ln2),
            ln_f: ln_f.map(|ln| {
                let d = ln.w.len();
                (
                    Tensor::from_data(TensorData::new(ln.w, [d]), device),
                    Tensor::from_data(TensorData::new(ln.b, [d]), device),
                )
            }),
            w_q: stacks.w_q.upload(n, device),
            w_k: stacks.w_k.upload(n, device),
            w_v: stacks.w_v.upload(n, device),
            b_q: stacks.b_q.upload(n, device),
            b_k: stacks.b_k.upload(n, device),
            b_v: stacks.b_v.upload(n, device),
            w_o: stacks.w_o.upload(n, device),
            b_o: stacks.b_o.upload(n, device),
            w_in: stacks.w_in.upload(n, device),
            b_in: stacks.b_in.upload(n, device),
            w_gate: stacks.w_gate.map(|g| g.upload(n, device)),
            w_out: stacks.w_out.upload(n, device),
            b_out: stacks.b_out.upload(n, device),
            w_u: upload(w_u, device),
            b_u: upload(b_u, device),
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
    /// What rdla must never write into: the model's folder (or its file, for a single-file
    /// model).
    pub protected: Vec<PathBuf>,
}

/// Everything the attribution needs from one forward pass, at every position.
#[derive(Debug, Clone)]
pub struct Cache {
    pub token_ids: Vec<u32>,
    /// The component axis of `components`.
    pub layout: Layout,
    /// Residual components `[C, P, d]` in the order `embed, pos, L0.attn, L0.mlp, …` (no
    /// `pos` with rotary positions; `L{l}.attn` includes `b_O`, `L{l}.mlp` includes `b_out`).
    pub components: Tensor<3>,
    /// Frozen norm scales `sqrt(var + eps)` (RMSNorm: `sqrt(mean(x²) + eps)`): `[L, P]`,
    /// `[L, P]`, `[P]`. `ln2` reads `resid_mid`, or `resid_pre` with a parallel residual.
    pub ln1_scale: Tensor<2>,
    pub ln2_scale: Tensor<2>,
    pub final_scale: Tensor<1>,
    /// Attention patterns `[L, H, P(dest), P(src)]`.
    pub patterns: Tensor<4>,
    /// Per-head attention results before `W_O`, `z = A · (LN1(x) W_V + b_V)`:
    /// `[L, P, H·d_head]` (TransformerLens `hook_z`, query heads).
    pub z: Tensor<3>,
    /// MLP pre-activations `[L, P, d_mlp]` (the gate's, in a gated MLP).
    pub mlp_pre: Tensor<3>,
    /// The linear path's pre-activations `x W_in + b_in` `[L, P, d_mlp]` (gated MLPs only).
    pub mlp_pre_linear: Option<Tensor<3>>,
    /// Logits at the last position `[V]`.
    pub last_logits: Tensor<1>,
}

impl Cache {
    pub fn n_pos(&self) -> usize {
        self.token_ids.len()
    }
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
        let dir = model_dir(path)?;
        let config = read_config(&dir)?;
        let tokenizer = Tokenizer::from_dir(&dir, config.bos_token_id)?;
        let store = WeightStore::open_dir(&dir)?;
        Self::from_store(
            &dir, config, tokenizer, &store, device, processing, progress,
        )
    }

    /// Build from an already-open checkpoint.
    pub fn from_store(
        dir: &Path,
        config: ModelConfig,
        tokenizer: Tokenizer,
        store: &WeightStore,
        device: &Device,
        processing: Processing,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Self> {
        // Stream: each block is processed and packed as soon as it is read, so the host holds
        // the packed model plus one block, never a second full copy.
        let processing = processing.for_config(&config);
        let norm = config.norm;
        let mut stacks = LayerStacks::new(config.n_layers);
        let mut canon = arch::load_streaming(&config, store, progress, &mut |mut layer| {
            process::process_layer(&mut layer, processing, norm);
            stacks.push(&layer);
            Ok(())
        })?;
        process::process_globals(&mut canon, processing, norm);
        debug_assert_eq!(stacks.count, config.n_layers);
        let weights = Weights::upload(canon, stacks, device);
        Ok(Self {
            name: display_name(dir),
            dir: dir.to_path_buf(),
            weights_source: store.description.clone(),
            protected: vec![dir.to_path_buf()],
            config,
            processing,
            tokenizer,
            weights,
            device: device.clone(),
        })
    }

    /// Check a token sequence fits the model.
    pub fn check_tokens(&self, ids: &[u32]) -> Result<()> {
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
        Ok(())
    }

    /// `[P, P]` mask, true where query `q` may not see key `p`.
    fn mask(&self, span: AttnSpan, n: usize) -> Tensor<2, Bool> {
        let data: Vec<bool> = (0..n * n).map(|i| !span.allows(i / n, i % n)).collect();
        Tensor::from_data(TensorData::new(data, [n, n]), &self.device)
    }

    /// LayerNorm (or RMSNorm) with the scale exposed: returns `(normalised x, scale [P])`.
    /// `x: [P, d]`. Reference: TransformerLens `LayerNormPre` / `LayerNorm` (population
    /// variance), `RMSNormPre` / `RMSNorm`.
    fn layer_norm(
        &self,
        x: Tensor<2>,
        wb: Option<(Tensor<1>, Tensor<1>)>,
    ) -> (Tensor<2>, Tensor<1>) {
        let xc = match self.config.norm {
            Norm::LayerNorm => x.clone() - x.mean_dim(1),
            Norm::RmsNorm => x,
        };
        let scale = xc
            .clone()
            .square()
            .mean_dim(1)
            .add_scalar(self.config.ln_eps)
            .sqrt(); // [P, 1]
        let mut xn = xc / scale.clone();
        if let Some((w, b)) = wb {
            xn = xn * w.unsqueeze_dim::<2>(0) + b.unsqueeze_dim::<2>(0);
        }
        (xn, scale.squeeze_dim::<1>(1))
    }

    fn layer_ln(ln: &Option<(Tensor<2>, Tensor<2>)>, l: usize) -> Option<(Tensor<1>, Tensor<1>)> {
        ln.as_ref().map(|(w, b)| {
            (
                w.clone().narrow(0, l, 1).squeeze_dim::<1>(0),
                b.clone().narrow(0, l, 1).squeeze_dim::<1>(0),
            )
        })
    }

    /// The forward pass over `ids` (BOS included if wanted), caching what attribution needs.
    ///
    /// Cached activations are written into preallocated tensors as each layer finishes (in
    /// place on the CPU backend), rather than collected per layer and stacked at the end,
    /// which would hold two copies of the cache at once.
    pub fn run(&self, ids: &[u32]) -> Result<Cache> {
        self.check_tokens(ids)?;
        let cfg = &self.config;
        let w = &self.weights;
        let dev = &self.device;
        let (n, h, kv, dh, d) = (
            ids.len(),
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_head,
            cfg.d_model,
        );
        let layout = cfg.layout();
        let (n_l, n_c, dm) = (cfg.n_layers, layout.n(), cfg.d_mlp);
        // On the CPU backend the attention softmax and the MLP activation run as fused,
        // in-place, multi-threaded kernels over the host buffers (see `fused`).
        let cpu = *dev == Device::flex();
        let id_data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let id_t: Tensor<1, Int> = Tensor::from_data(TensorData::new(id_data, [n]), dev);
        let rotary = cfg.rotary().map(|r| {
            let (cos, sin) = r.tables(n);
            let half = r.dim / 2;
            let t = |v: Vec<f32>| {
                Tensor::<2>::from_data(TensorData::new(v, [n, half]), dev).unsqueeze_dim::<3>(0)
            };
            (r.dim, t(cos), t(sin))
        });
        let rotate = |x: Tensor<3>| match &rotary {
            None => x,
            Some((dim, cos, sin)) => apply_rotary(x, *dim, cos, sin),
        };
        // key/value heads repeated for their query heads (grouped-query attention)
        let repeat_kv = |x: Tensor<3>| {
            if kv == h {
                x
            } else {
                x.unsqueeze_dim::<4>(1)
                    .expand([kv, h / kv, n, dh])
                    .reshape([h, n, dh])
            }
        };

        let embed = w.w_e.clone().select(0, id_t); // [P, d]
        let mut comps = Tensor::<3>::empty([n_c, n, d], dev)
            .slice_assign([0..1, 0..n, 0..d], embed.clone().unsqueeze_dim::<3>(0));
        let mut x = embed;
        if let (Some(w_pos), Some(c)) = (&w.w_pos, layout.index(Comp::Pos)) {
            let pos = w_pos.clone().narrow(0, 0, n); // [P, d]
            x = x + pos.clone();
            comps = comps.slice_assign([c..c + 1, 0..n, 0..d], pos.unsqueeze_dim::<3>(0));
        }
        let mut s1s = Tensor::<2>::empty([n_l, n], dev);
        let mut s2s = Tensor::<2>::empty([n_l, n], dev);
        let mut pats = Tensor::<4>::empty([n_l, h, n, n], dev);
        let mut zs = Tensor::<3>::empty([n_l, n, h * dh], dev);
        let mut pres = Tensor::<3>::empty([n_l, n, dm], dev);
        let mut lins = cfg.gated_mlp.then(|| Tensor::<3>::empty([n_l, n, dm], dev));

        for l in 0..n_l {
            let layer = |t: &Tensor<4>| t.clone().narrow(0, l, 1).squeeze_dim::<3>(0);
            let layer3 = |t: &Tensor<3>| t.clone().narrow(0, l, 1).squeeze_dim::<2>(0);
            let layer2 = |t: &Tensor<2>| t.clone().narrow(0, l, 1); // [1, ·]

            // attention
            let (xn, s1) = self.layer_norm(x.clone(), Self::layer_ln(&w.ln1, l));
            let xh = xn.unsqueeze_dim::<3>(0); // [1, P, d]
            let q = xh.clone().matmul(layer(&w.w_q)) + layer3(&w.b_q).unsqueeze_dim::<3>(1); // [H, P, dh]
            let k = xh.clone().matmul(layer(&w.w_k)) + layer3(&w.b_k).unsqueeze_dim::<3>(1); // [KV, P, dh]
            let v = xh.matmul(layer(&w.w_v)) + layer3(&w.b_v).unsqueeze_dim::<3>(1);
            let (q, k, v) = (rotate(q), repeat_kv(rotate(k)), repeat_kv(v));
            let scores = q.matmul(k.swap_dims(1, 2)); // [H, P, P]
            // the pattern goes straight into the cache; `pattern` is layer `l` of it
            let pattern = if cpu {
                pats = fused::attention_pattern_into(
                    scores,
                    cfg.attn_scale,
                    cfg.attn_spans[l],
                    pats,
                    l,
                    dev,
                )?;
                layer(&pats)
            } else {
                let mask = self
                    .mask(cfg.attn_spans[l], n)
                    .unsqueeze_dim::<3>(0)
                    .expand([h, n, n]);
                let pattern = softmax(
                    scores
                        .mul_scalar(cfg.attn_scale)
                        .mask_fill(mask, MASK_VALUE),
                    2,
                );
                pats = pats.slice_assign(
                    [l..l + 1, 0..h, 0..n, 0..n],
                    pattern.clone().unsqueeze_dim::<4>(0),
                );
                pattern
            }; // [H, P, P]
            let z = pattern.matmul(v); // [H, P, dh]
            let z_flat = z.swap_dims(0, 1).reshape([n, h * dh]); // [P, H·dh]
            zs = zs.slice_assign(
                [l..l + 1, 0..n, 0..h * dh],
                z_flat.clone().unsqueeze_dim::<3>(0),
            );
            let w_o = layer(&w.w_o).reshape([h * dh, d]);
            let attn_out = z_flat.matmul(w_o) + layer2(&w.b_o); // [P, d]
            let resid_mid = x.clone() + attn_out.clone();
            let c = layout.attn(l);
            comps = comps.slice_assign([c..c + 1, 0..n, 0..d], attn_out.unsqueeze_dim::<3>(0));
            s1s = s1s.slice_assign([l..l + 1, 0..n], s1.unsqueeze_dim::<2>(0));

            // MLP: reads resid_mid, or resid_pre with a parallel residual
            let mlp_in = if cfg.parallel_residual {
                x
            } else {
                resid_mid.clone()
            };
            let (xn2, s2) = self.layer_norm(mlp_in, Self::layer_ln(&w.ln2, l));
            let lin = xn2.clone().matmul(layer3(&w.w_in)) + layer2(&w.b_in); // [P, d_mlp]
            let pre = match &w.w_gate {
                Some(w_gate) => xn2.matmul(layer3(w_gate)),
                None => lin.clone(),
            };
            pres = pres.slice_assign([l..l + 1, 0..n, 0..dm], pre.clone().unsqueeze_dim::<3>(0));
            let act = if cpu && fused::has_activation(cfg.act) {
                fused::activation(pre, cfg.act, dev)?
            } else {
                act::apply(cfg.act, pre)
            };
            let post = match lins.take() {
                Some(all) => {
                    lins =
                        Some(all.slice_assign(
                            [l..l + 1, 0..n, 0..dm],
                            lin.clone().unsqueeze_dim::<3>(0),
                        ));
                    act * lin
                }
                None => act,
            };
            let mlp_out = post.matmul(layer3(&w.w_out)) + layer2(&w.b_out); // [P, d]
            x = resid_mid + mlp_out.clone();
            let c = layout.mlp(l);
            comps = comps.slice_assign([c..c + 1, 0..n, 0..d], mlp_out.unsqueeze_dim::<3>(0));
            s2s = s2s.slice_assign([l..l + 1, 0..n], s2.unsqueeze_dim::<2>(0));
        }

        let (xf, sf) = self.layer_norm(x, w.ln_f.clone());
        let last = xf.narrow(0, n - 1, 1); // [1, d]
        let last_logits =
            (last.matmul(w.w_u.clone()) + w.b_u.clone().unsqueeze_dim::<2>(0)).squeeze_dim::<1>(0);

        Ok(Cache {
            token_ids: ids.to_vec(),
            layout,
            components: comps,
            ln1_scale: s1s,
            ln2_scale: s2s,
            final_scale: sf,
            patterns: pats,
            z: zs,
            mlp_pre: pres,
            mlp_pre_linear: lins,
            last_logits,
        })
    }

    /// Logits at every position `[P, V]` from a cache (the forward computes only the last).
    pub fn all_logits(&self, cache: &Cache) -> Tensor<2> {
        let resid = cache.components.clone().sum_dim(0).squeeze_dim::<2>(0); // [P, d]
        let xc = match self.config.norm {
            Norm::LayerNorm => resid.clone() - resid.mean_dim(1),
            Norm::RmsNorm => resid,
        };
        let mut xn = xc / cache.final_scale.clone().unsqueeze_dim::<2>(1);
        if let Some((w, b)) = &self.weights.ln_f {
            xn = xn * w.clone().unsqueeze_dim::<2>(0) + b.clone().unsqueeze_dim::<2>(0);
        }
        xn.matmul(self.weights.w_u.clone()) + self.weights.b_u.clone().unsqueeze_dim::<2>(0)
    }
}

/// Rotary embedding (`rotate_half` layout) on the first `dim` channels of `x [heads, P, dh]`:
/// pairs `(i, i + dim/2)` are rotated by `cos`/`sin` `[1, P, dim/2]`.
fn apply_rotary(x: Tensor<3>, dim: usize, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let dh = x.dims()[2];
    let half = dim / 2;
    let x1 = x.clone().narrow(2, 0, half);
    let x2 = x.clone().narrow(2, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos.clone() + x1 * sin.clone();
    if dim < dh {
        Tensor::cat(vec![r1, r2, x.narrow(2, dim, dh - dim)], 2)
    } else {
        Tensor::cat(vec![r1, r2], 2)
    }
}

/// Read a tensor back to the host as `f32`.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))
}

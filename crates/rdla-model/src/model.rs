//! The processed model on a Burn device, and its cached forward pass.

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::act;
use crate::arch::{self, Canonical};
use crate::config::{AttnSpan, ModelConfig, RawConfig};
use crate::error::{ModelError, Result, io_err};
use crate::process::{self, Processing};
use crate::tokenizer::Tokenizer;
use crate::weights::{HostTensor, ProgressFn, WeightStore};

/// Masked attention scores (TransformerLens uses -inf; a large finite value keeps every
/// backend NaN-free and gives the same softmax).
const MASK_VALUE: f32 = -1.0e30;

/// Processed weights, stacked over layers (TransformerLens layout with a leading layer axis).
#[derive(Debug, Clone)]
pub struct Weights {
    /// `[V, d]`
    pub w_e: Tensor<2>,
    /// `[n_ctx, d]`
    pub w_pos: Tensor<2>,
    /// LayerNorm weight and bias `[L, d]` each, present only when not folded.
    pub ln1: Option<(Tensor<2>, Tensor<2>)>,
    pub ln2: Option<(Tensor<2>, Tensor<2>)>,
    /// `[d]` each, present only when not folded.
    pub ln_f: Option<(Tensor<1>, Tensor<1>)>,
    /// `[L, H, d, dh]`
    pub w_q: Tensor<4>,
    pub w_k: Tensor<4>,
    pub w_v: Tensor<4>,
    /// `[L, H, dh]`
    pub b_q: Tensor<3>,
    pub b_k: Tensor<3>,
    pub b_v: Tensor<3>,
    /// `[L, H, dh, d]`
    pub w_o: Tensor<4>,
    /// `[L, d]`
    pub b_o: Tensor<2>,
    /// `[L, d, d_mlp]`
    pub w_in: Tensor<3>,
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

fn upload<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

fn upload_stacked<const D: usize>(parts: Vec<&HostTensor>, device: &Device) -> Tensor<D> {
    let mut shape = vec![parts.len()];
    shape.extend(parts.first().map(|p| p.shape.clone()).unwrap_or_default());
    let data: Vec<f32> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

impl Weights {
    fn upload(c: &Canonical, device: &Device) -> Self {
        let layers = &c.layers;
        let stack2 = |f: &dyn Fn(&arch::CanonLayer) -> &HostTensor| -> Tensor<2> {
            upload_stacked(layers.iter().map(f).collect(), device)
        };
        let stack3 = |f: &dyn Fn(&arch::CanonLayer) -> &HostTensor| -> Tensor<3> {
            upload_stacked(layers.iter().map(f).collect(), device)
        };
        let stack4 = |f: &dyn Fn(&arch::CanonLayer) -> &HostTensor| -> Tensor<4> {
            upload_stacked(layers.iter().map(f).collect(), device)
        };
        let ln_stack = |get: &dyn Fn(&arch::CanonLayer) -> Option<&arch::LayerNormParams>| {
            let lns: Option<Vec<_>> = layers.iter().map(get).collect();
            lns.map(|lns| {
                let d = lns.first().map_or(0, |l| l.w.len());
                let w: Vec<f32> = lns.iter().flat_map(|l| l.w.iter().copied()).collect();
                let b: Vec<f32> = lns.iter().flat_map(|l| l.b.iter().copied()).collect();
                (
                    Tensor::from_data(TensorData::new(w, [lns.len(), d]), device),
                    Tensor::from_data(TensorData::new(b, [lns.len(), d]), device),
                )
            })
        };
        Self {
            w_e: upload(&c.w_e, device),
            w_pos: upload(&c.w_pos, device),
            ln1: ln_stack(&|l| l.ln1.as_ref()),
            ln2: ln_stack(&|l| l.ln2.as_ref()),
            ln_f: c.ln_f.as_ref().map(|ln| {
                let d = ln.w.len();
                (
                    Tensor::from_data(TensorData::new(ln.w.clone(), [d]), device),
                    Tensor::from_data(TensorData::new(ln.b.clone(), [d]), device),
                )
            }),
            w_q: stack4(&|l| &l.w_q),
            w_k: stack4(&|l| &l.w_k),
            w_v: stack4(&|l| &l.w_v),
            b_q: stack3(&|l| &l.b_q),
            b_k: stack3(&|l| &l.b_k),
            b_v: stack3(&|l| &l.b_v),
            w_o: stack4(&|l| &l.w_o),
            b_o: stack2(&|l| &l.b_o),
            w_in: stack3(&|l| &l.w_in),
            b_in: stack2(&|l| &l.b_in),
            w_out: stack3(&|l| &l.w_out),
            b_out: stack2(&|l| &l.b_out),
            w_u: upload(&c.w_u, device),
            b_u: upload(&c.b_u, device),
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
}

/// Everything the attribution needs from one forward pass, at every position.
#[derive(Debug, Clone)]
pub struct Cache {
    pub token_ids: Vec<u32>,
    /// Residual components `[C, P, d]` in the order `embed, pos, L0.attn, L0.mlp, …`
    /// (`L{l}.attn` includes `b_O`, `L{l}.mlp` includes `b_out`).
    pub components: Tensor<3>,
    /// Frozen LayerNorm scales `sqrt(var + eps)`: `[L, P]`, `[L, P]`, `[P]`.
    pub ln1_scale: Tensor<2>,
    pub ln2_scale: Tensor<2>,
    pub final_scale: Tensor<1>,
    /// Attention patterns `[L, H, P(dest), P(src)]`.
    pub patterns: Tensor<4>,
    /// MLP pre-activations `[L, P, d_mlp]`.
    pub mlp_pre: Tensor<3>,
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
    RawConfig::from_json(&text)
        .map_err(|source| ModelError::ConfigJson { path, source })?
        .into_config()
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
        let mut canon = arch::load_canonical(&config, store, progress)?;
        process::process(&mut canon, processing);
        let weights = Weights::upload(&canon, device);
        Ok(Self {
            name: display_name(dir),
            dir: dir.to_path_buf(),
            weights_source: store.description.clone(),
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

    /// LayerNorm with the scale exposed: returns `(normalised x, scale [P])`. `x: [P, d]`.
    /// Reference: TransformerLens `LayerNormPre` / `LayerNorm` (population variance).
    fn layer_norm(
        &self,
        x: Tensor<2>,
        wb: Option<(Tensor<1>, Tensor<1>)>,
    ) -> (Tensor<2>, Tensor<1>) {
        let xc = x.clone() - x.mean_dim(1);
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
    pub fn run(&self, ids: &[u32]) -> Result<Cache> {
        self.check_tokens(ids)?;
        let cfg = &self.config;
        let w = &self.weights;
        let (n, h, dh, d) = (ids.len(), cfg.n_heads, cfg.d_head, cfg.d_model);
        let id_data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let id_t: Tensor<1, Int> = Tensor::from_data(TensorData::new(id_data, [n]), &self.device);

        let embed = w.w_e.clone().select(0, id_t); // [P, d]
        let pos = w.w_pos.clone().narrow(0, 0, n); // [P, d]
        let mut x = embed.clone() + pos.clone();
        let mut comps = vec![embed, pos];
        let (mut s1s, mut s2s, mut pats, mut pres) = (vec![], vec![], vec![], vec![]);

        for l in 0..cfg.n_layers {
            let layer = |t: &Tensor<4>| t.clone().narrow(0, l, 1).squeeze_dim::<3>(0);
            let layer3 = |t: &Tensor<3>| t.clone().narrow(0, l, 1).squeeze_dim::<2>(0);
            let layer2 = |t: &Tensor<2>| t.clone().narrow(0, l, 1); // [1, ·]

            // attention
            let (xn, s1) = self.layer_norm(x.clone(), Self::layer_ln(&w.ln1, l));
            let xh = xn.unsqueeze_dim::<3>(0); // [1, P, d]
            let q = xh.clone().matmul(layer(&w.w_q)) + layer3(&w.b_q).unsqueeze_dim::<3>(1); // [H, P, dh]
            let k = xh.clone().matmul(layer(&w.w_k)) + layer3(&w.b_k).unsqueeze_dim::<3>(1);
            let v = xh.matmul(layer(&w.w_v)) + layer3(&w.b_v).unsqueeze_dim::<3>(1);
            let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar(cfg.attn_scale); // [H, P, P]
            let mask = self
                .mask(cfg.attn_spans[l], n)
                .unsqueeze_dim::<3>(0)
                .expand([h, n, n]);
            let pattern = softmax(scores.mask_fill(mask, MASK_VALUE), 2); // [H, P, P]
            let z = pattern.clone().matmul(v); // [H, P, dh]
            let z_flat = z.swap_dims(0, 1).reshape([n, h * dh]); // [P, H·dh]
            let w_o = layer(&w.w_o).reshape([h * dh, d]);
            let attn_out = z_flat.matmul(w_o) + layer2(&w.b_o); // [P, d]
            let resid_mid = x + attn_out.clone();

            // MLP
            let (xn2, s2) = self.layer_norm(resid_mid.clone(), Self::layer_ln(&w.ln2, l));
            let pre = xn2.matmul(layer3(&w.w_in)) + layer2(&w.b_in); // [P, d_mlp]
            let post = act::apply(cfg.act, pre.clone());
            let mlp_out = post.matmul(layer3(&w.w_out)) + layer2(&w.b_out); // [P, d]
            x = resid_mid + mlp_out.clone();

            comps.push(attn_out);
            comps.push(mlp_out);
            s1s.push(s1);
            s2s.push(s2);
            pats.push(pattern);
            pres.push(pre);
        }

        let (xf, sf) = self.layer_norm(x, w.ln_f.clone());
        let last = xf.narrow(0, n - 1, 1); // [1, d]
        let last_logits =
            (last.matmul(w.w_u.clone()) + w.b_u.clone().unsqueeze_dim::<2>(0)).squeeze_dim::<1>(0);

        Ok(Cache {
            token_ids: ids.to_vec(),
            components: Tensor::stack(comps, 0),
            ln1_scale: Tensor::stack(s1s, 0),
            ln2_scale: Tensor::stack(s2s, 0),
            final_scale: sf,
            patterns: Tensor::stack(pats, 0),
            mlp_pre: Tensor::stack(pres, 0),
            last_logits,
        })
    }

    /// Logits at every position `[P, V]` from a cache (the forward computes only the last).
    pub fn all_logits(&self, cache: &Cache) -> Tensor<2> {
        let resid = cache.components.clone().sum_dim(0).squeeze_dim::<2>(0); // [P, d]
        let xc = resid.clone() - resid.mean_dim(1);
        let mut xn = xc / cache.final_scale.clone().unsqueeze_dim::<2>(1);
        if let Some((w, b)) = &self.weights.ln_f {
            xn = xn * w.clone().unsqueeze_dim::<2>(0) + b.clone().unsqueeze_dim::<2>(0);
        }
        xn.matmul(self.weights.w_u.clone()) + self.weights.b_u.clone().unsqueeze_dim::<2>(0)
    }

    /// Component labels in cache order: `embed, pos, L0.attn, L0.mlp, …`.
    pub fn component_labels(&self) -> Vec<String> {
        let mut v = vec!["embed".to_string(), "pos".to_string()];
        for l in 0..self.config.n_layers {
            v.push(format!("L{l}.attn"));
            v.push(format!("L{l}.mlp"));
        }
        v
    }
}

/// Read a tensor back to the host as `f32`.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))
}

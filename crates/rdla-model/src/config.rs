//! The validated model configuration, and the parts of `config.json` every family shares.
//!
//! Each family reads its own spelling of `config.json` (`arch/<family>.rs`, a permissive serde
//! struct with `Option` fields) and converts it into a [`ModelConfig`] with every default
//! resolved; [`from_value`] picks the family from `model_type` / `architectures` through the
//! registry in [`crate::arch`]. The shared pieces (dtype and BOS fields, rotary parameters,
//! bounds checks) live here.

use serde::Deserialize;

use crate::arch::{self, Family};
use crate::error::{ModelError, Result};
use crate::layout::Layout;

/// The normalisation layers of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Norm {
    /// `(x − mean) / sqrt(var + eps)`, then weight and bias.
    LayerNorm,
    /// `x / sqrt(mean(x²) + eps)`, then weight (no centring, no bias).
    RmsNorm,
}

/// Rotary position embeddings (`rotate_half` layout: the first `dim/2` and the next `dim/2`
/// channels of each head are rotated as pairs), on the first `dim` channels of each head.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rotary {
    /// Rotated channels per head (even, ≤ d_head).
    pub dim: usize,
    /// The frequency of each pair `[dim/2]`, scaling applied (kept in f64: angles are
    /// formed in f64 and only `cos`/`sin` are rounded to f32).
    pub inv_freq: Vec<f64>,
    /// Human-readable description (`theta 500000, llama3 ×32`).
    pub describe: String,
}

impl Rotary {
    /// `cos` and `sin` tables `[n, dim/2]` for positions `0..n`: angles `position · inv_freq`
    /// formed in f64, then rounded to f32. (transformers and TransformerLens both round the
    /// angle itself to f32 — about 4e-6 rad at position 100 — and differ from each other by
    /// that much; the exact angle sits between them.)
    pub fn tables(&self, n: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &self.inv_freq {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        (cos, sin)
    }
}

/// How positions enter the model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Positional {
    /// A learned `W_pos` added to the embedding (a `pos` component).
    Learned,
    /// Rotary embeddings inside attention (no `pos` component).
    Rotary(Rotary),
}

/// MLP activation functions (HF `activation_function` / `hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluNew,
    /// exact erf GELU (`gelu`).
    Gelu,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluNew,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => {
                return Err(ModelError::InvalidConfigField {
                    field: "activation_function",
                    reason: format!("unsupported activation `{other}`"),
                });
            }
        })
    }

    /// `act'(0)`: the frozen gate `act(z)/z` where `|z|` is tiny (DESIGN.md §1).
    pub fn gate_at_zero(self) -> f32 {
        match self {
            Self::GeluNew | Self::Gelu | Self::Silu => 0.5,
            Self::Relu => 0.0,
        }
    }
}

/// Attention span of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AttnSpan {
    /// causal over every earlier position
    Global,
    /// causal over the last `window` positions: key `p` is visible from query `q` iff
    /// `q - window < p <= q` (HF GPT-Neo `bias ^ tril(bias, -window_size)`).
    Local(usize),
}

impl AttnSpan {
    /// The keys query `q` sees, a contiguous range ending at `q` — the one place the span is
    /// turned into positions (the forward pass's kernels, the pattern rows, a head's sources).
    pub fn visible(self, q: usize) -> std::ops::Range<usize> {
        match self {
            Self::Global => 0..q + 1,
            Self::Local(w) => (q + 1).saturating_sub(w)..q + 1,
        }
    }

    /// Whether query `q` sees key `p`.
    pub fn allows(self, q: usize, p: usize) -> bool {
        self.visible(q).contains(&p)
    }
}

/// A validated model configuration: no `Option` left where a default exists.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    /// The family the checkpoint belongs to (its entry in [`crate::arch::FAMILIES`]).
    pub family: &'static Family,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (`< n_heads` with grouped-query attention; query head `h` reads
    /// key/value head `h / (n_heads / n_kv_heads)`).
    pub n_kv_heads: usize,
    pub d_model: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub n_ctx: usize,
    pub d_vocab: usize,
    pub act: Activation,
    pub ln_eps: f64,
    /// Multiplier applied to `q·k` (`1/sqrt(d_head)` for GPT-2, `1` for GPT-Neo).
    pub attn_scale: f32,
    pub attn_spans: Vec<AttnSpan>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// The dtype the checkpoint says it is stored in (informational).
    pub dtype: String,
    pub norm: Norm,
    pub positional: Positional,
    /// Attention and MLP both read `resid_pre` (GPT-NeoX `use_parallel_residual`).
    pub parallel_residual: bool,
    /// SwiGLU-style MLP: `act(x W_gate) ⊙ (x W_in + b_in)`.
    pub gated_mlp: bool,
    /// Per-head RMSNorm on queries and keys before the rotary map (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorms on the attention's and the MLP's outputs before they join the residual stream
    /// (Gemma 2/3 `post_attention_layernorm`, `post_feedforward_layernorm`): their scales are
    /// frozen like every other norm's (DESIGN.md §1.1).
    pub post_norms: bool,
    /// Attention logit soft-cap `cap · tanh(s / cap)` on the scaled scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Final logit soft-cap (Gemma 2): the model outputs `cap · tanh(logit / cap)`; rdla
    /// attributes the pre-cap logit (linear in the residual stream) and shows the capped one.
    pub final_softcap: Option<f32>,
    /// A second rotary embedding for the local (sliding-window) layers (Gemma 3's
    /// `rope_local_base_freq`); `None`: every layer uses [`ModelConfig::positional`].
    pub local_rotary: Option<Rotary>,
}

impl ModelConfig {
    /// The fields every family fills the same way, with the defaults most families share
    /// (learned positions, LayerNorm, global attention, `1/sqrt(d_head)` query scale, a plain
    /// MLP, a sequential residual); a family overrides what differs with struct-update syntax.
    /// `tie_default` is the family's `tie_word_embeddings` when the config does not say.
    pub fn base(
        family: &'static Family,
        d: Dims,
        c: &Common,
        tie_default: bool,
        act: Activation,
        ln_eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            family,
            n_layers: d.n_layers,
            n_heads: d.n_heads,
            n_kv_heads: d.n_kv_heads,
            d_model: d.d_model,
            d_head: d.d_head,
            d_mlp: d.d_mlp,
            n_ctx: d.n_ctx,
            d_vocab: c.vocab()?,
            act,
            ln_eps,
            attn_scale: 1.0 / (d.d_head as f32).sqrt(),
            attn_spans: vec![AttnSpan::Global; d.n_layers],
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(tie_default),
            bos_token_id: c.bos(),
            dtype: c.dtype(),
            norm: Norm::LayerNorm,
            positional: Positional::Learned,
            parallel_residual: false,
            gated_mlp: false,
            qk_norm: false,
            post_norms: false,
            attn_softcap: None,
            final_softcap: None,
            local_rotary: None,
        })
    }

    /// The component axis of this model (DESIGN.md §1.2).
    pub fn layout(&self) -> Layout {
        Layout::of(self)
    }

    /// Whether there is a learned positional embedding (a `pos` component).
    pub fn has_pos(&self) -> bool {
        self.positional == Positional::Learned
    }

    /// Query heads per key/value head.
    pub fn kv_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// The rotary embedding, if any.
    pub fn rotary(&self) -> Option<&Rotary> {
        match &self.positional {
            Positional::Rotary(r) => Some(r),
            Positional::Learned => None,
        }
    }

    /// The rotary embedding layer `l` uses: the local one on a sliding-window layer of a model
    /// that has one, else the model's.
    pub fn layer_rotary(&self, l: usize) -> Option<&Rotary> {
        match (&self.local_rotary, self.attn_spans.get(l)) {
            (Some(local), Some(AttnSpan::Local(_))) => Some(local),
            _ => self.rotary(),
        }
    }

    /// The logits the model outputs from the pre-cap logits it computes (the final soft-cap,
    /// where there is one).
    pub fn output_logit(&self, logit: f32) -> f32 {
        match self.final_softcap {
            Some(cap) => cap * (logit / cap).tanh(),
            None => logit,
        }
    }
}

/// The fields of `config.json` every family reads the same way.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Common {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub vocab_size: Option<usize>,
    pub bos_token_id: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
}

impl Common {
    /// `dtype` (transformers ≥ 5) or `torch_dtype` (classic), `float32` when absent.
    pub fn dtype(&self) -> String {
        self.dtype
            .clone()
            .or_else(|| self.torch_dtype.clone())
            .unwrap_or_else(|| "float32".into())
    }

    /// `bos_token_id` when it is not a usable id (negative, fractional, too large): an error
    /// rather than silently no BOS.
    pub fn check_bos(&self) -> Result<()> {
        let bad = match &self.bos_token_id {
            Some(serde_json::Value::Number(n)) => Some(n.clone()),
            Some(serde_json::Value::Array(a)) => a.first().and_then(|v| v.as_number().cloned()),
            _ => None,
        }
        .filter(|n| n.as_u64().and_then(|v| u32::try_from(v).ok()).is_none());
        match bad {
            Some(n) => Err(ModelError::InvalidConfigField {
                field: "bos_token_id",
                reason: format!("{n} is not a token id"),
            }),
            None => Ok(()),
        }
    }

    /// `bos_token_id` (a number, or the first of a list).
    pub fn bos(&self) -> Option<u32> {
        match &self.bos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
            Some(serde_json::Value::Array(a)) => a
                .first()
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            _ => None,
        }
    }

    pub fn model_type(&self) -> &str {
        self.model_type.as_deref().unwrap_or("")
    }

    /// The vocabulary size, required and bounded.
    pub fn vocab(&self) -> Result<usize> {
        bounded(
            req(self.vocab_size, "vocab_size", self.model_type())?,
            "vocab_size",
            MAX_VOCAB,
        )
    }
}

/// Upper bounds on the sizes a config may declare. They are far above any published model and
/// are checked before anything is allocated from them; the checkpoint's own tensor shapes are
/// checked against the config afterwards.
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_D_MODEL: usize = 65_536;
pub const MAX_D_HEAD: usize = 4096;
pub const MAX_D_MLP: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_CTX: usize = 1 << 24;

/// A required field, or the error naming it.
pub fn req<T>(v: Option<T>, field: &'static str, model_type: &str) -> Result<T> {
    v.ok_or_else(|| ModelError::MissingConfigField {
        field,
        model_type: if model_type.is_empty() {
            "<missing>".into()
        } else {
            model_type.to_string()
        },
    })
}

/// `v` in `1..=max`, or an error naming the field.
pub fn bounded(v: usize, field: &'static str, max: usize) -> Result<usize> {
    if v == 0 {
        return Err(ModelError::InvalidConfigField {
            field,
            reason: "must be positive".into(),
        });
    }
    if v > max {
        return Err(ModelError::InvalidConfigField {
            field,
            reason: format!("{v} is larger than any model rdla can load (at most {max})"),
        });
    }
    Ok(v)
}

/// Per-layer spans from transformers' `layer_types` (`full_attention`, `sliding_attention`
/// with `window`).
pub fn spans_from_layer_types(
    types: &[String],
    n_layers: usize,
    window: impl Fn() -> Result<usize>,
) -> Result<Vec<AttnSpan>> {
    if types.len() != n_layers {
        return Err(ModelError::InvalidConfigField {
            field: "layer_types",
            reason: format!("{} entries for {n_layers} layers", types.len()),
        });
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(AttnSpan::Global),
            "sliding_attention" => Ok(AttnSpan::Local(window()?)),
            other => Err(ModelError::InvalidConfigField {
                field: "layer_types",
                reason: format!("unknown layer type `{other}`"),
            }),
        })
        .collect()
}

/// A norm epsilon: finite and positive.
pub fn epsilon(v: f64, field: &'static str) -> Result<f64> {
    if v.is_finite() && v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(ModelError::InvalidConfigField {
            field,
            reason: format!("{v} is not a usable epsilon (expected 0 < eps < 1)"),
        })
    }
}

/// `d_head` from an explicit `head_dim`, or `d_model / n_heads`.
pub fn head_dim(
    explicit: Option<usize>,
    d_model: usize,
    n_heads: usize,
    heads_field: &'static str,
) -> Result<usize> {
    match explicit {
        Some(dh) => bounded(dh, "head_dim", MAX_D_HEAD),
        None if d_model.is_multiple_of(n_heads) => {
            bounded(d_model / n_heads, "head_dim", MAX_D_HEAD)
        }
        None => Err(ModelError::InvalidConfigField {
            field: heads_field,
            reason: format!(
                "hidden size {d_model} is not divisible by {n_heads} heads and there is no head_dim"
            ),
        }),
    }
}

/// Key/value heads: a divisor of the query heads.
pub fn kv_heads(n_kv: Option<usize>, n_heads: usize) -> Result<usize> {
    let kv = bounded(n_kv.unwrap_or(n_heads), "num_key_value_heads", MAX_HEADS)?;
    if !n_heads.is_multiple_of(kv) {
        return Err(ModelError::InvalidConfigField {
            field: "num_key_value_heads",
            reason: format!("{n_heads} attention heads are not a multiple of {kv}"),
        });
    }
    Ok(kv)
}

/// Rotary parameters in either spelling: classic top-level `rope_theta` / `rope_scaling` /
/// `rotary_pct` / `rotary_emb_base` / `partial_rotary_factor`, or transformers ≥ 5
/// `rope_parameters`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RopeFields {
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub rotary_pct: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
}

impl RopeFields {
    /// A field of `rope_parameters` (transformers ≥ 5), else of `rope_scaling`.
    fn field(&self, key: &str) -> Option<&serde_json::Value> {
        [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
            .find_map(|v| v.get(key))
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.field(key).and_then(serde_json::Value::as_f64)
    }

    /// The rotary embedding of a `d_head`-channel head; `default_partial` is the family's
    /// rotated fraction when the config does not say.
    pub fn rotary(&self, d_head: usize, default_partial: f64) -> Result<Rotary> {
        let bad = |reason: String| ModelError::InvalidConfigField {
            field: "rope_scaling",
            reason,
        };
        let theta = self
            .num("rope_theta")
            .or(self.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(10_000.0);
        let partial = self
            .num("partial_rotary_factor")
            .or(self.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(default_partial);
        // a base below 1 (or absurdly large) makes every angle degenerate
        if !(theta.is_finite() && (1.0..=1e12).contains(&theta) && partial > 0.0 && partial <= 1.0)
        {
            return Err(ModelError::InvalidConfigField {
                field: "rope_theta",
                reason: format!(
                    "rope_theta {theta} / partial rotary factor {partial} out of range (1 ≤ theta ≤ 1e12, 0 < factor ≤ 1)"
                ),
            });
        }
        let dim = ((d_head as f64 * partial) as usize) & !1;
        if dim == 0 {
            return Err(ModelError::InvalidConfigField {
                field: "rotary_pct",
                reason: format!("rotates no channels of a {d_head}-channel head"),
            });
        }
        // HF: inv_freq = 1 / theta^(2i/dim)
        let mut inv: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        let kind = self
            .field("rope_type")
            .or_else(|| self.field("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default")
            .to_string();
        let factor = || {
            let f = self
                .num("factor")
                .ok_or_else(|| bad(format!("rope type `{kind}` needs `factor`")))?;
            if f.is_finite() && f >= 1.0 {
                Ok(f)
            } else {
                Err(bad(format!("rope factor {f} is not ≥ 1")))
            }
        };
        let mut describe = format!("theta {theta}");
        if dim < d_head {
            describe.push_str(&format!(", {dim} of {d_head} channels"));
        }
        match kind.as_str() {
            "default" => {}
            "linear" => {
                let f = factor()?;
                inv.iter_mut().for_each(|x| *x /= f);
                describe.push_str(&format!(", linear ×{f}"));
            }
            "llama3" => {
                // transformers `_compute_llama3_parameters`
                let f = factor()?;
                let low = self.num("low_freq_factor").unwrap_or(1.0);
                let high = self.num("high_freq_factor").unwrap_or(4.0);
                let old = self
                    .num("original_max_position_embeddings")
                    .ok_or_else(|| bad("llama3 needs original_max_position_embeddings".into()))?;
                if !(low.is_finite() && high.is_finite() && high > low && old > 0.0) {
                    return Err(bad(format!(
                        "llama3 frequency factors low {low} / high {high} / original context {old} out of range"
                    )));
                }
                let (low_wl, high_wl) = (old / low, old / high);
                for x in &mut inv {
                    let wavelen = 2.0 * std::f64::consts::PI / *x;
                    let scaled = if wavelen > low_wl { *x / f } else { *x };
                    *x = if wavelen < high_wl || wavelen > low_wl {
                        scaled
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / f + smooth * scaled
                    };
                }
                describe.push_str(&format!(", llama3 ×{f}"));
            }
            other => {
                return Err(bad(format!(
                    "rope type `{other}` is not supported (supported: default, linear, llama3)"
                )));
            }
        }
        Ok(Rotary {
            dim,
            inv_freq: inv,
            describe,
        })
    }
}

/// Validate a parsed `config.json` (or the equivalent built from GGUF metadata): the family is
/// chosen by `model_type` (or, when that is absent, by an `architectures` entry) and converts
/// the rest.
pub fn from_value(value: &serde_json::Value) -> Result<ModelConfig> {
    let common = Common::deserialize(value).map_err(|e| ModelError::InvalidConfigField {
        field: "config.json",
        reason: e.to_string(),
    })?;
    let family = arch::detect(common.model_type(), common.architectures.as_deref())?;
    common.check_bos()?;
    (family.config)(value)
}

/// Deserialize a family's raw config struct, naming the field that has the wrong type.
pub fn raw<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    T::deserialize(value).map_err(|e| ModelError::InvalidConfigField {
        field: "config.json",
        reason: e.to_string(),
    })
}

/// The sizes in the `num_*` spelling most families share (GPT-NeoX, Llama and its relatives).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HfDims {
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub hidden_size: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub hidden_act: Option<String>,
}

/// [`HfDims`] resolved and bounded.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_model: usize,
    pub d_head: usize,
    pub n_ctx: usize,
    pub d_mlp: usize,
}

impl HfDims {
    pub fn resolve(&self, model_type: &str) -> Result<Dims> {
        let mt = model_type;
        let n_layers = bounded(
            req(self.num_hidden_layers, "num_hidden_layers", mt)?,
            "num_hidden_layers",
            MAX_LAYERS,
        )?;
        let n_heads = bounded(
            req(self.num_attention_heads, "num_attention_heads", mt)?,
            "num_attention_heads",
            MAX_HEADS,
        )?;
        let d_model = bounded(
            req(self.hidden_size, "hidden_size", mt)?,
            "hidden_size",
            MAX_D_MODEL,
        )?;
        Ok(Dims {
            n_layers,
            n_heads,
            n_kv_heads: kv_heads(self.num_key_value_heads, n_heads)?,
            d_model,
            d_head: head_dim(self.head_dim, d_model, n_heads, "num_attention_heads")?,
            n_ctx: bounded(
                req(self.max_position_embeddings, "max_position_embeddings", mt)?,
                "max_position_embeddings",
                MAX_CTX,
            )?,
            d_mlp: bounded(
                req(self.intermediate_size, "intermediate_size", mt)?,
                "intermediate_size",
                MAX_D_MLP,
            )?,
        })
    }

    /// `hidden_act`, or the family's default.
    pub fn act(&self, default: &str) -> Result<Activation> {
        Activation::parse(self.hidden_act.as_deref().unwrap_or(default))
    }
}

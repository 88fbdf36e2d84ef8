//! `config.json`: a permissive serde view of what Hugging Face writes, converted into a
//! validated [`ModelConfig`] with every default resolved.

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The architectures rdla can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// `GPT2LMHeadModel`: Conv1D weights, fused `c_attn`.
    Gpt2,
    /// `GPTNeoForCausalLM`: separate q/k/v, no attention scaling, local attention layers.
    GptNeo,
    /// `GPTNeoXForCausalLM` (Pythia): fused head-interleaved `query_key_value`, partial
    /// rotary embeddings, parallel residual.
    GptNeoX,
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM): RMSNorm, RoPE, SwiGLU, grouped-query attention.
    Llama,
    /// `Qwen2ForCausalLM`: the Llama layout with q/k/v biases.
    Qwen2,
    /// `MistralForCausalLM`: the Llama layout, optional sliding window.
    Mistral,
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::GptNeo => "GPTNeoForCausalLM",
            Self::GptNeoX => "GPTNeoXForCausalLM",
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }

    /// The Llama-family layout (RMSNorm, RoPE, SwiGLU, GQA).
    pub fn is_llama_like(self) -> bool {
        matches!(self, Self::Llama | Self::Qwen2 | Self::Mistral)
    }

    /// `model_type` → architecture.
    fn from_model_type(t: &str) -> Option<Self> {
        Some(match t {
            "gpt2" => Self::Gpt2,
            "gpt_neo" => Self::GptNeo,
            "gpt_neox" => Self::GptNeoX,
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "mistral" => Self::Mistral,
            _ => return None,
        })
    }

    /// An `architectures` entry → architecture.
    fn from_class(c: &str) -> Option<Self> {
        Some(match c {
            "GPT2LMHeadModel" | "GPT2Model" => Self::Gpt2,
            "GPTNeoForCausalLM" | "GPTNeoModel" => Self::GptNeo,
            "GPTNeoXForCausalLM" | "GPTNeoXModel" => Self::GptNeoX,
            "LlamaForCausalLM" | "LlamaModel" => Self::Llama,
            "Qwen2ForCausalLM" | "Qwen2Model" => Self::Qwen2,
            "MistralForCausalLM" | "MistralModel" => Self::Mistral,
            _ => return None,
        })
    }
}

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
    fn parse(name: &str) -> Result<Self> {
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
    pub fn allows(self, q: usize, p: usize) -> bool {
        match self {
            Self::Global => p <= q,
            Self::Local(w) => p <= q && q - p < w,
        }
    }
}

/// A validated model configuration: no `Option` left where a default exists.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
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
}

impl ModelConfig {
    /// Number of residual components: `embed`, `pos` (learned positions only), then attn
    /// and mlp per layer.
    pub fn n_components(&self) -> usize {
        usize::from(self.has_pos()) + 1 + 2 * self.n_layers
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
}

/// `config.json` as written by transformers, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    // GPT-2 spelling
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    pub n_positions: Option<usize>,
    pub n_ctx: Option<usize>,
    pub n_inner: Option<usize>,
    pub activation_function: Option<String>,
    pub layer_norm_epsilon: Option<f64>,
    pub scale_attn_weights: Option<bool>,
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
    // GPT-Neo spelling
    pub num_layers: Option<usize>,
    pub num_heads: Option<usize>,
    pub hidden_size: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub window_size: Option<usize>,
    pub attention_types: Option<serde_json::Value>,
    pub attention_layers: Option<Vec<String>>,
    // GPT-NeoX / Llama spelling
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub hidden_act: Option<String>,
    pub layer_norm_eps: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub rotary_pct: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5: `{"rope_type", "rope_theta", "factor", …}`.
    pub rope_parameters: Option<serde_json::Value>,
    pub use_parallel_residual: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    // shared
    pub vocab_size: Option<usize>,
    pub bos_token_id: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
}

fn req<T>(v: Option<T>, field: &'static str, model_type: &str) -> Result<T> {
    v.ok_or_else(|| ModelError::MissingConfigField {
        field,
        model_type: model_type.to_string(),
    })
}

fn positive(v: usize, field: &'static str) -> Result<usize> {
    if v == 0 {
        return Err(ModelError::InvalidConfigField {
            field,
            reason: "must be positive".into(),
        });
    }
    Ok(v)
}

impl RawConfig {
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    fn architecture(&self) -> Result<Architecture> {
        let archs = self.architectures.clone().unwrap_or_default();
        let model_type = self.model_type.clone().unwrap_or_default();
        if let Some(a) = Architecture::from_model_type(&model_type) {
            return Ok(a);
        }
        if model_type.is_empty()
            && let Some(a) = archs.iter().find_map(|a| Architecture::from_class(a))
        {
            return Ok(a);
        }
        Err(ModelError::UnknownArchitecture {
            model_type: if model_type.is_empty() {
                "<missing>".into()
            } else {
                model_type
            },
            architectures: archs,
        })
    }

    fn bos(&self) -> Option<u32> {
        match &self.bos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
            Some(serde_json::Value::Array(a)) => a
                .first()
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            _ => None,
        }
    }

    /// Resolve every default and check the values are usable.
    pub fn into_config(self) -> Result<ModelConfig> {
        let architecture = self.architecture()?;
        let mt = self.model_type.clone().unwrap_or_else(|| "gpt2".into());
        let dtype = self
            .dtype
            .clone()
            .or_else(|| self.torch_dtype.clone())
            .unwrap_or_else(|| "float32".into());
        let bos_token_id = self.bos();
        if matches!(architecture, Architecture::GptNeoX) || architecture.is_llama_like() {
            return self.rotary_config(architecture, &mt, dtype, bos_token_id);
        }
        let (n_layers, n_heads, d_model, n_ctx, d_mlp, act, ln_eps, scale_by_dh, spans, tie) =
            match architecture {
                Architecture::Gpt2 => {
                    let n_layers = positive(req(self.n_layer, "n_layer", &mt)?, "n_layer")?;
                    let n_heads = positive(req(self.n_head, "n_head", &mt)?, "n_head")?;
                    let d_model = positive(req(self.n_embd, "n_embd", &mt)?, "n_embd")?;
                    let n_ctx = positive(
                        req(self.n_positions.or(self.n_ctx), "n_positions", &mt)?,
                        "n_positions",
                    )?;
                    if self.scale_attn_by_inverse_layer_idx == Some(true) {
                        return Err(ModelError::InvalidConfigField {
                            field: "scale_attn_by_inverse_layer_idx",
                            reason: "true is not supported".into(),
                        });
                    }
                    (
                        n_layers,
                        n_heads,
                        d_model,
                        n_ctx,
                        self.n_inner.unwrap_or(4 * d_model),
                        Activation::parse(
                            self.activation_function.as_deref().unwrap_or("gelu_new"),
                        )?,
                        self.layer_norm_epsilon.unwrap_or(1e-5),
                        self.scale_attn_weights.unwrap_or(true),
                        vec![AttnSpan::Global; n_layers],
                        self.tie_word_embeddings.unwrap_or(true),
                    )
                }
                Architecture::GptNeo => {
                    let n_layers =
                        positive(req(self.num_layers, "num_layers", &mt)?, "num_layers")?;
                    let n_heads = positive(req(self.num_heads, "num_heads", &mt)?, "num_heads")?;
                    let d_model =
                        positive(req(self.hidden_size, "hidden_size", &mt)?, "hidden_size")?;
                    let n_ctx = positive(
                        req(self.max_position_embeddings, "max_position_embeddings", &mt)?,
                        "max_position_embeddings",
                    )?;
                    let window = self.window_size.unwrap_or(256);
                    let kinds = self.neo_attention_layers(n_layers)?;
                    let spans = kinds
                        .iter()
                        .map(|k| match k.as_str() {
                            "global" => Ok(AttnSpan::Global),
                            "local" => Ok(AttnSpan::Local(positive(window, "window_size")?)),
                            other => Err(ModelError::InvalidConfigField {
                                field: "attention_types",
                                reason: format!("unknown attention type `{other}`"),
                            }),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (
                        n_layers,
                        n_heads,
                        d_model,
                        n_ctx,
                        self.intermediate_size.unwrap_or(4 * d_model),
                        Activation::parse(
                            self.activation_function.as_deref().unwrap_or("gelu_new"),
                        )?,
                        self.layer_norm_epsilon.unwrap_or(1e-5),
                        false,
                        spans,
                        self.tie_word_embeddings.unwrap_or(true),
                    )
                }
                _ => unreachable!("rotary families return above"),
            };
        if d_model % n_heads != 0 {
            return Err(ModelError::InvalidConfigField {
                field: "n_head",
                reason: format!("d_model {d_model} is not divisible by {n_heads} heads"),
            });
        }
        let d_head = d_model / n_heads;
        let d_vocab = positive(req(self.vocab_size, "vocab_size", &mt)?, "vocab_size")?;
        Ok(ModelConfig {
            architecture,
            n_layers,
            n_heads,
            d_model,
            d_head,
            d_mlp: positive(d_mlp, "n_inner")?,
            n_ctx,
            d_vocab,
            act,
            ln_eps,
            attn_scale: if scale_by_dh {
                1.0 / (d_head as f32).sqrt()
            } else {
                1.0
            },
            attn_spans: spans,
            tie_word_embeddings: tie,
            bos_token_id,
            dtype,
            n_kv_heads: n_heads,
            norm: Norm::LayerNorm,
            positional: Positional::Learned,
            parallel_residual: false,
            gated_mlp: false,
        })
    }

    /// GPT-NeoX and the Llama family: rotary positions, `num_*` spelling.
    fn rotary_config(
        &self,
        architecture: Architecture,
        mt: &str,
        dtype: String,
        bos_token_id: Option<u32>,
    ) -> Result<ModelConfig> {
        let neox = architecture == Architecture::GptNeoX;
        let n_layers = positive(
            req(self.num_hidden_layers, "num_hidden_layers", mt)?,
            "num_hidden_layers",
        )?;
        let n_heads = positive(
            req(self.num_attention_heads, "num_attention_heads", mt)?,
            "num_attention_heads",
        )?;
        let d_model = positive(req(self.hidden_size, "hidden_size", mt)?, "hidden_size")?;
        let n_kv_heads = positive(
            self.num_key_value_heads.unwrap_or(n_heads),
            "num_key_value_heads",
        )?;
        if n_heads % n_kv_heads != 0 {
            return Err(ModelError::InvalidConfigField {
                field: "num_key_value_heads",
                reason: format!("{n_heads} attention heads are not a multiple of {n_kv_heads}"),
            });
        }
        let d_head = match self.head_dim {
            Some(dh) => positive(dh, "head_dim")?,
            None if d_model % n_heads == 0 => d_model / n_heads,
            None => {
                return Err(ModelError::InvalidConfigField {
                    field: "num_attention_heads",
                    reason: format!(
                        "hidden_size {d_model} is not divisible by {n_heads} heads and there is no head_dim"
                    ),
                });
            }
        };
        let n_ctx = positive(
            req(self.max_position_embeddings, "max_position_embeddings", mt)?,
            "max_position_embeddings",
        )?;
        let d_mlp = positive(
            req(self.intermediate_size, "intermediate_size", mt)?,
            "intermediate_size",
        )?;
        let act = Activation::parse(self.hidden_act.as_deref().unwrap_or(if neox {
            "gelu"
        } else {
            "silu"
        }))?;
        let rotary = self.rope(neox, d_head)?;
        let attn_spans = self.rotary_spans(architecture, n_layers)?;
        if self.mlp_bias == Some(true) {
            return Err(ModelError::InvalidConfigField {
                field: "mlp_bias",
                reason: "MLP biases in a gated MLP are not supported".into(),
            });
        }
        Ok(ModelConfig {
            architecture,
            n_layers,
            n_heads,
            n_kv_heads,
            d_model,
            d_head,
            d_mlp,
            n_ctx,
            d_vocab: positive(req(self.vocab_size, "vocab_size", mt)?, "vocab_size")?,
            act,
            ln_eps: if neox {
                self.layer_norm_eps.unwrap_or(1e-5)
            } else {
                self.rms_norm_eps.unwrap_or(1e-6)
            },
            attn_scale: 1.0 / (d_head as f32).sqrt(),
            attn_spans,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id,
            dtype,
            norm: if neox { Norm::LayerNorm } else { Norm::RmsNorm },
            positional: Positional::Rotary(rotary),
            parallel_residual: neox && self.use_parallel_residual.unwrap_or(true),
            gated_mlp: !neox,
        })
    }

    /// Whether q/k/v (and for GPT-NeoX the output projection) carry biases.
    pub fn attention_biases(&self, architecture: Architecture) -> bool {
        match architecture {
            Architecture::GptNeoX => self.attention_bias.unwrap_or(true),
            Architecture::Qwen2 => true,
            _ => self.attention_bias.unwrap_or(false),
        }
    }

    /// A field of `rope_parameters` (transformers ≥ 5), else of `rope_scaling`.
    fn rope_field(&self, key: &str) -> Option<&serde_json::Value> {
        [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
            .find_map(|v| v.get(key))
    }

    fn rope(&self, neox: bool, d_head: usize) -> Result<Rotary> {
        let bad = |reason: String| ModelError::InvalidConfigField {
            field: "rope_scaling",
            reason,
        };
        let num = |key: &str| self.rope_field(key).and_then(serde_json::Value::as_f64);
        let theta = num("rope_theta")
            .or(self.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(10_000.0);
        let partial = num("partial_rotary_factor")
            .or(self.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(if neox { 0.25 } else { 1.0 });
        if !(theta > 0.0 && partial > 0.0 && partial <= 1.0) {
            return Err(ModelError::InvalidConfigField {
                field: "rope_theta",
                reason: format!(
                    "rope_theta {theta} / partial rotary factor {partial} out of range"
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
            .rope_field("rope_type")
            .or_else(|| self.rope_field("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default")
            .to_string();
        let factor =
            || num("factor").ok_or_else(|| bad(format!("rope type `{kind}` needs `factor`")));
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
                let low = num("low_freq_factor").unwrap_or(1.0);
                let high = num("high_freq_factor").unwrap_or(4.0);
                let old = num("original_max_position_embeddings")
                    .ok_or_else(|| bad("llama3 needs original_max_position_embeddings".into()))?;
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

    /// Per-layer spans: Mistral's `sliding_window`, Qwen2's `layer_types` /
    /// `use_sliding_window` + `max_window_layers`; otherwise global.
    fn rotary_spans(&self, arch: Architecture, n_layers: usize) -> Result<Vec<AttnSpan>> {
        let window = || {
            self.sliding_window
                .filter(|&w| w > 0)
                .ok_or(ModelError::InvalidConfigField {
                    field: "sliding_window",
                    reason: "sliding attention needs a positive sliding_window".into(),
                })
        };
        match arch {
            Architecture::Mistral => Ok(vec![
                match self.sliding_window {
                    Some(w) if w > 0 => AttnSpan::Local(w),
                    _ => AttnSpan::Global,
                };
                n_layers
            ]),
            Architecture::Qwen2 => {
                if let Some(types) = &self.layer_types {
                    if types.len() != n_layers {
                        return Err(ModelError::InvalidConfigField {
                            field: "layer_types",
                            reason: format!("{} entries for {n_layers} layers", types.len()),
                        });
                    }
                    return types
                        .iter()
                        .map(|t| match t.as_str() {
                            "full_attention" => Ok(AttnSpan::Global),
                            "sliding_attention" => Ok(AttnSpan::Local(window()?)),
                            other => Err(ModelError::InvalidConfigField {
                                field: "layer_types",
                                reason: format!("unknown layer type `{other}`"),
                            }),
                        })
                        .collect();
                }
                if self.use_sliding_window == Some(true) {
                    let w = window()?;
                    let from = self.max_window_layers.unwrap_or(n_layers);
                    return Ok((0..n_layers)
                        .map(|l| {
                            if l >= from {
                                AttnSpan::Local(w)
                            } else {
                                AttnSpan::Global
                            }
                        })
                        .collect());
                }
                Ok(vec![AttnSpan::Global; n_layers])
            }
            _ => Ok(vec![AttnSpan::Global; n_layers]),
        }
    }

    /// GPT-Neo's per-layer attention kinds: `attention_layers` if written out, else the
    /// expansion of `attention_types` (`[[["global","local"], 4]]`).
    fn neo_attention_layers(&self, n_layers: usize) -> Result<Vec<String>> {
        let bad = |reason: String| ModelError::InvalidConfigField {
            field: "attention_types",
            reason,
        };
        let layers = if let Some(l) = &self.attention_layers {
            l.clone()
        } else if let Some(types) = &self.attention_types {
            let mut out = Vec::new();
            let groups = types.as_array().ok_or_else(|| bad("not a list".into()))?;
            for g in groups {
                let pair = g
                    .as_array()
                    .filter(|p| p.len() == 2)
                    .ok_or_else(|| bad(format!("expected [[kinds], repeat], got {g}")))?;
                let kinds = pair[0]
                    .as_array()
                    .ok_or_else(|| bad(format!("expected a list of kinds, got {}", pair[0])))?;
                let times = pair[1]
                    .as_u64()
                    .ok_or_else(|| bad(format!("expected a repeat count, got {}", pair[1])))?;
                for _ in 0..times {
                    for k in kinds {
                        out.push(
                            k.as_str()
                                .ok_or_else(|| bad(format!("expected a string, got {k}")))?
                                .to_string(),
                        );
                    }
                }
            }
            out
        } else {
            vec!["global".to_string(); n_layers]
        };
        if layers.len() != n_layers {
            return Err(bad(format!(
                "describes {} layers but num_layers is {n_layers}",
                layers.len()
            )));
        }
        Ok(layers)
    }
}

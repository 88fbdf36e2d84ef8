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
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::GptNeo => "GPTNeoForCausalLM",
        }
    }
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
}

impl ModelConfig {
    /// Number of residual components: `embed`, `pos`, then attn and mlp per layer.
    pub fn n_components(&self) -> usize {
        2 + 2 * self.n_layers
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
        match model_type.as_str() {
            "gpt2" => return Ok(Architecture::Gpt2),
            "gpt_neo" => return Ok(Architecture::GptNeo),
            _ => {}
        }
        if model_type.is_empty() {
            for a in &archs {
                match a.as_str() {
                    "GPT2LMHeadModel" | "GPT2Model" => return Ok(Architecture::Gpt2),
                    "GPTNeoForCausalLM" | "GPTNeoModel" => return Ok(Architecture::GptNeo),
                    _ => {}
                }
            }
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
        })
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

//! The Gemma family: `Gemma2ForCausalLM` and `Gemma3ForCausalLM` (and the text model inside a
//! `Gemma3ForConditionalGeneration` checkpoint). The Llama layout (`nn.Linear` weights,
//! RMSNorm, rotary, grouped-query attention, a gated MLP) with:
//!
//! - zero-centred RMSNorm weights: every norm multiplies by `1 + w` (added here, so the rest of
//!   rdla sees ordinary norm weights);
//! - "sandwich" norms: `post_attention_layernorm` and `post_feedforward_layernorm` normalise
//!   the attention's and the MLP's outputs before they join the residual stream (kept as
//!   post-norms with frozen scales, DESIGN.md §1.1), `pre_feedforward_layernorm` is the MLP's
//!   input norm;
//! - the embedding multiplied by `sqrt(d_model)` (rounded to f32 first, as transformers does);
//!   a tied unembedding is the unscaled embedding;
//! - GeGLU (`gelu_pytorch_tanh` gate), scores scaled by `query_pre_attn_scalar^-½`;
//! - Gemma 2: attention-logit and final-logit soft-caps; sliding-window and global layers
//!   alternating (`layer_types`, else every other layer from the first);
//! - Gemma 3: per-head q/k RMSNorms (`1 + w`), a separate rotary base on the sliding-window
//!   layers (`rope_local_base_freq`, unscaled), `layer_types` or `sliding_window_pattern`.
//!
//! | HF key (optionally prefixed `model.`, `language_model.model.`, `model.language_model.`) | shape | TL weight |
//! |---|---|---|
//! | `embed_tokens.weight` | `[V, d]` | `W_E / sqrt(d)` (and `W_U^T` when tied) |
//! | `layers.{l}.input_layernorm.weight` | `[d]` | `ln1` (`1 + w`, folded) |
//! | `layers.{l}.self_attn.{q,k,v}_proj.weight` | `[H·dh, d]`, `[KV·dh, d]` | `W_Q`, `_W_K`, `_W_V` |
//! | `layers.{l}.self_attn.{q,k}_norm.weight` (Gemma 3) | `[dh]` | `attn.q_norm`, `attn.k_norm` (`1 + w`) |
//! | `layers.{l}.self_attn.o_proj.weight` | `[d, H·dh]` | `W_O` |
//! | `layers.{l}.post_attention_layernorm.weight` | `[d]` | `ln1_post` (`1 + w`, not folded) |
//! | `layers.{l}.pre_feedforward_layernorm.weight` | `[d]` | `ln2` (`1 + w`, folded) |
//! | `layers.{l}.mlp.{gate,up,down}_proj.weight` | `[d_mlp, d]`, `[d, d_mlp]` | `W_gate^T`, `W_in^T`, `W_out^T` |
//! | `layers.{l}.post_feedforward_layernorm.weight` | `[d]` | `ln2_post` (`1 + w`, not folded) |
//! | `norm.weight` | `[d]` | `ln_final` (`1 + w`, folded) |
//! | `lm_head.weight` (absent when tied, as in every released Gemma) | `[V, d]` | `W_U^T`; `b_U = 0` |
//!
//! No biases. Reference: transformers `modeling_gemma2.py` / `modeling_gemma3.py`,
//! TransformerLens `weight_conversions/gemma.py`.

use serde::Deserialize;
use serde_json::Value;

use super::{
    CanonLayer, Canonical, Family, Keys, LayerNormParams, LayerSink, heads_from_out_major, reshape,
    transpose,
};
use crate::config::{
    self, Activation, AttnSpan, Common, HfDims, MAX_CTX, ModelConfig, Norm, Positional, RopeFields,
    bounded, epsilon,
};
use crate::error::{ModelError, Result};
use crate::weights::HostTensor;

const PREFIXES: &[&str] = &["model.", "language_model.model.", "model.language_model."];
const LM_HEAD: &[&str] = &["lm_head.weight", "language_model.lm_head.weight"];

pub static GEMMA2: Family = Family {
    model_types: &["gemma2"],
    classes: &["Gemma2ForCausalLM", "Gemma2Model"],
    prefix: PREFIXES,
    lm_head: LM_HEAD,
    config: gemma2_config,
    load,
    layer,
};

pub static GEMMA3: Family = Family {
    model_types: &["gemma3_text", "gemma3"],
    classes: &[
        "Gemma3ForCausalLM",
        "Gemma3TextModel",
        "Gemma3ForConditionalGeneration",
    ],
    prefix: PREFIXES,
    lm_head: LM_HEAD,
    config: gemma3_config,
    load,
    layer,
};

/// transformers' `Gemma2Config` defaults for the fields a config may leave out.
const GEMMA2_DEFAULTS: &[(&str, f64)] = &[
    ("vocab_size", 256_000.0),
    ("head_dim", 256.0),
    ("max_position_embeddings", 8192.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("query_pre_attn_scalar", 256.0),
    ("sliding_window", 4096.0),
    ("final_logit_softcapping", 30.0),
    ("attn_logit_softcapping", 50.0),
];

/// transformers' `Gemma3TextConfig` defaults (soft-caps default to none).
const GEMMA3_DEFAULTS: &[(&str, f64)] = &[
    ("vocab_size", 262_208.0),
    ("head_dim", 256.0),
    ("max_position_embeddings", 131_072.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 1_000_000.0),
    ("rope_local_base_freq", 10_000.0),
    ("query_pre_attn_scalar", 256.0),
    ("sliding_window", 4096.0),
    ("sliding_window_pattern", 6.0),
];

/// The Gemma-specific `config.json` fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    rms_norm_eps: Option<f64>,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    rope_local_base_freq: Option<f64>,
}

/// `json` with each absent key of `defaults` filled in (a key present as `null` stays null:
/// transformers keeps an explicit `None`).
fn with_defaults(json: &Value, defaults: &[(&str, f64)]) -> Value {
    let mut v = json.clone();
    if let Value::Object(m) = &mut v {
        for (k, d) in defaults {
            if !m.contains_key(*k) {
                let n = if d.fract() == 0.0 && *d >= 1.0 {
                    Value::from(*d as u64)
                } else {
                    Value::from(*d)
                };
                m.insert((*k).to_string(), n);
            }
        }
    }
    v
}

/// A soft-cap: a positive finite number, or none (`null`, absent after defaults).
fn softcap(json: &Value, field: &'static str) -> Result<Option<f32>> {
    match json.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(c) if c.is_finite() && c > 0.0 && c < 1e6 => Ok(Some(c as f32)),
            _ => Err(ModelError::InvalidConfigField {
                field,
                reason: format!("{v} is not a usable soft-cap (a positive number, or null)"),
            }),
        },
    }
}

/// Per-layer spans from `layer_types`, else sliding on every layer `l` with
/// `(l + 1) % pattern != 0` (transformers' default list).
fn spans(r: &Raw, n_layers: usize, pattern: usize) -> Result<Vec<AttnSpan>> {
    let window = bounded(r.sliding_window.unwrap_or(0), "sliding_window", MAX_CTX)?;
    let local = |sliding: bool| {
        if sliding {
            AttnSpan::Local(window)
        } else {
            AttnSpan::Global
        }
    };
    match &r.layer_types {
        Some(types) => config::spans_from_layer_types(types, n_layers, || Ok(window)),
        None => {
            let pattern = bounded(pattern, "sliding_window_pattern", MAX_CTX)?;
            Ok((0..n_layers)
                .map(|l| local(!(l + 1).is_multiple_of(pattern)))
                .collect())
        }
    }
}

/// What Gemma 2 and 3 share; `json` has its defaults filled in.
fn gemma_like(json: &Value, family: &'static Family, pattern: usize) -> Result<ModelConfig> {
    let c: Common = config::raw(json)?;
    let r: Raw = config::raw(json)?;
    let dims: HfDims = config::raw(json)?;
    let rope: RopeFields = config::raw(json)?;
    let d = dims.resolve(family.model_types[0])?;
    let act = Activation::parse(
        r.hidden_activation
            .as_deref()
            .or(dims.hidden_act.as_deref())
            .unwrap_or("gelu_pytorch_tanh"),
    )?;
    let qpas = r.query_pre_attn_scalar.unwrap_or(256.0);
    if !(qpas.is_finite() && qpas > 0.0) {
        return Err(ModelError::InvalidConfigField {
            field: "query_pre_attn_scalar",
            reason: format!("{qpas} is not positive"),
        });
    }
    // transformers ≥ 5 nests Gemma 3's rotary parameters per layer type
    let nested = |key: &str| {
        rope.rope_parameters
            .as_ref()
            .and_then(|p| p.get(key))
            .cloned()
            .map(|sub| RopeFields {
                rope_parameters: Some(sub),
                ..RopeFields::default()
            })
    };
    let global = nested("full_attention").unwrap_or(rope);
    Ok(ModelConfig {
        attn_spans: spans(&r, d.n_layers, pattern)?,
        norm: Norm::RmsNorm,
        positional: Positional::Rotary(global.rotary(d.d_head, 1.0)?),
        gated_mlp: true,
        post_norms: true,
        attn_scale: (1.0 / qpas.sqrt()) as f32,
        ..ModelConfig::base(
            family,
            d,
            &c,
            true,
            act,
            epsilon(r.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps")?,
        )?
    })
}

fn gemma2_config(json: &Value) -> Result<ModelConfig> {
    let json = with_defaults(json, GEMMA2_DEFAULTS);
    Ok(ModelConfig {
        attn_softcap: softcap(&json, "attn_logit_softcapping")?,
        final_softcap: softcap(&json, "final_logit_softcapping")?,
        ..gemma_like(&json, &GEMMA2, 2)?
    })
}

/// Gemma 3: a text config, or the `text_config` of a multimodal checkpoint (its BOS and
/// embedding tying read from the outer config when the inner one does not say).
fn gemma3_config(json: &Value) -> Result<ModelConfig> {
    let text = match json.get("text_config") {
        Some(Value::Object(inner)) => {
            let mut t = inner.clone();
            for k in [
                "bos_token_id",
                "tie_word_embeddings",
                "torch_dtype",
                "dtype",
                "vocab_size",
            ] {
                if let (false, Some(v)) = (t.contains_key(k), json.get(k)) {
                    t.insert(k.to_string(), v.clone());
                }
            }
            t.insert("model_type".into(), "gemma3_text".into());
            Value::Object(t)
        }
        _ => json.clone(),
    };
    let json = with_defaults(&text, GEMMA3_DEFAULTS);
    let r: Raw = config::raw(&json)?;
    let rope: RopeFields = config::raw(&json)?;
    let pattern = r.sliding_window_pattern.unwrap_or(6);
    let base = gemma_like(&json, &GEMMA3, pattern)?;
    let local = match rope
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("sliding_attention"))
    {
        Some(sub) => RopeFields {
            rope_parameters: Some(sub.clone()),
            ..RopeFields::default()
        },
        None => RopeFields {
            rope_theta: Some(r.rope_local_base_freq.unwrap_or(10_000.0)),
            ..RopeFields::default()
        },
    }
    .rotary(base.d_head, 1.0)?;
    Ok(ModelConfig {
        attn_softcap: softcap(&json, "attn_logit_softcapping")?,
        final_softcap: softcap(&json, "final_logit_softcapping")?,
        qk_norm: true,
        local_rotary: Some(local),
        ..base
    })
}

/// `1 + w` of a zero-centred norm weight.
fn plus_one(mut t: HostTensor) -> HostTensor {
    t.data.iter_mut().for_each(|x| *x += 1.0);
    t
}

/// A Gemma RMSNorm: effective weight `1 + w`, zero bias.
fn norm(k: &mut Keys<'_, '_>, prefix: &str, d: usize) -> Result<LayerNormParams> {
    let w = plus_one(k.get(&format!("{prefix}.weight"), &[d])?);
    Ok(LayerNormParams {
        w: w.data,
        b: vec![0.0; d],
    })
}

fn load(cfg: &ModelConfig, k: &mut Keys<'_, '_>, sink: &mut LayerSink<'_>) -> Result<Canonical> {
    let (d, v) = (cfg.d_model, cfg.d_vocab);
    let w_e = k.embedding("embed_tokens.weight", &[v, d])?;
    let w_u = k.unembed_while(cfg, &w_e, |k| k.blocks(cfg, sink))?;
    let ln_f = norm(k, "norm", d)?;
    // the embedding is scaled after the (tied) unembedding was taken from it
    let mut canon = Canonical::without_blocks(w_e, None, ln_f, w_u);
    canon.scale_embedding((d as f64).sqrt() as f32);
    Ok(canon)
}

/// Block `l`, read from the checkpoint (the loader's loop and the layer streamer both call this).
fn layer(cfg: &ModelConfig, k: &mut Keys<'_, '_>, l: usize) -> Result<CanonLayer> {
    let (d, h, kv, dh, dm) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.d_head,
        cfg.d_mlp,
    );
    let p = format!("layers.{l}");
    let a = format!("{p}.self_attn");
    let ln1 = norm(k, &format!("{p}.input_layernorm"), d)?;
    let q = k.get(&format!("{a}.q_proj.weight"), &[h * dh, d])?;
    let kk = k.get(&format!("{a}.k_proj.weight"), &[kv * dh, d])?;
    let vv = k.get(&format!("{a}.v_proj.weight"), &[kv * dh, d])?;
    let qk_norm = if cfg.qk_norm {
        Some((
            plus_one(k.get(&format!("{a}.q_norm.weight"), &[dh])?),
            plus_one(k.get(&format!("{a}.k_norm.weight"), &[dh])?),
        ))
    } else {
        None
    };
    let o = k.get(&format!("{a}.o_proj.weight"), &[d, h * dh])?;
    let post_attn = norm(k, &format!("{p}.post_attention_layernorm"), d)?;
    let ln2 = norm(k, &format!("{p}.pre_feedforward_layernorm"), d)?;
    let gate = k.get(&format!("{p}.mlp.gate_proj.weight"), &[dm, d])?;
    let up = k.get(&format!("{p}.mlp.up_proj.weight"), &[dm, d])?;
    let down = k.get(&format!("{p}.mlp.down_proj.weight"), &[d, dm])?;
    let post_mlp = norm(k, &format!("{p}.post_feedforward_layernorm"), d)?;
    Ok(CanonLayer {
        ln1: Some(ln1),
        w_q: heads_from_out_major(&q, h, dh),
        w_k: heads_from_out_major(&kk, kv, dh),
        w_v: heads_from_out_major(&vv, kv, dh),
        b_q: HostTensor::zeros(vec![h, dh]),
        b_k: HostTensor::zeros(vec![kv, dh]),
        b_v: HostTensor::zeros(vec![kv, dh]),
        w_o: reshape(transpose(&o), vec![h, dh, d]),
        b_o: HostTensor::zeros(vec![d]),
        ln2: Some(ln2),
        w_in: transpose(&up),
        b_in: HostTensor::zeros(vec![dm]),
        w_gate: Some(transpose(&gate)),
        w_out: transpose(&down),
        b_out: HostTensor::zeros(vec![d]),
        qk_norm,
        post_norm: Some((
            HostTensor::new(vec![d], post_attn.w),
            HostTensor::new(vec![d], post_mlp.w),
        )),
    })
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use crate::config::{AttnSpan, from_value};

    fn gemma2(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({
            "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"],
            "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "max_position_embeddings": 64, "sliding_window": 4,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn gemma2_defaults_follow_transformers() {
        let cfg = from_value(&gemma2(json!({}))).unwrap();
        // absent soft-caps take transformers' defaults, an explicit null turns them off
        assert_eq!(cfg.attn_softcap, Some(50.0));
        assert_eq!(cfg.final_softcap, Some(30.0));
        assert!((cfg.attn_scale - 1.0 / 16.0).abs() < 1e-7);
        assert!(cfg.tie_word_embeddings && cfg.post_norms && !cfg.qk_norm);
        assert_eq!(
            cfg.attn_spans,
            [
                AttnSpan::Local(4),
                AttnSpan::Global,
                AttnSpan::Local(4),
                AttnSpan::Global
            ]
        );
        let off = from_value(&gemma2(json!({
            "attn_logit_softcapping": null, "final_logit_softcapping": null
        })))
        .unwrap();
        assert_eq!((off.attn_softcap, off.final_softcap), (None, None));
        let bad = from_value(&gemma2(json!({"final_logit_softcapping": -3.0})));
        assert!(bad.unwrap_err().to_string().contains("soft-cap"));
    }

    #[test]
    fn gemma3_multimodal_reads_its_text_config() {
        let c = json!({
            "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": {
                "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
                "vocab_size": 100, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            },
            "vision_config": {"hidden_size": 1152},
        });
        let cfg = from_value(&c).unwrap();
        assert_eq!(cfg.family.hf_class(), "Gemma3ForCausalLM");
        assert!(cfg.qk_norm && cfg.post_norms);
        assert_eq!(cfg.attn_softcap, None);
        // sliding_window_pattern 6: layers 0-4 local, layer 5 global
        assert_eq!(cfg.attn_spans[4], AttnSpan::Local(4096));
        assert_eq!(cfg.attn_spans[5], AttnSpan::Global);
        // the local layers use the unscaled local base, the global ones the scaled global one
        let (g, l) = (cfg.layer_rotary(5).unwrap(), cfg.layer_rotary(0).unwrap());
        assert!((g.inv_freq[0] - 1.0 / 8.0).abs() < 1e-12);
        assert!((l.inv_freq[1] - 10_000f64.powf(-2.0 / 8.0)).abs() < 1e-12);
        assert!((g.inv_freq[1] - 1e6f64.powf(-2.0 / 8.0) / 8.0).abs() < 1e-12);
    }
}

//! The Llama family: `LlamaForCausalLM` (Llama 2/3, SmolLM), `Qwen2ForCausalLM` (q/k/v
//! biases), `MistralForCausalLM`, `Phi3ForCausalLM` (fused `qkv_proj` and `gate_up_proj`). Weights are `nn.Linear` (`[out, in]`); RMSNorm (weight
//! only); rotary embeddings; grouped-query attention (`k_proj`/`v_proj` have
//! `num_key_value_heads` heads); SwiGLU MLP `down(silu(gate(x)) ⊙ up(x))`.
//!
//! | HF key (optionally prefixed `model.`) | shape | TL weight |
//! |---|---|---|
//! | `embed_tokens.weight` | `[V, d]` | `W_E` (and `W_U = W_E^T` when tied) |
//! | `layers.{l}.input_layernorm.weight` | `[d]` | `ln1` (RMS, folded) |
//! | `layers.{l}.self_attn.q_proj.{weight,bias}` | `[H·dh, d]`, `[H·dh]` | `W_Q`, `b_Q` |
//! | `layers.{l}.self_attn.{k,v}_proj.{weight,bias}` | `[KV·dh, d]`, `[KV·dh]` | `_W_K/_W_V`, `_b_K/_b_V` |
//! | `layers.{l}.self_attn.o_proj.{weight,bias}` | `[d, H·dh]`, `[d]` | `W_O`, `b_O` |
//! | `layers.{l}.post_attention_layernorm.weight` | `[d]` | `ln2` (RMS, folded) |
//! | `layers.{l}.mlp.gate_proj.weight` | `[d_mlp, d]` | `W_gate^T` |
//! | `layers.{l}.mlp.up_proj.weight` | `[d_mlp, d]` | `W_in^T` (the linear path) |
//! | `layers.{l}.mlp.down_proj.weight` | `[d, d_mlp]` | `W_out^T` |
//! | `norm.weight` | `[d]` | `ln_final` (RMS, folded) |
//! | `lm_head.weight` (no prefix; absent when tied) | `[V, d]` | `W_U^T`; `b_U = 0` |
//!
//! Biases are read where stored (Qwen2's q/k/v; Llama's with `attention_bias`) and are zero
//! otherwise. Reference: TransformerLens `pretrained/weight_conversions/llama.py`, `qwen2.py`,
//! `mistral.py`.

use serde::Deserialize;

use super::{
    CanonLayer, Canonical, Family, Keys, LayerSink, heads_from_out_major, reshape, transpose,
};
use crate::config::{
    self, AttnSpan, Common, HfDims, MAX_CTX, ModelConfig, Norm, Positional, RopeFields, bounded,
    epsilon,
};
use crate::error::{ModelError, Result};
use crate::weights::HostTensor;

/// A member of the family: its names and its config conversion; the layout is shared.
const fn member(
    model_types: &'static [&'static str],
    classes: &'static [&'static str],
    config: fn(&serde_json::Value) -> Result<ModelConfig>,
) -> Family {
    Family {
        model_types,
        classes,
        prefix: &["model."],
        lm_head: &["lm_head.weight"],
        config,
        load,
        layer,
    }
}

pub static LLAMA: Family = member(
    &["llama"],
    &["LlamaForCausalLM", "LlamaModel"],
    llama_config,
);
pub static QWEN2: Family = member(
    &["qwen2"],
    &["Qwen2ForCausalLM", "Qwen2Model"],
    qwen2_config,
);
/// Phi-3: the Llama layout with fused `qkv_proj` (`[(H + 2·KV)·dh, d]`, rows Q, K, V) and
/// `gate_up_proj` (`[2·d_mlp, d]`, rows gate then up), no biases, partial rotary
/// (`partial_rotary_factor`). Reference: TransformerLens `weight_conversions/phi3.py`.
pub static PHI3: Family = member(&["phi3"], &["Phi3ForCausalLM", "Phi3Model"], phi3_config);

/// Qwen3: the Qwen2 layout without q/k/v biases, with a per-head RMSNorm on queries and keys
/// (`q_norm`, `k_norm`, weight `[d_head]`) before the rotary map.
pub static QWEN3: Family = member(
    &["qwen3"],
    &["Qwen3ForCausalLM", "Qwen3Model"],
    qwen3_config,
);

pub static MISTRAL: Family = member(
    &["mistral"],
    &["MistralForCausalLM", "MistralModel"],
    mistral_config,
);

/// The Llama family's own `config.json` fields (sizes and rotary parameters are shared).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    rms_norm_eps: Option<f64>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

impl Raw {
    fn window(&self) -> Result<usize> {
        bounded(self.sliding_window.unwrap_or(0), "sliding_window", MAX_CTX)
    }
}

/// The layout every member of the family shares; `spans` gives the per-layer attention spans.
fn llama_like(
    json: &serde_json::Value,
    family: &'static Family,
    spans: fn(&Raw, usize) -> Result<Vec<AttnSpan>>,
) -> Result<ModelConfig> {
    let c: Common = config::raw(json)?;
    let r: Raw = config::raw(json)?;
    let dims: HfDims = config::raw(json)?;
    let rope: RopeFields = config::raw(json)?;
    let d = dims.resolve(family.model_types[0])?;
    if r.mlp_bias == Some(true) {
        return Err(ModelError::InvalidConfigField {
            field: "mlp_bias",
            reason: "MLP biases in a gated MLP are not supported".into(),
        });
    }
    Ok(ModelConfig {
        attn_spans: spans(&r, d.n_layers)?,
        norm: Norm::RmsNorm,
        positional: Positional::Rotary(rope.rotary(d.d_head, 1.0)?),
        gated_mlp: true,
        ..ModelConfig::base(
            family,
            d,
            &c,
            false,
            dims.act("silu")?,
            epsilon(r.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps")?,
        )?
    })
}

fn llama_config(json: &serde_json::Value) -> Result<ModelConfig> {
    llama_like(json, &LLAMA, |_, n| Ok(vec![AttnSpan::Global; n]))
}

/// Phi-3: `sliding_window` (when set) is a local window on every layer, as in Mistral.
fn phi3_config(json: &serde_json::Value) -> Result<ModelConfig> {
    llama_like(json, &PHI3, |r, n| {
        Ok(vec![
            match r.sliding_window {
                Some(w) if w > 0 => AttnSpan::Local(bounded(w, "sliding_window", MAX_CTX)?),
                _ => AttnSpan::Global,
            };
            n
        ])
    })
}

/// Rows `a..b` of a `[rows, cols]` tensor (of a placeholder: a placeholder).
fn rows(t: &HostTensor, a: usize, b: usize) -> HostTensor {
    let cols = t.shape[1];
    if t.is_placeholder() {
        return HostTensor::placeholder(vec![b - a, cols]);
    }
    HostTensor::new(vec![b - a, cols], t.data[a * cols..b * cols].to_vec())
}

/// Mistral: `sliding_window` (when set) is a local window on every layer.
fn mistral_config(json: &serde_json::Value) -> Result<ModelConfig> {
    llama_like(json, &MISTRAL, |r, n| {
        Ok(vec![
            match r.sliding_window {
                Some(w) if w > 0 => AttnSpan::Local(bounded(w, "sliding_window", MAX_CTX)?),
                _ => AttnSpan::Global,
            };
            n
        ])
    })
}

/// Qwen3: Qwen2's attention spans, and q/k norms.
fn qwen3_config(json: &serde_json::Value) -> Result<ModelConfig> {
    Ok(ModelConfig {
        qk_norm: true,
        ..llama_like(json, &QWEN3, qwen2_spans)?
    })
}

/// Qwen2: `layer_types`, else `use_sliding_window` from `max_window_layers` on.
fn qwen2_config(json: &serde_json::Value) -> Result<ModelConfig> {
    llama_like(json, &QWEN2, qwen2_spans)
}

fn qwen2_spans(r: &Raw, n_layers: usize) -> Result<Vec<AttnSpan>> {
    if let Some(types) = &r.layer_types {
        return config::spans_from_layer_types(types, n_layers, || r.window());
    }
    if r.use_sliding_window == Some(true) {
        let w = r.window()?;
        let from = r.max_window_layers.unwrap_or(n_layers);
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

fn load(cfg: &ModelConfig, k: &mut Keys<'_, '_>, sink: &mut LayerSink<'_>) -> Result<Canonical> {
    let (d, v) = (cfg.d_model, cfg.d_vocab);
    let w_e = k.embedding("embed_tokens.weight", &[v, d])?;
    let w_u = k.unembed_while(cfg, &w_e, |k| k.blocks(cfg, sink))?;
    let ln_f = k.rms_norm("norm", d)?;
    Ok(Canonical::without_blocks(w_e, None, ln_f, w_u))
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
    // Phi-3 fuses q/k/v and gate/up
    let fused = std::ptr::eq(cfg.family, &PHI3);
    let p = format!("layers.{l}");
    let a = format!("{p}.self_attn");
    let ln1 = k.rms_norm(&format!("{p}.input_layernorm"), d)?;
    let (q, kk, vv) = if fused {
        let qkv = k.get(&format!("{a}.qkv_proj.weight"), &[(h + 2 * kv) * dh, d])?;
        (
            rows(&qkv, 0, h * dh),
            rows(&qkv, h * dh, (h + kv) * dh),
            rows(&qkv, (h + kv) * dh, (h + 2 * kv) * dh),
        )
    } else {
        (
            k.get(&format!("{a}.q_proj.weight"), &[h * dh, d])?,
            k.get(&format!("{a}.k_proj.weight"), &[kv * dh, d])?,
            k.get(&format!("{a}.v_proj.weight"), &[kv * dh, d])?,
        )
    };
    // Qwen2 always has q/k/v biases: a missing one is a broken checkpoint, not zeros
    let qkv_bias = |k: &mut Keys<'_, '_>, name: &str, n: usize| {
        if std::ptr::eq(cfg.family, &QWEN2) {
            k.get(name, &[n])
        } else {
            k.get_or_zeros(name, &[n])
        }
    };
    let b_q = qkv_bias(k, &format!("{a}.q_proj.bias"), h * dh)?;
    let b_k = qkv_bias(k, &format!("{a}.k_proj.bias"), kv * dh)?;
    let b_v = qkv_bias(k, &format!("{a}.v_proj.bias"), kv * dh)?;
    let o = k.get(&format!("{a}.o_proj.weight"), &[d, h * dh])?;
    let b_o = k.get_or_zeros(&format!("{a}.o_proj.bias"), &[d])?;
    let ln2 = k.rms_norm(&format!("{p}.post_attention_layernorm"), d)?;
    let qk_norm = if cfg.qk_norm {
        Some((
            k.get(&format!("{a}.q_norm.weight"), &[dh])?,
            k.get(&format!("{a}.k_norm.weight"), &[dh])?,
        ))
    } else {
        None
    };
    let (gate, up) = if fused {
        let gu = k.get(&format!("{p}.mlp.gate_up_proj.weight"), &[2 * dm, d])?;
        (rows(&gu, 0, dm), rows(&gu, dm, 2 * dm))
    } else {
        (
            k.get(&format!("{p}.mlp.gate_proj.weight"), &[dm, d])?,
            k.get(&format!("{p}.mlp.up_proj.weight"), &[dm, d])?,
        )
    };
    let down = k.get(&format!("{p}.mlp.down_proj.weight"), &[d, dm])?;
    Ok(CanonLayer {
        ln1: Some(ln1),
        w_q: heads_from_out_major(&q, h, dh),
        w_k: heads_from_out_major(&kk, kv, dh),
        w_v: heads_from_out_major(&vv, kv, dh),
        b_q: reshape(b_q, vec![h, dh]),
        b_k: reshape(b_k, vec![kv, dh]),
        b_v: reshape(b_v, vec![kv, dh]),
        // o_proj is [d, (head, d_head)]: its transpose has the memory layout of [H, dh, d]
        w_o: reshape(transpose(&o), vec![h, dh, d]),
        b_o,
        ln2: Some(ln2),
        w_in: transpose(&up),
        b_in: HostTensor::zeros(vec![dm]),
        w_gate: Some(transpose(&gate)),
        qk_norm,
        w_out: transpose(&down),
        b_out: HostTensor::zeros(vec![d]),
        post_norm: None,
    })
}

//! GPT-Neo (`GPTNeoForCausalLM`). Weights are `nn.Linear` (`[out, in]`); q/k/v have no bias;
//! attention logits are **not** scaled by `1/sqrt(d_head)`; layers alternate global/local.
//!
//! | HF key (optionally prefixed `transformer.`) | shape | TL weight |
//! |---|---|---|
//! | `wte.weight` | `[V, d]` | `W_E` (and `W_U = W_E^T`, tied) |
//! | `wpe.weight` | `[n_ctx, d]` | `W_pos` |
//! | `h.{l}.ln_1.{weight,bias}` | `[d]` | `ln1` (folded) |
//! | `h.{l}.attn.attention.{q,k,v}_proj.weight` | `[d, d]` | `W_Q/W_K/W_V`, rows `(head, d_head)`; biases 0 |
//! | `h.{l}.attn.attention.out_proj.{weight,bias}` | `[d, d]`, `[d]` | `W_O` (columns `(head, d_head)`), `b_O` |
//! | `h.{l}.ln_2.{weight,bias}` | `[d]` | `ln2` (folded) |
//! | `h.{l}.mlp.c_fc.{weight,bias}` | `[d_mlp, d]`, `[d_mlp]` | `W_in^T`, `b_in` |
//! | `h.{l}.mlp.c_proj.{weight,bias}` | `[d, d_mlp]`, `[d]` | `W_out^T`, `b_out` |
//! | `ln_f.{weight,bias}` | `[d]` | `ln_final` (folded) |
//! | `lm_head.weight` (if stored, or untied) | `[V, d]` | `W_U^T`; `b_U = 0` |
//!
//! Buffers `attn.attention.bias` / `masked_bias` are ignored.
//! Reference: TransformerLens `pretrained/weight_conversions/neo.py`.

use serde::Deserialize;

use super::gpt2::learned_head_dim;
use super::{
    CanonLayer, Canonical, Family, Keys, LayerSink, heads_from_out_major, reshape, transpose,
};
use crate::config::{
    self, Activation, AttnSpan, Common, Dims, MAX_CTX, MAX_D_MLP, MAX_D_MODEL, MAX_HEADS,
    MAX_LAYERS, ModelConfig, bounded, epsilon, req,
};
use crate::error::{ModelError, Result};
use crate::weights::HostTensor;

pub static FAMILY: Family = Family {
    model_types: &["gpt_neo"],
    classes: &["GPTNeoForCausalLM", "GPTNeoModel"],
    prefix: &["transformer."],
    lm_head: &["lm_head.weight"],
    config,
    load,
    layer,
};

/// GPT-Neo's `config.json` spelling.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    num_layers: Option<usize>,
    num_heads: Option<usize>,
    hidden_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    intermediate_size: Option<usize>,
    window_size: Option<usize>,
    attention_types: Option<serde_json::Value>,
    attention_layers: Option<Vec<String>>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
}

fn config(json: &serde_json::Value) -> Result<ModelConfig> {
    let c: Common = config::raw(json)?;
    let r: Raw = config::raw(json)?;
    let mt = "gpt_neo";
    let n_layers = bounded(
        req(r.num_layers, "num_layers", mt)?,
        "num_layers",
        MAX_LAYERS,
    )?;
    let n_heads = bounded(req(r.num_heads, "num_heads", mt)?, "num_heads", MAX_HEADS)?;
    let d_model = bounded(
        req(r.hidden_size, "hidden_size", mt)?,
        "hidden_size",
        MAX_D_MODEL,
    )?;
    let n_ctx = bounded(
        req(r.max_position_embeddings, "max_position_embeddings", mt)?,
        "max_position_embeddings",
        MAX_CTX,
    )?;
    let window = r.window_size.unwrap_or(256);
    let attn_spans = attention_layers(&r, n_layers)?
        .iter()
        .map(|k| match k.as_str() {
            "global" => Ok(AttnSpan::Global),
            "local" => Ok(AttnSpan::Local(bounded(window, "window_size", MAX_CTX)?)),
            other => Err(ModelError::InvalidConfigField {
                field: "attention_types",
                reason: format!("unknown attention type `{other}`"),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    let dims = Dims {
        n_layers,
        n_heads,
        n_kv_heads: n_heads,
        d_model,
        d_head: learned_head_dim(d_model, n_heads, "num_heads")?,
        n_ctx,
        // `intermediate_size: null` means 4·hidden
        d_mlp: bounded(
            r.intermediate_size.unwrap_or(4 * d_model),
            "intermediate_size",
            MAX_D_MLP,
        )?,
    };
    Ok(ModelConfig {
        // GPT-Neo does not scale q·k by 1/sqrt(d_head)
        attn_scale: 1.0,
        attn_spans,
        ..ModelConfig::base(
            &FAMILY,
            dims,
            &c,
            true,
            Activation::parse(r.activation_function.as_deref().unwrap_or("gelu_new"))?,
            epsilon(r.layer_norm_epsilon.unwrap_or(1e-5), "layer_norm_epsilon")?,
        )?
    })
}

/// The per-layer attention kinds: `attention_layers` if written out, else the expansion of
/// `attention_types` (`[[["global","local"], 4]]`), else all global. The expansion is bounded
/// by `n_layers` before it is built, so a huge repeat count cannot allocate.
fn attention_layers(r: &Raw, n_layers: usize) -> Result<Vec<String>> {
    let bad = |reason: String| ModelError::InvalidConfigField {
        field: "attention_types",
        reason,
    };
    let mismatch = |n: u128| bad(format!("describes {n} layers but num_layers is {n_layers}"));
    // `attention_types` is checked whenever present (transformers checks it too), even when
    // the config also spells the list out as `attention_layers`, which then wins
    let expanded = if let Some(types) = &r.attention_types {
        let groups = types.as_array().ok_or_else(|| bad("not a list".into()))?;
        let mut parsed = Vec::new();
        let mut total: u128 = 0;
        for g in groups {
            let pair = g
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| bad(format!("expected [[kinds], repeat], got {g}")))?;
            let kinds = pair[0]
                .as_array()
                .ok_or_else(|| bad(format!("expected a list of kinds, got {}", pair[0])))?
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("expected a string, got {k}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let times = pair[1]
                .as_u64()
                .ok_or_else(|| bad(format!("expected a repeat count, got {}", pair[1])))?;
            total += u128::from(times) * kinds.len() as u128;
            parsed.push((kinds, times));
        }
        if total != n_layers as u128 {
            return Err(mismatch(total));
        }
        Some(
            parsed
                .into_iter()
                .flat_map(|(kinds, times)| (0..times).flat_map(move |_| kinds.clone()))
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let layers = r
        .attention_layers
        .clone()
        .or(expanded)
        .unwrap_or_else(|| vec!["global".to_string(); n_layers]);
    if layers.len() != n_layers {
        return Err(mismatch(layers.len() as u128));
    }
    Ok(layers)
}

fn load(cfg: &ModelConfig, k: &mut Keys<'_, '_>, sink: &mut LayerSink<'_>) -> Result<Canonical> {
    let (d, v) = (cfg.d_model, cfg.d_vocab);
    let w_e = k.embedding("wte.weight", &[v, d])?;
    let w_pos = Some(k.get("wpe.weight", &[cfg.n_ctx, d])?);
    // the blocks are read while a tied unembedding is transposed on another thread
    let w_u = k.unembed_while(cfg, &w_e, |k| k.blocks(cfg, sink))?;
    let ln_f = k.layer_norm("ln_f", d)?;
    Ok(Canonical::without_blocks(w_e, w_pos, ln_f, w_u))
}

/// Block `l`, read from the checkpoint (the loader's loop and the layer streamer both call this).
fn layer(cfg: &ModelConfig, k: &mut Keys<'_, '_>, l: usize) -> Result<CanonLayer> {
    let (d, h, dh, dm) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp);
    let p = format!("h.{l}");
    let a = format!("{p}.attn.attention");
    let ln1 = k.layer_norm(&format!("{p}.ln_1"), d)?;
    let q = k.get(&format!("{a}.q_proj.weight"), &[h * dh, d])?;
    let kk = k.get(&format!("{a}.k_proj.weight"), &[h * dh, d])?;
    let vv = k.get(&format!("{a}.v_proj.weight"), &[h * dh, d])?;
    let o = k.get(&format!("{a}.out_proj.weight"), &[d, h * dh])?;
    let b_o = k.get(&format!("{a}.out_proj.bias"), &[d])?;
    let ln2 = k.layer_norm(&format!("{p}.ln_2"), d)?;
    let fc = k.get(&format!("{p}.mlp.c_fc.weight"), &[dm, d])?;
    let b_in = k.get(&format!("{p}.mlp.c_fc.bias"), &[dm])?;
    let proj = k.get(&format!("{p}.mlp.c_proj.weight"), &[d, dm])?;
    let b_out = k.get(&format!("{p}.mlp.c_proj.bias"), &[d])?;
    Ok(CanonLayer {
        ln1: Some(ln1),
        w_q: heads_from_out_major(&q, h, dh),
        w_k: heads_from_out_major(&kk, h, dh),
        w_v: heads_from_out_major(&vv, h, dh),
        b_q: HostTensor::zeros(vec![h, dh]),
        b_k: HostTensor::zeros(vec![h, dh]),
        b_v: HostTensor::zeros(vec![h, dh]),
        // out_proj is [d, (head, d_head)]: its transpose has the memory layout of [H, dh, d]
        w_o: reshape(transpose(&o), vec![h, dh, d]),
        b_o,
        ln2: Some(ln2),
        w_in: transpose(&fc),
        b_in,
        w_gate: None,
        qk_norm: None,
        w_out: transpose(&proj),
        b_out,
        post_norm: None,
    })
}

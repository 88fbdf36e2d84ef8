//! GPT-2 (`GPT2LMHeadModel`). Conv1D weights are stored input-major (`[in, out]`).
//!
//! | HF key (optionally prefixed `transformer.`) | shape | TL weight |
//! |---|---|---|
//! | `wte.weight` | `[V, d]` | `W_E` (and `W_U = W_E^T` when tied) |
//! | `wpe.weight` | `[n_ctx, d]` | `W_pos` |
//! | `h.{l}.ln_1.{weight,bias}` | `[d]` | `ln1` (folded) |
//! | `h.{l}.attn.c_attn.weight` | `[d, 3d]` | `W_Q | W_K | W_V`, columns `(head, d_head)` |
//! | `h.{l}.attn.c_attn.bias` | `[3d]` | `b_Q | b_K | b_V` |
//! | `h.{l}.attn.c_proj.weight` | `[d, d]` | `W_O` rows `(head, d_head)` |
//! | `h.{l}.attn.c_proj.bias` | `[d]` | `b_O` |
//! | `h.{l}.ln_2.{weight,bias}` | `[d]` | `ln2` (folded) |
//! | `h.{l}.mlp.c_fc.{weight,bias}` | `[d, d_mlp]`, `[d_mlp]` | `W_in`, `b_in` |
//! | `h.{l}.mlp.c_proj.{weight,bias}` | `[d_mlp, d]`, `[d]` | `W_out`, `b_out` |
//! | `ln_f.{weight,bias}` | `[d]` | `ln_final` (folded) |
//! | `lm_head.weight` (untied only) | `[V, d]` | `W_U^T`; `b_U = 0` |
//!
//! Buffers `h.{l}.attn.bias` / `masked_bias` (causal masks) are ignored.
//! Reference: TransformerLens `pretrained/weight_conversions/gpt2.py`.

use serde::Deserialize;

use super::{
    CanonLayer, Canonical, Family, Keys, LayerSink, bias_heads, heads_from_in_major, reshape,
};
use crate::config::{
    self, Activation, Common, Dims, MAX_CTX, MAX_D_MLP, MAX_D_MODEL, MAX_HEADS, MAX_LAYERS,
    ModelConfig, bounded, epsilon, req,
};
use crate::error::{ModelError, Result};

pub static FAMILY: Family = Family {
    model_types: &["gpt2"],
    classes: &["GPT2LMHeadModel", "GPT2Model"],
    prefix: &["transformer."],
    lm_head: &["lm_head.weight"],
    config,
    load,
    layer,
};

/// GPT-2's `config.json` spelling.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_embd: Option<usize>,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

fn config(json: &serde_json::Value) -> Result<ModelConfig> {
    let c: Common = config::raw(json)?;
    let r: Raw = config::raw(json)?;
    let mt = "gpt2";
    let n_layers = bounded(req(r.n_layer, "n_layer", mt)?, "n_layer", MAX_LAYERS)?;
    let n_heads = bounded(req(r.n_head, "n_head", mt)?, "n_head", MAX_HEADS)?;
    let d_model = bounded(req(r.n_embd, "n_embd", mt)?, "n_embd", MAX_D_MODEL)?;
    let n_ctx = bounded(
        req(r.n_positions.or(r.n_ctx), "n_positions", mt)?,
        "n_positions",
        MAX_CTX,
    )?;
    if r.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(ModelError::InvalidConfigField {
            field: "scale_attn_by_inverse_layer_idx",
            reason: "true is not supported".into(),
        });
    }
    let dims = Dims {
        n_layers,
        n_heads,
        n_kv_heads: n_heads,
        d_model,
        d_head: learned_head_dim(d_model, n_heads, "n_head")?,
        n_ctx,
        d_mlp: bounded(r.n_inner.unwrap_or(4 * d_model), "n_inner", MAX_D_MLP)?,
    };
    let base = ModelConfig::base(
        &FAMILY,
        dims,
        &c,
        true,
        Activation::parse(r.activation_function.as_deref().unwrap_or("gelu_new"))?,
        epsilon(r.layer_norm_epsilon.unwrap_or(1e-5), "layer_norm_epsilon")?,
    )?;
    Ok(ModelConfig {
        attn_scale: if r.scale_attn_weights.unwrap_or(true) {
            base.attn_scale
        } else {
            1.0
        },
        ..base
    })
}

/// `d_model / n_heads` for the learned-position families, which have no `head_dim`.
pub(super) fn learned_head_dim(
    d_model: usize,
    n_heads: usize,
    field: &'static str,
) -> Result<usize> {
    if !d_model.is_multiple_of(n_heads) {
        return Err(ModelError::InvalidConfigField {
            field,
            reason: format!("d_model {d_model} is not divisible by {n_heads} heads"),
        });
    }
    Ok(d_model / n_heads)
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
    let ln1 = k.layer_norm(&format!("{p}.ln_1"), d)?;
    let c_attn = k.get(&format!("{p}.attn.c_attn.weight"), &[d, 3 * d])?;
    let c_attn_b = k.get(&format!("{p}.attn.c_attn.bias"), &[3 * d])?;
    let c_proj = k.get(&format!("{p}.attn.c_proj.weight"), &[d, d])?;
    let b_o = k.get(&format!("{p}.attn.c_proj.bias"), &[d])?;
    let ln2 = k.layer_norm(&format!("{p}.ln_2"), d)?;
    let w_in = k.get(&format!("{p}.mlp.c_fc.weight"), &[d, dm])?;
    let b_in = k.get(&format!("{p}.mlp.c_fc.bias"), &[dm])?;
    let w_out = k.get(&format!("{p}.mlp.c_proj.weight"), &[dm, d])?;
    let b_out = k.get(&format!("{p}.mlp.c_proj.bias"), &[d])?;
    Ok(CanonLayer {
        ln1: Some(ln1),
        w_q: heads_from_in_major(&c_attn, 0, h, dh),
        w_k: heads_from_in_major(&c_attn, d, h, dh),
        w_v: heads_from_in_major(&c_attn, 2 * d, h, dh),
        b_q: bias_heads(&c_attn_b.data, 0, h, dh),
        b_k: bias_heads(&c_attn_b.data, d, h, dh),
        b_v: bias_heads(&c_attn_b.data, 2 * d, h, dh),
        // rows of c_proj are (head, d_head): the memory layout of [H, dh, d] already
        w_o: reshape(c_proj, vec![h, dh, d]),
        b_o,
        ln2: Some(ln2),
        w_in,
        b_in,
        w_gate: None,
        qk_norm: None,
        w_out,
        b_out,
        post_norm: None,
    })
}

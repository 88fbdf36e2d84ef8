//! GPT-NeoX (`GPTNeoXForCausalLM`, Pythia). Weights are `nn.Linear` (`[out, in]`); q/k/v are
//! one fused, **head-interleaved** projection; rotary embeddings on the first
//! `rotary_pct · d_head` channels of each head; attention and MLP read the same residual
//! (`use_parallel_residual`); the unembedding `embed_out` is untied.
//!
//! | HF key (optionally prefixed `gpt_neox.`) | shape | TL weight |
//! |---|---|---|
//! | `embed_in.weight` | `[V, d]` | `W_E` |
//! | `layers.{l}.input_layernorm.{weight,bias}` | `[d]` | `ln1` (folded) |
//! | `layers.{l}.attention.query_key_value.{weight,bias}` | `[3d, d]`, `[3d]` | rows `(head, q\|k\|v, d_head)` → `W_Q/W_K/W_V`, `b_Q/b_K/b_V` |
//! | `layers.{l}.attention.dense.{weight,bias}` | `[d, d]`, `[d]` | `W_O` (columns `(head, d_head)`), `b_O` |
//! | `layers.{l}.post_attention_layernorm.{weight,bias}` | `[d]` | `ln2` (folded) |
//! | `layers.{l}.mlp.dense_h_to_4h.{weight,bias}` | `[d_mlp, d]`, `[d_mlp]` | `W_in^T`, `b_in` |
//! | `layers.{l}.mlp.dense_4h_to_h.{weight,bias}` | `[d, d_mlp]`, `[d]` | `W_out^T`, `b_out` |
//! | `final_layer_norm.{weight,bias}` | `[d]` | `ln_final` (folded) |
//! | `embed_out.weight` (no prefix) | `[V, d]` | `W_U^T`; `b_U = 0` |
//!
//! Buffers (`attention.bias`, `masked_bias`, `rotary_emb.inv_freq`) are ignored.
//! Reference: TransformerLens `pretrained/weight_conversions/neox.py`.

use serde::Deserialize;

use super::{CanonLayer, Canonical, Family, Keys, LayerSink, reshape, transpose};
use crate::config::{self, Common, HfDims, ModelConfig, Positional, RopeFields, epsilon};
use crate::error::Result;
use crate::weights::HostTensor;

pub static FAMILY: Family = Family {
    model_types: &["gpt_neox"],
    classes: &["GPTNeoXForCausalLM", "GPTNeoXModel"],
    prefix: &["gpt_neox."],
    lm_head: &["embed_out.weight"],
    config,
    load,
    layer,
};

/// GPT-NeoX's own `config.json` fields (sizes and rotary parameters are shared).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    layer_norm_eps: Option<f64>,
    use_parallel_residual: Option<bool>,
}

fn config(json: &serde_json::Value) -> Result<ModelConfig> {
    let c: Common = config::raw(json)?;
    let r: Raw = config::raw(json)?;
    let dims: HfDims = config::raw(json)?;
    let rope: RopeFields = config::raw(json)?;
    let d = dims.resolve("gpt_neox")?;
    Ok(ModelConfig {
        // rotary_pct defaults to 0.25 in GPTNeoXConfig
        positional: Positional::Rotary(rope.rotary(d.d_head, 0.25)?),
        parallel_residual: r.use_parallel_residual.unwrap_or(true),
        ..ModelConfig::base(
            &FAMILY,
            d,
            &c,
            false,
            dims.act("gelu")?,
            epsilon(r.layer_norm_eps.unwrap_or(1e-5), "layer_norm_eps")?,
        )?
    })
}

/// The q (`j = 0`), k (1) or v (2) part of the fused `[H·3·dh, d]` projection, as `[H, d, dh]`,
/// and its bias as `[H, dh]`.
fn split_qkv(
    w: &HostTensor,
    b: &HostTensor,
    j: usize,
    h: usize,
    dh: usize,
) -> (HostTensor, HostTensor) {
    let d = w.shape[1];
    let mut out = vec![0.0; h * d * dh];
    let mut bias = vec![0.0; h * dh];
    for hh in 0..h {
        for k in 0..dh {
            let row = hh * 3 * dh + j * dh + k;
            bias[hh * dh + k] = b.data[row];
            for m in 0..d {
                out[(hh * d + m) * dh + k] = w.data[row * d + m];
            }
        }
    }
    (
        HostTensor::new(vec![h, d, dh], out),
        HostTensor::new(vec![h, dh], bias),
    )
}

fn load(cfg: &ModelConfig, k: &mut Keys<'_, '_>, sink: &mut LayerSink<'_>) -> Result<Canonical> {
    let (d, v) = (cfg.d_model, cfg.d_vocab);
    let w_e = k.embedding("embed_in.weight", &[v, d])?;
    let w_u = k.unembed_while(cfg, &w_e, |k| k.blocks(cfg, sink))?;
    let ln_f = k.layer_norm("final_layer_norm", d)?;
    Ok(Canonical::without_blocks(w_e, None, ln_f, w_u))
}

/// Block `l`, read from the checkpoint (the loader's loop and the layer streamer both call this).
fn layer(cfg: &ModelConfig, k: &mut Keys<'_, '_>, l: usize) -> Result<CanonLayer> {
    let (d, h, dh, dm) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp);
    let p = format!("layers.{l}");
    let a = format!("{p}.attention");
    let ln1 = k.layer_norm(&format!("{p}.input_layernorm"), d)?;
    let qkv = k.get(&format!("{a}.query_key_value.weight"), &[3 * h * dh, d])?;
    let qkv_b = k.get_or_zeros(&format!("{a}.query_key_value.bias"), &[3 * h * dh])?;
    let o = k.get(&format!("{a}.dense.weight"), &[d, h * dh])?;
    let b_o = k.get_or_zeros(&format!("{a}.dense.bias"), &[d])?;
    let ln2 = k.layer_norm(&format!("{p}.post_attention_layernorm"), d)?;
    let fc = k.get(&format!("{p}.mlp.dense_h_to_4h.weight"), &[dm, d])?;
    let b_in = k.get(&format!("{p}.mlp.dense_h_to_4h.bias"), &[dm])?;
    let proj = k.get(&format!("{p}.mlp.dense_4h_to_h.weight"), &[d, dm])?;
    let b_out = k.get(&format!("{p}.mlp.dense_4h_to_h.bias"), &[d])?;
    let (w_q, b_q) = split_qkv(&qkv, &qkv_b, 0, h, dh);
    let (w_k, b_k) = split_qkv(&qkv, &qkv_b, 1, h, dh);
    let (w_v, b_v) = split_qkv(&qkv, &qkv_b, 2, h, dh);
    Ok(CanonLayer {
        ln1: Some(ln1),
        w_q,
        b_q,
        w_k,
        b_k,
        w_v,
        b_v,
        // dense is [d, (head, d_head)]: its transpose has the memory layout of [H, dh, d]
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

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

use super::{CanonLayer, Canonical, Keys, LayerSink, heads_from_out_major, reshape, transpose};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::HostTensor;

pub fn load(
    cfg: &ModelConfig,
    k: &mut Keys<'_, '_>,
    sink: &mut LayerSink<'_>,
) -> Result<Canonical> {
    let (d, h, dh, dm, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab);
    let w_e = k.get("wte.weight", &[v, d])?;
    let w_pos = Some(k.get("wpe.weight", &[cfg.n_ctx, d])?);
    // the blocks are read while a tied unembedding is transposed on another thread
    let w_u = k.unembed_while(cfg, &w_e, |k| {
        for l in 0..cfg.n_layers {
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
            sink(CanonLayer {
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
                w_out: transpose(&proj),
                b_out,
            })?;
        }
        Ok(())
    })?;
    let ln_f = k.layer_norm("ln_f", d)?;
    Ok(Canonical::without_blocks(w_e, w_pos, ln_f, w_u))
}

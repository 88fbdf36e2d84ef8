//! The Llama family: `LlamaForCausalLM` (Llama 2/3, SmolLM), `Qwen2ForCausalLM` (q/k/v
//! biases), `MistralForCausalLM`. Weights are `nn.Linear` (`[out, in]`); RMSNorm (weight
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

use super::{CanonLayer, Canonical, Keys, LayerSink, heads_from_out_major, reshape, transpose};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::HostTensor;

pub fn load(
    cfg: &ModelConfig,
    k: &mut Keys<'_, '_>,
    sink: &mut LayerSink<'_>,
) -> Result<Canonical> {
    let (d, h, kv, dh, dm, v) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.d_head,
        cfg.d_mlp,
        cfg.d_vocab,
    );
    let w_e = k.get("embed_tokens.weight", &[v, d])?;
    let w_u = k.unembed_while(cfg, &w_e, |k| {
        for l in 0..cfg.n_layers {
            let p = format!("layers.{l}");
            let a = format!("{p}.self_attn");
            let ln1 = k.rms_norm(&format!("{p}.input_layernorm"), d)?;
            let q = k.get(&format!("{a}.q_proj.weight"), &[h * dh, d])?;
            let kk = k.get(&format!("{a}.k_proj.weight"), &[kv * dh, d])?;
            let vv = k.get(&format!("{a}.v_proj.weight"), &[kv * dh, d])?;
            let b_q = k.get_or_zeros(&format!("{a}.q_proj.bias"), &[h * dh])?;
            let b_k = k.get_or_zeros(&format!("{a}.k_proj.bias"), &[kv * dh])?;
            let b_v = k.get_or_zeros(&format!("{a}.v_proj.bias"), &[kv * dh])?;
            let o = k.get(&format!("{a}.o_proj.weight"), &[d, h * dh])?;
            let b_o = k.get_or_zeros(&format!("{a}.o_proj.bias"), &[d])?;
            let ln2 = k.rms_norm(&format!("{p}.post_attention_layernorm"), d)?;
            let gate = k.get(&format!("{p}.mlp.gate_proj.weight"), &[dm, d])?;
            let up = k.get(&format!("{p}.mlp.up_proj.weight"), &[dm, d])?;
            let down = k.get(&format!("{p}.mlp.down_proj.weight"), &[d, dm])?;
            sink(CanonLayer {
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
                w_out: transpose(&down),
                b_out: HostTensor::zeros(vec![d]),
            })?;
        }
        Ok(())
    })?;
    let ln_f = k.rms_norm("norm", d)?;
    Ok(Canonical::without_blocks(w_e, None, ln_f, w_u))
}

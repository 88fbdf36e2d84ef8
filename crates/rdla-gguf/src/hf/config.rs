//! The HF `config.json`: [`GgufFile::hf_config`], one builder per [`Family`], and the
//! `rope_scaling` reconstruction.

use serde_json::{Value, json};

use super::{Family, Hparams, family};
use crate::GgufFile;
use crate::error::{GgufError, Result};
use crate::meta::MetaValue;
use crate::quote::quote;

fn hf_class(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "llama" => ("llama", "LlamaForCausalLM"),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        "phi3" => ("phi3", "Phi3ForCausalLM"),
        "gemma2" => ("gemma2", "Gemma2ForCausalLM"),
        "gemma3" => ("gemma3_text", "Gemma3ForCausalLM"),
        "gpt2" => ("gpt2", "GPT2LMHeadModel"),
        _ => ("gpt_neox", "GPTNeoXForCausalLM"),
    }
}

/// What every family's config is built from.
struct Common<'a> {
    arch: &'a str,
    hp: Hparams,
    /// `{arch}.context_length`.
    n_ctx: Option<usize>,
    /// `{arch}.feed_forward_length`.
    n_ff: Option<usize>,
    rope_theta: f64,
    rope_dim: usize,
}

impl Common<'_> {
    /// The keys every RMSNorm family (Llama-style and Gemma) spells alike — widths, heads,
    /// context (`default_ctx` when the file has none), norm epsilon, rotary base — and
    /// `extra`, the family's own.
    fn rms_family_config(&self, eps: f64, n_ff: usize, default_ctx: usize, extra: Value) -> Value {
        let hp = &self.hp;
        let mut cfg = json!({
            "hidden_size": hp.n_embd,
            "intermediate_size": n_ff,
            "num_hidden_layers": hp.n_layer,
            "num_attention_heads": hp.n_head,
            "num_key_value_heads": hp.n_head_kv,
            "head_dim": hp.head_dim,
            "max_position_embeddings": self.n_ctx.unwrap_or(default_ctx),
            "rms_norm_eps": eps,
            "rope_theta": self.rope_theta,
        });
        if let (Some(all), Value::Object(own)) = (cfg.as_object_mut(), extra) {
            all.extend(own);
        }
        cfg
    }

    /// The full key of `{arch}.{key}`.
    fn k(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    fn need_n_ff(&self) -> Result<usize> {
        self.n_ff
            .ok_or_else(|| GgufError::MissingKey(self.k("feed_forward_length")))
    }
}

impl GgufFile {
    /// The per-frequency RoPE divisors of `rope_freqs.weight` (written by
    /// `convert_hf_to_gguf.py` for Llama 3.1-style `rope_type: llama3` scaling), if the file
    /// has them: frequency `i` is `rope_theta^(-2i/d) / factors[i]`. [`Self::hf_config`]
    /// reconstructs the HF `rope_scaling` from these when it can; these are the exact values.
    /// Every factor must be finite and greater than 0 ([`GgufError::BadTensorValue`]).
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>> {
        let Some(t) = self.tensor("rope_freqs.weight") else {
            return Ok(None);
        };
        let factors = self.dequantize(t)?;
        if let Some((index, &value)) = factors
            .iter()
            .enumerate()
            .find(|&(_, &f)| !(f.is_finite() && f > 0.0))
        {
            return Err(GgufError::BadTensorValue {
                tensor: t.name.clone(),
                index,
                value,
                must: "a finite number greater than 0",
            });
        }
        Ok(Some(factors))
    }

    /// A `config.json` equivalent for the architecture (HF spelling): `model_type`,
    /// `architectures`, sizes, head counts, norm epsilon, rotary settings, vocabulary size,
    /// `tie_word_embeddings`, BOS/EOS ids. Floats stored as `f32` are given by their shortest
    /// decimal form (`1e-5`, not `9.99999974737875e-6`).
    pub fn hf_config(&self) -> Result<Value> {
        let arch = self.architecture()?;
        let fam = family(arch)?;
        let hp = self.hparams()?;
        let vocab_size = self.vocab_size(&hp)?;
        let k = |key: &str| format!("{arch}.{key}");
        let n_ctx = self.opt_usize(&k("context_length"))?;
        let n_ff = self.opt_usize(&k("feed_forward_length"))?;
        let bos = self.opt_usize("tokenizer.ggml.bos_token_id")?;
        let eos = self.opt_usize("tokenizer.ggml.eos_token_id")?;
        let rope_theta = self.opt_positive(&k("rope.freq_base"))?.unwrap_or(10000.0);
        let rope_dim = self
            .opt_usize(&k("rope.dimension_count"))?
            .unwrap_or(hp.head_dim);
        let c = Common {
            arch,
            hp,
            n_ctx,
            n_ff,
            rope_theta,
            rope_dim,
        };
        let mut cfg = match fam {
            Family::Llama { .. } | Family::Phi3 => self.llama_config(&c)?,
            Family::Gemma { v3 } => self.gemma_config(&c, v3)?,
            Family::Gpt2 => self.gpt2_config(&c)?,
            Family::GptNeox => self.neox_config(&c)?,
        };
        let (model_type, class) = hf_class(arch);
        cfg["model_type"] = json!(model_type);
        cfg["architectures"] = json!([class]);
        cfg["vocab_size"] = json!(vocab_size);
        cfg["tie_word_embeddings"] = json!(self.tied_embeddings());
        cfg["bos_token_id"] = json!(bos);
        cfg["eos_token_id"] = json!(eos);
        cfg["torch_dtype"] = json!("float32");
        Ok(cfg)
    }

    /// The vocabulary size: the row count of `token_embd.weight`.
    fn vocab_size(&self, hp: &Hparams) -> Result<u64> {
        let emb = self
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".to_string()))?;
        match emb.dims.as_slice() {
            [_, v] => Ok(*v),
            _ => Err(GgufError::ShapeMismatch {
                tensor: emb.name.clone(),
                expected: vec![hp.n_embd as u64, 0],
                found: emb.dims.clone(),
            }),
        }
    }

    /// A required number, finite and greater than 0 (a norm epsilon).
    fn need_positive(&self, key: &str) -> Result<f64> {
        self.opt_positive(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// The family-specific part of a Llama-style config (llama, qwen2, qwen3).
    fn llama_config(&self, c: &Common<'_>) -> Result<Value> {
        let hp = &c.hp;
        let eps = self.need_positive(&c.k("attention.layer_norm_rms_epsilon"))?;
        let n_ff = c.need_n_ff()?;
        let has = |s: &str| self.tensor(&format!("blk.0.{s}")).is_some();
        let own = json!({
            "rope_scaling": self.rope_scaling(c.arch, c.rope_theta, c.rope_dim)?,
            "hidden_act": "silu",
        });
        let mut cfg = c.rms_family_config(eps, n_ff, 2048, own);
        match c.arch {
            "llama" => {
                cfg["attention_bias"] = json!(has("attn_q.bias"));
                cfg["mlp_bias"] = json!(has("ffn_up.bias"));
                if c.rope_dim != hp.head_dim {
                    cfg["partial_rotary_factor"] = json!(c.rope_dim as f64 / hp.head_dim as f64);
                }
            }
            "qwen2" => {
                cfg["use_sliding_window"] = json!(false);
                cfg["sliding_window"] = Value::Null;
            }
            "phi3" => {
                if c.rope_dim != hp.head_dim {
                    cfg["partial_rotary_factor"] = json!(c.rope_dim as f64 / hp.head_dim as f64);
                }
                cfg["sliding_window"] = json!(self.opt_usize(&c.k("attention.sliding_window"))?);
                cfg["original_max_position_embeddings"] =
                    json!(self.opt_usize(&c.k("rope.scaling.original_context_length"))?);
            }
            _ => {
                cfg["attention_bias"] = json!(has("attn_q.bias"));
            }
        }
        Ok(cfg)
    }

    /// The family-specific part of a Gemma 2 / Gemma 3 config. llama.cpp does not store
    /// `query_pre_attn_scalar`, the Gemma 3 local rotary base or its sliding-window pattern:
    /// it derives them as below (the 27B models, 46 and 62 layers, scale by `d_model /
    /// n_heads`, the others by `head_dim`; local base 10000; every sixth layer global), and so
    /// does this, unless the file says otherwise (`{arch}.attention.scale`,
    /// `{arch}.attention.sliding_window_pattern`).
    fn gemma_config(&self, c: &Common<'_>, v3: bool) -> Result<Value> {
        let hp = &c.hp;
        let eps = self.need_positive(&c.k("attention.layer_norm_rms_epsilon"))?;
        let n_ff = c.need_n_ff()?;
        let big = hp.n_layer == if v3 { 62 } else { 46 };
        // an explicit `{arch}.attention.scale` (σ) wins over the derivation
        let qpas = match self.opt_positive(&c.k("attention.scale"))? {
            Some(s) => {
                // σ is stored as f32: recover an integer scalar (they all are) from its rounding
                let q = 1.0 / (s * s);
                let r = q.round();
                if r >= 1.0 && (q - r).abs() <= 1e-5 * r {
                    json!(r as u64)
                } else {
                    json!(q)
                }
            }
            _ if big => json!(hp.n_embd / hp.n_head),
            _ => json!(hp.head_dim),
        };
        let pattern = self
            .opt_usize(&c.k("attention.sliding_window_pattern"))?
            .unwrap_or(6);
        let window = self
            .opt_usize(&c.k("attention.sliding_window"))?
            .unwrap_or(4096);
        let own = json!({
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": qpas,
            "sliding_window": window,
        });
        let mut cfg = c.rms_family_config(eps, n_ff, 8192, own);
        if v3 {
            cfg["rope_scaling"] = self.rope_scaling(c.arch, c.rope_theta, c.rope_dim)?;
            cfg["rope_local_base_freq"] = json!(10000.0);
            cfg["sliding_window_pattern"] = json!(pattern);
            cfg["attn_logit_softcapping"] = Value::Null;
            cfg["final_logit_softcapping"] = Value::Null;
        } else {
            cfg["attn_logit_softcapping"] = json!(
                self.opt_positive(&c.k("attn_logit_softcapping"))?
                    .unwrap_or(50.0)
            );
            cfg["final_logit_softcapping"] = json!(
                self.opt_positive(&c.k("final_logit_softcapping"))?
                    .unwrap_or(30.0)
            );
        }
        Ok(cfg)
    }

    /// The family-specific part of a GPT-2 config.
    fn gpt2_config(&self, c: &Common<'_>) -> Result<Value> {
        let hp = &c.hp;
        let eps = self.need_positive(&c.k("attention.layer_norm_epsilon"))?;
        let n_ctx = c
            .n_ctx
            .ok_or_else(|| GgufError::MissingKey(c.k("context_length")))?;
        let n_inner = match c.n_ff {
            Some(f) if Some(f) != hp.n_embd.checked_mul(4) => json!(f),
            _ => Value::Null,
        };
        Ok(json!({
            "n_embd": hp.n_embd,
            "n_layer": hp.n_layer,
            "n_head": hp.n_head,
            "n_positions": n_ctx,
            "n_ctx": n_ctx,
            "n_inner": n_inner,
            "layer_norm_epsilon": eps,
            "activation_function": "gelu_new",
        }))
    }

    /// The family-specific part of a GPT-NeoX config.
    fn neox_config(&self, c: &Common<'_>) -> Result<Value> {
        let hp = &c.hp;
        let eps = self.need_positive(&c.k("attention.layer_norm_epsilon"))?;
        let n_ff = c.need_n_ff()?;
        let pct = c.rope_dim as f64 / hp.head_dim as f64;
        let rope_scaling = self.rope_scaling(c.arch, c.rope_theta, c.rope_dim)?;
        let parallel = self
            .opt_bool(&c.k("use_parallel_residual"))?
            .unwrap_or(true);
        Ok(json!({
            "hidden_size": hp.n_embd,
            "intermediate_size": n_ff,
            "num_hidden_layers": hp.n_layer,
            "num_attention_heads": hp.n_head,
            "max_position_embeddings": c.n_ctx.unwrap_or(2048),
            "rotary_pct": pct,
            "partial_rotary_factor": pct,
            "rotary_emb_base": c.rope_theta,
            "rope_theta": c.rope_theta,
            "rope_scaling": rope_scaling,
            "layer_norm_eps": eps,
            "use_parallel_residual": parallel,
            "hidden_act": "gelu",
            "attention_bias": self.tensor("blk.0.attn_qkv.bias").is_some(),
        }))
    }

    /// `rope_scaling` for the config: from `{arch}.rope.scaling.*` (linear, yarn), or
    /// reconstructed from `rope_freqs.weight` (llama3).
    fn rope_scaling(&self, arch: &str, rope_theta: f64, rope_dim: usize) -> Result<Value> {
        let k = |key: &str| format!("{arch}.rope.scaling.{key}");
        let ty = self.get_as(&k("type"), "string", MetaValue::as_str)?;
        let factor = self.opt_positive(&k("factor"))?;
        match ty {
            Some("linear") => {
                return Ok(json!({"rope_type": "linear", "factor": factor.unwrap_or(1.0)}));
            }
            Some("yarn") => return self.yarn_scaling(arch, factor),
            Some("none") | None => {}
            Some(other) => {
                return Err(GgufError::BadValue {
                    key: k("type"),
                    reason: format!("rope scaling {} is not supported", quote(other)),
                });
            }
        }
        // Older files: `{arch}.rope.scale_linear`.
        if let Some(f) = self.opt_positive(&format!("{arch}.rope.scale_linear"))?
            && f != 1.0
        {
            return Ok(json!({"rope_type": "linear", "factor": f}));
        }
        match self.rope_freq_factors()? {
            Some(f) => Ok(fit_llama3(&f, rope_theta, rope_dim)),
            None => Ok(Value::Null),
        }
    }

    /// YaRN `rope_scaling` from `{arch}.rope.scaling.*`.
    fn yarn_scaling(&self, arch: &str, factor: Option<f64>) -> Result<Value> {
        let mut v = json!({"rope_type": "yarn", "factor": factor.unwrap_or(1.0)});
        let k = |key: &str| format!("{arch}.rope.scaling.{key}");
        if let Some(n) = self.opt_usize(&k("original_context_length"))? {
            v["original_max_position_embeddings"] = json!(n);
        }
        for (gguf, hf, positive) in [
            ("yarn_beta_fast", "beta_fast", false),
            ("yarn_beta_slow", "beta_slow", false),
            ("attn_factor", "attention_factor", true),
            ("yarn_ext_factor", "extrapolation_factor", false),
        ] {
            let x = if positive {
                self.opt_positive(&k(gguf))?
            } else {
                self.opt_f64(&k(gguf))?
            };
            if let Some(x) = x {
                v[hf] = json!(x);
            }
        }
        Ok(v)
    }
}

/// Find Llama 3 `rope_scaling` parameters that reproduce `factors` (as
/// `convert_hf_to_gguf.py` computes them) to f32 precision. Only the ratios
/// `original_max_position_embeddings / {low,high}_freq_factor` are identifiable, so
/// `low_freq_factor` is taken as 1 (as in every Llama 3.x release) and common values are
/// tried for the rest. Without a fit, the `factor` alone is given, with a note.
fn fit_llama3(factors: &[f32], base: f64, dim: usize) -> Value {
    // NaN-aware: a non-finite factor anywhere makes the fit meaningless (and `f32::max`
    // would skip a NaN)
    let finite = factors.iter().all(|f| f.is_finite());
    let factor = factors
        .iter()
        .copied()
        .fold(f32::MIN, |m, f| if f > m { f } else { m });
    let factor64 = crate::meta::f32_to_f64_decimal(factor);
    if dim == 0 || factors.len() != dim / 2 || !finite || !factor.is_finite() {
        return json!({"rope_type": "llama3", "factor": factor64});
    }
    let predict = |orig: f64, low: f64, high: f64| -> Vec<f64> {
        (0..dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / dim as f32;
                let freq = 1.0f32 / (base as f32).powf(exponent);
                let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
                let (lw, hw) = (orig / low, orig / high);
                if wavelen < hw {
                    1.0
                } else if wavelen > lw {
                    factor64
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor64 + smooth)
                }
            })
            .collect()
    };
    let close = |p: &[f64]| {
        p.iter()
            .zip(factors)
            .all(|(&a, &b)| (a - f64::from(b)).abs() <= 1e-4 * f64::from(b).abs().max(1.0))
    };
    let origs: Vec<f64> = [8192u32, 4096, 16384, 32768, 2048, 65536, 131072, 1024]
        .into_iter()
        .chain((3..=20).rev().map(|p| 1u32 << p))
        .map(f64::from)
        .collect();
    for high in [4.0, 2.0, 8.0, 16.0, 32.0] {
        for &orig in &origs {
            if close(&predict(orig, 1.0, high)) {
                return json!({
                    "rope_type": "llama3",
                    "factor": factor64,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": orig as u64,
                });
            }
        }
    }
    json!({"rope_type": "llama3", "factor": factor64})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `LlamaModel.generate_extra_tensors`, in f64 rounded to f32 (as the converter stores it).
    fn factors(dim: usize, base: f64, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f32> {
        (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < orig / high {
                    1.0
                } else if wavelen > orig / low {
                    factor
                } else {
                    let s = (orig / wavelen - low) / (high - low);
                    1.0 / ((1.0 - s) / factor + s)
                };
                f as f32
            })
            .collect()
    }

    #[test]
    fn llama3_parameters_of_real_models_are_recovered() {
        // Llama 3.1 8B (head_dim 128, factor 8) and Llama 3.2 1B (head_dim 64, factor 32).
        for (dim, factor) in [(128usize, 8.0), (64, 32.0)] {
            let f = factors(dim, 500000.0, factor, 1.0, 4.0, 8192.0);
            let v = fit_llama3(&f, 500000.0, dim);
            assert_eq!(
                v,
                json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
            );
        }
        // Nothing fits: only the factor is given.
        let v = fit_llama3(&[1.0, 3.3, 1.7, 8.0], 500000.0, 8);
        assert_eq!(v, json!({"rope_type": "llama3", "factor": 8.0}));
    }
}

//! The Hugging Face view of a GGUF file: `config.json`, tensor names and layouts.
//!
//! This undoes what llama.cpp's `convert_hf_to_gguf.py` does for each architecture:
//!
//! | GGUF arch | HF class | tensors | layout changes undone |
//! |---|---|---|---|
//! | `llama` | `LlamaForCausalLM` | `model.*`, `lm_head` | Q/K rows permuted by `LlamaModel.permute` |
//! | `qwen2` | `Qwen2ForCausalLM` | `model.*` (q/k/v biases), `lm_head` | none |
//! | `qwen3` | `Qwen3ForCausalLM` | `model.*` (q/k norms), `lm_head` | none |
//! | `gpt2` | `GPT2LMHeadModel` | `transformer.*`, `lm_head` | Conv1D weights transposed |
//! | `gptneox` | `GPTNeoXForCausalLM` | `gpt_neox.*`, `embed_out` | fused QKV rows regrouped |
//!
//! Adding an architecture is a new [`Family`] (or a new entry of an existing one) in
//! [`family`], its tensor table in [`layer_table`] / [`global_table`], and its config in
//! [`GgufFile::hf_config`]: Gemma 2/3 (norm weights stored as `1 + w`), Phi-3 (fused
//! `qkv_proj` and `gate_up_proj`, which HF stores fused too) fit this scheme.

use serde_json::{Value, json};

use crate::error::{GgufError, Result};
use crate::meta::MetaValue;
use crate::{GgufFile, TensorInfo};

/// How to turn a dequantised GGUF tensor into the HF tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfTransform {
    /// The GGUF data is already the HF tensor in row-major order.
    None,
    /// Undo `convert_hf_to_gguf.py`'s `LlamaModel.permute(w, n_head, n_head_kv)` on the rows
    /// (Q: `n_head` = the query head count, K: the key/value head count). Within each head,
    /// GGUF row `2i + j` is HF row `j·head_dim/2 + i`.
    UnpermuteRope { n_head: usize },
    /// GPT-NeoX fused QKV: GGUF stores `[Q; K; V]` (each `n_head` heads), HF stores per head
    /// `[q_h; k_h; v_h]`. Applies to the weight rows and to the bias.
    NeoxQkv { n_head: usize },
    /// Transpose a matrix: GPT-2's `Conv1D` weights are `[in, out]` in HF, `[out, in]` in GGUF.
    Transpose,
}

/// One tensor of the HF checkpoint the GGUF file corresponds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    /// The HF key, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// The HF shape, PyTorch order (e.g. `[out, in]` for `nn.Linear`, `[in, out]` for GPT-2
    /// `Conv1D`).
    pub shape: Vec<usize>,
    /// Index of the source tensor in [`GgufFile::tensors`].
    pub source: usize,
    /// What [`GgufFile::read_hf`] does to the dequantised data.
    pub transform: HfTransform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Llama-style decoder (`model.layers.*`): llama, qwen2, qwen3.
    Llama {
        permute_qk: bool,
        qk_norm: bool,
    },
    Gpt2,
    GptNeox,
}

fn family(arch: &str) -> Result<Family> {
    Ok(match arch {
        "llama" => Family::Llama {
            permute_qk: true,
            qk_norm: false,
        },
        "qwen2" => Family::Llama {
            permute_qk: false,
            qk_norm: false,
        },
        "qwen3" => Family::Llama {
            permute_qk: false,
            qk_norm: true,
        },
        "gpt2" => Family::Gpt2,
        "gptneox" => Family::GptNeox,
        other => return Err(GgufError::UnsupportedArchitecture(other.to_string())),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    PermQ,
    PermK,
    Transpose,
    NeoxQkv,
    /// Not an HF tensor (e.g. `rope_freqs.weight`, which becomes config).
    Skip,
}

/// `(GGUF suffix after "blk.N.", HF suffix after the layer prefix, kind, required)`.
type Entry = (&'static str, &'static str, Kind, bool);

fn layer_table(f: Family) -> (&'static str, &'static [Entry]) {
    use Kind::*;
    match f {
        Family::Llama { .. } => (
            "model.layers.",
            &[
                ("attn_norm.weight", "input_layernorm.weight", Plain, true),
                ("attn_q.weight", "self_attn.q_proj.weight", PermQ, true),
                ("attn_q.bias", "self_attn.q_proj.bias", PermQ, false),
                ("attn_k.weight", "self_attn.k_proj.weight", PermK, true),
                ("attn_k.bias", "self_attn.k_proj.bias", PermK, false),
                ("attn_v.weight", "self_attn.v_proj.weight", Plain, true),
                ("attn_v.bias", "self_attn.v_proj.bias", Plain, false),
                ("attn_output.weight", "self_attn.o_proj.weight", Plain, true),
                ("attn_output.bias", "self_attn.o_proj.bias", Plain, false),
                (
                    "attn_q_norm.weight",
                    "self_attn.q_norm.weight",
                    Plain,
                    false,
                ),
                (
                    "attn_k_norm.weight",
                    "self_attn.k_norm.weight",
                    Plain,
                    false,
                ),
                (
                    "ffn_norm.weight",
                    "post_attention_layernorm.weight",
                    Plain,
                    true,
                ),
                ("ffn_gate.weight", "mlp.gate_proj.weight", Plain, true),
                ("ffn_gate.bias", "mlp.gate_proj.bias", Plain, false),
                ("ffn_up.weight", "mlp.up_proj.weight", Plain, true),
                ("ffn_up.bias", "mlp.up_proj.bias", Plain, false),
                ("ffn_down.weight", "mlp.down_proj.weight", Plain, true),
                ("ffn_down.bias", "mlp.down_proj.bias", Plain, false),
            ],
        ),
        Family::Gpt2 => (
            "transformer.h.",
            &[
                ("attn_norm.weight", "ln_1.weight", Plain, true),
                ("attn_norm.bias", "ln_1.bias", Plain, true),
                ("attn_qkv.weight", "attn.c_attn.weight", Transpose, true),
                ("attn_qkv.bias", "attn.c_attn.bias", Plain, true),
                ("attn_output.weight", "attn.c_proj.weight", Transpose, true),
                ("attn_output.bias", "attn.c_proj.bias", Plain, true),
                ("ffn_norm.weight", "ln_2.weight", Plain, true),
                ("ffn_norm.bias", "ln_2.bias", Plain, true),
                ("ffn_up.weight", "mlp.c_fc.weight", Transpose, true),
                ("ffn_up.bias", "mlp.c_fc.bias", Plain, true),
                ("ffn_down.weight", "mlp.c_proj.weight", Transpose, true),
                ("ffn_down.bias", "mlp.c_proj.bias", Plain, true),
            ],
        ),
        Family::GptNeox => (
            "gpt_neox.layers.",
            &[
                ("attn_norm.weight", "input_layernorm.weight", Plain, true),
                ("attn_norm.bias", "input_layernorm.bias", Plain, true),
                (
                    "attn_qkv.weight",
                    "attention.query_key_value.weight",
                    NeoxQkv,
                    true,
                ),
                (
                    "attn_qkv.bias",
                    "attention.query_key_value.bias",
                    NeoxQkv,
                    false,
                ),
                ("attn_output.weight", "attention.dense.weight", Plain, true),
                ("attn_output.bias", "attention.dense.bias", Plain, false),
                (
                    "ffn_norm.weight",
                    "post_attention_layernorm.weight",
                    Plain,
                    true,
                ),
                (
                    "ffn_norm.bias",
                    "post_attention_layernorm.bias",
                    Plain,
                    true,
                ),
                ("ffn_up.weight", "mlp.dense_h_to_4h.weight", Plain, true),
                ("ffn_up.bias", "mlp.dense_h_to_4h.bias", Plain, false),
                ("ffn_down.weight", "mlp.dense_4h_to_h.weight", Plain, true),
                ("ffn_down.bias", "mlp.dense_4h_to_h.bias", Plain, false),
            ],
        ),
    }
}

/// Non-layer tensors. `output.weight` (the unembedding) is handled separately because of tying.
fn global_table(f: Family) -> &'static [Entry] {
    use Kind::*;
    match f {
        Family::Llama { .. } => &[
            (
                "token_embd.weight",
                "model.embed_tokens.weight",
                Plain,
                true,
            ),
            ("output_norm.weight", "model.norm.weight", Plain, true),
            ("rope_freqs.weight", "", Skip, false),
        ],
        Family::Gpt2 => &[
            ("token_embd.weight", "transformer.wte.weight", Plain, true),
            (
                "position_embd.weight",
                "transformer.wpe.weight",
                Plain,
                true,
            ),
            ("output_norm.weight", "transformer.ln_f.weight", Plain, true),
            ("output_norm.bias", "transformer.ln_f.bias", Plain, true),
        ],
        Family::GptNeox => &[
            ("token_embd.weight", "gpt_neox.embed_in.weight", Plain, true),
            (
                "output_norm.weight",
                "gpt_neox.final_layer_norm.weight",
                Plain,
                true,
            ),
            (
                "output_norm.bias",
                "gpt_neox.final_layer_norm.bias",
                Plain,
                true,
            ),
        ],
    }
}

fn unembed_name(f: Family) -> &'static str {
    match f {
        Family::Llama { .. } | Family::Gpt2 => "lm_head.weight",
        Family::GptNeox => "embed_out.weight",
    }
}

fn hf_class(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "llama" => ("llama", "LlamaForCausalLM"),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        "gpt2" => ("gpt2", "GPT2LMHeadModel"),
        _ => ("gpt_neox", "GPTNeoXForCausalLM"),
    }
}

/// Hyper-parameters read from `{arch}.*` keys.
struct Hparams {
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
}

impl GgufFile {
    fn arch_key(&self, key: &str) -> Result<String> {
        Ok(format!("{}.{key}", self.architecture()?))
    }

    /// A required non-negative integer (a per-layer array whose entries are all equal is
    /// accepted as that value).
    fn need_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            MetaValue::Array(a) => {
                let vals = a.to_i64_vec().unwrap_or_default();
                match vals.split_first() {
                    Some((first, rest)) if rest.iter().all(|x| x == first) => {
                        u64::try_from(*first).ok()
                    }
                    _ => {
                        return Err(GgufError::BadValue {
                            key: key.to_string(),
                            reason: "per-layer values that differ are not supported".to_string(),
                        });
                    }
                }
            }
            _ => v.as_u64(),
        };
        let n = n.ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected: "unsigned integer",
            found: v.type_name(),
        })?;
        usize::try_from(n)
            .map(Some)
            .map_err(|_| GgufError::BadValue {
                key: key.to_string(),
                reason: format!("{n} is too large"),
            })
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.to_string(),
                expected: "number",
                found: v.type_name(),
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.to_string(),
                expected: "bool",
                found: v.type_name(),
            }),
        }
    }

    fn hparams(&self) -> Result<Hparams> {
        let n_layer = self.need_usize(&self.arch_key("block_count")?)?;
        // Each layer has several tensors: a block count beyond the tensor count is corrupt
        // (and would drive loops over layers).
        if n_layer > self.tensors().len() {
            return Err(GgufError::BadValue {
                key: self.arch_key("block_count")?,
                reason: format!(
                    "{n_layer} layers, but the file has {} tensors",
                    self.tensors().len()
                ),
            });
        }
        let n_embd = self.need_usize(&self.arch_key("embedding_length")?)?;
        let n_head = self.need_usize(&self.arch_key("attention.head_count")?)?;
        let n_head_kv = self
            .opt_usize(&self.arch_key("attention.head_count_kv")?)?
            .unwrap_or(n_head);
        let bad = |key: &str, reason: String| GgufError::BadValue {
            key: key.to_string(),
            reason,
        };
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                &self.arch_key("attention.head_count_kv")?,
                format!("{n_head} query heads cannot share {n_head_kv} key/value heads"),
            ));
        }
        let head_dim = match self.opt_usize(&self.arch_key("attention.key_length")?)? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(bad(
                    &self.arch_key("embedding_length")?,
                    format!("{n_embd} is not a multiple of the head count {n_head}"),
                ));
            }
        };
        Ok(Hparams {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
        })
    }

    /// Whether the unembedding is the token embedding: `output.weight` is absent (llama.cpp
    /// then uses `token_embd.weight`) or is a byte-for-byte copy of it (older GPT-2
    /// conversions wrote one). A separately quantised copy is *not* tied: its values differ.
    pub fn tied_embeddings(&self) -> bool {
        match (
            self.tensor("output.weight"),
            self.tensor("token_embd.weight"),
        ) {
            (None, _) => true,
            (Some(out), Some(emb)) => {
                out.ggml_type == emb.ggml_type
                    && out.dims == emb.dims
                    && matches!(
                        (self.tensor_bytes(out), self.tensor_bytes(emb)),
                        (Ok(a), Ok(b)) if a == b
                    )
            }
            (Some(_), None) => false,
        }
    }

    /// The tensors of the HF checkpoint this file corresponds to, in file order.
    ///
    /// Every GGUF tensor must map to an HF tensor (or be one known not to, like
    /// `rope_freqs.weight`); an unknown tensor, a missing required one, or a tensor of a type
    /// that cannot be dequantised is an error here rather than later.
    pub fn hf_tensors(&self) -> Result<Vec<HfTensor>> {
        let arch = self.architecture()?.to_string();
        let fam = family(&arch)?;
        let hp = self.hparams()?;
        let (prefix, layer) = layer_table(fam);
        let tied = self.tied_embeddings();
        let mut out = Vec::new();
        for (source, t) in self.tensors().iter().enumerate() {
            let (hf_name, kind) = if let Some(rest) = t.name.strip_prefix("blk.") {
                let parsed = rest.split_once('.').and_then(|(l, suffix)| {
                    let l: usize = l.parse().ok()?;
                    let e = layer.iter().find(|e| e.0 == suffix)?;
                    Some((l, e))
                });
                match parsed {
                    Some((l, e)) if l < hp.n_layer => (format!("{prefix}{l}.{}", e.1), e.2),
                    _ => {
                        return Err(GgufError::UnexpectedTensor {
                            arch,
                            tensor: t.name.clone(),
                        });
                    }
                }
            } else if t.name == "output.weight" {
                if tied {
                    continue;
                }
                (unembed_name(fam).to_string(), Kind::Plain)
            } else if let Some(e) = global_table(fam).iter().find(|e| e.0 == t.name) {
                (e.1.to_string(), e.2)
            } else {
                return Err(GgufError::UnexpectedTensor {
                    arch,
                    tensor: t.name.clone(),
                });
            };
            if kind == Kind::Skip {
                continue;
            }
            if !t.ggml_type.is_supported() {
                return Err(GgufError::UnsupportedTensorType {
                    tensor: t.name.clone(),
                    ty: t.ggml_type.name().to_string(),
                });
            }
            let permute = matches!(
                fam,
                Family::Llama {
                    permute_qk: true,
                    ..
                }
            );
            let transform = match kind {
                Kind::PermQ if permute => HfTransform::UnpermuteRope { n_head: hp.n_head },
                Kind::PermK if permute => HfTransform::UnpermuteRope {
                    n_head: hp.n_head_kv,
                },
                Kind::NeoxQkv => HfTransform::NeoxQkv { n_head: hp.n_head },
                Kind::Transpose => HfTransform::Transpose,
                _ => HfTransform::None,
            };
            check_transform(t, transform)?;
            let shape = match transform {
                HfTransform::Transpose => t.dims.iter().map(|&d| d as usize).collect(),
                _ => t.shape(),
            };
            out.push(HfTensor {
                name: hf_name,
                shape,
                source,
                transform,
            });
        }
        // Everything an HF model of this kind cannot do without.
        let mut missing = global_table(fam)
            .iter()
            .find(|e| e.3 && self.tensor(e.0).is_none())
            .map(|e| e.0.to_string());
        let qk_norm = matches!(fam, Family::Llama { qk_norm: true, .. });
        for l in 0..hp.n_layer {
            for e in layer {
                let required =
                    e.3 || (qk_norm && e.0.starts_with("attn_") && e.0.contains("_norm.weight"));
                let name = format!("blk.{l}.{}", e.0);
                if missing.is_none() && required && self.tensor(&name).is_none() {
                    missing = Some(name);
                }
            }
        }
        if let Some(first) = missing {
            return Err(GgufError::MissingTensor(first));
        }
        Ok(out)
    }

    /// Read one HF tensor: dequantised, layout changes undone, row-major over `t.shape`.
    pub fn read_hf(&self, t: &HfTensor) -> Result<Vec<f32>> {
        let src = self
            .tensors()
            .get(t.source)
            .ok_or_else(|| GgufError::MissingTensor(t.name.clone()))?;
        check_transform(src, t.transform)?;
        let data = self.dequantize(src)?;
        let (rows, cols) = rows_cols(src);
        Ok(match t.transform {
            HfTransform::None => data,
            HfTransform::UnpermuteRope { n_head } => {
                let head_dim = rows / n_head;
                let half = head_dim / 2;
                let mut out = vec![0f32; data.len()];
                for h in 0..n_head {
                    for i in 0..half {
                        for j in 0..2 {
                            let src_row = h * head_dim + 2 * i + j;
                            let dst_row = h * head_dim + j * half + i;
                            out[dst_row * cols..(dst_row + 1) * cols]
                                .copy_from_slice(&data[src_row * cols..(src_row + 1) * cols]);
                        }
                    }
                }
                out
            }
            HfTransform::NeoxQkv { n_head } => {
                let n_embd = rows / 3;
                let head_dim = n_embd / n_head;
                let mut out = vec![0f32; data.len()];
                for h in 0..n_head {
                    for j in 0..3 {
                        for d in 0..head_dim {
                            let src_row = j * n_embd + h * head_dim + d;
                            let dst_row = h * 3 * head_dim + j * head_dim + d;
                            out[dst_row * cols..(dst_row + 1) * cols]
                                .copy_from_slice(&data[src_row * cols..(src_row + 1) * cols]);
                        }
                    }
                }
                out
            }
            HfTransform::Transpose => {
                let mut out = vec![0f32; data.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        out[c * rows + r] = data[r * cols + c];
                    }
                }
                out
            }
        })
    }

    /// The per-frequency RoPE divisors of `rope_freqs.weight` (written by
    /// `convert_hf_to_gguf.py` for Llama 3.1-style `rope_type: llama3` scaling), if the file
    /// has them: frequency `i` is `rope_theta^(-2i/d) / factors[i]`. [`Self::hf_config`]
    /// reconstructs the HF `rope_scaling` from these when it can; these are the exact values.
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>> {
        match self.tensor("rope_freqs.weight") {
            Some(t) => self.dequantize(t).map(Some),
            None => Ok(None),
        }
    }

    /// A `config.json` equivalent for the architecture (HF spelling): `model_type`,
    /// `architectures`, sizes, head counts, norm epsilon, rotary settings, vocabulary size,
    /// `tie_word_embeddings`, BOS/EOS ids. Floats stored as `f32` are given by their shortest
    /// decimal form (`1e-5`, not `9.99999974737875e-6`).
    pub fn hf_config(&self) -> Result<Value> {
        let arch = self.architecture()?.to_string();
        let fam = family(&arch)?;
        let hp = self.hparams()?;
        let (model_type, class) = hf_class(&arch);
        let k = |key: &str| format!("{arch}.{key}");
        let emb = self
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".to_string()))?;
        let vocab_size = match emb.dims.as_slice() {
            [_, v] => *v,
            _ => {
                return Err(GgufError::ShapeMismatch {
                    tensor: emb.name.clone(),
                    expected: vec![hp.n_embd as u64, 0],
                    found: emb.dims.clone(),
                });
            }
        };
        let n_ctx = self.opt_usize(&k("context_length"))?;
        let n_ff = self.opt_usize(&k("feed_forward_length"))?;
        let tied = self.tied_embeddings();
        let bos = self.opt_usize("tokenizer.ggml.bos_token_id")?;
        let eos = self.opt_usize("tokenizer.ggml.eos_token_id")?;
        let rope_theta = self.opt_f64(&k("rope.freq_base"))?.unwrap_or(10000.0);
        let rope_dim = self
            .opt_usize(&k("rope.dimension_count"))?
            .unwrap_or(hp.head_dim);
        let mut cfg = match fam {
            Family::Llama { .. } => {
                let eps = self
                    .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
                    .ok_or_else(|| GgufError::MissingKey(k("attention.layer_norm_rms_epsilon")))?;
                let n_ff = n_ff.ok_or_else(|| GgufError::MissingKey(k("feed_forward_length")))?;
                let has = |s: &str| self.tensor(&format!("blk.0.{s}")).is_some();
                let mut c = json!({
                    "hidden_size": hp.n_embd,
                    "intermediate_size": n_ff,
                    "num_hidden_layers": hp.n_layer,
                    "num_attention_heads": hp.n_head,
                    "num_key_value_heads": hp.n_head_kv,
                    "head_dim": hp.head_dim,
                    "max_position_embeddings": n_ctx.unwrap_or(2048),
                    "rms_norm_eps": eps,
                    "rope_theta": rope_theta,
                    "rope_scaling": self.rope_scaling(&arch, rope_theta, rope_dim)?,
                    "hidden_act": "silu",
                });
                match arch.as_str() {
                    "llama" => {
                        c["attention_bias"] = json!(has("attn_q.bias"));
                        c["mlp_bias"] = json!(has("ffn_up.bias"));
                        if rope_dim != hp.head_dim {
                            c["partial_rotary_factor"] =
                                json!(rope_dim as f64 / hp.head_dim as f64);
                        }
                    }
                    "qwen2" => {
                        c["use_sliding_window"] = json!(false);
                        c["sliding_window"] = Value::Null;
                    }
                    _ => {
                        c["attention_bias"] = json!(has("attn_q.bias"));
                    }
                }
                c
            }
            Family::Gpt2 => {
                let eps = self
                    .opt_f64(&k("attention.layer_norm_epsilon"))?
                    .ok_or_else(|| GgufError::MissingKey(k("attention.layer_norm_epsilon")))?;
                let n_ctx = n_ctx.ok_or_else(|| GgufError::MissingKey(k("context_length")))?;
                let n_inner = match n_ff {
                    Some(f) if Some(f) != hp.n_embd.checked_mul(4) => json!(f),
                    _ => Value::Null,
                };
                json!({
                    "n_embd": hp.n_embd,
                    "n_layer": hp.n_layer,
                    "n_head": hp.n_head,
                    "n_positions": n_ctx,
                    "n_ctx": n_ctx,
                    "n_inner": n_inner,
                    "layer_norm_epsilon": eps,
                    "activation_function": "gelu_new",
                })
            }
            Family::GptNeox => {
                let eps = self
                    .opt_f64(&k("attention.layer_norm_epsilon"))?
                    .ok_or_else(|| GgufError::MissingKey(k("attention.layer_norm_epsilon")))?;
                let n_ff = n_ff.ok_or_else(|| GgufError::MissingKey(k("feed_forward_length")))?;
                let pct = rope_dim as f64 / hp.head_dim as f64;
                json!({
                    "hidden_size": hp.n_embd,
                    "intermediate_size": n_ff,
                    "num_hidden_layers": hp.n_layer,
                    "num_attention_heads": hp.n_head,
                    "max_position_embeddings": n_ctx.unwrap_or(2048),
                    "rotary_pct": pct,
                    "partial_rotary_factor": pct,
                    "rotary_emb_base": rope_theta,
                    "rope_theta": rope_theta,
                    "rope_scaling": self.rope_scaling(&arch, rope_theta, rope_dim)?,
                    "layer_norm_eps": eps,
                    "use_parallel_residual": self.opt_bool(&k("use_parallel_residual"))?.unwrap_or(true),
                    "hidden_act": "gelu",
                    "attention_bias": self.tensor("blk.0.attn_qkv.bias").is_some(),
                })
            }
        };
        cfg["model_type"] = json!(model_type);
        cfg["architectures"] = json!([class]);
        cfg["vocab_size"] = json!(vocab_size);
        cfg["tie_word_embeddings"] = json!(tied);
        cfg["bos_token_id"] = json!(bos);
        cfg["eos_token_id"] = json!(eos);
        cfg["torch_dtype"] = json!("float32");
        Ok(cfg)
    }

    /// `rope_scaling` for the config: from `{arch}.rope.scaling.*` (linear, yarn), or
    /// reconstructed from `rope_freqs.weight` (llama3).
    fn rope_scaling(&self, arch: &str, rope_theta: f64, rope_dim: usize) -> Result<Value> {
        let k = |key: &str| format!("{arch}.rope.scaling.{key}");
        let ty = match self.get(&k("type")) {
            Some(v) => Some(v.as_str().ok_or_else(|| GgufError::WrongType {
                key: k("type"),
                expected: "string",
                found: v.type_name(),
            })?),
            None => None,
        };
        let factor = self.opt_f64(&k("factor"))?;
        match ty {
            Some("linear") => {
                return Ok(json!({"rope_type": "linear", "factor": factor.unwrap_or(1.0)}));
            }
            Some("yarn") => {
                let mut v = json!({"rope_type": "yarn", "factor": factor.unwrap_or(1.0)});
                for (gguf, hf) in [
                    (
                        "original_context_length",
                        "original_max_position_embeddings",
                    ),
                    ("yarn_beta_fast", "beta_fast"),
                    ("yarn_beta_slow", "beta_slow"),
                    ("attn_factor", "attention_factor"),
                    ("yarn_ext_factor", "extrapolation_factor"),
                ] {
                    if let Some(x) = self.opt_f64(&k(gguf))? {
                        v[hf] = if gguf == "original_context_length" {
                            json!(x as u64)
                        } else {
                            json!(x)
                        };
                    }
                }
                return Ok(v);
            }
            Some("none") | None => {}
            Some(other) => {
                return Err(GgufError::BadValue {
                    key: k("type"),
                    reason: format!("rope scaling `{other}` is not supported"),
                });
            }
        }
        // Older files: `{arch}.rope.scale_linear`.
        if let Some(f) = self.opt_f64(&format!("{arch}.rope.scale_linear"))?
            && f != 1.0
        {
            return Ok(json!({"rope_type": "linear", "factor": f}));
        }
        match self.rope_freq_factors()? {
            Some(f) => Ok(fit_llama3(&f, rope_theta, rope_dim)),
            None => Ok(Value::Null),
        }
    }
}

/// Find Llama 3 `rope_scaling` parameters that reproduce `factors` (as
/// `convert_hf_to_gguf.py` computes them) to f32 precision. Only the ratios
/// `original_max_position_embeddings / {low,high}_freq_factor` are identifiable, so
/// `low_freq_factor` is taken as 1 (as in every Llama 3.x release) and common values are
/// tried for the rest. Without a fit, the `factor` alone is given, with a note.
fn fit_llama3(factors: &[f32], base: f64, dim: usize) -> Value {
    let factor = factors.iter().copied().fold(f32::MIN, f32::max);
    let factor64 = crate::meta::f32_to_f64_decimal(factor);
    if dim == 0 || factors.len() != dim / 2 || !factor.is_finite() {
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

/// `(rows, cols)` of a tensor seen as a matrix of HF rows: 1-D tensors are one column.
fn rows_cols(t: &TensorInfo) -> (usize, usize) {
    match t.dims.as_slice() {
        [n] => (*n as usize, 1),
        [c, r] => (*r as usize, *c as usize),
        _ => (t.n_elements() as usize, 1),
    }
}

fn check_transform(t: &TensorInfo, tr: HfTransform) -> Result<()> {
    let bad = |reason: String| GgufError::BadDims {
        tensor: t.name.clone(),
        dims: t.dims.clone(),
        reason,
    };
    if t.dims.len() > 2 && tr != HfTransform::None {
        return Err(bad("expected a vector or a matrix".to_string()));
    }
    let (rows, _) = rows_cols(t);
    match tr {
        HfTransform::None => Ok(()),
        HfTransform::UnpermuteRope { n_head } => {
            if n_head == 0 || rows % n_head != 0 || rows / n_head == 0 || (rows / n_head) % 2 != 0 {
                Err(bad(format!(
                    "{rows} rows do not split into {n_head} heads of even size"
                )))
            } else {
                Ok(())
            }
        }
        HfTransform::NeoxQkv { n_head } => {
            let groups = n_head.checked_mul(3).filter(|&g| g > 0);
            if groups.is_none_or(|g| rows == 0 || rows % g != 0) {
                Err(bad(format!(
                    "{rows} rows do not split into 3 × {n_head} heads"
                )))
            } else {
                Ok(())
            }
        }
        HfTransform::Transpose => {
            if t.dims.len() != 2 {
                Err(bad("only a matrix can be transposed".to_string()))
            } else {
                Ok(())
            }
        }
    }
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

    #[test]
    fn transforms_move_rows_as_documented() {
        // 2 heads of head_dim 4, one column: GGUF row 2i+j of a head is HF row j*2+i.
        let t = TensorInfo {
            name: "t".into(),
            dims: vec![8],
            ggml_type: crate::GgmlType::F32,
            data: 0..32,
        };
        assert!(check_transform(&t, HfTransform::UnpermuteRope { n_head: 2 }).is_ok());
        assert!(check_transform(&t, HfTransform::UnpermuteRope { n_head: 3 }).is_err());
        assert!(check_transform(&t, HfTransform::UnpermuteRope { n_head: 0 }).is_err());
        assert!(check_transform(&t, HfTransform::NeoxQkv { n_head: 3 }).is_err());
        assert!(check_transform(&t, HfTransform::Transpose).is_err());
    }
}

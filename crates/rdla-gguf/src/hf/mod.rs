//! The Hugging Face view of a GGUF file: `config.json`, tensor names and layouts.
//!
//! This undoes what llama.cpp's `convert_hf_to_gguf.py` does for each architecture:
//!
//! | GGUF arch | HF class | tensors | layout changes undone |
//! |---|---|---|---|
//! | `llama` | `LlamaForCausalLM` | `model.*`, `lm_head` | Q/K rows permuted by `LlamaModel.permute` |
//! | `qwen2` | `Qwen2ForCausalLM` | `model.*` (q/k/v biases), `lm_head` | none |
//! | `qwen3` | `Qwen3ForCausalLM` | `model.*` (q/k norms), `lm_head` | none |
//! | `phi3` | `Phi3ForCausalLM` | `model.*` (fused `qkv_proj`, `gate_up_proj`), `lm_head` | none |
//! | `gemma2` | `Gemma2ForCausalLM` | `model.*` (sandwich norms), tied | norm weights stored as `1 + w`: 1 subtracted |
//! | `gemma3` | `Gemma3ForCausalLM` | `model.*` (sandwich and q/k norms), tied | norm weights stored as `1 + w`: 1 subtracted |
//! | `gpt2` | `GPT2LMHeadModel` | `transformer.*`, `lm_head` | Conv1D weights transposed |
//! | `gptneox` | `GPTNeoXForCausalLM` | `gpt_neox.*`, `embed_out` | fused QKV rows regrouped |
//!
//! Adding an architecture is a new [`Family`] (or a new entry of an existing one) in
//! [`family`], its tensor tables in [`tensors`] (`layer_table` / `global_table`), and its
//! config in [`config`] ([`GgufFile::hf_config`]).

mod config;
mod tensors;

use crate::GgufFile;
use crate::error::{GgufError, Result};
use crate::meta::MetaValue;

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
    /// Subtract 1: `convert_hf_to_gguf.py` stores Gemma's zero-centred norm weights `w` as the
    /// `1 + w` they multiply by.
    MinusOne,
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
    /// Phi-3: the Llama layout with fused `qkv_proj` and `gate_up_proj`.
    Phi3,
    /// Gemma 2 (`v3: false`) and Gemma 3: sandwich norms, norm weights stored as `1 + w`.
    Gemma {
        v3: bool,
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
        "phi3" => Family::Phi3,
        "gemma2" => Family::Gemma { v3: false },
        "gemma3" => Family::Gemma { v3: true },
        "gpt2" => Family::Gpt2,
        "gptneox" => Family::GptNeox,
        other => return Err(GgufError::UnsupportedArchitecture(other.to_string())),
    })
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
        // A head of no dimensions would divide by zero wherever a ratio to it is taken.
        if head_dim == 0 {
            let key_length = self.arch_key("attention.key_length")?;
            let key = if self.get(&key_length).is_some() {
                key_length
            } else {
                self.arch_key("embedding_length")?
            };
            return Err(bad(&key, "heads of 0 dimensions".to_string()));
        }
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
}

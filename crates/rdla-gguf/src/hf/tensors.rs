//! HF tensor names and layouts: the per-family key tables, [`GgufFile::hf_tensors`] and
//! [`GgufFile::read_hf`].

use super::{Family, HfTensor, HfTransform, Hparams, family};
use crate::error::{GgufError, Result};
use crate::{GgufFile, TensorInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    PermQ,
    PermK,
    Transpose,
    NeoxQkv,
    /// A Gemma norm weight stored as `1 + w`.
    MinusOne,
    /// Not an HF tensor (e.g. `rope_freqs.weight`, which becomes config).
    Skip,
}

/// One row of a key table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The GGUF name (for layer tensors, the suffix after `blk.N.`).
    gguf: &'static str,
    /// The HF name (for layer tensors, the suffix after the layer prefix).
    hf: &'static str,
    kind: Kind,
    /// Whether an HF model of the family cannot do without it.
    required: bool,
}

/// A tensor every file of the family has.
const fn req(gguf: &'static str, hf: &'static str, kind: Kind) -> Entry {
    Entry {
        gguf,
        hf,
        kind,
        required: true,
    }
}

/// A tensor some files of the family have.
const fn opt(gguf: &'static str, hf: &'static str, kind: Kind) -> Entry {
    Entry {
        gguf,
        hf,
        kind,
        required: false,
    }
}

use Kind::{MinusOne, NeoxQkv, PermK, PermQ, Plain, Skip, Transpose};

const LLAMA_LAYER: &[Entry] = &[
    req("attn_norm.weight", "input_layernorm.weight", Plain),
    req("attn_q.weight", "self_attn.q_proj.weight", PermQ),
    opt("attn_q.bias", "self_attn.q_proj.bias", PermQ),
    req("attn_k.weight", "self_attn.k_proj.weight", PermK),
    opt("attn_k.bias", "self_attn.k_proj.bias", PermK),
    req("attn_v.weight", "self_attn.v_proj.weight", Plain),
    opt("attn_v.bias", "self_attn.v_proj.bias", Plain),
    req("attn_output.weight", "self_attn.o_proj.weight", Plain),
    opt("attn_output.bias", "self_attn.o_proj.bias", Plain),
    opt("attn_q_norm.weight", "self_attn.q_norm.weight", Plain),
    opt("attn_k_norm.weight", "self_attn.k_norm.weight", Plain),
    req("ffn_norm.weight", "post_attention_layernorm.weight", Plain),
    req("ffn_gate.weight", "mlp.gate_proj.weight", Plain),
    opt("ffn_gate.bias", "mlp.gate_proj.bias", Plain),
    req("ffn_up.weight", "mlp.up_proj.weight", Plain),
    opt("ffn_up.bias", "mlp.up_proj.bias", Plain),
    req("ffn_down.weight", "mlp.down_proj.weight", Plain),
    opt("ffn_down.bias", "mlp.down_proj.bias", Plain),
];

const PHI3_LAYER: &[Entry] = &[
    req("attn_norm.weight", "input_layernorm.weight", Plain),
    req("attn_qkv.weight", "self_attn.qkv_proj.weight", Plain),
    req("attn_output.weight", "self_attn.o_proj.weight", Plain),
    req("ffn_norm.weight", "post_attention_layernorm.weight", Plain),
    req("ffn_up.weight", "mlp.gate_up_proj.weight", Plain),
    req("ffn_down.weight", "mlp.down_proj.weight", Plain),
];

const GEMMA_LAYER: &[Entry] = &[
    req("attn_norm.weight", "input_layernorm.weight", MinusOne),
    req("attn_q.weight", "self_attn.q_proj.weight", Plain),
    req("attn_k.weight", "self_attn.k_proj.weight", Plain),
    req("attn_v.weight", "self_attn.v_proj.weight", Plain),
    req("attn_output.weight", "self_attn.o_proj.weight", Plain),
    opt("attn_q_norm.weight", "self_attn.q_norm.weight", MinusOne),
    opt("attn_k_norm.weight", "self_attn.k_norm.weight", MinusOne),
    req(
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
        MinusOne,
    ),
    req(
        "ffn_norm.weight",
        "pre_feedforward_layernorm.weight",
        MinusOne,
    ),
    req("ffn_gate.weight", "mlp.gate_proj.weight", Plain),
    req("ffn_up.weight", "mlp.up_proj.weight", Plain),
    req("ffn_down.weight", "mlp.down_proj.weight", Plain),
    req(
        "post_ffw_norm.weight",
        "post_feedforward_layernorm.weight",
        MinusOne,
    ),
];

const GPT2_LAYER: &[Entry] = &[
    req("attn_norm.weight", "ln_1.weight", Plain),
    req("attn_norm.bias", "ln_1.bias", Plain),
    req("attn_qkv.weight", "attn.c_attn.weight", Transpose),
    req("attn_qkv.bias", "attn.c_attn.bias", Plain),
    req("attn_output.weight", "attn.c_proj.weight", Transpose),
    req("attn_output.bias", "attn.c_proj.bias", Plain),
    req("ffn_norm.weight", "ln_2.weight", Plain),
    req("ffn_norm.bias", "ln_2.bias", Plain),
    req("ffn_up.weight", "mlp.c_fc.weight", Transpose),
    req("ffn_up.bias", "mlp.c_fc.bias", Plain),
    req("ffn_down.weight", "mlp.c_proj.weight", Transpose),
    req("ffn_down.bias", "mlp.c_proj.bias", Plain),
];

const NEOX_LAYER: &[Entry] = &[
    req("attn_norm.weight", "input_layernorm.weight", Plain),
    req("attn_norm.bias", "input_layernorm.bias", Plain),
    req(
        "attn_qkv.weight",
        "attention.query_key_value.weight",
        NeoxQkv,
    ),
    opt("attn_qkv.bias", "attention.query_key_value.bias", NeoxQkv),
    req("attn_output.weight", "attention.dense.weight", Plain),
    opt("attn_output.bias", "attention.dense.bias", Plain),
    req("ffn_norm.weight", "post_attention_layernorm.weight", Plain),
    req("ffn_norm.bias", "post_attention_layernorm.bias", Plain),
    req("ffn_up.weight", "mlp.dense_h_to_4h.weight", Plain),
    opt("ffn_up.bias", "mlp.dense_h_to_4h.bias", Plain),
    req("ffn_down.weight", "mlp.dense_4h_to_h.weight", Plain),
    opt("ffn_down.bias", "mlp.dense_4h_to_h.bias", Plain),
];

/// The HF prefix of layer tensors and the table of a layer's tensors.
fn layer_table(f: Family) -> (&'static str, &'static [Entry]) {
    match f {
        Family::Llama { .. } => ("model.layers.", LLAMA_LAYER),
        Family::Phi3 => ("model.layers.", PHI3_LAYER),
        Family::Gemma { .. } => ("model.layers.", GEMMA_LAYER),
        Family::Gpt2 => ("transformer.h.", GPT2_LAYER),
        Family::GptNeox => ("gpt_neox.layers.", NEOX_LAYER),
    }
}

const LLAMA_GLOBAL: &[Entry] = &[
    req("token_embd.weight", "model.embed_tokens.weight", Plain),
    req("output_norm.weight", "model.norm.weight", Plain),
    opt("rope_freqs.weight", "", Skip),
];

const PHI3_GLOBAL: &[Entry] = &[
    req("token_embd.weight", "model.embed_tokens.weight", Plain),
    req("output_norm.weight", "model.norm.weight", Plain),
    opt("rope_factors_long.weight", "", Skip),
    opt("rope_factors_short.weight", "", Skip),
];

const GEMMA_GLOBAL: &[Entry] = &[
    req("token_embd.weight", "model.embed_tokens.weight", Plain),
    req("output_norm.weight", "model.norm.weight", MinusOne),
];

const GPT2_GLOBAL: &[Entry] = &[
    req("token_embd.weight", "transformer.wte.weight", Plain),
    req("position_embd.weight", "transformer.wpe.weight", Plain),
    req("output_norm.weight", "transformer.ln_f.weight", Plain),
    req("output_norm.bias", "transformer.ln_f.bias", Plain),
];

const NEOX_GLOBAL: &[Entry] = &[
    req("token_embd.weight", "gpt_neox.embed_in.weight", Plain),
    req(
        "output_norm.weight",
        "gpt_neox.final_layer_norm.weight",
        Plain,
    ),
    req("output_norm.bias", "gpt_neox.final_layer_norm.bias", Plain),
];

/// Non-layer tensors. `output.weight` (the unembedding) is handled separately because of tying.
fn global_table(f: Family) -> &'static [Entry] {
    match f {
        Family::Llama { .. } => LLAMA_GLOBAL,
        Family::Phi3 => PHI3_GLOBAL,
        Family::Gemma { .. } => GEMMA_GLOBAL,
        Family::Gpt2 => GPT2_GLOBAL,
        Family::GptNeox => NEOX_GLOBAL,
    }
}

fn unembed_name(f: Family) -> &'static str {
    match f {
        Family::Llama { .. } | Family::Phi3 | Family::Gemma { .. } | Family::Gpt2 => {
            "lm_head.weight"
        }
        Family::GptNeox => "embed_out.weight",
    }
}

/// The HF name and kind of the GGUF tensor `name`; `None` when it is not an HF tensor (a
/// tied unembedding, a [`Kind::Skip`] tensor); an error when the family has no such tensor.
fn hf_key(
    arch: &str,
    fam: Family,
    n_layer: usize,
    tied: bool,
    name: &str,
) -> Result<Option<(String, Kind)>> {
    let unexpected = || GgufError::UnexpectedTensor {
        arch: arch.to_string(),
        tensor: name.to_string(),
    };
    let (hf_name, kind) = if let Some(rest) = name.strip_prefix("blk.") {
        let (prefix, layer) = layer_table(fam);
        let (l, e) = rest
            .split_once('.')
            .and_then(|(l, suffix)| {
                let l: usize = l.parse().ok()?;
                let e = layer.iter().find(|e| e.gguf == suffix)?;
                Some((l, e))
            })
            .filter(|&(l, _)| l < n_layer)
            .ok_or_else(unexpected)?;
        (format!("{prefix}{l}.{}", e.hf), e.kind)
    } else if name == "output.weight" {
        if tied {
            return Ok(None);
        }
        (unembed_name(fam).to_string(), Kind::Plain)
    } else {
        let e = global_table(fam)
            .iter()
            .find(|e| e.gguf == name)
            .ok_or_else(unexpected)?;
        (e.hf.to_string(), e.kind)
    };
    Ok((kind != Kind::Skip).then_some((hf_name, kind)))
}

/// What [`GgufFile::read_hf`] does to a tensor of `kind`.
fn transform_for(kind: Kind, fam: Family, hp: &Hparams) -> HfTransform {
    let permute = matches!(
        fam,
        Family::Llama {
            permute_qk: true,
            ..
        }
    );
    match kind {
        Kind::PermQ if permute => HfTransform::UnpermuteRope { n_head: hp.n_head },
        Kind::PermK if permute => HfTransform::UnpermuteRope {
            n_head: hp.n_head_kv,
        },
        Kind::NeoxQkv => HfTransform::NeoxQkv { n_head: hp.n_head },
        Kind::Transpose => HfTransform::Transpose,
        Kind::MinusOne => HfTransform::MinusOne,
        _ => HfTransform::None,
    }
}

impl GgufFile {
    /// The tensors of the HF checkpoint this file corresponds to, in file order.
    ///
    /// Every GGUF tensor must map to an HF tensor (or be one known not to, like
    /// `rope_freqs.weight`); an unknown tensor, a missing required one, or a tensor of a type
    /// that cannot be dequantised is an error here rather than later.
    pub fn hf_tensors(&self) -> Result<Vec<HfTensor>> {
        let arch = self.architecture()?;
        let fam = family(arch)?;
        let hp = self.hparams()?;
        let tied = self.tied_embeddings();
        let mut out = Vec::new();
        for (source, t) in self.tensors().iter().enumerate() {
            let Some((name, kind)) = hf_key(arch, fam, hp.n_layer, tied, &t.name)? else {
                continue;
            };
            if !t.ggml_type.is_supported() {
                return Err(GgufError::UnsupportedTensorType {
                    tensor: t.name.clone(),
                    ty: t.ggml_type.name().to_string(),
                });
            }
            let transform = transform_for(kind, fam, &hp);
            check_transform(t, transform)?;
            let shape = match transform {
                HfTransform::Transpose => t.dims.iter().map(|&d| d as usize).collect(),
                _ => t.shape(),
            };
            out.push(HfTensor {
                name,
                shape,
                source,
                transform,
            });
        }
        match self.first_missing_tensor(fam, hp.n_layer) {
            Some(first) => Err(GgufError::MissingTensor(first)),
            None => Ok(out),
        }
    }

    /// The first tensor an HF model of this family cannot do without that the file lacks:
    /// global tensors first, then layer by layer.
    fn first_missing_tensor(&self, fam: Family, n_layer: usize) -> Option<String> {
        let global = global_table(fam)
            .iter()
            .find(|e| e.required && self.tensor(e.gguf).is_none())
            .map(|e| e.gguf.to_string());
        if global.is_some() {
            return global;
        }
        let qk_norm = matches!(
            fam,
            Family::Llama { qk_norm: true, .. } | Family::Gemma { v3: true }
        );
        let (_, layer) = layer_table(fam);
        (0..n_layer).find_map(|l| {
            layer.iter().find_map(|e| {
                let required = e.required
                    || (qk_norm && e.gguf.starts_with("attn_") && e.gguf.contains("_norm.weight"));
                let name = format!("blk.{l}.{}", e.gguf);
                (required && self.tensor(&name).is_none()).then_some(name)
            })
        })
    }

    /// Rows `rows` of an HF matrix stored without a layout change (an embedding or an
    /// `lm_head`, `[V, d]`), dequantised and appended to `out`: a block of tokens without
    /// reading the rest. `None` when the tensor is stored with a layout change (its rows are
    /// not GGUF rows) or its rows are not whole quantisation blocks.
    pub fn read_hf_rows(
        &self,
        t: &HfTensor,
        rows: std::ops::Range<usize>,
        out: &mut Vec<f32>,
    ) -> Option<Result<()>> {
        let src = self.tensors().get(t.source)?;
        if t.transform != HfTransform::None || src.dims.len() != 2 {
            return None;
        }
        let (n_rows, row_len) = rows_cols(src);
        let (block_elems, block_bytes) = src.ggml_type.block_layout();
        if !src.ggml_type.is_supported() || row_len == 0 || row_len % block_elems != 0 {
            return None;
        }
        if rows.start > rows.end || rows.end > n_rows {
            return Some(Err(GgufError::BadDims {
                tensor: src.name.clone(),
                dims: src.dims.clone(),
                reason: format!("rows {rows:?} asked of {n_rows}"),
            }));
        }
        let row_bytes = row_len / block_elems * block_bytes;
        Some(self.tensor_bytes(src).and_then(|bytes| {
            let slice = bytes
                .get(rows.start * row_bytes..rows.end * row_bytes)
                .ok_or_else(|| GgufError::BadDims {
                    tensor: src.name.clone(),
                    dims: src.dims.clone(),
                    reason: format!("{} bytes of data are too few", bytes.len()),
                })?;
            crate::dequant::dequantize_into(src.ggml_type, slice, out);
            Ok(())
        }))
    }

    /// Whether [`GgufFile::read_hf_rows`] can read `t` a block of rows at a time.
    pub fn has_hf_rows(&self, t: &HfTensor) -> bool {
        let mut probe = Vec::new();
        matches!(self.read_hf_rows(t, 0..0, &mut probe), Some(Ok(())))
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
                // GGUF row 2i + j of a head is HF row j·half + i.
                let head_dim = rows / n_head;
                let half = head_dim / 2;
                move_rows(&data, cols, |row| {
                    let (h, r) = (row / head_dim, row % head_dim);
                    h * head_dim + (r % 2) * half + r / 2
                })
            }
            HfTransform::NeoxQkv { n_head } => {
                // GGUF row j·n_embd + h·head_dim + d (j: Q, K or V) is HF row
                // h·3·head_dim + j·head_dim + d.
                let n_embd = rows / 3;
                let head_dim = n_embd / n_head;
                move_rows(&data, cols, |row| {
                    let (j, r) = (row / n_embd, row % n_embd);
                    let (h, d) = (r / head_dim, r % head_dim);
                    h * 3 * head_dim + j * head_dim + d
                })
            }
            HfTransform::MinusOne => data.into_iter().map(|x| x - 1.0).collect(),
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
}

/// `data`, rows of `cols` values, with each row `r` moved to row `dest(r)` (a permutation).
fn move_rows(data: &[f32], cols: usize, dest: impl Fn(usize) -> usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    if cols == 0 {
        return out;
    }
    for (row, values) in data.chunks_exact(cols).enumerate() {
        let to = dest(row);
        out[to * cols..(to + 1) * cols].copy_from_slice(values);
    }
    out
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
        HfTransform::None | HfTransform::MinusOne => Ok(()),
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

//! Writing a standard Hugging Face GPT-2 checkpoint folder.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;
use tokenizers::Tokenizer;

use crate::error::{Result, TrainError, io_err};
use crate::model::GptConfig;
use crate::tokenizer::{self, BOS, BOS_ID};

/// `config.json` of a tied-embedding `GPT2LMHeadModel`.
pub fn config_json(cfg: &GptConfig) -> serde_json::Value {
    json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_ctx,
        "n_ctx": cfg.n_ctx,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "bos_token_id": BOS_ID,
        "eos_token_id": BOS_ID,
        "tie_word_embeddings": true,
        "use_cache": true,
        "torch_dtype": "float32",
    })
}

/// `tokenizer_config.json`, so `AutoTokenizer.from_pretrained` works too.
pub fn tokenizer_config_json(cfg: &GptConfig) -> serde_json::Value {
    json!({
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": BOS,
        "eos_token": BOS,
        "unk_token": BOS,
        "add_prefix_space": false,
        "model_max_length": cfg.n_ctx,
        "clean_up_tokenization_spaces": false,
    })
}

/// `model.safetensors` bytes (f32, little-endian, `{"format": "pt"}` metadata).
pub fn safetensors_bytes(cfg: &GptConfig, params: &[Vec<f32>]) -> Result<Vec<u8>> {
    let specs = cfg.specs();
    if specs.len() != params.len() {
        return Err(TrainError::Config(format!(
            "{} parameters for {} specs",
            params.len(),
            specs.len()
        )));
    }
    let bytes: Vec<Vec<u8>> = params
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = specs
        .iter()
        .zip(&bytes)
        .map(|(s, b)| {
            Ok((
                s.name.clone(),
                TensorView::new(Dtype::F32, s.hf_shape(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(meta))?)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io_err(path))
}

/// Write `config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json`.
pub fn save(dir: &Path, cfg: &GptConfig, params: &[Vec<f32>], tok: &Tokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let pretty = |v: &serde_json::Value| -> Result<Vec<u8>> {
        let mut s = serde_json::to_string_pretty(v)?;
        s.push('\n');
        Ok(s.into_bytes())
    };
    write(&dir.join("config.json"), &pretty(&config_json(cfg))?)?;
    write(
        &dir.join("tokenizer_config.json"),
        &pretty(&tokenizer_config_json(cfg))?,
    )?;
    write(
        &dir.join("tokenizer.json"),
        tokenizer::to_json(tok)?.as_bytes(),
    )?;
    write(
        &dir.join("model.safetensors"),
        &safetensors_bytes(cfg, params)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_params;
    use safetensors::SafeTensors;

    #[test]
    fn safetensors_round_trip_with_hf_names_and_shapes() {
        let cfg = GptConfig {
            n_layer: 2,
            n_head: 2,
            d_model: 8,
            n_ctx: 6,
            vocab_size: 11,
        };
        let params = init_params(&cfg, 3);
        let bytes = safetensors_bytes(&cfg, &params).expect("serialize");
        let st = SafeTensors::deserialize(&bytes).expect("deserialize");
        let wte = st.tensor("transformer.wte.weight").expect("wte");
        assert_eq!(wte.shape(), &[11, 8]);
        assert_eq!(wte.dtype(), Dtype::F32);
        let first = f32::from_le_bytes(wte.data()[..4].try_into().expect("4 bytes"));
        assert_eq!(first, params[0][0]);
        assert_eq!(
            st.tensor("transformer.h.1.attn.c_attn.weight")
                .expect("c_attn")
                .shape(),
            &[8, 24]
        );
        assert_eq!(
            st.tensor("transformer.h.0.mlp.c_proj.weight")
                .expect("c_proj")
                .shape(),
            &[32, 8]
        );
        assert_eq!(
            st.tensor("transformer.ln_f.bias").expect("ln_f").shape(),
            &[8]
        );
        assert!(st.tensor("lm_head.weight").is_err());
        assert_eq!(st.len(), 2 + 12 * 2 + 2);
        let cfg_json = config_json(&cfg);
        assert_eq!(cfg_json["n_embd"], 8);
        assert_eq!(cfg_json["tie_word_embeddings"], true);
    }
}

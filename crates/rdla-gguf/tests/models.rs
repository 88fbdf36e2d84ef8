//! Small random HF checkpoints converted to GGUF as llama.cpp does: the HF view of each
//! (`hf_tensors` / `read_hf`, `hf_config`, `tokenizer_json`) reproduces the checkpoint.
#![allow(clippy::unwrap_used)]

mod common;

use rdla_gguf::{GgufFile, HfTransform};
use serde_json::Value;

const MODELS: [&str; 8] = [
    "llama_gqa",
    "qwen2",
    "gpt2_tied",
    "neox_parallel",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3",
];

fn open(name: &str) -> GgufFile {
    GgufFile::open(&common::fixture(&format!("{name}.gguf"))).unwrap()
}

fn config(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(common::fixture(&format!("{name}.config.json"))).unwrap(),
    )
    .unwrap()
}

#[test]
fn hf_tensors_reproduce_the_checkpoints() {
    for name in MODELS {
        let f = open(name);
        let expected = common::load_safetensors(&format!("{name}.expected.safetensors"));
        let hf = f.hf_tensors().unwrap();
        let names: std::collections::BTreeSet<_> = hf.iter().map(|t| t.name.clone()).collect();
        let want: std::collections::BTreeSet<_> = expected.keys().cloned().collect();
        assert_eq!(names, want, "{name}: HF key set");
        for t in &hf {
            let (shape, data) = &expected[&t.name];
            assert_eq!(&t.shape, shape, "{name}: {}", t.name);
            let got = f.read_hf(t).unwrap();
            assert_eq!(got.len(), data.len());
            let same = got
                .iter()
                .zip(data)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            let src = &f.tensors()[t.source];
            assert!(
                same,
                "{name}: {} (from {} as {}) differs",
                t.name, src.name, src.ggml_type
            );
        }
    }
}

#[test]
fn llama_rope_permutation_is_undone() {
    let f = open("llama_gqa");
    let hf = f.hf_tensors().unwrap();
    let q = hf
        .iter()
        .find(|t| t.name == "model.layers.1.self_attn.q_proj.weight")
        .unwrap();
    let k = hf
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(q.transform, HfTransform::UnpermuteRope { n_head: 4 });
    assert_eq!(k.transform, HfTransform::UnpermuteRope { n_head: 2 });
    assert_eq!(k.shape, vec![16, 32]);
    // The F32 layers are bit-identical to the original checkpoint, not only to gguf-py.
    let orig = std::fs::read(common::fixture("../llama_gqa/model.safetensors"));
    if let Ok(bytes) = orig {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for t in [q, k] {
            let view = st.tensor(&t.name).unwrap();
            let want: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(f.read_hf(t).unwrap(), want, "{}", t.name);
        }
    }
    // qwen2 is not permuted.
    let q2 = open("qwen2");
    assert!(
        q2.hf_tensors()
            .unwrap()
            .iter()
            .all(|t| t.transform == HfTransform::None)
    );
}

#[test]
fn tied_and_untied_unembeddings() {
    for (name, tied, unembed) in [
        ("llama_gqa", true, "lm_head.weight"),
        ("qwen2", false, "lm_head.weight"),
        ("gpt2_tied", true, "lm_head.weight"),
        ("neox_parallel", false, "embed_out.weight"),
        ("qwen3", false, "lm_head.weight"),
        ("phi3", false, "lm_head.weight"),
        ("gemma2", true, "lm_head.weight"),
        ("gemma3", true, "lm_head.weight"),
    ] {
        let f = open(name);
        assert_eq!(f.tied_embeddings(), tied, "{name}");
        let cfg = f.hf_config().unwrap();
        assert_eq!(cfg["tie_word_embeddings"], Value::Bool(tied), "{name}");
        let has = f.hf_tensors().unwrap().iter().any(|t| t.name == unembed);
        assert_eq!(has, !tied, "{name}: {unembed}");
    }
}

/// The fields of the HF config that describe the model, compared with what `hf_config` says.
#[test]
fn hf_config_matches_the_checkpoint_config() {
    let common_keys = [
        "model_type",
        "architectures",
        "vocab_size",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
    ];
    let llama_keys = [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "hidden_act",
    ];
    let gemma_keys: &[&str] = &[
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "hidden_activation",
        "query_pre_attn_scalar",
        "sliding_window",
        "attn_logit_softcapping",
        "final_logit_softcapping",
    ];
    let per_model: [(&str, &[&str]); 8] = [
        (
            "llama_gqa",
            &[
                "head_dim",
                "rope_theta",
                "rope_scaling",
                "attention_bias",
                "mlp_bias",
            ],
        ),
        ("qwen2", &["use_sliding_window"]),
        (
            "gpt2_tied",
            &[
                "n_embd",
                "n_layer",
                "n_head",
                "n_positions",
                "n_ctx",
                "n_inner",
                "layer_norm_epsilon",
                "activation_function",
            ],
        ),
        (
            "neox_parallel",
            &[
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "max_position_embeddings",
                "rotary_pct",
                "rotary_emb_base",
                "rope_theta",
                "layer_norm_eps",
                "use_parallel_residual",
                "hidden_act",
                "partial_rotary_factor",
                "rope_scaling",
                "attention_bias",
            ],
        ),
        ("qwen3", &["head_dim", "rope_theta", "attention_bias"]),
        (
            "phi3",
            &[
                "partial_rotary_factor",
                "rope_theta",
                "original_max_position_embeddings",
            ],
        ),
        ("gemma2", gemma_keys),
        ("gemma3", gemma_keys),
    ];
    for (name, keys) in per_model {
        let got = open(name).hf_config().unwrap();
        let want = config(name);
        let mut all: Vec<&str> = common_keys.to_vec();
        all.extend_from_slice(keys);
        if matches!(name, "llama_gqa" | "qwen2" | "qwen3" | "phi3") {
            all.extend_from_slice(&llama_keys);
        }
        for key in all {
            let (g, mut w) = (&got[key], &want[key]);
            // HF's default when config.json leaves it out.
            if key == "tie_word_embeddings" && w.is_null() {
                w = &Value::Bool(true);
            }
            let equal = match (g.as_f64(), w.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => g == w,
            };
            assert!(equal, "{name}: `{key}`: hf_config {g} vs config.json {w}");
        }
    }
    // qwen2's config.json (transformers 4.57) spells rope_theta inside rope_parameters.
    let q = open("qwen2").hf_config().unwrap();
    assert_eq!(
        q["rope_theta"].as_f64(),
        config("qwen2")["rope_parameters"]["rope_theta"].as_f64()
    );
    assert_eq!(q["head_dim"], 8);
    // Gemma 3: the global layers' linear rope scaling, the local base, the window pattern
    let g3 = open("gemma3").hf_config().unwrap();
    let want = config("gemma3");
    for key in [
        "rope_theta",
        "rope_scaling",
        "rope_local_base_freq",
        "sliding_window_pattern",
    ] {
        assert_eq!(g3[key], want[key], "gemma3: `{key}`");
    }
    // Gemma norms are stored as 1 + w and come back as w
    let g2 = open("gemma2");
    let norm = g2
        .hf_tensors()
        .unwrap()
        .into_iter()
        .find(|t| t.name == "model.layers.0.post_attention_layernorm.weight")
        .unwrap();
    assert_eq!(norm.transform, HfTransform::MinusOne);
}

#[test]
fn llama3_rope_scaling_and_exact_factors() {
    let f = open("llama_gqa");
    let factors = f.rope_freq_factors().unwrap().unwrap();
    assert_eq!(factors.len(), 4);
    let cfg = f.hf_config().unwrap();
    let rs = &config("llama_gqa")["rope_scaling"];
    assert_eq!(cfg["rope_scaling"], *rs);
    assert!(open("qwen2").rope_freq_factors().unwrap().is_none());
}

#[test]
fn quantization_summaries() {
    assert_eq!(
        open("llama_gqa").quantization_summary(),
        "Q8_0 (F32 ×24, F16 ×1, Q4_0 ×1, Q4_1 ×1, Q5_1 ×1, Q8_0 ×1, BF16 ×1)"
    );
    assert_eq!(
        open("qwen2").quantization_summary(),
        "mostly F32 (F32 ×35, F16 ×1, Q4_0 ×1, Q5_0 ×1, Q8_0 ×1)"
    );
    assert_eq!(
        open("neox_parallel").quantization_summary(),
        "F32 (F32 ×38, Q4_1 ×1, Q8_0 ×1)"
    );
}

#[test]
fn tokenizer_json_gives_the_same_ids() {
    let reference = tokenizers::Tokenizer::from_file(common::fixture("tokenizer.json")).unwrap();
    let prompts = [
        "The quick brown fox jumps over the lazy dog.",
        "When Mary and John went to the store, John gave a drink to",
        "  leading spaces, trailing spaces   ",
        "numbers 1234567 and symbols #$%&*! 'quotes' it's we'll",
        "unicode: café naïve 日本語 🦀\nnew line\ttab",
        "<|endoftext|>special in the middle<|endoftext|>",
        "",
    ];
    for name in MODELS {
        let json = open(name).tokenizer_json().unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        assert_eq!(
            tok.get_vocab_size(true),
            reference.get_vocab_size(true),
            "{name}"
        );
        for p in prompts {
            common::assert_same_ids(&tok, &reference, p, &format!("{name}: "));
            let ids = reference.encode(p, false).unwrap().get_ids().to_vec();
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                reference.decode(&ids, false).unwrap(),
                "{name}: decode {p:?}"
            );
        }
    }
}

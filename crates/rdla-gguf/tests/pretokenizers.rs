//! Every `tokenizer.ggml.pre` family rdla maps gives a tokenizer.json the `tokenizers` crate
//! loads (its split regex compiles), with BOS handling as llama.cpp does it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Gguf, kv_bool, kv_i32_array, kv_str, kv_str_array, kv_u32};
use rdla_gguf::{GgufError, GgufFile};

fn bpe_file(pre: Option<&str>, add_bos: Option<bool>) -> GgufFile {
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    let mut types = vec![1i32; tokens.len()];
    types[0] = 3;
    let mut g = Gguf {
        kvs: vec![
            kv_str("general.architecture", "llama"),
            kv_str("tokenizer.ggml.model", "gpt2"),
        ],
        ..Gguf::default()
    };
    if let Some(p) = pre {
        g.kvs.push(kv_str("tokenizer.ggml.pre", p));
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
    g.kvs
        .push(kv_str_array("tokenizer.ggml.tokens", &token_refs));
    g.kvs
        .push(kv_i32_array("tokenizer.ggml.token_type", &types));
    g.kvs
        .push(kv_str_array("tokenizer.ggml.merges", &merge_refs));
    g.kvs.push(kv_u32("tokenizer.ggml.bos_token_id", 0));
    g.kvs.push(kv_u32("tokenizer.ggml.eos_token_id", 0));
    if let Some(b) = add_bos {
        g.kvs.push(kv_bool("tokenizer.ggml.add_bos_token", b));
    }
    GgufFile::from_bytes(g.build()).unwrap()
}

fn load(f: &GgufFile) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_bytes(f.tokenizer_json().unwrap().as_bytes()).unwrap()
}

#[test]
fn every_supported_family_loads_and_tokenizes() {
    let text = "Hello 12345 world, it's   spaced\nout: café 日本!";
    for pre in [
        "gpt-2",
        "mpt",
        "olmo",
        "smollm",
        "starcoder",
        "refact",
        "llama-bpe",
        "llama3",
        "dbrx",
        "smaug-bpe",
        "qwen2",
        "deepseek-r1-qwen",
        "gpt-4o",
        "llama4",
    ] {
        let tok = load(&bpe_file(Some(pre), Some(false)));
        let enc = tok.encode(text, true).unwrap();
        assert!(!enc.get_ids().is_empty(), "{pre}");
        assert_eq!(
            tok.decode(enc.get_ids(), false).unwrap(),
            text,
            "{pre}: byte-level round trip"
        );
    }
}

#[test]
fn digits_are_split_as_the_family_says() {
    let digits = |pre: &str| {
        let tok = load(&bpe_file(Some(pre), Some(false)));
        let enc = tok.encode("x 12345", false).unwrap();
        enc.get_tokens()
            .iter()
            .filter(|t| t.chars().any(|c| c.is_ascii_digit()))
            .cloned()
            .collect::<Vec<_>>()
    };
    // smollm: one digit per pre-token; llama3: groups of up to three; qwen2: single digits.
    assert!(
        digits("smollm")
            .iter()
            .all(|t| t.trim_start_matches('Ġ').len() == 1)
    );
    assert!(digits("qwen2").iter().all(|t| t.len() == 1));
    assert_eq!(digits("llama-bpe").concat(), "12345");
}

#[test]
fn bos_follows_add_bos_token_and_llama_cpp_defaults() {
    let first = |f: GgufFile| load(&f).encode("hi", true).unwrap().get_ids().to_vec();
    assert_eq!(first(bpe_file(Some("gpt-2"), Some(true)))[0], 0);
    assert_ne!(
        first(bpe_file(Some("gpt-2"), None))[0],
        0,
        "gpt-2: no BOS by default"
    );
    assert_eq!(
        first(bpe_file(Some("llama-bpe"), None))[0],
        0,
        "llama3: BOS by default"
    );
    assert_ne!(first(bpe_file(Some("llama-bpe"), Some(false)))[0], 0);
}

#[test]
fn unknown_pre_tokenizers_and_models_are_errors() {
    for pre in [Some("default"), Some("chameleon"), None] {
        let e = bpe_file(pre, None).tokenizer_json().unwrap_err();
        assert!(
            matches!(&e, GgufError::Tokenizer(m) if m.contains("pre-tokenizer")),
            "{e}"
        );
    }
    let mut g = Gguf::default();
    g.kvs.push(kv_str("tokenizer.ggml.model", "t5"));
    g.kvs.push(kv_str_array("tokenizer.ggml.tokens", &["a"]));
    let e = GgufFile::from_bytes(g.build())
        .unwrap()
        .tokenizer_json()
        .unwrap_err();
    assert!(e.to_string().contains("`t5`"), "{e}");
}

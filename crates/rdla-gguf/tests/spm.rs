//! A SentencePiece (`tokenizer.ggml.model = "llama"`) vocabulary gives the same ids as
//! transformers' conversion of the same SentencePiece model.
#![allow(clippy::unwrap_used)]

mod common;

use rdla_gguf::GgufFile;

#[test]
fn sentencepiece_tokenizer_matches_transformers() {
    let f = GgufFile::open(&common::fixture("spm.gguf")).unwrap();
    assert!(f.tensors().is_empty());
    let ours = tokenizers::Tokenizer::from_bytes(f.tokenizer_json().unwrap().as_bytes()).unwrap();
    let reference =
        tokenizers::Tokenizer::from_file(common::fixture("spm.tokenizer.json")).unwrap();
    assert_eq!(ours.get_vocab_size(true), reference.get_vocab_size(true));
    let prompts = [
        "Hello world, café 2024!",
        "When Mary and John went to the store, John gave a drink to",
        "  two leading spaces and  double  spaces ",
        "déjà vu über straße 日本語 東京 — unseen: ŋ 🦀 Ω",
        "digits 3.14159 and 1234567890",
        "[USR] said hello[USR]world",
        "<s>markers</s> inside text",
        "new\nlines\tand tabs",
        "",
    ];
    for p in prompts {
        common::assert_same_ids(&ours, &reference, p, "");
        let ids = reference.encode(p, true).unwrap().get_ids().to_vec();
        for skip in [true, false] {
            assert_eq!(
                ours.decode(&ids, skip).unwrap(),
                reference.decode(&ids, skip).unwrap(),
                "decode {p:?}"
            );
        }
    }
    // BOS is added (tokenizer.ggml.add_bos_token), EOS is not.
    let ids = ours.encode("x", true).unwrap().get_ids().to_vec();
    assert_eq!(ids.first(), Some(&1));
    assert_ne!(ids.last(), Some(&2));
}

//! Every weight format and both tokenizer formats load to identical tensors / ids.
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use common::fixture;
use rdla_model::arch::{Canonical, load_canonical};
use rdla_model::model::read_config;
use rdla_model::{Device, Model, Processing, Tokenizer, WeightStore};

fn canonical(name: &str) -> Canonical {
    let dir = fixture(name);
    let cfg = read_config(&dir).unwrap();
    let store = WeightStore::open_dir(&dir).unwrap();
    load_canonical(&cfg, &store, &mut |_| true).unwrap()
}

#[test]
fn safetensors_sharded_and_pytorch_bin_are_identical() {
    let base = canonical("gpt2_tied");
    let sharded_store = WeightStore::open_dir(&fixture("gpt2_tied_sharded")).unwrap();
    assert!(
        sharded_store.paths.len() >= 2,
        "fixture should have several shards"
    );
    assert_eq!(
        canonical("gpt2_tied_sharded"),
        base,
        "sharded safetensors differ"
    );
    assert_eq!(
        canonical("gpt2_tied_bin"),
        base,
        "pytorch_model.bin differs"
    );
}

fn assert_rounded_equal(name: &str, round: fn(f32) -> f32) {
    let f32_store = WeightStore::open_dir(&fixture("gpt2_tied")).unwrap();
    let half_store = WeightStore::open_dir(&fixture(name)).unwrap();
    let mut n = 0;
    for key in f32_store.keys() {
        let a = f32_store.read_f32(key).unwrap();
        let b = half_store.read_f32(key).unwrap();
        assert_eq!(a.shape, b.shape, "{name}: {key}");
        for (x, y) in a.data.iter().zip(&b.data) {
            assert_eq!(round(*x), *y, "{name}: {key}");
        }
        n += 1;
    }
    assert!(n > 10);
    // and the half-precision checkpoint loads and runs as a model
    let model = Model::load(
        &fixture(name),
        &Device::flex(),
        Processing::default(),
        &mut |_| true,
    )
    .unwrap();
    let ids = model
        .tokenizer
        .encode_prompt("Get some apples.", true)
        .unwrap();
    let cache = model.run(&ids).unwrap();
    let logits = rdla_model::to_vec(cache.last_logits).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn f16_checkpoint_converts_to_f32() {
    assert_rounded_equal("gpt2_tied_f16", |x| half::f16::from_f32(x).to_f32());
}

#[test]
fn bf16_checkpoint_converts_to_f32() {
    assert_rounded_equal("gpt2_tied_bf16", |x| half::bf16::from_f32(x).to_f32());
}

#[test]
fn tokenizer_json_and_vocab_merges_agree() {
    let full = Tokenizer::from_dir(&fixture("gptneo_local"), None).unwrap();
    assert_eq!(full.source, "tokenizer.json");
    // a folder with only vocab.json + merges.txt
    let tmp = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixture("gptneo_local").join(f), tmp.path().join(f)).unwrap();
    }
    let bpe = Tokenizer::from_dir(tmp.path(), None).unwrap();
    assert_eq!(bpe.source, "vocab.json + merges.txt");
    assert_eq!(full.bos_id, bpe.bos_id);
    for text in [
        "1. Get some apples.\n2. Get some oranges.\n",
        "The quick brown fox jumps over the lazy dog",
        "  spaces  and\ttabs, unicode é ü 漢字 and <|endoftext|> too",
        "3",
        " the",
    ] {
        assert_eq!(
            full.encode(text).unwrap(),
            bpe.encode(text).unwrap(),
            "{text:?}"
        );
    }
    for id in 0..50 {
        assert_eq!(full.token_str(id), bpe.token_str(id));
    }
}

#[test]
fn progress_reaches_the_total_and_can_cancel() {
    let mut seen = Vec::new();
    Model::load(
        &fixture("gpt2_tied"),
        &Device::flex(),
        Processing::default(),
        &mut |p| {
            seen.push(p);
            true
        },
    )
    .unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(last.bytes_total > 100_000);
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));

    let mut calls = 0;
    let err = Model::load(
        &fixture("gpt2_tied"),
        &Device::flex(),
        Processing::default(),
        &mut |_| {
            calls += 1;
            calls < 3
        },
    )
    .unwrap_err();
    assert!(matches!(err, rdla_model::ModelError::Cancelled), "{err}");
}

#[test]
fn a_file_inside_the_folder_opens_the_folder() {
    for f in ["config.json", "model.safetensors"] {
        let m = Model::load(
            &fixture("gpt2_tied").join(f),
            &Device::flex(),
            Processing::default(),
            &mut |_| true,
        )
        .unwrap();
        assert_eq!(m.name, "gpt2_tied");
    }
}

/// A Llama-family checkpoint stored in bf16 (the usual dtype of these families) computes in
/// f32 on exactly the values of the f32 fixture (every value is bf16-representable).
#[test]
fn bf16_llama_checkpoint_equals_the_f32_one() {
    assert_eq!(canonical("llama_gqa_bf16"), canonical("llama_gqa"));
    let cfg = read_config(&fixture("llama_gqa_bf16")).unwrap();
    assert_eq!(cfg.dtype, "bfloat16");
}

/// Both `config.json` spellings: classic top-level `rope_theta` / `rope_scaling`
/// (llama_gqa) and transformers ≥ 5 `rope_parameters` + `dtype` (qwen2).
#[test]
fn both_config_spellings_give_the_rotary_parameters() {
    let llama = read_config(&fixture("llama_gqa")).unwrap();
    let r = llama.rotary().unwrap();
    assert_eq!(r.describe, "theta 500000, llama3 ×8");
    // transformers' _compute_llama3_parameters on these settings (reference.json records it)
    let want = [
        0.576_056_36,
        0.004_700_753_8,
        1.767_766_8e-4,
        6.647_869_7e-6,
    ];
    for (got, want) in r.inv_freq.iter().zip(want) {
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    }
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("qwen2").join("config.json")).unwrap(),
    )
    .unwrap();
    assert!(raw.get("rope_theta").is_none() && raw.get("rope_parameters").is_some());
    let qwen = read_config(&fixture("qwen2")).unwrap();
    assert_eq!(qwen.rotary().unwrap().describe, "theta 1000000");
    assert_eq!((qwen.n_heads, qwen.n_kv_heads), (4, 2));
    let neox = read_config(&fixture("neox_parallel")).unwrap();
    assert_eq!(neox.rotary().unwrap().dim, neox.d_head / 2);
    assert!(neox.parallel_residual && !neox.has_pos());
}

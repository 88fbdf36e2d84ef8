//! Quality of the committed default model (`assets/default-model`), run through rdla's own
//! loader and forward pass (`rdla_model`), not by retraining.

use std::path::PathBuf;

use rdla_model::{Device, Model, Processing, to_vec};
use rdla_train::data::{HELD_OUT_ITEMS, held_out_prompts};
use rdla_train::{HELD_OUT_COUNT, HELD_OUT_SEED};

fn model_dir() -> PathBuf {
    PathBuf::from(
        // at run time: a test binary built in another checkout sharing the target directory
        // (CI's clone) must read this checkout's files
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../assets/default-model")
}

fn load() -> Model {
    Model::load(
        &model_dir(),
        &Device::flex(),
        Processing::default(),
        &mut |_| true,
    )
    .expect("assets/default-model loads")
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn next_token_probs(model: &Model, text: &str) -> Vec<f32> {
    let ids = model.tokenizer.encode_prompt(text, true).expect("encode");
    let cache = model.run(&ids).expect("forward");
    softmax(&to_vec(cache.last_logits).expect("logits"))
}

#[test]
fn checkpoint_is_small_and_gpt2_shaped() {
    let dir = model_dir();
    let total: u64 = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).expect("file exists").len())
        .sum();
    assert!(total <= 4 * 1024 * 1024, "{total} bytes");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).expect("config.json"),
    )
    .expect("json");
    assert_eq!(cfg["model_type"], "gpt2");
    assert_eq!(cfg["activation_function"], "gelu_new");
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["bos_token_id"], 0);
    let model = load();
    assert_eq!(model.tokenizer.bos_id, Some(0));
    assert_eq!(model.config.n_ctx, 128);
}

#[test]
fn example_prompt_predicts_three() {
    let model = load();
    let probs = next_token_probs(&model, "1. Get some apples.\n2. Get some oranges.\n");
    let three = model
        .tokenizer
        .single_token("3")
        .expect("\"3\" is one token") as usize;
    assert!(probs[three] >= 0.5, "P(\"3\") = {}", probs[three]);
}

#[test]
fn held_out_lists_continue_with_the_next_number() {
    let model = load();
    let prompts = held_out_prompts(HELD_OUT_SEED, HELD_OUT_COUNT);
    assert_eq!(prompts.len(), 200);
    let mut hits = 0;
    let mut misses = Vec::new();
    for p in &prompts {
        assert!(HELD_OUT_ITEMS.iter().any(|i| p.text.contains(i)));
        let answer = model.tokenizer.single_token(&p.answer).expect("one token") as usize;
        let probs = next_token_probs(&model, &p.text);
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("non-empty vocab");
        if best == answer {
            hits += 1;
        } else if misses.len() < 5 {
            misses.push(format!(
                "{:?}: predicted {:?} (p {:.2}), answer p {:.2}",
                p.text,
                model.tokenizer.token_str(best as u32),
                probs[best],
                probs[answer]
            ));
        }
    }
    let acc = f64::from(hits) / prompts.len() as f64;
    assert!(acc >= 0.95, "top-1 {acc:.3}; e.g. {misses:#?}");
}

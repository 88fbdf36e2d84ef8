//! Trains rdla's offline default model: a small GPT-2 (learned positions, `gelu_new`,
//! LayerNorm with biases, tied embeddings) on synthetic numbered lists and repeated phrases,
//! with Burn autodiff on the CPU backend, reproducible from a seed, and saves it as a standard
//! Hugging Face checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`).
//!
//! See `docs/TRAINING.md` for the command, timings and results.

pub mod data;
pub mod error;
pub mod export;
pub mod model;
pub mod plot;
pub mod rng;
pub mod tokenizer;
pub mod train;

pub use error::{Result, TrainError};
pub use model::GptConfig;
pub use train::{Eval, TrainConfig, Trained, evaluate, train};

/// Seed of the held-out evaluation prompts (the quality test uses the same prompts).
pub const HELD_OUT_SEED: u64 = 2024;
/// Number of held-out evaluation prompts.
pub const HELD_OUT_COUNT: usize = 200;

//! Typed errors for loading and running a model.

use std::path::PathBuf;

/// Everything that can go wrong while opening a model directory or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot ablate: {0}")]
    BadAblation(String),
    /// Prompts that cannot share one forward pass ([`crate::Model::run_batch`]).
    #[error("cannot run these prompts in one forward pass: {0}")]
    BadBatch(String),
    /// The message includes the I/O error's text, which is therefore not also the source:
    /// a chain printed in full says it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The prompt's cache could not be put in a temporary file (`RDLA_SPILL_DIR`).
    #[error(
        "spilling the prompt's cache to a temporary file in {dir} (set RDLA_SPILL_DIR to choose another place): {what}"
    )]
    Spill { dir: PathBuf, what: String },
    #[error("{0} is not a model directory (or a file inside one): it does not exist")]
    NotFound(PathBuf),
    #[error("{dir}: no config.json found")]
    NoConfig { dir: PathBuf },
    /// A file that is not a model, saying what it is instead ("x.gguf is empty", "… starts
    /// with zeros (an interrupted download?)", "… is a PNG image, not a model").
    #[error("{path} {kind}")]
    NotAModel {
        path: PathBuf,
        kind: rdla_gguf::FileKind,
    },
    #[error(
        "{dir} has no config.json but {} GGUF files ({}); open one of them",
        .files.len(),
        .files.iter().map(|name| rdla_gguf::quote(name).to_string()).collect::<Vec<_>>().join(", ")
    )]
    SeveralGguf { dir: PathBuf, files: Vec<String> },
    #[error("{path}: invalid config.json: {source}")]
    ConfigJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config.json: missing required field `{field}` for model_type `{model_type}`")]
    MissingConfigField {
        field: &'static str,
        model_type: String,
    },
    #[error("config.json: invalid value for `{field}`: {reason}")]
    InvalidConfigField { field: &'static str, reason: String },
    #[error(
        "unsupported architecture: model_type `{model_type}` (architectures {architectures:?}); \
         rdla supports {supported}"
    )]
    UnknownArchitecture {
        model_type: String,
        architectures: Vec<String>,
        supported: String,
    },
    #[error(
        "{dir}: no weights found (expected model.safetensors, sharded model-*.safetensors with model.safetensors.index.json, or pytorch_model.bin)"
    )]
    NoWeights { dir: PathBuf },
    #[error("{path}: corrupt or truncated safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// The message includes the GGUF error's text, which is therefore not also the source.
    #[error("GGUF file: {0}")]
    Gguf(rdla_gguf::GgufError),
    #[error("{path}: cannot read PyTorch checkpoint: {reason}")]
    Pytorch { path: PathBuf, reason: String },
    #[error("{path}: invalid shard index: {reason}")]
    ShardIndex { path: PathBuf, reason: String },
    #[error("weights: missing tensor `{key}` (looked for {tried:?})")]
    MissingTensor { key: String, tried: Vec<String> },
    #[error("weights: tensor `{key}` has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("weights: tensor `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype { key: String, dtype: String },
    #[error("weights: tensor `{key}` contains non-finite values")]
    NonFinite { key: String },
    #[error("{dir}: no tokenizer found (expected tokenizer.json, or vocab.json + merges.txt)")]
    NoTokenizer { dir: PathBuf },
    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizer error: {0}")]
    Encode(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt is {len} tokens long (BOS included) but the model's context is {n_ctx} tokens"
    )]
    PromptTooLong { len: usize, n_ctx: usize },
    #[error(
        "the prompt ({bytes} bytes) is far longer than the model's context of {n_ctx} tokens: its first {prefix} bytes alone are {tokens} tokens"
    )]
    PromptFarTooLong {
        bytes: usize,
        prefix: usize,
        tokens: usize,
        n_ctx: usize,
    },
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "no BOS token: config.json has no bos_token_id and the tokenizer has no <|endoftext|>; use --no-bos"
    )]
    NoBos,
    #[error("`{text}` is not a single token: it tokenizes as {pieces}")]
    NotOneToken { text: String, pieces: String },
    #[error("device error: {0}")]
    Device(String),
    #[error("loading was cancelled")]
    Cancelled,
    #[error("the computation was cancelled")]
    ComputeCancelled,
    #[error(
        "{what} is not a finite number: the forward pass leaves f32's range on this input (the weights are finite, but too large for it)"
    )]
    NonFiniteActivation { what: String },
    #[error(
        "weights: tensor `{key}` belongs to layer {layer}, but config.json declares {n_layers} layers"
    )]
    UnexpectedLayer {
        key: String,
        layer: usize,
        n_layers: usize,
    },
    #[error(
        "{what} needs about {needed_gib:.1} GiB of memory; this machine has {available_gib:.1} GiB available"
    )]
    OutOfMemory {
        what: String,
        needed_gib: f64,
        available_gib: f64,
    },
    #[error(
        "{what} needs about {needed_gib:.2} GiB of {which}{}; the {which} budget is {budget_gib:.2} GiB ({how}): it needs at least {:.2} GiB",
        if *held_gib > 0.0 { format!(" on top of the {held_gib:.2} GiB the model holds") } else { String::new() },
        needed_gib + held_gib
    )]
    OverBudget {
        what: String,
        /// `memory`, or `GPU memory` for a model on a GPU under `--max-gpu-memory`.
        which: &'static str,
        needed_gib: f64,
        held_gib: f64,
        budget_gib: f64,
        how: String,
    },
}

impl From<rdla_gguf::GgufError> for ModelError {
    fn from(e: rdla_gguf::GgufError) -> Self {
        ModelError::Gguf(e)
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |error| ModelError::Io { path, error }
}

//! The one error type of this crate.

use std::path::PathBuf;

use crate::quote::quote;

/// Everything that can go wrong while reading a GGUF file or translating it to the
/// Hugging Face view. Each variant names what it is about (the tensor, the key, the offset),
/// so a message can be shown to a person as it is. Names that come from the file (keys,
/// tensor names, the architecture, tokens) are shown quoted, escaped and cut short
/// ([`crate::quote`]); the fields keep them as they are. A message includes the text of the
/// error that caused it, which is therefore not also its `source()`: each thing is said once.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("not a GGUF file: bad magic {found:02x?} (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("big-endian GGUF files are not supported (version field reads {raw:#010x})")]
    BigEndian { raw: u32 },
    #[error("unsupported GGUF version {0} (only versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error(
        "truncated GGUF file: needed {needed} bytes at offset {offset} for {what}, but the file has {len} bytes"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("corrupt GGUF file: {what} = {count} is impossible for a file of {len} bytes")]
    AbsurdCount { what: String, count: u64, len: u64 },
    #[error("corrupt GGUF file: {0}")]
    Corrupt(String),
    #[error("corrupt GGUF file: metadata key {} has unknown value type {type_id}", quote(.key))]
    UnknownValueType { key: String, type_id: u32 },
    #[error("corrupt GGUF file: duplicate metadata key {}", quote(.0))]
    DuplicateKey(String),
    #[error("corrupt GGUF file: duplicate tensor name {}", quote(.0))]
    DuplicateTensor(String),
    #[error(
        "corrupt GGUF file: tensors {} and {} share the bytes [{start}, {end})",
        quote(.first),
        quote(.second)
    )]
    OverlappingTensors {
        first: String,
        second: String,
        start: u64,
        end: u64,
    },
    #[error("tensor {} has unknown ggml type id {type_id}", quote(.tensor))]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {}: bad dimensions {dims:?}: {reason}", quote(.tensor))]
    BadDims {
        tensor: String,
        dims: Vec<u64>,
        reason: String,
    },
    #[error(
        "tensor {}: data offset {offset} is not a multiple of the alignment {alignment}",
        quote(.tensor)
    )]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {}: data [{start}, {end}) runs past the end of the file ({len} bytes)",
        quote(.tensor)
    )]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error(
        "tensor {} is stored as {ty}, which rdla cannot dequantise \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); \
         re-quantise the model to one of those types",
        quote(.tensor)
    )]
    UnsupportedTensorType { tensor: String, ty: String },
    #[error("metadata key {} is missing", quote(.0))]
    MissingKey(String),
    #[error(
        "metadata key {} has the wrong type: expected {expected}, found {found}",
        quote(.key)
    )]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key {}: {reason}", quote(.key))]
    BadValue { key: String, reason: String },
    /// A float that is not finite, or not positive where it must be (a norm epsilon, a
    /// rotary base, a soft-cap, a scale): never replaced by a default.
    #[error(
        "metadata key {}{} is {value}, but it must be {must}",
        quote(.key),
        .index.map(|i| format!(" (entry {i})")).unwrap_or_default()
    )]
    BadNumber {
        key: String,
        /// The entry, for an array.
        index: Option<usize>,
        value: f64,
        /// What it must be, e.g. "a finite number greater than 0".
        must: &'static str,
    },
    /// A tensor whose values become configuration (`rope_freqs.weight`) holds a value it
    /// cannot have.
    #[error(
        "tensor {} (element {index}) is {value}, but it must be {must}",
        quote(.tensor)
    )]
    BadTensorValue {
        tensor: String,
        index: usize,
        value: f32,
        must: &'static str,
    },
    #[error(
        "unsupported architecture {}; rdla reads GGUF files of llama (Llama, SmolLM, Mistral), \
         qwen2, qwen3, phi3, gemma2, gemma3, gpt2 and gptneox",
        quote(.0)
    )]
    UnsupportedArchitecture(String),
    #[error(
        "tensor {} is not expected in a {} model; rdla does not know where it belongs",
        quote(.tensor),
        quote(.arch)
    )]
    UnexpectedTensor { arch: String, tensor: String },
    #[error("tensor {} is missing", quote(.0))]
    MissingTensor(String),
    #[error(
        "tensor {}: expected shape {expected:?} (GGUF order), found {found:?}",
        quote(.tensor)
    )]
    ShapeMismatch {
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// The vocabulary has more tokens than the embedding has rows: refused before the
    /// tokenizer is built (its cost grows with the token count).
    #[error(
        "tokenizer.ggml.tokens lists {tokens} tokens, but the embedding `token_embd.weight` \
         has only {rows} rows"
    )]
    VocabTooLarge { tokens: u64, rows: u64 },
    /// An entry of `tokenizer.ggml.merges` that a BPE tokenizer cannot use.
    #[error(
        "metadata key `tokenizer.ggml.merges`, entry {index} ({}): {reason}",
        quote(.merge)
    )]
    BadMerge {
        index: usize,
        merge: String,
        reason: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading a GGUF file or translating it to the
/// Hugging Face view. Each variant names what it is about (the tensor, the key, the offset),
/// so a message can be shown to a person as it is.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    #[error("corrupt GGUF file: metadata key `{key}` has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("corrupt GGUF file: duplicate metadata key `{0}`")]
    DuplicateKey(String),
    #[error("corrupt GGUF file: duplicate tensor name `{0}`")]
    DuplicateTensor(String),
    #[error("tensor `{tensor}` has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor `{tensor}`: bad dimensions {dims:?}: {reason}")]
    BadDims {
        tensor: String,
        dims: Vec<u64>,
        reason: String,
    },
    #[error(
        "tensor `{tensor}`: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor `{tensor}`: data [{start}, {end}) runs past the end of the file ({len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error(
        "tensor `{tensor}` is stored as {ty}, which rdla cannot dequantise \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); \
         re-quantise the model to one of those types"
    )]
    UnsupportedTensorType { tensor: String, ty: String },
    #[error("metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("metadata key `{key}` has the wrong type: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key `{key}`: {reason}")]
    BadValue { key: String, reason: String },
    #[error(
        "unsupported architecture `{0}`; rdla reads GGUF files of llama (Llama, SmolLM, Mistral), \
         qwen2, qwen3, phi3, gemma2, gemma3, gpt2 and gptneox"
    )]
    UnsupportedArchitecture(String),
    #[error(
        "tensor `{tensor}` is not expected in a `{arch}` model; rdla does not know where it belongs"
    )]
    UnexpectedTensor { arch: String, tensor: String },
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{tensor}`: expected shape {expected:?} (GGUF order), found {found:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

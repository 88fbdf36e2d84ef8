//! Errors of the training library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot: {0}")]
    Plot(#[from] rdla_render::png::PngError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("training diverged at step {step} (loss {loss})")]
    Diverged { step: usize, loss: f32 },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Attach a path to an I/O error.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

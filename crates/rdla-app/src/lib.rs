//! The rdla desktop explorer (eframe).

use std::path::PathBuf;

/// What `rdla` / `rdla explore` was started with.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub answer: Option<String>,
}

/// `default` names the embedded model; anything else is a path.
pub fn resolve_model_path(spec: &str) -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(spec))
}

pub fn run(_opts: StartOptions) -> anyhow::Result<()> {
    anyhow::bail!("the desktop explorer is not part of this build yet; use `rdla attribute`")
}

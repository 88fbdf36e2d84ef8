//! Typed errors of the session layer.

use std::path::PathBuf;

use rdla_attrib::AttribError;
use rdla_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Attrib(#[from] AttribError),
    #[error(transparent)]
    Syntax(#[from] rdla_attrib::path::PathSyntaxError),
    #[error(transparent)]
    Png(#[from] crate::png::PngError),
    /// The answer or the foil is not one token (`which` names it).
    #[error("{which}: {error}")]
    Token {
        which: &'static str,
        error: ModelError,
    },
    #[error(
        "the foil {token:?} is the answer itself: a logit difference with itself is 0 by definition"
    )]
    SameFoil { token: String },
    #[error("refusing to write {}: it is inside the model ({}), and rdla never writes there; choose another place", path.display(), model.display())]
    OutputInModel { path: PathBuf, model: PathBuf },
    /// The cause is in the message, not also a source (it was said twice).
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{what} is not a finite number: the model overflows on this input (or its weights are broken)"
    )]
    NonFinite { what: String },
    #[error(
        "{}: more than {limit} bytes, more text than the model's context can hold; give a shorter prompt",
        path.display()
    )]
    PromptFileTooLarge { path: PathBuf, limit: u64 },
    /// A result file (`.rdla`) that cannot be read or written.
    #[error("{}: {why}", path.display())]
    ResultFile { path: PathBuf, why: String },
    /// A result file's model is not the model at hand.
    #[error(
        "this is not the model the result was saved from: {0}; open the model it names (its files' sha256 are in the result's manifest.json)"
    )]
    OtherModel(String),
    #[error(
        "nothing to verify: the trace has no site that can be ablated (trace further, or from another node)"
    )]
    NothingToVerify,
    #[error(
        "patching takes each site's value from the contrast prompt's run: give a contrast prompt (--contrast-prompt, or Compare with… in the explorer)"
    )]
    PatchWithoutContrast,
    #[error(
        "patching needs the contrast prompt to have this prompt's token count ({this}); it has {other}"
    )]
    PatchLengths { this: usize, other: usize },
    #[error("stopped before the verification was complete")]
    VerifyStopped,
    #[error(
        "`{path}` explains an attention score, in score units: the causal check compares the target's real change (logit units) with a node's attributed logit contribution, so it cannot check this node; ablate its site from a path in logit units instead"
    )]
    AblateInScoreUnits { path: rdla_attrib::Path },
    /// A result that could not be written as JSON.
    #[error("cannot write the JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("nothing has been computed yet")]
    NotComputed,
    /// A contrast prompt that cannot be compared with this one (the reason).
    #[error("contrast prompt: {0}")]
    Contrast(String),
    /// A census that cannot run or be merged (the reason, naming the record or file).
    #[error("census: {0}")]
    Census(String),
}

pub type Result<T, E = SessionError> = std::result::Result<T, E>;

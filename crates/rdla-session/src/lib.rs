//! rdla's session layer: everything between the compute core and a front-end. Open a model
//! (source, progress, cancel) → compute a request (prompt, answer, foil, MLP mode, BOS) →
//! expand a path → the view of a node (heatmap, title) → exports (JSON, CSV, PNG) written
//! safely. The CLI and the GUI worker are thin adapters around [`Session`]. No GUI dependency.

pub mod census;
pub mod contrast;
pub mod csv;
pub mod error;
pub mod graph;
pub mod info;
pub mod input;
pub mod output;
pub mod report;
pub mod saved;
pub mod session;
pub mod verify;
pub mod view;

/// Rendering lives in `rdla-render`; its modules are re-exported under their old names.
pub use rdla_render::{geometry, heatmap, plot, png};

pub use contrast::{Contrast, NodeContrast};
pub use error::{Result, SessionError};
pub use heatmap::{ColorMap, Heatmap};
pub use info::{ModelFacts, ModelInfo};
pub use report::{Prediction, Timings, top_predictions};
pub use session::{
    AblationReport, AttentionRow, ComputeFailure, Computed, ModelSource, NodeView, Request,
    SavedCheck, Session, SoftCapped, Stage, Tokens, Totals, ms,
};

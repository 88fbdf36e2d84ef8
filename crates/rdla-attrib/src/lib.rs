//! rdla's attribution layer: exact recursive direct logit attribution on top of
//! `rdla-model`, the path grammar, and JSON / CSV / PNG export. No GUI dependency.

pub mod csv;
pub mod engine;
pub mod heatmap;
pub mod path;
pub mod png;
pub mod report;

pub use engine::{AttribError, Child, Engine, Expansion, MlpMode, NodeKind, Overview, Target};
pub use heatmap::{ColorMap, Heatmap, node_heatmap, root_heatmap};
pub use path::{Comp, Layout, Path, Step};
pub use report::{Prediction, Report, Timings, top_predictions};

//! rdla's rendering, shared by the session (exports), the window and `rdla-train`: the
//! heatmap view model and its geometry (the one layout the window and the PNG both draw), the
//! heatmap and graph PNGs, the attribution graph's layout, and line plots. Pixels only: no
//! model, no I/O, no GUI.

pub mod geometry;
pub mod graph;
pub mod heatmap;
pub mod loss;
pub mod plot;
pub mod png;

pub use heatmap::{ColorMap, Heatmap};

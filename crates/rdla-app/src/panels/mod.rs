//! The explorer's panels. Each reads the state (and edits the persisted settings it owns a
//! widget for) and pushes [`crate::state::Action`]s; the frame applies them at its end.

pub mod census;
pub mod details;
pub mod explorer;
pub mod graph;
pub mod heatmap;
pub mod prompt;
pub mod result;
pub mod status;
pub mod top_bar;

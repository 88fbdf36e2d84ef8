//! rdla's attribution engine: exact recursive direct logit attribution on top of
//! `rdla-model` (DESIGN.md §1), and the path grammar that names its nodes (§2). No GUI
//! dependency, no I/O.

pub mod engine;
pub mod path;
pub mod trace;

pub use engine::{
    Array, AttribError, Child, ChildLayout, Engine, Expansion, HeadTotals, Memo, MlpMode, NodeKind,
    Overview, ScoreTable, Site, SiteAt, Target, TokenReadout, TokenValue, Units, head_totals_batch,
    run_with_overview, takes_whole,
};
pub use path::{Comp, Layout, Path, Side, Step, Versus};

//! One module per node kind (each implements [`super::node::NodeType`]; the kinds are
//! registered in `node.rs`'s `node_kinds!`).

pub(super) mod attn;
pub(super) mod head;
pub(super) mod leaf;
pub(super) mod mlp;
pub(super) mod residual;
pub(super) mod score;

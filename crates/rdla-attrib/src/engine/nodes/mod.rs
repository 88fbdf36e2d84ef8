//! One module per node kind.

pub(super) mod attn;
pub(super) mod head;
pub(super) mod leaf;
pub(super) mod residual;
pub(super) mod score;

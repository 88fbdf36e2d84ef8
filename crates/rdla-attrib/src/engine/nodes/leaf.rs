//! Leaves: the token and position embeddings (nothing further upstream), and the remainder
//! child `bias` of any node.

use burn::tensor::Tensor;

use crate::engine::node::{Kind, Node};
use crate::engine::{Engine, Result};

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
    match &node.kind {
        Kind::Bias(v) => Ok((**v).clone()),
        Kind::Comp(c) => eng.comp_value(*c, node.pos, &node.readout),
        _ => Ok(eng.zero()),
    }
}

//! Leaves: the token and position embeddings (nothing further upstream), and the remainder
//! child `bias` of any node.

use burn::tensor::Tensor;

use crate::engine::Engine;
use crate::engine::node::{Kind, Node};

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node) -> Tensor<1> {
    match &node.kind {
        Kind::Bias(v) => (**v).clone(),
        Kind::Comp(c) => eng.comp_value(*c, node.pos, &node.readout),
        _ => eng.zero(),
    }
}

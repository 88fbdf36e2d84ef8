//! An attention layer's output at a position: its children are the layer's heads (same
//! readout), its remainder `b_O · r`.

use burn::tensor::Tensor;

use crate::engine::Engine;
use crate::engine::node::{Children, Kind, Node};
use crate::path::{Comp, Step};

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node, l: usize) -> Tensor<1> {
    eng.comp_value(Comp::Attn(l), node.pos, &node.readout)
}

pub(in crate::engine) fn bias(eng: &Engine<'_>, node: &Node, l: usize) -> Tensor<1> {
    crate::engine::rows_dot(
        crate::engine::readout::layers(&eng.model.weights.b_o, &(l..l + 1)),
        node.readout.clone(),
    )
}

pub(in crate::engine) fn children(eng: &Engine<'_>, node: &Node, l: usize) -> Children {
    Children {
        steps: (0..eng.model.config.n_heads).map(Step::Head).collect(),
        values: Some(
            eng.head_values(&(l..l + 1), node.pos, node.readout.clone().unsqueeze_dim(0))
                .squeeze_dim::<1>(0),
        ),
    }
}

pub(in crate::engine) fn step(eng: &Engine<'_>, node: &Node, l: usize, step: Step) -> Option<Node> {
    match step {
        Step::Head(h) if h < eng.model.config.n_heads => Some(Node {
            kind: Kind::Head { layer: l, head: h },
            pos: node.pos,
            readout: node.readout.clone(),
        }),
        _ => None,
    }
}

pub(in crate::engine) fn valid(eng: &Engine<'_>) -> String {
    format!("H0 … H{}, bias", eng.model.config.n_heads - 1)
}

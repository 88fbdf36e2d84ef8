//! An attention layer's output at a position: its children are the layer's heads, its
//! remainder `b_O · r`, both read along the layer's readout pulled back through the frozen
//! post-norm where the model has one (the heads' readout `r ⊙ w_post / s_post`).

use burn::tensor::Tensor;

use crate::engine::node::{Children, Kind, Node};
use crate::engine::{Engine, Result};
use crate::path::{Comp, Step};

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node, l: usize) -> Result<Tensor<1>> {
    eng.comp_value(Comp::Attn(l), node.pos, &node.readout)
}

/// The readout of the layer's heads and `b_O`: `[1, d]`.
fn inner(eng: &Engine<'_>, node: &Node, l: usize) -> Tensor<2> {
    eng.post_readout(
        &(l..l + 1),
        node.pos,
        node.readout.clone().unsqueeze_dim(0),
        false,
    )
}

pub(in crate::engine) fn bias(eng: &Engine<'_>, node: &Node, l: usize) -> Tensor<1> {
    (crate::engine::readout::layers(&eng.model.weights.b_o, &(l..l + 1)) * inner(eng, node, l))
        .sum()
}

pub(in crate::engine) fn children(eng: &Engine<'_>, node: &Node, l: usize) -> Children {
    Children {
        steps: (0..eng.model.config.n_heads).map(Step::Head).collect(),
        values: Some(
            eng.head_values(&(l..l + 1), node.pos, inner(eng, node, l))
                .squeeze_dim::<1>(0),
        ),
    }
}

pub(in crate::engine) fn step(eng: &Engine<'_>, node: &Node, l: usize, step: Step) -> Option<Node> {
    match step {
        Step::Head(h) if h < eng.model.config.n_heads => Some(Node {
            kind: Kind::Head { layer: l, head: h },
            pos: node.pos,
            readout: inner(eng, node, l).squeeze_dim::<1>(0),
        }),
        _ => None,
    }
}

pub(in crate::engine) fn valid(eng: &Engine<'_>) -> String {
    format!("H0 … H{}, bias", eng.model.config.n_heads - 1)
}

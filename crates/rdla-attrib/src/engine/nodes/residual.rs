//! Residual nodes: the root (the final residual at the last position, read along the target
//! direction) and an MLP (its input residual at its position, read through the frozen gate).
//! Their children are the components of that residual stream.

use crate::engine::Engine;
use crate::engine::node::{Children, Kind, Node};
use crate::path::{Comp, Step};

/// How many components the residual stream of `node` holds, and the readout of its children.
fn inputs(eng: &Engine<'_>, node: &Node) -> (usize, burn::tensor::Tensor<1>) {
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) => (
            eng.layout.mid(l),
            eng.mlp_readouts(&(l..l + 1), node.pos, node.readout.clone().unsqueeze_dim(0))
                .squeeze_dim::<1>(0),
        ),
        _ => (eng.layout.n(), node.readout.clone()),
    }
}

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node) -> burn::tensor::Tensor<1> {
    match node.kind {
        Kind::Comp(c) => eng.comp_value(c, node.pos, &node.readout),
        _ => eng.root_value_tensor(),
    }
}

/// The root has no remainder (`b_U` is excluded by definition); an MLP's is
/// `((g ⊙ b_in) W_out + b_out) · r`.
pub(in crate::engine) fn bias(eng: &Engine<'_>, node: &Node) -> burn::tensor::Tensor<1> {
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) => {
            eng.mlp_biases(&(l..l + 1), node.pos, node.readout.clone().unsqueeze_dim(0))
        }
        _ => eng.zero(),
    }
}

pub(in crate::engine) fn children(eng: &Engine<'_>, node: &Node) -> Children {
    let (n, r) = inputs(eng, node);
    Children {
        steps: (0..n).map(|i| Step::Comp(eng.layout.comp(i))).collect(),
        values: Some(crate::engine::rows_dot(eng.comps_at(n, node.pos), r)),
    }
}

pub(in crate::engine) fn step(eng: &Engine<'_>, node: &Node, step: Step) -> Option<Node> {
    let Step::Comp(c) = step else {
        return None;
    };
    let (n, r) = inputs(eng, node);
    eng.layout.index(c).filter(|&i| i < n)?;
    Some(Node {
        kind: Kind::Comp(c),
        pos: node.pos,
        readout: r,
    })
}

pub(in crate::engine) fn valid(eng: &Engine<'_>, node: &Node) -> String {
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) => {
            format!("{}, bias", eng.layout.describe_prefix(eng.layout.mid(l)))
        }
        _ => eng.layout.describe_prefix(eng.layout.n()),
    }
}

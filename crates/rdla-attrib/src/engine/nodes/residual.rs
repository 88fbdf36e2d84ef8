//! Residual nodes: the root (the final residual at the last position, read along the target
//! direction), an MLP (its input residual at its position, read through the frozen gate) and
//! one neuron of an MLP (the same, through that neuron alone). Their children are the
//! components of that residual stream; an MLP also has its neurons `N{n}` as an alternative
//! decomposition (listed beside the node, not among its children).

use burn::tensor::Tensor;

use crate::engine::node::{Children, Kind, Node};
use crate::engine::{Engine, Result};
use crate::path::{Comp, Step};

/// How many components the residual stream of `node` holds, and the readout of its children.
fn inputs(eng: &Engine<'_>, node: &Node) -> (usize, Tensor<1>) {
    let r = || node.readout.clone().unsqueeze_dim(0);
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) => (
            eng.layout.mid(l),
            eng.mlp_readouts(&(l..l + 1), node.pos, r(), None)
                .squeeze_dim::<1>(0),
        ),
        Kind::Neuron { layer: l, n } => (
            eng.layout.mid(l),
            eng.mlp_readouts(&(l..l + 1), node.pos, r(), Some(n))
                .squeeze_dim::<1>(0),
        ),
        _ => (eng.layout.n(), node.readout.clone()),
    }
}

/// The readout every component child of `node` reads along.
pub(in crate::engine) fn child_readout(eng: &Engine<'_>, node: &Node) -> Tensor<1> {
    inputs(eng, node).1
}

/// How many components the residual stream of `node` holds (without computing a readout).
pub(in crate::engine) fn n_inputs(eng: &Engine<'_>, node: &Node) -> usize {
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) | Kind::Neuron { layer: l, .. } => eng.layout.mid(l),
        _ => eng.layout.n(),
    }
}

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
    Ok(match node.kind {
        Kind::Comp(c) => eng.comp_value(c, node.pos, &node.readout)?,
        Kind::Neuron { layer, n } => eng
            .neuron_values(layer, node.pos, node.readout.clone())
            .narrow(0, n, 1),
        _ => eng.root_value_tensor(),
    })
}

/// The root has no remainder (`b_U` is excluded by definition); an MLP's is
/// `((g ⊙ b_in) W_out + b_out) · r`, a neuron's `g_n b_in[n] (W_out[n] · r)`.
pub(in crate::engine) fn bias(eng: &Engine<'_>, node: &Node) -> Tensor<1> {
    let r = || node.readout.clone().unsqueeze_dim(0);
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) => eng.mlp_biases(&(l..l + 1), node.pos, r(), None),
        Kind::Neuron { layer, n } => eng.mlp_biases(&(layer..layer + 1), node.pos, r(), Some(n)),
        _ => eng.zero(),
    }
}

/// [`children`] and [`bias`] together: an MLP's (or a neuron's) from one pass over its
/// weights (the root has no weights to share).
pub(in crate::engine) fn children_and_bias(eng: &Engine<'_>, node: &Node) -> (Children, Tensor<1>) {
    let r = || node.readout.clone().unsqueeze_dim(0);
    let (l, neuron) = match node.kind {
        Kind::Comp(Comp::Mlp(l)) => (l, None),
        Kind::Neuron { layer, n } => (layer, Some(n)),
        _ => return (children(eng, node), bias(eng, node)),
    };
    let (read, b) = eng.mlp_readouts_and_biases(&(l..l + 1), node.pos, r(), neuron);
    let n = eng.layout.mid(l);
    let children = Children {
        steps: (0..n).map(|i| Step::Comp(eng.layout.comp(i))).collect(),
        values: Some(crate::engine::rows_dot(
            eng.comps_at(n, node.pos),
            read.squeeze_dim::<1>(0),
        )),
    };
    (children, b)
}

pub(in crate::engine) fn children(eng: &Engine<'_>, node: &Node) -> Children {
    let (n, r) = inputs(eng, node);
    Children {
        steps: (0..n).map(|i| Step::Comp(eng.layout.comp(i))).collect(),
        values: Some(crate::engine::rows_dot(eng.comps_at(n, node.pos), r)),
    }
}

pub(in crate::engine) fn step(eng: &Engine<'_>, node: &Node, step: Step) -> Option<Node> {
    match (step, &node.kind) {
        (Step::Neuron(n), Kind::Comp(Comp::Mlp(l))) if n < eng.model.config.d_mlp => Some(Node {
            kind: Kind::Neuron { layer: *l, n },
            pos: node.pos,
            readout: node.readout.clone(),
        }),
        (Step::Comp(c), _) => {
            let (n, r) = inputs(eng, node);
            eng.layout.index(c).filter(|&i| i < n)?;
            Some(Node {
                kind: Kind::Comp(c),
                pos: node.pos,
                readout: r,
            })
        }
        _ => None,
    }
}

pub(in crate::engine) fn valid(eng: &Engine<'_>, node: &Node) -> String {
    match node.kind {
        Kind::Comp(Comp::Mlp(l)) => format!(
            "{}, N0 … N{}, bias",
            eng.layout.describe_prefix(eng.layout.mid(l)),
            eng.model.config.d_mlp - 1
        ),
        Kind::Neuron { layer, .. } => {
            format!(
                "{}, bias",
                eng.layout.describe_prefix(eng.layout.mid(layer))
            )
        }
        _ => eng.layout.describe_prefix(eng.layout.n()),
    }
}

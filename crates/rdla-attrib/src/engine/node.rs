//! The nodes of the tree. A node is a kind, the position it sits at and its readout vector;
//! each kind lives in its own module under `nodes/` (its path steps, value, remainder and
//! children) and is dispatched from here.

use burn::tensor::Tensor;

use super::nodes::{attn, head, leaf, residual};
use super::{CompLabel, Engine, NodeKind, Result};
use crate::path::{Comp, Step};

/// What a node is.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    /// The target logit at the last position.
    Root,
    /// A residual component at a position.
    Comp(Comp),
    /// One attention head at a destination position.
    Head { layer: usize, head: usize },
    /// The remainder child of its parent, with its value `[1]`.
    Bias(Box<Tensor<1>>),
}

/// A node: its kind, its position and its readout vector `[d]`.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub kind: Kind,
    pub pos: usize,
    pub readout: Tensor<1>,
}

/// The children of a node: their steps, and their values as one tensor `[n]` (one batched
/// expression; `None` for a leaf).
pub(super) struct Children {
    pub steps: Vec<Step>,
    pub values: Option<Tensor<1>>,
}

impl Children {
    pub fn none() -> Self {
        Self {
            steps: Vec::new(),
            values: None,
        }
    }
}

impl Engine<'_> {
    pub(super) fn root(&self) -> Node {
        Node {
            kind: Kind::Root,
            pos: self.last,
            readout: self.r_root.clone(),
        }
    }

    /// The node's value `[1]`, computed independently of its children.
    pub(super) fn node_value(&self, node: &Node) -> Tensor<1> {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) => residual::value(self, node),
            Kind::Comp(Comp::Attn(l)) => attn::value(self, node, *l),
            Kind::Head { layer, head } => head::value(self, node, (*layer, *head)),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => leaf::value(self, node),
        }
    }

    /// The node's remainder `[1]`.
    pub(super) fn node_bias(&self, node: &Node) -> Tensor<1> {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) => residual::bias(self, node),
            Kind::Comp(Comp::Attn(l)) => attn::bias(self, node, *l),
            Kind::Head { layer, head } => head::bias(self, node, (*layer, *head)),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => self.zero(),
        }
    }

    pub(super) fn node_children(&self, node: &Node) -> Children {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) => residual::children(self, node),
            Kind::Comp(Comp::Attn(l)) => attn::children(self, node, *l),
            Kind::Head { layer, head } => head::children(self, node, (*layer, *head)),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => Children::none(),
        }
    }

    /// The child of `node` that `step` names, or `None` when it is not a child there.
    pub(super) fn node_step(&self, node: &Node, step: Step) -> Result<Option<Node>> {
        if step == Step::Bias && !self.is_leaf(node) {
            return Ok(Some(Node {
                kind: Kind::Bias(Box::new(self.node_bias(node))),
                pos: node.pos,
                readout: node.readout.clone(),
            }));
        }
        Ok(match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) => residual::step(self, node, step),
            Kind::Comp(Comp::Attn(l)) => attn::step(self, node, *l, step),
            Kind::Head { layer, head } => head::step(self, node, (*layer, *head), step),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => None,
        })
    }

    /// "head L2.H1 at position 5", for error messages.
    pub(super) fn describe(&self, node: &Node) -> String {
        match &node.kind {
            Kind::Root => "the root".into(),
            Kind::Comp(c) => format!("`{c}` at position {}", node.pos),
            Kind::Head { layer, head } => format!("head L{layer}.H{head} at position {}", node.pos),
            Kind::Bias(_) => "`bias`".into(),
        }
    }

    /// The valid child steps of `node`, for error messages.
    pub(super) fn valid_here(&self, node: &Node) -> String {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) => residual::valid(self, node),
            Kind::Comp(Comp::Attn(_)) => attn::valid(self),
            Kind::Head { layer, .. } => head::valid(self, node, *layer),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => {
                "nothing (this node is a leaf)".into()
            }
        }
    }

    pub(super) fn is_leaf(&self, node: &Node) -> bool {
        matches!(
            node.kind,
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_)
        )
    }

    /// The public description of a node's kind.
    pub(super) fn public_kind(node: &Node) -> NodeKind {
        match &node.kind {
            Kind::Root => NodeKind::Root,
            Kind::Comp(c) => NodeKind::Component {
                comp: CompLabel(*c),
            },
            Kind::Head { layer, head } => NodeKind::Head {
                layer: *layer,
                head: *head,
            },
            Kind::Bias(_) => NodeKind::Bias,
        }
    }

    pub(super) fn zero(&self) -> Tensor<1> {
        Tensor::<1>::zeros([1], self.device())
    }

    /// `x_c[pos] · r` for one component: `[1]`.
    pub(super) fn comp_value(&self, c: Comp, pos: usize, r: &Tensor<1>) -> Tensor<1> {
        let i = self.layout.index(c).unwrap_or(0);
        super::rows_dot(
            self.cache
                .components
                .clone()
                .narrow(0, i, 1)
                .narrow(1, pos, 1)
                .reshape([1, self.model.config.d_model]),
            r.clone(),
        )
    }
}

//! The nodes of the tree. A node is a kind, the position it sits at and its readout vector;
//! each kind lives in its own module under `nodes/` (its path steps, value, remainder and
//! children) and is dispatched from here.

use burn::tensor::Tensor;

use super::nodes::score::{self, ScoreId};
use super::nodes::{attn, head, leaf, residual};
use super::{AttribError, CompLabel, Engine, NodeKind, Result};
use crate::path::{Comp, Side, Step};

/// What a node is.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    /// The target logit at the last position.
    Root,
    /// A residual component at a position.
    Comp(Comp),
    /// One attention head at a destination position.
    Head { layer: usize, head: usize },
    /// One neuron of an MLP (the node's readout is the MLP's).
    Neuron { layer: usize, n: usize },
    /// A head's attention score (or a contrast of scores) from its destination.
    Score(ScoreId),
    /// One side of a score's decomposition.
    Side(ScoreId, Side),
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

/// What a node's children's readouts are made of, computed once per node for walks that
/// resolve many of its children ([`super::Resolved`]).
#[derive(Debug)]
pub(super) enum Basis {
    /// Every component child reads along the same vector (the root; an MLP's or a neuron's
    /// input readout).
    Same(Box<Tensor<1>>),
    /// A head's source `(p, c)` reads along `ov · A[q, p] / s1[l, p]`: the OV readout `[d]`,
    /// the pattern row `[P]` and the layer's norm scales `[P]`.
    Sources(Box<Sources>),
}

/// A head's [`Basis::Sources`] (the variants are boxed: a tensor handle is large).
#[derive(Debug)]
pub(super) struct Sources {
    pub ov: Tensor<1>,
    pub pattern: Tensor<1>,
    pub s1: Tensor<1>,
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
    pub(super) fn node_value(&self, node: &Node) -> Result<Tensor<1>> {
        Ok(match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) | Kind::Neuron { .. } => {
                residual::value(self, node)?
            }
            Kind::Comp(Comp::Attn(l)) => attn::value(self, node, *l)?,
            Kind::Head { layer, head } => head::value(self, node, (*layer, *head)),
            Kind::Score(id) | Kind::Side(id, _) => self.score_value(*id, node.pos),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => leaf::value(self, node)?,
        })
    }

    /// The node's remainder `[1]`.
    pub(super) fn node_bias(&self, node: &Node) -> Tensor<1> {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) | Kind::Neuron { .. } => {
                residual::bias(self, node)
            }
            Kind::Comp(Comp::Attn(l)) => attn::bias(self, node, *l),
            Kind::Head { layer, head } => head::bias(self, node, (*layer, *head)),
            Kind::Side(id, side) => score::side_bias(self, node, *id, *side),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Score(_) | Kind::Bias(_) => self.zero(),
        }
    }

    /// The node's value, children and remainder, for an expansion: one dispatch over the
    /// kinds, sharing work where a kind can (a head's `W_O r` and OV readout, an MLP's pass
    /// over `W_out`).
    pub(super) fn node_all(&self, node: &Node) -> Result<(Tensor<1>, Children, Tensor<1>)> {
        let children = match &node.kind {
            Kind::Comp(Comp::Mlp(_)) | Kind::Neuron { .. } => {
                let (children, bias) = residual::children_and_bias(self, node);
                return Ok((self.node_value(node)?, children, bias));
            }
            Kind::Head { layer, head } => return Ok(head::all(self, node, (*layer, *head))),
            Kind::Root => residual::children(self, node),
            Kind::Comp(Comp::Attn(l)) => attn::children(self, node, *l),
            Kind::Score(id) => score::children(self, node, *id),
            Kind::Side(id, side) => score::side_children(self, node, *id, *side),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => Children::none(),
        };
        Ok((self.node_value(node)?, children, self.node_bias(node)))
    }

    /// The child of `node` that `step` names, or `None` when it is not a child there.
    pub(super) fn node_step(&self, node: &Node, step: Step) -> Result<Option<Node>> {
        if step == Step::Bias && !self.is_leaf(node) && !matches!(node.kind, Kind::Score(_)) {
            return Ok(Some(Node {
                kind: Kind::Bias(Box::new(self.node_bias(node))),
                pos: node.pos,
                readout: node.readout.clone(),
            }));
        }
        Ok(match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) | Kind::Neuron { .. } => {
                residual::step(self, node, step)
            }
            Kind::Comp(Comp::Attn(l)) => attn::step(self, node, *l, step),
            Kind::Head { layer, head } => head::step(self, node, (*layer, *head), step),
            Kind::Score(id) => score::step(node, *id, step),
            Kind::Side(id, side) => score::side_step(self, node, *id, *side, step),
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => None,
        })
    }

    /// The shared part of `node`'s children's readouts, for kinds with many children.
    pub(super) fn child_basis(&self, node: &Node) -> Option<Basis> {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) | Kind::Neuron { .. } => {
                Some(Basis::Same(Box::new(residual::child_readout(self, node))))
            }
            Kind::Head { layer, head } => Some(head::basis(self, node, (*layer, *head))),
            _ => None,
        }
    }

    /// [`Engine::node_step`] from a computed basis; `None` where the basis does not cover the
    /// step (then `node_step` decides, errors included). The readouts are formed exactly as
    /// `node_step` forms them.
    pub(super) fn step_with_basis(&self, node: &Node, basis: &Basis, step: Step) -> Option<Node> {
        match (basis, step) {
            (Basis::Same(r), Step::Comp(c)) => {
                let n = residual::n_inputs(self, node);
                self.layout.index(c).filter(|&i| i < n)?;
                Some(Node {
                    kind: Kind::Comp(c),
                    pos: node.pos,
                    readout: r.as_ref().clone(),
                })
            }
            (Basis::Sources(src), Step::Source { pos, comp }) => {
                let Sources { ov, pattern, s1 } = src.as_ref();
                let Kind::Head { layer, .. } = node.kind else {
                    return None;
                };
                let up = self
                    .layout
                    .index(comp)
                    .is_some_and(|i| i < self.layout.pre(layer));
                if !(pos < self.n_pos() && self.allowed(layer, node.pos, pos) && up) {
                    return None;
                }
                let a = pattern.clone().narrow(0, pos, 1);
                let s = s1.clone().narrow(0, pos, 1);
                Some(Node {
                    kind: Kind::Comp(comp),
                    pos,
                    readout: ov.clone() * a / s,
                })
            }
            _ => None,
        }
    }

    /// "head L2.H1 at position 5", for error messages.
    pub(super) fn describe(&self, node: &Node) -> String {
        match &node.kind {
            Kind::Root => "the root".into(),
            Kind::Comp(c) => format!("`{c}` at position {}", node.pos),
            Kind::Head { layer, head } => format!("head L{layer}.H{head} at position {}", node.pos),
            Kind::Neuron { layer, n } => {
                format!("neuron L{layer}.mlp/N{n} at position {}", node.pos)
            }
            Kind::Score(id) => format!(
                "score `{}` of head L{}.H{} at position {}",
                Step::Score {
                    key: id.key,
                    versus: id.versus
                },
                id.layer,
                id.head,
                node.pos
            ),
            Kind::Side(_, side) => format!("the `{}` side of a score", side.as_str()),
            Kind::Bias(_) => "`bias`".into(),
        }
    }

    /// The valid child steps of `node`, for error messages.
    pub(super) fn valid_here(&self, node: &Node) -> String {
        match &node.kind {
            Kind::Root | Kind::Comp(Comp::Mlp(_)) | Kind::Neuron { .. } => {
                residual::valid(self, node)
            }
            Kind::Comp(Comp::Attn(_)) => attn::valid(self),
            Kind::Head { layer, .. } => head::valid(self, node, *layer),
            Kind::Score(_) => "q, k".into(),
            Kind::Side(id, side) => score::side_valid(self, node, *id, *side),
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
            Kind::Neuron { layer, n } => NodeKind::Neuron {
                layer: *layer,
                neuron: *n,
            },
            Kind::Score(id) => NodeKind::Score {
                layer: id.layer,
                head: id.head,
            },
            Kind::Side(id, side) => NodeKind::Side {
                layer: id.layer,
                head: id.head,
                side: side.as_str(),
            },
            Kind::Bias(_) => NodeKind::Bias,
        }
    }

    /// A score node's bilinear table and its labels.
    pub(super) fn node_table(&self, node: &Node) -> Option<(Vec<String>, Tensor<2>)> {
        match &node.kind {
            Kind::Score(id) => Some(self.score_table(*id, node.pos)),
            _ => None,
        }
    }

    /// An MLP node's neuron values `[d_mlp]`.
    pub(super) fn node_neurons(&self, node: &Node) -> Option<Tensor<1>> {
        match node.kind {
            Kind::Comp(Comp::Mlp(l)) => Some(self.neuron_values(l, node.pos, node.readout.clone())),
            _ => None,
        }
    }

    /// What the node writes into the residual stream at its position `[d]` (a component's
    /// output, a head's `z_h W_O[h]`, a neuron's `a_n W_out[n]`); `None` for nodes that write
    /// nothing of their own.
    pub(super) fn node_written(&self, node: &Node) -> Option<Tensor<1>> {
        let cfg = &self.model.config;
        match &node.kind {
            Kind::Comp(c) => {
                let i = self.layout.index(*c)?;
                Some(
                    self.cache
                        .components
                        .clone()
                        .narrow(0, i, 1)
                        .narrow(1, node.pos, 1)
                        .reshape([cfg.d_model]),
                )
            }
            Kind::Head { layer, head } => {
                let z = self
                    .z_at(&(*layer..*layer + 1), node.pos)
                    .narrow(1, *head, 1)
                    .reshape([1, cfg.d_head]);
                let w_o = self
                    .model
                    .weights
                    .w_o
                    .clone()
                    .narrow(0, *layer, 1)
                    .narrow(1, *head, 1)
                    .reshape([cfg.d_head, cfg.d_model]);
                Some(self.post_written(
                    *layer,
                    node.pos,
                    z.matmul(w_o).reshape([cfg.d_model]),
                    false,
                ))
            }
            Kind::Neuron { layer, n } => Some(self.neuron_output(*layer, node.pos, *n)),
            _ => None,
        }
    }

    /// The vocabulary readout of a written vector at `pos`: `C(v) W_U / s_final[pos]` `[V]`.
    pub(super) fn vocab_readout(&self, v: Tensor<1>, pos: usize) -> Tensor<1> {
        let s = self.cache.final_scale.clone().narrow(0, pos, 1);
        self.c(v)
            .unsqueeze_dim::<2>(0)
            .matmul(self.model.weights.w_u.clone())
            .squeeze_dim::<1>(0)
            / s
    }

    /// The position a node is shown at: its own, or for a single score's key side the key.
    pub(super) fn node_position(&self, node: &Node) -> usize {
        match &node.kind {
            Kind::Side(id, side) => score::side_position(*id, *side, node.pos),
            _ => node.pos,
        }
    }

    pub(super) fn zero(&self) -> Tensor<1> {
        Tensor::<1>::zeros([1], self.device())
    }

    /// `x_c[pos] · r` for one component: `[1]`; a component this model does not have (`pos`
    /// with rotary embeddings, a layer past the last) is an error, never another component.
    pub(super) fn comp_value(&self, c: Comp, pos: usize, r: &Tensor<1>) -> Result<Tensor<1>> {
        let i = self
            .layout
            .index(c)
            .ok_or(AttribError::UnknownComponent { comp: c })?;
        Ok(super::rows_dot(
            self.cache
                .components
                .clone()
                .narrow(0, i, 1)
                .narrow(1, pos, 1)
                .reshape([1, self.model.config.d_model]),
            r.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, Node};
    use crate::engine::{AttribError, Engine, MlpMode, Target};
    use crate::path::Comp;
    use rdla_model::Device;

    /// A component node the model does not have is a typed error, never component 0's value
    /// read under another name (path resolution never builds one; the check is the engine's
    /// own, for every way a node is formed).
    #[test]
    fn a_component_outside_the_layout_is_an_error() {
        // llama_gqa: rotary, so no `pos` component; gpt2_tied: learned positions
        for (name, missing) in [("llama_gqa", Comp::Pos), ("gpt2_tied", Comp::Attn(99))] {
            let model = rdla_testutil::load_model(name, &Device::flex());
            let cache = model.run(&[1, 2, 3]).unwrap();
            let engine = Engine::new(
                &model,
                &cache,
                Target::Logit { answer: 1 },
                MlpMode::FrozenGate,
            )
            .unwrap();
            let node = Node {
                kind: Kind::Comp(missing),
                pos: 1,
                readout: engine.r_root.clone(),
            };
            match engine.node_value(&node) {
                Err(AttribError::UnknownComponent { comp }) => assert_eq!(comp, missing),
                Err(e) => panic!("{name}: unexpected error {e}"),
                Ok(_) => panic!("{name}: `{missing}` was given a value"),
            }
            // an expansion reports it too (a leaf's expansion is its value and no children)
            if missing == Comp::Pos {
                let err = engine.node_all(&node).err().map(|e| e.to_string());
                assert_eq!(
                    err.as_deref(),
                    Some("component `pos` is not in this model's layout")
                );
            }
        }
    }
}

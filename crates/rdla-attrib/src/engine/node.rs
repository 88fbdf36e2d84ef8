//! The nodes of the tree and the one interface every kind of node implements.
//!
//! A node is a kind, the position it sits at and its readout vector. Each kind is a small
//! struct in its own module under `nodes/` that implements [`NodeType`]: its value, its
//! expansion (value, children, remainder and what is shown beside it, each quantity computed
//! once), which steps name its children, what it is called, the model site it is, whether it
//! is a leaf and how its children are laid out in a heatmap. The kinds are registered once, in
//! the [`node_kinds!`] list below; nothing else in the engine, the session or the window
//! matches on them.

use burn::tensor::Tensor;
use rdla_model::model::ablate::Site;

use super::nodes::{attn, head, leaf, mlp, residual, score};
use super::{AttribError, ChildLayout, Engine, NodeKind, Result};
use crate::path::{Comp, Step};

/// One kind of node. Every method but [`NodeType::public`], [`NodeType::describe`],
/// [`NodeType::layout`], [`NodeType::value`] and [`NodeType::expand`] has the default of a
/// node with no children.
pub(super) trait NodeType {
    /// What the JSON calls this node (its `kind` and fields).
    fn public(&self) -> NodeKind;

    /// "head L2.H1 at position 5", for error messages.
    fn describe(&self, pos: usize) -> String;

    /// How its children are laid out in a heatmap.
    fn layout(&self) -> ChildLayout;

    /// Its value `[1]`, computed independently of its children.
    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>>;

    /// Its value, children, remainder and, as `want` asks, what is shown beside it, each
    /// quantity computed once.
    fn expand(&self, eng: &Engine<'_>, node: &Node, want: Want) -> Result<Parts>;

    /// Its remainder `[1]`: the value of its `bias` child (zero where it has none).
    fn bias(&self, eng: &Engine<'_>, _node: &Node) -> Result<Tensor<1>> {
        Ok(eng.zero())
    }

    /// The model site it is, if it is one (ablation, the trace's graph, the causal check).
    fn site(&self) -> Option<Site> {
        None
    }

    /// Nothing to expand.
    fn is_leaf(&self) -> bool {
        false
    }

    /// Whether it has a `bias` child (its remainder); a leaf has none, nor does a score (its
    /// children are alternatives).
    fn has_bias(&self) -> bool {
        !self.is_leaf()
    }

    /// The position it is shown at (its own; a single score's key side: the key).
    fn position(&self, pos: usize) -> usize {
        pos
    }

    /// The kind and position of the child `step` names (`bias` aside: every kind's), or
    /// `None` when `step` is not a child here. Computes no tensor: the validity of a step,
    /// and the site and leaf-ness of a child, come from here.
    fn child_kind(&self, _eng: &Engine<'_>, _node: &Node, _step: Step) -> Option<(Kind, usize)> {
        None
    }

    /// The readout `[d]` of a child `step` that [`NodeType::child_kind`] accepted.
    fn child_readout(&self, _eng: &Engine<'_>, node: &Node, _step: Step) -> Result<Tensor<1>> {
        Ok(node.readout.clone())
    }

    /// The part of its children's readouts they share, for walks that resolve many of them.
    fn basis(&self, _eng: &Engine<'_>, _node: &Node) -> Result<Option<Basis>> {
        Ok(None)
    }

    /// The valid child steps, for error messages.
    fn valid(&self, _eng: &Engine<'_>, _node: &Node) -> String {
        "nothing (this node is a leaf)".into()
    }
}

/// Registers the node kinds: the enum of them, one `From` per kind and the dispatch to
/// [`NodeType`]. A new kind is its module under `nodes/` and one line here.
macro_rules! node_kinds {
    ($($variant:ident($ty:ty),)*) => {
        /// What a node is: one of the registered kinds.
        #[derive(Debug, Clone)]
        pub(super) enum Kind {
            $($variant($ty),)*
        }

        impl Kind {
            /// The kind's implementation of the node interface.
            pub(super) fn ops(&self) -> &dyn NodeType {
                match self {
                    $(Self::$variant(k) => k,)*
                }
            }
        }

        $(impl From<$ty> for Kind {
            fn from(k: $ty) -> Self {
                Self::$variant(k)
            }
        })*
    };
}

node_kinds! {
    Root(residual::Root),
    Embedding(leaf::Embedding),
    Attn(attn::AttnLayer),
    Mlp(mlp::Mlp),
    Neuron(mlp::Neuron),
    Head(head::Head),
    Score(score::Score),
    Side(score::ScoreSide),
    Remainder(leaf::Remainder),
}

impl Kind {
    /// The kind of a residual component: an embedding (a leaf), an attention layer or an MLP.
    pub(super) fn component(c: Comp) -> Self {
        match c {
            Comp::Embed | Comp::Pos => leaf::Embedding(c).into(),
            Comp::Attn(layer) => attn::AttnLayer { layer }.into(),
            Comp::Mlp(layer) => mlp::Mlp { layer }.into(),
        }
    }
}

/// A node: its kind, its position and its readout vector `[d]`.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub kind: Kind,
    pub pos: usize,
    pub readout: Tensor<1>,
}

/// What an expansion computes beside the value, children and remainder.
#[derive(Debug, Clone, Copy)]
pub(super) struct Want {
    /// An MLP's neuron values.
    pub neurons: bool,
    /// What the node writes into the residual stream (for its vocabulary readout).
    pub written: bool,
}

/// A node's expansion on the device, before the one read-back.
pub(super) struct Parts {
    pub value: Tensor<1>,
    pub children: Children,
    /// The remainder `[1]` (zero where the node has none).
    pub bias: Tensor<1>,
    /// A score's bilinear table and its labels.
    pub table: Option<(Vec<Step>, Tensor<2>)>,
    /// An MLP's neuron values `[d_mlp]`.
    pub neurons: Option<Tensor<1>>,
    /// What the node writes into the residual stream at its position `[d]`.
    pub written: Option<Tensor<1>>,
}

impl Parts {
    /// Value, children and remainder, nothing beside them.
    pub fn plain(value: Tensor<1>, children: Children, bias: Tensor<1>) -> Self {
        Self {
            value,
            children,
            bias,
            table: None,
            neurons: None,
            written: None,
        }
    }
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

impl Basis {
    /// The readout of child `step` from the basis, formed exactly as the kind's
    /// [`NodeType::child_readout`] forms it; `None` where the basis does not cover the step.
    fn readout(&self, step: Step) -> Option<Tensor<1>> {
        match (self, step) {
            (Self::Same(r), Step::Comp(_)) => Some(r.as_ref().clone()),
            (Self::Sources(src), Step::Source { pos, .. }) => {
                let Sources { ov, pattern, s1 } = src.as_ref();
                let a = pattern.clone().narrow(0, pos, 1);
                let s = s1.clone().narrow(0, pos, 1);
                Some(ov.clone() * a / s)
            }
            _ => None,
        }
    }
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
            kind: residual::Root.into(),
            pos: self.last,
            readout: self.r_root.clone(),
        }
    }

    /// The kind and position of `node`'s child `step`, `None` when it is not a child there.
    pub(super) fn child_kind(&self, node: &Node, step: Step) -> Option<(Kind, usize)> {
        let ops = node.kind.ops();
        if step == Step::Bias {
            return ops
                .has_bias()
                .then(|| (leaf::Remainder::pending(), node.pos));
        }
        ops.child_kind(self, node, step)
    }

    /// The child of `node` that `step` names, its readout from `basis` where it covers the
    /// step; `None` when it is not a child there.
    pub(super) fn node_step(
        &self,
        node: &Node,
        step: Step,
        basis: Option<&Basis>,
    ) -> Result<Option<Node>> {
        let Some((kind, pos)) = self.child_kind(node, step) else {
            return Ok(None);
        };
        let ops = node.kind.ops();
        if let Kind::Remainder(_) = kind {
            return Ok(Some(Node {
                kind: leaf::Remainder::of(ops.bias(self, node)?),
                pos,
                readout: node.readout.clone(),
            }));
        }
        let readout = match basis.and_then(|b| b.readout(step)) {
            Some(r) => r,
            None => ops.child_readout(self, node, step)?,
        };
        Ok(Some(Node { kind, pos, readout }))
    }

    /// What a vocabulary readout of a written vector at `pos` reads back: the direction
    /// `C(v) / s_final[pos]` `[d]`, whose extremes over `W_U` the model finds (on the CPU
    /// through its sketch, see `rdla_model::vocab`), or — with `W_U` resident on a GPU — the
    /// full readout `C(v) W_U / s_final[pos]` `[V]`, which rides along in the expansion's one
    /// read-back.
    pub(super) fn vocab_readout(&self, v: Tensor<1>, pos: usize) -> Tensor<1> {
        let s = self.cache.final_scale.clone().narrow(0, pos, 1);
        let c = self.c(v) / s;
        match self.full_vocab_product() {
            Some(w_u) => c
                .unsqueeze_dim::<2>(0)
                .matmul(w_u.clone())
                .squeeze_dim::<1>(0),
            None => c,
        }
    }

    /// `W_U`, when vocabulary readouts take its full product on the device.
    pub(super) fn full_vocab_product(&self) -> Option<&Tensor<2>> {
        match &self.model.weights.w_u {
            rdla_model::vocab::Unembedding::Resident(w_u) if !self.model.on_cpu() => Some(w_u),
            _ => None,
        }
    }

    pub(super) fn zero(&self) -> Tensor<1> {
        Tensor::<1>::zeros([1], self.device())
    }

    /// Component `c` at `pos`: `[1, d]`; a component this model does not have (`pos` with
    /// rotary embeddings, a layer past the last) is an error, never another component.
    pub(super) fn comp_row(&self, c: Comp, pos: usize) -> Result<Tensor<2>> {
        let i = self
            .layout
            .index(c)
            .ok_or(AttribError::UnknownComponent { comp: c })?;
        Ok(self
            .cache
            .components
            .clone()
            .narrow(0, i, 1)
            .narrow(1, pos, 1)
            .reshape([1, self.model.config.d_model]))
    }

    /// `x_c[pos] · r` for one component: `[1]` (an unknown component is an error).
    pub(super) fn comp_value(&self, c: Comp, pos: usize, r: &Tensor<1>) -> Result<Tensor<1>> {
        Ok(super::rows_dot(self.comp_row(c, pos)?, r.clone()))
    }

    /// What component `c` writes at `pos`: `[d]`.
    pub(super) fn comp_written(&self, c: Comp, pos: usize) -> Result<Tensor<1>> {
        Ok(self.comp_row(c, pos)?.reshape([self.model.config.d_model]))
    }

    /// Whether component `c` is among the first `n` of the layout (upstream of a point).
    pub(super) fn among_first(&self, c: Comp, n: usize) -> bool {
        self.layout.index(c).is_some_and(|i| i < n)
    }

    /// Steps `Comp(c)` for the first `n` components.
    pub(super) fn comp_steps(&self, n: usize) -> Vec<Step> {
        (0..n).map(|i| Step::Comp(self.layout.comp(i))).collect()
    }

    /// Steps `{p}:{c}` for the first `n` components at each of `positions`, position-major.
    pub(super) fn source_steps(
        &self,
        positions: impl IntoIterator<Item = usize>,
        n: usize,
    ) -> Vec<Step> {
        let layout = self.layout;
        positions
            .into_iter()
            .flat_map(|pos| {
                (0..n).map(move |c| Step::Source {
                    pos,
                    comp: layout.comp(c),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, Node, Want};
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
                kind: Kind::component(missing),
                pos: 1,
                readout: engine.r_root.clone(),
            };
            match node.kind.ops().value(&engine, &node) {
                Err(AttribError::UnknownComponent { comp }) => assert_eq!(comp, missing),
                Err(e) => panic!("{name}: unexpected error {e}"),
                Ok(_) => panic!("{name}: `{missing}` was given a value"),
            }
            // an expansion reports it too
            let want = Want {
                neurons: true,
                written: true,
            };
            let err = node.kind.ops().expand(&engine, &node, want).err();
            assert_eq!(
                err.map(|e| e.to_string()).as_deref(),
                Some(format!("component `{missing}` is not in this model's layout").as_str())
            );
        }
    }
}

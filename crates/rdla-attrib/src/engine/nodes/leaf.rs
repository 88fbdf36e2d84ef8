//! Leaves: the token and position embeddings (nothing further upstream), and the remainder
//! child `bias` of any node.

use burn::tensor::Tensor;
use rdla_model::model::ablate::Site;

use crate::engine::node::{Children, Kind, Node, NodeType, Parts, Want};
use crate::engine::{ChildLayout, CompLabel, Engine, NodeKind, Result};
use crate::path::Comp;

/// An embedding component (`embed` or `pos`) at a position.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Embedding(pub Comp);

impl NodeType for Embedding {
    fn public(&self) -> NodeKind {
        NodeKind::Component {
            comp: CompLabel(self.0),
        }
    }

    fn describe(&self, pos: usize) -> String {
        format!("`{}` at position {pos}", self.0)
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Cell
    }

    fn site(&self) -> Option<Site> {
        Some(match self.0 {
            Comp::Pos => Site::Pos,
            _ => Site::Embed,
        })
    }

    fn is_leaf(&self) -> bool {
        true
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        eng.comp_value(self.0, node.pos, &node.readout)
    }

    fn expand(&self, eng: &Engine<'_>, node: &Node, want: Want) -> Result<Parts> {
        let mut parts = Parts::plain(self.value(eng, node)?, Children::none(), eng.zero());
        if want.written {
            parts.written = Some(eng.comp_written(self.0, node.pos)?);
        }
        Ok(parts)
    }
}

/// The remainder child `bias` of a node, with its value `[1]` (none yet while only its kind
/// is asked for).
#[derive(Debug, Clone)]
pub(in crate::engine) struct Remainder(Option<Box<Tensor<1>>>);

impl Remainder {
    /// The kind of a `bias` child, before its value is computed.
    pub(in crate::engine) fn pending() -> Kind {
        Self(None).into()
    }

    /// A `bias` child of value `v`.
    pub(in crate::engine) fn of(v: Tensor<1>) -> Kind {
        Self(Some(Box::new(v))).into()
    }
}

impl NodeType for Remainder {
    fn public(&self) -> NodeKind {
        NodeKind::Bias
    }

    fn describe(&self, _pos: usize) -> String {
        "`bias`".into()
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Cell
    }

    fn is_leaf(&self) -> bool {
        true
    }

    fn value(&self, eng: &Engine<'_>, _node: &Node) -> Result<Tensor<1>> {
        Ok(self.0.as_deref().cloned().unwrap_or_else(|| eng.zero()))
    }

    fn expand(&self, eng: &Engine<'_>, node: &Node, _want: Want) -> Result<Parts> {
        Ok(Parts::plain(
            self.value(eng, node)?,
            Children::none(),
            eng.zero(),
        ))
    }
}

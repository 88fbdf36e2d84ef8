//! The root: the final residual stream at the last position, read along the target
//! direction. Its children are the components of that residual stream; it has no remainder
//! (`b_U` is excluded by definition).

use burn::tensor::Tensor;

use crate::engine::node::{Basis, Children, Kind, Node, NodeType, Parts, Want};
use crate::engine::{ChildLayout, Engine, NodeKind, Result};
use crate::path::Step;

/// The target logit (or logit difference) at the last position.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Root;

impl NodeType for Root {
    fn public(&self) -> NodeKind {
        NodeKind::Root
    }

    fn describe(&self, _pos: usize) -> String {
        "the root".into()
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Components
    }

    fn value(&self, eng: &Engine<'_>, _node: &Node) -> Result<Tensor<1>> {
        Ok(eng.root_value_tensor())
    }

    fn expand(&self, eng: &Engine<'_>, node: &Node, _want: Want) -> Result<Parts> {
        let n = eng.layout.n();
        let children = Children {
            steps: eng.comp_steps(n),
            values: Some(crate::engine::rows_dot(
                eng.comps_at(n, node.pos),
                node.readout.clone(),
            )),
        };
        Ok(Parts::plain(self.value(eng, node)?, children, eng.zero()))
    }

    fn child_kind(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        component_child(eng, node, step, eng.layout.n())
    }

    fn basis(&self, _eng: &Engine<'_>, node: &Node) -> Result<Option<Basis>> {
        Ok(Some(Basis::Same(Box::new(node.readout.clone()))))
    }

    fn valid(&self, eng: &Engine<'_>, _node: &Node) -> String {
        eng.layout.describe_prefix(eng.layout.n())
    }
}

/// The child `step` of a residual node whose stream holds the first `n` components: a
/// component among them, at the node's position.
pub(in crate::engine) fn component_child(
    eng: &Engine<'_>,
    node: &Node,
    step: Step,
    n: usize,
) -> Option<(Kind, usize)> {
    match step {
        Step::Comp(c) if eng.among_first(c, n) => Some((Kind::component(c), node.pos)),
        _ => None,
    }
}

//! An attention layer's output at a position: its children are the layer's heads, its
//! remainder `b_O · r`, both read along the layer's readout pulled back through the frozen
//! post-norm where the model has one (the heads' readout `r ⊙ w_post / s_post`).

use burn::tensor::Tensor;
use rdla_model::model::ablate::Site;

use super::head::Head;
use crate::engine::node::{Children, Kind, Node, NodeType, Parts, Want};
use crate::engine::{ChildLayout, CompLabel, Engine, NodeKind, Result};
use crate::path::{Comp, Step};
use rdla_model::model::Blocks;

/// Attention layer `layer`'s output.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct AttnLayer {
    pub layer: usize,
}

impl AttnLayer {
    /// The readout of the layer's heads and `b_O`: `[1, d]`.
    fn inner(self, eng: &Engine<'_>, b: &Blocks, node: &Node) -> Tensor<2> {
        let l = self.layer;
        eng.post_readout(
            b,
            &(l..l + 1),
            node.pos,
            node.readout.clone().unsqueeze_dim(0),
            false,
        )
    }

    /// `b_O · r'` from the heads' readout `[1, d]`.
    fn bias_of(b: &Blocks, inner: Tensor<2>) -> Tensor<1> {
        (b.b_o.clone() * inner).sum()
    }
}

impl NodeType for AttnLayer {
    fn public(&self) -> NodeKind {
        NodeKind::Component {
            comp: CompLabel(Comp::Attn(self.layer)),
        }
    }

    fn describe(&self, pos: usize) -> String {
        format!("`L{}.attn` at position {pos}", self.layer)
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Heads
    }

    fn site(&self) -> Option<Site> {
        Some(Site::Attn(self.layer))
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        eng.comp_value(Comp::Attn(self.layer), node.pos, &node.readout)
    }

    fn bias(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let b = eng.blocks(self.layer)?;
        Ok(Self::bias_of(&b, self.inner(eng, &b, node)))
    }

    fn expand(&self, eng: &Engine<'_>, node: &Node, want: Want) -> Result<Parts> {
        let l = self.layer;
        let value = self.value(eng, node)?; // first: an unknown layer is an error here
        let b = eng.blocks(l)?;
        let inner = self.inner(eng, &b, node);
        let children = Children {
            steps: (0..eng.model.config.n_heads).map(Step::Head).collect(),
            values: Some(
                eng.head_values(&b, &(l..l + 1), node.pos, inner.clone())?
                    .squeeze_dim::<1>(0),
            ),
        };
        let mut parts = Parts::plain(value, children, Self::bias_of(&b, inner));
        if want.written {
            parts.written = Some(eng.comp_written(Comp::Attn(l), node.pos)?);
        }
        Ok(parts)
    }

    fn child_kind(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        match step {
            Step::Head(head) if head < eng.model.config.n_heads => Some((
                Head {
                    layer: self.layer,
                    head,
                }
                .into(),
                node.pos,
            )),
            _ => None,
        }
    }

    fn child_readout(&self, eng: &Engine<'_>, node: &Node, _step: Step) -> Result<Tensor<1>> {
        Ok(self
            .inner(eng, &eng.blocks(self.layer)?, node)
            .squeeze_dim::<1>(0))
    }

    fn valid(&self, eng: &Engine<'_>, _node: &Node) -> String {
        format!("H0 … H{}, bias", eng.model.config.n_heads - 1)
    }
}

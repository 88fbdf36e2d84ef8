//! An MLP's output at a position, and one of its neurons. Both are residual nodes: their
//! children are the components of the MLP's input stream (`resid_mid`, or `resid_pre` in
//! parallel-residual models) read through the frozen gate, `C(W_in (g ⊙ W_out r)) / s2`; an
//! MLP also lists its neurons `N{n}` (an alternative decomposition, shown beside the node,
//! not among its children). An MLP's remainder is `((g ⊙ b_in) W_out + b_out) · r`, a
//! neuron's `g_n b_in[n] (W_out[n] · r)`.

use burn::tensor::Tensor;
use rdla_model::model::Blocks;
use rdla_model::model::ablate::Site;

use super::residual::component_child;
use crate::engine::node::{Basis, Children, Kind, Node, NodeType, Parts, Want};
use crate::engine::readout::MlpParts;
use crate::engine::{ChildLayout, CompLabel, Engine, NodeKind, Result};
use crate::path::{Comp, Step};

/// MLP `layer`'s output.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Mlp {
    pub layer: usize,
}

/// Neuron `n` of MLP `layer` (its readout is the MLP's).
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Neuron {
    pub layer: usize,
    pub n: usize,
}

/// The parts of MLP `l` at the node's position, for its readout.
/// The parts of MLP `l` at the node's position, for its readout, with the layer's blocks.
fn parts(eng: &Engine<'_>, l: usize, node: &Node) -> Result<(Blocks, MlpParts)> {
    let b = eng.whole_blocks(l)?;
    let p = eng.mlp_parts(
        &b,
        &(l..l + 1),
        node.pos,
        node.readout.clone().unsqueeze_dim(0),
    )?;
    Ok((b, p))
}

/// The components of the MLP's input stream, read along the parts' input readout.
fn inputs(
    eng: &Engine<'_>,
    b: &Blocks,
    l: usize,
    node: &Node,
    parts: &MlpParts,
) -> Result<Children> {
    let n = eng.layout.mid(l);
    let read = eng.mlp_input_readout(b, &(l..l + 1), node.pos, parts)?;
    Ok(Children {
        steps: eng.comp_steps(n),
        values: Some(crate::engine::rows_dot(
            eng.comps_at(n, node.pos),
            read.squeeze_dim::<1>(0),
        )),
    })
}

impl Mlp {
    fn input_readout(self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let l = self.layer;
        let (b, p) = parts(eng, l, node)?;
        Ok(eng
            .mlp_input_readout(&b, &(l..l + 1), node.pos, &p)?
            .squeeze_dim::<1>(0))
    }
}

impl NodeType for Mlp {
    fn public(&self) -> NodeKind {
        NodeKind::Component {
            comp: CompLabel(Comp::Mlp(self.layer)),
        }
    }

    fn describe(&self, pos: usize) -> String {
        format!("`L{}.mlp` at position {pos}", self.layer)
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Components
    }

    fn site(&self) -> Option<Site> {
        Some(Site::Mlp(self.layer))
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        eng.comp_value(Comp::Mlp(self.layer), node.pos, &node.readout)
    }

    fn bias(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let (b, p) = parts(eng, self.layer, node)?;
        eng.mlp_remainder(&b, &p)
    }

    /// Value, inputs, remainder, neurons and output from one pass over `W_out` and one
    /// activation.
    fn expand(&self, eng: &Engine<'_>, node: &Node, want: Want) -> Result<Parts> {
        let l = self.layer;
        let value = self.value(eng, node)?; // first: an unknown layer is an error here
        let (b, p) = parts(eng, l, node)?;
        let mut out = Parts::plain(
            value,
            inputs(eng, &b, l, node, &p)?,
            eng.mlp_remainder(&b, &p)?,
        );
        if want.neurons {
            // a_n (W_out[n] · r); with b_out · r they add up to the MLP's value
            out.neurons = Some((eng.mlp_activations(&p) * p.wout_r()).squeeze_dim::<1>(0));
        }
        if want.written {
            out.written = Some(eng.comp_written(Comp::Mlp(l), node.pos)?);
        }
        Ok(out)
    }

    fn child_kind(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        match step {
            Step::Neuron(n) if n < eng.model.config.d_mlp => Some((
                Neuron {
                    layer: self.layer,
                    n,
                }
                .into(),
                node.pos,
            )),
            _ => component_child(eng, node, step, eng.layout.mid(self.layer)),
        }
    }

    fn child_readout(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Result<Tensor<1>> {
        Ok(match step {
            Step::Neuron(_) => node.readout.clone(), // a neuron reads along the MLP's readout
            _ => self.input_readout(eng, node)?,
        })
    }

    fn basis(&self, eng: &Engine<'_>, node: &Node) -> Result<Option<Basis>> {
        Ok(Some(Basis::Same(Box::new(self.input_readout(eng, node)?))))
    }

    fn valid(&self, eng: &Engine<'_>, _node: &Node) -> String {
        format!(
            "{}, N0 … N{}, bias",
            eng.layout.describe_prefix(eng.layout.mid(self.layer)),
            eng.model.config.d_mlp - 1
        )
    }
}

impl Neuron {
    fn parts(self, eng: &Engine<'_>, node: &Node) -> Result<(Blocks, MlpParts)> {
        let (b, p) = parts(eng, self.layer, node)?;
        Ok((b, eng.only_neuron(&p, self.n)))
    }
}

impl NodeType for Neuron {
    fn public(&self) -> NodeKind {
        NodeKind::Neuron {
            layer: self.layer,
            neuron: self.n,
        }
    }

    fn describe(&self, pos: usize) -> String {
        format!("neuron L{}.mlp/N{} at position {pos}", self.layer, self.n)
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Components
    }

    fn site(&self) -> Option<Site> {
        Some(Site::Neuron {
            layer: self.layer,
            neuron: self.n,
        })
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let (_, p) = parts(eng, self.layer, node)?;
        Ok((eng.mlp_activations(&p) * p.wout_r())
            .narrow(1, self.n, 1)
            .reshape([1]))
    }

    fn bias(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let (b, p) = self.parts(eng, node)?;
        eng.mlp_remainder(&b, &p)
    }

    /// Value, inputs, remainder and output from one pass over `W_out` and one activation.
    fn expand(&self, eng: &Engine<'_>, node: &Node, want: Want) -> Result<Parts> {
        let (l, n) = (self.layer, self.n);
        let (b, whole) = parts(eng, l, node)?;
        let a = eng.mlp_activations(&whole).narrow(1, n, 1).reshape([1]);
        let value = a.clone() * whole.wout_r().narrow(1, n, 1).reshape([1]);
        let p = eng.only_neuron(&whole, n);
        let mut out = Parts::plain(
            value,
            inputs(eng, &b, l, node, &p)?,
            eng.mlp_remainder(&b, &p)?,
        );
        if want.written {
            out.written = Some(eng.neuron_output(&b, l, node.pos, n, a)?);
        }
        Ok(out)
    }

    fn child_kind(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        component_child(eng, node, step, eng.layout.mid(self.layer))
    }

    fn child_readout(&self, eng: &Engine<'_>, node: &Node, _step: Step) -> Result<Tensor<1>> {
        let l = self.layer;
        let (b, p) = self.parts(eng, node)?;
        Ok(eng
            .mlp_input_readout(&b, &(l..l + 1), node.pos, &p)?
            .squeeze_dim::<1>(0))
    }

    fn basis(&self, eng: &Engine<'_>, node: &Node) -> Result<Option<Basis>> {
        let r = self.child_readout(eng, node, Step::Bias)?;
        Ok(Some(Basis::Same(Box::new(r))))
    }

    fn valid(&self, eng: &Engine<'_>, _node: &Node) -> String {
        format!(
            "{}, bias",
            eng.layout.describe_prefix(eng.layout.mid(self.layer))
        )
    }
}

//! One attention head at a destination position `q`. Its value is its own output read along
//! `r`, `z W_O · r`, with `z = Σ_p A[q,p] v[p]` rebuilt from the cached values and the
//! recomputed pattern row (no `z` is cached); its children are its sources `{p}:{component}`:
//! every component of `resid_pre` at every visible position `p`, read through the head's OV
//! circuit and the frozen pattern, `r' = A[q,p] · C(W_V W_O r) / s1[p]`; its remainder is the
//! value bias `Σ_p A[q,p] b_V W_O · r` (0 after folding).

use burn::tensor::Tensor;
use rdla_model::model::ablate::Site;

use super::score::{Score, ScoreId};
use crate::engine::node::{Basis, Children, Kind, Node, NodeType, Parts, Sources, Want};
use crate::engine::readout::layers;
use crate::engine::{ChildLayout, Engine, NodeKind, Result};
use crate::path::{Step, Versus};

/// Head `head` of attention layer `layer`, at its destination position.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Head {
    pub layer: usize,
    pub head: usize,
}

impl Head {
    /// The head's OV readout `C(W_V W_O r)` `[1, 1, d]` and value bias per unit attention
    /// `[1, 1]`.
    fn ov(self, eng: &Engine<'_>, node: &Node) -> Result<(Tensor<3>, Tensor<2>)> {
        let b = eng.blocks(self.layer)?;
        let (ov, bias) = eng.ov_readouts(&b, node.readout.clone().unsqueeze_dim(0));
        Ok((ov.narrow(1, self.head, 1), bias.narrow(1, self.head, 1)))
    }

    /// The head's pattern row `[1, 1, P]`.
    fn pattern(self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<3>> {
        Ok(eng
            .pattern_rows(self.layer..self.layer + 1, node.pos)?
            .narrow(1, self.head, 1))
    }

    /// The `{p}:{c}` children from the head's OV readout `[1, 1, d]` and pattern row
    /// `[1, 1, P]`: the positions it sees, the components upstream of its layer.
    fn sources(self, eng: &Engine<'_>, node: &Node, ov: Tensor<3>, a: Tensor<3>) -> Children {
        let l = self.layer;
        let (first, count) = eng.visible(l, node.pos);
        let n = eng.layout.pre(l);
        Children {
            steps: eng.source_steps(first..first + count, n),
            values: Some(eng.head_source_values(l, first, count, ov, a)), // [count·n]
        }
    }
}

impl NodeType for Head {
    fn public(&self) -> NodeKind {
        NodeKind::Head {
            layer: self.layer,
            head: self.head,
        }
    }

    fn describe(&self, pos: usize) -> String {
        format!("head L{}.H{} at position {pos}", self.layer, self.head)
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Sources { layer: self.layer }
    }

    fn site(&self) -> Option<Site> {
        Some(Site::Head {
            layer: self.layer,
            head: self.head,
        })
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let l = self.layer;
        Ok(eng
            .head_values(
                &eng.blocks(l)?,
                &(l..l + 1),
                node.pos,
                node.readout.clone().unsqueeze_dim(0),
            )?
            .narrow(1, self.head, 1)
            .reshape([1]))
    }

    fn bias(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let (_, bias) = self.ov(eng, node)?;
        Ok(bias.reshape([1]) * self.pattern(eng, node)?.sum())
    }

    /// Value, sources, remainder and what the head writes, from one `W_O[l,h] r`, one OV
    /// readout of this head alone and one `z` (the batched formulas compute every head of the
    /// layer).
    fn expand(&self, eng: &Engine<'_>, node: &Node, want: Want) -> Result<Parts> {
        let (l, h) = (self.layer, self.head);
        let w = eng.blocks(l)?;
        let (d, dh) = (eng.model.config.d_model, eng.model.config.d_head);
        let hk = h / eng.group();
        let w_o = w.w_o.clone().narrow(1, h, 1).reshape([dh, d]);
        let wo_r = w_o.clone().matmul(node.readout.clone().reshape([d, 1])); // [dh, 1]
        let z = eng
            .z_at(&(l..l + 1), node.pos)?
            .narrow(1, h, 1)
            .reshape([1, dh]);
        let value = z.clone().matmul(wo_r.clone()).reshape([1]);
        let ov = eng.c(w
            .w_v
            .clone()
            .narrow(1, hk, 1)
            .reshape([d, dh])
            .matmul(wo_r.clone())
            .reshape([1, 1, d]));
        let per_unit = w
            .b_v
            .clone()
            .narrow(1, hk, 1)
            .reshape([1, dh])
            .matmul(wo_r)
            .reshape([1]);
        let a = self.pattern(eng, node)?;
        let bias = per_unit * a.clone().sum();
        let mut parts = Parts::plain(value, self.sources(eng, node, ov, a), bias);
        if want.written {
            // z_h W_O[h], through the frozen post-norm where there is one
            let written = z.matmul(w_o).reshape([d]);
            parts.written = Some(eng.post_written(&w, l, node.pos, written, false));
        }
        Ok(parts)
    }

    fn child_kind(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        let l = self.layer;
        let visible = |k: usize| k < eng.n_pos() && eng.allowed(l, node.pos, k);
        match step {
            Step::Score { key, versus } => {
                let ok = visible(key)
                    && match versus {
                        Versus::Nothing | Versus::Mean => true,
                        Versus::Key(k2) => k2 != key && visible(k2),
                    };
                let id = ScoreId {
                    layer: l,
                    head: self.head,
                    key,
                    versus,
                };
                ok.then(|| (Score(id).into(), node.pos))
            }
            Step::Source { pos, comp }
                if visible(pos) && eng.among_first(comp, eng.layout.pre(l)) =>
            {
                Some((Kind::component(comp), pos))
            }
            _ => None,
        }
    }

    fn child_readout(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Result<Tensor<1>> {
        let Step::Source { pos, .. } = step else {
            return Ok(node.readout.clone()); // a score reads the head's own readout
        };
        let l = self.layer;
        let (ov, _) = self.ov(eng, node)?;
        let a = self.pattern(eng, node)?.narrow(2, pos, 1).reshape([1]);
        let s = layers(&eng.cache.ln1_scale, &(l..l + 1))
            .narrow(1, pos, 1)
            .reshape([1]);
        Ok(ov.reshape([eng.model.config.d_model]) * a / s)
    }

    /// What every source child reads along: the OV readout `[d]`, the pattern row `[P]` and
    /// the layer's input-norm scales `[P]` (see [`NodeType::child_readout`]).
    fn basis(&self, eng: &Engine<'_>, node: &Node) -> Result<Option<Basis>> {
        let l = self.layer;
        let (ov, _) = self.ov(eng, node)?;
        Ok(Some(Basis::Sources(Box::new(Sources {
            ov: ov.reshape([eng.model.config.d_model]),
            pattern: self.pattern(eng, node)?.reshape([eng.n_pos()]),
            s1: layers(&eng.cache.ln1_scale, &(l..l + 1)).reshape([eng.n_pos()]),
        }))))
    }

    fn valid(&self, eng: &Engine<'_>, node: &Node) -> String {
        let l = self.layer;
        let (first, _) = eng.visible(l, node.pos);
        format!(
            "{{p}}:{{component}} with p in {first}..={q} and component in {}, bias, or a score \
             qk:{{k}} / qk:{{k}}-{{k2}} / qk:{{k}}-mean with k, k2 in {first}..={q}",
            eng.layout.describe_prefix(eng.layout.pre(l)),
            q = node.pos,
        )
    }
}

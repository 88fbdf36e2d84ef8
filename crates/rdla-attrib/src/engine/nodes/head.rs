//! One attention head at a destination position `q`. Its value is its own output read along
//! `r`, `z W_O · r`, with `z = Σ_p A[q,p] v[p]` rebuilt from the cached values and the
//! recomputed pattern row (no `z` is cached); its children are its sources `{p}:{component}`:
//! every component of `resid_pre` at every visible position `p`, read through the head's OV
//! circuit and the frozen pattern, `r' = A[q,p] · C(W_V W_O r) / s1[p]`; its remainder is the
//! value bias `Σ_p A[q,p] b_V W_O · r` (0 after folding).

use burn::tensor::Tensor;

use crate::engine::Engine;
use crate::engine::node::{Children, Kind, Node};
use crate::engine::nodes::score::ScoreId;
use crate::engine::readout::layers;
use crate::path::{Step, Versus};

/// The head's OV readout `C(W_V W_O r)` `[1, 1, d]` and value bias per unit attention `[1, 1]`.
fn ov(eng: &Engine<'_>, node: &Node, (l, h): (usize, usize)) -> (Tensor<3>, Tensor<2>) {
    let (ov, bias) = eng.ov_readouts(&(l..l + 1), node.readout.clone().unsqueeze_dim(0));
    (ov.narrow(1, h, 1), bias.narrow(1, h, 1))
}

/// The head's pattern row `[1, 1, P]`.
fn pattern(eng: &Engine<'_>, node: &Node, (l, h): (usize, usize)) -> Tensor<3> {
    eng.pattern_rows(l..l + 1, node.pos).narrow(1, h, 1)
}

/// The head's value, children and remainder together, from one `W_O[l,h] r` and one OV
/// readout of this head alone (an expansion needs all three; the batched formulas compute every
/// head of the layer).
pub(in crate::engine) fn all(
    eng: &Engine<'_>,
    node: &Node,
    id: (usize, usize),
) -> (Tensor<1>, Children, Tensor<1>) {
    let (l, h) = id;
    let w = &eng.model.weights;
    let (d, dh) = (eng.model.config.d_model, eng.model.config.d_head);
    let hk = h / eng.group();
    let wo_r = w
        .w_o
        .clone()
        .narrow(0, l, 1)
        .narrow(1, h, 1)
        .reshape([dh, d])
        .matmul(node.readout.clone().reshape([d, 1])); // [dh, 1]
    let z = eng
        .z_at(&(l..l + 1), node.pos)
        .narrow(1, h, 1)
        .reshape([1, dh]);
    let value = z.matmul(wo_r.clone()).reshape([1]);
    let ov = eng.c(w
        .w_v
        .clone()
        .narrow(0, l, 1)
        .narrow(1, hk, 1)
        .reshape([d, dh])
        .matmul(wo_r.clone())
        .reshape([1, 1, d]));
    let per_unit = w
        .b_v
        .clone()
        .narrow(0, l, 1)
        .narrow(1, hk, 1)
        .reshape([1, dh])
        .matmul(wo_r)
        .reshape([1]);
    let a = pattern(eng, node, id);
    let bias = per_unit * a.clone().sum();
    (value, source_children(eng, node, l, ov, a), bias)
}

/// The `{p}:{c}` children from the head's OV readout `[1, 1, d]` and pattern row `[1, 1, P]`.
fn source_children(
    eng: &Engine<'_>,
    node: &Node,
    l: usize,
    ov: Tensor<3>,
    a: Tensor<3>,
) -> Children {
    let (first, count) = eng.visible(l, node.pos);
    let n = eng.layout.pre(l);
    let vals = eng.head_source_values(l, first, count, ov, a); // [count·n]
    let layout = eng.layout;
    Children {
        steps: (first..first + count)
            .flat_map(|p| {
                (0..n).map(move |c| Step::Source {
                    pos: p,
                    comp: layout.comp(c),
                })
            })
            .collect(),
        values: Some(vals),
    }
}

/// What every source child of the head reads along: the OV readout `[d]`, the pattern row
/// `[P]` and the layer's input-norm scales `[P]` (see [`step`]).
pub(in crate::engine) fn basis(
    eng: &Engine<'_>,
    node: &Node,
    id: (usize, usize),
) -> crate::engine::node::Basis {
    let l = id.0;
    let (ov, _) = ov(eng, node, id);
    crate::engine::node::Basis::Sources(Box::new(crate::engine::node::Sources {
        ov: ov.reshape([eng.model.config.d_model]),
        pattern: pattern(eng, node, id).reshape([eng.n_pos()]),
        s1: layers(&eng.cache.ln1_scale, &(l..l + 1)).reshape([eng.n_pos()]),
    }))
}

pub(in crate::engine) fn value(eng: &Engine<'_>, node: &Node, (l, h): (usize, usize)) -> Tensor<1> {
    eng.head_values(&(l..l + 1), node.pos, node.readout.clone().unsqueeze_dim(0))
        .narrow(1, h, 1)
        .reshape([1])
}

pub(in crate::engine) fn bias(eng: &Engine<'_>, node: &Node, id: (usize, usize)) -> Tensor<1> {
    let (_, bias) = ov(eng, node, id);
    bias.reshape([1]) * pattern(eng, node, id).sum()
}

pub(in crate::engine) fn step(
    eng: &Engine<'_>,
    node: &Node,
    id: (usize, usize),
    step: Step,
) -> Option<Node> {
    let l = id.0;
    if let Step::Score { key, versus } = step {
        let visible = |k: usize| k < eng.n_pos() && eng.allowed(l, node.pos, k);
        let ok = visible(key)
            && match versus {
                Versus::Nothing | Versus::Mean => true,
                Versus::Key(k2) => k2 != key && visible(k2),
            };
        return ok.then(|| Node {
            kind: Kind::Score(ScoreId {
                layer: l,
                head: id.1,
                key,
                versus,
            }),
            pos: node.pos,
            readout: node.readout.clone(),
        });
    }
    let Step::Source { pos, comp } = step else {
        return None;
    };
    let up = eng
        .layout
        .index(comp)
        .is_some_and(|i| i < eng.layout.pre(l));
    if !(pos < eng.n_pos() && eng.allowed(l, node.pos, pos) && up) {
        return None;
    }
    let (ov, _) = ov(eng, node, id);
    let a = pattern(eng, node, id).narrow(2, pos, 1).reshape([1]);
    let s = layers(&eng.cache.ln1_scale, &(l..l + 1))
        .narrow(1, pos, 1)
        .reshape([1]);
    Some(Node {
        kind: Kind::Comp(comp),
        pos,
        readout: ov.reshape([eng.model.config.d_model]) * a / s,
    })
}

pub(in crate::engine) fn valid(eng: &Engine<'_>, node: &Node, l: usize) -> String {
    let (first, _) = eng.visible(l, node.pos);
    format!(
        "{{p}}:{{component}} with p in {first}..={q} and component in {}, bias, or a score \
         qk:{{k}} / qk:{{k}}-{{k2}} / qk:{{k}}-mean with k, k2 in {first}..={q}",
        eng.layout.describe_prefix(eng.layout.pre(l)),
        q = node.pos,
    )
}

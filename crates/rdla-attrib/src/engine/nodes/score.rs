//! Attention scores (DESIGN.md §1, "Attention scores"): under a head `(l, h)` at destination
//! `q`, `qk:{k}` is the pre-softmax score `s = σ q̂_q · k̂_k` (rotated, biased, scaled; raw, before
//! any soft cap), and `qk:{k}-{k2}` / `qk:{k}-mean` are contrasts `Σ_j w_j s(q, j)` with
//! `w = e_k − e_k2` or `w = e_k − A[l,h,q,:]`.
//!
//! A score node has no children of its own in the sum: its children `q` and `k` are two
//! alternative complete decompositions of the same value (keys frozen / query frozen), and its
//! table is the full bilinear split, query components × key components (+ bias row and
//! column), whose cells add up to the score. Below `q` and `k` the components are ordinary
//! readout nodes, so the recursion continues as anywhere else.

use burn::tensor::{Int, Tensor, TensorData};

use crate::engine::node::{Children, Kind, Node, NodeType, Parts, Want};
use crate::engine::readout::layers;
use crate::engine::{ChildLayout, Engine, NodeKind, Result};
use crate::path::{Side, Step, Versus};

/// Layer `l`, head `h` of a weight stacked over layers and heads (`[L, H, …]`), keeping both
/// axes (reshape it to the shape wanted).
fn head_slice<const D: usize>(t: &Tensor<D>, l: usize, h: usize) -> Tensor<D> {
    t.clone().narrow(0, l, 1).narrow(1, h, 1)
}

/// Which score (or contrast of scores) a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::engine) struct ScoreId {
    pub layer: usize,
    pub head: usize,
    pub key: usize,
    pub versus: Versus,
}

/// The keys a score combines, ascending, and their weights `w` `[nk]` on the device.
struct Keys {
    keys: Vec<usize>,
    w: Tensor<1>,
}

impl Engine<'_> {
    fn int_index(&self, idx: &[usize]) -> Tensor<1, Int> {
        let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        Tensor::from_data(TensorData::new(v, [idx.len()]), self.device())
    }

    fn score_keys(&self, id: ScoreId, q: usize) -> Result<Keys> {
        let consts = |pairs: Vec<(usize, f32)>| {
            let (keys, w): (Vec<usize>, Vec<f32>) = pairs.into_iter().unzip();
            let n = keys.len();
            Keys {
                keys,
                w: Tensor::from_data(TensorData::new(w, [n]), self.device()),
            }
        };
        Ok(match id.versus {
            Versus::Nothing => consts(vec![(id.key, 1.0)]),
            Versus::Key(k2) => {
                let mut pairs = vec![(id.key, 1.0), (k2, -1.0)];
                pairs.sort_by_key(|&(k, _)| k);
                consts(pairs)
            }
            Versus::Mean => {
                let (first, count) = self.visible(id.layer, q);
                let row = self
                    .pattern_rows(id.layer..id.layer + 1, q)?
                    .narrow(1, id.head, 1)
                    .reshape([self.n_pos()])
                    .narrow(0, first, count);
                Keys {
                    keys: (first..first + count).collect(),
                    w: self.one_hot(id.key - first, count) - row,
                }
            }
        })
    }

    /// Rotate each row of `x [rows, dh]` with layer `l`'s rotary embedding to position `positions[i]` (`inverse`: back from it);
    /// the identity without rotary embeddings.
    fn rotate_rows(&self, l: usize, x: Tensor<2>, positions: &[usize], inverse: bool) -> Tensor<2> {
        match &self.cache.rotary {
            Some(r) => r.layer(l).apply_rows(x, positions, inverse),
            None => x,
        }
    }

    /// The frozen per-head query (`key: false`, head `h`) or key (`key: true`, key/value head
    /// `h`) norm of layer `l` at `positions`, as a diagonal factor `w / s[l, h, p]`:
    /// `[n, dh]` (`None` without q/k norms). It acts before the rotary map.
    fn qk_norm_factor(
        &self,
        l: usize,
        h: usize,
        positions: &[usize],
        key: bool,
    ) -> Result<Option<Tensor<2>>> {
        let Some((sq, sk)) = self.cache.qk_scale.as_ref() else {
            return Ok(None);
        };
        let Some((wq, wk)) = self.blocks(l)?.qk_norm else {
            return Ok(None);
        };
        let (w, s) = if key { (wk, sk) } else { (wq, sq) };
        let dh = self.model.config.d_head;
        let p = self.n_pos();
        let scale = head_slice(s, l, h)
            .reshape([p])
            .select(0, self.int_index(positions)); // [n]
        Ok(Some(w.reshape([1, dh]) / scale.unsqueeze_dim::<2>(1)))
    }

    /// `x [n, dh] ⊙ factor` where there is a q/k norm.
    fn times(x: Tensor<2>, factor: Option<Tensor<2>>) -> Tensor<2> {
        match factor {
            Some(f) => x * f,
            None => x,
        }
    }

    /// The score's scale `σ`.
    fn sigma(&self) -> f32 {
        self.model.config.attn_scale
    }

    /// The rotated query `q̂` of head `h` at `q`: `[1, dh]`.
    fn q_hat(&self, l: usize, h: usize, q: usize) -> Result<Tensor<2>> {
        let dh = self.model.config.d_head;
        Ok(self
            .model
            .q_at(self.cache, l..l + 1, q)?
            .narrow(1, h, 1)
            .reshape([1, dh]))
    }

    /// The rotated keys `k̂` of key/value head `hk` at `keys`: `[nk, dh]`.
    fn k_hats(&self, l: usize, hk: usize, keys: &[usize]) -> Tensor<2> {
        let (p, dh) = (self.n_pos(), self.model.config.d_head);
        self.cache
            .k
            .clone()
            .narrow(0, l, 1)
            .narrow(1, hk, 1)
            .reshape([p, dh])
            .select(0, self.int_index(keys))
    }

    /// `s1_l` at `positions`: `[n]`.
    fn s1_at(&self, l: usize, positions: &[usize]) -> Tensor<1> {
        layers(&self.cache.ln1_scale, &(l..l + 1))
            .reshape([self.n_pos()])
            .select(0, self.int_index(positions))
    }

    /// The weighted key `k̂_w = Σ_j w_j k̂_j`: `[1, dh]`.
    fn k_hat_w(&self, id: ScoreId, keys: &Keys) -> Tensor<2> {
        let hk = id.head / self.group();
        let nk = keys.keys.len();
        keys.w
            .clone()
            .reshape([1, nk])
            .matmul(self.k_hats(id.layer, hk, &keys.keys))
    }

    /// The score (or contrast) value `σ q̂ · k̂_w`: `[1]`.
    fn score_value(&self, id: ScoreId, q: usize, keys: &Keys) -> Result<Tensor<1>> {
        Ok((self.q_hat(id.layer, id.head, q)? * self.k_hat_w(id, keys))
            .sum()
            .mul_scalar(self.sigma()))
    }

    /// The query side: the readout of the components at `q`,
    /// `r_q = σ C(W_Q[h] ρ_q^T k̂_w) / s1[q]` `[d]`, and its bias `σ b_Q[h] · ρ_q^T k̂_w` `[1]`.
    fn query_side(&self, id: ScoreId, q: usize, keys: &Keys) -> Result<(Tensor<1>, Tensor<1>)> {
        let w = self.blocks(id.layer)?;
        let (d, dh) = (self.model.config.d_model, self.model.config.d_head);
        let (l, h) = (id.layer, id.head);
        let y = Self::times(
            self.rotate_rows(l, self.k_hat_w(id, keys), &[q], true),
            self.qk_norm_factor(l, h, &[q], false)?,
        ); // [1, dh]
        let w_q = head_slice(&w.w_q, 0, h).reshape([d, dh]);
        let r = self.c(w_q.matmul(y.clone().transpose()).reshape([d])) / self.s1_at(l, &[q])
            * self.sigma();
        let b_q = head_slice(&w.b_q, 0, h).reshape([1, dh]);
        Ok((r, (b_q * y).sum().mul_scalar(self.sigma())))
    }

    /// The key side: one readout per key, weighted, `w_j σ C(W_K[h'] ρ_j^T q̂) / s1[j]`
    /// `[nk, d]`, and the bias `Σ_j w_j σ b_K[h'] · ρ_j^T q̂` `[1]`.
    fn key_side(&self, id: ScoreId, q: usize, keys: &Keys) -> Result<(Tensor<2>, Tensor<1>)> {
        let w = self.blocks(id.layer)?;
        let (d, dh) = (self.model.config.d_model, self.model.config.d_head);
        let (l, hk) = (id.layer, id.head / self.group());
        let nk = keys.keys.len();
        let y = Self::times(
            self.rotate_rows(
                l,
                self.q_hat(l, id.head, q)?.expand([nk, dh]),
                &keys.keys,
                true,
            ),
            self.qk_norm_factor(l, hk, &keys.keys, true)?,
        ); // [nk, dh]
        let w_k = head_slice(&w.w_k, 0, hk).reshape([d, dh]);
        let weight = (keys.w.clone() / self.s1_at(l, &keys.keys)).mul_scalar(self.sigma());
        let r = self.c(y.clone().matmul(w_k.transpose())) * weight.unsqueeze_dim::<2>(1); // [nk, d]
        let b_k = head_slice(&w.b_k, 0, hk).reshape([dh, 1]);
        let bias = (y.matmul(b_k).reshape([nk]) * keys.w.clone())
            .sum()
            .mul_scalar(self.sigma());
        Ok((r, bias))
    }

    /// The bilinear table `[C'+1, C'+1]` (query components at `q` + bias × key components +
    /// bias, each key column summed over the keys with their weights), and its labels.
    fn score_table(&self, id: ScoreId, q: usize, keys: &Keys) -> Result<(Vec<Step>, Tensor<2>)> {
        let w = self.blocks(id.layer)?;
        let (d, dh) = (self.model.config.d_model, self.model.config.d_head);
        let (l, h, hk) = (id.layer, id.head, id.head / self.group());
        let n = self.layout.pre(l);
        let nk = keys.keys.len();

        let w_q = head_slice(&w.w_q, 0, h).reshape([d, dh]);
        let b_q = head_slice(&w.b_q, 0, h).reshape([1, dh]);
        let xq = self.c(self.comps_at(n, q)) / self.s1_at(l, &[q]).unsqueeze_dim::<2>(1); // [n, d]
        let q_parts = Self::times(
            Tensor::cat(vec![xq.matmul(w_q), b_q], 0), // [n+1, dh]
            self.qk_norm_factor(l, h, &[q], false)?,
        );
        let q_parts = self.rotate_rows(l, q_parts, &vec![q; n + 1], false);

        let w_k = head_slice(&w.w_k, 0, hk).reshape([1, d, dh]);
        let b_k = head_slice(&w.b_k, 0, hk).reshape([1, 1, dh]);
        let xk = self
            .c(self
                .cache
                .components
                .clone()
                .narrow(0, 0, n)
                .select(1, self.int_index(&keys.keys))
                .swap_dims(0, 1)) // [nk, n, d]
            / self.s1_at(l, &keys.keys).reshape([nk, 1, 1]);
        let mut k_parts = Tensor::cat(
            vec![xk.matmul(w_k.expand([nk, d, dh])), b_k.expand([nk, 1, dh])],
            1,
        ); // [nk, n+1, dh]
        if let Some(f) = self.qk_norm_factor(l, hk, &keys.keys, true)? {
            k_parts = k_parts * f.unsqueeze_dim::<3>(1); // [nk, 1, dh]
        }
        let k_parts = k_parts.reshape([nk * (n + 1), dh]);
        let positions: Vec<usize> = keys
            .keys
            .iter()
            .flat_map(|&k| std::iter::repeat_n(k, n + 1))
            .collect();
        let k_parts = self
            .rotate_rows(l, k_parts, &positions, false)
            .reshape([nk, (n + 1) * dh]);
        let k_w = keys
            .w
            .clone()
            .reshape([1, nk])
            .matmul(k_parts)
            .reshape([n + 1, dh]);
        let table = q_parts.matmul(k_w.transpose()).mul_scalar(self.sigma());
        let mut labels = self.comp_steps(n);
        labels.push(Step::Bias);
        Ok((labels, table))
    }
}

/// A head's score to one key, or a contrast of scores, at the head's destination.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Score(pub ScoreId);

impl NodeType for Score {
    fn public(&self) -> NodeKind {
        NodeKind::Score {
            layer: self.0.layer,
            head: self.0.head,
        }
    }

    fn describe(&self, pos: usize) -> String {
        let id = self.0;
        let step = Step::Score {
            key: id.key,
            versus: id.versus,
        };
        format!(
            "score `{step}` of head L{}.H{} at position {pos}",
            id.layer, id.head
        )
    }

    fn layout(&self) -> ChildLayout {
        ChildLayout::Table
    }

    /// Its children are two alternative decompositions, not parts of a sum.
    fn has_bias(&self) -> bool {
        false
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        let keys = eng.score_keys(self.0, node.pos)?;
        eng.score_value(self.0, node.pos, &keys)
    }

    /// The value (shared by both sides, each a complete decomposition of it) and the table,
    /// from one set of keys.
    fn expand(&self, eng: &Engine<'_>, node: &Node, _want: Want) -> Result<Parts> {
        let keys = eng.score_keys(self.0, node.pos)?;
        let v = eng.score_value(self.0, node.pos, &keys)?;
        let children = Children {
            steps: vec![Step::Side(Side::Query), Step::Side(Side::Key)],
            values: Some(Tensor::cat(vec![v.clone(), v.clone()], 0)),
        };
        let mut parts = Parts::plain(v, children, eng.zero());
        parts.table = Some(eng.score_table(self.0, node.pos, &keys)?);
        Ok(parts)
    }

    fn child_kind(&self, _eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        let Step::Side(side) = step else {
            return None;
        };
        Some((ScoreSide { id: self.0, side }.into(), node.pos))
    }

    fn valid(&self, _eng: &Engine<'_>, _node: &Node) -> String {
        "q, k".into()
    }
}

/// One side of a score's decomposition: `q` (the keys frozen, the query's components vary)
/// or `k` (the query frozen, the keys' components vary).
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct ScoreSide {
    pub id: ScoreId,
    pub side: Side,
}

impl ScoreSide {
    /// The readout of the side's components and its remainder, from one set of keys: the
    /// query's `[1, d]`, or one per key `[nk, d]` (weighted), and the keys.
    fn readout(self, eng: &Engine<'_>, q: usize) -> Result<(Keys, Tensor<2>, Tensor<1>)> {
        let keys = eng.score_keys(self.id, q)?;
        let (r, bias) = match self.side {
            Side::Query => {
                let (r, b) = eng.query_side(self.id, q, &keys)?;
                (r.unsqueeze_dim(0), b)
            }
            Side::Key => eng.key_side(self.id, q, &keys)?,
        };
        Ok((keys, r, bias))
    }

    /// The components of `resid_pre_l` the side reads.
    fn n(self, eng: &Engine<'_>) -> usize {
        eng.layout.pre(self.id.layer)
    }
}

impl NodeType for ScoreSide {
    fn public(&self) -> NodeKind {
        NodeKind::Side {
            layer: self.id.layer,
            head: self.id.head,
            side: self.side,
        }
    }

    fn describe(&self, _pos: usize) -> String {
        format!("the `{}` side of a score", self.side.as_str())
    }

    /// The query's components, the single key's components, or a contrast's keys ×
    /// components.
    fn layout(&self) -> ChildLayout {
        match (self.side, self.id.versus) {
            (Side::Key, Versus::Key(_) | Versus::Mean) => ChildLayout::Keys {
                layer: self.id.layer,
            },
            _ => ChildLayout::Components,
        }
    }

    /// The query, or the key of a single score.
    fn position(&self, pos: usize) -> usize {
        match (self.side, self.id.versus) {
            (Side::Key, Versus::Nothing) => self.id.key,
            _ => pos,
        }
    }

    fn value(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        Score(self.id).value(eng, node)
    }

    fn bias(&self, eng: &Engine<'_>, node: &Node) -> Result<Tensor<1>> {
        Ok(self.readout(eng, node.pos)?.2)
    }

    /// The children: the components of `resid_pre_l` (at the query, or at the single key),
    /// or for a contrast's key side `{p}:{component}` over its keys; value, readout and
    /// remainder from one set of keys.
    fn expand(&self, eng: &Engine<'_>, node: &Node, _want: Want) -> Result<Parts> {
        let n = self.n(eng);
        let (keys, r, bias) = self.readout(eng, node.pos)?;
        let value = eng.score_value(self.id, node.pos, &keys)?;
        let children = match self.side {
            Side::Query => Children {
                steps: eng.comp_steps(n),
                values: Some(crate::engine::rows_dot(
                    eng.comps_at(n, node.pos),
                    r.squeeze_dim::<1>(0),
                )),
            },
            Side::Key => {
                let nk = keys.keys.len();
                let d = eng.model.config.d_model;
                let vals = eng
                    .cache
                    .components
                    .clone()
                    .narrow(0, 0, n)
                    .select(1, eng.int_index(&keys.keys))
                    .swap_dims(0, 1) // [nk, n, d]
                    .matmul(r.reshape([nk, d, 1]))
                    .reshape([nk * n]);
                let steps = if self.id.versus == Versus::Nothing {
                    eng.comp_steps(n)
                } else {
                    eng.source_steps(keys.keys.iter().copied(), n)
                };
                Children {
                    steps,
                    values: Some(vals),
                }
            }
        };
        Ok(Parts::plain(value, children, bias))
    }

    fn child_kind(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Option<(Kind, usize)> {
        let up = |c| eng.among_first(c, self.n(eng));
        match (self.side, step, self.id.versus) {
            (Side::Query, Step::Comp(c), _) if up(c) => Some((Kind::component(c), node.pos)),
            (Side::Key, Step::Comp(c), Versus::Nothing) if up(c) => {
                Some((Kind::component(c), self.id.key))
            }
            (Side::Key, Step::Source { pos, comp }, Versus::Key(_) | Versus::Mean)
                if up(comp) && self.key_row(eng, node, pos).is_some() =>
            {
                Some((Kind::component(comp), pos))
            }
            _ => None,
        }
    }

    fn child_readout(&self, eng: &Engine<'_>, node: &Node, step: Step) -> Result<Tensor<1>> {
        let d = eng.model.config.d_model;
        let (_, r, _) = self.readout(eng, node.pos)?;
        let row = match step {
            Step::Source { pos, .. } => self.key_row(eng, node, pos).unwrap_or(0),
            _ => 0,
        };
        Ok(r.narrow(0, row, 1).reshape([d]))
    }

    fn valid(&self, eng: &Engine<'_>, node: &Node) -> String {
        let id = self.id;
        let comps = eng.layout.describe_prefix(self.n(eng));
        match (self.side, id.versus) {
            (Side::Key, Versus::Key(k2)) => format!(
                "{{p}}:{{component}} with p in {{{}, {}}} and component in {comps}, or bias",
                id.key.min(k2),
                id.key.max(k2)
            ),
            (Side::Key, Versus::Mean) => {
                let (first, _) = eng.visible(id.layer, node.pos);
                format!(
                    "{{p}}:{{component}} with p in {first}..={} and component in {comps}, or bias",
                    node.pos
                )
            }
            _ => format!("{comps}, bias"),
        }
    }
}

impl ScoreSide {
    /// The row of key `pos` among a contrast's keys (ascending, as [`Engine::score_keys`]
    /// lists them), without computing them.
    fn key_row(self, eng: &Engine<'_>, node: &Node, pos: usize) -> Option<usize> {
        match self.id.versus {
            Versus::Nothing => (pos == self.id.key).then_some(0),
            Versus::Key(k2) => {
                let (lo, hi) = (self.id.key.min(k2), self.id.key.max(k2));
                [lo, hi].iter().position(|&k| k == pos)
            }
            Versus::Mean => {
                let (first, count) = eng.visible(self.id.layer, node.pos);
                (first..first + count).contains(&pos).then(|| pos - first)
            }
        }
    }
}

//! The readout formulas of DESIGN.md §1.3, each written once, batched over a contiguous range
//! of layers `ls` with one readout vector per layer (`r: [Lb, d]`). The overview calls them on
//! every layer at once; a single node is a batch of one layer. Shapes are written beside each
//! step (`Lb` layers in the batch, `H` query heads, `KV` key/value heads, `g = H/KV`).

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};
use rdla_model::act;

use super::{Engine, MlpMode};

/// Layers `ls` of a tensor stacked over layers.
pub(super) fn layers<const D: usize>(t: &Tensor<D>, ls: &Range<usize>) -> Tensor<D> {
    t.clone().narrow(0, ls.start, ls.len())
}

/// The pieces of an MLP at one position, `[Lb, …]` each: what every MLP formula needs,
/// computed once per expansion.
pub(super) struct MlpParts {
    /// The readout pulled back through the MLP's frozen post-norm `[Lb, d]`.
    rp: Tensor<2>,
    /// `W_out r` `[Lb, d_mlp]` (one neuron's entry only, after [`MlpParts::only`]).
    wout_r: Tensor<2>,
    /// The factor on the linear path (frozen gate, derivative, or the gate's activation).
    g: Tensor<2>,
    /// The pre-activation (the gate's in a gated MLP).
    z: Tensor<2>,
    /// The linear path's pre-activation (gated MLPs only).
    lin: Option<Tensor<2>>,
    /// Restricted to one neuron.
    neuron: bool,
}

impl MlpParts {
    /// `W_out r` `[Lb, d_mlp]`.
    pub(super) fn wout_r(&self) -> Tensor<2> {
        self.wout_r.clone()
    }
}

impl Engine<'_> {
    /// Readouts `r [Lb, d]` of the attention outputs (`mlp: false`) or MLP outputs of layers
    /// `ls` at `q`, pulled back through their frozen post-norms (Gemma): `r ⊙ w_post /
    /// s_post[l, q]`, the readout of the block's output before its norm (DESIGN.md §1.1). The
    /// identity in models without post-norms.
    pub(super) fn post_readout(
        &self,
        ls: &Range<usize>,
        q: usize,
        r: Tensor<2>,
        mlp: bool,
    ) -> Tensor<2> {
        let (Some((wa, wm)), Some((sa, sm))) =
            (&self.model.weights.post_norm, &self.cache.post_scale)
        else {
            return r;
        };
        let (w, s) = if mlp { (wm, sm) } else { (wa, sa) };
        r * layers(w, ls) / layers(s, ls).narrow(1, q, 1)
    }

    /// What a block of layer `l` writes at `q` from its pre-norm output `v [d]`: `v ⊙ w_post /
    /// s_post[l, q]` (the identity without post-norms).
    pub(super) fn post_written(&self, l: usize, q: usize, v: Tensor<1>, mlp: bool) -> Tensor<1> {
        self.post_readout(&(l..l + 1), q, v.unsqueeze_dim(0), mlp)
            .squeeze_dim::<1>(0)
    }

    /// `W_O[l,h] r_l`, grouped by key/value head: `[Lb, KV, dh, g]`.
    fn wo_r(&self, ls: &Range<usize>, r: Tensor<2>) -> Tensor<4> {
        let cfg = &self.model.config;
        let (lb, d) = (ls.len(), cfg.d_model);
        let (kv, dh) = (cfg.n_kv_heads, cfg.d_head);
        layers(&self.model.weights.w_o, ls)
            .matmul(r.reshape([lb, 1, d, 1])) // [Lb, H, dh, 1]
            .reshape([lb, kv, self.group(), dh])
            .swap_dims(2, 3)
    }

    /// The OV readout of every head: `C(W_V[l,h'] W_O[l,h] r_l)` `[Lb, H, d]`, and the value
    /// bias per unit of attention `b_V[l,h'] W_O[l,h] · r_l` `[Lb, H]` (0 after folding).
    /// Query heads are grouped by the key/value head they read, so no weight is repeated.
    pub(super) fn ov_readouts(&self, ls: &Range<usize>, r: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        let cfg = &self.model.config;
        let (lb, h, d) = (ls.len(), cfg.n_heads, cfg.d_model);
        let w = &self.model.weights;
        let wo_r = self.wo_r(ls, r); // [Lb, KV, dh, g]
        let ov = self.c(layers(&w.w_v, ls)
            .matmul(wo_r.clone()) // [Lb, KV, d, g]
            .swap_dims(2, 3)
            .reshape([lb, h, d]));
        let bias = layers(&w.b_v, ls)
            .unsqueeze_dim::<4>(2) // [Lb, KV, 1, dh]
            .matmul(wo_r)
            .reshape([lb, h]);
        (ov, bias)
    }

    /// Each head's own value `z_h W_O[h] · r` at `q`: `[Lb, H]`. No `z` is cached: it is
    /// rebuilt as `Σ_p A[q,p] v[p]` from the cached values `v` (the forward pass's own) and the
    /// recomputed pattern row ([`Engine::z_at`]). The children read the residual components
    /// through `W_V` and the frozen scales with the same pattern row, so `value − Σ children −
    /// bias` checks the value side of the decomposition (components → normalised input → `v`);
    /// the pattern, shared by both, is checked against TransformerLens by the tests.
    pub(super) fn head_values(
        &self,
        ls: &Range<usize>,
        q: usize,
        r: Tensor<2>,
    ) -> super::Result<Tensor<2>> {
        let cfg = &self.model.config;
        let (lb, h, d, dh) = (ls.len(), cfg.n_heads, cfg.d_model, cfg.d_head);
        let z = self.z_at(ls, q)?.reshape([lb, h, 1, dh]);
        let wo_r = layers(&self.model.weights.w_o, ls).matmul(r.reshape([lb, 1, d, 1])); // [Lb, H, dh, 1]
        Ok(z.matmul(wo_r).reshape([lb, h]))
    }

    /// The attention pattern rows `A[l, :, q, :]`: `[Lb, H, P]` (one layer's from the memo).
    pub(super) fn pattern_rows(&self, ls: Range<usize>, q: usize) -> super::Result<Tensor<3>> {
        if ls.len() != 1 {
            return Ok(self.model.pattern_rows(self.cache, ls, q)?);
        }
        let key = (ls.start, q);
        if let Some(a) = self.memo().borrow().pattern.get(&key) {
            return Ok(a.clone());
        }
        let a = self.model.pattern_rows(self.cache, ls, q)?;
        let mut memo = self.memo().borrow_mut();
        if memo.pattern.len() >= super::MEMO_MAX {
            memo.pattern.clear();
        }
        memo.pattern.insert(key, a.clone());
        Ok(a)
    }

    /// Each head's `z` at `q` (TL `hook_z`), from the pattern rows: `[Lb, H, dh]`.
    pub(super) fn z_at(&self, ls: &Range<usize>, q: usize) -> super::Result<Tensor<3>> {
        let a = self.pattern_rows(ls.clone(), q)?;
        Ok(self.model.z_from_pattern(self.cache, ls.clone(), q, a))
    }

    /// The MLP pre-activations of layers `ls` at `q` (one layer's from the memo).
    pub(super) fn mlp_pre(&self, ls: &Range<usize>, q: usize) -> (Tensor<2>, Option<Tensor<2>>) {
        if ls.len() != 1 {
            return self.model.mlp_pre_at(self.cache, ls.clone(), q);
        }
        let key = (ls.start, q);
        if let Some(p) = self.memo().borrow().mlp_pre.get(&key) {
            return p.clone();
        }
        let p = self.model.mlp_pre_at(self.cache, ls.clone(), q);
        let mut memo = self.memo().borrow_mut();
        if memo.mlp_pre.len() >= super::MEMO_MAX {
            memo.mlp_pre.clear();
        }
        memo.mlp_pre.insert(key, p.clone());
        p
    }

    /// The values of the sources `(p, c)` of heads, `x_c[p] · A[l,h,q,p] · ov[l,h] / s1[l,p]`,
    /// given their OV readouts `ov [Lb, Hb, d]` and pattern rows `a [Lb, Hb, P]` (`Hb` heads
    /// per layer: all of them, or one): `[Lb, Hb, P, C]`, zero for components that are not
    /// upstream of the layer.
    pub(super) fn source_values(
        &self,
        ls: &Range<usize>,
        ov: Tensor<3>,
        a: Tensor<3>,
    ) -> Tensor<4> {
        let [lb, hb, d] = ov.dims();
        let (c_n, p_n) = (self.layout.n(), self.n_pos());
        // [C·P, d] x [d, Lb·Hb] -> [C, P, Lb, Hb] -> [Lb, Hb, P, C]
        let raw = self
            .cache
            .components
            .clone()
            .reshape([c_n * p_n, d])
            .matmul(ov.reshape([lb * hb, d]).transpose())
            .reshape([c_n, p_n, lb, hb])
            .permute([2, 3, 1, 0]);
        let s1 = layers(&self.cache.ln1_scale, ls).unsqueeze_dim::<3>(1); // [Lb, 1, P]
        let weight = (a / s1).unsqueeze_dim::<4>(3); // [Lb, Hb, P, 1]
        raw * weight
            * self
                .upstream_mask(ls, |lay, l| lay.pre(l))
                .unsqueeze_dim::<4>(1)
    }

    /// One head's sources, the positions `first .. first + count` it sees and the components
    /// upstream of its layer only (the rest are zero by definition and are not computed):
    /// `x_c[p] · A[q,p] · ov / s1[l,p]` for `ov [1, 1, d]` and its pattern row `a [1, 1, P]`,
    /// position-major `[count · pre(l)]`.
    pub(super) fn head_source_values(
        &self,
        l: usize,
        first: usize,
        count: usize,
        ov: Tensor<3>,
        a: Tensor<3>,
    ) -> Tensor<1> {
        let d = self.model.config.d_model;
        let n = self.layout.pre(l);
        let raw = self
            .cache
            .components
            .clone()
            .narrow(0, 0, n)
            .narrow(1, first, count) // [n, count, d]
            .reshape([n * count, d])
            .matmul(ov.reshape([d, 1]))
            .reshape([n, count]);
        let s1 = layers(&self.cache.ln1_scale, &(l..l + 1)).narrow(1, first, count); // [1, count]
        let w = a.reshape([1, self.n_pos()]).narrow(1, first, count) / s1; // [1, count]
        (raw * w).swap_dims(0, 1).reshape([count * n])
    }

    /// `[Lb, 1, C]`: 1 where component `c` is among the first `n(layout, l)` (upstream of the
    /// layer), else 0.
    fn upstream_mask(
        &self,
        ls: &Range<usize>,
        n: impl Fn(&rdla_model::Layout, usize) -> usize,
    ) -> Tensor<3> {
        let c_n = self.layout.n();
        let lay = self.layout;
        let mask: Vec<f32> = ls
            .clone()
            .flat_map(|l| {
                let up = n(&lay, l);
                (0..c_n).map(move |c| if c < up { 1.0 } else { 0.0 })
            })
            .collect();
        Tensor::<2>::from_data(TensorData::new(mask, [ls.len(), c_n]), self.device())
            .unsqueeze_dim::<3>(1)
    }

    /// `[Lb, C]` mask of the components each MLP reads (`resid_mid`, or `resid_pre` in
    /// parallel-residual models).
    pub(super) fn mlp_input_mask(&self, ls: &Range<usize>) -> Tensor<2> {
        self.upstream_mask(ls, |lay, l| lay.mid(l))
            .squeeze_dim::<2>(1)
    }

    /// Components `0..n` at position `pos` read along one readout per row of `r [Lb, d]`:
    /// `[Lb, n]`.
    pub(super) fn comp_values(&self, n: usize, pos: usize, r: Tensor<2>) -> Tensor<2> {
        r.matmul(self.comps_at(n, pos).transpose())
    }

    /// Components `0..n` at position `pos`: `[n, d]`.
    pub(super) fn comps_at(&self, n: usize, pos: usize) -> Tensor<2> {
        self.cache
            .components
            .clone()
            .narrow(0, 0, n)
            .narrow(1, pos, 1)
            .squeeze_dim::<2>(1)
    }

    /// The factor `g` on the linear path of MLPs at their pre-activations `z [Lb, d_mlp]`: the
    /// frozen gate `act(z)/z` (or `act'(z)` in gradient mode), or for a gated MLP `act(z_gate)`.
    fn gate(&self, z: Tensor<2>) -> Tensor<2> {
        let a = self.model.config.act;
        match (self.model.config.gated_mlp, self.mode) {
            (true, _) => act::apply(a, z),
            (false, MlpMode::FrozenGate) => act::frozen_gate(a, z),
            (false, MlpMode::Gradient) => act::derivative(a, z),
        }
    }

    /// What every MLP formula needs at `q` (see [`MlpParts`]), for the readout `r [Lb, d]`.
    pub(super) fn mlp_parts(&self, ls: &Range<usize>, q: usize, r: Tensor<2>) -> MlpParts {
        let [lb, d] = r.dims();
        let rp = self.post_readout(ls, q, r, true);
        let wout_r = layers(&self.model.weights.w_out, ls)
            .matmul(rp.clone().reshape([lb, d, 1]))
            .squeeze_dim::<2>(2); // [Lb, d_mlp]
        let (z, lin) = self.mlp_pre(ls, q);
        let g = self.gate(z.clone());
        MlpParts {
            rp,
            wout_r,
            g,
            z,
            lin,
            neuron: false,
        }
    }

    /// The parts of neuron `n` alone: its share of the MLP (`W_out r` kept at `n` only).
    pub(super) fn only_neuron(&self, parts: &MlpParts, n: usize) -> MlpParts {
        MlpParts {
            rp: parts.rp.clone(),
            wout_r: parts.wout_r.clone()
                * self
                    .one_hot(n, self.model.config.d_mlp)
                    .unsqueeze_dim::<2>(0),
            g: parts.g.clone(),
            z: parts.z.clone(),
            lin: parts.lin.clone(),
            neuron: true,
        }
    }

    /// `[n]`: 1 at `i`, else 0.
    pub(super) fn one_hot(&self, i: usize, n: usize) -> Tensor<1> {
        let mut v = vec![0.0f32; n];
        v[i] = 1.0;
        Tensor::<1>::from_data(TensorData::new(v, [n]), self.device())
    }

    /// The readout of the inputs of MLPs `ls` at `q`: `C(W_in (g ⊙ W_out r)) / s2[l, q]`, plus,
    /// for a gated MLP in gradient mode, the gate path
    /// `W_gate (act'(z_gate) ⊙ z_linear ⊙ W_out r)`: `[Lb, d]`. For one neuron's parts, the
    /// same for that neuron alone (DESIGN.md: a neuron's children).
    pub(super) fn mlp_input_readout(
        &self,
        ls: &Range<usize>,
        q: usize,
        parts: &MlpParts,
    ) -> Tensor<2> {
        let w = &self.model.weights;
        let gw = parts.g.clone() * parts.wout_r.clone();
        let mut read = layers(&w.w_in, ls)
            .matmul(gw.unsqueeze_dim::<3>(2))
            .squeeze_dim::<2>(2); // [Lb, d]
        if self.model.config.gated_mlp
            && self.mode == MlpMode::Gradient
            && let (Some(lin), Some(w_gate)) = (&parts.lin, &w.w_gate)
        {
            let gp = act::derivative(self.model.config.act, parts.z.clone()) * lin.clone();
            read = read
                + layers(w_gate, ls)
                    .matmul((gp * parts.wout_r.clone()).unsqueeze_dim::<3>(2))
                    .squeeze_dim::<2>(2);
        }
        let s2 = layers(&self.cache.ln2_scale, ls).narrow(1, q, 1); // [Lb, 1]
        self.c(read) / s2
    }

    /// The remainder of MLPs `ls`: `((g ⊙ b_in) W_out + b_out) · r`: `[Lb]`. For one neuron's
    /// parts: that neuron's `g_n b_in[n] (W_out[n] · r)` (no `b_out`).
    pub(super) fn mlp_remainder(&self, ls: &Range<usize>, parts: &MlpParts) -> Tensor<1> {
        let w = &self.model.weights;
        let [lb, d] = parts.rp.dims();
        let gated = (parts.g.clone() * layers(&w.b_in, ls) * parts.wout_r.clone())
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        if parts.neuron {
            return gated;
        }
        let b_out = layers(&w.b_out, ls)
            .unsqueeze_dim::<3>(1)
            .matmul(parts.rp.clone().reshape([lb, d, 1]))
            .reshape([lb]);
        gated + b_out
    }

    /// The MLP's activations `a = act(z)` (SwiGLU: `silu(z_gate) ⊙ z_up`) `[Lb, d_mlp]`: a
    /// gated MLP's gate is already `act(z_gate)`.
    pub(super) fn mlp_activations(&self, parts: &MlpParts) -> Tensor<2> {
        match &parts.lin {
            Some(lin) => parts.g.clone() * lin.clone(),
            None => act::apply(self.model.config.act, parts.z.clone()),
        }
    }

    /// What neuron `n` of MLP `l` writes at `q` with activation `a [1]`: `a_n W_out[n]` `[d]`
    /// (through the frozen post-norm, where there is one).
    pub(super) fn neuron_output(&self, l: usize, q: usize, n: usize, a: Tensor<1>) -> Tensor<1> {
        let v = layers(&self.model.weights.w_out, &(l..l + 1))
            .squeeze_dim::<2>(0)
            .narrow(0, n, 1)
            .squeeze_dim::<1>(0)
            * a;
        self.post_written(l, q, v, true)
    }
}

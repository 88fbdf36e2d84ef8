//! The readout formulas of DESIGN.md §1.3, each written once, batched over a contiguous range
//! of layers `ls` with one readout vector per layer (`r: [Lb, d]`). The overview calls them on
//! every layer at once; a single node is a batch of one layer. Shapes are written beside each
//! step (`Lb` layers in the batch, `H` query heads, `KV` key/value heads, `g = H/KV`).

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};
use rdla_model::act;
use rdla_model::model::Blocks;

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
    /// Layer `l`'s processed blocks `[1, …]`, for formulas that read no MLP weight (a
    /// streamed layer not held is read without its MLP: [`Blocks::mlp`] may be absent).
    pub(super) fn blocks(&self, l: usize) -> super::Result<Blocks> {
        Ok(self.model.attention_blocks(&(l..l + 1))?)
    }

    /// Layer `l`'s processed blocks `[1, …]`, its MLP's included.
    pub(super) fn whole_blocks(&self, l: usize) -> super::Result<Blocks> {
        self.blocks_in(&(l..l + 1))
    }

    /// Layers `ls`'s processed blocks `[Lb, …]`: fetched once per expansion and handed to
    /// the formulas below.
    pub(super) fn blocks_in(&self, ls: &Range<usize>) -> super::Result<Blocks> {
        Ok(self.model.blocks(ls)?)
    }

    /// Readouts `r [Lb, d]` of the attention outputs (`mlp: false`) or MLP outputs of layers
    /// `ls` at `q`, pulled back through their frozen post-norms (Gemma): `r ⊙ w_post /
    /// s_post[l, q]`, the readout of the block's output before its norm (DESIGN.md §1.1). The
    /// identity in models without post-norms.
    pub(super) fn post_readout(
        &self,
        b: &Blocks,
        ls: &Range<usize>,
        q: usize,
        r: Tensor<2>,
        mlp: bool,
    ) -> Tensor<2> {
        let (Some((wa, wm)), Some((sa, sm))) = (&b.post_norm, &self.cache.post_scale) else {
            return r;
        };
        let (w, s) = if mlp { (wm, sm) } else { (wa, sa) };
        r * w.clone() / layers(s, ls).narrow(1, q, 1)
    }

    /// What a block of layer `l` writes at `q` from its pre-norm output `v [d]`: `v ⊙ w_post /
    /// s_post[l, q]` (the identity without post-norms).
    pub(super) fn post_written(
        &self,
        b: &Blocks,
        l: usize,
        q: usize,
        v: Tensor<1>,
        mlp: bool,
    ) -> Tensor<1> {
        self.post_readout(b, &(l..l + 1), q, v.unsqueeze_dim(0), mlp)
            .squeeze_dim::<1>(0)
    }

    /// `W_O[l,h] r_l`, grouped by key/value head: `[Lb, KV, dh, g]`.
    fn wo_r(&self, b: &Blocks, r: Tensor<2>) -> Tensor<4> {
        let cfg = &self.model.config;
        let (lb, d) = (b.n_layers(), cfg.d_model);
        let (kv, dh) = (cfg.n_kv_heads, cfg.d_head);
        b.w_o
            .clone()
            .matmul(r.reshape([lb, 1, d, 1])) // [Lb, H, dh, 1]
            .reshape([lb, kv, self.group(), dh])
            .swap_dims(2, 3)
    }

    /// The OV readout of every head: `C(W_V[l,h'] W_O[l,h] r_l)` `[Lb, H, d]`, and the value
    /// bias per unit of attention `b_V[l,h'] W_O[l,h] · r_l` `[Lb, H]` (0 after folding).
    /// Query heads are grouped by the key/value head they read, so no weight is repeated.
    pub(super) fn ov_readouts(&self, b: &Blocks, r: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        let cfg = &self.model.config;
        let (lb, h, d) = (b.n_layers(), cfg.n_heads, cfg.d_model);
        let wo_r = self.wo_r(b, r); // [Lb, KV, dh, g]
        let ov = self.c(b
            .w_v
            .clone()
            .matmul(wo_r.clone()) // [Lb, KV, d, g]
            .swap_dims(2, 3)
            .reshape([lb, h, d]));
        let bias = b
            .b_v
            .clone()
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
        b: &Blocks,
        ls: &Range<usize>,
        q: usize,
        r: Tensor<2>,
    ) -> super::Result<Tensor<2>> {
        let cfg = &self.model.config;
        let (lb, h, d, dh) = (ls.len(), cfg.n_heads, cfg.d_model, cfg.d_head);
        let z = self.z_at(ls, q)?.reshape([lb, h, 1, dh]);
        let wo_r = b.w_o.clone().matmul(r.reshape([lb, 1, d, 1])); // [Lb, H, dh, 1]
        Ok(z.matmul(wo_r).reshape([lb, h]))
    }

    /// The attention pattern rows `A[l, :, q, :]`: `[Lb, H, P]` (one layer's from the memo).
    pub(super) fn pattern_rows(&self, ls: Range<usize>, q: usize) -> super::Result<Tensor<3>> {
        self.pattern_rows_in(None, ls, q)
    }

    /// [`Engine::pattern_rows`] of layers whose blocks `b` are already fetched.
    pub(super) fn pattern_rows_in(
        &self,
        b: Option<&Blocks>,
        ls: Range<usize>,
        q: usize,
    ) -> super::Result<Tensor<3>> {
        let fetch = |ls: Range<usize>| match b {
            Some(b) => self.model.pattern_rows_in(b, self.cache, ls, q),
            None => self.model.pattern_rows(self.cache, ls, q),
        };
        if ls.len() != 1 {
            return Ok(fetch(ls)?);
        }
        let key = (ls.start, q);
        if let Some(a) = self.memo().borrow().pattern.get(&key) {
            return Ok(a.clone());
        }
        let a = fetch(ls)?;
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
    fn mlp_pre(
        &self,
        b: &Blocks,
        ls: &Range<usize>,
        q: usize,
    ) -> super::Result<(Tensor<2>, Option<Tensor<2>>)> {
        if ls.len() != 1 {
            return Ok(self.model.mlp_pre_in(b, self.cache, ls.clone(), q)?);
        }
        let key = (ls.start, q);
        if let Some(p) = self.memo().borrow().mlp_pre.get(&key) {
            return Ok(p.clone());
        }
        let p = self.model.mlp_pre_in(b, self.cache, ls.clone(), q)?;
        let mut memo = self.memo().borrow_mut();
        if memo.mlp_pre.len() >= super::MEMO_MAX {
            memo.mlp_pre.clear();
        }
        memo.mlp_pre.insert(key, p.clone());
        Ok(p)
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
        rdla_model::model::cache::upstream_mask(&self.layout, ls, n, self.device())
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
    pub(super) fn mlp_parts(
        &self,
        b: &Blocks,
        ls: &Range<usize>,
        q: usize,
        r: Tensor<2>,
    ) -> super::Result<MlpParts> {
        let [lb, d] = r.dims();
        let rp = self.post_readout(b, ls, q, r, true);
        let wout_r = b
            .mlp()?
            .w_out
            .clone()
            .matmul(rp.clone().reshape([lb, d, 1]))
            .squeeze_dim::<2>(2); // [Lb, d_mlp]
        let (z, lin) = self.mlp_pre(b, ls, q)?;
        let g = self.gate(z.clone());
        Ok(MlpParts {
            rp,
            wout_r,
            g,
            z,
            lin,
            neuron: false,
        })
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
        w: &Blocks,
        ls: &Range<usize>,
        q: usize,
        parts: &MlpParts,
    ) -> super::Result<Tensor<2>> {
        let w = w.mlp()?;
        let gw = parts.g.clone() * parts.wout_r.clone();
        let mut read = w
            .w_in
            .clone()
            .matmul(gw.unsqueeze_dim::<3>(2))
            .squeeze_dim::<2>(2); // [Lb, d]
        if self.model.config.gated_mlp
            && self.mode == MlpMode::Gradient
            && let (Some(lin), Some(w_gate)) = (&parts.lin, &w.w_gate)
        {
            let gp = act::derivative(self.model.config.act, parts.z.clone()) * lin.clone();
            read = read
                + w_gate
                    .clone()
                    .matmul((gp * parts.wout_r.clone()).unsqueeze_dim::<3>(2))
                    .squeeze_dim::<2>(2);
        }
        let s2 = layers(&self.cache.ln2_scale, ls).narrow(1, q, 1); // [Lb, 1]
        Ok(self.c(read) / s2)
    }

    /// The remainder of MLPs `ls`: `((g ⊙ b_in) W_out + b_out) · r`: `[Lb]`. For one neuron's
    /// parts: that neuron's `g_n b_in[n] (W_out[n] · r)` (no `b_out`).
    pub(super) fn mlp_remainder(&self, w: &Blocks, parts: &MlpParts) -> super::Result<Tensor<1>> {
        let w = w.mlp()?;
        let [lb, d] = parts.rp.dims();
        let gated = (parts.g.clone() * w.b_in.clone() * parts.wout_r.clone())
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        if parts.neuron {
            return Ok(gated);
        }
        let b_out = w
            .b_out
            .clone()
            .unsqueeze_dim::<3>(1)
            .matmul(parts.rp.clone().reshape([lb, d, 1]))
            .reshape([lb]);
        Ok(gated + b_out)
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
    pub(super) fn neuron_output(
        &self,
        b: &Blocks,
        l: usize,
        q: usize,
        n: usize,
        a: Tensor<1>,
    ) -> super::Result<Tensor<1>> {
        let v = b
            .mlp()?
            .w_out
            .clone()
            .squeeze_dim::<2>(0)
            .narrow(0, n, 1)
            .squeeze_dim::<1>(0)
            * a;
        Ok(self.post_written(b, l, q, v, true))
    }
}

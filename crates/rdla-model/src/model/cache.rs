//! The activation cache of one forward pass, and what is recomputed from it on demand.
//!
//! Everything kept is `O(L·P·d)`; queries, attention patterns (`O(L·H·P²)`), each head's `z`
//! and MLP pre-activations (`O(L·P·d_mlp)`) are recomputed for the positions a node needs,
//! batched over layers, from the cached keys, values, norm scales and residual components.
//! A layer's input is rebuilt as the sum of its upstream components, centred and divided by
//! the frozen scale (not the forward pass's running residual, so it agrees with the forward
//! pass to float error); from there the maths is the forward pass's own code
//! (`crate::model::layer`): the same norm affine, the same MLP pre-activation, and a pattern
//! row is a one-query block of the same span-masked softmax (the fused kernel on the CPU). The
//! tests check the patterns and MLP pre-activations against TransformerLens
//! (`tests/tl_parity.rs`).

use std::ops::Range;

use burn::tensor::{Int, Tensor, TensorData};

use crate::layout::Layout;
use crate::model::layer::layers;
use crate::model::{Blocks, Model};

/// Everything the attribution needs from one forward pass, at every position.
#[derive(Debug, Clone)]
pub struct Cache {
    pub token_ids: Vec<u32>,
    /// The component axis of `components`.
    pub layout: Layout,
    /// Residual components `[C, P, d]` in `layout` order (`L{l}.attn` includes `b_O`,
    /// `L{l}.mlp` includes `b_out`).
    pub components: Tensor<3>,
    /// Frozen norm scales `sqrt(var + eps)` (RMSNorm: `sqrt(mean(x²) + eps)`): `[L, P]`,
    /// `[L, P]`, `[P]`. `ln2` reads `resid_mid`, or `resid_pre` with a parallel residual.
    pub ln1_scale: Tensor<2>,
    pub ln2_scale: Tensor<2>,
    pub final_scale: Tensor<1>,
    /// Keys `[L, KV, P, dh]` as the scores use them (bias added, q/k-normed, rotated) and
    /// values `[L, KV, P, dh]`. Queries are not kept: a query is needed at one position at a
    /// time and is recomputed there ([`Model::q_at`]), which saves `L·H·P·dh` floats.
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    /// The rotary tables of every layer for this prompt (`None` without rotary embeddings).
    pub rotary: Option<crate::rotary::LayerRotary>,
    /// Frozen scales of the per-head query/key norms (Qwen3, Gemma 3): `[L, H, P]`,
    /// `[L, KV, P]`.
    pub qk_scale: Option<(Tensor<3>, Tensor<3>)>,
    /// Frozen scales of the post-attention and post-MLP norms (Gemma): `[L, P]` each.
    pub post_scale: Option<(Tensor<2>, Tensor<2>)>,
    /// Logits at the last position `[V]`, before any final soft-cap (the attributed logits;
    /// [`crate::ModelConfig::output_logit`] gives what the model outputs).
    pub last_logits: Tensor<1>,
    /// The temporary files `components`, `k` and `v` live in when the prompt did not fit the
    /// budget (empty when they are in memory): [`crate::spill`].
    pub spilled: Vec<crate::spill::Spill>,
}

impl Cache {
    pub fn n_pos(&self) -> usize {
        self.token_ids.len()
    }

    /// Drop the pages of a spilled cache read since the last call from the process's resident
    /// memory (they stay in the page cache): after each computation that reads the cache, so
    /// the budget holds for the resident set too.
    pub fn release_spilled(&self) {
        self.spilled.iter().for_each(crate::spill::Spill::release);
    }
}

/// `[Lb, C]`: 1 where component `c` is among the first `upstream(layout, l)` of layer `l`
/// (upstream of what the layer reads), else 0.
pub fn upstream_mask(
    layout: &Layout,
    ls: &Range<usize>,
    upstream: impl Fn(&Layout, usize) -> usize,
    device: &burn::tensor::Device,
) -> Tensor<2> {
    let c_n = layout.n();
    let up: Vec<f32> = ls
        .clone()
        .flat_map(|l| {
            let m = upstream(layout, l);
            (0..c_n).map(move |c| if c < m { 1.0 } else { 0.0 })
        })
        .collect();
    Tensor::<2>::from_data(TensorData::new(up, [ls.len(), c_n]), device)
}

impl Model {
    /// The attention patterns of layers `ls` at destination `q`, `A[l, :, q, :]`: `[Lb, H, P]`
    /// (0 for keys a layer does not see). Each layer's row is a one-query block of the forward
    /// pass's own softmax ([`Model::block_softmax`]).
    pub fn pattern_rows(
        &self,
        cache: &Cache,
        ls: Range<usize>,
        q: usize,
    ) -> crate::Result<Tensor<3>> {
        self.pattern_rows_in(&self.attention_blocks(&ls)?, cache, ls, q)
    }

    /// [`Model::pattern_rows`] with layers `ls`'s blocks `b` already fetched.
    pub fn pattern_rows_in(
        &self,
        b: &Blocks,
        cache: &Cache,
        ls: Range<usize>,
        q: usize,
    ) -> crate::Result<Tensor<3>> {
        let (lb, n) = (ls.len(), cache.n_pos());
        let (h, kv) = (self.config.n_heads, self.config.n_kv_heads);
        let g = h / kv;
        let seen = self.scores_at(b, cache, &ls, q); // [Lb, KV, g, q+1]
        let rows = ls
            .clone()
            .enumerate()
            .map(|(i, l)| {
                let s = seen.clone().narrow(0, i, 1).reshape([kv, g, q + 1]);
                self.block_softmax(s, self.config.attn_spans[l], q, 1)
                    .map(|a| a.reshape([1, h, q + 1]))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let a = Tensor::cat(rows, 0); // [Lb, H, q+1]
        Ok(if q + 1 == n {
            a
        } else {
            Tensor::cat(vec![a, Tensor::zeros([lb, h, n - q - 1], &self.device)], 2)
        })
    }

    /// The attention pattern rows of layers `ls` (their blocks `w`) at the last position of
    /// every prompt of a batch of equal-length prompts ([`BatchRun::equal_lengths`]), all
    /// prompts at once: `[Lb, B, H, n]`, each prompt's row the one
    /// [`Model::pattern_rows_in`] gives at its last position from its own cache (the same
    /// formulas: the upstream components normalised with the frozen scale, the norm affine,
    /// `W_Q`, the frozen q-norm, rotary at position `n − 1`, the span-masked softmax).
    pub fn last_pattern_rows(
        &self,
        w: &Blocks,
        run: &super::forward::BatchRun,
        ls: Range<usize>,
    ) -> crate::Result<Tensor<4>> {
        if !run.equal_lengths() {
            return Err(crate::ModelError::BadBatch(
                "the prompts' lengths differ".into(),
            ));
        }
        let cache = &run.cache;
        let (batch, n) = (run.lens.len(), run.stride);
        let (lb, h, kv, dh) = (
            ls.len(),
            self.config.n_heads,
            self.config.n_kv_heads,
            self.config.d_head,
        );
        let (g, q) = (h / kv, n - 1);
        let rows = self.rows(&(0..batch).map(|b| b * n + q).collect::<Vec<_>>());
        let qv = self.queries_at(w, cache, &ls, rows, q); // [Lb, H, B, dh]
        // scores against each prompt's own keys: [Lb, KV, B, g, n]
        let qv = qv.reshape([lb, kv, g, batch, dh]).swap_dims(2, 3);
        let keys = layers(&cache.k, &ls).reshape([lb, kv, batch, n, dh]);
        let scores = qv.matmul(keys.swap_dims(3, 4));
        let pattern = ls
            .clone()
            .enumerate()
            .map(|(i, l)| {
                let s = scores.clone().narrow(0, i, 1).reshape([kv * batch, g, n]);
                self.block_softmax(s, self.config.attn_spans[l], q, 1)
                    .map(|a| a.reshape([1, kv, batch, g, n]))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Tensor::cat(pattern, 0)
            .swap_dims(1, 2) // [Lb, B, KV, g, n]
            .reshape([lb, batch, h, n]))
    }

    /// Raw scores `q̂ · k̂` (unscaled) of layers `ls` from destination `q` to keys `0..=q`:
    /// `[Lb, KV, g, q+1]`.
    fn scores_at(&self, b: &Blocks, cache: &Cache, ls: &Range<usize>, q: usize) -> Tensor<4> {
        let lb = ls.len();
        let (h, kv, dh) = (
            self.config.n_heads,
            self.config.n_kv_heads,
            self.config.d_head,
        );
        let qv = self
            .q_in(b, cache, ls.clone(), q)
            .reshape([lb, kv, h / kv, dh]);
        let keys = layers(&cache.k, ls).narrow(2, 0, q + 1); // [Lb, KV, q+1, dh]
        qv.matmul(keys.swap_dims(2, 3))
    }

    /// Each head's `z = Σ_p A[q,p] v[p]` at `q` (TL `hook_z`): `[Lb, H, dh]`.
    pub fn z_at(&self, cache: &Cache, ls: Range<usize>, q: usize) -> crate::Result<Tensor<3>> {
        let a = self.pattern_rows(cache, ls.clone(), q)?;
        Ok(self.z_from_pattern(cache, ls, q, a))
    }

    /// `z` at `q` from the pattern rows `a = A[ls, :, q, :]` `[Lb, H, P]` already computed.
    pub fn z_from_pattern(
        &self,
        cache: &Cache,
        ls: Range<usize>,
        q: usize,
        a: Tensor<3>,
    ) -> Tensor<3> {
        let lb = ls.len();
        let (h, kv, dh) = (
            self.config.n_heads,
            self.config.n_kv_heads,
            self.config.d_head,
        );
        let a = a.narrow(2, 0, q + 1).reshape([lb, kv, h / kv, q + 1]);
        a.matmul(layers(&cache.v, &ls).narrow(2, 0, q + 1)) // [Lb, KV, g, dh]
            .reshape([lb, h, dh])
    }

    /// The full attention patterns of layer `l`, `[H, P(dest), P(src)]`: `O(H·P²)`, for tests
    /// and small prompts.
    pub fn patterns(&self, cache: &Cache, l: usize) -> crate::Result<Tensor<3>> {
        let rows = (0..cache.n_pos())
            .map(|q| self.pattern_rows(cache, l..l + 1, q))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Tensor::cat(rows, 0).swap_dims(0, 1))
    }

    /// The residual stream read by layers `ls` at `q` — the first `upstream(layout, l)`
    /// components — normalised with the frozen `scale [L, P]`: `[Lb, d]`.
    fn normed_inputs_at(
        &self,
        cache: &Cache,
        ls: &Range<usize>,
        q: usize,
        upstream: impl Fn(&crate::layout::Layout, usize) -> usize,
        scale: &Tensor<2>,
    ) -> Tensor<2> {
        self.normed_inputs_rows(cache, ls, self.rows(&[q]), upstream, scale)
            .reshape([ls.len(), self.config.d_model])
    }

    /// [`Model::normed_inputs_at`] at each of the cache's rows `rows [R]`: `[Lb, R, d]`.
    fn normed_inputs_rows(
        &self,
        cache: &Cache,
        ls: &Range<usize>,
        rows: Tensor<1, Int>,
        upstream: impl Fn(&crate::layout::Layout, usize) -> usize,
        scale: &Tensor<2>,
    ) -> Tensor<3> {
        let (r, c_n, d) = (rows.dims()[0], cache.layout.n(), self.config.d_model);
        let up = upstream_mask(&cache.layout, ls, upstream, &self.device); // [Lb, C]
        let comps = cache.components.clone().select(1, rows.clone()); // [C, R, d]
        let x = up
            .matmul(comps.reshape([c_n, r * d]))
            .reshape([ls.len(), r, d]);
        self.centred(x) / layers(scale, ls).select(1, rows).unsqueeze_dim::<3>(2)
    }

    /// Cache rows as an index tensor.
    fn rows(&self, rows: &[usize]) -> Tensor<1, Int> {
        let v: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        Tensor::from_data(TensorData::new(v, [rows.len()]), &self.device)
    }

    /// The MLP inputs of layers `ls` at `q`, normalised with the frozen scale: `[Lb, d]`.
    fn mlp_inputs_at(&self, cache: &Cache, ls: &Range<usize>, q: usize) -> Tensor<2> {
        self.normed_inputs_at(cache, ls, q, |lay, l| lay.mid(l), &cache.ln2_scale)
    }

    /// The queries of layers `ls` at position `q` as the scores use them (bias added, q-normed
    /// with the frozen scale, rotated): `[Lb, H, dh]`, recomputed from the residual
    /// components with the forward pass's formulas.
    pub fn q_at(&self, cache: &Cache, ls: Range<usize>, q: usize) -> crate::Result<Tensor<3>> {
        Ok(self.q_in(&self.attention_blocks(&ls)?, cache, ls, q))
    }

    /// [`Model::q_at`] with layers `ls`'s blocks `w` already fetched.
    pub fn q_in(&self, w: &Blocks, cache: &Cache, ls: Range<usize>, q: usize) -> Tensor<3> {
        let (lb, h, dh) = (ls.len(), self.config.n_heads, self.config.d_head);
        self.queries_at(w, cache, &ls, self.rows(&[q]), q)
            .reshape([lb, h, dh])
    }

    /// The queries of layers `ls` (their blocks `w`) at the cache's rows `rows [R]`, each at
    /// sequence position `pos`, as the scores use them: the upstream components normalised
    /// with the frozen scale, the norm affine, `W_Q` and `b_Q`, the frozen q-norm, rotary at
    /// `pos`. `[Lb, H, R, dh]`.
    fn queries_at(
        &self,
        w: &Blocks,
        cache: &Cache,
        ls: &Range<usize>,
        rows: Tensor<1, Int>,
        pos: usize,
    ) -> Tensor<4> {
        let (lb, h, dh, r) = (
            ls.len(),
            self.config.n_heads,
            self.config.d_head,
            rows.dims()[0],
        );
        let mut xn = self.normed_inputs_rows(
            cache,
            ls,
            rows.clone(),
            |lay, l| lay.pre(l),
            &cache.ln1_scale,
        ); // [Lb, R, d]
        if let Some((wl, bl)) = &w.ln1 {
            xn = xn * wl.clone().unsqueeze_dim::<3>(1) + bl.clone().unsqueeze_dim::<3>(1);
        }
        let mut qv = xn.unsqueeze_dim::<4>(1).matmul(w.w_q.clone()) // [Lb, H, R, dh]
            + w.b_q.clone().unsqueeze_dim::<4>(2);
        if let (Some((wq, _)), Some((sq, _))) = (&w.qk_norm, &cache.qk_scale) {
            let s = layers(sq, ls).select(2, rows); // [Lb, H, R]
            qv = qv / s.unsqueeze_dim::<4>(3) * wq.clone().reshape([lb, 1, 1, dh]);
        }
        match &cache.rotary {
            Some(rot) => {
                let rotated: Vec<Tensor<4>> = ls
                    .clone()
                    .enumerate()
                    .map(|(i, l)| {
                        let ql = qv.clone().narrow(0, i, 1).reshape([h * r, 1, dh]);
                        rot.layer(l).apply(ql, pos).reshape([1, h, r, dh])
                    })
                    .collect();
                Tensor::cat(rotated, 0)
            }
            None => qv,
        }
    }

    /// MLP pre-activations of layers `ls` at `q`: `z` (the gate's, in a gated MLP) and, for a
    /// gated MLP, the linear path: `[Lb, d_mlp]` each.
    pub fn mlp_pre_at(
        &self,
        cache: &Cache,
        ls: Range<usize>,
        q: usize,
    ) -> crate::Result<(Tensor<2>, Option<Tensor<2>>)> {
        self.mlp_pre_in(&self.blocks(&ls)?, cache, ls, q)
    }

    /// [`Model::mlp_pre_at`] with layers `ls`'s blocks `b` already fetched.
    pub fn mlp_pre_in(
        &self,
        b: &Blocks,
        cache: &Cache,
        ls: Range<usize>,
        q: usize,
    ) -> crate::Result<(Tensor<2>, Option<Tensor<2>>)> {
        let xn = self.mlp_inputs_at(cache, &ls, q).unsqueeze_dim::<3>(1); // [Lb, 1, d]
        let (pre, lin) = self.mlp_pre_activations(b, xn)?;
        Ok((pre.squeeze_dim::<2>(1), lin.map(|t| t.squeeze_dim::<2>(1))))
    }

    /// The MLP pre-activations of layer `l` at every position, `[P, d_mlp]` (and the linear
    /// path of a gated MLP): for tests.
    pub fn mlp_pre(
        &self,
        cache: &Cache,
        l: usize,
    ) -> crate::Result<(Tensor<2>, Option<Tensor<2>>)> {
        let (pre, lin): (Vec<_>, Vec<_>) = (0..cache.n_pos())
            .map(|q| self.mlp_pre_at(cache, l..l + 1, q))
            .collect::<crate::Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok((
            Tensor::cat(pre, 0),
            lin.into_iter()
                .collect::<Option<Vec<_>>>()
                .map(|v| Tensor::cat(v, 0)),
        ))
    }
}

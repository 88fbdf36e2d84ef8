//! The forward pass in bounded memory, and the activation cache it leaves behind.
//!
//! Attention runs in blocks of query positions: no `[H, P, P]` score tensor ever exists, only
//! `[H, B, K]` for a block of `B` queries and the `K` keys they can see. The cache keeps what the
//! attribution needs in `O(L·P·d)` — the residual components, the norm scales, the rotated
//! keys and the values — and everything else (a query, a pattern row, a head's `z` at a
//! position, an MLP's pre-activation at a position) is recomputed from it on demand, batched,
//! in [`crate::model::cache`].

use burn::tensor::Tensor;

use crate::error::Result;
use crate::layout::Comp;
use crate::model::ablate::{Interventions, Site, ablate_rows};
use crate::model::layer::QUERY_BLOCK;
use crate::model::{Blocks, Cache, Model};

/// Sees each layer's blocks and the cache so far, as the forward pass finishes the layer.
pub type Observer<'a> = dyn FnMut(usize, &Blocks, &Cache) -> Result<()> + 'a;

impl Model {
    /// The forward pass over `ids` (BOS included if wanted), caching what attribution needs.
    ///
    /// Cached activations are written into preallocated tensors as each layer finishes (in
    /// place on the CPU backend), rather than collected per layer and stacked at the end,
    /// which would hold two copies of the cache at once.
    pub fn run(&self, ids: &[u32]) -> Result<Cache> {
        self.forward(ids, &Interventions::default(), &mut |_, _| true, None)
    }

    /// [`Model::run`], telling `progress` `(layers done, layers)` after each layer; when it
    /// returns `false` the pass stops there with [`crate::ModelError::ComputeCancelled`].
    pub fn run_with_progress(
        &self,
        ids: &[u32],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Cache> {
        self.forward(ids, &Interventions::default(), progress, None)
    }

    /// The real forward pass with `iv` applied (ablated sites recompute everything downstream):
    /// the logits at the last position `[V]`.
    pub fn run_ablated(&self, ids: &[u32], iv: &Interventions) -> Result<Tensor<1>> {
        for a in &iv.ablations {
            if a.pos >= ids.len() {
                return Err(crate::error::ModelError::BadAblation(format!(
                    "position {} is past the prompt's {} tokens",
                    a.pos,
                    ids.len()
                )));
            }
        }
        Ok(self.forward(ids, iv, &mut |_, _| true, None)?.last_logits)
    }

    /// [`Model::run_with_progress`], handing `observe` each layer's blocks and the cache as it
    /// stands once that layer is done (later layers' components are zero, their other entries
    /// unset): what can be computed from a layer while it is held — a streaming model's
    /// overview — is computed then instead of reading the layer again.
    pub fn run_observed(
        &self,
        ids: &[u32],
        progress: &mut dyn FnMut(usize, usize) -> bool,
        observe: &mut Observer<'_>,
    ) -> Result<Cache> {
        self.forward(ids, &Interventions::default(), progress, Some(observe))
    }

    fn forward(
        &self,
        ids: &[u32],
        iv: &Interventions,
        progress: &mut dyn FnMut(usize, usize) -> bool,
        mut observe: Option<&mut Observer<'_>>,
    ) -> Result<Cache> {
        let spill = self.plan_prompt(ids)?;
        let cfg = &self.config;
        let w = &self.weights;
        let dev = &self.device;
        let layout = cfg.layout();
        let (n, h, kv, dh, d) = (
            ids.len(),
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_head,
            cfg.d_model,
        );
        let (n_l, n_c, g) = (cfg.n_layers, layout.n(), cfg.kv_group());
        let rotary = self.rotary_tables(n);

        let mut embed = self.embed(ids)?; // [P, d]
        for a in iv.at(|s| s == Site::Embed) {
            embed = ablate_rows(embed, a.pos, None, a.mode);
        }
        // A cache that does not fit the budget lives in temporary files, written in place
        // (zero-filled); in memory, an observer reads the components of layers not yet
        // computed (times zero).
        let mut spills = Vec::new();
        let mut spilled = |shape: &[usize]| -> Result<Option<Tensor<4>>> {
            if !spill {
                return Ok(None);
            }
            let (t, f) = crate::spill::Spill::zeros([shape[0], shape[1], shape[2], shape[3]])?;
            spills.push(f);
            Ok(Some(t))
        };
        let comps0 = spilled(&[n_c, n, d, 1])?.map(|t| t.squeeze_dim::<3>(3));
        let ks0 = spilled(&[n_l, kv, n, dh])?;
        let vs0 = spilled(&[n_l, kv, n, dh])?;
        let release = || spills.iter().for_each(crate::spill::Spill::release);
        if spill {
            crate::memory::count_spill(spills.iter().map(|f| f.bytes() as u64).sum());
        }
        let mut comps = match comps0 {
            Some(t) => t,
            None if observe.is_some() => Tensor::<3>::zeros([n_c, n, d], dev),
            None => Tensor::<3>::empty([n_c, n, d], dev),
        }
        .slice_assign([0..1, 0..n, 0..d], embed.clone().unsqueeze_dim::<3>(0));
        let mut x = embed;
        if let (Some(w_pos), Some(c)) = (&w.w_pos, layout.index(Comp::Pos)) {
            let mut pos = w_pos.clone().narrow(0, 0, n); // [P, d]
            for a in iv.at(|s| s == Site::Pos) {
                pos = ablate_rows(pos, a.pos, None, a.mode);
            }
            x = x + pos.clone();
            comps = comps.slice_assign([c..c + 1, 0..n, 0..d], pos.unsqueeze_dim::<3>(0));
        }
        let mut s1s = Tensor::<2>::empty([n_l, n], dev);
        let mut s2s = Tensor::<2>::empty([n_l, n], dev);
        let mut ks = ks0.unwrap_or_else(|| Tensor::<4>::empty([n_l, kv, n, dh], dev));
        let mut vs = vs0.unwrap_or_else(|| Tensor::<4>::empty([n_l, kv, n, dh], dev));
        let mut qk_scales: Option<(Tensor<3>, Tensor<3>)> = None;
        let mut post_scales: Option<(Tensor<2>, Tensor<2>)> = None;

        // Streamed layers: the next one is read and processed on another thread while this
        // one computes.
        let stream = w.layers.stream();
        let state = std::thread::scope(|scope| -> Result<_> {
            let mut next: Option<std::thread::ScopedJoinHandle<'_, Result<Blocks>>> = None;
            for l in 0..n_l {
                let b = match next.take() {
                    Some(h) => h.join().map_err(|_| {
                        crate::error::ModelError::Device(format!("reading layer {l} panicked"))
                    })??,
                    None => self.blocks(&(l..l + 1))?,
                };
                if let Some(st) = stream
                    && l + 1 < n_l
                {
                    next = Some(scope.spawn(move || st.layer(l + 1, super::Part::Whole)));
                }
                let layer = |t: &Tensor<4>| t.clone().squeeze_dim::<3>(0);
                let layer3 = |t: &Tensor<3>| t.clone().squeeze_dim::<2>(0);
                let layer2 = |t: &Tensor<2>| t.clone(); // [1, ·]
                let rotate = |t: Tensor<3>| match &rotary {
                    Some(r) => r.layer(l).apply(t, 0),
                    None => t,
                };

                // attention: queries, keys and values for every position, then blocks of queries
                let (xn, s1) = self.norm(x.clone(), Self::layer_ln(&b.ln1, 0));
                let xh = xn.unsqueeze_dim::<3>(0); // [1, P, d]
                let q = xh.clone().matmul(layer(&b.w_q)) + layer3(&b.b_q).unsqueeze_dim::<3>(1); // [H, P, dh]
                let k = xh.clone().matmul(layer(&b.w_k)) + layer3(&b.b_k).unsqueeze_dim::<3>(1); // [KV, P, dh]
                let (q, k) = match &b.qk_norm {
                    Some((qn, kn)) => {
                        let (q, sq) = self.head_norm(q, layer2(qn));
                        let (k, sk) = self.head_norm(k, layer2(kn));
                        let (qs, ks) = qk_scales.get_or_insert_with(|| {
                            (
                                Tensor::<3>::empty([n_l, h, n], dev),
                                Tensor::<3>::empty([n_l, kv, n], dev),
                            )
                        });
                        *qs = qs
                            .clone()
                            .slice_assign([l..l + 1, 0..h, 0..n], sq.unsqueeze_dim::<3>(0));
                        *ks = ks
                            .clone()
                            .slice_assign([l..l + 1, 0..kv, 0..n], sk.unsqueeze_dim::<3>(0));
                        (q, k)
                    }
                    None => (q, k),
                };
                let q = rotate(q);
                let k = rotate(k);
                let v = xh.matmul(layer(&b.w_v)) + layer3(&b.b_v).unsqueeze_dim::<3>(1); // [KV, P, dh]
                let span = cfg.attn_spans[l];
                let mut z = Tensor::<3>::empty([h, n, dh], dev);
                for q0 in (0..n).step_by(QUERY_BLOCK) {
                    let bq = QUERY_BLOCK.min(n - q0);
                    let k_end = q0 + bq; // no query of the block sees past its last position
                    let qb = q.clone().narrow(1, q0, bq).reshape([kv, g * bq, dh]); // query heads grouped by key/value head
                    let scores = qb.matmul(k.clone().narrow(1, 0, k_end).swap_dims(1, 2)); // [KV, g·Bq, K]
                    let pattern = self.block_softmax(scores, span, q0, bq)?;
                    let zb = pattern
                        .matmul(v.clone().narrow(1, 0, k_end)) // [KV, g·Bq, dh]
                        .reshape([h, bq, dh]);
                    z = z.slice_assign([0..h, q0..q0 + bq, 0..dh], zb);
                }
                let mut z_flat = z.swap_dims(0, 1).reshape([n, h * dh]); // [P, H·dh]
                for a in iv.at(|s| matches!(s, Site::Head { layer, .. } if layer == l)) {
                    if let Site::Head { head, .. } = a.site {
                        z_flat =
                            ablate_rows(z_flat, a.pos, Some(head * dh..(head + 1) * dh), a.mode);
                    }
                }
                let w_o = layer(&b.w_o).reshape([h * dh, d]);
                let mut attn_out = z_flat.matmul(w_o) + layer2(&b.b_o); // [P, d]
                if let Some((pa, _)) = &b.post_norm {
                    let (y, s) = self.post_norm(attn_out, layer2(pa));
                    attn_out = y;
                    let (sa, _) = post_scales.get_or_insert_with(|| {
                        (
                            Tensor::<2>::empty([n_l, n], dev),
                            Tensor::<2>::empty([n_l, n], dev),
                        )
                    });
                    *sa = sa
                        .clone()
                        .slice_assign([l..l + 1, 0..n], s.unsqueeze_dim::<2>(0));
                }
                for a in iv.at(|s| s == Site::Attn(l)) {
                    attn_out = ablate_rows(attn_out, a.pos, None, a.mode);
                }
                let resid_mid = x.clone() + attn_out.clone();
                let c = layout.attn(l);
                comps = comps.slice_assign([c..c + 1, 0..n, 0..d], attn_out.unsqueeze_dim::<3>(0));
                s1s = s1s.slice_assign([l..l + 1, 0..n], s1.unsqueeze_dim::<2>(0));
                ks = ks.slice_assign([l..l + 1, 0..kv, 0..n, 0..dh], k.unsqueeze_dim::<4>(0));
                vs = vs.slice_assign([l..l + 1, 0..kv, 0..n, 0..dh], v.unsqueeze_dim::<4>(0));

                // MLP: reads resid_mid, or resid_pre with a parallel residual
                let mlp_in = if cfg.parallel_residual {
                    x
                } else {
                    resid_mid.clone()
                };
                let (xn2, s2) = self.norm(mlp_in, Self::layer_ln(&b.ln2, 0));
                let (pre, lin) = self.mlp_pre_activations(&b, xn2.unsqueeze_dim::<3>(0))?;
                let (pre, lin) = (pre.squeeze_dim::<2>(0), lin.map(|t| t.squeeze_dim::<2>(0)));
                let mut post = self.mlp_post(pre, lin)?;
                for a in iv.at(|s| matches!(s, Site::Neuron { layer, .. } if layer == l)) {
                    if let Site::Neuron { neuron, .. } = a.site {
                        post = ablate_rows(post, a.pos, Some(neuron..neuron + 1), a.mode);
                    }
                }
                let m = b.mlp()?;
                let mut mlp_out = post.matmul(layer3(&m.w_out)) + layer2(&m.b_out); // [P, d]
                if let (Some((_, pm)), Some((_, sm))) = (&b.post_norm, &mut post_scales) {
                    let (y, s) = self.post_norm(mlp_out, layer2(pm));
                    mlp_out = y;
                    *sm = sm
                        .clone()
                        .slice_assign([l..l + 1, 0..n], s.unsqueeze_dim::<2>(0));
                }
                for a in iv.at(|s| s == Site::Mlp(l)) {
                    mlp_out = ablate_rows(mlp_out, a.pos, None, a.mode);
                }
                x = resid_mid + mlp_out.clone();
                let c = layout.mlp(l);
                comps = comps.slice_assign([c..c + 1, 0..n, 0..d], mlp_out.unsqueeze_dim::<3>(0));
                s2s = s2s.slice_assign([l..l + 1, 0..n], s2.unsqueeze_dim::<2>(0));
                if let Some(obs) = observe.as_mut() {
                    let partial = Cache {
                        spilled: Vec::new(),
                        token_ids: ids.to_vec(),
                        layout,
                        components: comps.clone(),
                        ln1_scale: s1s.clone(),
                        ln2_scale: s2s.clone(),
                        final_scale: Tensor::ones([n], dev),
                        rotary: rotary.clone(),
                        k: ks.clone(),
                        v: vs.clone(),
                        qk_scale: qk_scales.clone(),
                        post_scale: post_scales.clone(),
                        last_logits: Tensor::zeros([1], dev),
                    };
                    obs(l, &b, &partial)?;
                }
                release();
                if !progress(l + 1, n_l) {
                    return Err(crate::error::ModelError::ComputeCancelled);
                }
            }
            Ok((x, comps, s1s, s2s, ks, vs, qk_scales, post_scales))
        })?;
        let (x, comps, s1s, s2s, ks, vs, qk_scales, post_scales) = state;

        let (mut xf, sf) = self.norm(x.clone(), w.ln_f.clone());
        if let Some(s) = iv.final_scale {
            // the last position normalised by the clean run's scale
            let xn = self.centred(x.narrow(0, n - 1, 1)).div_scalar(s);
            let wb = w.ln_f.as_ref().map(|(wf, bf)| {
                (
                    wf.clone().unsqueeze_dim::<2>(0),
                    bf.clone().unsqueeze_dim::<2>(0),
                )
            });
            xf = xf.slice_assign([n - 1..n, 0..d], Self::ln_affine(xn, wb));
        }
        let last = xf.narrow(0, n - 1, 1); // [1, d]
        let last_logits = self.logits(last)?.squeeze_dim::<1>(0);

        release();
        let cache = Cache {
            spilled: spills,
            token_ids: ids.to_vec(),
            layout,
            components: comps,
            ln1_scale: s1s,
            ln2_scale: s2s,
            final_scale: sf,
            rotary,
            k: ks,
            v: vs,
            qk_scale: qk_scales,
            post_scale: post_scales,
            last_logits,
        };
        self.check_finite(&cache)?;
        Ok(cache)
    }

    /// Every frozen norm scale and the last logits must be finite: an overflow anywhere in the
    /// residual stream shows up in the next norm's scale (an infinite scale would silently
    /// zero every readout). The first non-finite one, in forward order, is named.
    fn check_finite(&self, c: &Cache) -> Result<()> {
        let n = c.n_pos();
        let read = |t: &Tensor<2>| crate::model::to_vec(t.clone());
        let (s1, s2) = (read(&c.ln1_scale)?, read(&c.ln2_scale)?);
        let post = match &c.post_scale {
            Some((a, m)) => Some((read(a)?, read(m)?)),
            None => None,
        };
        let first_bad =
            |v: &[f32], l: usize| v[l * n..(l + 1) * n].iter().position(|x| !x.is_finite());
        let bad = |what: String| crate::error::ModelError::NonFiniteActivation { what };
        for l in 0..self.config.n_layers {
            if let Some(p) = first_bad(&s1, l) {
                return Err(bad(format!(
                    "the scale of L{l}'s attention input norm at position {p}"
                )));
            }
            if let Some((a, _)) = &post
                && let Some(p) = first_bad(a, l)
            {
                return Err(bad(format!(
                    "the scale of L{l}'s post-attention norm at position {p}"
                )));
            }
            if let Some(p) = first_bad(&s2, l) {
                return Err(bad(format!(
                    "the scale of L{l}'s MLP input norm at position {p}"
                )));
            }
            if let Some((_, m)) = &post
                && let Some(p) = first_bad(m, l)
            {
                return Err(bad(format!(
                    "the scale of L{l}'s post-MLP norm at position {p}"
                )));
            }
        }
        let fin = crate::model::to_vec(c.final_scale.clone())?;
        if let Some(p) = fin.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("the scale of the final norm at position {p}")));
        }
        let logits = crate::model::to_vec(c.last_logits.clone())?;
        if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("the logit of token {i} at the last position")));
        }
        Ok(())
    }
}

//! The forward pass in bounded memory, and the activation cache it leaves behind.
//!
//! Attention runs in blocks of query positions: no `[H, P, P]` score tensor ever exists, only
//! `[H, B, K]` for a block of `B` queries and the `K` keys they can see. The cache keeps what the
//! attribution needs in `O(L·P·d)` — the residual components, the norm scales, the rotated
//! keys and the values — and everything else (a query, a pattern row, a head's `z` at a
//! position, an MLP's pre-activation at a position) is recomputed from it on demand, batched,
//! in [`crate::model::cache`].

use std::sync::Arc;

use burn::tensor::Tensor;

use crate::error::Result;
use crate::layout::Comp;
use crate::model::ablate::{Interventions, PassInterventions, Site};
use crate::model::layer::QUERY_BLOCK;
use crate::model::{Blocks, Cache, Model};

/// A pass of ablated runs holds about this many rows (copies of the prompt) at once.
const ABLATION_ROWS: usize = 1024;
/// … and at most this many copies.
const ABLATION_COPIES: usize = 16;

/// How many runs of batches' openings [`Model::run_batch_whole`] keeps …
pub(crate) const PREFIX_RUNS: usize = 16;
/// … their caches together within this many bytes.
const PREFIX_BYTES: u64 = 64 << 20;

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
        self.check_interventions(ids.len(), iv)?;
        Ok(self.forward(ids, iv, &mut |_, _| true, None)?.last_logits)
    }

    /// Every ablation within the prompt's `n` positions, and every patch of its site's width.
    fn check_interventions(&self, n: usize, iv: &Interventions) -> Result<()> {
        let (d, dh) = (self.config.d_model, self.config.d_head);
        for a in &iv.ablations {
            if a.pos >= n {
                return Err(crate::error::ModelError::BadAblation(format!(
                    "position {} is past the prompt's {} tokens",
                    a.pos, n
                )));
            }
            let width = a.width(d, dh);
            match (a.mode, &a.patch) {
                (crate::model::ablate::AblationMode::Patch, Some(v)) if v.len() == width => {}
                (crate::model::ablate::AblationMode::Patch, got) => {
                    return Err(crate::error::ModelError::BadAblation(format!(
                        "patching {} at {} needs its {width} values from the other run (got {})",
                        a.site,
                        a.pos,
                        got.as_ref().map_or(0, Vec::len)
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// [`Model::run_ablated`] of the prompt of `clean` (its cache) resumed at the earliest
    /// layer an ablation touches: the layers below it are the clean run's (their output is
    /// the sum of the cached components upstream of that layer), so only the layers from it
    /// on are recomputed. The logits at the last position `[V]`.
    pub fn run_ablated_from(&self, clean: &Cache, iv: &Interventions) -> Result<Tensor<1>> {
        self.run_ablated_in_passes(clean, std::slice::from_ref(iv), 1, &mut |_, _| true)?
            .pop()
            .ok_or_else(|| crate::error::ModelError::Device("an ablated run gave no logits".into()))
    }

    /// The clean run's residual stream entering layer `l` `[P, d]`: the sum of the cached
    /// components upstream of it.
    fn entering(clean: &Cache, l: usize) -> Tensor<2> {
        clean
            .components
            .clone()
            .narrow(0, 0, clean.layout.pre(l))
            .sum_dim(0)
            .squeeze_dim::<2>(0)
    }

    /// Several ablated runs of the prompt of `clean` (its cache): each run's logits at the
    /// last position `[V]`, as [`Model::run_ablated_from`] gives them, in the order of `ivs`.
    /// Runs that resume at nearby layers share one forward pass: up to
    /// [`Model::ablation_copies`] copies of the prompt laid end to end (as [`Model::run_batch`]
    /// lays prompts, each copy attending to itself only), each with its own interventions, the
    /// pass resumed at the earliest layer any of them ablates (the others' layers between are
    /// the clean run's, recomputed). `progress(runs done, runs)` after each pass; `false` stops
    /// with [`crate::ModelError::ComputeCancelled`].
    pub fn run_ablated_many(
        &self,
        clean: &Cache,
        ivs: &[Interventions],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Tensor<1>>> {
        let copies = self.ablation_copies(clean.n_pos())?;
        self.run_ablated_in_passes(clean, ivs, copies, progress)
    }

    /// [`Model::run_ablated_many`] with at most `copies` runs a pass.
    pub fn run_ablated_in_passes(
        &self,
        clean: &Cache,
        ivs: &[Interventions],
        copies: usize,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Tensor<1>>> {
        let n = clean.n_pos();
        for iv in ivs {
            self.check_interventions(n, iv)?;
        }
        let copies = copies.max(1);
        let mut order: Vec<usize> = (0..ivs.len()).collect();
        order.sort_by_key(|&i| (ivs[i].first_layer(), i));
        let mut out: Vec<Option<Tensor<1>>> = vec![None; ivs.len()];
        let mut done = 0;
        for group in order.chunks(copies) {
            let runs: Vec<&Interventions> = group.iter().map(|&i| &ivs[i]).collect();
            let b = runs.len();
            let first = runs.iter().map(|iv| iv.first_layer()).min().unwrap_or(0);
            let ids: Vec<u32> = clean.token_ids.repeat(b);
            let entering = |l| match b {
                1 => Self::entering(clean, l),
                _ => Self::entering(clean, l).repeat_dim(0, b),
            };
            let start = (first > 0).then(|| (first, entering(first)));
            let caches =
                self.forward_rows(&ids, &vec![n; b], &runs, &mut |_, _| true, None, start)?;
            for (&i, l) in group.iter().zip(caches.into_iter().map(|c| c.last_logits)) {
                out[i] = Some(l);
            }
            done += group.len();
            if !progress(done, ivs.len()) {
                return Err(crate::error::ModelError::ComputeCancelled);
            }
        }
        out.into_iter()
            .map(|l| {
                l.ok_or_else(|| {
                    crate::error::ModelError::Device("an ablated run gave no logits".into())
                })
            })
            .collect()
    }

    /// How many ablated runs of an `n`-token prompt share a forward pass: enough copies for
    /// [`ABLATION_ROWS`] rows (at most [`ABLATION_COPIES`]) when the copies' cache and working
    /// tensors fit the budget beside the model; one at a time on a model that streams its
    /// layers or for a prompt that spills its cache.
    /// `RDLA_ABLATION_COPIES=K` caps the copies a pass (1: one run a pass, for comparison).
    pub fn ablation_copies(&self, n: usize) -> Result<usize> {
        let cap = std::env::var("RDLA_ABLATION_COPIES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(ABLATION_COPIES);
        let want = (ABLATION_ROWS / n.max(1)).clamp(1, cap.clamp(1, ABLATION_COPIES));
        if want == 1 || self.streams_layers() || (self.on_cpu() && crate::spill::forced()) {
            return Ok(1);
        }
        let fits = |b: usize| {
            self.fits(b * n, crate::memory::prompt_bytes(&self.config, b * n), "")
                .is_ok()
        };
        Ok((1..=want).rev().find(|&b| fits(b)).unwrap_or(1))
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

    /// One forward pass over several prompts, each prompt's cache the one [`Model::run`]
    /// gives it: the prompts, each padded at its end to the longest (with its own last token),
    /// are laid end to end along the position axis (every per-position step — norms,
    /// projections, the MLP — runs once for all of them), and attention runs per prompt (the
    /// prompts folded into the key/value-head axis, so no prompt sees another's keys; rotary
    /// positions start at 0 in each). Padding comes after a prompt's last token, so causal
    /// attention is its mask: no real position sees it, and each cache is cut to its prompt's
    /// length. For many short prompts of similar lengths (a census) this saves most of the
    /// per-operation overhead of one pass each. A model that streams its layers, or prompts
    /// whose caches would spill, are refused ([`crate::ModelError::BadBatch`]): run them one at
    /// a time.
    pub fn run_batch(&self, prompts: &[&[u32]]) -> Result<Vec<Cache>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let run = self.run_batch_whole(prompts, false)?;
        self.split_batch(&run)
    }

    /// [`Model::run_batch`] before its cache is split: the prompts' cache as one, each
    /// prompt's positions `b·stride .. b·stride + lens[b]` (padding after), and the logits at
    /// each prompt's last position `[B, V]`. What a computation over the whole batch at
    /// once reads ([`crate::Model::last_pattern_rows`]).
    ///
    /// The tokens every prompt starts with are run once ([`Model::opening`]). With
    /// `at_last`, a batch of prompts of equal lengths on a model without per-head norms or
    /// post-norms computes its last layer's queries, outputs and MLP at each prompt's last
    /// position only (its keys and values, and its input norm's scales, at every position):
    /// all that the totals at the last position read, nothing the cache of a position before
    /// it would need. The run says so ([`BatchRun::whole`] is then `false`) and is not split.
    pub fn run_batch_whole(&self, prompts: &[&[u32]], at_last: bool) -> Result<BatchRun> {
        let bad = |why: String| Err(crate::error::ModelError::BadBatch(why));
        let Some(n) = prompts.iter().map(|p| p.len()).max() else {
            return bad("no prompts".into());
        };
        for p in prompts {
            if self.plan_prompt(p)? {
                return bad("a prompt's cache would spill to a file".into());
            }
        }
        if self.streams_layers() {
            return bad("the model streams its layers".into());
        }
        let all: Vec<u32> = prompts
            .iter()
            .flat_map(|p| {
                let pad = p.last().copied().unwrap_or(0);
                p.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, n - p.len()))
            })
            .collect();
        if prompts.len() > 1 {
            // the whole batch's cache and working tensors against the budget
            self.fits(
                all.len(),
                crate::memory::prompt_bytes(&self.config, all.len()),
                &format!(" ({} prompts of up to {n} tokens at once)", prompts.len()),
            )?;
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let prefix = self.opening(prompts)?;
        let last_layer_at_last = at_last && self.can_cut_last_layer(all.len(), &lens);
        let (cache, xf) = self.forward_whole(
            &all,
            &lens,
            &[],
            &mut |_, _| true,
            None,
            None,
            Plan {
                prefix: prefix.as_deref(),
                last_layer_at_last,
            },
        )?;
        let mut run = self.batch_run(cache, &xf, lens)?;
        run.whole = !last_layer_at_last;
        self.check_finite(&run.cache)?;
        Ok(run)
    }

    /// Whether batches of `rows[i]` rows each (prompts times their padded length) can run at
    /// once, each on a thread of its own ([`Model::run_batch_whole`] is `&self`): the
    /// model's layers resident (not streamed), and the batches' caches and working tensors
    /// together within the budget beside it.
    pub fn batches_fit(&self, rows: &[usize]) -> bool {
        let bytes = rows
            .iter()
            .map(|&r| crate::memory::prompt_bytes(&self.config, r))
            .sum();
        !self.streams_layers() && self.fits(rows.iter().sum(), bytes, "").is_ok()
    }

    /// The run of the tokens every prompt of a batch starts with (all but the last of the
    /// shortest at most), when there are several prompts: from the most recent runs
    /// ([`PREFIX_RUNS`]) or run now and kept. Causal attention makes these positions'
    /// activations the same in every prompt that starts with them, so the batch's pass
    /// computes only the rest of each prompt ([`Model::forward_whole`]).
    fn opening(&self, prompts: &[&[u32]]) -> Result<Option<Arc<Cache>>> {
        let (Some(first), true) = (prompts.first(), prompts.len() > 1) else {
            return Ok(None);
        };
        let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
        let p = (0..shortest.saturating_sub(1))
            .take_while(|&i| prompts.iter().all(|q| q[i] == first[i]))
            .count();
        if p == 0 {
            return Ok(None);
        }
        let key = &first[..p];
        let kept = |runs: &mut Vec<(Vec<u32>, Arc<Cache>)>| {
            let i = runs.iter().position(|(k, _)| k == key)?;
            let hit = runs.remove(i);
            let run = hit.1.clone();
            runs.push(hit);
            Some(run)
        };
        if let Some(run) = self.prefix_runs.lock().ok().as_deref_mut().and_then(kept) {
            return Ok(Some(run));
        }
        let (cache, _) = self.forward_whole(
            key,
            &[p],
            &[],
            &mut |_, _| true,
            None,
            None,
            Plan::default(),
        )?;
        let run = Arc::new(cache);
        let bytes = |n: usize| crate::memory::spillable_bytes(&self.config, n);
        if let Ok(mut runs) = self.prefix_runs.lock()
            && bytes(p) <= PREFIX_BYTES
        {
            // the oldest go first
            while runs.len() >= PREFIX_RUNS
                || runs.iter().map(|(k, _)| bytes(k.len())).sum::<u64>() + bytes(p) > PREFIX_BYTES
            {
                runs.remove(0);
            }
            runs.push((key.to_vec(), run.clone()));
        }
        Ok(Some(run))
    }

    /// A batch's run from its cache and final residual `xf [B·P', d]` (`P'` rows of each
    /// prompt: its last `P'` positions): the logits at each prompt's last position (`lens[b]`
    /// real tokens of `P` each).
    fn batch_run(&self, cache: Cache, xf: &Tensor<2>, lens: Vec<usize>) -> Result<BatchRun> {
        let n = cache.n_pos() / lens.len().max(1);
        let rows = xf.dims()[0] / lens.len().max(1);
        let lasts = Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(
                lens.iter()
                    .enumerate()
                    .map(|(b, &l)| (b * rows + l + rows - n - 1) as i64)
                    .collect::<Vec<_>>(),
                [lens.len()],
            ),
            &self.device,
        );
        let last_logits = self.logits(xf.clone().select(0, lasts))?; // [B, V]
        Ok(BatchRun {
            cache,
            lens,
            stride: n,
            last_logits,
            whole: true,
        })
    }

    /// One prompt's forward pass ([`Model::forward_rows`] of a batch of one).
    fn forward(
        &self,
        ids: &[u32],
        iv: &Interventions,
        progress: &mut dyn FnMut(usize, usize) -> bool,
        observe: Option<&mut Observer<'_>>,
    ) -> Result<Cache> {
        let mut caches = self.forward_rows(ids, &[ids.len()], &[iv], progress, observe, None)?;
        caches
            .pop()
            .ok_or_else(|| crate::error::ModelError::Device("a forward pass gave no cache".into()))
    }

    /// The forward pass over `lens.len()` prompts of `ids.len() / lens.len()` tokens each
    /// (padded), laid end to end, the `b`-th one's first `lens[b]` tokens real, with
    /// interventions `ivs[b]` (none when `ivs` is empty; a batch has no observer and no spill:
    /// checked by [`Model::run_batch`] and [`Model::run_ablated_many`]). With `start = (l0,
    /// resid)` the pass begins at layer `l0` from the residual stream `resid [B·P, d]`
    /// entering it; the returned caches then hold nothing of the layers below `l0`.
    fn forward_rows(
        &self,
        ids: &[u32],
        lens: &[usize],
        ivs: &[&Interventions],
        progress: &mut dyn FnMut(usize, usize) -> bool,
        observe: Option<&mut Observer<'_>>,
        start: Option<(usize, Tensor<2>)>,
    ) -> Result<Vec<Cache>> {
        let (mut whole, xf) =
            self.forward_whole(ids, lens, ivs, progress, observe, start, Plan::default())?;
        if lens.len() > 1 {
            return self.split_batch(&self.batch_run(whole, &xf, lens.to_vec())?);
        }
        whole.last_logits = self
            .logits(xf.narrow(0, ids.len() - 1, 1))?
            .squeeze_dim::<1>(0);
        self.check_finite(&whole)?;
        Ok(vec![whole])
    }

    /// [`Model::forward_rows`] before a batch's cache is split: the cache of every row (its
    /// `last_logits` unset) and the final residual, normalised, `[B·P', d]`. With a
    /// `prefix` (the run of the `p` tokens every prompt starts with: [`Model::opening`]),
    /// only each prompt's last `P' = P − p` positions are computed, against the prefix's
    /// keys and values, and the prefix's rows of the cache are its run's (no interventions,
    /// no resumed pass, no observer then).
    #[allow(clippy::too_many_arguments)]
    fn forward_whole(
        &self,
        ids: &[u32],
        lens: &[usize],
        ivs: &[&Interventions],
        progress: &mut dyn FnMut(usize, usize) -> bool,
        mut observe: Option<&mut Observer<'_>>,
        start: Option<(usize, Tensor<2>)>,
        plan: Plan<'_>,
    ) -> Result<(Cache, Tensor<2>)> {
        let prefix = plan.prefix;
        // the last layer at each prompt's last position only (its keys and values at all)
        let at_last_only = plan.last_layer_at_last;
        let plain = ivs.is_empty() && start.is_none() && observe.is_none();
        self.check_plan(plan, ids.len(), lens, plain)?;
        let batch = lens.len().max(1);
        let spill = batch == 1 && self.plan_prompt(ids)?;
        let cfg = &self.config;
        let w = &self.weights;
        let dev = &self.device;
        let layout = cfg.layout();
        let n_all = ids.len();
        let (n, h, kv, dh, d) = (
            n_all / batch,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_head,
            cfg.d_model,
        );
        let (n_l, n_c) = (cfg.n_layers, layout.n());
        let rotary = self.rotary_tables(n);
        let iv = PassInterventions { copies: ivs, n };
        let whole = |site: Site, s: Site| (s == site).then_some(None);
        // positions `p0..n` of each prompt are computed (`nq` of them), the first `p0` are the
        // prefix's
        let p0 = prefix.map_or(0, Cache::n_pos);
        let nq = n - p0;
        let at_rows = Rows {
            prefix,
            batch,
            n,
            p0,
            dev,
        };
        let own = at_rows.own(ids);
        let comp_rows = Rows::comp;

        let embed = iv.apply(self.embed(&own)?, |s| whole(Site::Embed, s)); // [B·P', d]
        // A cache that does not fit the budget lives in temporary files, written in place
        // (zero-filled); in memory, an observer reads the components of layers not yet
        // computed (times zero).
        let (comps0, ks0, vs0, spills) = match spill {
            true => Self::spilled_cache([n_c, n_all, d], [n_l, kv, n_all, dh])?,
            false => (None, None, None, Vec::new()),
        };
        let release = || spills.iter().for_each(crate::spill::Spill::release);
        let mut comps = match comps0 {
            Some(t) => t,
            None if observe.is_some() => Tensor::<3>::zeros([n_c, n_all, d], dev),
            None => Tensor::<3>::empty([n_c, n_all, d], dev),
        }
        .slice_assign(
            [0..1, 0..n_all, 0..d],
            at_rows
                .whole(embed.clone(), comp_rows(0), 0)
                .unsqueeze_dim::<3>(0),
        );
        let mut x = embed;
        if let (Some(w_pos), Some(c)) = (&w.w_pos, layout.index(Comp::Pos)) {
            let pos = w_pos.clone().narrow(0, p0, nq); // [P', d]
            // each prompt's positions start at 0
            let pos = pos.repeat_dim(0, batch);
            let pos = iv.apply(pos, |s| whole(Site::Pos, s));
            x = x + pos.clone();
            comps = comps.slice_assign(
                [c..c + 1, 0..n_all, 0..d],
                at_rows.whole(pos, comp_rows(c), 0).unsqueeze_dim::<3>(0),
            );
        }
        // a pass resumed at a layer starts from the residual stream entering it
        let first = start.as_ref().map_or(0, |(l0, _)| *l0);
        // (and holds no scale of the layers below: zero, not unset)
        let resumed = start.is_some();
        let scales = || {
            if resumed {
                Tensor::<2>::zeros([n_l, n_all], dev)
            } else {
                Tensor::<2>::empty([n_l, n_all], dev)
            }
        };
        let mut s1s = scales();
        let mut s2s = scales();
        if let Some((_, resid)) = start {
            x = resid;
        }
        let mut ks = ks0.unwrap_or_else(|| Tensor::<4>::empty([n_l, kv, n_all, dh], dev));
        let mut vs = vs0.unwrap_or_else(|| Tensor::<4>::empty([n_l, kv, n_all, dh], dev));
        let mut qk_scales: Option<(Tensor<3>, Tensor<3>)> = None;
        let mut post_scales: Option<(Tensor<2>, Tensor<2>)> = None;

        // Streamed layers: the next one is read and processed on another thread while this
        // one computes.
        let stream = w.layers.stream();
        let state = std::thread::scope(|scope| -> Result<_> {
            let mut next: Option<std::thread::ScopedJoinHandle<'_, Result<Blocks>>> = None;
            for l in first..n_l {
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
                // each prompt's positions start at 0
                let rotate_from = |t, m, first| at_rows.rotate(rotary.as_ref(), l, t, m, first);
                let rotate = |t: Tensor<3>| rotate_from(t, nq, p0);
                // the last layer's queries, outputs and MLP at each prompt's last position
                let last = at_last_only && l + 1 == n_l;
                let last_rows = |t: Tensor<2>| at_rows.last_rows(t, last);

                // attention: queries, keys and values for every position, then blocks of queries
                let (xn, s1) = self.norm(x.clone(), Self::layer_ln(&b.ln1, 0));
                let xh = xn.clone().unsqueeze_dim::<3>(0); // [1, P, d]
                let q = self.plus_bias(
                    last_rows(xn).unsqueeze_dim::<3>(0).matmul(layer(&b.w_q)),
                    layer3(&b.b_q).unsqueeze_dim::<3>(1),
                ); // [H, P, dh]
                let k = self.plus_bias(
                    xh.clone().matmul(layer(&b.w_k)),
                    layer3(&b.b_k).unsqueeze_dim::<3>(1),
                ); // [KV, P, dh]
                let (q, k) = match &b.qk_norm {
                    Some((qn, kn)) => {
                        let (q, sq) = self.head_norm(q, layer2(qn));
                        let (k, sk) = self.head_norm(k, layer2(kn));
                        at_rows.keep_qk_scales(&mut qk_scales, (sq, sk), l, n_l);
                        (q, k)
                    }
                    None => (q, k),
                };
                let q = match last {
                    true => rotate_from(q, 1, n - 1),
                    false => rotate(q),
                };
                // the keys and values of whole prompts `[KV, B·P, dh]`
                let k = at_rows.whole(rotate(k), |c| at(&c.k, l), 1);
                let v = self.plus_bias(
                    xh.matmul(layer(&b.w_v)),
                    layer3(&b.b_v).unsqueeze_dim::<3>(1),
                ); // [KV, P', dh]
                let v = at_rows.whole(v, |c| at(&c.v, l), 1);
                let span = cfg.attn_spans[l];
                let z_flat = iv.apply(
                    self.attention(q, k.clone(), v.clone(), batch, span)?, // [B·P', H·dh]
                    |s| match s {
                        Site::Head { layer, head } if layer == l => {
                            Some(Some(head * dh..(head + 1) * dh))
                        }
                        _ => None,
                    },
                );
                let w_o = layer(&b.w_o).reshape([h * dh, d]);
                let mut attn_out = self.plus_bias(z_flat.matmul(w_o), layer2(&b.b_o)); // [P, d]
                if let Some((pa, _)) = &b.post_norm {
                    let (y, s) = self.post_norm(attn_out, layer2(pa));
                    attn_out = y;
                    let s = at_rows.whole(s, |c| at_rows.post(c, 0, l), 0);
                    let (sa, _) = post_scales.get_or_insert_with(|| {
                        (
                            Tensor::<2>::empty([n_l, n_all], dev),
                            Tensor::<2>::empty([n_l, n_all], dev),
                        )
                    });
                    *sa = sa
                        .clone()
                        .slice_assign([l..l + 1, 0..n_all], s.unsqueeze_dim::<2>(0));
                }
                let attn_out = iv.apply(attn_out, |s| whole(Site::Attn(l), s));
                x = last_rows(x);
                let resid_mid = x.clone() + attn_out.clone();
                let c = layout.attn(l);
                comps = comps.slice_assign(
                    [c..c + 1, 0..n_all, 0..d],
                    at_rows
                        .placed(attn_out, last, comp_rows(c))
                        .unsqueeze_dim::<3>(0),
                );
                let s1 = at_rows.whole(s1, |c| at(&c.ln1_scale, l), 0);
                s1s = s1s.slice_assign([l..l + 1, 0..n_all], s1.unsqueeze_dim::<2>(0));
                ks = ks.slice_assign([l..l + 1, 0..kv, 0..n_all, 0..dh], k.unsqueeze_dim::<4>(0));
                vs = vs.slice_assign([l..l + 1, 0..kv, 0..n_all, 0..dh], v.unsqueeze_dim::<4>(0));

                // MLP: reads resid_mid, or resid_pre with a parallel residual
                let mlp_in = if cfg.parallel_residual {
                    x
                } else {
                    resid_mid.clone()
                };
                let (xn2, s2) = self.norm(mlp_in, Self::layer_ln(&b.ln2, 0));
                let (pre, lin) = self.mlp_pre_activations(&b, xn2.unsqueeze_dim::<3>(0))?;
                let (pre, lin) = (pre.squeeze_dim::<2>(0), lin.map(|t| t.squeeze_dim::<2>(0)));
                let post = iv.apply(self.mlp_post(pre, lin)?, |s| match s {
                    Site::Neuron { layer, neuron } if layer == l => Some(Some(neuron..neuron + 1)),
                    _ => None,
                });
                let m = b.mlp()?;
                let mut mlp_out = self.plus_bias(post.matmul(layer3(&m.w_out)), layer2(&m.b_out)); // [P, d]
                if let (Some((_, pm)), Some((_, sm))) = (&b.post_norm, &mut post_scales) {
                    let (y, s) = self.post_norm(mlp_out, layer2(pm));
                    mlp_out = y;
                    let s = at_rows.whole(s, |c| at_rows.post(c, 1, l), 0);
                    *sm = sm
                        .clone()
                        .slice_assign([l..l + 1, 0..n_all], s.unsqueeze_dim::<2>(0));
                }
                let mlp_out = iv.apply(mlp_out, |s| whole(Site::Mlp(l), s));
                x = resid_mid + mlp_out.clone();
                let c = layout.mlp(l);
                comps = comps.slice_assign(
                    [c..c + 1, 0..n_all, 0..d],
                    at_rows
                        .placed(mlp_out, last, comp_rows(c))
                        .unsqueeze_dim::<3>(0),
                );
                let s2 = at_rows.placed1(s2, last, |c| at(&c.ln2_scale, l));
                s2s = s2s.slice_assign([l..l + 1, 0..n_all], s2.unsqueeze_dim::<2>(0));
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

        let (xf, sf) = self.final_norm(&x, &iv);
        let sf = at_rows.placed1(sf, at_last_only, |c| c.final_scale.clone());
        release();
        let last_logits = Tensor::zeros([1], dev); // set by the caller, from `xf`
        let whole = Cache {
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
        Ok((whole, xf))
    }

    /// A cache in temporary files (zero-filled, written in place): the components `comps`
    /// and the keys and values `kv`, and the files.
    #[allow(clippy::type_complexity)]
    fn spilled_cache(
        comps: [usize; 3],
        kv: [usize; 4],
    ) -> Result<(
        Option<Tensor<3>>,
        Option<Tensor<4>>,
        Option<Tensor<4>>,
        Vec<crate::spill::Spill>,
    )> {
        let (c, fc) = crate::spill::Spill::zeros([comps[0], comps[1], comps[2], 1])?;
        let (k, fk) = crate::spill::Spill::zeros(kv)?;
        let (v, fv) = crate::spill::Spill::zeros(kv)?;
        let spills = vec![fc, fk, fv];
        crate::memory::count_spill(spills.iter().map(|f| f.bytes() as u64).sum());
        Ok((Some(c.squeeze_dim::<3>(3)), Some(k), Some(v), spills))
    }

    /// Whether a batch of prompts of lengths `lens` laid end to end in `n_all` rows may have
    /// its last layer computed at each prompt's last position only: prompts of equal
    /// lengths (no padding), on a model without per-head norms or post-norms (their scales
    /// are kept at every position).
    fn can_cut_last_layer(&self, n_all: usize, lens: &[usize]) -> bool {
        lens.iter().all(|&l| l * lens.len().max(1) == n_all)
            && !self.config.qk_norm
            && !self.config.post_norms
    }

    /// A [`Plan`]'s shortcuts are for a plain pass (no interventions, no resumed pass, no
    /// observer: `plain`), the last layer's for `n_all` rows of prompts of equal lengths on a
    /// model without per-head norms or post-norms.
    fn check_plan(&self, plan: Plan<'_>, n_all: usize, lens: &[usize], plain: bool) -> Result<()> {
        let bad = |why: &str| Err(crate::error::ModelError::BadBatch(why.into()));
        if plan.last_layer_at_last && !self.can_cut_last_layer(n_all, lens) {
            return bad(
                "the last layer at the last positions only, for prompts of unequal lengths or a \
                 model with per-head norms or post-norms",
            );
        }
        if (plan.prefix.is_some() || plan.last_layer_at_last) && !plain {
            return bad("a batch's shortcuts with interventions, a resumed pass or an observer");
        }
        Ok(())
    }

    /// The norm of the final residual `x`, with the rows whose runs hold the final norm's
    /// scale (an intervention) normalised by that scale instead.
    fn final_norm(&self, x: &Tensor<2>, iv: &PassInterventions<'_>) -> (Tensor<2>, Tensor<1>) {
        let w = &self.weights;
        let d = self.config.d_model;
        let (mut xf, sf) = self.norm(x.clone(), w.ln_f.clone());
        for (r, s) in iv.final_scales() {
            // the run's last position normalised by the clean run's scale
            let xn = self.centred(x.clone().narrow(0, r, 1)).div_scalar(s);
            let wb = w.ln_f.as_ref().map(|(wf, bf)| {
                (
                    wf.clone().unsqueeze_dim::<2>(0),
                    bf.clone().unsqueeze_dim::<2>(0),
                )
            });
            xf = xf.slice_assign([r..r + 1, 0..d], Self::ln_affine(xn, wb));
        }
        (xf, sf)
    }

    /// Attention of `batch` prompts laid end to end: queries `[H, B·P', dh]` at each
    /// prompt's last `P'` positions, keys and values `[KV, B·P, dh]` at all its `P` (rotated)
    /// → each head's `z` as `[B·P', H·dh]`, a block of queries at a time. The prompts are
    /// folded into the key/value-head axis (`B·KV`, prompt major), so each sees its own keys
    /// only; query heads are grouped by key/value head.
    fn attention(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        batch: usize,
        span: crate::config::AttnSpan,
    ) -> Result<Tensor<2>> {
        let cfg = &self.config;
        let (h, kv, dh, g) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.kv_group());
        let rows = q.dims()[1];
        let (nq, n) = (rows / batch, k.dims()[1] / batch);
        let skip = n - nq; // the first query's position
        let dev = &self.device;
        let (qg, kg, vg) = if batch > 1 {
            let per = |t: Tensor<3>, heads: usize, m: usize| {
                t.reshape([heads, batch, m, dh])
                    .swap_dims(0, 1)
                    .reshape([batch * heads, m, dh])
            };
            (
                per(q, h, nq).reshape([batch * kv, g, nq, dh]),
                per(k, kv, n),
                per(v, kv, n),
            )
        } else {
            (q.reshape([kv, g, nq, dh]), k, v)
        };
        let bk = batch * kv;
        let mut z = Tensor::<3>::empty([batch * h, nq, dh], dev);
        for q0 in (0..nq).step_by(QUERY_BLOCK) {
            let bq = QUERY_BLOCK.min(nq - q0);
            let k_end = skip + q0 + bq; // no query of the block sees past its last position
            let qb = qg.clone().narrow(2, q0, bq).reshape([bk, g * bq, dh]);
            let scores = qb.matmul(kg.clone().narrow(1, 0, k_end).swap_dims(1, 2)); // [B·KV, g·Bq, K]
            let pattern = self.block_softmax(scores, span, skip + q0, bq)?;
            let zb = pattern
                .matmul(vg.clone().narrow(1, 0, k_end)) // [B·KV, g·Bq, dh]
                .reshape([batch * h, bq, dh]);
            z = z.slice_assign([0..batch * h, q0..q0 + bq, 0..dh], zb);
        }
        // [B·H, P', dh] → [B·P', H·dh]
        Ok(z.reshape([batch, h, nq, dh])
            .swap_dims(1, 2)
            .reshape([rows, h * dh]))
    }

    /// Each prompt's cache from a batch run: a view of its real positions, with its last
    /// logits.
    pub fn split_batch(&self, run: &BatchRun) -> Result<Vec<Cache>> {
        if !run.whole {
            return Err(crate::error::ModelError::BadBatch(
                "a batch run whose last layer is at the last positions only has no caches of \
                 single prompts"
                    .into(),
            ));
        }
        let (whole, lens, p) = (&run.cache, &run.lens, run.stride);
        let batch = lens.len();
        let logits = &run.last_logits;
        let mut caches = Vec::with_capacity(batch);
        for (b, &n) in lens.iter().enumerate() {
            let at = b * p;
            let cache = Cache {
                spilled: Vec::new(),
                token_ids: whole.token_ids[at..at + n].to_vec(),
                layout: whole.layout,
                components: whole.components.clone().narrow(1, at, n),
                ln1_scale: whole.ln1_scale.clone().narrow(1, at, n),
                ln2_scale: whole.ln2_scale.clone().narrow(1, at, n),
                final_scale: whole.final_scale.clone().narrow(0, at, n),
                rotary: whole.rotary.clone(),
                k: whole.k.clone().narrow(2, at, n),
                v: whole.v.clone().narrow(2, at, n),
                qk_scale: whole
                    .qk_scale
                    .as_ref()
                    .map(|(q, k)| (q.clone().narrow(2, at, n), k.clone().narrow(2, at, n))),
                post_scale: whole
                    .post_scale
                    .as_ref()
                    .map(|(a, m)| (a.clone().narrow(1, at, n), m.clone().narrow(1, at, n))),
                last_logits: logits.clone().narrow(0, b, 1).squeeze_dim::<1>(0),
            };
            self.check_finite(&cache)?;
            caches.push(cache);
        }
        Ok(caches)
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

/// What a batch's pass may skip ([`Model::run_batch_whole`]): the positions every prompt
/// starts with, run once beforehand (`prefix`), and, in the last layer, every position but
/// each prompt's last after its keys and values (`last_layer_at_last`; prompts of equal
/// lengths only).
#[derive(Default, Clone, Copy)]
struct Plan<'a> {
    prefix: Option<&'a Cache>,
    last_layer_at_last: bool,
}

/// Where a batch's computed rows go among the rows of whole prompts: `batch` prompts of `n`
/// positions, each computed from position `p0` on, the positions before it the run of the
/// `prefix` they share ([`Plan`]).
struct Rows<'a> {
    prefix: Option<&'a Cache>,
    batch: usize,
    n: usize,
    p0: usize,
    dev: &'a burn::tensor::Device,
}

impl Rows<'_> {
    /// `t`'s rows along `axis` (`batch` prompts' computed rows laid end to end) with, before
    /// each prompt's own, the rows `pre` takes from the run of the prefix they share (the
    /// same for every prompt): rows of whole prompts. `t` itself without a prefix.
    fn whole<const D: usize>(
        &self,
        t: Tensor<D>,
        pre: impl Fn(&Cache) -> Tensor<D>,
        axis: usize,
    ) -> Tensor<D> {
        let Some(pc) = self.prefix else {
            return t;
        };
        let pre = pre(pc);
        let each = t.dims()[axis] / self.batch.max(1);
        let parts = (0..self.batch)
            .flat_map(|b| [pre.clone(), t.clone().narrow(axis, b * each, each)])
            .collect();
        Tensor::cat(parts, axis)
    }

    /// The computed positions' tokens of `ids` (whole prompts laid end to end).
    fn own(&self, ids: &[u32]) -> Vec<u32> {
        match self.p0 {
            0 => ids.to_vec(),
            p0 => ids
                .chunks(self.n)
                .flat_map(|c| c[p0..].iter().copied())
                .collect(),
        }
    }

    /// `t [a, B·m, dh]` rotated by layer `l`'s rotary tables (none: `t`), each prompt's `m`
    /// rows at positions from `first`.
    fn rotate(
        &self,
        rotary: Option<&crate::rotary::LayerRotary>,
        l: usize,
        t: Tensor<3>,
        m: usize,
        first: usize,
    ) -> Tensor<3> {
        let [a, _, dh] = t.dims();
        match rotary {
            Some(r) if self.batch > 1 => r
                .layer(l)
                .apply(t.reshape([a * self.batch, m, dh]), first)
                .reshape([a, self.batch * m, dh]),
            Some(r) => r.layer(l).apply(t, first),
            None => t,
        }
    }

    /// Layer `l`'s per-head norm scales of queries and keys `([H, B·P'], [KV, B·P'])`, with
    /// the prefix's, written into the pass's `[L, H or KV, B·P]` (created at the first).
    fn keep_qk_scales(
        &self,
        kept: &mut Option<(Tensor<3>, Tensor<3>)>,
        (sq, sk): (Tensor<2>, Tensor<2>),
        l: usize,
        n_l: usize,
    ) {
        let (h, kv, rows) = (sq.dims()[0], sk.dims()[0], self.batch * self.n);
        let pre = |c: &Cache, i: usize| match &c.qk_scale {
            Some((qs, ks)) => at(if i == 0 { qs } else { ks }, l),
            None => Tensor::zeros([if i == 0 { h } else { kv }, self.p0], self.dev),
        };
        let sq = self.whole(sq, |c| pre(c, 0), 1);
        let sk = self.whole(sk, |c| pre(c, 1), 1);
        let (qs, ks) = kept.get_or_insert_with(|| {
            (
                Tensor::<3>::empty([n_l, h, rows], self.dev),
                Tensor::<3>::empty([n_l, kv, rows], self.dev),
            )
        });
        *qs = qs
            .clone()
            .slice_assign([l..l + 1, 0..h, 0..rows], sq.unsqueeze_dim::<3>(0));
        *ks = ks
            .clone()
            .slice_assign([l..l + 1, 0..kv, 0..rows], sk.unsqueeze_dim::<3>(0));
    }

    /// Component `c`'s rows in a prefix's run `[p0, d]`.
    fn comp(c: usize) -> impl Fn(&Cache) -> Tensor<2> {
        move |pc| pc.components.clone().narrow(0, c, 1).squeeze_dim::<2>(0)
    }

    /// A post-norm's scales (`i`: 0 attention, 1 MLP) at layer `l` in a prefix's run.
    fn post(&self, c: &Cache, i: usize, l: usize) -> Tensor<1> {
        match &c.post_scale {
            Some((a, m)) => at(if i == 0 { a } else { m }, l),
            None => Tensor::zeros([self.p0], self.dev),
        }
    }

    /// Each prompt's last computed row of `t [B·P', w]` (`[B, w]`) when `last`; else `t`.
    fn last_rows(&self, t: Tensor<2>, last: bool) -> Tensor<2> {
        let (w, nq) = (t.dims()[1], self.n - self.p0);
        match last {
            true => t
                .reshape([self.batch, nq, w])
                .narrow(1, nq - 1, 1)
                .reshape([self.batch, w]),
            false => t,
        }
    }

    /// `t`'s rows among the rows of whole prompts `[B·P, w]`: with `last`, one row a prompt
    /// at its last position (zero elsewhere: not computed); else [`Rows::whole`].
    fn placed(&self, t: Tensor<2>, last: bool, pre: impl Fn(&Cache) -> Tensor<2>) -> Tensor<2> {
        if !last {
            return self.whole(t, pre, 0);
        }
        let (w, b, n) = (t.dims()[1], self.batch, self.n);
        Tensor::<3>::zeros([b, n, w], self.dev)
            .slice_assign([0..b, n - 1..n, 0..w], t.reshape([b, 1, w]))
            .reshape([b * n, w])
    }

    /// [`Rows::placed`] of one value a row.
    fn placed1(&self, t: Tensor<1>, last: bool, pre: impl Fn(&Cache) -> Tensor<1>) -> Tensor<1> {
        self.placed(t.unsqueeze_dim::<2>(1), last, |c| {
            pre(c).unsqueeze_dim::<2>(1)
        })
        .squeeze_dim::<1>(1)
    }
}

/// Layer `l` of a tensor stacked over layers, without its layer axis.
fn at<const D: usize, const E: usize>(t: &Tensor<D>, l: usize) -> Tensor<E> {
    t.clone().narrow(0, l, 1).squeeze_dim::<E>(0)
}

/// A batch of prompts run as one forward pass ([`Model::run_batch_whole`]).
#[derive(Debug)]
pub struct BatchRun {
    /// Every row's cache: prompt `b` at positions `b·stride .. b·stride + lens[b]`, padded to
    /// `stride` after its end (`last_logits` unset: see below).
    pub cache: Cache,
    pub lens: Vec<usize>,
    pub stride: usize,
    /// The logits at each prompt's last position `[B, V]`.
    pub last_logits: Tensor<2>,
    /// Whether the cache holds every position of every layer; `false`: the last layer's
    /// outputs (and its MLP's input scales, and the final norm's) at each prompt's last
    /// position only, zero elsewhere ([`Model::run_batch_whole`] with `at_last`).
    pub whole: bool,
}

impl BatchRun {
    /// Whether every prompt has the same length (no padding).
    pub fn equal_lengths(&self) -> bool {
        self.lens.iter().all(|&n| n == self.stride)
    }
}

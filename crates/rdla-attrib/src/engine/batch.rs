//! A census's head totals for a whole batch of prompts run as one forward pass
//! ([`BatchRun`]): [`Engine::head_totals`] of every prompt at once. The same formulas
//! (DESIGN.md §1.3) — the root readout `C(u)/s_final`, its pull-back through frozen
//! post-norms, the OV readouts grouped by key/value head, the pattern rows at the last
//! position, the source values `x_c[p] · A[q,p] · ov / s1[p]` — with a prompt axis, each one
//! batched expression over every layer, head and prompt, and one read-back for the batch.
//! Per prompt they cost a few hundred small operations; over a batch of 32 prompts, the same
//! few hundred. The numbers are each prompt's own engine's to float rounding (tested on every
//! family).

use burn::tensor::{Int, Tensor, TensorData};
use rdla_model::{BatchRun, Model};

use super::{Array, AttribError, Engine, HeadTotals, MlpMode, Result, Target};

/// Source values computed at once (`prompts · C · n · L · H`): a batch is taken this many at
/// a time, in groups of whole prompts; a prompt that alone exceeds it is left to its own
/// engine, which takes its layers in chunks.
const BATCH_VALUES: usize = 1 << 25;

/// The layers' source values are computed in this many groups of consecutive layers.
const LAYER_GROUPS: usize = 4;

/// [`Engine::head_totals`] of every prompt of `run` for its target (`targets[b]` for prompt
/// `b`), in order. Prompts of equal lengths are computed together; a batch of mixed lengths
/// (padded), or of prompts too long for [`BATCH_VALUES`], prompt by prompt.
pub fn head_totals_batch(
    model: &Model,
    run: &BatchRun,
    targets: &[Target],
    sources: bool,
) -> Result<Vec<HeadTotals>> {
    let bn = run.lens.len();
    if targets.len() != bn {
        return Err(AttribError::Empty);
    }
    if !run.equal_lengths() || !takes_whole(model, run.stride) {
        return model
            .split_batch(run)?
            .iter()
            .zip(targets)
            .map(|(cache, &t)| {
                Engine::new(model, cache, t, MlpMode::default())?.head_totals(sources)
            })
            .collect();
    }
    if !model.processing.fold_ln {
        return Err(AttribError::NotFolded);
    }
    let chunk = (BATCH_VALUES / source_values(model, run.stride).max(1)).max(1);
    Batch::new(model, run, targets)?.totals(sources, chunk)
}

/// Whether [`head_totals_batch`] computes a batch of equal-length prompts of `n` tokens
/// together (their source values within [`BATCH_VALUES`] a prompt), rather than each with
/// its own engine over its own cache: only then may the batch's run skip what the totals do
/// not read (`Model::run_batch_whole` with `at_last`; such a run has no single prompts'
/// caches).
pub fn takes_whole(model: &Model, n: usize) -> bool {
    source_values(model, n) <= BATCH_VALUES
}

/// A prompt of `n` tokens' source values (`C · n · L · H`).
fn source_values(model: &Model, n: usize) -> usize {
    let cfg = &model.config;
    cfg.layout().n() * n * cfg.n_layers * cfg.n_heads
}

/// One batch's shared pieces.
struct Batch<'a> {
    model: &'a Model,
    run: &'a BatchRun,
    targets: &'a [Target],
    /// Each prompt's last row in the batch's cache `[B]`.
    rows: Tensor<1, Int>,
    /// Each prompt's root readout `C(u_b) / s_final[last_b]`: `[B, d]`.
    r: Tensor<2>,
}

fn ints(v: impl Iterator<Item = usize>, model: &Model) -> Tensor<1, Int> {
    let v: Vec<i64> = v.map(|i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), &model.device)
}

impl<'a> Batch<'a> {
    fn new(model: &'a Model, run: &'a BatchRun, targets: &'a [Target]) -> Result<Self> {
        let (bn, n, d) = (run.lens.len(), run.stride, model.config.d_model);
        // every answer and foil column once per prompt; a zero column for the missing foils
        let mut ids = Vec::with_capacity(2 * bn);
        let (mut ans, mut foil) = (Vec::with_capacity(bn), Vec::with_capacity(bn));
        for t in targets {
            t.check(model.config.d_vocab)?;
            ans.push(ids.len());
            ids.push(t.answer());
            foil.push(t.foil().map(|f| {
                ids.push(f);
                ids.len() - 1
            }));
        }
        let zero = ids.len();
        let cols = Tensor::cat(
            vec![
                model.unembed_columns(&ids)?,
                Tensor::zeros([d, 1], &model.device),
            ],
            1,
        ); // [d, m + 1]
        let u = cols.clone().select(1, ints(ans.into_iter(), model))
            - cols.select(1, ints(foil.into_iter().map(|f| f.unwrap_or(zero)), model));
        let rows = ints((0..bn).map(|b| b * n + n - 1), model);
        let s = run.cache.final_scale.clone().select(0, rows.clone()); // [B]
        let r = model.centred(u.transpose()) / s.unsqueeze_dim::<2>(1); // [B, d]
        Ok(Self {
            model,
            run,
            targets,
            rows,
            r,
        })
    }

    /// Every prompt's totals, the source values `chunk` prompts at a time.
    fn totals(&self, sources: bool, chunk: usize) -> Result<Vec<HeadTotals>> {
        let model = self.model;
        let cfg = &model.config;
        let cache = &self.run.cache;
        let (bn, n) = (self.run.lens.len(), self.run.stride);
        let (l_n, h_n, kv, d) = (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model);
        let (g, c_n, dh) = (h_n / kv, cache.layout.n(), cfg.d_head);
        let w = model.blocks(&(0..l_n))?;

        // root children `[B, C]`
        let at_last = cache.components.clone().select(1, self.rows.clone()); // [C, B, d]
        let components = (at_last * self.r.clone().unsqueeze_dim::<3>(0))
            .sum_dim(2)
            .reshape([c_n, bn])
            .transpose();
        // the readout of each layer's attention output, through its frozen post-norm
        let r = self.r.clone().unsqueeze_dim::<3>(0); // [1, B, d]
        let r_attn = match (&w.post_norm, &cache.post_scale) {
            (Some((wa, _)), Some((sa, _))) => {
                r * wa.clone().unsqueeze_dim::<3>(1)
                    / sa.clone()
                        .select(1, self.rows.clone())
                        .unsqueeze_dim::<3>(2)
            }
            _ => r.expand([l_n, bn, d]),
        }; // [L, B, d]
        let attn_bias = (w.b_o.clone().unsqueeze_dim::<3>(1) * r_attn.clone())
            .sum_dim(2)
            .reshape([l_n, bn]); // [L, B]
        // `(W_O[l,h] r_b)ᵀ`, rows grouped by key/value head: [L, KV, g·B, dh]
        let wo_r = r_attn
            .unsqueeze_dim::<4>(1) // [L, 1, B, d]
            .matmul(w.w_o.clone().swap_dims(2, 3)) // [L, H, B, dh]
            .reshape([l_n, kv, g * bn, dh]);
        // OV readouts `C(W_V W_O r)`, prompt-major [B, L·H, d], and value biases per unit of
        // attention [L, B, H]
        let ov = model
            .centred(
                wo_r.clone()
                    .matmul(w.w_v.clone().swap_dims(2, 3)) // [L, KV, g·B, d]
                    .reshape([l_n * h_n, bn, d]),
            )
            .swap_dims(0, 1);
        let bias_per_unit = wo_r
            .clone()
            .matmul(w.b_v.clone().unsqueeze_dim::<4>(3)) // [L, KV, g·B, 1]
            .reshape([l_n, h_n, bn])
            .swap_dims(1, 2);
        let a = model.last_pattern_rows(&w, self.run, 0..l_n)?; // [L, B, H, n]
        let head_bias = (bias_per_unit * a.clone().sum_dim(3).reshape([l_n, bn, h_n])) // [L, B, H]
            .swap_dims(0, 1); // [B, L, H]
        if !sources {
            // each head's own value `z · W_O r`, `z = Σ_p A[q,p] v[p]` from the cached values
            // (as `Engine::head_values`; its children are not asked for)
            let z = a
                .reshape([l_n, bn, kv, g, n])
                .swap_dims(1, 2) // [L, KV, B, g, n]
                .matmul(cache.v.clone().reshape([l_n, kv, bn, n, dh])); // [L, KV, B, g, dh]
            let wo_r = wo_r.reshape([l_n, kv, g, bn, dh]).swap_dims(2, 3); // [L, KV, B, g, dh]
            let head_dla = (z * wo_r)
                .sum_dim(4)
                .reshape([l_n, kv, bn, g])
                .permute([2, 0, 1, 3])
                .reshape([bn, l_n * h_n]);
            return self.assemble(
                vec![
                    components,
                    attn_bias.transpose(),
                    head_dla,
                    head_bias.reshape([bn, l_n * h_n]),
                ],
                false,
            );
        }
        // A / s1 per source position, as a column per prompt and head: [B, L·H, n, 1]
        let s1 = cache.ln1_scale.clone().reshape([l_n, bn, 1, n]);
        let weight = (a / s1).swap_dims(0, 1).reshape([bn, l_n * h_n, n, 1]);
        let mask = rdla_model::model::cache::upstream_mask(
            &cache.layout,
            &(0..l_n),
            |lay, l| lay.pre(l),
            &model.device,
        ) // [L, C]
        .reshape([1, l_n, 1, c_n]);
        // the heads' children summed over source positions [B, L, H, C], a chunk of prompts
        // at a time: ov · x_c[p] per (prompt, component, layer and head, position), then the
        // sum over positions weighted by A/s1, each as one batched product over the cache
        // where it lies
        let comps = cache
            .components
            .clone()
            .reshape([c_n, bn, n, d])
            .permute([1, 0, 3, 2]); // [B, C, d, n], a view
        // Layers in groups, each reading only the components upstream of its last layer
        // (a layer's heads read none of the later ones): about a third fewer products.
        let groups: Vec<std::ops::Range<usize>> = (0..l_n)
            .step_by(l_n.div_ceil(LAYER_GROUPS).max(1))
            .map(|l0| l0..(l0 + l_n.div_ceil(LAYER_GROUPS).max(1)).min(l_n))
            .collect();
        let mut per_head = Vec::new();
        for b0 in (0..bn).step_by(chunk) {
            let k = chunk.min(bn - b0);
            let mut rows = Vec::with_capacity(groups.len());
            for ls in &groups {
                let (first, count) = (ls.start * h_n, ls.len() * h_n);
                let up = cache.layout.pre(ls.end - 1).min(c_n);
                let raw = ov
                    .clone()
                    .narrow(0, b0, k)
                    .narrow(1, first, count)
                    .unsqueeze_dim::<4>(1) // [k, 1, Lg·H, d]
                    .matmul(comps.clone().narrow(0, b0, k).narrow(1, 0, up)); // [k, up, Lg·H, n]
                let sums = raw
                    .swap_dims(1, 2) // [k, Lg·H, up, n]
                    .matmul(weight.clone().narrow(0, b0, k).narrow(1, first, count)) // [k, Lg·H, up, 1]
                    .reshape([k, count, up]);
                rows.push(if up < c_n {
                    Tensor::cat(
                        vec![sums, Tensor::zeros([k, count, c_n - up], &model.device)],
                        2,
                    )
                } else {
                    sums
                });
            }
            per_head.push(Tensor::cat(rows, 1).reshape([k, l_n, h_n, c_n]) * mask.clone());
        }
        let per_head = Tensor::cat(per_head, 0); // [B, L, H, C]
        let head_dla = per_head.clone().sum_dim(3).reshape([bn, l_n, h_n]) + head_bias.clone();
        self.assemble(
            vec![
                components,
                attn_bias.transpose(),
                head_dla.reshape([bn, l_n * h_n]),
                head_bias.reshape([bn, l_n * h_n]),
                per_head.reshape([bn, l_n * h_n * c_n]),
            ],
            true,
        )
    }

    /// Every prompt's totals from the parts `[B, ·]` (root children, attention biases, head
    /// values, head biases, and with `sources` the summed sources), read back at once.
    fn assemble(&self, parts: Vec<Tensor<2>>, sources: bool) -> Result<Vec<HeadTotals>> {
        let cfg = &self.model.config;
        let cache = &self.run.cache;
        let (bn, l_n, h_n, c_n) = (
            self.run.lens.len(),
            cfg.n_layers,
            cfg.n_heads,
            cache.layout.n(),
        );
        let width: usize = parts.iter().map(|t| t.dims()[1]).sum();
        let all = rdla_model::to_vec(Tensor::cat(parts, 1))?;
        let values = self.target_values()?;
        let layout = cache.layout;
        (0..bn)
            .map(|b| {
                let row = all
                    .get(b * width..(b + 1) * width)
                    .ok_or(AttribError::Empty)?;
                let mut off = 0;
                let mut take = |shape: Vec<usize>| {
                    let m: usize = shape.iter().product();
                    let a = Array::new(shape, row[off..off + m].to_vec());
                    off += m;
                    a
                };
                Ok(HeadTotals {
                    layout,
                    target_value: values[b],
                    components: take(vec![c_n]),
                    attn_bias: take(vec![l_n]),
                    head_dla: take(vec![l_n, h_n]),
                    head_bias: take(vec![l_n, h_n]),
                    head_sources: sources.then(|| take(vec![l_n, h_n, c_n])),
                })
            })
            .collect()
    }

    /// Each prompt's root value from its last logits: `logit(answer) − b_U[answer]` (minus the
    /// foil's), as [`Engine::root_value`].
    fn target_values(&self) -> Result<Vec<f32>> {
        let model = self.model;
        let v = model.config.d_vocab;
        let logits = &self.run.last_logits; // [B, V]
        let at = |b: usize, id: u32| b * v + id as usize;
        let picks: Vec<usize> = self
            .targets
            .iter()
            .enumerate()
            .flat_map(|(b, t)| [Some(at(b, t.answer())), t.foil().map(|f| at(b, f))])
            .flatten()
            .collect();
        let ids: Vec<usize> = self
            .targets
            .iter()
            .flat_map(|t| [Some(t.answer()), t.foil()])
            .flatten()
            .map(|id| id as usize)
            .collect();
        let lg = rdla_model::to_vec(
            logits
                .clone()
                .reshape([self.targets.len() * v])
                .select(0, ints(picks.into_iter(), model)),
        )?;
        let bu = rdla_model::to_vec(
            model
                .weights
                .b_u
                .clone()
                .select(0, ints(ids.into_iter(), model)),
        )?;
        let mut k = 0;
        let mut next = || {
            let x = lg.get(k).zip(bu.get(k)).map(|(l, b)| l - b);
            k += 1;
            x.ok_or(AttribError::Empty)
        };
        self.targets
            .iter()
            .map(|t| {
                let a = next()?;
                Ok(match t.foil() {
                    Some(_) => a - next()?,
                    None => a,
                })
            })
            .collect()
    }
}

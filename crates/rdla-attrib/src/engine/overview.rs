//! The overview: the tree's first levels at the last position, for every layer and head at
//! once (DESIGN.md §1.3): the `[layer, head, src_pos, src_comp]` head breakdown whose sums over
//! trailing axes give every higher level, the MLP breakdown and the remainders. It calls the
//! same readout formulas as a single node's expansion, batched over all layers (the head
//! breakdown over chunks of layers when the prompt is long).

use std::ops::Range;

use burn::tensor::Tensor;
use rdla_model::model::Blocks;

use rdla_model::{Cache, Model};

use super::{Array, AttribError, Engine, HeadTotals, MlpMode, Overview, Result, Target};

/// Values of the head breakdown computed at once: layers are taken in chunks of at most this
/// many `H·P·C` values (all of them for small models and prompts; a few layers at a time for
/// thousands of positions, so the breakdown's transients stay small beside the cache).
const CHUNK_VALUES: usize = 1 << 25;

impl Engine<'_> {
    /// The whole overview at the last position, vectorised over layers and heads: the head
    /// breakdown in chunks of layers (each one batched expression and one read-back), the
    /// rest with one read-back.
    pub fn overview(&self) -> Result<Overview> {
        self.overview_in_chunks(CHUNK_VALUES)
    }

    /// [`Engine::overview`] with the head breakdown computed `chunk_values` values at a time
    /// (at least one layer): the same numbers whatever the chunking (tested).
    pub fn overview_in_chunks(&self, chunk_values: usize) -> Result<Overview> {
        let l_n = self.model.config.n_layers;
        // a chunk of layers at a time: each chunk's blocks are fetched once (a view when the
        // layers are resident, read where they lie when they stream)
        let chunk = self.layers_per_chunk(chunk_values);
        // last chunk first: a streaming model still holds the layers its forward pass read
        // last (the chunks are put back in order when assembled)
        let starts: Vec<usize> = (0..l_n).step_by(chunk).collect();
        let mut chunks = Vec::with_capacity(starts.len());
        for &start in starts.iter().rev() {
            let cs = start..(start + chunk).min(l_n);
            let b = self.blocks_in(&cs)?;
            chunks.push(self.overview_chunk(&b, &cs)?);
            self.cache.release_spilled();
        }
        self.assemble(chunks, None)
    }

    /// Layers whose `H·P·C` head breakdown fit in `chunk_values` values (at least one, at
    /// most what the model holds at once).
    fn layers_per_chunk(&self, chunk_values: usize) -> usize {
        let cfg = &self.model.config;
        let per_layer = (cfg.n_heads * self.n_pos() * self.layout.n()).max(1);
        (chunk_values / per_layer)
            .min(self.model.layer_chunk())
            .clamp(1, cfg.n_layers)
    }

    /// The root readout once per layer of a chunk of `n`: `[n, d]`.
    fn root_rows(&self, n: usize) -> Tensor<2> {
        let d = self.model.config.d_model;
        self.r_root.clone().unsqueeze_dim::<2>(0).expand([n, d])
    }

    /// The heads' part of the overview from layers `cs` (their blocks `b`), read along the
    /// engine's root readout: the attention biases `[Lc]`, head values and value biases
    /// `[Lc, H]` each, and the head breakdown `[Lc, H, P, C]`.
    fn heads_chunk(&self, b: &Blocks, cs: &Range<usize>) -> Result<HeadsChunk> {
        let h_n = self.model.config.n_heads;
        let q = self.last;
        let r_c = self.root_rows(cs.len()); // [Lc, d]
        let r_attn = self.post_readout(b, cs, q, r_c, false); // [Lc, d]
        let attn_bias = (b.b_o.clone() * r_attn.clone())
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        let (ov, bias_per_unit) = self.ov_readouts(b, r_attn); // [Lc, H, d], [Lc, H]
        let a_q = self.pattern_rows_in(Some(b), cs.clone(), q)?; // [Lc, H, P]
        let hb = self.source_values(cs, ov, a_q.clone()); // [Lc, H, P, C]
        let head_bias = bias_per_unit * a_q.sum_dim(2).squeeze_dim::<2>(2); // [Lc, H]
        let head_dla =
            hb.clone().sum_dim(3).sum_dim(2).reshape([cs.len(), h_n]) + head_bias.clone();
        Ok(HeadsChunk {
            attn_bias,
            head_dla,
            head_bias,
            breakdown: hb,
        })
    }

    /// The overview's part from layers `cs` (their blocks `b`), read along the engine's root
    /// readout.
    pub(super) fn overview_chunk(&self, b: &Blocks, cs: &Range<usize>) -> Result<OverviewChunk> {
        let cfg = &self.model.config;
        let (h_n, c_n) = (cfg.n_heads, self.layout.n());
        let per_layer = (h_n * self.n_pos() * c_n).max(1);
        let q = self.last;
        let heads = self.heads_chunk(b, cs)?;
        // MLPs at q
        let r_c = self.root_rows(cs.len()); // [Lc, d]
        let parts = self.mlp_parts(b, cs, q, r_c)?;
        let r_mlp = self.mlp_input_readout(b, cs, q, &parts)?; // [Lc, d]
        Ok(OverviewChunk {
            layers: cs.clone(),
            attn_bias: heads.attn_bias,
            head_dla: heads.head_dla,
            head_bias: heads.head_bias,
            breakdown: heads.breakdown.reshape([cs.len() * per_layer]),
            mlp_breakdown: self.comp_values(c_n, q, r_mlp) * self.mlp_input_mask(cs), // [Lc, C]
            mlp_bias: self.mlp_remainder(b, &parts)?,
        })
    }

    /// The root's children and every head's value, and with `sources` each head's children
    /// summed over source positions (what a census keeps): the overview's head formulas
    /// without its MLP breakdown, over chunks of layers, with one read-back.
    pub fn head_totals(&self, sources: bool) -> Result<HeadTotals> {
        let cfg = &self.model.config;
        let (l_n, h_n, c_n) = (cfg.n_layers, cfg.n_heads, self.layout.n());
        let chunk = self.layers_per_chunk(CHUNK_VALUES);
        let (mut attn_bias, mut head_dla, mut head_bias, mut totals) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for start in (0..l_n).step_by(chunk) {
            let cs = start..(start + chunk).min(l_n);
            let b = self.blocks_in(&cs)?;
            let heads = self.heads_chunk(&b, &cs)?;
            attn_bias.push(heads.attn_bias);
            head_dla.push(heads.head_dla.reshape([cs.len() * h_n]));
            head_bias.push(heads.head_bias.reshape([cs.len() * h_n]));
            if sources {
                totals.push(heads.breakdown.sum_dim(2).reshape([cs.len() * h_n * c_n]));
            }
            self.cache.release_spilled();
        }
        let components = super::rows_dot(self.comps_at(c_n, self.last), self.r_root.clone());
        let mut parts = vec![
            (components, vec![c_n]),
            (Tensor::cat(attn_bias, 0), vec![l_n]),
            (Tensor::cat(head_dla, 0), vec![l_n, h_n]),
            (Tensor::cat(head_bias, 0), vec![l_n, h_n]),
        ];
        if sources {
            parts.push((Tensor::cat(totals, 0), vec![l_n, h_n, c_n]));
        }
        let mut arrays = read_back(parts)?.into_iter();
        let mut next = || arrays.next().ok_or(AttribError::Empty);
        Ok(HeadTotals {
            layout: self.layout,
            target_value: self.root_value()?,
            components: next()?,
            attn_bias: next()?,
            head_dla: next()?,
            head_bias: next()?,
            head_sources: if sources { Some(next()?) } else { None },
        })
    }

    /// The overview from its chunks (in any order, covering every layer once), each divided
    /// by `scale` when given (chunks computed along an unscaled readout).
    fn assemble(
        &self,
        mut chunks: Vec<OverviewChunk>,
        scale: Option<Tensor<1>>,
    ) -> Result<Overview> {
        let cfg = &self.model.config;
        let (l_n, h_n, c_n, p_n) = (cfg.n_layers, cfg.n_heads, self.layout.n(), self.n_pos());
        let per_layer = (h_n * p_n * c_n).max(1);
        chunks.sort_by_key(|c| c.layers.start);
        if chunks.iter().map(|c| c.layers.len()).sum::<usize>() != l_n {
            return Err(AttribError::Empty);
        }
        let div1 = |t: Tensor<1>| match &scale {
            Some(s) => t / s.clone(),
            None => t,
        };
        let div2 = |t: Tensor<2>| match &scale {
            Some(s) => t / s.clone().unsqueeze_dim::<2>(0),
            None => t,
        };
        let mut breakdown: Vec<f32> = Vec::with_capacity(l_n * per_layer);
        let (mut attn_bias, mut head_dla, mut head_bias) = (Vec::new(), Vec::new(), Vec::new());
        let (mut mlp_breakdown, mut mlp_bias) = (Vec::new(), Vec::new());
        for c in chunks {
            breakdown.extend(rdla_model::to_vec(div1(c.breakdown))?);
            attn_bias.push(div1(c.attn_bias));
            head_dla.push(div2(c.head_dla));
            head_bias.push(div2(c.head_bias));
            mlp_breakdown.push(div2(c.mlp_breakdown));
            mlp_bias.push(div1(c.mlp_bias));
        }
        let attn_bias = Tensor::cat(attn_bias, 0);
        let head_dla = Tensor::cat(head_dla, 0);
        let head_bias = Tensor::cat(head_bias, 0);
        let mlp_breakdown = Tensor::cat(mlp_breakdown, 0);
        let mlp_bias = Tensor::cat(mlp_bias, 0);
        // root children
        let components = super::rows_dot(self.comps_at(c_n, self.last), self.r_root.clone()); // [C]

        let parts = [
            (components, vec![c_n]),
            (attn_bias, vec![l_n]),
            (head_dla.reshape([l_n * h_n]), vec![l_n, h_n]),
            (head_bias.reshape([l_n * h_n]), vec![l_n, h_n]),
            (mlp_breakdown.reshape([l_n * c_n]), vec![l_n, c_n]),
            (mlp_bias, vec![l_n]),
        ];
        let mut arrays = read_back(parts.into())?.into_iter();
        let mut next = || arrays.next().ok_or(AttribError::Empty);
        if breakdown.len() != l_n * per_layer {
            return Err(AttribError::Empty);
        }
        Ok(Overview {
            layout: self.layout,
            target_value: self.root_value()?,
            components: next()?,
            attn_bias: next()?,
            head_dla: next()?,
            head_bias: next()?,
            head_breakdown: Array::new(vec![l_n, h_n, p_n, c_n], breakdown),
            mlp_breakdown: next()?,
            mlp_bias: next()?,
        })
    }
}

/// Flat tensors read back to the host in one transfer, each as an array of its shape.
fn read_back(parts: Vec<(Tensor<1>, Vec<usize>)>) -> Result<Vec<Array>> {
    let shapes: Vec<Vec<usize>> = parts.iter().map(|(_, s)| s.clone()).collect();
    let flat = rdla_model::to_vec(Tensor::cat(parts.into_iter().map(|(t, _)| t).collect(), 0))?;
    let mut off = 0;
    shapes
        .into_iter()
        .map(|shape| {
            let n: usize = shape.iter().product();
            let a = flat
                .get(off..off + n)
                .map(|s| Array::new(shape, s.to_vec()))
                .ok_or(AttribError::Empty);
            off += n;
            a
        })
        .collect()
}

/// The heads' part of a chunk of layers (see [`Engine::heads_chunk`]).
struct HeadsChunk {
    /// `[Lc]`
    attn_bias: Tensor<1>,
    /// `[Lc, H]` each
    head_dla: Tensor<2>,
    head_bias: Tensor<2>,
    /// `[Lc, H, P, C]`
    breakdown: Tensor<4>,
}

/// One chunk of layers' part of the overview (see [`Engine::overview_chunk`]).
pub(super) struct OverviewChunk {
    layers: Range<usize>,
    /// `[Lc]`
    attn_bias: Tensor<1>,
    /// `[Lc, H]` each
    head_dla: Tensor<2>,
    head_bias: Tensor<2>,
    /// `[Lc·H·P·C]`
    breakdown: Tensor<1>,
    /// `[Lc, C]`
    mlp_breakdown: Tensor<2>,
    /// `[Lc]`
    mlp_bias: Tensor<1>,
}

/// The forward pass over `ids` and the overview of `target`, computed together: each layer's
/// part of the overview is computed while the forward pass holds the layer, along the root's
/// readout before the final norm's scale (every part is linear in it), and divided by that
/// scale at the end. A model whose layers stream reads each layer once instead of twice; the
/// numbers are [`Engine::overview`]'s (to float rounding: the scale is applied last).
pub fn run_with_overview(
    model: &Model,
    ids: &[u32],
    target: Target,
    mode: MlpMode,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Cache, Overview)> {
    let mut chunks = Vec::with_capacity(model.config.n_layers);
    let mut failed = None;
    let cache = model.run_observed(ids, progress, &mut |l, b, partial| {
        let chunk = Engine::unscaled(model, partial, target, mode)
            .and_then(|eng| eng.overview_chunk(b, &(l..l + 1)));
        match chunk {
            Ok(c) => {
                chunks.push(c);
                Ok(())
            }
            Err(e) => {
                failed = Some(e);
                Err(rdla_model::ModelError::ComputeCancelled)
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let cache = cache?;
    let ov = {
        let engine = Engine::new(model, &cache, target, mode)?;
        let s = cache.final_scale.clone().narrow(0, engine.last, 1);
        engine.assemble(chunks, Some(s))?
    };
    Ok((cache, ov))
}

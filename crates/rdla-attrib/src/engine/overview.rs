//! The overview: the tree's first levels at the last position, for every layer and head at
//! once (DESIGN.md §1.3): the `[layer, head, src_pos, src_comp]` head breakdown whose sums over
//! trailing axes give every higher level, the MLP breakdown and the remainders. It calls the
//! same readout formulas as a single node's expansion, batched over all layers (the head
//! breakdown over chunks of layers when the prompt is long).

use burn::tensor::Tensor;

use super::{Array, AttribError, Engine, Overview, Result};

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
        let cfg = &self.model.config;
        let (l_n, h_n, d, c_n, p_n) = (
            cfg.n_layers,
            cfg.n_heads,
            cfg.d_model,
            self.layout.n(),
            self.n_pos(),
        );
        let q = self.last;
        let r = self.r_root.clone();
        let r_all = r.clone().unsqueeze_dim::<2>(0).expand([l_n, d]); // [L, d]

        // root children
        let components = super::rows_dot(self.comps_at(c_n, q), r); // [C]

        // a chunk of layers at a time: each chunk's blocks are fetched once (a view when the
        // layers are resident, read where they lie when they stream)
        let per_layer = (h_n * p_n * c_n).max(1);
        let chunk = (chunk_values / per_layer)
            .min(self.model.layer_chunk())
            .clamp(1, l_n);
        let mut breakdown: Vec<f32> = Vec::with_capacity(l_n * per_layer);
        let mut chunks: [Vec<Tensor<2>>; 3] = Default::default(); // head DLA, head bias, MLP breakdown
        let mut rows: [Vec<Tensor<1>>; 2] = Default::default(); // attention bias, MLP bias
        // last chunk first: a streaming model still holds the layers its forward pass read
        // last, and the chunks are put back in order below
        let starts: Vec<usize> = (0..l_n).step_by(chunk).collect();
        let mut parts_hb: Vec<Vec<f32>> = Vec::with_capacity(starts.len());
        for &start in starts.iter().rev() {
            let cs = start..(start + chunk).min(l_n);
            let b = self.blocks_in(&cs)?;
            let r_c = r_all.clone().narrow(0, cs.start, cs.len());
            let r_attn = self.post_readout(&b, &cs, q, r_c.clone(), false); // [Lc, d]
            rows[0].push(
                (b.b_o.clone() * r_attn.clone())
                    .sum_dim(1)
                    .squeeze_dim::<1>(1),
            );

            // heads
            let (ov, bias_per_unit) = self.ov_readouts(&b, r_attn); // [Lc, H, d], [Lc, H]
            let a_q = self.pattern_rows_in(Some(&b), cs.clone(), q)?; // [Lc, H, P]
            let hb = self.source_values(&cs, ov, a_q.clone()); // [Lc, H, P, C]
            let head_bias = bias_per_unit * a_q.sum_dim(2).squeeze_dim::<2>(2); // [Lc, H]
            chunks[0].push(
                hb.clone().sum_dim(3).sum_dim(2).reshape([cs.len(), h_n]) + head_bias.clone(),
            );
            chunks[1].push(head_bias);
            parts_hb.push(rdla_model::to_vec(hb.reshape([cs.len() * per_layer]))?);

            // MLPs at q
            let parts = self.mlp_parts(&b, &cs, q, r_c)?;
            let r_mlp = self.mlp_input_readout(&b, &cs, q, &parts); // [Lc, d]
            rows[1].push(self.mlp_remainder(&b, &parts));
            chunks[2].push(self.comp_values(c_n, q, r_mlp) * self.mlp_input_mask(&cs)); // [Lc, C]
        }
        let [head_dla, head_bias, mlp_breakdown] = chunks.map(|mut c| {
            c.reverse();
            Tensor::cat(c, 0)
        });
        let [attn_bias, mlp_bias] = rows.map(|mut c| {
            c.reverse();
            Tensor::cat(c, 0)
        });
        for part in parts_hb.into_iter().rev() {
            breakdown.extend(part);
        }

        let parts = [
            (components, vec![c_n]),
            (attn_bias, vec![l_n]),
            (head_dla.reshape([l_n * h_n]), vec![l_n, h_n]),
            (head_bias.reshape([l_n * h_n]), vec![l_n, h_n]),
            (mlp_breakdown.reshape([l_n * c_n]), vec![l_n, c_n]),
            (mlp_bias, vec![l_n]),
        ];
        let shapes: Vec<Vec<usize>> = parts.iter().map(|(_, s)| s.clone()).collect();
        let flat = rdla_model::to_vec(Tensor::cat(parts.into_iter().map(|(t, _)| t).collect(), 0))?;
        let mut off = 0;
        let mut arrays = shapes.into_iter().map(|shape| {
            let n: usize = shape.iter().product();
            let a = flat
                .get(off..off + n)
                .map(|s| Array::new(shape, s.to_vec()))
                .ok_or(AttribError::Empty);
            off += n;
            a
        });
        let mut next = || arrays.next().unwrap_or(Err(AttribError::Empty));
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

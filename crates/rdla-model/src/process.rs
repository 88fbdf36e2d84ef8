//! TransformerLens weight processing (`HookedTransformer.process_weights_` defaults), on the
//! host in `f32`. After it every LayerNorm is `LNPre`: `(x - mean) / sqrt(var + eps)`.
//!
//! Reference: TransformerLens 2.18 `weight_processing.py` / `HookedTransformer`:
//! `fold_layer_norm`, `center_writing_weights`, `center_unembed`, `fold_value_biases`.

use serde::Serialize;

use crate::arch::{CanonLayer, Canonical, LayerNormParams};
use crate::config::{ModelConfig, Norm};
use crate::weights::HostTensor;

/// Which processing steps to apply. Defaults match TransformerLens `from_pretrained`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

impl Default for Processing {
    fn default() -> Self {
        Self {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl Processing {
    /// No processing: the model computes exactly what Hugging Face computes.
    pub fn none() -> Self {
        Self {
            fold_ln: false,
            center_writing_weights: false,
            center_unembed: false,
            fold_value_biases: false,
        }
    }

    /// What TransformerLens 2.18 applies to a model of `cfg`'s family when asked for `self`:
    /// writing weights are not centred in RMSNorm models (nothing removes the mean again), and
    /// the unembedding is not centred under a final logit soft-cap (the cap is not
    /// shift-invariant, so centring would change the model's output).
    pub fn for_config(self, cfg: &ModelConfig) -> Self {
        Self {
            center_writing_weights: self.center_writing_weights
                && self.fold_ln
                && cfg.norm == Norm::LayerNorm,
            center_unembed: self.center_unembed && cfg.final_softcap.is_none(),
            ..self
        }
    }

    /// The names of the steps applied, in TransformerLens' spelling.
    pub fn applied(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.fold_ln {
            v.push("fold_ln");
        }
        if self.center_writing_weights {
            v.push("center_writing_weights");
        }
        if self.center_unembed {
            v.push("center_unembed");
        }
        if self.fold_value_biases {
            v.push("fold_value_biases");
        }
        v
    }
}

/// Apply `p` to `w` in place. As in TransformerLens, centring writing weights is only done
/// when LayerNorm is folded (it relies on the following LN discarding the mean).
///
/// Every step touches each block's own tensors only, so this equals [`process_layer`] on each
/// block followed by [`process_globals`] (what the streaming loader does, one block at a time).
/// `norm` is the model's normalisation: a LayerNorm fold also centres the reading weights
/// (TransformerLens `fold_layer_norm(center_weights=True)`), an RMSNorm fold does not.
pub fn process(w: &mut Canonical, p: Processing, norm: Norm) {
    for layer in &mut w.layers {
        process_layer(layer, p, norm);
    }
    process_globals(w, p, norm);
}

/// The per-block part of [`process`]: fold `ln1`/`ln2`, centre `W_O`, `b_O`, `W_out`, `b_out`,
/// fold `b_V` into `b_O`. A block read without its MLP (placeholders) has only its attention
/// processed; the MLP's steps touch nothing else.
pub fn process_layer(layer: &mut CanonLayer, p: Processing, norm: Norm) {
    let center = norm == Norm::LayerNorm;
    let has_mlp = !layer.w_in.is_placeholder();
    if p.fold_ln {
        if let Some(ln1) = layer.ln1.take() {
            fold_into_reader(&mut layer.w_q, &mut layer.b_q, &ln1, center);
            fold_into_reader(&mut layer.w_k, &mut layer.b_k, &ln1, center);
            fold_into_reader(&mut layer.w_v, &mut layer.b_v, &ln1, center);
        }
        if let Some(ln2) = layer.ln2.take().filter(|_| has_mlp) {
            fold_into_reader(&mut layer.w_in, &mut layer.b_in, &ln2, center);
            if let Some(w_gate) = &mut layer.w_gate {
                // no gate bias: fold into a scratch one (all-zero for RMSNorm, whose bias is 0)
                let mut b = HostTensor::zeros(vec![w_gate.shape[1]]);
                fold_into_reader(w_gate, &mut b, &ln2, center);
            }
        }
    }
    if p.center_writing_weights && p.fold_ln && center {
        center_rows(&mut layer.w_o);
        center_rows(&mut layer.b_o);
        if has_mlp {
            center_rows(&mut layer.w_out);
            center_rows(&mut layer.b_out);
        }
    }
    if p.fold_value_biases {
        fold_value_biases(layer);
    }
}

/// The model-wide part of [`process`] (`w.layers` is not touched): fold `ln_final` into
/// `W_U`, centre `W_E` and `W_pos`, centre the unembedding. The unembedding and the
/// embeddings are independent, so they are processed on two threads.
pub fn process_globals(w: &mut Canonical, p: Processing, norm: Norm) {
    let center = norm == Norm::LayerNorm;
    let Canonical {
        w_e,
        w_pos,
        ln_f,
        w_u,
        b_u,
        ..
    } = w;
    let lnf = if p.fold_ln { ln_f.take() } else { None };
    let mut unembed = move || {
        if let Some(lnf) = &lnf {
            fold_into_reader(w_u, b_u, lnf, center);
        }
        if p.center_unembed {
            // W_U [d, V]: centre each row over the vocabulary; b_U likewise.
            center_rows(w_u);
            center_rows(b_u);
        }
    };
    let embed = move || {
        if p.center_writing_weights && p.fold_ln && center {
            center_rows(w_e);
            if let Some(w_pos) = w_pos {
                center_rows(w_pos);
            }
        }
    };
    std::thread::scope(|s| {
        s.spawn(embed);
        unembed();
    });
}

/// `W[.., m, k]`: fold `ln` into a reading matrix whose `d_model` axis is `m` (of size d), with
/// `outer` leading slices and `inner` trailing columns. `b[outer, inner] += Σ_m W·ln.b`;
/// `W *= ln.w`; then centre `W` over `m`. Sums are in `f64`, over `m` in order; the loops run
/// along contiguous rows (`k` innermost) so a `[d, V]` unembedding streams through memory.
fn fold_into_reader(wt: &mut HostTensor, b: &mut HostTensor, ln: &LayerNormParams, center: bool) {
    let d = ln.w.len();
    let inner = *wt.shape.last().unwrap_or(&1);
    let outer = wt.data.len() / (d * inner);
    let mut bias = vec![0.0f64; inner];
    let mut mean = vec![0.0f64; inner];
    for o in 0..outer {
        bias.iter_mut().for_each(|x| *x = 0.0);
        mean.iter_mut().for_each(|x| *x = 0.0);
        let slab = &mut wt.data[o * d * inner..(o + 1) * d * inner];
        for (m, row) in slab.chunks_exact_mut(inner).enumerate() {
            let (lw, lb) = (ln.w[m], f64::from(ln.b[m]));
            for ((x, acc), mu) in row.iter_mut().zip(&mut bias).zip(&mut mean) {
                *acc += f64::from(*x) * lb;
                *x *= lw;
                *mu += f64::from(*x);
            }
        }
        for (bk, acc) in b.data[o * inner..(o + 1) * inner].iter_mut().zip(&bias) {
            *bk += *acc as f32;
        }
        if center {
            let mean: Vec<f32> = mean.iter().map(|&s| (s / d as f64) as f32).collect();
            for row in slab.chunks_exact_mut(inner) {
                row.iter_mut().zip(&mean).for_each(|(x, mu)| *x -= mu);
            }
        }
    }
}

/// Subtract the mean over the last (`d_model`) axis of every row.
fn center_rows(t: &mut HostTensor) {
    let d = *t.shape.last().unwrap_or(&1);
    for row in t.data.chunks_exact_mut(d) {
        let mean = (row.iter().map(|&x| f64::from(x)).sum::<f64>() / d as f64) as f32;
        row.iter_mut().for_each(|x| *x -= mean);
    }
}

/// `b_O += Σ_h b_V[kv(h)] W_O[h]`, then `b_V = 0` (with grouped-query attention query head
/// `h` reads value head `kv(h) = h / (H / KV)`).
fn fold_value_biases(layer: &mut CanonLayer) {
    let (h, dh, d) = (layer.w_o.shape[0], layer.w_o.shape[1], layer.w_o.shape[2]);
    let group = h / layer.b_v.shape[0].max(1);
    let mut acc = vec![0.0f64; d];
    for hh in 0..h {
        for k in 0..dh {
            let bv = f64::from(layer.b_v.data[(hh / group) * dh + k]);
            let row = &layer.w_o.data[(hh * dh + k) * d..(hh * dh + k + 1) * d];
            acc.iter_mut()
                .zip(row)
                .for_each(|(a, &w)| *a += bv * f64::from(w));
        }
    }
    for (bo, a) in layer.b_o.data.iter_mut().zip(&acc) {
        *bo += *a as f32;
    }
    layer.b_v.data.iter_mut().for_each(|x| *x = 0.0);
}

//! TransformerLens weight processing (`HookedTransformer.process_weights_` defaults), on the
//! host in `f32`. After it every LayerNorm is `LNPre`: `(x - mean) / sqrt(var + eps)`.
//!
//! Reference: TransformerLens 2.18 `weight_processing.py` / `HookedTransformer`:
//! `fold_layer_norm`, `center_writing_weights`, `center_unembed`, `fold_value_biases`.

use serde::Serialize;

use crate::arch::{Canonical, LayerNormParams};
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
pub fn process(w: &mut Canonical, p: Processing) {
    if p.fold_ln {
        fold_layer_norm(w);
    }
    if p.center_writing_weights && p.fold_ln {
        center_writing_weights(w);
    }
    if p.center_unembed {
        center_unembed(w);
    }
    if p.fold_value_biases {
        fold_value_biases(w);
    }
}

/// `W[.., m, k]`: fold `ln` into a reading matrix whose `d_model` axis is `m` (of size d), with
/// `outer` leading slices and `inner` trailing columns. `b[outer, inner] += Σ_m W·ln.b`;
/// `W *= ln.w`; then centre `W` over `m`.
fn fold_into_reader(wt: &mut HostTensor, b: &mut HostTensor, ln: &LayerNormParams, center: bool) {
    let d = ln.w.len();
    let inner = *wt.shape.last().unwrap_or(&1);
    let outer = wt.data.len() / (d * inner);
    for o in 0..outer {
        for k in 0..inner {
            let mut acc = 0.0f64;
            for m in 0..d {
                acc += f64::from(wt.data[(o * d + m) * inner + k]) * f64::from(ln.b[m]);
            }
            b.data[o * inner + k] += acc as f32;
            let mut mean = 0.0f64;
            for m in 0..d {
                let x = &mut wt.data[(o * d + m) * inner + k];
                *x *= ln.w[m];
                mean += f64::from(*x);
            }
            if center {
                let mean = (mean / d as f64) as f32;
                for m in 0..d {
                    wt.data[(o * d + m) * inner + k] -= mean;
                }
            }
        }
    }
}

fn fold_layer_norm(w: &mut Canonical) {
    for layer in &mut w.layers {
        if let Some(ln1) = layer.ln1.take() {
            fold_into_reader(&mut layer.w_q, &mut layer.b_q, &ln1, true);
            fold_into_reader(&mut layer.w_k, &mut layer.b_k, &ln1, true);
            fold_into_reader(&mut layer.w_v, &mut layer.b_v, &ln1, true);
        }
        if let Some(ln2) = layer.ln2.take() {
            fold_into_reader(&mut layer.w_in, &mut layer.b_in, &ln2, true);
        }
    }
    if let Some(lnf) = w.ln_f.take() {
        fold_into_reader(&mut w.w_u, &mut w.b_u, &lnf, true);
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

fn center_writing_weights(w: &mut Canonical) {
    center_rows(&mut w.w_e);
    center_rows(&mut w.w_pos);
    for layer in &mut w.layers {
        center_rows(&mut layer.w_o);
        center_rows(&mut layer.b_o);
        center_rows(&mut layer.w_out);
        center_rows(&mut layer.b_out);
    }
}

fn center_unembed(w: &mut Canonical) {
    // W_U [d, V]: centre each row over the vocabulary; b_U likewise.
    center_rows(&mut w.w_u);
    center_rows(&mut w.b_u);
}

fn fold_value_biases(w: &mut Canonical) {
    for layer in &mut w.layers {
        let (h, dh, d) = (layer.w_o.shape[0], layer.w_o.shape[1], layer.w_o.shape[2]);
        for m in 0..d {
            let mut acc = 0.0f64;
            for hh in 0..h {
                for k in 0..dh {
                    acc += f64::from(layer.b_v.data[hh * dh + k])
                        * f64::from(layer.w_o.data[(hh * dh + k) * d + m]);
                }
            }
            layer.b_o.data[m] += acc as f32;
        }
        layer.b_v.data.iter_mut().for_each(|x| *x = 0.0);
    }
}

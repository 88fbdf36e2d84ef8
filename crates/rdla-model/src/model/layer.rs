//! One layer's maths, written once: the forward pass (every position, in blocks of queries)
//! and the cache queries (one position, batched over layers; `crate::model::cache`) both call
//! these. Centring and the RMS scale, the norms with their scales exposed, the score scale and
//! soft-cap, the span-masked softmax (the fused CPU kernel, or the masked tensor expression on
//! other devices), the MLP's pre-activations and its activation.

use std::ops::Range;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::act;
use crate::config::{AttnSpan, Norm};
use crate::error::Result;
use crate::fused;
use crate::model::{Blocks, Model};

/// Masked attention scores on GPU backends (TransformerLens uses -inf; a large finite value
/// keeps every backend NaN-free — shaders may assume no infinities — and gives the same
/// softmax). The CPU path (`fused::softmax_block`) skips masked keys instead.
pub(crate) const MASK_VALUE: f32 = -1.0e30;

/// Queries per attention block.
pub const QUERY_BLOCK: usize = 256;

/// `[Bq, K]` mask, true where query `q0 + i` may not see key `j`.
pub(crate) fn block_mask(
    span: AttnSpan,
    q0: usize,
    bq: usize,
    k: usize,
    dev: &Device,
) -> Tensor<2, Bool> {
    let data: Vec<bool> = (0..bq * k)
        .map(|i| !span.allows(q0 + i / k, i % k))
        .collect();
    Tensor::from_data(TensorData::new(data, [bq, k]), dev)
}

/// Layers `ls` of a tensor stacked over layers.
pub(crate) fn layers<const D: usize>(t: &Tensor<D>, ls: &Range<usize>) -> Tensor<D> {
    t.clone().narrow(0, ls.start, ls.len())
}

/// Biases of up to this many values are checked for being all zero before they are added.
const ZERO_CHECK_MAX: usize = 1 << 16;

impl Model {
    /// `C(x)`: `x` minus its mean over the last axis for LayerNorm models, the identity for
    /// RMSNorm — what every norm does before dividing by its scale, and what the attribution
    /// applies to a readout (`C` is self-adjoint).
    pub fn centred<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.config.norm {
            Norm::LayerNorm => {
                let mean = x.clone().mean_dim(D - 1);
                x - mean
            }
            Norm::RmsNorm => x,
        }
    }

    /// The scale of a norm over the last axis of an already centred `x`,
    /// `sqrt(mean(x²) + eps)`, the axis kept (size 1).
    pub(crate) fn rms<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x.square()
            .mean_dim(D - 1)
            .add_scalar(self.config.ln_eps)
            .sqrt()
    }

    /// A norm's weight and bias applied to normalised rows `xn [n, d]` (`wb`: rows `[1 or n,
    /// d]` each; none for a pre-folded norm).
    pub(crate) fn ln_affine(xn: Tensor<2>, wb: Option<(Tensor<2>, Tensor<2>)>) -> Tensor<2> {
        match wb {
            Some((w, b)) => xn * w + b,
            None => xn,
        }
    }

    /// LayerNorm (or RMSNorm) with the scale exposed: returns `(normalised x, scale [P])`.
    /// `x: [P, d]`. Reference: TransformerLens `LayerNormPre` / `LayerNorm` (population
    /// variance), `RMSNormPre` / `RMSNorm`.
    pub(crate) fn norm(
        &self,
        x: Tensor<2>,
        wb: Option<(Tensor<1>, Tensor<1>)>,
    ) -> (Tensor<2>, Tensor<1>) {
        if self.on_cpu() {
            // one pass over each row instead of seven over the whole
            let host = |t: &Tensor<1>| t.clone().into_data().try_to_vec::<f32>().ok();
            let wb_host = match &wb {
                Some((w, b)) => host(w).zip(host(b)).map(Some),
                None => Some(None),
            };
            if let Some(wbh) = wb_host {
                let centre = self.config.norm == Norm::LayerNorm;
                let wbs = wbh.as_ref().map(|(w, b)| (w.as_slice(), b.as_slice()));
                if let Ok(r) = fused::norm(
                    x.clone(),
                    centre,
                    self.config.ln_eps as f32,
                    wbs,
                    &self.device,
                ) {
                    return r;
                }
            }
        }
        let xc = self.centred(x);
        let scale = self.rms(xc.clone()); // [P, 1]
        let xn = Self::ln_affine(
            xc / scale.clone(),
            wb.map(|(w, b)| (w.unsqueeze_dim::<2>(0), b.unsqueeze_dim::<2>(0))),
        );
        (xn, scale.squeeze_dim::<1>(1))
    }

    /// A per-head RMSNorm over the last axis of `x [heads, P, dh]` with weight `w [1, dh]`:
    /// the normalised `x` and its scale `[heads, P]`.
    pub(crate) fn head_norm(&self, x: Tensor<3>, w: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        let s = self.rms(x.clone()); // [heads, P, 1]
        (
            x / s.clone() * w.unsqueeze_dim::<3>(0),
            s.squeeze_dim::<2>(2),
        )
    }

    pub(crate) fn layer_ln(
        ln: &Option<(Tensor<2>, Tensor<2>)>,
        l: usize,
    ) -> Option<(Tensor<1>, Tensor<1>)> {
        ln.as_ref().map(|(w, b)| {
            (
                w.clone().narrow(0, l, 1).squeeze_dim::<1>(0),
                b.clone().narrow(0, l, 1).squeeze_dim::<1>(0),
            )
        })
    }

    /// Whether this model computes on the CPU backend (the fused host kernels apply).
    pub fn on_cpu(&self) -> bool {
        self.device == Device::flex()
    }

    /// Softmax of the scaled scores of a block of queries `[KV, g·Bq, K]` (rows grouped per
    /// key/value head, `Bq` rows per query head), with the layer's span mask, for queries
    /// `q0 .. q0 + Bq`.
    pub(crate) fn block_softmax(
        &self,
        scores: Tensor<3>,
        span: AttnSpan,
        q0: usize,
        bq: usize,
    ) -> Result<Tensor<3>> {
        let (scale, cap) = (self.config.attn_scale, self.config.attn_softcap);
        if self.on_cpu() {
            return fused::softmax_block(scores, scale, cap, span, q0, bq, &self.device);
        }
        let [g, rows, k] = scores.dims();
        let mask = block_mask(span, q0, bq, k, &self.device)
            .unsqueeze_dim::<3>(0)
            .expand([g * rows / bq, bq, k])
            .reshape([g, rows, k]);
        Ok(softmax(
            self.scaled_scores(scores).mask_fill(mask, MASK_VALUE),
            2,
        ))
    }

    /// Raw scores `q̂·k̂` → the attention logits the softmax reads: times the score scale, then
    /// soft-capped where the model caps them (Gemma 2: `cap · tanh(s / cap)`).
    pub(crate) fn scaled_scores<const D: usize>(&self, raw: Tensor<D>) -> Tensor<D> {
        let s = raw.mul_scalar(self.config.attn_scale);
        match self.config.attn_softcap {
            Some(cap) => s.div_scalar(cap).tanh().mul_scalar(cap),
            None => s,
        }
    }

    /// A post-norm (Gemma): `y · w / s`, `s = sqrt(mean(y²) + eps)` over `y [P, d]`, with `w`
    /// the norm's weight `[1, d]`; returns the normalised `y` and `s [P]`.
    pub(crate) fn post_norm(&self, y: Tensor<2>, w: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let s = self.rms(y.clone()); // [P, 1]
        (y / s.clone() * w, s.squeeze_dim::<1>(1))
    }

    /// The MLP's pre-activations of normalised inputs `xn [Lb, n, d]` (`n` positions of each
    /// of the layers of `b`): `z` (the gate's, in a gated MLP) and, for a gated MLP, the
    /// linear path `x W_in + b_in`: `[Lb, n, d_mlp]` each.
    pub(crate) fn mlp_pre_activations(
        &self,
        b: &Blocks,
        xn: Tensor<3>,
    ) -> Result<(Tensor<3>, Option<Tensor<3>>)> {
        let m = b.mlp()?;
        let lin = self.plus_bias(
            xn.clone().matmul(m.w_in.clone()),
            m.b_in.clone().unsqueeze_dim::<3>(1),
        ); // [Lb, n, d_mlp]
        Ok(match &m.w_gate {
            Some(w_gate) => (xn.matmul(w_gate.clone()), Some(lin)),
            None => (lin, None),
        })
    }

    /// `x + b` (`b` broadcast), or `x` itself when `b` is all zeros on the CPU: the biases
    /// most models have none of are zero tensors, and adding one is a pass over `x` for
    /// nothing. Exact either way (`x + 0 = x`).
    pub(crate) fn plus_bias<const D: usize>(&self, x: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        if self.on_cpu()
            && b.dims().iter().product::<usize>() <= ZERO_CHECK_MAX
            && b.clone()
                .into_data()
                .as_slice::<f32>()
                .is_ok_and(|v| v.iter().all(|&x| x == 0.0))
        {
            return x;
        }
        x + b
    }

    /// `act(z)` (⊙ the linear path in a gated MLP).
    pub(crate) fn mlp_post(&self, pre: Tensor<2>, lin: Option<Tensor<2>>) -> Result<Tensor<2>> {
        let a = self.config.act;
        let act = if self.on_cpu() && fused::has_activation(a) {
            fused::activation(pre, a, &self.device)?
        } else {
            act::apply(a, pre)
        };
        Ok(match lin {
            Some(lin) if self.on_cpu() => fused::times(act, lin, &self.device)?,
            Some(lin) => act * lin,
            None => act,
        })
    }
}

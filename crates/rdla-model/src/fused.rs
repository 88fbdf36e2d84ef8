//! Fused element-wise kernels for the forward pass on the CPU backend.
//!
//! On `Device::flex()` a tensor's data is host memory, so a chain of element-wise tensor ops
//! (each one a full, single-threaded pass that allocates) can be replaced by one in-place,
//! multi-threaded pass over the buffer: the attention softmax (scale + causal/local mask +
//! softmax) and the MLP activation. On other devices [`Model`](crate::Model) keeps the
//! tensor expressions. Both paths compute the same function; masked pattern entries are
//! exactly 0 in both.

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{Activation, AttnSpan};
use crate::error::{ModelError, Result};

/// Below this many elements a kernel runs on the calling thread only.
const PAR_MIN: usize = 1 << 15;

fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Run `f(first_row, rows)` over `data` split into whole rows of `row_len`, on up to
/// [`threads()`] threads (the calling thread takes the first share).
fn par_rows(data: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = data.len() / row_len.max(1);
    let n = threads().min(rows).max(1);
    if n == 1 || data.len() < PAR_MIN {
        f(0, data);
        return;
    }
    let per = rows.div_ceil(n);
    std::thread::scope(|s| {
        let mut chunks = data.chunks_mut(per * row_len).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            s.spawn(move || f(i * per, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

/// Apply `kernel` to the tensor's buffer in place (zero-copy for a uniquely owned tensor on
/// the CPU backend) and hand the buffer back as a tensor.
fn in_place<const D: usize>(
    t: Tensor<D>,
    device: &Device,
    kernel: impl FnOnce(&mut [f32]),
) -> Result<Tensor<D>> {
    let mut data: TensorData = t.into_data();
    let buf = data
        .as_mut_slice::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))?;
    kernel(buf);
    Ok(Tensor::from_data(data, device))
}

/// `softmax(scale · scores)` over the last axis of `[H, P, P]` raw scores `q·kᵀ`, with every
/// key that `span` hides from a query set to exactly 0 (TransformerLens masks with `-inf`).
pub fn attention_pattern(
    scores: Tensor<3>,
    scale: f32,
    span: AttnSpan,
    device: &Device,
) -> Result<Tensor<3>> {
    let n = scores.dims()[2];
    in_place(scores, device, |buf| {
        par_rows(buf, n, |first, rows| {
            for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                let q = (first + i) % n;
                let lo = match span {
                    AttnSpan::Global => 0,
                    AttnSpan::Local(w) => (q + 1).saturating_sub(w),
                };
                let (head, rest) = row.split_at_mut(lo);
                let (live, tail) = rest.split_at_mut(q + 1 - lo);
                head.fill(0.0);
                tail.fill(0.0);
                let max = live
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                let mut sum = 0.0f32;
                for x in live.iter_mut() {
                    *x = (*x * scale - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                live.iter_mut().for_each(|x| *x *= inv);
            }
        });
    })
}

/// Whether [`activation`] has a fused kernel for `act` (exact GELU needs `erf`, which the
/// standard library lacks; it keeps the tensor expression).
pub fn has_activation(act: Activation) -> bool {
    !matches!(act, Activation::Gelu)
}

/// `act(z)` element-wise, in place. Same formulas as [`crate::act::apply`].
pub fn activation<const D: usize>(
    z: Tensor<D>,
    act: Activation,
    device: &Device,
) -> Result<Tensor<D>> {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    const K: f32 = 0.044_715;
    in_place(z, device, |buf| {
        par_rows(buf, 1024.min(buf.len()).max(1), |_, xs| match act {
            // x · σ(2u), u = sqrt(2/π)(x + 0.044715 x³)  ==  0.5 x (1 + tanh u)
            Activation::GeluNew => xs.iter_mut().for_each(|x| {
                let two_u = 2.0 * C * (*x + K * *x * *x * *x);
                *x /= 1.0 + (-two_u).exp();
            }),
            Activation::Silu => xs.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp()),
            Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Gelu => unreachable!("exact GELU has no fused kernel"),
        });
    })
}

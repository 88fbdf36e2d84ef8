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

/// `e^x` for `x ≤ 88`, to about 1 ulp (Cephes `expf`: `x = n ln2 + r`, a degree-6 polynomial
/// for `e^r` on `|r| ≤ ln2/2`, then `2^n` through the exponent bits). Unlike `f32::exp` (a
/// libm call per element) it is plain arithmetic, so loops over it vectorise. Below `-87.3`
/// it returns `e^-87.3 ≈ 1.2e-38` instead of a subnormal or 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_66)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    // n ∈ [-126, 127]: a normal power of two
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// A reduction over `xs` in 8 independent lanes (so it vectorises; a single running
/// accumulator is a serial dependency chain), combined at the end.
#[inline(always)]
fn lanes(
    xs: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32,
    join: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = step(*a, x);
        }
    }
    let head = acc.into_iter().fold(init, &join);
    rest.iter().fold(head, |a, &x| step(a, x))
}

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
/// key that `span` hides from a query set to exactly 0 (TransformerLens masks with `-inf`),
/// written straight into layer `layer` of the `[L, H, P, P]` pattern cache (no separate
/// pattern tensor, no copy into the cache). Returns the cache.
pub fn attention_pattern_into(
    scores: Tensor<3>,
    scale: f32,
    span: AttnSpan,
    patterns: Tensor<4>,
    layer: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    let [h, n, _] = scores.dims();
    let src_data = scores.into_data();
    let src = src_data
        .as_slice::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))?;
    in_place(patterns, device, |all| {
        let dst = &mut all[layer * h * n * n..(layer + 1) * h * n * n];
        par_rows(dst, n, |first, rows| {
            for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                let r = first + i; // (head, query) row
                let q = r % n;
                let lo = match span {
                    AttnSpan::Global => 0,
                    AttnSpan::Local(w) => (q + 1).saturating_sub(w),
                };
                let s = &src[r * n + lo..=r * n + q];
                let (head, rest) = row.split_at_mut(lo);
                let (live, tail) = rest.split_at_mut(q + 1 - lo);
                head.fill(0.0);
                tail.fill(0.0);
                let max = lanes(s, f32::NEG_INFINITY, |m, x| m.max(x * scale), f32::max);
                live.iter_mut()
                    .zip(s)
                    .for_each(|(p, &x)| *p = exp(x * scale - max));
                let inv = 1.0 / lanes(live, 0.0, |a, x| a + x, |a, b| a + b);
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
                *x /= 1.0 + exp(-two_u);
            }),
            Activation::Silu => xs.iter_mut().for_each(|x| *x /= 1.0 + exp(-*x)),
            Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Gelu => unreachable!("exact GELU has no fused kernel"),
        });
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use burn::tensor::activation::softmax;
    use burn::tensor::{Bool, Device, Tensor, TensorData};

    use super::{PAR_MIN, activation, attention_pattern_into, exp};
    use crate::act;
    use crate::config::{Activation, AttnSpan};

    /// Deterministic values in about [-range, range].
    fn values(n: usize, range: f32) -> Vec<f32> {
        let mut s = 0x9E37_79B9_7F4A_7C15_u64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * range
            })
            .collect()
    }

    fn max_abs_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// The fused kernel equals the tensor expression the GPU path uses, on the multi-threaded
    /// path (more than `PAR_MIN` elements) and for global and local spans.
    #[test]
    fn attention_pattern_matches_the_tensor_expression() {
        let dev = Device::flex();
        let (h, n) = (3, 150);
        assert!(h * n * n > PAR_MIN);
        let scores: Tensor<3> =
            Tensor::from_data(TensorData::new(values(h * n * n, 8.0), [h, n, n]), &dev);
        for span in [AttnSpan::Global, AttnSpan::Local(7)] {
            let hidden: Vec<bool> = (0..n * n).map(|i| !span.allows(i / n, i % n)).collect();
            let mask: Tensor<3, Bool> =
                Tensor::<2, Bool>::from_data(TensorData::new(hidden, [n, n]), &dev)
                    .unsqueeze_dim::<3>(0)
                    .expand([h, n, n]);
            let want = softmax(scores.clone().mul_scalar(0.25).mask_fill(mask, -1.0e30), 2);
            // layer 1 of a 2-layer cache; layer 0 must stay untouched
            let cache = Tensor::<4>::full([2, h, n, n], 7.0, &dev);
            let cache = attention_pattern_into(scores.clone(), 0.25, span, cache, 1, &dev).unwrap();
            let untouched = cache.clone().narrow(0, 0, 1).sub_scalar(7.0).abs().max();
            assert_eq!(untouched.into_scalar::<f32>(), 0.0);
            let got = cache.narrow(0, 1, 1).squeeze_dim::<3>(0);
            let err = max_abs_diff(got.clone(), want);
            assert!(err < 1e-6, "{span:?}: max abs difference {err}");
            // masked keys are exactly zero, rows sum to one
            let data = got.clone().into_data().try_to_vec::<f32>().unwrap();
            for (i, row) in data.chunks(n).enumerate() {
                let q = i % n;
                for (p, &x) in row.iter().enumerate() {
                    if !span.allows(q, p) {
                        assert!(x == 0.0, "{span:?}: q {q} p {p} = {x}");
                    }
                }
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{span:?}: row {i} sums to {sum}");
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            let (got, want) = (f64::from(exp(x)), f64::from(x.exp()));
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert!(exp(-1.0e30) >= 0.0 && exp(-1.0e30) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn activations_match_the_tensor_expressions() {
        let dev = Device::flex();
        let n = 2 * PAR_MIN + 123;
        let z: Tensor<3> = Tensor::from_data(TensorData::new(values(n, 12.0), [1, 1, n]), &dev);
        for a in [Activation::GeluNew, Activation::Silu, Activation::Relu] {
            let want = act::apply(a, z.clone());
            let got = activation(z.clone(), a, &dev).unwrap();
            let err = max_abs_diff(got, want);
            assert!(err < 1e-5, "{a:?}: max abs difference {err}");
        }
    }
}

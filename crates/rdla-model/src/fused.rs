//! Fused element-wise kernels for the forward pass on the CPU backend.
//!
//! On `Device::flex()` a tensor's data is host memory, so a chain of element-wise tensor ops
//! (each one a full, single-threaded pass that allocates) can be replaced by one in-place,
//! multi-threaded pass over the buffer: the attention softmax (scale + causal/local mask +
//! softmax) and the MLP activation. On other devices [`Model`](crate::Model) keeps the
//! tensor expressions. Both paths compute the same function; masked pattern entries are
//! exactly 0 in both.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{Activation, AttnSpan};
use crate::error::{ModelError, Result};
use crate::par::par_parts;

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

/// Run `f(first_row, rows)` over `data` split into whole rows of `row_len`, on up to one
/// thread per core (the calling thread takes the first share).
fn par_rows(data: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let row_len = row_len.max(1);
    let done: Result<Vec<()>, std::convert::Infallible> =
        par_parts(data, row_len, PAR_MIN, |first, rows| {
            f(first / row_len, rows);
            Ok(())
        });
    let Ok(_) = done;
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

/// `softmax(scale · scores)` (soft-capped first where `cap` is given) over the last axis of a block of raw scores `q·kᵀ`
/// `[G, rows, K]`, in place: row `i` of each group belongs to query position
/// `q0 + i % per_group` (grouped-query attention stacks the `g` query heads of a key/value head
/// as consecutive runs of `per_group` rows) and key `j` is key position `j`; every key `span`
/// hides from its query is set to exactly 0 (TransformerLens masks with `-inf`).
pub fn softmax_block(
    scores: Tensor<3>,
    scale: f32,
    cap: Option<f32>,
    span: AttnSpan,
    q0: usize,
    per_group: usize,
    device: &Device,
) -> Result<Tensor<3>> {
    let k = scores.dims()[2];
    in_place(scores, device, |all| {
        par_rows(all, k, |first, rows| {
            for (i, row) in rows.chunks_exact_mut(k).enumerate() {
                let q = q0 + (first + i) % per_group.max(1);
                let seen = span.visible(q);
                let (lo, hi) = (seen.start, seen.end.min(k));
                let (head, rest) = row.split_at_mut(lo.min(hi));
                let (live, tail) = rest.split_at_mut(hi - lo.min(hi));
                head.fill(0.0);
                tail.fill(0.0);
                if live.is_empty() {
                    continue;
                }
                // soft-capped scores (Gemma 2): cap · tanh(scale · s / cap), then unscaled
                let scale = match cap {
                    Some(c) => {
                        live.iter_mut()
                            .for_each(|x| *x = c * (*x * scale / c).tanh());
                        1.0
                    }
                    None => scale,
                };
                let max = lanes(
                    live,
                    f32::NEG_INFINITY,
                    |m, x| m.max(x * scale),
                    |a, b| a.max(b),
                );
                live.iter_mut().for_each(|x| *x = exp(*x * scale - max));
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

/// `a ⊙ b` element-wise (equal shapes), in place in `a`'s buffer, on every core.
pub fn times<const D: usize>(a: Tensor<D>, b: Tensor<D>, device: &Device) -> Result<Tensor<D>> {
    if a.dims() != b.dims() {
        return Err(ModelError::Device(format!(
            "times: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    let other: TensorData = b.into_data();
    let ys = other
        .as_slice::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))?;
    in_place(a, device, |buf| {
        let row = 1024.min(buf.len()).max(1);
        par_rows(buf, row, |r, xs| {
            let ys = &ys[r * row..r * row + xs.len()];
            xs.iter_mut().zip(ys).for_each(|(x, y)| *x *= y);
        });
    })
}

/// Rotary embedding in place (`rotate_half` layout, as [`crate::rotary`]'s tensor
/// expression): each row of `x [a, b, dh]` is at position `first + (row mod b)`; the pairs
/// `(i, i + dim/2)` of its first `dim` channels are rotated by that position's `cos`/`sin`
/// (tables `[n, dim/2]`, row-major). The same products and sums as the expression, so the
/// same bits.
pub fn rotate(
    x: Tensor<3>,
    dim: usize,
    cos: &[f32],
    sin: &[f32],
    first: usize,
    device: &Device,
) -> Result<Tensor<3>> {
    let [_, b, dh] = x.dims();
    let half = dim / 2;
    if dim > dh || (first + b) * half > cos.len().min(sin.len()) {
        return Err(ModelError::Device(format!(
            "rotate: {b} positions from {first} need more of the tables ({} values) or a \
             head wider than {dh}",
            cos.len()
        )));
    }
    in_place(x, device, |buf| {
        par_rows(buf, dh, |r0, rows| {
            for (i, row) in rows.chunks_exact_mut(dh.max(1)).enumerate() {
                let at = (first + (r0 + i) % b.max(1)) * half;
                let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
                let (x1, x2) = row[..dim].split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    x1[j] = a * c[j] - b * s[j];
                    x2[j] = b * c[j] + a * s[j];
                }
            }
        });
    })
}

/// A norm over the last axis of `x [rows, d]`, in place: each row centred (a LayerNorm's
/// `centre`; RMSNorm does not), divided by its scale `sqrt(mean(x²) + eps)`, then times
/// `w` plus `b` where given (`[d]` each). Returns the normalised rows and the scales `[rows]`.
pub fn norm(
    x: Tensor<2>,
    centre: bool,
    eps: f32,
    wb: Option<(&[f32], &[f32])>,
    device: &Device,
) -> Result<(Tensor<2>, Tensor<1>)> {
    let [rows, d] = x.dims();
    if wb.is_some_and(|(w, b)| w.len() != d || b.len() != d) {
        return Err(ModelError::Device(format!(
            "norm: weights of a width other than {d}"
        )));
    }
    let mut scales = vec![0.0f32; rows];
    let mut data: TensorData = x.into_data();
    let buf = data
        .as_mut_slice::<f32>()
        .map_err(|e| ModelError::Device(format!("{e:?}")))?;
    let d1 = d.max(1);
    let per_row = |row: &mut [f32]| -> f32 {
        if centre {
            let mean = lanes(row, 0.0, |a, x| a + x, |a, b| a + b) / d as f32;
            row.iter_mut().for_each(|x| *x -= mean);
        }
        let ss = lanes(row, 0.0, |a, x| a + x * x, |a, b| a + b);
        let scale = (ss / d as f32 + eps).sqrt();
        match wb {
            Some((w, b)) => row
                .iter_mut()
                .zip(w.iter().zip(b))
                .for_each(|(x, (w, b))| *x = *x / scale * w + b),
            None => row.iter_mut().for_each(|x| *x /= scale),
        }
        scale
    };
    let done: std::result::Result<Vec<Vec<f32>>, std::convert::Infallible> =
        par_parts(buf, d1, PAR_MIN, |_, part| {
            Ok(part.chunks_exact_mut(d1).map(per_row).collect())
        });
    let Ok(parts) = done;
    for (s, v) in scales.iter_mut().zip(parts.into_iter().flatten()) {
        *s = v;
    }
    Ok((
        Tensor::from_data(data, device),
        Tensor::from_data(TensorData::new(scales, [rows]), device),
    ))
}

#[cfg(test)]
mod tests {

    use burn::tensor::activation::softmax;
    use burn::tensor::{Bool, Device, Tensor, TensorData};

    use super::{PAR_MIN, activation, exp, norm, rotate, softmax_block, times};
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

    /// `times` is the element-wise product to the bit, on the multi-threaded path and on a
    /// length that is not a whole number of its rows; shapes that differ are refused.
    #[test]
    fn times_is_the_elementwise_product() {
        let dev = Device::flex();
        let (a, b) = (3, PAR_MIN / 3 + 1001);
        let t = |seed_range: f32| {
            Tensor::<3>::from_data(
                TensorData::new(values(2 * a * b, seed_range), [2, a, b]),
                &dev,
            )
        };
        let (x, y) = (t(3.0), t(5.0).flip([2]));
        let want = x.clone() * y.clone();
        let got = times(x, y, &dev).unwrap();
        assert_eq!(max_abs_diff(got.clone(), want.clone()), 0.0);
        assert!(max_abs_diff(got, Tensor::zeros([2, a, b], &dev)) > 0.0);
        let small = Tensor::<3>::ones([1, 2, 3], &dev);
        assert!(times(small.clone(), small.reshape([1, 3, 2]), &dev).is_err());
    }

    /// The fused kernel equals the tensor expression the GPU path uses, on the multi-threaded
    /// path (more than `PAR_MIN` elements), for global and local spans, for a block of queries
    /// that does not start at 0, with two query heads per key/value head.
    #[test]
    fn softmax_block_matches_the_tensor_expression() {
        let dev = Device::flex();
        let (groups, g, bq, q0) = (3, 2, 50, 100);
        let k = q0 + bq;
        let rows = g * bq;
        assert!(groups * rows * k > PAR_MIN);
        let scores: Tensor<3> = Tensor::from_data(
            TensorData::new(values(groups * rows * k, 8.0), [groups, rows, k]),
            &dev,
        );
        for (span, cap) in [
            (AttnSpan::Global, None),
            (AttnSpan::Local(7), None),
            (AttnSpan::Global, Some(1.5)),
        ] {
            let hidden: Vec<bool> = (0..rows * k)
                .map(|i| !span.allows(q0 + (i / k) % bq, i % k))
                .collect();
            let mask: Tensor<3, Bool> =
                Tensor::<2, Bool>::from_data(TensorData::new(hidden, [rows, k]), &dev)
                    .unsqueeze_dim::<3>(0)
                    .expand([groups, rows, k]);
            let mut scaled = scores.clone().mul_scalar(0.25);
            if let Some(c) = cap {
                scaled = scaled.div_scalar(c).tanh().mul_scalar(c);
            }
            let want = softmax(scaled.mask_fill(mask, -1.0e30), 2);
            let got = softmax_block(scores.clone(), 0.25, cap, span, q0, bq, &dev).unwrap();
            let err = max_abs_diff(got.clone(), want);
            assert!(err < 1e-6, "{span:?}: max abs difference {err}");
            // masked keys are exactly zero, rows sum to one
            let data = got.into_data().try_to_vec::<f32>().unwrap();
            for (i, row) in data.chunks(k).enumerate() {
                let q = q0 + i % bq;
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

    /// The fused rotation is the tensor expression's to the bit: rows at positions from
    /// `first` (the prompt's `b` positions repeated over `a` heads), a rotary width below the
    /// head's (the rest untouched), on the multi-threaded path; tables too short are refused.
    #[test]
    fn rotate_is_the_tensor_expression() {
        let dev = Device::flex();
        let (a, b, dh, dim, first) = (5, 300, 64, 48, 7);
        assert!(a * b * dh > PAR_MIN);
        let (n, half) = (first + b, dim / 2);
        let cos = values(n * half, 1.0);
        let sin: Vec<f32> = cos.iter().rev().map(|c| 0.5 - c).collect();
        let x: Tensor<3> =
            Tensor::from_data(TensorData::new(values(a * b * dh, 3.0), [a, b, dh]), &dev);
        let table = |v: &[f32]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [n, half]), &dev)
                .narrow(0, first, b)
                .unsqueeze_dim::<3>(0)
        };
        let (c, s) = (table(&cos), table(&sin));
        let (x1, x2) = (
            x.clone().narrow(2, 0, half),
            x.clone().narrow(2, half, half),
        );
        let want = Tensor::cat(
            vec![
                x1.clone() * c.clone() - x2.clone() * s.clone(),
                x2 * c + x1 * s,
                x.clone().narrow(2, dim, dh - dim),
            ],
            2,
        );
        let got = rotate(x.clone(), dim, &cos, &sin, first, &dev).unwrap();
        assert_eq!(max_abs_diff(got.clone(), want), 0.0);
        assert!(max_abs_diff(got, x.clone()) > 0.0);
        assert!(rotate(x, dim, &cos[..half * b], &sin, first, &dev).is_err());
    }

    /// The fused norm equals the tensor expression (centred or not, with and without weight
    /// and bias) to float rounding, its scales too, on the multi-threaded path; weights of
    /// another width are refused.
    #[test]
    fn norm_matches_the_tensor_expression() {
        let dev = Device::flex();
        let (rows, d, eps) = (100, 576, 1e-5f32);
        assert!(rows * d > PAR_MIN);
        let x: Tensor<2> =
            Tensor::from_data(TensorData::new(values(rows * d, 4.0), [rows, d]), &dev);
        let w = values(d, 2.0);
        let b: Vec<f32> = w.iter().rev().map(|v| v * 0.5 + 0.1).collect();
        let row = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [d]), &dev);
        for centre in [false, true] {
            for wb in [None, Some((w.as_slice(), b.as_slice()))] {
                let xc = match centre {
                    true => x.clone() - x.clone().mean_dim(1),
                    false => x.clone(),
                };
                let scale = xc.clone().square().mean_dim(1).add_scalar(eps).sqrt(); // [rows, 1]
                let mut want = xc / scale.clone();
                if let Some((w, b)) = wb {
                    want = want * row(w).unsqueeze_dim::<2>(0) + row(b).unsqueeze_dim::<2>(0);
                }
                let (got, s) = norm(x.clone(), centre, eps, wb, &dev).unwrap();
                let e: f32 = (got - want).abs().max().into_scalar();
                let es: f32 = (s - scale.squeeze_dim::<1>(1)).abs().max().into_scalar();
                assert!(e < 1e-5 && es < 1e-5, "centre {centre}: {e} {es}");
            }
        }
        assert!(norm(x, false, eps, Some((&w[1..], &b)), &dev).is_err());
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

//! The tokens a vector writes most strongly: the `k` largest and `k` smallest entries of
//! `c · W_U` over the whole vocabulary, exactly, without reading all of `W_U` in `f32`.
//!
//! A vocabulary readout is a `[d] × [d, V]` product whose only use is its extremes. On the CPU
//! its cost is reading `W_U` (154 MB in `f32` for GPT-2's 50,257 tokens), so it is answered in
//! two steps:
//!
//! 1. a **sketch** of `W_U` (one `i8` per weight and, per token `j`, a scale `s_j` and the
//!    norm `r_j` of the rounding error, a quarter of the bytes) gives every token an
//!    approximate value `a_j` and a proven bound `|c · w_j − a_j| ≤ b_j`
//!    (Cauchy–Schwarz on the rounding error, plus the `f32` rounding of the sketch's own sum);
//! 2. only the tokens that can still be among the `k` largest (`a_j + b_j ≥` the `k`-th
//!    largest `a_j − b_j`) or the `k` smallest are recomputed from `W_U` itself, and ranked by
//!    those exact values.
//!
//! A token left out cannot beat the `k` tokens whose lower bounds exceed its upper bound, so
//! the lists equal those of the full product (up to the `f32` rounding of the product itself,
//! which differs by summation order). When the bounds leave too many candidates (a
//! degenerate vector) or the input is not finite, the full product is used.

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::Result;
use crate::model::to_vec;

/// The `k` largest and `k` smallest entries of a readout, as `(token id, value)`, largest
/// (resp. smallest) first, ties to the lower id.
#[derive(Debug, Clone, PartialEq)]
pub struct Extremes {
    pub up: Vec<(u32, f32)>,
    pub down: Vec<(u32, f32)>,
}

impl Extremes {
    /// The extremes of a full readout `values[id]`.
    pub fn of(values: &[f32], k: usize) -> Self {
        Self::of_subset(values, None, k)
    }

    /// The extremes of `values[i]`, the value of token `ids[i]` (ascending), or of token `i`.
    fn of_subset(values: &[f32], ids: Option<&[u32]>, k: usize) -> Self {
        let id = |i: usize| ids.map_or(i as u32, |ids| ids[i]);
        let pick = |sign: f32| {
            top_indices(values, k, |v| sign * v)
                .into_iter()
                .map(|i| (id(i), values[i]))
                .collect()
        };
        Self {
            up: pick(1.0),
            down: pick(-1.0),
        }
    }
}

/// The indices of the `k` largest `key(v)`, ties to the lower index (NaN ranks above every
/// number, so it is never hidden).
pub fn top_indices(values: &[f32], k: usize, key: impl Fn(f32) -> f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |&a: &usize, &b: &usize| key(values[b]).total_cmp(&key(values[a])).then(a.cmp(&b));
    if idx.len() > k && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    } else if k == 0 {
        idx.clear();
    }
    idx.sort_by(cmp);
    idx
}

/// Weights per sketch row: an `i8` per weight plus the row's scale and error norm.
const SKETCH_LEVELS: f32 = 127.0;

/// When the bounds leave more candidates than this share of the vocabulary, the sketch does
/// not pay and the full product is used.
const MAX_CANDIDATE_SHARE: usize = 8;

/// A quantised copy of `W_U` for bounding `c · W_U` (see the module docs): row `j` is token
/// `j`'s column of `W_U`.
#[derive(Debug)]
pub struct VocabSketch {
    d: usize,
    v: usize,
    /// `[V, d]`, `w_ij ≈ scale_j · q_ji`
    q: Vec<i8>,
    scale: Vec<f32>,
    /// `‖w_j − scale_j q_j‖₂`, rounded up
    err: Vec<f32>,
}

/// Vocabulary columns read from the device per step while building a sketch.
const BUILD_CHUNK: usize = 4096;

impl VocabSketch {
    /// Quantise `w_u` `[d, V]`, a chunk of columns at a time (no full host copy).
    pub fn build(w_u: &Tensor<2>) -> Result<Self> {
        let [d, v] = w_u.dims();
        let mut q = vec![0i8; v * d];
        let mut scale = vec![0f32; v];
        let mut err = vec![0f32; v];
        let mut v0 = 0;
        while v0 < v {
            let n = BUILD_CHUNK.min(v - v0);
            let block = to_vec(w_u.clone().narrow(1, v0, n))?; // [d, n]
            for j in 0..n {
                let col = (0..d).map(|i| block[i * n + j]);
                let max = col.clone().fold(0f32, |m, x| m.max(x.abs()));
                let s = if max > 0.0 { max / SKETCH_LEVELS } else { 1.0 };
                let row = &mut q[(v0 + j) * d..(v0 + j + 1) * d];
                let mut e2 = 0f64;
                for (qi, x) in row.iter_mut().zip(col) {
                    let r = (x / s).round().clamp(-SKETCH_LEVELS, SKETCH_LEVELS);
                    *qi = r as i8;
                    let e = f64::from(x) - f64::from(s) * f64::from(r);
                    e2 += e * e;
                }
                scale[v0 + j] = s;
                // rounded up, so the bound stays a bound after the cast to f32
                err[v0 + j] = (e2.sqrt() * (1.0 + 1e-6)) as f32 + f32::MIN_POSITIVE;
            }
            v0 += n;
        }
        Ok(Self {
            d,
            v,
            q,
            scale,
            err,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + 8 * self.v
    }

    /// The approximate values `a_j` and their bounds `b_j` for every token.
    fn approximate(&self, c: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut a = vec![0f32; self.v];
        Approx {
            sketch: self,
            c,
            out: &mut a,
        }
        .run();
        let n1: f64 = c.iter().map(|x| f64::from(x.abs())).sum();
        let n2: f64 = c
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        // |fl(Σ c_i q_i) − Σ c_i q_i| ≤ γ_d Σ|c_i||q_i| ≤ γ_d · 127 · ‖c‖₁, then × scale_j;
        // products and the final multiply add a few more ulps
        let eps = f64::from(f32::EPSILON);
        let gamma = (self.d as f64 + 4.0) * eps / (1.0 - (self.d as f64 + 4.0) * eps);
        let round = gamma * f64::from(SKETCH_LEVELS) * n1;
        let b = self
            .scale
            .iter()
            .zip(&self.err)
            .zip(&a)
            .map(|((&s, &e), &aj)| {
                let bound =
                    n2 * f64::from(e) + round * f64::from(s) + 2.0 * eps * f64::from(aj.abs());
                (bound * (1.0 + 4.0 * eps)) as f32 + f32::MIN_POSITIVE
            })
            .collect();
        (a, b)
    }

    /// The tokens that can be among the `k` largest or the `k` smallest of `c · W_U`,
    /// ascending; `None` when the sketch cannot narrow them down usefully.
    pub fn candidates(&self, c: &[f32], k: usize) -> Option<Vec<u32>> {
        if c.len() != self.d || !c.iter().all(|x| x.is_finite()) || k == 0 || k >= self.v {
            return None;
        }
        let (a, b) = self.approximate(c);
        let lower: Vec<f32> = a.iter().zip(&b).map(|(x, e)| x - e).collect();
        let upper: Vec<f32> = a.iter().zip(&b).map(|(x, e)| x + e).collect();
        // the k-th largest lower bound, the k-th smallest upper bound
        let kth = |v: &[f32], sign: f32| {
            let mut s: Vec<f32> = v.iter().map(|x| sign * x).collect();
            let (_, x, _) = s.select_nth_unstable_by(k - 1, |p, q| q.total_cmp(p));
            sign * *x
        };
        let (floor, ceil) = (kth(&lower, 1.0), kth(&upper, -1.0));
        let ids: Vec<u32> = (0..self.v)
            .filter(|&j| upper[j] >= floor || lower[j] <= ceil)
            .map(|j| j as u32)
            .collect();
        (ids.len() * MAX_CANDIDATE_SHARE <= self.v).then_some(ids)
    }
}

/// `out[j] = scale_j · Σ_i c_i q_ji`, on every core, with the widest SIMD the CPU has.
struct Approx<'a> {
    sketch: &'a VocabSketch,
    c: &'a [f32],
    out: &'a mut [f32],
}

/// Tokens per thread below which one thread does all of them.
const PAR_MIN_TOKENS: usize = 2048;

impl Approx<'_> {
    fn run(self) {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let s = self.sketch;
        let per = s.v.div_ceil(threads).max(PAR_MIN_TOKENS);
        std::thread::scope(|scope| {
            let mut parts = self
                .out
                .chunks_mut(per)
                .zip(s.q.chunks(per * s.d))
                .zip(s.scale.chunks(per));
            let first = parts.next();
            for ((out, q), scale) in parts {
                let c = self.c;
                scope.spawn(move || Rows { c, q, scale, out }.dispatch());
            }
            if let Some(((out, q), scale)) = first {
                Rows {
                    c: self.c,
                    q,
                    scale,
                    out,
                }
                .dispatch();
            }
        });
    }
}

/// One thread's share of [`Approx`].
struct Rows<'a> {
    c: &'a [f32],
    q: &'a [i8],
    scale: &'a [f32],
    out: &'a mut [f32],
}

impl Rows<'_> {
    fn dispatch(self) {
        pulp::Arch::new().dispatch(self);
    }
}

impl pulp::WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        let d = self.c.len();
        for ((o, q), &s) in self
            .out
            .iter_mut()
            .zip(self.q.chunks_exact(d))
            .zip(self.scale)
        {
            *o = s * dot_i8(self.c, q);
        }
    }
}

/// `Σ c_i q_i` in 16 independent lanes (so it vectorises).
#[inline(always)]
fn dot_i8(c: &[f32], q: &[i8]) -> f32 {
    const W: usize = 16;
    let mut acc = [0f32; W];
    let (cc, qc) = (c.chunks_exact(W), q.chunks_exact(W));
    let (cr, qr) = (cc.remainder(), qc.remainder());
    for (x, y) in cc.zip(qc) {
        for l in 0..W {
            acc[l] += x[l] * f32::from(y[l]);
        }
    }
    let head: f32 = acc.iter().sum();
    head + cr
        .iter()
        .zip(qr)
        .map(|(x, &y)| x * f32::from(y))
        .sum::<f32>()
}

/// The extremes of `c · w_u` (`c` on the host, `[d]`; `w_u` `[d, V]` on its device), exactly:
/// through `sketch` where it narrows the candidates, else from the full product.
pub fn extremes(
    c: &[f32],
    w_u: &Tensor<2>,
    sketch: Option<&VocabSketch>,
    k: usize,
) -> Result<Extremes> {
    let device = w_u.device();
    let row = Tensor::<2>::from_data(TensorData::new(c.to_vec(), [1, c.len()]), &device);
    match sketch.and_then(|s| s.candidates(c, k)) {
        Some(ids) => {
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [ids.len()]),
                &device,
            );
            let exact = to_vec(row.matmul(w_u.clone().select(1, idx)))?;
            Ok(Extremes::of_subset(&exact, Some(&ids), k))
        }
        None => Ok(Extremes::of(&to_vec(row.matmul(w_u.clone()))?, k)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use burn::tensor::Device;

    /// A deterministic pseudo-random stream in `[-1, 1)`.
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn check(d: usize, v: usize, w: Vec<f32>, c: &[f32], k: usize) {
        let dev = Device::flex();
        let w_u = Tensor::<2>::from_data(TensorData::new(w.clone(), [d, v]), &dev);
        let sketch = VocabSketch::build(&w_u).unwrap();
        // the reference: every token's value in f64, ranked
        let full: Vec<f32> = (0..v)
            .map(|j| {
                (0..d)
                    .map(|i| f64::from(c[i]) * f64::from(w[i * v + j]))
                    .sum::<f64>() as f32
            })
            .collect();
        let want = Extremes::of(&full, k);
        let got = extremes(c, &w_u, Some(&sketch), k).unwrap();
        let ids = |l: &[(u32, f32)]| l.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(ids(&got.up), ids(&want.up));
        assert_eq!(ids(&got.down), ids(&want.down));
        for (g, w) in got
            .up
            .iter()
            .chain(&got.down)
            .zip(want.up.iter().chain(&want.down))
        {
            assert!(
                (g.1 - w.1).abs() <= 1e-5 * (1.0 + w.1.abs()),
                "{g:?} vs {w:?}"
            );
        }
    }

    #[test]
    fn the_sketch_finds_the_exact_extremes_and_reads_few_columns() {
        let (d, v) = (96, 5000);
        let w = noise(1, d * v);
        let c = noise(2, d);
        check(d, v, w.clone(), &c, 10);
        let dev = Device::flex();
        let w_u = Tensor::<2>::from_data(TensorData::new(w, [d, v]), &dev);
        let ids = VocabSketch::build(&w_u)
            .unwrap()
            .candidates(&c, 10)
            .unwrap();
        assert!(
            ids.len() >= 20 && ids.len() < v / 10,
            "{} candidates",
            ids.len()
        );
    }

    #[test]
    fn near_ties_and_outlier_columns_keep_the_exact_order() {
        let (d, v) = (64, 3000);
        let mut w = noise(3, d * v);
        let c = noise(4, d);
        // tokens 10..20 are the top ten, the same column up to steps below the sketch's
        // resolution: only the exact recheck can order them
        for j in 10..20 {
            for i in 0..d {
                w[i * v + j] = 0.6 * c[i] + (j as f32) * 1e-3;
            }
        }
        // one column with a huge entry (a coarse scale for the rest of it)
        w[7 * v + 42] = 500.0;
        check(d, v, w, &c, 10);
    }

    #[test]
    fn a_degenerate_or_non_finite_vector_falls_back_to_the_full_product() {
        let (d, v) = (32, 600);
        let w = noise(5, d * v);
        let dev = Device::flex();
        let w_u = Tensor::<2>::from_data(TensorData::new(w.clone(), [d, v]), &dev);
        let sketch = VocabSketch::build(&w_u).unwrap();
        assert!(sketch.candidates(&vec![0.0; d], 10).is_none()); // every value ties at 0
        let mut c = noise(6, d);
        c[3] = f32::NAN;
        assert!(sketch.candidates(&c, 10).is_none());
        let got = extremes(&c, &w_u, Some(&sketch), 10).unwrap();
        assert!(
            got.up.iter().chain(&got.down).any(|p| p.1.is_nan()),
            "the NaN must surface: {got:?}"
        );
        check(d, v, w, &noise(7, d), 10);
    }
}

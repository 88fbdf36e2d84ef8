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

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::model::to_vec;
use crate::par::par_parts;
use crate::weights::RowReader;

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
/// `1.5·2²³`: `(y + ROUND) − ROUND` is `y` rounded to the nearest integer (ties to even) for
/// `|y| < 2²²`.
const ROUND: f32 = 12_582_912.0;

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
    /// Quantise an unembedding, a chunk of tokens at a time (no full host copy), the tokens
    /// split over the cores.
    pub fn build(u: &Unembedding) -> Result<Self> {
        let (d, v) = u.dims();
        let mut q = vec![0i8; v * d];
        // each part quantises its own tokens and returns their scales and error bounds
        let parts = par_parts(
            &mut q,
            d.max(1),
            0,
            |first, part| -> Result<Vec<(f32, f32)>> {
                let (t0, nt) = (first / d.max(1), part.len() / d.max(1));
                let mut out = Vec::with_capacity(nt);
                let mut block = Vec::new();
                let mut j0 = 0;
                while j0 < nt {
                    let n = BUILD_CHUNK.min(nt - j0);
                    block.clear();
                    u.columns(t0 + j0..t0 + j0 + n, &mut block)?; // [n, d]
                    // a NaN would vanish from the max below and make its token's bound NaN, which
                    // no comparison selects: refuse it (the loaders already refuse non-finite
                    // weights)
                    if !block.iter().fold(true, |ok, x| ok & x.is_finite()) {
                        return Err(ModelError::NonFinite {
                            key: "unembed.W_U (processed)".into(),
                        });
                    }
                    for (j, col) in block.chunks_exact(d).enumerate() {
                        let max = col.iter().fold(0f32, |m, x| m.max(x.abs()));
                        let s = if max > 0.0 { max / SKETCH_LEVELS } else { 1.0 };
                        let inv = 1.0 / s;
                        let row = &mut part[(j0 + j) * d..(j0 + j + 1) * d];
                        let mut e2 = 0f64;
                        for (qi, &x) in row.iter_mut().zip(col) {
                            // to the nearest level (ties to even) by adding and removing
                            // 1.5·2²³: plain arithmetic the compiler vectorises, where
                            // `round` is a library call per value (|x·inv| ≤ 127 here); the
                            // error bound below is of the level chosen, whichever it is
                            let r =
                                ((x * inv + ROUND) - ROUND).clamp(-SKETCH_LEVELS, SKETCH_LEVELS);
                            *qi = r as i8;
                            let e = f64::from(x) - f64::from(s) * f64::from(r);
                            e2 += e * e;
                        }
                        // rounded up, so the bound stays a bound after the cast to f32
                        out.push((s, (e2.sqrt() * (1.0 + 1e-6)) as f32 + f32::MIN_POSITIVE));
                    }
                    j0 += n;
                }
                Ok(out)
            },
        )?;
        let (scale, err): (Vec<f32>, Vec<f32>) = parts.into_iter().flatten().unzip();
        if let Unembedding::Stored(st) = u {
            st.release_pages();
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

/// Below this many tokens one thread does all of them.
const PAR_MIN_TOKENS: usize = 2048;

impl Approx<'_> {
    fn run(self) {
        let (s, c) = (self.sketch, self.c);
        let done = par_parts(self.out, 1, PAR_MIN_TOKENS, |first, out| {
            let n = out.len();
            Rows {
                c,
                q: &s.q[first * s.d..(first + n) * s.d],
                scale: &s.scale[first..first + n],
                out,
            }
            .dispatch();
            Ok::<(), std::convert::Infallible>(())
        });
        let Ok(_) = done;
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
            *o = s * dot(self.c, q);
        }
    }
}

/// The extremes of `c · W_U` (`c` on the host, `[d]`), exactly: through `sketch` where it
/// narrows the candidates, else from the full product.
pub fn extremes(
    c: &[f32],
    u: &Unembedding,
    sketch: Option<&VocabSketch>,
    k: usize,
) -> Result<Extremes> {
    match sketch.and_then(|s| s.candidates(c, k)) {
        Some(ids) => Ok(Extremes::of_subset(&u.product_at(c, &ids)?, Some(&ids), k)),
        None => Ok(Extremes::of(&u.product(c)?, k)),
    }
}

/// The unembedding `W_U` `[d, V]` as TransformerLens processes it (`ln_final` folded in,
/// centred), however it is held.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per model, beside ~20 other tensors of this size
pub enum Unembedding {
    /// Processed, on the device.
    Resident(Tensor<2>),
    /// Left where it lies; columns are processed as they are read.
    Stored(Arc<StoredVocab>),
}

impl Unembedding {
    /// `(d, V)`
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Resident(w) => {
                let [d, v] = w.dims();
                (d, v)
            }
            Self::Stored(s) => (s.d, s.v),
        }
    }

    /// Columns `r` of `W_U`, appended to `out` as rows (`[n, d]`, token-major).
    pub fn columns(&self, r: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Self::Resident(w) => {
                let [d, _] = w.dims();
                let n = r.len();
                let block = to_vec(w.clone().narrow(1, r.start, n))?; // [d, n]
                out.reserve(n * d);
                for j in 0..n {
                    out.extend((0..d).map(|i| block[i * n + j]));
                }
                Ok(())
            }
            Self::Stored(s) => s.columns(r, out),
        }
    }

    /// Columns `ids` of `W_U` on `device`: `[d, n]`.
    pub fn columns_at(&self, ids: &[u32], device: &Device) -> Result<Tensor<2>> {
        match self {
            Self::Resident(w) => Ok(w.clone().select(1, id_tensor(ids, &w.device()))),
            Self::Stored(s) => {
                let mut rows = Vec::with_capacity(ids.len() * s.d);
                for &id in ids {
                    s.columns(id as usize..id as usize + 1, &mut rows)?;
                }
                let t = Tensor::<2>::from_data(TensorData::new(rows, [ids.len(), s.d]), device);
                Ok(t.transpose())
            }
        }
    }

    /// `c · W_U` `[V]` (no bias).
    pub fn product(&self, c: &[f32]) -> Result<Vec<f32>> {
        match self {
            Self::Resident(w) => to_vec(host_row(c, &w.device()).matmul(w.clone())),
            Self::Stored(s) => s.product(c),
        }
    }

    /// `c_i · W_U` for every row of `cs` (`[n, d]`, row-major): `[n, V]` (no bias), the
    /// stored matrix read once for all rows.
    pub fn products(&self, cs: &[f32]) -> Result<Vec<f32>> {
        match self {
            Self::Resident(w) => {
                let [d, _] = w.dims();
                let n = cs.len() / d.max(1);
                let x = Tensor::<2>::from_data(TensorData::new(cs.to_vec(), [n, d]), &w.device());
                to_vec(x.matmul(w.clone()))
            }
            Self::Stored(s) => s.products(cs),
        }
    }

    /// `c · W_U[:, ids]` (no bias).
    pub fn product_at(&self, c: &[f32], ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            Self::Resident(w) => {
                let dev = w.device();
                to_vec(host_row(c, &dev).matmul(w.clone().select(1, id_tensor(ids, &dev))))
            }
            Self::Stored(s) => {
                let prep = s.prepare(c);
                let mut scratch = Vec::with_capacity(s.d);
                ids.iter()
                    .map(|&id| {
                        let j = id as usize;
                        s.raw()
                            .with_rows(j..j + 1, &mut scratch, |e| prep.apply(e, s.kappa[j]))
                    })
                    .collect()
            }
        }
    }
}

fn host_row(c: &[f32], device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(c.to_vec(), [1, c.len()]), device)
}

fn id_tensor(ids: &[u32], device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [ids.len()]),
        device,
    )
}

/// How the stored token matrices become TransformerLens's processed ones (see
/// [`crate::process`]): what [`crate::process::process_globals`] does to `W_E`, and to
/// `W_U`/`b_U` with `ln_final` folded in.
#[derive(Debug, Clone)]
pub struct VocabProcessing {
    /// What each embedding row is multiplied by first (Gemma's `sqrt(d_model)`).
    pub embed_scale: f32,
    /// Centre each embedding row over `d_model`.
    pub centre_embed: bool,
    /// `ln_final` folded into `W_U` (weight, bias).
    pub fold: Option<(Vec<f32>, Vec<f32>)>,
    /// After the fold, centre each column of `W_U` over `d_model` (a LayerNorm fold).
    pub centre_cols: bool,
    /// Centre `W_U` and `b_U` over the vocabulary.
    pub centre_vocab: bool,
}

/// The embedding and unembedding left where they lie on disk (a memory-mapped safetensors
/// file, or GGUF blocks), read a block of tokens at a time and processed as read: no `f32`
/// copy of either is held. One pass at opening computes what processing needs from the whole
/// matrix (each token's mean, the mean over the vocabulary, the folded bias).
#[derive(Debug)]
pub struct StoredVocab {
    embed: RowReader,
    /// An untied `lm_head` `[V, d]`; `None`: the embedding is tied.
    lm_head: Option<RowReader>,
    proc: VocabProcessing,
    d: usize,
    v: usize,
    /// Per token, the mean over `d_model` of its folded column (subtracted when
    /// `centre_cols`; 0 otherwise).
    kappa: Vec<f32>,
    /// The mean over the vocabulary of the folded, column-centred matrix `[d]` (subtracted
    /// when `centre_vocab`; 0 otherwise).
    mu: Vec<f32>,
    /// The processed `b_U` `[V]`.
    b_u: Vec<f32>,
}

/// Tokens read per block.
const ROW_CHUNK: usize = 1024;

/// Bytes of `f32` rows converted per block of a full product (about an L2 cache).
const PRODUCT_BLOCK_BYTES: usize = 256 << 10;

/// `out [m, n] = rows [m, d] · aᵀ` for `a [n, d]`, all row-major (one thread: the caller
/// splits the vocabulary over the cores). The rows of `a` are the product's left operand, so
/// each one's values are the same bits however many are multiplied at once (as in the
/// forward pass's products): a prompt's logits do not depend on its batch.
#[allow(unsafe_code)] // `gemm`'s kernel is reached through raw pointers only
fn block_product(rows: &[f32], a: &[f32], out: &mut [f32], d: usize, n: usize) {
    let m = out.len() / n.max(1);
    if m == 0 || rows.len() < m * d || a.len() < n * d {
        return;
    }
    // SAFETY: `out` holds `m × n` values (token `t`, prompt `i` at `t·n + i`), `rows` at least
    // `m × d` (token `t`'s row at `t·d`) and `a` at least `n × d` (prompt `i`'s at `i·d`), all
    // checked above; `gemm` reads and writes only within those bounds, and nothing else
    // aliases them.
    unsafe {
        gemm::gemm(
            n,
            m,
            d,
            out.as_mut_ptr(),
            n as isize,
            1,
            false,
            a.as_ptr(),
            1,
            d as isize,
            rows.as_ptr(),
            d as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `c` prepared for products with raw stored columns: `c·u_j = (c ⊙ w)·e_j − κ_j Σc − c·μ`.
struct Prepared {
    a: Vec<f32>,
    sum: f32,
    dot_mu: f32,
}

impl Prepared {
    fn apply(&self, raw: &[f32], kappa: f32) -> f32 {
        dot(&self.a, raw) - kappa * self.sum - self.dot_mu
    }
}

/// `Σ a_i b_i` in 16 independent lanes (so it vectorises), `b` in `f32` or `i8`.
#[inline(always)]
fn dot<T: Copy>(a: &[f32], b: &[T]) -> f32
where
    f32: From<T>,
{
    const W: usize = 16;
    let mut acc = [0f32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..W {
            acc[l] += x[l] * f32::from(y[l]);
        }
    }
    let head: f32 = acc.iter().sum();
    head + ar
        .iter()
        .zip(br)
        .map(|(x, &y)| x * f32::from(y))
        .sum::<f32>()
}

impl StoredVocab {
    /// Open: one pass over the unembedding's stored rows (checking every value is finite).
    pub fn open(
        embed: RowReader,
        lm_head: Option<RowReader>,
        proc: VocabProcessing,
    ) -> Result<Self> {
        let (v, d) = (embed.rows(), embed.cols());
        if let Some(lm) = &lm_head
            && (lm.rows(), lm.cols()) != (v, d)
        {
            return Err(ModelError::WrongShape {
                key: lm.key().to_string(),
                expected: vec![v, d],
                actual: vec![lm.rows(), lm.cols()],
            });
        }
        let mut me = Self {
            embed,
            lm_head,
            proc,
            d,
            v,
            kappa: vec![0.0; v],
            mu: vec![0.0; d],
            b_u: vec![0.0; v],
        };
        // per token (κ_j, unrounded b_U[j]); per part, Σ_j (w ⊙ e_j − κ_j) in f64
        let mut stats = vec![(0f32, 0f64); v];
        let sums = par_parts(&mut stats, 1, ROW_CHUNK, |first, part| {
            me.stats(first, part)
        })?;
        let mut sum_y = vec![0f64; d];
        for part in sums {
            sum_y.iter_mut().zip(part).for_each(|(a, x)| *a += x);
        }
        me.kappa = stats.iter().map(|s| s.0).collect();
        let bias: Vec<f64> = stats.iter().map(|s| s.1).collect();
        let mut b_u: Vec<f32> = bias.iter().map(|&b| b as f32).collect();
        if me.proc.centre_vocab {
            me.mu = sum_y.iter().map(|&s| (s / v as f64) as f32).collect();
            let mean = (b_u.iter().map(|&b| f64::from(b)).sum::<f64>() / v as f64) as f32;
            b_u.iter_mut().for_each(|b| *b -= mean);
        }
        me.b_u = b_u;
        me.release_pages();
        Ok(me)
    }

    /// Opening's pass over tokens `first..first + out.len()`: each one's `(κ_j, b_U[j])`,
    /// and the part's `Σ_j (w ⊙ e_j − κ_j)` `[d]`.
    fn stats(&self, first: usize, out: &mut [(f32, f64)]) -> Result<Vec<f64>> {
        let d = self.d;
        let mut sum_y = vec![0f64; d];
        let mut rows = Vec::with_capacity(ROW_CHUNK * d);
        let mut folded = vec![0f32; d];
        for (b, block) in out.chunks_mut(ROW_CHUNK).enumerate() {
            let v0 = first + b * ROW_CHUNK;
            rows.clear();
            self.raw().read(v0..v0 + block.len(), &mut rows)?;
            if !rows.iter().fold(true, |ok, x| ok & x.is_finite()) {
                return Err(ModelError::NonFinite {
                    key: self.raw().key().to_string(),
                });
            }
            for (stat, e) in block.iter_mut().zip(rows.chunks_exact(d)) {
                let (mut mean, mut bias) = (0f64, 0f64);
                for (m, (&x, f)) in e.iter().zip(&mut folded).enumerate() {
                    *f = match &self.proc.fold {
                        Some((w, b)) => {
                            bias += f64::from(x) * f64::from(b[m]);
                            x * w[m]
                        }
                        None => x,
                    };
                    mean += f64::from(*f);
                }
                let kappa = if self.proc.centre_cols {
                    (mean / d as f64) as f32
                } else {
                    0.0
                };
                *stat = (kappa, bias);
                for (acc, &f) in sum_y.iter_mut().zip(&folded) {
                    *acc += f64::from(f - kappa);
                }
            }
        }
        Ok(sum_y)
    }

    fn raw(&self) -> &RowReader {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The processed `b_U` `[V]`.
    pub fn b_u(&self) -> &[f32] {
        &self.b_u
    }

    /// Bytes of the token matrices as stored (memory-mapped or read on demand).
    pub fn stored_bytes(&self) -> u64 {
        self.embed.stored_bytes() + self.lm_head.as_ref().map_or(0, RowReader::stored_bytes)
    }

    fn prepare(&self, c: &[f32]) -> Prepared {
        let a = match &self.proc.fold {
            Some((w, _)) => c.iter().zip(w).map(|(x, w)| x * w).collect(),
            None => c.to_vec(),
        };
        Prepared {
            a,
            sum: c.iter().sum(),
            dot_mu: dot(c, &self.mu),
        }
    }

    /// Processed embedding rows of `ids`: `[n, d]`, row-major.
    pub fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let d = self.d;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let at = out.len();
            self.embed.read(id as usize..id as usize + 1, &mut out)?;
            let row = &mut out[at..];
            if self.proc.embed_scale != 1.0 {
                row.iter_mut().for_each(|x| *x *= self.proc.embed_scale);
            }
            if !row.iter().fold(true, |ok, x| ok & x.is_finite()) {
                return Err(ModelError::NonFinite {
                    key: self.embed.key().to_string(),
                });
            }
            if self.proc.centre_embed {
                let mean = (row.iter().map(|&x| f64::from(x)).sum::<f64>() / d as f64) as f32;
                row.iter_mut().for_each(|x| *x -= mean);
            }
        }
        Ok(out)
    }

    /// Processed columns `r` of `W_U`, appended to `out` as rows `[n, d]`.
    fn columns(&self, r: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        let at = out.len();
        let first = r.start;
        self.raw().read(r, out)?;
        for (j, col) in out[at..].chunks_exact_mut(self.d).enumerate() {
            let kappa = self.kappa[first + j];
            for (m, x) in col.iter_mut().enumerate() {
                let f = match &self.proc.fold {
                    Some((w, _)) => *x * w[m],
                    None => *x,
                };
                *x = (f - kappa) - self.mu[m];
            }
        }
        Ok(())
    }

    /// `c · W_U` `[V]`, a block of stored rows at a time, on every core.
    fn product(&self, c: &[f32]) -> Result<Vec<f32>> {
        self.products(c)
    }

    /// `c_i · W_U` for every row `c_i` of `cs` (`[n, d]`, row-major): `[n, V]`, each block of
    /// stored rows converted once for all of them, on every core.
    fn products(&self, cs: &[f32]) -> Result<Vec<f32>> {
        let d = self.d;
        let n = cs.len() / d.max(1);
        if n == 1 {
            // one row runs as two (the matrix product takes another path for a single row),
            // so a row's values are the same bits alone as beside others
            let two = [cs, cs].concat();
            let mut out = self.products(&two)?;
            out.truncate(self.v);
            return Ok(out);
        }
        let preps: Vec<Prepared> = cs.chunks_exact(d).map(|c| self.prepare(c)).collect();
        // token-major `[V, n]` while computing: each part is a range of tokens
        let mut out_t = vec![0f32; self.v * n];
        // small blocks: a converted block is still in cache when it is multiplied
        let block_rows = (PRODUCT_BLOCK_BYTES / (4 * d)).max(1);
        // each converted block times all of them as one matrix product
        let a: Vec<f32> = preps.iter().flat_map(|p| p.a.iter().copied()).collect(); // [n, d]
        par_parts(&mut out_t, n, ROW_CHUNK * n, |first, part| {
            let first = first / n.max(1);
            let mut scratch = Vec::with_capacity(block_rows * d);
            for (b, block) in part.chunks_mut(block_rows * n).enumerate() {
                let v0 = first + b * block_rows;
                self.raw()
                    .with_rows(v0..v0 + block.len() / n, &mut scratch, |rows| {
                        block_product(rows, &a, block, d, n);
                        for (j, o) in block.chunks_mut(n).enumerate() {
                            let kappa = self.kappa[v0 + j];
                            for (o, prep) in o.iter_mut().zip(&preps) {
                                *o -= kappa * prep.sum + prep.dot_mu;
                            }
                        }
                    })?;
            }
            Ok::<(), ModelError>(())
        })?;
        self.release_pages();
        let mut out = vec![0f32; self.v * n];
        for (t, row) in out_t.chunks_exact(n).enumerate() {
            for (i, x) in row.iter().enumerate() {
                out[i * self.v + t] = *x;
            }
        }
        Ok(out)
    }

    /// Drop the stored rows' mapped pages from resident memory after a pass over them all.
    pub fn release_pages(&self) {
        self.embed.release_pages();
        if let Some(lm) = &self.lm_head {
            lm.release_pages();
        }
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
        let w_u = Unembedding::Resident(Tensor::<2>::from_data(
            TensorData::new(w.clone(), [d, v]),
            &dev,
        ));
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
        let w_u = Unembedding::Resident(Tensor::<2>::from_data(TensorData::new(w, [d, v]), &dev));
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
        let w_u = Unembedding::Resident(Tensor::<2>::from_data(
            TensorData::new(w.clone(), [d, v]),
            &dev,
        ));
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

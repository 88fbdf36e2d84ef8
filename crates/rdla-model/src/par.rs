//! Splitting a host buffer over the CPU's cores (the fused kernels, the vocabulary's passes).

use std::sync::OnceLock;

/// The cores to use.
pub(crate) fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Run `f(first, part)` over `out` cut into one part per core, each a whole number of `unit`
/// elements (`first`: the part's offset, in elements); below `min` elements the calling
/// thread does all of it. The parts are tasks of the shared thread pool (the one the matrix
/// products run on): the calling thread takes what no idle thread does, so a caller that is
/// itself one of several computations at once (a census's batches) is not slowed by threads
/// competing for its cores. The results come back in order, or the first error; a panic in
/// a part is resumed on the caller.
pub(crate) fn par_parts<T: Send, R: Send, E: Send>(
    out: &mut [T],
    unit: usize,
    min: usize,
    f: impl Fn(usize, &mut [T]) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    use rayon::prelude::*;
    let unit = unit.max(1);
    let units = out.len() / unit;
    let n = threads().min(units).max(1);
    if n == 1 || out.len() < min {
        return f(0, out).map(|r| vec![r]);
    }
    let per = units.div_ceil(n) * unit;
    out.par_chunks_mut(per)
        .enumerate()
        .map(|(i, part)| f(i * per, part))
        .collect()
}

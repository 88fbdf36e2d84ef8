//! Memory estimates, checked before the allocations they size: a model or a prompt that would
//! need more memory than the machine has is a clear error ("needs about X GiB; this machine has
//! Y GiB available"), never an allocation failure that aborts the process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::layer::QUERY_BLOCK;

const F32: u64 = 4;
pub(crate) const GIB: f64 = (1u64 << 30) as f64;

/// Bytes this process can still allocate: `MemAvailable`, lowered to the cgroup's remaining
/// limit when there is one (Linux). `None` where neither can be read: no check is made then.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut avail = kib * 1024;
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let (Some(max), Some(cur)) = (read("memory.max"), read("memory.current")) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

/// One processed block in `f32` (its matrices, biases and norm weights).
pub fn block_bytes(cfg: &ModelConfig) -> u64 {
    let d = cfg.d_model as u64;
    let (h, kv, dh, dm) = (
        cfg.n_heads as u64,
        cfg.n_kv_heads as u64,
        cfg.d_head as u64,
        cfg.d_mlp as u64,
    );
    let attn = d * dh * (h + 2 * kv) + h * dh * d + dh * (h + 2 * kv) + d;
    let mlp = d * dm * if cfg.gated_mlp { 3 } else { 2 } + dm + d;
    let norms = 6 * d + 2 * dh;
    F32 * (attn + mlp + norms)
}

/// What a model holds besides its blocks: [`model_bytes`] without them.
pub fn global_bytes(cfg: &ModelConfig, tokens_in_place: bool) -> u64 {
    model_bytes(cfg, tokens_in_place) - (cfg.n_layers as u64 + 1) * block_bytes(cfg)
}

/// The processed model in `f32`: embeddings, blocks, and the unembedding (a separate `[d, V]`
/// copy even when tied), plus one block in flight while loading. With `tokens_in_place` the
/// embedding and unembedding stay where they lie on disk: what is held for them instead is the
/// vocabulary readouts' `i8` sketch of `W_U` (`V·d` bytes) and a few `[V]` vectors.
pub fn model_bytes(cfg: &ModelConfig, tokens_in_place: bool) -> u64 {
    let (d, v, l) = (cfg.d_model as u64, cfg.d_vocab as u64, cfg.n_layers as u64);
    let block = block_bytes(cfg) / F32;
    let pos = if cfg.has_pos() {
        cfg.n_ctx as u64 * d
    } else {
        0
    };
    let tokens = if tokens_in_place {
        v * d / F32 + 4 * v
    } else {
        2 * v * d + v
    };
    F32 * (tokens + pos + (l + 1) * block)
}

/// Tokens of prompt a resident model must leave room for in the budget: a model whose
/// processed blocks leave less streams its layers instead.
pub const RESERVED_PROMPT: usize = 512;

/// The environment variable that caps the processed layers held (`RDLA_LAYER_CACHE=2`):
/// every model streams its layers, holding at most that many. The test suites run under it
/// to check that streaming gives the same numbers.
pub const LAYER_CACHE_ENV: &str = "RDLA_LAYER_CACHE";

/// The cap set with [`LAYER_CACHE_ENV`].
pub fn forced_layer_cache() -> Option<usize> {
    std::env::var(LAYER_CACHE_ENV)
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()
        .map(|n| n.max(1))
}

/// Whether a model of `cfg` streams its layers: forced, or its processed blocks and a
/// [`RESERVED_PROMPT`]-token prompt do not fit the budget (on a GPU, the smaller of the
/// memory and GPU memory budgets: [`limit`]).
pub fn should_stream(cfg: &ModelConfig, tokens_in_place: bool, gpu: bool) -> bool {
    if forced_layer_cache().is_some() {
        return true;
    }
    let reserve = prompt_bytes(cfg, RESERVED_PROMPT.min(cfg.n_ctx));
    limit(gpu).is_some_and(|b| model_bytes(cfg, tokens_in_place).saturating_add(reserve) > b.bytes)
}

/// How many processed layers a streaming model of `cfg` holds beside a prompt needing
/// `prompt` bytes: half the layers that fit the rest of the budget (the other half is room
/// for the concatenated range an expansion reads), at least one, at most every layer.
pub fn layer_capacity(cfg: &ModelConfig, tokens_in_place: bool, prompt: u64, gpu: bool) -> usize {
    let slots = limit(gpu).map_or(cfg.n_layers, |b| {
        let room = b
            .bytes
            .saturating_sub(global_bytes(cfg, tokens_in_place))
            .saturating_sub(prompt);
        usize::try_from(room / block_bytes(cfg).max(1)).unwrap_or(usize::MAX)
    });
    let cap = (slots / 2).clamp(1, cfg.n_layers.max(1));
    forced_layer_cache().map_or(cap, |f| cap.min(f))
}

/// The peak of one forward pass with its cache and the overview at `n` tokens: the
/// `O(L·P·d)` cache, one layer's working tensors (a block of attention scores, the MLP's
/// activations), and the overview's `[L, H, P, C]` head breakdown (computed, then copied to
/// the host).
pub fn prompt_bytes(cfg: &ModelConfig, n: usize) -> u64 {
    let (d, l, p) = (cfg.d_model as u64, cfg.n_layers as u64, n as u64);
    let (h, kv, dh, dm) = (
        cfg.n_heads as u64,
        cfg.n_kv_heads as u64,
        cfg.d_head as u64,
        cfg.d_mlp as u64,
    );
    let cache = spillable_bytes(cfg, n) / F32 + (4 + h + kv) * l * p;
    let block = QUERY_BLOCK.min(n) as u64;
    let layer = 8 * p * d + 3 * p * (h + 2 * kv) * dh + 3 * p * dm + 2 * h * block * p;
    let overview = 3 * l * h * p * cfg.layout().n() as u64;
    F32 * (cache + layer + overview)
}

/// The part of [`prompt_bytes`] that spills to a temporary file when the prompt does not fit
/// the budget ([`crate::spill`]): the residual components `[C, P, d]`, keys and values
/// `[L, KV, P, dh]`.
pub fn spillable_bytes(cfg: &ModelConfig, n: usize) -> u64 {
    let (d, l, p) = (cfg.d_model as u64, cfg.n_layers as u64, n as u64);
    let (kv, dh) = (cfg.n_kv_heads as u64, cfg.d_head as u64);
    let c = cfg.layout().n() as u64;
    F32 * (c * p * d + l * 2 * kv * p * dh)
}

/// The largest prompt cache this process spilled to a temporary file.
static SPILLED: AtomicU64 = AtomicU64::new(0);

/// Record a prompt cache of `bytes` spilled to a temporary file.
pub fn count_spill(bytes: u64) {
    SPILLED.fetch_max(bytes, Ordering::Relaxed);
}

/// [`count_spill`]'s largest (0: no cache spilled).
pub fn spilled_bytes() -> u64 {
    SPILLED.load(Ordering::Relaxed)
}

/// `Err(OutOfMemory)` when `needed` bytes exceed `available` (with a 10 % margin for the
/// allocator and the rest of the process); always fine when `available` is unknown.
pub fn check(what: impl FnOnce() -> String, needed: u64, available: Option<u64>) -> Result<()> {
    match available {
        Some(avail) if needed.saturating_add(needed / 10) > avail => Err(ModelError::OutOfMemory {
            what: what(),
            needed_gib: needed as f64 / GIB,
            available_gib: avail as f64 / GIB,
        }),
        _ => Ok(()),
    }
}

/// Layers read from the checkpoint again, in this process.
static STREAMED: AtomicU64 = AtomicU64::new(0);
static STREAMED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Count one layer (or its attention part) read from the checkpoint when it was used: `bytes`
/// of stored tensors.
pub fn count_streamed_layer(bytes: u64) {
    STREAMED.fetch_add(1, Ordering::Relaxed);
    STREAMED_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// The stored bytes of the layers counted by [`streamed_layers`].
pub fn streamed_bytes() -> u64 {
    STREAMED_BYTES.load(Ordering::Relaxed)
}

/// How many layers this process has read from the checkpoint when they were used (0: every
/// model it opened held its layers).
pub fn streamed_layers() -> u64 {
    STREAMED.load(Ordering::Relaxed)
}

/// The memory budget set with `--max-memory` (0: none set).
static BUDGET: AtomicU64 = AtomicU64::new(0);

/// The share of available memory the budget defaults to.
const DEFAULT_SHARE: f64 = 0.8;

/// What rdla may hold, the model and the prompt's cache together: `--max-memory`, or by
/// default 80 % of the memory available when first asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Budget {
    pub bytes: u64,
    /// Set by the user (`--max-memory`), not the default.
    pub explicit: bool,
}

/// Set the process's budget (`--max-memory`).
pub fn set_budget(bytes: u64) {
    BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

/// Back to the default budget (80 % of available).
pub fn clear_budget() {
    BUDGET.store(0, Ordering::Relaxed);
}

/// The process's budget; `None` when none was set and available memory is unknown.
pub fn budget() -> Option<Budget> {
    static DEFAULT: OnceLock<Option<u64>> = OnceLock::new();
    match BUDGET.load(Ordering::Relaxed) {
        0 => DEFAULT
            .get_or_init(|| available_bytes().map(|a| (a as f64 * DEFAULT_SHARE) as u64))
            .map(|bytes| Budget {
                bytes,
                explicit: false,
            }),
        bytes => Some(Budget {
            bytes,
            explicit: true,
        }),
    }
}

/// The GPU memory budget set with `--max-gpu-memory` (0: none set).
static GPU_BUDGET: AtomicU64 = AtomicU64::new(0);

/// Set the GPU memory budget (`--max-gpu-memory`): what a model on a GPU may place there,
/// its layers and the prompt's cache and working tensors together. wgpu does not report a
/// GPU's memory, so there is no default: without it a GPU model works under the memory
/// budget alone.
pub fn set_gpu_budget(bytes: u64) {
    GPU_BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

/// No GPU memory budget.
pub fn clear_gpu_budget() {
    GPU_BUDGET.store(0, Ordering::Relaxed);
}

/// The GPU memory budget, when set.
pub fn gpu_budget() -> Option<u64> {
    match GPU_BUDGET.load(Ordering::Relaxed) {
        0 => None,
        b => Some(b),
    }
}

/// The budget a model works under, which it is and how it was set: the memory budget, or on
/// a GPU the GPU memory budget when that is smaller (a GPU model's layers, cache and working
/// tensors are on the GPU; what the host holds for it is smaller still).
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub bytes: u64,
    /// `memory` or `GPU memory`.
    pub which: &'static str,
    pub how: String,
}

/// See [`Limit`]; `None` when no budget is known.
pub fn limit(gpu: bool) -> Option<Limit> {
    let host = budget().map(|b| Limit {
        bytes: b.bytes,
        which: "memory",
        how: if b.explicit {
            "--max-memory".into()
        } else {
            format!(
                "the default, {:.0} % of the memory available; --max-memory sets it",
                DEFAULT_SHARE * 100.0
            )
        },
    });
    let device = gpu_budget().filter(|_| gpu).map(|bytes| Limit {
        bytes,
        which: "GPU memory",
        how: "--max-gpu-memory".into(),
    });
    match (host, device) {
        (Some(h), Some(g)) => Some(if g.bytes <= h.bytes { g } else { h }),
        (h, g) => h.or(g),
    }
}

/// A size as people write it: `6GiB`, `500MiB`, `1.5GB`, `800M`, `4g`, or plain bytes.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 6GiB, 500MiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => (1u64 << 20) as f64,
        "g" | "gb" => 1e9,
        "gib" => GIB,
        "t" | "tb" => 1e12,
        "tib" => GIB * 1024.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use KiB, MiB, GiB, …)"
            ));
        }
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("`{text}` is not a positive size"));
    }
    Ok(bytes as u64)
}

/// `needed` more bytes on top of `held` against the machine ([`check`]: what goes to a GPU
/// passes through the host) and the budget ([`limit`]):
/// over the budget is [`ModelError::OverBudget`], naming the budget that would do. On a GPU
/// this is the estimate of GPU memory checked before a model is placed there and before a
/// forward pass.
pub fn check_budget(what: impl Fn() -> String, needed: u64, held: u64, gpu: bool) -> Result<()> {
    check(&what, needed, available_bytes())?;
    match limit(gpu) {
        Some(b) if held.saturating_add(needed) > b.bytes => Err(ModelError::OverBudget {
            what: what(),
            which: b.which,
            needed_gib: needed as f64 / GIB,
            held_gib: held as f64 / GIB,
            budget_gib: b.bytes as f64 / GIB,
            how: b.how,
        }),
        _ => Ok(()),
    }
}

/// The process's peak resident memory so far (`VmHWM`, Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the JSON reports under `memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryReport {
    pub budget_bytes: Option<u64>,
    /// Whether the budget was set with `--max-memory` (else the default).
    pub budget_explicit: bool,
    pub peak_bytes: Option<u64>,
    /// Layers read from disk again during the computation (0: every layer is resident).
    pub streamed_layers: u64,
    /// Their bytes as stored in the checkpoint (an attention-only read counts its own).
    pub streamed_bytes: u64,
    /// `--max-gpu-memory`, when set.
    pub gpu_budget_bytes: Option<u64>,
    /// The largest prompt cache kept in a memory-mapped temporary file because it did not
    /// fit the budget (0: none).
    pub spilled_cache_bytes: u64,
}

/// The memory report now.
pub fn report() -> MemoryReport {
    let b = budget();
    MemoryReport {
        budget_bytes: b.map(|b| b.bytes),
        budget_explicit: b.is_some_and(|b| b.explicit),
        peak_bytes: peak_rss_bytes(),
        streamed_layers: streamed_layers(),
        streamed_bytes: streamed_bytes(),
        gpu_budget_bytes: gpu_budget(),
        spilled_cache_bytes: spilled_bytes(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn smollm2_shape() -> ModelConfig {
        crate::config::from_value(&serde_json::json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192,
        }))
        .unwrap()
    }

    /// The estimates are in the range measured (docs/PERFORMANCE.md: 4.0 GiB peak at 8,192
    /// tokens on this shape, of which ~0.85 GiB is the model and the process), and grow
    /// linearly in the prompt, not quadratically.
    #[test]
    fn estimates_match_the_measured_scale() {
        let cfg = smollm2_shape();
        let model = model_bytes(&cfg, false) as f64 / GIB;
        assert!((0.5..1.0).contains(&model), "{model} GiB");
        // SmolLM2's tied 49,152 × 576 embedding: two f32 copies (216 MiB), or its i8 sketch
        let saved = (model_bytes(&cfg, false) - model_bytes(&cfg, true)) as f64 / GIB;
        assert!((0.15..0.2).contains(&saved), "{saved} GiB");
        let p8k = prompt_bytes(&cfg, 8192) as f64 / GIB;
        assert!((1.5..5.0).contains(&p8k), "{p8k} GiB");
        let p4k = prompt_bytes(&cfg, 4096) as f64 / GIB;
        assert!(p8k / p4k < 2.2, "{p4k} → {p8k}: not linear");
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("6GiB"), Ok(6 << 30));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("800m"), Ok(800_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "GiB", "-1GiB", "6 parsecs", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn too_much_is_a_clear_error_and_unknown_is_fine() {
        let e = check(|| "a 7,548-token prompt".into(), 61 << 30, Some(20 << 30)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a 7,548-token prompt needs about 61.0 GiB of memory; this machine has 20.0 GiB available"
        );
        check(|| unreachable!(), 1 << 30, Some(20 << 30)).unwrap();
        check(|| unreachable!(), u64::MAX, None).unwrap();
        assert!(available_bytes().is_some_and(|b| b > 0));
    }
}

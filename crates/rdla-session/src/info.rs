//! What the UI and the exports show about a loaded model.

use rdla_model::{Model, ModelConfig};

use crate::session::ModelSource;

/// What is said about a model wherever it is named: the JSON report's `model`, the
/// benchmark's JSON, the window's status bar. Written once, from the model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelFacts {
    pub name: String,
    /// Where it was read from (a folder, or a GGUF file).
    pub dir: String,
    /// The Hugging Face class of its family (`LlamaForCausalLM`).
    pub architecture: &'static str,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_model: usize,
    pub d_vocab: usize,
    /// Which weight files were read.
    pub weights: String,
    /// Bytes of the weight files on disk.
    pub disk_bytes: u64,
    /// About how many bytes the model holds in memory.
    pub held_bytes: u64,
    /// Whether the embedding and unembedding are read where they lie on disk (the CPU) rather
    /// than held in `f32`.
    pub tokens_in_place: bool,
    /// How many processed layers are held when the layers stream from disk (they did not
    /// fit the memory budget); `None`: every layer is held.
    pub streamed_layer_cache: Option<usize>,
}

impl ModelFacts {
    pub fn of(m: &Model) -> Self {
        let c = &m.config;
        Self {
            name: m.name.clone(),
            dir: m.dir.display().to_string(),
            architecture: c.family.hf_class(),
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            d_model: c.d_model,
            d_vocab: c.d_vocab,
            weights: m.weights_source.clone(),
            disk_bytes: m.disk_bytes,
            held_bytes: m.held_bytes(),
            tokens_in_place: m.tokens_in_place(),
            streamed_layer_cache: m.streams_layers().then(|| m.layer_chunk()),
        }
    }
}

/// A loaded model, as the UI sees it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub source: ModelSource,
    /// Its name, shape and weight files, as every export says them.
    pub facts: ModelFacts,
    /// The model's configuration (layers, heads, widths, context, vocabulary, norms, …).
    pub config: ModelConfig,
    /// Norm, positions, residual and MLP kind, for the status bar's tooltip.
    pub details: String,
    pub processing: Vec<&'static str>,
    /// What exports must never be written into (the model's folder, or its file).
    pub protected: Vec<std::path::PathBuf>,
    pub load_ms: f64,
}

impl ModelInfo {
    pub fn of(m: &Model, source: &ModelSource, load_ms: f64) -> Self {
        let c = &m.config;
        Self {
            source: source.clone(),
            facts: ModelFacts::of(m),
            config: c.clone(),
            details: describe_config(c),
            processing: m.processing.applied(),
            protected: m.protected.clone(),
            load_ms,
        }
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.facts.name
    }

    /// `name · LlamaForCausalLM · 3L 4H (2 KV) d32`.
    pub fn summary(&self) -> String {
        let (f, kv) = (&self.facts, self.config.n_kv_heads);
        let kv = if kv < f.n_heads {
            format!(" ({kv} KV)")
        } else {
            String::new()
        };
        format!(
            "{} · {} · {}L {}H{kv} d{}",
            f.name, f.architecture, f.n_layers, f.n_heads, f.d_model
        )
    }
}

impl ModelFacts {
    /// `253 MB on disk · about 412 MB in memory`.
    pub fn memory_line(&self) -> String {
        let streams = match self.streamed_layer_cache {
            Some(n) => format!(" · layers stream ({n} of {} held)", self.n_layers),
            None => String::new(),
        };
        format!(
            "{} on disk · about {} in memory{streams}",
            bytes(self.disk_bytes),
            bytes(self.held_bytes)
        )
    }
}

/// `812 kB`, `253 MB`, `4.9 GB` (decimal units, as file managers show file sizes).
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1e6 {
        format!("{:.0} kB", n / 1e3)
    } else if n < 1e9 {
        format!("{:.0} MB", n / 1e6)
    } else {
        format!("{:.1} GB", n / 1e9)
    }
}

/// One line on what kind of transformer a config describes.
fn describe_config(c: &rdla_model::ModelConfig) -> String {
    use rdla_model::config::{Norm, Positional};
    let norm = match c.norm {
        Norm::LayerNorm => "LayerNorm",
        Norm::RmsNorm => "RMSNorm",
    };
    let pos = match &c.positional {
        Positional::Learned => "learned positions".to_string(),
        Positional::Rotary(r) => format!("rotary ({})", r.describe),
    };
    let resid = if c.parallel_residual {
        "parallel residual"
    } else {
        "sequential residual"
    };
    let mlp = if c.gated_mlp {
        format!("gated MLP ({:?}) ×{}", c.act, c.d_mlp)
    } else {
        format!("MLP ({:?}) ×{}", c.act, c.d_mlp)
    };
    let heads = if c.n_kv_heads < c.n_heads {
        format!(
            "{} query heads sharing {} key/value heads",
            c.n_heads, c.n_kv_heads
        )
    } else {
        format!("{} heads", c.n_heads)
    };
    let mut extras = Vec::new();
    if let Some(r) = &c.local_rotary {
        extras.push(format!("local layers rotary ({})", r.describe));
    }
    let local = c
        .attn_spans
        .iter()
        .filter(|s| matches!(s, rdla_model::config::AttnSpan::Local(_)))
        .count();
    if local > 0 {
        extras.push(format!("{local} of {} layers sliding-window", c.n_layers));
    }
    if c.qk_norm {
        extras.push("q/k norms (frozen)".into());
    }
    if c.post_norms {
        extras.push("post-attention/post-MLP norms (frozen)".into());
    }
    if let Some(cap) = c.attn_softcap {
        extras.push(format!("attention soft-cap {cap}"));
    }
    if let Some(cap) = c.final_softcap {
        extras.push(format!(
            "final logit soft-cap {cap} (pre-cap logit attributed)"
        ));
    }
    let extras: String = extras.iter().map(|e| format!(" · {e}")).collect();
    format!(
        "{norm} · {pos} · {resid} · {heads} of {} · {mlp}{extras} · context {} · vocabulary {} · stored as {}",
        c.d_head, c.n_ctx, c.d_vocab, c.dtype
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(super::bytes(812_345), "812 kB");
        assert_eq!(super::bytes(253_400_000), "253 MB");
        assert_eq!(super::bytes(4_920_000_000), "4.9 GB");
    }
}

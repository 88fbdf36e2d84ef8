//! The headless contract's JSON (DESIGN.md §3), built from a model, a cache and an engine.

use rdla_model::{Cache, Model, to_vec};
use serde::Serialize;
use serde_json::{Value, json};

use crate::engine::{Expansion, Overview, Result};

/// One of the model's most likely next tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub token: String,
    pub logit: f32,
    pub prob: f32,
}

/// The `k` most likely next tokens at the last position (softmax in f64 on the host).
pub fn top_predictions(model: &Model, cache: &Cache, k: usize) -> Result<Vec<Prediction>> {
    let logits = to_vec(cache.last_logits.clone())?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    Ok(idx
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            id: i as u32,
            token: model.tokenizer.token_str(i as u32),
            logit: logits[i],
            prob: (f64::from(logits[i] - max).exp() / z) as f32,
        })
        .collect())
}

/// Wall-clock timings of one `attribute` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub load: f64,
    pub forward: f64,
    pub attribution: f64,
}

/// Everything that goes into the JSON.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub model: &'a Model,
    pub cache: &'a Cache,
    pub answer_id: u32,
    pub foil_id: Option<u32>,
    pub top: Vec<Prediction>,
    pub overview: Overview,
    pub node: Option<Expansion>,
    pub timings: Timings,
    pub device: String,
    pub mlp_mode: &'static str,
}

impl Report<'_> {
    pub fn token_strs(&self) -> Vec<String> {
        self.cache
            .token_ids
            .iter()
            .map(|&id| self.model.tokenizer.token_str(id))
            .collect()
    }

    /// The documented keys, plus a few extra ones (`model`, `device`, `processing`).
    pub fn to_json(&self) -> Value {
        let o = &self.overview;
        let cfg = &self.model.config;
        let mut v = json!({
            "model": {
                "name": self.model.name,
                "dir": self.model.dir.display().to_string(),
                "architecture": cfg.architecture.hf_name(),
                "n_layers": cfg.n_layers,
                "n_heads": cfg.n_heads,
                "d_model": cfg.d_model,
                "d_vocab": cfg.d_vocab,
                "weights": self.model.weights_source,
            },
            "processing": self.model.processing.applied(),
            "device": self.device,
            "mlp_mode": self.mlp_mode,
            "token_ids": self.cache.token_ids,
            "token_strs": self.token_strs(),
            "answer_id": self.answer_id,
            "answer": self.model.tokenizer.token_str(self.answer_id),
            "foil_id": self.foil_id,
            "target_value": o.target_value,
            "top_predictions": self.top,
            "component_labels": self.model.component_labels(),
            "unembed_bias": self.unembed_bias(),
            "timings_ms": self.timings,
        });
        if let Some(map) = v.as_object_mut() {
            // inserted, not written inside `json!` (which would serialise a second copy of
            // each tree; `head_breakdown` is the largest thing in the process after the model)
            for (key, array) in [
                ("components", &o.components),
                ("head_dla", &o.head_dla),
                ("head_breakdown", &o.head_breakdown),
                ("attn_bias", &o.attn_bias),
                ("mlp_breakdown", &o.mlp_breakdown),
                ("mlp_bias", &o.mlp_bias),
            ] {
                map.insert(key.into(), array.to_json());
            }
            if let Some(node) = &self.node {
                map.insert(
                    "node".into(),
                    serde_json::to_value(node).unwrap_or(Value::Null),
                );
            }
        }
        v
    }

    /// `b_U[answer]` (minus `b_U[foil]`): excluded from the root by definition.
    fn unembed_bias(&self) -> f32 {
        let b = to_vec(self.model.weights.b_u.clone()).unwrap_or_default();
        let get = |id: u32| b.get(id as usize).copied().unwrap_or(0.0);
        get(self.answer_id) - self.foil_id.map_or(0.0, get)
    }
}

//! The headless contract's JSON (DESIGN.md §3.1), and the model's top predictions.

use rdla_attrib::Expansion;
use rdla_model::{Cache, Model, to_vec};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Result;
use crate::session::Computed;

/// One of the model's most likely next tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub token: String,
    pub logit: f32,
    pub prob: f32,
}

/// The `k` most likely next tokens at the last position (softmax in f64 on the host), with the
/// logits the model outputs (after a final soft-cap, where it has one).
pub fn top_predictions(model: &Model, cache: &Cache, k: usize) -> Result<Vec<Prediction>> {
    let (logits, max, z) = output_softmax(model, cache)?;
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

/// The logits the model outputs at the last position (after a final soft-cap), refused when
/// one is not finite, with their maximum and the softmax normaliser `Σ exp(l − max)` (f64).
fn output_softmax(model: &Model, cache: &Cache) -> Result<(Vec<f32>, f32, f64)> {
    softmax_of(model, &to_vec(cache.last_logits.clone())?)
}

/// [`output_softmax`] of last-position logits `[V]` already read back.
fn softmax_of(model: &Model, last_logits: &[f32]) -> Result<(Vec<f32>, f32, f64)> {
    let cfg = &model.config;
    let logits: Vec<f32> = last_logits.iter().map(|&l| cfg.output_logit(l)).collect();
    if let Some(i) = logits.iter().position(|l| !l.is_finite()) {
        return Err(crate::error::SessionError::NonFinite {
            what: format!("the logit of token {i} at the last position"),
        });
    }
    // every logit is finite here, so the maximum sees them all
    let max = logits
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, |m, l| m.max(l));
    let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    Ok((logits, max, z))
}

/// Token `id`'s probability at the last position, as [`top_predictions`] computes it.
pub fn token_prob(model: &Model, cache: &Cache, id: u32) -> Result<f32> {
    prob_of(model, &to_vec(cache.last_logits.clone())?, id)
}

/// [`token_prob`] from last-position logits `[V]` already read back.
pub fn prob_of(model: &Model, last_logits: &[f32], id: u32) -> Result<f32> {
    let (logits, max, z) = softmax_of(model, last_logits)?;
    let l = logits.get(id as usize).copied().unwrap_or(f32::NAN);
    Ok((f64::from(l - max).exp() / z) as f32)
}

/// Wall-clock timings of one `attribute` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub load: f64,
    pub forward: f64,
    pub attribution: f64,
}

/// Above this many values `head_breakdown` (`[L][H][P][C]`, the one table that grows with the
/// prompt times the model) is left out of the JSON unless asked for: at 8,192 tokens on a
/// 30-layer model it would be gigabytes of text.
pub const BREAKDOWN_LIMIT: usize = 2_000_000;

/// The JSON report (DESIGN.md §3.1): the documented keys, plus a few extra ones (`model`,
/// `device`, `processing`, `mlp_mode`, `attn_bias`, `answer`). `full_breakdown` keeps
/// `head_breakdown` whatever its size.
pub fn report_json(
    model: &Model,
    c: &Computed,
    node: Option<&Expansion>,
    timings: Timings,
    device: &str,
    full_breakdown: bool,
) -> serde_json::Result<Value> {
    let o = &c.overview;
    let mut v = json!({
        "model": crate::info::ModelFacts::of(model),
        "processing": model.processing.applied(),
        "device": device,
        "mlp_mode": c.request.mlp_mode.as_str(),
        "token_ids": c.tokens.ids,
        "token_strs": c.tokens.strs,
        "answer_id": c.target.answer(),
        "answer": model.tokenizer.token_str(c.target.answer()),
        "foil_id": c.target.foil(),
        "target_value": o.target_value,
        "top_predictions": c.top,
        "component_labels": o.layout.labels(),
        "unembed_bias": c.unembed_bias,
        "timings_ms": timings,
        "memory": rdla_model::memory::report(),
    });
    if let Some(map) = v.as_object_mut() {
        // inserted, not written inside `json!` (which would serialise a second copy of
        // each tree; `head_breakdown` is the largest thing in the process after the model)
        let n_breakdown = o.head_breakdown.data.len();
        let omit = !full_breakdown && n_breakdown > BREAKDOWN_LIMIT;
        if omit {
            map.insert(
                "head_breakdown_omitted".into(),
                json!({
                    "shape": o.head_breakdown.shape,
                    "values": n_breakdown,
                    "limit": BREAKDOWN_LIMIT,
                    "reason": "head_breakdown is larger than the limit; pass --full-breakdown to write it, or --path L{l}.attn/H{h} for one head's sources",
                }),
            );
        }
        for (key, array) in [
            ("components", &o.components),
            ("head_dla", &o.head_dla),
            ("head_breakdown", &o.head_breakdown),
            ("attn_bias", &o.attn_bias),
            ("mlp_breakdown", &o.mlp_breakdown),
            ("mlp_bias", &o.mlp_bias),
        ] {
            if omit && key == "head_breakdown" {
                continue;
            }
            map.insert(key.into(), array.to_json());
        }
        if let Some(sc) = &c.softcap {
            map.insert(
                "final_logit_softcap".into(),
                json!({
                    "cap": sc.cap,
                    "target_value_capped": sc.target_capped,
                    "answer_prob": sc.answer_prob,
                    "note": "the model outputs cap·tanh(logit/cap); target_value and every attribution are of the pre-cap logit, which is linear in the residual stream",
                }),
            );
        }
        if let Some(node) = node {
            map.insert("node".into(), serde_json::to_value(node)?);
        }
    }
    Ok(v)
}

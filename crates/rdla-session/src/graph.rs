//! The attribution graph's one JSON document (the trace and what it was traced over), exported
//! alike by `rdla trace --json` and the window. Its layout and PNG are `rdla_render::graph`'s,
//! re-exported here.

pub use rdla_render::graph::*;

use rdla_attrib::trace::Trace;

/// What a graph's JSON says beside the trace: the model, the prompt's tokens, the target
/// (label and ids) and how long the trace took. The CLI and the window export the same
/// document from it.
#[derive(Debug, Clone, Copy)]
pub struct GraphContext<'a> {
    pub model: &'a str,
    pub token_ids: &'a [u32],
    pub token_strs: &'a [String],
    pub target_label: &'a str,
    pub target: rdla_attrib::Target,
    pub trace_ms: f64,
    /// The process's memory budget and peak when the trace was exported (`None`: left out).
    pub memory: Option<rdla_model::memory::MemoryReport>,
    /// The trace's verification, stamped into the document when there is one.
    pub verification: Option<&'a crate::verify::Verification>,
}

impl<'a> GraphContext<'a> {
    /// The context of a trace over `computed` on the model named `model`.
    pub fn of(model: &'a str, computed: &'a crate::Computed, trace_ms: f64) -> Self {
        Self {
            model,
            token_ids: &computed.tokens.ids,
            token_strs: &computed.tokens.strs,
            target_label: &computed.target_label,
            target: computed.target,
            trace_ms,
            memory: Some(rdla_model::memory::report()),
            verification: None,
        }
    }

    /// The same context with the trace's verification.
    pub fn verified(self, v: Option<&'a crate::verify::Verification>) -> Self {
        Self {
            verification: v,
            ..self
        }
    }
}

/// The graph's JSON document (DESIGN.md §3, tracing): the trace's fields and `model`,
/// `token_ids`, `token_strs`, `target`, `answer_id`, `foil_id`, `trace_ms`, `memory` and, once
/// verified, `verification`, in key order.
pub fn json<'a>(trace: &'a Trace, context: GraphContext<'a>) -> GraphJson<'a> {
    GraphJson { trace, context }
}

/// [`json`]'s document, serialised on demand.
#[derive(Debug, Clone, Copy)]
pub struct GraphJson<'a> {
    trace: &'a Trace,
    context: GraphContext<'a>,
}

impl serde::Serialize for GraphJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let c = &self.context;
        let mut v = serde_json::to_value(self.trace).map_err(S::Error::custom)?;
        let map = v
            .as_object_mut()
            .ok_or_else(|| S::Error::custom("a trace is not a JSON object"))?;
        map.insert("model".into(), c.model.into());
        map.insert("token_ids".into(), c.token_ids.into());
        map.insert("token_strs".into(), c.token_strs.into());
        map.insert("target".into(), c.target_label.into());
        map.insert("answer_id".into(), c.target.answer().into());
        map.insert("foil_id".into(), c.target.foil().into());
        map.insert("trace_ms".into(), c.trace_ms.into());
        if let Some(m) = &c.memory {
            map.insert(
                "memory".into(),
                serde_json::to_value(m).map_err(S::Error::custom)?,
            );
        }
        if let Some(ver) = c.verification {
            map.insert(
                "verification".into(),
                serde_json::to_value(ver).map_err(S::Error::custom)?,
            );
        }
        v.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use rdla_attrib::trace::{Trace, TracedPath};

    /// The graph JSON is the trace's fields and the four added keys, in key order: the bytes
    /// the window and the CLI wrote when it was built as a `serde_json::Value`.
    #[test]
    fn graph_json_is_the_trace_and_its_context_in_key_order() {
        let trace = Trace {
            from: rdla_attrib::Path::root(),
            value: 1.5,
            expanded: 2,
            frontier_total: 0.25,
            residual_total: 0.0,
            paths: vec![TracedPath {
                path: rdla_attrib::Path::parse("L0.attn").unwrap(),
                value: 1.5,
            }],
            nodes: Vec::new(),
            edges: Vec::new(),
            timed_out: false,
        };
        let strs = ["a".to_string(), "b".to_string()];
        let doc = super::json(
            &trace,
            super::GraphContext {
                model: "m",
                token_ids: &[1, 2],
                token_strs: &strs,
                target_label: "logit \" a\"",
                target: rdla_attrib::Target::Diff { answer: 7, foil: 3 },
                trace_ms: 2.5,
                memory: Some(rdla_model::memory::MemoryReport {
                    budget_bytes: Some(100),
                    budget_explicit: true,
                    peak_bytes: Some(200),
                    streamed_layers: 0,
                    streamed_bytes: 0,
                    gpu_budget_bytes: None,
                    spilled_cache_bytes: 0,
                }),
                verification: None,
            },
        );
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"answer_id":7,"edges":[],"expanded":2,"foil_id":3,"from":"","frontier_total":0.25,"memory":{"budget_bytes":100,"budget_explicit":true,"gpu_budget_bytes":null,"peak_bytes":200,"spilled_cache_bytes":0,"streamed_bytes":0,"streamed_layers":0},"model":"m","nodes":[],"paths":[{"path":"L0.attn","value":1.5}],"residual_total":0.0,"target":"logit \" a\"","timed_out":false,"token_ids":[1,2],"token_strs":["a","b"],"trace_ms":2.5,"value":1.5}"#
        );
        assert_eq!(
            serde_json::to_value(doc).unwrap()["model"],
            serde_json::json!("m")
        );
    }
}

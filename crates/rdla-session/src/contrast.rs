//! Contrast: the same target (answer, foil, MLP mode, BOS) on a second prompt, and this
//! prompt's values minus that prompt's — at the root (the components and the layers × heads
//! table, any token counts) and at a node below it (its children, same token count only).
//!
//! Every attributed quantity is a sum over the children of its node, so the differences add
//! up exactly as the values do: Σ component deltas = target delta, and at every node
//! Σ child deltas + bias delta + residual delta = value delta.

use rdla_attrib::{Array, Child, Expansion, Overview, Path};
use serde_json::{Value, json};

use crate::Heatmap;
use crate::error::{Result, SessionError};
use crate::session::Tokens;

/// `a − b`, elementwise (same shape).
fn minus(a: &Array, b: &Array) -> Result<Array> {
    if a.shape != b.shape {
        return Err(SessionError::Contrast(format!(
            "the two prompts' tables have different shapes ({:?} and {:?})",
            a.shape, b.shape
        )));
    }
    Ok(Array::new(
        a.shape.clone(),
        a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect(),
    ))
}

/// The overview of this prompt minus the contrast prompt's. The tables indexed by source
/// position (`head_breakdown`) need the same token count; with different counts they are
/// left empty and only the per-layer / per-head / per-component tables are differenced.
pub fn overview_delta(a: &Overview, b: &Overview) -> Result<Overview> {
    let breakdown = if a.head_breakdown.shape == b.head_breakdown.shape {
        minus(&a.head_breakdown, &b.head_breakdown)?
    } else {
        Array::new(vec![0, 0, 0, 0], Vec::new())
    };
    Ok(Overview {
        layout: a.layout,
        target_value: a.target_value - b.target_value,
        components: minus(&a.components, &b.components)?,
        attn_bias: minus(&a.attn_bias, &b.attn_bias)?,
        head_dla: minus(&a.head_dla, &b.head_dla)?,
        head_bias: minus(&a.head_bias, &b.head_bias)?,
        head_breakdown: breakdown,
        mlp_breakdown: minus(&a.mlp_breakdown, &b.mlp_breakdown)?,
        mlp_bias: minus(&a.mlp_bias, &b.mlp_bias)?,
    })
}

/// A node expanded on both prompts (same token count, so the same children in the same
/// order): this prompt's expansion with every number replaced by its delta, and the
/// contrast prompt's values beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeContrast {
    /// This prompt's expansion, its value, children, bias and residual the deltas.
    pub delta: Expansion,
    /// This prompt's value and its children's.
    pub value: f32,
    pub children: Vec<f32>,
    /// The contrast prompt's value and its children's.
    pub contrast_value: f32,
    pub contrast_children: Vec<f32>,
}

impl NodeContrast {
    pub fn of(ours: &Expansion, theirs: &Expansion) -> Result<Self> {
        let same = ours.children.len() == theirs.children.len()
            && ours
                .children
                .iter()
                .zip(&theirs.children)
                .all(|(a, b)| a.step == b.step);
        if !same || ours.units != theirs.units {
            return Err(SessionError::Contrast(format!(
                "`{}` has different children on the two prompts",
                ours.path
            )));
        }
        let mut delta = ours.clone();
        delta.value = ours.value - theirs.value;
        delta.bias = ours.bias - theirs.bias;
        delta.residual = ours.residual - theirs.residual;
        delta.children = ours
            .children
            .iter()
            .zip(&theirs.children)
            .map(|(a, b)| Child {
                value: a.value - b.value,
                ..a.clone()
            })
            .collect();
        // a score's table (same components on both sides) is differenced cell by cell;
        // what else is shown beside a node (its token readout, its largest neurons) belongs
        // to one prompt, and the delta view keeps none of it
        delta.table = match (&ours.table, &theirs.table) {
            (Some(a), Some(b)) if a.rows == b.rows && a.cols == b.cols => {
                let mut t = a.clone();
                for (ra, rb) in t.values.iter_mut().zip(&b.values) {
                    ra.iter_mut().zip(rb).for_each(|(x, y)| *x -= y);
                }
                Some(t)
            }
            _ => None,
        };
        delta.tokens = None;
        delta.neurons = None;
        Ok(Self {
            value: ours.value,
            children: ours.children.iter().map(|c| c.value).collect(),
            contrast_value: theirs.value,
            contrast_children: theirs.children.iter().map(|c| c.value).collect(),
            delta,
        })
    }

    fn to_json(&self) -> Value {
        let children: Vec<Value> = self
            .delta
            .children
            .iter()
            .zip(self.children.iter().zip(&self.contrast_children))
            .map(|(d, (a, b))| {
                json!({"step": d.step.to_string(), "value": a, "contrast_value": b, "delta": d.value})
            })
            .collect();
        json!({
            "path": self.delta.path.to_string(),
            "value": self.value,
            "contrast_value": self.contrast_value,
            "delta": {
                "value": self.delta.value,
                "bias": self.delta.bias,
                "residual": self.delta.residual,
            },
            "children": children,
        })
    }
}

/// The contrast prompt's run and the deltas (DESIGN.md §3, "Contrast").
#[derive(Debug, Clone)]
pub struct Contrast {
    pub prompt: String,
    pub tokens: Tokens,
    /// The contrast prompt's overview.
    pub overview: Overview,
    /// This prompt's overview minus the contrast prompt's.
    pub delta: Overview,
    /// The node asked for, on both prompts (none at the root).
    pub node: Option<NodeContrast>,
}

impl Contrast {
    /// The `contrast` object of the JSON report.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "prompt": self.prompt,
            "token_ids": self.tokens.ids,
            "token_strs": self.tokens.strs,
            "target_value": self.overview.target_value,
            "components": self.overview.components.to_json(),
            "head_dla": self.overview.head_dla.to_json(),
            "delta": {
                "target_value": self.delta.target_value,
                "components": self.delta.components.to_json(),
                "head_dla": self.delta.head_dla.to_json(),
            },
        });
        if let (Some(node), Some(map)) = (&self.node, v.as_object_mut()) {
            map.insert("node".into(), node.to_json());
        }
        v
    }
}

/// The message for a drill-down below the root on prompts of different lengths.
pub fn length_mismatch(path: &Path, ours: usize, theirs: usize) -> SessionError {
    SessionError::Contrast(format!(
        "`{path}` cannot be compared: the prompt has {ours} tokens and the contrast prompt {theirs}; \
         below the root the children are source positions, so both prompts need the same \
         number of tokens (the root's components and the layers × heads table compare at any \
         length)"
    ))
}

/// The two values of every cell of a contrast heatmap: `ours`' and `theirs`' (the same grid,
/// built from the two prompts' own views: the same rows, and as many columns — a column is a
/// source position, labelled with each prompt's own token); empty if the grids differ.
pub fn cell_pairs(ours: &Heatmap, theirs: &Heatmap) -> Vec<Option<(f32, f32)>> {
    if ours.rows != theirs.rows || ours.cols.len() != theirs.cols.len() {
        return Vec::new();
    }
    ours.values
        .iter()
        .zip(&theirs.values)
        .map(|(a, b)| a.zip(*b))
        .collect()
}

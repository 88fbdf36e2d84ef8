//! The attribution graph's layout, shared by the window and the PNG export: layers bottom to
//! top, token positions left to right (only the positions the graph uses), node size by
//! |value|, edge width by |weight|, colour by sign; and the graph as a PNG.

use rdla_attrib::Path;
use rdla_attrib::trace::{GraphSite, Trace};

use crate::heatmap::{max_abs, printable};
use crate::png::clip;

/// A placed site.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedNode {
    /// The site's id: the path of its largest traced node.
    pub id: Path,
    pub site: GraphSite,
    pub value: f32,
    pub x: f32,
    pub y: f32,
    pub radius: f32,
}

/// A placed edge (`from` → `to`, value in the start node's units).
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedEdge {
    pub from: (f32, f32),
    pub to: (f32, f32),
    pub value: f32,
    pub width: f32,
}

/// The whole drawing, in points from the top-left corner.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphLayout {
    pub size: (f32, f32),
    pub nodes: Vec<PlacedNode>,
    pub edges: Vec<PlacedEdge>,
    /// Column labels `(x, "p:token")` under the graph.
    pub columns: Vec<(f32, String)>,
    /// Row labels `(y, "L3")` left of the graph.
    pub rows: Vec<(f32, String)>,
}

const LEFT: f32 = 70.0;
const TOP: f32 = 20.0;
const BOTTOM: f32 = 90.0;
const MAX_RADIUS: f32 = 14.0;
const MIN_RADIUS: f32 = 3.0;
const MAX_EDGE: f32 = 6.0;

fn row_name(layer: f32, n_layers: usize) -> String {
    if layer < 0.0 {
        "embed".into()
    } else if layer >= n_layers as f32 {
        "logit".into()
    } else if layer.fract() > 0.0 {
        format!("L{} mlp", layer.floor() as usize)
    } else {
        format!("L{} attn", layer as usize)
    }
}

/// Lay `trace` out in `size` points (`tokens`: the prompt's token strings).
pub fn layout(trace: &Trace, tokens: &[String], n_layers: usize, size: (f32, f32)) -> GraphLayout {
    let mut positions: Vec<usize> = trace.nodes.iter().map(|n| n.position).collect();
    positions.sort_unstable();
    positions.dedup();
    let mut rows: Vec<f32> = trace.nodes.iter().map(|n| n.layer).collect();
    rows.sort_by(f32::total_cmp);
    rows.dedup();
    let (w, h) = size;
    let col_w = (w - LEFT - 20.0) / positions.len().max(1) as f32;
    let row_h = (h - TOP - BOTTOM) / rows.len().max(1) as f32;
    let col_x = |p: usize| {
        let i = positions.iter().position(|&q| q == p).unwrap_or(0);
        LEFT + (i as f32 + 0.5) * col_w
    };
    // bottom to top
    let row_y = |l: f32| {
        let i = rows.iter().position(|&r| r == l).unwrap_or(0);
        h - BOTTOM - (i as f32 + 0.5) * row_h
    };
    let max_v = max_abs(trace.nodes.iter().map(|n| n.value)).max(f32::MIN_POSITIVE);
    // sites sharing a cell (heads of one layer at one position) spread across it
    let mut placed: Vec<PlacedNode> = Vec::with_capacity(trace.nodes.len());
    for n in &trace.nodes {
        let same: Vec<&Path> = trace
            .nodes
            .iter()
            .filter(|m| m.position == n.position && m.layer == n.layer)
            .map(|m| &m.id)
            .collect();
        let k = same.len() as f32;
        let i = same.iter().position(|&id| *id == n.id).unwrap_or(0) as f32;
        let spread = (col_w * 0.8).min(k * 2.4 * MAX_RADIUS);
        let dx = if k > 1.0 {
            -spread / 2.0 + spread * i / (k - 1.0)
        } else {
            0.0
        };
        let r_max = MAX_RADIUS.min(row_h * 0.35).min(col_w * 0.4 / k.sqrt());
        placed.push(PlacedNode {
            id: n.id.clone(),
            site: n.site,
            value: n.value,
            x: col_x(n.position) + dx,
            y: row_y(n.layer),
            radius: (r_max * (n.value.abs() / max_v).sqrt()).max(MIN_RADIUS.min(r_max)),
        });
    }
    let max_e = max_abs(trace.edges.iter().map(|e| e.value)).max(f32::MIN_POSITIVE);
    let at = |id: &Path| placed.iter().find(|n| n.id == *id).map(|n| (n.x, n.y));
    let edges = trace
        .edges
        .iter()
        .filter_map(|e| {
            Some(PlacedEdge {
                from: at(&e.from)?,
                to: at(&e.to)?,
                value: e.value,
                width: (MAX_EDGE * e.value.abs() / max_e).max(0.75),
            })
        })
        .collect();
    GraphLayout {
        size,
        edges,
        columns: positions
            .iter()
            .map(|&p| {
                (
                    col_x(p),
                    clip(
                        &format!(
                            "{p}:{}",
                            printable(tokens.get(p).map_or("", String::as_str))
                        ),
                        16,
                    ),
                )
            })
            .collect(),
        rows: rows
            .iter()
            .map(|&l| (row_y(l), row_name(l, n_layers)))
            .collect(),
        nodes: placed,
    }
}

/// The colour of a signed value at strength `t ∈ [0, 1]`: red for positive, blue for negative.
pub fn sign_color(v: f32, t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * t) as u8;
    if v >= 0.0 {
        [mix(240, 200), mix(240, 40), mix(240, 40)]
    } else {
        [mix(240, 40), mix(240, 90), mix(240, 200)]
    }
}

/// The one-line summary under a graph: what was traced and what is left.
pub fn summary(trace: &Trace) -> String {
    format!(
        "{} = {:+.4} · {} nodes expanded · traced frontier Σ {:+.4} (Δ {:.1e}) · {} sites, {} edges",
        if trace.from.is_root() {
            "logit".to_string()
        } else {
            trace.from.to_string()
        },
        trace.value,
        trace.expanded,
        trace.frontier_total,
        trace.frontier_total - f64::from(trace.value),
        trace.nodes.len(),
        trace.edges.len()
    )
}

/// The graph's title: model, start node, target.
fn title(model: &str, trace: &Trace, target: &str) -> String {
    let from = if trace.from.is_root() {
        "the logit".to_string()
    } else {
        trace.from.to_string()
    };
    format!("{model} · attribution graph of {from} · {target}")
}

/// The graph as a PNG (the window's layout): the one export of `rdla trace --png` and the
/// window's *Export PNG…*.
pub fn png(
    trace: &Trace,
    tokens: &[String],
    n_layers: usize,
    model: &str,
    target: &str,
    stamp: Option<&str>,
) -> Result<Vec<u8>, crate::png::PngError> {
    let g = layout(trace, tokens, n_layers, crate::png::PNG_FIT);
    let summary = summary(trace);
    let mut caption = vec![summary.as_str()];
    caption.extend(stamp);
    crate::png::encode_graph_png(&g, &title(model, trace, target), &caption, 2.0)
        .map(|(bytes, _)| bytes)
}

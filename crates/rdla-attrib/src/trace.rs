//! Exact path tracing: a best-first expansion of the attribution tree by |value| under a
//! budget, and the attribution graph it implies.
//!
//! The traced tree always adds up: every expanded node's value is the sum of its children,
//! its remainder and its residual (float error; the approximation error in gradient MLP mode),
//! so `frontier_total` — every unexpanded node, every remainder and every residual of the
//! traced tree — equals the start node's value, and the part not yet traced is a number, never
//! hidden. A node's children are the exact tree's children; MLPs can instead be split into
//! their neurons (`neurons`), with the neurons that are not listed and `b_out` as one remainder,
//! so the graph shows which neurons carried the value.
//!
//! The graph merges the traced tree by model site — a component, head or neuron at a position
//! — and gives every edge the summed contribution of the traced paths through it.

use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Engine, Expansion, NodeKind, Result};
use crate::path::{Comp, Path, Step};

/// What to trace and how far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceOptions {
    /// At most this many nodes are expanded.
    pub budget: usize,
    /// Stop after this long (checked between expansions).
    pub time_limit: Option<Duration>,
    /// How many unexpanded nodes (the traced paths) to report.
    pub top: usize,
    /// Split MLPs into their largest neurons instead of their input components.
    pub neurons: bool,
    /// Graph pruning: drop sites and edges below this fraction of |start value|.
    pub threshold: f32,
    /// Graph pruning: keep at most this many sites (largest |value| first).
    pub max_nodes: usize,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            budget: 200,
            time_limit: None,
            top: 20,
            neurons: false,
            threshold: 0.01,
            max_nodes: 60,
        }
    }
}

/// A traced path and its exact value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracedPath {
    pub path: String,
    pub value: f32,
}

/// A model site of the graph. Its id is the path of the traced node with the largest |value|
/// at this site (open it with `attribute --path`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphNode {
    pub id: String,
    /// `logit`, `embed`, `pos`, `L{l}.attn`, `L{l}.H{h}`, `L{l}.mlp`, `L{l}.N{n}`.
    pub label: String,
    /// Drawing row: `-1` for embeddings, `l` for layer `l`'s attention and heads, `l + 0.5`
    /// for its MLP and neurons, `n_layers` for the logit.
    pub layer: f32,
    pub position: usize,
    /// Σ of the values of the traced nodes at this site: how much of the start value flows
    /// through it along the traced paths.
    pub value: f32,
}

/// The summed contribution of the traced paths from one site into another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub value: f32,
}

/// The result of a trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    pub from: String,
    pub value: f32,
    pub expanded: usize,
    /// Σ of every unexpanded node, remainder and residual of the traced tree.
    pub frontier_total: f64,
    /// Σ |residual| over the expanded nodes (float error, or the gradient approximation).
    pub residual_total: f64,
    /// The largest unexpanded nodes by |value|.
    pub paths: Vec<TracedPath>,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
    /// Whether the time limit stopped the trace before the budget.
    pub timed_out: bool,
}

/// A frontier entry, ordered by |value|.
#[derive(Debug, Clone)]
struct Entry {
    key: f32,
    seq: usize,
    path: Path,
    value: f32,
    site: Option<Site>,
}

/// A site's label, drawing row and position.
type Site = (String, f32, usize);

/// Whether a step names a leaf (nothing to expand).
fn is_leaf_step(step: Option<&Step>) -> bool {
    matches!(
        step,
        Some(
            Step::Bias
                | Step::Comp(Comp::Embed | Comp::Pos)
                | Step::Source {
                    comp: Comp::Embed | Comp::Pos,
                    ..
                }
        )
    )
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // largest |value| first; earlier entries first among ties
        self.key
            .total_cmp(&o.key)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

/// The site of a node: its label, drawing row and position; `None` for nodes that are not
/// sites (remainders).
fn site(ex: &Expansion, n_layers: usize) -> Option<Site> {
    let p = ex.position;
    Some(match ex.kind {
        NodeKind::Root => ("logit".into(), n_layers as f32, p),
        NodeKind::Component { comp } => match comp.0 {
            Comp::Embed => ("embed".into(), -1.0, p),
            Comp::Pos => ("pos".into(), -1.0, p),
            Comp::Attn(l) => (format!("L{l}.attn"), l as f32, p),
            Comp::Mlp(l) => (format!("L{l}.mlp"), l as f32 + 0.5, p),
        },
        NodeKind::Head { layer, head } => (format!("L{layer}.H{head}"), layer as f32, p),
        NodeKind::Neuron { layer, neuron } => {
            (format!("L{layer}.N{neuron}"), layer as f32 + 0.5, p)
        }
        NodeKind::Score { .. } | NodeKind::Side { .. } | NodeKind::Bias => return None,
    })
}

/// The site of a child step of an expanded node, without expanding it.
fn child_site(parent: &Expansion, step: Step) -> Option<Site> {
    let p = parent.position;
    Some(match step {
        Step::Comp(c) => comp_site(c, p),
        Step::Source { pos, comp } => comp_site(comp, pos),
        Step::Head(h) => match parent.kind {
            NodeKind::Component { comp } => match comp.0 {
                Comp::Attn(l) => (format!("L{l}.H{h}"), l as f32, p),
                _ => return None,
            },
            _ => return None,
        },
        Step::Neuron(n) => match parent.kind {
            NodeKind::Component { comp } => match comp.0 {
                Comp::Mlp(l) => (format!("L{l}.N{n}"), l as f32 + 0.5, p),
                _ => return None,
            },
            _ => return None,
        },
        Step::Bias | Step::Score { .. } | Step::Side(_) => return None,
    })
}

fn comp_site(c: Comp, p: usize) -> Site {
    match c {
        Comp::Embed => ("embed".into(), -1.0, p),
        Comp::Pos => ("pos".into(), -1.0, p),
        Comp::Attn(l) => (format!("L{l}.attn"), l as f32, p),
        Comp::Mlp(l) => (format!("L{l}.mlp"), l as f32 + 0.5, p),
    }
}

/// A site's key: its label and position.
type SiteKey = (String, usize);

/// Accumulates sites and edges.
#[derive(Default)]
struct GraphBuilder {
    /// site → (best path, its |value|, layer, Σ value)
    sites: HashMap<SiteKey, (String, f32, f32, f64)>,
    edges: HashMap<(SiteKey, SiteKey), f64>,
}

impl GraphBuilder {
    fn add_site(&mut self, (label, layer, pos): Site, path: &Path, value: f32) {
        let e = self
            .sites
            .entry((label, pos))
            .or_insert_with(|| (path.to_string(), value.abs(), layer, 0.0));
        if value.abs() > e.1 {
            e.0 = path.to_string();
            e.1 = value.abs();
        }
        e.3 += f64::from(value);
    }

    fn add_edge(&mut self, from: SiteKey, to: SiteKey, value: f32) {
        *self.edges.entry((from, to)).or_insert(0.0) += f64::from(value);
    }

    fn finish(self, start: f32, opts: &TraceOptions) -> (Vec<GraphNode>, Vec<GraphEdge>) {
        let floor = opts.threshold * start.abs();
        let mut nodes: Vec<(SiteKey, GraphNode)> = self
            .sites
            .into_iter()
            .map(|(key, (id, _, layer, value))| {
                let node = GraphNode {
                    id,
                    label: key.0.clone(),
                    layer,
                    position: key.1,
                    value: value as f32,
                };
                (key, node)
            })
            .filter(|(_, n)| n.value.abs() >= floor || n.label == "logit")
            .collect();
        nodes.sort_by(|a, b| {
            b.1.value
                .abs()
                .total_cmp(&a.1.value.abs())
                .then_with(|| a.1.id.cmp(&b.1.id))
        });
        nodes.truncate(opts.max_nodes.max(1));
        let ids: HashMap<SiteKey, String> = nodes
            .iter()
            .map(|(k, n)| (k.clone(), n.id.clone()))
            .collect();
        let mut edges: Vec<GraphEdge> = self
            .edges
            .into_iter()
            .filter(|(_, v)| v.abs() as f32 >= floor)
            .filter_map(|((from, to), v)| {
                Some(GraphEdge {
                    from: ids.get(&from)?.clone(),
                    to: ids.get(&to)?.clone(),
                    value: v as f32,
                })
            })
            .collect();
        edges.sort_by(|a, b| {
            b.value
                .abs()
                .total_cmp(&a.value.abs())
                .then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to)))
        });
        (nodes.into_iter().map(|(_, n)| n).collect(), edges)
    }
}

impl Engine<'_> {
    /// Trace the tree below `from`, best-first by |value|, under `opts`' budget. `progress`
    /// sees (expanded, budget) after each expansion and stops the trace by returning `false`.
    pub fn trace(
        &self,
        from: &Path,
        opts: &TraceOptions,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Trace> {
        let started = Instant::now();
        let n_layers = self.layout().n_layers;
        let start_value = self.value(from)?;
        let mut heap = BinaryHeap::new();
        let mut seq = 0;
        heap.push(Entry {
            key: start_value.abs(),
            seq,
            path: from.clone(),
            value: start_value,
            site: None,
        });
        let mut settled = 0.0f64; // remainders and residuals of expanded nodes
        let mut residual_total = 0.0f64;
        let mut frontier: Vec<TracedPath> = Vec::new(); // leaves reached
        let mut graph = GraphBuilder::default();
        let mut expanded = 0;
        let mut timed_out = false;
        while expanded < opts.budget {
            if opts.time_limit.is_some_and(|t| started.elapsed() >= t) {
                timed_out = true;
                break;
            }
            let Some(entry) = heap.pop() else { break };
            if is_leaf_step(entry.path.steps().last()) {
                if let Some(s) = entry.site {
                    graph.add_site(s, &entry.path, entry.value);
                }
                frontier.push(TracedPath {
                    path: entry.path.to_string(),
                    value: entry.value,
                });
                continue;
            }
            let mut ex = self.expand(&entry.path)?;
            let here = site(&ex, n_layers);
            if let Some(s) = &here {
                graph.add_site(s.clone(), &entry.path, entry.value);
            }
            if ex.leaf || ex.alternatives {
                // nothing below it in the sum (a score's sides are alternatives)
                frontier.push(TracedPath {
                    path: entry.path.to_string(),
                    value: entry.value,
                });
                continue;
            }
            expanded += 1;
            let mut rest = f64::from(ex.bias) + f64::from(ex.residual);
            residual_total += f64::from(ex.residual).abs();
            if opts.neurons
                && let Some(neurons) = ex.neurons.take()
            {
                // split the MLP into its listed neurons; the rest (unlisted neurons, b_out)
                // is one remainder
                let listed: f64 = neurons.iter().map(|n| f64::from(n.value)).sum();
                rest = f64::from(ex.value) - listed;
                ex.children = neurons;
            }
            settled += rest;
            for c in &ex.children {
                seq += 1;
                let child = child_site(&ex, c.parsed);
                if let (Some(s), Some(h)) = (&child, &here) {
                    graph.add_edge((s.0.clone(), s.2), (h.0.clone(), h.2), c.value);
                }
                heap.push(Entry {
                    key: c.value.abs(),
                    seq,
                    path: entry.path.child(c.parsed),
                    value: c.value,
                    site: child,
                });
            }
            if !progress(expanded, opts.budget) {
                break;
            }
        }
        // the unexpanded frontier: its sites count too (their edges were added when their
        // parents were expanded)
        for e in heap.into_vec() {
            if let Some(s) = e.site {
                graph.add_site(s, &e.path, e.value);
            }
            frontier.push(TracedPath {
                path: e.path.to_string(),
                value: e.value,
            });
        }
        let frontier_total = settled + frontier.iter().map(|t| f64::from(t.value)).sum::<f64>();
        frontier.sort_by(|a, b| {
            b.value
                .abs()
                .total_cmp(&a.value.abs())
                .then_with(|| a.path.cmp(&b.path))
        });
        frontier.truncate(opts.top);
        let (nodes, edges) = graph.finish(start_value, opts);
        Ok(Trace {
            from: from.to_string(),
            value: start_value,
            expanded,
            frontier_total,
            residual_total,
            paths: frontier,
            nodes,
            edges,
            timed_out,
        })
    }
}

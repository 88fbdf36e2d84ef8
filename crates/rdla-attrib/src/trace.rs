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

use crate::engine::{Engine, Resolved, Result, Site, SiteAt};
use crate::path::{Path, Step};

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
    pub path: Path,
    pub value: f32,
}

/// A model site of the graph. Its id is the path of the traced node with the largest |value|
/// at this site (open it with `attribute --path`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphNode {
    pub id: Path,
    /// `logit`, `embed`, `pos`, `L{l}.attn`, `L{l}.H{h}`, `L{l}.mlp`, `L{l}.N{n}`.
    #[serde(rename = "label")]
    pub site: GraphSite,
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
    pub from: Path,
    pub to: Path,
    pub value: f32,
}

/// The result of a trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    pub from: Path,
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

/// A traced node: its parent in the arena (`None` for the start), the step from it, its
/// value and its site. Paths are rebuilt from the arena only for what is reported, so a
/// frontier of millions of children costs a few dozen bytes each.
#[derive(Debug, Clone, Copy)]
struct Rec {
    parent: Option<u32>,
    step: Option<Step>,
    value: f32,
    site: Option<SiteKey>,
    /// Nothing to expand below it.
    leaf: bool,
}

impl Trace {
    /// The trace with the graph pruned: sites (the logit always kept) and edges below
    /// `threshold · |value|` dropped, at most `max_nodes` sites (largest |value| first; the
    /// sites are kept in that order), edges only between kept sites.
    #[must_use]
    pub fn pruned(&self, threshold: f32, max_nodes: usize) -> Self {
        let floor = threshold * self.value.abs();
        let mut nodes: Vec<GraphNode> = self
            .nodes
            .iter()
            .filter(|n| n.value.abs() >= floor || n.site == GraphSite::Logit)
            .cloned()
            .collect();
        nodes.truncate(max_nodes.max(1));
        let keep: std::collections::HashSet<&Path> = nodes.iter().map(|n| &n.id).collect();
        let edges = self
            .edges
            .iter()
            .filter(|e| e.value.abs() >= floor && keep.contains(&e.from) && keep.contains(&e.to))
            .cloned()
            .collect();
        Self {
            nodes,
            edges,
            ..self.clone()
        }
    }
}

/// A frontier entry: the next untaken node of one expanded node's children (`lists[list]`,
/// sorted by |value|, at `pos`), ordered by that node's |value| (earlier nodes first among
/// ties). The heap holds one entry per expanded node, not one per child: a head has thousands
/// of children, and each is pushed into a plain list once instead of into the heap.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: f32,
    idx: u32,
    list: u32,
    pos: u32,
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
        self.key
            .total_cmp(&o.key)
            .then_with(|| o.idx.cmp(&self.idx))
    }
}

/// A site of the graph: the logit it ends in, or a model site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphSite {
    Logit,
    Model(Site),
}

impl GraphSite {
    /// Drawing row: `-1` embeddings, `l` attention, `l + 0.5` MLP, `n_layers` the logit.
    fn row(self, n_layers: usize) -> f32 {
        match self {
            Self::Logit => n_layers as f32,
            Self::Model(s) => s.row(),
        }
    }
}

/// `logit`, or the model site's label.
impl std::fmt::Display for GraphSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Logit => f.write_str("logit"),
            Self::Model(s) => s.fmt(f),
        }
    }
}

/// The inverse of `Display`.
impl std::str::FromStr for GraphSite {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "logit" => Ok(Self::Logit),
            _ => s.parse().map(Self::Model),
        }
    }
}

impl Serialize for GraphSite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A graph site at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SiteKey {
    site: GraphSite,
    pos: usize,
}

impl From<SiteAt> for SiteKey {
    fn from(s: SiteAt) -> Self {
        Self {
            site: GraphSite::Model(s.site),
            pos: s.pos,
        }
    }
}

/// The traced tree: the arena of nodes and the path of the start.
struct Arena {
    from: Path,
    recs: Vec<Rec>,
}

impl Arena {
    fn push(&mut self, rec: Rec) -> u32 {
        self.recs.push(rec);
        (self.recs.len() - 1) as u32
    }

    fn path(&self, idx: u32) -> Path {
        let mut steps = Vec::new();
        let mut i = Some(idx);
        while let Some(j) = i {
            let r = &self.recs[j as usize];
            if let Some(s) = r.step {
                steps.push(s);
            }
            i = r.parent;
        }
        steps.reverse();
        let mut all = self.from.steps().to_vec();
        all.extend(steps);
        Path(all)
    }
}

/// FNV-1a over the written words, then mixed: the graph's keys are a few small integers,
/// hashed once per child of every expansion (SipHash was 8 % of a trace's time).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    /// FNV's state, mixed (splitmix64's finaliser): the table uses the hash's top bits, which
    /// FNV over a few small words leaves nearly constant.
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x100_0000_01b3);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Accumulates sites (Σ value, and the traced node with the largest |value| there) and edges.
///
/// Edges are not accumulated while tracing: each is a child's value from its site to its
/// parent's, all of which the arena holds; they are summed once at the end, for the kept
/// sites only.
#[derive(Default)]
struct GraphBuilder {
    sites: FastMap<SiteKey, (u32, f32, f64)>,
    /// The site of the node traced from (the arena's first record has none of its own).
    start_site: Option<SiteKey>,
}

impl GraphBuilder {
    fn add_site(&mut self, site: SiteKey, idx: u32, value: f32) {
        let e = self.sites.entry(site).or_insert((idx, value.abs(), 0.0));
        if value.abs() > e.1 {
            e.0 = idx;
            e.1 = value.abs();
        }
        e.2 += f64::from(value);
    }

    /// The sites (largest |value| first) and edges that [`Trace::pruned`] keeps at `threshold`
    /// and `max_nodes` — the same rule, applied before any id string is built (a trace has
    /// hundreds of thousands of sites and edges; a graph shows dozens).
    fn finish(
        self,
        arena: &Arena,
        n_layers: usize,
        floor: f32,
        max_nodes: usize,
    ) -> (Vec<GraphNode>, Vec<GraphEdge>) {
        let mut kept: Vec<(SiteKey, u32, f64)> = self
            .sites
            .into_iter()
            .map(|(k, (idx, _, v))| (k, idx, v))
            .filter(|(k, _, v)| (*v as f32).abs() >= floor || k.site == GraphSite::Logit)
            .collect();
        kept.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()).then_with(|| a.1.cmp(&b.1)));
        kept.truncate(max_nodes.max(1));
        let ids: FastMap<SiteKey, Path> = kept
            .iter()
            .map(|(k, idx, _)| (*k, arena.path(*idx)))
            .collect();
        let nodes = kept
            .iter()
            .map(|(k, _, v)| GraphNode {
                id: ids[k].clone(),
                site: k.site,
                layer: k.site.row(n_layers),
                position: k.pos,
                value: *v as f32,
            })
            .collect();
        // record 0 is the node traced from
        let site_of = |i: u32| {
            if i == 0 {
                self.start_site
            } else {
                arena.recs[i as usize].site
            }
        };
        let mut sums: FastMap<(SiteKey, SiteKey), f64> = FastMap::default();
        for r in &arena.recs {
            if let (Some(from), Some(to)) = (r.site, r.parent.and_then(site_of))
                && ids.contains_key(&from)
                && ids.contains_key(&to)
            {
                *sums.entry((from, to)).or_insert(0.0) += f64::from(r.value);
            }
        }
        let mut edges: Vec<GraphEdge> = sums
            .into_iter()
            .filter(|(_, v)| (*v as f32).abs() >= floor)
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
                // ties in the order of the ids' text
                .then_with(|| {
                    (a.from.to_string(), a.to.to_string())
                        .cmp(&(b.from.to_string(), b.to.to_string()))
                })
        });
        (nodes, edges)
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
        let mut arena = Arena {
            from: from.clone(),
            recs: Vec::new(),
        };
        let mut heap = BinaryHeap::new();
        let root = arena.push(Rec {
            parent: None,
            step: None,
            value: start_value,
            site: None,
            leaf: false,
        });
        // each expanded node's children, largest |value| first; `heap` merges the lists
        let mut lists: Vec<Vec<u32>> = vec![vec![root]];
        heap.push(Entry {
            key: start_value.abs(),
            idx: root,
            list: 0,
            pos: 0,
        });
        let mut settled = 0.0f64; // remainders and residuals of expanded nodes
        let mut residual_total = 0.0f64;
        let mut leaves: Vec<u32> = Vec::new(); // unexpandable nodes reached
        let mut graph = GraphBuilder::default();
        let mut resolved: FastMap<u32, Resolved> = FastMap::default();
        let mut expanded = 0;
        let mut timed_out = false;
        while expanded < opts.budget {
            if opts.time_limit.is_some_and(|t| started.elapsed() >= t) {
                timed_out = true;
                break;
            }
            let Some(entry) = heap.pop() else { break };
            // the next child of the same list takes this one's place in the heap
            if let Some(&next) = lists[entry.list as usize].get(entry.pos as usize + 1) {
                heap.push(Entry {
                    key: arena.recs[next as usize].value.abs(),
                    idx: next,
                    list: entry.list,
                    pos: entry.pos + 1,
                });
            }
            let rec = arena.recs[entry.idx as usize];
            if rec.leaf {
                if let Some(s) = rec.site {
                    graph.add_site(s, entry.idx, rec.value);
                }
                leaves.push(entry.idx);
                continue;
            }
            let path = arena.path(entry.idx);
            // one step from the expanded parent, not a walk from the root
            let node = match (rec.parent, rec.step) {
                (Some(p), Some(step)) => match resolved.get(&p) {
                    Some(parent) => self.child(parent, step, &path)?,
                    None => self.resolved(&path)?,
                },
                _ => self.resolved(&path)?,
            };
            let mut ex = self.expand_resolved(&node, &path, opts.neurons)?;
            let here = match (ex.site, path.is_root()) {
                (Some(s), _) => Some(s.into()),
                (None, true) => Some(SiteKey {
                    site: GraphSite::Logit,
                    pos: ex.position,
                }),
                (None, false) => None,
            };
            if let Some(s) = here {
                graph.add_site(s, entry.idx, rec.value);
            }
            if entry.idx == root {
                graph.start_site = here;
            }
            if ex.leaf || ex.alternatives {
                // nothing below it in the sum (a score's sides are alternatives)
                leaves.push(entry.idx);
                continue;
            }
            expanded += 1;
            resolved.insert(entry.idx, node);
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
            let mut list: Vec<u32> = Vec::with_capacity(ex.children.len());
            for c in &ex.children {
                list.push(arena.push(Rec {
                    parent: Some(entry.idx),
                    step: Some(c.step),
                    value: c.value,
                    site: c.site.map(SiteKey::from),
                    leaf: c.leaf,
                }));
            }
            let by_size = |a: &u32, b: &u32| {
                let (va, vb) = (arena.recs[*a as usize].value, arena.recs[*b as usize].value);
                vb.abs().total_cmp(&va.abs()).then_with(|| a.cmp(b))
            };
            list.sort_unstable_by(by_size);
            if let Some(&first) = list.first() {
                heap.push(Entry {
                    key: arena.recs[first as usize].value.abs(),
                    idx: first,
                    list: lists.len() as u32,
                    pos: 0,
                });
                lists.push(list);
            }
            if !progress(expanded, opts.budget) {
                break;
            }
        }
        // the unexpanded frontier: its sites count too (their edges were added when their
        // parents were expanded)
        let mut frontier = leaves;
        for e in heap.into_vec() {
            for &idx in &lists[e.list as usize][e.pos as usize..] {
                let r = arena.recs[idx as usize];
                if let Some(s) = r.site {
                    graph.add_site(s, idx, r.value);
                }
                frontier.push(idx);
            }
        }
        let value_of = |i: &u32| arena.recs[*i as usize].value;
        let frontier_total = settled + frontier.iter().map(|i| f64::from(value_of(i))).sum::<f64>();
        let top = opts.top.min(frontier.len());
        let by_size = |a: &u32, b: &u32| {
            value_of(b)
                .abs()
                .total_cmp(&value_of(a).abs())
                .then_with(|| a.cmp(b))
        };
        if top < frontier.len() && top > 0 {
            frontier.select_nth_unstable_by(top, by_size);
        }
        frontier.truncate(top);
        frontier.sort_by(by_size);
        let paths = frontier
            .iter()
            .map(|&i| TracedPath {
                path: arena.path(i),
                value: value_of(&i),
            })
            .collect();
        let (nodes, edges) = graph.finish(
            &arena,
            n_layers,
            opts.threshold * start_value.abs(),
            opts.max_nodes,
        );
        Ok(Trace {
            from: from.clone(),
            value: start_value,
            expanded,
            frontier_total,
            residual_total,
            paths,
            nodes,
            edges,
            timed_out,
        }
        .pruned(opts.threshold, opts.max_nodes))
    }
}

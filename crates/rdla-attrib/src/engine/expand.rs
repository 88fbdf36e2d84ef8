//! Walking a path and expanding the node it names.

use burn::tensor::Tensor;

use rdla_model::model::ablate::Site;

use super::node::{Kind, Node};
use super::types::{ScoreTable, TokenReadout, TokenValue, Units};
use super::{AttribError, Child, Engine, Expansion, Result};
use crate::path::{Comp, Path, Step};

/// A node resolved once and kept (its kind, position and readout on the device), for walks
/// that expand many nodes below it; the readout its children share is computed once, on the
/// first child resolved (an MLP's input readout reads its weights; a head's OV readout its
/// value and output weights).
#[derive(Debug)]
pub(crate) struct Resolved {
    node: Node,
    basis: std::cell::OnceCell<Option<super::node::Basis>>,
}

impl Resolved {
    fn new(node: Node) -> Self {
        Self {
            node,
            basis: std::cell::OnceCell::new(),
        }
    }
}

/// How many neurons an MLP node lists (largest |value| first).
pub const NEURONS_LISTED: usize = 20;
/// How many tokens a vocabulary readout lists in each direction.
pub const TOKENS_LISTED: usize = 10;

/// The indices of the `k` largest `key(v)`, ties to the lower index.
fn top_indices(values: &[f32], k: usize, key: impl Fn(f32) -> f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |&a: &usize, &b: &usize| key(values[b]).total_cmp(&key(values[a])).then(a.cmp(&b));
    if idx.len() > k {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Splits one flat read-back into its parts.
struct Cursor<'a> {
    data: &'a [f32],
    off: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [f32]> {
        let s = self
            .data
            .get(self.off..self.off + n)
            .ok_or(AttribError::Empty)?;
        self.off += n;
        Ok(s)
    }
}

impl Engine<'_> {
    /// The node at `path`; an invalid step is an error naming it and listing the choices.
    pub(super) fn resolve(&self, path: &Path) -> Result<Node> {
        let mut node = self.root();
        for (i, &s) in path.steps().iter().enumerate() {
            node = self
                .node_step(&node, s)?
                .ok_or_else(|| AttribError::InvalidStep {
                    path: path.to_string(),
                    index: i + 1,
                    step: s.to_string(),
                    parent: self.describe(&node),
                    valid: self.valid_here(&node),
                })?;
        }
        Ok(node)
    }

    /// Check that `path` names a node (an error names the bad step and lists the choices).
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.resolve(path).map(|_| ())
    }

    /// Expand the node at `path`: its value, every child's value, its remainder and residual,
    /// and what is shown beside it (a score's table, an MLP's neurons, the vocabulary
    /// readout), with one read-back from the device.
    pub fn expand(&self, path: &Path) -> Result<Expansion> {
        let node = self.resolve(path)?;
        self.expand_node(&node, path, true, true)
    }

    /// The node at `path`, kept so that its children are one step away ([`Engine::child`]).
    pub(crate) fn resolved(&self, path: &Path) -> Result<Resolved> {
        self.resolve(path).map(Resolved::new)
    }

    /// The child of a resolved node (`path` is the child's path, for messages).
    pub(crate) fn child(&self, parent: &Resolved, step: Step, path: &Path) -> Result<Resolved> {
        let basis = parent.basis.get_or_init(|| self.child_basis(&parent.node));
        if let Some(b) = basis
            && let Some(node) = self.step_with_basis(&parent.node, b, step)
        {
            return Ok(Resolved::new(node));
        }
        self.node_step(&parent.node, step)?
            .map(Resolved::new)
            .ok_or_else(|| AttribError::InvalidStep {
                path: path.to_string(),
                index: path.depth(),
                step: step.to_string(),
                parent: self.describe(&parent.node),
                valid: self.valid_here(&parent.node),
            })
    }

    /// [`Engine::expand`] of an already resolved node, without what is shown beside a node
    /// and not needed to walk the tree: the vocabulary readout (a `[d] × [d, V]` product, most
    /// of an expansion's time on a large vocabulary), unless `neurons` the MLP's neuron
    /// ranking, and the children's `step` strings (left empty: `parsed` is the step; a head has
    /// thousands of children). Tracing uses it.
    pub(crate) fn expand_resolved(
        &self,
        node: &Resolved,
        path: &Path,
        neurons: bool,
    ) -> Result<Expansion> {
        self.expand_node(&node.node, path, false, neurons)
    }

    fn expand_node(
        &self,
        node: &Node,
        path: &Path,
        tokens: bool,
        neurons: bool,
    ) -> Result<Expansion> {
        let (value, children, bias) = self.node_all(node)?;
        let n_children = children.steps.len();
        let mut parts = vec![value, bias];
        if let Some(c) = children.values {
            parts.push(c);
        }
        let table = self.node_table(node);
        let mut table_shape = None;
        if let Some((labels, t)) = table {
            let [r, c] = t.dims();
            table_shape = Some((labels, r, c));
            parts.push(t.reshape([r * c]));
        }
        let neurons = if neurons {
            self.node_neurons(node)
        } else {
            None
        };
        let n_neurons = neurons.as_ref().map(|t| t.dims()[0]);
        if let Some(t) = neurons {
            parts.push(t);
        }
        let vocab = if tokens {
            self.node_written(node)
                .map(|v| self.vocab_readout(v, node.pos))
        } else {
            None
        };
        let n_vocab = vocab.as_ref().map(|t| t.dims()[0]);
        if let Some(t) = vocab {
            parts.push(t);
        }
        let all = rdla_model::to_vec(Tensor::cat(parts, 0))?;
        let mut cur = Cursor { data: &all, off: 0 };
        let head = cur.take(2)?;
        let (value, bias) = (head[0], head[1]);
        let children: Vec<Child> = children
            .steps
            .into_iter()
            .zip(cur.take(n_children)?)
            .map(|(s, &v)| Child {
                // a lean expansion (no token readout: a trace) walks `parsed` only
                step: if tokens { s.to_string() } else { String::new() },
                value: v,
                parsed: s,
            })
            .collect();
        let table = match table_shape {
            Some((labels, r, c)) => {
                let flat = cur.take(r * c)?;
                Some(ScoreTable {
                    rows: labels.clone(),
                    cols: labels,
                    values: flat.chunks(c).map(<[f32]>::to_vec).collect(),
                })
            }
            None => None,
        };
        let neurons = match n_neurons {
            Some(n) => {
                let v = cur.take(n)?;
                Some(
                    top_indices(v, NEURONS_LISTED, f32::abs)
                        .into_iter()
                        .map(|i| Child {
                            step: Step::Neuron(i).to_string(),
                            value: v[i],
                            parsed: Step::Neuron(i),
                        })
                        .collect(),
                )
            }
            None => None,
        };
        let tokens = match n_vocab {
            Some(n) => Some(self.token_readout(cur.take(n)?)),
            None => None,
        };
        let residual = match &table {
            Some(t) => f64::from(value) - t.sum(),
            None => {
                let sum: f64 = children.iter().map(|c| f64::from(c.value)).sum();
                f64::from(value) - sum - f64::from(bias)
            }
        };
        let in_score = path.steps().iter().any(|s| matches!(s, Step::Score { .. }));
        Ok(Expansion {
            path: path.to_string(),
            kind: Self::public_kind(node),
            position: self.node_position(node),
            value,
            bias,
            residual: residual as f32,
            children,
            leaf: self.is_leaf(node),
            units: if in_score { Units::Score } else { Units::Logit },
            alternatives: table.is_some(),
            table,
            neurons,
            n_neurons,
            tokens,
        })
    }

    fn token_readout(&self, logits: &[f32]) -> TokenReadout {
        let list = |idx: Vec<usize>| {
            idx.into_iter()
                .map(|i| TokenValue {
                    id: i as u32,
                    token: self.model.tokenizer.token_str(i as u32),
                    value: logits[i],
                })
                .collect()
        };
        TokenReadout {
            up: list(top_indices(logits, TOKENS_LISTED, |v| v)),
            down: list(top_indices(logits, TOKENS_LISTED, |v| -v)),
        }
    }

    /// The value of the node at `path` alone (no children).
    pub fn value(&self, path: &Path) -> Result<f32> {
        let node = self.resolve(path)?;
        let v = rdla_model::to_vec(self.node_value(&node)?)?;
        v.first().copied().ok_or(AttribError::Empty)
    }

    /// The model site a path's node is, for ablation: a component, head or neuron at its
    /// position. Scores, their sides, remainders and the root are not sites.
    pub fn ablation_site(&self, path: &Path) -> Result<(Site, usize)> {
        let node = self.resolve(path)?;
        let site = match node.kind {
            Kind::Comp(Comp::Embed) => Site::Embed,
            Kind::Comp(Comp::Pos) => Site::Pos,
            Kind::Comp(Comp::Attn(l)) => Site::Attn(l),
            Kind::Comp(Comp::Mlp(l)) => Site::Mlp(l),
            Kind::Head { layer, head } => Site::Head { layer, head },
            Kind::Neuron { layer, n } => Site::Neuron { layer, neuron: n },
            _ => {
                return Err(AttribError::NotASite {
                    path: path.to_string(),
                });
            }
        };
        Ok((site, node.pos))
    }
}

//! Walking a path and expanding the node it names.

use burn::tensor::Tensor;
use rdla_model::vocab::{Extremes, top_indices};

use super::node::{Basis, Node, Want};
use super::types::{ScoreTable, SiteAt, TokenReadout, TokenValue, Units};
use super::{AttribError, Child, Engine, Expansion, Result};
use crate::path::{Path, Step};

/// A node resolved once and kept (its kind, position and readout on the device), for walks
/// that expand many nodes below it; the readout its children share is computed once, on the
/// first child resolved (an MLP's input readout reads its weights; a head's OV readout its
/// value and output weights).
#[derive(Debug)]
pub(crate) struct Resolved {
    node: Node,
    basis: std::cell::OnceCell<Option<Basis>>,
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
    /// The error for a step that is not a child of `parent` (step `index` of `path`).
    fn invalid_step(&self, parent: &Node, path: &Path, index: usize, step: Step) -> AttribError {
        AttribError::InvalidStep {
            path: path.clone(),
            index,
            step,
            parent: parent.kind.ops().describe(parent.pos),
            valid: parent.kind.ops().valid(self, parent),
        }
    }

    /// The node at `path`; an invalid step is an error naming it and listing the choices.
    pub(super) fn resolve(&self, path: &Path) -> Result<Node> {
        let mut node = self.root();
        for (i, &s) in path.steps().iter().enumerate() {
            node = self
                .node_step(&node, s, None)?
                .ok_or_else(|| self.invalid_step(&node, path, i + 1, s))?;
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
        let node = &parent.node;
        if parent.basis.get().is_none() {
            let basis = node.kind.ops().basis(self, node)?;
            let _ = parent.basis.set(basis);
        }
        let basis = parent.basis.get().and_then(Option::as_ref);
        self.node_step(node, step, basis)?
            .map(Resolved::new)
            .ok_or_else(|| self.invalid_step(node, path, path.depth(), step))
    }

    /// [`Engine::expand`] of an already resolved node, without what is shown beside a node
    /// and not needed to walk the tree: the vocabulary readout (a `[d] × [d, V]` product, most
    /// of an expansion's time on a large vocabulary) and, unless `neurons`, the MLP's neuron
    /// ranking. Tracing uses it.
    pub(crate) fn expand_resolved(
        &self,
        node: &Resolved,
        path: &Path,
        neurons: bool,
    ) -> Result<Expansion> {
        self.expand_node(&node.node, path, false, neurons)
    }

    /// A child's place: the site it is (where it is one) and whether it is a leaf.
    fn child_of(&self, node: &Node, step: Step, value: f32) -> Child {
        let kind = self.child_kind(node, step);
        let (site, leaf) = match &kind {
            Some((k, pos)) => {
                let ops = k.ops();
                (
                    ops.site().map(|site| SiteAt { site, pos: *pos }),
                    ops.is_leaf(),
                )
            }
            None => (None, true),
        };
        Child {
            step,
            value,
            site,
            leaf,
        }
    }

    fn expand_node(
        &self,
        node: &Node,
        path: &Path,
        tokens: bool,
        neurons: bool,
    ) -> Result<Expansion> {
        let ops = node.kind.ops();
        let want = Want {
            neurons,
            written: tokens,
        };
        let parts = ops.expand(self, node, want)?;
        let n_children = parts.children.steps.len();
        let mut all = vec![parts.value, parts.bias];
        if let Some(c) = parts.children.values {
            all.push(c);
        }
        let mut table_shape = None;
        if let Some((labels, t)) = parts.table {
            let [r, c] = t.dims();
            table_shape = Some((labels, r, c));
            all.push(t.reshape([r * c]));
        }
        let n_neurons = parts.neurons.as_ref().map(|t| t.dims()[0]);
        if let Some(t) = parts.neurons {
            all.push(t);
        }
        // on the CPU the written direction is read back and ranked through the model's
        // sketch of W_U; elsewhere the full product rides along in this one read-back
        let vocab = parts.written.map(|v| self.vocab_readout(v, node.pos));
        let n_vocab = vocab.as_ref().map(|t| t.dims()[0]);
        if let Some(t) = vocab {
            all.push(t);
        }
        let all = rdla_model::to_vec(Tensor::cat(all, 0))?;
        let mut cur = Cursor { data: &all, off: 0 };
        let head = cur.take(2)?;
        let (value, bias) = (head[0], head[1]);
        let children: Vec<Child> = parts
            .children
            .steps
            .into_iter()
            .zip(cur.take(n_children)?)
            .map(|(s, &v)| self.child_of(node, s, v))
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
                        .map(|i| self.child_of(node, Step::Neuron(i), v[i]))
                        .collect(),
                )
            }
            None => None,
        };
        let tokens = match n_vocab {
            Some(n) => Some(self.token_readout(cur.take(n)?)?),
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
        let position = ops.position(node.pos);
        Ok(Expansion {
            path: path.clone(),
            kind: ops.public(),
            position,
            value,
            bias,
            residual: residual as f32,
            children,
            leaf: ops.is_leaf(),
            units: if in_score { Units::Score } else { Units::Logit },
            alternatives: table.is_some(),
            table,
            neurons,
            n_neurons,
            tokens,
            site: ops.site().map(|site| SiteAt {
                site,
                pos: node.pos,
            }),
            layout: ops.layout(),
        })
    }

    /// The tokens a readout lists from what [`Engine::vocab_readout`] read back: the
    /// logits themselves, or the direction whose logits the model ranks.
    fn token_readout(&self, read: &[f32]) -> Result<TokenReadout> {
        let ext = if self.full_vocab_product().is_some() {
            Extremes::of(read, TOKENS_LISTED)
        } else {
            self.model.vocab_extremes(read, TOKENS_LISTED)?
        };
        let list = |l: Vec<(u32, f32)>| {
            l.into_iter()
                .map(|(id, value)| TokenValue {
                    id,
                    token: self.model.tokenizer.token_str(id),
                    value,
                })
                .collect()
        };
        Ok(TokenReadout {
            up: list(ext.up),
            down: list(ext.down),
        })
    }

    /// The value of the node at `path` alone (no children).
    pub fn value(&self, path: &Path) -> Result<f32> {
        let node = self.resolve(path)?;
        let v = rdla_model::to_vec(node.kind.ops().value(self, &node)?)?;
        v.first().copied().ok_or(AttribError::Empty)
    }

    /// The model site a path's node is, for ablation: a component, head or neuron at its
    /// position. Scores, their sides, remainders and the root are not sites.
    pub fn ablation_site(&self, path: &Path) -> Result<SiteAt> {
        let node = self.resolve(path)?;
        match node.kind.ops().site() {
            Some(site) => Ok(SiteAt {
                site,
                pos: node.pos,
            }),
            None => Err(AttribError::NotASite { path: path.clone() }),
        }
    }

    /// What the model computes at a site in this engine's run — what an ablation of it
    /// replaces: the component it writes at its position (`d` values; an attention layer's
    /// and an MLP's output after any post-norm), a head's `z` there (`d_head`), a neuron's
    /// activation (one). Activation patching puts another prompt's value in its place.
    pub fn site_value(&self, at: SiteAt) -> Result<Vec<f32>> {
        use rdla_model::model::ablate::Site;
        let comp = |c: Option<usize>| -> Result<Vec<f32>> {
            let c = c.ok_or(AttribError::Empty)?;
            let d = self.model.config.d_model;
            let row = self
                .cache
                .components
                .clone()
                .narrow(0, c, 1)
                .narrow(1, at.pos, 1)
                .reshape([d]);
            Ok(rdla_model::to_vec(row)?)
        };
        let lay = self.layout;
        match at.site {
            Site::Embed => comp(lay.index(crate::path::Comp::Embed)),
            Site::Pos => comp(lay.index(crate::path::Comp::Pos)),
            Site::Attn(l) => comp(lay.index(crate::path::Comp::Attn(l))),
            Site::Mlp(l) => comp(lay.index(crate::path::Comp::Mlp(l))),
            Site::Head { layer, head } => {
                let dh = self.model.config.d_head;
                let z = self.z_at(&(layer..layer + 1), at.pos)?; // [1, H, dh]
                Ok(rdla_model::to_vec(z.narrow(1, head, 1).reshape([dh]))?)
            }
            Site::Neuron { layer, neuron } => {
                let ls = layer..layer + 1;
                let b = self.blocks_in(&ls)?;
                let r = Tensor::<2>::zeros([1, self.model.config.d_model], self.device());
                let parts = self.mlp_parts(&b, &ls, at.pos, r)?;
                let a = self
                    .mlp_activations(&parts)
                    .narrow(1, neuron, 1)
                    .reshape([1]);
                Ok(rdla_model::to_vec(a)?)
            }
        }
    }
}

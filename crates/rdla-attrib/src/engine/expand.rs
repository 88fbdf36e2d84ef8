//! Walking a path and expanding the node it names.

use burn::tensor::Tensor;

use super::node::Node;
use super::{AttribError, Child, Engine, Expansion, Result};
use crate::path::Path;

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
    /// with one read-back from the device.
    pub fn expand(&self, path: &Path) -> Result<Expansion> {
        let node = self.resolve(path)?;
        let children = self.node_children(&node);
        let mut parts = vec![self.node_value(&node), self.node_bias(&node)];
        if let Some(c) = children.values {
            parts.push(c);
        }
        let all = rdla_model::to_vec(Tensor::cat(parts, 0))?;
        let (&value, &bias) = all.first().zip(all.get(1)).ok_or(AttribError::Empty)?;
        let children: Vec<Child> = children
            .steps
            .into_iter()
            .zip(all[2..].iter())
            .map(|(s, &v)| Child {
                step: s.to_string(),
                value: v,
                parsed: s,
            })
            .collect();
        let sum: f64 = children.iter().map(|c| f64::from(c.value)).sum();
        Ok(Expansion {
            path: path.to_string(),
            kind: Self::public_kind(&node),
            position: node.pos,
            value,
            bias,
            residual: (f64::from(value) - sum - f64::from(bias)) as f32,
            children,
            leaf: self.is_leaf(&node),
        })
    }

    /// The value of the node at `path` alone (no children).
    pub fn value(&self, path: &Path) -> Result<f32> {
        let node = self.resolve(path)?;
        let v = rdla_model::to_vec(self.node_value(&node))?;
        v.first().copied().ok_or(AttribError::Empty)
    }

    /// Parse and expand.
    pub fn expand_str(&self, path: &str) -> Result<Expansion> {
        self.expand(&Path::parse(path)?)
    }
}

//! The component axis (DESIGN.md §1.2): which residual components a model has and in what
//! order. The forward pass fills the cache in this order; the attribution, the views and every
//! export read it from here, so nothing else enumerates components or does index arithmetic.

use std::fmt;

/// A residual-stream component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Comp {
    Embed,
    Pos,
    Attn(usize),
    Mlp(usize),
}

/// Where each component sits on a model's component axis: `embed`, `pos` (learned positions
/// only), then `L{l}.attn`, `L{l}.mlp` per layer. Every upstream set is a prefix of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub has_pos: bool,
    pub n_layers: usize,
    /// Attention and MLP read the same `resid_pre` (GPT-NeoX).
    pub parallel: bool,
}

impl Layout {
    pub fn of(cfg: &crate::ModelConfig) -> Self {
        Self {
            has_pos: cfg.has_pos(),
            n_layers: cfg.n_layers,
            parallel: cfg.parallel_residual,
        }
    }

    /// Number of components `C`.
    pub fn n(&self) -> usize {
        self.first_layer() + 2 * self.n_layers
    }

    fn first_layer(&self) -> usize {
        1 + usize::from(self.has_pos)
    }

    /// Index of `c`, if this model has it.
    pub fn index(&self, c: Comp) -> Option<usize> {
        match c {
            Comp::Embed => Some(0),
            Comp::Pos => self.has_pos.then_some(1),
            Comp::Attn(l) => (l < self.n_layers).then(|| self.first_layer() + 2 * l),
            Comp::Mlp(l) => (l < self.n_layers).then(|| self.first_layer() + 2 * l + 1),
        }
    }

    /// The component at index `i < n()`.
    pub fn comp(&self, i: usize) -> Comp {
        let f = self.first_layer();
        match i {
            0 => Comp::Embed,
            1 if self.has_pos => Comp::Pos,
            i if (i - f).is_multiple_of(2) => Comp::Attn((i - f) / 2),
            i => Comp::Mlp((i - f) / 2),
        }
    }

    /// Index of `L{l}.attn` (`l < n_layers`).
    pub fn attn(&self, l: usize) -> usize {
        self.first_layer() + 2 * l
    }

    /// Index of `L{l}.mlp` (`l < n_layers`).
    pub fn mlp(&self, l: usize) -> usize {
        self.attn(l) + 1
    }

    /// Components upstream of layer `l`'s attention (`resid_pre_l`): the first `pre(l)`.
    pub fn pre(&self, l: usize) -> usize {
        self.attn(l)
    }

    /// Components upstream of layer `l`'s MLP: `resid_mid_l` (`resid_pre_l` when parallel).
    pub fn mid(&self, l: usize) -> usize {
        self.pre(l) + usize::from(!self.parallel)
    }

    /// Labels in order.
    pub fn labels(&self) -> Vec<String> {
        (0..self.n()).map(|i| self.comp(i).to_string()).collect()
    }

    /// The first `n` components, shortened when long (`embed, pos, L0.attn … L3.mlp`).
    pub fn describe_prefix(&self, n: usize) -> String {
        if n <= 4 {
            (0..n)
                .map(|i| self.comp(i).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            let head: Vec<String> = (0..self.first_layer() + 1)
                .map(|i| self.comp(i).to_string())
                .collect();
            format!("{} … {}", head.join(", "), self.comp(n - 1))
        }
    }
}

impl Comp {
    /// Parse a component label (`embed`, `pos`, `L{l}.attn`, `L{l}.mlp`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "embed" => return Some(Self::Embed),
            "pos" => return Some(Self::Pos),
            _ => {}
        }
        let rest = s.strip_prefix('L')?;
        let (layer, kind) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let l: usize = layer.parse().ok()?;
        match kind {
            "attn" => Some(Self::Attn(l)),
            "mlp" => Some(Self::Mlp(l)),
            _ => None,
        }
    }
}

impl fmt::Display for Comp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embed => f.write_str("embed"),
            Self::Pos => f.write_str("pos"),
            Self::Attn(l) => write!(f, "L{l}.attn"),
            Self::Mlp(l) => write!(f, "L{l}.mlp"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_index_round_trips() {
        for has_pos in [true, false] {
            for parallel in [true, false] {
                let lay = Layout {
                    has_pos,
                    n_layers: 7,
                    parallel,
                };
                assert_eq!(lay.n(), usize::from(has_pos) + 1 + 14);
                for i in 0..lay.n() {
                    assert_eq!(lay.index(lay.comp(i)), Some(i));
                }
                assert_eq!(lay.index(Comp::Pos).is_some(), has_pos);
                assert_eq!(lay.index(Comp::Attn(7)), None);
                // an attention layer reads everything before it; an MLP also its own
                // layer's attention, unless the residual is parallel
                assert_eq!(lay.comp(lay.pre(3) - 1), Comp::Mlp(2));
                assert_eq!(
                    lay.comp(lay.mid(3) - 1),
                    if parallel {
                        Comp::Mlp(2)
                    } else {
                        Comp::Attn(3)
                    }
                );
            }
        }
        let rotary = Layout {
            has_pos: false,
            n_layers: 2,
            parallel: true,
        };
        assert_eq!(
            rotary.labels(),
            ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
        );
        assert_eq!(rotary.describe_prefix(5), "embed, L0.attn … L1.mlp");
    }
}

//! The path grammar of DESIGN.md §2, shared by GUI breadcrumbs, the CLI's `--path` and exports.
//!
//! A path is the steps from the root joined by `/`; the empty path is the root.
//! `L5.attn/H3/8:L2.attn/H1/3:embed`, `L4.mlp/L2.attn/H0/5:pos`.

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
    pub fn of(cfg: &rdla_model::ModelConfig) -> Self {
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

    /// Components upstream of layer `l`'s attention (`resid_pre_l`): the first `pre(l)`.
    pub fn pre(&self, l: usize) -> usize {
        self.first_layer() + 2 * l
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
    fn parse(s: &str) -> Option<Self> {
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

/// One step of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A component of a residual node (root or MLP): `embed`, `pos`, `L{l}.attn`, `L{l}.mlp`.
    Comp(Comp),
    /// A head of an attention layer: `H{h}`.
    Head(usize),
    /// A source of a head: `{p}:{component}`.
    Source { pos: usize, comp: Comp },
    /// The remainder child of a node: `bias`.
    Bias,
}

impl Step {
    /// Parse one step's syntax (validity against a model is checked when resolving).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "bias" {
            return Ok(Self::Bias);
        }
        if let Some(c) = Comp::parse(s) {
            return Ok(Self::Comp(c));
        }
        if let Some(h) = s.strip_prefix('H')
            && !h.is_empty()
            && h.bytes().all(|b| b.is_ascii_digit())
        {
            return h.parse().map(Self::Head).map_err(|e| e.to_string());
        }
        if let Some((p, c)) = s.split_once(':')
            && !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && let (Ok(pos), Some(comp)) = (p.parse(), Comp::parse(c))
        {
            return Ok(Self::Source { pos, comp });
        }
        Err(format!(
            "`{s}` is not a step (expected embed, pos, L{{l}}.attn, L{{l}}.mlp, H{{h}}, {{pos}}:{{component}} or bias)"
        ))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Comp(c) => write!(f, "{c}"),
            Self::Head(h) => write!(f, "H{h}"),
            Self::Source { pos, comp } => write!(f, "{pos}:{comp}"),
            Self::Bias => f.write_str("bias"),
        }
    }
}

/// A path from the root of the attribution tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Path(pub Vec<Step>);

/// A syntax error in a path string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad path `{path}`: step {index}: {reason}")]
pub struct PathSyntaxError {
    pub path: String,
    /// 1-based step number.
    pub index: usize,
    pub reason: String,
}

impl Path {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn parse(s: &str) -> Result<Self, PathSyntaxError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::root());
        }
        s.split('/')
            .enumerate()
            .map(|(i, step)| {
                Step::parse(step).map_err(|reason| PathSyntaxError {
                    path: s.to_string(),
                    index: i + 1,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn steps(&self) -> &[Step] {
        &self.0
    }

    pub fn depth(&self) -> usize {
        self.0.len()
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    #[must_use]
    pub fn child(&self, step: Step) -> Self {
        let mut v = self.0.clone();
        v.push(step);
        Self(v)
    }

    /// The parent path (the root's parent is the root).
    #[must_use]
    pub fn parent(&self) -> Self {
        let mut v = self.0.clone();
        v.pop();
        Self(v)
    }

    /// Every prefix from the root to this path, for breadcrumbs.
    pub fn prefixes(&self) -> Vec<Self> {
        (0..=self.0.len())
            .map(|n| Self(self.0[..n].to_vec()))
            .collect()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Path {
    type Err = PathSyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_examples_round_trip() {
        for s in [
            "",
            "L5.attn/H3",
            "L5.attn/H3/8:L2.attn/H1/3:embed",
            "L4.mlp/L2.attn/H0/5:pos",
            "L0.mlp/bias",
            "L11.attn/H11/511:L10.mlp/L3.attn/bias",
        ] {
            let p = Path::parse(s).expect(s);
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn syntax_errors_name_the_step() {
        let e = Path::parse("L5.attn/X3").expect_err("bad");
        assert_eq!(e.index, 2);
        assert!(e.to_string().contains("`X3`"), "{e}");
        assert!(Path::parse("L5.attn//H1").is_err());
        assert!(Path::parse("L.attn").is_err());
        assert!(Path::parse("3:L2.foo").is_err());
        assert!(Path::parse("-1:embed").is_err());
        assert!(Path::parse("H").is_err());
    }

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

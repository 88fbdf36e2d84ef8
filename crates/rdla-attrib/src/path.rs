//! The path grammar of DESIGN.md §2, shared by GUI breadcrumbs, the CLI's `--path` and exports.
//!
//! A path is the steps from the root joined by `/`; the empty path is the root.
//! `L5.attn/H3/8:L2.attn/H1/3:embed`, `L4.mlp/L2.attn/H0/5:pos`.

use std::fmt;

pub use rdla_model::layout::{Comp, Layout};

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
}

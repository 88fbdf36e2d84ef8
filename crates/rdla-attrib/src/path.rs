//! The path grammar of DESIGN.md §2, shared by GUI breadcrumbs, the CLI's `--path` and exports.
//!
//! A path is the steps from the root joined by `/`; the empty path is the root.
//! `L5.attn/H3/8:L2.attn/H1/3:embed`, `L4.mlp/L2.attn/H0/5:pos`, `L5.attn/H3/qk:8/q/L2.attn/H1`,
//! `L4.mlp/N1023/L1.attn`.

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
    /// A neuron of an MLP: `N{n}`.
    Neuron(usize),
    /// A head's pre-softmax attention score to key position `key`, or a contrast of scores:
    /// `qk:{k}`, `qk:{k}-{k2}`, `qk:{k}-mean`.
    Score { key: usize, versus: Versus },
    /// One side of a score's decomposition: `q` (keys frozen) or `k` (query frozen).
    Side(Side),
}

/// What a score is contrasted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Versus {
    /// The plain score `s(q, k)`.
    Nothing,
    /// `s(q, k) − s(q, k2)`: why `k` rather than `k2`.
    Key(usize),
    /// `s(q, k) − Σ_j A[q, j] s(q, j)`: why `k` more than the pattern-weighted average.
    Mean,
}

/// The two one-sided decompositions of a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The query side: the keys frozen, the query's components vary.
    Query,
    /// The key side: the query frozen, the keys' components vary.
    Key,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "q",
            Self::Key => "k",
        }
    }
}

/// Steps, sides and paths are written as the path grammar spells them.
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

serialize_as_display!(Step, Side, Path);

/// A path is read as the path grammar spells it.
impl<'de> serde::Deserialize<'de> for Path {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Path::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most characters of user text an error message repeats.
const EXCERPT_CHARS: usize = 120;

/// User text as an error message may repeat it: control characters escaped (a terminal
/// escape sequence in a `--path` is shown, never run), at most [`EXCERPT_CHARS`] characters,
/// the rest counted (a 128 KB `--path` was echoed whole).
pub fn excerpt(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == EXCERPT_CHARS {
            out.push_str(&format!("… ({} bytes in all)", s.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn number(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Step {
    /// Parse one step's syntax (validity against a model is checked when resolving).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "bias" => return Ok(Self::Bias),
            "q" => return Ok(Self::Side(Side::Query)),
            "k" => return Ok(Self::Side(Side::Key)),
            _ => {}
        }
        if let Some(n) = s.strip_prefix('N').and_then(number) {
            return Ok(Self::Neuron(n));
        }
        if let Some(rest) = s.strip_prefix("qk:") {
            let (k, versus) = match rest.split_once('-') {
                None => (rest, Some(Versus::Nothing)),
                Some((k, "mean")) => (k, Some(Versus::Mean)),
                Some((k, k2)) => (k, number(k2).map(Versus::Key)),
            };
            return match (number(k), versus) {
                (Some(key), Some(versus)) => Ok(Self::Score { key, versus }),
                _ => Err(format!(
                    "`{}` is not a score step (expected qk:{{k}}, qk:{{k}}-{{k2}} or qk:{{k}}-mean)",
                    excerpt(s)
                )),
            };
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
            "`{}` is not a step (expected embed, pos, L{{l}}.attn, L{{l}}.mlp, H{{h}}, {{pos}}:{{component}}, N{{n}}, qk:{{k}}, q, k or bias)",
            excerpt(s)
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
            Self::Neuron(n) => write!(f, "N{n}"),
            Self::Score { key, versus } => match versus {
                Versus::Nothing => write!(f, "qk:{key}"),
                Versus::Key(k2) => write!(f, "qk:{key}-{k2}"),
                Versus::Mean => write!(f, "qk:{key}-mean"),
            },
            Self::Side(side) => f.write_str(side.as_str()),
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
                    path: excerpt(s),
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
            "L5.attn/H3/qk:8/q/L2.attn/H1",
            "L5.attn/H3/qk:8/k/embed",
            "L4.mlp/N1023/L1.attn",
            "L2.attn/H3/qk:3-1/k/1:L0.mlp/N7",
            "L2.attn/H3/qk:3-mean/q/bias",
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
        for bad in [
            "N", "N-1", "qk:", "qk:x", "qk:3-", "qk:3-avg", "qk:-1", "Q", "N1a",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad} parsed");
        }
    }

    /// A regression test: a 128 KB `--path` was echoed whole (twice: the path and the step),
    /// and control characters reached the terminal as they were.
    #[test]
    fn syntax_errors_quote_user_text_escaped_and_short() {
        let long = format!("L0.attn/{}", "X".repeat(128 * 1024));
        let e = Path::parse(&long).expect_err("bad").to_string();
        assert!(e.len() < 1000, "{} bytes", e.len());
        assert!(e.contains("bytes in all"), "{e}");
        let e = Path::parse("L0.attn/\u{1b}[2JFAKE")
            .expect_err("bad")
            .to_string();
        assert!(!e.contains('\u{1b}'), "{e:?}");
        assert!(e.contains("\\u{1b}[2JFAKE"), "{e}");
    }
}

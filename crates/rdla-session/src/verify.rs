//! A trace's verification (`rdla trace --verify K`, the graph view's *Verify*): each of the
//! K largest traced sites is ablated alone in the real forward pass, then all K together, and
//! the real changes of the target are set beside the values the trace attributed to them.
//! Attribution is a linear story; saturation and cancellation downstream can break it, and
//! this is where a user sees whether it did.

use rdla_attrib::Path;
use rdla_attrib::trace::Trace;
use rdla_model::model::ablate::AblationMode;
use serde::Serialize;

/// One verified site: what the trace attributed to it, and what ablating it alone really
/// changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiedSite {
    /// The graph node's id: the path `attribute --ablate` takes.
    pub site: Path,
    /// `L3.H1@5`: the site and its position.
    pub label: String,
    /// Σ of the traced values at this site.
    pub attributed: f32,
    /// The target's real change (clean − ablated) with this site alone ablated.
    pub effect: f32,
}

/// How a site's real effect compares with its attributed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agreement {
    /// Same sign, and within a factor of two of each other.
    Agrees,
    /// More than a factor of two apart with the same sign, or one of them below 1 % of the
    /// target (saturation, cancellation, or paths not traced). Both below 1 %: agrees.
    Magnitude,
    /// Opposite signs, both above 1 % of the target.
    Sign,
}

impl VerifiedSite {
    /// This site's agreement, with `scale` (|target|) setting what counts as negligible.
    pub fn agreement(&self, scale: f32) -> Agreement {
        let (a, e) = (self.attributed, self.effect);
        let small = 0.01 * scale.abs();
        if a.abs() <= small && e.abs() <= small {
            return Agreement::Agrees;
        }
        if a.signum() != e.signum() {
            return if a.abs() <= small || e.abs() <= small {
                Agreement::Magnitude
            } else {
                Agreement::Sign
            };
        }
        let ratio = (e / a).abs();
        if (0.5..=2.0).contains(&ratio) {
            Agreement::Agrees
        } else {
            Agreement::Magnitude
        }
    }
}

/// The verification of a trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    /// What an ablated site becomes.
    pub ablation: AblationMode,
    /// The sites, largest |attributed| first.
    pub sites: Vec<VerifiedSite>,
    /// Spearman's rank correlation of `attributed` and `effect` over the sites (`None`: fewer
    /// than two sites, or one side constant).
    pub spearman: Option<f64>,
    /// The real change with every site ablated together, divided by the target (`None` when
    /// the target is 0).
    pub explained: Option<f64>,
    /// The target's clean value, and its real change with every site ablated together.
    pub target: f32,
    pub together: f32,
    /// Largest traced sites that cannot be ablated (not a model site): passed over.
    pub passed_over: Vec<Path>,
    pub verify_ms: f64,
}

impl Verification {
    /// The sites where the linear story breaks (see [`Agreement`]).
    pub fn breaks(&self) -> impl Iterator<Item = (&VerifiedSite, Agreement)> {
        self.sites
            .iter()
            .map(|s| (s, s.agreement(self.target)))
            .filter(|(_, a)| *a != Agreement::Agrees)
    }

    /// One line for captions: `verified by zero ablation of 10 sites: ρ = +0.84, together
    /// 72.1 % of the target; 2 sites disagree`.
    pub fn stamp(&self) -> String {
        let rho = self
            .spearman
            .map_or_else(|| "ρ n/a".to_string(), |r| format!("ρ = {r:+.2}"));
        let share = self
            .explained
            .map_or_else(|| "n/a".to_string(), |e| format!("{:.1} %", 100.0 * e));
        let breaks = self.breaks().count();
        format!(
            "verified by {} ablation of {} site{}: {rho}, together {share} of the target; {}",
            self.ablation.name(),
            self.sites.len(),
            if self.sites.len() == 1 { "" } else { "s" },
            match breaks {
                0 => "every site agrees".to_string(),
                1 => "1 site disagrees".to_string(),
                n => format!("{n} sites disagree"),
            }
        )
    }
}

/// The ablated runs of a verification: each of `paths` alone, then all of them together
/// (the last set).
pub(crate) fn alone_then_together(paths: Vec<Path>) -> Vec<Vec<Path>> {
    let mut sets: Vec<Vec<Path>> = paths.iter().map(|p| vec![p.clone()]).collect();
    sets.push(paths);
    sets
}

/// The sites a verification of `trace` ablates, largest |value| first: the graph's nodes
/// except the one traced from.
pub fn candidates(trace: &Trace) -> Vec<&rdla_attrib::trace::GraphNode> {
    let mut sites: Vec<_> = trace.nodes.iter().filter(|n| n.id != trace.from).collect();
    sites.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    sites
}

/// Ranks of `x` from 1, ties given their average rank.
fn ranks(x: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation: Pearson's of the ranks (ties averaged). `None` for fewer than
/// two pairs or a constant side.
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_known_rankings() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 35.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // d = (0, 2, −1, −1): 1 − 6·6 / (4·15) = 0.4
        let r = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 4.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.4).abs() < 1e-12, "{r}");
        // ties: ranks (1.5, 1.5, 3) against (1, 2, 3): Pearson 0.866…
        let r = spearman(&[5.0, 5.0, 7.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 3f64.sqrt() / 2.0).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn agreement_by_sign_and_factor() {
        let s = |attributed, effect| VerifiedSite {
            site: Path::root(),
            label: String::new(),
            attributed,
            effect,
        };
        assert_eq!(s(1.0, 1.5).agreement(10.0), Agreement::Agrees);
        assert_eq!(s(1.0, 2.5).agreement(10.0), Agreement::Magnitude);
        assert_eq!(s(1.0, 0.4).agreement(10.0), Agreement::Magnitude);
        assert_eq!(s(1.0, -0.5).agreement(10.0), Agreement::Sign);
        assert_eq!(s(1.0, -0.05).agreement(10.0), Agreement::Magnitude);
        // both below 1 % of the target: noise either way
        assert_eq!(s(0.05, -0.05).agreement(10.0), Agreement::Agrees);
    }
}

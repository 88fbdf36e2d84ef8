//! The view model of every heatmap (GUI and `--png` alike): labelled rows and columns,
//! values (absent cells are `None`), the path each cell leads to, and the colour maps.

use crate::engine::{Expansion, NodeKind, Overview};
use crate::path::{Comp, Layout, Path, Step};

/// A labelled grid of attribution values.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub subtitle: String,
    pub row_title: String,
    pub col_title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// Row-major `rows × cols`.
    pub values: Vec<Option<f32>>,
    /// Where clicking each cell leads (`None`: not expandable / absent).
    pub targets: Vec<Option<Path>>,
}

impl Heatmap {
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    pub fn n_cols(&self) -> usize {
        self.cols.len()
    }

    pub fn get(&self, r: usize, c: usize) -> Option<f32> {
        self.values.get(r * self.cols.len() + c).copied().flatten()
    }

    pub fn target(&self, r: usize, c: usize) -> Option<&Path> {
        self.targets
            .get(r * self.cols.len() + c)
            .and_then(Option::as_ref)
    }

    /// Largest absolute value (the symmetric colour range).
    pub fn max_abs(&self) -> f32 {
        self.values
            .iter()
            .flatten()
            .fold(0.0f32, |m, v| m.max(v.abs()))
    }

    pub fn row_sums(&self) -> Vec<f32> {
        (0..self.n_rows())
            .map(|r| (0..self.n_cols()).filter_map(|c| self.get(r, c)).sum())
            .collect()
    }

    pub fn col_sums(&self) -> Vec<f32> {
        (0..self.n_cols())
            .map(|c| (0..self.n_rows()).filter_map(|r| self.get(r, c)).sum())
            .collect()
    }
}

/// Colour maps, both centred on zero with a symmetric range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ColorMap {
    /// Blue (negative) – white – red (positive).
    #[default]
    BlueWhiteRed,
    /// The seed notebook's red – yellow – green.
    RedYellowGreen,
}

fn lerp(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn ramp(stops: &[[f32; 3]], t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f32;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let c = lerp(stops[i], stops[i + 1], t - i as f32);
    [c[0] as u8, c[1] as u8, c[2] as u8]
}

impl ColorMap {
    /// Colour of `v` on the range `[-max_abs, max_abs]`.
    pub fn color(self, v: f32, max_abs: f32) -> [u8; 3] {
        let t = if max_abs > 0.0 {
            0.5 + 0.5 * (v / max_abs)
        } else {
            0.5
        };
        match self {
            // ColorBrewer RdBu (reversed so positive is red)
            Self::BlueWhiteRed => ramp(
                &[
                    [5.0, 48.0, 97.0],
                    [67.0, 147.0, 195.0],
                    [247.0, 247.0, 247.0],
                    [214.0, 96.0, 77.0],
                    [103.0, 0.0, 31.0],
                ],
                t,
            ),
            // ColorBrewer RdYlGn
            Self::RedYellowGreen => ramp(
                &[
                    [165.0, 0.0, 38.0],
                    [244.0, 109.0, 67.0],
                    [255.0, 255.0, 191.0],
                    [102.0, 189.0, 99.0],
                    [0.0, 104.0, 55.0],
                ],
                t,
            ),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::BlueWhiteRed => "blue–white–red",
            Self::RedYellowGreen => "red–yellow–green",
        }
    }
}

/// Token labels `"{p}: {token}"` for column headers.
pub fn position_labels(token_strs: &[String]) -> Vec<String> {
    token_strs
        .iter()
        .enumerate()
        .map(|(p, t)| format!("{p}:{}", printable(t)))
        .collect()
}

/// Make whitespace and control characters visible in a token label.
pub fn printable(t: &str) -> String {
    t.replace('\n', "\\n")
        .replace('\t', "\\t")
        .replace(' ', "·")
}

/// The title of a view: model, path (or `root`), target.
pub fn view_title(model: &str, path: &Path, target: &str) -> String {
    let where_ = if path.is_root() {
        "root".to_string()
    } else {
        path.to_string()
    };
    format!("{model} · {where_} · {target}")
}

/// The root view: rows = layers; columns = heads, the attention bias, the MLP.
pub fn root_heatmap(ov: &Overview, title: &str) -> Heatmap {
    let (l_n, h_n) = (ov.head_dla.shape[0], ov.head_dla.shape[1]);
    let mut cols: Vec<String> = (0..h_n).map(|h| format!("H{h}")).collect();
    cols.push("attn bias".into());
    cols.push("MLP".into());
    let mut values = Vec::new();
    let mut targets = Vec::new();
    for l in 0..l_n {
        let attn = Path::root().child(Step::Comp(Comp::Attn(l)));
        for h in 0..h_n {
            values.push(Some(ov.head_dla.at(&[l, h])));
            targets.push(Some(attn.child(Step::Head(h))));
        }
        values.push(Some(ov.attn_bias.data[l]));
        targets.push(Some(attn.child(Step::Bias)));
        values.push(ov.layout.index(Comp::Mlp(l)).map(|i| ov.components.data[i]));
        targets.push(Some(Path::root().child(Step::Comp(Comp::Mlp(l)))));
    }
    Heatmap {
        title: title.to_string(),
        subtitle: if ov.layout.has_pos {
            format!(
                "target {:.4} = embed {:.4} + pos {:.4} + Σ cells",
                ov.target_value, ov.components.data[0], ov.components.data[1]
            )
        } else {
            format!(
                "target {:.4} = embed {:.4} + Σ cells",
                ov.target_value, ov.components.data[0]
            )
        },
        row_title: "layer".into(),
        col_title: "head".into(),
        rows: (0..l_n).map(|l| format!("L{l}")).collect(),
        cols,
        values,
        targets,
    }
}

/// The heatmap of one expanded node.
///
/// - head: rows = source components, columns = source positions;
/// - attention layer: one row of heads;
/// - root / MLP (a residual): rows = `embed·pos` (`embed` without learned positions), `L0`,
///   `L1`, …; columns = attn, mlp
///   (`embed` and `pos` sit in the first row);
/// - a leaf: a single cell.
pub fn node_heatmap(
    ex: &Expansion,
    path: &Path,
    token_strs: &[String],
    layout: Layout,
    title: &str,
) -> Heatmap {
    let subtitle = format!(
        "value {:.4} = Σ children {:.4} + bias {:.4} (Δ {:.2e})",
        ex.value,
        ex.value - ex.bias - ex.residual,
        ex.bias,
        ex.residual
    );
    let mut hm = Heatmap {
        title: title.to_string(),
        subtitle,
        row_title: String::new(),
        col_title: String::new(),
        rows: Vec::new(),
        cols: Vec::new(),
        values: Vec::new(),
        targets: Vec::new(),
    };
    match ex.kind {
        NodeKind::Head { layer, .. } => {
            let n_c = layout.pre(layer);
            hm.row_title = "source component".into();
            hm.col_title = "source position".into();
            hm.rows = (0..n_c).map(|c| layout.comp(c).to_string()).collect();
            hm.cols = position_labels(
                &token_strs[..=ex.position.min(token_strs.len().saturating_sub(1))],
            );
            let n_p = hm.cols.len();
            hm.values = vec![None; n_c * n_p];
            hm.targets = vec![None; n_c * n_p];
            for ch in &ex.children {
                if let Step::Source { pos, comp } = ch.parsed
                    && pos < n_p
                    && let Some(c) = layout.index(comp)
                {
                    let i = c * n_p + pos;
                    hm.values[i] = Some(ch.value);
                    hm.targets[i] = Some(path.child(ch.parsed));
                }
            }
        }
        NodeKind::Component {
            comp: crate::engine::CompLabel(Comp::Attn(_)),
        } => {
            hm.row_title = "layer".into();
            hm.col_title = "head".into();
            hm.rows = vec![format!("@{}", ex.position)];
            hm.cols = ex.children.iter().map(|c| c.step.clone()).collect();
            hm.values = ex.children.iter().map(|c| Some(c.value)).collect();
            hm.targets = ex
                .children
                .iter()
                .map(|c| Some(path.child(c.parsed)))
                .collect();
            hm.cols.push("bias".into());
            hm.values.push(Some(ex.bias));
            hm.targets.push(Some(path.child(Step::Bias)));
        }
        NodeKind::Root
        | NodeKind::Component {
            comp: crate::engine::CompLabel(Comp::Mlp(_)),
        } => {
            hm.row_title = "layer".into();
            hm.col_title = "component".into();
            let (first_row, mlp_col) = if layout.has_pos {
                ("embed·pos", "mlp (pos)")
            } else {
                ("embed", "mlp")
            };
            hm.cols = vec!["attn (embed)".into(), mlp_col.into()];
            hm.rows = std::iter::once(first_row.to_string())
                .chain((0..layout.n_layers).map(|l| format!("L{l}")))
                .collect();
            let n = hm.rows.len() * 2;
            hm.values = vec![None; n];
            hm.targets = vec![None; n];
            for ch in &ex.children {
                if let Step::Comp(c) = ch.parsed {
                    let i = match c {
                        Comp::Embed => 0,
                        Comp::Pos => 1,
                        Comp::Attn(l) => 2 * (l + 1),
                        Comp::Mlp(l) => 2 * (l + 1) + 1,
                    };
                    hm.values[i] = Some(ch.value);
                    hm.targets[i] = Some(path.child(ch.parsed));
                }
            }
            // drop layers that are entirely absent (downstream of an MLP)
            while hm.rows.len() > 1 && hm.values[hm.values.len() - 2..].iter().all(Option::is_none)
            {
                hm.rows.pop();
                hm.values.truncate(hm.values.len() - 2);
                hm.targets.truncate(hm.targets.len() - 2);
            }
        }
        NodeKind::Component { .. } | NodeKind::Bias => {
            hm.rows = vec![ex.path.clone()];
            hm.cols = vec![format!("@{}", ex.position)];
            hm.values = vec![Some(ex.value)];
            hm.targets = vec![None];
        }
    }
    hm
}

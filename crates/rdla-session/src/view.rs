//! What the user looks at: the heatmap of a node (its rows, columns, values and where each
//! cell leads), built once per node and computation and shared by the window, `--png` and
//! the CSV/JSON exports.

use rdla_attrib::{
    ChildLayout, Comp, Expansion, Layout, Overview, Path, Side, Step, Units, Versus,
};

use crate::heatmap::{Heatmap, printable};

/// Token labels `"{p}:{token}"` for column headers.
fn position_labels(token_strs: &[String]) -> Vec<String> {
    token_strs
        .iter()
        .enumerate()
        .map(|(p, t)| format!("{p}:{}", printable(t)))
        .collect()
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
    let hm = layer_grid(l_n, h_n, title, |l, cell| match cell {
        LayerCell::Head(h) => Some(ov.head_dla.at(&[l, h])),
        LayerCell::Bias => Some(ov.attn_bias.data[l]),
        LayerCell::Mlp => ov.layout.index(Comp::Mlp(l)).map(|i| ov.components.data[i]),
    });
    Heatmap {
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
        ..hm
    }
}

/// A cell of a layer's row in the root's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCell {
    Head(usize),
    Bias,
    Mlp,
}

impl LayerCell {
    /// The node the cell of layer `l` stands for.
    pub fn path(self, l: usize) -> Path {
        let attn = Path::root().child(Step::Comp(Comp::Attn(l)));
        match self {
            Self::Head(h) => attn.child(Step::Head(h)),
            Self::Bias => attn.child(Step::Bias),
            Self::Mlp => Path::root().child(Step::Comp(Comp::Mlp(l))),
        }
    }
}

/// The root's layout (rows = layers; columns = heads, the attention bias, the MLP), each cell
/// `value(layer, cell)` and leading to its node: the root view and a census's mean view.
pub fn layer_grid(
    l_n: usize,
    h_n: usize,
    title: &str,
    mut value: impl FnMut(usize, LayerCell) -> Option<f32>,
) -> Heatmap {
    let mut cells: Vec<LayerCell> = (0..h_n).map(LayerCell::Head).collect();
    cells.extend([LayerCell::Bias, LayerCell::Mlp]);
    let mut values = Vec::new();
    let mut targets = Vec::new();
    for l in 0..l_n {
        for &c in &cells {
            values.push(value(l, c));
            targets.push(Some(c.path(l)));
        }
    }
    let mut cols: Vec<String> = (0..h_n).map(|h| format!("H{h}")).collect();
    cols.push("attn bias".into());
    cols.push("MLP".into());
    Heatmap {
        row_title: "layer".into(),
        col_title: "head".into(),
        rows: (0..l_n).map(|l| format!("L{l}")).collect(),
        cols,
        values,
        targets,
        ..Heatmap::empty(title, Units::Logit)
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
    let subtitle = if ex.table.is_some() {
        format!(
            "score {:.4} = Σ cells (query components × key components) (Δ {:.2e}); rows add up to the q side, columns to the k side",
            ex.value, ex.residual
        )
    } else {
        format!(
            "value {:.4} = Σ children {:.4} + bias {:.4} (Δ {:.2e})",
            ex.value,
            ex.value - ex.bias - ex.residual,
            ex.bias,
            ex.residual
        )
    };
    let mut hm = Heatmap {
        subtitle,
        ..Heatmap::empty(title, ex.units)
    };
    if let Some(t) = &ex.table {
        // a score: query components (rows) × key components (columns)
        hm.row_title = format!("query @{}", ex.position);
        hm.col_title = "key".into();
        hm.rows = t.rows.iter().map(ToString::to_string).collect();
        hm.cols = t.cols.iter().map(ToString::to_string).collect();
        hm.column_bars = true;
        hm.row_bars = true;
        hm.shared_targets = true;
        let side = |s: Side, step: Step| {
            matches!(step, Step::Comp(_)).then(|| path.child(Step::Side(s)).child(step))
        };
        let single_key = matches!(
            path.steps().last(),
            Some(Step::Score {
                versus: Versus::Nothing,
                ..
            })
        );
        // row labels open the query side's component, column labels the key side's (a
        // contrast's key side has no single component per column: its side)
        let whole = |s: Side| Some(path.child(Step::Side(s)));
        hm.row_targets = t
            .rows
            .iter()
            .map(|&r| side(Side::Query, r).or_else(|| whole(Side::Query)))
            .collect();
        hm.col_targets = t
            .cols
            .iter()
            .map(|&c| {
                single_key
                    .then(|| side(Side::Key, c))
                    .flatten()
                    .or_else(|| whole(Side::Key))
            })
            .collect();
        for (row, vals) in t.rows.iter().zip(&t.values) {
            for (col, v) in t.cols.iter().zip(vals) {
                hm.values.push(Some(*v));
                // a cell leads to its query-side component (the bias row: to its key-side
                // component, where that is one node)
                let to = side(Side::Query, *row)
                    .or_else(|| single_key.then(|| side(Side::Key, *col)).flatten());
                hm.targets.push(to);
            }
        }
        return hm;
    }
    match ex.layout {
        ChildLayout::Sources { layer } => {
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
            hm.column_bars = true;
            for ch in &ex.children {
                if let Step::Source { pos, comp } = ch.step
                    && pos < n_p
                    && let Some(c) = layout.index(comp)
                {
                    let i = c * n_p + pos;
                    hm.values[i] = Some(ch.value);
                    hm.targets[i] = Some(path.child(ch.step));
                }
            }
        }
        ChildLayout::Heads => {
            hm.row_title = "layer".into();
            hm.col_title = "head".into();
            hm.rows = vec![format!("@{}", ex.position)];
            hm.cols = ex.children.iter().map(|c| c.step.to_string()).collect();
            hm.values = ex.children.iter().map(|c| Some(c.value)).collect();
            hm.targets = ex
                .children
                .iter()
                .map(|c| Some(path.child(c.step)))
                .collect();
            hm.cols.push("bias".into());
            hm.values.push(Some(ex.bias));
            hm.targets.push(Some(path.child(Step::Bias)));
        }
        ChildLayout::Keys { layer } => {
            // a contrast's key side: components × the keys it compares
            let n_c = layout.pre(layer);
            let mut keys = ex.source_positions();
            keys.dedup();
            hm.row_title = "key component".into();
            hm.col_title = "key position".into();
            hm.rows = (0..n_c).map(|c| layout.comp(c).to_string()).collect();
            hm.cols = keys
                .iter()
                .map(|&p| {
                    format!(
                        "{p}:{}",
                        printable(token_strs.get(p).map_or("", String::as_str))
                    )
                })
                .collect();
            let n_p = keys.len();
            hm.values = vec![None; n_c * n_p];
            hm.targets = vec![None; n_c * n_p];
            hm.column_bars = true;
            for ch in &ex.children {
                if let Step::Source { pos, comp } = ch.step
                    && let (Some(k), Some(c)) =
                        (keys.iter().position(|&p| p == pos), layout.index(comp))
                {
                    hm.values[c * n_p + k] = Some(ch.value);
                    hm.targets[c * n_p + k] = Some(path.child(ch.step));
                }
            }
        }
        ChildLayout::Components => {
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
                if let Step::Comp(c) = ch.step {
                    let i = match c {
                        Comp::Embed => 0,
                        Comp::Pos => 1,
                        Comp::Attn(l) => 2 * (l + 1),
                        Comp::Mlp(l) => 2 * (l + 1) + 1,
                    };
                    hm.values[i] = Some(ch.value);
                    hm.targets[i] = Some(path.child(ch.step));
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
        ChildLayout::Table | ChildLayout::Cell => {
            hm.rows = vec![ex.path.to_string()];
            hm.cols = vec![format!("@{}", ex.position)];
            hm.values = vec![Some(ex.value)];
            hm.targets = vec![None];
        }
    }
    hm
}

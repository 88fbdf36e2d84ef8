//! The view model of every heatmap (GUI and `--png` alike): labelled rows and columns,
//! values (absent cells are `None`), the path each cell leads to, the optional attention strip
//! above the columns and bars below them, and the colour maps.

use rdla_attrib::{Path, Units};

/// A labelled grid of attribution values. Its serde form leaves out the cells (`values`,
/// `targets`): a result file keeps them in a Parquet table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Heatmap {
    pub title: String,
    pub subtitle: String,
    pub row_title: String,
    pub col_title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// Row-major `rows × cols`.
    #[serde(skip)]
    pub values: Vec<Option<f32>>,
    /// Where clicking each cell leads (`None`: not expandable / absent).
    #[serde(skip)]
    pub targets: Vec<Option<Path>>,
    /// Several cells lead to the same path (a score's table: every cell of a row leads to its
    /// query-side component); their accessible labels then name the cell too.
    pub shared_targets: bool,
    /// A strip above the columns (a head's attention pattern over source positions), with
    /// its label.
    pub strip: Option<(String, Vec<f32>)>,
    /// Where clicking each cell of the strip leads (a head's strip: the score to that key).
    pub strip_targets: Vec<Path>,
    /// Draw the column sums as bars under the columns ("contribution by source position").
    pub column_bars: bool,
    /// Draw the row sums as bars beside the rows (a score's query side).
    pub row_bars: bool,
    /// What the values are measured in.
    pub units: Units,
    /// Where clicking a row label leads (empty: nowhere); a score's table: the query side's
    /// component.
    pub row_targets: Vec<Option<Path>>,
    /// Where clicking a column label leads (empty: nowhere); a score's table: the key side's
    /// component (a contrast's: its key side).
    pub col_targets: Vec<Option<Path>>,
    /// The colour range when it is not this grid's own `max_abs` (a window of a long
    /// heatmap keeps the whole heatmap's, so colours compare across windows).
    pub range: Option<f32>,
    /// A contrast's heatmap (`values` are this prompt's minus the contrast prompt's): each
    /// cell's two values, this prompt's and the contrast prompt's, for its tooltip. Empty
    /// for a plain heatmap.
    pub contrast: Vec<Option<(f32, f32)>>,
    /// A census's mean heatmap: each cell's 95 % interval of the mean, for its tooltip.
    /// Empty otherwise.
    pub intervals: Vec<Option<(f32, f32)>>,
}

impl Heatmap {
    /// A heatmap titled `title` in `units`, with nothing in it yet (no rows, strip, bars or
    /// targets): what a view fills in.
    pub fn empty(title: &str, units: Units) -> Self {
        Self {
            title: title.to_string(),
            subtitle: String::new(),
            row_title: String::new(),
            col_title: String::new(),
            rows: Vec::new(),
            cols: Vec::new(),
            values: Vec::new(),
            targets: Vec::new(),
            shared_targets: false,
            strip: None,
            strip_targets: Vec::new(),
            column_bars: false,
            row_bars: false,
            units,
            row_targets: Vec::new(),
            col_targets: Vec::new(),
            range: None,
            contrast: Vec::new(),
            intervals: Vec::new(),
        }
    }

    /// The caption of the bars under the columns.
    pub fn bars_caption(&self) -> &'static str {
        if self.units == Units::Score {
            "contribution of each key-side column (Σ over the column)"
        } else {
            crate::png::BARS_CAPTION
        }
    }

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

    /// Largest absolute value (the symmetric colour range); NaN values are skipped here (they
    /// are drawn as missing and reported by the completeness line).
    pub fn max_abs(&self) -> f32 {
        max_abs(self.values.iter().flatten().copied())
    }

    /// The symmetric colour range: the whole heatmap's largest |value| (see [`Heatmap::range`]).
    pub fn color_range(&self) -> f32 {
        self.range.unwrap_or_else(|| self.max_abs())
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

    /// The same heatmap restricted to the columns `range` (clamped to the heatmap): values,
    /// targets, labels, the strip and its targets. A long prompt's head view has one column per
    /// source position; the explorer shows a window of them at a time.
    pub fn columns(&self, range: std::ops::Range<usize>) -> Self {
        let n = self.n_cols();
        let (a, b) = (range.start.min(n), range.end.min(n).max(range.start.min(n)));
        let pick = |v: &[Option<f32>]| -> Vec<Option<f32>> {
            (0..self.n_rows())
                .flat_map(|r| v[r * n + a..r * n + b].iter().copied())
                .collect()
        };
        let targets = (0..self.n_rows())
            .flat_map(|r| self.targets[r * n + a..r * n + b].iter().cloned())
            .collect();
        Self {
            cols: self.cols[a..b].to_vec(),
            values: pick(&self.values),
            targets,
            strip: self
                .strip
                .as_ref()
                .map(|(label, v)| (label.clone(), v.get(a..b).unwrap_or_default().to_vec())),
            strip_targets: self.strip_targets.get(a..b).unwrap_or_default().to_vec(),
            col_targets: self.col_targets.get(a..b).unwrap_or_default().to_vec(),
            range: Some(self.color_range()),
            ..self.clone()
        }
    }

    /// The `k` columns with the largest |column sum|, largest first (NaN sums last).
    pub fn top_columns(&self, k: usize) -> Vec<(usize, f32)> {
        let mut sums: Vec<(usize, f32)> = self.col_sums().into_iter().enumerate().collect();
        sums.sort_by(|x, y| {
            let (a, b) = (x.1.abs(), y.1.abs());
            b.partial_cmp(&a)
                .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
                .then(x.0.cmp(&y.0))
        });
        sums.truncate(k);
        sums
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

/// The largest `|v|` of finite values (0 when there are none).
pub fn max_abs(values: impl IntoIterator<Item = f32>) -> f32 {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Make whitespace and control characters visible in a token label.
pub fn printable(t: &str) -> String {
    t.replace('\n', "\\n")
        .replace('\t', "\\t")
        .replace(' ', "·")
}

#[cfg(test)]
mod tests {

    use super::*;

    fn three_by_five() -> Heatmap {
        let cols: Vec<String> = (0..5).map(|c| format!("{c}")).collect();
        Heatmap {
            title: "t".into(),
            subtitle: String::new(),
            row_title: String::new(),
            col_title: String::new(),
            rows: vec!["a".into(), "b".into(), "c".into()],
            values: (0..15).map(|i| Some(i as f32 - 7.0)).collect(),
            targets: (0..15)
                .map(|i| Some(Path::parse(&format!("L0.attn/H{i}")).unwrap()))
                .collect(),
            shared_targets: false,
            strip: Some(("A".into(), vec![0.1, 0.2, 0.3, 0.2, 0.2])),
            strip_targets: (0..5)
                .map(|k| Path::parse(&format!("L0.attn/H0/qk:{k}")).unwrap())
                .collect(),
            column_bars: true,
            row_bars: false,
            units: Units::Logit,
            cols,
            row_targets: Vec::new(),
            col_targets: Vec::new(),
            range: None,
            contrast: Vec::new(),
            intervals: Vec::new(),
        }
    }

    /// A window of a long heatmap keeps the whole heatmap's colour range (each window was
    /// scaled to its own, so colours did not compare across windows).
    #[test]
    fn a_window_keeps_the_whole_colour_range() {
        let hm = three_by_five();
        let w = hm.columns(2..4);
        assert!(
            w.max_abs() < hm.max_abs(),
            "{} {}",
            w.max_abs(),
            hm.max_abs()
        );
        assert_eq!(w.color_range().to_bits(), hm.max_abs().to_bits());
        assert_eq!(
            w.columns(0..1).color_range().to_bits(),
            hm.max_abs().to_bits()
        );
    }

    #[test]
    fn a_column_window_keeps_values_targets_and_the_strip_aligned() {
        let hm = three_by_five();
        let w = hm.columns(1..3);
        assert_eq!(w.cols, ["1", "2"]);
        for r in 0..3 {
            for c in 0..2 {
                assert_eq!(w.get(r, c), hm.get(r, c + 1));
                assert_eq!(w.target(r, c), hm.target(r, c + 1));
            }
        }
        assert_eq!(w.strip.as_ref().unwrap().1, [0.2, 0.3]);
        assert_eq!(w.strip_targets[0].to_string(), "L0.attn/H0/qk:1");
        // clamped, never out of bounds
        assert_eq!(hm.columns(4..99).n_cols(), 1);
        assert_eq!(hm.columns(7..9).n_cols(), 0);
    }

    #[test]
    fn top_columns_rank_by_absolute_sum() {
        // column sums: -14+... : c0 = -7-2+3 = -6, c1 = -3, c2 = 0, c3 = 3, c4 = 6
        let top = three_by_five().top_columns(3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 4, 1]);
        assert!((top[0].1 + 6.0).abs() < 1e-6);
    }
}

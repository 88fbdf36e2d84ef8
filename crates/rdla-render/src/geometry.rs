//! The one layout of a heatmap view, shared by the window (egui painter) and the PNG renderer:
//! where the title, the column and row labels, the attention strip, the grid, the marginal
//! sums, the bars under the columns and the colour bar go. Both renderers only draw into the
//! rectangles computed here, so what the window shows is what the PNG contains.
//!
//! Units are logical points; the PNG renderer multiplies by its pixel scale.

use crate::heatmap::Heatmap;

/// An axis-aligned rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rect {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl Rect {
    pub fn new(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self { x, y, w, h }
    }

    pub fn right(&self) -> f32 {
        self.x + self.w
    }

    pub fn bottom(&self) -> f32 {
        self.y + self.h
    }

    pub fn center(&self) -> (f32, f32) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
}

/// Font sizes (points) both renderers use.
pub const LABEL_PT: f32 = 11.0;
pub const TITLE_PT: f32 = 16.0;
pub const SUBTITLE_PT: f32 = 12.0;
pub const VALUE_PT: f32 = 10.0;

/// Cells at least this large show their value as text.
pub const VALUE_TEXT_MIN: (f32, f32) = (40.0, 14.0);

/// How much room the view may take.
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    /// Available width and height for everything.
    pub width: f32,
    pub height: f32,
    /// Draw the title and subtitle above the grid (the PNG; the window shows breadcrumbs).
    pub header: bool,
}

/// The computed layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub size: (f32, f32),
    pub title: Option<Rect>,
    pub subtitle: Option<Rect>,
    /// The column axis title and the row axis title (rotated).
    pub col_title: Rect,
    pub row_title: Rect,
    /// Column labels (rotated, bottom-aligned to the strip or grid) and row labels (right-aligned).
    pub col_labels: Rect,
    pub row_labels: Rect,
    pub strip: Option<Rect>,
    pub grid: Rect,
    pub cell: (f32, f32),
    pub row_sums: Rect,
    pub col_sums: Rect,
    pub bars: Option<Rect>,
    /// The row sums as horizontal bars right of the row sums (a score's query side).
    pub row_bars: Option<Rect>,
    /// The caption under the bars.
    pub bars_caption: Option<Rect>,
    /// Where the "row sum" heading goes (above the sums column, level with the top of the
    /// strip or the grid).
    pub row_sums_heading: Rect,
    pub colour_bar: Rect,
    /// Show every `step`-th row / column label when cells are smaller than a text line.
    pub row_step: usize,
    pub col_step: usize,
    pub n_rows: usize,
    pub n_cols: usize,
}

const GAP: f32 = 4.0;
/// The shortest row: one line of label text.
const ROW_MIN_H: f32 = LABEL_PT + 2.0;
const SUMS_W: f32 = 58.0;
const BAR_W: f32 = 14.0;
const BAR_TICKS_W: f32 = 56.0;
const STRIP_H: f32 = 16.0;
const BARS_H: f32 = 90.0;
const ROW_BARS_W: f32 = 80.0;
const MAX_ROW_LABEL: f32 = 180.0;
const MAX_COL_LABEL: f32 = 140.0;

impl Geometry {
    /// Lay out `hm` within `fit`, measuring label text with `measure(text, points) -> width`.
    ///
    /// Long on purpose: one top-to-bottom pass that places each element below or beside the
    /// previous one; split up, the running `y` and the shared widths would have to be threaded
    /// through every piece.
    pub fn new(hm: &Heatmap, fit: Fit, measure: &dyn Fn(&str, f32) -> f32) -> Self {
        let (n_r, n_c) = (hm.n_rows().max(1), hm.n_cols().max(1));
        let label_w = |s: &str| measure(s, LABEL_PT);
        let line = LABEL_PT * 1.4;
        // row labels, the sums row's label and the strip's label share the left margin
        let mut row_w = hm
            .rows
            .iter()
            .map(|r| label_w(r))
            .fold(0.0f32, |m, w| m.max(w));
        row_w = row_w.max(label_w("col sum"));
        if let Some((label, _)) = &hm.strip {
            row_w = row_w.max(label_w(label));
        }
        if hm.column_bars {
            row_w = row_w.max(label_w("+0.000"));
        }
        let row_w = row_w.min(MAX_ROW_LABEL) + 8.0;
        let col_h = hm
            .cols
            .iter()
            .map(|c| label_w(c))
            .fold(0.0f32, |m, w| m.max(w))
            .min(MAX_COL_LABEL)
            + 8.0;

        let margin = if fit.header { 12.0 } else { 0.0 };
        let (title, subtitle, mut y) = if fit.header {
            let t = Rect::new(
                margin,
                margin / 2.0,
                fit.width - 2.0 * margin,
                TITLE_PT * 1.4,
            );
            let s = Rect::new(margin, t.bottom(), t.w, SUBTITLE_PT * 1.4);
            (Some(t), Some(s), s.bottom() + GAP)
        } else {
            (None, None, 0.0)
        };
        let col_title = Rect::new(0.0, y, 0.0, line);
        y += line;
        let left = margin + line; // room for the rotated row-axis title
        let grid_x = left + row_w;
        let col_labels_y = y;
        y += col_h;
        let strip = hm.strip.as_ref().map(|_| {
            let r = Rect::new(grid_x, y, 0.0, STRIP_H);
            y += STRIP_H + 2.0;
            r
        });
        let row_bars_w = if hm.row_bars { ROW_BARS_W + GAP } else { 0.0 };
        let fixed_w = grid_x + GAP + SUMS_W + row_bars_w + BAR_W + BAR_TICKS_W + margin;
        let bars_h = if hm.column_bars {
            GAP + BARS_H + line
        } else {
            0.0
        };
        let fixed_h = y + bars_h + line + margin;
        let cell_w = ((fit.width - fixed_w) / n_c as f32).clamp(4.0, 56.0);
        // every row keeps its label: a row is never shorter than a line of label text (a tall
        // grid scrolls in the window and makes a taller PNG)
        let cell_h = ((fit.height - fixed_h) / (n_r as f32 + 1.0)).clamp(ROW_MIN_H, 30.0);
        let grid = Rect::new(grid_x, y, cell_w * n_c as f32, cell_h * n_r as f32);
        let col_sums = Rect::new(grid_x, grid.bottom() + 2.0, grid.w, cell_h);
        let bars = hm
            .column_bars
            .then(|| Rect::new(grid_x, col_sums.bottom() + GAP, grid.w, BARS_H));
        let bars_caption = bars.map(|b| Rect::new(b.x, b.bottom() + 2.0, b.w, line));
        let row_sums = Rect::new(grid.right() + GAP, grid.y, SUMS_W, grid.h);
        let row_bars = hm
            .row_bars
            .then(|| Rect::new(row_sums.right() + GAP, grid.y, ROW_BARS_W, grid.h));
        let colour_bar = Rect::new(
            row_bars.map_or(row_sums.right(), |b| b.right() + GAP),
            grid.y,
            BAR_W,
            grid.h.max(80.0),
        );
        let width = colour_bar.right() + BAR_TICKS_W + margin;
        // the units caption sits under the colour bar
        let bottom = bars_caption
            .map_or(col_sums.bottom(), |b| b.bottom())
            .max(colour_bar.bottom() + line);
        let height = bottom + margin;
        let strip = strip.map(|s| Rect { w: grid.w, ..s });
        let col_title = Rect {
            x: grid_x,
            w: grid.w,
            ..col_title
        };
        Self {
            size: (width.max(fit.width.min(width)), height),
            title,
            subtitle,
            col_title,
            row_title: Rect::new(margin, grid.y, line, grid.h),
            col_labels: Rect::new(grid_x, col_labels_y, grid.w, col_h),
            row_labels: Rect::new(left, grid.y, row_w - GAP, grid.h),
            strip,
            grid,
            cell: (cell_w, cell_h),
            row_sums,
            col_sums,
            bars,
            row_bars,
            bars_caption,
            row_sums_heading: Rect::new(
                row_sums.x,
                strip.map_or(grid.y, |s| s.y) - line,
                SUMS_W,
                line,
            ),
            colour_bar,
            row_step: ((LABEL_PT / cell_h).ceil() as usize).max(1),
            col_step: ((LABEL_PT * 1.1 / cell_w).ceil() as usize).max(1),
            n_rows: hm.n_rows(),
            n_cols: hm.n_cols(),
        }
    }

    pub fn cell_rect(&self, r: usize, c: usize) -> Rect {
        Rect::new(
            self.grid.x + c as f32 * self.cell.0,
            self.grid.y + r as f32 * self.cell.1,
            self.cell.0,
            self.cell.1,
        )
    }

    /// The cell of the column-sums row under column `c`.
    pub fn col_sum_rect(&self, c: usize) -> Rect {
        Rect::new(
            self.grid.x + c as f32 * self.cell.0,
            self.col_sums.y,
            self.cell.0,
            self.col_sums.h,
        )
    }

    /// The strip cell above column `c`.
    pub fn strip_rect(&self, c: usize) -> Option<Rect> {
        self.strip
            .map(|s| Rect::new(s.x + c as f32 * self.cell.0, s.y, self.cell.0, s.h - 2.0))
    }

    /// The bar of column `c` for value `v` on the symmetric range `max`: it grows up from the
    /// middle line for positive values and down for negative ones.
    pub fn bar_rect(&self, c: usize, v: f32, max: f32) -> Option<Rect> {
        let b = self.bars?;
        let mid = b.y + b.h / 2.0;
        let frac = if max > 0.0 && v.is_finite() {
            (v / max).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let h = frac.abs() * b.h / 2.0;
        let x = b.x + c as f32 * self.cell.0 + self.cell.0 * 0.1;
        let w = self.cell.0 * 0.8;
        Some(if frac >= 0.0 {
            Rect::new(x, mid - h, w, h)
        } else {
            Rect::new(x, mid, w, h)
        })
    }

    /// The horizontal bar of row `r` for value `v` on the symmetric range `max`: right of the
    /// middle line for positive values, left for negative ones.
    pub fn row_bar_rect(&self, r: usize, v: f32, max: f32) -> Option<Rect> {
        let b = self.row_bars?;
        let mid = b.x + b.w / 2.0;
        let frac = if max > 0.0 && v.is_finite() {
            (v / max).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let w = frac.abs() * b.w / 2.0;
        let y = b.y + r as f32 * self.cell.1 + self.cell.1 * 0.1;
        let h = self.cell.1 * 0.8;
        Some(if frac >= 0.0 {
            Rect::new(mid, y, w, h)
        } else {
            Rect::new(mid - w, y, w, h)
        })
    }

    /// Whether cells are large enough to print their values.
    pub fn values_fit(&self) -> bool {
        self.cell.0 >= VALUE_TEXT_MIN.0 && self.cell.1 >= VALUE_TEXT_MIN.1
    }

    /// The cell under a point, if any.
    pub fn hit(&self, x: f32, y: f32) -> Option<(usize, usize)> {
        let g = self.grid;
        if x < g.x || y < g.y || x >= g.right() || y >= g.bottom() {
            return None;
        }
        let c = ((x - g.x) / self.cell.0) as usize;
        let r = ((y - g.y) / self.cell.1) as usize;
        (r < self.n_rows && c < self.n_cols).then_some((r, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(rows: usize, cols: usize, strip: bool, bars: bool) -> Heatmap {
        Heatmap {
            title: "t".into(),
            subtitle: "s".into(),
            row_title: "row".into(),
            col_title: "col".into(),
            rows: (0..rows).map(|r| format!("r{r}")).collect(),
            cols: (0..cols).map(|c| format!("c{c}")).collect(),
            values: vec![Some(1.0); rows * cols],
            targets: vec![None; rows * cols],
            strip: strip.then(|| ("attention".into(), vec![0.5; cols])),
            strip_targets: Vec::new(),
            row_targets: Vec::new(),
            col_targets: Vec::new(),
            range: None,
            contrast: Vec::new(),
            intervals: Vec::new(),
            shared_targets: false,
            row_bars: bars,
            column_bars: bars,
            units: rdla_attrib::Units::Logit,
        }
    }

    fn measure(s: &str, pt: f32) -> f32 {
        s.chars().count() as f32 * pt * 0.6
    }

    /// Every row keeps its label however many rows there are (a 66-row head of an 8B model
    /// labelled every fourth row).
    #[test]
    fn every_row_is_labelled() {
        for rows in [3, 66, 162] {
            let g = Geometry::new(
                &hm(rows, 40, true, true),
                Fit {
                    width: 1200.0,
                    height: 700.0,
                    header: false,
                },
                &|s: &str, pt: f32| s.len() as f32 * pt * 0.6,
            );
            assert_eq!(g.row_step, 1, "{rows} rows");
            assert!(g.cell.1 >= LABEL_PT, "{rows} rows: {}", g.cell.1);
        }
    }

    /// A regression test for the PNG that cut its colour bar off below a two-row view: the
    /// whole colour bar, the bars and the sums lie inside the image.
    #[test]
    fn everything_fits_inside_the_image() {
        for (rows, cols) in [(1, 5), (2, 30), (12, 14), (40, 600)] {
            for (strip, bars) in [(false, false), (true, true)] {
                let g = Geometry::new(
                    &hm(rows, cols, strip, bars),
                    Fit {
                        width: 1400.0,
                        height: 900.0,
                        header: true,
                    },
                    &measure,
                );
                let (w, h) = g.size;
                for r in [
                    Some(g.grid),
                    Some(g.colour_bar),
                    Some(g.col_sums),
                    g.bars,
                    g.strip,
                ]
                .into_iter()
                .flatten()
                {
                    assert!(
                        r.right() <= w + 0.01 && r.bottom() <= h + 0.01,
                        "{rows}×{cols}: {r:?} outside {w}×{h}"
                    );
                }
                assert_eq!(g.strip.is_some(), strip);
                assert_eq!(g.hit(g.grid.x + 0.5, g.grid.y + 0.5), Some((0, 0)));
            }
        }
    }
}

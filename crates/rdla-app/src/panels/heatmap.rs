//! The heatmap widget: draws a [`Heatmap`] into the rectangles of the shared
//! [`Geometry`] (the same layout the PNG export uses): labels, the attention strip, the grid,
//! marginal sums, the bars under the columns and the colour bar; hover tooltips; one
//! accessible, clickable region per cell, labelled with the path it leads to.

use egui::epaint::TextShape;
use egui::{
    Align2, Color32, FontId, Painter, Pos2, Rect, Role, Sense, Stroke, StrokeKind, Ui, Vec2,
};
use rdla_session::geometry::{self, Fit, Geometry, LABEL_PT, VALUE_PT};
use rdla_session::heatmap::max_abs;
use rdla_session::png::{clip, strip_color};
use rdla_session::{ColorMap, Heatmap};

use crate::theme;

/// What happened in the widget this frame.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct HeatmapResponse {
    pub clicked: Option<(usize, usize)>,
    /// A cell of the attention strip was clicked (its column).
    pub strip_clicked: Option<usize>,
    pub hovered: Option<(usize, usize)>,
    /// A row label with a target was clicked (a score's table: its query side).
    pub row_clicked: Option<usize>,
    /// A column label with a target was clicked (a score's table: its key side).
    pub col_clicked: Option<usize>,
}

pub struct HeatmapView<'a> {
    pub hm: &'a Heatmap,
    pub colormap: ColorMap,
    pub selected: Option<(usize, usize)>,
    /// Value of the node the cells are children of ("share of parent").
    pub parent_value: f32,
}

/// Drawing state of one frame: the painter, the layout and where it sits on screen.
struct Pen<'p> {
    painter: &'p Painter,
    g: Geometry,
    origin: Pos2,
    text_color: Color32,
    weak: Color32,
    font: FontId,
}

impl Pen<'_> {
    fn rect(&self, r: geometry::Rect) -> Rect {
        Rect::from_min_size(self.origin + Vec2::new(r.x, r.y), Vec2::new(r.w, r.h))
    }

    fn text(&self, pos: Pos2, anchor: Align2, s: &str) {
        self.painter
            .text(pos, anchor, s, self.font.clone(), self.text_color);
    }

    /// Where row labels end (right-aligned there).
    fn label_right(&self) -> f32 {
        self.origin.x + self.g.row_labels.right()
    }

    fn fill(&self, r: Rect, c: [u8; 3]) {
        self.painter.rect_filled(r, 0.0, theme::rgb(c));
    }
}

impl HeatmapView<'_> {
    pub fn show(self, ui: &mut Ui) -> HeatmapResponse {
        let hm = self.hm;
        let mut out = HeatmapResponse::default();
        if hm.n_rows() == 0 || hm.n_cols() == 0 {
            ui.label("(nothing to show)");
            return out;
        }
        let text_color = ui.visuals().text_color();
        let painter = ui.painter().clone();
        let measure = |s: &str, pt: f32| {
            painter
                .layout_no_wrap(s.to_string(), FontId::proportional(pt), text_color)
                .size()
                .x
        };
        let avail = ui.available_size();
        let g = Geometry::new(
            hm,
            Fit {
                width: avail.x,
                height: avail.y,
                header: false,
            },
            &measure,
        );
        let (area, _) = ui.allocate_exact_size(Vec2::new(g.size.0, g.size.1), Sense::hover());
        let pen = Pen {
            painter: &painter,
            g,
            origin: area.min,
            text_color,
            weak: ui.visuals().weak_text_color(),
            font: FontId::proportional(LABEL_PT),
        };
        self.labels(&pen);
        self.label_targets(ui, &pen, &mut out);
        self.strip(ui, &pen, &mut out);
        self.cells(ui, &pen, &mut out);
        let col_sums = self.sums(ui, &pen);
        self.bars(&pen, &col_sums);
        self.row_bars(&pen);
        self.colour_bar(&pen);
        out
    }

    /// Axis titles, column labels (rotated) and row labels.
    fn labels(&self, pen: &Pen<'_>) {
        let (hm, g) = (self.hm, &pen.g);
        if !hm.col_title.is_empty() {
            pen.text(
                pen.rect(g.col_title).center_top(),
                Align2::CENTER_TOP,
                &hm.col_title,
            );
        }
        let labels_bottom = pen.origin.y + g.strip.map_or(g.grid.y, |s| s.y) - 4.0;
        for (c, label) in hm.cols.iter().enumerate().step_by(g.col_step) {
            let galley =
                pen.painter
                    .layout_no_wrap(clip(label, 20), pen.font.clone(), pen.text_color);
            let cx = pen.rect(g.cell_rect(0, c)).center().x;
            pen.painter.add(
                TextShape::new(
                    Pos2::new(cx - galley.size().y / 2.0, labels_bottom),
                    galley,
                    pen.text_color,
                )
                .with_angle(-std::f32::consts::FRAC_PI_2),
            );
        }
        for (r, label) in hm.rows.iter().enumerate().step_by(g.row_step) {
            let cy = pen.rect(g.cell_rect(r, 0)).center().y;
            pen.text(
                Pos2::new(pen.label_right(), cy),
                Align2::RIGHT_CENTER,
                &clip(label, 24),
            );
        }
    }

    /// Row and column labels that lead somewhere (a score's table: the query side's and the
    /// key side's components) are buttons, labelled `row {path}` / `column {path}`.
    fn label_targets(&self, ui: &Ui, pen: &Pen<'_>, out: &mut HeatmapResponse) {
        let (hm, g) = (self.hm, &pen.g);
        let id = ui.scope_id().with(("labels", &hm.title));
        let rows = hm.row_targets.iter().enumerate().take(hm.n_rows());
        for (r, target) in rows.filter_map(|(r, t)| Some((r, t.as_ref()?))) {
            let cell = pen.rect(g.cell_rect(r, 0));
            let left = pen.rect(g.row_labels).left();
            let rect = Rect::from_x_y_ranges(left..=pen.label_right(), cell.y_range());
            let resp = ui.interact(rect, id.with(("row", r)), Sense::click());
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(Role::Button, true, format!("row {target}"))
            });
            if resp.clicked() {
                out.row_clicked = Some(r);
            }
            resp.on_hover_text(format!("open {target}"));
        }
        let cols = hm.col_targets.iter().enumerate().take(hm.n_cols());
        for (c, target) in cols.filter_map(|(c, t)| Some((c, t.as_ref()?))) {
            let cell = pen.rect(g.cell_rect(0, c));
            let labels = pen.rect(g.col_labels);
            let rect = Rect::from_x_y_ranges(cell.x_range(), labels.y_range());
            let resp = ui.interact(rect, id.with(("col", c)), Sense::click());
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(Role::Button, true, format!("column {target}"))
            });
            if resp.clicked() {
                out.col_clicked = Some(c);
            }
            resp.on_hover_text(format!("open {target}"));
        }
    }

    /// The attention strip above the columns; where it has targets (a head's scores), each
    /// cell is a button.
    fn strip(&self, ui: &Ui, pen: &Pen<'_>, out: &mut HeatmapResponse) {
        let (Some((label, values)), Some(strip)) = (&self.hm.strip, pen.g.strip) else {
            return;
        };
        let id = ui.scope_id().with(("strip", &self.hm.title));
        let cy = pen.rect(strip).center().y;
        pen.text(
            Pos2::new(pen.label_right(), cy),
            Align2::RIGHT_CENTER,
            label,
        );
        for (c, &a) in values.iter().enumerate().take(self.hm.n_cols()) {
            let Some(sr) = pen.g.strip_rect(c) else {
                continue;
            };
            let r = pen.rect(sr);
            pen.fill(r, strip_color(a));
            let Some(target) = self.hm.strip_targets.get(c) else {
                continue;
            };
            let resp = ui.interact(r, id.with(c), Sense::click());
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(Role::Button, true, format!("score {target}"))
            });
            if resp.hovered() {
                ui.painter().rect_stroke(
                    r,
                    0.0,
                    Stroke::new(1.5, ui.visuals().text_color()),
                    StrokeKind::Inside,
                );
            }
            if resp.clicked() {
                out.strip_clicked = Some(c);
            }
            resp.on_hover_text(format!(
                "attention {a:.4} to {}\nclick: why this head attended here (its QK score)",
                self.hm.cols[c]
            ));
        }
    }

    /// The grid: coloured cells, values when they fit, the selection, interaction.
    fn cells(&self, ui: &Ui, pen: &Pen<'_>, out: &mut HeatmapResponse) {
        let (hm, g) = (self.hm, &pen.g);
        let range = hm.color_range();
        let id = ui
            .scope_id()
            .with(("heatmap", &hm.title, hm.n_rows(), hm.n_cols()));
        for r in 0..hm.n_rows() {
            for c in 0..hm.n_cols() {
                let cr = pen.rect(g.cell_rect(r, c));
                let Some(v) = hm.get(r, c) else {
                    pen.painter
                        .rect_filled(cr.shrink(0.5), 0.0, ui.visuals().faint_bg_color);
                    continue;
                };
                let shrink = if g.cell.0 > 6.0 { 0.5 } else { 0.0 };
                pen.fill(cr.shrink(shrink), self.colormap.color(v, range));
                if g.values_fit() {
                    value_text(pen.painter, cr, v, range);
                }
                self.cell_interaction(ui, id, (r, c), cr, v, out);
            }
        }
        if let Some((r, c)) = self.selected
            && r < hm.n_rows()
            && c < hm.n_cols()
        {
            pen.painter.rect_stroke(
                pen.rect(g.cell_rect(r, c)),
                0.0,
                Stroke::new(2.5, theme::SELECTION),
                StrokeKind::Outside,
            );
        }
    }

    /// Row sums beside the grid and the column-sums row under it; returns the column sums.
    fn sums(&self, ui: &Ui, pen: &Pen<'_>) -> Vec<f32> {
        let (hm, g) = (self.hm, &pen.g);
        pen.text(
            pen.rect(g.row_sums_heading).left_bottom(),
            Align2::LEFT_BOTTOM,
            "row sum",
        );
        let sums_x = pen.origin.x + g.row_sums.x;
        for (r, s) in hm.row_sums().iter().enumerate().step_by(g.row_step) {
            let cy = pen.rect(g.cell_rect(r, 0)).center().y;
            pen.text(
                Pos2::new(sums_x, cy),
                Align2::LEFT_CENTER,
                &format!("{s:+.3}"),
            );
        }
        let col_sums = hm.col_sums();
        let col_max = max_abs(col_sums.iter().copied());
        let sy = pen.rect(g.col_sums).center().y;
        pen.text(
            Pos2::new(pen.label_right(), sy),
            Align2::RIGHT_CENTER,
            "col sum",
        );
        let id = ui.scope_id().with(("colsums", &hm.title));
        for (c, s) in col_sums.iter().enumerate() {
            let cr = pen.rect(g.col_sum_rect(c));
            pen.fill(cr.shrink(0.5), self.colormap.color(*s, col_max));
            if g.values_fit() {
                value_text(pen.painter, cr, *s, col_max);
            }
            ui.interact(cr, id.with(c), Sense::hover())
                .on_hover_text(format!("sum over {} = {s:+.5}", hm.cols[c]));
        }
        col_sums
    }

    /// The row sums as horizontal bars beside the rows (a score's query side).
    fn row_bars(&self, pen: &Pen<'_>) {
        let Some(b) = pen.g.row_bars else {
            return;
        };
        let sums = self.hm.row_sums();
        let max = max_abs(sums.iter().copied());
        let br = pen.rect(b);
        pen.painter
            .vline(br.center().x, br.y_range(), Stroke::new(1.0, theme::AXIS));
        for (r, v) in sums.iter().enumerate() {
            if let Some(bar) = pen.g.row_bar_rect(r, *v, max) {
                pen.fill(pen.rect(bar), self.colormap.color(v.signum() * max, max));
            }
        }
    }

    /// The column sums as bars under the columns (head views).
    fn bars(&self, pen: &Pen<'_>, col_sums: &[f32]) {
        let Some(b) = pen.g.bars else {
            return;
        };
        let col_max = max_abs(col_sums.iter().copied());
        let br = pen.rect(b);
        pen.painter
            .hline(br.x_range(), br.center().y, Stroke::new(1.0, theme::AXIS));
        for (c, v) in col_sums.iter().enumerate() {
            if let Some(bar) = pen.g.bar_rect(c, *v, col_max) {
                pen.fill(
                    pen.rect(bar),
                    self.colormap.color(v.signum() * col_max, col_max),
                );
            }
        }
        let right = pen.label_right();
        pen.text(
            Pos2::new(right, br.top()),
            Align2::RIGHT_TOP,
            &format!("{col_max:+.3}"),
        );
        pen.text(
            Pos2::new(right, br.bottom()),
            Align2::RIGHT_BOTTOM,
            &format!("{:+.3}", -col_max),
        );
        if let Some(c) = pen.g.bars_caption {
            pen.painter.text(
                pen.rect(c).left_top(),
                Align2::LEFT_TOP,
                self.hm.bars_caption(),
                pen.font.clone(),
                pen.weak,
            );
        }
    }

    /// The colour bar, its ticks and the units.
    fn colour_bar(&self, pen: &Pen<'_>) {
        let range = self.hm.color_range();
        let bar = pen.rect(pen.g.colour_bar);
        let steps = 64;
        for i in 0..steps {
            let v = range * (1.0 - 2.0 * i as f32 / (steps - 1) as f32);
            let r = Rect::from_min_size(
                Pos2::new(
                    bar.left(),
                    bar.top() + bar.height() * i as f32 / steps as f32,
                ),
                Vec2::new(bar.width(), bar.height() / steps as f32 + 0.5),
            );
            pen.fill(r, self.colormap.color(v, range));
        }
        for (frac, v) in [(0.0, range), (0.5, 0.0), (1.0, -range)] {
            pen.text(
                Pos2::new(bar.right() + 3.0, bar.top() + frac * bar.height()),
                Align2::LEFT_CENTER,
                &format!("{v:+.3}"),
            );
        }
        pen.painter.text(
            Pos2::new(bar.left(), bar.bottom() + 4.0),
            Align2::LEFT_TOP,
            self.hm.units.label(),
            pen.font.clone(),
            pen.weak,
        );
    }

    /// The cell's clickable, accessible region and its tooltip.
    fn cell_interaction(
        &self,
        ui: &Ui,
        id: egui::Id,
        (r, c): (usize, usize),
        cr: Rect,
        v: f32,
        out: &mut HeatmapResponse,
    ) {
        let hm = self.hm;
        let target = hm.target(r, c);
        let resp = ui.interact(
            cr,
            id.with((r, c)),
            if target.is_some() {
                Sense::click()
            } else {
                Sense::hover()
            },
        );
        let label = match target {
            None => format!("{} {}", hm.rows[r], hm.cols[c]),
            Some(t) if hm.shared_targets => format!("{t} ({} × {})", hm.rows[r], hm.cols[c]),
            Some(t) => t.to_string(),
        };
        resp.widget_info(|| egui::WidgetInfo::labeled(Role::Button, target.is_some(), &label));
        if resp.hovered() {
            out.hovered = Some((r, c));
            ui.painter().rect_stroke(
                cr,
                0.0,
                Stroke::new(1.5, ui.visuals().text_color()),
                StrokeKind::Inside,
            );
        }
        if resp.clicked() {
            out.clicked = Some((r, c));
        }
        let share = if self.parent_value.abs() > 0.0 {
            format!("{:.1}%", 100.0 * v / self.parent_value)
        } else {
            "— (the parent is 0)".into()
        };
        resp.on_hover_ui(|ui| {
            ui.label(format!("{}: {}", hm.row_title, hm.rows[r]));
            ui.label(format!("{}: {}", hm.col_title, hm.cols[c]));
            match hm.contrast.get(r * hm.n_cols() + c).copied().flatten() {
                Some((ours, theirs)) => {
                    ui.label(format!("Δ {v:+.5} ({})", hm.units));
                    ui.label(format!("this prompt {ours:+.5}"));
                    ui.label(format!("contrast prompt {theirs:+.5}"));
                }
                None => match hm.intervals.get(r * hm.n_cols() + c).copied().flatten() {
                    Some((lo, hi)) => {
                        ui.label(format!("mean {v:+.5} ({})", hm.units));
                        ui.label(format!("95 % interval [{lo:+.5}, {hi:+.5}]"));
                    }
                    None => {
                        ui.label(format!("value {v:+.5} ({})", hm.units));
                    }
                },
            }
            ui.label(format!("share of parent {share}"));
            if let Some(t) = target {
                ui.label(format!("click: {t}"));
            }
        });
    }
}

/// The value written inside a cell, white on strong colours.
fn value_text(painter: &Painter, cell: Rect, v: f32, range: f32) {
    let color = if v.abs() > 0.6 * range {
        theme::ON_STRONG
    } else {
        theme::ON_PALE
    };
    painter.text(
        cell.center(),
        Align2::CENTER_CENTER,
        format!("{v:.2}"),
        FontId::proportional(VALUE_PT),
        color,
    );
}

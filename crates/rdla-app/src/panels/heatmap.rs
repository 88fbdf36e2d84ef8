//! The heatmap widget: a painter grid with labelled rows and columns, marginal sums, an
//! optional attention-pattern strip, a colour bar, hover tooltips and one accessible, clickable
//! region per cell (labelled with the path it leads to).

use egui::epaint::TextShape;
use egui::{Align2, Color32, FontId, Pos2, Rect, Role, Sense, Stroke, StrokeKind, Ui, Vec2};
use rdla_attrib::{ColorMap, Heatmap};

/// What happened in the widget this frame.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct HeatmapResponse {
    pub clicked: Option<(usize, usize)>,
    pub hovered: Option<(usize, usize)>,
    /// Where the grid's columns start, from the widget's left edge, and their total width
    /// (so a chart below can line up with the columns).
    pub grid_left: f32,
    pub grid_width: f32,
}

pub struct HeatmapView<'a> {
    pub hm: &'a Heatmap,
    pub colormap: ColorMap,
    pub selected: Option<(usize, usize)>,
    /// Value of the node the cells are children of ("share of parent").
    pub parent_value: f32,
    /// Attention pattern over the columns (head views).
    pub pattern: Option<&'a [f32]>,
}

fn c32(c: [u8; 3]) -> Color32 {
    Color32::from_rgb(c[0], c[1], c[2])
}

/// The value written inside a cell, white on strong colours.
fn value_text(painter: &egui::Painter, cell: Rect, v: f32, range: f32) {
    let color = if v.abs() > 0.6 * range {
        Color32::WHITE
    } else {
        Color32::from_gray(30)
    };
    painter.text(
        cell.center(),
        Align2::CENTER_CENTER,
        format!("{v:.2}"),
        FontId::proportional(10.0),
        color,
    );
}

impl HeatmapView<'_> {
    pub fn show(self, ui: &mut Ui) -> HeatmapResponse {
        let hm = self.hm;
        let (n_r, n_c) = (hm.n_rows(), hm.n_cols());
        let mut out = HeatmapResponse::default();
        if n_r == 0 || n_c == 0 {
            ui.label("(nothing to show)");
            return out;
        }
        let font = FontId::proportional(11.0);
        let text_color = ui.visuals().text_color();
        let painter = ui.painter().clone();
        let width_of = |s: &str| {
            painter
                .layout_no_wrap(s.to_string(), font.clone(), text_color)
                .size()
                .x
        };
        // row labels, the "col sum" label of the sums row and the attention strip's label
        let row_w = hm
            .rows
            .iter()
            .map(|r| width_of(r))
            .fold(width_of("col sum").max(width_of("attention")), f32::max)
            .min(180.0)
            + 8.0;
        let col_h = hm
            .cols
            .iter()
            .map(|c| width_of(c))
            .fold(0.0, f32::max)
            .min(140.0)
            + 8.0;
        let sums_w = 58.0;
        let bar_w = 70.0;
        let avail = ui.available_size();
        let cell_w = ((avail.x - row_w - sums_w - bar_w - 16.0) / n_c as f32).clamp(4.0, 56.0);
        let strip_h = if self.pattern.is_some() { 16.0 } else { 0.0 };
        let cell_h = ((avail.y - col_h - strip_h - 40.0) / (n_r as f32 + 1.0)).clamp(4.0, 30.0);
        let grid_w = cell_w * n_c as f32;
        let grid_h = cell_h * n_r as f32;
        let size = Vec2::new(
            row_w + grid_w + sums_w + bar_w,
            col_h + strip_h + grid_h + cell_h + 8.0,
        );
        let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
        let origin = Pos2::new(rect.left() + row_w, rect.top() + col_h + strip_h);
        out.grid_left = row_w;
        out.grid_width = grid_w;
        let range = hm.max_abs();
        let cell_rect = |r: usize, c: usize| {
            Rect::from_min_size(
                Pos2::new(origin.x + c as f32 * cell_w, origin.y + r as f32 * cell_h),
                Vec2::new(cell_w, cell_h),
            )
        };

        // column labels (rotated), thinned when cells are narrow
        let step_c = ((12.0 / cell_w).ceil() as usize).max(1);
        for (c, label) in hm.cols.iter().enumerate() {
            if c % step_c != 0 {
                continue;
            }
            let g = painter.layout_no_wrap(label.clone(), font.clone(), text_color);
            let x = origin.x + (c as f32 + 0.5) * cell_w - g.size().y / 2.0;
            let y = rect.top() + col_h - 4.0;
            painter.add(
                TextShape::new(Pos2::new(x, y), g, text_color)
                    .with_angle(-std::f32::consts::FRAC_PI_2),
            );
        }
        let step_r = ((11.0 / cell_h).ceil() as usize).max(1);
        for (r, label) in hm.rows.iter().enumerate() {
            if r % step_r != 0 {
                continue;
            }
            painter.text(
                Pos2::new(origin.x - 4.0, origin.y + (r as f32 + 0.5) * cell_h),
                Align2::RIGHT_CENTER,
                label,
                font.clone(),
                text_color,
            );
        }

        // attention pattern strip
        if let Some(p) = self.pattern {
            painter.text(
                Pos2::new(origin.x - 4.0, origin.y - strip_h / 2.0 - 1.0),
                Align2::RIGHT_CENTER,
                "attention",
                font.clone(),
                text_color,
            );
            for (c, &a) in p.iter().enumerate().take(n_c) {
                let r = Rect::from_min_size(
                    Pos2::new(origin.x + c as f32 * cell_w, origin.y - strip_h),
                    Vec2::new(cell_w, strip_h - 2.0),
                );
                let v = (255.0 * (1.0 - a.clamp(0.0, 1.0))) as u8;
                painter.rect_filled(r, 0.0, Color32::from_rgb(v, v, 255));
            }
        }

        // cells
        let id = ui.scope_id().with(("heatmap", &hm.title, n_r, n_c));
        for r in 0..n_r {
            for c in 0..n_c {
                let cr = cell_rect(r, c);
                let Some(v) = hm.get(r, c) else {
                    painter.rect_filled(cr.shrink(0.5), 0.0, ui.visuals().faint_bg_color);
                    continue;
                };
                painter.rect_filled(
                    cr.shrink(if cell_w > 6.0 { 0.5 } else { 0.0 }),
                    0.0,
                    c32(self.colormap.color(v, range)),
                );
                if cell_w >= 40.0 && cell_h >= 14.0 {
                    value_text(&painter, cr, v, range);
                }
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
                let label = target.map_or_else(
                    || format!("{} {}", hm.rows[r], hm.cols[c]),
                    ToString::to_string,
                );
                resp.widget_info(|| {
                    egui::WidgetInfo::labeled(Role::Button, target.is_some(), &label)
                });
                if resp.hovered() {
                    out.hovered = Some((r, c));
                    painter.rect_stroke(cr, 0.0, Stroke::new(1.5, text_color), StrokeKind::Inside);
                }
                if resp.clicked() {
                    out.clicked = Some((r, c));
                }
                let share = if self.parent_value.abs() > 0.0 {
                    100.0 * v / self.parent_value
                } else {
                    f32::NAN
                };
                resp.on_hover_ui(|ui| {
                    ui.label(format!("{}: {}", hm.row_title, hm.rows[r]));
                    ui.label(format!("{}: {}", hm.col_title, hm.cols[c]));
                    ui.label(format!("value {v:+.5}"));
                    ui.label(format!("share of parent {share:.1}%"));
                    if let Some(t) = target {
                        ui.label(format!("click: {t}"));
                    }
                });
            }
        }
        if let Some((r, c)) = self.selected
            && r < n_r
            && c < n_c
        {
            painter.rect_stroke(
                cell_rect(r, c),
                0.0,
                Stroke::new(2.5, Color32::from_rgb(255, 170, 0)),
                StrokeKind::Outside,
            );
        }

        // marginal sums
        let sums_x = origin.x + grid_w + 4.0;
        painter.text(
            Pos2::new(sums_x, origin.y - 2.0),
            Align2::LEFT_BOTTOM,
            "row sum",
            font.clone(),
            text_color,
        );
        for (r, s) in hm.row_sums().iter().enumerate() {
            if r % step_r == 0 {
                painter.text(
                    Pos2::new(sums_x, origin.y + (r as f32 + 0.5) * cell_h),
                    Align2::LEFT_CENTER,
                    format!("{s:+.3}"),
                    font.clone(),
                    text_color,
                );
            }
        }
        let sums_y = origin.y + grid_h + 2.0;
        painter.text(
            Pos2::new(origin.x - 4.0, sums_y + cell_h / 2.0),
            Align2::RIGHT_CENTER,
            "col sum",
            font.clone(),
            text_color,
        );
        let col_sums = hm.col_sums();
        let col_max = col_sums.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (c, s) in col_sums.iter().enumerate() {
            let cr = Rect::from_min_size(
                Pos2::new(origin.x + c as f32 * cell_w, sums_y),
                Vec2::new(cell_w, cell_h),
            );
            painter.rect_filled(cr.shrink(0.5), 0.0, c32(self.colormap.color(*s, col_max)));
            if cell_w >= 40.0 && cell_h >= 14.0 {
                value_text(&painter, cr, *s, col_max);
            }
            let resp = ui.interact(cr, id.with(("colsum", c)), Sense::hover());
            resp.on_hover_text(format!("sum over {} = {s:+.5}", hm.cols[c]));
        }

        // colour bar
        let bar = Rect::from_min_size(
            Pos2::new(sums_x + sums_w, origin.y),
            Vec2::new(14.0, grid_h.max(80.0)),
        );
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
            painter.rect_filled(r, 0.0, c32(self.colormap.color(v, range)));
        }
        for (frac, v) in [(0.0, range), (0.5, 0.0), (1.0, -range)] {
            painter.text(
                Pos2::new(bar.right() + 3.0, bar.top() + frac * bar.height()),
                Align2::LEFT_CENTER,
                format!("{v:+.3}"),
                font.clone(),
                text_color,
            );
        }
        out
    }
}

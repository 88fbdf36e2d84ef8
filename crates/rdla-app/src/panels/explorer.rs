//! The central panel: breadcrumbs and history, the completeness line, and the current node's
//! heatmap (or a leaf's details).

use egui::{RichText, Ui};
use rdla_attrib::{Comp, Path, Step};
use rdla_session::NodeView;
use rdla_session::heatmap::printable;

use crate::panels::heatmap::HeatmapView;
use crate::settings::Settings;
use crate::state::{Action, AppState};
use crate::theme;

pub fn show(ui: &mut Ui, state: &AppState, settings: &Settings, actions: &mut Vec<Action>) {
    if state.computed.is_none() {
        if state.model.is_none() && state.loading.is_none() {
            ui.label(
                "Open a model to begin (Open model…, Recent, or drop a folder on the window).",
            );
        } else if state.compute_error.is_some() {
            ui.label("Fix the prompt or the answer to see the attribution.");
        } else if state.computing {
            ui.label("Computing the attribution (progress above)…");
        } else {
            ui.label("Press Recompute (or edit the prompt) to compute the attribution.");
        }
        return;
    }
    if state.computing {
        // the previous prompt's results stay until the new ones arrive: say so
        egui::Frame::new()
            .fill(theme::STALE_BANNER)
            .inner_margin(4.0)
            .show(ui, |ui| {
                ui.label(
                    RichText::new(
                        "Stale: these results are for the previous prompt or target; the new \
                         computation is under way.",
                    )
                    .color(egui::Color32::WHITE),
                );
            });
    }
    let here = state.current_path();
    breadcrumbs(ui, state, &here, actions);
    if here.is_root() && state.nav.is_fresh() {
        ui.label(
            RichText::new(
                "Click a cell to open that node · Backspace goes up, Alt+←/→ back and forward · \
                 Trace (in the details) draws the largest paths as a graph.",
            )
            .weak(),
        );
    }
    let Some(view) = state.current_view() else {
        ui.label(expanding_text(state, &here));
        if let Some(e) = &state.expand_error {
            ui.colored_label(theme::ERROR, e);
        }
        return;
    };
    if let (Some(both), Some(other)) = (&view.contrast, &state.contrast.active) {
        // every number below is a delta: say so, with the node's two values
        ui.label(
            RichText::new(format!(
                "Δ = this prompt − “{}”: {:+.5} = {:+.5} − {:+.5} · every cell and sum below is a \
                 delta (hover a cell for both values)",
                rdla_session::png::clip(&printable(other), 48),
                both.delta.value,
                both.value,
                both.contrast_value
            ))
            .color(theme::OK),
        );
    }
    // a node that could not be opened (the view went back to where it was): say why here,
    // since the view on screen is not the one that failed
    if let Some(e) = &state.expand_error {
        ui.colored_label(theme::ERROR, e);
    }
    completeness(ui, view);
    if here.is_root() {
        let ov = &view.expansion;
        let comps: Vec<String> = ov
            .children
            .iter()
            .filter(|c| matches!(c.step, Step::Comp(Comp::Embed | Comp::Pos)))
            .map(|c| format!("{} {:+.4}", c.step, c.value))
            .collect();
        ui.label(format!(
            "{} · shares of the target ({:+.4}) on hover",
            comps.join(" · "),
            ov.value
        ));
    }
    if view.expansion.leaf {
        leaf_details(ui, state, view);
        return;
    }
    let full = &view.heatmap;
    let window = column_window(ui, state, &here, full, settings);
    let windowed;
    let hm = if window.len() < full.n_cols() {
        windowed = full.columns(window.clone());
        &windowed
    } else {
        full
    };
    let first = window.start;
    egui::ScrollArea::both().show(ui, |ui| {
        let resp = HeatmapView {
            hm,
            colormap: settings.colormap,
            selected: state
                .selected
                .filter(|&(_, c)| window.contains(&c))
                .map(|(r, c)| (r, c - first)),
            parent_value: view.expansion.value,
        }
        .show(ui);
        if let Some((r, c)) = resp.clicked {
            actions.push(Action::Select(Some((r, c + first))));
            if let Some(t) = full.target(r, c + first) {
                actions.push(Action::Navigate(t.clone()));
            }
        }
        if let Some(t) = resp
            .strip_clicked
            .and_then(|c| full.strip_targets.get(c + first))
        {
            actions.push(Action::Navigate(t.clone()));
        }
        let label_target = resp
            .row_clicked
            .and_then(|r| full.row_targets.get(r))
            .or_else(|| {
                resp.col_clicked
                    .and_then(|c| full.col_targets.get(c + first))
            });
        if let Some(Some(t)) = label_target {
            actions.push(Action::Navigate(t.clone()));
        }
    });
}

/// Heatmaps with more columns than this are shown a window at a time.
const MAX_COLUMNS: usize = 96;

fn window_id(here: &Path) -> egui::Id {
    egui::Id::unique(("column window", here.to_string()))
}

/// The columns of `here`'s heatmap (of `n` columns) the explorer shows: a window for long
/// ones (what the PNG export then draws too), `None` when all of them are shown.
pub fn shown_columns(ctx: &egui::Context, here: &Path, n: usize) -> Option<std::ops::Range<usize>> {
    if n <= MAX_COLUMNS {
        return None;
    }
    ctx.data(|d| d.get_temp::<(usize, usize)>(window_id(here)))
        .map(|(start, len)| start.min(n)..(start + len).min(n))
}

/// For a heatmap with many columns (a long prompt's head: one per source position), the
/// window of columns to draw, and its controls: an overview of every column's sum (click or
/// drag to move the window), the window's width, and the positions with the largest sums
/// (click to jump). The window follows the keyboard selection. Remembered per node.
fn column_window(
    ui: &mut Ui,
    state: &AppState,
    here: &Path,
    hm: &rdla_session::Heatmap,
    settings: &Settings,
) -> std::ops::Range<usize> {
    let n = hm.n_cols();
    if n <= MAX_COLUMNS {
        return 0..n;
    }
    let id = window_id(here);
    let sums = hm.col_sums();
    let (mut start, mut len) = ui.data_mut(|d| {
        *d.get_temp_mut_or_insert_with(id, || {
            // open on the end of the prompt, where the destination is
            (n.saturating_sub(64), 64usize)
        })
    });
    if let Some((_, c)) = state.selected
        && c < n
        && !(start..start + len).contains(&c)
    {
        start = c.saturating_sub(len / 2);
    }
    ui.horizontal_wrapped(|ui| {
        ui.label(format!(
            "columns {}–{} of {n}",
            start.min(n - 1),
            (start + len).min(n) - 1
        ));
        ui.label("· show");
        ui.add(egui::DragValue::new(&mut len).range(8..=n.min(512)))
            .on_hover_text("columns drawn at once");
        if ui.button("+").on_hover_text("show more columns").clicked() {
            len = (len * 2).min(n.min(512));
        }
        if ui
            .button("−")
            .on_hover_text("show fewer, wider columns")
            .clicked()
        {
            len = (len / 2).max(8);
        }
        ui.label("· largest:");
        for (c, v) in hm.top_columns(8) {
            let b = ui
                .small_button(format!("{} {v:+.3}", hm.cols[c]))
                .on_hover_text(format!("column {c}: jump there"));
            if b.clicked() {
                start = c.saturating_sub(len / 2);
            }
        }
    });
    // the overview: one bar per pixel bin, the bin's largest |sum|, with the window framed
    let width = ui.available_width().max(100.0);
    let (rect, resp) =
        ui.allocate_exact_size(egui::vec2(width, 22.0), egui::Sense::click_and_drag());
    resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Slider, true, "column overview"));
    let painter = ui.painter_at(rect);
    let bins = (width as usize).min(n).max(1);
    let range = rdla_session::heatmap::max_abs(sums.iter().copied()).max(1e-12);
    for b in 0..bins {
        let (lo, hi) = (b * n / bins, ((b + 1) * n / bins).max(b * n / bins + 1));
        let v = sums[lo..hi.min(n)]
            .iter()
            .copied()
            .fold(0.0f32, |m, x| if x.abs() > m.abs() { x } else { m });
        let x0 = rect.left() + b as f32 * width / bins as f32;
        let h = (v.abs() / range).sqrt() * rect.height();
        painter.rect_filled(
            egui::Rect::from_min_max(
                egui::pos2(x0, rect.bottom() - h),
                egui::pos2(x0 + (width / bins as f32).max(1.0), rect.bottom()),
            ),
            0.0,
            crate::theme::rgb(settings.colormap.color(v, range)),
        );
    }
    let sx = |c: usize| rect.left() + c as f32 * width / n as f32;
    painter.rect_stroke(
        egui::Rect::from_min_max(
            egui::pos2(sx(start), rect.top()),
            egui::pos2(sx((start + len).min(n)).max(sx(start) + 2.0), rect.bottom()),
        ),
        0.0,
        egui::Stroke::new(1.5, ui.visuals().strong_text_color()),
        egui::StrokeKind::Inside,
    );
    if let Some(p) = resp.interact_pointer_pos() {
        let c = (((p.x - rect.left()) / width) * n as f32) as usize;
        start = c.saturating_sub(len / 2);
    }
    let resp = resp.on_hover_text(
        "every column's sum (tallest = largest |sum|); the frame is the window drawn below — \
         click or drag to move it",
    );
    let _ = resp;
    start = start.min(n - len.min(n));
    ui.data_mut(|d| d.insert_temp(id, (start, len)));
    start..(start + len).min(n)
}

fn breadcrumbs(ui: &mut Ui, state: &AppState, here: &Path, actions: &mut Vec<Action>) {
    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(state.nav.can_back(), egui::Button::new("Back"))
            .on_hover_text("Back (Alt+Left)")
            .clicked()
        {
            actions.push(Action::Back);
        }
        if ui
            .add_enabled(state.nav.can_forward(), egui::Button::new("Forward"))
            .on_hover_text("Forward (Alt+Right)")
            .clicked()
        {
            actions.push(Action::Forward);
        }
        for (i, prefix) in here.prefixes().iter().enumerate() {
            if i > 0 {
                ui.label(">");
            }
            let name = prefix
                .steps()
                .last()
                .map_or_else(|| "logit".to_string(), ToString::to_string);
            let value = state
                .value_of(prefix)
                .map_or_else(String::new, |v| format!(" = {v:+.3}"));
            let crumb = ui.selectable_label(i == here.depth(), format!("{name}{value}"));
            crumb.widget_info(|| {
                egui::WidgetInfo::labeled(
                    egui::Role::Button,
                    true,
                    format!(
                        "crumb {}",
                        if prefix.is_root() {
                            "root".into()
                        } else {
                            prefix.to_string()
                        }
                    ),
                )
            });
            if crumb.clicked() {
                actions.push(Action::Navigate(prefix.clone()));
            }
        }
    });
}

/// `children + remainder = value (Δ)`, in warning colours when it does not add up — with the
/// reason: the gradient linearisation, or a non-finite number.
fn completeness(ui: &mut Ui, view: &NodeView) {
    let e = &view.expansion;
    if let Some(t) = &e.table {
        let cells = t.sum() as f32;
        let exact = e.residual.is_finite()
            && e.residual.abs() <= 1e-4 * (e.value.abs() + cells.abs()).max(1e-3);
        let text = format!(
            "Σ table cells {cells:+.5} = score {:+.5}  (Δ {:.2e}) · pre-softmax score units · \
             its children q and k are two complete decompositions of the same score",
            e.value, e.residual
        );
        let color = if exact {
            ui.visuals().text_color()
        } else {
            theme::WARN
        };
        ui.label(RichText::new(text).color(color));
        return;
    }
    let (value, bias, resid) = (e.value, e.bias, e.residual);
    let sum = value - bias - resid;
    let finite = value.is_finite() && bias.is_finite() && resid.is_finite();
    let exact = finite && resid.abs() <= 1e-4 * (value.abs() + sum.abs()).max(1e-3);
    let why = if !finite {
        " — not a finite number: the model overflows on this input"
    } else if e.leaf {
        ""
    } else if !exact {
        " — does not add up (the gradient MLP linearisation is approximate)"
    } else {
        ""
    };
    let text = if e.leaf {
        format!("value {value:+.5} (a leaf)")
    } else {
        format!(
            "children {sum:+.5} + remainder {bias:+.5} = value {value:+.5}  (Δ {resid:.2e}){why}"
        )
    };
    let color = if e.leaf || exact {
        ui.visuals().text_color()
    } else {
        theme::WARN
    };
    ui.label(RichText::new(text).color(color));
}

fn leaf_details(ui: &mut Ui, state: &AppState, view: &NodeView) {
    let e = &view.expansion;
    let p = e.position;
    let tok = state.tokens().strs.get(p).cloned().unwrap_or_default();
    let id = state.tokens().ids.get(p).copied().unwrap_or_default();
    egui::Grid::new("leaf").num_columns(2).show(ui, |ui| {
        ui.label("node");
        ui.label(e.path.to_string());
        ui.end_row();
        ui.label("position");
        ui.label(p.to_string());
        ui.end_row();
        ui.label("token");
        ui.label(format!("{tok:?} (id {id})"));
        ui.end_row();
        ui.label("value");
        ui.label(format!("{:+.5}", e.value));
        ui.end_row();
    });
    ui.label("A leaf: the token (or position) embedding itself, or a remainder; nothing further upstream.");
}

/// "expanding…", and on a model whose layers stream, which layers the node reads (those not
/// among the held ones are read from disk first).
fn expanding_text(state: &AppState, path: &Path) -> String {
    let Some(held) = state
        .model
        .as_ref()
        .and_then(|m| m.facts.streamed_layer_cache)
    else {
        return "expanding…".into();
    };
    let mut layers: Vec<usize> = path
        .steps()
        .iter()
        .filter_map(|s| match s {
            Step::Comp(Comp::Attn(l) | Comp::Mlp(l))
            | Step::Source {
                comp: Comp::Attn(l) | Comp::Mlp(l),
                ..
            } => Some(*l),
            _ => None,
        })
        .collect();
    layers.sort_unstable();
    layers.dedup();
    let named: Vec<String> = layers.iter().map(|l| format!("L{l}")).collect();
    format!(
        "expanding… this model's layers stream from disk ({held} held at a time): {} read \
         first where not held",
        if named.is_empty() {
            "the layers it needs are".to_string()
        } else {
            format!(
                "{} {}",
                named.join(", "),
                if named.len() == 1 { "is" } else { "are" }
            )
        }
    )
}

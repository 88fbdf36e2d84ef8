//! The central panel: breadcrumbs and history, the completeness line, and the current node's
//! heatmap (or a leaf's details).

use egui::{RichText, Ui};
use rdla_attrib::Path;
use rdla_session::NodeView;

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
        } else {
            ui.spinner();
        }
        return;
    }
    let here = state.current_path();
    breadcrumbs(ui, state, &here, actions);
    let Some(view) = state.current_view() else {
        ui.spinner();
        if let Some(e) = &state.expand_error {
            ui.colored_label(theme::ERROR, e);
        }
        return;
    };
    completeness(ui, view);
    if here.is_root() {
        let ov = &view.expansion;
        let comps: Vec<String> = ov
            .children
            .iter()
            .filter(|c| matches!(c.step.as_str(), "embed" | "pos"))
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
    egui::ScrollArea::both().show(ui, |ui| {
        let resp = HeatmapView {
            hm: &view.heatmap,
            colormap: settings.colormap,
            selected: state.selected,
            parent_value: view.expansion.value,
        }
        .show(ui);
        if let Some((r, c)) = resp.clicked {
            actions.push(Action::Select(Some((r, c))));
            if let Some(t) = view.heatmap.target(r, c) {
                actions.push(Action::Navigate(t.clone()));
            }
        }
        if let Some(t) = resp
            .strip_clicked
            .and_then(|c| view.heatmap.strip_targets.get(c))
        {
            actions.push(Action::Navigate(t.clone()));
        }
    });
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
    let tok = state.tokens.strs.get(p).cloned().unwrap_or_default();
    let id = state.tokens.ids.get(p).copied().unwrap_or_default();
    egui::Grid::new("leaf").num_columns(2).show(ui, |ui| {
        ui.label("node");
        ui.label(&e.path);
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

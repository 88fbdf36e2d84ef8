//! A result file (`.rdla`) opened without the model, read-only: what was saved, where it came
//! from, the explorer's heatmaps of the saved nodes with their breadcrumbs, the trace's graph
//! and its verification, and their exports. A node that was not saved says so.

use egui::Ui;

use crate::panels::heatmap::HeatmapView;
use crate::settings::Settings;
use crate::state::{Action, ResultState};
use crate::theme;

/// Tokens listed in the header (a long prompt's are in the heatmaps' axes).
const TOKENS_SHOWN: usize = 32;

pub fn show(ui: &mut Ui, settings: &Settings, r: &ResultState, actions: &mut Vec<Action>) {
    let m = &r.saved.manifest;
    ui.horizontal_wrapped(|ui| {
        if ui.button("Close result").clicked() {
            actions.push(Action::CloseResult);
        }
        ui.separator();
        ui.strong(format!("Result {}", r.file.display()));
        ui.label("· read-only, without the model");
    });
    ui.label(format!(
        "{} · {} · prompt {:?} ({} tokens) · {} = {:+.4} · {} · rdla {}",
        m.model.name,
        m.model
            .files
            .iter()
            .map(|f| format!("{} ({} bytes, sha256 {}…)", f.name, f.bytes, f.short_hash()))
            .collect::<Vec<_>>()
            .join(", "),
        rdla_session::png::clip(&m.prompt, 60),
        m.token_ids.len(),
        m.target_label,
        m.target_value,
        m.device,
        m.rdla_version
    ));
    if let Some(other) = &m.contrast_prompt {
        ui.label(format!(
            "saved while comparing with {:?}: every value is this prompt's minus that one's",
            rdla_session::png::clip(other, 60)
        ));
    }
    ui.horizontal_wrapped(|ui| {
        ui.label("tokens:");
        for (i, t) in m.token_strs.iter().enumerate().take(TOKENS_SHOWN) {
            ui.label(egui::RichText::new(format!("{i}:{t}")).monospace().weak());
        }
        if m.token_strs.len() > TOKENS_SHOWN {
            ui.label(format!("… {} more", m.token_strs.len() - TOKENS_SHOWN));
        }
    });
    ui.horizontal_wrapped(|ui| {
        for (i, p) in r.at.prefixes().into_iter().enumerate() {
            if i > 0 {
                ui.label("/");
            }
            let text = if p.is_root() {
                "root".to_string()
            } else {
                p.steps()
                    .last()
                    .map_or_else(String::new, ToString::to_string)
            };
            let b = ui.button(text);
            let label = format!(
                "saved crumb {}",
                if p.is_root() {
                    "root".to_string()
                } else {
                    p.to_string()
                }
            );
            b.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, label.clone()));
            if b.clicked() {
                actions.push(Action::ResultGo(p.clone()));
            }
        }
        if r.saved.view(&r.at).is_some() && ui.button("Export PNG…").clicked() {
            actions.push(Action::ExportResultPng);
        }
        if r.saved.manifest.trace.is_some() {
            let label = if r.graph {
                "Show the heatmap"
            } else {
                "Show the graph"
            };
            if ui.button(label).clicked() {
                actions.push(Action::ResultGraph(!r.graph));
            }
        }
    });
    if let Some(note) = &r.note {
        ui.colored_label(theme::WARN, note);
    }
    if r.graph {
        graph(ui, r, actions);
        return;
    }
    match (r.saved.view(&r.at), r.saved.node(&r.at)) {
        (Some(hm), node) => {
            if let Some(n) = node {
                ui.label(format!(
                    "{} = {:+.5}{}",
                    if r.at.is_root() {
                        "target".to_string()
                    } else {
                        r.at.to_string()
                    },
                    n.value,
                    match (n.bias, n.residual) {
                        (Some(b), Some(res)) =>
                            format!(" = Σ children + bias {b:+.5} + remainder {res:+.2e}"),
                        _ => String::new(),
                    }
                ));
            }
            let resp = HeatmapView {
                hm,
                colormap: settings.colormap,
                selected: None,
                parent_value: node.map_or(0.0, |n| n.value),
            }
            .show(ui);
            if let Some(t) = resp.clicked.and_then(|(row, col)| hm.target(row, col)) {
                actions.push(Action::ResultGo(t.clone()));
            }
            readout(ui, r);
        }
        (None, Some(n)) => {
            ui.label(format!("{} = {:+.5} (saved)", r.at, n.value));
            ui.label("its children are not in this file: open the model to compute them");
        }
        (None, None) => {
            ui.label(format!(
                "{}: not in this file: open the model to compute it",
                r.at
            ));
        }
    }
}

/// The saved vocabulary readout of the current node.
fn readout(ui: &mut Ui, r: &ResultState) {
    let toks: Vec<_> = r.saved.readouts.iter().filter(|t| t.path == r.at).collect();
    if toks.is_empty() {
        return;
    }
    let list = |up: bool| {
        toks.iter()
            .filter(|t| t.up == up)
            .map(|t| format!("{:?} {:+.3}", t.token, t.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ui.label(format!("pushes up: {}", list(true)));
    ui.label(format!("pushes down: {}", list(false)));
}

/// The saved trace's graph and its verification.
fn graph(ui: &mut Ui, r: &ResultState, actions: &mut Vec<Action>) {
    let Some(trace) = r.saved.trace() else {
        return;
    };
    ui.horizontal_wrapped(|ui| {
        ui.label(rdla_session::graph::summary(&trace));
        if ui.button("Export graph PNG…").clicked() {
            actions.push(Action::ExportResultGraphPng);
        }
    });
    if let Some(v) = r.saved.verification() {
        crate::panels::graph::verification_plot(ui, &v);
    }
    let n_layers = r.n_layers();
    if let Some(go) = crate::panels::graph::draw(ui, &trace, &r.saved.manifest.token_strs, n_layers)
    {
        actions.push(Action::ResultGraph(false));
        actions.push(Action::ResultGo(go));
    }
}

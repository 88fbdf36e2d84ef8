//! The right-hand panel: what the current node adds beside its heatmap — a score's key picker
//! and contrasts (over the head's attention row), an MLP's top neurons, and the tokens the
//! node's output pushes up and down.

use egui::{RichText, Ui};
use egui_plot::{Bar, BarChart, Plot};
use rdla_attrib::{Expansion, NodeKind, Path, Step, TokenValue, Versus};
use rdla_model::model::ablate::AblationMode;
use rdla_session::heatmap::printable;
use rdla_session::{AttentionRow, NodeView};

use crate::state::{Action, AppState};
use crate::theme;

pub fn show(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    let Some(view) = state.current_view() else {
        ui.label("Details of the selected node appear here.");
        return;
    };
    let here = state.current_path();
    let ex = &view.expansion;
    egui::ScrollArea::vertical().show(ui, |ui| {
        circuit_section(ui, state, ex, &here, actions);
        ui.separator();
        if let NodeKind::Head { .. } = ex.kind {
            ui.label(if view.contrast.is_some() {
                "A contrast shows no attention strip (each prompt attends in its own way): \
                 stop comparing to see this head's pattern and open its QK scores."
            } else {
                "Click a cell of the attention strip above the heatmap to see why this head \
                 attended there: its QK score, split into query × key components."
            });
            ui.separator();
        }
        if let (Some(row), Some(Step::Score { key, versus })) =
            (&view.attention, here.steps().last())
        {
            score_section(ui, state, row, &here.parent(), *key, *versus, actions);
            ui.separator();
        }
        if let Some(neurons) = &ex.neurons {
            neuron_section(ui, ex, neurons, &here, actions);
            ui.separator();
        }
        if let Some(t) = &ex.tokens {
            tokens_section(ui, view, &t.up, &t.down);
        }
    });
}

/// Trace from here, and the causal check of this node.
fn circuit_section(
    ui: &mut Ui,
    state: &AppState,
    ex: &Expansion,
    here: &Path,
    actions: &mut Vec<Action>,
) {
    ui.horizontal(|ui| {
        if ui
            .button("Trace graph from here")
            .on_hover_text("best-first exact tracing below this node, drawn as a graph of sites")
            .clicked()
        {
            actions.push(Action::Trace(here.clone()));
        }
        if state.graph.trace.is_some() && ui.button("Show graph").clicked() {
            actions.push(Action::ShowGraph(true));
        }
    });
    if ex.site.is_none() {
        return;
    }
    ui.horizontal(|ui| {
        ui.label("Causal check:");
        for (mode, label, tip) in [
            (
                AblationMode::Zero,
                "zero it",
                "set this site to zero at this position and rerun the real model",
            ),
            (
                AblationMode::Mean,
                "mean it",
                "replace this site by its mean over positions and rerun the real model",
            ),
        ] {
            if ui.button(label).on_hover_text(tip).clicked() {
                actions.push(Action::Ablate(vec![here.clone()], mode));
            }
        }
    });
    for mode in [AblationMode::Zero, AblationMode::Mean] {
        match state.ablations.get(&(vec![here.clone()], mode)) {
            Some(Ok(r)) => {
                ui.label(format!(
                    "{mode:?}: target {:+.4} → {:+.4}, real change {:+.4} vs attributed {:+.4}",
                    r.clean, r.ablated, r.change, r.node_sum
                ))
                .on_hover_text(
                    "the real forward pass with this site ablated (every site downstream \
                     recomputed, nothing frozen); where the two numbers differ, nonlinearities \
                     downstream (norm scales, patterns, gates) react to the ablation",
                );
            }
            Some(Err(e)) => {
                ui.colored_label(theme::ERROR, e);
            }
            None => {}
        }
    }
}

fn token_label(state: &AppState, p: usize) -> String {
    format!(
        "{p}:{}",
        printable(state.tokens().strs.get(p).map_or("", String::as_str))
    )
}

/// The attention row of the score's head (click a bar: the score to that key), and the
/// contrast picker.
fn score_section(
    ui: &mut Ui,
    state: &AppState,
    row: &AttentionRow,
    head: &Path,
    key: usize,
    versus: Versus,
    actions: &mut Vec<Action>,
) {
    ui.heading("Attention score");
    ui.label(format!(
        "L{}.H{} from query {} to key {} · pre-softmax score units",
        row.layer,
        row.head,
        token_label(state, row.query),
        token_label(state, key)
    ));
    let bars: Vec<Bar> = row
        .values
        .iter()
        .enumerate()
        .map(|(p, &a)| {
            let mut b = Bar::new(p as f64, f64::from(a))
                .width(0.8)
                .name(token_label(state, p));
            if p == key {
                b = b.fill(theme::SELECTION);
            }
            b
        })
        .collect();
    let clicked = Plot::new("attention-row")
        .height(110.0)
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(1.0)
        .x_axis_label("key position (click: its score)")
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("attention", bars));
            if plot.response().clicked() {
                plot.pointer_coordinate()
                    .map(|c| c.x.round().max(0.0) as usize)
            } else {
                None
            }
        })
        .inner;
    if let Some(k) = clicked.filter(|&k| k >= row.first && k <= row.query) {
        actions.push(Action::Navigate(head.child(Step::Score {
            key: k,
            versus: Versus::Nothing,
        })));
    }
    ui.label("Contrast: why this key…");
    let go = |versus| Action::Navigate(head.child(Step::Score { key, versus }));
    ui.horizontal(|ui| {
        if ui
            .selectable_label(versus == Versus::Nothing, "alone")
            .clicked()
        {
            actions.push(go(Versus::Nothing));
        }
        if ui
            .selectable_label(versus == Versus::Mean, "more than average")
            .on_hover_text("score − Σ_j A[q,j] score(j): the pattern-weighted mean over keys")
            .clicked()
        {
            actions.push(go(Versus::Mean));
        }
    });
    let current = match versus {
        Versus::Key(k2) => format!("rather than {}", token_label(state, k2)),
        _ => "rather than key…".into(),
    };
    egui::ComboBox::from_id_salt("contrast-key")
        .selected_text(current)
        .show_ui(ui, |ui| {
            for k2 in (row.first..=row.query).filter(|&k2| k2 != key) {
                let a = row.values.get(k2).copied().unwrap_or(0.0);
                let label = format!("{} (attention {a:.3})", token_label(state, k2));
                if ui
                    .selectable_label(versus == Versus::Key(k2), label)
                    .clicked()
                {
                    actions.push(go(Versus::Key(k2)));
                }
            }
        });
}

/// An MLP's largest neurons, as bars and as buttons.
fn neuron_section(
    ui: &mut Ui,
    ex: &Expansion,
    neurons: &[rdla_attrib::Child],
    here: &Path,
    actions: &mut Vec<Action>,
) {
    ui.heading("Neurons");
    let listed: f32 = neurons.iter().map(|n| n.value).sum();
    ui.label(format!(
        "top {} of {} by |value| · Σ listed {:+.4} of the MLP's {:+.4}",
        neurons.len(),
        ex.n_neurons.unwrap_or(0),
        listed,
        ex.value
    ));
    let bars: Vec<Bar> = neurons
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Bar::new(i as f64, f64::from(n.value))
                .width(0.8)
                .name(n.step.to_string())
                .fill(if n.value >= 0.0 {
                    theme::POSITIVE
                } else {
                    theme::NEGATIVE
                })
        })
        .collect();
    Plot::new("neurons")
        .height(100.0)
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .show(ui, |plot| plot.bar_chart(BarChart::new("neurons", bars)));
    egui::Grid::new("neuron-list")
        .num_columns(2)
        .show(ui, |ui| {
            for n in neurons {
                if ui
                    .button(n.step.to_string())
                    .on_hover_text(format!("open {}", here.child(n.step)))
                    .clicked()
                {
                    actions.push(Action::Navigate(here.child(n.step)));
                }
                ui.label(format!("{:+.5}", n.value));
                ui.end_row();
            }
        });
}

/// The vocabulary readout of what the node writes.
fn tokens_section(ui: &mut Ui, view: &NodeView, up: &[TokenValue], down: &[TokenValue]) {
    ui.heading("Tokens");
    ui.label(
        RichText::new(format!(
            "what {} writes at position {}, read through the final norm and the unembedding",
            if view.path.is_root() {
                "the node".to_string()
            } else {
                view.path.to_string()
            },
            view.expansion.position
        ))
        .weak(),
    );
    egui::Grid::new("tokens").num_columns(4).show(ui, |ui| {
        ui.label(RichText::new("up").color(theme::POSITIVE));
        ui.label("");
        ui.label(RichText::new("down").color(theme::NEGATIVE));
        ui.label("");
        ui.end_row();
        for i in 0..up.len().max(down.len()) {
            for list in [up, down] {
                match list.get(i) {
                    Some(t) => {
                        ui.label(format!("{:?}", t.token));
                        ui.label(format!("{:+.3}", t.value));
                    }
                    None => {
                        ui.label("");
                        ui.label("");
                    }
                }
            }
            ui.end_row();
        }
    });
}

//! The attribution graph view: trace the tree below the current node (best-first by |value|,
//! under a budget), and draw the traced paths merged by model site — layers bottom to top,
//! token positions left to right — with a threshold slider, hover values, and a click on a
//! site opening the heatmap explorer at its path.

use egui::{Align2, Color32, FontId, Pos2, Sense, Stroke, Ui, Vec2};
use rdla_attrib::Path;
use rdla_attrib::trace::Trace;

use rdla_session::graph::{self, sign_color};
use rdla_session::heatmap::max_abs;

use rdla_model::model::ablate::AblationMode;

use crate::state::{Action, AppState};
use crate::theme;

pub fn show(ui: &mut Ui, state: &AppState, n_layers: usize, actions: &mut Vec<Action>) {
    let here = state.current_path();
    // the controls edit a copy; a change is an action, applied after the frame
    let mut o = state.graph.options;
    ui.horizontal_wrapped(|ui| {
        if ui.button("Back to the heatmap").clicked() {
            actions.push(Action::ShowGraph(false));
        }
        ui.separator();
        let busy = state.graph.tracing.is_some();
        let label = if here.is_root() {
            "Trace from the logit".to_string()
        } else {
            format!("Trace from {here}")
        };
        if ui.add_enabled(!busy, egui::Button::new(label)).clicked() {
            actions.push(Action::Trace(here.clone()));
        }
        ui.label("budget");
        ui.add(egui::DragValue::new(&mut o.budget).range(1..=20_000))
            .on_hover_text("node expansions per trace");
        ui.checkbox(&mut o.neurons, "neurons")
            .on_hover_text("split MLPs into their largest neurons");
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("threshold");
        ui.add(
            egui::Slider::new(&mut o.threshold, 0.0..=0.5)
                .logarithmic(true)
                .custom_formatter(|v, _| format!("{:.1}%", 100.0 * v)),
        )
        .on_hover_text("hide sites and edges below this share of |value|");
        ui.label("max sites");
        ui.add(egui::DragValue::new(&mut o.max_nodes).range(2..=500));
        if state.graph.trace.is_some() {
            if ui.button("Export PNG…").clicked() {
                actions.push(Action::ExportGraphPng);
            }
            if ui.button("Export JSON…").clicked() {
                actions.push(Action::ExportGraphJson);
            }
        }
    });
    if o != state.graph.options {
        actions.push(Action::GraphOptions(o));
    }
    if let Some((done, budget)) = state.graph.tracing {
        ui.add(
            egui::ProgressBar::new(done as f32 / budget.max(1) as f32)
                .text(format!("tracing: {done} / {budget} expansions")),
        );
    }
    if let Some(e) = &state.graph.error {
        ui.colored_label(theme::ERROR, e);
    }
    let Some(trace) = &state.graph.trace else {
        if state.graph.tracing.is_none() {
            ui.label(
                "Trace the exact tree below the current node: the largest contributions are \
                 expanded first, and every site they pass through is drawn with the \
                 contributions flowing between them.",
            );
        }
        return;
    };
    let shown = trace.pruned(o.threshold, o.max_nodes);
    ui.add(egui::Label::new(graph::summary(trace)).wrap());
    causal_check(ui, state, trace, actions);
    verification(ui, state, actions);
    ui.label(format!(
        "showing {} sites and {} edges (threshold {:.1}% of |value|) · click a site to open it",
        shown.nodes.len(),
        shown.edges.len(),
        100.0 * o.threshold
    ));
    if let Some(site) = draw(ui, &shown, &state.tokens().strs, n_layers) {
        actions.push(Action::Navigate(site));
        actions.push(Action::ShowGraph(false));
    }
}

/// Draw `trace` (pruned as shown) over the rest of the panel: layers bottom to top, positions
/// left to right, hover values; the site clicked, if one was.
pub fn draw(ui: &mut Ui, trace: &Trace, tokens: &[String], n_layers: usize) -> Option<Path> {
    let mut clicked = None;
    // the visible part of the panel (a wide controls row must not widen the drawing)
    let visible = ui.clip_rect().right() - ui.cursor().left();
    let avail = ui.available_size();
    let size = (avail.x.min(visible).max(300.0), avail.y.max(240.0));
    let layout = graph::layout(trace, tokens, n_layers, size);
    let (rect, _) = ui.allocate_exact_size(Vec2::new(size.0, size.1), Sense::hover());
    let o = rect.min;
    let painter = ui.painter_at(rect);
    let font = FontId::proportional(11.0);
    let text = ui.visuals().text_color();
    let rgb = |c: [u8; 3]| Color32::from_rgb(c[0], c[1], c[2]);
    for (y, label) in &layout.rows {
        painter.text(
            o + Vec2::new(62.0, *y),
            Align2::RIGHT_CENTER,
            label,
            font.clone(),
            text,
        );
    }
    for (x, label) in &layout.columns {
        painter.add(
            egui::epaint::TextShape::new(
                o + Vec2::new(x - 6.0, size.1 - 8.0),
                painter.layout_no_wrap(label.clone(), font.clone(), text),
                text,
            )
            .with_angle(-std::f32::consts::FRAC_PI_2),
        );
    }
    let max_w = max_abs(layout.edges.iter().map(|e| e.width)).max(1e-6);
    for e in &layout.edges {
        painter.line_segment(
            [
                o + Vec2::new(e.from.0, e.from.1),
                o + Vec2::new(e.to.0, e.to.1),
            ],
            Stroke::new(
                e.width,
                rgb(sign_color(e.value, 0.35 + 0.65 * e.width / max_w)),
            ),
        );
    }
    let id = ui.scope_id().with("graph");
    for n in &layout.nodes {
        let c = Pos2::new(o.x + n.x, o.y + n.y);
        painter.circle(
            c,
            n.radius,
            rgb(sign_color(n.value, 1.0)),
            Stroke::new(1.0, text),
        );
        if n.radius >= 6.0 {
            painter.text(
                c - Vec2::new(0.0, n.radius + 1.0),
                Align2::CENTER_BOTTOM,
                n.site.to_string(),
                FontId::proportional(10.0),
                text,
            );
        }
        let hit = egui::Rect::from_center_size(c, Vec2::splat((2.0 * n.radius).max(10.0)));
        let resp = ui.interact(hit, id.with(n.id.to_string()), Sense::click());
        resp.widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::Button, true, format!("site {}", n.id))
        });
        if resp.clicked() {
            clicked = Some(n.id.clone());
        }
        resp.on_hover_text(format!(
            "{} · value {:+.5} ({:.1}% of {:+.4})\n{}",
            n.site,
            n.value,
            100.0 * n.value / trace.value,
            trace.value,
            n.id
        ));
    }
    clicked
}

/// The graph's causal check: ablate its `k` largest sites (by |value| along the traced paths,
/// the node traced from excluded) together in the real forward pass, and show the real change
/// of the target beside the sites' traced values.
fn causal_check(
    ui: &mut Ui,
    state: &AppState,
    trace: &rdla_attrib::trace::Trace,
    actions: &mut Vec<Action>,
) {
    let mut sites: Vec<&rdla_attrib::trace::GraphNode> =
        trace.nodes.iter().filter(|n| n.id != trace.from).collect();
    sites.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    let mut o = state.graph.options;
    sites.truncate(o.ablate_top);
    let paths: Vec<Path> = sites.iter().map(|n| n.id.clone()).collect();
    ui.horizontal_wrapped(|ui| {
        ui.label("Causal check: ablate the top");
        if ui
            .add(egui::DragValue::new(&mut o.ablate_top).range(1..=20))
            .on_hover_text("how many of the largest traced sites to ablate together")
            .changed()
        {
            actions.push(Action::GraphOptions(o));
        }
        ui.label("sites together:");
        for (mode, label) in [
            (AblationMode::Zero, "zero them"),
            (AblationMode::Mean, "mean them"),
        ] {
            let busy = state.is_ablating(&paths, mode);
            if ui
                .add_enabled(!busy && !paths.is_empty(), egui::Button::new(label))
                .on_hover_text(
                    "rerun the real model with these sites ablated at their positions \
                     (zero, or their mean over positions); nothing frozen",
                )
                .clicked()
            {
                actions.push(Action::Ablate(paths.clone(), mode));
            }
        }
    });
    for mode in [AblationMode::Zero, AblationMode::Mean] {
        match state.ablations.get(&(paths.clone(), mode)) {
            Some(Ok(r)) => {
                let traced: Vec<String> = sites
                    .iter()
                    .map(|n| format!("{}@{} {:+.3}", n.site, n.position, n.value))
                    .collect();
                ui.label(format!(
                    "{mode:?}: target {:+.4} → {:+.4}, real change {:+.4}; traced values {}",
                    r.clean,
                    r.ablated,
                    r.change,
                    traced.join(", ")
                ))
                .on_hover_text(
                    "a site's traced value counts every traced path through it, so paths \
                     through several of these sites count once per site; the real change is \
                     the model's own answer, downstream nonlinearities included",
                );
            }
            Some(Err(e)) => {
                ui.colored_label(theme::ERROR, e);
            }
            None => {}
        }
    }
}

/// The graph's verification: its largest sites ablated each alone, then together (see
/// [`rdla_session::verify`]): a scatter of the real effects against the attributed values,
/// each site coloured by agreement, Spearman's ρ, the share of the target the sites explain
/// together, and the sites where the linear story breaks.
fn verification(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    let mut o = state.graph.options;
    ui.horizontal_wrapped(|ui| {
        ui.label("Verify the top");
        if ui
            .add(egui::DragValue::new(&mut o.verify_top).range(1..=200))
            .on_hover_text("how many of the largest traced sites to ablate, each alone")
            .changed()
        {
            actions.push(Action::GraphOptions(o));
        }
        ui.label("sites:");
        let busy = state.graph.verifying.is_some();
        let compared = state.contrast.active.is_some();
        for (mode, label) in [
            (AblationMode::Zero, "Verify (zero)"),
            (AblationMode::Mean, "Verify (mean)"),
            (AblationMode::Patch, "Verify (patch)"),
        ] {
            let possible = mode != AblationMode::Patch || compared;
            if ui
                .add_enabled(!busy && possible, egui::Button::new(label))
                .on_hover_text(if mode == AblationMode::Patch {
                    "put each site's value from the compared prompt's run in its place \
                     (activation patching), alone and then all together, and compare the real \
                     changes of the target with the values the trace attributed"
                } else {
                    "ablate each site alone in the real forward pass, then all of them \
                     together, and compare the real changes of the target with the values \
                     the trace attributed"
                })
                .on_disabled_hover_text("patching needs a prompt to compare with (Compare with…)")
                .clicked()
            {
                actions.push(Action::Verify(mode));
            }
        }
        if let Some((done, total)) = state.graph.verifying {
            ui.add(
                egui::ProgressBar::new(done as f32 / total.max(1) as f32)
                    .desired_width(160.0)
                    .text(format!("{done} / {total} forward passes")),
            );
        }
    });
    let v = match &state.graph.verification {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            ui.colored_label(theme::ERROR, e);
            return;
        }
        None => return,
    };
    verification_plot(ui, v);
}

/// A verification's stamp, its scatter of real effects against attributed values (each site
/// coloured by agreement, the diagonal where they are equal) and the sites where the linear
/// story breaks.
pub fn verification_plot(ui: &mut Ui, v: &rdla_session::verify::Verification) {
    use rdla_session::verify::Agreement;
    let color = |a: Agreement| match a {
        Agreement::Agrees => theme::OK,
        Agreement::Magnitude => theme::WARN,
        Agreement::Sign => theme::ERROR,
    };
    ui.label(v.stamp());
    ui.horizontal(|ui| {
        let lim = v
            .sites
            .iter()
            .flat_map(|s| [s.attributed.abs(), s.effect.abs()])
            .fold(1e-6f32, f32::max) as f64
            * 1.1;
        egui_plot::Plot::new("verification")
            .width(260.0)
            .height(200.0)
            .data_aspect(1.0)
            .x_axis_label("attributed")
            .y_axis_label("real effect")
            .include_x(-lim)
            .include_x(lim)
            .include_y(-lim)
            .include_y(lim)
            .show(ui, |plot| {
                plot.line(
                    egui_plot::Line::new("effect = attributed", vec![[-lim, -lim], [lim, lim]])
                        .color(theme::AXIS),
                );
                for s in &v.sites {
                    plot.points(
                        egui_plot::Points::new(
                            s.label.clone(),
                            vec![[f64::from(s.attributed), f64::from(s.effect)]],
                        )
                        .radius(4.0)
                        .color(color(s.agreement(v.target))),
                    );
                }
            });
        ui.vertical(|ui| {
            let breaks: Vec<_> = v.breaks().collect();
            if breaks.is_empty() {
                ui.label("every site's real effect agrees with its attributed value");
            } else {
                ui.label("where the linear story breaks:");
                for (s, a) in breaks {
                    ui.colored_label(
                        color(a),
                        format!(
                            "{}: attributed {:+.3}, real {:+.3} ({})",
                            s.label,
                            s.attributed,
                            s.effect,
                            match a {
                                Agreement::Sign => "opposite sign",
                                _ => "magnitude",
                            }
                        ),
                    );
                }
            }
        });
    });
}

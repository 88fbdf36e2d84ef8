//! The left panel: the prompt, the token strip, the target (answer, foil), the MLP mode and
//! the model's top next tokens.

use egui::{RichText, Ui};
use rdla_attrib::MlpMode;
use rdla_session::heatmap::printable;

use crate::settings::Settings;
use crate::state::{Action, AppState};
use crate::theme;

pub fn show(ui: &mut Ui, state: &AppState, settings: &mut Settings, actions: &mut Vec<Action>) {
    ui.heading("Prompt");
    let r = ui.add(
        egui::TextEdit::multiline(&mut settings.prompt)
            .desired_rows(4)
            .desired_width(f32::INFINITY)
            .font(egui::TextStyle::Monospace),
    );
    r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::MultilineTextInput, true, "Prompt"));
    if r.changed() {
        actions.push(Action::Edited);
    }
    if ui.checkbox(&mut settings.bos, "Prepend BOS").changed() {
        actions.push(Action::Edited);
    }
    token_strip(ui, state);
    ui.separator();
    egui::Grid::new("target").num_columns(2).show(ui, |ui| {
        for (label, text) in [
            ("Answer", &mut settings.answer),
            ("Foil", &mut settings.foil),
        ] {
            ui.label(if label == "Foil" {
                "Foil (optional)"
            } else {
                label
            });
            let r = ui.add(egui::TextEdit::singleline(text).desired_width(140.0));
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, label));
            if r.changed() {
                actions.push(Action::Edited);
            }
            ui.end_row();
        }
    });
    match (&state.computed, &state.compute_error) {
        (_, Some(e)) => {
            ui.colored_label(theme::ERROR, e);
        }
        (Some(c), None) => {
            let mut t = format!("answer id {}", c.target.answer());
            if let Some(f) = c.target.foil() {
                t += &format!(", foil id {f}");
            }
            ui.label(RichText::new(format!("one token: {t}")).color(theme::OK));
        }
        _ => {}
    }
    ui.horizontal(|ui| {
        ui.label("MLP:");
        let before = settings.mlp_mode;
        ui.radio_value(
            &mut settings.mlp_mode,
            MlpMode::FrozenGate,
            "frozen gate (exact)",
        );
        ui.radio_value(&mut settings.mlp_mode, MlpMode::Gradient, "gradient");
        if before != settings.mlp_mode {
            actions.push(Action::Edited);
        }
    });
    ui.separator();
    ui.heading("Top next tokens");
    egui::Grid::new("top")
        .striped(true)
        .num_columns(4)
        .show(ui, |ui| {
            ui.strong("#");
            ui.strong("token");
            ui.strong("logit");
            ui.strong("prob");
            ui.end_row();
            for (i, p) in state.top.iter().enumerate() {
                ui.label(format!("{}", i + 1));
                if ui
                    .button(format!("{:?}", p.token))
                    .on_hover_text(format!("id {} — click to make it the answer", p.id))
                    .clicked()
                {
                    actions.push(Action::SetAnswer(p.token.clone()));
                }
                ui.label(format!("{:.3}", p.logit));
                ui.label(format!("{:.3}", p.prob));
                ui.end_row();
            }
        });
}

/// The prompt's tokens, BOS marked; hover for position and id.
fn token_strip(ui: &mut Ui, state: &AppState) {
    let t = &state.tokens;
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = egui::vec2(2.0, 2.0);
        for (p, (id, s)) in t.ids.iter().zip(&t.strs).enumerate() {
            let bos = p == 0 && t.has_bos;
            let text = if bos { "BOS".to_string() } else { printable(s) };
            let fill = if bos {
                theme::BOS
            } else {
                ui.visuals().faint_bg_color
            };
            egui::Frame::new()
                .fill(fill)
                .stroke(ui.visuals().widgets.noninteractive.bg_stroke)
                .inner_margin(egui::Margin::symmetric(3, 1))
                .corner_radius(3.0)
                .show(ui, |ui| {
                    ui.label(RichText::new(text).monospace())
                        .on_hover_text(format!("position {p} · id {id} · {s:?}"));
                });
        }
    });
}

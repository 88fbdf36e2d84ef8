//! The left panel: the prompt, the token strip, the target (answer, foil), the MLP mode and
//! the model's top next tokens.

use egui::{RichText, Ui};
use rdla_attrib::MlpMode;
use rdla_session::heatmap::printable;

use crate::settings::Settings;
use crate::state::{Action, AppState};
use crate::theme;

/// The memory budget fields (the GPU's on a GPU): what the next model and prompt may hold
/// (applied as typed; the status bar shows the budgets in force).
fn memory_budget(ui: &mut Ui, settings: &mut Settings, gpu: bool) {
    // an empty field shows the budget in force: `--max-memory`'s, or the default
    let hint = match rdla_model::memory::budget() {
        Some(b) if b.explicit => rdla_session::info::bytes(b.bytes),
        _ => "80 % of free".to_string(),
    };
    budget_field(
        ui,
        settings,
        |s| &mut s.max_memory,
        "Memory budget:",
        hint,
        "what the model and a prompt may hold together, e.g. 6GiB or 500MiB; empty: 80 % of \
         the memory available. A model whose layers do not fit streams them; checked before the \
         next model or prompt is loaded.",
    );
    if gpu {
        let hint = rdla_model::memory::gpu_budget()
            .map_or_else(|| "none".to_string(), rdla_session::info::bytes);
        budget_field(
            ui,
            settings,
            |s| &mut s.max_gpu_memory,
            "GPU budget:",
            hint,
            "what the model's layers, a prompt's cache and a forward pass's working tensors may \
             take on the GPU, e.g. 12GiB; empty: none (wgpu does not report a GPU's memory; the \
             memory budget applies). Layers that do not fit stream to the GPU; checked before \
             the next model or prompt is loaded.",
        );
    }
}

/// "Compare with…": a second prompt for the same target; every heatmap then shows this
/// prompt's values minus its (both on hover).
fn compare(ui: &mut Ui, state: &AppState, settings: &mut Settings, actions: &mut Vec<Action>) {
    ui.separator();
    ui.label("Compare with…").on_hover_text(
        "a second prompt for the same answer (and foil): every heatmap shows this prompt's \
         values minus its, with both values on hover. Below the root both prompts need the \
         same number of tokens (swap a name for a name of one token, say).",
    );
    let r = ui.add(
        egui::TextEdit::multiline(&mut settings.contrast_prompt)
            .desired_rows(2)
            .desired_width(ui.available_width())
            .font(egui::TextStyle::Monospace),
    );
    r.widget_info(|| {
        egui::WidgetInfo::labeled(egui::Role::MultilineTextInput, true, "Contrast prompt")
    });
    let c = &state.contrast;
    ui.horizontal(|ui| {
        let can = state.computed.is_some() && c.pending.is_none();
        let text = settings.contrast_prompt.trim().to_string();
        if ui
            .add_enabled(can && !text.is_empty(), egui::Button::new("Compare"))
            .on_hover_text("compute the contrast prompt and show the deltas")
            .clicked()
        {
            actions.push(Action::Compare(Some(settings.contrast_prompt.clone())));
        }
        if ui
            .add_enabled(
                can && c.active.is_some(),
                egui::Button::new("Stop comparing"),
            )
            .clicked()
        {
            actions.push(Action::Compare(None));
        }
    });
    if let Some(p) = &c.pending {
        ui.spinner();
        ui.label(
            RichText::new(if p.is_some() {
                "computing the contrast prompt…"
            } else {
                "back to this prompt's values…"
            })
            .weak(),
        );
    } else if let Some(p) = &c.active {
        ui.label(
            RichText::new(format!(
                "showing Δ = this prompt − “{}”",
                rdla_session::png::clip(&printable(p), 40)
            ))
            .color(theme::OK),
        );
    }
    if let Some(e) = &c.error {
        ui.colored_label(theme::ERROR, e);
    }
}

/// One budget's text field, applied as typed; a text that is not a size says why.
fn budget_field(
    ui: &mut Ui,
    settings: &mut Settings,
    field: fn(&mut Settings) -> &mut String,
    label: &str,
    hint: String,
    hover: &str,
) {
    ui.horizontal(|ui| {
        ui.label(label);
        let r = ui.add(
            egui::TextEdit::singleline(field(settings))
                .desired_width(90.0)
                .hint_text(hint),
        );
        if r.on_hover_text(hover).changed() {
            // a budget that does not parse leaves the one in force
            let _ = settings.apply_budget(false);
        }
        let text = field(settings).trim().to_string();
        if let Err(e) = rdla_model::memory::parse_size(&text)
            && !text.is_empty()
        {
            ui.colored_label(theme::ERROR, e);
        }
    });
}

/// The panel; `gpu`: the model runs on a GPU (its budget field is shown).
pub fn show(
    ui: &mut Ui,
    state: &AppState,
    settings: &mut Settings,
    actions: &mut Vec<Action>,
    gpu: bool,
) {
    ui.heading("Prompt");
    // a long prompt (pages of text, a file) scrolls inside the editor instead of pushing the
    // tokens and the answer off the panel
    let r = egui::ScrollArea::vertical()
        .id_salt("prompt text")
        .max_height(220.0)
        .show(ui, |ui| {
            ui.add(
                egui::TextEdit::multiline(&mut settings.prompt)
                    .desired_rows(4)
                    .desired_width(ui.available_width())
                    .font(egui::TextStyle::Monospace),
            )
        })
        .inner;
    r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::MultilineTextInput, true, "Prompt"));
    if r.changed() {
        actions.push(Action::Edited);
    }
    ui.horizontal(|ui| {
        if ui.checkbox(&mut settings.bos, "Prepend BOS").changed() {
            actions.push(Action::Edited);
        }
        let can = state.model.is_some() && !state.computing;
        if ui
            .add_enabled(can, egui::Button::new("Recompute"))
            .on_hover_text("run the forward pass and the attribution now")
            .clicked()
        {
            actions.push(Action::Recompute);
        }
    });
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
        (kept, Some(e)) => {
            ui.colored_label(theme::ERROR, e);
            if let Some(c) = kept {
                // the same prompt: the previous target's attribution stays on screen
                ui.label(
                    RichText::new(format!(
                        "still showing the previous target ({})",
                        c.target_label
                    ))
                    .weak(),
                );
            }
        }
        (Some(c), None) => {
            let mut t = format!("answer id {}", c.target.answer());
            if let Some(f) = c.target.foil() {
                t += &format!(", foil id {f}");
            }
            ui.label(RichText::new(format!("one token: {t}")).color(theme::OK));
            if let Some(sc) = &c.softcap {
                ui.label(format!(
                    "final logit soft-cap {}: the tree explains the pre-cap logit {:+.4}; \
                     the model outputs {:+.4} (p = {:.4})",
                    sc.cap, c.overview.target_value, sc.target_capped, sc.answer_prob
                ))
                .on_hover_text(
                    "cap·tanh(logit/cap) is not linear; the logit before it is, so that is \
                     what is attributed",
                );
            }
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
    compare(ui, state, settings, actions);
    memory_budget(ui, settings, gpu);
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
            for (i, p) in state.top().iter().enumerate() {
                ui.label(format!("{}", i + 1));
                if ui
                    .button(format!("{:?}", p.token))
                    .on_hover_text(format!("id {} — click to make it the answer", p.id))
                    .clicked()
                {
                    actions.push(Action::PickAnswer {
                        id: p.id,
                        text: p.token.clone(),
                    });
                }
                ui.label(format!("{:.3}", p.logit));
                ui.label(format!("{:.3}", p.prob));
                ui.end_row();
            }
        });
}

/// The prompt's tokens, BOS marked; hover for position and id. The tokens are broken into
/// rows of the panel's width and only the rows in view are drawn, in a scroll area of at most
/// eight rows, so a prompt of thousands of tokens costs what its visible rows cost.
fn token_strip(ui: &mut Ui, state: &AppState) {
    const PAD: f32 = 3.0;
    const GAP: f32 = 2.0;
    let t = state.tokens();
    if t.ids.is_empty() {
        return;
    }
    let font = egui::TextStyle::Monospace.resolve(ui.style());
    let text_color = ui.visuals().text_color();
    let galleys: Vec<std::sync::Arc<egui::Galley>> = ui.fonts_mut(|f| {
        t.strs
            .iter()
            .enumerate()
            .map(|(p, s)| {
                let text = if p == 0 && t.has_bos {
                    "BOS".to_string()
                } else {
                    printable(s)
                };
                f.layout_no_wrap(text, font.clone(), text_color)
            })
            .collect()
    });
    // rows break a scroll bar's width short of the panel's edge (the scroll area keeps room
    // for one), so the strip never asks the panel to grow
    let scroll = ui.spacing().scroll;
    let width = (ui.available_width()
        - scroll.bar_width
        - scroll.bar_inner_margin
        - scroll.bar_outer_margin)
        .max(40.0);
    let mut rows: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut x) = (0, 0.0);
    for (i, g) in galleys.iter().enumerate() {
        let w = g.size().x + 2.0 * PAD;
        if i > start && x + w > width {
            rows.push(start..i);
            (start, x) = (i, 0.0);
        }
        x += w + GAP;
    }
    rows.push(start..galleys.len());
    let row_h = font.size + 4.0;
    let stroke = ui.visuals().widgets.noninteractive.bg_stroke;
    egui::ScrollArea::vertical()
        .id_salt("token strip")
        .max_height((row_h + ui.spacing().item_spacing.y) * 8.0)
        .auto_shrink([false, true])
        .show_rows(ui, row_h, rows.len(), |ui, visible| {
            for row in &rows[visible] {
                let (rect, _) = ui.allocate_exact_size(
                    egui::vec2(ui.available_width().min(width), row_h),
                    egui::Sense::hover(),
                );
                let mut x = rect.left();
                for p in row.clone() {
                    let g = &galleys[p];
                    let cell = egui::Rect::from_min_size(
                        egui::pos2(x, rect.top()),
                        egui::vec2(g.size().x + 2.0 * PAD, row_h),
                    );
                    let fill = if p == 0 && t.has_bos {
                        theme::BOS
                    } else {
                        ui.visuals().faint_bg_color
                    };
                    let painter = ui.painter();
                    painter.rect(cell, 3.0, fill, stroke, egui::StrokeKind::Inside);
                    painter.galley(
                        cell.min + egui::vec2(PAD, (row_h - g.size().y) / 2.0),
                        g.clone(),
                        text_color,
                    );
                    let (id, s) = (t.ids[p], &t.strs[p]);
                    ui.interact(cell, ui.scope_id().with(("token", p)), egui::Sense::hover())
                        .on_hover_text(format!("position {p} · id {id} · {s:?}"));
                    x = cell.right() + GAP;
                }
            }
        });
    if rows.len() > 8 {
        ui.weak(format!(
            "{} tokens in {} rows: scroll",
            t.ids.len(),
            rows.len()
        ));
    }
}

//! The top bar: opening models (dialog, recent, Hugging Face cache, a typed path), exports,
//! the colour map; the load progress and the load-error banner under it.

use std::path::PathBuf;

use egui::{RichText, Ui};
use rdla_session::{ColorMap, ModelSource};

use crate::hf_cache;
use crate::local_models::{self, Scan};
use crate::settings::Settings;
use crate::state::{Action, AppState, Pick};
use crate::theme;

/// The top bar's own state: the models found on this machine (the Hugging Face cache, Ollama,
/// LM Studio), looked for in the background, and the path field.
#[derive(Debug)]
pub struct TopBar {
    pub local: Scan,
    pub path_text: String,
}

impl TopBar {
    /// Start looking for local models; `wake` is called when they are found (the UI repaints).
    pub fn new(wake: impl Fn() + Send + 'static) -> Self {
        Self {
            local: Scan::start(local_models::scan, wake, local_models::SCAN_TIMEOUT),
            path_text: String::new(),
        }
    }

    pub fn show(
        &mut self,
        ui: &mut Ui,
        state: &AppState,
        settings: &mut Settings,
        actions: &mut Vec<Action>,
    ) {
        if let Some(left) = self.local.poll() {
            ui.ctx().request_repaint_after(left);
        }
        ui.horizontal_wrapped(|ui| {
            for (label, tip, pick) in [
                ("Open model…", "Pick a model folder", Pick::ModelFolder),
                (
                    "Open GGUF…",
                    "Pick a .gguf file (llama.cpp, Ollama, LM Studio)",
                    Pick::Gguf,
                ),
                (
                    "Open text…",
                    "Use a text file (UTF-8) as the prompt",
                    Pick::PromptText,
                ),
            ] {
                if ui.button(label).on_hover_text(tip).clicked() {
                    actions.push(Action::Pick(pick));
                }
            }
            ui.menu_button("Recent", |ui| {
                if settings.recent.is_empty() {
                    ui.label("(none yet)");
                }
                for s in &settings.recent {
                    if ui.button(s.to_string()).clicked() {
                        actions.push(Action::Open(s.clone()));
                        ui.close();
                    }
                }
                ui.separator();
                if ui.button("Default model").clicked() {
                    actions.push(Action::Open(ModelSource::Default));
                    ui.close();
                }
            });
            let found = self.local.found();
            ui.menu_button("Ollama / LM Studio", |ui| {
                if let Some(msg) = self.local.message() {
                    ui.label(msg);
                }
                let gguf = found.map_or(&[][..], |f| f.gguf.as_slice());
                if found.is_some() && gguf.is_empty() {
                    ui.label("no GGUF models found (~/.ollama/models, ~/.lmstudio/models)");
                }
                for m in gguf {
                    if ui
                        .button(&m.name)
                        .on_hover_text(m.path.display().to_string())
                        .clicked()
                    {
                        actions.push(Action::Open(ModelSource::Path(m.path.clone())));
                        ui.close();
                    }
                }
            });
            ui.menu_button("Hugging Face cache", |ui| {
                if let Some(msg) = self.local.message() {
                    ui.label(msg);
                }
                let hf = found.map_or(&[][..], |f| f.hf.as_slice());
                if found.is_some() && hf.is_empty() {
                    ui.label(format!(
                        "no models in {}",
                        hf_cache::hub_dir()
                            .map_or_else(|| "the HF cache".into(), |p| p.display().to_string())
                    ));
                }
                for m in hf {
                    if ui
                        .button(&m.repo)
                        .on_hover_text(m.dir.display().to_string())
                        .clicked()
                    {
                        actions.push(Action::Open(ModelSource::Path(m.dir.clone())));
                        ui.close();
                    }
                }
            });
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.path_text)
                    .hint_text("or type a model path")
                    .desired_width(220.0),
            );
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "Model path"));
            if r.lost_focus()
                && ui.input(|i| i.key_pressed(egui::Key::Enter))
                && !self.path_text.trim().is_empty()
            {
                actions.push(Action::Open(ModelSource::Path(PathBuf::from(
                    self.path_text.trim(),
                ))));
            }
            ui.separator();
            if ui.button("Export PNG…").clicked() {
                actions.push(Action::ExportPng);
            }
            if ui.button("Export CSV…").clicked() {
                actions.push(Action::ExportCsv);
            }
            if ui.button("Copy path").clicked() {
                actions.push(Action::CopyPath);
            }
            if ui
                .add_enabled(
                    state.computed.is_some() && !state.saving,
                    egui::Button::new("Save result…"),
                )
                .on_hover_text(
                    "save what you explored (nodes, graph, verification) with the model's \
                     sha256 and the prompt, to reopen without the model or re-check with it",
                )
                .clicked()
            {
                actions.push(Action::SaveResult);
            }
            if ui
                .button("Open result…")
                .on_hover_text("open a saved result file (.rdla), read-only, without its model")
                .clicked()
            {
                actions.push(Action::Pick(Pick::ResultFile));
            }
            if ui
                .button("Census…")
                .on_hover_text("attribute every prompt of a file and see each node's mean")
                .clicked()
            {
                actions.push(Action::ShowCensus(!state.census.open));
            }
            ui.separator();
            egui::ComboBox::from_label("Colours")
                .selected_text(settings.colormap.label())
                .show_ui(ui, |ui| {
                    for cm in [ColorMap::BlueWhiteRed, ColorMap::RedYellowGreen] {
                        ui.selectable_value(&mut settings.colormap, cm, cm.label());
                    }
                });
        });
        loading_row(ui, state, actions);
        computing_row(ui, state, actions);
        error_banner(ui, state, actions);
    }
}

/// The load in progress: a progress bar in bytes and a Cancel button.
fn loading_row(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    if let Some(l) = &state.loading {
        ui.horizontal(|ui| {
            ui.label(format!("Loading {}", l.source));
            let frac = if l.total > 0 {
                l.done as f32 / l.total as f32
            } else {
                0.0
            };
            ui.add(
                egui::ProgressBar::new(frac)
                    .desired_width(260.0)
                    .text(format!(
                        "{:.1} / {:.1} MB",
                        l.done as f64 / 1e6,
                        l.total as f64 / 1e6
                    )),
            );
            if ui.button("Cancel").clicked() {
                actions.push(Action::CancelLoad);
            }
        });
    }
}

/// The computation in progress: its stage, time so far and left, and a Cancel button (an
/// edit of the prompt or target cancels it too).
fn computing_row(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    let Some(p) = state.progress.filter(|_| state.computing) else {
        return;
    };
    ui.horizontal(|ui| {
        // the worker computes one thing at a time: a census in flight comes first
        let (fraction, text) = match (state.census.running, p.stage) {
            (Some((done, total)), None) => (
                0.0,
                format!(
                    "waiting for the census ({done} / {total} prompts; Stop census to compute now)"
                ),
            ),
            _ => (p.estimate().0, p.describe()),
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .desired_width(420.0)
                .text(text),
        );
        if ui
            .button("Cancel computation")
            .on_hover_text("stop the forward pass at its next layer (editing the prompt does too)")
            .clicked()
        {
            actions.push(Action::CancelCompute);
        }
    });
}

/// A model that failed to load: why, and that the previous one is still there.
fn error_banner(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    if let Some(e) = &state.load_error {
        egui::Frame::new()
            .fill(theme::ERROR_BANNER)
            .inner_margin(6.0)
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.label(RichText::new(e).color(egui::Color32::WHITE));
                    if ui.button("Dismiss").clicked() {
                        actions.push(Action::DismissLoadError);
                    }
                });
                if state.model.is_some() {
                    ui.label(
                        RichText::new("The previous model is still loaded.")
                            .color(egui::Color32::LIGHT_GRAY),
                    );
                }
            });
    }
}

/// The prompt from a text file, or a status message saying why not. Only a regular file is
/// opened (a FIFO would block the frame), and it is read to at most what the model's context
/// can hold (`rdla_session::input`; its reported size is never trusted: it was).
pub fn read_prompt_file(p: &std::path::Path, n_ctx: Option<usize>) -> Action {
    if !std::fs::metadata(p).is_ok_and(|m| m.is_file()) {
        return Action::Status(format!("cannot read {}: not a regular file", p.display()));
    }
    let limit = rdla_session::input::prompt_byte_limit(n_ctx.unwrap_or(0));
    match rdla_session::input::read_text_file(p, limit) {
        Ok(text) => Action::SetPrompt(text),
        Err(e) => Action::Status(format!("cannot read {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_text_file_becomes_the_prompt_and_a_missing_one_a_message() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("p.txt");
        std::fs::write(&f, "Once upon a time\n").unwrap();
        assert_eq!(
            read_prompt_file(&f, Some(64)),
            Action::SetPrompt("Once upon a time\n".into())
        );
        match read_prompt_file(&tmp.path().join("missing.txt"), Some(64)) {
            Action::Status(s) => assert!(s.contains("cannot read"), "{s}"),
            other => panic!("{other:?}"),
        }
        // a regression test: the size was taken from the file's metadata, so `/dev/zero`
        // (size 0) was read until memory ran out; a FIFO would block the frame
        for p in ["/dev/zero", "/dev/null"] {
            match read_prompt_file(std::path::Path::new(p), Some(64)) {
                Action::Status(s) => assert!(s.contains("not a regular file"), "{s}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        // a file over what the context holds is refused without reading the rest
        let big = tmp.path().join("big.txt");
        std::fs::write(&big, "x".repeat((1 << 20) + 1)).unwrap();
        match read_prompt_file(&big, Some(64)) {
            Action::Status(s) => assert!(s.contains("more than 1048576 bytes"), "{s}"),
            other => panic!("{other:?}"),
        }
    }
}

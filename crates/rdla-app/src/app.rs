//! The explorer application: the frame. It drains worker events into the [`AppState`], draws
//! the panels (which push [`Action`]s), and applies the actions at the end of the frame —
//! state changes through [`AppState::act`], and the side effects that need egui or dialogs
//! (exports, the clipboard, cancelling a load) here.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::time::Duration;

use egui::Ui;
use rdla_model::{Device, DeviceInfo};
use rdla_session::png::{PngOptions, encode_png};
use rdla_session::{ModelSource, NodeView};

use crate::dialogs::{DialogResult, Dialogs};
use crate::panels::{census, details, explorer, graph, prompt, status, top_bar::TopBar};
use crate::settings::Settings;
use crate::state::{Action, AppState, Pick};
use crate::worker::{Command, WorkerHandle};

/// How to start a new worker (the first one, or after one died).
type Spawner = Box<dyn Fn() -> WorkerHandle>;

pub struct RdlaApp {
    pub settings: Settings,
    pub state: AppState,
    worker: WorkerHandle,
    spawn: Spawner,
    pub device_info: DeviceInfo,
    dialogs: Box<dyn Dialogs>,
    top_bar: TopBar,
    actions: Vec<Action>,
}

impl std::fmt::Debug for RdlaApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdlaApp")
            .field("model", &self.state.model)
            .finish_non_exhaustive()
    }
}

impl RdlaApp {
    /// Build the app around a worker factory and open `source`.
    pub fn new(
        settings: Settings,
        device: Device,
        device_info: DeviceInfo,
        wake: impl Fn() + Clone + Send + 'static,
        dialogs: Box<dyn Dialogs>,
        source: ModelSource,
    ) -> Self {
        let info = device_info.clone();
        let top_bar = TopBar::new(wake.clone());
        let spawn: Spawner =
            Box::new(move || WorkerHandle::spawn(device.clone(), info.clone(), wake.clone()));
        let mut app = Self {
            settings,
            state: AppState::default(),
            worker: spawn(),
            spawn,
            device_info,
            dialogs,
            top_bar,
            actions: Vec::new(),
        };
        let cmd = app.state.open(source);
        app.send(vec![cmd]);
        app
    }

    /// Whether the worker has nothing outstanding (for tests and the status bar).
    pub fn is_idle(&self) -> bool {
        self.state.is_idle()
    }

    pub fn current_path(&self) -> rdla_attrib::Path {
        self.state.current_path()
    }

    /// The view on screen, when it is ready.
    pub fn current_view(&self) -> Option<&NodeView> {
        self.state.current_view()
    }

    fn send(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            if !self.worker.send(c) {
                self.restart_worker();
                return;
            }
        }
    }

    /// The worker is gone: start a new one and reload the model (the state says why).
    fn restart_worker(&mut self) {
        self.state.worker_died();
        self.worker = (self.spawn)();
        if let Some(source) = self.state.model.as_ref().map(|m| m.source.clone()) {
            let cmd = self.state.open(source);
            let _ = self.worker.send(cmd);
        }
    }

    /// Apply worker events.
    pub fn drain_events(&mut self) {
        loop {
            match self.worker.rx.try_recv() {
                Ok(ev) => {
                    let cmds = self.state.apply(ev, &mut self.settings);
                    self.send(cmds);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.restart_worker();
                    return;
                }
            }
        }
    }

    /// Export the current view as a PNG to `path`; returns the image size.
    /// Export the current node's heatmap as PNG; `columns` restricts it to the window of
    /// columns the explorer shows for a long one.
    pub fn export_png_to(
        &self,
        path: &std::path::Path,
        pixels_per_point: f32,
        columns: Option<std::ops::Range<usize>>,
    ) -> Result<(u32, u32), String> {
        let view = self.current_view().ok_or("nothing to export yet")?;
        let opts = self.png_options(pixels_per_point);
        let windowed;
        let hm = match columns {
            Some(r) => {
                windowed = view.heatmap.columns(r);
                &windowed
            }
            None => &view.heatmap,
        };
        let (bytes, dims) = encode_png(hm, opts).map_err(|e| e.to_string())?;
        self.write_export(path, &bytes)?;
        Ok(dims)
    }

    /// Export the current node's children (or the overview tables at the root) as CSV.
    pub fn export_csv_to(&self, path: &std::path::Path) -> Result<(), String> {
        let computed = self
            .state
            .computed
            .as_ref()
            .ok_or("nothing to export yet")?;
        let view = self.current_view().ok_or("the view is still computing")?;
        // the overview tables at the root, as `rdla attribute --csv` without `--path`
        let node = (!view.path.is_root()).then_some(&view.expansion);
        let text = rdla_session::csv::export(computed, node);
        self.write_export(path, text.as_bytes())
    }

    /// The graph view's trace as PNG or JSON bytes (what is shown: pruned as on screen).
    pub fn graph_bytes(&self, ext: &str) -> Result<Vec<u8>, String> {
        let g = &self.state.graph;
        let trace = g.trace.as_ref().ok_or("nothing traced yet")?;
        let shown = trace.pruned(g.options.threshold, g.options.max_nodes);
        let model = self.state.model.as_ref().ok_or("no model")?;
        let computed = self.state.computed.as_ref().ok_or("nothing computed")?;
        if ext == "json" {
            // the CLI's document: tokens, target label and ids, the trace's time
            let context = rdla_session::graph::GraphContext::of(model.name(), computed, g.trace_ms)
                .verified(g.verified());
            let v = rdla_session::graph::json(&shown, context);
            return serde_json::to_vec(&v).map_err(|e| e.to_string());
        }
        rdla_session::graph::png(
            &shown,
            &computed.tokens.strs,
            model.config.n_layers,
            model.name(),
            &computed.target_label,
            g.verified()
                .map(rdla_session::verify::Verification::stamp)
                .as_deref(),
        )
        .map_err(|e| e.to_string())
    }

    /// The Census view's mean heatmap, titled with the model and the prompts file.
    pub fn census_heatmap(&self) -> Option<rdla_session::Heatmap> {
        let table = self.state.census.table.as_ref()?;
        let model = self.state.model.as_ref().map_or("model", |m| m.name());
        let file = std::path::Path::new(&self.state.census.file)
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        Some(table.mean_heatmap(&format!("{model} · census of {file}")))
    }

    /// Export the Census view's mean heatmap as PNG to `path`; returns the image size.
    pub fn export_census_png_to(&self, path: &std::path::Path) -> Result<(u32, u32), String> {
        let hm = self.census_heatmap().ok_or("no census yet")?;
        let opts = PngOptions {
            scale: 2.0,
            colormap: self.settings.colormap,
        };
        let (bytes, dims) = encode_png(&hm, opts).map_err(|e| e.to_string())?;
        self.write_export(path, &bytes)?;
        Ok(dims)
    }

    fn export_census(&mut self) {
        let model = self.state.model.as_ref().map_or("model", |m| m.name());
        let name = format!("rdla-{}-census-mean.png", model.replace(['/', ' '], "_"));
        let msg = match self.dialogs.save_file(&name, "png") {
            DialogResult::Picked(p) => match self.export_census_png_to(&p) {
                Ok((w, h)) => format!("exported {} ({w}×{h})", p.display()),
                Err(e) => format!("export failed: {e}"),
            },
            DialogResult::Cancelled => return,
            DialogResult::Unavailable(why) => why,
        };
        self.state.status = msg;
    }

    fn export_graph(&mut self, ext: &str) {
        let model = self.state.model.as_ref().map_or("model", |m| m.name());
        let name = format!("rdla-{}-graph.{ext}", model.replace(['/', ' '], "_"));
        self.export_bytes(&name, ext, |app| app.graph_bytes(ext));
    }

    /// Ask where to write `name` (a `ext` file), then write what `bytes` gives, and say so.
    fn export_bytes(
        &mut self,
        name: &str,
        ext: &str,
        bytes: impl FnOnce(&Self) -> Result<Vec<u8>, String>,
    ) {
        let msg = match self.dialogs.save_file(name, ext) {
            DialogResult::Picked(p) => match bytes(self).and_then(|b| self.write_export(&p, &b)) {
                Ok(()) => format!("wrote {}", p.display()),
                Err(e) => format!("export failed: {e}"),
            },
            DialogResult::Cancelled => return,
            DialogResult::Unavailable(why) => why,
        };
        self.state.status = msg;
    }

    /// Open a result file read-only (shown instead of the explorer), or say why not.
    pub fn open_result(&mut self, file: &std::path::Path) {
        match rdla_session::saved::Saved::open(file) {
            Ok(saved) => self.show_result(file, saved),
            Err(e) => self.state.status = format!("cannot open the result: {e}"),
        }
    }

    /// Show a result file's contents read-only, instead of the explorer.
    pub fn show_result(&mut self, file: &std::path::Path, saved: rdla_session::saved::Saved) {
        self.state.status = format!(
            "opened {} ({} nodes{})",
            file.display(),
            saved.nodes.len(),
            if saved.sites.is_empty() {
                String::new()
            } else {
                format!(", a graph of {} sites", saved.sites.len())
            }
        );
        self.state.result = Some(crate::state::ResultState {
            file: file.to_path_buf(),
            saved,
            at: rdla_attrib::Path::root(),
            graph: false,
            note: None,
        });
    }

    /// Ask where to save what was explored, then have the worker write it.
    fn save_result(&mut self) {
        if self.state.computed.is_none() || self.state.saving {
            return;
        }
        let name = self.export_name("rdla");
        match self.dialogs.save_file(&name, "rdla") {
            DialogResult::Picked(file) => {
                let mut paths: Vec<rdla_attrib::Path> = self.state.views.keys().cloned().collect();
                paths.sort_by_key(ToString::to_string);
                let g = &self.state.graph;
                // the graph as shown (pruned), so its export reopens the same
                let trace = g.trace.as_ref().map(|t| {
                    (
                        Box::new(t.pruned(g.options.threshold, g.options.max_nodes)),
                        g.trace_ms,
                    )
                });
                let verification = g.verified().cloned().map(Box::new);
                self.state.saving = true;
                self.state.status = format!("saving {}…", file.display());
                self.send(vec![crate::worker::Command::SaveResult {
                    file,
                    paths,
                    trace,
                    verification,
                }]);
            }
            DialogResult::Cancelled => {}
            DialogResult::Unavailable(why) => self.state.status = why,
        }
    }

    /// The open result's PNG: the heatmap shown (`png`, at `pixels_per_point` as the live
    /// export) or its graph (`graph.png`), drawn as the live session drew them.
    pub fn result_bytes(&self, what: &str, pixels_per_point: f32) -> Result<Vec<u8>, String> {
        let r = self.state.result.as_ref().ok_or("no result open")?;
        if what == "graph.png" {
            let trace = r.saved.trace().ok_or("the result holds no graph")?;
            let stamp = r.saved.verification().map(|v| v.stamp());
            let m = &r.saved.manifest;
            return rdla_session::graph::png(
                &trace,
                &m.token_strs,
                r.n_layers(),
                &m.model.name,
                &m.target_label,
                stamp.as_deref(),
            )
            .map_err(|e| e.to_string());
        }
        let hm = r
            .saved
            .view(&r.at)
            .ok_or("this node's heatmap is not in the file")?;
        encode_png(hm, self.png_options(pixels_per_point))
            .map(|(b, _)| b)
            .map_err(|e| e.to_string())
    }

    /// How a heatmap PNG is drawn: twice the screen's pixels (at least 2), in the colours
    /// chosen.
    fn png_options(&self, pixels_per_point: f32) -> PngOptions {
        PngOptions {
            scale: (2.0 * pixels_per_point).max(2.0),
            colormap: self.settings.colormap,
        }
    }

    fn export_result(&mut self, what: &str, pixels_per_point: f32) {
        let Some(r) = &self.state.result else {
            return;
        };
        let stem = r.file.file_stem().map_or_else(
            || "result".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let name = format!("{stem}.{what}");
        self.export_bytes(&name, "png", |app| app.result_bytes(what, pixels_per_point));
    }

    /// Write an export, never into the model's folder (links resolved).
    fn write_export(&self, path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
        let protected = self
            .state
            .model
            .as_ref()
            .map_or(&[][..], |m| m.protected.as_slice());
        rdla_session::output::write_outside(path, protected, bytes).map_err(|e| e.to_string())
    }

    /// The default file name of an export of the current view.
    fn export_name(&self, ext: &str) -> String {
        let model = self.state.model.as_ref().map_or("model", |m| m.name());
        self.current_view()
            .map_or_else(|| format!("rdla-view.{ext}"), |v| v.file_name(model, ext))
    }

    fn export(&mut self, ext: &str, ctx: &egui::Context) {
        let msg = match self.dialogs.save_file(&self.export_name(ext), ext) {
            DialogResult::Picked(p) => {
                let done = if ext == "png" {
                    let columns = self.current_view().and_then(|v| {
                        crate::panels::explorer::shown_columns(ctx, &v.path, v.heatmap.n_cols())
                    });
                    self.export_png_to(&p, ctx.pixels_per_point(), columns)
                        .map(|(w, h)| format!(" ({w}×{h})"))
                } else {
                    self.export_csv_to(&p).map(|()| String::new())
                };
                match done {
                    Ok(size) => format!("exported {}{size}", p.display()),
                    Err(e) => format!("export failed: {e}"),
                }
            }
            DialogResult::Cancelled => "export cancelled".into(),
            DialogResult::Unavailable(why) => why,
        };
        self.state.status = msg;
    }

    /// What a file dialog's answer asks for: open the model, use the text as the prompt, or
    /// say why there is none (a cancelled dialog asks for nothing).
    fn picked(&mut self, pick: Pick) -> Option<Action> {
        let result = match pick {
            Pick::ModelFolder => self.dialogs.pick_model(),
            Pick::Gguf => self.dialogs.pick_gguf(),
            Pick::PromptText => self.dialogs.pick_text(),
            Pick::CensusPrompts => self.dialogs.pick_prompts(),
            Pick::ResultFile => self.dialogs.pick_result(),
        };
        match result {
            DialogResult::Picked(p) if pick == Pick::CensusPrompts => Some(Action::RunCensus(p)),
            DialogResult::Picked(p) if pick == Pick::ResultFile => Some(Action::OpenResult(p)),
            DialogResult::Picked(p) if pick == Pick::PromptText => {
                let n_ctx = self.state.model.as_ref().map(|m| m.config.n_ctx);
                Some(crate::panels::top_bar::read_prompt_file(&p, n_ctx))
            }
            DialogResult::Picked(p) => Some(Action::Open(rdla_session::ModelSource::Path(p))),
            DialogResult::Cancelled => None,
            DialogResult::Unavailable(why) => Some(Action::Status(why)),
        }
    }

    fn apply_actions(&mut self, ctx: &egui::Context) {
        let mut queue: std::collections::VecDeque<Action> =
            std::mem::take(&mut self.actions).into();
        while let Some(a) = queue.pop_front() {
            // a Cancel, or an edit (its result would be stale; the debounced recompute
            // follows), stops the computation in progress at its next layer
            let stops = matches!(a, Action::CancelCompute)
                || (matches!(a, Action::Edited) && self.state.computing);
            if stops {
                self.worker.wanted.store(0, Ordering::SeqCst);
            }
            match a {
                Action::Pick(pick) => {
                    if let Some(next) = self.picked(pick) {
                        queue.push_front(next);
                    }
                }
                Action::CancelLoad => {
                    self.worker.cancel.store(true, Ordering::SeqCst);
                    self.state.status = "loading cancelled".into();
                }
                Action::CancelCensus => {
                    self.worker.census_wanted.store(0, Ordering::SeqCst);
                    let cmds = self.state.act(Action::CancelCensus, &mut self.settings);
                    self.send(cmds);
                }
                Action::ExportCensusPng => self.export_census(),
                Action::ExportPng => self.export("png", ctx),
                Action::ExportGraphPng => self.export_graph("png"),
                Action::OpenResult(p) => self.open_result(&p),
                Action::SaveResult => self.save_result(),
                Action::ExportResultPng => self.export_result("png", ctx.pixels_per_point()),
                Action::ExportResultGraphPng => {
                    self.export_result("graph.png", ctx.pixels_per_point());
                }
                Action::ExportGraphJson => self.export_graph("json"),
                Action::ExportCsv => self.export("csv", ctx),
                Action::CopyPath => {
                    let p = self.state.current_path().to_string();
                    ctx.copy_text(p.clone());
                    self.state.status = format!("copied path `{p}`");
                }
                other => {
                    let cmds = self.state.act(other, &mut self.settings);
                    self.send(cmds);
                }
            }
        }
    }

    /// Frame logic that does not draw: events, debounce, dropped folders.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.drain_events();
        let dropped: Option<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .next()
        });
        if let Some(p) = dropped {
            self.actions.push(Action::Open(ModelSource::Path(p)));
        }
        let (cmds, wait) = self.state.tick(&self.settings);
        self.send(cmds);
        if let Some(left) = wait {
            ctx.request_repaint_after(left);
        }
        // the worker wakes the UI with every event (progress included); this is only a
        // slow safety net, not an animation (a spinner's continuous repaint cost more CPU
        // than the computation on a software renderer)
        if !self.is_idle() {
            ctx.request_repaint_after(Duration::from_secs(1));
        }
    }

    /// Draw everything, then apply what the panels asked for.
    pub fn draw(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        egui::Panel::top("menu").show(ui, |ui| {
            self.top_bar
                .show(ui, &self.state, &mut self.settings, &mut self.actions);
        });
        egui::Panel::bottom("status")
            .show(ui, |ui| status::show(ui, &self.state, &self.device_info));
        // the side panels never take more than their share of the window, whatever the prompt
        let width = ctx.content_rect().width();
        // a result file open read-only has its own prompt and tokens, shown in its view
        if self.state.result.is_none() {
            egui::Panel::left("prompt")
                .default_size(340.0)
                .max_size((width * 0.4).max(240.0))
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        prompt::show(
                            ui,
                            &self.state,
                            &mut self.settings,
                            &mut self.actions,
                            self.device_info.is_gpu(),
                        );
                    });
                });
        }
        if self.state.current_view().is_some()
            && !self.state.census.open
            && self.state.result.is_none()
        {
            egui::Panel::right("details")
                .default_size(300.0)
                .max_size((width * 0.35).max(220.0))
                .show(ui, |ui| details::show(ui, &self.state, &mut self.actions));
        }
        let census_heatmap = if self.state.census.open {
            self.census_heatmap()
        } else {
            None
        };
        egui::CentralPanel::default().show(ui, |ui| {
            if let Some(r) = &self.state.result {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    crate::panels::result::show(ui, &self.settings, r, &mut self.actions);
                });
            } else if self.state.census.open {
                census::show(
                    ui,
                    &self.state,
                    &self.settings,
                    census_heatmap.as_ref(),
                    &mut self.actions,
                );
            } else if self.state.graph.open {
                let n_layers = self.state.model.as_ref().map_or(0, |m| m.config.n_layers);
                graph::show(ui, &self.state, n_layers, &mut self.actions);
            } else {
                explorer::show(ui, &self.state, &self.settings, &mut self.actions);
            }
        });
        self.keyboard(&ctx);
        self.apply_actions(&ctx);
    }

    /// Arrows move the selection, Enter drills in, Backspace goes up, Alt+arrows are history.
    /// Every key press of the frame counts, in order, each with the modifiers it came with.
    fn keyboard(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let keys: Vec<(egui::Key, egui::Modifiers)> = ctx.input(|i| {
            i.events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::Key {
                        key,
                        pressed: true,
                        modifiers,
                        ..
                    } => Some((*key, *modifiers)),
                    _ => None,
                })
                .collect()
        });
        if keys.is_empty() {
            return;
        }
        let heatmap = self.current_view().map(|v| &v.heatmap);
        let acts = key_actions(&keys, heatmap, self.state.selected);
        self.actions.extend(acts);
    }
}

/// The actions of the keys pressed in one frame, in order. Alt+←/→ go back and forward (with
/// or without a view on screen); the arrows, Enter and Backspace act on `heatmap` with the
/// selection `selected`, until a key has navigated away from it.
fn key_actions(
    keys: &[(egui::Key, egui::Modifiers)],
    heatmap: Option<&rdla_session::Heatmap>,
    selected: Option<(usize, usize)>,
) -> Vec<Action> {
    use egui::Key;
    let mut heatmap = heatmap.filter(|hm| hm.n_rows() > 0 && hm.n_cols() > 0);
    let mut selected = selected;
    let mut acts = Vec::new();
    for &(key, m) in keys {
        if m.alt {
            match key {
                Key::ArrowLeft => acts.push(Action::Back),
                Key::ArrowRight => acts.push(Action::Forward),
                _ => continue,
            }
            heatmap = None;
            continue;
        }
        if key == Key::Backspace {
            acts.push(Action::Up);
            heatmap = None;
            continue;
        }
        let Some(hm) = heatmap else {
            continue;
        };
        let (dr, dc) = match key {
            Key::ArrowDown => (1, 0),
            Key::ArrowUp => (-1, 0),
            Key::ArrowRight => (0, 1),
            Key::ArrowLeft => (0, -1),
            Key::Enter => {
                if let Some(t) = selected.and_then(|(r, c)| hm.target(r, c)) {
                    acts.push(Action::Navigate(t.clone()));
                    heatmap = None;
                }
                continue;
            }
            _ => continue,
        };
        let (r, c) = selected.unwrap_or((0, 0));
        let moved = (
            r.saturating_add_signed(dr).min(hm.n_rows() - 1),
            c.saturating_add_signed(dc).min(hm.n_cols() - 1),
        );
        selected = Some(moved);
        acts.push(Action::Select(selected));
    }
    acts
}

impl eframe::App for RdlaApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        RdlaApp::logic(self, ctx);
    }

    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, Settings::KEY, &self.settings);
    }
}

#[cfg(test)]
mod tests {
    use egui::{Key, Modifiers};

    use super::*;

    /// History keys work while no view is on screen (it is still computing); the others wait
    /// for one.
    #[test]
    fn history_keys_need_no_view() {
        let keys = [
            (Key::ArrowLeft, Modifiers::ALT),
            (Key::ArrowRight, Modifiers::NONE),
            (Key::Enter, Modifiers::NONE),
            (Key::ArrowRight, Modifiers::ALT),
            (Key::Backspace, Modifiers::NONE),
        ];
        assert_eq!(
            key_actions(&keys, None, Some((0, 0))),
            [Action::Back, Action::Forward, Action::Up]
        );
    }
}

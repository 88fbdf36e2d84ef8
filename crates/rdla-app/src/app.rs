//! The explorer application: panels, navigation, exports. State changes requested by the
//! panels are collected as [`Action`]s and applied at the end of the frame.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{Color32, RichText, Ui};
use rdla_attrib::heatmap::printable;
use rdla_attrib::png::{PngOptions, write_png};
use rdla_attrib::{
    ColorMap, Heatmap, MlpMode, NodeKind, Path, Prediction, node_heatmap, root_heatmap,
};
use rdla_model::DeviceInfo;

use crate::dialogs::{DialogResult, Dialogs};
use crate::heatmap_view::HeatmapView;
use crate::hf_cache::{self, CachedModel};
use crate::settings::Settings;
use crate::worker::{
    Command, ComputeRequest, Computed, Event, Expanded, ModelInfo, ModelSource, Tokens,
    WorkerHandle,
};

/// Debounce between an edit and the recomputation it triggers.
const DEBOUNCE: Duration = Duration::from_millis(350);

/// Something the UI asked for this frame.
#[derive(Debug, Clone)]
enum Action {
    Open(ModelSource),
    CancelLoad,
    Navigate(Path),
    Back,
    Forward,
    Up,
    SetAnswer(String),
    ExportPng,
    ExportCsv,
    CopyPath,
    Edited,
}

#[derive(Debug, Clone)]
struct Loading {
    source: ModelSource,
    id: u64,
    done: u64,
    total: u64,
}

/// Browser-style history of visited paths.
#[derive(Debug, Clone, Default)]
struct Nav {
    history: Vec<Path>,
    index: usize,
}

impl Nav {
    fn current(&self) -> Path {
        self.history.get(self.index).cloned().unwrap_or_default()
    }
    fn go(&mut self, p: Path) {
        if self.current() == p && !self.history.is_empty() {
            return;
        }
        self.history.truncate(self.index + 1);
        self.history.push(p);
        self.index = self.history.len() - 1;
    }
    fn reset(&mut self) {
        self.history = vec![Path::root()];
        self.index = 0;
    }
}

pub struct RdlaApp {
    pub settings: Settings,
    worker: WorkerHandle,
    pub device_info: DeviceInfo,
    dialogs: Box<dyn Dialogs>,
    next_id: u64,

    pub model: Option<ModelInfo>,
    loading: Option<Loading>,
    pub load_error: Option<String>,

    compute_id: u64,
    computing: bool,
    dirty_since: Option<Instant>,
    pub computed: Option<Computed>,
    pub compute_error: Option<String>,
    tokens: Tokens,
    top: Vec<Prediction>,

    nav: Nav,
    nodes: HashMap<Path, Expanded>,
    pending: HashSet<Path>,
    pub selected: Option<(usize, usize)>,
    expand_error: Option<String>,

    pub status: String,
    last_ms: Option<f64>,
    hf_models: Vec<CachedModel>,
    open_text: String,
    actions: Vec<Action>,
}

impl std::fmt::Debug for RdlaApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdlaApp")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl RdlaApp {
    /// Build the app around a running worker and open `source`.
    pub fn new(
        settings: Settings,
        worker: WorkerHandle,
        device_info: DeviceInfo,
        dialogs: Box<dyn Dialogs>,
        source: ModelSource,
    ) -> Self {
        let mut app = Self {
            settings,
            worker,
            device_info,
            dialogs,
            next_id: 1,
            model: None,
            loading: None,
            load_error: None,
            compute_id: 0,
            computing: false,
            dirty_since: None,
            computed: None,
            compute_error: None,
            tokens: Tokens::default(),
            top: Vec::new(),
            nav: Nav::default(),
            nodes: HashMap::new(),
            pending: HashSet::new(),
            selected: None,
            expand_error: None,
            status: String::new(),
            last_ms: None,
            hf_models: hf_cache::hub_dir()
                .map(|h| hf_cache::scan(&h))
                .unwrap_or_default(),
            open_text: String::new(),
            actions: Vec::new(),
        };
        app.nav.reset();
        app.open(source);
        app
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn open(&mut self, source: ModelSource) {
        let id = self.id();
        self.loading = Some(Loading {
            source: source.clone(),
            id,
            done: 0,
            total: 0,
        });
        self.load_error = None;
        self.worker.send(Command::Load { source, id });
    }

    fn request_compute(&mut self) {
        if self.model.is_none() {
            return;
        }
        let id = self.id();
        self.compute_id = id;
        self.computing = true;
        self.dirty_since = None;
        let s = &self.settings;
        let request = ComputeRequest {
            prompt: s.prompt.clone(),
            answer: s.answer.clone(),
            foil: Some(s.foil.clone()).filter(|f| !f.is_empty()),
            bos: s.bos,
            mlp_mode: s.mlp_mode,
        };
        self.worker.send(Command::Compute { request, id });
    }

    fn request_expand(&mut self, path: &Path) {
        if self.computed.is_none() || self.nodes.contains_key(path) || self.pending.contains(path) {
            return;
        }
        self.pending.insert(path.clone());
        let id = self.compute_id;
        self.worker.send(Command::Expand {
            path: path.clone(),
            id,
        });
    }

    /// Whether the worker has nothing outstanding (for tests and the spinner).
    pub fn is_idle(&self) -> bool {
        self.loading.is_none()
            && !self.computing
            && self.pending.is_empty()
            && self.dirty_since.is_none()
    }

    pub fn current_path(&self) -> Path {
        self.nav.current()
    }

    /// Apply worker events.
    pub fn drain_events(&mut self) {
        while let Ok(ev) = self.worker.rx.try_recv() {
            match ev {
                Event::LoadProgress { id, done, total } => {
                    if let Some(l) = self.loading.as_mut().filter(|l| l.id == id) {
                        l.done = done;
                        l.total = total;
                    }
                }
                Event::Loaded { id, info } => {
                    if self.loading.as_ref().is_some_and(|l| l.id == id) {
                        self.loading = None;
                        self.settings.remember(&info.source);
                        self.status = format!("loaded {} in {:.0} ms", info.name, info.load_ms);
                        self.model = Some(info);
                        self.computed = None;
                        self.nodes.clear();
                        self.pending.clear();
                        self.nav.reset();
                        self.request_compute();
                    }
                }
                Event::LoadFailed { id, source, error } => {
                    if self.loading.as_ref().is_some_and(|l| l.id == id) {
                        self.loading = None;
                        self.load_error = Some(format!("Could not open {source}:\n{error}"));
                    }
                }
                Event::Computed { id, result } => {
                    if id == self.compute_id {
                        self.computing = false;
                        self.compute_error = None;
                        self.tokens = result.tokens.clone();
                        self.top = result.top.clone();
                        self.last_ms = Some(result.forward_ms + result.attribution_ms);
                        self.nodes.clear();
                        self.pending.clear();
                        self.computed = Some(*result);
                        // keep the place in the tree if it still exists, else go to the root
                        let here = self.nav.current();
                        if !here.is_root() {
                            self.request_expand(&here);
                        }
                    }
                }
                Event::ComputeFailed {
                    id,
                    error,
                    tokens,
                    top,
                } => {
                    if id == self.compute_id {
                        self.computing = false;
                        self.compute_error = Some(error);
                        if let Some(t) = tokens {
                            self.tokens = t;
                        }
                        self.top = top;
                        self.computed = None;
                        self.nodes.clear();
                        self.pending.clear();
                    }
                }
                Event::Expanded { id, result } => {
                    if id == self.compute_id {
                        self.pending.remove(&result.path);
                        self.last_ms = Some(result.ms);
                        self.expand_error = None;
                        self.nodes.insert(result.path.clone(), *result);
                    }
                }
                Event::ExpandFailed { id, path, error } => {
                    if id == self.compute_id {
                        self.pending.remove(&path);
                        self.expand_error = Some(error);
                        if self.nav.current() == path {
                            self.nav.go(Path::root());
                        }
                    }
                }
            }
        }
    }

    /// The heatmap of the current view, if it is ready.
    pub fn current_heatmap(&self) -> Option<Heatmap> {
        let computed = self.computed.as_ref()?;
        let model = self.model.as_ref()?;
        let path = self.nav.current();
        let title = rdla_attrib::heatmap::view_title(&model.name, &path, &self.target_label());
        if path.is_root() {
            let mut hm = root_heatmap(&computed.overview, &title);
            hm.subtitle = format!("{} · {}", printable(&self.settings.prompt), hm.subtitle);
            return Some(hm);
        }
        let node = self.nodes.get(&path)?;
        let mut hm = node_heatmap(
            &node.expansion,
            &path,
            &self.tokens.strs,
            computed.overview.layout,
            &title,
        );
        hm.subtitle = format!("{} · {}", printable(&self.settings.prompt), hm.subtitle);
        Some(hm)
    }

    fn target_label(&self) -> String {
        match (&self.computed, self.settings.foil.is_empty()) {
            (Some(c), _) if c.foil_id.is_some() => format!(
                "logit {:?} − {:?}",
                self.settings.answer, self.settings.foil
            ),
            _ => format!("logit {:?}", self.settings.answer),
        }
    }

    /// Value of a node, when known.
    fn value_of(&self, path: &Path) -> Option<f32> {
        if path.is_root() {
            return self.computed.as_ref().map(|c| c.root.value);
        }
        self.nodes.get(path).map(|n| n.expansion.value)
    }

    /// Export the current view as a PNG to `path`; returns the image size.
    pub fn export_png_to(
        &self,
        path: &std::path::Path,
        pixels_per_point: f32,
    ) -> Result<(u32, u32), String> {
        let hm = self.current_heatmap().ok_or("nothing to export yet")?;
        let opts = PngOptions {
            scale: (2.0 * pixels_per_point).max(2.0),
            colormap: self.settings.colormap,
        };
        write_png(&hm, path, opts).map_err(|e| e.to_string())
    }

    /// Export the current node's children (or the overview tables at the root) as CSV.
    pub fn export_csv_to(&self, path: &std::path::Path) -> Result<(), String> {
        let computed = self.computed.as_ref().ok_or("nothing to export yet")?;
        let here = self.nav.current();
        let text = if here.is_root() {
            rdla_attrib::csv::overview_csv(&computed.overview)
        } else {
            let node = self.nodes.get(&here).ok_or("the view is still computing")?;
            rdla_attrib::csv::expansion_csv(&node.expansion)
        };
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn apply(&mut self, ctx: &egui::Context) {
        let actions = std::mem::take(&mut self.actions);
        for a in actions {
            match a {
                Action::Open(source) => self.open(source),
                Action::CancelLoad => {
                    self.worker
                        .cancel
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.status = "loading cancelled".into();
                }
                Action::Navigate(p) => {
                    self.selected = None;
                    self.request_expand(&p);
                    self.nav.go(p);
                }
                Action::Back => {
                    if self.nav.index > 0 {
                        self.nav.index -= 1;
                        self.selected = None;
                        let p = self.nav.current();
                        self.request_expand(&p);
                    }
                }
                Action::Forward => {
                    if self.nav.index + 1 < self.nav.history.len() {
                        self.nav.index += 1;
                        self.selected = None;
                        let p = self.nav.current();
                        self.request_expand(&p);
                    }
                }
                Action::Up => {
                    let here = self.nav.current();
                    if !here.is_root() {
                        let parent = here.parent();
                        self.request_expand(&parent);
                        self.nav.go(parent);
                        self.selected = None;
                    }
                }
                Action::SetAnswer(a) => {
                    self.settings.answer = a;
                    self.request_compute();
                }
                Action::Edited => self.dirty_since = Some(Instant::now()),
                Action::ExportPng => match self.dialogs.save_file("rdla-view.png", "png") {
                    DialogResult::Picked(p) => match self.export_png_to(&p, ctx.pixels_per_point())
                    {
                        Ok((w, h)) => self.status = format!("exported {} ({w}×{h})", p.display()),
                        Err(e) => self.status = format!("export failed: {e}"),
                    },
                    DialogResult::Cancelled => self.status = "export cancelled".into(),
                    DialogResult::Unavailable(why) => self.status = why,
                },
                Action::ExportCsv => match self.dialogs.save_file("rdla-view.csv", "csv") {
                    DialogResult::Picked(p) => match self.export_csv_to(&p) {
                        Ok(()) => self.status = format!("exported {}", p.display()),
                        Err(e) => self.status = format!("export failed: {e}"),
                    },
                    DialogResult::Cancelled => self.status = "export cancelled".into(),
                    DialogResult::Unavailable(why) => self.status = why,
                },
                Action::CopyPath => {
                    let p = self.nav.current().to_string();
                    ctx.copy_text(p.clone());
                    self.status = format!("copied path `{p}`");
                }
            }
        }
    }

    /// Frame logic that does not draw: events, debounce, dropped folders.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.drain_events();
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.open(ModelSource::Path(p));
        }
        if let Some(t) = self.dirty_since {
            let left = DEBOUNCE.saturating_sub(t.elapsed());
            if left.is_zero() {
                self.request_compute();
            } else {
                ctx.request_repaint_after(left);
            }
        }
        if !self.is_idle() {
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }

    /// Draw everything.
    pub fn draw(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        egui::Panel::top("menu").show(ui, |ui| self.top_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::left("prompt")
            .default_size(340.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.prompt_panel(ui));
            });
        egui::CentralPanel::default().show(ui, |ui| self.central(ui));
        self.keyboard(&ctx);
        self.apply(&ctx);
    }

    fn top_bar(&mut self, ui: &mut Ui) {
        ui.horizontal_wrapped(|ui| {
            if ui
                .button("Open model…")
                .on_hover_text("Pick a model folder")
                .clicked()
            {
                match self.dialogs.pick_model() {
                    DialogResult::Picked(p) => {
                        self.actions.push(Action::Open(ModelSource::Path(p)))
                    }
                    DialogResult::Cancelled => self.status = "no folder chosen".into(),
                    DialogResult::Unavailable(why) => self.status = why,
                }
            }
            ui.menu_button("Recent", |ui| {
                if self.settings.recent.is_empty() {
                    ui.label("(none yet)");
                }
                for s in self.settings.recent.clone() {
                    if ui.button(s.to_string()).clicked() {
                        self.actions.push(Action::Open(s));
                        ui.close();
                    }
                }
                ui.separator();
                if ui.button("Default model").clicked() {
                    self.actions.push(Action::Open(ModelSource::Default));
                    ui.close();
                }
            });
            ui.menu_button("Hugging Face cache", |ui| {
                if self.hf_models.is_empty() {
                    ui.label(format!(
                        "no models in {}",
                        hf_cache::hub_dir()
                            .map_or_else(|| "the HF cache".into(), |p| p.display().to_string())
                    ));
                }
                for m in self.hf_models.clone() {
                    if ui
                        .button(&m.repo)
                        .on_hover_text(m.dir.display().to_string())
                        .clicked()
                    {
                        self.actions.push(Action::Open(ModelSource::Path(m.dir)));
                        ui.close();
                    }
                }
            });
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.open_text)
                    .hint_text("or type a model path")
                    .desired_width(220.0),
            );
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "Model path"));
            if r.lost_focus()
                && ui.input(|i| i.key_pressed(egui::Key::Enter))
                && !self.open_text.trim().is_empty()
            {
                self.actions
                    .push(Action::Open(ModelSource::Path(PathBuf::from(
                        self.open_text.trim(),
                    ))));
            }
            ui.separator();
            if ui.button("Export PNG…").clicked() {
                self.actions.push(Action::ExportPng);
            }
            if ui.button("Export CSV…").clicked() {
                self.actions.push(Action::ExportCsv);
            }
            if ui.button("Copy path").clicked() {
                self.actions.push(Action::CopyPath);
            }
            ui.separator();
            let mut cm = self.settings.colormap;
            egui::ComboBox::from_label("Colours")
                .selected_text(cm.label())
                .show_ui(ui, |ui| {
                    ui.selectable_value(
                        &mut cm,
                        ColorMap::BlueWhiteRed,
                        ColorMap::BlueWhiteRed.label(),
                    );
                    ui.selectable_value(
                        &mut cm,
                        ColorMap::RedYellowGreen,
                        ColorMap::RedYellowGreen.label(),
                    );
                });
            self.settings.colormap = cm;
        });
        if let Some(l) = &self.loading {
            ui.horizontal(|ui| {
                ui.spinner();
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
                    self.actions.push(Action::CancelLoad);
                }
            });
        }
        if let Some(e) = self.load_error.clone() {
            egui::Frame::new()
                .fill(Color32::from_rgb(90, 20, 20))
                .inner_margin(6.0)
                .show(ui, |ui| {
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(e).color(Color32::WHITE));
                        if ui.button("Dismiss").clicked() {
                            self.load_error = None;
                        }
                    });
                    if self.model.is_some() {
                        ui.label(
                            RichText::new("The previous model is still loaded.")
                                .color(Color32::LIGHT_GRAY),
                        );
                    }
                });
        }
    }

    fn status_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if !self.is_idle() {
                ui.spinner();
            }
            let dev = if self.device_info.is_gpu() {
                format!("GPU: {}", self.device_info)
            } else {
                format!("{}", self.device_info)
            };
            ui.label(dev);
            ui.separator();
            if let Some(m) = &self.model {
                let kv = if m.n_kv_heads < m.n_heads {
                    format!(" ({} KV)", m.n_kv_heads)
                } else {
                    String::new()
                };
                ui.label(format!(
                    "{} · {} · {}L {}H{kv} d{}",
                    m.name, m.architecture, m.n_layers, m.n_heads, m.d_model
                ))
                .on_hover_text(format!(
                    "{}\nweight processing: {}",
                    m.details,
                    m.processing.join(", ")
                ));
                ui.separator();
            }
            if let Some(ms) = self.last_ms {
                ui.label(format!("last computation {ms:.1} ms"));
                ui.separator();
            }
            ui.label(&self.status);
        });
    }

    fn prompt_panel(&mut self, ui: &mut Ui) {
        ui.heading("Prompt");
        let r = ui.add(
            egui::TextEdit::multiline(&mut self.settings.prompt)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .font(egui::TextStyle::Monospace),
        );
        r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::MultilineTextInput, true, "Prompt"));
        if r.changed() {
            self.actions.push(Action::Edited);
        }
        if ui.checkbox(&mut self.settings.bos, "Prepend BOS").changed() {
            self.actions.push(Action::Edited);
        }
        self.token_strip(ui);
        ui.separator();
        egui::Grid::new("target").num_columns(2).show(ui, |ui| {
            ui.label("Answer");
            let r =
                ui.add(egui::TextEdit::singleline(&mut self.settings.answer).desired_width(140.0));
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "Answer"));
            if r.changed() {
                self.actions.push(Action::Edited);
            }
            ui.end_row();
            ui.label("Foil (optional)");
            let r =
                ui.add(egui::TextEdit::singleline(&mut self.settings.foil).desired_width(140.0));
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "Foil"));
            if r.changed() {
                self.actions.push(Action::Edited);
            }
            ui.end_row();
        });
        match (&self.computed, &self.compute_error) {
            (_, Some(e)) => {
                ui.colored_label(Color32::from_rgb(230, 80, 60), e);
            }
            (Some(c), None) => {
                let mut t = format!("answer id {}", c.answer_id);
                if let Some(f) = c.foil_id {
                    t += &format!(", foil id {f}");
                }
                ui.label(
                    RichText::new(format!("one token: {t}")).color(Color32::from_rgb(90, 170, 90)),
                );
            }
            _ => {}
        }
        ui.horizontal(|ui| {
            ui.label("MLP:");
            let before = self.settings.mlp_mode;
            ui.radio_value(
                &mut self.settings.mlp_mode,
                MlpMode::FrozenGate,
                "frozen gate (exact)",
            );
            ui.radio_value(&mut self.settings.mlp_mode, MlpMode::Gradient, "gradient");
            if before != self.settings.mlp_mode {
                self.actions.push(Action::Edited);
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
                for (i, p) in self.top.clone().iter().enumerate() {
                    ui.label(format!("{}", i + 1));
                    let label = format!("{:?}", p.token);
                    if ui
                        .button(&label)
                        .on_hover_text(format!("id {} — click to make it the answer", p.id))
                        .clicked()
                    {
                        self.actions.push(Action::SetAnswer(p.token.clone()));
                    }
                    ui.label(format!("{:.3}", p.logit));
                    ui.label(format!("{:.3}", p.prob));
                    ui.end_row();
                }
            });
    }

    fn token_strip(&self, ui: &mut Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = egui::vec2(2.0, 2.0);
            for (p, (id, s)) in self.tokens.ids.iter().zip(&self.tokens.strs).enumerate() {
                let bos = p == 0 && self.tokens.has_bos;
                let text = if bos { "BOS".to_string() } else { printable(s) };
                let fill = if bos {
                    Color32::from_rgb(70, 70, 120)
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

    fn central(&mut self, ui: &mut Ui) {
        let Some(computed) = &self.computed else {
            if self.model.is_none() && self.loading.is_none() {
                ui.label(
                    "Open a model to begin (Open model…, Recent, or drop a folder on the window).",
                );
            } else if self.compute_error.is_some() {
                ui.label("Fix the prompt or the answer to see the attribution.");
            } else {
                ui.spinner();
            }
            return;
        };
        let root = computed.root.clone();
        let ov = &computed.overview;
        let embed = ov.components.data[0];
        let pos = ov
            .layout
            .index(rdla_attrib::Comp::Pos)
            .map(|i| ov.components.data[i]);
        let root_value = root.value;
        let here = self.nav.current();
        // breadcrumbs + navigation
        ui.horizontal_wrapped(|ui| {
            if ui
                .add_enabled(self.nav.index > 0, egui::Button::new("Back"))
                .on_hover_text("Back (Alt+Left)")
                .clicked()
            {
                self.actions.push(Action::Back);
            }
            if ui
                .add_enabled(
                    self.nav.index + 1 < self.nav.history.len(),
                    egui::Button::new("Forward"),
                )
                .on_hover_text("Forward (Alt+Right)")
                .clicked()
            {
                self.actions.push(Action::Forward);
            }
            for (i, prefix) in here.prefixes().iter().enumerate() {
                if i > 0 {
                    ui.label(">");
                }
                let name = prefix
                    .steps()
                    .last()
                    .map_or_else(|| "logit".to_string(), ToString::to_string);
                let value = self
                    .value_of(prefix)
                    .map_or_else(String::new, |v| format!(" = {v:+.3}"));
                let crumb =
                    ui.selectable_label(i + 1 == here.depth() + 1, format!("{name}{value}"));
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
                    self.actions.push(Action::Navigate(prefix.clone()));
                }
            }
        });
        // completeness line
        let (value, sum, bias, resid) = if here.is_root() {
            let r = &root;
            (r.value, r.value - r.bias - r.residual, r.bias, r.residual)
        } else if let Some(n) = self.nodes.get(&here) {
            let e = &n.expansion;
            (e.value, e.value - e.bias - e.residual, e.bias, e.residual)
        } else {
            ui.spinner();
            if let Some(e) = &self.expand_error {
                ui.colored_label(Color32::from_rgb(230, 80, 60), e);
            }
            return;
        };
        let exact = resid.abs() <= 1e-4 * (value.abs() + sum.abs()).max(1e-3);
        ui.label(
            RichText::new(format!(
                "children {sum:+.5} + remainder {bias:+.5} = value {value:+.5}  (Δ {resid:.2e}){}",
                if exact {
                    ""
                } else {
                    " — not complete (gradient linearisation)"
                }
            ))
            .color(if exact {
                ui.visuals().text_color()
            } else {
                Color32::from_rgb(230, 150, 40)
            }),
        );
        if here.is_root() {
            let pos = pos.map(|p| format!(" · pos {p:+.4}")).unwrap_or_default();
            ui.label(format!(
                "embed {embed:+.4}{pos} · shares of the target ({root_value:+.4}) on hover"
            ));
        }
        let leaf = !here.is_root() && self.nodes.get(&here).is_some_and(|n| n.expansion.leaf);
        if leaf {
            self.leaf_details(ui, &here);
            return;
        }
        let Some(hm) = self.current_heatmap() else {
            return;
        };
        let pattern = self.nodes.get(&here).and_then(|n| n.pattern.clone());
        let parent_value = self.value_of(&here).unwrap_or(root_value);
        let is_head = self
            .nodes
            .get(&here)
            .is_some_and(|n| matches!(n.expansion.kind, NodeKind::Head { .. }));
        egui::ScrollArea::both().show(ui, |ui| {
            let resp = HeatmapView {
                hm: &hm,
                colormap: self.settings.colormap,
                selected: self.selected,
                parent_value,
                pattern: pattern.as_deref(),
            }
            .show(ui);
            if let Some((r, c)) = resp.clicked {
                self.selected = Some((r, c));
                if let Some(t) = hm.target(r, c) {
                    self.actions.push(Action::Navigate(t.clone()));
                }
            }
            if is_head {
                self.position_bars(ui, &hm, resp.grid_left, resp.grid_width);
            }
        });
    }

    /// Contribution by source position (column sums) as an egui_plot bar chart whose bars sit
    /// under the heatmap's columns: the plot area spans exactly the grid (`grid_left`,
    /// `grid_width` from the heatmap widget), its y axis in the row-label margin.
    fn position_bars(&self, ui: &mut Ui, hm: &Heatmap, grid_left: f32, grid_width: f32) {
        use egui_plot::{Bar, BarChart, Plot};
        let n = hm.n_cols();
        let sums = hm.col_sums();
        let max = sums.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bars: Vec<Bar> = sums
            .iter()
            .enumerate()
            .map(|(p, v)| {
                // the heatmap's colours, at full strength so small bars stay visible
                let [r, g, b] = self.settings.colormap.color(v.signum() * max, max);
                Bar::new(p as f64, f64::from(*v))
                    .width(0.8)
                    .fill(egui::Color32::from_rgb(r, g, b))
                    .name(&hm.cols[p])
            })
            .collect();
        ui.label("contribution by source position (Σ over components, under each column)");
        let axis_w = grid_left.max(1.0);
        ui.horizontal(|ui| {
            ui.spacing_mut().item_spacing.x = 0.0;
            Plot::new("by-position")
                .width(axis_w + grid_width)
                .height(120.0)
                .y_axis_min_width(axis_w)
                .default_x_bounds(-0.5, n as f64 - 0.5)
                .set_margin_fraction(egui::Vec2::new(0.0, 0.1))
                .show_x(false)
                .allow_drag(false)
                .allow_scroll(false)
                .allow_zoom(false)
                .allow_boxed_zoom(false)
                .allow_double_click_reset(false)
                .show(ui, |plot| {
                    plot.bar_chart(BarChart::new("Σ over components", bars))
                });
        });
    }

    fn leaf_details(&self, ui: &mut Ui, here: &Path) {
        let Some(node) = self.nodes.get(here) else {
            return;
        };
        let e = &node.expansion;
        let p = e.position;
        let tok = self.tokens.strs.get(p).cloned().unwrap_or_default();
        let id = self.tokens.ids.get(p).copied().unwrap_or_default();
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
        ui.label("A leaf: the token (or position) embedding itself; nothing further upstream.");
    }

    fn keyboard(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let Some(hm) = self.current_heatmap() else {
            return;
        };
        let (n_r, n_c) = (hm.n_rows(), hm.n_cols());
        if n_r == 0 || n_c == 0 {
            return;
        }
        ctx.input(|i| {
            let alt = i.modifiers.alt;
            let (mut r, mut c) = self.selected.unwrap_or((0, 0));
            let mut moved = false;
            if i.key_pressed(egui::Key::ArrowLeft) && alt {
                self.actions.push(Action::Back);
            } else if i.key_pressed(egui::Key::ArrowRight) && alt {
                self.actions.push(Action::Forward);
            } else {
                if i.key_pressed(egui::Key::ArrowDown) {
                    r = (r + 1).min(n_r - 1);
                    moved = true;
                }
                if i.key_pressed(egui::Key::ArrowUp) {
                    r = r.saturating_sub(1);
                    moved = true;
                }
                if i.key_pressed(egui::Key::ArrowRight) {
                    c = (c + 1).min(n_c - 1);
                    moved = true;
                }
                if i.key_pressed(egui::Key::ArrowLeft) {
                    c = c.saturating_sub(1);
                    moved = true;
                }
            }
            if moved {
                self.selected = Some((r, c));
            }
            if i.key_pressed(egui::Key::Enter)
                && let Some((r, c)) = self.selected
                && let Some(t) = hm.target(r, c)
            {
                self.actions.push(Action::Navigate(t.clone()));
            }
            if i.key_pressed(egui::Key::Backspace) {
                self.actions.push(Action::Up);
            }
        });
    }
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

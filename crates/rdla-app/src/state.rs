//! The explorer's runtime state — the loaded model, the computation ids, the node views and the
//! navigation — and the one place it changes: [`AppState::apply`] for worker events and
//! [`AppState::act`] for what the user asked for. Both return the commands to send to the
//! worker, so the whole flow is testable without egui or a worker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdla_attrib::Path;
use rdla_attrib::trace::{Trace, TraceOptions};
use rdla_model::model::ablate::AblationMode;
use rdla_session::verify::Verification;
use rdla_session::{
    AblationReport, Computed, ModelInfo, ModelSource, NodeView, Prediction, Request, Stage, Tokens,
};

use crate::settings::Settings;
#[cfg(test)]
use crate::worker::WorkerError;
use crate::worker::{Command, Event};

/// Debounce between an edit and the recomputation it triggers.
pub const DEBOUNCE: Duration = Duration::from_millis(350);

/// Something the user asked for. Panels push these; the frame applies them at its end.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Open(ModelSource),
    CancelLoad,
    /// Stop the computation in progress (it stops at its next layer).
    CancelCompute,
    Navigate(Path),
    Back,
    Forward,
    Up,
    Select(Option<(usize, usize)>),
    SetAnswer(String),
    /// A token picked from a list (the top-10 table): the answer is that id exactly, shown
    /// as its text, for as long as the answer field still holds that text.
    PickAnswer {
        id: u32,
        text: String,
    },
    /// Replace the prompt (a text file was opened) and recompute.
    SetPrompt(String),
    /// The prompt, target or mode was edited: recompute after [`DEBOUNCE`].
    Edited,
    /// Recompute now.
    Recompute,
    ExportPng,
    ExportCsv,
    CopyPath,
    DismissLoadError,
    /// Show a message in the status bar.
    Status(String),
    /// Trace the tree below this node (the graph view).
    Trace(Path),
    /// Show the graph view (or the heatmap explorer).
    ShowGraph(bool),
    /// Ablate these nodes' sites together in the real forward pass (the causal check: one
    /// node from its details, or the top sites of the traced graph).
    Ablate(Vec<Path>, AblationMode),
    /// Verify the traced graph: ablate each of its largest sites alone, then together.
    Verify(AblationMode),
    /// Compare every view with this prompt (the same target), or stop comparing (`None`).
    Compare(Option<String>),
    /// The graph view's controls changed.
    GraphOptions(GraphOptions),
    ExportGraphPng,
    ExportGraphJson,
    /// Ask for a file (a model folder, a GGUF file, a prompt text) in a dialog, after the
    /// frame.
    Pick(Pick),
    /// Show the Census view (or the heatmap explorer).
    ShowCensus(bool),
    /// The Census view's prompts file field was edited.
    SetCensusFile(String),
    /// Run a census of this prompts file (JSONL, CSV or Parquet).
    RunCensus(std::path::PathBuf),
    /// Stop the census in progress (it keeps the prompts done).
    CancelCensus,
    /// Show this node's distribution over the census's prompts.
    CensusSelect(Path),
    /// Open the census's prompt (its row) in the explorer, at this node.
    OpenCensusPrompt {
        row: usize,
        path: Path,
    },
    ExportCensusPng,
    /// Open a result file (`.rdla`), read-only, without its model.
    OpenResult(std::path::PathBuf),
    /// Go to this node of the open result file.
    ResultGo(Path),
    /// Show the open result's graph (or its heatmaps).
    ResultGraph(bool),
    /// Close the result file and go back to the explorer.
    CloseResult,
    ExportResultPng,
    ExportResultGraphPng,
    /// Save what was explored of the current computation as a result file.
    SaveResult,
}

/// A result file open in the explorer (read-only, without its model).
#[derive(Debug, Clone)]
pub struct ResultState {
    pub file: std::path::PathBuf,
    pub saved: rdla_session::saved::Saved,
    /// The node shown.
    pub at: Path,
    /// The graph is shown instead of the heatmaps.
    pub graph: bool,
    /// Why the last click went nowhere (a node that is not in the file).
    pub note: Option<String>,
}

impl ResultState {
    /// The saved model's number of layers (from its config).
    pub fn n_layers(&self) -> usize {
        self.saved.manifest.model.config["n_layers"]
            .as_u64()
            .map_or(0, |n| n as usize)
    }

    /// Go to `path`: shown if it is in the file, else a note saying it is not.
    pub fn go(&mut self, path: Path) {
        if self.saved.view(&path).is_some() || self.saved.node(&path).is_some() {
            self.at = path;
            self.note = None;
        } else {
            self.note = Some(format!(
                "{path}: not in this file: open the model to compute it"
            ));
        }
    }
}

/// What a file dialog picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    ModelFolder,
    Gguf,
    PromptText,
    /// A census's prompts file.
    CensusPrompts,
    /// A result file (`.rdla`).
    ResultFile,
}

/// The graph view: its settings, the trace in flight and the last one.
#[derive(Debug, Clone)]
pub struct GraphState {
    pub open: bool,
    /// What the user chose in the graph view's controls.
    pub options: GraphOptions,
    /// `(done, budget)` of the trace in flight.
    pub tracing: Option<(usize, usize)>,
    pub trace: Option<Trace>,
    /// How long `trace` took (its JSON export says so).
    pub trace_ms: f64,
    pub error: Option<String>,
    trace_id: u64,
    /// `(done, total)` ablated forward passes of the verification in flight.
    pub verifying: Option<(usize, usize)>,
    /// The trace's verification (or why it failed).
    pub verification: Option<Result<Verification, String>>,
}

impl GraphState {
    /// The trace's verification, once there is one.
    pub fn verified(&self) -> Option<&Verification> {
        self.verification.as_ref()?.as_ref().ok()
    }
}

/// The graph view's controls: how to trace, how much of the graph to draw, how many sites
/// its causal check ablates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphOptions {
    /// Node expansions per trace.
    pub budget: usize,
    /// Sites and edges below this fraction of |value| are hidden.
    pub threshold: f32,
    /// At most this many sites are drawn.
    pub max_nodes: usize,
    /// Split MLPs into their neurons.
    pub neurons: bool,
    /// How many of the largest traced sites the graph's causal check ablates together.
    pub ablate_top: usize,
    /// How many of the largest traced sites the verification ablates, each alone.
    pub verify_top: usize,
}

impl Default for GraphOptions {
    fn default() -> Self {
        Self {
            budget: 300,
            threshold: 0.02,
            max_nodes: 60,
            neurons: false,
            ablate_top: 3,
            verify_top: 10,
        }
    }
}

impl GraphOptions {
    /// The options within their ranges (the controls' ranges, whatever sent them).
    #[must_use]
    pub fn clamped(self) -> Self {
        Self {
            budget: self.budget.clamp(1, 20_000),
            threshold: if self.threshold.is_finite() {
                self.threshold.clamp(0.0, 0.5)
            } else {
                Self::default().threshold
            },
            max_nodes: self.max_nodes.clamp(2, 500),
            neurons: self.neurons,
            ablate_top: self.ablate_top.clamp(1, 20),
            verify_top: self.verify_top.clamp(1, 200),
        }
    }
}

impl Default for GraphState {
    fn default() -> Self {
        Self {
            open: false,
            options: GraphOptions::default(),
            tracing: None,
            trace: None,
            trace_ms: 0.0,
            error: None,
            trace_id: 0,
            verifying: None,
            verification: None,
        }
    }
}

/// A load in progress.
#[derive(Debug, Clone)]
pub struct Loading {
    pub source: ModelSource,
    pub id: u64,
    pub done: u64,
    pub total: u64,
}

/// Browser-style history of visited paths.
#[derive(Debug, Clone)]
pub struct Nav {
    history: Vec<Path>,
    index: usize,
}

impl Default for Nav {
    fn default() -> Self {
        Self {
            history: vec![Path::root()],
            index: 0,
        }
    }
}

impl Nav {
    /// Nothing opened yet: only the root has been shown (the first-run hint is shown then).
    pub fn is_fresh(&self) -> bool {
        self.history.len() == 1
    }

    pub fn current(&self) -> Path {
        self.history.get(self.index).cloned().unwrap_or_default()
    }

    pub fn can_back(&self) -> bool {
        self.index > 0
    }

    pub fn can_forward(&self) -> bool {
        self.index + 1 < self.history.len()
    }

    fn go(&mut self, p: Path) {
        if self.current() == p {
            return;
        }
        self.history.truncate(self.index + 1);
        self.history.push(p);
        self.index = self.history.len() - 1;
    }

    fn back(&mut self) -> bool {
        let ok = self.can_back();
        if ok {
            self.index -= 1;
        }
        ok
    }

    fn forward(&mut self) -> bool {
        let ok = self.can_forward();
        if ok {
            self.index += 1;
        }
        ok
    }
}

/// How far the computation in progress is.
#[derive(Debug, Clone, Copy)]
pub struct ComputeProgress {
    pub started: Instant,
    /// `None` until the first report (tokenizing, the first layer).
    pub stage: Option<Stage>,
}

impl ComputeProgress {
    /// The fraction done (the forward pass is counted as all of it) and, once a layer is
    /// done, the time left at the pace so far.
    pub fn estimate(&self) -> (f32, Option<Duration>) {
        match self.stage {
            Some(Stage::Forward { layer, layers }) if layer > 0 && layers > 0 => {
                let f = layer as f32 / layers as f32;
                let spent = self.started.elapsed().as_secs_f32();
                (f, Some(Duration::from_secs_f32(spent * (1.0 - f) / f)))
            }
            Some(Stage::Attribution) => (1.0, None),
            _ => (0.0, None),
        }
    }

    /// "forward pass: layer 12 of 26 · 0:34 elapsed · about 1:10 left".
    pub fn describe(&self) -> String {
        let clock = |d: Duration| {
            let s = d.as_secs();
            format!("{}:{:02}", s / 60, s % 60)
        };
        let elapsed = clock(self.started.elapsed());
        let (_, left) = self.estimate();
        match (self.stage, left) {
            (Some(Stage::Forward { layer, layers }), Some(left)) => format!(
                "forward pass: layer {layer} of {layers} · {elapsed} elapsed · about {} left",
                clock(left)
            ),
            (Some(Stage::Attribution), _) => {
                format!("attribution (overview and root) · {elapsed} elapsed")
            }
            _ => format!("tokenizing and the first layer · {elapsed} elapsed"),
        }
    }
}

/// Everything the explorer knows at run time (the persisted part is [`Settings`]).
#[derive(Debug, Default)]
pub struct AppState {
    next_id: u64,
    pub model: Option<ModelInfo>,
    pub loading: Option<Loading>,
    pub load_error: Option<String>,
    compute_id: u64,
    pub computing: bool,
    /// The computation in progress: when it started and the last stage it reported.
    pub progress: Option<ComputeProgress>,
    pub dirty_since: Option<Instant>,
    pub computed: Option<Computed>,
    pub compute_error: Option<String>,
    /// The tokens and predictions shown when there is no computation (the last failed or
    /// cancelled one's); with a computation they are its own ([`AppState::tokens`]).
    without_computation: Option<(Tokens, Vec<Prediction>)>,
    pub nav: Nav,
    /// Views of the current computation, by path (the root's included): built once by the
    /// worker, drawn every frame.
    pub views: HashMap<Path, NodeView>,
    pending: HashSet<Path>,
    pub selected: Option<(usize, usize)>,
    pub expand_error: Option<String>,
    pub status: String,
    pub last_ms: Option<f64>,
    pub graph: GraphState,
    /// Causal checks of the current computation, by path and mode.
    pub ablations: HashMap<(Vec<Path>, AblationMode), Result<AblationReport, String>>,
    ablating: HashSet<(Vec<Path>, AblationMode)>,
    /// The answer picked by id (and the text it was shown as) on the current model.
    answer_pick: Option<(u32, String)>,
    /// The contrast: the prompt every view is compared with (set once the worker computed
    /// it), the one being computed, and why the last one failed.
    pub contrast: ContrastState,
    pub census: CensusState,
    /// A result file open read-only (shown instead of the explorer while `Some`).
    pub result: Option<ResultState>,
    /// A result being saved by the worker.
    pub saving: bool,
}

/// The Census view: the file, the census in flight and the last one.
#[derive(Debug, Default)]
pub struct CensusState {
    pub open: bool,
    /// The prompts file's path as typed (or picked).
    pub file: String,
    /// `(done, total)` of the census in flight.
    pub running: Option<(usize, usize)>,
    /// When the census in flight started (for its time left).
    pub started: Option<Instant>,
    pub table: Option<std::sync::Arc<rdla_session::census::CensusTable>>,
    /// The node whose distribution is shown.
    pub selected: Option<Path>,
    pub error: Option<String>,
    id: u64,
}

/// "Compare with…": the views show this prompt's values minus another's.
#[derive(Debug, Default)]
pub struct ContrastState {
    /// The prompt the views compare with (the worker's session holds its computation).
    pub active: Option<String>,
    /// Being computed (`Some(None)`: being switched off).
    pub pending: Option<Option<String>>,
    pub error: Option<String>,
}

impl AppState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The prompt's tokens as last tokenized: the computation's, or a failed one's.
    pub fn tokens(&self) -> &Tokens {
        static NONE: Tokens = Tokens {
            ids: Vec::new(),
            strs: Vec::new(),
            has_bos: false,
        };
        match (&self.computed, &self.without_computation) {
            (Some(c), _) => &c.tokens,
            (None, Some((t, _))) => t,
            (None, None) => &NONE,
        }
    }

    /// The model's top next tokens: the computation's, or a failed one's.
    pub fn top(&self) -> &[Prediction] {
        match (&self.computed, &self.without_computation) {
            (Some(c), _) => &c.top,
            (None, Some((_, top))) => top,
            (None, None) => &[],
        }
    }

    /// Whether the worker has nothing outstanding (for tests and the status bar).
    pub fn is_idle(&self) -> bool {
        self.loading.is_none()
            && !self.computing
            && self.pending.is_empty()
            && self.dirty_since.is_none()
            && self.graph.tracing.is_none()
            && self.graph.verifying.is_none()
            && self.ablating.is_empty()
            && (self.contrast.pending.is_none() || self.computed.is_none())
            && self.census.running.is_none()
            && !self.saving
    }

    pub fn current_path(&self) -> Path {
        self.nav.current()
    }

    /// The view at the current path, when it is ready.
    pub fn current_view(&self) -> Option<&NodeView> {
        self.views.get(&self.nav.current())
    }

    /// Value of a node, when known: from its own view, or as a child in its parent's.
    pub fn value_of(&self, path: &Path) -> Option<f32> {
        if let Some(v) = self.views.get(path) {
            return Some(v.expansion.value);
        }
        let step = *path.steps().last()?;
        self.views
            .get(&path.parent())?
            .expansion
            .children
            .iter()
            .find(|c| c.step == step)
            .map(|c| c.value)
    }

    /// The source of the loaded model (or of the one loading).
    pub fn source(&self) -> Option<ModelSource> {
        self.loading
            .as_ref()
            .map(|l| l.source.clone())
            .or_else(|| self.model.as_ref().map(|m| m.source.clone()))
    }

    /// Start loading `source`.
    pub fn open(&mut self, source: ModelSource) -> Command {
        let id = self.id();
        self.loading = Some(Loading {
            source: source.clone(),
            id,
            done: 0,
            total: 0,
        });
        self.load_error = None;
        Command::Load { source, id }
    }

    fn compute(&mut self, settings: &Settings) -> Vec<Command> {
        self.dirty_since = None;
        if self.model.is_none() {
            return Vec::new();
        }
        let id = self.id();
        self.compute_id = id;
        self.computing = true;
        self.progress = Some(ComputeProgress {
            started: Instant::now(),
            stage: None,
        });
        let request = Request {
            prompt: settings.prompt.clone(),
            answer: settings.answer.clone(),
            // a pick holds while the field shows its text; typing makes the text the answer
            answer_id: self
                .answer_pick
                .as_ref()
                .filter(|(_, text)| *text == settings.answer)
                .map(|&(id, _)| id),
            foil: Some(settings.foil.clone()).filter(|f| !f.is_empty()),
            bos: settings.bos,
            mlp_mode: settings.mlp_mode,
        };
        vec![Command::Compute { request, id }]
    }

    /// Ask for the view at `path` unless it is there or on its way.
    fn expand(&mut self, path: &Path) -> Vec<Command> {
        if self.computed.is_none()
            || self.views.contains_key(path)
            || !self.pending.insert(path.clone())
        {
            return Vec::new();
        }
        vec![Command::Expand {
            path: path.clone(),
            id: self.compute_id,
        }]
    }

    /// Apply what the user asked for; returns the commands for the worker. Exports, the
    /// clipboard and load cancelling are the frame's business (they need egui or dialogs).
    pub fn act(&mut self, action: Action, settings: &mut Settings) -> Vec<Command> {
        match action {
            Action::Open(source) => vec![self.open(source)],
            Action::Navigate(p) => {
                self.selected = None;
                let cmds = self.expand(&p);
                self.nav.go(p);
                cmds
            }
            Action::Back | Action::Forward => {
                let moved = if action == Action::Back {
                    self.nav.back()
                } else {
                    self.nav.forward()
                };
                if !moved {
                    return Vec::new();
                }
                self.selected = None;
                let here = self.nav.current();
                self.expand(&here)
            }
            Action::Up => {
                let here = self.nav.current();
                if here.is_root() {
                    return Vec::new();
                }
                self.act(Action::Navigate(here.parent()), settings)
            }
            Action::Select(cell) => {
                self.selected = cell;
                Vec::new()
            }
            Action::SetAnswer(a) => {
                settings.answer = a;
                self.compute(settings)
            }
            Action::PickAnswer { id, text } => {
                settings.answer.clone_from(&text);
                self.answer_pick = Some((id, text));
                self.compute(settings)
            }
            Action::SetPrompt(p) => {
                settings.prompt = p;
                self.compute(settings)
            }
            Action::Edited => {
                self.dirty_since = Some(Instant::now());
                Vec::new()
            }
            Action::Recompute => self.compute(settings),
            Action::DismissLoadError => {
                self.load_error = None;
                Vec::new()
            }
            Action::Status(s) => {
                self.status = s;
                Vec::new()
            }
            Action::Compare(prompt) => self.compare(prompt),
            Action::Trace(from) => {
                if self.computed.is_none() {
                    return Vec::new();
                }
                let id = self.id();
                self.graph.trace_id = id;
                self.graph.open = true;
                self.graph.tracing = Some((0, self.graph.options.budget));
                self.graph.error = None;
                vec![Command::Trace {
                    from,
                    opts: TraceOptions {
                        budget: self.graph.options.budget,
                        neurons: self.graph.options.neurons,
                        // the view prunes; the trace keeps every site
                        threshold: 0.0,
                        max_nodes: usize::MAX,
                        top: 50,
                        time_limit: None,
                    },
                    id,
                }]
            }
            Action::ShowGraph(open) => {
                self.graph.open = open;
                Vec::new()
            }
            Action::GraphOptions(o) => {
                self.graph.options = o.clamped();
                Vec::new()
            }
            Action::Verify(mode) => {
                let Some(trace) = &self.graph.trace else {
                    return Vec::new();
                };
                if self.computed.is_none() || self.graph.verifying.is_some() {
                    return Vec::new();
                }
                let k = self.graph.options.verify_top;
                self.graph.verifying = Some((0, k + 1));
                self.graph.verification = None;
                vec![Command::Verify {
                    trace: Box::new(trace.clone()),
                    k,
                    mode,
                    id: self.graph.trace_id,
                }]
            }
            Action::Ablate(paths, mode) => {
                if self.computed.is_none()
                    || paths.is_empty()
                    || self.ablations.contains_key(&(paths.clone(), mode))
                    || !self.ablating.insert((paths.clone(), mode))
                {
                    return Vec::new();
                }
                vec![Command::Ablate {
                    paths,
                    mode,
                    id: self.compute_id,
                }]
            }
            Action::CancelCompute => {
                if self.computing {
                    self.status = "cancelling the computation…".into();
                }
                // an edit waiting for its debounce would start it again
                self.dirty_since = None;
                Vec::new()
            }
            Action::ResultGo(path) => {
                if let Some(r) = &mut self.result {
                    r.go(path);
                }
                Vec::new()
            }
            Action::ResultGraph(on) => {
                if let Some(r) = &mut self.result {
                    r.graph = on;
                }
                Vec::new()
            }
            Action::CloseResult => {
                self.result = None;
                Vec::new()
            }
            Action::ShowCensus(open) => {
                self.census.open = open;
                if open {
                    self.graph.open = false;
                }
                Vec::new()
            }
            Action::RunCensus(file) => {
                if self.model.is_none() || self.census.running.is_some() {
                    return Vec::new();
                }
                let id = self.id();
                self.census.id = id;
                self.census.file = file.display().to_string();
                self.census.running = Some((0, 0));
                self.census.started = Some(Instant::now());
                self.census.error = None;
                vec![Command::Census {
                    file,
                    bos: settings.bos,
                    mlp_mode: settings.mlp_mode,
                    id,
                }]
            }
            Action::SetCensusFile(f) => {
                self.census.file = f;
                Vec::new()
            }
            Action::CensusSelect(p) => {
                self.census.selected = Some(p);
                Vec::new()
            }
            Action::OpenCensusPrompt { row, path } => {
                let Some(r) = self.census.table.as_ref().and_then(|t| t.prompts.get(row)) else {
                    return Vec::new();
                };
                settings.prompt.clone_from(&r.prompt);
                settings.answer.clone_from(&r.answer);
                settings.foil = r.foil.clone().unwrap_or_default();
                self.answer_pick = None;
                self.census.open = false;
                self.graph.open = false;
                // the computation opens where the navigation is
                self.selected = None;
                self.nav.go(path);
                self.compute(settings)
            }
            Action::CancelCensus => {
                if self.census.running.is_some() {
                    self.status = "stopping the census after its current prompt…".into();
                }
                Vec::new()
            }
            Action::ExportCensusPng
            | Action::CancelLoad
            | Action::ExportPng
            | Action::ExportCsv
            | Action::CopyPath
            | Action::ExportGraphPng
            | Action::ExportGraphJson
            | Action::OpenResult(_)
            | Action::SaveResult
            | Action::ExportResultPng
            | Action::ExportResultGraphPng
            | Action::Pick(_) => Vec::new(),
        }
    }

    /// Recompute when the debounce after the last edit has passed; returns how long to wait
    /// otherwise.
    pub fn tick(&mut self, settings: &Settings) -> (Vec<Command>, Option<Duration>) {
        match self.dirty_since {
            Some(t) => {
                let left = DEBOUNCE.saturating_sub(t.elapsed());
                if left.is_zero() {
                    (self.compute(settings), None)
                } else {
                    (Vec::new(), Some(left))
                }
            }
            None => (Vec::new(), None),
        }
    }

    /// Forget the current computation and everything derived from it: its views, the
    /// expansions asked for, its causal checks and its trace.
    /// Ask the worker to compare with `prompt` (or to stop comparing).
    fn compare(&mut self, prompt: Option<String>) -> Vec<Command> {
        let prompt = prompt.filter(|p| !p.trim().is_empty());
        self.contrast.error = None;
        if self.computed.is_none() {
            // nothing to compare yet: applied when the computation arrives
            self.contrast.active = None;
            self.contrast.pending = Some(prompt);
            return Vec::new();
        }
        self.contrast.pending = Some(prompt.clone());
        vec![Command::Contrast {
            prompt,
            id: self.compute_id,
        }]
    }

    fn reset_computation(&mut self) {
        self.computed = None;
        self.views.clear();
        self.pending.clear();
        self.ablations.clear();
        self.graph.trace = None;
        self.graph.verifying = None;
        self.graph.verification = None;
    }

    /// Apply a worker event; returns the commands it triggers.
    pub fn apply(&mut self, event: Event, settings: &mut Settings) -> Vec<Command> {
        match event {
            Event::LoadProgress { id, done, total } => {
                if let Some(l) = self.loading.as_mut().filter(|l| l.id == id) {
                    l.done = done;
                    l.total = total;
                }
                Vec::new()
            }
            Event::Loaded { id, info } => {
                if self.loading.as_ref().is_none_or(|l| l.id != id) {
                    return Vec::new();
                }
                self.loading = None;
                settings.remember(&info.source);
                self.status = format!("loaded {} in {:.0} ms", info.name(), info.load_ms);
                self.model = Some(*info);
                // an id means another token in another vocabulary
                self.answer_pick = None;
                self.reset_computation();
                self.nav = Nav::default();
                self.compute(settings)
            }
            Event::LoadFailed { id, source, error } => {
                if self.loading.as_ref().is_some_and(|l| l.id == id) {
                    self.loading = None;
                    self.load_error = Some(format!("Could not open {source}:\n{error}"));
                }
                Vec::new()
            }
            Event::Computed {
                id,
                result,
                root,
                info,
            } => {
                if id != self.compute_id {
                    return Vec::new();
                }
                let streams = |m: &ModelInfo| m.facts.streamed_layer_cache.is_some();
                if self.model.as_ref().is_some_and(|m| !streams(m)) && streams(&info) {
                    self.status = format!(
                        "this prompt does not fit beside the model's layers: they stream now ({})",
                        info.facts.memory_line()
                    );
                }
                self.model = Some(*info);
                self.computing = false;
                self.progress = None;
                self.compute_error = None;
                self.without_computation = None;
                self.reset_computation();
                self.views.insert(Path::root(), *root);
                self.computed = Some(*result);
                // a new computation compares with nothing: the contrast prompt (the one
                // asked for meanwhile, else the one in force) is computed again for it
                let again = match self.contrast.pending.take() {
                    Some(p) => p,
                    None => self.contrast.active.take(),
                };
                self.contrast.active = None;
                if let Some(p) = again {
                    return self.compare(Some(p));
                }
                // keep the place in the tree if it still exists (else the expansion fails
                // and the view goes back to the root)
                let here = self.nav.current();
                self.expand(&here)
            }
            Event::Contrasted { id, prompt, root } => {
                if id != self.compute_id {
                    return Vec::new();
                }
                self.contrast.pending = None;
                self.contrast.error = None;
                self.contrast.active = prompt;
                // every view changes meaning (values, or deltas)
                self.views.clear();
                self.pending.clear();
                self.views.insert(Path::root(), *root);
                let here = self.nav.current();
                self.expand(&here)
            }
            Event::ContrastFailed { id, error } => {
                if id == self.compute_id {
                    self.contrast.pending = None;
                    self.contrast.error = Some(error.to_string());
                }
                Vec::new()
            }
            Event::ComputeFailed {
                id,
                error,
                tokens,
                top,
                kept,
            } => {
                if id == self.compute_id && error.is_cancelled() {
                    // the session dropped its computation: nothing on screen is usable but
                    // the tokens and predictions
                    self.without_computation = Some((self.tokens().clone(), self.top().to_vec()));
                    self.computing = false;
                    self.progress = None;
                    self.reset_computation();
                    self.status = "computation cancelled".into();
                } else if id == self.compute_id {
                    self.computing = false;
                    self.progress = None;
                    self.compute_error = Some(error.to_string());
                    // a bad answer on the same prompt keeps what is on screen
                    if !kept {
                        let tokens = tokens.unwrap_or_else(|| self.tokens().clone());
                        self.without_computation = Some((tokens, top));
                        self.reset_computation();
                    }
                }
                Vec::new()
            }
            Event::Expanded { id, view } => {
                if id == self.compute_id {
                    self.pending.remove(&view.path);
                    self.last_ms = Some(view.ms);
                    self.expand_error = None;
                    self.views.insert(view.path.clone(), *view);
                }
                Vec::new()
            }
            Event::ComputeProgress { id, stage } => {
                if let Some(p) = self.progress.as_mut().filter(|_| id == self.compute_id) {
                    p.stage = Some(stage);
                }
                Vec::new()
            }
            Event::TraceProgress { id, done, budget } => {
                if id == self.graph.trace_id && self.graph.tracing.is_some() {
                    self.graph.tracing = Some((done, budget));
                }
                Vec::new()
            }
            Event::Traced { id, trace, ms } => {
                if id == self.graph.trace_id {
                    self.graph.tracing = None;
                    self.graph.trace = Some(*trace);
                    self.graph.verification = None;
                    self.graph.trace_ms = ms;
                }
                Vec::new()
            }
            Event::TraceFailed { id, error } => {
                if id == self.graph.trace_id {
                    self.graph.tracing = None;
                    self.status = format!("trace failed: {error}");
                    self.graph.error = Some(error.to_string());
                }
                Vec::new()
            }
            Event::ResultSaved { file, result } => {
                self.saving = false;
                self.status = match result {
                    Ok((nodes, bytes)) => {
                        format!("saved {nodes} nodes to {} ({bytes} bytes)", file.display())
                    }
                    Err(e) => format!("saving the result failed: {e}"),
                };
                Vec::new()
            }
            Event::VerifyProgress { id, done, total } => {
                if id == self.graph.trace_id && self.graph.verifying.is_some() {
                    self.graph.verifying = Some((done, total));
                }
                Vec::new()
            }
            Event::Verified { id, result } => {
                if id == self.graph.trace_id {
                    self.graph.verifying = None;
                    match &result {
                        Ok(v) => self.status = v.stamp(),
                        Err(e) => self.status = format!("verification failed: {e}"),
                    }
                    self.graph.verification = Some(result.map(|v| *v).map_err(|e| e.to_string()));
                }
                Vec::new()
            }
            Event::Ablated {
                id,
                paths,
                mode,
                result,
            } => {
                self.ablating.remove(&(paths.clone(), mode));
                if id == self.compute_id {
                    if let Err(e) = &result {
                        self.status = format!("causal check failed: {e}");
                    }
                    let shown = result.map(|r| *r).map_err(|e| e.to_string());
                    self.ablations.insert((paths, mode), shown);
                }
                Vec::new()
            }
            Event::CensusProgress { id, done, total } => {
                if id == self.census.id && self.census.running.is_some() {
                    self.census.running = Some((done, total));
                }
                Vec::new()
            }
            Event::Censused { id, table } => {
                if id == self.census.id {
                    self.census.running = None;
                    self.status = if table.prompts.len() < table.todo {
                        format!(
                            "census stopped after {} of {} prompts (the view holds those)",
                            table.prompts.len(),
                            table.todo
                        )
                    } else {
                        format!("census of {} prompts done", table.prompts.len())
                    };
                    // the node shown before, or the head with the largest mean |value|
                    let keep = self
                        .census
                        .selected
                        .as_ref()
                        .is_some_and(|p| table.stat(&p.to_string()).is_some());
                    if !keep {
                        self.census.selected = table
                            .stats
                            .iter()
                            .filter(|s| s.path.contains("/H"))
                            .max_by(|a, b| a.mean_abs.total_cmp(&b.mean_abs))
                            .and_then(|s| Path::parse(&s.path).ok());
                    }
                    self.census.table = Some(table);
                }
                Vec::new()
            }
            Event::CensusFailed { id, error } => {
                if id == self.census.id {
                    self.census.running = None;
                    self.census.error = Some(error.to_string());
                    self.status = "census failed".into();
                }
                Vec::new()
            }
            Event::ExpandFailed { id, path, error } => {
                if id == self.compute_id {
                    self.pending.remove(&path);
                    self.expand_error = Some(error.to_string());
                    if self.nav.current() == path {
                        self.nav.go(Path::root());
                    }
                }
                Vec::new()
            }
        }
    }

    /// The worker died (its channel closed): forget what was in flight and say so. The frame
    /// restarts the worker and reloads the model.
    pub fn worker_died(&mut self) {
        self.computing = false;
        self.loading = None;
        self.reset_computation();
        self.ablating.clear();
        self.graph.tracing = None;
        self.graph.verifying = None;
        self.census.running = None;
        self.saving = false;
        self.status = "the compute worker stopped unexpectedly and was restarted".into();
    }
}

impl AppState {
    /// Whether the sites of `paths` are being ablated right now.
    pub fn is_ablating(&self, paths: &[Path], mode: AblationMode) -> bool {
        self.ablating.contains(&(paths.to_vec(), mode))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn info() -> ModelInfo {
        let config = rdla_model::config::from_value(&serde_json::json!({
            "model_type": "gpt2",
            "n_layer": 2,
            "n_head": 4,
            "n_embd": 8,
            "n_positions": 16,
            "vocab_size": 10,
        }))
        .unwrap();
        let facts = rdla_session::ModelFacts {
            name: "m".into(),
            dir: "/m".into(),
            architecture: config.family.hf_class(),
            n_layers: config.n_layers,
            n_heads: config.n_heads,
            d_model: config.d_model,
            d_vocab: config.d_vocab,
            weights: String::new(),
            disk_bytes: 0,
            held_bytes: 0,
            tokens_in_place: false,
            streamed_layer_cache: None,
        };
        ModelInfo {
            source: ModelSource::Default,
            facts,
            config,
            details: String::new(),
            processing: Vec::new(),
            protected: Vec::new(),
            load_ms: 1.0,
        }
    }

    #[test]
    fn load_then_compute_then_navigate() {
        let mut s = AppState::default();
        let mut settings = Settings::default();
        let Command::Load { id, .. } = s.open(ModelSource::Default) else {
            panic!("expected a load");
        };
        assert!(!s.is_idle());
        // a stale load answer is ignored
        assert!(
            s.apply(
                Event::Loaded {
                    id: id + 7,
                    info: Box::new(info())
                },
                &mut settings
            )
            .is_empty()
        );
        let cmds = s.apply(
            Event::Loaded {
                id,
                info: Box::new(info()),
            },
            &mut settings,
        );
        assert!(matches!(cmds.as_slice(), [Command::Compute { .. }]));
        assert_eq!(settings.recent, vec![ModelSource::Default]);
        assert!(s.computing && !s.is_idle());

        // navigation before anything is computed asks for nothing
        assert!(
            s.act(
                Action::Navigate(Path::parse("L0.attn").unwrap()),
                &mut settings
            )
            .is_empty()
        );
        assert_eq!(s.current_path().to_string(), "L0.attn");
        assert!(s.act(Action::Back, &mut settings).is_empty());
        assert!(s.current_path().is_root());
        assert!(s.nav.can_forward());
        s.act(Action::Forward, &mut settings);
        assert_eq!(s.current_path().to_string(), "L0.attn");
        s.act(Action::Up, &mut settings);
        assert!(s.current_path().is_root());

        // an edit debounces; the tick after the debounce recomputes
        s.act(Action::Edited, &mut settings);
        let (cmds, wait) = s.tick(&settings);
        assert!(cmds.is_empty() && wait.is_some());
        s.dirty_since = Some(Instant::now() - DEBOUNCE);
        let (cmds, _) = s.tick(&settings);
        assert!(matches!(cmds.as_slice(), [Command::Compute { .. }]));

        // a failed computation keeps the tokens it got
        let Command::Compute { id, .. } = &cmds[0] else {
            unreachable!()
        };
        s.apply(
            Event::ComputeFailed {
                id: *id,
                error: WorkerError::Panic("answer: not one token".into()),
                tokens: Some(Tokens {
                    ids: vec![0, 1],
                    strs: vec!["a".into(), "b".into()],
                    has_bos: true,
                }),
                top: Vec::new(),
                kept: false,
            },
            &mut settings,
        );
        assert!(s.is_idle());
        assert_eq!(s.tokens().ids, [0, 1]);
        assert!(s.compute_error.as_deref().unwrap().contains("answer"));
    }

    /// Open the default model and answer the load; returns the commands that follow.
    fn load(s: &mut AppState, settings: &mut Settings) -> Vec<Command> {
        let Command::Load { id, .. } = s.open(ModelSource::Default) else {
            panic!("expected a load")
        };
        s.apply(
            Event::Loaded {
                id,
                info: Box::new(info()),
            },
            settings,
        )
    }

    #[test]
    fn a_failed_load_keeps_the_previous_model() {
        let (mut s, mut settings) = (AppState::default(), Settings::default());
        load(&mut s, &mut settings);
        let Command::Load { id, .. } = s.open(ModelSource::Path("/x".into())) else {
            panic!()
        };
        s.apply(
            Event::LoadFailed {
                id,
                source: ModelSource::Path("/x".into()),
                error: WorkerError::Panic("no config.json at /x".into()),
            },
            &mut settings,
        );
        assert!(s.model.is_some());
        assert!(s.load_error.as_deref().unwrap().contains("/x"));
        assert!(s.loading.is_none());
    }

    /// A regression test (issue #22.9): a token clicked in the top-10 table was set as the
    /// answer by its text, which a SentencePiece vocabulary can encode to another token. The
    /// pick is sent by id while the field shows its text; typing makes the text the answer,
    /// and another model forgets the pick.
    #[test]
    fn a_picked_answer_is_sent_by_id_until_the_field_changes() {
        let (mut s, mut settings) = (AppState::default(), Settings::default());
        load(&mut s, &mut settings);
        let request = |cmds: Vec<Command>| {
            cmds.into_iter()
                .find_map(|c| match c {
                    Command::Compute { request, .. } => Some(request),
                    _ => None,
                })
                .expect("a computation")
        };
        let text = " Mary".to_string();
        let r = request(s.act(
            Action::PickAnswer {
                id: 3415,
                text: text.clone(),
            },
            &mut settings,
        ));
        assert_eq!((r.answer_id, r.answer.as_str()), (Some(3415), " Mary"));
        assert_eq!(settings.answer, text);
        // the field edited: the text is the answer again
        settings.answer = "Mary".into();
        let r = request(s.act(Action::Recompute, &mut settings));
        assert_eq!(r.answer_id, None);
        // picked again, then another model: the id is forgotten
        s.act(Action::PickAnswer { id: 3415, text }, &mut settings);
        let Command::Load { id, .. } = s.open(ModelSource::Default) else {
            panic!()
        };
        let r = request(s.apply(
            Event::Loaded {
                id,
                info: Box::new(info()),
            },
            &mut settings,
        ));
        assert_eq!(r.answer_id, None);
    }

    /// The progress row's estimate: nothing before the first layer, the pace so far after.
    #[test]
    fn progress_estimates_the_time_left_from_the_layers_done() {
        let started = Instant::now() - Duration::from_secs(10);
        let mut p = ComputeProgress {
            started,
            stage: None,
        };
        assert_eq!(p.estimate(), (0.0, None));
        assert!(p.describe().starts_with("tokenizing"), "{}", p.describe());
        p.stage = Some(Stage::Forward {
            layer: 5,
            layers: 20,
        });
        let (f, left) = p.estimate();
        assert!((f - 0.25).abs() < 1e-6);
        let left = left.unwrap().as_secs_f32();
        assert!((29.0..32.0).contains(&left), "{left}");
        assert!(p.describe().contains("layer 5 of 20"), "{}", p.describe());
        assert!(p.describe().contains("about 0:3"), "{}", p.describe());
        p.stage = Some(Stage::Attribution);
        assert_eq!(p.estimate(), (1.0, None));
    }
}

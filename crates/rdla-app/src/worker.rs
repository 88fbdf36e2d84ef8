//! The compute worker: owns the model and the forward-pass cache on its own thread, takes
//! typed commands and answers with typed events. The UI never calls the model directly and
//! never waits for it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use rdla_attrib::{
    Engine, Expansion, MlpMode, NodeKind, Overview, Path, Prediction, Target, top_predictions,
};
use rdla_model::{Cache, Device, DeviceInfo, Model, Processing};

/// Which model to open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelSource {
    /// The embedded default model.
    Default,
    /// A Hugging Face folder (or a file inside one).
    Path(PathBuf),
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str(rdla_model::default_model::NAME),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What to attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeRequest {
    pub prompt: String,
    pub answer: String,
    pub foil: Option<String>,
    pub bos: bool,
    pub mlp_mode: MlpMode,
}

/// Commands from the UI.
#[derive(Debug)]
pub enum Command {
    Load { source: ModelSource, id: u64 },
    Compute { request: ComputeRequest, id: u64 },
    Expand { path: Path, id: u64 },
    Shutdown,
}

/// A loaded model, as the UI sees it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub source: ModelSource,
    pub name: String,
    pub architecture: &'static str,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (fewer than `n_heads` with grouped-query attention).
    pub n_kv_heads: usize,
    pub d_model: usize,
    /// Norm, positions, residual and MLP kind, for the status bar's tooltip.
    pub details: String,
    pub n_ctx: usize,
    pub d_vocab: usize,
    pub processing: Vec<&'static str>,
    pub load_ms: f64,
}

/// The tokens of the current prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub strs: Vec<String>,
    pub has_bos: bool,
}

/// The result of a computation: always tokens and predictions when the forward pass ran,
/// the attribution when the target resolved.
#[derive(Debug, Clone)]
pub struct Computed {
    pub tokens: Tokens,
    pub top: Vec<Prediction>,
    pub answer_id: u32,
    pub foil_id: Option<u32>,
    pub overview: Overview,
    pub root: Expansion,
    pub forward_ms: f64,
    pub attribution_ms: f64,
}

/// One expanded node plus what its view needs.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub path: Path,
    pub expansion: Expansion,
    /// The head's attention pattern row over source positions (head nodes only).
    pub pattern: Option<Vec<f32>>,
    /// The parent's value, for "share of parent".
    pub ms: f64,
}

/// Events to the UI.
#[derive(Debug, Clone)]
pub enum Event {
    LoadProgress {
        id: u64,
        done: u64,
        total: u64,
    },
    Loaded {
        id: u64,
        info: ModelInfo,
    },
    LoadFailed {
        id: u64,
        source: ModelSource,
        error: String,
    },
    Computed {
        id: u64,
        result: Box<Computed>,
    },
    /// The forward pass failed or the target did not resolve; `tokens`/`top` are filled when
    /// the prompt itself was fine.
    ComputeFailed {
        id: u64,
        error: String,
        tokens: Option<Tokens>,
        top: Vec<Prediction>,
    },
    Expanded {
        id: u64,
        result: Box<Expanded>,
    },
    ExpandFailed {
        id: u64,
        path: Path,
        error: String,
    },
}

/// The UI's handle on the worker thread.
pub struct WorkerHandle {
    tx: Sender<Command>,
    pub rx: Receiver<Event>,
    /// Set to cancel a load in progress.
    pub cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Start the worker on `device`; `wake` is called after every event (the UI repaints).
    pub fn spawn(
        device: Device,
        device_info: DeviceInfo,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (tx, cmd_rx) = std::sync::mpsc::channel();
        let (ev_tx, rx) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            device,
            _device_info: device_info,
            model: None,
            state: None,
            events: ev_tx,
            wake: Box::new(wake),
            cancel: cancel.clone(),
            queue: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("rdla-worker".into())
            .spawn(move || worker.run(cmd_rx))
            .ok();
        Self {
            tx,
            rx,
            cancel,
            thread,
        }
    }

    pub fn send(&self, cmd: Command) {
        if matches!(cmd, Command::Load { .. }) {
            self.cancel.store(false, Ordering::SeqCst);
        }
        let _ = self.tx.send(cmd);
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    cache: Cache,
    target: Target,
    mode: MlpMode,
}

struct Worker {
    device: Device,
    _device_info: DeviceInfo,
    model: Option<Model>,
    state: Option<State>,
    events: Sender<Event>,
    wake: Box<dyn Fn() + Send>,
    cancel: Arc<AtomicBool>,
    queue: VecDeque<Command>,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Worker {
    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
        (self.wake)();
    }

    /// Take everything waiting; keep only the newest load and compute (older ones are stale),
    /// and expansions after the last compute.
    fn coalesce(&mut self, rx: &Receiver<Command>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Ok(c) => self.queue.push_back(c),
                Err(TryRecvError::Empty) => break,
            }
        }
        if let Some(i) = self
            .queue
            .iter()
            .rposition(|c| matches!(c, Command::Load { .. }))
        {
            self.queue.drain(..i);
        }
        let last_compute = self
            .queue
            .iter()
            .rposition(|c| matches!(c, Command::Compute { .. }));
        if let Some(i) = last_compute {
            let keep: VecDeque<Command> = self
                .queue
                .drain(..)
                .enumerate()
                .filter(|(j, c)| !matches!(c, Command::Compute { .. }) || *j == i)
                .map(|(_, c)| c)
                .collect();
            self.queue = keep;
        }
        true
    }

    fn run(mut self, rx: Receiver<Command>) {
        loop {
            if self.queue.is_empty() {
                match rx.recv() {
                    Ok(Command::Shutdown) | Err(_) => return,
                    Ok(c) => self.queue.push_back(c),
                }
            }
            if !self.coalesce(&rx) {
                return;
            }
            let Some(cmd) = self.queue.pop_front() else {
                continue;
            };
            match cmd {
                Command::Load { source, id } => self.load(source, id),
                Command::Compute { request, id } => self.compute(&request, id),
                Command::Expand { path, id } => self.expand(path, id),
                Command::Shutdown => return,
            }
        }
    }

    fn load(&mut self, source: ModelSource, id: u64) {
        let t = Instant::now();
        let events = self.events.clone();
        let cancel = self.cancel.clone();
        let mut last = Instant::now();
        let wake = &self.wake;
        let mut progress = |p: rdla_model::LoadProgress| {
            if last.elapsed().as_millis() > 30 || p.bytes_done == p.bytes_total {
                last = Instant::now();
                let _ = events.send(Event::LoadProgress {
                    id,
                    done: p.bytes_done,
                    total: p.bytes_total,
                });
                wake();
            }
            !cancel.load(Ordering::SeqCst)
        };
        let result = match &source {
            ModelSource::Default => {
                Model::load_default(&self.device, Processing::default(), &mut progress)
            }
            ModelSource::Path(p) => {
                Model::load(p, &self.device, Processing::default(), &mut progress)
            }
        };
        match result {
            Ok(m) => {
                let c = &m.config;
                let info = ModelInfo {
                    source,
                    name: m.name.clone(),
                    architecture: c.architecture.hf_name(),
                    n_layers: c.n_layers,
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    d_model: c.d_model,
                    details: describe_config(c),
                    n_ctx: c.n_ctx,
                    d_vocab: c.d_vocab,
                    processing: m.processing.applied(),
                    load_ms: ms(t),
                };
                self.model = Some(m);
                self.state = None;
                self.emit(Event::Loaded { id, info });
            }
            // the previous model stays loaded and usable
            Err(e) => self.emit(Event::LoadFailed {
                id,
                source,
                error: e.to_string(),
            }),
        }
    }

    fn compute(&mut self, req: &ComputeRequest, id: u64) {
        let Some(model) = &self.model else {
            self.emit(Event::ComputeFailed {
                id,
                error: "no model loaded".into(),
                tokens: None,
                top: vec![],
            });
            return;
        };
        let tok = &model.tokenizer;
        let ids = match tok
            .encode_prompt(&req.prompt, req.bos)
            .and_then(|ids| model.check_tokens(&ids).map(|()| ids))
        {
            Ok(ids) => ids,
            Err(e) => {
                self.emit(Event::ComputeFailed {
                    id,
                    error: e.to_string(),
                    tokens: None,
                    top: vec![],
                });
                return;
            }
        };
        let tokens = Tokens {
            strs: ids.iter().map(|&i| tok.token_str(i)).collect(),
            ids: ids.clone(),
            has_bos: req.bos,
        };
        let t = Instant::now();
        let cache = match model.run(&ids) {
            Ok(c) => c,
            Err(e) => {
                self.emit(Event::ComputeFailed {
                    id,
                    error: e.to_string(),
                    tokens: Some(tokens),
                    top: vec![],
                });
                return;
            }
        };
        let top = top_predictions(model, &cache, 10).unwrap_or_default();
        let forward_ms = ms(t);
        let target = tok
            .single_token(&req.answer)
            .map_err(|e| format!("answer: {e}"))
            .and_then(
                |answer| match req.foil.as_deref().filter(|f| !f.is_empty()) {
                    None => Ok(Target::Logit { answer }),
                    Some(f) => tok
                        .single_token(f)
                        .map(|foil| Target::Diff { answer, foil })
                        .map_err(|e| format!("foil: {e}")),
                },
            );
        let target = match target {
            Ok(t) => t,
            Err(error) => {
                self.emit(Event::ComputeFailed {
                    id,
                    error,
                    tokens: Some(tokens),
                    top,
                });
                return;
            }
        };
        let t = Instant::now();
        let result = Engine::new(model, &cache, target, req.mlp_mode).and_then(|engine| {
            let overview = engine.overview()?;
            let root = engine.expand(&Path::root())?;
            Ok((overview, root))
        });
        match result {
            Ok((overview, root)) => {
                let computed = Computed {
                    tokens,
                    top,
                    answer_id: target.answer(),
                    foil_id: target.foil(),
                    overview,
                    root,
                    forward_ms,
                    attribution_ms: ms(t),
                };
                self.state = Some(State {
                    cache,
                    target,
                    mode: req.mlp_mode,
                });
                self.emit(Event::Computed {
                    id,
                    result: Box::new(computed),
                });
            }
            Err(e) => self.emit(Event::ComputeFailed {
                id,
                error: e.to_string(),
                tokens: Some(tokens),
                top,
            }),
        }
    }

    fn expand(&mut self, path: Path, id: u64) {
        let (Some(model), Some(state)) = (&self.model, &self.state) else {
            self.emit(Event::ExpandFailed {
                id,
                path,
                error: "nothing computed yet".into(),
            });
            return;
        };
        let t = Instant::now();
        let result =
            Engine::new(model, &state.cache, state.target, state.mode).and_then(|engine| {
                let expansion = engine.expand(&path)?;
                let pattern = match expansion.kind {
                    NodeKind::Head { layer, head } => {
                        Some(engine.head_pattern(layer, head, expansion.position)?)
                    }
                    _ => None,
                };
                Ok((expansion, pattern))
            });
        match result {
            Ok((expansion, pattern)) => self.emit(Event::Expanded {
                id,
                result: Box::new(Expanded {
                    path,
                    expansion,
                    pattern,
                    ms: ms(t),
                }),
            }),
            Err(e) => self.emit(Event::ExpandFailed {
                id,
                path,
                error: e.to_string(),
            }),
        }
    }
}

/// One line on what kind of transformer a config describes.
fn describe_config(c: &rdla_model::ModelConfig) -> String {
    use rdla_model::config::{Norm, Positional};
    let norm = match c.norm {
        Norm::LayerNorm => "LayerNorm",
        Norm::RmsNorm => "RMSNorm",
    };
    let pos = match &c.positional {
        Positional::Learned => "learned positions".to_string(),
        Positional::Rotary(r) => format!("rotary ({})", r.describe),
    };
    let resid = if c.parallel_residual {
        "parallel residual"
    } else {
        "sequential residual"
    };
    let mlp = if c.gated_mlp {
        format!("gated MLP ({:?}) ×{}", c.act, c.d_mlp)
    } else {
        format!("MLP ({:?}) ×{}", c.act, c.d_mlp)
    };
    let heads = if c.n_kv_heads < c.n_heads {
        format!(
            "{} query heads sharing {} key/value heads",
            c.n_heads, c.n_kv_heads
        )
    } else {
        format!("{} heads", c.n_heads)
    };
    format!(
        "{norm} · {pos} · {resid} · {heads} of {} · {mlp} · context {} · vocabulary {} · stored as {}",
        c.d_head, c.n_ctx, c.d_vocab, c.dtype
    )
}

//! The compute worker: a thin adapter that owns a [`Session`] on its own thread, takes typed
//! commands and answers with typed events. The UI never calls the model directly and never
//! waits for it. A panic while handling a command is caught and reported as that command's
//! error; the session (and so the loaded model) survives it.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use rdla_attrib::Path;
use rdla_attrib::trace::{Trace, TraceOptions};
use rdla_model::model::ablate::AblationMode;
use rdla_model::{Device, DeviceInfo};
use rdla_session::census::{self, CensusOptions, CensusTable};
use rdla_session::{
    AblationReport, Computed, ModelInfo, ModelSource, NodeView, Prediction, Request, Session,
    SessionError, Stage, Tokens,
};

/// Commands from the UI.
#[derive(Debug)]
pub enum Command {
    Load {
        source: ModelSource,
        id: u64,
    },
    Compute {
        request: Request,
        id: u64,
    },
    Expand {
        path: Path,
        id: u64,
    },
    /// Trace the tree below `from`.
    Trace {
        from: Path,
        opts: TraceOptions,
        id: u64,
    },
    /// Save what was explored of the current computation (the views at `paths`, a trace and
    /// its verification) as a result file.
    SaveResult {
        file: std::path::PathBuf,
        paths: Vec<Path>,
        trace: Option<(Box<Trace>, f64)>,
        verification: Option<Box<rdla_session::verify::Verification>>,
    },
    /// Verify a trace: its `k` largest sites ablated alone, then together.
    Verify {
        trace: Box<Trace>,
        k: usize,
        mode: AblationMode,
        id: u64,
    },
    /// Ablate the sites of `paths` together in the real forward pass.
    Ablate {
        paths: Vec<Path>,
        mode: AblationMode,
        id: u64,
    },
    /// Compare every view with this prompt (the deltas), or stop comparing (`None`).
    Contrast {
        prompt: Option<String>,
        id: u64,
    },
    /// Attribute every record of a prompts file (JSONL, CSV or Parquet) with these options;
    /// the current computation is set aside meanwhile and comes back after.
    Census {
        file: std::path::PathBuf,
        bos: bool,
        mlp_mode: rdla_attrib::MlpMode,
        id: u64,
    },
    Shutdown,
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
        info: Box<ModelInfo>,
    },
    LoadFailed {
        id: u64,
        source: ModelSource,
        error: WorkerError,
    },
    Computed {
        id: u64,
        result: Box<Computed>,
        /// The root's view.
        root: Box<NodeView>,
        /// The model as it is now (a resident model may have switched to streaming its
        /// layers for this prompt).
        info: Box<ModelInfo>,
    },
    /// The forward pass failed or the target did not resolve; `tokens`/`top` are filled when
    /// the prompt itself was fine; `kept`: the previous computation is still current (only
    /// the target failed, on the same prompt), so its views stay.
    ComputeFailed {
        id: u64,
        error: WorkerError,
        tokens: Option<Tokens>,
        top: Vec<Prediction>,
        kept: bool,
    },
    Expanded {
        id: u64,
        view: Box<NodeView>,
    },
    ExpandFailed {
        id: u64,
        path: Path,
        error: WorkerError,
    },
    TraceProgress {
        id: u64,
        done: usize,
        budget: usize,
    },
    /// The computation `id` reached `stage`.
    ComputeProgress {
        id: u64,
        stage: Stage,
    },
    Traced {
        id: u64,
        trace: Box<Trace>,
        /// How long the trace took.
        ms: f64,
    },
    TraceFailed {
        id: u64,
        error: WorkerError,
    },
    /// A result file written: its nodes and bytes.
    ResultSaved {
        file: std::path::PathBuf,
        result: Result<(usize, usize), WorkerError>,
    },
    /// `done` of `total` ablated runs of a verification (after each forward pass).
    VerifyProgress {
        id: u64,
        done: usize,
        total: usize,
    },
    Verified {
        id: u64,
        result: Result<Box<rdla_session::verify::Verification>, WorkerError>,
    },
    Ablated {
        id: u64,
        paths: Vec<Path>,
        mode: AblationMode,
        result: Result<Box<AblationReport>, WorkerError>,
    },
    /// The views now compare with `prompt` (`None`: they no longer compare); `root` is the
    /// root's view as it now is.
    Contrasted {
        id: u64,
        prompt: Option<String>,
        root: Box<NodeView>,
    },
    /// The contrast prompt could not be computed; the views are as they were.
    ContrastFailed {
        id: u64,
        error: WorkerError,
    },
    CensusProgress {
        id: u64,
        done: usize,
        total: usize,
    },
    /// The census is done (or was stopped: then it holds the prompts done).
    Censused {
        id: u64,
        table: Arc<CensusTable>,
    },
    CensusFailed {
        id: u64,
        error: WorkerError,
    },
}

/// Why the worker could not do what it was asked. The session's errors stay typed (shared,
/// so events stay cheap to clone); they become text only where the window shows them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Session(Arc<SessionError>),
    /// The command panicked; the session survived it.
    #[error("internal error (please report it): {0}; the loaded model is still usable")]
    Panic(String),
    #[error("no model loaded")]
    NoModel,
}

impl From<SessionError> for WorkerError {
    fn from(e: SessionError) -> Self {
        Self::Session(Arc::new(e))
    }
}

impl WorkerError {
    /// A computation stopped because the UI no longer wanted it: not an error to show.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Session(e)
            if matches!(**e, SessionError::Model(rdla_model::ModelError::ComputeCancelled)))
    }
}

/// The UI's handle on the worker thread.
pub struct WorkerHandle {
    tx: Sender<Command>,
    pub rx: Receiver<Event>,
    /// Set to cancel a load in progress.
    pub cancel: Arc<AtomicBool>,
    /// The computation the UI still wants (the id of the latest `Compute` sent; 0: none): a
    /// computation that is no longer wanted stops at its next layer.
    pub wanted: Arc<AtomicU64>,
    /// The census the UI still wants (0: none): one no longer wanted stops after its prompt.
    pub census_wanted: Arc<AtomicU64>,
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
        Self::start(device, device_info, Box::new(wake), false)
    }

    /// A worker that panics in the middle of every trace and before every ablation (tests of
    /// the panic reporting; not reachable outside this crate's tests).
    #[cfg(test)]
    pub(crate) fn spawn_panicking(device: Device, device_info: DeviceInfo) -> Self {
        Self::start(device, device_info, Box::new(|| {}), true)
    }

    fn start(
        device: Device,
        device_info: DeviceInfo,
        wake: Box<dyn Fn() + Send>,
        inject_panic: bool,
    ) -> Self {
        #[cfg(not(test))]
        let _ = inject_panic;
        let (tx, cmd_rx) = std::sync::mpsc::channel();
        let (ev_tx, rx) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let wanted = Arc::new(AtomicU64::new(0));
        let census_wanted = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            wanted: wanted.clone(),
            census_wanted: census_wanted.clone(),
            device,
            device_info,
            session: None,
            readouts_unprepared: false,
            events: ev_tx,
            wake,
            cancel: cancel.clone(),
            queue: VecDeque::new(),
            #[cfg(test)]
            inject_panic,
        };
        let thread = std::thread::Builder::new()
            .name("rdla-worker".into())
            .spawn(move || worker.run(&cmd_rx))
            .ok();
        Self {
            tx,
            rx,
            cancel,
            wanted,
            census_wanted,
            thread,
        }
    }

    /// Send a command; `false` when the worker is gone (the UI then restarts it).
    pub fn send(&self, cmd: Command) -> bool {
        match &cmd {
            Command::Load { .. } => self.cancel.store(false, Ordering::SeqCst),
            Command::Compute { id, .. } => self.wanted.store(*id, Ordering::SeqCst),
            Command::Census { id, .. } => self.census_wanted.store(*id, Ordering::SeqCst),
            _ => {}
        }
        self.tx.send(cmd).is_ok()
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

struct Worker {
    device: Device,
    device_info: DeviceInfo,
    session: Option<Session>,
    events: Sender<Event>,
    wake: Box<dyn Fn() + Send>,
    cancel: Arc<AtomicBool>,
    /// See [`WorkerHandle::wanted`].
    wanted: Arc<AtomicU64>,
    /// See [`WorkerHandle::census_wanted`].
    census_wanted: Arc<AtomicU64>,
    queue: VecDeque<Command>,
    /// The loaded model's vocabulary readouts are not prepared yet: done once the first
    /// computation is on screen and nothing else is asked (the first readout then does not
    /// wait for it).
    readouts_unprepared: bool,
    /// Panic inside traces and ablations (tests only).
    #[cfg(test)]
    inject_panic: bool,
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The event that reports `cmd` as failed with `error` (a panic while handling it), so the UI
/// stops waiting for it. Every command that the UI waits on has one.
fn failed(cmd: &Command, error: WorkerError) -> Option<Event> {
    Some(match cmd {
        Command::Load { source, id } => Event::LoadFailed {
            id: *id,
            source: source.clone(),
            error,
        },
        Command::Compute { id, .. } => Event::ComputeFailed {
            id: *id,
            error,
            tokens: None,
            top: Vec::new(),
            kept: false,
        },
        Command::Expand { path, id } => Event::ExpandFailed {
            id: *id,
            path: path.clone(),
            error,
        },
        Command::Trace { id, .. } => Event::TraceFailed { id: *id, error },
        Command::SaveResult { file, .. } => Event::ResultSaved {
            file: file.clone(),
            result: Err(error),
        },
        Command::Verify { id, .. } => Event::Verified {
            id: *id,
            result: Err(error),
        },
        Command::Ablate { paths, mode, id } => Event::Ablated {
            id: *id,
            paths: paths.clone(),
            mode: *mode,
            result: Err(error),
        },
        Command::Contrast { id, .. } => Event::ContrastFailed { id: *id, error },
        Command::Census { id, .. } => Event::CensusFailed { id: *id, error },
        Command::Shutdown => return None,
    })
}

impl Worker {
    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
        (self.wake)();
    }

    /// Take everything waiting; keep only the newest load and compute (older ones are stale),
    /// and expansions after the last compute. `false` on shutdown.
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
        if let Some(i) = self
            .queue
            .iter()
            .rposition(|c| matches!(c, Command::Compute { .. }))
        {
            let mut j = 0;
            self.queue.retain(|c| {
                let keep = !matches!(c, Command::Compute { .. }) || j == i;
                j += 1;
                keep
            });
        }
        true
    }

    fn run(mut self, rx: &Receiver<Command>) {
        loop {
            if self.queue.is_empty() {
                self.prepare_when_idle(rx);
                if matches!(self.queue.front(), Some(Command::Shutdown)) {
                    return;
                }
            }
            if self.queue.is_empty() {
                match rx.recv() {
                    Ok(Command::Shutdown) | Err(_) => return,
                    Ok(c) => self.queue.push_back(c),
                }
            }
            if !self.coalesce(rx) {
                return;
            }
            let Some(cmd) = self.queue.pop_front() else {
                continue;
            };
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(&cmd)));
            if let Err(p) = result {
                let error = WorkerError::Panic(panic_message(p.as_ref()));
                if let Some(e) = failed(&cmd, error) {
                    self.emit(e);
                }
            }
        }
    }

    /// With nothing asked and a computation on screen, prepare the model's vocabulary readouts
    /// (a pass over the unembedding: seconds on a large vocabulary), unless a command came in
    /// meanwhile. A failure here is the first readout's to report.
    fn prepare_when_idle(&mut self, rx: &Receiver<Command>) {
        let ready = self
            .session
            .as_ref()
            .is_some_and(|s| s.computed().is_some());
        if !(self.readouts_unprepared && ready) {
            return;
        }
        if let Ok(c) = rx.try_recv() {
            self.queue.push_back(c);
            return;
        }
        self.readouts_unprepared = false;
        if let Some(s) = &self.session {
            let _ =
                std::panic::catch_unwind(AssertUnwindSafe(|| s.model().prepare_vocab_readouts()));
        }
    }

    fn handle(&mut self, cmd: &Command) {
        match cmd {
            Command::Load { source, id } => self.load(source, *id),
            Command::Compute { request, id } => self.compute(request, *id),
            Command::Expand { path, id } => self.expand(path, *id),
            Command::Trace { from, opts, id } => self.trace(from, opts, *id),
            Command::Ablate { paths, mode, id } => self.ablate(paths, *mode, *id),
            Command::Verify { trace, k, mode, id } => self.verify(trace, *k, *mode, *id),
            Command::SaveResult {
                file,
                paths,
                trace,
                verification,
            } => self.save_result(file, paths, trace.as_ref(), verification.as_deref()),
            Command::Contrast { prompt, id } => self.contrast(prompt.as_deref(), *id),
            Command::Census {
                file,
                bos,
                mlp_mode,
                id,
            } => self.census(file, *bos, *mlp_mode, *id),
            Command::Shutdown => {}
        }
    }

    /// A census of `file`'s records, at depth 1 (the mean view's nodes), skipping the records
    /// that cannot be attributed (listed in the result). Progress at most every 100 ms; a
    /// census no longer wanted stops after its prompt and reports the prompts done. The
    /// current computation is set aside and put back, whatever happens.
    fn census(
        &mut self,
        file: &std::path::Path,
        bos: bool,
        mlp_mode: rdla_attrib::MlpMode,
        id: u64,
    ) {
        let Some(mut session) = self.session.take() else {
            self.emit(Event::CensusFailed {
                id,
                error: WorkerError::NoModel,
            });
            return;
        };
        let opts = CensusOptions {
            depth: 1,
            shard: (0, 1),
            skip_bad: true,
            bos,
            mlp_mode,
        };
        let aside = session.set_aside();
        let wanted = self.census_wanted.clone();
        let mut last = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let records = census::read_records(file)?;
            census::collect(&mut session, &records, &opts, &mut |done, total| {
                if last.elapsed().as_millis() >= 100 || done == total {
                    last = Instant::now();
                    self.emit(Event::CensusProgress { id, done, total });
                }
                wanted.load(Ordering::SeqCst) == id
            })
        }));
        session.put_back(aside);
        self.session = Some(session);
        self.emit(match result {
            Ok(Ok(table)) => Event::Censused {
                id,
                table: Arc::new(table),
            },
            Ok(Err(e)) => Event::CensusFailed {
                id,
                error: e.into(),
            },
            Err(p) => Event::CensusFailed {
                id,
                error: WorkerError::Panic(panic_message(p.as_ref())),
            },
        });
    }

    fn load(&mut self, source: &ModelSource, id: u64) {
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
        match Session::open(
            source.clone(),
            &self.device,
            self.device_info.clone(),
            &mut progress,
        ) {
            Ok(session) => {
                let info = session.info();
                self.session = Some(session);
                self.readouts_unprepared = true;
                self.emit(Event::Loaded {
                    id,
                    info: Box::new(info),
                });
            }
            // the previous model stays loaded and usable
            Err(e) => self.emit(Event::LoadFailed {
                id,
                source: source.clone(),
                error: e.into(),
            }),
        }
    }

    fn compute(&mut self, request: &Request, id: u64) {
        let Some(session) = self.session.as_mut() else {
            self.emit(Event::ComputeFailed {
                id,
                error: WorkerError::NoModel,
                tokens: None,
                top: vec![],
                kept: false,
            });
            return;
        };
        let (events, wake, wanted) = (&self.events, &self.wake, &self.wanted);
        let mut last: Option<(Instant, Stage)> = None;
        let mut progress = |stage: Stage| {
            // every stage change, and the forward pass's layers at most every 100 ms
            let due = last.is_none_or(|(t, s)| {
                std::mem::discriminant(&s) != std::mem::discriminant(&stage)
                    || t.elapsed() >= std::time::Duration::from_millis(100)
            });
            if due {
                last = Some((Instant::now(), stage));
                let _ = events.send(Event::ComputeProgress { id, stage });
                wake();
            }
            wanted.load(Ordering::SeqCst) == id
        };
        let event = match session.compute_with_progress(request, &mut progress) {
            Ok(computed) => {
                let computed = Box::new(computed.clone());
                match session.view(&Path::root()) {
                    Ok(root) => Event::Computed {
                        id,
                        result: computed,
                        root: Box::new(root),
                        info: Box::new(session.info()),
                    },
                    Err(e) => Event::ComputeFailed {
                        id,
                        error: e.into(),
                        tokens: Some(computed.tokens.clone()),
                        top: computed.top.clone(),
                        kept: false,
                    },
                }
            }
            Err(f) => Event::ComputeFailed {
                id,
                error: f.error.into(),
                tokens: f.tokens,
                top: f.top,
                kept: f.kept,
            },
        };
        self.emit(event);
    }

    fn expand(&mut self, path: &Path, id: u64) {
        let result = match &self.session {
            Some(s) => s.view(path).map_err(WorkerError::from),
            None => Err(WorkerError::NoModel),
        };
        self.emit(match result {
            Ok(view) => Event::Expanded {
                id,
                view: Box::new(view),
            },
            Err(error) => Event::ExpandFailed {
                id,
                path: path.clone(),
                error,
            },
        });
    }

    fn contrast(&mut self, prompt: Option<&str>, id: u64) {
        let result = match &mut self.session {
            Some(s) => s
                .set_contrast(prompt)
                .and_then(|()| s.view(&Path::root()))
                .map_err(WorkerError::from),
            None => Err(WorkerError::NoModel),
        };
        self.emit(match result {
            Ok(root) => Event::Contrasted {
                id,
                prompt: prompt.map(str::to_string),
                root: Box::new(root),
            },
            Err(error) => Event::ContrastFailed { id, error },
        });
    }

    fn trace(&self, from: &Path, opts: &TraceOptions, id: u64) {
        let Some(s) = &self.session else {
            return self.emit(Event::TraceFailed {
                id,
                error: WorkerError::NoModel,
            });
        };
        let (events, wake) = (&self.events, &self.wake);
        let start = std::time::Instant::now();
        let mut last = start;
        #[cfg(test)]
        let inject_panic = self.inject_panic;
        let result = s.trace(from, opts, &mut |done, budget| {
            #[cfg(test)]
            assert!(!inject_panic, "injected panic in the middle of a trace");
            if last.elapsed() >= std::time::Duration::from_millis(100) {
                last = std::time::Instant::now();
                let _ = events.send(Event::TraceProgress { id, done, budget });
                wake();
            }
            true
        });
        self.emit(match result {
            Ok(trace) => Event::Traced {
                id,
                trace: Box::new(trace),
                ms: rdla_session::ms(start),
            },
            Err(e) => Event::TraceFailed {
                id,
                error: e.into(),
            },
        });
    }

    fn save_result(
        &self,
        file: &std::path::Path,
        paths: &[Path],
        trace: Option<&(Box<Trace>, f64)>,
        verification: Option<&rdla_session::verify::Verification>,
    ) {
        let result = match &self.session {
            Some(s) => (|| {
                let saved = s.saved(paths, trace.map(|(t, ms)| (t.as_ref(), *ms)), verification)?;
                let bytes = s.write_result(file, &saved)?;
                Ok::<_, rdla_session::SessionError>((saved.nodes.len(), bytes))
            })()
            .map_err(WorkerError::from),
            None => Err(WorkerError::NoModel),
        };
        self.emit(Event::ResultSaved {
            file: file.to_path_buf(),
            result,
        });
    }

    fn verify(&self, trace: &Trace, k: usize, mode: AblationMode, id: u64) {
        let Some(s) = &self.session else {
            return self.emit(Event::Verified {
                id,
                result: Err(WorkerError::NoModel),
            });
        };
        let (events, wake) = (&self.events, &self.wake);
        let result = s.verify(trace, k, mode, &mut |done, total| {
            let _ = events.send(Event::VerifyProgress { id, done, total });
            wake();
            true
        });
        self.emit(Event::Verified {
            id,
            result: result.map(Box::new).map_err(WorkerError::from),
        });
    }

    fn ablate(&self, paths: &[Path], mode: AblationMode, id: u64) {
        #[cfg(test)]
        assert!(!self.inject_panic, "injected panic before an ablation");
        let result = match &self.session {
            Some(s) => s
                .ablate(paths, mode, false)
                .map(Box::new)
                .map_err(WorkerError::from),
            None => Err(WorkerError::NoModel),
        };
        self.emit(Event::Ablated {
            id,
            paths: paths.to_vec(),
            mode,
            result,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::settings::Settings;
    use crate::state::{Action, AppState};

    /// Send `cmds`, then apply the worker's events (and send what they trigger) until the state
    /// has nothing outstanding.
    fn settle(w: &WorkerHandle, s: &mut AppState, settings: &mut Settings, mut cmds: Vec<Command>) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            for c in cmds.drain(..) {
                assert!(w.send(c), "the worker is gone");
            }
            if s.is_idle() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match w.rx.recv_timeout(left) {
                Ok(ev) => cmds = s.apply(ev, settings),
                Err(e) => panic!("no answer from the worker ({e}); status: {}", s.status),
            }
        }
    }

    #[test]
    fn a_panic_in_a_trace_or_an_ablation_is_reported_and_the_app_is_idle_again() {
        let w = WorkerHandle::spawn_panicking(Device::flex(), DeviceInfo::cpu(None));
        let mut s = AppState::default();
        let mut settings = Settings::default();
        let open = s.open(ModelSource::Default);
        settle(&w, &mut s, &mut settings, vec![open]);
        assert!(s.computed.is_some(), "{:?}", s.compute_error);

        // a trace that panics in its middle: reported, and nothing is in flight any more
        let cmds = s.act(Action::Trace(Path::root()), &mut settings);
        assert!(matches!(cmds.as_slice(), [Command::Trace { .. }]));
        assert!(!s.is_idle(), "the status bar says it works while it traces");
        settle(&w, &mut s, &mut settings, cmds);
        assert!(s.graph.tracing.is_none() && s.graph.trace.is_none());
        let err = s.graph.error.clone().unwrap_or_default();
        assert!(
            err.contains("internal error")
                && err.contains("injected panic in the middle of a trace"),
            "{err}"
        );
        assert!(
            s.status.contains("trace failed: internal error"),
            "{}",
            s.status
        );

        // an ablation that panics: its result is the error, and it is no longer in flight
        let paths = vec![Path::parse("L0.mlp").unwrap()];
        let cmds = s.act(
            Action::Ablate(paths.clone(), AblationMode::Zero),
            &mut settings,
        );
        assert!(s.is_ablating(&paths, AblationMode::Zero) && !s.is_idle());
        settle(&w, &mut s, &mut settings, cmds);
        assert!(!s.is_ablating(&paths, AblationMode::Zero));
        let r = s.ablations.get(&(paths, AblationMode::Zero)).cloned();
        let Some(Err(err)) = r else {
            panic!("expected the ablation's error, got {r:?}")
        };
        assert!(err.contains("injected panic before an ablation"), "{err}");
        assert!(s.status.contains("causal check failed"), "{}", s.status);

        // the loaded model survived both: a drill-down still works
        let head = Path::parse("L0.attn").unwrap();
        let cmds = s.act(Action::Navigate(head.clone()), &mut settings);
        settle(&w, &mut s, &mut settings, cmds);
        assert_eq!(s.current_view().map(|v| v.path.clone()), Some(head));
    }

    /// A computation the UI no longer wants (a Cancel, or an edit) stops at its next layer:
    /// it reports its stage first, then a cancellation that is not an error; the state is
    /// idle again, holds no stale computation, and says so.
    #[test]
    fn a_computation_no_longer_wanted_stops_and_is_not_an_error() {
        let w = WorkerHandle::spawn(Device::flex(), DeviceInfo::cpu(None), || {});
        let mut s = AppState::default();
        let mut settings = Settings::default();
        let open = s.open(ModelSource::Default);
        settle(&w, &mut s, &mut settings, vec![open]);
        assert!(s.computed.is_some(), "{:?}", s.compute_error);

        let cmds = s.act(Action::Recompute, &mut settings);
        let [Command::Compute { .. }] = cmds.as_slice() else {
            panic!("expected a computation, got {cmds:?}")
        };
        // sent without marking it wanted (the UI cancelled it at once)
        for c in cmds {
            w.tx.send(c).unwrap();
        }
        let (mut stages, mut cancelled) = (Vec::new(), None);
        while !s.is_idle() {
            let ev = w.rx.recv_timeout(Duration::from_secs(120)).unwrap();
            match &ev {
                Event::ComputeProgress { stage, .. } => stages.push(*stage),
                Event::ComputeFailed { error, .. } => cancelled = Some(error.is_cancelled()),
                _ => {}
            }
            let more = s.apply(ev, &mut settings);
            assert!(more.is_empty(), "{more:?}");
        }
        assert_eq!(cancelled, Some(true));
        assert!(
            matches!(
                stages.as_slice(),
                [rdla_session::Stage::Forward { layer: 1, .. }]
            ),
            "{stages:?}"
        );
        assert!(s.computed.is_none() && s.views.is_empty());
        assert!(s.compute_error.is_none(), "{:?}", s.compute_error);
        assert_eq!(s.status, "computation cancelled");
        assert!(s.progress.is_none());

        // and a wanted one runs to the end
        let cmds = s.act(Action::Recompute, &mut settings);
        settle(&w, &mut s, &mut settings, cmds);
        assert!(s.computed.is_some(), "{:?}", s.compute_error);
    }
}

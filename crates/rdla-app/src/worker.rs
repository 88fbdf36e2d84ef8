//! The compute worker: a thin adapter that owns a [`Session`] on its own thread, takes typed
//! commands and answers with typed events. The UI never calls the model directly and never
//! waits for it. A panic while handling a command is caught and reported as that command's
//! error; the session (and so the loaded model) survives it.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use rdla_attrib::Path;
use rdla_attrib::trace::{Trace, TraceOptions};
use rdla_model::model::ablate::AblationMode;
use rdla_model::{Device, DeviceInfo};
use rdla_session::{
    AblationReport, Computed, ModelInfo, ModelSource, NodeView, Prediction, Request, Session,
    Tokens,
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
    /// Ablate the sites of `paths` together in the real forward pass.
    Ablate {
        paths: Vec<Path>,
        mode: AblationMode,
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
        /// The root's view.
        root: Box<NodeView>,
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
        view: Box<NodeView>,
    },
    ExpandFailed {
        id: u64,
        path: Path,
        error: String,
    },
    TraceProgress {
        id: u64,
        done: usize,
        budget: usize,
    },
    Traced {
        id: u64,
        trace: Box<Trace>,
        /// How long the trace took.
        ms: f64,
    },
    TraceFailed {
        id: u64,
        error: String,
    },
    Ablated {
        id: u64,
        paths: Vec<Path>,
        mode: AblationMode,
        result: Result<Box<AblationReport>, String>,
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
            device_info,
            session: None,
            events: ev_tx,
            wake: Box::new(wake),
            cancel: cancel.clone(),
            queue: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("rdla-worker".into())
            .spawn(move || worker.run(&cmd_rx))
            .ok();
        Self {
            tx,
            rx,
            cancel,
            thread,
        }
    }

    /// Send a command; `false` when the worker is gone (the UI then restarts it).
    pub fn send(&self, cmd: Command) -> bool {
        if matches!(cmd, Command::Load { .. }) {
            self.cancel.store(false, Ordering::SeqCst);
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
    queue: VecDeque<Command>,
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
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
            // what to report if handling the command panics
            let on_panic = match &cmd {
                Command::Load { source, id } => Some((*id, Err(source.clone()))),
                Command::Compute { id, .. } => Some((*id, Ok(None))),
                Command::Expand { path, id } => Some((*id, Ok(Some(path.clone())))),
                Command::Trace { .. } | Command::Ablate { .. } | Command::Shutdown => None,
            };
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| match cmd {
                Command::Load { source, id } => self.load(source, id),
                Command::Compute { request, id } => self.compute(&request, id),
                Command::Expand { path, id } => self.expand(path, id),
                Command::Trace { from, opts, id } => self.trace(&from, &opts, id),
                Command::Ablate { paths, mode, id } => self.ablate(paths, mode, id),
                Command::Shutdown => {}
            }));
            if let (Err(p), Some((id, what))) = (result, on_panic) {
                let error = format!(
                    "internal error (please report it): {}; the loaded model is still usable",
                    panic_message(p.as_ref())
                );
                self.emit(match what {
                    Err(source) => Event::LoadFailed { id, source, error },
                    Ok(None) => Event::ComputeFailed {
                        id,
                        error,
                        tokens: None,
                        top: Vec::new(),
                    },
                    Ok(Some(path)) => Event::ExpandFailed { id, path, error },
                });
            }
        }
    }

    fn load(&mut self, source: ModelSource, id: u64) {
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

    fn compute(&mut self, request: &Request, id: u64) {
        let Some(session) = self.session.as_mut() else {
            self.emit(Event::ComputeFailed {
                id,
                error: "no model loaded".into(),
                tokens: None,
                top: vec![],
            });
            return;
        };
        let event = match session.compute(request) {
            Ok(computed) => {
                let computed = Box::new(computed.clone());
                match session.view(&Path::root()) {
                    Ok(root) => Event::Computed {
                        id,
                        result: computed,
                        root: Box::new(root),
                    },
                    Err(e) => Event::ComputeFailed {
                        id,
                        error: e.to_string(),
                        tokens: Some(computed.tokens.clone()),
                        top: computed.top.clone(),
                    },
                }
            }
            Err(f) => Event::ComputeFailed {
                id,
                error: f.error.to_string(),
                tokens: f.tokens,
                top: f.top,
            },
        };
        self.emit(event);
    }

    fn expand(&mut self, path: Path, id: u64) {
        let result = match &self.session {
            Some(s) => s.view(&path).map_err(|e| e.to_string()),
            None => Err("nothing computed yet".into()),
        };
        self.emit(match result {
            Ok(view) => Event::Expanded {
                id,
                view: Box::new(view),
            },
            Err(error) => Event::ExpandFailed { id, path, error },
        });
    }

    fn trace(&self, from: &Path, opts: &TraceOptions, id: u64) {
        let Some(s) = &self.session else {
            return self.emit(Event::TraceFailed {
                id,
                error: "nothing computed yet".into(),
            });
        };
        let (events, wake) = (&self.events, &self.wake);
        let start = std::time::Instant::now();
        let mut last = start;
        let result = s.trace(from, opts, &mut |done, budget| {
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
                error: e.to_string(),
            },
        });
    }

    fn ablate(&self, paths: Vec<Path>, mode: AblationMode, id: u64) {
        let result = match &self.session {
            Some(s) => s
                .ablate(&paths, mode, false)
                .map(Box::new)
                .map_err(|e| e.to_string()),
            None => Err("nothing computed yet".into()),
        };
        self.emit(Event::Ablated {
            id,
            paths,
            mode,
            result,
        });
    }
}

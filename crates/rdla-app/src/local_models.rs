//! The models already on this machine (the Hugging Face cache, Ollama, LM Studio), found by a
//! scan on its own thread: the window never waits on the disk, and a scan that does not answer
//! in [`SCAN_TIMEOUT`] is given up.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::gguf_models::{self, LocalGguf};
use crate::hf_cache::{self, CachedModel};

/// How long the menus wait for the scan.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(20);

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub hf: Vec<CachedModel>,
    /// GGUF models of Ollama and LM Studio.
    pub gguf: Vec<LocalGguf>,
}

/// Scan the Hugging Face cache, Ollama's and LM Studio's folders (blocking).
pub fn scan() -> Found {
    Found {
        hf: hf_cache::hub_dir()
            .map(|h| hf_cache::scan(&h))
            .unwrap_or_default(),
        gguf: gguf_models::scan_all(),
    }
}

/// A scan in the background and, once it answered, what it found.
#[derive(Debug)]
pub enum Scan {
    Running {
        rx: Receiver<Found>,
        since: Instant,
        timeout: Duration,
    },
    Done(Found),
    /// The scan could not start, stopped, or took too long.
    Failed(String),
}

impl Scan {
    /// Run `scan` on its own thread; `wake` is called when it answered (the UI repaints).
    pub fn start(
        scan: impl FnOnce() -> Found + Send + 'static,
        wake: impl Fn() + Send + 'static,
        timeout: Duration,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("rdla-model-scan".into())
            .spawn(move || {
                let _ = tx.send(scan());
                wake();
            });
        match spawned {
            Ok(_) => Self::Running {
                rx,
                since: Instant::now(),
                timeout,
            },
            Err(e) => Self::Failed(format!("could not look for local models: {e}")),
        }
    }

    /// Take the answer if it came; give up once the timeout has passed. Returns how long to
    /// wait before asking again while it runs.
    pub fn poll(&mut self) -> Option<Duration> {
        let Self::Running { rx, since, timeout } = self else {
            return None;
        };
        match rx.try_recv() {
            Ok(found) => *self = Self::Done(found),
            Err(TryRecvError::Disconnected) => {
                *self = Self::Failed("the search for local models stopped".into());
            }
            Err(TryRecvError::Empty) => {
                let left = timeout.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    return Some(left);
                }
                *self = Self::Failed(format!(
                    "the search for local models gave no answer in {} s",
                    timeout.as_secs()
                ));
            }
        }
        None
    }

    /// What was found, once the scan answered.
    pub fn found(&self) -> Option<&Found> {
        match self {
            Self::Done(f) => Some(f),
            Self::Running { .. } | Self::Failed(_) => None,
        }
    }

    /// What the menus say instead of a list while there is none: still scanning, or why not.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Running { .. } => Some("scanning…"),
            Self::Failed(why) => Some(why),
            Self::Done(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;

    use super::*;

    fn one_model() -> Found {
        Found {
            hf: Vec::new(),
            gguf: vec![LocalGguf {
                name: "m:latest".into(),
                path: PathBuf::from("/m"),
            }],
        }
    }

    /// The scan answers on its own thread: until it does, polling returns at once and the
    /// menus say "scanning…"; then its result is there and the UI was woken.
    #[test]
    fn a_slow_scan_does_not_block_and_its_result_arrives() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (woke_tx, woke_rx) = std::sync::mpsc::channel();
        let mut scan = Scan::start(
            move || {
                let _ = go_rx.recv();
                one_model()
            },
            move || {
                let _ = woke_tx.send(());
            },
            Duration::from_secs(600),
        );
        let t = Instant::now();
        assert!(scan.poll().is_some());
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(scan.message(), Some("scanning…"));
        assert!(scan.found().is_none());
        go_tx.send(()).unwrap();
        woke_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(scan.poll(), None);
        assert_eq!(scan.found(), Some(&one_model()));
        assert_eq!(scan.message(), None);
    }

    /// A scan that hangs (a disk that never answers) is given up after the timeout.
    #[test]
    fn a_hung_scan_is_given_up_after_the_timeout() {
        let (_keep, hang) = std::sync::mpsc::channel::<()>();
        let mut scan = Scan::start(
            move || {
                let _ = hang.recv();
                Found::default()
            },
            || {},
            Duration::from_millis(50),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(scan.poll(), None);
        assert!(scan.found().is_none());
        let why = scan.message().unwrap();
        assert!(why.contains("no answer"), "{why}");
    }
}

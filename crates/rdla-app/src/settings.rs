//! What the explorer remembers between runs (serialised through eframe's storage).

use std::path::Path;

use rdla_attrib::MlpMode;
use rdla_session::{ColorMap, ModelSource};
use serde::{Deserialize, Serialize};

/// The default prompt and answer: the embedded model's story.
pub const DEFAULT_PROMPT: &str = "1. Get some apples.\n2. Get some oranges.\n";
pub const DEFAULT_ANSWER: &str = "3";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub prompt: String,
    pub answer: String,
    pub foil: String,
    pub bos: bool,
    pub mlp_mode: MlpMode,
    pub colormap: ColorMap,
    /// Most recent first.
    pub recent: Vec<ModelSource>,
    /// The memory budget as typed (`6GiB`, …); empty: the default (80 % of available).
    pub max_memory: String,
    /// The GPU memory budget as typed; empty: none (the memory budget applies).
    pub max_gpu_memory: String,
    /// The "compare with…" prompt as typed (compared only when asked).
    pub contrast_prompt: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt: DEFAULT_PROMPT.into(),
            answer: DEFAULT_ANSWER.into(),
            foil: String::new(),
            bos: true,
            mlp_mode: MlpMode::FrozenGate,
            colormap: ColorMap::BlueWhiteRed,
            recent: Vec::new(),
            max_memory: String::new(),
            max_gpu_memory: String::new(),
            contrast_prompt: String::new(),
        }
    }
}

impl Settings {
    pub const KEY: &'static str = "rdla-settings";
    const MAX_RECENT: usize = 10;

    /// Make the typed memory and GPU memory budgets the process's (empty: the default, and
    /// no GPU budget); an error says why a text is not a size (that budget is left as it
    /// was). `--max-memory` / `--max-gpu-memory` on the command line win over remembered
    /// ones: `at_start` leaves a budget set there alone.
    pub fn apply_budget(&self, at_start: bool) -> Result<(), String> {
        use rdla_model::memory;
        let apply = |text: &str, set_before: bool, set: fn(u64), clear: fn()| {
            if at_start && set_before {
                Ok(())
            } else if text.trim().is_empty() {
                clear();
                Ok(())
            } else {
                memory::parse_size(text).map(set)
            }
        };
        let host = apply(
            &self.max_memory,
            memory::budget().is_some_and(|b| b.explicit),
            memory::set_budget,
            memory::clear_budget,
        );
        let gpu = apply(
            &self.max_gpu_memory,
            memory::gpu_budget().is_some(),
            memory::set_gpu_budget,
            memory::clear_gpu_budget,
        );
        host.and(gpu)
    }

    pub fn remember(&mut self, source: &ModelSource) {
        self.recent.retain(|s| s != source);
        self.recent.insert(0, source.clone());
        self.recent.truncate(Self::MAX_RECENT);
    }
}

/// eframe's settings file larger than this is not ours (its largest part is the prompt, at most
/// a few MiB).
pub const MAX_STORAGE_BYTES: u64 = 64 << 20;

/// eframe reads its settings file (`app.ron`) whole, on the UI thread, before the first frame:
/// make sure that is safe. A regular file of at most [`MAX_STORAGE_BYTES`] (or none) is left as
/// it is; anything else — a FIFO, which would keep the window black forever, a link to a device
/// such as `/dev/zero`, a huge file — is moved aside to `<name>.invalid` (settings start from
/// their defaults). Returns what was moved where, or why the file could not be moved.
pub fn guard_storage_file(path: &Path) -> Result<Option<String>, String> {
    let why = match std::fs::metadata(path) {
        // missing, or unreadable for eframe as well: it starts from the defaults
        Err(_) => return Ok(None),
        Ok(m) if m.is_file() && m.len() <= MAX_STORAGE_BYTES => return Ok(None),
        Ok(m) if m.is_file() => format!("is {} MiB", m.len() >> 20),
        Ok(_) => "is not a regular file".to_string(),
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(".invalid");
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(path, &aside)
        .map(|()| {
            Some(format!(
                "the settings file {} {why}: moved to {}, settings start from the defaults",
                path.display(),
                aside.display()
            ))
        })
        .map_err(|e| {
            format!(
                "the settings file {} {why} and cannot be moved aside ({e}): remove it",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_typed_budget_applies_and_a_bad_one_says_why() {
        use rdla_model::memory::budget;
        let mut s = super::Settings {
            max_memory: "64GiB".into(),
            ..Default::default()
        };
        // larger than the default, so tests running beside this one are not constrained
        s.apply_budget(false).unwrap();
        assert_eq!(
            budget().map(|b| (b.bytes, b.explicit)),
            Some((64 << 30, true))
        );
        s.max_memory = "lots".into();
        assert!(s.apply_budget(false).unwrap_err().contains("not a size"));
        assert_eq!(
            budget().map(|b| b.bytes),
            Some(64 << 30),
            "a bad text changes nothing"
        );
        s.max_memory.clear();
        s.apply_budget(false).unwrap();
        assert!(!budget().is_some_and(|b| b.explicit));

        // the GPU budget likewise (nothing in the other tests runs on a GPU)
        use rdla_model::memory::gpu_budget;
        s.max_gpu_memory = "12GiB".into();
        s.apply_budget(false).unwrap();
        assert_eq!(gpu_budget(), Some(12 << 30));
        s.max_gpu_memory = "12 parsecs".into();
        assert!(s.apply_budget(false).unwrap_err().contains("unknown unit"));
        assert_eq!(gpu_budget(), Some(12 << 30), "a bad text changes nothing");
        // a budget given on the command line is not replaced by a remembered one at start
        s.max_gpu_memory = "1GiB".into();
        s.apply_budget(true).unwrap();
        assert_eq!(gpu_budget(), Some(12 << 30));
        s.max_gpu_memory.clear();
        s.apply_budget(false).unwrap();
        assert_eq!(gpu_budget(), None);
    }

    #[test]
    fn a_settings_file_that_is_not_a_small_regular_file_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // none, and a normal one: left alone
        let ok = dir.join("ok.ron");
        assert_eq!(guard_storage_file(&ok), Ok(None));
        std::fs::write(&ok, "{}").unwrap();
        assert_eq!(guard_storage_file(&ok), Ok(None));
        assert!(ok.is_file());
        // too large (sparse: no disk is written)
        let big = dir.join("big.ron");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_STORAGE_BYTES + 1)
            .unwrap();
        let msg = guard_storage_file(&big).unwrap().unwrap();
        assert!(msg.contains("moved to"), "{msg}");
        assert!(!big.exists() && dir.join("big.ron.invalid").is_file());
        #[cfg(unix)]
        {
            let fifo = dir.join("fifo.ron");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success());
            let msg = guard_storage_file(&fifo).unwrap().unwrap();
            assert!(msg.contains("not a regular file"), "{msg}");
            assert!(std::fs::symlink_metadata(&fifo).is_err());
            assert!(std::fs::symlink_metadata(dir.join("fifo.ron.invalid")).is_ok());
            // a link to a device: the link is moved, the device is untouched
            let zero = dir.join("zero.ron");
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
            assert!(guard_storage_file(&zero).unwrap().is_some());
            assert!(std::fs::symlink_metadata(&zero).is_err());
            assert!(Path::new("/dev/zero").exists());
        }
    }
}

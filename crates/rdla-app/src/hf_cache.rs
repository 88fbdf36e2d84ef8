//! Models in the local Hugging Face cache (`$HF_HOME/hub`, `$HF_HUB_CACHE`, or
//! `~/.cache/huggingface/hub`): `models--org--name/snapshots/<hash>/config.json`.

use std::path::{Path, PathBuf};

/// A cached model: repo name and its newest snapshot folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    pub repo: String,
    pub dir: PathBuf,
}

/// The hub cache folder, as `huggingface_hub` resolves it.
pub fn hub_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("huggingface").join("hub"))
}

/// Every model folder with a `config.json` under `hub`, sorted by repo name.
pub fn scan(hub: &Path) -> Vec<CachedModel> {
    let Ok(entries) = std::fs::read_dir(hub) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(repo) = name.strip_prefix("models--") else {
            continue;
        };
        let Ok(snaps) = std::fs::read_dir(e.path().join("snapshots")) else {
            continue;
        };
        let newest = snaps
            .flatten()
            .filter(|s| s.path().join("config.json").is_file())
            .max_by_key(|s| s.metadata().and_then(|m| m.modified()).ok());
        if let Some(s) = newest {
            out.push(CachedModel {
                repo: repo.replacen("--", "/", 1),
                dir: s.path(),
            });
        }
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_snapshots_with_a_config() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let snap = tmp
            .path()
            .join("models--roneneldan--TinyStories-Instruct-1M/snapshots/abc123");
        std::fs::create_dir_all(&snap).expect("mkdir");
        std::fs::write(snap.join("config.json"), "{}").expect("write");
        std::fs::create_dir_all(tmp.path().join("models--x--no-config/snapshots/def"))
            .expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("datasets--a--b/snapshots/1")).expect("mkdir");
        let found = scan(tmp.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].repo, "roneneldan/TinyStories-Instruct-1M");
        assert_eq!(found[0].dir, snap);
    }
}

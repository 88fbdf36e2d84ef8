//! GGUF models other local tools keep: Ollama (`~/.ollama/models` or `$OLLAMA_MODELS`:
//! `manifests/<registry>/<namespace>/<model>/<tag>` JSON naming the model layer's blob
//! `blobs/sha256-<hex>`) and LM Studio (`~/.lmstudio/models`, `~/.cache/lm-studio/models`:
//! `<publisher>/<repo>/<file>.gguf`).

use std::io::Read;
use std::path::{Path, PathBuf};

/// A local GGUF model: a display name and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGguf {
    pub name: String,
    pub path: PathBuf,
}

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// A manifest larger than this is not one (Ollama's are a few hundred bytes).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Ollama's models folder.
pub fn ollama_dir() -> Option<PathBuf> {
    std::env::var_os("OLLAMA_MODELS")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".ollama").join("models")))
}

/// LM Studio's model folders that exist.
pub fn lmstudio_dirs() -> Vec<PathBuf> {
    home()
        .map(|h| {
            vec![
                h.join(".lmstudio").join("models"),
                h.join(".cache").join("lm-studio").join("models"),
            ]
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.is_dir())
        .collect()
}

/// Every Ollama model whose manifest names a model blob that exists: `model:tag`.
pub fn scan_ollama(root: &Path) -> Vec<LocalGguf> {
    let mut out = Vec::new();
    let manifests = root.join("manifests");
    // manifests/<registry>/<namespace>/<model>/<tag>
    let walk = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for registry in walk(&manifests) {
        for namespace in walk(&registry) {
            for model in walk(&namespace) {
                for tag in walk(&model) {
                    let Some(blob) = model_blob(&tag, root) else {
                        continue;
                    };
                    let file = |p: &Path| {
                        p.file_name()
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                    };
                    let ns = file(&namespace);
                    let prefix = if ns == "library" {
                        String::new()
                    } else {
                        format!("{ns}/")
                    };
                    out.push(LocalGguf {
                        name: format!("{prefix}{}:{}", file(&model), file(&tag)),
                        path: blob,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The bytes of `path` when it is a regular file of at most `cap` bytes; `None` for anything
/// else, which is never read: a FIFO (opening one waits for a writer), a device (`/dev/zero`
/// never ends), a larger file.
pub(crate) fn read_regular(path: &Path, cap: u64) -> Option<Vec<u8>> {
    // checked before opening, since opening a FIFO blocks
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    // and again on what was opened, which may no longer be what was checked
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= cap).then_some(bytes)
}

/// The blob file name of a layer digest: `sha256:<64 lowercase hex digits>` is stored as
/// `sha256-<hex>`. Anything else (a path, `..`, another length) names no blob.
fn blob_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| format!("sha256-{hex}"))
}

/// The model blob a manifest names, if it exists.
fn model_blob(manifest: &Path, root: &Path) -> Option<PathBuf> {
    let bytes = read_regular(manifest, MAX_MANIFEST_BYTES)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let digest = v["layers"]
        .as_array()?
        .iter()
        .find(|l| l["mediaType"] == MODEL_LAYER)?["digest"]
        .as_str()?;
    let blob = root.join("blobs").join(blob_name(digest)?);
    blob.is_file().then_some(blob)
}

/// Every `.gguf` file up to three folders below `root` (LM Studio's layout), by relative path.
pub fn scan_gguf_files(root: &Path) -> Vec<LocalGguf> {
    fn walk(dir: &Path, root: &Path, depth: usize, out: &mut Vec<LocalGguf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && depth > 0 {
                walk(&p, root, depth - 1, out);
            } else if p
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            {
                out.push(LocalGguf {
                    name: p
                        .strip_prefix(root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                    path: p,
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, 3, &mut out);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Ollama's and LM Studio's models on this machine.
pub fn scan_all() -> Vec<LocalGguf> {
    let mut out = ollama_dir().map(|d| scan_ollama(&d)).unwrap_or_default();
    for d in lmstudio_dirs() {
        out.extend(scan_gguf_files(&d));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    /// Write an Ollama manifest at `manifests/registry.ollama.ai/<ns>/<model>/<tag>` whose
    /// model layer has `digest`; returns its path.
    fn manifest(root: &Path, name: &str, digest: &str) -> PathBuf {
        let man = root.join("manifests/registry.ollama.ai").join(name);
        std::fs::create_dir_all(man.parent().unwrap()).unwrap();
        let text = format!(
            r#"{{"layers":[{{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{}"}},
                          {{"mediaType":"{MODEL_LAYER}","digest":"{digest}"}}]}}"#,
            "a".repeat(64)
        );
        std::fs::write(&man, text).unwrap();
        man
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// Scan on another thread, failing (instead of hanging) when it takes too long.
    fn scan_within(root: &Path, secs: u64) -> Vec<LocalGguf> {
        let (tx, rx) = std::sync::mpsc::channel();
        let root = root.to_path_buf();
        std::thread::spawn(move || tx.send(scan_ollama(&root)));
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("the scan did not finish")
    }

    #[test]
    fn finds_ollama_manifests_and_lmstudio_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        manifest(root, "library/qwen2.5/0.5b", &digest('b'));
        // a manifest whose blob is missing is skipped
        manifest(root, "me/gone/latest", &digest('c'));
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        let blob = root.join(format!("blobs/sha256-{}", "b".repeat(64)));
        std::fs::write(&blob, b"GGUF").unwrap();
        let found = scan_ollama(root);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "qwen2.5:0.5b");
        assert_eq!(found[0].path, blob);

        let lm = root.join("lm/publisher/repo");
        std::fs::create_dir_all(&lm).unwrap();
        std::fs::write(lm.join("model-Q4_K_M.gguf"), b"GGUF").unwrap();
        std::fs::write(lm.join("README.md"), b"x").unwrap();
        let files = scan_gguf_files(&root.join("lm"));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "publisher/repo/model-Q4_K_M.gguf");
    }

    /// A digest names a blob only as `sha256:` and 64 lowercase hex digits: a relative path out
    /// of `blobs/`, an absolute path, upper case or another length name nothing, even when the
    /// file they would name exists.
    #[test]
    fn digests_that_are_not_sha256_hex_name_no_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        let outside = tmp.path().join("outside.gguf");
        std::fs::write(&outside, b"GGUF").unwrap();
        manifest(&root, "x/up/latest", "../../outside.gguf");
        manifest(&root, "x/abs/latest", outside.to_str().unwrap());
        manifest(&root, "x/colon/latest", "sha256:../../outside.gguf");
        let upper = "B".repeat(64);
        std::fs::write(root.join(format!("blobs/sha256-{upper}")), b"GGUF").unwrap();
        manifest(&root, "x/upper/latest", &format!("sha256:{upper}"));
        let short = "b".repeat(63);
        std::fs::write(root.join(format!("blobs/sha256-{short}")), b"GGUF").unwrap();
        manifest(&root, "x/short/latest", &format!("sha256:{short}"));
        std::fs::write(
            root.join(format!("blobs/sha256-{}", "d".repeat(64))),
            b"GGUF",
        )
        .unwrap();
        manifest(&root, "x/good/latest", &digest('d'));
        let names: Vec<String> = scan_ollama(&root).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["x/good:latest"]);
        assert_eq!(
            blob_name(&digest('d')),
            Some(format!("sha256-{}", "d".repeat(64)))
        );
        assert_eq!(blob_name("sha256-dd"), None);
    }

    /// A manifest larger than the cap is skipped unread beyond it (this one is valid JSON and
    /// would be listed if read whole); one that is a FIFO or a device is never opened, so the
    /// scan neither hangs nor reads forever.
    #[test]
    fn oversized_fifo_and_device_manifests_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::write(
            root.join(format!("blobs/sha256-{}", "e".repeat(64))),
            b"GGUF",
        )
        .unwrap();
        let big = manifest(root, "x/big/latest", &digest('e'));
        let mut text = std::fs::read(&big).unwrap();
        text.extend(std::iter::repeat_n(b' ', MAX_MANIFEST_BYTES as usize));
        std::fs::write(&big, text).unwrap();
        manifest(root, "x/small/latest", &digest('e'));
        #[cfg(unix)]
        {
            let fifo = root.join("manifests/registry.ollama.ai/x/fifo/latest");
            std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success());
            let zero = root.join("manifests/registry.ollama.ai/x/zero/latest");
            std::fs::create_dir_all(zero.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        }
        let names: Vec<String> = scan_within(root, 30).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["x/small:latest"]);
        // the cap itself: a file of exactly the cap is read, one byte more is not
        let f = root.join("cap");
        std::fs::write(&f, vec![b'x'; 10]).unwrap();
        assert_eq!(read_regular(&f, 10).map(|b| b.len()), Some(10));
        assert_eq!(read_regular(&f, 9), None);
    }
}

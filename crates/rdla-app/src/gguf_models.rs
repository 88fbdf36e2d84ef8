//! GGUF models other local tools keep: Ollama (`~/.ollama/models` or `$OLLAMA_MODELS`:
//! `manifests/<registry>/<namespace>/<model>/<tag>` JSON naming the model layer's blob
//! `blobs/sha256-<hex>`) and LM Studio (`~/.lmstudio/models`, `~/.cache/lm-studio/models`:
//! `<publisher>/<repo>/<file>.gguf`).

use std::path::{Path, PathBuf};

/// A local GGUF model: a display name and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGguf {
    pub name: String,
    pub path: PathBuf,
}

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

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

/// The model blob a manifest names, if it exists.
fn model_blob(manifest: &Path, root: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let digest = v["layers"]
        .as_array()?
        .iter()
        .find(|l| l["mediaType"] == MODEL_LAYER)?["digest"]
        .as_str()?;
    // "sha256:<hex>" is stored as "sha256-<hex>"
    let blob = root.join("blobs").join(digest.replace(':', "-"));
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
    use super::*;

    #[test]
    fn finds_ollama_manifests_and_lmstudio_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let man = root.join("manifests/registry.ollama.ai/library/qwen2.5/0.5b");
        std::fs::create_dir_all(man.parent().unwrap()).unwrap();
        std::fs::write(
            &man,
            r#"{"layers":[{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:aa"},
                          {"mediaType":"application/vnd.ollama.image.model","digest":"sha256:bb"}]}"#,
        )
        .unwrap();
        // a manifest whose blob is missing is skipped
        let gone = root.join("manifests/registry.ollama.ai/me/gone/latest");
        std::fs::create_dir_all(gone.parent().unwrap()).unwrap();
        std::fs::write(&gone, r#"{"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:cc"}]}"#).unwrap();
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::write(root.join("blobs/sha256-bb"), b"GGUF").unwrap();
        let found = scan_ollama(root);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "qwen2.5:0.5b");
        assert_eq!(found[0].path, root.join("blobs/sha256-bb"));

        let lm = root.join("lm/publisher/repo");
        std::fs::create_dir_all(&lm).unwrap();
        std::fs::write(lm.join("model-Q4_K_M.gguf"), b"GGUF").unwrap();
        std::fs::write(lm.join("README.md"), b"x").unwrap();
        let files = scan_gguf_files(&root.join("lm"));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "publisher/repo/model-Q4_K_M.gguf");
    }
}

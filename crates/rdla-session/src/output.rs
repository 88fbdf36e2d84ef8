//! Writing exports without ever touching the user's model files: the destination is resolved
//! through any symbolic links first, refused when it lies inside the model (its folder, or its
//! file for a single-file model), and written through a temporary file that is renamed into
//! place.

use std::path::{Path, PathBuf};

use crate::error::{Result, SessionError};

/// Where writing `path` would really land: the link target when `path` is a symbolic link
/// (or a file behind links), else the canonical folder joined with the file name.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Ok(real);
    }
    // a dangling link: follow it by hand
    if let Ok(target) = std::fs::read_link(path) {
        let base = path.parent().unwrap_or(Path::new("."));
        return resolve(&base.join(target));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(parent).map_err(|source| SessionError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let name = path.file_name().ok_or_else(|| SessionError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    Ok(dir.join(name))
}

/// Refuse `path` when it resolves into one of `protected` (a folder and everything under it,
/// or a file).
pub fn check_outside(path: &Path, protected: &[PathBuf]) -> Result<PathBuf> {
    let target = resolve(path)?;
    for p in protected {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if target == p || target.starts_with(&p) {
            return Err(SessionError::OutputInModel {
                path: path.to_path_buf(),
                model: p,
            });
        }
    }
    Ok(target)
}

/// Write `bytes` to `path` (checked against `protected`), atomically.
pub fn write_outside(path: &Path, protected: &[PathBuf], bytes: &[u8]) -> Result<()> {
    let target = check_outside(path, protected)?;
    let io = |source| SessionError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().map_or_else(
        || "rdla-export".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.rdla-{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A regression test: an output path that is a link into the model folder used to
    /// overwrite `model.safetensors` (the old guard compared the parent folder only).
    #[test]
    fn links_into_the_model_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("model.safetensors"), b"weights").unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let link = out.join("report.json");
        std::os::unix::fs::symlink(model.join("model.safetensors"), &link).unwrap();
        let err = write_outside(&link, std::slice::from_ref(&model), b"{}").unwrap_err();
        assert!(matches!(err, SessionError::OutputInModel { .. }), "{err}");
        assert_eq!(
            std::fs::read(model.join("model.safetensors")).unwrap(),
            b"weights"
        );
        // a dangling link into the model folder, and a plain path inside it
        let dangling = out.join("new.png");
        std::os::unix::fs::symlink(model.join("new.png"), &dangling).unwrap();
        assert!(write_outside(&dangling, std::slice::from_ref(&model), b"x").is_err());
        assert!(!model.join("new.png").exists());
        assert!(write_outside(&model.join("x.csv"), std::slice::from_ref(&model), b"x").is_err());
        // elsewhere is fine
        write_outside(&out.join("ok.csv"), std::slice::from_ref(&model), b"a,b").unwrap();
        assert_eq!(std::fs::read(out.join("ok.csv")).unwrap(), b"a,b");
    }
}

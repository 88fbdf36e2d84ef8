//! Writing exports without ever touching the user's model files.
//!
//! - `-` is standard output.
//! - A target that exists and is not a regular file (a device such as `/dev/null`, a FIFO, a
//!   terminal, `/dev/stdout`) is written in place, never replaced: renaming a file over it
//!   would destroy the device node or leave the FIFO's reader with nothing.
//! - Any other target is resolved through its symbolic links first and refused when it lies
//!   inside the model (its folder, or any file the model was read from, by canonical path: a
//!   Hugging Face cache snapshot's files are links into the repository's `blobs/`).
//! - It is written through a temporary file in the target's folder, created exclusively
//!   under an unpredictable name (`O_CREAT | O_EXCL`: a link planted there is never
//!   followed), then renamed into place.

use std::io::Write as _;
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
    let dir = std::fs::canonicalize(parent).map_err(|error| SessionError::Io {
        path: parent.to_path_buf(),
        error,
    })?;
    let name = path.file_name().ok_or_else(|| SessionError::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
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

/// Write `bytes` to `path` (checked against `protected`): `-` is standard output, an existing
/// special file is written in place, anything else is replaced atomically.
pub fn write_outside(path: &Path, protected: &[PathBuf], bytes: &[u8]) -> Result<()> {
    let io = |error| SessionError::Io {
        path: path.to_path_buf(),
        error,
    };
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        return out.write_all(bytes).and_then(|()| out.flush()).map_err(io);
    }
    // `metadata` follows links: what matters is what the path leads to.
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a folder; give a file name",
            )));
        }
        Ok(m) if !m.is_file() => {
            // A device, FIFO, socket or terminal: model weights are regular files, so this
            // cannot be one of them; write into it as `>` would, without creating anything.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io)?;
            return f.write_all(bytes).and_then(|()| f.flush()).map_err(io);
        }
        _ => {}
    }
    let target = check_outside(path, protected)?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().map_or_else(
        || "rdla-export".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".rdla-tmp");
    if let Some(mode) = export_permissions(&target) {
        builder.permissions(mode);
    }
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.persist(&target).map_err(|e| io(e.error))?;
    Ok(())
}

/// An existing file keeps its permissions; a new one gets the usual 0644 (less the umask),
/// not the temporary file's 0600.
fn export_permissions(target: &Path) -> Option<std::fs::Permissions> {
    if let Ok(m) = std::fs::metadata(target) {
        return Some(m.permissions());
    }
    #[cfg(unix)]
    {
        Some(std::os::unix::fs::PermissionsExt::from_mode(0o644))
    }
    #[cfg(not(unix))]
    {
        None
    }
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

    /// A regression test: the temporary file had a predictable name
    /// (`.{name}.rdla-{pid}.tmp`) and was created by following links, so a link planted at
    /// that name redirected the export into any file, the model's weights included.
    #[test]
    fn a_link_planted_at_the_temporary_name_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let weights = model.join("model.safetensors");
        std::fs::write(&weights, b"weights").unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let planted = out.join(format!(".report.json.rdla-{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&weights, &planted).unwrap();
        write_outside(
            &out.join("report.json"),
            std::slice::from_ref(&model),
            b"{}",
        )
        .unwrap();
        assert_eq!(std::fs::read(&weights).unwrap(), b"weights");
        assert_eq!(std::fs::read(out.join("report.json")).unwrap(), b"{}");
        // the planted link is left alone, and no temporary file is left behind
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                planted.file_name().unwrap().to_string_lossy().into_owned(),
                "report.json".into()
            ]
        );
        assert!(
            std::fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    /// A regression test: a FIFO (or a device) given as the output was replaced by a regular
    /// file (the rename), so its reader got nothing and `--json /dev/null` as root destroyed
    /// the device node. It is written in place now.
    #[test]
    fn special_files_are_written_in_place_never_replaced() {
        use std::io::Read as _;
        use std::os::unix::fs::FileTypeExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo failed");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                std::fs::File::open(&fifo)
                    .unwrap()
                    .read_to_string(&mut s)
                    .unwrap();
                s
            })
        };
        write_outside(&fifo, &[], b"a,b\n1,2\n").unwrap();
        assert_eq!(reader.join().unwrap(), "a,b\n1,2\n");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // a folder is an error, not a rename over it
        let err = write_outside(tmp.path(), &[], b"x").unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
        assert!(tmp.path().is_dir());
    }

    /// A new export is readable by others (0644 less the umask), not the temporary file's
    /// 0600; an existing one keeps its mode.
    #[test]
    fn exports_get_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("new.csv");
        write_outside(&new, &[], b"x").unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        // what a plain create gives under this process's umask, as 0644 would
        let plain = tmp.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let umasked = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o644;
        assert_eq!(mode, umasked, "mode {mode:o}");
        let old = tmp.path().join("old.csv");
        std::fs::write(&old, b"").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_outside(&old, &[], b"y").unwrap();
        assert_eq!(
            std::fs::metadata(&old).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
}

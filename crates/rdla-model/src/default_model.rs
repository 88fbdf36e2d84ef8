//! The embedded default model (`assets/default-model/`, trained by `rdla-train`): a standard
//! Hugging Face GPT-2 folder compiled into the binary, written once to the user's cache
//! directory and loaded through the same loader as any other model.

use std::path::PathBuf;

use burn::tensor::Device;

use crate::error::{Result, io_err};
use crate::model::Model;
use crate::process::Processing;
use crate::weights::ProgressFn;

/// `(file name, bytes)` of the embedded checkpoint.
pub const FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../../../assets/default-model/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../assets/default-model/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../assets/default-model/tokenizer.json"),
    ),
];

/// The name the UI and JSON show for it.
pub const NAME: &str = "rdla default model (embedded)";

/// The spelling of `--model` that selects it.
pub const SPEC: &str = "default";

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("rdla")
}

/// Whether `dir` holds every embedded file, byte for byte, as regular files (not links):
/// the folder's name is its content's hash, and a copy that was edited, truncated to the
/// right length or replaced by a link is rewritten rather than trusted (it was trusted by
/// size). Reading 2 MB back costs about a millisecond.
fn complete(dir: &std::path::Path) -> bool {
    use std::io::Read as _;
    FILES.iter().all(|(name, bytes)| {
        let path = dir.join(name);
        let regular = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_file() && m.len() == bytes.len() as u64);
        let mut content = Vec::with_capacity(bytes.len());
        regular
            && std::fs::File::open(&path)
                .and_then(|f| f.take(bytes.len() as u64 + 1).read_to_end(&mut content))
                .is_ok()
            && content == *bytes
    })
}

/// Write the embedded files to the cache (once per content hash) and return the folder.
///
/// The files are written into a private temporary folder and renamed into place in one step,
/// so a reader never sees a half-written folder. When several processes start at once, one
/// rename wins; the others find a complete folder and use it (they never delete it).
pub fn materialize() -> Result<PathBuf> {
    let hash = FILES
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, (name, bytes)| {
            fnv1a(bytes, fnv1a(name.as_bytes(), h))
        });
    let dir = cache_root().join(format!("default-model-{hash:016x}"));
    if complete(&dir) {
        return Ok(dir);
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.with_extension(format!("tmp-{}-{nonce}", std::process::id()));
    let write = || -> Result<()> {
        if let Some(parent) = tmp.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // `create_dir`, not `_all`: it fails on anything already there, a planted link too
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        for (name, bytes) in FILES {
            std::fs::write(tmp.join(name), bytes).map_err(io_err(tmp.join(name)))?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut result = std::fs::rename(&tmp, &dir);
    if result.is_err() && !complete(&dir) {
        // an incomplete or altered folder is in the way (`remove_dir_all` removes a link
        // itself, never what it points to)
        let _ = std::fs::remove_dir_all(&dir);
        result = std::fs::rename(&tmp, &dir);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    match result {
        Ok(()) => Ok(dir),
        // another process won the race
        Err(_) if complete(&dir) => Ok(dir),
        Err(e) => Err(io_err(&dir)(e)),
    }
}

impl Model {
    /// Load the embedded default model.
    pub fn load_default(
        device: &Device,
        processing: Processing,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Self> {
        let dir = materialize()?;
        let mut m = Self::load(&dir, device, processing, progress)?;
        m.name = NAME.to_string();
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A regression test: the cached copy was trusted by file size, so a same-length edit
    /// of its weights (or a link to other files) was loaded as the default model.
    #[test]
    fn an_altered_cache_copy_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("copy");
        std::fs::create_dir(&dir).unwrap();
        for (name, bytes) in FILES {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        assert!(complete(&dir));
        // same length, one byte changed
        let mut weights = FILES[1].1.to_vec();
        let last = weights.len() - 1;
        weights[last] ^= 0x40;
        std::fs::write(dir.join(FILES[1].0), &weights).unwrap();
        assert!(!complete(&dir));
        // a link to the right bytes elsewhere is not a regular file of the folder
        let elsewhere = tmp.path().join("elsewhere.safetensors");
        std::fs::write(&elsewhere, FILES[1].1).unwrap();
        std::fs::remove_file(dir.join(FILES[1].0)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(FILES[1].0)).unwrap();
        assert!(!complete(&dir));
    }
}

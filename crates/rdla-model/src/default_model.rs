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

/// Whether `dir` holds every embedded file at its full size.
fn complete(dir: &std::path::Path) -> bool {
    FILES.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
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
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
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
        // an incomplete folder from an interrupted older version is in the way
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

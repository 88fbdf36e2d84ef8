//! Reading a prompt from a file without trusting the file: at most what the model's context
//! can hold is read (a 100 MB prompt file used to be read and tokenized whole, `/dev/zero`
//! read until memory ran out), and a file's reported size is never used to size anything.

use std::io::Read as _;
use std::path::Path;

use crate::error::{Result, SessionError};

/// The most bytes a prompt for an `n_ctx`-token context is read to: 1 KiB a position (no
/// tokenizer's tokens come near that), at least 1 MiB.
pub fn prompt_byte_limit(n_ctx: usize) -> u64 {
    (n_ctx as u64).saturating_mul(1024).max(1 << 20)
}

/// Read the UTF-8 text of `path`, refusing it once more than `limit` bytes have been read.
/// Works on FIFOs and devices as well as files (it reads; it never asks for the size).
pub fn read_text_file(path: &Path, limit: u64) -> Result<String> {
    let io = |error| SessionError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.is_dir() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a folder, not a text file",
        )));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(SessionError::PromptFileTooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `/dev/zero` (endless) and a file over the limit are refused after reading `limit + 1`
    /// bytes; a file within it is read whole.
    #[test]
    fn endless_and_oversized_files_are_refused_after_the_limit() {
        let err = read_text_file(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(
            matches!(err, SessionError::PromptFileTooLarge { limit: 4096, .. }),
            "{err}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("p.txt");
        std::fs::write(&p, "a".repeat(5000)).unwrap();
        assert!(read_text_file(&p, 4999).is_err());
        assert_eq!(read_text_file(&p, 5000).unwrap().len(), 5000);
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        let err = read_text_file(&p, 100).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let err = read_text_file(tmp.path(), 100).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
    }

    /// An I/O error says its cause once: in the message, not again as a source that a
    /// chain-printing caller (`anyhow`'s `{:#}`) would repeat.
    #[test]
    fn an_io_error_says_its_cause_once() {
        let err = read_text_file(Path::new("/nonexistent/prompt.txt"), 100).unwrap_err();
        let shown = rdla_testutil::error_chain(&err);
        assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
    }
}

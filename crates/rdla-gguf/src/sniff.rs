//! What a file is, by its first bytes: a GGUF file, or — for a message better than "no
//! config.json found" — what else it is (empty, cut short, zeros from an interrupted
//! download, a pre-GGUF llama.cpp file, an image, a web page, …).

use std::fmt;
use std::io::Read as _;
use std::path::Path;

/// The smallest possible GGUF file: magic, version, tensor count and metadata count.
pub const MIN_GGUF_LEN: u64 = 24;

/// How many leading bytes [`identify`] looks at.
const HEAD: usize = 64;

/// What a file is, as far as its length and first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// Starts with the GGUF magic and is long enough to hold a header.
    Gguf,
    /// Zero bytes long.
    Empty,
    /// Shorter than a GGUF header ([`MIN_GGUF_LEN`] bytes); the length.
    TooShort(u64),
    /// Starts with zero bytes: typically a download that was interrupted (the file was
    /// allocated at full size and never filled in).
    Zeros,
    /// A llama.cpp file from before GGUF; the format's name (`GGML`, `GGMF`, `GGJT`, `GGLA`).
    LegacyGgml(&'static str),
    /// A known kind of file that is not a model, e.g. "a PNG image".
    NotAModel(&'static str),
    /// Anything else; its first four bytes.
    Unknown([u8; 4]),
}

/// The first bytes of the pre-GGUF llama.cpp formats: the magic is a little-endian `u32`
/// (`'ggjt'` is stored as `tjgg`); some tools wrote it big-endian.
const LEGACY: [(&[u8; 4], &str); 8] = [
    (b"lmgg", "GGML"),
    (b"fmgg", "GGMF"),
    (b"tjgg", "GGJT"),
    (b"algg", "GGLA"),
    (b"GGML", "GGML"),
    (b"GGMF", "GGMF"),
    (b"GGJT", "GGJT"),
    (b"GGLA", "GGLA"),
];

impl FileKind {
    /// The kind of a file of `len` bytes that starts with `head` (its first bytes, up to 64).
    pub fn of(head: &[u8], len: u64) -> Self {
        if len == 0 {
            return FileKind::Empty;
        }
        if len < MIN_GGUF_LEN {
            return FileKind::TooShort(len);
        }
        let mut magic = [0u8; 4];
        for (m, b) in magic.iter_mut().zip(head) {
            *m = *b;
        }
        if &magic == b"GGUF" {
            return FileKind::Gguf;
        }
        if head.iter().take(16).all(|&b| b == 0) {
            return FileKind::Zeros;
        }
        if let Some((_, name)) = LEGACY.iter().find(|(m, _)| **m == magic) {
            return FileKind::LegacyGgml(name);
        }
        if let Some(what) = not_a_model(head) {
            return FileKind::NotAModel(what);
        }
        FileKind::Unknown(magic)
    }

    /// Whether this says more about the file than "not a GGUF file": a file that is
    /// recognisably broken or of another kind.
    pub fn is_recognised(&self) -> bool {
        !matches!(self, FileKind::Gguf | FileKind::Unknown(_))
    }
}

/// Known kinds of files that are not models, by their first bytes.
fn not_a_model(head: &[u8]) -> Option<&'static str> {
    let starts = |p: &[u8]| head.starts_with(p);
    let text = String::from_utf8_lossy(head)
        .trim_start()
        .to_ascii_lowercase();
    Some(if starts(b"\x89PNG") {
        "a PNG image"
    } else if starts(b"\xff\xd8\xff") {
        "a JPEG image"
    } else if starts(b"GIF8") {
        "a GIF image"
    } else if starts(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        "a WebP image"
    } else if starts(b"%PDF") {
        "a PDF document"
    } else if text.starts_with("<!doctype html") || text.starts_with("<html") {
        "a web page (a download that returned an HTML page instead of the file?)"
    } else if text.starts_with("version https://git-lfs") {
        "a Git LFS pointer, not the file itself (run `git lfs pull`)"
    } else if starts(b"PK\x03\x04") {
        "a ZIP archive (a PyTorch checkpoint?)"
    } else if head.get(8..10) == Some(b"{\"") {
        "a safetensors file"
    } else {
        return None;
    })
}

impl fmt::Display for FileKind {
    /// A predicate for a sentence about the file: "x.gguf {kind}".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Gguf => f.write_str("is a GGUF file"),
            FileKind::Empty => f.write_str("is empty"),
            FileKind::TooShort(n) => write!(
                f,
                "is {n} byte{}, too short to be a GGUF file",
                if *n == 1 { "" } else { "s" }
            ),
            FileKind::Zeros => f.write_str("starts with zeros (an interrupted download?)"),
            FileKind::LegacyGgml(name) => write!(
                f,
                "is an old {name} file (llama.cpp's format before GGUF), which rdla cannot \
                 read; convert it to GGUF (llama.cpp's convert_llama_ggml_to_gguf.py) or \
                 download the GGUF version"
            ),
            FileKind::NotAModel(what) => write!(f, "is {what}, not a model"),
            FileKind::Unknown(m) => write!(
                f,
                "is not a GGUF file (it starts with {:02x} {:02x} {:02x} {:02x}, not \"GGUF\")",
                m[0], m[1], m[2], m[3]
            ),
        }
    }
}

/// What the file at `path` is, from its length and first bytes (at most 64 bytes are read).
/// Only regular files are opened: anything else (a folder, a FIFO, a device) is an error of
/// kind [`std::io::ErrorKind::InvalidInput`], so this never blocks or reads without end.
pub fn identify(path: &Path) -> std::io::Result<FileKind> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(path)?
        .take(HEAD as u64)
        .read_to_end(&mut head)?;
    Ok(FileKind::of(&head, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_first_bytes() {
        let with = |head: &[u8]| {
            let mut v = head.to_vec();
            v.resize(64, b' ');
            FileKind::of(&v, 1000)
        };
        assert_eq!(FileKind::of(b"", 0), FileKind::Empty);
        assert_eq!(FileKind::of(b"GGU", 3), FileKind::TooShort(3));
        assert_eq!(with(b"GGUF\x03\0\0\0"), FileKind::Gguf);
        assert_eq!(FileKind::of(&[0; 64], 1 << 30), FileKind::Zeros);
        assert_eq!(with(b"tjgg"), FileKind::LegacyGgml("GGJT"));
        assert_eq!(with(b"GGML"), FileKind::LegacyGgml("GGML"));
        assert_eq!(with(b"\x89PNG\r\n"), FileKind::NotAModel("a PNG image"));
        assert!(
            matches!(with(b"  <!DOCTYPE html>"), FileKind::NotAModel(w) if w.contains("web page"))
        );
        assert_eq!(with(b"abcd"), FileKind::Unknown(*b"abcd"));
        assert_eq!(
            FileKind::TooShort(3).to_string(),
            "is 3 bytes, too short to be a GGUF file"
        );
    }
}

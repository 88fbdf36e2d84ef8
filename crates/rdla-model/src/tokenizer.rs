//! Tokenization through the `tokenizers` crate: `tokenizer.json`, or GPT-2's
//! `vocab.json` + `merges.txt` (byte-level BPE, as `GPT2Tokenizer` builds it).

use std::path::Path;

use tokenizers::Tokenizer as HfTokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::error::{ModelError, Result};

/// GPT-2's end-of-text token, used as BOS by TransformerLens for GPT-2 and GPT-Neo.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// A tokenizer plus the BOS convention of the model it belongs to.
pub struct Tokenizer {
    inner: HfTokenizer,
    /// BOS id, if the model has one.
    pub bos_id: Option<u32>,
    /// Which files it came from (for the UI).
    pub source: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("bos_id", &self.bos_id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Load from a model directory; `config_bos` is `config.json`'s `bos_token_id`.
    pub fn from_dir(dir: &Path, config_bos: Option<u32>) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let (inner, source) = if json.is_file() {
            let t = HfTokenizer::from_file(&json).map_err(|e| ModelError::Tokenizer {
                path: json.clone(),
                reason: e.to_string(),
            })?;
            (t, "tokenizer.json".to_string())
        } else if vocab.is_file() && merges.is_file() {
            (
                Self::gpt2_bpe(&vocab, &merges)?,
                "vocab.json + merges.txt".to_string(),
            )
        } else {
            return Err(ModelError::NoTokenizer {
                dir: dir.to_path_buf(),
            });
        };
        let bos_id = config_bos.or_else(|| inner.token_to_id(ENDOFTEXT));
        Ok(Self {
            inner,
            bos_id,
            source,
        })
    }

    /// Build from `tokenizer.json` text (a GGUF file's vocabulary, translated); `path` names
    /// where it came from, for messages.
    pub fn from_json(json: &str, config_bos: Option<u32>, path: &Path) -> Result<Self> {
        let inner: HfTokenizer =
            json.parse()
                .map_err(|e: tokenizers::Error| ModelError::Tokenizer {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
        let bos_id = config_bos.or_else(|| inner.token_to_id(ENDOFTEXT));
        Ok(Self {
            inner,
            bos_id,
            source: "GGUF tokenizer".to_string(),
        })
    }

    /// Build GPT-2's byte-level BPE from `vocab.json` + `merges.txt`.
    fn gpt2_bpe(vocab: &Path, merges: &Path) -> Result<HfTokenizer> {
        let err = |reason: String| ModelError::Tokenizer {
            path: vocab.to_path_buf(),
            reason,
        };
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut t = HfTokenizer::new(bpe);
        t.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        t.with_decoder(Some(ByteLevelDecoder::default()));
        if t.token_to_id(ENDOFTEXT).is_some() {
            t.add_special_tokens(&[tokenizers::AddedToken::from(ENDOFTEXT, true)]);
        }
        Ok(t)
    }

    /// Token ids of `text`, without BOS. A tokenizer that panics (the `tokenizers` crate does
    /// when a `tokenizer.json` pre-tokenizer regex exceeds Oniguruma's retry limit) is an error
    /// naming the cause, not a crash.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        quiet_expected_panics();
        EXPECTING_PANIC.with(|e| e.set(true));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.inner.encode(text, false)
        }));
        EXPECTING_PANIC.with(|e| e.set(false));
        let enc = match run {
            Ok(r) => r.map_err(|e| ModelError::Encode(e.to_string()))?,
            Err(payload) => {
                let why = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                return Err(ModelError::Encode(format!(
                    "the tokenizer failed on this text ({why}); its tokenizer.json may have a \
                     pre-tokenizer pattern the regex engine cannot run"
                )));
            }
        };
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt, with BOS prepended when `bos` is set.
    pub fn encode_prompt(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        let mut ids = Vec::new();
        if bos {
            ids.push(self.bos_id.ok_or(ModelError::NoBos)?);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// [`Self::encode_prompt`] for a model whose context is `n_ctx` tokens, without ever
    /// tokenizing much more text than the context can hold: a long text is first tokenized
    /// in growing prefixes (64 bytes a context position, then ×4), and refused as soon as a
    /// prefix alone is clearly over the context (a 100 MB prompt file used to be tokenized
    /// whole, 5.4 GB, before the length check). Time and memory stay proportional to what
    /// the context holds.
    pub fn encode_prompt_within(&self, text: &str, bos: bool, n_ctx: usize) -> Result<Vec<u32>> {
        // merges across the cut can join a few tokens at the prefix's end
        const CUT_MARGIN: usize = 16;
        let mut cut = n_ctx.saturating_add(1).saturating_mul(64).max(1 << 16);
        while cut < text.len() {
            let mut c = cut;
            while !text.is_char_boundary(c) {
                c -= 1;
            }
            let tokens = self.encode(&text[..c])?.len();
            if tokens > n_ctx.saturating_add(CUT_MARGIN) {
                return Err(ModelError::PromptFarTooLong {
                    bytes: text.len(),
                    prefix: c,
                    tokens,
                    n_ctx,
                });
            }
            cut = cut.saturating_mul(4);
        }
        self.encode_prompt(text, bos)
    }

    /// The text of one token as it reads inside a text: byte-level BPE as TransformerLens'
    /// `to_str_tokens` shows it; a SentencePiece piece that starts a word (`▁Mary`) keeps its
    /// space (" Mary"), which decoding it alone strips (SentencePiece decoders drop the
    /// text's leading space), so "Mary" and " Mary" stay two different tokens on screen.
    pub fn token_str(&self, id: u32) -> String {
        let decoded = self.inner.decode(&[id], false).ok();
        let raw = self.inner.id_to_token(id);
        match (decoded, raw) {
            (Some(d), Some(r)) if r.starts_with('\u{2581}') && !d.starts_with(' ') => {
                format!(" {d}")
            }
            (Some(d), _) => d,
            (None, Some(r)) => r,
            (None, None) => format!("<{id}>"),
        }
    }

    /// The id of `text`, which must be exactly one token.
    pub fn single_token(&self, text: &str) -> Result<u32> {
        if let Some(id) = self.inner.token_to_id(text)
            && text == ENDOFTEXT
        {
            return Ok(id);
        }
        let ids = self.encode(text)?;
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        let pieces = if ids.is_empty() {
            "no tokens".to_string()
        } else {
            ids.iter()
                .map(|&id| format!("{:?} ({id})", self.token_str(id)))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        Err(ModelError::NotOneToken {
            text: text.to_string(),
            pieces,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

thread_local! {
    /// Set while this thread runs code whose panic is caught and turned into an error.
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Install (once) a panic hook that stays silent for panics this thread expects and catches
/// (the tokenizer's), so the user sees rdla's error rather than a panic message first; every
/// other panic goes to the hook that was there before.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A SentencePiece vocabulary (Unigram, Metaspace), as Llama 2 and Gemma spell theirs.
    fn sentencepiece() -> Tokenizer {
        let json = serde_json::json!({
            "version": "1.0", "added_tokens": [], "normalizer": null, "post_processor": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                              "prepend_scheme": "first", "split": true},
            "decoder": {"type": "Metaspace", "replacement": "\u{2581}",
                        "prepend_scheme": "first", "split": true},
            "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false, "vocab": [
                ["<unk>", 0.0], ["\u{2581}Mary", -1.0], ["Mary", -1.0], ["\u{2581}John", -1.0],
                ["\u{2581}", -2.0], ["M", -5.0], ["a", -5.0], ["r", -5.0], ["y", -5.0]
            ]}
        });
        Tokenizer::from_json(&json.to_string(), None, Path::new("test")).unwrap()
    }

    /// A regression test: `▁Mary` was shown as "Mary", the same as the piece `Mary`, in the
    /// token strip, the top-10 table, PNG titles and the JSON's `token_strs`.
    #[test]
    fn sentencepiece_word_starts_keep_their_space() {
        let t = sentencepiece();
        let id = |piece: &str| t.inner.token_to_id(piece).unwrap();
        assert_eq!(t.token_str(id("\u{2581}Mary")), " Mary");
        assert_eq!(t.token_str(id("\u{2581}John")), " John");
        assert_eq!(t.token_str(id("Mary")), "Mary");
        assert_ne!(t.token_str(id("\u{2581}Mary")), t.token_str(id("Mary")));
    }
}

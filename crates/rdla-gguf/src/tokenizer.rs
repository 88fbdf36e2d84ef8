//! Rebuilding a Hugging Face `tokenizer.json` from `tokenizer.ggml.*`.
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE. Tokens are stored in their byte-level
//!   form (`Ġthe`), merges as `"a b"` strings, so vocabulary and merges carry over as they
//!   are; the pre-tokenizer comes from `tokenizer.ggml.pre`, the name llama.cpp gives the
//!   model's split regex (see [`pre_tokenizer`]).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE (Llama 1/2, Mistral, TinyLlama),
//!   as transformers' `LlamaConverter` writes it: merges recovered from the piece scores
//!   (`SentencePieceExtractor`), byte fallback, `▁` for spaces with a prepended `▁` when
//!   `tokenizer.ggml.add_space_prefix` (default true).
//!
//! Tokens of type CONTROL (3) and UNKNOWN (2) become special added tokens, USER_DEFINED (4)
//! non-special added tokens. BOS/EOS are added by a `TemplateProcessing` post-processor when
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` say so (llama.cpp's defaults when absent:
//! BOS for SentencePiece and for the `llama3` pre-tokenizer family, no EOS).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::GgufFile;
use crate::error::{GgufError, Result};
use crate::meta::MetaValue;
use crate::quote::quote;

const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The split regex of the Llama 3 tokenizer (its `tokenizer.json`).
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits.
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's (also Llama 4).
const GPT4O_RE: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer families of llama.cpp's `llama-vocab.cpp` that have an exact
/// `tokenizers` equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pre {
    /// GPT-2's regex, i.e. `ByteLevel { use_regex: true }`.
    Gpt2,
    /// Digits split one by one, then GPT-2's regex (SmolLM, StarCoder).
    DigitsGpt2,
    Llama3,
    Qwen2,
    Gpt4o,
}

fn pre_family(pre: &str) -> Option<Pre> {
    Some(match pre {
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4" => Pre::Gpt2,
        "smollm" | "starcoder" | "refact" | "codeshell" => Pre::DigitsGpt2,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => Pre::Llama3,
        "qwen2" | "deepseek-r1-qwen" => Pre::Qwen2,
        "gpt-4o" | "llama4" => Pre::Gpt4o,
        _ => return None,
    })
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(re: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
}

/// `(normalizer, pre_tokenizer, ignore_merges)` for a pre-tokenizer family.
fn pre_tokenizer(p: Pre) -> (Value, Value, bool) {
    let seq = |v: Vec<Value>| json!({"type": "Sequence", "pretokenizers": v});
    match p {
        Pre::Gpt2 => (Value::Null, byte_level(true), false),
        Pre::DigitsGpt2 => (
            Value::Null,
            seq(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ]),
            false,
        ),
        Pre::Llama3 => (
            Value::Null,
            seq(vec![split(LLAMA3_RE), byte_level(false)]),
            true,
        ),
        Pre::Qwen2 => (
            json!({"type": "NFC"}),
            seq(vec![split(QWEN2_RE), byte_level(false)]),
            false,
        ),
        Pre::Gpt4o => (
            Value::Null,
            seq(vec![split(GPT4O_RE), byte_level(false)]),
            false,
        ),
    }
}

struct Vocab<'a> {
    tokens: &'a [String],
    types: Option<Vec<i64>>,
    scores: Option<Vec<f32>>,
}

/// The special token ids and flags both tokenizer kinds use.
struct Specials {
    bos: Option<usize>,
    eos: Option<usize>,
    unk: Option<usize>,
    add_eos: bool,
}

/// The parts in which the two tokenizer kinds differ; [`assemble`] makes the rest.
struct Pipeline {
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    unk: Option<usize>,
    /// SentencePiece: unknown pieces fused and spelled by their bytes.
    byte_fallback: bool,
    ignore_merges: bool,
    merges: Vec<Value>,
}

impl GgufFile {
    fn opt_token_id(&self, key: &str, n_vocab: usize) -> Result<Option<usize>> {
        let Some(id) = self.get_as(key, "unsigned integer", MetaValue::as_u64)? else {
            return Ok(None);
        };
        match usize::try_from(id) {
            Ok(id) if id < n_vocab => Ok(Some(id)),
            _ => Err(GgufError::BadValue {
                key: key.to_string(),
                reason: format!("token id {id} is outside the vocabulary of {n_vocab}"),
            }),
        }
    }

    /// A required array of strings.
    fn string_array(&self, key: &str) -> Result<&[String]> {
        self.get(key)
            .and_then(|v| v.as_array())
            .and_then(|a| a.as_strings())
            .ok_or_else(|| GgufError::MissingKey(format!("{key} (array of strings)")))
    }

    /// A `tokenizer.json` (the `tokenizers` crate's format) equivalent to the file's
    /// `tokenizer.ggml.*` tokenizer: same vocabulary, merges, pre-tokenization and special
    /// tokens, so it gives the same token ids as the model's Hugging Face tokenizer.
    ///
    /// A vocabulary larger than the embedding (`token_embd.weight`'s rows) is refused first,
    /// before anything is built from it.
    pub fn tokenizer_json(&self) -> Result<String> {
        self.vocab_fits_embedding()?;
        let model = self.get_str("tokenizer.ggml.model")?;
        let vocab = self.vocab()?;
        let n = vocab.tokens.len();
        let specials = Specials {
            bos: self.opt_token_id("tokenizer.ggml.bos_token_id", n)?,
            eos: self.opt_token_id("tokenizer.ggml.eos_token_id", n)?,
            unk: self.opt_token_id("tokenizer.ggml.unknown_token_id", n)?,
            add_eos: self
                .opt_bool("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
        };
        let pipeline = match model {
            "gpt2" => self.byte_level_bpe(&vocab, &specials)?,
            "llama" => self.sentencepiece_bpe(&vocab, &specials)?,
            other => {
                return Err(GgufError::Tokenizer(format!(
                    "tokenizer model {} (tokenizer.ggml.model) is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)",
                    quote(other)
                )));
            }
        };
        let value = assemble(&vocab, pipeline);
        serde_json::to_string(&value).map_err(|e| GgufError::Tokenizer(e.to_string()))
    }

    /// The token count against the rows of `token_embd.weight` (when the file has one): a
    /// token beyond the embedding has no vector, and every part of the tokenizer grows with
    /// the count.
    fn vocab_fits_embedding(&self) -> Result<()> {
        let tokens = self
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .map_or(0, |a| a.len() as u64);
        let rows = self
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied());
        match rows {
            Some(rows) if tokens > rows => Err(GgufError::VocabTooLarge { tokens, rows }),
            _ => Ok(()),
        }
    }

    /// `tokenizer.ggml.tokens`, with `token_type` and `scores` when present (each checked to
    /// have one entry per token, of the right type; every score finite).
    fn vocab(&self) -> Result<Vocab<'_>> {
        let tokens = self.string_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types = self.get_as(
            "tokenizer.ggml.token_type",
            "array of integers",
            |v: &MetaValue| v.as_array().and_then(|a| a.to_i64_vec()),
        )?;
        let scores = self.get_as(
            "tokenizer.ggml.scores",
            "array of numbers",
            |v: &MetaValue| v.as_array().and_then(|a| a.to_f32_vec()),
        )?;
        if let Some((index, &value)) = scores
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, s)| !s.is_finite())
        {
            return Err(GgufError::BadNumber {
                key: "tokenizer.ggml.scores".to_string(),
                index: Some(index),
                value: f64::from(value),
                must: "a finite number",
            });
        }
        for (key, len) in [
            ("tokenizer.ggml.token_type", types.as_ref().map(Vec::len)),
            ("tokenizer.ggml.scores", scores.as_ref().map(Vec::len)),
        ] {
            if let Some(len) = len.filter(|&l| l != n) {
                return Err(GgufError::BadValue {
                    key: key.to_string(),
                    reason: format!("{len} entries for {n} tokens"),
                });
            }
        }
        Ok(Vocab {
            tokens,
            types,
            scores,
        })
    }

    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE, pre-tokenized as
    /// `tokenizer.ggml.pre` says.
    fn byte_level_bpe(&self, vocab: &Vocab<'_>, sp: &Specials) -> Result<Pipeline> {
        let pre_name = match self.get("tokenizer.ggml.pre") {
            Some(v) => v.as_str().unwrap_or("").to_string(),
            // Files from before llama.cpp recorded pre-tokenizers: GPT-2 style
            // architectures used GPT-2's.
            None if matches!(self.architecture()?, "gpt2" | "gptneox") => "gpt-2".into(),
            None => "default".into(),
        };
        let pre = pre_family(&pre_name).ok_or_else(|| {
            GgufError::Tokenizer(format!(
                "pre-tokenizer {} (tokenizer.ggml.pre) is not supported; \
                 supported: gpt-2, llama-bpe (Llama 3), qwen2, smollm, starcoder, gpt-4o and their aliases",
                quote(&pre_name)
            ))
        })?;
        let add_bos = self
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(pre == Pre::Llama3);
        let merges = self.bpe_merges(vocab.tokens)?;
        let (normalizer, pre_tokenizer, ignore_merges) = pre_tokenizer(pre);
        Ok(Pipeline {
            normalizer,
            pre_tokenizer,
            post_processor: post_processor(vocab, sp, add_bos, true),
            decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
            unk: sp.unk,
            byte_fallback: false,
            ignore_merges,
            merges,
        })
    }

    /// `tokenizer.ggml.model = "llama"`: SentencePiece BPE as transformers' `LlamaConverter`
    /// writes it.
    fn sentencepiece_bpe(&self, vocab: &Vocab<'_>, sp: &Specials) -> Result<Pipeline> {
        let add_bos = self
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(true);
        let add_space = self
            .opt_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        let unk = sp.unk.or_else(|| {
            vocab
                .types
                .as_ref()
                .and_then(|t| t.iter().position(|&x| x == TOKEN_TYPE_UNKNOWN))
        });
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let normalizer = if add_space {
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                replace,
            ]})
        } else {
            replace
        };
        Ok(Pipeline {
            normalizer,
            pre_tokenizer: Value::Null,
            post_processor: post_processor(vocab, sp, add_bos, false),
            decoder: json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]}),
            unk,
            byte_fallback: true,
            ignore_merges: false,
            merges: spm_merges(vocab),
        })
    }

    /// `tokenizer.ggml.merges` as `[first, second]` pairs (split at the first space after
    /// the first character, as llama.cpp does), each checked here — both tokens and their
    /// concatenation in the vocabulary — so that a bad merge is reported by its index in
    /// `tokenizer.ggml.merges` ([`GgufError::BadMerge`]), not by where it lands in the JSON.
    fn bpe_merges(&self, tokens: &[String]) -> Result<Vec<Value>> {
        let merges = self.string_array("tokenizer.ggml.merges")?;
        let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let bad = |index: usize, merge: &str, reason: String| GgufError::BadMerge {
            index,
            merge: merge.to_string(),
            reason,
        };
        merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let first_len = m.chars().next().map_or(0, char::len_utf8);
                let Some(p) = m[first_len..].find(' ') else {
                    return Err(bad(i, m, "no space between its two tokens".to_string()));
                };
                let (a, b) = (&m[..first_len + p], &m[first_len + p + 1..]);
                let merged = format!("{a}{b}");
                for t in [a, b, merged.as_str()] {
                    if !known.contains(t) {
                        let reason = format!(
                            "{} is not in the vocabulary (tokenizer.ggml.tokens)",
                            quote(t)
                        );
                        return Err(bad(i, m, reason));
                    }
                }
                Ok(json!([a, b]))
            })
            .collect()
    }
}

/// The `tokenizer.json` document: a BPE model over the vocabulary, with `p`'s pipeline.
fn assemble(vocab: &Vocab<'_>, p: Pipeline) -> Value {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(vocab),
        "normalizer": p.normalizer,
        "pre_tokenizer": p.pre_tokenizer,
        "post_processor": p.post_processor,
        "decoder": p.decoder,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": p.unk.map(|u| vocab.tokens[u].clone()),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": p.byte_fallback,
            "byte_fallback": p.byte_fallback,
            "ignore_merges": p.ignore_merges,
            "vocab": vocab_map(vocab.tokens),
            "merges": p.merges,
        },
    })
}

/// `{token: id}`; a token listed twice keeps its last id, as in llama.cpp.
fn vocab_map(tokens: &[String]) -> Value {
    let mut m = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        m.insert(t.clone(), json!(i));
    }
    Value::Object(m)
}

fn added_tokens(v: &Vocab<'_>) -> Vec<Value> {
    let Some(types) = &v.types else {
        return Vec::new();
    };
    types
        .iter()
        .enumerate()
        .filter_map(|(id, &ty)| {
            let special = match ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => true,
                TOKEN_TYPE_USER_DEFINED => false,
                _ => return None,
            };
            Some(json!({
                "id": id,
                "content": v.tokens[id],
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special,
            }))
        })
        .collect()
}

/// The post-processor: `TemplateProcessing` adding BOS when `add_bos` and EOS when
/// `sp.add_eos` (where the ids exist), after `ByteLevel` offsets for a byte-level tokenizer.
fn post_processor(v: &Vocab<'_>, sp: &Specials, add_bos: bool, byte_level: bool) -> Value {
    let bos = sp.bos.filter(|_| add_bos);
    let eos = sp.eos.filter(|_| sp.add_eos);
    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    if bos.is_none() && eos.is_none() {
        return if byte_level {
            byte_level_post
        } else {
            Value::Null
        };
    }
    let special =
        |id: usize, type_id: u32| json!({"SpecialToken": {"id": v.tokens[id], "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    // `[BOS] $name [EOS]`, each piece of type `type_id`.
    let sentence = |name: &str, type_id: u32| -> Vec<Value> {
        bos.map(|b| special(b, type_id))
            .into_iter()
            .chain([seq(name, type_id)])
            .chain(eos.map(|e| special(e, type_id)))
            .collect()
    };
    let single = sentence("A", 0);
    let pair = [sentence("A", 0), sentence("B", 1)].concat();
    let mut specials = Map::new();
    for id in [bos, eos].into_iter().flatten() {
        specials.insert(
            v.tokens[id].clone(),
            json!({"id": v.tokens[id], "ids": [id], "tokens": [v.tokens[id]]}),
        );
    }
    let template = json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    });
    if byte_level {
        json!({"type": "Sequence", "processors": [byte_level_post, template]})
    } else {
        template
    }
}

/// Merges for a SentencePiece BPE vocabulary, as transformers' `SentencePieceExtractor`
/// derives them: every split of a piece into two pieces of the vocabulary is a merge, ranked
/// by the merged piece's score (highest first; ties by the order found, the pieces' ids).
fn spm_merges(v: &Vocab<'_>) -> Vec<Value> {
    let ids: HashMap<&str, usize> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // A split can only be a merge when both sides have the length of some piece: checking
    // that first keeps a long piece (a 1 MB token) from costing a hash of each of its
    // prefixes and suffixes, quadratic in its length.
    let lengths: HashSet<usize> = v.tokens.iter().map(String::len).collect();
    let score = |i: usize| v.scores.as_ref().map_or(-(i as f32), |s| s[i]);
    let mut merges: Vec<(usize, usize, f32, usize)> = Vec::new(); // (left, right, score, order)
    for (i, piece) in v.tokens.iter().enumerate() {
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter(|&(at, _)| lengths.contains(&at) && lengths.contains(&(piece.len() - at)))
            .filter_map(|(at, _)| {
                let l = *ids.get(&piece[..at])?;
                let r = *ids.get(&piece[at..])?;
                Some((l, r))
            })
            .collect();
        local.sort_unstable();
        for (l, r) in local {
            let order = merges.len();
            merges.push((l, r, score(i), order));
        }
    }
    // Python's sorted(..., reverse=True) is stable: equal scores keep their order.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.3.cmp(&b.3)));
    merges
        .into_iter()
        .map(|(l, r, _, _)| json!([v.tokens[l], v.tokens[r]]))
        .collect()
}

//! Findings of the second adversarial pass (issue 22) on GGUF files: bad floats, shared
//! bytes, oversized vocabularies, bad merges, errors said twice and untrusted names in
//! messages. Each bad file is a fixture with its metadata edited ([`common::edited`]) or a
//! small hand-made file.
#![allow(clippy::unwrap_used)]

mod common;

use std::error::Error as _;

use common::{Gguf, f32_tensor, kv_str};
use rdla_gguf::{GgufError, GgufFile, MetaArray, MetaValue};

/// The whole chain of `e` as anyhow's `{:#}` prints it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let chain: Vec<String> = std::iter::successors(Some(e), |e| (*e).source())
        .map(ToString::to_string)
        .collect();
    chain.join(": ")
}

fn open(name: &str) -> GgufFile {
    GgufFile::open(&common::fixture(&format!("{name}.gguf"))).unwrap()
}

fn set(key: &str, v: MetaValue) -> impl FnOnce(&mut std::collections::BTreeMap<String, MetaValue>) {
    let key = key.to_string();
    move |m| {
        m.insert(key, v);
    }
}

#[test]
fn a_rewritten_fixture_is_the_same_model() {
    // the helper the tests below edit fixtures with loses nothing
    for name in ["llama_gqa", "gemma2", "gpt2_tied", "neox_parallel"] {
        let f = open(name);
        let g = common::edited(name, |_| {});
        assert_eq!(g.hf_config().unwrap(), f.hf_config().unwrap(), "{name}");
        assert_eq!(g.tokenizer_json().unwrap(), f.tokenizer_json().unwrap());
        assert_eq!(g.hf_tensors().unwrap(), f.hf_tensors().unwrap());
    }
}

/// #22.8: a float that is NaN, infinite, or not positive where it must be, is an error naming
/// its key; never a default in its place.
#[test]
fn non_finite_or_non_positive_floats_are_errors_naming_the_key() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let cases: &[(&str, &str, &[f32])] = &[
        (
            "llama_gqa",
            "llama.attention.layer_norm_rms_epsilon",
            &[nan, inf, -inf, 0.0, -1e-5],
        ),
        ("llama_gqa", "llama.rope.freq_base", &[nan, inf, 0.0, -1e4]),
        ("qwen2", "qwen2.rope.freq_base", &[nan]),
        ("gemma2", "gemma2.attn_logit_softcapping", &[nan, inf, 0.0]),
        ("gemma2", "gemma2.final_logit_softcapping", &[nan, -30.0]),
        ("gemma2", "gemma2.attention.scale", &[nan, inf, -0.2]),
        ("gemma3", "gemma3.attention.layer_norm_rms_epsilon", &[nan]),
        ("gemma3", "gemma3.rope.scaling.factor", &[nan, 0.0]),
        (
            "gpt2_tied",
            "gpt2.attention.layer_norm_epsilon",
            &[nan, inf],
        ),
        (
            "neox_parallel",
            "gptneox.attention.layer_norm_epsilon",
            &[nan],
        ),
        ("neox_parallel", "gptneox.rope.freq_base", &[inf]),
    ];
    for &(name, key, values) in cases {
        for &v in values {
            for value in [MetaValue::F32(v), MetaValue::F64(f64::from(v))] {
                let f = common::edited(name, set(key, value.clone()));
                let e = f
                    .hf_config()
                    .expect_err(&format!("{name}: {key} = {value:?}"));
                assert!(
                    matches!(&e, GgufError::BadNumber { key: k, index: None, .. } if k == key),
                    "{name}: {key} = {v}: {e}"
                );
                let msg = e.to_string();
                assert!(msg.contains(key), "{msg}");
            }
        }
    }
    // the message, once
    let f = common::edited(
        "llama_gqa",
        set(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(nan),
        ),
    );
    assert_eq!(
        f.hf_config().unwrap_err().to_string(),
        "metadata key `llama.attention.layer_norm_rms_epsilon` is NaN, but it must be a finite \
         number greater than 0"
    );
}

#[test]
fn bad_rope_scaling_numbers_are_errors() {
    // YaRN parameters, and a linear factor in the older key
    let yarn = |key: &'static str, v: f32| {
        move |m: &mut std::collections::BTreeMap<String, MetaValue>| {
            m.insert(
                "qwen2.rope.scaling.type".into(),
                MetaValue::String("yarn".into()),
            );
            m.insert("qwen2.rope.scaling.factor".into(), MetaValue::F32(4.0));
            m.insert(key.into(), MetaValue::F32(v));
        }
    };
    for (key, v) in [
        ("qwen2.rope.scaling.factor", f32::NAN),
        ("qwen2.rope.scaling.yarn_beta_fast", f32::INFINITY),
        ("qwen2.rope.scaling.yarn_beta_slow", f32::NAN),
        ("qwen2.rope.scaling.attn_factor", 0.0),
        ("qwen2.rope.scaling.yarn_ext_factor", f32::NEG_INFINITY),
    ] {
        let e = common::edited("qwen2", yarn(key, v))
            .hf_config()
            .unwrap_err();
        assert!(
            matches!(&e, GgufError::BadNumber { key: k, .. } if k == key),
            "{key}: {e}"
        );
    }
    // a valid YaRN block still reads
    let ok = common::edited("qwen2", yarn("qwen2.rope.scaling.yarn_beta_fast", 32.0));
    let cfg = ok.hf_config().unwrap();
    assert_eq!(cfg["rope_scaling"]["beta_fast"], 32.0);
    assert_eq!(cfg["rope_scaling"]["factor"], 4.0);
    let e = common::edited(
        "qwen2",
        set("qwen2.rope.scale_linear", MetaValue::F32(f32::NAN)),
    )
    .hf_config()
    .unwrap_err();
    assert!(matches!(&e, GgufError::BadNumber { key, .. } if key == "qwen2.rope.scale_linear"));
}

#[test]
fn a_non_finite_rope_frequency_factor_is_an_error() {
    // llama_gqa's `rope_freqs.weight` (F32) with one factor made NaN, then 0
    let path = common::fixture("llama_gqa.gguf");
    let f = GgufFile::open(&path).unwrap();
    let t = f.tensor("rope_freqs.weight").unwrap().clone();
    assert_eq!(t.ggml_type.name(), "F32");
    for bad in [f32::NAN, 0.0, f32::INFINITY] {
        let mut bytes = std::fs::read(&path).unwrap();
        let at = t.data.start as usize + 4;
        bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        let g = GgufFile::from_bytes(bytes).unwrap();
        let e = g.hf_config().unwrap_err();
        assert!(
            matches!(&e, GgufError::BadTensorValue { tensor, index: 1, .. } if tensor == "rope_freqs.weight"),
            "{bad}: {e}"
        );
        assert!(g.rope_freq_factors().is_err());
    }
}

#[test]
fn a_non_finite_token_score_is_an_error_naming_its_entry() {
    let f = open("spm");
    let scores = f
        .get("tokenizer.ggml.scores")
        .and_then(MetaValue::as_array)
        .and_then(MetaArray::to_f32_vec)
        .unwrap();
    for bad in [f32::NAN, f32::NEG_INFINITY] {
        let mut s = scores.clone();
        s[7] = bad;
        let g = common::edited(
            "spm",
            set("tokenizer.ggml.scores", MetaValue::Array(MetaArray::F32(s))),
        );
        let e = g.tokenizer_json().unwrap_err();
        assert!(
            matches!(&e, GgufError::BadNumber { key, index: Some(7), .. } if key == "tokenizer.ggml.scores"),
            "{e}"
        );
        assert!(e.to_string().contains("(entry 7)"), "{e}");
    }
    // scores of the wrong type are not silently ignored either
    let g = common::edited(
        "spm",
        set("tokenizer.ggml.scores", MetaValue::String("x".into())),
    );
    assert!(matches!(
        g.tokenizer_json(),
        Err(GgufError::WrongType { key, .. }) if key == "tokenizer.ggml.scores"
    ));
}

/// A small file of three tensors (the last of no bytes), with `general.alignment` 16, and
/// where each tensor's offset field lies.
fn three_tensors() -> (Vec<u8>, common::Layout) {
    let mut g = Gguf {
        alignment: 16,
        ..Gguf::default()
    };
    g.kvs.push(common::kv_u32("general.alignment", 16));
    g.tensors = vec![
        f32_tensor("a.weight", &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]),
        f32_tensor("b.weight", &[3], &[9., 10., 11.]),
        f32_tensor("c.weight", &[0], &[]),
    ];
    g.build_with_layout()
}

/// #22.12: two tensors on the same bytes.
#[test]
fn tensors_sharing_bytes_are_refused_at_open() {
    let (bytes, lay) = three_tensors();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.dequantize(&f.tensors()[1]).unwrap(), vec![9., 10., 11.]);
    // b on a's first bytes (the same offset), then on a's second half
    for offset in [0u64, 16] {
        let mut b = bytes.clone();
        let at = lay.tensor_offset_fields[1];
        b[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        let e = GgufFile::from_bytes(b).expect_err("shared bytes accepted");
        assert!(
            matches!(&e, GgufError::OverlappingTensors { first, second, .. } if first == "a.weight" && second == "b.weight"),
            "{offset}: {e}"
        );
        assert!(e.to_string().contains("share the bytes"), "{e}");
    }
    // an empty tensor at a's offset shares nothing
    let mut b = bytes;
    let at = lay.tensor_offset_fields[2];
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(
        GgufFile::from_bytes(b).is_ok(),
        "an empty tensor shares no bytes"
    );
}

/// #22.12 / #22.17: more tokens than embedding rows is refused before the tokenizer is built.
#[test]
fn a_vocabulary_larger_than_the_embedding_is_refused() {
    let f = open("gpt2_tied");
    let rows = f.tensor("token_embd.weight").unwrap().dims[1];
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .and_then(MetaArray::as_strings)
        .unwrap()
        .to_vec();
    assert_eq!(tokens.len() as u64, rows);
    let types = f
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .and_then(MetaArray::to_i64_vec)
        .unwrap();
    for extra in [1usize, 200_000] {
        let mut t = tokens.clone();
        t.extend((0..extra).map(|i| format!("<extra_{i}>")));
        let mut ty: Vec<i32> = types.iter().map(|&x| x as i32).collect();
        ty.resize(t.len(), 1);
        let g = common::edited("gpt2_tied", |m| {
            m.insert(
                "tokenizer.ggml.tokens".into(),
                MetaValue::Array(MetaArray::String(t)),
            );
            m.insert(
                "tokenizer.ggml.token_type".into(),
                MetaValue::Array(MetaArray::I32(ty)),
            );
        });
        let e = g.tokenizer_json().unwrap_err();
        assert!(
            matches!(e, GgufError::VocabTooLarge { tokens, rows: r } if tokens == rows + extra as u64 && r == rows),
            "{e}"
        );
    }
}

/// #22.20: a bad merge is reported by its index in `tokenizer.ggml.merges`.
#[test]
fn a_bad_merge_names_its_index_in_tokenizer_ggml_merges() {
    let f = open("gpt2_tied");
    let merges = f
        .get("tokenizer.ggml.merges")
        .and_then(MetaValue::as_array)
        .and_then(MetaArray::as_strings)
        .unwrap()
        .to_vec();
    for (bad, why) in [
        ("Ġzq xv", "`Ġzq` is not in the vocabulary"),
        ("nospace", "no space between its two tokens"),
    ] {
        let mut m2 = merges.clone();
        m2[5] = bad.to_string();
        let g = common::edited(
            "gpt2_tied",
            set(
                "tokenizer.ggml.merges",
                MetaValue::Array(MetaArray::String(m2)),
            ),
        );
        let e = g.tokenizer_json().unwrap_err();
        assert!(
            matches!(&e, GgufError::BadMerge { index: 5, merge, .. } if merge == bad),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("metadata key `tokenizer.ggml.merges`, entry 5")
                && msg.contains(why)
                && !msg.contains("column"),
            "{msg}"
        );
    }
    // both tokens known but their concatenation is not a token
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .and_then(MetaArray::as_strings)
        .unwrap();
    let (a, b) = (&tokens[1], &tokens[2]);
    assert!(!tokens.contains(&format!("{a}{b}")));
    let mut m2 = merges.clone();
    m2[0] = format!("{a} {b}");
    let g = common::edited(
        "gpt2_tied",
        set(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::String(m2)),
        ),
    );
    assert!(matches!(
        g.tokenizer_json(),
        Err(GgufError::BadMerge { index: 0, .. })
    ));
}

/// #22.20: an I/O error's text appears once in the whole chain.
#[test]
fn an_io_error_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = GgufFile::open(&dir.path().join("missing.gguf")).unwrap_err();
    let os = std::fs::File::open(dir.path().join("missing.gguf"))
        .unwrap_err()
        .to_string();
    let full = chain(&e);
    assert_eq!(full.matches(&os).count(), 1, "{full}");
    assert!(full.contains("missing.gguf"), "{full}");
    assert!(e.source().is_none());
}

/// #22.19: names from the file are quoted, escaped and cut short in messages.
#[test]
fn untrusted_names_are_escaped_and_cut_in_messages() {
    // an architecture string that would clear the screen and print a fake line
    let evil = "\u{1b}[2J\u{1b}[HFAKE: model verified OK\n";
    let f = common::edited(
        "qwen2",
        set("general.architecture", MetaValue::String(evil.into())),
    );
    for e in [f.hf_config().unwrap_err(), f.hf_tensors().unwrap_err()] {
        let msg = e.to_string();
        assert!(matches!(&e, GgufError::UnsupportedArchitecture(a) if a == evil));
        assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg:?}");
        assert!(
            msg.contains("`\\u{1b}[2J\\u{1b}[HFAKE: model verified OK\\n`"),
            "{msg}"
        );
    }
    // a 1 MB tensor name: in the error at open (unknown type), and a stray tensor
    let long = "x".repeat(1 << 20);
    let mut g = Gguf::default();
    g.tensors.push(common::Tensor {
        name: long.clone(),
        dims: vec![4],
        ty: 77,
        data: vec![0; 16],
    });
    let e = GgufFile::from_bytes(g.build()).unwrap_err();
    assert!(matches!(&e, GgufError::UnknownTensorType { tensor, .. } if *tensor == long));
    let msg = e.to_string();
    assert!(msg.len() < 400, "{} bytes", msg.len());
    assert!(
        msg.contains(&format!("{}…` (1048576 bytes)", "x".repeat(200))),
        "{msg}"
    );
    // a 1 MB name in a model's file: a tensor rdla does not know
    let stray = common::rewrite_with(
        &open("qwen2"),
        |_| {},
        vec![f32_tensor(&format!("blk.0.{long}"), &[1], &[0.0])],
    );
    let e = GgufFile::from_bytes(stray)
        .unwrap()
        .hf_tensors()
        .unwrap_err();
    assert!(matches!(e, GgufError::UnexpectedTensor { .. }), "{e}");
    assert!(e.to_string().len() < 600, "{} bytes", e.to_string().len());
    // a 1 MB duplicate key
    let mut g = Gguf::default();
    g.kvs.push(kv_str(&long, "a"));
    g.kvs.push(kv_str(&long, "b"));
    let e = GgufFile::from_bytes(g.build()).unwrap_err();
    assert!(matches!(e, GgufError::DuplicateKey(_)));
    assert!(e.to_string().len() < 400);
}

/// #22.17: a SentencePiece piece's length does not drive quadratic work (the merges are found
/// by splitting every piece; a 1 MB piece took minutes).
#[test]
fn a_long_sentencepiece_piece_is_not_quadratic() {
    let g = common::edited("spm", |m| {
        let arr = |k: &str| m[k].as_array().unwrap().clone();
        let mut tokens = arr("tokenizer.ggml.tokens").as_strings().unwrap().to_vec();
        let mut scores = arr("tokenizer.ggml.scores").to_f32_vec().unwrap();
        let mut types: Vec<i32> = arr("tokenizer.ggml.token_type")
            .to_i64_vec()
            .unwrap()
            .into_iter()
            .map(|x| i32::try_from(x).unwrap())
            .collect();
        tokens.push("a".repeat(1 << 20));
        scores.push(-1.0);
        types.push(1);
        for (k, v) in [
            ("tokenizer.ggml.tokens", MetaArray::String(tokens)),
            ("tokenizer.ggml.scores", MetaArray::F32(scores)),
            ("tokenizer.ggml.token_type", MetaArray::I32(types)),
        ] {
            m.insert(k.into(), MetaValue::Array(v));
        }
    });
    let start = std::time::Instant::now();
    let json = g.tokenizer_json().unwrap();
    let secs = start.elapsed().as_secs_f64();
    // before: ~6 s for 200 KB, growing with the square of the length
    assert!(secs < 5.0, "{secs:.1} s");
    let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
    assert_eq!(tok.get_vocab_size(false), 401);
}

/// A file truncated after it was opened (a download replaced, a disk cleaned up) while a model
/// streams its layers from it: reading a whole tensor that is no longer there is an I/O error
/// naming the file, not a fault on a mapped page that is gone (which would kill the process).
#[test]
fn a_file_truncated_after_opening_is_an_io_error_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    std::fs::copy(common::fixture("llama_gqa.gguf"), &path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let last = f
        .tensors()
        .iter()
        .max_by_key(|t| t.data.end)
        .unwrap()
        .clone();
    // readable as opened
    assert!(f.dequantize(&last).is_ok());
    // cut the file before the last tensor's data
    let keep = last.data.start;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let err = f.dequantize(&last).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err:?}");
    assert!(chain(&err).contains("m.gguf"), "{}", chain(&err));
}

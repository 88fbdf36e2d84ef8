//! Truncated and corrupt files give specific errors, never a panic or a huge allocation.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Gguf, Tensor, f32_tensor, kv_str, kv_u32};
use rdla_gguf::{GgufError, GgufFile};

fn small() -> Gguf {
    let mut g = Gguf::default();
    g.kvs.push(kv_str("general.name", "tiny"));
    g.kvs.push(common::kv_str_array(
        "tokenizer.ggml.tokens",
        &["a", "b", "c"],
    ));
    g.tensors.push(f32_tensor(
        "a.weight",
        &[4, 2],
        &[1., 2., 3., 4., 5., 6., 7., 8.],
    ));
    g.tensors
        .push(f32_tensor("b.weight", &[3], &[9., 10., 11.]));
    g
}

fn err(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn a_valid_small_file_opens_from_disk_and_memory() {
    let bytes = small().build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.gguf");
    std::fs::write(&path, &bytes).unwrap();
    for f in [
        GgufFile::open(&path).unwrap(),
        GgufFile::from_bytes(bytes).unwrap(),
    ] {
        assert_eq!(f.tensors().len(), 2);
        assert_eq!(
            f.dequantize(f.tensor("a.weight").unwrap()).unwrap(),
            vec![1., 2., 3., 4., 5., 6., 7., 8.]
        );
        assert_eq!(f.tensor("a.weight").unwrap().shape(), vec![2, 4]);
        assert_eq!(f.get("general.name").unwrap().as_str(), Some("tiny"));
    }
}

#[test]
fn version_2_is_read_like_version_3() {
    let mut g = small();
    g.version = 2;
    let f = GgufFile::from_bytes(g.build()).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.dequantize(&f.tensors()[1]).unwrap(), vec![9., 10., 11.]);
}

#[test]
fn bad_magic() {
    let mut b = small().build();
    b[0..4].copy_from_slice(b"GGML");
    assert!(matches!(err(b), GgufError::BadMagic { found } if &found == b"GGML"));
    assert!(matches!(
        err(b"PK\x03\x04 a zip file".to_vec()),
        GgufError::BadMagic { .. }
    ));
}

#[test]
fn bad_versions() {
    for v in [0u32, 1, 4, 0xFFFF] {
        let mut g = small();
        g.version = v;
        let e = err(g.build());
        assert!(
            matches!(e, GgufError::UnsupportedVersion(x) if x == v),
            "{v}: {e}"
        );
    }
    let mut g = small();
    g.version = 3u32.swap_bytes();
    assert!(matches!(err(g.build()), GgufError::BigEndian { .. }));
}

#[test]
fn empty_and_truncated_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&path),
        Err(GgufError::Truncated { .. })
    ));
    let (bytes, lay) = small().build_with_layout();
    // Every cut inside the header is an error (and never a panic).
    for cut in 0..lay.data_start {
        let e = err(bytes[..cut].to_vec());
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::AbsurdCount { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "cut at {cut}: {e}"
        );
    }
    let e = err(bytes[..20].to_vec());
    assert!(
        matches!(e, GgufError::Truncated { ref what, .. } if what == "the metadata count"),
        "{e}"
    );
}

#[test]
fn truncated_tensor_data_names_the_tensor() {
    let bytes = small().build();
    let e = err(bytes[..bytes.len() - 1].to_vec());
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "b.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("b.weight"));
}

#[test]
fn unknown_ggml_type() {
    for id in [4u32, 5, 31, 200, u32::MAX] {
        let (mut b, lay) = small().build_with_layout();
        put_u32(&mut b, lay.tensor_type_fields[0], id);
        let e = err(b);
        assert!(
            matches!(&e, GgufError::UnknownTensorType { tensor, type_id } if tensor == "a.weight" && *type_id == id),
            "{e}"
        );
    }
}

#[test]
fn unsupported_type_names_the_tensor_and_the_type() {
    let mut g = Gguf::default();
    g.tensors.push(Tensor {
        name: "blk.0.attn_q.weight".into(),
        dims: vec![256, 1],
        ty: 16, // IQ2_XXS: 66 bytes per 256 values
        data: vec![0; 66],
    });
    let f = GgufFile::from_bytes(g.build()).unwrap();
    let t = &f.tensors()[0];
    assert_eq!(t.ggml_type.name(), "IQ2_XXS");
    let e = f.dequantize(t).unwrap_err();
    assert!(
        matches!(&e, GgufError::UnsupportedTensorType { tensor, ty } if tensor == "blk.0.attn_q.weight" && ty == "IQ2_XXS"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.attn_q.weight") && msg.contains("IQ2_XXS"),
        "{msg}"
    );
    assert!(f.quantization_summary().contains("IQ2_XXS ×1"));
}

#[test]
fn absurd_counts() {
    // n_tensors, n_kv at offsets 8 and 16.
    for (at, what) in [(8usize, "tensor count"), (16, "metadata count")] {
        for v in [u64::MAX, 1 << 40, 1_000_000] {
            let mut b = small().build();
            put_u64(&mut b, at, v);
            let e = err(b);
            assert!(
                matches!(&e, GgufError::AbsurdCount { what: w, count, .. } if w == what && *count == v),
                "{e}"
            );
        }
    }
}

#[test]
fn absurd_string_length() {
    // The first key's length at offset 24.
    for v in [u64::MAX, 1 << 50, 10_000] {
        let mut b = small().build();
        put_u64(&mut b, 24, v);
        let e = err(b);
        assert!(
            matches!(e, GgufError::AbsurdCount { count, .. } if count == v),
            "{e}"
        );
    }
    // A string value's length.
    let (mut b, lay) = small().build_with_layout();
    put_u64(&mut b, lay.kv_payloads[1], u64::MAX - 3);
    assert!(matches!(err(b), GgufError::AbsurdCount { .. }));
}

#[test]
fn absurd_array_length() {
    // tokenizer.ggml.tokens: payload = u32 elem type, u64 count, ...
    for v in [u64::MAX, u64::MAX / 8 + 1, 1 << 40, 4] {
        let (mut b, lay) = small().build_with_layout();
        put_u64(&mut b, lay.kv_payloads[2] + 4, v);
        let e = err(b);
        assert!(
            matches!(
                e,
                GgufError::AbsurdCount { .. } | GgufError::Truncated { .. } | GgufError::Corrupt(_)
            ),
            "{v}: {e}"
        );
    }
    let (mut b, lay) = small().build_with_layout();
    put_u32(&mut b, lay.kv_payloads[2], 9); // array of arrays
    assert!(matches!(err(b), GgufError::Corrupt(m) if m.contains("nested")));
    let (mut b, lay) = small().build_with_layout();
    put_u32(&mut b, lay.kv_payloads[2], 77);
    assert!(matches!(
        err(b),
        GgufError::UnknownValueType { type_id: 77, .. }
    ));
}

#[test]
fn absurd_dimensions() {
    let mut g = small();
    g.tensors[0].dims = vec![1 << 32, 1 << 32, 1 << 32];
    let e = err(g.build());
    assert!(
        matches!(&e, GgufError::BadDims { tensor, reason, .. } if tensor == "a.weight" && reason.contains("overflow")),
        "{e}"
    );
    let mut g = small();
    g.tensors[0].dims = vec![1 << 31, 1 << 31, 4];
    assert!(matches!(err(g.build()), GgufError::BadDims { .. }));
    let mut g = small();
    g.tensors[0].dims = vec![2, 2, 2, 1, 1];
    assert!(
        matches!(err(g.build()), GgufError::BadDims { reason, .. } if reason.contains("5 dimensions"))
    );
    // Huge but not overflowing: the data is not there.
    let mut g = small();
    g.tensors[0].dims = vec![1 << 20, 1 << 20];
    assert!(matches!(
        err(g.build()),
        GgufError::TensorOutOfBounds { .. }
    ));
    // A quantised row that is not a whole number of blocks.
    let mut g = small();
    g.tensors[0] = Tensor {
        name: "q".into(),
        dims: vec![33, 1],
        ty: 8,
        data: vec![0; 34],
    };
    assert!(
        matches!(err(g.build()), GgufError::BadDims { reason, .. } if reason.contains("block size"))
    );
}

#[test]
fn misaligned_offset() {
    let (mut b, lay) = small().build_with_layout();
    put_u64(&mut b, lay.tensor_offset_fields[1], 33);
    let e = err(b);
    assert!(
        matches!(&e, GgufError::Misaligned { tensor, offset: 33, alignment: 32 } if tensor == "b.weight"),
        "{e}"
    );
    let (mut b, lay) = small().build_with_layout();
    put_u64(&mut b, lay.tensor_offset_fields[1], u64::MAX - 31);
    assert!(matches!(err(b), GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn alignment_key_is_honoured_and_checked() {
    let mut g = small();
    g.alignment = 256;
    g.kvs.push(kv_u32("general.alignment", 256));
    let f = GgufFile::from_bytes(g.build()).unwrap();
    assert_eq!(f.alignment(), 256);
    assert_eq!(f.data_start() % 256, 0);
    assert_eq!(f.dequantize(&f.tensors()[1]).unwrap(), vec![9., 10., 11.]);
    for bad in [0u32, 48] {
        let mut g = small();
        g.kvs.push(kv_u32("general.alignment", bad));
        assert!(
            matches!(err(g.build()), GgufError::BadValue { .. }),
            "{bad}"
        );
    }
    let mut g = small();
    g.kvs.push(kv_str("general.alignment", "32"));
    assert!(matches!(err(g.build()), GgufError::WrongType { .. }));
}

#[test]
fn duplicates_and_bad_strings() {
    let mut g = small();
    g.kvs.push(kv_str("general.name", "again"));
    assert!(matches!(err(g.build()), GgufError::DuplicateKey(k) if k == "general.name"));
    let mut g = small();
    g.tensors[1].name = "a.weight".into();
    assert!(matches!(err(g.build()), GgufError::DuplicateTensor(t) if t == "a.weight"));
    let mut g = small();
    g.kvs.push(kv_str("bad\u{e9}", "x"));
    let mut b = g.build();
    let at = b
        .windows(5)
        .position(|w| w == "bad\u{e9}".as_bytes())
        .unwrap();
    b[at + 3] = 0xFF; // invalid UTF-8
    assert!(matches!(err(b), GgufError::Corrupt(m) if m.contains("UTF-8")));
    let (mut b, lay) = small().build_with_layout();
    put_u32(&mut b, lay.kv_payloads[0] - 4, 13); // unknown value type
    assert!(matches!(
        err(b),
        GgufError::UnknownValueType { type_id: 13, .. }
    ));
}

#[test]
fn hf_view_errors() {
    // Not an architecture rdla knows.
    let f = GgufFile::from_bytes(small().build()).unwrap();
    assert!(matches!(f.hf_config(), Err(GgufError::UnsupportedArchitecture(a)) if a == "test"));
    assert!(matches!(
        f.hf_tensors(),
        Err(GgufError::UnsupportedArchitecture(_))
    ));
    // No tokenizer model.
    assert!(matches!(f.tokenizer_json(), Err(GgufError::MissingKey(_))));
    // A llama file with a stray tensor, then with a missing one.
    let llama = |extra: Option<Tensor>, drop: Option<&str>| {
        let mut g = Gguf {
            kvs: vec![
                kv_str("general.architecture", "llama"),
                kv_u32("llama.block_count", 1),
                kv_u32("llama.embedding_length", 4),
                kv_u32("llama.feed_forward_length", 8),
                kv_u32("llama.attention.head_count", 2),
                common::kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
            ],
            ..Gguf::default()
        };
        let names: [(&str, &[u64]); 11] = [
            ("token_embd.weight", &[4, 3]),
            ("output_norm.weight", &[4]),
            ("blk.0.attn_norm.weight", &[4]),
            ("blk.0.attn_q.weight", &[4, 4]),
            ("blk.0.attn_k.weight", &[4, 4]),
            ("blk.0.attn_v.weight", &[4, 4]),
            ("blk.0.attn_output.weight", &[4, 4]),
            ("blk.0.ffn_norm.weight", &[4]),
            ("blk.0.ffn_gate.weight", &[4, 8]),
            ("blk.0.ffn_up.weight", &[4, 8]),
            ("blk.0.ffn_down.weight", &[8, 4]),
        ];
        for (n, d) in names {
            if Some(n) != drop {
                let len = d.iter().product::<u64>() as usize;
                g.tensors.push(f32_tensor(n, d, &vec![0.5; len]));
            }
        }
        g.tensors.extend(extra);
        GgufFile::from_bytes(g.build()).unwrap()
    };
    let ok = llama(None, None);
    assert_eq!(ok.hf_tensors().unwrap().len(), 11);
    let cfg = ok.hf_config().unwrap();
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert_eq!(cfg["head_dim"], 2);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["tie_word_embeddings"], true);
    let stray = llama(
        Some(f32_tensor("blk.0.attn_sinks.weight", &[2], &[0., 0.])),
        None,
    );
    assert!(
        matches!(stray.hf_tensors(), Err(GgufError::UnexpectedTensor { tensor, .. }) if tensor == "blk.0.attn_sinks.weight")
    );
    let beyond = llama(
        Some(f32_tensor("blk.7.attn_norm.weight", &[4], &[0.; 4])),
        None,
    );
    assert!(matches!(
        beyond.hf_tensors(),
        Err(GgufError::UnexpectedTensor { .. })
    ));
    let missing = llama(None, Some("blk.0.ffn_up.weight"));
    assert!(
        matches!(missing.hf_tensors(), Err(GgufError::MissingTensor(t)) if t == "blk.0.ffn_up.weight")
    );
    let iq = llama(
        Some(Tensor {
            name: "output.weight".into(),
            dims: vec![256, 3],
            ty: 16,
            data: vec![0; 3 * 66],
        }),
        None,
    );
    assert!(
        matches!(iq.hf_tensors(), Err(GgufError::UnsupportedTensorType { tensor, .. }) if tensor == "output.weight")
    );
}

#[test]
fn absurd_hyperparameters_are_errors_not_loops() {
    let mut g = small();
    g.kvs[0] = kv_str("general.architecture", "llama");
    g.kvs.push(kv_u32("llama.block_count", u32::MAX));
    g.kvs.push(kv_u32("llama.embedding_length", u32::MAX));
    g.kvs.push(kv_u32("llama.attention.head_count", 1));
    let f = GgufFile::from_bytes(g.build()).unwrap();
    let start = std::time::Instant::now();
    assert!(
        matches!(f.hf_tensors(), Err(GgufError::BadValue { key, .. }) if key == "llama.block_count")
    );
    assert!(matches!(f.hf_config(), Err(GgufError::BadValue { .. })));
    assert!(start.elapsed().as_secs() < 5);
}

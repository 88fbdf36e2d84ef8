//! Every supported tensor type dequantises bit-for-bit as gguf-py's (= llama.cpp's) reference.
#![allow(clippy::unwrap_used)]

mod common;

use rdla_gguf::{GgmlType, GgufFile};

#[test]
fn every_type_dequantises_bit_exactly() {
    let f = GgufFile::open(&common::fixture("types.gguf")).unwrap();
    let reference = common::load_safetensors("types.safetensors");
    assert_eq!(f.tensors().len(), reference.len());
    let mut types_seen = std::collections::BTreeSet::new();
    for t in f.tensors() {
        let (shape, want) = &reference[&t.name];
        assert_eq!(&t.shape(), shape, "{}", t.name);
        let got = f.dequantize(t).unwrap();
        assert_eq!(got.len(), want.len(), "{}", t.name);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} ({}): element {i}: {g} vs reference {w}",
                t.name,
                t.ggml_type
            );
        }
        types_seen.insert(t.ggml_type.name());
    }
    for ty in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ] {
        assert!(types_seen.contains(ty), "fixture lacks {ty}");
    }
}

#[test]
fn header_of_the_type_fixture() {
    let f = GgufFile::open(&common::fixture("types.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_start() % 64, 0);
    for t in f.tensors() {
        assert_eq!((t.data.start - f.data_start()) % 64, 0, "{}", t.name);
    }
    assert_eq!(f.architecture().unwrap(), "types");
    let q = f.tensor("q4_k_3d").unwrap();
    assert_eq!(q.dims, vec![256, 3, 2]);
    assert_eq!(q.shape(), vec![2, 3, 256]);
    assert_eq!(q.ggml_type, GgmlType::Q4_K);
    let s = f.quantization_summary();
    assert!(s.starts_with("mostly "), "{s}");
    assert!(s.contains("F16 ×2") && s.contains("Q4_K ×2"), "{s}");
}

#[test]
fn type_table_round_trips() {
    for id in 0..64 {
        if let Some(t) = GgmlType::from_id(id) {
            assert_eq!(t.id(), id);
            let (block, bytes) = t.block_layout();
            assert!(block > 0 && bytes > 0);
        }
    }
    assert!(GgmlType::from_id(4).is_none(), "Q4_2 was removed");
    assert!(!GgmlType::IQ2_XXS.is_supported());
}

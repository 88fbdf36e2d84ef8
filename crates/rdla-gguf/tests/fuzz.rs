//! Property: opening arbitrarily mutated bytes of a valid file never panics, and neither does
//! anything done with a file that did open.
#![allow(clippy::unwrap_used)]

mod common;

use proptest::prelude::*;
use rdla_gguf::GgufFile;

/// Exercise everything a caller can do with an open file; errors are fine, panics are not.
fn use_everything(f: &GgufFile) {
    let _ = f.quantization_summary();
    let _ = f.architecture();
    for t in f.tensors() {
        let _ = f.dequantize(t);
    }
    let _ = f.hf_config();
    if let Ok(ts) = f.hf_tensors() {
        for t in &ts {
            let _ = f.read_hf(t);
        }
    }
    let _ = f.tokenizer_json();
    let _ = f.rope_freq_factors();
}

/// The valid files the mutations start from: a quantised llama (tokenizer, rope factors),
/// gpt2 (transposes), a SentencePiece vocabulary and the type zoo.
const BASES: [&str; 4] = ["llama_gqa.gguf", "gpt2_tied.gguf", "spm.gguf", "types.gguf"];

/// `(bytes, header length)` of each base file (mutations in the header are the interesting ones).
fn bases() -> &'static [(Vec<u8>, usize)] {
    static BYTES: std::sync::OnceLock<Vec<(Vec<u8>, usize)>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        BASES
            .iter()
            .map(|name| {
                let bytes = std::fs::read(common::fixture(name)).unwrap();
                let header = GgufFile::from_bytes(bytes.clone()).unwrap().data_start() as usize;
                (bytes, header)
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite one byte (position scaled into the header or the whole file).
    Byte {
        pos: f64,
        in_header: bool,
        value: u8,
    },
    /// Overwrite eight bytes with an extreme or random u64.
    Word { pos: f64, value: u64 },
    /// Cut the file.
    Truncate { keep: f64 },
    /// Insert or delete a few bytes inside the header.
    Splice {
        pos: f64,
        delete: usize,
        insert: Vec<u8>,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0.0..1.0f64, any::<bool>(), any::<u8>()).prop_map(|(pos, in_header, value)| Mutation::Byte { pos, in_header, value }),
        2 => (0.0..1.0f64, prop_oneof![Just(u64::MAX), Just(u64::MAX / 2), Just(1u64 << 32), Just(0u64), Just(1u64 << 62), any::<u64>()])
            .prop_map(|(pos, value)| Mutation::Word { pos, value }),
        1 => (0.0..1.0f64).prop_map(|keep| Mutation::Truncate { keep }),
        1 => (0.0..1.0f64, 0usize..9, proptest::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(pos, delete, insert)| Mutation::Splice { pos, delete, insert }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation, header: usize) {
    let at = |pos: f64, len: usize| ((pos * len as f64) as usize).min(len.saturating_sub(1));
    match m {
        Mutation::Byte {
            pos,
            in_header,
            value,
        } => {
            let span = if *in_header {
                header.min(bytes.len())
            } else {
                bytes.len()
            };
            if span > 0 {
                let i = at(*pos, span);
                bytes[i] = *value;
            }
        }
        Mutation::Word { pos, value } => {
            let span = header.min(bytes.len());
            if span >= 8 {
                let i = at(*pos, span - 7);
                bytes[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        Mutation::Truncate { keep } => bytes.truncate((keep * bytes.len() as f64) as usize),
        Mutation::Splice {
            pos,
            delete,
            insert,
        } => {
            let span = header.min(bytes.len());
            let i = at(*pos, span.max(1)).min(bytes.len());
            let end = (i + delete).min(bytes.len());
            bytes.splice(i..end, insert.iter().copied());
        }
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=20000 for a longer run.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn open_never_panics_on_mutated_files(base in 0..BASES.len(), muts in proptest::collection::vec(mutation(), 1..6)) {
        let (original, header) = &bases()[base];
        let mut bytes = original.clone();
        for m in &muts {
            apply(&mut bytes, m, *header);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(f) = GgufFile::open(&path) {
            use_everything(&f);
        }
    }

    #[test]
    fn random_bytes_after_a_valid_preamble_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend_from_slice(&tail);
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            use_everything(&f);
        }
    }
}

#[test]
fn the_unmutated_fixtures_open() {
    for (bytes, _) in bases() {
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        use_everything(&f);
    }
}

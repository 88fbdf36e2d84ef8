//! GGUF files load as the checkpoints they were converted from: the same config, tokens and
//! (up to the quantised tensors) the same logits; the attribution on them is complete.

use rdla_model::{Device, Model, Processing};
use rdla_testutil::{Reference, fixture, fixtures_dir, load_model, max_abs_diff};

fn gguf(name: &str) -> std::path::PathBuf {
    fixtures_dir().join("gguf").join(format!("{name}.gguf"))
}

#[test]
fn gguf_models_load_like_their_checkpoints() {
    for name in rdla_testutil::GGUF_FIXTURES {
        let path = gguf(name);
        let before = std::fs::read(&path).unwrap();
        let m = Model::load(&path, &Device::flex(), Processing::default(), &mut |_| true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let hf = load_model(name, &Device::flex());
        // the same model from gguf-py's own dequantisation of the file (HF layout)
        let expected = rdla_testutil::gguf_twin(name, &Device::flex());
        assert_eq!(m.config.n_layers, hf.config.n_layers, "{name}");
        assert_eq!(m.config.n_heads, hf.config.n_heads, "{name}");
        assert_eq!(m.config.n_kv_heads, hf.config.n_kv_heads, "{name}");
        assert_eq!(m.config.d_vocab, hf.config.d_vocab, "{name}");
        // the file is what is protected (as given and canonical), not its folder
        let real = path.canonicalize().unwrap();
        assert!(
            m.protected.contains(&path) && m.protected.contains(&real),
            "{name}: {:?}",
            m.protected
        );
        assert!(
            m.protected.iter().all(|p| p.is_file()),
            "{name}: {:?}",
            m.protected
        );
        assert!(m.weights_source.contains("GGUF"), "{}", m.weights_source);
        let r = Reference::load(name);
        let prompt = r.str("prompt");
        let bos = r.json["prepend_bos"].as_bool().unwrap();
        assert_eq!(
            m.tokenizer.encode_prompt(&prompt, bos).unwrap(),
            r.token_ids(),
            "{name}: the GGUF vocabulary tokenises like tokenizer.json"
        );
        let a = m.run(&r.token_ids()).unwrap();
        let b = expected.run(&r.token_ids()).unwrap();
        let c = hf.run(&r.token_ids()).unwrap();
        let la = rdla_model::to_vec(a.last_logits).unwrap();
        let lb = rdla_model::to_vec(b.last_logits).unwrap();
        let lc = rdla_model::to_vec(c.last_logits).unwrap();
        // equal to the reference dequantisation; different from the unquantised checkpoint
        let e = max_abs_diff(&la, &lb);
        assert!(
            e <= 1e-4,
            "{name}: GGUF logits differ from gguf-py's by {e}"
        );
        assert!(
            max_abs_diff(&la, &lc) > 1e-4,
            "{name}: quantisation left no trace?"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{name}: the file was modified"
        );
    }
}

#[test]
fn a_gguf_without_extension_is_recognised_and_garbage_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("sha256-0123");
    std::fs::copy(gguf("qwen2"), &blob).unwrap();
    assert!(rdla_model::model::is_gguf(&blob));
    Model::load(&blob, &Device::flex(), Processing::default(), &mut |_| true).unwrap();
    // truncated: a clear error, no panic
    let bytes = std::fs::read(gguf("qwen2")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = Model::load(&cut, &Device::flex(), Processing::default(), &mut |_| true)
        .expect_err("a truncated GGUF loads");
    assert!(!e.to_string().is_empty());
    // the fixture directory itself is not a GGUF
    assert!(!rdla_model::model::is_gguf(&fixture("qwen2")));
}

/// On the CPU the token matrices are read where they lie: no f32 copy of the embedding or
/// the unembedding is held, and a block of rows read from the file equals those rows of the
/// whole tensor read at once.
#[test]
fn token_matrices_stay_in_the_file_and_read_rows_exactly() {
    use rdla_model::WeightStore;
    use rdla_model::vocab::Unembedding;
    for name in rdla_testutil::GGUF_FIXTURES {
        let path = gguf(name);
        let m = Model::load(&path, &Device::flex(), Processing::default(), &mut |_| true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            m.weights.w_e.is_none() && matches!(m.weights.w_u, Unembedding::Stored(_)),
            "{name}: the token matrices were copied"
        );
        let store = WeightStore::open_gguf(rdla_gguf::GgufFile::open(&path).unwrap()).unwrap();
        let key = store
            .keys()
            .find(|k| {
                k.ends_with("embed_tokens.weight")
                    || k.ends_with("wte.weight")
                    || k.ends_with("embed_in.weight")
            })
            .unwrap_or_else(|| panic!("{name}: no embedding key"))
            .to_string();
        let whole = store.read_f32(&key).unwrap();
        let rows = store
            .rows(&key)
            .unwrap_or_else(|| panic!("{name}: {key} has no rows"));
        let d = rows.cols();
        let mut got = Vec::new();
        rows.read(3..rows.rows(), &mut got).unwrap();
        assert_eq!(got, whole.data[3 * d..], "{name}: rows 3.. of {key}");
        assert!(
            rows.read(0..rows.rows() + 1, &mut got).is_err(),
            "{name}: past the end"
        );
        // several readouts at once: the stored matrix is read once for all of them, and
        // each row's product equals the dot products with the processed columns
        let (d, v) = m.weights.w_u.dims();
        let cs: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let got = m.weights.w_u.products(&cs).unwrap();
        let mut cols = Vec::new();
        m.weights.w_u.columns(0..v, &mut cols).unwrap();
        assert_eq!(got.len(), 3 * v, "{name}: products' shape");
        for (i, c) in cs.chunks_exact(d).enumerate() {
            for (t, col) in cols.chunks_exact(d).enumerate() {
                let want: f64 = c
                    .iter()
                    .zip(col)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let g = f64::from(got[i * v + t]);
                assert!(
                    (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{name}: row {i}, token {t}: {g} vs {want}"
                );
            }
        }
    }
}

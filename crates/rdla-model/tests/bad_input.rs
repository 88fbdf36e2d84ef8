//! Bad input gives a typed error with a clear message, never a panic.
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use std::collections::HashMap;
use std::path::Path;

use common::fixture;
use rdla_model::{Device, Model, ModelError, Processing, WeightStore};

/// A scratch copy of a fixture folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load(dir, &Device::flex(), Processing::default(), &mut |_| true)
}

/// Rewrite `model.safetensors` through `edit` (key -> (shape, data)).
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Vec<usize>, Vec<f32>)>)) {
    let store = WeightStore::open_dir(dir).unwrap();
    let mut all: HashMap<String, (Vec<usize>, Vec<f32>)> = store
        .keys()
        .map(|k| {
            let t = store.read_f32(k).unwrap();
            (k.to_string(), (t.shape, t.data))
        })
        .collect();
    drop(store);
    edit(&mut all);
    let bytes: HashMap<String, Vec<u8>> = all
        .iter()
        .map(|(k, (_, d))| (k.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = all
        .iter()
        .map(|(k, (s, _))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), &bytes[k])
                    .unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
}

#[test]
fn truncated_safetensors() {
    let tmp = copy_fixture("gpt2_tied");
    let p = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn garbage_safetensors_header() {
    let tmp = copy_fixture("gpt2_tied");
    std::fs::write(
        tmp.path().join("model.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
}

#[test]
fn missing_tensor() {
    let tmp = copy_fixture("gpt2_tied");
    rewrite_weights(tmp.path(), |all| {
        let key = all
            .keys()
            .find(|k| k.ends_with("h.1.mlp.c_fc.bias"))
            .unwrap()
            .clone();
        all.remove(&key);
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    assert!(err.to_string().contains("h.1.mlp.c_fc.bias"), "{err}");
}

#[test]
fn wrong_shape() {
    let tmp = copy_fixture("gpt2_tied");
    rewrite_weights(tmp.path(), |all| {
        let key = all
            .keys()
            .find(|k| k.ends_with("h.0.attn.c_proj.weight"))
            .unwrap()
            .clone();
        let (shape, data) = all.get_mut(&key).unwrap();
        let n = shape[0] / 2;
        data.truncate(n * shape[1]);
        shape[0] = n;
    });
    let err = load(tmp.path()).unwrap_err();
    match &err {
        ModelError::WrongShape {
            key,
            expected,
            actual,
        } => {
            assert!(key.ends_with("h.0.attn.c_proj.weight"));
            assert_ne!(expected, actual);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
    assert!(err.to_string().contains("expected"), "{err}");
}

#[test]
fn non_finite_weights() {
    let tmp = copy_fixture("gpt2_tied");
    rewrite_weights(tmp.path(), |all| {
        let key = all
            .keys()
            .find(|k| k.ends_with("wpe.weight"))
            .unwrap()
            .clone();
        all.get_mut(&key).unwrap().1[3] = f32::NAN;
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::NonFinite { .. }), "{err:?}");
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn unknown_model_type() {
    let tmp = copy_fixture("gpt2_tied");
    edit_config(tmp.path(), |c| {
        c.insert("model_type".into(), "mamba".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["MambaForCausalLM"]),
        );
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("mamba"), "{err}");
}

#[test]
fn config_without_n_layer() {
    let tmp = copy_fixture("gpt2_tied");
    edit_config(tmp.path(), |c| {
        c.remove("n_layer");
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::MissingConfigField {
                field: "n_layer",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`n_layer`"), "{err}");
}

#[test]
fn config_that_is_not_json() {
    let tmp = copy_fixture("gpt2_tied");
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::ConfigJson { .. }), "{err:?}");
}

#[test]
fn truncated_pytorch_bin() {
    let tmp = copy_fixture("gpt2_tied_bin");
    let p = tmp.path().join("pytorch_model.bin");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::Pytorch { .. }), "{err:?}");
}

#[test]
fn missing_files_and_bad_paths() {
    let err = load(Path::new("/nonexistent/model/dir")).unwrap_err();
    assert!(matches!(err, ModelError::NotFound(_)), "{err:?}");

    let tmp = tempfile::tempdir().unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::NoConfig { .. }), "{err:?}");

    let tmp = copy_fixture("gpt2_tied");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err:?}");

    let tmp = copy_fixture("gpt2_tied");
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::NoTokenizer { .. }), "{err:?}");
}

#[test]
fn prompts_that_do_not_fit() {
    let model = load(&fixture("gpt2_tied")).unwrap();
    let tok = &model.tokenizer;
    assert!(matches!(
        tok.encode_prompt("", true),
        Err(ModelError::EmptyPrompt)
    ));
    let long = "Get some apples. ".repeat(100);
    let ids = tok.encode_prompt(&long, true).unwrap();
    let err = model.run(&ids).unwrap_err();
    assert!(matches!(err, ModelError::PromptTooLong { .. }), "{err:?}");
    assert!(err.to_string().contains("context"), "{err}");
    let err = tok.single_token(" Get some").unwrap_err();
    assert!(matches!(err, ModelError::NotOneToken { .. }), "{err:?}");
    assert!(err.to_string().contains('+'), "{err}");
}

#[test]
fn loading_never_writes_model_files() {
    let dir = fixture("gpt2_tied");
    let snapshot = || {
        let mut v: Vec<(String, Vec<u8>, std::time::SystemTime)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot();
    let m = load(&dir).unwrap();
    let ids = m.tokenizer.encode_prompt("Get some apples.", true).unwrap();
    m.run(&ids).unwrap();
    assert_eq!(before, snapshot());
}

#[test]
fn unsupported_rope_scaling_and_bad_head_counts() {
    let tmp = copy_fixture("llama_gqa");
    edit_config(tmp.path(), |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
        );
    });
    let err = load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("yarn") && err.contains("llama3"), "{err}");

    let tmp = copy_fixture("llama_gqa");
    edit_config(tmp.path(), |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    let err = load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("num_key_value_heads"), "{err}");
}

#[test]
fn llama_checkpoint_missing_a_projection() {
    let tmp = copy_fixture("qwen2");
    rewrite_weights(tmp.path(), |t| {
        t.remove("model.layers.1.self_attn.k_proj.weight");
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("model.layers.1.self_attn.k_proj.weight"),
        "{err}"
    );
}

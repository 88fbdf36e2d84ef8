//! Bad input gives a typed error with a clear message, never a panic.
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use std::collections::HashMap;
use std::path::Path;

use common::{copy_fixture, fixture};
use rdla_model::{Device, Model, ModelError, Processing, WeightStore};

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load(dir, &Device::flex(), Processing::default(), &mut |_| true)
}

/// Rewrite `model.safetensors` through `edit` (key -> (shape, data)).
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Vec<usize>, Vec<f32>)>)) {
    let store = WeightStore::open_dir(dir).unwrap();
    let mut all: HashMap<String, (Vec<usize>, Vec<f32>)> = common::read_all(&store)
        .into_iter()
        .map(|(k, s, d)| (k, (s, d)))
        .collect();
    drop(store);
    edit(&mut all);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        all.into_iter().map(|(k, (s, d))| (k, s, d)).collect();
    common::write_safetensors(&dir.join("model.safetensors"), &tensors);
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

// ---------------------------------------------------------------------------------------
// Regression tests for the adversarial pass (issue #17): one per finding, each printing the
// message rdla now gives ("finding: …"), collected in docs/HARDENING.md.
// ---------------------------------------------------------------------------------------

fn report(finding: &str, err: &ModelError) {
    eprintln!("finding: {finding}: {err}");
}

/// Config sizes are bounded before anything is sized from them: no capacity overflow, no
/// allocation abort, no seconds of work before the error.
#[test]
fn absurd_config_sizes_are_refused_before_allocating() {
    for (family, field, value) in [
        ("gpt2_tied", "n_layer", 1e18),
        ("gpt2_tied", "n_layer", 1e9),
        ("gpt2_tied", "n_layer", 1e6),
        ("gpt2_tied", "n_embd", 1e15),
        ("llama_gqa", "head_dim", 1e15),
        ("llama_gqa", "head_dim", 1e9),
        ("llama_gqa", "hidden_size", 1e15),
    ] {
        let tmp = copy_fixture(family);
        edit_config(tmp.path(), |c| {
            c.insert(field.into(), serde_json::json!(value as u64));
        });
        let t = std::time::Instant::now();
        let err = load(tmp.path()).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidConfigField { .. }),
            "{field} = {value}: {err:?}"
        );
        assert!(err.to_string().contains(field), "{err}");
        // a guard against the old behaviour (9 s and 3.8 GB before the error), not a benchmark
        assert!(t.elapsed().as_secs() < 5, "{field}: {:?}", t.elapsed());
        report(&format!("{field} = {value:e}"), &err);
    }
}

#[test]
fn gpt_neo_attention_types_repeat_is_bounded() {
    let tmp = copy_fixture("gptneo_local");
    edit_config(tmp.path(), |c| {
        c.remove("attention_layers");
        c.insert(
            "attention_types".into(),
            serde_json::json!([[["global", "local"], 1_000_000_000_000u64]]),
        );
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("attention_types"), "{err}");
    report("GPT-Neo attention_types × 1e12", &err);
}

/// Negative epsilons, rope factors ≤ 0 and vanishing rope bases would make NaN of every
/// number: they are config errors.
#[test]
fn eps_and_rope_parameters_are_validated() {
    for (name, field, value) in [
        ("gpt2_tied", "layer_norm_epsilon", serde_json::json!(-1e-5)),
        ("llama_gqa", "rms_norm_eps", serde_json::json!(-1e-6)),
        ("llama_gqa", "rope_theta", serde_json::json!(1e-300)),
        (
            "mistral",
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
        ),
        (
            "mistral",
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": -2.0}),
        ),
    ] {
        let tmp = copy_fixture(name);
        edit_config(tmp.path(), |c| {
            c.remove("rope_parameters");
            c.insert(field.into(), value.clone());
        });
        let err = load(tmp.path()).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidConfigField { .. }),
            "{field} = {value}: {err:?}"
        );
        report(&format!("{field} = {value}"), &err);
    }
}

#[test]
fn a_negative_bos_token_id_is_an_error() {
    let tmp = copy_fixture("gpt2_tied");
    edit_config(tmp.path(), |c| {
        c.insert("bos_token_id".into(), serde_json::json!(-1));
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("bos_token_id"), "{err}");
    report("bos_token_id = -1", &err);
}

/// A checkpoint with more layers than config.json declares is refused, not truncated.
#[test]
fn more_layers_than_declared_is_an_error() {
    for name in ["gpt2_tied", "llama_gqa"] {
        let tmp = copy_fixture(name);
        edit_config(tmp.path(), |c| {
            let key = if c.contains_key("n_layer") {
                "n_layer"
            } else {
                "num_hidden_layers"
            };
            c.insert(key.into(), serde_json::json!(1));
        });
        let err = load(tmp.path()).unwrap_err();
        assert!(
            matches!(err, ModelError::UnexpectedLayer { layer: 1, .. }),
            "{name}: {err:?}"
        );
        report(&format!("{name} with one layer declared"), &err);
    }
}

/// Qwen2 checkpoints always have q/k/v biases: a missing one is an error, not zeros.
#[test]
fn a_missing_qwen2_bias_is_an_error() {
    let tmp = copy_fixture("qwen2");
    rewrite_weights(tmp.path(), |w| {
        w.remove("model.layers.0.self_attn.q_proj.bias").unwrap();
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor { .. }) && err.to_string().contains("q_proj.bias"),
        "{err:?}"
    );
    report("Qwen2 without q_proj.bias", &err);
}

/// A scratch copy of the sharded fixture, with `edit` applied to its index.
fn sharded(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let tmp = copy_fixture("gpt2_tied_sharded");
    let p = tmp.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v["weight_map"].as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    tmp
}

/// Shard files resolve inside the model folder only: no absolute paths, no `..`, no links
/// out of the folder (these used to load weights from anywhere, `/etc/passwd` included).
#[test]
fn shard_paths_stay_inside_the_model_folder() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("elsewhere.safetensors");
    std::fs::copy(
        fixture("gpt2_tied_sharded").join("model-00001-of-00003.safetensors"),
        &victim,
    )
    .unwrap();
    for shard in [
        victim.to_string_lossy().into_owned(),
        "../elsewhere.safetensors".to_string(),
        "/etc/passwd".to_string(),
    ] {
        let tmp = sharded(|m| {
            let key = m.keys().next().unwrap().clone();
            m.insert(key, shard.clone().into());
        });
        let err = load(tmp.path()).unwrap_err();
        assert!(
            matches!(err, ModelError::ShardIndex { .. })
                && err.to_string().contains("inside the model folder"),
            "{shard}: {err:?}"
        );
        report(&format!("shard path {shard}"), &err);
    }
    // a link inside the folder that leads out of it
    let tmp = sharded(|m| {
        let key = m.keys().next().unwrap().clone();
        m.insert(key, "link.safetensors".into());
    });
    std::os::unix::fs::symlink(&victim, tmp.path().join("link.safetensors")).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("outside the model folder"),
        "{err}"
    );
    report("shard link out of the folder", &err);
}

/// An index entry must name the shard that really stores the tensor.
#[test]
fn an_index_entry_in_the_wrong_shard_is_an_error() {
    let tmp = sharded(|m| {
        let (key, shard) = m
            .iter()
            .find(|(_, v)| v.as_str() == Some("model-00001-of-00003.safetensors"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap();
        assert_eq!(shard, "model-00001-of-00003.safetensors");
        m.insert(key, "model-00002-of-00003.safetensors".into());
    });
    let err = load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("not stored there"), "{err}");
    report("index entry assigned to the wrong shard", &err);
}

/// The same tensor in two shards is an error, not last-wins.
#[test]
fn a_tensor_in_two_shards_is_an_error() {
    let tmp = copy_fixture("gpt2_tied_sharded");
    let (a, b) = (
        tmp.path().join("model-00001-of-00003.safetensors"),
        tmp.path().join("model-00002-of-00003.safetensors"),
    );
    // add shard 1's first tensor to shard 2
    let first = common::read_all(&WeightStore::open_safetensors(vec![a]).unwrap());
    let mut second = common::read_all(&WeightStore::open_safetensors(vec![b.clone()]).unwrap());
    second.push(first[0].clone());
    common::write_safetensors(&b, &second);
    let err = load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("also stored"), "{err}");
    report("the same tensor in two shards", &err);
}

/// A tokenizer.json whose pre-tokenizer regex exceeds the regex engine's retry limit: the
/// `tokenizers` crate panics; rdla reports an error.
#[test]
fn a_catastrophic_pre_tokenizer_regex_is_an_error() {
    let tmp = copy_fixture("gpt2_tied");
    common::use_runaway_pre_tokenizer(tmp.path());
    let m = load(tmp.path()).unwrap();
    let err = m.tokenizer.encode(common::RUNAWAY_REGEX_TEXT).unwrap_err();
    assert!(err.to_string().contains("tokenizer"), "{err}");
    report("a pre-tokenizer regex past Oniguruma's retry limit", &err);
}

/// Concurrent first runs of the default model: every one finds a complete folder.
#[test]
fn concurrent_default_model_materialisation() {
    let dirs: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(rdla_model::default_model::materialize))
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    for d in &dirs {
        assert_eq!(d, &dirs[0]);
        assert!(d.join("config.json").is_file() && d.join("model.safetensors").is_file());
    }
}

/// A regression test: every sharded checkpoint in the Hugging Face cache was refused
/// ("shard … resolves to …/blobs/…, outside the model folder"), since the cache keeps a
/// snapshot's files as links into the repository's `blobs/`. Those open; a link into another
/// repository's blobs still does not.
#[test]
fn sharded_checkpoints_in_the_hugging_face_cache_open() {
    let (cache, snapshot) = rdla_testutil::hf_cache_copy("gpt2_tied_sharded");
    let store = WeightStore::open_dir(&snapshot).unwrap();
    let original = WeightStore::open_dir(&fixture("gpt2_tied_sharded")).unwrap();
    let (a, b) = (common::read_all(&store), common::read_all(&original));
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x == y),
        "the cache copy reads differently"
    );
    load(&snapshot).unwrap();

    // a shard linked into another repository's blobs is still outside
    let other = cache.path().join("hub/models--test--other/blobs");
    std::fs::create_dir_all(&other).unwrap();
    let shard = snapshot.join("model-00001-of-00003.safetensors");
    let blob = std::fs::canonicalize(&shard).unwrap();
    std::fs::rename(&blob, other.join("moved")).unwrap();
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("../../../models--test--other/blobs/moved", &shard).unwrap();
    let err = load(&snapshot).unwrap_err();
    assert!(
        err.to_string().contains("outside the model folder"),
        "{err}"
    );
    report("shard linked into another cache repository", &err);
}

/// A regression test: a prompt was tokenized whole before the context check (a 100 MB
/// prompt file took 5.4 GB). A text far over the context is refused from a prefix.
#[test]
fn a_prompt_far_over_the_context_is_refused_from_a_prefix() {
    let model = load(&fixture("gpt2_tied")).unwrap();
    let n_ctx = model.config.n_ctx;
    let text = "Get some apples. ".repeat(1 << 20); // 17 MB
    let t = std::time::Instant::now();
    let err = model
        .tokenizer
        .encode_prompt_within(&text, true, n_ctx)
        .unwrap_err();
    assert!(
        matches!(err, ModelError::PromptFarTooLong { prefix, .. } if prefix < text.len() / 16),
        "{err:?}"
    );
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
    report("a 17 MB prompt", &err);
    // within the context it is the plain encoding
    let short = "Get some apples.";
    assert_eq!(
        model
            .tokenizer
            .encode_prompt_within(short, true, n_ctx)
            .unwrap(),
        model.tokenizer.encode_prompt(short, true).unwrap()
    );
}

//! Shared helpers for the integration tests (a dev-dependency of every crate that has them):
//! fixture locations, the reference data written by `tests/fixtures/generate*.py`
//! (TransformerLens 2.18 on small random checkpoints), NaN-aware comparisons, and the wgpu
//! device with its skip accounting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed read is a failed test

use std::path::{Path, PathBuf};

use rdla_model::{Device, Model, Processing, WeightStore};

/// The TransformerLens reference fixtures: `generate.py` (GPT-2, GPT-Neo),
/// `generate_families.py` (GPT-NeoX, Llama, Qwen2, Mistral) and `generate_families2.py`
/// (Phi-3, Qwen3, Gemma 2, Gemma 3).
pub const TL_FIXTURES: [&str; 11] = [
    "gpt2_tied",
    "gpt2_untied",
    "gptneo_local",
    "neox_parallel",
    "llama_gqa",
    "qwen2",
    "mistral",
    "phi3",
    "qwen3",
    "gemma2",
    "gemma3",
];

/// The checkpoints that also exist as GGUF files (`tests/fixtures/gguf/{name}.gguf`, written
/// by `tests/fixtures/gguf/generate.py`), one per family rdla reads from GGUF.
pub const GGUF_FIXTURES: [&str; 8] = [
    "gpt2_tied",
    "llama_gqa",
    "qwen2",
    "neox_parallel",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3",
];

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(
        // at run time: a test binary built in another checkout sharing the target directory
        // (CI's clone) must read this checkout's files
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// `reference.json` and `reference.safetensors` of a fixture.
pub struct Reference {
    pub json: serde_json::Value,
    pub tensors: WeightStore,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = fixture(name);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let tensors =
            WeightStore::open_safetensors(vec![dir.join("reference.safetensors")]).unwrap();
        Self { json, tensors }
    }

    pub fn tensor(&self, key: &str) -> Vec<f32> {
        self.tensors
            .read_f32(key)
            .unwrap_or_else(|e| panic!("reference key {key}: {e}"))
            .data
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains(key)
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.tensors.shape(key).unwrap().to_vec()
    }

    pub fn token_ids(&self) -> Vec<u32> {
        self.json["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    pub fn str(&self, key: &str) -> String {
        self.json[key].as_str().unwrap().to_string()
    }

    pub fn u32(&self, key: &str) -> u32 {
        self.json[key].as_u64().unwrap() as u32
    }
}

pub fn load_model(name: &str, device: &Device) -> Model {
    Model::load(&fixture(name), device, Processing::default(), &mut |_| true)
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// The largest `|a − b|`; NaN as soon as either side has a NaN (or an infinity on one side
/// only), so that `assert!(err <= tol)` fails on it.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        let e = (x - y).abs();
        if e.is_nan() || (x.is_infinite() && x == y) {
            return f32::NAN;
        }
        worst = worse(worst, e);
    }
    worst
}

/// Every tensor a forward pass caches, flattened and named (the optional q/k-norm and
/// post-norm scales when the model has them): what two caches of the same prompt compare.
pub fn cache_tensors(c: &rdla_model::Cache) -> Vec<(&'static str, Vec<f32>)> {
    let v = |t: rdla_model::Tensor<1>| rdla_model::to_vec(t).unwrap();
    let mut out = vec![
        ("components", v(c.components.clone().flatten(0, 2))),
        ("keys", v(c.k.clone().flatten(0, 3))),
        ("values", v(c.v.clone().flatten(0, 3))),
        ("ln1 scales", v(c.ln1_scale.clone().flatten(0, 1))),
        ("ln2 scales", v(c.ln2_scale.clone().flatten(0, 1))),
        ("final scales", v(c.final_scale.clone())),
        ("last logits", v(c.last_logits.clone())),
    ];
    if let Some((q, k)) = &c.qk_scale {
        out.push(("q-norm scales", v(q.clone().flatten(0, 2))));
        out.push(("k-norm scales", v(k.clone().flatten(0, 2))));
    }
    if let Some((a, m)) = &c.post_scale {
        out.push(("post-attention scales", v(a.clone().flatten(0, 1))));
        out.push(("post-MLP scales", v(m.clone().flatten(0, 1))));
    }
    out
}

/// The larger of two errors, NaN if either is NaN (unlike `f32::max`, which drops NaN).
pub fn worse(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// Whether wgpu tests were asked to run: CI sets `RDLA_REQUIRE_WGPU=1`, and then a missing
/// adapter is a failure, not a skip.
pub fn wgpu_required() -> bool {
    std::env::var_os("RDLA_REQUIRE_WGPU").is_some_and(|v| v == "1")
}

/// The wgpu device if an adapter (lavapipe included) exists. Without one the test is skipped
/// — visibly: the skip is printed and recorded in `$RDLA_WGPU_LOG` when set (CI counts the
/// lines) — unless [`wgpu_required`], when it panics.
pub fn wgpu_device(test: &str) -> Option<Device> {
    let record = |what: &str| {
        if let Some(log) = std::env::var_os("RDLA_WGPU_LOG") {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "{what} {test}");
            }
        }
    };
    let skip = if std::env::var_os("RDLA_SKIP_WGPU").is_some() {
        Err("RDLA_SKIP_WGPU set".to_string())
    } else {
        rdla_model::select_device(rdla_model::DeviceChoice::Gpu)
            .map(|(d, info)| {
                eprintln!("wgpu: {test} running on {info}");
                d
            })
            .map_err(|e| e.to_string())
    };
    match skip {
        Ok(d) => {
            record("ran");
            Some(d)
        }
        Err(why) => {
            assert!(
                !wgpu_required(),
                "{test}: RDLA_REQUIRE_WGPU=1 but no wgpu device: {why}"
            );
            eprintln!("wgpu: {test} SKIPPED ({why})");
            record("skipped");
            None
        }
    }
}

/// Write `tensors` (name, shape, f32 data) as one safetensors file.
pub fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, s, _), b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Every tensor of a store as (name, shape, f32 data).
pub fn read_all(store: &WeightStore) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    store
        .keys()
        .map(|k| {
            let t = store.read_f32(k).unwrap();
            (k.to_string(), t.shape, t.data)
        })
        .collect()
}

/// The GGUF fixture `name`'s twin: the same weights as gguf-py dequantises them
/// (`gguf/{name}.expected.safetensors`) with the checkpoint's own config and tokenizer.
pub fn gguf_twin(name: &str, device: &Device) -> Model {
    let dir = fixture(name);
    let config = rdla_model::model::read_config(&dir).unwrap();
    let tokenizer = rdla_model::Tokenizer::from_dir(&dir, config.bos_token_id).unwrap();
    Model::from_store(
        &dir,
        config,
        tokenizer,
        WeightStore::open_safetensors(vec![
            fixtures_dir()
                .join("gguf")
                .join(format!("{name}.expected.safetensors")),
        ])
        .unwrap(),
        device,
        Processing::default(),
        &mut |_| true,
    )
    .unwrap()
}

/// A scratch copy of the fixture folder `name` (tests that edit a model never touch the
/// fixtures).
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

/// Give the model in `dir` a `tokenizer.json` pre-tokenizer whose regex exceeds Oniguruma's
/// retry limit on [`RUNAWAY_REGEX_TEXT`] (the `tokenizers` crate panics there).
pub fn use_runaway_pre_tokenizer(dir: &std::path::Path) {
    let p = dir.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    t["pre_tokenizer"] = serde_json::json!({
        "type": "Split", "pattern": {"Regex": "(a|aa)+$"},
        "behavior": "Isolated", "invert": false
    });
    std::fs::write(&p, t.to_string()).unwrap();
}

/// A text on which [`use_runaway_pre_tokenizer`]'s regex backtracks past the limit.
pub const RUNAWAY_REGEX_TEXT: &str =
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab";

/// A Hugging Face cache holding the fixture `name` as the hub lays it out:
/// `hub/models--test--{name}/blobs/<hash>` for every file and
/// `snapshots/<revision>/<file>` as relative links into `blobs/`. Returns the cache's
/// temporary root and the snapshot folder.
pub fn hf_cache_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("hub").join(format!("models--test--{name}"));
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(fixture(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for (i, src) in entries.iter().enumerate() {
        let blob = format!("{i:064x}");
        std::fs::copy(src, blobs.join(&blob)).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&blob),
            snapshot.join(src.file_name().unwrap()),
        )
        .unwrap();
    }
    (tmp, snapshot)
}

/// An error and its sources as anyhow's `{:#}` prints them (`a: b: c`), to check that a cause
/// is said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let chain: Vec<String> = std::iter::successors(Some(e), |e| (*e).source())
        .map(ToString::to_string)
        .collect();
    chain.join(": ")
}

//! Property tests ("fuzzing") of everything rdla reads from a model folder: `config.json`,
//! safetensors headers, the shard index and `pytorch_model.bin`. Whatever the bytes, opening
//! gives a model or an error — never a panic, an abort or a hang. Each target runs
//! `RDLA_FUZZ_CASES` cases (64 by default, so CI stays quick); `long_fuzz` (ignored) runs each
//! for `RDLA_FUZZ_SECS` seconds (`docs/HARDENING.md` records the long runs).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use rdla_model::{Device, Model, Processing, WeightStore, config};
use rdla_testutil::{TL_FIXTURES, fixture};

fn cases() -> u32 {
    std::env::var("RDLA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Open a store and read every tensor; errors are fine.
fn use_store(store: rdla_model::Result<WeightStore>) {
    if let Ok(s) = store {
        let keys: Vec<String> = s.keys().map(str::to_string).collect();
        for k in keys {
            let _ = s.read_f32(&k);
        }
    }
}

/// Every config.json of the reference fixtures.
fn configs() -> &'static [serde_json::Value] {
    static C: std::sync::OnceLock<Vec<serde_json::Value>> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        TL_FIXTURES
            .iter()
            .map(|n| {
                serde_json::from_str(
                    &std::fs::read_to_string(fixture(n).join("config.json")).unwrap(),
                )
                .unwrap()
            })
            .collect()
    })
}

/// A JSON value of the kinds a hostile config puts in a field.
fn wild_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(3), Just(1 << 40)]
            .prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
        proptest::collection::vec(0u64..5, 0..4).prop_map(|v| serde_json::json!(v)),
        Just(serde_json::json!({"rope_type": "linear", "factor": 0.0})),
        Just(serde_json::json!([[
            ["global", "local"],
            1_000_000_000_000u64
        ]])),
    ]
}

/// A byte mutation: overwrite, insert, delete or truncate.
#[derive(Debug, Clone)]
enum Mutation {
    Set(f64, u8),
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
    Truncate(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0.0..1.0f64, any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        1 => (0.0..1.0f64, proptest::collection::vec(any::<u8>(), 1..9)).prop_map(|(p, v)| Mutation::Insert(p, v)),
        1 => (0.0..1.0f64, 1usize..9).prop_map(|(p, n)| Mutation::Delete(p, n)),
        1 => (0.0..1.0f64).prop_map(Mutation::Truncate),
    ]
}

/// Apply mutations, positions drawn from the first `focus` bytes (the header) when set.
fn mutate(mut bytes: Vec<u8>, muts: &[Mutation], focus: Option<usize>) -> Vec<u8> {
    for m in muts {
        let span = focus.unwrap_or(bytes.len()).min(bytes.len()).max(1);
        let at = |p: f64| ((p * span as f64) as usize).min(bytes.len());
        match m {
            Mutation::Set(p, b) => {
                let i = at(*p);
                if i < bytes.len() {
                    bytes[i] = *b;
                }
            }
            Mutation::Insert(p, v) => {
                let i = at(*p);
                bytes.splice(i..i, v.iter().copied());
            }
            Mutation::Delete(p, n) => {
                let i = at(*p);
                let j = (i + n).min(bytes.len());
                bytes.drain(i..j);
            }
            Mutation::Truncate(p) => {
                let n = ((p * bytes.len() as f64) as usize).min(bytes.len());
                bytes.truncate(n);
            }
        }
    }
    bytes
}

fn write_tmp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (tmp, p)
}

fn safetensors_bytes() -> &'static (Vec<u8>, usize) {
    static B: std::sync::OnceLock<(Vec<u8>, usize)> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let b = std::fs::read(fixture("gpt2_untied").join("model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        (b, header)
    })
}

type Edits = Vec<(usize, Option<serde_json::Value>)>;

fn config_case() -> impl Strategy<Value = (usize, Edits)> {
    (
        0..TL_FIXTURES.len(),
        proptest::collection::vec((0usize..64, proptest::option::of(wild_value())), 1..6),
    )
}

/// config.json: any field of any fixture's config set to any value, or removed.
fn config_body((which, edits): (usize, Edits)) {
    let mut c = configs()[which].clone();
    let map = c.as_object_mut().unwrap();
    let keys: Vec<String> = map.keys().cloned().collect();
    for (k, v) in edits {
        let key = keys[k % keys.len()].clone();
        match v {
            Some(v) => {
                map.insert(key, v);
            }
            None => {
                map.remove(&key);
            }
        }
    }
    if let Ok(cfg) = config::from_value(&c) {
        // what a valid config sizes must be small enough to estimate
        let _ = rdla_model::memory::model_bytes(&cfg, true);
        let _ = cfg.layout().labels();
    }
}

fn safetensors_case() -> impl Strategy<Value = (Vec<Mutation>, bool)> {
    (proptest::collection::vec(mutation(), 1..6), any::<bool>())
}

/// Safetensors: header bytes mutated (and sometimes the data): open and read never panic.
fn safetensors_body((muts, header_only): (Vec<Mutation>, bool)) {
    let (bytes, header) = safetensors_bytes();
    let bad = mutate(bytes.clone(), &muts, header_only.then_some(*header));
    let (_tmp, p) = write_tmp("model.safetensors", &bad);
    use_store(WeightStore::open_safetensors(vec![p]));
}

fn shard_case() -> impl Strategy<Value = (Vec<Mutation>, Vec<String>)> {
    (
        proptest::collection::vec(mutation(), 0..4),
        proptest::collection::vec(
            prop_oneof![
                Just("model-00001-of-00003.safetensors".to_string()),
                Just("model-00002-of-00003.safetensors".to_string()),
                Just("../x.safetensors".to_string()),
                Just("/etc/passwd".to_string()),
                Just(String::new()),
                Just("config.json".to_string()),
                "[a-z./]{0,16}",
            ],
            0..4,
        ),
    )
}

/// The shard index: its text mutated, or its weight_map entries pointed anywhere.
fn shard_body((muts, targets): (Vec<Mutation>, Vec<String>)) {
    let tmp = rdla_testutil::copy_fixture("gpt2_tied_sharded");
    let p = tmp.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let map = v["weight_map"].as_object_mut().unwrap();
    let keys: Vec<String> = map.keys().cloned().collect();
    for (i, t) in targets.into_iter().enumerate() {
        map.insert(keys[i % keys.len()].clone(), t.into());
    }
    let text = mutate(serde_json::to_vec(&v).unwrap(), &muts, None);
    std::fs::write(&p, text).unwrap();
    use_store(WeightStore::open_dir(tmp.path()));
}

fn pytorch_case() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..5)
}

/// pytorch_model.bin (a zip of pickles): bytes mutated anywhere; loading the whole model
/// from it never panics.
fn pytorch_body(muts: Vec<Mutation>) {
    let tmp = rdla_testutil::copy_fixture("gpt2_tied_bin");
    let p = tmp.path().join("pytorch_model.bin");
    let bad = mutate(std::fs::read(&p).unwrap(), &muts, None);
    std::fs::write(&p, bad).unwrap();
    use_store(WeightStore::open_pytorch(&p));
    let _ = Model::load(
        tmp.path(),
        &Device::flex(),
        Processing::default(),
        &mut |_| true,
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn config_json_never_panics(case in config_case()) {
        config_body(case);
    }

    #[test]
    fn safetensors_headers_never_panic(case in safetensors_case()) {
        safetensors_body(case);
    }

    #[test]
    fn shard_index_never_panics(case in shard_case()) {
        shard_body(case);
    }

    #[test]
    fn pytorch_bin_never_panics(case in pytorch_case()) {
        pytorch_body(case);
    }
}

/// Run `body` on fresh cases of `strategy` for `secs` seconds; a panic fails with its input.
fn run_for<S: Strategy>(name: &str, secs: u64, strategy: S, body: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug + Clone,
{
    use proptest::strategy::ValueTree as _;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut n = 0u64;
    while std::time::Instant::now() < deadline {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let shown = format!("{case:?}");
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(case))).is_err() {
            panic!("{name}: panicked on case {n}: {shown}");
        }
        n += 1;
    }
    eprintln!("fuzz {name}: {n} cases in {secs} s, no panic");
}

/// The long run (`RDLA_FUZZ_SECS=600 cargo test --workspace -- --ignored long_fuzz`): every
/// target for the given seconds, one after the other.
#[test]
#[ignore = "long: run by hand with RDLA_FUZZ_SECS"]
fn long_fuzz() {
    let secs = std::env::var("RDLA_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    run_for("config.json", secs, config_case(), config_body);
    run_for(
        "safetensors header",
        secs,
        safetensors_case(),
        safetensors_body,
    );
    run_for("shard index", secs, shard_case(), shard_body);
    run_for("pytorch_model.bin", secs, pytorch_case(), pytorch_body);
}

//! Shared helpers for the integration tests: fixture locations and reference data written by
//! `tests/fixtures/generate.py` (TransformerLens 2.18 on small random checkpoints).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support: each crate uses a subset

use std::path::PathBuf;

use rdla_model::{Device, Model, Processing, WeightStore};

/// The TransformerLens reference fixtures: `generate.py` (GPT-2, GPT-Neo) and
/// `generate_families.py` (GPT-NeoX, Llama, Qwen2, Mistral).
pub const TL_FIXTURES: [&str; 7] = [
    "gpt2_tied",
    "gpt2_untied",
    "gptneo_local",
    "neox_parallel",
    "llama_gqa",
    "qwen2",
    "mistral",
];

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
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

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The wgpu device if an adapter (lavapipe included) exists, else `None` (the test then
/// says it was skipped).
pub fn wgpu_device() -> Option<Device> {
    if std::env::var_os("RDLA_SKIP_WGPU").is_some() {
        eprintln!("wgpu: skipped (RDLA_SKIP_WGPU set)");
        return None;
    }
    match rdla_model::select_device(rdla_model::DeviceChoice::Gpu) {
        Ok((d, info)) => {
            eprintln!("wgpu: running on {info}");
            Some(d)
        }
        Err(e) => {
            eprintln!("wgpu: skipped ({e})");
            None
        }
    }
}

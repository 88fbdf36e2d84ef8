//! The GPU memory budget (`--max-gpu-memory`): a model on a GPU streams its layers to the
//! GPU when they do not fit it, with the same numbers; a model or prompt whose estimate is
//! over it is refused before anything is placed there; a model on the CPU ignores it.
//!
//! Its own test binary: the budget is process-wide, and the other suites must not run under
//! a small one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdla_model::{Device, Model, ModelError, Processing, memory, to_vec};
use rdla_testutil as common;

const NAME: &str = "llama_gqa";

fn load(device: &Device) -> rdla_model::Result<Model> {
    Model::load(
        &common::fixture(NAME),
        device,
        Processing::default(),
        &mut |_| true,
    )
}

fn last_logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    to_vec(m.run(ids).unwrap().last_logits).unwrap()
}

#[test]
fn layers_stream_to_the_gpu_under_its_budget_with_the_same_numbers() {
    let ids = common::Reference::load(NAME).token_ids();
    memory::clear_gpu_budget();
    let cpu = load(&Device::flex()).unwrap();
    let reference = last_logits(&cpu, &ids);
    let cfg = cpu.config.clone();

    // a CPU model ignores the GPU budget, however small
    memory::set_gpu_budget(1);
    let cpu_small = load(&Device::flex()).unwrap();
    assert_eq!(
        cpu_small.streams_layers(),
        memory::forced_layer_cache().is_some()
    );
    let diff = common::max_abs_diff(&last_logits(&cpu_small, &ids), &reference);
    assert!(diff <= 1e-5, "CPU under a GPU budget: {diff}");

    let Some(gpu) = common::wgpu_device(module_path!()) else {
        memory::clear_gpu_budget();
        return;
    };
    // below the model-wide tensors and two layers: refused before loading, naming the budget
    let err = load(&gpu).unwrap_err();
    let ModelError::OverBudget { which, .. } = &err else {
        panic!("expected OverBudget, got {err}");
    };
    assert_eq!(*which, "GPU memory");
    let text = err.to_string();
    assert!(
        text.contains("GPU memory budget") && text.contains("--max-gpu-memory"),
        "{text}"
    );

    // room for the model-wide tensors, two layers and the reserved prompt, not for every
    // layer: the layers stream to the GPU, and the numbers are the CPU's
    let fixed = memory::global_bytes(&cfg, false) + 2 * memory::block_bytes(&cfg);
    let prompt = memory::prompt_bytes(&cfg, memory::RESERVED_PROMPT.min(cfg.n_ctx));
    assert!(
        fixed + prompt < memory::model_bytes(&cfg, false) + prompt,
        "the fixture is too small to stream"
    );
    memory::set_gpu_budget(fixed + prompt);
    let streamed = load(&gpu).unwrap();
    assert!(streamed.streams_layers());
    let diff = common::max_abs_diff(&last_logits(&streamed, &ids), &reference);
    assert!(diff <= 1e-4, "streamed to the GPU: {diff}");

    // a prompt whose estimate is over the GPU budget is refused before its forward pass
    memory::set_gpu_budget(fixed + memory::prompt_bytes(&cfg, 2));
    let long: Vec<u32> = (0..cfg.n_ctx.min(256) as u32).map(|i| i % 7 + 1).collect();
    let err = streamed.run(&long).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::OverBudget {
                which: "GPU memory",
                ..
            }
        ),
        "{err}"
    );
    memory::clear_gpu_budget();
}

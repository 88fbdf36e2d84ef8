//! Through the session: a prompt that fits the memory budget only with the model's layers
//! streamed is computed (the model switches to streaming) with the resident model's numbers.
//!
//! Its own test binary: the budget is process-wide.
#![allow(clippy::unwrap_used)]

use rdla_attrib::MlpMode;
use rdla_model::{Device, DeviceInfo, memory, spill};
use rdla_session::{ModelSource, Request, Session};
use rdla_testutil::{Reference, fixture};

#[test]
fn a_computation_over_the_resident_budget_streams_the_layers_with_the_same_numbers() {
    let name = "llama_gqa";
    memory::clear_budget();
    spill::set_forced(false);
    let r = Reference::load(name);
    let mut s = Session::open(
        ModelSource::Path(fixture(name)),
        &Device::flex(),
        DeviceInfo::cpu(None),
        &mut |_| true,
    )
    .unwrap();
    // a short prompt: on this tiny fixture a longer one's cache would rather spill
    let prompt: String = r.str("prompt").split_whitespace().take(1).collect();
    let req = Request {
        prompt,
        answer: r.str("answer"),
        answer_id: None,
        foil: None,
        bos: true,
        mlp_mode: MlpMode::FrozenGate,
    };
    let before = s.compute(&req).unwrap().clone();
    if s.model().streams_layers() {
        // CI's second pass streams every model from the start: nothing to switch
        assert!(memory::forced_layer_cache().is_some());
        return;
    }
    let m = s.model();
    let (cfg, n) = (&m.config, before.tokens.ids.len());
    let prompt = memory::prompt_bytes(cfg, n);
    let budget =
        memory::global_bytes(cfg, m.tokens_in_place()) + 2 * memory::block_bytes(cfg) + prompt;
    assert!(
        m.held_bytes() + prompt - memory::spillable_bytes(cfg, n) > budget,
        "{n} tokens: the fixture's layers are too small for this test"
    );
    memory::set_budget(budget);
    let after = s.compute(&req).unwrap().clone();
    memory::clear_budget();
    assert!(s.model().streams_layers(), "the model did not switch");
    assert!(s.info().facts.memory_line().contains("layers stream"));
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + a.abs());
    assert!(close(
        before.overview.target_value,
        after.overview.target_value
    ));
    assert_eq!(before.root.children.len(), after.root.children.len());
    for (a, b) in before.root.children.iter().zip(&after.root.children) {
        assert!(
            close(a.value, b.value),
            "{:?}: {} vs {}",
            a.step,
            a.value,
            b.value
        );
    }
}

//! A resident model switches to streaming its layers when a prompt fits the budget only that
//! way: the prompt is accepted instead of refused, the layers are read where they lie from
//! then on, and every number is the one the resident model gives.
//!
//! Its own test binary: the budget is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdla_model::{Device, Model, ModelError, Processing, memory, spill, to_vec};
use rdla_testutil as common;

#[test]
fn a_prompt_that_fits_only_streamed_switches_a_resident_model_to_streaming() {
    for name in ["llama_gqa", "gemma2"] {
        // a short prompt: on these tiny fixtures a longer one's cache would rather spill
        let ids = common::Reference::load(name).token_ids()[..3].to_vec();
        memory::clear_budget();
        spill::set_forced(false);
        let load = || {
            Model::load(
                &common::fixture(name),
                &Device::flex(),
                Processing::default(),
                &mut |_| true,
            )
            .unwrap()
        };
        let mut m = load();
        let resident = m.run(&ids).unwrap();
        let (cfg, n) = (m.config.clone(), ids.len());
        let (prompt, spillable) = (
            memory::prompt_bytes(&cfg, n),
            memory::spillable_bytes(&cfg, n),
        );
        let in_place = m.tokens_in_place();
        let streamed = memory::global_bytes(&cfg, in_place) + 2 * memory::block_bytes(&cfg);
        if m.streams_layers() {
            // CI's second pass streams every model from the start (RDLA_LAYER_CACHE): there is
            // nothing to switch, and the prompt is planned as before
            assert!(
                memory::forced_layer_cache().is_some(),
                "{name} streams unasked"
            );
            assert!(!m.plan_prompt_or_stream(&ids).unwrap());
            continue;
        }
        // a budget that holds the streamed model and the whole prompt, but not the resident
        // layers beside even the spilled prompt
        let budget = streamed + prompt;
        assert!(
            m.held_bytes() + prompt - spillable > budget,
            "{name}: the fixture's layers are too small for this test: held {} prompt {prompt} spillable {spillable} streamed {streamed}",
            m.held_bytes()
        );
        memory::set_budget(budget);
        let err = m.plan_prompt(&ids).unwrap_err();
        assert!(
            matches!(err, ModelError::OverBudget { .. }),
            "{name}: {err}"
        );
        // what a window checks while the prompt is typed: it will fit
        m.check_tokens(&ids).unwrap();
        assert!(!m.streams_layers());
        // the computation switches the model
        assert!(
            !m.plan_prompt_or_stream(&ids).unwrap(),
            "{name}: held cache"
        );
        assert!(m.streams_layers(), "{name}");
        let before = memory::streamed_layers();
        let again = m.run(&ids).unwrap();
        assert!(
            memory::streamed_layers() > before,
            "{name}: no layer was read from the checkpoint"
        );
        let (a, b) = (
            common::cache_tensors(&resident),
            common::cache_tensors(&again),
        );
        assert_eq!(a.len(), b.len());
        for ((what, x), (_, y)) in a.iter().zip(&b) {
            let scale = x.iter().fold(1f32, |s, v| s.max(v.abs()));
            let d = common::max_abs_diff(x, y);
            assert!(d <= 1e-5 * scale, "{name} {what}: {d}");
        }
        let logits = to_vec(again.last_logits.clone()).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));

        // a budget too small even streamed: refused, and the model is left as it is
        memory::clear_budget();
        let mut m = load();
        memory::set_budget(memory::global_bytes(&cfg, in_place));
        assert!(m.check_tokens(&ids).is_err());
        let err = m.plan_prompt_or_stream(&ids).unwrap_err();
        assert!(
            matches!(err, ModelError::OverBudget { .. }),
            "{name}: {err}"
        );
        assert!(!m.streams_layers(), "{name}: switched for nothing");
        memory::clear_budget();
    }
}

//! The prompt's cache spilled to a memory-mapped temporary file: when a prompt does not fit
//! the budget beside the model but everything except its cache does, the forward pass writes
//! the cache into a file and every number is the one an in-memory cache gives; a budget too
//! small even so is refused, naming the spilled estimate.
//!
//! Its own test binary: the budget and the forcing switch are process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdla_model::{Device, Model, ModelError, Processing, memory, spill, to_vec};
use rdla_testutil as common;

/// `a` and `b` equal to the bit, and finite.
fn same(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(a.iter().all(|x| x.is_finite()), "{what}: not finite");
    // the same arithmetic on the same inputs: equal to the bit
    assert!(
        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{what}: the spilled cache differs (max diff {})",
        common::max_abs_diff(a, b)
    );
}

/// Every cached tensor of `a` equal to the bit to `b`'s.
fn same_cache(a: &rdla_model::Cache, b: &rdla_model::Cache) {
    let (a, b) = (common::cache_tensors(a), common::cache_tensors(b));
    assert_eq!(a.len(), b.len());
    for ((what, x), (_, y)) in a.iter().zip(&b) {
        same(what, x, y);
    }
}

#[test]
fn a_cache_over_the_budget_spills_to_a_file_with_the_same_numbers() {
    let name = "llama_gqa";
    let ids = common::Reference::load(name).token_ids();
    memory::clear_budget();
    spill::set_forced(false);
    let m = Model::load(
        &common::fixture(name),
        &Device::flex(),
        Processing::default(),
        &mut |_| true,
    )
    .unwrap();
    assert!(
        !m.plan_prompt(&ids).unwrap(),
        "no budget: the cache is held"
    );
    let held = m.run(&ids).unwrap();
    assert_eq!(memory::spilled_bytes(), 0);

    let (cfg, n) = (&m.config, ids.len());
    let prompt = memory::prompt_bytes(cfg, n);
    let spillable = memory::spillable_bytes(cfg, n);
    let beside = if m.streams_layers() {
        memory::global_bytes(cfg, m.tokens_in_place()) + 2 * memory::block_bytes(cfg)
    } else {
        m.held_bytes()
    };
    // the prompt does not fit, its cache spilled does
    memory::set_budget(beside + prompt - spillable / 2);
    assert!(
        m.plan_prompt(&ids).unwrap(),
        "over the budget: the cache spills"
    );
    let spilled = m.run(&ids).unwrap();
    assert!(
        memory::spilled_bytes() >= spillable,
        "{} bytes spilled, {spillable} expected",
        memory::spilled_bytes()
    );
    same_cache(&spilled, &held);
    // a spilled cache is read like a held one (queries and patterns recomputed from it)
    let last = n - 1;
    let (a, b) = (
        m.pattern_rows(&spilled, 0..cfg.n_layers, last).unwrap(),
        m.pattern_rows(&held, 0..cfg.n_layers, last).unwrap(),
    );
    same("pattern rows", &to_vec(a).unwrap(), &to_vec(b).unwrap());

    // too small even with the cache in a file: refused, naming the spilled estimate
    memory::set_budget(beside + (prompt - spillable) / 2);
    let err = m.run(&ids).unwrap_err();
    assert!(
        matches!(err, ModelError::OverBudget { .. }) && err.to_string().contains("spilled"),
        "{err}"
    );

    // forced (as CI's second pass does for every suite): spilled whatever the budget
    memory::clear_budget();
    spill::set_forced(true);
    assert!(m.plan_prompt(&ids).unwrap());
    same_cache(&m.run(&ids).unwrap(), &held);
    spill::set_forced(false);
}

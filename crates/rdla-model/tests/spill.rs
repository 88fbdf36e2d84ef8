//! The prompt's cache spilled to a memory-mapped temporary file: when a prompt does not fit
//! the budget beside the model but everything except its cache does, the forward pass writes
//! the cache into a file and every number is the one an in-memory cache gives; a budget too
//! small even so is refused, naming the spilled estimate.
//!
//! Its own test binary: the budget and the forcing switch are process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdla_model::{Device, Model, ModelError, Processing, memory, spill, to_vec};
use rdla_testutil as common;

fn same(what: &str, a: burn::tensor::Tensor<1>, b: burn::tensor::Tensor<1>) {
    let (a, b) = (to_vec(a).unwrap(), to_vec(b).unwrap());
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(a.iter().all(|x| x.is_finite()), "{what}: not finite");
    // the same arithmetic on the same inputs: equal to the bit
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{what}: the spilled cache differs (max diff {})",
        common::max_abs_diff(&a, &b)
    );
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
    same(
        "last logits",
        spilled.last_logits.clone(),
        held.last_logits.clone(),
    );
    let flat = |t: burn::tensor::Tensor<3>| t.flatten::<1>(0, 2);
    same(
        "components",
        flat(spilled.components.clone()),
        flat(held.components.clone()),
    );
    same(
        "keys",
        spilled.k.clone().flatten(0, 3),
        held.k.clone().flatten(0, 3),
    );
    same(
        "values",
        spilled.v.clone().flatten(0, 3),
        held.v.clone().flatten(0, 3),
    );
    // a spilled cache is read like a held one (queries and patterns recomputed from it)
    let last = n - 1;
    let (a, b) = (
        m.pattern_rows(&spilled, 0..cfg.n_layers, last).unwrap(),
        m.pattern_rows(&held, 0..cfg.n_layers, last).unwrap(),
    );
    same("pattern rows", a.flatten(0, 2), b.flatten(0, 2));

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
    same(
        "forced spill",
        m.run(&ids).unwrap().last_logits,
        held.last_logits.clone(),
    );
    spill::set_forced(false);
}

//! Completeness is a test: at every node, value = Σ children + remainder.
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use common::{Reference, TL_FIXTURES, load_model};
use rdla_attrib::{
    AttribError, Comp, Engine, Expansion, MlpMode, NodeKind, Path, Step, Target, Versus,
};
use rdla_model::Device;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parse and expand: a syntax error is an error like an invalid step.
fn expand_str(engine: &Engine<'_>, path: &str) -> Result<Expansion, AttribError> {
    engine.expand(&Path::parse(path)?)
}

fn relative_residual(ex: &rdla_attrib::Expansion) -> f64 {
    if let Some(t) = &ex.table {
        // a score: value = Σ table cells
        let cells: f64 = t.values.iter().flatten().map(|v| f64::from(v.abs())).sum();
        return f64::from(ex.residual.abs()) / (f64::from(ex.value.abs()) + cells).max(1e-12);
    }
    let scale: f64 = f64::from(ex.value.abs())
        + f64::from(ex.bias.abs())
        + ex.children
            .iter()
            .map(|c| f64::from(c.value.abs()))
            .sum::<f64>();
    f64::from(ex.residual.abs()) / scale.max(1e-12)
}

/// The reference's answer logit.
fn answer_of(r: &Reference) -> Target {
    Target::Logit {
        answer: r.u32("answer_id"),
    }
}

#[test]
fn two_hundred_random_paths_to_depth_five_add_up() {
    for (fi, name) in TL_FIXTURES.iter().enumerate() {
        let r = Reference::load(name);
        let model = load_model(name, &Device::flex());
        let cache = model.run(&r.token_ids()).unwrap();
        for target in [
            Target::Logit {
                answer: r.u32("answer_id"),
            },
            Target::Diff {
                answer: r.u32("answer_id"),
                foil: r.u32("foil_id"),
            },
        ] {
            let engine = Engine::new(&model, &cache, target, MlpMode::FrozenGate).unwrap();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (fi as u64 + 1));
            let mut checked = 0;
            let mut max_depth = 0;
            let (mut scores, mut neurons) = (0, 0);
            for _ in 0..200 {
                let mut path = Path::root();
                for _ in 0..=5 {
                    let ex = engine.expand(&path).unwrap();
                    if ex.leaf {
                        break;
                    }
                    let rel = relative_residual(&ex);
                    assert!(
                        rel <= 1e-5,
                        "{name}: `{path}` residual {} (relative {rel:.2e})",
                        ex.residual
                    );
                    checked += 1;
                    max_depth = max_depth.max(path.depth());
                    if path.depth() == 5 || ex.children.is_empty() {
                        break;
                    }
                    // prefer non-leaf children so walks go deep
                    let deep: Vec<_> = ex
                        .children
                        .iter()
                        .filter(|c| {
                            !matches!(
                                c.step,
                                Step::Comp(Comp::Embed | Comp::Pos)
                                    | Step::Source {
                                        comp: Comp::Embed | Comp::Pos,
                                        ..
                                    }
                            )
                        })
                        .collect();
                    // a third of the time, leave the sum: a head's attention score (or a
                    // contrast), an MLP's neuron
                    if rng.below(3) == 0 {
                        if let NodeKind::Head { .. } = ex.kind {
                            let keys = ex.source_positions();
                            let key = keys[rng.below(keys.len())];
                            let other = keys[rng.below(keys.len())];
                            let versus = match rng.below(3) {
                                0 => Versus::Mean,
                                1 if other != key => Versus::Key(other),
                                _ => Versus::Nothing,
                            };
                            scores += 1;
                            path = path.child(Step::Score { key, versus });
                            continue;
                        }
                        if let Some(n) = &ex.neurons {
                            neurons += 1;
                            path = path.child(n[rng.below(n.len())].step);
                            continue;
                        }
                    }
                    let pick = if deep.is_empty() || rng.below(8) == 0 {
                        &ex.children[rng.below(ex.children.len())]
                    } else {
                        deep[rng.below(deep.len())]
                    };
                    path = path.child(pick.step);
                }
            }
            assert!(checked >= 400, "{name}: only {checked} nodes checked");
            assert_eq!(max_depth, 5, "{name}: walks never reached depth 5");
            assert!(
                scores >= 10 && neurons >= 10,
                "{name}: the walks took {scores} score and {neurons} neuron steps"
            );
        }
    }
}

#[test]
fn overview_levels_agree_with_each_other_and_with_expansions() {
    for name in TL_FIXTURES {
        let r = Reference::load(name);
        let model = load_model(name, &Device::flex());
        let cache = model.run(&r.token_ids()).unwrap();
        let engine = Engine::new(&model, &cache, answer_of(&r), MlpMode::FrozenGate).unwrap();
        let ov = engine.overview().unwrap();
        // the head breakdown a layer at a time (as for thousands of positions) is the same
        let one_layer_chunks = engine.overview_in_chunks(1).unwrap();
        assert_eq!(one_layer_chunks.head_breakdown, ov.head_breakdown, "{name}");
        assert_eq!(one_layer_chunks.head_dla, ov.head_dla, "{name}");
        assert_eq!(one_layer_chunks.head_bias, ov.head_bias, "{name}");
        // computed during the forward pass, along the unscaled readout and divided by the
        // final scale at the end (what a streaming model does): the same to float rounding
        let (_, fused) = rdla_attrib::run_with_overview(
            &model,
            &r.token_ids(),
            answer_of(&r),
            MlpMode::FrozenGate,
            &mut |_, _| true,
        )
        .unwrap();
        for (what, a, b) in [
            ("components", &fused.components, &ov.components),
            ("attn_bias", &fused.attn_bias, &ov.attn_bias),
            ("head_dla", &fused.head_dla, &ov.head_dla),
            ("head_bias", &fused.head_bias, &ov.head_bias),
            ("head_breakdown", &fused.head_breakdown, &ov.head_breakdown),
            ("mlp_breakdown", &fused.mlp_breakdown, &ov.mlp_breakdown),
            ("mlp_bias", &fused.mlp_bias, &ov.mlp_bias),
        ] {
            assert_eq!(a.shape, b.shape, "{name}: {what}");
            let scale = b.data.iter().fold(1f32, |m, x| m.max(x.abs()));
            for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
                // written so that a NaN on either side fails
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{name}: {what}[{i}] {x} (during the forward) vs {y}"
                );
            }
        }
        assert_eq!(fused.target_value, ov.target_value, "{name}");
        let (l_n, h_n) = (ov.head_dla.shape[0], ov.head_dla.shape[1]);
        // root: Σ components = target value
        let total: f32 = ov.components.data.iter().sum();
        assert!(
            (total - ov.target_value).abs() < 1e-4,
            "{name}: root {total} vs {}",
            ov.target_value
        );
        for l in 0..l_n {
            // heads + bias = the attention layer's component value
            let heads: f32 = (0..h_n).map(|h| ov.head_dla.at(&[l, h])).sum();
            let attn = ov.components.data[ov.layout.index(Comp::Attn(l)).unwrap()];
            assert!(
                (heads + ov.attn_bias.data[l] - attn).abs() < 1e-4,
                "{name}: L{l}.attn"
            );
            // MLP breakdown + bias = the MLP's component value
            let mlp: f32 = (0..ov.mlp_breakdown.shape[1])
                .map(|c| ov.mlp_breakdown.at(&[l, c]))
                .sum();
            let m = ov.components.data[ov.layout.index(Comp::Mlp(l)).unwrap()];
            assert!(
                (mlp + ov.mlp_bias.data[l] - m).abs() < 1e-4,
                "{name}: L{l}.mlp"
            );
            // the overview's head breakdown is what expanding the head gives
            for h in 0..h_n {
                let ex = engine
                    .expand(&Path::parse(&format!("L{l}.attn/H{h}")).unwrap())
                    .unwrap();
                for c in &ex.children {
                    if let Step::Source { pos, comp } = c.step {
                        let o = ov
                            .head_breakdown
                            .at(&[l, h, pos, ov.layout.index(comp).unwrap()]);
                        assert!(
                            (o - c.value).abs() < 1e-5,
                            "{name}: L{l}.attn/H{h}/{}",
                            c.step
                        );
                    }
                }
                assert!((ex.value - ov.head_dla.at(&[l, h])).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn gradient_mode_reports_its_residual() {
    // plain GELU, SwiGLU (gate path included) and a parallel-residual model
    for name in ["gpt2_tied", "llama_gqa", "neox_parallel"] {
        gradient_mode_residual(name);
    }
}

fn gradient_mode_residual(name: &str) {
    let r = Reference::load(name);
    let model = load_model(name, &Device::flex());
    let cache = model.run(&r.token_ids()).unwrap();
    let engine = Engine::new(
        &model,
        &cache,
        Target::Logit {
            answer: r.u32("answer_id"),
        },
        MlpMode::Gradient,
    )
    .unwrap();
    let n = model.config.n_layers;
    let mut nonzero = 0;
    for l in 0..n {
        let ex = engine
            .expand(&Path::parse(&format!("L{l}.mlp")).unwrap())
            .unwrap();
        let sum: f32 = ex.children.iter().map(|c| c.value).sum();
        assert!((ex.value - sum - ex.bias - ex.residual).abs() < 1e-4);
        if ex.residual.abs() > 1e-3 {
            nonzero += 1;
        }
    }
    assert!(
        nonzero > 0,
        "{name}: the gradient linearisation should not be exact"
    );
}

#[test]
fn rotary_and_parallel_models_have_their_own_children() {
    let r = Reference::load("neox_parallel");
    let model = load_model("neox_parallel", &Device::flex());
    let cache = model.run(&r.token_ids()).unwrap();
    let target = Target::Logit {
        answer: r.u32("answer_id"),
    };
    let engine = Engine::new(&model, &cache, target, MlpMode::FrozenGate).unwrap();
    let steps = |p: &str| -> Vec<String> {
        expand_str(&engine, p)
            .unwrap()
            .children
            .into_iter()
            .map(|c| c.step.to_string())
            .collect()
    };
    // no learned positions: no `pos` anywhere
    assert_eq!(steps("")[..3], ["embed", "L0.attn", "L0.mlp"]);
    let m = expand_str(&engine, "pos").unwrap_err().to_string();
    assert!(m.contains("step 1") && m.contains("embed, L0.attn"), "{m}");
    // parallel residual: an MLP reads resid_pre, not its own layer's attention
    assert_eq!(steps("L1.mlp"), ["embed", "L0.attn", "L0.mlp"]);
    assert!(expand_str(&engine, "L1.mlp/L1.attn").is_err());
    let q = cache.n_pos() - 1;
    assert!(steps("L1.attn/H0").contains(&format!("{q}:L0.mlp")));
    assert!(expand_str(&engine, &format!("L1.attn/H0/{q}:pos")).is_err());
}

#[test]
fn bad_paths_name_the_step_and_the_choices() {
    let r = Reference::load("gptneo_local");
    let model = load_model("gptneo_local", &Device::flex());
    let cache = model.run(&r.token_ids()).unwrap();
    let engine = Engine::new(&model, &cache, answer_of(&r), MlpMode::FrozenGate).unwrap();
    let msg = |p: &str| expand_str(&engine, p).unwrap_err().to_string();
    let m = msg("L9.attn");
    assert!(m.contains("step 1") && m.contains("L3.mlp"), "{m}");
    let m = msg("L1.attn/H7");
    assert!(m.contains("step 2") && m.contains("H3"), "{m}");
    // layer 1 is local with window 4: from the last position (14) only 11..=14 are visible
    let m = msg("L1.attn/H0/2:embed");
    assert!(m.contains("11..=14"), "{m}");
    // sources must be upstream of the head's layer
    let m = msg("L1.attn/H0/13:L1.attn");
    assert!(m.contains("L0.mlp"), "{m}");
    let m = msg("L2.mlp/L2.mlp");
    assert!(m.contains("step 2"), "{m}");
    let m = msg("L0.attn/H0/14:embed/H1");
    assert!(m.contains("leaf"), "{m}");
    assert!(expand_str(&engine, "L2.attn//H1").is_err());
    // a bias child is a leaf whose value is its parent's remainder
    let parent = expand_str(&engine, "L2.attn").unwrap();
    let b = expand_str(&engine, "L2.attn/bias").unwrap();
    assert!((b.value - parent.bias).abs() < 1e-6 && b.leaf);
}

/// Without `fold_value_biases`, Qwen2's value biases stay per key/value head: every head's
/// remainder is `b_V[kv(h)] W_O[h] · r` (times its attention mass), heads still add up, and the
/// attention layer's total equals the folded model's.
#[test]
fn unfolded_grouped_value_biases_add_up() {
    let r = Reference::load("qwen2");
    let folded = load_model("qwen2", &Device::flex());
    let unfolded = rdla_model::Model::load(
        &common::fixture("qwen2"),
        &Device::flex(),
        rdla_model::Processing {
            fold_value_biases: false,
            ..rdla_model::Processing::default()
        },
        &mut |_| true,
    )
    .unwrap();
    assert!(unfolded.config.n_kv_heads < unfolded.config.n_heads);
    let target = Target::Logit {
        answer: r.u32("answer_id"),
    };
    let ids = r.token_ids();
    let (cf, cu) = (folded.run(&ids).unwrap(), unfolded.run(&ids).unwrap());
    let ef = Engine::new(&folded, &cf, target, MlpMode::FrozenGate).unwrap();
    let eu = Engine::new(&unfolded, &cu, target, MlpMode::FrozenGate).unwrap();
    let (of, ou) = (ef.overview().unwrap(), eu.overview().unwrap());
    assert!(
        ou.head_bias.data.iter().any(|b| b.abs() > 1e-3),
        "no value bias to test"
    );
    for l in 0..unfolded.config.n_layers {
        let total = |ov: &rdla_attrib::Overview| {
            (0..ov.head_dla.shape[1])
                .map(|h| ov.head_dla.at(&[l, h]))
                .sum::<f32>()
                + ov.attn_bias.data[l]
        };
        assert!((total(&of) - total(&ou)).abs() < 1e-4, "L{l}");
        for h in 0..unfolded.config.n_heads {
            let ex = expand_str(&eu, &format!("L{l}.attn/H{h}")).unwrap();
            assert!(relative_residual(&ex) < 1e-5, "L{l}.H{h}: {}", ex.residual);
            assert!((ex.bias - ou.head_bias.at(&[l, h])).abs() < 1e-5);
            assert!((ex.value - ou.head_dla.at(&[l, h])).abs() < 1e-4);
        }
    }
}

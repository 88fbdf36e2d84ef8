//! Attribution against an independent reference computed from TransformerLens 2.18's cache
//! (`tests/fixtures/generate.py`).
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use common::{Reference, TL_FIXTURES, load_model, max_abs_diff};
use rdla_attrib::{Engine, MlpMode, Path, Target};
use rdla_model::{Device, Model};

const TOL: f32 = 1e-4;

fn check_overview(name: &str, model: &Model, r: &Reference, target: Target, suffix: &str) -> f32 {
    let cache = model.run(&r.token_ids()).unwrap();
    let engine = Engine::new(model, &cache, target, MlpMode::FrozenGate).unwrap();
    let ov = engine.overview().unwrap();
    let mut worst = 0.0f32;
    let mut check = |what: &str, ours: &[f32], key: &str| {
        let theirs = r.tensor(&format!("{key}{suffix}"));
        let e = max_abs_diff(ours, &theirs);
        assert!(
            e <= TOL,
            "{name}: {what}{suffix} differs from the TransformerLens reference by {e}"
        );
        worst = common::worse(worst, e);
    };
    check("component DLA", &ov.components.data, "component_dla");
    check("head DLA", &ov.head_dla.data, "head_dla");
    check("attention bias", &ov.attn_bias.data, "attn_bias_dla");
    assert_eq!(
        ov.head_breakdown.shape,
        r.shape(&format!("head_breakdown{suffix}"))
    );
    check("head breakdown", &ov.head_breakdown.data, "head_breakdown");
    check("MLP breakdown", &ov.mlp_breakdown.data, "mlp_breakdown");
    check("MLP bias", &ov.mlp_bias.data, "mlp_bias");
    let tv = r.json[format!("target_value{suffix}")].as_f64().unwrap() as f32;
    assert!(
        (ov.target_value - tv).abs() <= TOL,
        "{name}: target value {} vs {tv}",
        ov.target_value
    );
    worst
}

fn check_fixture(name: &str, device: &Device) -> f32 {
    let r = Reference::load(name);
    let model = load_model(name, device);
    let answer = r.u32("answer_id");
    let foil = r.u32("foil_id");
    let a = check_overview(name, &model, &r, Target::Logit { answer }, "");
    let b = check_overview(name, &model, &r, Target::Diff { answer, foil }, "_diff");

    // recorded expansions, depth 0..4, including heads at earlier destinations and MLPs at
    // earlier positions
    let cache = model.run(&r.token_ids()).unwrap();
    let engine = Engine::new(
        &model,
        &cache,
        Target::Logit { answer },
        MlpMode::FrozenGate,
    )
    .unwrap();
    let mut worst = common::worse(a, b);
    let expansions = r.json["expansions"].as_array().unwrap();
    let mut depth2 = 0;
    for ex in expansions {
        let path = ex["path"].as_str().unwrap();
        let ours = engine.expand(&Path::parse(path).unwrap()).unwrap();
        if Path::parse(path).unwrap().depth() >= 2 {
            depth2 += 1;
        }
        let val = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
        let mut e = common::max_abs_diff(
            &[ours.value, ours.bias],
            &[val(&ex["value"]), val(&ex["bias"])],
        );
        let theirs = ex["children"].as_array().unwrap();
        let steps: Vec<&str> = theirs.iter().map(|c| c["step"].as_str().unwrap()).collect();
        let our_steps: Vec<String> = ours.children.iter().map(|c| c.step.to_string()).collect();
        assert_eq!(our_steps, steps, "{name}: children of `{path}`");
        let ours_v: Vec<f32> = ours.children.iter().map(|c| c.value).collect();
        let theirs_v: Vec<f32> = theirs.iter().map(|t| val(&t["value"])).collect();
        e = common::worse(e, common::max_abs_diff(&ours_v, &theirs_v));
        assert!(e <= TOL, "{name}: expansion of `{path}` differs by {e}");
        worst = common::worse(worst, e);
    }
    assert!(depth2 >= 2, "{name}: needs at least two depth-2 expansions");
    eprintln!("{name}: attribution max abs error vs TransformerLens {worst:.3e}");
    worst
}

#[test]
fn cpu_attribution_matches_transformer_lens() {
    for name in TL_FIXTURES {
        check_fixture(name, &Device::flex());
    }
}

#[test]
fn wgpu_attribution_matches_transformer_lens() {
    if let Some(dev) = common::wgpu_device(module_path!()) {
        for name in TL_FIXTURES {
            check_fixture(name, &dev);
        }
    }
}

/// A GGUF file attributes exactly as the checkpoint gguf-py dequantises it to (the same
/// weights as safetensors): the overview and every recorded expansion agree, for every family
/// rdla reads from GGUF.
#[test]
fn gguf_attributions_equal_the_dequantised_checkpoints() {
    use rdla_model::Processing;
    let gguf_dir = common::fixtures_dir().join("gguf");
    for name in common::GGUF_FIXTURES {
        let r = Reference::load(name);
        let dev = Device::flex();
        let from_gguf = Model::load(
            &gguf_dir.join(format!("{name}.gguf")),
            &dev,
            Processing::default(),
            &mut |_| true,
        )
        .unwrap();
        let from_st = common::gguf_twin(name, &dev);
        let ids = r.token_ids();
        let target = Target::Diff {
            answer: r.u32("answer_id"),
            foil: r.u32("foil_id"),
        };
        let (ca, cb) = (from_gguf.run(&ids).unwrap(), from_st.run(&ids).unwrap());
        let a = Engine::new(&from_gguf, &ca, target, MlpMode::FrozenGate).unwrap();
        let b = Engine::new(&from_st, &cb, target, MlpMode::FrozenGate).unwrap();
        let (oa, ob) = (a.overview().unwrap(), b.overview().unwrap());
        let mut worst = max_abs_diff(&[oa.target_value], &[ob.target_value]);
        for (x, y) in [
            (&oa.components, &ob.components),
            (&oa.head_dla, &ob.head_dla),
            (&oa.head_breakdown, &ob.head_breakdown),
            (&oa.mlp_breakdown, &ob.mlp_breakdown),
        ] {
            worst = common::worse(worst, max_abs_diff(&x.data, &y.data));
        }
        for ex in r.json["expansions"].as_array().unwrap() {
            let p = Path::parse(ex["path"].as_str().unwrap()).unwrap();
            let (ea, eb) = (a.expand(&p).unwrap(), b.expand(&p).unwrap());
            let va: Vec<f32> = ea.children.iter().map(|c| c.value).collect();
            let vb: Vec<f32> = eb.children.iter().map(|c| c.value).collect();
            worst = common::worse(worst, max_abs_diff(&va, &vb));
            worst = common::worse(worst, max_abs_diff(&[ea.value], &[eb.value]));
        }
        assert!(
            worst <= TOL,
            "{name}: GGUF and its safetensors attributions differ by {worst}"
        );
        eprintln!("{name}: GGUF vs dequantised safetensors, attributions within {worst:.2e}");
    }
}

/// A census's head totals of a whole batch at once (`head_totals_batch`, over one forward
/// pass of several prompts) equal each prompt's own engine over its own forward pass —
/// every root child, attention bias, head value, head bias and every head's summed sources —
/// on every family, for prompts of equal lengths (computed together; the last layer at the
/// last positions only), of mixed lengths (padded, computed prompt by prompt) and sharing
/// their opening tokens (run once), with logit and logit-difference targets mixed.
#[test]
fn head_totals_of_a_batch_equal_each_prompts_own() {
    for name in TL_FIXTURES {
        let model = load_model(name, &Device::flex());
        if model.streams_layers() || rdla_model::spill::forced() {
            continue; // a batch is refused there (tested in rdla-model's tl_parity)
        }
        let r = Reference::load(name);
        let ids = r.token_ids();
        let v = model.config.d_vocab as u32;
        let rev: Vec<u32> = ids.iter().rev().copied().collect();
        let shifted: Vec<u32> = ids.iter().map(|&t| (t + 7) % v).collect();
        let short: Vec<u32> = shifted[..ids.len() / 2].to_vec();
        let (answer, foil) = (r.u32("answer_id"), r.u32("foil_id"));
        let targets = [
            Target::Logit { answer },
            Target::Diff { answer, foil },
            Target::Diff {
                answer: foil,
                foil: (answer + 1) % v,
            },
        ];
        // the reference's first half, then the others' second halves: a shared opening
        let k = ids.len() / 2;
        let opened =
            |rest: &[u32]| -> Vec<u32> { ids[..k].iter().chain(&rest[k..]).copied().collect() };
        let (o_rev, o_shifted) = (opened(&rev), opened(&shifted));
        for (prompts, what) in [
            (vec![&ids, &rev, &shifted], "equal lengths"),
            (vec![&ids, &short, &rev], "mixed lengths"),
            (vec![&o_rev, &ids, &o_shifted], "a shared opening"),
        ] {
            let slices: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
            let run = model.run_batch_whole(&slices, true).unwrap();
            assert_eq!(run.equal_lengths(), what != "mixed lengths", "{name}");
            // prompts of equal lengths skip the last layer's other positions where they can
            // (computed together: short prompts are; a prompt of 2^25 tokens would not be)
            assert!(rdla_attrib::takes_whole(&model, ids.len()), "{name}");
            assert!(!rdla_attrib::takes_whole(&model, 1 << 25), "{name}");
            let can = !model.config.qk_norm && !model.config.post_norms;
            assert_eq!(run.whole, !(can && run.equal_lengths()), "{name} {what}");
            for sources in [false, true] {
                let got = rdla_attrib::head_totals_batch(&model, &run, &targets, sources).unwrap();
                assert_eq!(got.len(), prompts.len());
                for ((p, &t), g) in prompts.iter().zip(&targets).zip(&got) {
                    let cache = model.run(p).unwrap();
                    let want = Engine::new(&model, &cache, t, MlpMode::FrozenGate)
                        .unwrap()
                        .head_totals(sources)
                        .unwrap();
                    let scale = want
                        .head_dla
                        .data
                        .iter()
                        .chain(&want.components.data)
                        .fold(1.0f32, |m, x| m.max(x.abs()));
                    let tol = TOL * scale;
                    let check = |part: &str, a: &[f32], b: &[f32]| {
                        assert_eq!(a.len(), b.len(), "{name} {what}: {part}");
                        let e = max_abs_diff(a, b);
                        assert!(
                            e <= tol,
                            "{name} {what}: {part} differs by {e} (scale {scale})"
                        );
                    };
                    assert!(
                        (g.target_value - want.target_value).abs() <= tol,
                        "{name} {what}: target {} vs {}",
                        g.target_value,
                        want.target_value
                    );
                    check("root children", &g.components.data, &want.components.data);
                    check("attention biases", &g.attn_bias.data, &want.attn_bias.data);
                    check("head values", &g.head_dla.data, &want.head_dla.data);
                    check("head biases", &g.head_bias.data, &want.head_bias.data);
                    match (&g.head_sources, &want.head_sources) {
                        (Some(a), Some(b)) => {
                            assert_eq!(a.shape, b.shape, "{name}");
                            check("summed sources", &a.data, &b.data);
                        }
                        (None, None) => assert!(!sources),
                        _ => panic!("{name} {what}: sources kept in one and not the other"),
                    }
                }
            }
        }
    }
}

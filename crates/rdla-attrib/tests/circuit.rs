//! QK scores, neurons and vocabulary readouts against the TransformerLens references of
//! `tests/fixtures/generate_circuit.py` (`circuit.json`: exact decompositions computed in f64
//! from TL's cache and processed weights), on every TL fixture.
#![allow(clippy::unwrap_used)]

use rdla_testutil as common;

use common::{Reference, TL_FIXTURES, load_model, max_abs_diff};
use rdla_attrib::{Engine, Expansion, MlpMode, Path, Step, Target, Units};
use rdla_model::Device;
use serde_json::Value;

/// Absolute tolerance per unit of the node's magnitude (`max(1, |value|)`): f32 against f64.
const TOL: f32 = 1e-4;

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn load_circuit(name: &str) -> Value {
    let path = common::fixture(name).join("circuit.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A ranked list `(id, value)` against the reference's: the values in order, and the ids
/// wherever the reference's neighbours are not tied within the tolerance.
fn check_ranked(what: &str, ours: &[(u32, f32)], theirs: &[Value], key: &str, tol: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let t: Vec<(u32, f32)> = theirs
        .iter()
        .map(|x| {
            let id = x[key].as_u64().unwrap_or_else(|| {
                // neuron steps are "N{n}"
                x[key].as_str().unwrap()[1..].parse().unwrap()
            });
            (id as u32, f(&x["value"]))
        })
        .collect();
    let ov: Vec<f32> = ours.iter().map(|x| x.1).collect();
    let tv: Vec<f32> = t.iter().map(|x| x.1).collect();
    let e = max_abs_diff(&ov, &tv);
    assert!(e <= tol, "{what}: values differ by {e}: {ov:?} vs {tv:?}");
    for i in 0..t.len() {
        let near = |j: usize| t.get(j).is_some_and(|o| (o.1 - t[i].1).abs() <= 2.0 * tol);
        let tied = (i > 0 && near(i - 1)) || near(i + 1);
        if !tied {
            assert_eq!(ours[i].0, t[i].0, "{what}: entry {i}");
        }
    }
}

fn check_expansion(name: &str, ours: &Expansion, ex: &Value) -> f32 {
    let path = ex["path"].as_str().unwrap();
    let scale = f(&ex["value"]).abs().max(1.0);
    let tol = TOL * scale;
    let mut e = max_abs_diff(&[ours.value, ours.bias], &[f(&ex["value"]), f(&ex["bias"])]);
    let theirs = ex["children"].as_array().unwrap();
    let steps: Vec<&str> = theirs.iter().map(|c| c["step"].as_str().unwrap()).collect();
    let our_steps: Vec<String> = ours.children.iter().map(|c| c.step.to_string()).collect();
    assert_eq!(our_steps, steps, "{name}: children of `{path}`");
    let ov: Vec<f32> = ours.children.iter().map(|c| c.value).collect();
    let tv: Vec<f32> = theirs.iter().map(|c| f(&c["value"])).collect();
    e = common::worse(e, max_abs_diff(&ov, &tv));
    assert!(e <= tol, "{name}: `{path}` differs from TL by {e}");

    let is_score = ex.get("table").is_some();
    assert_eq!(ours.alternatives, is_score, "{name}: `{path}` alternatives");
    let in_score = path.contains("qk:");
    assert_eq!(
        ours.units,
        if in_score { Units::Score } else { Units::Logit },
        "{name}: `{path}` units"
    );
    match (&ours.table, ex.get("table")) {
        (Some(t), Some(want)) => {
            let rows: Vec<&str> = want["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let labels = |v: &[Step]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
            assert_eq!(labels(&t.rows), rows, "{name}: `{path}` table rows");
            assert_eq!(labels(&t.cols), rows, "{name}: `{path}` table cols");
            let cells: Vec<f32> = t.values.iter().flatten().copied().collect();
            let theirs: Vec<f32> = want["values"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(f))
                .collect();
            let te = max_abs_diff(&cells, &theirs);
            assert!(te <= tol, "{name}: `{path}` table differs by {te}");
            e = common::worse(e, te);
            // value − Σ cells: the value comes from the cached q̂ · k̂, the cells from the
            // components, so this checks the split
            assert!(
                ours.residual.abs() <= tol,
                "{name}: `{path}` table does not add up: {}",
                ours.residual
            );
        }
        (None, None) => {}
        (o, t) => panic!("{name}: `{path}` table: ours {o:?}, reference {t:?}"),
    }
    match (&ours.neurons, ex.get("neurons")) {
        (Some(n), Some(want)) => {
            let ours: Vec<(u32, f32)> = n
                .iter()
                .map(|c| match c.step {
                    rdla_attrib::Step::Neuron(n) => (n as u32, c.value),
                    other => panic!("`{other}` listed among the neurons"),
                })
                .collect();
            check_ranked(
                &format!("{name}: `{path}` neurons"),
                &ours,
                want.as_array().unwrap(),
                "step",
                tol,
            );
        }
        (None, None) => {}
        (o, t) => panic!("{name}: `{path}` neurons: ours {o:?}, reference {t:?}"),
    }
    match (&ours.tokens, ex.get("tokens")) {
        (Some(t), Some(want)) => {
            for (dir, list) in [("up", &t.up), ("down", &t.down)] {
                let ours: Vec<(u32, f32)> = list.iter().map(|x| (x.id, x.value)).collect();
                check_ranked(
                    &format!("{name}: `{path}` tokens {dir}"),
                    &ours,
                    want[dir].as_array().unwrap(),
                    "id",
                    TOL * 10.0,
                );
            }
        }
        (None, None) => {}
        (o, t) => panic!("{name}: `{path}` tokens: ours {o:?}, reference {t:?}"),
    }
    e
}

fn check_fixture(name: &str, device: &Device) {
    let r = Reference::load(name);
    let c = load_circuit(name);
    let model = load_model(name, device);
    let answer = c["answer_id"].as_u64().unwrap() as u32;
    assert_eq!(answer, r.u32("answer_id"));
    let (cache, target) = (model.run(&r.token_ids()).unwrap(), Target::Logit { answer });
    let engine = Engine::new(&model, &cache, target, MlpMode::FrozenGate).unwrap();
    let mut worst = 0.0f32;
    let (mut scores, mut contrasts, mut neurons) = (0, 0, 0);
    for ex in c["expansions"].as_array().unwrap() {
        let path = ex["path"].as_str().unwrap();
        let ours = engine.expand(&Path::parse(path).unwrap()).unwrap();
        worst = common::worse(worst, check_expansion(name, &ours, ex));
        scores += usize::from(ours.table.is_some());
        contrasts += usize::from(ours.table.is_some() && path.contains('-'));
        neurons += usize::from(path.rsplit('/').next().is_some_and(|s| s.starts_with('N')));
    }
    assert!(
        scores >= 4 && contrasts >= 2 && neurons >= 3,
        "{name}: too few circuit nodes"
    );
    eprintln!("{name}: circuit nodes max abs error vs TransformerLens {worst:.3e}");
}

#[test]
fn scores_neurons_and_tokens_match_transformer_lens() {
    for name in TL_FIXTURES {
        check_fixture(name, &Device::flex());
    }
}

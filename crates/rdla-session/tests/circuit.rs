//! Tracing and the causal check, through the session layer, on the TL fixtures.
#![allow(clippy::unwrap_used)]

use rdla_attrib::trace::TraceOptions;
use rdla_attrib::{MlpMode, Path};
use rdla_model::model::ablate::AblationMode;
use rdla_model::{Device, DeviceInfo};
use rdla_session::{ModelSource, Request, Session};
use rdla_testutil::{Reference, TL_FIXTURES, fixture};

fn session(name: &str) -> Session {
    let r = Reference::load(name);
    let mut s = Session::open(
        ModelSource::Path(fixture(name)),
        &Device::flex(),
        DeviceInfo::cpu(None),
        &mut |_| true,
    )
    .unwrap();
    let req = Request {
        prompt: r.str("prompt"),
        answer: r.str("answer"),
        answer_id: None,
        foil: None,
        bos: r.json["prepend_bos"].as_bool().unwrap(),
        mlp_mode: MlpMode::FrozenGate,
    };
    let c = s.compute(&req).unwrap();
    assert_eq!(c.tokens.ids, r.token_ids(), "{name}: tokens");
    s
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-4 * scale.max(1.0)
}

#[test]
fn traced_paths_are_exact_and_the_frontier_adds_up() {
    for name in TL_FIXTURES {
        let s = session(name);
        for (from, neurons) in [("", false), ("", true), ("L1.attn", false)] {
            let opts = TraceOptions {
                budget: 60,
                top: 15,
                neurons,
                threshold: 0.0,
                max_nodes: 10_000,
                ..TraceOptions::default()
            };
            let t = s
                .trace(&Path::parse(from).unwrap(), &opts, &mut |_, _| true)
                .unwrap();
            let scale = f64::from(t.value.abs()) + t.residual_total;
            assert!(
                t.expanded > 0 && t.expanded <= 60,
                "{name}: expanded {}",
                t.expanded
            );
            assert!(
                close(t.frontier_total, f64::from(t.value), scale),
                "{name} from `{from}`: frontier {} vs value {}",
                t.frontier_total,
                t.value
            );
            // every reported path is valid and has the reported value
            assert!(!t.paths.is_empty());
            for p in &t.paths {
                let v = s.view(&p.path).unwrap().expansion.value;
                assert!(
                    close(f64::from(v), f64::from(p.value), 1.0),
                    "{name}: `{}` traced {} vs expanded {v}",
                    p.path,
                    p.value
                );
            }
            for w in t.paths.windows(2) {
                assert!(
                    w[0].value.abs() >= w[1].value.abs(),
                    "{name}: paths not ranked"
                );
            }
            // every graph node id is a valid path; edges join graph nodes
            for n in &t.nodes {
                s.validate(&n.id).unwrap();
            }
            let ids: std::collections::HashSet<&Path> = t.nodes.iter().map(|n| &n.id).collect();
            for e in &t.edges {
                assert!(ids.contains(&e.from) && ids.contains(&e.to));
            }
            if from.is_empty() && !neurons {
                // the root's site receives exactly the root's children: its in-edges add up
                // to the value (the root has no remainder)
                let root = t
                    .nodes
                    .iter()
                    .find(|n| n.site == rdla_attrib::trace::GraphSite::Logit)
                    .unwrap();
                let into: f64 = t
                    .edges
                    .iter()
                    .filter(|e| e.to == root.id)
                    .map(|e| f64::from(e.value))
                    .sum();
                assert!(
                    close(into, f64::from(t.value), f64::from(t.value.abs())),
                    "{name}: edges into the logit {into} vs {}",
                    t.value
                );
            }
        }
    }
}

#[test]
fn ablation_matches_the_value_where_the_linear_story_is_exact() {
    for name in TL_FIXTURES {
        let s = session(name);
        let n_layers = s.model().config.n_layers;
        let last_mlp = Path::parse(&format!("L{}.mlp", n_layers - 1)).unwrap();
        // the last MLP at the last position reaches the logit only through the unembedding:
        // with the final norm's scale held, zeroing it changes the target by exactly its value
        let ab = s
            .ablate(std::slice::from_ref(&last_mlp), AblationMode::Zero, true)
            .unwrap();
        assert!(
            close(
                f64::from(ab.change),
                f64::from(ab.node_sum),
                f64::from(ab.node_sum.abs())
            ),
            "{name}: zeroing {last_mlp}: change {} vs value {}",
            ab.change,
            ab.node_sum
        );
        // an early attention layer has nonlinearities downstream: the real change differs
        let early = Path::parse("L0.attn").unwrap();
        let ab = s.ablate(&[early], AblationMode::Zero, false).unwrap();
        assert!(
            (ab.change - ab.node_sum).abs() > 1e-3,
            "{name}: L0.attn change {} equals its value {}: the check cannot tell",
            ab.change,
            ab.node_sum
        );
        // mean ablation is a different intervention from zeroing
        let mean = s
            .ablate(std::slice::from_ref(&last_mlp), AblationMode::Mean, true)
            .unwrap();
        assert!(mean.ablated.is_finite() && (mean.ablated - ab.clean).abs() > 0.0);
    }
}

#[test]
fn a_last_layer_head_of_a_parallel_model_is_linear() {
    // GPT-NeoX's MLP reads resid_pre, so a last-layer head reaches the logit only through the
    // unembedding
    let s = session("neox_parallel");
    let l = s.model().config.n_layers - 1;
    for h in 0..s.model().config.n_heads {
        let p = Path::parse(&format!("L{l}.attn/H{h}")).unwrap();
        let ab = s
            .ablate(std::slice::from_ref(&p), AblationMode::Zero, true)
            .unwrap();
        assert!(
            close(f64::from(ab.change), f64::from(ab.node_sum), 1.0),
            "head {h}: change {} vs value {}",
            ab.change,
            ab.node_sum
        );
    }
    // scores and remainders are not sites
    for bad in [format!("L{l}.attn/H0/qk:1"), format!("L{l}.attn/bias")] {
        let p = Path::parse(&bad).unwrap();
        assert!(s.ablate(&[p], AblationMode::Zero, false).is_err(), "{bad}");
    }
}

/// A regression test: the causal check on a node below an attention score (a `q`/`k` side's
/// component) compared the target's change in logit units with an attribution in score
/// units. It is refused, naming why; the same site from a logit-unit path is checked.
#[test]
fn a_causal_check_below_a_score_is_refused() {
    let s = session("gpt2_tied");
    let n_layers = s.model().config.n_layers;
    let last = s.computed().unwrap().tokens.ids.len() - 1;
    let below = Path::parse(&format!("L{}.attn/H0/qk:{last}/q/embed", n_layers - 1)).unwrap();
    s.validate(&below).unwrap();
    let err = s
        .ablate(std::slice::from_ref(&below), AblationMode::Zero, false)
        .unwrap_err();
    assert!(
        matches!(err, rdla_session::SessionError::AblateInScoreUnits { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("score units"), "{err}");
    s.ablate(&[Path::parse("embed").unwrap()], AblationMode::Zero, false)
        .unwrap();
}

/// A regression test (issue #22.9): clicking a token in the top-10 table set the answer by
/// its text, which can encode to another token (a SentencePiece "Mary" vs "▁Mary"), and the
/// target silently changed. A request can name the answer by id; the text is then a label.
#[test]
fn an_answer_picked_by_id_is_that_token() {
    let mut s = session("gpt2_tied");
    let by_text = s.computed().unwrap().clone();
    let id = by_text.target.answer();
    let mut req = by_text.request.clone();
    req.answer = "a label that is several tokens".into();
    req.answer_id = Some(id);
    let by_id = s.compute(&req).unwrap();
    assert_eq!(by_id.target.answer(), id);
    assert_eq!(by_id.overview.target_value, by_text.overview.target_value);
    req.answer_id = Some(u32::MAX);
    assert!(s.compute(&req).is_err());
}

/// A regression test (issue #22.22): with the prompt unchanged, an answer that is several
/// tokens fails before the forward pass and the previous computation stays (it cost a whole
/// forward pass and dropped the results).
#[test]
fn a_bad_answer_on_the_same_prompt_fails_at_once_and_keeps_the_results() {
    let mut s = session("gpt2_tied");
    let before = s.computed().unwrap().clone();
    let mut req = before.request.clone();
    req.answer = "a label that is several tokens".into();
    let failure = s.compute(&req).unwrap_err();
    assert!(
        matches!(failure.error, rdla_session::SessionError::Token { .. }),
        "{}",
        failure.error
    );
    assert_eq!(failure.top.len(), before.top.len());
    let kept = s.computed().expect("the previous computation stays");
    assert_eq!(kept.overview.target_value, before.overview.target_value);
    // another prompt with a bad answer still computes its predictions, then fails
    req.prompt.push_str(" more");
    let failure = s.compute(&req).unwrap_err();
    assert!(!failure.top.is_empty());
    assert!(s.computed().is_none());
}

//! The real app, driven through egui_kittest by accessibility label.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use rdla_app::{RdlaApp, ScriptedDialogs, StartOptions, create_app};

fn harness(export_dir: PathBuf, opts: StartOptions) -> Harness<'static, RdlaApp> {
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .build_eframe(move |cc| {
            create_app(
                cc,
                &opts,
                Box::new(ScriptedDialogs {
                    model: None,
                    save_dir: Some(export_dir.clone()),
                }),
            )
        });
    settle(&mut h);
    h
}

/// Move the pointer onto the widget, then click it (egui hit-tests with the pointer's
/// previous position, so a first click without a hover can land elsewhere), then settle.
fn click(h: &mut Harness<'_, RdlaApp>, label: &str) {
    h.get_by_label(label).hover();
    h.step();
    h.get_by_label(label).click();
    settle(h);
}

/// Type `path` into the Census view's file field (replacing what it held).
fn census_file(h: &mut Harness<'_, RdlaApp>, path: &std::path::Path) {
    let field = h.get_by_label("Census prompts file");
    field.focus();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    field.type_text(path.to_str().unwrap());
    h.step();
}

/// [`click`] without waiting for the worker afterwards.
fn click_now(h: &mut Harness<'_, RdlaApp>, label: &str) {
    h.get_by_label(label).hover();
    h.step();
    h.get_by_label(label).click();
    h.step();
}

/// The model opened and the attribution computed, without an error.
fn assert_computed(app: &RdlaApp) {
    assert!(app.state.load_error.is_none(), "{:?}", app.state.load_error);
    assert!(
        app.state.compute_error.is_none(),
        "{:?}",
        app.state.compute_error
    );
}

/// Step until the worker has answered everything.
fn settle(h: &mut Harness<'_, RdlaApp>) {
    for _ in 0..3000 {
        h.step();
        if h.state().is_idle() {
            h.step();
            h.step();
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the app did not settle; status: {}", h.state().state.status);
}

#[test]
fn starts_on_the_default_model_and_drills_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    {
        let app = h.state();
        assert_computed(app);
        assert!(app.state.computed.is_some());
        assert!(app.current_path().is_root());
        assert_eq!(app.settings.answer, "3");
    }
    let n_layers = h.state().state.model.as_ref().unwrap().config.n_layers;
    let last = n_layers - 1;

    // root view → click a head
    let head = format!("L{last}.attn/H0");
    click(&mut h, &head);
    assert_eq!(h.state().current_path().to_string(), head);
    h.get_by_label(&format!("crumb {head}"));
    let hm = h.state().current_view().unwrap().heatmap.clone();
    assert_eq!(hm.row_title, "source component");
    assert_eq!(
        hm.n_cols(),
        h.state().state.computed.as_ref().unwrap().tokens.ids.len()
    );

    // head view → an attention component at the previous position → its heads
    let p = hm.n_cols() - 2;
    let comp = format!("{head}/{p}:L0.attn");
    click(&mut h, &comp);
    assert_eq!(h.state().current_path().to_string(), comp);
    h.get_by_label(&format!("{comp}/H1"));
    h.get_by_label(&format!("crumb {comp}"));

    // depth 3 → back up with the keyboard
    h.key_press(egui::Key::Backspace);
    settle(&mut h);
    assert_eq!(h.state().current_path().to_string(), head);
    // history: back and forward
    click(&mut h, "Back");
    assert_eq!(h.state().current_path().to_string(), comp);
    click(&mut h, "crumb root");
    assert!(h.state().current_path().is_root());

    // arrows + Enter drill into the selected cell
    h.key_press(egui::Key::ArrowRight);
    h.step();
    h.key_press(egui::Key::Enter);
    settle(&mut h);
    assert_eq!(h.state().current_path().to_string(), "L0.attn/H1");
}

#[test]
fn exports_a_png_at_the_expected_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    click(&mut h, "L0.attn/H1");
    assert_eq!(h.state().current_path().to_string(), "L0.attn/H1");
    click(&mut h, "Export PNG…");
    let out = exported(tmp.path(), "png");
    assert!(
        out.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("L0.attn_H1"),
        "the file name names the view: {}",
        out.display()
    );
    let img = image::open(&out).unwrap();
    let hm = h.state().current_view().unwrap().heatmap.clone();
    let expected = rdla_session::png::render(
        &hm,
        rdla_session::png::PngOptions {
            scale: 2.0,
            colormap: h.state().settings.colormap,
        },
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), expected.dimensions());
    assert!(img.width() >= 800);

    click(&mut h, "Export CSV…");
    let csv = std::fs::read_to_string(exported(tmp.path(), "csv")).unwrap();
    assert!(
        csv.starts_with("path,step,value\n") && csv.contains("L0.attn/H1,0:embed,"),
        "{}",
        &csv[..csv.len().min(300)]
    );
}

#[test]
fn a_broken_model_shows_an_error_and_keeps_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    let bad = tmp.path().join("broken");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let field = h.get_by_label("Model path");
    field.focus();
    field.type_text(bad.to_str().unwrap());
    h.step();
    h.key_press(egui::Key::Enter);
    settle(&mut h);
    let app = h.state();
    let err = app.state.load_error.as_deref().unwrap_or_default();
    assert!(err.contains("mamba"), "{err}");
    assert!(
        app.state.model.is_some() && app.state.computed.is_some(),
        "the previous model must stay usable"
    );
}

#[test]
fn a_multi_token_answer_is_rejected_with_its_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StartOptions {
        model: None,
        prompt: None,
        answer: Some(" Get some".into()),
        result: None,
    };
    let h = harness(tmp.path().to_path_buf(), opts);
    let err = h.state().state.compute_error.clone().unwrap_or_default();
    assert!(err.contains("not a single token"), "{err}");
    // the prompt still tokenised and the top predictions are there to pick from
    h.get_by_label("Top next tokens");
}

/// A typo in the answer on the same prompt fails at once and keeps what is on screen: the
/// computation, the node open and its view (they were all cleared).
#[test]
fn a_bad_answer_on_the_same_prompt_keeps_the_views() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    let last = h.state().state.model.as_ref().unwrap().config.n_layers - 1;
    let head = format!("L{last}.attn/H0");
    click(&mut h, &head);
    let before = h.state().current_view().unwrap().expansion.value;
    let field = h.get_by_role_and_label(egui::accesskit::Role::TextInput, "Answer");
    field.focus();
    field.type_text(" Get some");
    settle(&mut h);
    let app = h.state();
    let err = app.state.compute_error.as_deref().unwrap_or_default();
    assert!(err.contains("not a single token"), "{err}");
    assert!(app.state.computed.is_some(), "the computation was dropped");
    assert_eq!(app.current_path().to_string(), head);
    let view = app
        .current_view()
        .expect("the open node's view was dropped");
    assert_eq!(view.expansion.value.to_bits(), before.to_bits());
}

/// The one file with extension `ext` an export wrote into `dir`.
fn exported(dir: &std::path::Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    assert_eq!(found.len(), 1, "exports in {}: {found:?}", dir.display());
    found.into_iter().next().unwrap()
}

fn fixture(name: &str) -> String {
    PathBuf::from(
        // at run time: a test binary built in another checkout sharing the target directory
        // (CI's clone) must read this checkout's files
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../tests/fixtures")
    .join(name)
    .to_string_lossy()
    .into_owned()
}

/// A rotary, grouped-query, parallel-residual model (GPT-NeoX) and a Llama-family one: the
/// views are labelled with the model's own components (no `pos`) and heads per query head.
#[test]
fn rotary_models_show_their_own_components() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StartOptions {
        model: Some(fixture("neox_parallel")),
        prompt: Some("When Mary and John went to the store, Mary gave a book to".into()),
        answer: Some(" John".into()),
        result: None,
    };
    let mut h = harness(tmp.path().to_path_buf(), opts);
    {
        let app = h.state();
        assert_computed(app);
        let hm = app.current_view().unwrap().heatmap.clone();
        assert_eq!(hm.rows, ["L0", "L1", "L2"]);
        assert!(!hm.subtitle.contains("pos"), "{}", hm.subtitle);
    }
    // a parallel-residual MLP reads resid_pre: no cell for its own layer's attention
    click(&mut h, "L1.mlp");
    let hm = h.state().current_view().unwrap().heatmap.clone();
    assert_eq!(hm.rows, ["embed", "L0"]);
    assert!(
        hm.targets
            .iter()
            .flatten()
            .all(|p| !p.to_string().contains("pos"))
    );
    h.get_by_label("L1.mlp/L0.attn");
    click(&mut h, "crumb root");

    // Llama family with grouped-query attention: four query heads, two key/value heads
    let opts = StartOptions {
        model: Some(fixture("llama_gqa")),
        prompt: Some("1. Get some apples.\n2. Get some oranges.\n".into()),
        answer: Some("3".into()),
        result: None,
    };
    let mut h = harness(tmp.path().to_path_buf(), opts);
    let app = h.state();
    assert!(app.state.load_error.is_none(), "{:?}", app.state.load_error);
    let m = app.state.model.as_ref().unwrap();
    assert_eq!((m.config.n_heads, m.config.n_kv_heads), (4, 2));
    assert!(
        m.details.contains("RMSNorm") && m.details.contains("llama3"),
        "{}",
        m.details
    );
    assert!(!m.processing.contains(&"center_writing_weights"));
    h.get_by_label("llama_gqa · LlamaForCausalLM · 3L 4H (2 KV) d32");
    // on the CPU its token matrices stay in the file; the status bar says what it holds
    assert!(m.facts.tokens_in_place && m.facts.disk_bytes > 0);
    h.get_by_label(&m.facts.memory_line());
    let hm = app.current_view().unwrap().heatmap.clone();
    assert_eq!(hm.cols, ["H0", "H1", "H2", "H3", "attn bias", "MLP"]);
    click(&mut h, "L2.attn/H3");
    let hm = h.state().current_view().unwrap().heatmap.clone();
    assert_eq!(hm.rows, ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]);
}

#[test]
fn clicks_into_a_score_its_sides_a_neuron_the_graph_and_a_causal_check() {
    use rdla_attrib::Units;
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    let last = h.state().state.model.as_ref().unwrap().config.n_layers - 1;
    let head = format!("L{last}.attn/H1");
    click(&mut h, &head);
    // a cell of the attention strip → the score to that key
    let score = format!("{head}/qk:7");
    click(&mut h, &format!("score {score}"));
    assert_eq!(h.state().current_path().to_string(), score);
    {
        let view = h.state().current_view().unwrap().clone();
        let ex = &view.expansion;
        let table = ex.table.as_ref().expect("a score has a table");
        assert!((table.sum() as f32 - ex.value).abs() < 1e-4 * ex.value.abs().max(1.0));
        assert_eq!(ex.units, Units::Score);
        assert_eq!(view.heatmap.units, Units::Score);
        assert!(
            view.attention.is_some(),
            "the key picker needs the attention row"
        );
    }
    // a table cell → the query side's component, still in score units
    let side = format!("{score}/q/L0.mlp");
    click(&mut h, &format!("{side} (L0.mlp × L0.attn)"));
    assert_eq!(h.state().current_path().to_string(), side);
    assert_eq!(
        h.state().current_view().unwrap().expansion.units,
        Units::Score
    );
    // the table's labels: a column header opens the key side's component, a row label the
    // query side's (the key side was reachable only through the all-zero bias row)
    click(&mut h, &format!("crumb {score}"));
    let key_side = format!("{score}/k/L0.attn");
    click(&mut h, &format!("column {key_side}"));
    assert_eq!(h.state().current_path().to_string(), key_side);
    click(&mut h, &format!("crumb {score}"));
    click(&mut h, &format!("row {side}"));
    assert_eq!(h.state().current_path().to_string(), side);
    // back to the score, then the contrast with the average key
    click(&mut h, &format!("crumb {score}"));
    click(&mut h, "more than average");
    assert_eq!(
        h.state().current_path().to_string(),
        format!("{head}/qk:7-mean")
    );
    // an MLP's neuron list
    click(&mut h, "crumb root");
    click(&mut h, "L0.mlp");
    let neuron = h
        .state()
        .current_view()
        .unwrap()
        .expansion
        .neurons
        .clone()
        .unwrap()[0]
        .step
        .to_string();
    click(&mut h, &neuron);
    assert_eq!(
        h.state().current_path().to_string(),
        format!("L0.mlp/{neuron}")
    );
    assert!(h.state().current_view().unwrap().expansion.tokens.is_some());
    // the causal check of the neuron
    click(&mut h, "zero it");
    let key = (
        vec![h.state().current_path()],
        rdla_model::model::ablate::AblationMode::Zero,
    );
    let r = h
        .state()
        .state
        .ablations
        .get(&key)
        .unwrap()
        .clone()
        .unwrap();
    assert!((r.clean - r.ablated - r.change).abs() < 1e-5);
    // the graph from the root, and a click on a site opens the explorer there
    click(&mut h, "crumb root");
    click(&mut h, "Trace graph from here");
    let trace = h.state().state.graph.trace.clone().expect("traced");
    assert!((trace.frontier_total - f64::from(trace.value)).abs() < 1e-3);
    assert!(h.state().state.graph.open);
    // the window's graph JSON is the CLI's document: target ids and the trace's time too
    let doc: serde_json::Value =
        serde_json::from_slice(&h.state().graph_bytes("json").unwrap()).unwrap();
    let computed = h.state().state.computed.clone().unwrap();
    assert_eq!(doc["answer_id"], computed.target.answer());
    assert!(doc["foil_id"].is_null(), "{}", doc["foil_id"]);
    assert!(doc["trace_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(doc["token_ids"], serde_json::json!(computed.tokens.ids));
    // the graph's causal check: the three largest sites ablated together
    click(&mut h, "zero them");
    let (key, r) = h
        .state()
        .state
        .ablations
        .iter()
        .find(|(k, _)| k.0.len() == 3)
        .map(|(k, r)| (k.clone(), r.clone().unwrap()))
        .expect("the top three sites were ablated");
    assert!(key.0.iter().any(|p| p.to_string() == "L0.mlp"), "{key:?}");
    assert_eq!(r.paths.len(), 3);
    assert!((r.clean - r.ablated - r.change).abs() < 1e-5 && r.change.abs() > 1.0);
    h.get_by_label_contains("real change");
    // the verification: each of the ten largest sites ablated alone, then together; the
    // first three are the causal check's sites, and together they are its real change
    let png_before = h.state().graph_bytes("png").unwrap();
    click(&mut h, "Verify (zero)");
    let v = h.state().state.graph.verified().cloned().expect("verified");
    let n_sites = trace.nodes.iter().filter(|n| n.id != trace.from).count();
    assert_eq!(v.sites.len(), n_sites.min(10));
    let first: Vec<_> = v.sites.iter().take(3).map(|s| s.site.clone()).collect();
    assert_eq!(first, key.0);
    for s in &v.sites {
        let node = trace.nodes.iter().find(|n| n.id == s.site).unwrap();
        assert_eq!(s.attributed, node.value);
        assert!(s.effect.is_finite());
    }
    assert!((v.target - r.clean).abs() < 1e-6);
    // in the panel, and in the status bar
    assert_eq!(h.get_all_by_label(&v.stamp()).count(), 2);
    // stamped into both exports
    let doc: serde_json::Value =
        serde_json::from_slice(&h.state().graph_bytes("json").unwrap()).unwrap();
    assert_eq!(
        doc["verification"]["sites"].as_array().map(Vec::len),
        Some(v.sites.len())
    );
    assert_eq!(doc["verification"]["spearman"].as_f64(), v.spearman);
    let height = |png: &[u8]| image::load_from_memory(png).unwrap().height();
    assert_eq!(
        height(&h.state().graph_bytes("png").unwrap()),
        height(&png_before) + 40
    );
    click(&mut h, "site L0.mlp");
    assert!(!h.state().state.graph.open);
    assert_eq!(h.state().current_path().to_string(), "L0.mlp");
}

/// The families added last (Phi-3, Qwen3, Gemma 2, Gemma 3) open in the explorer on their
/// reference prompt, their root matches the reference target, a head drills down, and Gemma 2
/// says that its final logits are soft-capped and what the model outputs.
#[test]
fn newer_families_open_and_drill_down() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["phi3", "qwen3", "gemma2", "gemma3"] {
        let r = rdla_testutil::Reference::load(name);
        let opts = StartOptions {
            model: Some(fixture(name)),
            prompt: Some(r.str("prompt")),
            answer: Some(r.str("answer")),
            result: None,
        };
        let mut h = harness(tmp.path().to_path_buf(), opts);
        {
            let app = h.state();
            assert!(
                app.state.load_error.is_none(),
                "{name}: {:?}",
                app.state.load_error
            );
            assert!(
                app.state.compute_error.is_none(),
                "{name}: {:?}",
                app.state.compute_error
            );
            let c = app.state.computed.as_ref().unwrap();
            let want = r.json["target_value"].as_f64().unwrap() as f32;
            assert!(
                (c.overview.target_value - want).abs() < 1e-4,
                "{name}: root {} vs {want}",
                c.overview.target_value
            );
            let details = &app.state.model.as_ref().unwrap().details;
            assert_eq!(
                details.contains("post-attention"),
                name.starts_with("gemma")
            );
            assert_eq!(
                details.contains("q/k norms"),
                name == "qwen3" || name == "gemma3"
            );
            assert_eq!(c.softcap.is_some(), name == "gemma2", "{name}");
        }
        if name == "gemma2" {
            h.get_by_label_contains("final logit soft-cap 8");
        }
        click(&mut h, "L1.attn/H2");
        let view = h.state().current_view().unwrap().clone();
        assert_eq!(
            view.path.to_string(),
            "L1.attn/H2",
            "{name}: status {}, node error {:?}",
            h.state().state.status,
            h.state().state.expand_error
        );
        assert!(
            view.expansion.residual.abs() < 1e-4,
            "{name}: {:?}",
            view.expansion.residual
        );
    }
}

/// A prompt with more positions than the heatmap draws at once: a head's view shows a window
/// of source positions (the end of the prompt first), with an overview of all of them and
/// buttons for the largest; a button moves the window to its position.
#[test]
fn long_prompts_show_a_window_of_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let prompt = "1. Get some apples.\n2. Get some oranges.\n".repeat(9);
    let opts = StartOptions {
        model: Some(fixture("llama_gqa")),
        prompt: Some(prompt),
        answer: Some("3".into()),
        result: None,
    };
    let mut h = harness(tmp.path().to_path_buf(), opts);
    assert!(h.state().state.compute_error.is_none());
    let n = h.state().state.tokens().ids.len();
    assert!(n > 120, "{n} tokens");
    click(&mut h, "L2.attn/H1");
    let view = h.state().current_view().unwrap().clone();
    assert_eq!(view.heatmap.n_cols(), n);
    h.get_by_label("column overview");
    // the last position is drawn, the first is not
    let comp = "embed";
    h.get_by_label(&format!("L2.attn/H1/{}:{comp}", n - 1));
    assert!(
        h.query_by_label(&format!("L2.attn/H1/1:{comp}")).is_none(),
        "the whole prompt was drawn"
    );
    // jump to the largest column that is outside the window
    let (c, v) = view
        .heatmap
        .top_columns(8)
        .into_iter()
        .find(|&(c, _)| c + 64 < n)
        .expect("a large column early in the prompt");
    click(&mut h, &format!("{} {v:+.3}", view.heatmap.cols[c]));
    h.get_by_label(&format!("L2.attn/H1/{c}:{comp}"));
    // the PNG export draws the window shown, not every position
    click(&mut h, "Export PNG…");
    let img = image::open(exported(tmp.path(), "png")).unwrap();
    let opts = rdla_session::png::PngOptions {
        scale: 2.0,
        colormap: h.state().settings.colormap,
    };
    let start = c.saturating_sub(32).min(n - 64);
    let shown = rdla_session::png::render(&view.heatmap.columns(start..start + 64), opts).unwrap();
    let full = rdla_session::png::render(&view.heatmap, opts).unwrap();
    let img = img.to_rgb8();
    assert!(img == shown, "the export is not the window's heatmap");
    assert!(img != full, "the export drew every position");
}

/// Alt+←/→ go back and forward (egui reports the modifiers with each key: a quick Alt+← whose
/// Alt is released within the frame still counts), and two arrow presses within one frame
/// move the selection twice.
#[test]
fn alt_arrows_are_history_and_fast_arrows_all_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    click(&mut h, "L0.attn/H1");
    assert_eq!(h.state().current_path().to_string(), "L0.attn/H1");
    h.key_press_modifiers(egui::Modifiers::ALT, egui::Key::ArrowLeft);
    settle(&mut h);
    assert!(h.state().current_path().is_root());
    assert_eq!(h.state().state.selected, None, "Alt+← moved the selection");
    h.key_press_modifiers(egui::Modifiers::ALT, egui::Key::ArrowRight);
    settle(&mut h);
    assert_eq!(h.state().current_path().to_string(), "L0.attn/H1");
    h.key_press_modifiers(egui::Modifiers::ALT, egui::Key::ArrowLeft);
    settle(&mut h);
    assert!(h.state().current_path().is_root());

    // two presses in one frame, then Enter: the cell two to the right
    h.key_press(egui::Key::ArrowRight);
    h.key_press(egui::Key::ArrowRight);
    h.step();
    assert_eq!(h.state().state.selected, Some((0, 2)));
    h.key_press(egui::Key::Enter);
    settle(&mut h);
    assert_eq!(h.state().current_path().to_string(), "L0.attn/H2");
}

/// "Compare with…": every heatmap becomes this prompt's values minus the contrast prompt's,
/// each cell keeping both (the tooltip's numbers), the deltas add up at the node, a
/// different-length prompt is refused below the root with the reason, and "Stop comparing"
/// brings the values back.
#[test]
fn compare_with_a_second_prompt_shows_the_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    assert_computed(h.state());
    let plain_root = h.state().current_view().unwrap().heatmap.clone();
    assert!(plain_root.contrast.is_empty());

    // the same story with the fruits swapped: the same number of tokens
    let field = h.get_by_label("Contrast prompt");
    field.focus();
    field.type_text("1. Get some oranges.\n2. Get some apples.\n");
    h.step();
    click(&mut h, "Compare");
    {
        let app = h.state();
        assert!(
            app.state.contrast.error.is_none(),
            "{:?}",
            app.state.contrast.error
        );
        assert!(app.state.contrast.active.is_some());
        let hm = &app.current_view().unwrap().heatmap;
        assert!(hm.title.contains("this prompt −"), "{}", hm.title);
        assert_eq!(hm.contrast.len(), hm.values.len());
        // each cell: this prompt's value (the plain root's) minus the contrast prompt's
        let mut differs = false;
        for ((v, pair), plain) in hm.values.iter().zip(&hm.contrast).zip(&plain_root.values) {
            let (Some(v), Some((ours, theirs)), Some(plain)) = (v, pair, plain) else {
                continue;
            };
            assert!((ours - plain).abs() <= 1e-5, "{ours} vs {plain}");
            assert!(
                (v - (ours - theirs)).abs() <= 1e-5,
                "{v} vs {ours} − {theirs}"
            );
            differs |= v.abs() > 1e-4;
        }
        assert!(differs, "the two prompts give the same values everywhere");
    }

    // a head: its sources' deltas add up to its delta
    let n_layers = h.state().state.model.as_ref().unwrap().config.n_layers;
    let head = format!("L{}.attn/H0", n_layers - 1);
    click(&mut h, &head);
    {
        let view = h.state().current_view().unwrap();
        assert_eq!(view.path.to_string(), head);
        assert!(!view.heatmap.contrast.is_empty());
        let ex = &view.expansion;
        let sum: f32 = ex.children.iter().map(|c| c.value).sum();
        assert!(
            (ex.value - (sum + ex.bias + ex.residual)).abs() <= 1e-4,
            "Δ {} vs Σ {sum} + {} + {}",
            ex.value,
            ex.bias,
            ex.residual
        );
        let both = view.contrast.as_ref().unwrap();
        assert!((ex.value - (both.value - both.contrast_value)).abs() <= 1e-5);
    }

    // the graph's verification by activation patching: each site takes the compared run's
    // value (the CLI test checks the patched values themselves)
    click(&mut h, "crumb root");
    click(&mut h, "Trace graph from here");
    click(&mut h, "Verify (patch)");
    {
        let v = h.state().state.graph.verified().cloned().expect("verified");
        assert_eq!(v.ablation, rdla_model::model::ablate::AblationMode::Patch);
        assert!(!v.sites.is_empty());
        assert!(v.sites.iter().all(|s| s.effect.is_finite()));
        assert!(v.sites.iter().any(|s| s.effect.abs() > 1e-3));
    }
    click(&mut h, "Back to the heatmap");
    click(&mut h, &head);

    // a prompt of another length: the root compares, the head says why it cannot
    click(&mut h, "crumb root");
    let field = h.get_by_label("Contrast prompt");
    field.focus();
    field.type_text(" 3. Get some pears.");
    h.step();
    click(&mut h, "Compare");
    assert!(h.state().state.contrast.error.is_none());
    click(&mut h, &head);
    let err = h.state().state.expand_error.clone().unwrap_or_default();
    assert!(err.contains("same number of tokens"), "{err}");
    // and the window says so (the view went back to the root)
    h.get_by_label_contains("same number of tokens");

    click(&mut h, "Stop comparing");
    let app = h.state();
    assert!(app.state.contrast.active.is_none());
    let hm = &app.current_view().unwrap().heatmap;
    assert!(hm.contrast.is_empty());
    assert_eq!(hm.values, plain_root.values);
}

/// The Census view: a prompts file is attributed on the worker (a multi-token answer skipped
/// and listed); the mean heatmap's cells are each node's mean over the prompts, with the
/// 95 % interval recomputed here; a cell shows the node's distribution and the prompts by its
/// value; a prompt opens in the explorer at that node with the census's value; the mean view
/// exports as PNG; and the explorer's own computation is as it was after the census.
#[test]
fn a_census_shows_means_and_opens_a_prompt_at_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    assert_computed(h.state());
    let plain_root = h.state().current_view().unwrap().heatmap.clone();
    let prompts = [
        "1. Get some apples.\n2. Get some oranges.\n",
        "1. Get some oranges.\n2. Get some apples.\n",
        "1. Get some pears.\n2. Get some apples.\n",
        "1. Get some apples.\n2. Get some pears.\n",
        "1. Get some oranges.\n2. Get some pears.\n",
    ];
    let mut jsonl: String = prompts
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({"prompt": p, "answer": "3"})))
        .collect();
    jsonl.push_str(&format!(
        "{}\n",
        serde_json::json!({"prompt": prompts[0], "answer": "3. Get"})
    ));
    let file = tmp.path().join("fruits.jsonl");
    std::fs::write(&file, &jsonl).unwrap();

    click(&mut h, "Census…");
    // a malformed record: the view says which line, and there is no table
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"prompt\": 3}}\n", jsonl.lines().next().unwrap()),
    )
    .unwrap();
    census_file(&mut h, &bad);
    click(&mut h, "Run census");
    {
        let app = h.state();
        let err = app.state.census.error.clone().unwrap_or_default();
        assert!(err.contains("line 2"), "{err}");
        assert!(app.state.census.table.is_none());
    }
    h.get_by_label_contains("line 2");
    census_file(&mut h, &file);
    click(&mut h, "Run census");
    let table = {
        let app = h.state();
        assert!(
            app.state.census.error.is_none(),
            "{:?}",
            app.state.census.error
        );
        app.state.census.table.clone().expect("no census table")
    };
    assert_eq!(table.prompts.len(), prompts.len());
    assert_eq!(table.skipped.len(), 1);
    assert_eq!(table.skipped[0].0.place, "line 6");
    h.get_by_label_contains("1 records skipped");

    // every cell: the node's mean over the prompts, its interval mean ± 1.96·s/√n
    let hm = h.state().census_heatmap().unwrap();
    assert_eq!(hm.intervals.len(), hm.values.len());
    let n = prompts.len() as f64;
    let mut cells = 0;
    for ((v, iv), t) in hm.values.iter().zip(&hm.intervals).zip(&hm.targets) {
        let (Some(v), Some((lo, hi)), Some(t)) = (v, iv, t) else {
            continue;
        };
        let col = table.column(&t.to_string()).unwrap();
        assert_eq!(col.len(), prompts.len());
        assert!(col.iter().all(|x| x.is_finite()), "{t}: {col:?}");
        let mean = col.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = col
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let half = 1.96 * var.sqrt() / n.sqrt();
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs());
        assert!(close(*v, mean), "{t}: mean {v} vs {mean}");
        assert!(
            close(*lo, mean - half) && close(*hi, mean + half),
            "{t}: [{lo}, {hi}]"
        );
        cells += 1;
    }
    assert!(cells > 0);
    // the first prompt is the explorer's own: its census values are the root view's
    for (v, t) in plain_root.values.iter().zip(&plain_root.targets) {
        let (Some(v), Some(t)) = (v, t) else { continue };
        let census = table.column(&t.to_string()).unwrap()[0];
        assert!(
            (census - v).abs() <= 1e-5,
            "{t}: census {census}, explorer {v}"
        );
    }

    // the explorer's own computation came back after the census: a head of its prompt
    let n_layers = h.state().state.model.as_ref().unwrap().config.n_layers;
    let head = format!("L{}.attn/H1", n_layers - 1);
    click(&mut h, "Back to the heatmap");
    click(&mut h, &head);
    {
        let app = h.state();
        assert_computed(app);
        assert!(
            app.state.expand_error.is_none(),
            "{:?}",
            app.state.expand_error
        );
        let view = app.current_view().unwrap();
        assert_eq!(view.path.to_string(), head);
        let k = plain_root
            .targets
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.to_string() == head))
            .unwrap();
        assert!((view.expansion.value - plain_root.values[k].unwrap()).abs() <= 1e-6);
    }

    // a cell: its distribution and the prompts by its value
    click(&mut h, "Census…");
    click(&mut h, &head);
    assert_eq!(
        h.state()
            .state
            .census
            .selected
            .as_ref()
            .map(ToString::to_string),
        Some(head.clone())
    );
    h.get_by_label_contains("prompts by this node's value");
    let sorted = table.sorted_by(&head);
    let (row, value) = sorted[0];
    let index = table.prompts[row].index;

    // export the mean view
    click(&mut h, "Export census PNG…");
    let png = exported(tmp.path(), "png");
    let img = image::open(&png).unwrap();
    assert!(img.width() > 200 && img.height() > 100);

    // a long census stopped once it has started keeps the prompts done and says so
    let many = tmp.path().join("many.jsonl");
    let line = serde_json::json!({"prompt": prompts[0], "answer": "3"}).to_string();
    std::fs::write(&many, format!("{line}\n").repeat(20_000)).unwrap();
    census_file(&mut h, &many);
    click_now(&mut h, "Run census");
    for _ in 0..5000 {
        h.step();
        if h.state()
            .state
            .census
            .running
            .is_some_and(|(done, _)| done > 0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    click(&mut h, "Stop census");
    {
        let app = h.state();
        let t = app
            .state
            .census
            .table
            .clone()
            .expect("a stopped census keeps its table");
        assert!(
            !t.prompts.is_empty() && t.prompts.len() < 20_000,
            "{} prompts",
            t.prompts.len()
        );
        assert_eq!(t.todo, 20_000);
        assert!(
            app.state.status.contains("stopped after"),
            "{}",
            app.state.status
        );
    }
    // the first census's table comes back with the first file
    census_file(&mut h, &file);
    click(&mut h, "Run census");
    assert_eq!(
        h.state().state.census.table.as_ref().unwrap().prompts.len(),
        prompts.len()
    );
    click(&mut h, &head);

    // the largest prompt opens in the explorer at that node, with the census's value
    let label = format!("#{index} ");
    h.get_by_label_contains(&label).hover();
    h.step();
    h.get_by_label_contains(&label).click();
    settle(&mut h);
    {
        let app = h.state();
        assert_computed(app);
        assert!(!app.state.census.open);
        assert_eq!(app.settings.prompt, prompts[index as usize]);
        let view = app.current_view().unwrap();
        assert_eq!(view.path.to_string(), head);
        assert!(
            (view.expansion.value - value).abs() <= 1e-5,
            "explorer {} vs census {value}",
            view.expansion.value
        );
    }
}

/// A result saved from the explorer reopens without the model, read-only: its root heatmap
/// and its graph (verification stamped) export the same PNG bytes as the live session did;
/// a saved node opens from its cell and its breadcrumbs lead back; a node that is not in the
/// file says so.
#[test]
fn a_saved_result_reopens_without_the_model_and_exports_the_same_pngs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path().to_path_buf(), StartOptions::default());
    let last = h.state().state.model.as_ref().unwrap().config.n_layers - 1;
    let head = format!("L{last}.attn/H1");
    click(&mut h, &head);
    click(&mut h, "crumb root");
    click(&mut h, "Trace graph from here");
    click(&mut h, "Verify (zero)");
    assert!(h.state().state.graph.verified().is_some());
    let live_graph = h.state().graph_bytes("png").unwrap();
    let live_root = tmp.path().join("live-root.png");
    h.state().export_png_to(&live_root, 1.0, None).unwrap();
    let live_root = std::fs::read(&live_root).unwrap();
    click(&mut h, "Save result…");
    let file = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "rdla"))
        .expect("a result file was written");
    assert!(
        h.state().state.status.starts_with("saved"),
        "{}",
        h.state().state.status
    );
    drop(h);

    // reopened: no model needed for any of this
    let opts = StartOptions {
        result: Some((
            file.clone(),
            rdla_session::saved::Saved::open(&file).unwrap(),
        )),
        ..StartOptions::default()
    };
    let mut r = harness(tmp.path().to_path_buf(), opts);
    assert!(
        r.state().state.result.is_some(),
        "{}",
        r.state().state.status
    );
    assert_eq!(r.state().result_bytes("png", 1.0).unwrap(), live_root);
    click(&mut r, "Show the graph");
    assert_eq!(
        r.state().result_bytes("graph.png", 1.0).unwrap(),
        live_graph
    );
    click(&mut r, "Show the heatmap");
    // the head was opened live, so it is in the file: its cell leads there, the crumbs back
    click(&mut r, &head);
    assert_eq!(
        r.state().state.result.as_ref().unwrap().at.to_string(),
        head
    );
    click(&mut r, "saved crumb root");
    assert!(r.state().state.result.as_ref().unwrap().at.is_root());
    // a head that was never opened is not in the file
    assert_ne!(last, 0);
    click(&mut r, "L0.attn/H0");
    let res = r.state().state.result.as_ref().unwrap();
    assert!(res.at.is_root());
    assert!(
        res.note
            .as_deref()
            .is_some_and(|n| n.contains("not in this file")),
        "{:?}",
        res.note
    );
    click(&mut r, "Close result");
    assert!(r.state().state.result.is_none());
}

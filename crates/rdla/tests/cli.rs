//! `rdla attribute` end to end: the JSON contract, exports, and clear errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{assert_ok, attribute, fixture, rdla};

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

const LIST: &str = "1. Get some apples.\n2. Get some oranges.\n";

#[test]
fn list_prompt_json_on_gpt_neo() {
    let dir = fixture("gptneo_local");
    let out = rdla(&[
        "attribute",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        LIST,
        "--answer",
        "3",
        "--device",
        "cpu",
        "--path",
        "L3.attn/H1",
        "--json",
        "-",
    ]);
    assert_ok(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = reference("gptneo_local");
    assert_eq!(j["token_ids"], r["token_ids"]);
    assert_eq!(j["token_strs"], r["token_strs"]);
    assert_eq!(j["answer_id"], r["answer_id"]);
    assert!(j["foil_id"].is_null());
    let tv = j["target_value"].as_f64().unwrap();
    assert!((tv - r["target_value"].as_f64().unwrap()).abs() < 1e-4);
    let top = j["top_predictions"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    for k in ["id", "token", "logit", "prob"] {
        assert!(top[0].get(k).is_some(), "top_predictions lacks {k}");
    }
    let probs: Vec<f64> = top.iter().map(|p| p["prob"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]));
    let labels = j["component_labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2 + 2 * 4);
    assert_eq!(j["components"].as_array().unwrap().len(), labels.len());
    assert!(j["unembed_bias"].is_number());
    assert_eq!(j["head_dla"].as_array().unwrap().len(), 4);
    let hb = &j["head_breakdown"];
    assert_eq!(hb.as_array().unwrap().len(), 4);
    assert_eq!(hb[0].as_array().unwrap().len(), 4);
    assert_eq!(hb[0][0].as_array().unwrap().len(), 15);
    assert_eq!(hb[0][0][0].as_array().unwrap().len(), labels.len());
    assert_eq!(j["mlp_breakdown"].as_array().unwrap().len(), 4);
    assert_eq!(j["mlp_bias"].as_array().unwrap().len(), 4);
    let node = &j["node"];
    assert_eq!(node["path"], "L3.attn/H1");
    let children = node["children"].as_array().unwrap();
    // local layer (window 4): 4 visible sources × 8 upstream components
    assert_eq!(children.len(), 4 * 8);
    let sum: f64 = children.iter().map(|c| c["value"].as_f64().unwrap()).sum();
    let residual = node["value"].as_f64().unwrap() - sum - node["bias"].as_f64().unwrap();
    assert!((residual - node["residual"].as_f64().unwrap()).abs() < 1e-5);
    assert!(residual.abs() < 1e-5);
    for k in ["load", "forward", "attribution"] {
        assert!(j["timings_ms"][k].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn logit_difference_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let (json, csv, png) = (
        tmp.path().join("a.json"),
        tmp.path().join("a.csv"),
        tmp.path().join("a.png"),
    );
    let r = reference("gpt2_untied");
    let out = rdla(&[
        "attribute",
        "--model",
        fixture("gpt2_untied").to_str().unwrap(),
        "--prompt",
        r["prompt"].as_str().unwrap(),
        "--answer",
        r["answer"].as_str().unwrap(),
        "--foil",
        r["foil"].as_str().unwrap(),
        "--device",
        "cpu",
        "--path",
        "L2.attn/H1",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--png",
        png.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["foil_id"], r["foil_id"]);
    let tv = j["target_value"].as_f64().unwrap();
    assert!((tv - r["target_value_diff"].as_f64().unwrap()).abs() < 1e-4);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("path,step,value\n"));
    assert!(csv.contains("L2.attn/H1,0:embed,"));
    let img = image::open(&png).unwrap();
    assert!(img.width() > 400 && img.height() > 200);

    // overview CSV and root PNG without --path
    let csv2 = tmp.path().join("o.csv");
    let png2 = tmp.path().join("o.png");
    let out = attribute(
        fixture("gpt2_tied").to_str().unwrap(),
        &[
            "--csv",
            csv2.to_str().unwrap(),
            "--png",
            png2.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let csv2 = std::fs::read_to_string(&csv2).unwrap();
    assert!(csv2.contains("head_breakdown,2,3,"));
    assert!(image::open(&png2).is_ok());
    // the human summary went to stdout
    assert!(String::from_utf8_lossy(&out.stdout).contains("top predictions"));
}

fn expect_error(args: &[&str], needle: &str) {
    let out = rdla(args);
    assert!(!out.status.success(), "expected failure for {args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr for {args:?} lacks {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("\"token_ids\"")
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = fixture("gptneo_local");
    let m = dir.to_str().unwrap();
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["attribute", "--model", m, "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str], needle: &str| {
        let v = base(extra);
        let args: Vec<&str> = v.iter().map(String::as_str).collect();
        expect_error(&args, needle);
    };
    run(
        &["--prompt", LIST, "--answer", "3", "--path", "L3.attn/H9"],
        "step 2",
    );
    run(
        &["--prompt", LIST, "--answer", "3", "--path", "L3.atn"],
        "not a step",
    );
    run(
        &["--prompt", LIST, "--answer", " Get some"],
        "is not a single token",
    );
    run(&["--prompt", "", "--answer", "3"], "empty");
    let long = "Get some apples. ".repeat(40);
    let long: &'static str = Box::leak(long.into_boxed_str());
    run(&["--prompt", long, "--answer", "3"], "context");
    run(
        &["--prompt", LIST, "--answer", "3", "--foil", "apples and"],
        "--foil",
    );
    expect_error(
        &[
            "attribute",
            "--model",
            "/no/such/model",
            "--prompt",
            "x",
            "--answer",
            "x",
            "--device",
            "cpu",
        ],
        "/no/such/model",
    );
    expect_error(
        &[
            "attribute",
            "--model",
            m,
            "--prompt",
            "x",
            "--answer",
            "x",
            "--device",
            "tpu",
        ],
        "tpu",
    );
}

#[test]
fn refuses_to_overwrite_model_files() {
    let tmp = rdla_testutil::copy_fixture("gpt2_tied");
    let weights = tmp.path().join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let out = attribute(
        tmp.path().to_str().unwrap(),
        &["--json", weights.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
    assert_eq!(before, std::fs::read(&weights).unwrap());
}

/// A rotary, grouped-query model through the CLI: no `pos` in the labels or the arrays,
/// heads counted per query head, processing as TransformerLens applies it to RMSNorm models.
#[test]
fn mistral_json_has_no_pos_and_per_query_heads() {
    let dir = fixture("mistral");
    let r = reference("mistral");
    let out = rdla(&[
        "attribute",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        r["prompt"].as_str().unwrap(),
        "--answer",
        r["answer"].as_str().unwrap(),
        "--foil",
        r["foil"].as_str().unwrap(),
        "--path",
        "L2.mlp",
        "--json",
        "-",
    ]);
    assert_ok(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["component_labels"], r["component_labels"]);
    assert_eq!(j["component_labels"][1], "L0.attn");
    let (l, h, p, c) = (3, 4, r["n_pos"].as_u64().unwrap() as usize, 7);
    let hb = j["head_breakdown"].as_array().unwrap();
    assert_eq!(hb.len(), l);
    assert_eq!(hb[0].as_array().unwrap().len(), h);
    assert_eq!(hb[0][0].as_array().unwrap().len(), p);
    assert_eq!(hb[0][0][0].as_array().unwrap().len(), c);
    assert_eq!(j["head_dla"][0].as_array().unwrap().len(), h);
    let tv = j["target_value"].as_f64().unwrap();
    assert!((tv - r["target_value_diff"].as_f64().unwrap()).abs() < 1e-4);
    let applied: Vec<&str> = j["processing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        !applied.contains(&"center_writing_weights") && applied.contains(&"fold_ln"),
        "{}",
        j["processing"]
    );
    // the MLP reads resid_mid (sequential): its children end with its own layer's attention
    let kids = j["node"]["children"].as_array().unwrap();
    assert_eq!(kids.last().unwrap()["step"], "L2.attn");
}

fn json_of(out: &Output) -> serde_json::Value {
    assert_ok(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn trace_writes_paths_graph_and_png() {
    let dir = fixture("gpt2_tied");
    let r = reference("gpt2_tied");
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("graph.png");
    let j = json_of(&rdla(&[
        "trace",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        r["prompt"].as_str().unwrap(),
        "--answer",
        r["answer"].as_str().unwrap(),
        "--device",
        "cpu",
        "--budget",
        "40",
        "--top",
        "5",
        "--json",
        "-",
        "--png",
        png.to_str().unwrap(),
    ]));
    let value = j["value"].as_f64().unwrap();
    assert!((value - r["target_value"].as_f64().unwrap()).abs() < 1e-4);
    assert!((j["frontier_total"].as_f64().unwrap() - value).abs() < 1e-3);
    assert!(j["expanded"].as_u64().unwrap() <= 40);
    assert_eq!(j["paths"].as_array().unwrap().len(), 5);
    assert!(!j["nodes"].as_array().unwrap().is_empty());
    assert!(!j["edges"].as_array().unwrap().is_empty());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // a traced path, expanded by `attribute --path`, has the traced value
    let first = &j["paths"][0];
    let a = json_of(&rdla(&[
        "attribute",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        r["prompt"].as_str().unwrap(),
        "--answer",
        r["answer"].as_str().unwrap(),
        "--device",
        "cpu",
        "--path",
        first["path"].as_str().unwrap(),
        "--json",
        "-",
    ]));
    assert!((a["node"]["value"].as_f64().unwrap() - first["value"].as_f64().unwrap()).abs() < 1e-4);
}

#[test]
fn score_nodes_ablation_and_prompt_files() {
    let dir = fixture("llama_gqa");
    let r = reference("llama_gqa");
    let tmp = tempfile::tempdir().unwrap();
    let prompt = tmp.path().join("prompt.txt");
    std::fs::write(&prompt, r["prompt"].as_str().unwrap()).unwrap();
    let j = json_of(&rdla(&[
        "attribute",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--answer",
        r["answer"].as_str().unwrap(),
        "--device",
        "cpu",
        "--path",
        "L1.attn/H2/qk:3-mean",
        "--ablate",
        "L1.attn/H2",
        "--ablate",
        "L0.mlp",
        "--json",
        "-",
    ]));
    assert_eq!(j["token_ids"], r["token_ids"]);
    let node = &j["node"];
    assert_eq!(node["units"], "score");
    assert_eq!(node["alternatives"], true);
    let table = &node["table"];
    let sum: f64 = table["values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .sum();
    assert!((sum - node["value"].as_f64().unwrap()).abs() < 1e-3);
    let ab = &j["ablation"];
    assert_eq!(ab["paths"].as_array().unwrap().len(), 2);
    let change = ab["clean"].as_f64().unwrap() - ab["ablated"].as_f64().unwrap();
    assert!((change - ab["change"].as_f64().unwrap()).abs() < 1e-5);
    // a key the head cannot see is a clear error naming the valid keys
    let out = rdla(&[
        "attribute",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "a b",
        "--answer",
        r["answer"].as_str().unwrap(),
        "--device",
        "cpu",
        "--path",
        "L1.attn/H0/qk:9",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qk:9") && err.contains("qk:{k}"), "{err}");
}

/// Every TransformerLens fixture family from the command line: the target (answer − foil) and
/// every component's attribution equal the reference's, and a model with a final logit
/// soft-cap (Gemma 2) reports the capped target beside the attributed pre-cap one.
#[test]
fn every_family_attributes_from_the_cli() {
    for name in rdla_testutil::TL_FIXTURES {
        let r = rdla_testutil::Reference::load(name);
        let dir = fixture(name);
        let j = json_of(&rdla(&[
            "attribute",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            &r.str("prompt"),
            "--answer",
            &r.str("answer"),
            "--foil",
            &r.str("foil"),
            "--json",
            "-",
        ]));
        let tv = j["target_value"].as_f64().unwrap();
        let want = r.json["target_value_diff"].as_f64().unwrap();
        assert!((tv - want).abs() < 1e-4, "{name}: target {tv} vs {want}");
        let comps: Vec<f32> = j["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let err = rdla_testutil::max_abs_diff(&comps, &r.tensor("component_dla_diff"));
        assert!(err <= 1e-4, "{name}: components differ by {err}");
        let capped = &j["final_logit_softcap"];
        match r.json.get("target_logit_capped_diff") {
            Some(want) => {
                let got = capped["target_value_capped"].as_f64().unwrap();
                let want = want.as_f64().unwrap();
                assert!((got - want).abs() < 1e-4, "{name}: capped {got} vs {want}");
                assert!(capped["note"].as_str().unwrap().contains("pre-cap"));
            }
            None => assert!(capped.is_null(), "{name}: {capped}"),
        }
    }
}

/// Regression tests of the adversarial pass (issue #17) that need the binary: a closed pipe
/// ends quietly; `--foil` equal to `--answer` is refused; finite weights that overflow in the
/// forward pass are an error naming where, not `null`s in the JSON.
#[test]
fn pipes_identical_targets_and_overflowing_weights() {
    use std::io::{BufRead as _, BufReader};
    let dir = fixture("gpt2_tied");
    let m = dir.to_str().unwrap();
    // `rdla attribute … --json - | head -1`
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdla"))
        .args([
            "attribute",
            "--model",
            m,
            "--prompt",
            LIST,
            "--answer",
            "3",
            "--device",
            "cpu",
            "--json",
            "-",
        ])
        .env("RDLA_SKIP_WGPU", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(first.starts_with('{'), "{first}");
    eprintln!(
        "finding: `| head -1`: exit {:?}, stderr {:?}",
        out.status.code(),
        err.trim()
    );

    expect_error(
        &[
            "attribute",
            "--model",
            m,
            "--prompt",
            LIST,
            "--answer",
            "3",
            "--foil",
            "3",
            "--device",
            "cpu",
        ],
        "foil",
    );

    // weights that are finite but overflow in the forward pass
    let tmp = rdla_testutil::copy_fixture("gpt2_tied");
    let store = rdla_model::WeightStore::open_dir(tmp.path()).unwrap();
    let mut tensors = rdla_testutil::read_all(&store);
    drop(store);
    for (k, _, d) in &mut tensors {
        // finite (≤ 1e37), but x·W_in, then ·W_out, overflow f32 in the forward pass
        if k.ends_with("mlp.c_fc.weight") || k.ends_with("mlp.c_proj.weight") {
            d.iter_mut().for_each(|v| *v *= 1e37);
        }
    }
    rdla_testutil::write_safetensors(&tmp.path().join("model.safetensors"), &tensors);
    let out = rdla(&[
        "attribute",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt",
        LIST,
        "--answer",
        "3",
        "--device",
        "cpu",
        "--json",
        "-",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "overflowing weights gave a result: {}",
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(600)
            .collect::<String>()
    );
    assert!(err.contains("finite"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("null"));
    eprintln!("finding: overflowing weights: {}", err.trim());
}

/// `--device auto` says nothing on stderr when the machine has no display server (it used to
/// print libwayland's "XDG_RUNTIME_DIR is invalid" twice: Mesa's device-select Vulkan layer
/// connects to Wayland while wgpu enumerates adapters).
#[test]
fn device_auto_probes_quietly() {
    let out = Command::new(env!("CARGO_BIN_EXE_rdla"))
        .args([
            "attribute",
            "--model",
            fixture("gpt2_tied").to_str().unwrap(),
            "--prompt",
            LIST,
            "--answer",
            "3",
            "--device",
            "auto",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}

/// A tokenizer.json whose pre-tokenizer regex exceeds the regex engine's retry limit: a clear
/// error, and no panic message before it.
#[test]
fn a_runaway_tokenizer_regex_is_a_quiet_error() {
    let tmp = rdla_testutil::copy_fixture("gpt2_tied");
    rdla_testutil::use_runaway_pre_tokenizer(tmp.path());
    expect_error(
        &[
            "attribute",
            "--model",
            tmp.path().to_str().unwrap(),
            "--prompt",
            rdla_testutil::RUNAWAY_REGEX_TEXT,
            "--answer",
            "b",
            "--device",
            "cpu",
        ],
        "pre-tokenizer pattern",
    );
}

/// `--max-memory` holds: a budget smaller than the model is a clear error naming the budget
/// that would do, a bad size is refused by the parser, and a budget that fits is reported in
/// the JSON's `memory` with the process's peak.
#[test]
fn a_memory_budget_holds_and_is_reported() {
    let model = fixture("gpt2_tied");
    let m = model.to_str().unwrap();
    let out = attribute(m, &["--max-memory", "1KiB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the memory budget is 0.00 GiB (--max-memory)")
            && err.contains("needs at least"),
        "{err}"
    );
    let out = attribute(m, &["--max-memory", "6 parsecs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));

    let out = attribute(m, &["--max-memory", "2GiB", "--json", "-"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mem = &v["memory"];
    assert_eq!(mem["budget_bytes"], 2u64 << 30, "{mem}");
    assert_eq!(mem["budget_explicit"], true, "{mem}");
    // the model fits: its layers are held, unless the suite runs with every layer streamed
    // (RDLA_LAYER_CACHE, as CI's second pass does)
    let streamed = mem["streamed_layers"].as_u64().unwrap();
    let streamed_bytes = mem["streamed_bytes"].as_u64().unwrap();
    let cache = &v["model"]["streamed_layer_cache"];
    if std::env::var_os("RDLA_LAYER_CACHE").is_some() {
        assert!(streamed > 0, "{mem}");
        // at least one whole block per layer read, at most the whole file per layer read
        let disk = v["model"]["disk_bytes"].as_u64().unwrap();
        assert!(
            streamed_bytes > 0 && streamed_bytes < streamed * disk,
            "{mem}"
        );
        assert_eq!(cache, 1, "{}", v["model"]);
    } else {
        assert_eq!((streamed, streamed_bytes), (0, 0), "{mem}");
        assert!(cache.is_null(), "{}", v["model"]);
    }
    let peak = mem["peak_bytes"].as_u64().unwrap();
    assert!(peak > 1 << 20 && peak < 2u64 << 30, "{mem}");
    // the model facts say where the token matrices are
    assert_eq!(v["model"]["tokens_in_place"], true, "{}", v["model"]);

    // the trace's graph JSON reports it too
    let mut args = vec!["trace", "--model", m];
    args.extend_from_slice(&common::TARGET);
    args.extend_from_slice(&["--budget", "5", "--max-memory", "3GiB", "--json", "-"]);
    let out = rdla(&args);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["memory"]["budget_bytes"], 3u64 << 30, "{}", v["memory"]);
    assert!(
        v["memory"]["peak_bytes"]
            .as_u64()
            .is_some_and(|p| p > 1 << 20)
    );
}

/// `--contrast-prompt`: the contrast prompt's values are those of its own run, every delta is
/// the difference of the two runs, and the deltas add up (Σ component deltas = target delta;
/// at a node, Σ child deltas + bias + residual = value delta). Below the root, prompts of
/// different lengths are refused with the reason.
#[test]
fn contrast_deltas_are_the_difference_of_two_runs_and_add_up() {
    let m = common::fixture("gpt2_untied");
    let m = m.to_str().unwrap();
    let run = |prompt: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "attribute",
            "--model",
            m,
            "--prompt",
            prompt,
            "--answer",
            ".",
            "--device",
            "cpu",
            "--json",
            "-",
        ];
        args.extend_from_slice(extra);
        let out = common::rdla(&args);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        fn rec(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| rec(x, out)),
                // a null (NaN) is no number: the comparison below fails on it
                other => out.push(other.as_f64().unwrap_or(f64::NAN)),
            }
        }
        let mut out = Vec::new();
        rec(v, &mut out);
        out
    };
    let close = |what: &str, got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    };
    let a_text = "Get some apples.";
    let a = run(a_text, &[]);
    let n_a = a["token_ids"].as_array().unwrap().len();
    // a contrast prompt of the same length, for the drill-down below
    let b_text = [
        "Get some pears.",
        "Eat some apples.",
        "Get many apples.",
        "Get the apples.",
    ]
    .into_iter()
    .find(|p| run(p, &[])["token_ids"].as_array().unwrap().len() == n_a)
    .expect("a same-length contrast prompt");
    let b = run(b_text, &[]);

    let with = run(a_text, &["--contrast-prompt", b_text]);
    let c = &with["contrast"];
    assert_eq!(c["prompt"], b_text);
    assert_eq!(c["token_ids"], b["token_ids"]);
    close(
        "target_value",
        &floats(&c["target_value"]),
        &floats(&b["target_value"]),
    );
    for key in ["components", "head_dla"] {
        close(key, &floats(&c[key]), &floats(&b[key]));
        let want: Vec<f64> = floats(&a[key])
            .iter()
            .zip(floats(&b[key]))
            .map(|(x, y)| x - y)
            .collect();
        close(&format!("delta.{key}"), &floats(&c["delta"][key]), &want);
    }
    let dt = floats(&c["delta"]["target_value"])[0];
    close(
        "delta.target_value",
        &[dt],
        &[floats(&a["target_value"])[0] - floats(&b["target_value"])[0]],
    );
    // Σ component deltas = target delta
    let sum: f64 = floats(&c["delta"]["components"]).iter().sum();
    close("Σ component deltas", &[sum], &[dt]);

    // a head of the last layer, expanded on both prompts
    let n_layers = a["head_dla"].as_array().unwrap().len();
    let path = format!("L{}.attn/H0", n_layers - 1);
    let na = run(a_text, &["--path", &path]);
    let nb = run(b_text, &["--path", &path]);
    let with = run(a_text, &["--path", &path, "--contrast-prompt", b_text]);
    let node = &with["contrast"]["node"];
    assert_eq!(node["path"], path.as_str());
    let kids = node["children"].as_array().unwrap();
    let (ka, kb) = (
        na["node"]["children"].as_array().unwrap(),
        nb["node"]["children"].as_array().unwrap(),
    );
    assert!(!kids.is_empty() && kids.len() == ka.len() && kids.len() == kb.len());
    let mut sum = 0.0;
    for ((k, x), y) in kids.iter().zip(ka).zip(kb) {
        let (va, vb) = (floats(&x["value"])[0], floats(&y["value"])[0]);
        close("child value", &floats(&k["value"]), &[va]);
        close("child contrast_value", &floats(&k["contrast_value"]), &[vb]);
        close("child delta", &floats(&k["delta"]), &[va - vb]);
        sum += floats(&k["delta"])[0];
    }
    let d = &node["delta"];
    let dv = floats(&d["value"])[0];
    close(
        "node delta",
        &[dv],
        &[floats(&na["node"]["value"])[0] - floats(&nb["node"]["value"])[0]],
    );
    close(
        "Σ child deltas + bias + residual",
        &[sum + floats(&d["bias"])[0] + floats(&d["residual"])[0]],
        &[dv],
    );

    // different lengths: fine at the root, refused below it with the reason
    let longer = "Get some apples and some oranges and some pears.";
    let root = run(a_text, &["--contrast-prompt", longer]);
    assert!(root["contrast"]["delta"]["target_value"].is_number());
    let mut args = vec!["attribute", "--model", m];
    args.extend_from_slice(&common::TARGET);
    args.extend_from_slice(&["--path", &path, "--contrast-prompt", longer]);
    let out = common::rdla(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("same number of tokens"), "{err}");
}

/// `rdla census --model model --prompts prompts --out out --device cpu` and `extra`.
fn census_run(
    model: &str,
    prompts: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "census",
        "--model",
        model,
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    rdla(&args)
}

/// The census tables in `a` are those in `b`: the same rows, paths, prompts and counts, and
/// every number within `rel` of the largest of its column (0: the same bits). A shard batches
/// its records differently from a run over all of them (a batch's products sum in their own
/// order), so their numbers agree to float rounding.
fn assert_close_tables(a: &std::path::Path, b: &std::path::Path, rel: f64) {
    for t in ["prompts.parquet", "nodes.parquet", "summary.parquet"] {
        let (ca, cb) = (parquet_columns(&a.join(t)), parquet_columns(&b.join(t)));
        let mut names: Vec<&String> = ca.keys().collect();
        names.sort();
        let mut other: Vec<&String> = cb.keys().collect();
        other.sort();
        assert_eq!(names, other, "{t}: columns");
        for name in names {
            let (x, y) = (&ca[name], &cb[name]);
            assert_eq!(x.len(), y.len(), "{t}: {name}: rows");
            let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<f64>().ok());
            let numeric = x.iter().all(|v| v.is_none() || num(v).is_some())
                && x.iter()
                    .any(|v| v.as_deref().is_some_and(|s| s.contains('.')));
            if !numeric {
                assert_eq!(x, y, "{t}: {name}");
                continue;
            }
            let scale = x
                .iter()
                .filter_map(num)
                .fold(1e-30f64, |m, v| m.max(v.abs()));
            for (r, (p, q)) in x.iter().zip(y).enumerate() {
                match (num(p), num(q)) {
                    (Some(p), Some(q)) => assert!(
                        (p - q).abs() <= rel * scale || (p.is_nan() && q.is_nan()),
                        "{t}: {name} row {r}: {p} vs {q}"
                    ),
                    _ => assert_eq!(p, q, "{t}: {name} row {r}"),
                }
            }
        }
    }
}

/// The census tables in `a` are those in `b`, value for value.
fn assert_same_tables(a: &std::path::Path, b: &std::path::Path) {
    for t in ["prompts.parquet", "nodes.parquet", "summary.parquet"] {
        assert_eq!(
            parquet_columns(&a.join(t)),
            parquet_columns(&b.join(t)),
            "{t}"
        );
    }
}

/// Every column of a census table as `f64`s (numbers) or strings, by name.
fn parquet_columns(
    file: &std::path::Path,
) -> std::collections::HashMap<String, Vec<Option<String>>> {
    use arrow_array::Array as _;
    let f = std::fs::File::open(file).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut out: std::collections::HashMap<String, Vec<Option<String>>> = Default::default();
    for batch in reader {
        let batch = batch.unwrap();
        for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
            let v = out.entry(field.name().clone()).or_default();
            for r in 0..col.len() {
                // every value as text (floats exactly, with `{:?}`), null as None
                let any = col.as_any();
                let text = if col.is_null(r) {
                    None
                } else if let Some(a) = any.downcast_ref::<arrow_array::StringArray>() {
                    Some(a.value(r).to_string())
                } else if let Some(a) = any.downcast_ref::<arrow_array::UInt32Array>() {
                    Some(a.value(r).to_string())
                } else if let Some(a) = any.downcast_ref::<arrow_array::Float32Array>() {
                    Some(format!("{:?}", a.value(r)))
                } else if let Some(a) = any.downcast_ref::<arrow_array::Float64Array>() {
                    Some(format!("{:?}", a.value(r)))
                } else if let Some(a) = any.downcast_ref::<arrow_array::BooleanArray>() {
                    Some(a.value(r).to_string())
                } else {
                    panic!("unexpected column type {:?}", field.data_type())
                };
                v.push(text);
            }
        }
    }
    out
}

/// `rdla census`: every number equals `attribute`'s for the same prompt (root children,
/// heads, attention biases, and at depth 2 each head's children summed by component); the
/// summary agrees with statistics recomputed here from the node rows; two shards merge into
/// exactly the unsharded tables; a malformed record names its line and writes nothing; a
/// multi-token answer is refused, or skipped and listed with --skip-bad.
#[test]
fn census_equals_attribute_and_shards_merge() {
    let m = common::fixture("gpt2_untied");
    let m = m.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = [
        "Get some apples.",
        "Get some pears.",
        "Eat the apples and the pears.",
        "Some apples.",
        "Get apples, get pears.",
    ];
    let jsonl: String = prompts
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({"prompt": p, "answer": "."})))
        .collect();
    let file = tmp.path().join("p.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    let census = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["--depth", "2"];
        args.extend_from_slice(extra);
        assert_ok(&census_run(m, &file, out, &args));
    };
    let all = tmp.path().join("all");
    census(&all, &[]);
    let nodes = parquet_columns(&all.join("nodes.parquet"));
    let value = |i: usize, path: &str| -> f64 {
        let k = (0..nodes["path"].len())
            .find(|&k| {
                nodes["prompt_index"][k].as_deref() == Some(&i.to_string())
                    && nodes["path"][k].as_deref() == Some(path)
            })
            .unwrap_or_else(|| panic!("no row for prompt {i}, {path}"));
        // the f32 exactly (its shortest text, parsed as f32, then widened)
        f64::from(
            nodes["value"][k]
                .as_deref()
                .unwrap()
                .parse::<f32>()
                .unwrap(),
        )
    };
    let close = |what: &str, got: f64, want: f64| {
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{what}: {got} vs {want}"
        );
    };
    for i in [0, 3] {
        let run = |extra: &[&str]| -> serde_json::Value {
            let mut args = vec!["attribute", "--model", m, "--prompt", prompts[i]];
            args.extend_from_slice(&["--answer", ".", "--device", "cpu", "--json", "-"]);
            args.extend_from_slice(extra);
            let out = rdla(&args);
            assert_ok(&out);
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let a = run(&[]);
        for (label, v) in a["component_labels"]
            .as_array()
            .unwrap()
            .iter()
            .zip(a["components"].as_array().unwrap())
        {
            close(
                label.as_str().unwrap(),
                value(i, label.as_str().unwrap()),
                v.as_f64().unwrap(),
            );
        }
        let heads = a["head_dla"].as_array().unwrap();
        for (l, row) in heads.iter().enumerate() {
            for (h, v) in row.as_array().unwrap().iter().enumerate() {
                close(
                    "head",
                    value(i, &format!("L{l}.attn/H{h}")),
                    v.as_f64().unwrap(),
                );
            }
            close(
                "attn bias",
                value(i, &format!("L{l}.attn/bias")),
                a["attn_bias"][l].as_f64().unwrap(),
            );
        }
        // depth 2: the last layer's head 1, its children summed by component
        let head = format!("L{}.attn/H1", heads.len() - 1);
        let n = run(&["--path", &head]);
        let mut by_comp: std::collections::BTreeMap<String, f64> = Default::default();
        for c in n["node"]["children"].as_array().unwrap() {
            let step = c["step"].as_str().unwrap();
            let key = step
                .split_once(':')
                .map_or(step, |(_, comp)| comp)
                .to_string();
            *by_comp.entry(key).or_default() += c["value"].as_f64().unwrap();
        }
        by_comp.insert("bias".into(), n["node"]["bias"].as_f64().unwrap());
        for (comp, sum) in &by_comp {
            let path = if comp == "bias" {
                format!("{head}/bias")
            } else {
                format!("{head}/*:{comp}")
            };
            close(&path, value(i, &path), *sum);
        }
        let p = parquet_columns(&all.join("prompts.parquet"));
        let row = p["prompt_index"]
            .iter()
            .position(|x| x.as_deref() == Some(&i.to_string()))
            .unwrap();
        close(
            "target_value",
            p["target_value"][row].as_deref().unwrap().parse().unwrap(),
            a["target_value"].as_f64().unwrap(),
        );
    }

    // the summary, recomputed from the node rows
    let summary = parquet_columns(&all.join("summary.parquet"));
    let paths: Vec<String> = summary["path"].iter().map(|p| p.clone().unwrap()).collect();
    let n_prompts = prompts.len() as f64;
    for (k, path) in paths.iter().enumerate() {
        let vals: Vec<f64> = (0..prompts.len()).map(|i| value(i, path)).collect();
        let mean = vals.iter().sum::<f64>() / n_prompts;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n_prompts - 1.0);
        let get = |c: &str| -> f64 { summary[c][k].as_deref().unwrap().parse().unwrap() };
        let tight = |what: &str, got: f64, want: f64| {
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{path} {what}: {got} vs {want}"
            );
        };
        tight("mean", get("mean"), mean);
        tight("std", get("std"), var.sqrt());
        tight(
            "ci95_low",
            get("ci95_low"),
            mean - 1.96 * var.sqrt() / n_prompts.sqrt(),
        );
        tight(
            "mean_abs",
            get("mean_abs"),
            vals.iter().map(|v| v.abs()).sum::<f64>() / n_prompts,
        );
        // among the ten largest |value| of its siblings (the same parent path)
        let parent = |p: &str| p.rfind('/').map_or(String::new(), |i| p[..i].to_string());
        let siblings: Vec<&String> = paths.iter().filter(|q| parent(q) == parent(path)).collect();
        let top: f64 = (0..prompts.len())
            .filter(|&i| {
                let mine = value(i, path).abs();
                siblings.iter().filter(|q| value(i, q).abs() > mine).count() < 10
            })
            .count() as f64;
        tight("top10_frac", get("top10_frac"), top / n_prompts);
    }

    // two shards merged are the unsharded run, row for row (to float rounding: each shard
    // batches its records differently)
    let (s0, s1, merged) = (
        tmp.path().join("s0"),
        tmp.path().join("s1"),
        tmp.path().join("m"),
    );
    census(&s0, &["--shard", "0/2"]);
    census(&s1, &["--shard", "1/2"]);
    let out = rdla(&[
        "census",
        "merge",
        "--out",
        merged.to_str().unwrap(),
        s0.to_str().unwrap(),
        s1.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert_close_tables(&merged, &all, 1e-5);

    // the same prompts as a Parquet file give the same tables
    let pq_file = tmp.path().join("p.parquet");
    {
        use std::sync::Arc;
        let col =
            |v: Vec<&str>| Arc::new(arrow_array::StringArray::from(v)) as arrow_array::ArrayRef;
        let batch = arrow_array::RecordBatch::try_from_iter([
            ("prompt", col(prompts.to_vec())),
            ("answer", col(vec!["."; prompts.len()])),
        ])
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&pq_file).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let from_pq = tmp.path().join("from_parquet");
    assert_ok(&census_run(m, &pq_file, &from_pq, &["--depth", "2"]));
    assert_same_tables(&from_pq, &all);

    // a malformed record: its line named, nothing written
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{jsonl}{{\"prompt\": \"x\"\n")).unwrap();
    let out_bad = tmp.path().join("bad_out");
    let out = census_run(m, &bad, &out_bad, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 6"), "{err}");
    assert!(!out_bad.exists(), "something was written");
    // a multi-token answer: refused naming its line, or skipped and listed
    let multi = tmp.path().join("multi.jsonl");
    std::fs::write(
        &multi,
        format!(
            "{jsonl}{}\n",
            serde_json::json!({"prompt": "Get some", "answer": " apples and pears"})
        ),
    )
    .unwrap();
    let out_multi = tmp.path().join("multi_out");
    let out = census_run(m, &multi, &out_multi, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 6"), "{err}");
    assert!(!out_multi.exists());
    let out = census_run(m, &multi, &out_multi, &["--skip-bad"]);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped 1 records") && err.contains("line 6"),
        "{err}"
    );
    assert_eq!(
        parquet_columns(&out_multi.join("prompts.parquet"))["prompt_index"].len(),
        prompts.len()
    );
}

/// Ctrl-C during a census stops after the prompt being computed: the tables hold the prompts
/// done (and the summary is over them), the process says so and exits with status 130.
#[cfg(unix)]
#[test]
fn an_interrupted_census_keeps_what_is_done() {
    use std::io::Read as _;
    let tmp = tempfile::tempdir().unwrap();
    let total = 4000;
    let jsonl: String = (0..total)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("Get {i} apples and some pears."), "answer": "."})
            )
        })
        .collect();
    let file = tmp.path().join("p.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    let out = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdla"))
        .args([
            "census",
            "--model",
            fixture("gpt2_untied").to_str().unwrap(),
        ])
        .args([
            "--prompts",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--device", "cpu"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the first progress line (after half a second of prompts), then SIGINT
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("prompts ·") {
        let n = err.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "census ended first: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    err.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(130), "{text}");
    let said: usize = text
        .split("interrupted after ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interruption message: {text}"));
    assert!(text.contains(&format!("of {total} prompts")), "{text}");
    assert!(0 < said && said < total, "{said} of {total}");
    let prompts = parquet_columns(&out.join("prompts.parquet"));
    assert_eq!(prompts["prompt_index"].len(), said);
    // the first `said` records, in order
    for (k, i) in prompts["prompt_index"].iter().enumerate() {
        assert_eq!(i.as_deref(), Some(k.to_string().as_str()));
    }
    let summary = parquet_columns(&out.join("summary.parquet"));
    assert!(
        summary["n"]
            .iter()
            .all(|n| n.as_deref() == Some(said.to_string().as_str())),
        "summary over {said} prompts: {:?}",
        &summary["n"][..3]
    );
}

/// `trace --verify K`: every verified site's `effect` is the real change `attribute --ablate
/// SITE` reports for it alone, `attributed` is that site's traced value in the graph,
/// `spearman` is the rank correlation of the two (recomputed here), and `explained` is the
/// change with the K sites ablated together (`attribute` with K `--ablate`s) over the target.
/// The verification is stamped into the PNG (a caption line taller) and the JSON.
#[test]
fn a_verified_trace_matches_each_ablation() {
    let m = common::fixture("gpt2_untied");
    let m = m.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let trace = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["trace", "--model", m];
        args.extend_from_slice(&common::TARGET);
        args.extend_from_slice(&["--budget", "40", "--json", "-"]);
        args.extend_from_slice(extra);
        let out = rdla(&args);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let png_v = tmp.path().join("v.png");
    let png_plain = tmp.path().join("plain.png");
    let t = trace(&["--verify", "4", "--png", png_v.to_str().unwrap()]);
    let plain = trace(&["--png", png_plain.to_str().unwrap()]);
    assert!(plain.get("verification").is_none());
    let v = &t["verification"];
    assert_eq!(v["ablation"], "zero");
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 4, "{v}");
    let ablate = |paths: &[&str]| -> serde_json::Value {
        let mut args = vec!["attribute", "--model", m];
        args.extend_from_slice(&common::TARGET);
        for p in paths {
            args.extend_from_slice(&["--ablate", p]);
        }
        args.extend_from_slice(&["--json", "-"]);
        let out = rdla(&args);
        assert_ok(&out);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["ablation"].clone()
    };
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    let nodes = t["nodes"].as_array().unwrap();
    let mut previous = f64::INFINITY;
    let (mut attributed, mut effects) = (Vec::new(), Vec::new());
    for s in sites {
        let site = s["site"].as_str().unwrap();
        let alone = ablate(&[site]);
        assert_eq!(f(&s["effect"]), f(&alone["change"]), "{site}: effect");
        let node = nodes
            .iter()
            .find(|n| n["id"] == s["site"])
            .unwrap_or_else(|| panic!("{site} is not a graph node"));
        assert_eq!(f(&s["attributed"]), f(&node["value"]), "{site}: attributed");
        assert_ne!(s["site"], t["from"], "the node traced from is not a site");
        // largest |attributed| first
        assert!(f(&s["attributed"]).abs() <= previous);
        previous = f(&s["attributed"]).abs();
        attributed.push(f(&s["attributed"]));
        effects.push(f(&s["effect"]));
    }
    // Spearman's ρ from the ranks (no ties among these values)
    let ranks = |x: &[f64]| -> Vec<f64> {
        x.iter()
            .map(|a| 1.0 + x.iter().filter(|b| *b < a).count() as f64)
            .collect()
    };
    let (ra, rb) = (ranks(&attributed), ranks(&effects));
    let n = ra.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(a, b)| (a - b).powi(2)).sum();
    let rho = 1.0 - 6.0 * d2 / (n * (n * n - 1.0));
    assert!(
        (f(&v["spearman"]) - rho).abs() < 1e-9,
        "{} vs {rho}",
        v["spearman"]
    );
    let all: Vec<&str> = sites.iter().map(|s| s["site"].as_str().unwrap()).collect();
    let together = ablate(&all);
    let explained = f(&together["change"]) / f(&together["clean"]);
    assert!(
        (f(&v["explained"]) - explained).abs() < 1e-6,
        "{} vs {explained}",
        v["explained"]
    );
    // the PNG carries the verification as a second caption line
    let height = |p: &std::path::Path| image::image_dimensions(p).unwrap().1;
    assert_eq!(height(&png_v), height(&png_plain) + 40);
    // nothing to verify is refused
    let mut args = vec!["trace", "--model", m];
    args.extend_from_slice(&common::TARGET);
    args.extend_from_slice(&["--verify", "0"]);
    let out = rdla(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--verify 0"));
}

/// Result files: `trace --verify --save` writes a zip of `manifest.json` and Parquet tables
/// that a plain zip and Parquet reader opens (the nodes with their values and parents, the
/// graph, the verification); `rdla verify` recomputes every node and agrees, on the model or an
/// identical copy of its files; one tampered value fails naming that node; another model, or
/// the same folder with one weight byte changed, is refused before computing.
#[test]
fn a_saved_result_verifies_and_tampering_is_caught() {
    use std::io::Read as _;
    let m = common::fixture("gpt2_untied");
    let m = m.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("r.rdla");
    let mut args = vec!["trace", "--model", m];
    args.extend_from_slice(&common::TARGET);
    args.extend_from_slice(&["--budget", "30", "--verify", "3", "--json", "-"]);
    args.extend_from_slice(&["--save", file.to_str().unwrap()]);
    let out = rdla(&args);
    assert_ok(&out);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // the archive, read with a plain zip reader and a plain Parquet reader
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut entry = |name: &str| {
        let mut b = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut b).unwrap();
        b
    };
    let manifest: serde_json::Value = serde_json::from_slice(&entry("manifest.json")).unwrap();
    assert_eq!(manifest["format"], 1);
    assert_eq!(manifest["token_ids"], t["token_ids"]);
    assert_eq!(manifest["answer_id"], t["answer_id"]);
    let files = manifest["model"]["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f["name"] == "model.safetensors"
            && f["sha256"].as_str().is_some_and(|h| h.len() == 64))
    );
    let table = |name: &str, bytes: Vec<u8>| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        parquet_columns(&p)
    };
    let nodes = table("nodes.parquet", entry("nodes.parquet"));
    let value_of = |path: &str| -> f64 {
        let k = nodes["path"]
            .iter()
            .position(|p| p.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("{path} not saved"));
        nodes["value"][k].as_deref().unwrap().parse().unwrap()
    };
    // the root (the target) and every traced path, with its parent
    assert!((value_of("") - t["value"].as_f64().unwrap()).abs() < 1e-6);
    for p in t["paths"].as_array().unwrap() {
        let path = p["path"].as_str().unwrap();
        assert!(
            (value_of(path) - p["value"].as_f64().unwrap()).abs() < 1e-6,
            "{path}"
        );
        let k = nodes["path"]
            .iter()
            .position(|x| x.as_deref() == Some(path))
            .unwrap();
        let parent = nodes["parent"][k].clone().unwrap();
        assert!(path.starts_with(&parent), "{path} under {parent}");
    }
    let sites = table("sites.parquet", entry("sites.parquet"));
    assert_eq!(sites["id"].len(), t["nodes"].as_array().unwrap().len());
    let ver = table("verification.parquet", entry("verification.parquet"));
    let vsites = t["verification"]["sites"].as_array().unwrap();
    assert_eq!(ver["site"].len(), vsites.len());
    for (k, s) in vsites.iter().enumerate() {
        assert_eq!(ver["site"][k].as_deref(), s["site"].as_str());
    }

    let verify = |file: &std::path::Path, model: &str| {
        rdla(&[
            "verify",
            file.to_str().unwrap(),
            "--model",
            model,
            "--device",
            "cpu",
        ])
    };
    let out = verify(&file, m);
    assert_ok(&out);
    // every node, and the verification's runs: each site alone, then all together
    let said = String::from_utf8_lossy(&out.stdout);
    let runs = format!("the verification's {} ablated runs agree", vsites.len() + 1);
    assert!(said.contains(&runs), "{said}");
    // the same files in another folder are the same model
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(m).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    assert_ok(&verify(&file, copy.to_str().unwrap()));
    // one value changed: that node is named
    let mut saved = rdla_session::saved::Saved::open(&file).unwrap();
    let k = saved
        .nodes
        .iter()
        .position(|n| !n.path.is_root() && n.value.abs() > 0.01)
        .unwrap();
    saved.nodes[k].value += 0.5;
    let victim = saved.nodes[k].path.to_string();
    // a changed result, saved and verified: refused, naming what differs
    let tampered = tmp.path().join("tampered.rdla");
    let refused_naming = |saved: &rdla_session::saved::Saved, what: &str| {
        std::fs::write(&tampered, saved.to_bytes().unwrap()).unwrap();
        let out = verify(&tampered, m);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{err}");
    };
    refused_naming(&saved, &format!("`{victim}` does not match"));
    // one verification effect changed (a site's, or all together): that run is named
    for which in [1, vsites.len()] {
        let mut saved = rdla_session::saved::Saved::open(&file).unwrap();
        let what = if which < vsites.len() {
            saved.verification[which].effect += 0.5;
            let s = &saved.verification[which];
            format!("zero ablation of `{}` ({})", s.site, s.label)
        } else {
            let v = saved.manifest.verification.as_mut().unwrap();
            v.together += 0.5;
            format!("zero ablation of all {} sites together", vsites.len())
        };
        refused_naming(&saved, &format!("{what} does not match"));
    }
    // saved while comparing with another prompt: the nodes are the differences, and a
    // verification by patching is rerun from that prompt
    let patched = tmp.path().join("patched.rdla");
    let mut args = vec!["trace", "--model", m];
    args.extend_from_slice(&common::TARGET);
    args.extend_from_slice(&["--budget", "30", "--verify", "3", "--ablation", "patch"]);
    args.extend_from_slice(&["--contrast-prompt", "Get some pears."]);
    args.extend_from_slice(&["--save", patched.to_str().unwrap()]);
    assert_ok(&rdla(&args));
    let saved = rdla_session::saved::Saved::open(&patched).unwrap();
    assert_eq!(
        saved.manifest.contrast_prompt.as_deref(),
        Some("Get some pears.")
    );
    assert!(saved.verification.iter().any(|s| s.effect.abs() > 1e-3));
    // each node with its value in both runs
    assert!(saved.nodes.iter().all(|n| n.contrast.is_some()));
    let out = verify(&patched, m);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ablated runs agree"), "{said}");
    // the prompt itself as its contrast: not the contrast values saved
    let mut other = saved.clone();
    other.manifest.contrast_prompt = Some("Get some apples.".into());
    refused_naming(&other, "in the contrast prompt's run does not match");
    // one patched effect changed
    let mut other = saved;
    other.verification[0].effect += 0.5;
    refused_naming(&other, "patch ablation of `");
    // another model, or one weight byte changed: refused before computing
    let out = verify(&file, common::fixture("gpt2_tied").to_str().unwrap());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the model"));
    let w = copy.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let out = verify(&file, copy.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("model.safetensors differs"),
        "{err}"
    );
    // not a result file: refused by verify, and by explore before any window opens
    let out = verify(&copy.join("config.json"), m);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an rdla result file"));
    let out = rdla(&["explore", copy.join("config.json").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an rdla result file"));
}

/// Activation patching (`--ablation patch`): a site takes its value from the contrast
/// prompt's run. Patching the one token embedding where two prompts differ turns the run into
/// the contrast prompt's own run (its target exactly); patching every verified site with the
/// prompt's own values changes nothing; without a contrast prompt, or with one of another
/// length, it is a clear error.
#[test]
fn activation_patching_takes_the_other_runs_values() {
    let m = common::fixture("gpt2_untied");
    let m = m.to_str().unwrap();
    let (a, b) = ("Get some apples.", "Get some pears.");
    let run = |args: &[&str]| -> serde_json::Value {
        let out = rdla(args);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = |p: &'static str| {
        vec![
            "attribute",
            "--model",
            m,
            "--prompt",
            p,
            "--answer",
            ".",
            "--device",
            "cpu",
            "--json",
            "-",
        ]
    };
    let ja = run(&base(a));
    let jb = run(&base(b));
    let (ia, ib) = (
        ja["token_ids"].as_array().unwrap().clone(),
        jb["token_ids"].as_array().unwrap().clone(),
    );
    assert_eq!(
        ia.len(),
        ib.len(),
        "the two prompts need the same token count"
    );
    let differ: Vec<usize> = (0..ia.len()).filter(|&i| ia[i] != ib[i]).collect();
    assert_eq!(differ.len(), 1, "{ia:?} vs {ib:?}");
    let site = format!("L0.attn/H0/{}:embed", differ[0]);
    let mut args = base(a);
    args.extend_from_slice(&[
        "--ablate",
        &site,
        "--ablation",
        "patch",
        "--contrast-prompt",
        b,
    ]);
    let j = run(&args);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ablated = f(&j["ablation"]["ablated"]);
    let target_b = f(&jb["target_value"]);
    assert!(
        (ablated - target_b).abs() <= 1e-4 * (1.0 + target_b.abs()),
        "{ablated} vs {target_b}"
    );
    assert!((f(&j["ablation"]["clean"]) - f(&ja["target_value"])).abs() < 1e-5);
    assert!(
        (ablated - f(&ja["target_value"])).abs() > 1e-3,
        "the patch changed nothing"
    );

    // the prompt's own values in place of its own: no change at any verified site
    let mut args = vec!["trace", "--model", m];
    args.extend_from_slice(&common::TARGET);
    args.extend_from_slice(&["--budget", "30", "--verify", "6", "--ablation", "patch"]);
    args.extend_from_slice(&["--contrast-prompt", "Get some apples.", "--json", "-"]);
    let t = run(&args);
    let v = &t["verification"];
    assert_eq!(v["ablation"], "patch");
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 6);
    for s in sites {
        assert!(f(&s["effect"]).abs() < 1e-5, "{s}");
    }
    assert!(f(&v["explained"]).abs() < 1e-5, "{v}");

    // no contrast prompt; one of another length
    let mut args = base(a);
    args.extend_from_slice(&["--ablate", &site, "--ablation", "patch"]);
    let out = rdla(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --contrast-prompt"));
    let mut args = base(a);
    args.extend_from_slice(&["--ablate", &site, "--ablation", "patch"]);
    args.extend_from_slice(&["--contrast-prompt", "Get some apples and some pears."]);
    let out = rdla(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token count"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

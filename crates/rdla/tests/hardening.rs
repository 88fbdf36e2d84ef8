//! The second adversarial pass (issue #22), through the binary: exports never touch the
//! user's model files (models in the Hugging Face cache are protected by the canonical path
//! of every file read; `rdla bench` never generates over an existing folder), `-` is standard
//! output for every export, and prompts are read and tokenized only as far as the context
//! can hold.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{TARGET, assert_ok, attribute, rdla, rdla_in};

fn rdla_in_tmp(tmpdir: &std::path::Path, args: &[&str]) -> Output {
    rdla_in(None, Some(tmpdir), args)
}

/// One length, one repetition: a bench run that only checks what it refuses or writes.
const QUICK_BENCH: [&str; 6] = ["--lengths", "4", "--reps", "1", "--load-reps", "1"];

fn is_empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// A regression test: the guard protected the snapshot folder, whose files are links into
/// `blobs/`; `--json <hub>/models--o--g/blobs/<sha>` overwrote the weights, exit 0.
#[test]
fn hugging_face_cache_blobs_are_protected() {
    let (_cache, snapshot) = rdla_testutil::hf_cache_copy("gpt2_tied");
    let blob = std::fs::canonicalize(snapshot.join("model.safetensors")).unwrap();
    let config_blob = std::fs::canonicalize(snapshot.join("config.json")).unwrap();
    let before = std::fs::read(&blob).unwrap();
    let model = snapshot.to_str().unwrap();
    for (flag, target) in [("--json", &blob), ("--csv", &config_blob), ("--png", &blob)] {
        let out = attribute(model, &[flag, target.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {err}");
        assert!(err.contains("refusing"), "{flag}: {err}");
    }
    assert_eq!(before, std::fs::read(&blob).unwrap());
    // and the model itself opens from the cache and writes elsewhere
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    let out = attribute(model, &["--json", out_file.to_str().unwrap()]);
    assert_ok(&out);
    assert!(std::fs::metadata(&out_file).unwrap().len() > 0);
}

/// `-` is standard output wherever an output path is taken (`--csv -` wrote a file named
/// `-`).
#[test]
fn a_dash_is_standard_output_for_every_export() {
    let fixture = rdla_testutil::fixture("gpt2_tied");
    let cwd = tempfile::tempdir().unwrap();
    let mut args = vec!["attribute", "--model", fixture.to_str().unwrap()];
    args.extend_from_slice(&TARGET);
    args.extend_from_slice(&["--csv", "-"]);
    let out = rdla_in(Some(cwd.path()), None, &args);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() > 2 && text.contains(','), "{text}");
    assert!(
        !cwd.path().join("-").exists(),
        "a file named `-` was written"
    );
}

/// Run `rdla` on a scratch copy of `gpt2_tied` (`{model}` in `args` is its folder,
/// `{weights}` its weights) and check that it fails saying `expect` and leaves the weights
/// as they were.
fn refused_and_untouched(args: &[&str], expect: &str) {
    let model = rdla_testutil::copy_fixture("gpt2_tied");
    let weights = model.path().join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("{model}", model.path().to_str().unwrap())
                .replace("{weights}", weights.to_str().unwrap())
        })
        .collect();
    let out = rdla(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?}: {err}");
    assert!(err.contains(expect), "{args:?}: {err}");
    assert_eq!(before, std::fs::read(&weights).unwrap(), "{args:?}");
}

/// A regression test: `rdla bench --dir` on an existing model overwrote its config, weights
/// and tokenizer. It refuses any folder that is not empty.
#[test]
fn bench_never_generates_over_an_existing_folder() {
    refused_and_untouched(
        &[
            "bench",
            "--dir",
            "{model}",
            "--generate-only",
            "--shape",
            "2,2,8,16",
        ],
        "not empty",
    );
    // a released model's shape likewise (refused before a byte of its 16 GB is written)
    refused_and_untouched(
        &[
            "bench",
            "--dir",
            "{model}",
            "--generate-only",
            "--preset",
            "llama3-8b",
        ],
        "not empty",
    );
}

/// `rdla bench` runs 1- and 2-layer shapes (its drill-down path was not upstream of the last
/// layer there), writes its JSON through the export guard, refuses lengths the generated
/// model cannot hold before generating anything, and leaves no temporary folder behind.
#[test]
fn bench_small_shapes_and_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let tmpdir = tempfile::tempdir().unwrap();
    for layers in ["1", "2"] {
        let json = dir.path().join(format!("bench-{layers}.json"));
        let out = rdla_in_tmp(
            tmpdir.path(),
            &[
                &["bench", "--shape", &format!("{layers},2,8,16")][..],
                &QUICK_BENCH,
                &["--trace-budget", "10", "--json", json.to_str().unwrap()],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{layers} layers: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["lengths"][0]["tokens"], 4);
        assert!(
            is_empty(tmpdir.path()),
            "the generated checkpoint was left behind"
        );
    }
    // a model folder given with --existing is protected from --json
    refused_and_untouched(
        &[
            &["bench", "--dir", "{model}", "--existing"][..],
            &QUICK_BENCH,
            &["--trace-budget", "0", "--json", "{weights}"],
        ]
        .concat(),
        "refusing",
    );
    // a length no machine can hold is refused at once, before generating anything
    let t = std::time::Instant::now();
    let out = rdla_in_tmp(
        tmpdir.path(),
        &["bench", "--lengths", "1000000000", "--shape", "2,2,8,16"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--lengths"), "{err}");
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
    assert!(
        is_empty(tmpdir.path()),
        "a temporary folder was left behind"
    );
    // a huge shape likewise, and a length beyond a fixed-context family's window
    for args in [
        &["bench", "--shape", "100000,8,1048576,1000000"][..],
        &[
            "bench",
            "--arch",
            "gemma2",
            "--shape",
            "2,2,8,16",
            "--lengths",
            "9000",
        ][..],
    ] {
        let out = rdla_in_tmp(tmpdir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("--lengths") || err.contains("--shape"),
            "{err}"
        );
    }
    assert!(is_empty(tmpdir.path()));
}

/// A regression test: a 100 MB `--prompt-file` was read and tokenized whole (5.4 GB, then an
/// abort) and `/dev/zero` read until memory ran out. Both are refused at once now.
#[test]
fn prompt_files_are_read_only_as_far_as_the_context_can_hold() {
    let model = rdla_testutil::fixture("gpt2_tied");
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.txt");
    std::fs::write(&big, "Get some apples. ".repeat(1 << 20)).unwrap(); // 17 MB
    for file in [std::path::Path::new("/dev/zero"), big.as_path()] {
        let t = std::time::Instant::now();
        let out = rdla(&[
            "attribute",
            "--model",
            model.to_str().unwrap(),
            "--prompt-file",
            file.to_str().unwrap(),
            "--answer",
            ".",
            "--device",
            "cpu",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("more text than the model's context can hold"),
            "{err}"
        );
        assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    }
}

/// Arguments that contradict each other, or cannot be honoured, are errors before anything
/// is computed, never a silent choice: two exports to standard output or to the same file,
/// ablation options without `--ablate`, a trace threshold outside [0, 1].
#[test]
fn contradicting_arguments_are_errors() {
    let model = rdla_testutil::fixture("gpt2_tied");
    let m = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let same = tmp.path().join("out");
    let same = same.to_str().unwrap();
    let mut base = vec!["--model", m];
    base.extend_from_slice(&TARGET);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["attribute", "--json", "-", "--csv", "-"],
            "standard output",
        ),
        (
            vec!["attribute", "--csv", same, "--png", same],
            "both write to",
        ),
        (vec!["attribute", "--ablation", "mean"], "--ablate"),
        (vec!["attribute", "--freeze-final-norm"], "--ablate"),
        (vec!["trace", "--threshold", "1.5"], "--threshold"),
        (vec!["trace", "--threshold", "NaN"], "--threshold"),
        (
            vec!["trace", "--json", "-", "--png", "-"],
            "standard output",
        ),
    ];
    for (mut args, expect) in cases {
        args.extend_from_slice(&base);
        let out = rdla(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new(same).exists());
    // one export to stdout is fine, and the summary does not mix into it
    let out = attribute(m, &["--png", "-"]);
    assert_ok(&out);
    assert!(
        out.stdout.starts_with(b"\x89PNG"),
        "not a PNG alone on stdout"
    );
}

/// An export to `-` whose reader went away (`rdla attribute --csv - | head -0`) ends
/// quietly, as `--json -` does: the closed pipe is no error to report.
#[test]
fn an_export_to_a_closed_pipe_ends_quietly() {
    let model = rdla_testutil::fixture("gpt2_tied");
    let mut args = vec!["attribute", "--model", model.to_str().unwrap()];
    args.extend_from_slice(&TARGET);
    args.extend_from_slice(&["--csv", "-"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdla"))
        .args(&args)
        .env("RDLA_SKIP_WGPU", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is written
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.is_empty(), "{err}");
}

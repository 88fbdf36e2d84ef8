//! What `Model::load` makes of a path that is not a Hugging Face folder (issue 22, #18 and
//! #20): a file that is not a GGUF file says what it is, a folder holding one `.gguf` opens
//! it, and a GGUF or I/O error says its cause once.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rdla_model::model::{ModelLocation, locate_model};
use rdla_model::{Device, Model, ModelError, Processing};
use rdla_testutil::fixtures_dir;

fn load(path: &Path) -> Result<Model, ModelError> {
    Model::load(path, &Device::flex(), Processing::default(), &mut |_| true)
}

fn qwen2_gguf() -> PathBuf {
    fixtures_dir().join("gguf").join("qwen2.gguf")
}

use rdla_testutil::error_chain as chain;

#[test]
fn files_that_are_not_gguf_say_what_they_are() {
    let padded = |head: &[u8]| {
        let mut v = head.to_vec();
        v.resize(4096, b'.');
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("x.gguf", vec![], "x.gguf is empty"),
        (
            "x.gguf",
            b"GGU".to_vec(),
            "x.gguf is 3 bytes, too short to be a GGUF file",
        ),
        (
            "x.gguf",
            vec![0; 1 << 16],
            "x.gguf starts with zeros (an interrupted download?)",
        ),
        ("x.gguf", padded(b"tjgg"), "x.gguf is an old GGJT file"),
        ("x.gguf", padded(b"GGML"), "x.gguf is an old GGML file"),
        (
            "x.png",
            padded(b"\x89PNG\r\n\x1a\n"),
            "x.png is a PNG image, not a model",
        ),
        (
            "x.gguf",
            padded(b"<!DOCTYPE html><html>"),
            "x.gguf is a web page",
        ),
        ("x.gguf", padded(b"PK\x03\x04"), "x.gguf is a ZIP archive"),
        (
            "x.gguf",
            padded(b"abcd"),
            "x.gguf is not a GGUF file (it starts with 61 62 63 64, not \"GGUF\")",
        ),
        // an Ollama blob (no extension) cut short by an interrupted pull
        (
            "sha256-0123",
            vec![0; 1 << 16],
            "sha256-0123 starts with zeros",
        ),
    ];
    for (name, bytes, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path).expect_err(name);
        assert!(matches!(e, ModelError::NotAModel { .. }), "{name}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{} ", path.display())) && msg.contains(want),
            "{name}: {msg}"
        );
        assert!(!msg.contains("config.json"), "{msg}");
    }
}

#[test]
fn a_file_inside_a_model_folder_still_opens_the_folder() {
    // a `.safetensors` or `config.json` path means its folder, whatever its first bytes
    let folder = rdla_testutil::fixture("qwen2");
    assert_eq!(
        locate_model(&folder.join("config.json")).unwrap(),
        ModelLocation::Folder(folder.clone())
    );
    assert_eq!(
        locate_model(&folder).unwrap(),
        ModelLocation::Folder(folder.clone())
    );
    // an empty folder is still "no config.json"
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load(empty.path()),
        Err(ModelError::NoConfig { .. })
    ));
}

#[test]
fn a_folder_of_one_gguf_opens_it_and_of_several_lists_them() {
    // LM Studio: <publisher>/<repo>/<file>.gguf, maybe with a vision projector beside it
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model-Q8_0.gguf");
    std::fs::copy(qwen2_gguf(), &file).unwrap();
    std::fs::write(dir.path().join("mmproj-model-f16.gguf"), b"GGUF").unwrap();
    std::fs::write(dir.path().join("README.md"), b"# a model").unwrap();
    assert_eq!(
        locate_model(dir.path()).unwrap(),
        ModelLocation::Gguf(file.clone())
    );
    let m = load(dir.path()).unwrap();
    assert_eq!(m.protected, vec![file]);
    // two: an error naming both
    std::fs::copy(qwen2_gguf(), dir.path().join("model-Q4_K_M.gguf")).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(
        matches!(&e, ModelError::SeveralGguf { files, .. } if files == &["model-Q4_K_M.gguf", "model-Q8_0.gguf"]),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("2 GGUF files (`model-Q4_K_M.gguf`, `model-Q8_0.gguf`)"),
        "{msg}"
    );
    // the one .gguf of a folder is broken: it says so
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.gguf"), b"").unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.to_string().ends_with("model.gguf is empty"), "{e}");
}

#[test]
fn gguf_and_io_errors_say_their_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(qwen2_gguf()).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load(&cut).unwrap_err();
    let ModelError::Gguf(inner) = &e else {
        panic!("{e:?}")
    };
    let full = chain(&e);
    assert_eq!(full.matches(&inner.to_string()).count(), 1, "{full}");
    assert!(full.starts_with("GGUF file: "), "{full}");
    let io = ModelError::Io {
        path: PathBuf::from("/x/model.safetensors"),
        error: std::io::Error::other("disk on fire"),
    };
    assert_eq!(chain(&io), "/x/model.safetensors: disk on fire");
}

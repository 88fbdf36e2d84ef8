//! Running the `rdla` binary in the CLI tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A committed fixture (located at run time: a test binary built in another checkout sharing
/// the target directory, CI's clone, must read this checkout's files).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../tests/fixtures")
    .join(name)
}

/// `rdla args`, the wgpu probe skipped.
pub fn rdla(args: &[&str]) -> Output {
    rdla_in(None, None, args)
}

/// `rdla` run in `cwd` and with its own temporary folder, to see what it leaves behind.
pub fn rdla_in(cwd: Option<&Path>, tmpdir: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rdla"));
    c.args(args).env("RDLA_SKIP_WGPU", "1");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    if let Some(t) = tmpdir {
        c.env("TMPDIR", t);
    }
    c.output().unwrap()
}

/// The run succeeded (its standard error is the failure message).
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A short prompt, its answer and the CPU: the target most runs use.
pub const TARGET: [&str; 6] = [
    "--prompt",
    "Get some apples.",
    "--answer",
    ".",
    "--device",
    "cpu",
];

/// `rdla attribute --model MODEL` on [`TARGET`], then `extra`.
pub fn attribute(model: &str, extra: &[&str]) -> Output {
    let mut args = vec!["attribute", "--model", model];
    args.extend_from_slice(&TARGET);
    args.extend_from_slice(extra);
    rdla(&args)
}

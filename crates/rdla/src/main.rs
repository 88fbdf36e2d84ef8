//! `rdla`: the explorer (no arguments) and the headless commands (DESIGN.md §3). Each command
//! is a thin adapter over `rdla-session`: it parses arguments and prints what the session
//! returns.

mod attribute;
mod bench;
mod bench_gguf;
mod census;
mod common;
mod trace;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rdla",
    version,
    about = "Recursive direct logit attribution explorer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    explore: ExploreArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the desktop explorer (the default); with a result file (`.rdla`), show it read-only
    /// without its model.
    Explore(ExploreCommand),
    /// Compute an attribution headlessly and write JSON / CSV / PNG.
    Attribute(attribute::AttributeArgs),
    /// Trace the exact tree best-first and write the attribution graph (JSON / PNG).
    Trace(trace::TraceArgs),
    /// Benchmark load, forward, overview and drill-down on a generated GPT-2-small-shaped checkpoint.
    Bench(bench::BenchArgs),
    /// Attribute every prompt of a file (JSONL or CSV) and write Parquet tables; `merge` joins shards.
    Census(census::CensusArgs),
    /// Recompute every node of a result file (`.rdla`) on its model and rerun its verification;
    /// exit 1 naming the first mismatch.
    Verify(verify::VerifyArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ExploreCommand {
    /// A result file (`.rdla`, from `--save` or *Save result…*) to open read-only.
    result: Option<std::path::PathBuf>,
    #[command(flatten)]
    args: ExploreArgs,
}

#[derive(Debug, Clone, clap::Args)]
struct ExploreArgs {
    /// Model directory (or a file inside one); `default` for the embedded model.
    #[arg(long)]
    model: Option<String>,
    /// Prompt text.
    #[arg(long)]
    prompt: Option<String>,
    /// Answer token, spelled exactly as the tokenizer spells it.
    #[arg(long)]
    answer: Option<String>,
    #[command(flatten)]
    memory: common::MemoryArgs,
}

/// glibc returns freed memory to the kernel eagerly (allocations above a dynamic threshold are
/// `mmap`ed and unmapped on free; the heap top is trimmed past 2× that threshold), so every
/// layer of a forward pass page-faults its multi-MB activations in afresh — in a VM that was a
/// quarter of the CPU time at 512 tokens. Serve blocks up to 64 MiB from the heap and keep
/// up to 256 MiB of freed heap for reuse. (Peak RSS is unchanged: it is reached while loading.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any other
    // thread exists, with valid parameter constants.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Without a display server, Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select`
/// (whose job is to put the display's GPU first) still tries to connect to Wayland while wgpu
/// enumerates adapters, and libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in
/// the environment." on every run — which reads as rdla failing. With no display there is no
/// display GPU to prefer: the layer is switched off through its documented
/// `NODEVICE_SELECT=1` (unless the user set it). A desktop session is left alone.
#[allow(unsafe_code)]
fn quiet_headless_vulkan() {
    let display = ["WAYLAND_DISPLAY", "DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !display && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists, so nothing
        // reads the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> ExitCode {
    quiet_headless_vulkan();
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Attribute(a)) => attribute::run(&a),
        Some(Command::Bench(b)) => bench::run(&b),
        Some(Command::Trace(t)) => trace::run(&t),
        Some(Command::Census(c)) => census::run(&c),
        Some(Command::Verify(v)) => verify::run(&v),
        Some(Command::Explore(e)) => explore(e.args, e.result),
        None => explore(cli.explore, None),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `rdla attribute … | head`: the reader went away; nothing more to say
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether an error is (caused by) a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let broken = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(broken)
            // an export to `-` (its I/O error is in the message, not a source)
            || matches!(
                c.downcast_ref::<rdla_session::SessionError>(),
                Some(rdla_session::SessionError::Io { error, .. }) if broken(error)
            )
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}

fn explore(args: ExploreArgs, result: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    args.memory.apply();
    // a bad file is a clear error here, before any window opens
    let result = match result {
        Some(file) => {
            let t = std::time::Instant::now();
            let saved = rdla_session::saved::Saved::open(&file)?;
            eprintln!(
                "{}: {} nodes, {} views, {} graph sites; read in {:.0} ms",
                file.display(),
                saved.nodes.len(),
                saved.views.len(),
                saved.sites.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
            Some((file, saved))
        }
        None => None,
    };
    rdla_app::run(rdla_app::StartOptions {
        model: args.model,
        prompt: args.prompt,
        answer: args.answer,
        result,
    })
}

//! `rdla`: the explorer (no arguments) and the headless `attribute` command (DESIGN.md §3).

mod attribute;
mod bench;

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
    /// Open the desktop explorer (the default).
    Explore(ExploreArgs),
    /// Compute an attribution headlessly and write JSON / CSV / PNG.
    Attribute(attribute::AttributeArgs),
    /// Benchmark load, forward, overview and drill-down on a generated GPT-2-small-shaped checkpoint.
    Bench(bench::BenchArgs),
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Attribute(a)) => attribute::run(&a),
        Some(Command::Bench(b)) => bench::run(&b),
        Some(Command::Explore(e)) => explore(e),
        None => explore(cli.explore),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn explore(args: ExploreArgs) -> anyhow::Result<()> {
    rdla_app::run(rdla_app::StartOptions {
        model: args.model,
        prompt: args.prompt,
        answer: args.answer,
    })
}

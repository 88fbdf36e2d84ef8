//! `rdla census`: one model load, the same attribution over every prompt of a file, written as
//! Parquet tables (DESIGN.md §3.3); `rdla census merge` joins shards.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use rdla_model::select_device;
use rdla_session::census::{self, CensusOptions};
use rdla_session::{ModelSource, Session};

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CensusArgs {
    #[command(subcommand)]
    pub merge: Option<MergeCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MergeCommand {
    /// Join census shards (`--shard I/N` runs) into what one run over every record writes.
    Merge {
        /// A new or empty folder for the merged tables.
        #[arg(long)]
        out: PathBuf,
        /// The shards' output folders.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Model directory (or a file inside one), a GGUF file, or `default`.
    #[arg(long, required = true)]
    pub model: Option<String>,
    /// The prompts: JSONL (`{"prompt", "answer", "foil"?}` per line), or CSV or Parquet with
    /// those columns.
    #[arg(long, required = true)]
    pub prompts: Option<PathBuf>,
    /// A new or empty folder for prompts.parquet, nodes.parquet and summary.parquet.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// 1: root children, heads and attention biases; 2: also each head's children summed
    /// over source positions (`L{l}.attn/H{h}/*:{component}`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub depth: u8,
    /// `I/N`: only the records whose index is I modulo N (0-based), for a job array.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Skip records whose answer or foil is not one token (listed at the end) instead of
    /// refusing the file.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub run: crate::common::RunOptions,
    #[command(flatten)]
    pub memory: crate::common::MemoryArgs,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not I/N (e.g. 0/4)"))?;
    let (i, n): (usize, usize) = (
        i.trim()
            .parse()
            .map_err(|_| format!("`{s}`: I is not a number"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("`{s}`: N is not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("`{s}`: needs 0 ≤ I < N"));
    }
    Ok((i, n))
}

/// `12:03` (minutes and seconds).
fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn run(a: &CensusArgs) -> anyhow::Result<()> {
    if let Some(MergeCommand::Merge { out, shards }) = &a.merge {
        let n = census::merge(shards, out)?;
        eprintln!(
            "merged {n} prompts from {} shards into {}",
            shards.len(),
            out.display()
        );
        return Ok(());
    }
    let a = &a.run;
    let (Some(model), Some(prompts), Some(out)) = (&a.model, &a.prompts, &a.out) else {
        anyhow::bail!("give --model, --prompts and --out (or `census merge`)");
    };
    a.memory.apply();
    // the file first: a bad record is reported before the model is loaded
    let records = census::read_records(prompts)?;
    let (device, info) = select_device(a.run.device)?;
    let mut session = Session::open(ModelSource::parse(model), &device, info, &mut |_| true)
        .with_context(|| format!("cannot load model {model}"))?;
    let opts = CensusOptions {
        depth: a.depth,
        shard: a.shard.unwrap_or((0, 1)),
        skip_bad: a.skip_bad,
        bos: !a.run.no_bos,
        mlp_mode: a.run.mlp_mode,
    };
    // Ctrl-C (or SIGTERM, as a job scheduler sends at its time limit) stops after the prompt
    // being computed and keeps the tables of the prompts done; a second Ctrl-C ends at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .context("installing the interrupt handler")?;
    }
    // the blocks a lazy opening left on disk, read before the census's clock starts (as
    // loading, like the layers a streaming model reads as it goes are not)
    let t = Instant::now();
    session.model().read_layers()?;
    if !session.model().streams_layers() {
        eprintln!(
            "census: the model's layers read in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let mut last = Instant::now();
    let mut progress = |done: usize, total: usize| {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if last.elapsed().as_millis() >= 500 || done == total {
            last = Instant::now();
            let spent = t.elapsed().as_secs_f64();
            // no estimate before the first prompts are done
            let eta = match done {
                0 => "–:––".to_string(),
                _ => clock(spent / done as f64 * (total - done) as f64),
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\rcensus: {done}/{total} prompts · {} elapsed · ETA {eta}   ",
                clock(spent),
            );
            if done == total {
                let _ = writeln!(err);
            }
        }
        true
    };
    let done = census::run(&mut session, &records, out, &opts, &mut progress)?;
    if stop.load(Ordering::Relaxed) {
        eprintln!();
        eprintln!(
            "census: interrupted after {} of {} prompts; the tables in {} hold those {} \
             (prompts.parquet lists them) and the summary is over them",
            done.prompts,
            done.todo,
            out.display(),
            done.prompts
        );
        std::process::exit(130);
    }
    eprintln!(
        "census: {} prompts × {} nodes in {:.1} s → {}",
        done.prompts,
        done.nodes,
        t.elapsed().as_secs_f64(),
        out.display()
    );
    let tm = done.times;
    if done.prompts > 0 && tm.total_ms > 0.0 {
        let threads = (tm.forward_ms + tm.attribution_ms).max(1e-9);
        eprintln!(
            "census: computing {:.1} s ({} at a time; of the threads' time, forward passes \
             {:.0} %, attribution {:.0} %), node tables and writing {:.1} s",
            tm.computing_ms / 1e3,
            match tm.at_once {
                0 | 1 => "one batch".to_string(),
                k => format!("{k} batches"),
            },
            100.0 * tm.forward_ms / threads,
            100.0 * tm.attribution_ms / threads,
            (tm.total_ms - tm.computing_ms).max(0.0) / 1e3
        );
    }
    if !done.skipped.is_empty() {
        eprintln!("skipped {} records:", done.skipped.len());
        for (r, why) in &done.skipped {
            eprintln!("  {}: {why}", r.place);
        }
    }
    Ok(())
}

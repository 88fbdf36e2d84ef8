//! `rdla trace`: trace the tree below a node best-first by |value| and write the paths and the
//! attribution graph (JSON, PNG).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use rdla_attrib::Path;
use rdla_attrib::trace::TraceOptions;
use rdla_session::ms;

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// The node to trace from (path grammar); the root by default.
    #[arg(long, default_value = "")]
    pub from: Path,
    /// At most this many node expansions.
    #[arg(long, default_value_t = 200)]
    pub budget: usize,
    /// Stop after this many milliseconds, whatever the budget.
    #[arg(long, value_name = "MS")]
    pub time_limit: Option<u64>,
    /// Report the N largest unexpanded paths.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Split MLPs into their largest neurons.
    #[arg(long)]
    pub neurons: bool,
    /// Graph pruning: drop sites and edges below this fraction of |value|.
    #[arg(long, default_value_t = 0.01)]
    pub threshold: f32,
    /// Graph pruning: keep at most this many sites.
    #[arg(long, default_value_t = 60)]
    pub max_nodes: usize,
    /// Write the JSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Write the graph as a PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
}

pub fn run(a: &TraceArgs) -> anyhow::Result<()> {
    let stdout_taken = crate::common::check_outputs(&[
        ("--json", a.json.as_deref().map(std::path::Path::new)),
        ("--png", a.png.as_deref()),
    ])?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.threshold),
        "--threshold {}: a fraction of the traced value, from 0 to 1",
        a.threshold
    );
    anyhow::ensure!(
        a.max_nodes > 0,
        "--max-nodes 0 would draw an empty graph; give at least 1"
    );
    let (session, _) = crate::common::open_and_compute(&a.compute)?;
    let from = &a.from;
    let opts = TraceOptions {
        budget: a.budget,
        time_limit: a.time_limit.map(std::time::Duration::from_millis),
        top: a.top,
        neurons: a.neurons,
        threshold: a.threshold,
        max_nodes: a.max_nodes,
    };
    let t = Instant::now();
    let trace = session.trace(from, &opts, &mut |_, _| true)?;
    let trace_ms = ms(t);
    if let Some(png) = &a.png {
        session.write_output(png, &session.trace_png(&trace)?)?;
    }
    match a.json.as_deref() {
        Some("-") => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &session.trace_json(&trace, trace_ms)?)?;
            writeln!(out)?;
        }
        Some(file) => {
            let text = serde_json::to_vec(&session.trace_json(&trace, trace_ms)?)?;
            session.write_output(std::path::Path::new(file), &text)?;
        }
        None if stdout_taken => {}
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", rdla_session::graph::summary(&trace))?;
            writeln!(out, "top paths:")?;
            for p in &trace.paths {
                writeln!(out, "  {:>10.5}  {}", p.value, p.path)?;
            }
            writeln!(out, "sites:")?;
            for n in trace.nodes.iter().take(15) {
                writeln!(
                    out,
                    "  {:>10.5}  {}@{}  ({})",
                    n.value, n.site, n.position, n.id
                )?;
            }
        }
    }
    Ok(())
}

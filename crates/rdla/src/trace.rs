//! `rdla trace`: trace the tree below a node best-first by |value| and write the paths and the
//! attribution graph (JSON, PNG).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use rdla_attrib::trace::TraceOptions;
use rdla_attrib::{MlpMode, Path};
use rdla_model::device::DeviceChoice;
use rdla_model::select_device;
use rdla_session::{ModelSource, Request, Session, SessionError, ms};

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Model directory (or a file inside one), or `default` for the embedded model.
    #[arg(long)]
    pub model: String,
    /// Prompt text (BOS is prepended unless --no-bos).
    #[arg(
        long,
        required_unless_present = "prompt_file",
        conflicts_with = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// Read the prompt from a file (UTF-8, used exactly as written).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Answer token, spelled exactly as the tokenizer spells it.
    #[arg(long)]
    pub answer: String,
    /// Foil token: trace logit(answer) − logit(foil).
    #[arg(long)]
    pub foil: Option<String>,
    /// The node to trace from (path grammar); the root by default.
    #[arg(long, default_value = "")]
    pub from: String,
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
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub no_bos: bool,
    #[arg(long, default_value = "frozen-gate")]
    pub mlp_mode: MlpMode,
    /// Write the JSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Write the graph as a PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
}

pub fn run(a: &TraceArgs) -> anyhow::Result<()> {
    let (device, info) = select_device(a.device)?;
    let mut session = Session::open(ModelSource::parse(&a.model), &device, info, &mut |_| true)
        .with_context(|| format!("cannot load model {}", a.model))?;
    let request = Request {
        prompt: crate::read_prompt(a.prompt.as_deref(), a.prompt_file.as_deref())?,
        answer: a.answer.clone(),
        foil: a.foil.clone(),
        bos: !a.no_bos,
        mlp_mode: a.mlp_mode,
    };
    session.compute(&request).map_err(|f| match f.error {
        SessionError::Token { which, error } => anyhow::anyhow!("--{which}: {error}"),
        e => e.into(),
    })?;
    let from = Path::parse(&a.from)?;
    session.validate(&from)?;
    let opts = TraceOptions {
        budget: a.budget,
        time_limit: a.time_limit.map(std::time::Duration::from_millis),
        top: a.top,
        neurons: a.neurons,
        threshold: a.threshold,
        max_nodes: a.max_nodes,
    };
    let t = Instant::now();
    let trace = session.trace(&from, &opts, &mut |_, _| true)?;
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
                    n.value, n.label, n.position, n.id
                )?;
            }
        }
    }
    Ok(())
}

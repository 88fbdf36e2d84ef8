//! `rdla trace`: trace the tree below a node best-first by |value| and write the paths and the
//! attribution graph (JSON, PNG).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use rdla_attrib::Path;
use rdla_attrib::trace::TraceOptions;
use rdla_model::model::ablate::AblationMode;
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
    /// Verify the trace: ablate each of the K largest traced sites alone in the real forward
    /// pass, then all K together, and set the real changes beside the attributed values
    /// (Spearman's ρ, the share of the target the K explain together).
    #[arg(long, value_name = "K")]
    pub verify: Option<usize>,
    /// Save the trace (its paths, graph and verification, the root's children, the model's
    /// sha256 and the prompt) as an `.rdla` file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// What a verified site becomes: `zero`, `mean` (its mean over the prompt's positions), or
    /// `patch` (its value in the --contrast-prompt's run: activation patching).
    #[arg(long, default_value = "zero", requires = "verify")]
    pub ablation: AblationMode,
    /// The prompt whose activations `--ablation patch` puts in place (the same token count).
    #[arg(long, value_name = "TEXT")]
    pub contrast_prompt: Option<String>,
}

pub fn run(a: &TraceArgs) -> anyhow::Result<()> {
    let stdout_taken = crate::common::check_outputs(&[
        ("--json", a.json.as_deref().map(std::path::Path::new)),
        ("--png", a.png.as_deref()),
        ("--save", a.save.as_deref()),
    ])?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.threshold),
        "--threshold {}: a fraction of the traced value, from 0 to 1",
        a.threshold
    );
    anyhow::ensure!(
        a.verify != Some(0),
        "--verify 0 would verify nothing; give the number of sites to ablate (e.g. 10)"
    );
    anyhow::ensure!(
        a.max_nodes > 0,
        "--max-nodes 0 would draw an empty graph; give at least 1"
    );
    crate::common::check_patch(a.ablation, a.contrast_prompt.as_deref())?;
    let (mut session, _) = crate::common::open_and_compute(&a.compute)?;
    if a.contrast_prompt.is_some() {
        session.set_contrast(a.contrast_prompt.as_deref())?;
    }
    let session = session;
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
    let verification = match a.verify {
        Some(k) => Some(session.verify(&trace, k, a.ablation, &mut |_, _| true)?),
        None => None,
    };
    let ver = verification.as_ref();
    if let Some(png) = &a.png {
        session.write_output(png, &session.trace_png(&trace, ver)?)?;
    }
    if let Some(file) = &a.save {
        let saved = session.saved(std::slice::from_ref(from), Some((&trace, trace_ms)), ver)?;
        crate::common::save_result(&session, file, &saved)?;
    }
    match a.json.as_deref() {
        Some("-") => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &session.trace_json(&trace, trace_ms, ver)?)?;
            writeln!(out)?;
        }
        Some(file) => {
            let text = serde_json::to_vec(&session.trace_json(&trace, trace_ms, ver)?)?;
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
            if let Some(v) = ver {
                writeln!(out, "{}", v.stamp())?;
                writeln!(out, "  attributed      effect  site")?;
                for s in &v.sites {
                    writeln!(
                        out,
                        "  {:>10.5}  {:>10.5}  {}  ({}){}",
                        s.attributed,
                        s.effect,
                        s.label,
                        s.site,
                        match s.agreement(v.target) {
                            rdla_session::verify::Agreement::Agrees => "",
                            rdla_session::verify::Agreement::Magnitude => "  ← magnitude",
                            rdla_session::verify::Agreement::Sign => "  ← sign",
                        }
                    )?;
                }
                writeln!(
                    out,
                    "  all {} together: target {:+.5} → {:+.5} ({} ms)",
                    v.sites.len(),
                    v.target,
                    v.target - v.together,
                    v.verify_ms.round()
                )?;
            }
        }
    }
    Ok(())
}

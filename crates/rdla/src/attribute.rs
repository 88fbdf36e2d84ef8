//! `rdla attribute`: parse the arguments, run the session, print or write what it returns.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use rdla_attrib::Path;
use rdla_model::model::ablate::AblationMode;
use rdla_session::Session;
use rdla_session::png::{PngOptions, encode_png};

#[derive(Debug, Clone, clap::Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// Node to expand, in the path grammar (`L5.attn/H3/8:L2.attn`); empty = root.
    #[arg(long)]
    pub path: Option<Path>,
    /// Write the JSON report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Write a CSV: the node's children with --path, else the overview tables.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the current view as a heatmap PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Save the result (the root, the --path node and its ancestors, with the model's sha256
    /// and the prompt) as an `.rdla` file: `rdla explore FILE` reopens it without the model,
    /// `rdla verify FILE --model M` recomputes it.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Causal check: ablate this node's site in the real forward pass and report the target's
    /// real change beside the node's value (repeat to ablate several sites together).
    #[arg(long, value_name = "PATH")]
    pub ablate: Vec<Path>,
    /// What an ablated site becomes: `zero`, `mean` (its mean over the prompt's positions), or
    /// `patch` (its value in the --contrast-prompt's run: activation patching).
    #[arg(long, default_value = "zero", requires = "ablate")]
    pub ablation: AblationMode,
    /// Write `head_breakdown` even above its size limit (long prompts on large models).
    #[arg(long)]
    pub full_breakdown: bool,
    /// Hold the final norm's scale at the clean run's value in the ablated run.
    #[arg(long, requires = "ablate")]
    pub freeze_final_norm: bool,
    /// A second prompt for the same answer (and foil): the JSON gains `contrast`, its values
    /// and this prompt's minus its (with --path below the root: the same token count).
    #[arg(long, value_name = "TEXT")]
    pub contrast_prompt: Option<String>,
}

pub fn run(a: &AttributeArgs) -> anyhow::Result<()> {
    let stdout_taken = crate::common::check_outputs(&[
        ("--json", a.json.as_deref().map(std::path::Path::new)),
        ("--csv", a.csv.as_deref()),
        ("--png", a.png.as_deref()),
        ("--save", a.save.as_deref()),
    ])?;
    crate::common::check_patch(a.ablation, a.contrast_prompt.as_deref())?;
    let (mut session, load) = crate::common::open_and_compute(&a.compute)?;
    if a.ablation == AblationMode::Patch {
        session.set_contrast(a.contrast_prompt.as_deref())?;
    }
    let session = session;
    let path = a.path.clone().unwrap_or_default();
    let view = session.view(&path)?;
    let node = a.path.is_some().then_some(&view.expansion);

    let contrast = a
        .contrast_prompt
        .as_deref()
        .map(|p| session.contrast(p, &path))
        .transpose()?;
    let ablation = if a.ablate.is_empty() {
        None
    } else {
        Some(session.ablate(&a.ablate, a.ablation, a.freeze_final_norm)?)
    };
    if let Some(png) = &a.png {
        let (bytes, _) = encode_png(&view.heatmap, PngOptions::default())?;
        session.write_output(png, &bytes)?;
    }
    if let Some(csv) = &a.csv {
        session.write_output(csv, session.csv(node)?.as_bytes())?;
    }
    if let Some(file) = &a.save {
        let paths: Vec<Path> = a.path.iter().cloned().collect();
        crate::common::save_result(&session, file, &session.saved(&paths, None, None)?)?;
    }
    let report = || -> anyhow::Result<serde_json::Value> {
        let mut r = session.report(node, load, a.full_breakdown)?;
        if let (Some(ab), Some(map)) = (&ablation, r.as_object_mut()) {
            map.insert("ablation".into(), serde_json::to_value(ab)?);
        }
        if let (Some(c), Some(map)) = (&contrast, r.as_object_mut()) {
            map.insert("contrast".into(), c.to_json());
        }
        Ok(r)
    };
    match a.json.as_deref() {
        Some("-") => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &report()?)?;
            writeln!(out)?;
        }
        Some(file) => {
            let text = serde_json::to_vec(&report()?)?;
            session.write_output(std::path::Path::new(file), &text)?;
        }
        // the summary only where standard output is not already an export's
        None if stdout_taken => {}
        None => {
            print_summary(&session, node)?;
            if let Some(c) = &contrast {
                print_contrast(&session, c)?;
            }
            if let Some(ab) = &ablation {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "ablation ({:?}{}) of {}: target {:.5} → {:.5}, real change {:+.5}; attributed {:+.5}",
                    ab.mode,
                    if ab.final_scale_frozen {
                        ", final norm frozen"
                    } else {
                        ""
                    },
                    ab.paths
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    ab.clean,
                    ab.ablated,
                    ab.change,
                    ab.node_sum
                )?;
            }
        }
    }
    Ok(())
}

fn print_summary(session: &Session, node: Option<&rdla_attrib::Expansion>) -> anyhow::Result<()> {
    let c = session.computed().context("nothing was computed")?;
    let ov = &c.overview;
    let mut out = std::io::stdout().lock();
    writeln!(out, "model {} on {}", session.model().name, session.device)?;
    writeln!(out, "tokens {:?}", c.tokens.strs)?;
    writeln!(out, "target value {:.5}", ov.target_value)?;
    writeln!(out, "top predictions:")?;
    for (i, p) in c.top.iter().enumerate() {
        writeln!(
            out,
            "  {:>2}. {:<16} logit {:>9.4}  p {:.4}",
            i + 1,
            format!("{:?}", p.token),
            p.logit,
            p.prob
        )?;
    }
    writeln!(out, "components:")?;
    for (l, v) in ov.layout.labels().iter().zip(&ov.components.data) {
        writeln!(out, "  {l:<10} {v:>10.5}")?;
    }
    writeln!(out, "top heads:")?;
    for (l, h, v) in largest_heads(&ov.head_dla, 5) {
        writeln!(out, "  L{l}.attn/H{h} {v:>10.5}")?;
    }
    if let Some(ex) = node {
        let name = if ex.path.is_root() {
            "<root>".to_string()
        } else {
            ex.path.to_string()
        };
        writeln!(
            out,
            "node {name} = {:.5} (bias {:.5}, residual {:.2e}):",
            ex.value, ex.bias, ex.residual
        )?;
        let mut ch = ex.children.clone();
        ch.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        for c in ch.iter().take(10) {
            writeln!(out, "  {:<16} {:>10.5}", c.step, c.value)?;
        }
    }
    Ok(())
}

/// The contrast in words: both targets, the delta, and the largest component and head deltas.
fn print_contrast(session: &Session, c: &rdla_session::Contrast) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let ours = session.computed().context("nothing computed")?;
    writeln!(
        out,
        "contrast prompt ({} tokens): target {:.5}; this prompt {:.5}; delta {:+.5}",
        c.tokens.ids.len(),
        c.overview.target_value,
        ours.overview.target_value,
        c.delta.target_value
    )?;
    let d = &c.delta;
    let mut comps: Vec<(String, f32)> = d
        .layout
        .labels()
        .into_iter()
        .zip(d.components.data.iter().copied())
        .collect();
    comps.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    writeln!(out, "largest component deltas:")?;
    for (label, v) in comps.iter().take(5) {
        writeln!(out, "  {label:<12} {v:+.5}")?;
    }
    writeln!(out, "largest head deltas:")?;
    for (l, h, v) in largest_heads(&d.head_dla, 5) {
        writeln!(out, "  L{l}.attn/H{h} {v:+.5}")?;
    }
    if let Some(n) = &c.node {
        writeln!(
            out,
            "{}: {:.5} here, {:.5} there, delta {:+.5}",
            n.delta.path, n.value, n.contrast_value, n.delta.value
        )?;
    }
    Ok(())
}

/// The `k` entries of a `[L, H]` table largest by `|value|`: `(layer, head, value)`.
fn largest_heads(t: &rdla_attrib::Array, k: usize) -> Vec<(usize, usize, f32)> {
    let (l_n, h_n) = (t.shape[0], t.shape[1]);
    let mut heads: Vec<(usize, usize, f32)> = (0..l_n)
        .flat_map(|l| (0..h_n).map(move |h| (l, h)))
        .map(|(l, h)| (l, h, t.at(&[l, h])))
        .collect();
    heads.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    heads.truncate(k);
    heads
}

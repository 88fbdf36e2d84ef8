//! `rdla attribute`.

use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use rdla_attrib::png::{PngOptions, write_png};
use rdla_attrib::{
    Engine, MlpMode, Path, Report, Target, Timings, node_heatmap, root_heatmap, top_predictions,
};
use rdla_model::device::DeviceChoice;
use rdla_model::{Model, Processing, select_device};

#[derive(Debug, Clone, clap::Args)]
pub struct AttributeArgs {
    /// Model directory (or a file inside one), or `default` for the embedded model.
    #[arg(long)]
    pub model: String,
    /// Prompt text (BOS is prepended unless --no-bos).
    #[arg(long)]
    pub prompt: String,
    /// Answer token, spelled exactly as the tokenizer spells it (a leading space matters).
    #[arg(long)]
    pub answer: String,
    /// Foil token: attribute logit(answer) − logit(foil).
    #[arg(long)]
    pub foil: Option<String>,
    /// Node to expand, in the path grammar (`L5.attn/H3/8:L2.attn`); empty = root.
    #[arg(long)]
    pub path: Option<String>,
    /// Compute device.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Do not prepend BOS.
    #[arg(long)]
    pub no_bos: bool,
    /// MLP linearisation: `frozen-gate` (exact) or `gradient` (approximate, shows residual).
    #[arg(long, value_enum, default_value = "frozen-gate")]
    pub mlp_mode: MlpModeArg,
    /// Write the JSON report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Write a CSV: the node's children with --path, else the overview tables.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the current view as a heatmap PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MlpModeArg {
    FrozenGate,
    Gradient,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Refuse to write over a file of the model's own.
fn check_output(out: &FsPath, model: &Model) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&model.dir).unwrap_or_else(|_| model.dir.clone());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), FsPath::to_path_buf);
    let parent = std::fs::canonicalize(&parent)
        .with_context(|| format!("{}: output folder does not exist", out.display()))?;
    if parent == dir && out.exists() {
        bail!(
            "{}: refusing to overwrite a file inside the model directory",
            out.display()
        );
    }
    Ok(())
}

pub fn run(a: &AttributeArgs) -> anyhow::Result<()> {
    let t_load = Instant::now();
    let (device, info) = select_device(a.device)?;
    let model = if a.model == rdla_model::default_model::SPEC {
        Model::load_default(&device, Processing::default(), &mut |_| true)
    } else {
        Model::load(
            FsPath::new(&a.model),
            &device,
            Processing::default(),
            &mut |_| true,
        )
    }
    .with_context(|| format!("cannot load model {}", a.model))?;
    let load = ms(t_load);

    let tok = &model.tokenizer;
    let ids = tok.encode_prompt(&a.prompt, !a.no_bos)?;
    model.check_tokens(&ids)?;
    let answer = tok.single_token(&a.answer).context("--answer")?;
    let target = match &a.foil {
        Some(f) => Target::Diff {
            answer,
            foil: tok.single_token(f).context("--foil")?,
        },
        None => Target::Logit { answer },
    };
    let path = Path::parse(a.path.as_deref().unwrap_or(""))?;

    let t_fwd = Instant::now();
    let cache = model.run(&ids)?;
    // make the timing honest on asynchronous devices
    let _ = rdla_model::to_vec(cache.final_scale.clone())?;
    let forward = ms(t_fwd);

    let t_attr = Instant::now();
    let mode = match a.mlp_mode {
        MlpModeArg::FrozenGate => MlpMode::FrozenGate,
        MlpModeArg::Gradient => MlpMode::Gradient,
    };
    let engine = Engine::new(&model, &cache, target, mode)?;
    engine.validate(&path)?;
    let overview = engine.overview()?;
    let node = if a.path.is_some() {
        Some(engine.expand(&path)?)
    } else {
        None
    };
    let top = top_predictions(&model, &cache, 10)?;
    let attribution = ms(t_attr);

    let report = Report {
        model: &model,
        cache: &cache,
        answer_id: answer,
        foil_id: target.foil(),
        top,
        overview,
        node,
        timings: Timings {
            load,
            forward,
            attribution,
        },
        device: info.to_string(),
        mlp_mode: match mode {
            MlpMode::FrozenGate => "frozen_gate",
            MlpMode::Gradient => "gradient",
        },
    };

    let target_label = match target {
        Target::Logit { .. } => format!("logit {:?}", tok.token_str(answer)),
        Target::Diff { foil, .. } => format!(
            "logit {:?} − {:?}",
            tok.token_str(answer),
            tok.token_str(foil)
        ),
    };
    let title = rdla_attrib::heatmap::view_title(&model.name, &path, &target_label);
    if let Some(png) = &a.png {
        check_output(png, &model)?;
        let hm = match &report.node {
            Some(ex) if !path.is_root() => node_heatmap(
                ex,
                &path,
                &report.token_strs(),
                report.overview.layout,
                &title,
            ),
            _ => root_heatmap(&report.overview, &title),
        };
        write_png(&hm, png, PngOptions::default())?;
    }
    if let Some(csv) = &a.csv {
        check_output(csv, &model)?;
        let text = match &report.node {
            Some(ex) => rdla_attrib::csv::expansion_csv(ex),
            None => rdla_attrib::csv::overview_csv(&report.overview),
        };
        std::fs::write(csv, text)
            .with_context(|| format!("{}: cannot write CSV", csv.display()))?;
    }
    match a.json.as_deref() {
        Some("-") => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &report.to_json())?;
            writeln!(out)?;
        }
        Some(file) => {
            let p = FsPath::new(file);
            check_output(p, &model)?;
            // streamed: the report is never held as one string as well as a JSON tree
            let cannot = || format!("{file}: cannot write JSON");
            let mut w = std::io::BufWriter::new(std::fs::File::create(p).with_context(cannot)?);
            serde_json::to_writer(&mut w, &report.to_json()).with_context(cannot)?;
            w.flush().with_context(cannot)?;
        }
        None => print_summary(&report, &model, &path),
    }
    Ok(())
}

fn print_summary(report: &Report<'_>, model: &Model, path: &Path) {
    let ov = &report.overview;
    println!("model {} on {}", model.name, report.device);
    println!("tokens {:?}", report.token_strs());
    println!("target value {:.5}", ov.target_value);
    println!("top predictions:");
    for (i, p) in report.top.iter().enumerate() {
        println!(
            "  {:>2}. {:<16} logit {:>9.4}  p {:.4}",
            i + 1,
            format!("{:?}", p.token),
            p.logit,
            p.prob
        );
    }
    let labels = model.component_labels();
    println!("components:");
    for (l, v) in labels.iter().zip(&ov.components.data) {
        println!("  {l:<10} {v:>10.5}");
    }
    let mut heads: Vec<(usize, usize, f32)> = (0..ov.head_dla.shape[0])
        .flat_map(|l| (0..ov.head_dla.shape[1]).map(move |h| (l, h)))
        .map(|(l, h)| (l, h, ov.head_dla.at(&[l, h])))
        .collect();
    heads.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    println!("top heads:");
    for (l, h, v) in heads.iter().take(5) {
        println!("  L{l}.attn/H{h} {v:>10.5}");
    }
    if let Some(ex) = &report.node {
        println!(
            "node {} = {:.5} (bias {:.5}, residual {:.2e}):",
            if path.is_root() {
                "<root>".into()
            } else {
                path.to_string()
            },
            ex.value,
            ex.bias,
            ex.residual
        );
        let mut ch = ex.children.clone();
        ch.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        for c in ch.iter().take(10) {
            println!("  {:<16} {:>10.5}", c.step, c.value);
        }
    }
}

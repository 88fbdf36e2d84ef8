//! What `attribute` and `trace` share: the model, prompt and target arguments, and opening the
//! session and computing the request they describe.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rdla_attrib::MlpMode;
use rdla_model::device::DeviceChoice;
use rdla_model::select_device;
use rdla_session::{ModelSource, Request, Session, SessionError, ms};

#[derive(Debug, Clone, clap::Args)]
pub struct ComputeArgs {
    /// Model directory (or a file inside one), a GGUF file, or `default` for the embedded model.
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
    /// Answer token, spelled exactly as the tokenizer spells it (a leading space matters).
    #[arg(long)]
    pub answer: String,
    /// Foil token: attribute logit(answer) − logit(foil).
    #[arg(long)]
    pub foil: Option<String>,
    #[command(flatten)]
    pub run: RunOptions,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// How a computation runs — the device, BOS, the MLP linearisation — shared by `attribute`,
/// `trace` and `census`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Compute device.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Do not prepend BOS.
    #[arg(long)]
    pub no_bos: bool,
    /// MLP linearisation: `frozen-gate` (exact) or `gradient` (approximate, shows residual).
    #[arg(long, default_value = "frozen-gate")]
    pub mlp_mode: MlpMode,
}

/// `--max-memory` and `--max-gpu-memory`, shared by the explorer and the headless commands.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Memory budget for the model and the prompt together (e.g. 6GiB, 500MiB; default 80 %
    /// of the memory available). A model whose layers do not fit streams them; a prompt over
    /// it is an error naming what it needs.
    #[arg(long, value_name = "SIZE", value_parser = rdla_model::memory::parse_size)]
    pub max_memory: Option<u64>,
    /// GPU memory budget for a model on a GPU: its layers, the prompt's cache and a forward
    /// pass's working tensors there (e.g. 12GiB). Layers that do not fit stream to the GPU;
    /// a prompt over it is an error naming what it needs. No default (wgpu does not report
    /// a GPU's memory): without it the memory budget applies.
    #[arg(long, value_name = "SIZE", value_parser = rdla_model::memory::parse_size)]
    pub max_gpu_memory: Option<u64>,
}

impl MemoryArgs {
    /// Make the given budgets the process's.
    pub fn apply(&self) {
        if let Some(bytes) = self.max_memory {
            rdla_model::memory::set_budget(bytes);
        }
        if let Some(bytes) = self.max_gpu_memory {
            rdla_model::memory::set_gpu_budget(bytes);
        }
    }
}

/// The prompt from `--prompt` or `--prompt-file` (clap makes sure exactly one is given); a
/// file is read to at most what an `n_ctx`-token context can hold.
fn read_prompt(text: Option<&str>, file: Option<&Path>, n_ctx: usize) -> anyhow::Result<String> {
    match (text, file) {
        (Some(t), _) => Ok(t.to_string()),
        (None, Some(f)) => {
            rdla_session::input::read_text_file(f, rdla_session::input::prompt_byte_limit(n_ctx))
                .context("--prompt-file")
        }
        (None, None) => anyhow::bail!("give the prompt with --prompt or --prompt-file"),
    }
}

/// Open the model and compute the request; returns the session and the load time (ms).
pub fn open_and_compute(a: &ComputeArgs) -> anyhow::Result<(Session, f64)> {
    a.memory.apply();
    let t_load = Instant::now();
    let (device, info) = select_device(a.run.device)?;
    let mut session = Session::open(ModelSource::parse(&a.model), &device, info, &mut |_| true)
        .with_context(|| format!("cannot load model {}", a.model))?;
    let load = ms(t_load);
    let request = Request {
        prompt: read_prompt(
            a.prompt.as_deref(),
            a.prompt_file.as_deref(),
            session.model().config.n_ctx,
        )?,
        answer: a.answer.clone(),
        answer_id: None,
        foil: a.foil.clone(),
        bos: !a.run.no_bos,
        mlp_mode: a.run.mlp_mode,
    };
    // name the flag: `--foil: `x y` is not a single token: …`
    let flagged = |e: SessionError| match e {
        SessionError::Token { which, error } => anyhow::anyhow!("--{which}: {error}"),
        e => e.into(),
    };
    // the answer and foil before the forward pass: a bad one fails at once, not after it
    session.check_request(&request).map_err(flagged)?;
    let resident = !session.model().streams_layers();
    session.compute(&request).map_err(|f| flagged(f.error))?;
    if resident && session.model().streams_layers() {
        eprintln!(
            "note: this prompt does not fit the memory budget beside the model's layers; they \
             stream from the checkpoint now ({})",
            session.info().facts.memory_line()
        );
    }
    Ok((session, load))
}

/// Check the output flags against each other before anything is computed: at most one of
/// them may be `-` (standard output), and no two may name the same file (the second would
/// silently replace the first). Returns whether standard output is taken by one.
pub fn check_outputs(outputs: &[(&str, Option<&Path>)]) -> anyhow::Result<bool> {
    let given: Vec<(&str, &Path)> = outputs
        .iter()
        .filter_map(|(flag, p)| p.map(|p| (*flag, p)))
        .collect();
    let dashes: Vec<&str> = given
        .iter()
        .filter(|(_, p)| p.as_os_str() == "-")
        .map(|(f, _)| *f)
        .collect();
    if dashes.len() > 1 {
        anyhow::bail!(
            "{} all write to standard output (`-`); give all but one of them a file",
            dashes.join(" and ")
        );
    }
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for (flag, p) in given.iter().filter(|(_, p)| p.as_os_str() != "-") {
        let real = rdla_session::output::resolve(p).unwrap_or_else(|_| p.to_path_buf());
        if let Some((other, _)) = seen.iter().find(|(_, r)| *r == real) {
            anyhow::bail!(
                "{other} and {flag} both write to {}; the second would replace the first",
                p.display()
            );
        }
        seen.push((flag, real));
    }
    Ok(!dashes.is_empty())
}

/// Write a result file, and say on standard error what it holds and its size.
pub fn save_result(
    session: &Session,
    file: &Path,
    saved: &rdla_session::saved::Saved,
) -> anyhow::Result<()> {
    let bytes = session.write_result(file, saved)?;
    eprintln!(
        "saved {} nodes{} to {} ({} bytes)",
        saved.nodes.len(),
        if saved.sites.is_empty() {
            String::new()
        } else {
            format!(", a graph of {} sites", saved.sites.len())
        },
        file.display(),
        bytes
    );
    Ok(())
}

/// `--ablation patch` takes each site's value from the contrast prompt's run: refused without
/// `--contrast-prompt`, before anything is computed.
pub fn check_patch(
    mode: rdla_model::model::ablate::AblationMode,
    contrast_prompt: Option<&str>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        mode != rdla_model::model::ablate::AblationMode::Patch || contrast_prompt.is_some(),
        "--ablation patch takes each site's value from another prompt's run: give --contrast-prompt"
    );
    Ok(())
}

//! `rdla verify FILE.rdla --model M`: recompute every node a result file holds on the model
//! it names, rerun its verification's ablations, and exit 1 naming the first value that
//! differs; a model whose files are not the saved ones (sha256) is refused before anything is
//! computed.

use std::path::PathBuf;

use anyhow::Context;
use rdla_model::device::DeviceChoice;
use rdla_model::select_device;
use rdla_session::saved::Saved;
use rdla_session::{ModelSource, Session};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The result file (`.rdla`) to check.
    pub file: PathBuf,
    /// The model it was saved from (a folder, a GGUF file, or `default`).
    #[arg(long)]
    pub model: String,
    /// Compute device.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Largest accepted difference, relative to 1 + |saved value|.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    #[command(flatten)]
    pub memory: crate::common::MemoryArgs,
}

pub fn run(a: &VerifyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.tolerance.is_finite() && a.tolerance >= 0.0,
        "--tolerance {}: a non-negative number",
        a.tolerance
    );
    let saved = Saved::open(&a.file)?;
    a.memory.apply();
    let (device, info) = select_device(a.device)?;
    let mut session = Session::open(ModelSource::parse(&a.model), &device, info, &mut |_| true)
        .with_context(|| format!("cannot load model {}", a.model))?;
    let t = std::time::Instant::now();
    let check = session.check_saved(&saved, a.tolerance)?;
    if let Some((what, was, now)) = check.mismatch {
        anyhow::bail!(
            "{}: {what} does not match: saved {was}, recomputed {now} (Δ {:+e})",
            a.file.display(),
            now - was
        );
    }
    let ablations = match check.ablations {
        0 => String::new(),
        k => format!(" and the verification's {k} ablated runs"),
    };
    println!(
        "{}: all {} nodes{ablations} agree (tolerance {:e}) on {} in {:.1} s",
        a.file.display(),
        check.nodes,
        a.tolerance,
        saved.manifest.model.name,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

//! The training curve, drawn by `rdla-render` and written beside the weights.

use std::path::Path;

use crate::error::Result;

pub fn save_loss_curve(
    path: &Path,
    losses: &[f32],
    accuracy: &[(usize, f64)],
    title: &str,
    subtitle: &str,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
    }
    let png = rdla_render::loss::loss_curve_png(losses, accuracy, title, subtitle)?;
    std::fs::write(path, png).map_err(crate::error::io_err(path))?;
    Ok(())
}

//! The status bar: the compute device (GPU, or the CPU and why), the model, the last
//! computation's time and the latest message.

use egui::Ui;
use rdla_model::DeviceInfo;

use crate::state::AppState;

pub fn show(ui: &mut Ui, state: &AppState, device: &DeviceInfo) {
    ui.horizontal(|ui| {
        if !state.is_idle() {
            ui.spinner();
        }
        let dev = if device.is_gpu() {
            format!("GPU: {device}")
        } else {
            format!("{device}")
        };
        ui.label(dev);
        ui.separator();
        if let Some(m) = &state.model {
            ui.label(m.summary()).on_hover_text(format!(
                "{}\nweights: {}\nweight processing: {}",
                m.details,
                m.weights,
                m.processing.join(", ")
            ));
            ui.separator();
        }
        if let Some(ms) = state.last_ms {
            ui.label(format!("last computation {ms:.1} ms"));
            ui.separator();
        }
        ui.label(&state.status);
    });
}

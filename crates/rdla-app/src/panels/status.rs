//! The status bar: the compute device (GPU, or the CPU and why), the model, the last
//! computation's time and the latest message.

use egui::Ui;
use rdla_model::DeviceInfo;

use crate::state::AppState;

pub fn show(ui: &mut Ui, state: &AppState, device: &DeviceInfo) {
    ui.horizontal(|ui| {
        if !state.is_idle() {
            // no spinner: its animation repaints every frame
            ui.label("working…");
            ui.separator();
        }
        // the reason the GPU is not used goes in the tooltip: the bar keeps room for the
        // model, the budget and the timings on a narrow window
        match (&device.note, device.is_gpu()) {
            (_, true) => ui.label(format!("GPU: {device}")),
            (Some(why), false) => ui
                .label(format!("{} · no GPU", device.name))
                .on_hover_text(format!("computing on the CPU: {why}")),
            (None, false) => ui.label(&device.name),
        };
        ui.separator();
        if let Some(m) = &state.model {
            ui.label(m.summary()).on_hover_text(format!(
                "{}\nweights: {}\nweight processing: {}",
                m.details,
                m.facts.weights,
                m.processing.join(", ")
            ));
            ui.separator();
            let where_tokens = if m.facts.tokens_in_place {
                "the embedding and unembedding are read where they lie on disk \
                 (memory-mapped, or GGUF blocks dequantised a block of tokens at a time)"
            } else {
                "the embedding and unembedding are held in memory in f32"
            };
            let where_layers = match m.facts.streamed_layer_cache {
                Some(n) => format!(
                    "the layers did not fit the memory budget: each is read from disk where it \
                     lies when it is used (processed as at loading), and the {n} most recently \
                     used are kept; the forward pass reads the next layer while one computes, \
                     and a drill-down reads the layers it needs"
                ),
                None => "every layer is held in memory, processed, in f32".into(),
            };
            ui.label(m.facts.memory_line())
                .on_hover_text(format!("{where_tokens}; {where_layers}"));
            ui.separator();
            if let Some(b) = rdla_model::memory::budget() {
                let how = if b.explicit {
                    "set with --max-memory"
                } else {
                    "the default: 80 % of the memory available at start; --max-memory sets it"
                };
                ui.label(format!("budget {}", rdla_session::info::bytes(b.bytes)))
                    .on_hover_text(format!(
                        "what the model and a prompt may hold together ({how}); a model whose \
                     layers do not fit streams them, and below one layer and the prompt's \
                     cache a prompt is refused with what it needs"
                    ));
                ui.separator();
            }
            if let Some(g) = rdla_model::memory::gpu_budget().filter(|_| device.is_gpu()) {
                ui.label(format!("GPU budget {}", rdla_session::info::bytes(g)))
                    .on_hover_text(
                        "what the model's layers, a prompt's cache and a forward pass's working \
                         tensors may take on the GPU (--max-gpu-memory, or the field under the \
                         prompt); checked before a model is placed there and before each forward \
                         pass",
                    );
                ui.separator();
            }
        }
        if let Some(c) = &state.computed {
            ui.label(format!(
                "prompt {} (forward {}, attribution {})",
                duration(c.forward_ms + c.attribution_ms),
                duration(c.forward_ms),
                duration(c.attribution_ms)
            ))
            .on_hover_text("the last computation of the prompt and target");
            ui.separator();
        }
        if let Some(ms) = state.last_ms {
            ui.label(format!("last view {}", duration(ms)))
                .on_hover_text("the last node expanded");
            ui.separator();
        }
        ui.label(&state.status);
    });
}

/// `12.3 ms`, `4.1 s`, `3:58`.
fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        let s = (ms / 1000.0).round() as u64;
        format!("{}:{:02}", s / 60, s % 60)
    }
}

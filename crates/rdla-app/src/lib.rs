//! The rdla desktop explorer (eframe 0.37, wgpu renderer). The model and the attribution run
//! on a worker thread ([`worker`]); Burn computes on eframe's own wgpu device when it is a real
//! GPU, and on the CPU backend otherwise.

pub mod app;
pub mod dialogs;
pub mod gguf_models;
pub mod hf_cache;
pub mod local_models;
pub mod panels;
pub mod settings;
pub mod state;
pub mod theme;
pub mod worker;

use std::sync::Arc;

use rdla_model::device::{DeviceChoice, share_wgpu};
use rdla_model::{Device, DeviceInfo};

pub use app::RdlaApp;
pub use dialogs::{DialogResult, Dialogs, RfdDialogs, ScriptedDialogs};
pub use rdla_session::ModelSource;
pub use settings::Settings;
pub use state::{Action, AppState};
pub use worker::WorkerHandle;

/// What `rdla` / `rdla explore` was started with.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub answer: Option<String>,
    /// A result file (`.rdla`) to show at start, read-only, and its contents (read once, by
    /// whoever checked it).
    pub result: Option<(std::path::PathBuf, rdla_session::saved::Saved)>,
}

impl StartOptions {
    fn source(&self) -> Option<ModelSource> {
        self.model.as_deref().map(ModelSource::parse)
    }
}

/// The Burn device for the GUI: eframe's wgpu device when it is a hardware adapter (or when
/// `RDLA_DEVICE=gpu` asks for it), the CPU backend otherwise.
pub fn device_for(render_state: Option<&egui_wgpu::RenderState>) -> (Device, DeviceInfo) {
    let choice: DeviceChoice = std::env::var("RDLA_DEVICE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    if choice == DeviceChoice::Cpu {
        return (
            Device::flex(),
            DeviceInfo::cpu(Some("RDLA_DEVICE=cpu".into())),
        );
    }
    let Some(rs) = render_state else {
        return (
            Device::flex(),
            DeviceInfo::cpu(Some("no wgpu renderer".into())),
        );
    };
    let info = rs.adapter.get_info();
    if info.device_type == wgpu::DeviceType::Cpu && choice != DeviceChoice::Gpu {
        return (
            Device::flex(),
            DeviceInfo::cpu(Some(format!("{} is a software adapter", info.name))),
        );
    }
    let setup = burn::tensor::wgpu::WgpuSetup {
        instance: rs.instance.clone(),
        adapter: rs.adapter.clone(),
        device: rs.device.clone(),
        queue: rs.queue.clone(),
        backend: info.backend,
    };
    match share_wgpu(setup) {
        Ok(ok) => ok,
        Err(e) => (
            Device::flex(),
            DeviceInfo::cpu(Some(format!("could not share the GPU: {e}"))),
        ),
    }
}

/// Ask eframe for a device with every feature and limit the adapter offers, so Burn's
/// kernels can run on the same device the UI draws with.
fn wgpu_options() -> egui_wgpu::WgpuConfiguration {
    let mut create = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    create.device_descriptor = Arc::new(|adapter: &wgpu::Adapter| wgpu::DeviceDescriptor {
        label: Some("rdla (egui + burn)"),
        required_features: adapter
            .features()
            .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    });
    // prefer a hardware adapter over a software one
    create.native_adapter_selector = Some(Arc::new(|adapters: &[wgpu::Adapter], _surface| {
        adapters
            .iter()
            .max_by_key(|a| match a.get_info().device_type {
                wgpu::DeviceType::DiscreteGpu => 4,
                wgpu::DeviceType::IntegratedGpu => 3,
                wgpu::DeviceType::VirtualGpu => 2,
                wgpu::DeviceType::Other => 1,
                wgpu::DeviceType::Cpu => 0,
            })
            .cloned()
            .ok_or_else(|| "no wgpu adapter".to_string())
    }));
    egui_wgpu::WgpuConfiguration {
        wgpu_setup: egui_wgpu::WgpuSetup::CreateNew(create),
        ..Default::default()
    }
}

/// Add DejaVu Sans as a fallback font: token text can be any Unicode (and byte-level BPE
/// pieces decode to U+FFFD), which egui's default fonts do not cover.
pub fn install_fonts(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "dejavu".into(),
        Arc::new(egui::FontData::from_static(rdla_session::png::FONT_BYTES)),
    );
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts
            .families
            .entry(family)
            .or_default()
            .push("dejavu".into());
    }
    ctx.set_fonts(fonts);
}

/// Build the app from eframe's creation context.
pub fn create_app(
    cc: &eframe::CreationContext<'_>,
    opts: &StartOptions,
    dialogs: Box<dyn Dialogs>,
) -> RdlaApp {
    let mut settings: Settings = cc
        .storage
        .and_then(|s| eframe::get_value(s, Settings::KEY))
        .unwrap_or_default();
    if let Some(p) = &opts.prompt {
        settings.prompt.clone_from(p);
    }
    if let Some(a) = &opts.answer {
        settings.answer.clone_from(a);
    }
    // a remembered budget that no longer parses is dropped (the field shows it empty)
    if settings.apply_budget(true).is_err() {
        settings.max_memory.clear();
    }
    install_fonts(&cc.egui_ctx);
    let (device, info) = device_for(cc.wgpu_render_state.as_ref());
    let ctx = cc.egui_ctx.clone();
    let source = opts.source().unwrap_or(ModelSource::Default);
    let mut app = RdlaApp::new(
        settings,
        device,
        info,
        move || ctx.request_repaint(),
        dialogs,
        source,
    );
    if let Some((file, saved)) = &opts.result {
        app.show_result(file, saved.clone());
    }
    app
}

/// The name eframe keeps the settings under.
const APP_ID: &str = "rdla";

/// Open the explorer window.
pub fn run(opts: StartOptions) -> anyhow::Result<()> {
    if let Some(file) = eframe::storage_dir(APP_ID).map(|d| d.join("app.ron")) {
        match settings::guard_storage_file(&file) {
            Ok(None) => {}
            Ok(Some(moved)) => eprintln!("rdla: {moved}"),
            Err(e) => anyhow::bail!(e),
        }
    }
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("rdla — recursive direct logit attribution")
            .with_inner_size([1400.0, 900.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_options(),
        ..Default::default()
    };
    eframe::run_native(
        APP_ID,
        native,
        Box::new(move |cc| Ok(Box::new(create_app(cc, &opts, Box::new(RfdDialogs))))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

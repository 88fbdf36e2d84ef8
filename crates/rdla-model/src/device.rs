//! Choosing the Burn device: a real GPU through wgpu, or the pure-Rust CPU backend.

use burn::tensor::Device;
use burn::tensor::wgpu::wgpu;

use crate::error::{ModelError, Result};

/// What the user asked for (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU if one exists, else the CPU. A software adapter (lavapipe) is not a GPU.
    #[default]
    Auto,
    /// wgpu on whatever adapter exists (a software one included); an error if none.
    Gpu,
    /// The CPU backend (`Device::flex()`).
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!(
                "unknown device `{other}` (expected auto, gpu or cpu)"
            )),
        }
    }
}

/// The device in use, for status lines and JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// `"gpu"` or `"cpu"`.
    pub kind: &'static str,
    /// Adapter name, or a description of the CPU backend.
    pub name: String,
    /// Why a GPU was not used, when `auto` fell back to the CPU.
    pub note: Option<String>,
}

impl DeviceInfo {
    pub fn cpu(note: Option<String>) -> Self {
        Self {
            kind: "cpu",
            name: "CPU (burn-flex)".into(),
            note,
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.kind == "gpu"
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(n) = &self.note {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// Hardware (non-software) adapters wgpu can see.
fn hardware_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| a.get_info())
        .filter(|i| i.device_type != wgpu::DeviceType::Cpu)
        .collect()
}

fn init_wgpu() -> Result<(Device, DeviceInfo)> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| ModelError::Device(format!("no usable wgpu adapter: {e}")))?;
    let info = setup.adapter.get_info();
    let software = info.device_type == wgpu::DeviceType::Cpu;
    Ok((
        device,
        DeviceInfo {
            kind: "gpu",
            name: format!("{} ({:?})", info.name, info.backend),
            note: software.then(|| "software adapter".to_string()),
        },
    ))
}

/// Pick the device for `choice`.
pub fn select_device(choice: DeviceChoice) -> Result<(Device, DeviceInfo)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), DeviceInfo::cpu(None))),
        DeviceChoice::Gpu => init_wgpu(),
        DeviceChoice::Auto => {
            if hardware_adapters().is_empty() {
                Ok((Device::flex(), DeviceInfo::cpu(Some("no GPU found".into()))))
            } else {
                match init_wgpu() {
                    Ok(ok) if ok.1.note.is_none() => Ok(ok),
                    Ok(_) => Ok((
                        Device::flex(),
                        DeviceInfo::cpu(Some("only a software GPU adapter".into())),
                    )),
                    Err(e) => Ok((Device::flex(), DeviceInfo::cpu(Some(e.to_string())))),
                }
            }
        }
    }
}

/// Register an application's existing wgpu device (eframe's) with Burn.
pub fn share_wgpu(setup: burn::tensor::wgpu::WgpuSetup) -> Result<(Device, DeviceInfo)> {
    let info = setup.adapter.get_info();
    let software = info.device_type == wgpu::DeviceType::Cpu;
    let name = format!("{} ({:?})", info.name, info.backend);
    let device = Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| ModelError::Device(e.to_string()))?;
    Ok((
        device,
        DeviceInfo {
            kind: "gpu",
            name,
            note: software.then(|| "software adapter".to_string()),
        },
    ))
}

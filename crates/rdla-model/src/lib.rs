//! rdla's model layer: Hugging Face checkpoints (GPT-2, GPT-Neo, GPT-NeoX, Llama, Qwen2,
//! Qwen3, Mistral, Phi-3, Gemma 2/3) and GGUF files loaded into Burn with TransformerLens weight processing, and a forward pass that caches
//! what exact direct logit attribution needs. No GUI dependency.

pub mod act;
pub mod arch;
pub mod config;
pub mod default_model;
pub mod device;
pub mod error;
mod fused;
pub mod layout;
pub mod memory;
pub mod model;
mod par;
pub mod process;
pub mod rotary;
pub mod spill;
pub mod tokenizer;
pub mod vocab;
pub mod weights;

pub use arch::Family;
pub use burn::tensor::{Device, Tensor};
pub use config::{Activation, AttnSpan, ModelConfig};
pub use device::{DeviceChoice, DeviceInfo, select_device};
pub use error::{ModelError, Result};
pub use layout::{Comp, Layout};
pub use model::{BatchRun, Cache, Model, to_vec};
pub use process::Processing;
pub use tokenizer::Tokenizer;
pub use weights::{HostTensor, LoadProgress, WeightStore};

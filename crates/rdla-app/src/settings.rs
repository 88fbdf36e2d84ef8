//! What the explorer remembers between runs (serialised through eframe's storage).

use rdla_attrib::MlpMode;
use rdla_session::{ColorMap, ModelSource};
use serde::{Deserialize, Serialize};

/// The default prompt and answer: the embedded model's story.
pub const DEFAULT_PROMPT: &str = "1. Get some apples.\n2. Get some oranges.\n";
pub const DEFAULT_ANSWER: &str = "3";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub prompt: String,
    pub answer: String,
    pub foil: String,
    pub bos: bool,
    pub mlp_mode: MlpMode,
    pub colormap: ColorMap,
    /// Most recent first.
    pub recent: Vec<ModelSource>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt: DEFAULT_PROMPT.into(),
            answer: DEFAULT_ANSWER.into(),
            foil: String::new(),
            bos: true,
            mlp_mode: MlpMode::FrozenGate,
            colormap: ColorMap::BlueWhiteRed,
            recent: Vec::new(),
        }
    }
}

impl Settings {
    pub const KEY: &'static str = "rdla-settings";
    const MAX_RECENT: usize = 10;

    pub fn remember(&mut self, source: &ModelSource) {
        self.recent.retain(|s| s != source);
        self.recent.insert(0, source.clone());
        self.recent.truncate(Self::MAX_RECENT);
    }
}

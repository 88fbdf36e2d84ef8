//! The engine's public types: what is attributed, how MLPs are linearised, errors, and what an
//! expansion or the overview returns.

use rdla_model::ModelError;
pub use rdla_model::model::ablate::Site;
use serde::Serialize;

use crate::path::{Comp, Layout, Path, PathSyntaxError, Side, Step};

/// What is attributed: a logit, or a logit difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    Logit { answer: u32 },
    Diff { answer: u32, foil: u32 },
}

impl Target {
    pub fn answer(self) -> u32 {
        match self {
            Self::Logit { answer } | Self::Diff { answer, .. } => answer,
        }
    }

    pub fn foil(self) -> Option<u32> {
        match self {
            Self::Logit { .. } => None,
            Self::Diff { foil, .. } => Some(foil),
        }
    }

    /// The answer and the foil must be tokens of a vocabulary of `vocab`.
    pub fn check(self, vocab: usize) -> Result<(), AttribError> {
        match [Some(self.answer()), self.foil()]
            .into_iter()
            .flatten()
            .find(|&id| id as usize >= vocab)
        {
            Some(id) => Err(AttribError::BadTarget { id, vocab }),
            None => Ok(()),
        }
    }
}

/// How an MLP is linearised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpMode {
    /// `g = act(z)/z`: exact, every node adds up.
    #[default]
    FrozenGate,
    /// `g = act'(z)`: a gradient approximation, not complete; its residual is reported.
    Gradient,
}

impl MlpMode {
    /// The JSON spelling (`frozen_gate`, `gradient`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrozenGate => "frozen_gate",
            Self::Gradient => "gradient",
        }
    }
}

impl std::str::FromStr for MlpMode {
    type Err = String;
    /// The command-line spelling (`frozen-gate`, `gradient`); the JSON one is accepted too.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "frozen-gate" | "frozen_gate" => Ok(Self::FrozenGate),
            "gradient" => Ok(Self::Gradient),
            other => Err(format!(
                "unknown MLP mode `{other}` (expected frozen-gate or gradient)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttribError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Syntax(#[from] PathSyntaxError),
    #[error(
        "bad path `{path}`: step {index} `{step}` is not a child of {parent}; valid here: {valid}"
    )]
    InvalidStep {
        path: Path,
        index: usize,
        step: Step,
        parent: String,
        valid: String,
    },
    #[error(
        "attribution needs LayerNorm folded into the weights (fold_ln); this model was loaded without it"
    )]
    NotFolded,
    #[error("target token id {id} is outside the vocabulary of {vocab}")]
    BadTarget { id: u32, vocab: usize },
    #[error(
        "`{path}` is not a model site (ablate a component, head or neuron; not the root, a score, a score's side or a remainder)"
    )]
    NotASite { path: Path },
    #[error("component `{comp}` is not in this model's layout")]
    UnknownComponent { comp: Comp },
    #[error("a read-back from the device returned no values")]
    Empty,
}

pub type Result<T, E = AttribError> = std::result::Result<T, E>;

/// A dense host array with its shape (row-major): the overview's tables.
pub use rdla_model::HostTensor as Array;

/// What kind of node a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// The target logit at the last position.
    Root,
    /// A residual component at a position: an attention layer, an MLP, or a leaf.
    Component { comp: CompLabel },
    /// One attention head at a destination position.
    Head { layer: usize, head: usize },
    /// One neuron of an MLP at a position.
    Neuron { layer: usize, neuron: usize },
    /// A head's pre-softmax attention score (or a contrast of scores), in score units.
    Score { layer: usize, head: usize },
    /// One side (`q`: keys frozen, `k`: query frozen) of a score's decomposition.
    Side {
        layer: usize,
        head: usize,
        side: Side,
    },
    /// The remainder child of its parent.
    Bias,
}

/// A component, serialised as its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompLabel(pub Comp);

impl Serialize for CompLabel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

/// A model site at a position: what ablation replaces, what the trace's graph merges paths
/// by, what the window offers the causal check on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SiteAt {
    pub site: Site,
    pub pos: usize,
}

/// How a node's children are laid out in a heatmap (each node kind says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildLayout {
    /// The components of a residual stream at one position (the root, an MLP, a neuron, a
    /// score's query side or single key side): layers × (attention, MLP).
    Components,
    /// An attention layer's heads: one row.
    Heads,
    /// A head's sources: the components upstream of `layer` × every position it may see.
    Sources { layer: usize },
    /// A contrast's key side: the components upstream of `layer` × the keys it compares.
    Keys { layer: usize },
    /// A score's bilinear table (query components × key components).
    Table,
    /// A leaf: its value alone.
    Cell,
}

/// One child of an expanded node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Child {
    pub step: Step,
    pub value: f32,
    /// The model site the child is, if it is one.
    #[serde(skip)]
    pub site: Option<SiteAt>,
    /// The child is a leaf (nothing below it).
    #[serde(skip)]
    pub leaf: bool,
}

/// An expanded node: its value, its children, and what does not add up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expansion {
    pub path: Path,
    #[serde(flatten)]
    pub kind: NodeKind,
    /// Position the node sits at (destination position for heads).
    pub position: usize,
    pub value: f32,
    pub children: Vec<Child>,
    pub bias: f32,
    /// `value − Σ children − bias` (a score node: `value − Σ table`). Float error for exact
    /// nodes; the approximation error in gradient MLP mode; the whole value for a leaf
    /// (nothing to expand).
    pub residual: f32,
    pub leaf: bool,
    /// What the numbers are: logits, or (at and below a score) pre-softmax score units.
    pub units: Units,
    /// A score node's children (`q`, `k`) are two alternative decompositions of its value,
    /// not parts of a sum.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub alternatives: bool,
    /// A score node's bilinear table (query components × key components).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<ScoreTable>,
    /// An MLP node's largest neurons by |value| (`N{n}` steps), and how many it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neurons: Option<Vec<Child>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_neurons: Option<usize>,
    /// The tokens the node's output pushes up and down most (through the frozen final norm
    /// and the unembedding); nodes that write nothing of their own (the root, scores, sides,
    /// remainders) have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenReadout>,
    /// The model site the node is, if it is one.
    #[serde(skip)]
    pub site: Option<SiteAt>,
    /// How its children are laid out in a heatmap.
    #[serde(skip)]
    pub layout: ChildLayout,
}

impl Expansion {
    /// The positions of the `{p}:{c}` children (a head's sources, a key side's keys), in
    /// order, with repeats.
    pub fn source_positions(&self) -> Vec<usize> {
        self.children
            .iter()
            .filter_map(|c| match c.step {
                Step::Source { pos, .. } => Some(pos),
                _ => None,
            })
            .collect()
    }
}

/// The units of a node's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Units {
    /// Logit units (the target's logit or logit difference).
    Logit,
    /// Pre-softmax attention-score units (at a `qk:` node and below it).
    Score,
}

impl Units {
    /// How a caption names them: `logit units`, `score units`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Logit => "logit units",
            Self::Score => "score units",
        }
    }
}

impl std::fmt::Display for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The bilinear split of a score: `values[row][col]`, rows the query-side components (and
/// `bias`), columns the key-side components (and `bias`), each named by its step below the
/// side; the cells add up to the score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreTable {
    pub rows: Vec<Step>,
    pub cols: Vec<Step>,
    pub values: Vec<Vec<f32>>,
}

impl ScoreTable {
    pub fn sum(&self) -> f64 {
        self.values.iter().flatten().map(|&v| f64::from(v)).sum()
    }
}

/// One token of a vocabulary readout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenValue {
    pub id: u32,
    pub token: String,
    pub value: f32,
}

/// A node's vocabulary readout: the 10 tokens it pushes up most (descending) and down most
/// (ascending).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenReadout {
    pub up: Vec<TokenValue>,
    pub down: Vec<TokenValue>,
}

/// The root's children and each head's total per source component: what a census keeps of
/// a prompt ([`crate::Engine::head_totals`]), without the overview's MLP breakdown and
/// per-position tables.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadTotals {
    pub layout: Layout,
    pub target_value: f32,
    /// Root children `[C]`.
    pub components: Array,
    /// `[L]`.
    pub attn_bias: Array,
    /// `[L, H]`.
    pub head_dla: Array,
    /// `[L, H]`.
    pub head_bias: Array,
    /// Each head's children summed over source positions, `[L, H, C]` (zero for components
    /// not upstream of the layer), when asked for.
    pub head_sources: Option<Array>,
}

impl HeadTotals {
    /// The totals of an overview already computed: its head breakdown summed over source
    /// positions (in f64). The same numbers as [`crate::Engine::head_totals`] to float
    /// rounding, without reading the layers again.
    pub fn of(ov: &Overview, sources: bool) -> Self {
        let [l_n, h_n, p_n, c_n] = match ov.head_breakdown.shape[..] {
            [l, h, p, c] => [l, h, p, c],
            _ => [0; 4],
        };
        let head_sources =
            sources.then(|| {
                let mut v = Vec::with_capacity(l_n * h_n * c_n);
                for block in ov.head_breakdown.data.chunks_exact((p_n * c_n).max(1)) {
                    v.extend((0..c_n).map(|c| {
                        (0..p_n).map(|p| f64::from(block[p * c_n + c])).sum::<f64>() as f32
                    }));
                }
                Array::new(vec![l_n, h_n, c_n], v)
            });
        Self {
            layout: ov.layout,
            target_value: ov.target_value,
            components: ov.components.clone(),
            attn_bias: ov.attn_bias.clone(),
            head_dla: ov.head_dla.clone(),
            head_bias: ov.head_bias.clone(),
            head_sources,
        }
    }
}

/// The vectorised overview at the last position (exported through `Array::to_json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Which component each index of the component axes is.
    pub layout: Layout,
    pub target_value: f32,
    /// Root children `[C]`.
    pub components: Array,
    /// `b_O[l]·r`: `[L]`.
    pub attn_bias: Array,
    /// `[L, H]` = Σ over (src_pos, src_comp) of `head_breakdown` + `head_bias`.
    pub head_dla: Array,
    /// `b_V[h] W_O[h]·r` (0 after fold_value_biases): `[L, H]`.
    pub head_bias: Array,
    /// `[L, H, P, C]`, zero for components not upstream of the layer.
    pub head_breakdown: Array,
    /// `[L, C]`, zero for components not upstream of `resid_mid`.
    pub mlp_breakdown: Array,
    /// `[L]`.
    pub mlp_bias: Array,
}

//! Exact recursive direct logit attribution (DESIGN.md §1).
//!
//! Every node is a linear readout: a component (or head) at a position with a readout
//! vector `r`; its value is `x · r`. Expanding a node is one batched tensor expression over
//! all of its children, on the model's device, with a single read-back.

use burn::tensor::{Tensor, TensorData};
use rdla_model::config::Norm;
use rdla_model::{Cache, Model, ModelError, act, to_vec};
use serde::Serialize;

use crate::path::{Comp, Layout, Path, PathSyntaxError, Step};

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
        path: String,
        index: usize,
        step: String,
        parent: String,
        valid: String,
    },
    #[error(
        "attribution needs LayerNorm folded into the weights (fold_ln); this model was loaded without it"
    )]
    NotFolded,
    #[error("target token id {id} is outside the vocabulary of {vocab}")]
    BadTarget { id: u32, vocab: usize },
}

pub type Result<T, E = AttribError> = std::result::Result<T, E>;

/// A dense host array with its shape (row-major).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Element at a full multi-index.
    pub fn at(&self, idx: &[usize]) -> f32 {
        let mut flat = 0;
        for (i, &n) in idx.iter().zip(&self.shape) {
            flat = flat * n + i;
        }
        self.data[flat]
    }

    /// Nested JSON arrays.
    pub fn to_json(&self) -> serde_json::Value {
        fn rec(shape: &[usize], data: &[f32]) -> serde_json::Value {
            if shape.len() <= 1 {
                return serde_json::Value::from(
                    data.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                );
            }
            let stride: usize = shape[1..].iter().product();
            serde_json::Value::Array(
                data.chunks(stride.max(1))
                    .take(shape[0])
                    .map(|c| rec(&shape[1..], c))
                    .collect(),
            )
        }
        rec(&self.shape, &self.data)
    }
}

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

/// One child of an expanded node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Child {
    pub step: String,
    pub value: f32,
    #[serde(skip)]
    pub parsed: Step,
}

/// An expanded node: its value, its children, and what does not add up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expansion {
    pub path: String,
    #[serde(flatten)]
    pub kind: NodeKind,
    /// Position the node sits at (destination position for heads).
    pub position: usize,
    pub value: f32,
    pub children: Vec<Child>,
    pub bias: f32,
    /// `value − Σ children − bias`. Float error for exact nodes; the approximation error in
    /// gradient MLP mode; the whole value for a leaf (nothing to expand).
    pub residual: f32,
    pub leaf: bool,
}

/// The vectorised overview at the last position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Which component each index of the component axes is.
    #[serde(skip)]
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

#[derive(Debug, Clone)]
enum Kind {
    Root,
    Comp(Comp),
    Head { layer: usize, head: usize },
    Bias(f32),
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    pos: usize,
    readout: Tensor<1>,
}

/// `m [n, d] · r [d] -> [n]`.
fn rows_dot(m: Tensor<2>, r: Tensor<1>) -> Tensor<1> {
    m.matmul(r.unsqueeze_dim::<2>(1)).squeeze_dim::<1>(1)
}

/// `C(v) = v − mean(v)` over the last axis (LayerNorm models).
fn center<const D: usize>(v: Tensor<D>) -> Tensor<D> {
    let mean = v.clone().mean_dim(D - 1);
    v - mean
}

/// The attribution engine for one forward pass and one target.
pub struct Engine<'a> {
    model: &'a Model,
    cache: &'a Cache,
    target: Target,
    mode: MlpMode,
    last: usize,
    layout: Layout,
    /// `C(u) / s_final[P-1]`.
    r_root: Tensor<1>,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("target", &self.target)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<'a> Engine<'a> {
    pub fn new(model: &'a Model, cache: &'a Cache, target: Target, mode: MlpMode) -> Result<Self> {
        if !model.processing.fold_ln {
            return Err(AttribError::NotFolded);
        }
        let vocab = model.config.d_vocab;
        for id in [Some(target.answer()), target.foil()].into_iter().flatten() {
            if id as usize >= vocab {
                return Err(AttribError::BadTarget { id, vocab });
            }
        }
        let last = cache.n_pos() - 1;
        let u = Self::unembed_direction(model, target);
        let s = cache.final_scale.clone().narrow(0, last, 1);
        let mut engine = Self {
            model,
            cache,
            target,
            mode,
            last,
            layout: Layout::of(&model.config),
            r_root: u.clone(),
        };
        engine.r_root = engine.c(u) / s;
        Ok(engine)
    }

    /// `C(v)`: centring over the last axis for LayerNorm models, the identity for RMSNorm.
    fn c<const D: usize>(&self, v: Tensor<D>) -> Tensor<D> {
        match self.model.config.norm {
            Norm::LayerNorm => center(v),
            Norm::RmsNorm => v,
        }
    }

    /// The component layout of this model.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.model.config.kv_group()
    }

    fn unembed_direction(model: &Model, target: Target) -> Tensor<1> {
        let col = |id: u32| {
            model
                .weights
                .w_u
                .clone()
                .narrow(1, id as usize, 1)
                .squeeze_dim::<1>(1)
        };
        match target {
            Target::Logit { answer } => col(answer),
            Target::Diff { answer, foil } => col(answer) - col(foil),
        }
    }

    pub fn target(&self) -> Target {
        self.target
    }

    pub fn mode(&self) -> MlpMode {
        self.mode
    }

    fn n_comps(&self) -> usize {
        self.layout.n()
    }

    /// Root value: `logit(answer) − b_U[answer]` (or the difference), from the real logits.
    pub fn root_value(&self) -> Result<f32> {
        let logits = to_vec(self.cache.last_logits.clone())?;
        let b_u = to_vec(self.model.weights.b_u.clone())?;
        let v = |id: u32| logits[id as usize] - b_u[id as usize];
        Ok(match self.target {
            Target::Logit { answer } => v(answer),
            Target::Diff { answer, foil } => v(answer) - v(foil),
        })
    }

    /// `[P, d]` rows of component `c`.
    fn comp_rows(&self, c: usize) -> Tensor<2> {
        self.cache
            .components
            .clone()
            .narrow(0, c, 1)
            .squeeze_dim::<2>(0)
    }

    /// Components `0..n` at position `pos`: `[n, d]`.
    fn comps_at(&self, n: usize, pos: usize) -> Tensor<2> {
        self.cache
            .components
            .clone()
            .narrow(0, 0, n)
            .narrow(1, pos, 1)
            .squeeze_dim::<2>(1)
    }

    /// The factor `g` on the linear path of the MLPs at `z` (`[L or 1, d_mlp]`): the frozen
    /// gate `act(z)/z` (or `act'(z)`), or for a gated MLP `act(z_gate)` itself.
    fn gate(&self, z: Tensor<2>) -> Tensor<2> {
        let a = self.model.config.act;
        match (self.model.config.gated_mlp, self.mode) {
            (true, _) => act::apply(a, z),
            (false, MlpMode::FrozenGate) => act::frozen_gate(a, z),
            (false, MlpMode::Gradient) => act::derivative(a, z),
        }
    }

    /// In gradient mode a gated MLP also passes gradient through its gate:
    /// `act'(z_gate) ⊙ z_linear` (`[L or 1, d_mlp]`) on the `W_gate` path; `None` otherwise.
    fn gate_path(
        &self,
        z: Tensor<2>,
        lin: impl FnOnce() -> Option<Tensor<2>>,
    ) -> Option<Tensor<2>> {
        if !(self.model.config.gated_mlp && self.mode == MlpMode::Gradient) {
            return None;
        }
        lin().map(|lin| act::derivative(self.model.config.act, z) * lin)
    }

    fn layer4(t: &Tensor<4>, l: usize) -> Tensor<3> {
        t.clone().narrow(0, l, 1).squeeze_dim::<3>(0)
    }

    fn layer3(t: &Tensor<3>, l: usize) -> Tensor<2> {
        t.clone().narrow(0, l, 1).squeeze_dim::<2>(0)
    }

    fn layer2(t: &Tensor<2>, l: usize) -> Tensor<1> {
        t.clone().narrow(0, l, 1).squeeze_dim::<1>(0)
    }

    /// `W_out[l] r` `[d_mlp]` and the gate at position `q` `[d_mlp]`.
    fn mlp_parts(&self, l: usize, q: usize, r: &Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let w = &self.model.weights;
        let wout_r = rows_dot(Self::layer3(&w.w_out, l), r.clone());
        let z = Self::layer3(&self.cache.mlp_pre, l).narrow(0, q, 1); // [1, d_mlp]
        let g = self.gate(z).squeeze_dim::<1>(0);
        (wout_r, g)
    }

    /// Readout of the inputs of MLP `l` at `q`: `C(W_in (g ⊙ W_out r)) / s2[l, q]` (plus
    /// `W_gate (act'(z_gate) ⊙ z_lin ⊙ W_out r)` for a gated MLP in gradient mode).
    fn mlp_readout(&self, l: usize, q: usize, r: &Tensor<1>) -> Tensor<1> {
        let w = &self.model.weights;
        let (wout_r, g) = self.mlp_parts(l, q, r);
        let w_in = Self::layer3(&w.w_in, l); // [d, d_mlp]
        let s2 = Self::layer2(&self.cache.ln2_scale, l).narrow(0, q, 1);
        let mut read = rows_dot(w_in, g * wout_r.clone());
        let z = Self::layer3(&self.cache.mlp_pre, l).narrow(0, q, 1);
        let lin = || {
            self.cache
                .mlp_pre_linear
                .as_ref()
                .map(|t| Self::layer3(t, l).narrow(0, q, 1))
        };
        if let (Some(gp), Some(w_gate)) = (self.gate_path(z, lin), &w.w_gate) {
            read = read + rows_dot(Self::layer3(w_gate, l), gp.squeeze_dim::<1>(0) * wout_r);
        }
        self.c(read) / s2
    }

    /// `W_V[l, kv(h)]` `[d, dh]`.
    fn w_v_of(&self, l: usize, h: usize) -> Tensor<2> {
        Self::layer4(&self.model.weights.w_v, l)
            .narrow(0, h / self.group(), 1)
            .squeeze_dim::<2>(0)
    }

    /// `C(W_V[l,kv(h)] W_O[l,h] r)` `[d]`.
    fn ov_readout(&self, l: usize, h: usize, r: &Tensor<1>) -> Tensor<1> {
        let w = &self.model.weights;
        let w_o = Self::layer4(&w.w_o, l).narrow(0, h, 1).squeeze_dim::<2>(0); // [dh, d]
        self.c(rows_dot(self.w_v_of(l, h), rows_dot(w_o, r.clone())))
    }

    /// `A[l, :, q, :]` as `[H, P]`.
    fn pattern_row(&self, l: usize, q: usize) -> Tensor<2> {
        Self::layer4(&self.cache.patterns, l)
            .narrow(1, q, 1)
            .squeeze_dim::<2>(1)
    }

    /// The attention pattern of head `(l, h)` at destination `q`, over all sources.
    pub fn head_pattern(&self, l: usize, h: usize, q: usize) -> Result<Vec<f32>> {
        Ok(to_vec(self.pattern_row(l, q).narrow(0, h, 1))?)
    }

    /// Which source positions head layer `l` can see from `q`.
    fn allowed(&self, l: usize, q: usize, p: usize) -> bool {
        self.model.config.attn_spans[l].allows(q, p)
    }

    /// Per-head outputs of layer `l` at `q` read out along `r`: `z W_O · r`, `[H]`, from the
    /// forward pass's `z = A·(LN1(x) W_V + b_V)` (query heads). Independent of the children
    /// (which come from the residual components through the pattern and the OV readout), so
    /// `value − Σ children − bias` really checks the decomposition.
    fn head_values(&self, l: usize, q: usize, r: &Tensor<1>) -> Tensor<1> {
        let w = &self.model.weights;
        let cfg = &self.model.config;
        let (h, dh) = (cfg.n_heads, cfg.d_head);
        let z = Self::layer3(&self.cache.z, l)
            .narrow(0, q, 1)
            .reshape([h, 1, dh]); // [H, 1, dh]
        let wo_r =
            Self::layer4(&w.w_o, l).matmul(r.clone().unsqueeze_dim::<2>(1).unsqueeze_dim::<3>(0)); // [H, dh, 1]
        z.matmul(wo_r).reshape([h])
    }

    fn node_value(&self, node: &Node) -> Tensor<1> {
        match &node.kind {
            Kind::Root => Tensor::from_data(
                TensorData::new(vec![self.root_value_or_zero()], [1]),
                &self.model.device,
            ),
            Kind::Comp(c) => rows_dot(
                self.comp_rows(self.layout.index(*c).unwrap_or(0))
                    .narrow(0, node.pos, 1),
                node.readout.clone(),
            ),
            Kind::Head { layer, head } => self
                .head_values(*layer, node.pos, &node.readout)
                .narrow(0, *head, 1),
            Kind::Bias(v) => Tensor::from_data(TensorData::new(vec![*v], [1]), &self.model.device),
        }
    }

    fn root_value_or_zero(&self) -> f32 {
        self.root_value().unwrap_or(0.0)
    }

    /// The remainder of a node, `[1]`.
    fn node_bias(&self, node: &Node) -> Tensor<1> {
        let w = &self.model.weights;
        let r = node.readout.clone();
        let zero = || Tensor::<1>::zeros([1], &self.model.device);
        match &node.kind {
            Kind::Root | Kind::Bias(_) | Kind::Comp(Comp::Embed | Comp::Pos) => zero(),
            Kind::Comp(Comp::Attn(l)) => {
                rows_dot(Self::layer2(&w.b_o, *l).unsqueeze_dim::<2>(0), r)
            }
            Kind::Comp(Comp::Mlp(l)) => {
                let (wout_r, g) = self.mlp_parts(*l, node.pos, &r);
                let b_in = Self::layer2(&w.b_in, *l);
                (g * b_in * wout_r).sum()
                    + rows_dot(Self::layer2(&w.b_out, *l).unsqueeze_dim::<2>(0), r)
            }
            Kind::Head { layer, head } => {
                let w_o = Self::layer4(&w.w_o, *layer)
                    .narrow(0, *head, 1)
                    .squeeze_dim::<2>(0);
                let b_v = Self::layer3(&w.b_v, *layer).narrow(0, *head / self.group(), 1); // [1, dh]
                let a_sum = self.pattern_row(*layer, node.pos).narrow(0, *head, 1).sum();
                rows_dot(b_v, rows_dot(w_o, r)) * a_sum
            }
        }
    }

    /// Child steps and their values `[n]` as one tensor expression.
    fn children(&self, node: &Node) -> (Vec<Step>, Option<Tensor<1>>) {
        let r = node.readout.clone();
        match &node.kind {
            Kind::Root => {
                let n = self.n_comps();
                let steps = (0..n).map(|i| Step::Comp(self.layout.comp(i))).collect();
                (steps, Some(rows_dot(self.comps_at(n, node.pos), r)))
            }
            Kind::Comp(Comp::Mlp(l)) => {
                let n = self.layout.mid(*l);
                let steps = (0..n).map(|i| Step::Comp(self.layout.comp(i))).collect();
                let r2 = self.mlp_readout(*l, node.pos, &r);
                (steps, Some(rows_dot(self.comps_at(n, node.pos), r2)))
            }
            Kind::Comp(Comp::Attn(l)) => {
                let steps = (0..self.model.config.n_heads).map(Step::Head).collect();
                (steps, Some(self.head_values(*l, node.pos, &r)))
            }
            Kind::Head { layer, head } => {
                let (l, q) = (*layer, node.pos);
                let n = self.layout.pre(l);
                let p_all = self.cache.n_pos();
                let w = self.ov_readout(l, *head, &r); // [d]
                let a = self.pattern_row(l, q).narrow(0, *head, 1); // [1, P]
                let s1 = Self::layer2(&self.cache.ln1_scale, l).unsqueeze_dim::<2>(0); // [1, P]
                let comps = self.cache.components.clone().narrow(0, 0, n); // [n, P, d]
                let d = self.model.config.d_model;
                let raw = rows_dot(comps.reshape([n * p_all, d]), w).reshape([n, p_all]);
                let vals = (raw * (a / s1)).swap_dims(0, 1); // [P, n]
                let positions: Vec<usize> = (0..=q).filter(|&p| self.allowed(l, q, p)).collect();
                let first = positions.first().copied().unwrap_or(0);
                let count = positions.len();
                let layout = self.layout;
                let steps = positions
                    .iter()
                    .flat_map(|&p| {
                        (0..n).map(move |c| Step::Source {
                            pos: p,
                            comp: layout.comp(c),
                        })
                    })
                    .collect();
                // allowed sources are contiguous: (q - window, q]
                let vals = vals.narrow(0, first, count).reshape([count * n]);
                (steps, Some(vals))
            }
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => (Vec::new(), None),
        }
    }

    fn describe(&self, node: &Node) -> String {
        match &node.kind {
            Kind::Root => "the root".into(),
            Kind::Comp(c) => format!("`{c}` at position {}", node.pos),
            Kind::Head { layer, head } => format!("head L{layer}.H{head} at position {}", node.pos),
            Kind::Bias(_) => "`bias`".into(),
        }
    }

    fn valid_here(&self, node: &Node) -> String {
        let comps = |n: usize| self.layout.describe_prefix(n);
        match &node.kind {
            Kind::Root => comps(self.n_comps()),
            Kind::Comp(Comp::Mlp(l)) => format!("{}, bias", comps(self.layout.mid(*l))),
            Kind::Comp(Comp::Attn(_)) => {
                format!("H0 … H{}, bias", self.model.config.n_heads - 1)
            }
            Kind::Head { layer, .. } => {
                let q = node.pos;
                let first = (0..=q).find(|&p| self.allowed(*layer, q, p)).unwrap_or(0);
                let n = self.layout.pre(*layer);
                format!(
                    "{{p}}:{{component}} with p in {first}..={q} and component in {}, or bias",
                    comps(n)
                )
            }
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_) => {
                "nothing (this node is a leaf)".into()
            }
        }
    }

    fn root(&self) -> Node {
        Node {
            kind: Kind::Root,
            pos: self.last,
            readout: self.r_root.clone(),
        }
    }

    fn step(&self, node: &Node, step: Step) -> Option<Node> {
        let r = &node.readout;
        let idx = |c: Comp| self.layout.index(c);
        match (&node.kind, step) {
            (Kind::Root, Step::Comp(c)) if idx(c).is_some() => Some(Node {
                kind: Kind::Comp(c),
                pos: node.pos,
                readout: r.clone(),
            }),
            (Kind::Comp(Comp::Mlp(l)), Step::Comp(c))
                if idx(c).is_some_and(|i| i < self.layout.mid(*l)) =>
            {
                Some(Node {
                    kind: Kind::Comp(c),
                    pos: node.pos,
                    readout: self.mlp_readout(*l, node.pos, r),
                })
            }
            (Kind::Comp(Comp::Attn(l)), Step::Head(h)) if h < self.model.config.n_heads => {
                Some(Node {
                    kind: Kind::Head { layer: *l, head: h },
                    pos: node.pos,
                    readout: r.clone(),
                })
            }
            (Kind::Head { layer, head }, Step::Source { pos, comp })
                if pos < self.cache.n_pos()
                    && self.allowed(*layer, node.pos, pos)
                    && idx(comp).is_some_and(|i| i < self.layout.pre(*layer)) =>
            {
                let (l, q) = (*layer, node.pos);
                let a = self
                    .pattern_row(l, q)
                    .narrow(0, *head, 1)
                    .narrow(1, pos, 1)
                    .reshape([1]);
                let s = Self::layer2(&self.cache.ln1_scale, l).narrow(0, pos, 1);
                Some(Node {
                    kind: Kind::Comp(comp),
                    pos,
                    readout: self.ov_readout(l, *head, r) * a / s,
                })
            }
            (
                Kind::Root | Kind::Comp(Comp::Attn(_) | Comp::Mlp(_)) | Kind::Head { .. },
                Step::Bias,
            ) => {
                let b = to_vec(self.node_bias(node)).ok()?.first().copied()?;
                Some(Node {
                    kind: Kind::Bias(b),
                    pos: node.pos,
                    readout: r.clone(),
                })
            }
            _ => None,
        }
    }

    fn resolve(&self, path: &Path) -> Result<Node> {
        let mut node = self.root();
        for (i, &s) in path.steps().iter().enumerate() {
            node = self
                .step(&node, s)
                .ok_or_else(|| AttribError::InvalidStep {
                    path: path.to_string(),
                    index: i + 1,
                    step: s.to_string(),
                    parent: self.describe(&node),
                    valid: self.valid_here(&node),
                })?;
        }
        Ok(node)
    }

    /// Check that `path` names a node (an error names the bad step and lists the choices).
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.resolve(path).map(|_| ())
    }

    /// Expand the node at `path`: its value, every child's value, its remainder and residual.
    pub fn expand(&self, path: &Path) -> Result<Expansion> {
        let node = self.resolve(path)?;
        let (steps, child_vals) = self.children(&node);
        let mut parts = vec![self.node_value(&node), self.node_bias(&node)];
        if let Some(c) = child_vals {
            parts.push(c);
        }
        // one read-back per expansion
        let all = to_vec(Tensor::cat(parts, 0))?;
        let (value, bias) = (all[0], all[1]);
        let children: Vec<Child> = steps
            .into_iter()
            .zip(all[2..].iter())
            .map(|(s, &v)| Child {
                step: s.to_string(),
                value: v,
                parsed: s,
            })
            .collect();
        let sum: f64 = children.iter().map(|c| f64::from(c.value)).sum();
        let leaf = matches!(
            node.kind,
            Kind::Comp(Comp::Embed | Comp::Pos) | Kind::Bias(_)
        );
        let kind = match node.kind {
            Kind::Root => NodeKind::Root,
            Kind::Comp(c) => NodeKind::Component { comp: CompLabel(c) },
            Kind::Head { layer, head } => NodeKind::Head { layer, head },
            Kind::Bias(_) => NodeKind::Bias,
        };
        Ok(Expansion {
            path: path.to_string(),
            kind,
            position: node.pos,
            value,
            bias,
            residual: (f64::from(value) - sum - f64::from(bias)) as f32,
            children,
            leaf,
        })
    }

    /// Parse and expand.
    pub fn expand_str(&self, path: &str) -> Result<Expansion> {
        self.expand(&Path::parse(path)?)
    }

    /// The whole overview at the last position, vectorised over layers and heads.
    pub fn overview(&self) -> Result<Overview> {
        let cfg = &self.model.config;
        let w = &self.model.weights;
        let (l_n, h_n, d, c_n, p_n) = (
            cfg.n_layers,
            cfg.n_heads,
            cfg.d_model,
            self.n_comps(),
            self.cache.n_pos(),
        );
        let (kv, dh) = (cfg.n_kv_heads, cfg.d_head);
        let g_n = h_n / kv;
        let q = self.last;
        let dev = &self.model.device;
        let r = self.r_root.clone();
        let r_col = r.clone().unsqueeze_dim::<2>(1); // [d, 1]

        // root children
        let comps_q = self.comps_at(c_n, q); // [C, d]
        let components = rows_dot(comps_q.clone(), r.clone()); // [C]
        let attn_bias = rows_dot(w.b_o.clone(), r.clone()); // [L]

        // heads: readout into each head's value input, C(W_V[kv(h)] W_O[h] r): [L, H, d];
        // query heads grouped by the key/value head they read: [L, KV, d, dh] x [L, KV, dh, g]
        let wo_r = w
            .w_o
            .clone()
            .matmul(r_col.clone().unsqueeze_dim::<3>(0).unsqueeze_dim::<4>(0)) // [L, H, dh, 1]
            .reshape([l_n, kv, g_n, dh])
            .swap_dims(2, 3); // [L, KV, dh, g]
        let ov = self.c(w
            .w_v
            .clone()
            .matmul(wo_r.clone()) // [L, KV, d, g]
            .swap_dims(2, 3)
            .reshape([l_n, h_n, d])); // [L, H, d]
        let head_bias = w
            .b_v
            .clone()
            .unsqueeze_dim::<4>(2) // [L, KV, 1, dh]
            .matmul(wo_r)
            .reshape([l_n, h_n]); // [L, H]
        // [C·P, d] x [d, L·H] -> [C, P, L, H] -> [L, H, P, C]
        let raw = self
            .cache
            .components
            .clone()
            .reshape([c_n * p_n, d])
            .matmul(ov.reshape([l_n * h_n, d]).transpose())
            .reshape([c_n, p_n, l_n, h_n])
            .permute([2, 3, 1, 0]);
        let a_q = self
            .cache
            .patterns
            .clone()
            .narrow(2, q, 1)
            .squeeze_dim::<3>(2); // [L, H, P]
        let s1 = self.cache.ln1_scale.clone().unsqueeze_dim::<3>(1); // [L, 1, P]
        let weight = (a_q.clone() / s1).unsqueeze_dim::<4>(3); // [L, H, P, 1]
        let layout = self.layout;
        let upstream: Vec<f32> = (0..l_n)
            .flat_map(|l| (0..c_n).map(move |c| if c < layout.pre(l) { 1.0 } else { 0.0 }))
            .collect();
        let up = Tensor::<2>::from_data(TensorData::new(upstream, [l_n, c_n]), dev)
            .unsqueeze_dim::<3>(1)
            .unsqueeze_dim::<4>(1); // [L, 1, 1, C]
        let head_breakdown = raw * weight * up;
        let a_sum = a_q.sum_dim(2).squeeze_dim::<2>(2); // [L, H]
        let head_bias = head_bias * a_sum;
        let head_dla = head_breakdown
            .clone()
            .sum_dim(3)
            .sum_dim(2)
            .reshape([l_n, h_n])
            + head_bias.clone();

        // MLPs at q: r' = C(W_in (g ⊙ W_out r)) / s2[:, q]
        let wout_r = w
            .w_out
            .clone()
            .matmul(r_col.unsqueeze_dim::<3>(0))
            .squeeze_dim::<2>(2); // [L, d_mlp]
        let z = self
            .cache
            .mlp_pre
            .clone()
            .narrow(1, q, 1)
            .squeeze_dim::<2>(1); // [L, d_mlp]
        let g = self.gate(z.clone());
        let gw = g.clone() * wout_r.clone();
        let s2 = self.cache.ln2_scale.clone().narrow(1, q, 1); // [L, 1]
        let mut read = w
            .w_in
            .clone()
            .matmul(gw.unsqueeze_dim::<3>(2))
            .squeeze_dim::<2>(2); // [L, d]
        let lin = || {
            self.cache
                .mlp_pre_linear
                .as_ref()
                .map(|t| t.clone().narrow(1, q, 1).squeeze_dim::<2>(1))
        };
        if let (Some(gp), Some(w_gate)) = (self.gate_path(z, lin), &w.w_gate) {
            read = read
                + w_gate
                    .clone()
                    .matmul((gp * wout_r.clone()).unsqueeze_dim::<3>(2))
                    .squeeze_dim::<2>(2);
        }
        let r_mlp = self.c(read) / s2; // [L, d]
        let mlp_up: Vec<f32> = (0..l_n)
            .flat_map(|l| (0..c_n).map(move |c| if c < layout.mid(l) { 1.0 } else { 0.0 }))
            .collect();
        let mlp_up = Tensor::<2>::from_data(TensorData::new(mlp_up, [l_n, c_n]), dev);
        let mlp_breakdown = r_mlp.matmul(comps_q.transpose()) * mlp_up; // [L, C]
        let mlp_bias = (g * w.b_in.clone() * wout_r).sum_dim(1).squeeze_dim::<1>(1)
            + rows_dot(w.b_out.clone(), r);

        // one read-back
        let sizes = [
            c_n,
            l_n,
            l_n * h_n,
            l_n * h_n,
            l_n * h_n * p_n * c_n,
            l_n * c_n,
            l_n,
        ];
        let flat = to_vec(Tensor::cat(
            vec![
                components,
                attn_bias,
                head_dla.reshape([l_n * h_n]),
                head_bias.reshape([l_n * h_n]),
                head_breakdown.reshape([l_n * h_n * p_n * c_n]),
                mlp_breakdown.reshape([l_n * c_n]),
                mlp_bias,
            ],
            0,
        ))?;
        let mut off = 0;
        let mut take = |i: usize, shape: Vec<usize>| {
            let a = Array::new(shape, flat[off..off + sizes[i]].to_vec());
            off += sizes[i];
            a
        };
        Ok(Overview {
            layout: self.layout,
            target_value: self.root_value()?,
            components: take(0, vec![c_n]),
            attn_bias: take(1, vec![l_n]),
            head_dla: take(2, vec![l_n, h_n]),
            head_bias: take(3, vec![l_n, h_n]),
            head_breakdown: take(4, vec![l_n, h_n, p_n, c_n]),
            mlp_breakdown: take(5, vec![l_n, c_n]),
            mlp_bias: take(6, vec![l_n]),
        })
    }
}

//! Exact recursive direct logit attribution (DESIGN.md §1.3).
//!
//! Every node is a linear readout: something at a position, read along a vector `r`; its
//! value is `x · r`. Expanding a node is one batched tensor expression over all of its
//! children, on the model's device, with a single read-back.
//!
//! The engine is split by role:
//! - [`types`]: what is attributed, errors, what an expansion and the overview return;
//! - [`readout`]: the readout formulas, each written once and batched over a range of layers
//!   (a single node is a batch of one layer);
//! - [`node`] and `nodes/`: the node kinds (one module each): their path steps, children,
//!   values and remainders;
//! - [`expand`]: walking a path and expanding the node it names;
//! - [`overview`]: the whole tree's first levels at the last position, in one pass.

mod batch;
mod expand;
mod node;
mod nodes;
mod overview;
mod readout;
pub mod types;

use burn::tensor::{Int, Tensor, TensorData};
use rdla_model::{Cache, Layout, Model};

pub use batch::{head_totals_batch, takes_whole};
pub(crate) use expand::Resolved;
pub use expand::{NEURONS_LISTED, TOKENS_LISTED};
pub use overview::run_with_overview;
pub use types::{
    Array, AttribError, Child, ChildLayout, CompLabel, Expansion, HeadTotals, MlpMode, NodeKind,
    Overview, Result, ScoreTable, Site, SiteAt, Target, TokenReadout, TokenValue, Units,
};

/// `m [n, d] · r [d] -> [n]`.
fn rows_dot(m: Tensor<2>, r: Tensor<1>) -> Tensor<1> {
    m.matmul(r.unsqueeze_dim::<2>(1)).squeeze_dim::<1>(1)
}

/// What the engine keeps between expansions: results that depend on a layer and a position
/// but not on the readout or the target (a pattern row, an MLP's pre-activations). A trace
/// reaches the same MLP or head at the same position along many paths; each is computed
/// once. Bounded: cleared when it holds [`MEMO_MAX`] entries of a kind.
///
/// A front-end keeps one beside a forward pass's [`Cache`] and hands it to every engine it
/// builds over that cache ([`Engine::with_memo`]), so drilling down, the views and the
/// trace share it for as long as the prompt stays; it must never serve another cache.
#[derive(Default)]
pub struct Memo {
    /// `A[l, :, q, :]`, `[1, H, P]`.
    pattern: std::collections::HashMap<(usize, usize), Tensor<3>>,
    /// The MLP's pre-activation (and linear path) at `(l, q)`, `[1, d_mlp]` each.
    mlp_pre: std::collections::HashMap<(usize, usize), (Tensor<2>, Option<Tensor<2>>)>,
}

/// Entries of each kind the memo keeps before it starts over.
const MEMO_MAX: usize = 512;

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
    memo: MemoRef<'a>,
}

impl Drop for Engine<'_> {
    /// A spilled cache's pages read by this engine leave the process's resident set.
    fn drop(&mut self) {
        self.cache.release_spilled();
    }
}

/// The engine's own memo, or one kept by the caller for the same cache.
enum MemoRef<'a> {
    Own(std::cell::RefCell<Memo>),
    Shared(&'a std::cell::RefCell<Memo>),
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("pattern", &self.pattern.len())
            .field("mlp_pre", &self.mlp_pre.len())
            .finish()
    }
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
        Self::owning_memo(model, cache, target, mode, true)
    }

    /// [`Engine::build`] with a memo of its own.
    fn owning_memo(
        model: &'a Model,
        cache: &'a Cache,
        target: Target,
        mode: MlpMode,
        scaled: bool,
    ) -> Result<Self> {
        let memo = MemoRef::Own(std::cell::RefCell::default());
        Self::build(model, cache, target, mode, memo, scaled)
    }

    /// An engine that memoises into `memo`, which the caller keeps for `cache` (and only
    /// for it) across engines: another target or MLP mode over the same forward pass reuses
    /// its pattern rows and MLP pre-activations.
    pub fn with_memo(
        model: &'a Model,
        cache: &'a Cache,
        target: Target,
        mode: MlpMode,
        memo: &'a std::cell::RefCell<Memo>,
    ) -> Result<Self> {
        Self::build(model, cache, target, mode, MemoRef::Shared(memo), true)
    }

    /// The engine; its root readout is `C(u) / s_final[P−1]`, or `C(u)` when not `scaled`.
    fn build(
        model: &'a Model,
        cache: &'a Cache,
        target: Target,
        mode: MlpMode,
        memo: MemoRef<'a>,
        scaled: bool,
    ) -> Result<Self> {
        if !model.processing.fold_ln {
            return Err(AttribError::NotFolded);
        }
        target.check(model.config.d_vocab)?;
        let last = cache.n_pos() - 1;
        let u = Self::unembed_direction(model, target)?;
        let s = cache.final_scale.clone().narrow(0, last, 1);
        let mut engine = Self {
            model,
            cache,
            target,
            mode,
            last,
            layout: cache.layout,
            r_root: u.clone(),
            memo,
        };
        engine.r_root = engine.c(u);
        if scaled {
            engine.r_root = engine.r_root.clone() / s;
        }
        Ok(engine)
    }

    /// An engine whose root readout is `C(u)`, before the final norm's scale: over a forward
    /// pass still under way (`run_with_overview`), whose final scale is not known yet.
    fn unscaled(model: &'a Model, cache: &'a Cache, target: Target, mode: MlpMode) -> Result<Self> {
        Self::owning_memo(model, cache, target, mode, false)
    }

    /// The memo this engine reads and fills.
    fn memo(&self) -> &std::cell::RefCell<Memo> {
        match &self.memo {
            MemoRef::Own(m) => m,
            MemoRef::Shared(m) => m,
        }
    }

    /// `C(v)`: centring over the last axis for LayerNorm models, the identity for RMSNorm
    /// (the model's own, [`Model::centred`]).
    fn c<const D: usize>(&self, v: Tensor<D>) -> Tensor<D> {
        self.model.centred(v)
    }

    /// The component layout of this model.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn n_pos(&self) -> usize {
        self.cache.n_pos()
    }

    fn device(&self) -> &burn::tensor::Device {
        &self.model.device
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.model.config.kv_group()
    }

    fn unembed_direction(model: &Model, target: Target) -> Result<Tensor<1>> {
        let ids = match target {
            Target::Logit { answer } => vec![answer],
            Target::Diff { answer, foil } => vec![answer, foil],
        };
        let cols = model.unembed_columns(&ids)?; // [d, n]
        let col = |i: usize| cols.clone().narrow(1, i, 1).squeeze_dim::<1>(1);
        Ok(match target {
            Target::Logit { .. } => col(0),
            Target::Diff { .. } => col(0) - col(1),
        })
    }

    /// Root value `logit(answer) − b_U[answer]` (or the difference) from the real logits,
    /// on the device: `[1]`.
    fn root_value_tensor(&self) -> Tensor<1> {
        self.target_of(&self.cache.last_logits)
    }

    /// The target value (`logit(answer) − b_U[answer]`, or the difference) of last-position
    /// logits `[V]` — the clean run's, or an ablated run's: `[1]`.
    pub fn target_of(&self, logits: &Tensor<1>) -> Tensor<1> {
        let at = |t: &Tensor<1>, id: u32| {
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(vec![i64::from(id)], [1]),
                self.device(),
            );
            t.clone().select(0, idx)
        };
        let v = |id: u32| at(logits, id) - at(&self.model.weights.b_u, id);
        match self.target {
            Target::Logit { answer } => v(answer),
            Target::Diff { answer, foil } => v(answer) - v(foil),
        }
    }

    /// Root value: `logit(answer) − b_U[answer]` (or the difference), from the real logits.
    pub fn root_value(&self) -> Result<f32> {
        let v = rdla_model::to_vec(self.root_value_tensor())?;
        v.first().copied().ok_or(AttribError::Empty)
    }

    /// The attention pattern of head `(l, h)` at destination `q`, over all sources.
    pub fn head_pattern(&self, l: usize, h: usize, q: usize) -> Result<Vec<f32>> {
        let row = self
            .pattern_rows(l..l + 1, q)?
            .narrow(1, h, 1)
            .reshape([self.n_pos()]);
        Ok(rdla_model::to_vec(row)?)
    }

    /// Which source positions attention layer `l` can see from `q`.
    fn allowed(&self, l: usize, q: usize, p: usize) -> bool {
        self.model.config.attn_spans[l].allows(q, p)
    }

    /// The contiguous range of positions layer `l` sees from `q`: `(first, count)`.
    fn visible(&self, l: usize, q: usize) -> (usize, usize) {
        let seen = self.model.config.attn_spans[l].visible(q);
        (seen.start, seen.len())
    }
}

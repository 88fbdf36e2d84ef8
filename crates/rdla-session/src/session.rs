//! One open model and its current computation: open → compute → expand → view. The CLI and the
//! GUI worker are thin adapters around this (they parse and print, or send and receive).

use std::path::PathBuf;
use std::time::Instant;

use rdla_attrib::trace::{Trace, TraceOptions};
use rdla_attrib::{Engine, Expansion, MlpMode, NodeKind, Path, Step, Target, Versus};
use rdla_model::model::ablate::{Ablation, AblationMode, Interventions};
use rdla_model::weights::ProgressFn;
use rdla_model::{Cache, Device, DeviceInfo, Model, ModelError, Processing};

use crate::error::{Result, SessionError};
use crate::heatmap::printable;
use crate::png::clip;
use crate::report::{Prediction, Timings, top_predictions};
use crate::view::{node_heatmap, root_heatmap, view_title};
use crate::{Heatmap, ModelInfo};

/// The model site a path's node is, for a causal check. Below a score the values are in
/// score units: the target's change in logit units is no check of them, so those are refused.
fn ablatable_site(engine: &Engine<'_>, p: &Path) -> Result<rdla_attrib::SiteAt> {
    if p.steps()
        .iter()
        .any(|s| matches!(s, rdla_attrib::Step::Score { .. }))
    {
        return Err(SessionError::AblateInScoreUnits { path: p.clone() });
    }
    Ok(engine.ablation_site(p)?)
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// What a census keeps of one prompt ([`totals_of`]).
#[derive(Debug, Clone)]
pub struct Totals {
    pub tokens: Tokens,
    pub target: Target,
    /// The answer's probability.
    pub prob: f32,
    pub totals: rdla_attrib::HeadTotals,
    /// The prompt's share of its forward pass, and its attribution.
    pub forward_ms: f64,
    pub attribution_ms: f64,
}

/// Which model to open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelSource {
    /// The embedded default model.
    Default,
    /// A Hugging Face folder (or a file inside one).
    Path(PathBuf),
}

impl ModelSource {
    /// `--model` / a typed path: `default` selects the embedded model.
    pub fn parse(spec: &str) -> Self {
        if spec == rdla_model::default_model::SPEC {
            Self::Default
        } else {
            Self::Path(PathBuf::from(spec))
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str(rdla_model::default_model::NAME),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What to attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub prompt: String,
    /// The answer token's text, exactly as the tokenizer spells it.
    pub answer: String,
    /// The answer as a token id, when it was picked from a list (the top-10 table): that
    /// token exactly, whatever its text would encode to (SentencePiece vocabularies hold
    /// "Mary" and "▁Mary"); `answer` is then only its label.
    pub answer_id: Option<u32>,
    /// A foil token for a logit difference (`None` or empty: a plain logit).
    pub foil: Option<String>,
    pub bos: bool,
    pub mlp_mode: MlpMode,
}

/// The tokens of a prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub strs: Vec<String>,
    pub has_bos: bool,
}

/// The result of a computation: what every view of it needs, cheap to clone and send.
#[derive(Debug, Clone)]
pub struct Computed {
    pub request: Request,
    pub tokens: Tokens,
    pub top: Vec<Prediction>,
    pub target: Target,
    /// `logit " the"` or `logit " the" − " a"`.
    pub target_label: String,
    /// `b_U[answer]` (minus `b_U[foil]`): excluded from the root by definition.
    pub unembed_bias: f32,
    /// Where the model soft-caps its final logits (Gemma 2): what it outputs for the target.
    pub softcap: Option<SoftCapped>,
    pub overview: rdla_attrib::Overview,
    /// The root's expansion.
    pub root: Expansion,
    pub forward_ms: f64,
    pub attribution_ms: f64,
}

/// The target as the model outputs it under a final logit soft-cap `cap · tanh(l / cap)`. The
/// tree explains the pre-cap logit (`target_value`, linear in the residual stream); these are
/// shown beside it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SoftCapped {
    pub cap: f32,
    /// The capped logit of the answer (minus the capped logit of the foil).
    pub target_capped: f32,
    /// The answer's probability under the capped logits.
    pub answer_prob: f32,
}

impl SoftCapped {
    /// From the pre-cap logits at the last position; `None` without a final soft-cap.
    fn of(cfg: &rdla_model::ModelConfig, logits: &[f32], target: Target) -> Option<Self> {
        let cap = cfg.final_softcap?;
        let out: Vec<f64> = logits
            .iter()
            .map(|&l| f64::from(cfg.output_logit(l)))
            .collect();
        // NaN-aware (`f64::max` would skip a NaN and give a finite, wrong probability)
        let max = out.iter().copied().fold(f64::NEG_INFINITY, |m, x| {
            if m.is_nan() || x.is_nan() {
                f64::NAN
            } else {
                m.max(x)
            }
        });
        let z: f64 = out.iter().map(|l| (l - max).exp()).sum();
        let get = |id: u32| out.get(id as usize).copied().unwrap_or(f64::NAN);
        let a = get(target.answer());
        Some(Self {
            cap,
            target_capped: (a - target.foil().map_or(0.0, get)) as f32,
            answer_prob: ((a - max).exp() / z) as f32,
        })
    }
}

/// A computation that could not finish: the error, and the tokens and top predictions when the
/// prompt itself was fine (so the user can pick an answer from them).
#[derive(Debug)]
pub struct ComputeFailure {
    pub error: SessionError,
    pub tokens: Option<Tokens>,
    pub top: Vec<Prediction>,
    /// The previous computation is still the current one (the prompt was unchanged and only
    /// the target failed): its views stay valid.
    pub kept: bool,
}

impl ComputeFailure {
    /// A failure that dropped the current computation.
    fn new(error: SessionError, tokens: Option<Tokens>, top: Vec<Prediction>) -> Box<Self> {
        Box::new(Self {
            error,
            tokens,
            top,
            kept: false,
        })
    }
}

/// One node, ready to show: its expansion, its heatmap and what the view adds to it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub path: Path,
    pub expansion: Expansion,
    pub heatmap: Heatmap,
    /// At a score node: its head's attention pattern from the query, over the keys the head
    /// can see (the key picker of the QK view).
    pub attention: Option<AttentionRow>,
    /// While a contrast prompt is set: the node on both prompts (`expansion` and `heatmap`
    /// are then the deltas).
    pub contrast: Option<Box<crate::NodeContrast>>,
    /// Milliseconds the expansion took.
    pub ms: f64,
}

/// What a computation is doing ([`Session::compute_with_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The forward pass: `layer` of `layers` done.
    Forward { layer: usize, layers: usize },
    /// The attribution: the overview and the root's expansion.
    Attribution,
}

/// The causal check of some nodes: the target's real change when their sites are ablated,
/// beside the nodes' attributed values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AblationReport {
    pub paths: Vec<Path>,
    pub mode: AblationMode,
    pub final_scale_frozen: bool,
    /// Each node's value (its contribution along its path).
    pub node_values: Vec<f32>,
    pub node_sum: f32,
    /// The target value in the clean run and with the sites ablated.
    pub clean: f32,
    pub ablated: f32,
    /// `clean − ablated`: what the sites really contributed. With zero ablation this equals
    /// `node_sum` where the frozen-nonlinearity story is exact.
    pub change: f32,
}

/// What [`Session::check_saved`] recomputed, and the first value that differs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedCheck {
    /// Saved nodes recomputed.
    pub nodes: usize,
    /// Ablated runs of the saved verification rerun (its sites alone, then together).
    pub ablations: usize,
    /// The first value that differs: what it is, its saved value, its value now.
    pub mismatch: Option<(String, f32, f32)>,
}

/// One query row of a head's attention pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionRow {
    pub layer: usize,
    pub head: usize,
    /// The query (destination) position.
    pub query: usize,
    /// The first key the head can see from the query (a local window starts later than 0).
    pub first: usize,
    /// `A[layer, head, query, p]` for `p` in `0..=query` (0 outside the window).
    pub values: Vec<f32>,
}

impl NodeView {
    /// A file name for exports of this view: `rdla-{model}-{path}.{ext}`, safe on every
    /// file system.
    pub fn file_name(&self, model: &str, ext: &str) -> String {
        let path = if self.path.is_root() {
            "root".to_string()
        } else {
            self.path.to_string()
        };
        let clean: String = format!("rdla-{model}-{path}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.{ext}", clip(&clean, 120).replace('…', "_"))
    }
}

/// The current computation: its cache and what was derived from it.
struct Current {
    cache: Cache,
    computed: Computed,
    /// What every engine over `cache` memoises (pattern rows, MLP pre-activations), kept for
    /// as long as this prompt's computation: each view, ablation and trace builds an engine,
    /// and they no longer start from nothing.
    memo: std::cell::RefCell<rdla_attrib::Memo>,
    /// The prompt every view is compared with, when one is set ([`Session::set_contrast`]).
    contrast: Option<ContrastRun>,
}

/// The contrast prompt's own computation, for the views' deltas.
struct ContrastRun {
    prompt: String,
    tokens: Tokens,
    cache: Cache,
    overview: rdla_attrib::Overview,
    root: Expansion,
    memo: std::cell::RefCell<rdla_attrib::Memo>,
}

/// The current computation set aside while a census computes its prompts in turn
/// ([`Session::set_aside`]); [`Session::put_back`] makes it current again.
pub struct SetAside(Option<Current>);

/// An open model and its current computation.
pub struct Session {
    model: Model,
    pub source: ModelSource,
    pub device: DeviceInfo,
    pub load_ms: f64,
    current: Option<Current>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("source", &self.source)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Open `source` on `device`; `progress` sees the bytes read and can cancel.
    pub fn open(
        source: ModelSource,
        device: &Device,
        info: DeviceInfo,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Self> {
        let t = Instant::now();
        let model = match &source {
            ModelSource::Default => Model::load_default(device, Processing::default(), progress),
            ModelSource::Path(p) => Model::load(p, device, Processing::default(), progress),
        }?;
        Ok(Self {
            model,
            source,
            device: info,
            load_ms: ms(t),
            current: None,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// What the UI shows about the model.
    pub fn info(&self) -> ModelInfo {
        ModelInfo::of(&self.model, &self.source, self.load_ms)
    }

    /// Tokenise the prompt (BOS as asked) and check it fits the model.
    /// A prompt's tokens as the computation would use them.
    pub fn tokenize(&self, prompt: &str, bos: bool) -> std::result::Result<Tokens, ModelError> {
        tokens_of(&self.model, prompt, bos)
    }

    /// The target a request names: the answer (and foil) must each be one token, and differ.
    fn target(&self, req: &Request) -> Result<Target> {
        target_of(&self.model, req)
    }

    /// Set the current computation aside (nothing is current until [`Session::put_back`]):
    /// a census computes each of its prompts as the current computation, and the explorer's
    /// own comes back after it, its cache and views intact.
    pub fn set_aside(&mut self) -> SetAside {
        SetAside(self.current.take())
    }

    /// Make a computation set aside current again (whatever was computed meanwhile is
    /// dropped).
    pub fn put_back(&mut self, aside: SetAside) {
        self.current = aside.0;
    }

    /// Run the forward pass and the overview for `req`; the result becomes the current
    /// computation (the previous one is dropped).
    pub fn compute(
        &mut self,
        req: &Request,
    ) -> std::result::Result<&Computed, Box<ComputeFailure>> {
        self.compute_with_progress(req, &mut |_| true)
    }

    /// [`Session::compute`], telling `progress` each [`Stage`] as it starts (the forward pass
    /// after every layer); when it returns `false` the computation stops there with
    /// `ModelError::ComputeCancelled`, and the session holds no computation.
    pub fn compute_with_progress(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(Stage) -> bool,
    ) -> std::result::Result<&Computed, Box<ComputeFailure>> {
        let fail = ComputeFailure::new;
        let tokens = self.tokenize(&req.prompt, req.bos).map_err(|e| {
            self.current = None;
            fail(e.into(), None, Vec::new())
        })?;
        // a prompt that fits only with the layers streamed switches the model to streaming
        if let Err(e) = self.model.plan_prompt_or_stream(&tokens.ids) {
            self.current = None;
            return Err(fail(e.into(), Some(tokens), Vec::new()));
        }
        // Same prompt (only the target edited): the answer and foil are checked before the
        // forward pass, so a bad one fails at once (it took a whole forward pass, 15–25 s on
        // a long prompt) and the previous computation, its top predictions included, stays.
        let checked = match self
            .current
            .as_ref()
            .filter(|c| c.computed.tokens == tokens)
        {
            Some(cur) => match self.target(req) {
                Ok(target) => Some(target),
                Err(e) => {
                    let top = cur.computed.top.clone();
                    let mut f = fail(e, Some(tokens), top);
                    f.kept = true;
                    return Err(f);
                }
            },
            None => None,
        };
        self.current = None;
        let t = Instant::now();
        // A model whose layers stream computes its overview during the forward pass, while
        // each layer is held (its target is needed first): every layer is read once, not twice.
        // (A bad target takes the plain path: its predictions are computed, then it fails.)
        let mut fused = None;
        let early = if self.model.streams_layers() {
            checked.or_else(|| self.target(req).ok())
        } else {
            None
        };
        let cache = if let Some(target) = early {
            let (cache, overview) = rdla_attrib::run_with_overview(
                &self.model,
                &tokens.ids,
                target,
                req.mlp_mode,
                &mut |layer, layers| progress(Stage::Forward { layer, layers }),
            )
            .map_err(|e| {
                let e = match e {
                    rdla_attrib::AttribError::Model(m) => SessionError::Model(m),
                    other => other.into(),
                };
                fail(e, Some(tokens.clone()), Vec::new())
            })?;
            fused = Some(overview);
            cache
        } else {
            self.model
                .run_with_progress(&tokens.ids, &mut |layer, layers| {
                    progress(Stage::Forward { layer, layers })
                })
                .map_err(|e| fail(e.into(), Some(tokens.clone()), Vec::new()))?
        };
        // make the timing honest on asynchronous devices
        let top = top_predictions(&self.model, &cache, 10)
            .map_err(|e| fail(e, Some(tokens.clone()), Vec::new()))?;
        let forward_ms = ms(t);
        // checked above with the same prompt, or now
        let target = match checked {
            Some(target) => target,
            None => self
                .target(req)
                .map_err(|e| fail(e, Some(tokens.clone()), top.clone()))?,
        };
        if !progress(Stage::Attribution) {
            let cancelled = rdla_model::ModelError::ComputeCancelled.into();
            return Err(fail(cancelled, Some(tokens), top));
        }
        self.attribute_cache(req, tokens, top, target, cache, fused, forward_ms)
    }

    /// The attribution of a forward pass's `cache` for `req` (its overview and root view;
    /// `fused`: the overview already computed during the forward pass), made the current
    /// computation.
    #[allow(clippy::too_many_arguments)]
    fn attribute_cache(
        &mut self,
        req: &Request,
        tokens: Tokens,
        top: Vec<Prediction>,
        target: Target,
        cache: Cache,
        fused: Option<rdla_attrib::Overview>,
        forward_ms: f64,
    ) -> std::result::Result<&Computed, Box<ComputeFailure>> {
        let fail = ComputeFailure::new;
        let t = Instant::now();
        let memo = std::cell::RefCell::default();
        let derived = (|| -> Result<_> {
            let engine = Engine::with_memo(&self.model, &cache, target, req.mlp_mode, &memo)?;
            let overview = match fused {
                Some(overview) => overview,
                None => engine.overview()?,
            };
            let root = engine.expand(&Path::root())?;
            let b_u = rdla_model::to_vec(self.model.weights.b_u.clone())?;
            let get = |id: u32| b_u.get(id as usize).copied().unwrap_or(0.0);
            let unembed_bias = get(target.answer()) - target.foil().map_or(0.0, get);
            let softcap = match self.model.config.final_softcap {
                Some(_) => SoftCapped::of(
                    &self.model.config,
                    &rdla_model::to_vec(cache.last_logits.clone())?,
                    target,
                ),
                None => None,
            };
            Ok((overview, root, unembed_bias, softcap))
        })();
        let (overview, root, unembed_bias, softcap) =
            derived.map_err(|e| fail(e, Some(tokens.clone()), top.clone()))?;
        let computed = Computed {
            request: req.clone(),
            target_label: self.target_label(target),
            tokens,
            top,
            target,
            unembed_bias,
            softcap,
            overview,
            root,
            forward_ms,
            attribution_ms: ms(t),
        };
        Ok(&self
            .current
            .insert(Current {
                cache,
                computed,
                memo,
                contrast: None,
            })
            .computed)
    }

    /// What [`totals_of`] gives, for the current computation, from the overview it already
    /// holds (no layer is read again: a model whose layers stream would read each twice).
    pub fn totals(&self, sources: bool) -> Result<Totals> {
        let c = &self.current()?.computed;
        Ok(Totals {
            tokens: c.tokens.clone(),
            target: c.target,
            prob: self.answer_prob()?,
            totals: rdla_attrib::HeadTotals::of(&c.overview, sources),
            forward_ms: c.forward_ms,
            attribution_ms: c.attribution_ms,
        })
    }

    /// `logit " the"`, or `logit " the" − " a"`.
    fn target_label(&self, target: Target) -> String {
        let tok = &self.model.tokenizer;
        match target {
            Target::Logit { answer } => format!("logit {:?}", tok.token_str(answer)),
            Target::Diff { answer, foil } => format!(
                "logit {:?} − {:?}",
                tok.token_str(answer),
                tok.token_str(foil)
            ),
        }
    }

    /// The current computation.
    pub fn computed(&self) -> Option<&Computed> {
        self.current.as_ref().map(|c| &c.computed)
    }

    fn current(&self) -> Result<&Current> {
        self.current.as_ref().ok_or(SessionError::NotComputed)
    }

    /// An engine over the current computation.
    fn engine(&self) -> Result<Engine<'_>> {
        let cur = self.current()?;
        Ok(Engine::with_memo(
            &self.model,
            &cur.cache,
            cur.computed.target,
            cur.computed.request.mlp_mode,
            &cur.memo,
        )?)
    }

    /// A forward pass over `ids` and its overview for `target` (a streaming model computes
    /// the overview during the forward pass, each layer read once), beside the current
    /// computation's cache, which stays held: its estimate and this one's are checked against
    /// the budget together first.
    fn run_and_overview(
        &self,
        ids: &[u32],
        target: Target,
        mode: MlpMode,
    ) -> Result<(Cache, rdla_attrib::Overview)> {
        let beside = self.current()?.computed.tokens.ids.len();
        let cfg = &self.model.config;
        rdla_model::memory::check_budget(
            || {
                format!(
                    "a {}-token contrast prompt beside this {beside}-token prompt",
                    ids.len()
                )
            },
            rdla_model::memory::prompt_bytes(cfg, ids.len()),
            self.model.held_bytes() + rdla_model::memory::prompt_bytes(cfg, beside),
            !self.model.on_cpu(),
        )?;
        if self.model.streams_layers() {
            return Ok(rdla_attrib::run_with_overview(
                &self.model,
                ids,
                target,
                mode,
                &mut |_, _| true,
            )?);
        }
        let cache = self.model.run(ids)?;
        let overview = Engine::new(&self.model, &cache, target, mode)?.overview()?;
        Ok((cache, overview))
    }

    /// The current target on a second `prompt` (DESIGN.md §3, "Contrast"): its root
    /// quantities, this prompt's minus its, and — below the root, where both prompts must have
    /// the same number of tokens — `path`'s node on both prompts.
    pub fn contrast(&self, prompt: &str, path: &Path) -> Result<crate::Contrast> {
        let cur = self.current()?;
        let c = &cur.computed;
        let tokens = self.tokenize(prompt, c.request.bos)?;
        if !path.is_root() {
            self.validate(path)?;
            if tokens.ids.len() != c.tokens.ids.len() {
                return Err(crate::contrast::length_mismatch(
                    path,
                    c.tokens.ids.len(),
                    tokens.ids.len(),
                ));
            }
        }
        let (cache, overview) = self.run_and_overview(&tokens.ids, c.target, c.request.mlp_mode)?;
        let node = if path.is_root() {
            None
        } else {
            let theirs =
                Engine::new(&self.model, &cache, c.target, c.request.mlp_mode)?.expand(path)?;
            let ours = self.engine()?.expand(path)?;
            Some(crate::NodeContrast::of(&ours, &theirs)?)
        };
        Ok(crate::Contrast {
            prompt: prompt.to_string(),
            tokens,
            delta: crate::contrast::overview_delta(&c.overview, &overview)?,
            overview,
            node,
        })
    }

    /// Compare every view with `prompt` (the same target): the heatmaps become this prompt's
    /// values minus its, each cell keeping both values; below the root both prompts need the
    /// same number of tokens. `None` ends the comparison. A new computation ends it too.
    pub fn set_contrast(&mut self, prompt: Option<&str>) -> Result<()> {
        let Some(prompt) = prompt else {
            if let Some(cur) = self.current.as_mut() {
                cur.contrast = None;
            }
            return Ok(());
        };
        let run = {
            let cur = self.current()?;
            let c = &cur.computed;
            let tokens = self.tokenize(prompt, c.request.bos)?;
            let (cache, overview) =
                self.run_and_overview(&tokens.ids, c.target, c.request.mlp_mode)?;
            let root = Engine::new(&self.model, &cache, c.target, c.request.mlp_mode)?
                .expand(&Path::root())?;
            ContrastRun {
                prompt: prompt.to_string(),
                tokens,
                cache,
                overview,
                root,
                memo: std::cell::RefCell::default(),
            }
        };
        if let Some(cur) = self.current.as_mut() {
            cur.contrast = Some(run);
        }
        Ok(())
    }

    /// Check a request without computing it: its prompt tokenizes within the context and its
    /// answer and foil are one token each (what a census checks of every record first).
    pub fn check_request(&self, req: &Request) -> Result<()> {
        self.tokenize(&req.prompt, req.bos)?;
        self.target(req).map(|_| ())
    }

    /// The answer's probability at the last position of the current computation (the same
    /// softmax as the top predictions; a non-finite logit is an error).
    pub fn answer_prob(&self) -> Result<f32> {
        let cur = self.current()?;
        crate::report::token_prob(&self.model, &cur.cache, cur.computed.target.answer())
    }

    /// The prompt the views are compared with, and its tokens.
    pub fn contrast_prompt(&self) -> Option<(&str, &Tokens)> {
        let k = self.current.as_ref()?.contrast.as_ref()?;
        Some((k.prompt.as_str(), &k.tokens))
    }

    /// [`Session::view`] while a contrast prompt is set: the deltas; beside it, this prompt's
    /// own expansion of the node.
    fn contrast_view(
        &self,
        path: &Path,
        cur: &Current,
        k: &ContrastRun,
    ) -> Result<(NodeView, Expansion)> {
        let t = Instant::now();
        let c = &cur.computed;
        let title = format!(
            "{} · this prompt − {:?}",
            view_title(&self.model.name, path, &c.target_label),
            clip(&printable(&k.prompt), 40)
        );
        let (node, mut heatmap, ours, theirs, own) = if path.is_root() {
            let delta = crate::contrast::overview_delta(&c.overview, &k.overview)?;
            (
                crate::NodeContrast::of(&c.root, &k.root)?,
                root_heatmap(&delta, &title),
                root_heatmap(&c.overview, &title),
                root_heatmap(&k.overview, &title),
                c.root.clone(),
            )
        } else {
            self.validate(path)?;
            if c.tokens.ids.len() != k.tokens.ids.len() {
                return Err(crate::contrast::length_mismatch(
                    path,
                    c.tokens.ids.len(),
                    k.tokens.ids.len(),
                ));
            }
            let a = self.engine()?.expand(path)?;
            let b =
                Engine::with_memo(&self.model, &k.cache, c.target, c.request.mlp_mode, &k.memo)?
                    .expand(path)?;
            let node = crate::NodeContrast::of(&a, &b)?;
            let strs = &c.tokens.strs;
            let layout = cur.cache.layout;
            (
                node.clone(),
                node_heatmap(&node.delta, path, strs, layout, &title),
                node_heatmap(&a, path, strs, layout, &title),
                node_heatmap(&b, path, &k.tokens.strs, layout, &title),
                a,
            )
        };
        heatmap.contrast = crate::contrast::cell_pairs(&ours, &theirs);
        heatmap.subtitle = format!(
            "Δ {:+.4} = {:.4} (this prompt) − {:.4} (contrast) · {}",
            node.delta.value, node.value, node.contrast_value, heatmap.subtitle
        );
        let view = NodeView {
            path: path.clone(),
            expansion: node.delta.clone(),
            heatmap,
            attention: None,
            contrast: Some(Box::new(node)),
            ms: ms(t),
        };
        Ok((view, own))
    }

    /// Check that `path` names a node.
    pub fn validate(&self, path: &Path) -> Result<()> {
        Ok(self.engine()?.validate(path)?)
    }

    /// The view of the node at `path`: its expansion and heatmap (the root: the layers ×
    /// heads overview), with a head's attention pattern as the strip above its columns.
    pub fn view(&self, path: &Path) -> Result<NodeView> {
        let t = Instant::now();
        let cur = self.current()?;
        if let Some(k) = &cur.contrast {
            return self.contrast_view(path, cur, k).map(|(v, _)| v);
        }
        let c = &cur.computed;
        let title = view_title(&self.model.name, path, &c.target_label);
        let mut attention = None;
        let (expansion, mut heatmap) = if path.is_root() {
            (c.root.clone(), root_heatmap(&c.overview, &title))
        } else {
            let engine = self.engine()?;
            let ex = engine.expand(path)?;
            let mut hm = node_heatmap(&ex, path, &c.tokens.strs, cur.cache.layout, &title);
            if let NodeKind::Head { layer, head } = ex.kind {
                let pattern = engine.head_pattern(layer, head, ex.position)?;
                let n = hm.n_cols();
                hm.strip = Some(("attention".into(), pattern.into_iter().take(n).collect()));
                hm.strip_targets = (0..n)
                    .map(|key| {
                        path.child(Step::Score {
                            key,
                            versus: Versus::Nothing,
                        })
                    })
                    .collect();
            }
            if let NodeKind::Score { layer, head } = ex.kind {
                let q = ex.position;
                let mut values = engine.head_pattern(layer, head, q)?;
                values.truncate(q + 1);
                let span = self.model.config.attn_spans[layer];
                attention = Some(AttentionRow {
                    layer,
                    head,
                    query: q,
                    first: span.visible(q).start,
                    values,
                });
            }
            (ex, hm)
        };
        heatmap.subtitle = format!(
            "{} · {}",
            clip(&printable(&c.request.prompt), 80),
            heatmap.subtitle
        );
        Ok(NodeView {
            path: path.clone(),
            expansion,
            heatmap,
            attention,
            contrast: None,
            ms: ms(t),
        })
    }

    /// The JSON report (DESIGN.md §3.1) of the current computation, with `node` expanded when
    /// given.
    pub fn report(
        &self,
        node: Option<&Expansion>,
        load_ms: f64,
        full_breakdown: bool,
    ) -> Result<serde_json::Value> {
        let cur = self.current()?;
        let c = &cur.computed;
        Ok(crate::report::report_json(
            &self.model,
            c,
            node,
            Timings {
                load: load_ms,
                forward: c.forward_ms,
                attribution: c.attribution_ms,
            },
            &self.device.to_string(),
            full_breakdown,
        )?)
    }

    /// The CSV of a node's children, or of the overview tables at the root.
    pub fn csv(&self, node: Option<&Expansion>) -> Result<String> {
        Ok(crate::csv::export(&self.current()?.computed, node))
    }

    /// The causal check: ablate the sites of `paths` together in the real forward pass
    /// (nothing frozen; the final norm's scale held at the clean run's if `freeze_final`) and
    /// compare the target's real change with the nodes' values.
    pub fn ablate(
        &self,
        paths: &[Path],
        mode: AblationMode,
        freeze_final: bool,
    ) -> Result<AblationReport> {
        self.ablate_many(&[paths.to_vec()], mode, freeze_final, &mut |_, _| true)?
            .pop()
            .ok_or_else(|| ModelError::Device("an ablated run gave no result".into()).into())
    }

    /// [`Session::ablate`] of each set of paths, every set its own ablated run; runs that
    /// start at nearby layers share a forward pass ([`rdla_model::Model::run_ablated_many`]).
    /// `progress(runs done, runs)` after each pass; returning `false` stops with
    /// [`SessionError::VerifyStopped`].
    pub fn ablate_many(
        &self,
        sets: &[Vec<Path>],
        mode: AblationMode,
        freeze_final: bool,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<AblationReport>> {
        let cur = self.current()?;
        let engine = self.engine()?;
        // activation patching reads each site's value in the contrast prompt's run
        let other = match (mode, &cur.contrast) {
            (AblationMode::Patch, None) => return Err(SessionError::PatchWithoutContrast),
            (AblationMode::Patch, Some(k)) => {
                if k.tokens.ids.len() != cur.computed.tokens.ids.len() {
                    return Err(SessionError::PatchLengths {
                        this: cur.computed.tokens.ids.len(),
                        other: k.tokens.ids.len(),
                    });
                }
                self.contrast_engine()?
            }
            _ => None,
        };
        let last = cur.cache.n_pos() - 1;
        let final_scale = if freeze_final {
            rdla_model::to_vec(cur.cache.final_scale.clone())?
                .get(last)
                .copied()
        } else {
            None
        };
        let mut runs = Vec::with_capacity(sets.len());
        let mut values = Vec::with_capacity(sets.len());
        for paths in sets {
            let mut ablations = Vec::with_capacity(paths.len());
            let mut vals = Vec::with_capacity(paths.len());
            for p in paths {
                let at = ablatable_site(&engine, p)?;
                ablations.push(Ablation {
                    site: at.site,
                    pos: at.pos,
                    mode,
                    patch: other.as_ref().map(|e| e.site_value(at)).transpose()?,
                });
                vals.push(engine.value(p)?);
            }
            runs.push(Interventions {
                ablations,
                final_scale,
            });
            values.push(vals);
        }
        // the layers below each run's earliest ablated one are the clean run's
        let mut stopped = false;
        let logits = self
            .model
            .run_ablated_many(&cur.cache, &runs, &mut |done, total| {
                stopped = !progress(done, total);
                !stopped
            })
            .map_err(|e| {
                if stopped {
                    SessionError::VerifyStopped
                } else {
                    e.into()
                }
            })?;
        let read = |t: rdla_model::Tensor<1>| -> Result<f32> {
            rdla_model::to_vec(t)?
                .first()
                .copied()
                .ok_or(SessionError::NonFinite {
                    what: "the ablated target".into(),
                })
        };
        let clean = read(engine.target_of(&cur.cache.last_logits))?;
        sets.iter()
            .zip(values)
            .zip(logits)
            .map(|((paths, node_values), l)| {
                let ablated = read(engine.target_of(&l))?;
                Ok(AblationReport {
                    paths: paths.clone(),
                    mode,
                    final_scale_frozen: freeze_final,
                    node_sum: node_values.iter().sum(),
                    node_values,
                    clean,
                    ablated,
                    change: clean - ablated,
                })
            })
            .collect()
    }

    /// The engine over the contrast prompt's run, when one is set.
    fn contrast_engine(&self) -> Result<Option<Engine<'_>>> {
        let cur = self.current()?;
        let Some(k) = &cur.contrast else {
            return Ok(None);
        };
        Ok(Some(Engine::with_memo(
            &self.model,
            &k.cache,
            cur.computed.target,
            cur.computed.request.mlp_mode,
            &k.memo,
        )?))
    }

    /// Verify `trace` (over the current computation, DESIGN.md §3 verified circuits): each
    /// of its `k` largest sites (by |traced value|; the node traced from and nodes that are
    /// not model sites passed over) ablated alone, exactly as [`Session::ablate`] does for
    /// one path, then all of them together; the runs share forward passes
    /// ([`Session::ablate_many`]). `progress(runs done, runs)` after each pass; returning
    /// `false` stops with [`SessionError::VerifyStopped`].
    pub fn verify(
        &self,
        trace: &Trace,
        k: usize,
        mode: AblationMode,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<crate::verify::Verification> {
        let t = Instant::now();
        let engine = self.engine()?;
        let mut chosen = Vec::new();
        let mut passed_over = Vec::new();
        for n in crate::verify::candidates(trace) {
            if chosen.len() == k {
                break;
            }
            if ablatable_site(&engine, &n.id).is_err() {
                passed_over.push(n.id.clone());
            } else {
                chosen.push(n);
            }
        }
        if chosen.is_empty() {
            return Err(SessionError::NothingToVerify);
        }
        let sets =
            crate::verify::alone_then_together(chosen.iter().map(|n| n.id.clone()).collect());
        let mut reports = self.ablate_many(&sets, mode, false, progress)?;
        let all = reports.pop().ok_or(SessionError::NothingToVerify)?;
        let sites: Vec<crate::verify::VerifiedSite> = chosen
            .iter()
            .zip(reports)
            .map(|(n, r)| crate::verify::VerifiedSite {
                site: n.id.clone(),
                label: format!("{}@{}", n.site, n.position),
                attributed: n.value,
                effect: r.change,
            })
            .collect();
        let attributed: Vec<f32> = sites.iter().map(|s| s.attributed).collect();
        let effects: Vec<f32> = sites.iter().map(|s| s.effect).collect();
        Ok(crate::verify::Verification {
            ablation: mode,
            spearman: crate::verify::spearman(&attributed, &effects),
            explained: (all.clean != 0.0).then(|| f64::from(all.change) / f64::from(all.clean)),
            target: all.clean,
            together: all.change,
            sites,
            passed_over,
            verify_ms: ms(t),
        })
    }

    /// [`rdla_attrib::Engine::trace`] over the current computation, from `start`.
    pub fn trace(
        &self,
        start: &Path,
        opts: &TraceOptions,
        on_progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Trace> {
        Ok(self.engine()?.trace(start, opts, on_progress)?)
    }

    /// The trace's JSON (DESIGN.md §3, tracing): the trace itself plus the tokens, the
    /// target and the time it took ([`crate::graph::json`], the window's export too).
    pub fn trace_json(
        &self,
        trace: &Trace,
        trace_ms: f64,
        verification: Option<&crate::verify::Verification>,
    ) -> Result<serde_json::Value> {
        let c = &self.current()?.computed;
        Ok(serde_json::to_value(crate::graph::json(
            trace,
            crate::graph::GraphContext::of(&self.model.name, c, trace_ms).verified(verification),
        ))?)
    }

    /// The trace's graph as a PNG (the window's layout), its verification in the caption.
    pub fn trace_png(
        &self,
        trace: &Trace,
        verification: Option<&crate::verify::Verification>,
    ) -> Result<Vec<u8>> {
        let c = &self.current()?.computed;
        Ok(crate::graph::png(
            trace,
            &c.tokens.strs,
            self.model.config.n_layers,
            &self.model.name,
            &c.target_label,
            verification
                .map(crate::verify::Verification::stamp)
                .as_deref(),
        )?)
    }

    /// What the user explored of the current computation, with its provenance, as a result
    /// file's contents ([`crate::saved`]): the root and every node of `paths` expanded (with
    /// every ancestor, so each can be reopened by walking down), and a trace with its
    /// verification. The model's files are hashed (sha256) here.
    pub fn saved(
        &self,
        paths: &[Path],
        trace: Option<(&Trace, f64)>,
        verification: Option<&crate::verify::Verification>,
    ) -> Result<crate::saved::Saved> {
        use crate::saved::{FORMAT, Manifest, ModelRef, Saved, TraceSummary, VerificationSummary};
        let cur = self.current()?;
        let c = &cur.computed;
        let mut wanted: Vec<Path> = vec![Path::root()];
        for p in paths {
            for q in p.prefixes() {
                if !wanted.contains(&q) {
                    wanted.push(q);
                }
            }
        }
        // while comparing, the heatmaps are the differences drawn, the nodes this prompt's
        // values (their contrast values beside them, below)
        let views = wanted
            .iter()
            .map(|p| match &cur.contrast {
                Some(k) => self
                    .contrast_view(p, cur, k)
                    .map(|(v, own)| (own, v.heatmap)),
                None => self.view(p).map(|v| (v.expansion, v.heatmap)),
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = Manifest {
            format: FORMAT,
            rdla_version: env!("CARGO_PKG_VERSION").to_string(),
            model: ModelRef {
                name: self.model.name.clone(),
                files: crate::saved::model_files(&self.model)?,
                config: serde_json::to_value(&self.model.config)?,
            },
            prompt: c.request.prompt.clone(),
            token_ids: c.tokens.ids.clone(),
            token_strs: c.tokens.strs.clone(),
            bos: c.request.bos,
            answer: c.request.answer.clone(),
            answer_id: c.target.answer(),
            foil: c.request.foil.clone().filter(|f| !f.is_empty()),
            foil_id: c.target.foil(),
            target_label: c.target_label.clone(),
            target_value: c.overview.target_value,
            mlp_mode: match c.request.mlp_mode {
                MlpMode::FrozenGate => "frozen_gate".into(),
                MlpMode::Gradient => "gradient".into(),
            },
            contrast_prompt: self.contrast_prompt().map(|(p, _)| p.to_string()),
            device: self.device.to_string(),
            trace: trace.map(|(t, trace_ms)| TraceSummary {
                from: t.from.clone(),
                value: t.value,
                expanded: t.expanded,
                frontier_total: t.frontier_total,
                residual_total: t.residual_total,
                timed_out: t.timed_out,
                trace_ms,
            }),
            verification: verification.map(|v| VerificationSummary {
                ablation: v.ablation.name().into(),
                spearman: v.spearman,
                explained: v.explained,
                target: v.target,
                together: v.together,
                stamp: v.stamp(),
            }),
        };
        let mut saved = Saved::collect(manifest, &views, trace.map(|(t, _)| t), verification);
        if let Some(other) = self.contrast_engine()? {
            for n in &mut saved.nodes {
                n.contrast = Some(other.value(&n.path)?);
            }
        }
        Ok(saved)
    }

    /// Recompute a result file on this model (`rdla verify`): refused when the model's files
    /// are not the saved ones (sha256); otherwise the saved request is computed again and
    /// every saved node's value compared (within `tolerance × (1 + |saved|)`), then the saved
    /// verification's ablated runs are rerun (each site alone, all together; a patching one
    /// from its saved contrast prompt) and their effects compared the same way. The first
    /// value that differs ends the check.
    pub fn check_saved(
        &mut self,
        saved: &crate::saved::Saved,
        tolerance: f32,
    ) -> Result<SavedCheck> {
        let m = &saved.manifest;
        let here = crate::saved::model_files(&self.model)?;
        if let Some(why) = crate::saved::model_difference(&m.model.files, &here) {
            return Err(SessionError::OtherModel(why));
        }
        let req = Request {
            prompt: m.prompt.clone(),
            answer: m.answer.clone(),
            answer_id: Some(m.answer_id),
            foil: m.foil.clone(),
            bos: m.bos,
            mlp_mode: m
                .mlp_mode
                .parse()
                .map_err(|e: String| SessionError::OtherModel(format!("mlp mode: {e}")))?,
        };
        self.compute(&req).map_err(|f| f.error)?;
        let c = self.current()?;
        if c.computed.tokens.ids != m.token_ids || c.computed.target.foil() != m.foil_id {
            return Err(SessionError::OtherModel(
                "the prompt no longer gives the saved token ids and target".into(),
            ));
        }
        // saved while comparing: the nodes are differences, and patches come from that run
        self.set_contrast(m.contrast_prompt.as_deref())?;
        let check = self.check_current(saved, tolerance);
        self.set_contrast(None)?;
        check
    }

    /// [`Session::check_saved`] once the saved request (and contrast prompt) is computed.
    fn check_current(&self, saved: &crate::saved::Saved, tolerance: f32) -> Result<SavedCheck> {
        let m = &saved.manifest;
        // a NaN on either side is a mismatch
        let differs =
            |was: f32, now: f32| (now - was).abs() > tolerance * (1.0 + was.abs()) || now.is_nan();
        let mut check = SavedCheck::default();
        {
            let engine = self.engine()?;
            let other = self.contrast_engine()?;
            for n in &saved.nodes {
                let name = if n.path.is_root() {
                    "(root)".to_string()
                } else {
                    n.path.to_string()
                };
                check.nodes += 1;
                let got = engine.value(&n.path)?;
                if differs(n.value, got) {
                    check.mismatch = Some((format!("node `{name}`"), n.value, got));
                    return Ok(check);
                }
                if let Some(was) = n.contrast {
                    // (a NaN when the file names no contrast prompt)
                    let now = match &other {
                        Some(o) => o.value(&n.path)?,
                        None => f32::NAN,
                    };
                    if differs(was, now) {
                        let what = format!("node `{name}` in the contrast prompt's run");
                        check.mismatch = Some((what, was, now));
                        return Ok(check);
                    }
                }
            }
        }
        let Some(v) = m
            .verification
            .as_ref()
            .filter(|_| !saved.verification.is_empty())
        else {
            return Ok(check);
        };
        let mode: AblationMode = v
            .ablation
            .parse()
            .map_err(|e: String| SessionError::OtherModel(format!("verification: {e}")))?;
        let sets = crate::verify::alone_then_together(
            saved.verification.iter().map(|s| s.site.clone()).collect(),
        );
        let reports = self.ablate_many(&sets, mode, false, &mut |_, _| true)?;
        check.ablations = reports.len();
        let saved_effects = saved
            .verification
            .iter()
            .map(|s| (format!("`{}` ({})", s.site, s.label), s.effect))
            .chain(std::iter::once((
                format!("all {} sites together", saved.verification.len()),
                v.together,
            )));
        for ((what, was), r) in saved_effects.zip(&reports) {
            if differs(was, r.change) {
                check.mismatch = Some((
                    format!("the verification's {} ablation of {what}", mode.name()),
                    was,
                    r.change,
                ));
                return Ok(check);
            }
        }
        Ok(check)
    }

    /// Write a result file (through [`Session::write_output`]); its size in bytes.
    pub fn write_result(
        &self,
        path: &std::path::Path,
        saved: &crate::saved::Saved,
    ) -> Result<usize> {
        let bytes = saved.to_bytes()?;
        self.write_output(path, &bytes)?;
        Ok(bytes.len())
    }

    /// Write an export, refusing any path inside the model's folder (links resolved).
    pub fn write_output(&self, path: &std::path::Path, bytes: &[u8]) -> Result<()> {
        crate::output::write_outside(path, &self.model.protected, bytes)
    }
}

/// A prompt's tokens as the computation would use them (BOS as asked), checked against the
/// model's context.
pub fn tokens_of(
    model: &Model,
    prompt: &str,
    bos: bool,
) -> std::result::Result<Tokens, ModelError> {
    let tok = &model.tokenizer;
    let ids = tok.encode_prompt_within(prompt, bos, model.config.n_ctx)?;
    model.check_tokens(&ids)?;
    Ok(Tokens {
        strs: ids.iter().map(|&i| tok.token_str(i)).collect(),
        ids,
        has_bos: bos,
    })
}

/// The target a request names: the answer (and foil) must each be one token, and differ.
fn target_of(model: &Model, req: &Request) -> Result<Target> {
    let tok = &model.tokenizer;
    let answer = match req.answer_id {
        Some(id) if id as usize >= model.config.d_vocab => {
            return Err(SessionError::Attrib(rdla_attrib::AttribError::BadTarget {
                id,
                vocab: model.config.d_vocab,
            }));
        }
        Some(id) => id,
        None => tok
            .single_token(&req.answer)
            .map_err(|error| SessionError::Token {
                which: "answer",
                error,
            })?,
    };
    match req.foil.as_deref().filter(|f| !f.is_empty()) {
        None => Ok(Target::Logit { answer }),
        Some(f) => {
            let foil = tok.single_token(f).map_err(|error| SessionError::Token {
                which: "foil",
                error,
            })?;
            if foil == answer {
                return Err(SessionError::SameFoil {
                    token: req.answer.clone(),
                });
            }
            Ok(Target::Diff { answer, foil })
        }
    }
}

/// What a census keeps of several requests computed in one forward pass
/// ([`rdla_model::Model::run_batch_whole`]; prompts of similar lengths waste least padding):
/// each prompt's [`rdla_attrib::HeadTotals`] (with `sources`, each head's children summed over positions),
/// answer probability and times, in the order of `reqs`. Every number is the one
/// [`Session::compute`] gives for that prompt. A model that streams its layers, prompts whose
/// caches would spill or a bad target are errors before anything is computed: the caller then
/// computes them one at a time. Of the model alone (no session's state), so several batches
/// may be computed at once, on threads of their own.
pub fn totals_of(model: &Model, reqs: &[Request], sources: bool) -> Result<Vec<Totals>> {
    let mut tokens = Vec::with_capacity(reqs.len());
    let mut targets = Vec::with_capacity(reqs.len());
    for r in reqs {
        tokens.push(tokens_of(model, &r.prompt, r.bos)?);
        targets.push(target_of(model, r)?);
    }
    let t = Instant::now();
    let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
    // the last layer at the last positions only where the totals take the batch whole
    let longest = ids.iter().map(|p| p.len()).max().unwrap_or(0);
    let run = model.run_batch_whole(&ids, rdla_attrib::takes_whole(model, longest))?;
    // the pass's time shared out among its prompts, and the attribution's
    let forward_ms = ms(t) / reqs.len().max(1) as f64;
    let t = Instant::now();
    let totals = rdla_attrib::head_totals_batch(model, &run, &targets, sources)?;
    let logits = rdla_model::to_vec(run.last_logits.clone())?;
    let v = model.config.d_vocab;
    let probs = targets
        .iter()
        .enumerate()
        .map(|(b, target)| {
            let last = logits
                .get(b * v..(b + 1) * v)
                .ok_or(SessionError::NotComputed)?;
            crate::report::prob_of(model, last, target.answer())
        })
        .collect::<Result<Vec<f32>>>()?;
    let attribution_ms = ms(t) / reqs.len().max(1) as f64;
    Ok(tokens
        .into_iter()
        .zip(targets)
        .zip(totals.into_iter().zip(probs))
        .map(|((tokens, target), (totals, prob))| Totals {
            tokens,
            target,
            prob,
            totals,
            forward_ms,
            attribution_ms,
        })
        .collect())
}

//! One open model and its current computation: open → compute → expand → view. The CLI and the
//! GUI worker are thin adapters around this (they parse and print, or send and receive).

use std::path::PathBuf;
use std::time::Instant;

use rdla_attrib::{Engine, Expansion, MlpMode, NodeKind, Path, Target};
use rdla_model::weights::ProgressFn;
use rdla_model::{Cache, Device, DeviceInfo, Model, ModelError, Processing};

use crate::error::{Result, SessionError};
use crate::heatmap::printable;
use crate::png::clip;
use crate::report::{Prediction, Timings, top_predictions};
use crate::view::{node_heatmap, root_heatmap, view_title};
use crate::{Heatmap, ModelInfo};

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
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
    pub overview: rdla_attrib::Overview,
    /// The root's expansion.
    pub root: Expansion,
    pub forward_ms: f64,
    pub attribution_ms: f64,
}

/// A computation that could not finish: the error, and the tokens and top predictions when the
/// prompt itself was fine (so the user can pick an answer from them).
#[derive(Debug)]
pub struct ComputeFailure {
    pub error: SessionError,
    pub tokens: Option<Tokens>,
    pub top: Vec<Prediction>,
}

/// One node, ready to show: its expansion, its heatmap and what the view adds to it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub path: Path,
    pub expansion: Expansion,
    pub heatmap: Heatmap,
    /// Milliseconds the expansion took.
    pub ms: f64,
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
}

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
    pub fn tokenize(&self, prompt: &str, bos: bool) -> std::result::Result<Tokens, ModelError> {
        let tok = &self.model.tokenizer;
        let ids = tok.encode_prompt(prompt, bos)?;
        self.model.check_tokens(&ids)?;
        Ok(Tokens {
            strs: ids.iter().map(|&i| tok.token_str(i)).collect(),
            ids,
            has_bos: bos,
        })
    }

    /// The target a request names: the answer (and foil) must each be one token, and differ.
    pub fn target(&self, req: &Request) -> Result<Target> {
        let tok = &self.model.tokenizer;
        let answer = tok
            .single_token(&req.answer)
            .map_err(|error| SessionError::Token {
                which: "answer",
                error,
            })?;
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

    /// Run the forward pass and the overview for `req`; the result becomes the current
    /// computation (the previous one is dropped).
    pub fn compute(
        &mut self,
        req: &Request,
    ) -> std::result::Result<&Computed, Box<ComputeFailure>> {
        self.current = None;
        let fail = |error: SessionError, tokens: Option<Tokens>, top: Vec<Prediction>| {
            Box::new(ComputeFailure { error, tokens, top })
        };
        let tokens = self
            .tokenize(&req.prompt, req.bos)
            .map_err(|e| fail(e.into(), None, Vec::new()))?;
        let t = Instant::now();
        let cache = self
            .model
            .run(&tokens.ids)
            .map_err(|e| fail(e.into(), Some(tokens.clone()), Vec::new()))?;
        // make the timing honest on asynchronous devices
        let top = top_predictions(&self.model, &cache, 10)
            .map_err(|e| fail(e, Some(tokens.clone()), Vec::new()))?;
        let forward_ms = ms(t);
        let target = self
            .target(req)
            .map_err(|e| fail(e, Some(tokens.clone()), top.clone()))?;
        let t = Instant::now();
        let derived = (|| -> Result<_> {
            let engine = Engine::new(&self.model, &cache, target, req.mlp_mode)?;
            let overview = engine.overview()?;
            let root = engine.expand(&Path::root())?;
            let b_u = rdla_model::to_vec(self.model.weights.b_u.clone())?;
            let get = |id: u32| b_u.get(id as usize).copied().unwrap_or(0.0);
            let unembed_bias = get(target.answer()) - target.foil().map_or(0.0, get);
            Ok((overview, root, unembed_bias))
        })();
        let (overview, root, unembed_bias) =
            derived.map_err(|e| fail(e, Some(tokens.clone()), top.clone()))?;
        let computed = Computed {
            request: req.clone(),
            target_label: self.target_label(target),
            tokens,
            top,
            target,
            unembed_bias,
            overview,
            root,
            forward_ms,
            attribution_ms: ms(t),
        };
        Ok(&self.current.insert(Current { cache, computed }).computed)
    }

    /// `logit " the"`, or `logit " the" − " a"`.
    pub fn target_label(&self, target: Target) -> String {
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
        Ok(Engine::new(
            &self.model,
            &cur.cache,
            cur.computed.target,
            cur.computed.request.mlp_mode,
        )?)
    }

    /// Check that `path` names a node.
    pub fn validate(&self, path: &Path) -> Result<()> {
        Ok(self.engine()?.validate(path)?)
    }

    /// Expand the node at `path`.
    pub fn expand(&self, path: &Path) -> Result<Expansion> {
        Ok(self.engine()?.expand(path)?)
    }

    /// The view of the node at `path`: its expansion and heatmap (the root: the layers ×
    /// heads overview), with a head's attention pattern as the strip above its columns.
    pub fn view(&self, path: &Path) -> Result<NodeView> {
        let t = Instant::now();
        let cur = self.current()?;
        let c = &cur.computed;
        let title = view_title(&self.model.name, path, &c.target_label);
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
            ms: ms(t),
        })
    }

    /// The JSON report (DESIGN.md §3.1) of the current computation, with `node` expanded when
    /// given.
    pub fn report(&self, node: Option<&Expansion>, load_ms: f64) -> Result<serde_json::Value> {
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
        ))
    }

    /// The CSV of a node's children, or of the overview tables at the root.
    pub fn csv(&self, node: Option<&Expansion>) -> Result<String> {
        let c = &self.current()?.computed;
        Ok(match node {
            Some(ex) => crate::csv::expansion_csv(ex),
            None => crate::csv::overview_csv(&c.overview),
        })
    }

    /// Write an export, refusing any path inside the model's folder (links resolved).
    pub fn write_output(&self, path: &std::path::Path, bytes: &[u8]) -> Result<()> {
        crate::output::write_outside(path, &self.model.protected, bytes)
    }
}

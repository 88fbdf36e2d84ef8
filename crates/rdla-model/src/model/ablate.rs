//! Interventions on the real forward pass, for the causal check of an attribution: ablate a
//! site (an embedding, an attention layer's or an MLP's output, one head's output, one neuron's
//! activation) at one position — set it to zero, or to its mean over the prompt's positions —
//! and let everything downstream recompute (nothing frozen, unless the final norm's scale is
//! held at the clean run's value on request).

use burn::tensor::Tensor;

/// A model site: something the model computes and writes into the residual stream (at a
/// position, which the site does not carry). The one taxonomy of sites: ablation replaces
/// one, the attribution tree names one for every node that is a site, the trace's graph
/// merges its paths by them and the window offers the causal check on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    Embed,
    Pos,
    /// The attention layer's output (all heads and `b_O`).
    Attn(usize),
    /// The MLP's output.
    Mlp(usize),
    /// One head's output `z_h W_O[h]`.
    Head {
        layer: usize,
        head: usize,
    },
    /// One neuron's activation.
    Neuron {
        layer: usize,
        neuron: usize,
    },
}

impl Site {
    /// The drawing row of a graph: `-1` for the embeddings, `l` for layer `l`'s attention and
    /// heads, `l + 0.5` for its MLP and neurons.
    pub fn row(self) -> f32 {
        match self {
            Self::Embed | Self::Pos => -1.0,
            Self::Attn(l) | Self::Head { layer: l, .. } => l as f32,
            Self::Mlp(l) | Self::Neuron { layer: l, .. } => l as f32 + 0.5,
        }
    }
}

/// `embed`, `pos`, `L{l}.attn`, `L{l}.H{h}`, `L{l}.mlp`, `L{l}.N{n}`.
impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embed => f.write_str("embed"),
            Self::Pos => f.write_str("pos"),
            Self::Attn(l) => write!(f, "L{l}.attn"),
            Self::Mlp(l) => write!(f, "L{l}.mlp"),
            Self::Head { layer, head } => write!(f, "L{layer}.H{head}"),
            Self::Neuron { layer, neuron } => write!(f, "L{layer}.N{neuron}"),
        }
    }
}

#[cfg(test)]
mod site_tests {
    use super::Site;

    #[test]
    fn a_site_reads_back_what_it_prints() {
        for s in [
            Site::Embed,
            Site::Pos,
            Site::Attn(3),
            Site::Mlp(0),
            Site::Head { layer: 11, head: 7 },
            Site::Neuron {
                layer: 2,
                neuron: 3071,
            },
        ] {
            assert_eq!(s.to_string().parse::<Site>(), Ok(s));
        }
        for bad in [
            "", "L", "L1", "L1.", "L1.H", "L1.Hx", "Lx.attn", "L1.att", "mlp",
        ] {
            assert!(bad.parse::<Site>().is_err(), "{bad}");
        }
    }
}

/// The inverse of `Display`: `embed`, `pos`, `L{l}.attn`, `L{l}.mlp`, `L{l}.H{h}`, `L{l}.N{n}`.
impl std::str::FromStr for Site {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a model site (embed, pos, L3.attn, L3.mlp, L3.H1, L3.N7)");
        match s {
            "embed" => return Ok(Self::Embed),
            "pos" => return Ok(Self::Pos),
            _ => {}
        }
        let (layer, what) = s
            .strip_prefix('L')
            .and_then(|r| r.split_once('.'))
            .ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let num = |r: &str| r.parse::<usize>().map_err(|_| bad());
        match what {
            "attn" => Ok(Self::Attn(layer)),
            "mlp" => Ok(Self::Mlp(layer)),
            _ => match what.split_at_checked(1) {
                Some(("H", h)) => Ok(Self::Head {
                    layer,
                    head: num(h)?,
                }),
                Some(("N", n)) => Ok(Self::Neuron {
                    layer,
                    neuron: num(n)?,
                }),
                _ => Err(bad()),
            },
        }
    }
}

/// What an ablated site is replaced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AblationMode {
    /// Zero.
    #[default]
    Zero,
    /// Its mean over the prompt's positions.
    Mean,
    /// Its value in another prompt's run at the same position (activation patching): the
    /// ablation then carries that value ([`Ablation::patch`]).
    Patch,
}

impl AblationMode {
    /// The command-line and JSON spelling: `zero`, `mean`, `patch`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zero => "zero",
            Self::Mean => "mean",
            Self::Patch => "patch",
        }
    }
}

impl std::str::FromStr for AblationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zero" => Ok(Self::Zero),
            "mean" => Ok(Self::Mean),
            "patch" => Ok(Self::Patch),
            o => Err(format!(
                "unknown ablation `{o}` (expected zero, mean or patch)"
            )),
        }
    }
}

/// One ablated site at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct Ablation {
    pub site: Site,
    pub pos: usize,
    pub mode: AblationMode,
    /// With [`AblationMode::Patch`]: the site's value there in the other run (`d` values for
    /// an embedding, an attention layer or an MLP, `d_head` for a head's `z`, one for a
    /// neuron's activation).
    pub patch: Option<Vec<f32>>,
}

impl Ablation {
    /// How many values the site has at a position.
    pub fn width(&self, d_model: usize, d_head: usize) -> usize {
        match self.site {
            Site::Embed | Site::Pos | Site::Attn(_) | Site::Mlp(_) => d_model,
            Site::Head { .. } => d_head,
            Site::Neuron { .. } => 1,
        }
    }
}

/// Everything changed in a forward pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interventions {
    pub ablations: Vec<Ablation>,
    /// Hold the final norm's scale at the last position at this value (the clean run's), so
    /// the only change is what flows through the residual stream.
    pub final_scale: Option<f32>,
}

impl Interventions {
    pub fn is_empty(&self) -> bool {
        self.ablations.is_empty() && self.final_scale.is_none()
    }

    /// The earliest layer an ablation touches (0 for an embedding, or with no ablation): an
    /// ablated pass can resume there from the clean run's residual stream.
    pub fn first_layer(&self) -> usize {
        self.ablations
            .iter()
            .map(|a| match a.site {
                Site::Embed | Site::Pos => 0,
                Site::Attn(l) | Site::Mlp(l) | Site::Head { layer: l, .. } => l,
                Site::Neuron { layer, .. } => layer,
            })
            .min()
            .unwrap_or(0)
    }
}

/// The interventions of one forward pass over `copies.len()` runs laid end to end along the
/// position axis, `n` rows each: the `b`-th run's are `copies[b]` (none at all when `copies`
/// is empty, as in a batch of prompts).
pub(crate) struct PassInterventions<'a> {
    pub copies: &'a [&'a Interventions],
    pub n: usize,
}

impl PassInterventions<'_> {
    /// `x [B·n, ·]` with every ablation of a site `pick` accepts replaced in its own run's
    /// rows; `pick` gives the columns the site occupies (`None`: all of them).
    pub fn apply(
        &self,
        mut x: Tensor<2>,
        pick: impl Fn(Site) -> Option<Option<std::ops::Range<usize>>>,
    ) -> Tensor<2> {
        for (b, iv) in self.copies.iter().enumerate() {
            for a in &iv.ablations {
                if let Some(cols) = pick(a.site) {
                    x = ablate_rows(x, b * self.n..(b + 1) * self.n, cols, a);
                }
            }
        }
        x
    }

    /// `(row of the run's last position, the scale to hold)` for every run that holds the
    /// final norm's scale.
    pub fn final_scales(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.copies
            .iter()
            .enumerate()
            .filter_map(|(b, iv)| iv.final_scale.map(|s| ((b + 1) * self.n - 1, s)))
    }
}

/// Replace row `rows.start + a.pos` of `x [B·P, n]` (columns `cols`, all when `None`) by
/// zero, the column's mean over `rows` (the run's own positions), or the ablation's patch.
pub(crate) fn ablate_rows(
    x: Tensor<2>,
    rows: std::ops::Range<usize>,
    cols: Option<std::ops::Range<usize>>,
    a: &Ablation,
) -> Tensor<2> {
    let [p, n] = x.dims();
    let (c0, cn) = cols.map_or((0, n), |c| (c.start, c.len()));
    let replacement = match (a.mode, &a.patch) {
        (AblationMode::Mean, _) => x
            .clone()
            .narrow(0, rows.start, rows.len())
            .narrow(1, c0, cn)
            .mean_dim(0),
        // checked by `Model::run_ablated`: a patch of the site's width
        (AblationMode::Patch, Some(v)) if v.len() == cn => Tensor::<2>::from_data(
            burn::tensor::TensorData::new(v.clone(), [1, cn]),
            &x.device(),
        ),
        _ => Tensor::zeros([1, cn], &x.device()),
    };
    let r = rows.start + a.pos;
    debug_assert!(r < rows.end && rows.end <= p);
    x.slice_assign([r..r + 1, c0..c0 + cn], replacement)
}

//! Rotary position embeddings on the device: the `cos`/`sin` tables of a model for a prompt,
//! applied to queries and keys (`rotate_half` layout: channel pairs `(i, i + dim/2)` of the
//! first `dim` channels of each head), and their inverse (`ρ_p^T`, the rotation by `−θ_p`,
//! which the QK readouts need: DESIGN.md §1.4).

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{ModelConfig, Rotary};

/// The rotary tables of every layer for one prompt: most models use one rotary embedding
/// everywhere; Gemma 3 uses a second one on its sliding-window layers. Tables are built once
/// per distinct embedding and shared between the layers that use it.
#[derive(Debug, Clone)]
pub struct LayerRotary {
    tables: Vec<RotaryTables>,
}

impl LayerRotary {
    /// The tables of `cfg`'s layers for positions `0..n` (`None` without rotary embeddings).
    pub fn new(cfg: &ModelConfig, n: usize, device: &Device) -> Option<Self> {
        let global = RotaryTables::new(cfg.rotary()?, n, device);
        let local = cfg
            .local_rotary
            .as_ref()
            .map(|r| RotaryTables::new(r, n, device));
        // which layer uses which embedding is `ModelConfig::layer_rotary`'s to say
        let tables = (0..cfg.n_layers)
            .map(|l| match (&local, &cfg.local_rotary, cfg.layer_rotary(l)) {
                (Some(t), Some(lr), Some(r)) if std::ptr::eq(lr, r) => t.clone(),
                _ => global.clone(),
            })
            .collect();
        Some(Self { tables })
    }

    /// Layer `l`'s tables.
    pub fn layer(&self, l: usize) -> &RotaryTables {
        &self.tables[l.min(self.tables.len() - 1)]
    }
}

/// `cos`/`sin` of every rotated pair at positions `0..n`.
#[derive(Debug, Clone)]
pub struct RotaryTables {
    /// Rotated channels per head.
    pub dim: usize,
    /// `[n, dim/2]` each.
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// The same on the host, for the CPU's fused kernel.
    host: std::sync::Arc<(Vec<f32>, Vec<f32>)>,
}

impl RotaryTables {
    pub fn new(r: &Rotary, n: usize, device: &Device) -> Self {
        let (cos, sin) = r.tables(n);
        let half = r.dim / 2;
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [n, half]), device);
        Self {
            dim: r.dim,
            cos: t(&cos),
            sin: t(&sin),
            host: std::sync::Arc::new((cos, sin)),
        }
    }

    /// Rotate `x [heads, P', dh]`, whose positions are `first .. first + P'`.
    pub fn apply(&self, x: Tensor<3>, first: usize) -> Tensor<3> {
        let n = x.dims()[1];
        if x.device() == Device::flex() && self.dim <= x.dims()[2] {
            let (cos, sin) = &*self.host;
            if let Ok(t) = crate::fused::rotate(x.clone(), self.dim, cos, sin, first, &x.device()) {
                return t;
            }
        }
        let cos = self.cos.clone().narrow(0, first, n).unsqueeze_dim::<3>(0);
        let sin = self.sin.clone().narrow(0, first, n).unsqueeze_dim::<3>(0);
        rotate(x, self.dim, &cos, &sin)
    }

    /// Rotate each row `i` of `x [rows, dh]` by the angle of position `positions[i]`
    /// (`inverse`: by minus that angle).
    pub fn apply_rows(&self, x: Tensor<2>, positions: &[usize], inverse: bool) -> Tensor<2> {
        let idx: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(idx, [positions.len()]),
            &x.device(),
        );
        let cos = self
            .cos
            .clone()
            .select(0, idx.clone())
            .unsqueeze_dim::<3>(0);
        let mut sin = self.sin.clone().select(0, idx).unsqueeze_dim::<3>(0);
        if inverse {
            sin = sin.neg();
        }
        rotate(x.unsqueeze_dim::<3>(0), self.dim, &cos, &sin).squeeze_dim::<2>(0)
    }
}

/// Rotary embedding (`rotate_half` layout) on the first `dim` channels of `x [a, b, dh]`:
/// pairs `(i, i + dim/2)` are rotated by `cos`/`sin` `[1, b, dim/2]`.
fn rotate(x: Tensor<3>, dim: usize, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let dh = x.dims()[2];
    let half = dim / 2;
    let x1 = x.clone().narrow(2, 0, half);
    let x2 = x.clone().narrow(2, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos.clone() + x1 * sin.clone();
    if dim < dh {
        Tensor::cat(vec![r1, r2, x.narrow(2, dim, dh - dim)], 2)
    } else {
        Tensor::cat(vec![r1, r2], 2)
    }
}

//! GPT-2 (learned positions, pre-LayerNorm with biases, `gelu_new`, tied embeddings,
//! causal attention scaled by `1/sqrt(d_head)`) written directly as Burn tensor expressions
//! over parameters kept in Hugging Face's layout, so export is a plain copy.
//!
//! Every parameter is a rank-2 tensor: vectors are stored as `[1, n]` rows (they broadcast
//! over tokens); [`ParamSpec::hf_shape`] gives the checkpoint shape.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rng::Rng;

/// Model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    pub n_ctx: usize,
    pub vocab_size: usize,
}

/// `layer_norm_epsilon` (GPT-2's 1e-5).
pub const LN_EPS: f32 = 1e-5;
/// Added to masked attention scores (finite, so no NaNs; exp underflows to exactly 0).
const MASK_VALUE: f32 = -1.0e9;

impl GptConfig {
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_head
    }

    pub fn d_mlp(&self) -> usize {
        4 * self.d_model
    }

    pub fn validate(&self) -> Result<()> {
        if self.n_head == 0 || !self.d_model.is_multiple_of(self.n_head) {
            return Err(TrainError::Config(format!(
                "d_model {} is not a multiple of n_head {}",
                self.d_model, self.n_head
            )));
        }
        if self.n_layer == 0 || self.n_ctx < 2 || self.vocab_size < 2 {
            return Err(TrainError::Config(format!("degenerate shape {self:?}")));
        }
        Ok(())
    }

    /// Parameter names, shapes and initialisation, in storage order.
    pub fn specs(&self) -> Vec<ParamSpec> {
        let (d, v, c, m) = (self.d_model, self.vocab_size, self.n_ctx, self.d_mlp());
        // GPT-2 init: N(0, 0.02); residual-writing projections scaled by 1/sqrt(2 n_layer).
        let std = 0.02;
        let proj_std = std / ((2 * self.n_layer) as f64).sqrt();
        let mut s = vec![
            ParamSpec::matrix("transformer.wte.weight", v, d, Init::Normal(std)),
            ParamSpec::matrix("transformer.wpe.weight", c, d, Init::Normal(0.01)),
        ];
        for l in 0..self.n_layer {
            let p = format!("transformer.h.{l}");
            s.extend([
                ParamSpec::vector(&format!("{p}.ln_1.weight"), d, Init::Ones),
                ParamSpec::vector(&format!("{p}.ln_1.bias"), d, Init::Zeros),
                ParamSpec::matrix(
                    &format!("{p}.attn.c_attn.weight"),
                    d,
                    3 * d,
                    Init::Normal(std),
                ),
                ParamSpec::vector(&format!("{p}.attn.c_attn.bias"), 3 * d, Init::Zeros),
                ParamSpec::matrix(
                    &format!("{p}.attn.c_proj.weight"),
                    d,
                    d,
                    Init::Normal(proj_std),
                ),
                ParamSpec::vector(&format!("{p}.attn.c_proj.bias"), d, Init::Zeros),
                ParamSpec::vector(&format!("{p}.ln_2.weight"), d, Init::Ones),
                ParamSpec::vector(&format!("{p}.ln_2.bias"), d, Init::Zeros),
                ParamSpec::matrix(&format!("{p}.mlp.c_fc.weight"), d, m, Init::Normal(std)),
                ParamSpec::vector(&format!("{p}.mlp.c_fc.bias"), m, Init::Zeros),
                ParamSpec::matrix(
                    &format!("{p}.mlp.c_proj.weight"),
                    m,
                    d,
                    Init::Normal(proj_std),
                ),
                ParamSpec::vector(&format!("{p}.mlp.c_proj.bias"), d, Init::Zeros),
            ]);
        }
        s.extend([
            ParamSpec::vector("transformer.ln_f.weight", d, Init::Ones),
            ParamSpec::vector("transformer.ln_f.bias", d, Init::Zeros),
        ]);
        s
    }

    pub fn n_params(&self) -> usize {
        self.specs().iter().map(ParamSpec::numel).sum()
    }
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

/// One parameter: its checkpoint name, storage shape `[rows, cols]`, whether it is a vector
/// in the checkpoint, and whether weight decay applies (matrices only).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub is_vector: bool,
    pub init: Init,
}

impl ParamSpec {
    fn matrix(name: &str, rows: usize, cols: usize, init: Init) -> Self {
        Self {
            name: name.to_string(),
            rows,
            cols,
            is_vector: false,
            init,
        }
    }

    fn vector(name: &str, n: usize, init: Init) -> Self {
        Self {
            name: name.to_string(),
            rows: 1,
            cols: n,
            is_vector: true,
            init,
        }
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    pub fn hf_shape(&self) -> Vec<usize> {
        if self.is_vector {
            vec![self.cols]
        } else {
            vec![self.rows, self.cols]
        }
    }

    /// Weight decay applies to matrices but not to embeddings' positions, biases or norms.
    pub fn decays(&self) -> bool {
        !self.is_vector && !self.name.ends_with("wpe.weight")
    }

    fn initial(&self, rng: &mut Rng) -> Vec<f32> {
        let n = self.numel();
        match self.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
        }
    }
}

/// Index of a parameter in [`GptConfig::specs`] order.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    n_layer: usize,
}

pub const WTE: usize = 0;
pub const WPE: usize = 1;
const PER_LAYER: usize = 12;

impl Layout {
    pub fn new(cfg: &GptConfig) -> Self {
        Self {
            n_layer: cfg.n_layer,
        }
    }

    /// Index of the `k`-th parameter of layer `l` (see the order in [`GptConfig::specs`]).
    fn layer(self, l: usize, k: usize) -> usize {
        2 + PER_LAYER * l + k
    }

    fn ln_f(self) -> usize {
        2 + PER_LAYER * self.n_layer
    }
}

/// Host copies of all parameters, in spec order.
pub fn init_params(cfg: &GptConfig, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::derive(seed, "init");
    cfg.specs().iter().map(|s| s.initial(&mut rng)).collect()
}

/// Upload host parameters to `device` as `[rows, cols]` tensors.
pub fn upload(cfg: &GptConfig, host: &[Vec<f32>], device: &Device) -> Vec<Tensor<2>> {
    cfg.specs()
        .iter()
        .zip(host)
        .map(|(s, v)| Tensor::from_data(TensorData::new(v.clone(), [s.rows, s.cols]), device))
        .collect()
}

/// Download parameters to host vectors.
pub fn download(params: &[Tensor<2>]) -> Result<Vec<Vec<f32>>> {
    params
        .iter()
        .map(|p| {
            p.clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| TrainError::Config(format!("reading a parameter back: {e:?}")))
        })
        .collect()
}

fn layer_norm(x: Tensor<2>, w: &Tensor<2>, b: &Tensor<2>) -> Tensor<2> {
    let mean = x.clone().mean_dim(1);
    let xc = x - mean;
    let var = xc.clone().square().mean_dim(1);
    xc / var.add_scalar(LN_EPS).sqrt() * w.clone() + b.clone()
}

/// HF `NewGELUActivation`: `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
pub fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const C: f32 = 0.797_884_6;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube.mul_scalar(0.044_715)).mul_scalar(C);
    (inner.tanh().add_scalar(1.0) * x).mul_scalar(0.5)
}

/// `[1, 1, T, T]` additive causal mask (0 on and below the diagonal).
fn causal_mask(t: usize, device: &Device) -> Tensor<4> {
    let mut m = vec![0.0f32; t * t];
    for q in 0..t {
        for k in (q + 1)..t {
            m[q * t + k] = MASK_VALUE;
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, t, t]), device)
}

/// Token ids `[B, T]` as an Int tensor on `device`.
pub fn ids_tensor(ids: &[u32], batch: usize, len: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(data, [batch, len]), device)
}

/// Logits `[B·T, V]` for token ids `[B, T]`.
pub fn forward(cfg: &GptConfig, p: &[Tensor<2>], ids: Tensor<2, Int>) -> Tensor<2> {
    let [b, t] = ids.dims();
    let (d, h, dh) = (cfg.d_model, cfg.n_head, cfg.d_head());
    let n = b * t;
    let lay = Layout::new(cfg);
    let device = ids.device();

    let tok = p[WTE]
        .clone()
        .select(0, ids.reshape([n]))
        .reshape([b, t, d]);
    let pos = p[WPE].clone().narrow(0, 0, t).unsqueeze_dim::<3>(0);
    let mut x: Tensor<2> = (tok + pos).reshape([n, d]);
    let mask = causal_mask(t, &device);
    let scale = 1.0 / (dh as f32).sqrt();

    for l in 0..cfg.n_layer {
        let w = |k: usize| &p[lay.layer(l, k)];
        let a = layer_norm(x.clone(), w(0), w(1));
        let qkv = a.matmul(w(2).clone()) + w(3).clone();
        let heads = |i: usize| -> Tensor<4> {
            qkv.clone()
                .narrow(1, i * d, d)
                .reshape([b, t, h, dh])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + mask.clone();
        let pattern = softmax(scores, 3);
        let z: Tensor<2> = pattern.matmul(v).swap_dims(1, 2).reshape([n, d]);
        x = x + z.matmul(w(4).clone()) + w(5).clone();

        let m = layer_norm(x.clone(), w(6), w(7));
        let pre = m.matmul(w(8).clone()) + w(9).clone();
        x = x + gelu_new(pre).matmul(w(10).clone()) + w(11).clone();
    }
    let x = layer_norm(x, &p[lay.ln_f()], &p[lay.ln_f() + 1]);
    x.matmul(p[WTE].clone().transpose())
}

/// Mean next-token cross-entropy of logits `[N, V]` against targets `[B, T]` (`N = B·T`).
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t] = targets.dims();
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, targets.reshape([b * t, 1]));
    picked.mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        GptConfig {
            n_layer: 2,
            n_head: 2,
            d_model: 8,
            n_ctx: 6,
            vocab_size: 11,
        }
    }

    #[test]
    fn specs_cover_gpt2_keys() {
        let cfg = tiny();
        let specs = cfg.specs();
        assert_eq!(specs.len(), 2 + 12 * 2 + 2);
        assert_eq!(
            specs[Layout::new(&cfg).layer(1, 2)].name,
            "transformer.h.1.attn.c_attn.weight"
        );
        assert_eq!(
            specs[Layout::new(&cfg).ln_f()].name,
            "transformer.ln_f.weight"
        );
        assert_eq!(specs[WTE].hf_shape(), vec![11, 8]);
        assert_eq!(specs[3].hf_shape(), vec![8]);
    }

    #[test]
    fn forward_is_causal_and_loss_is_finite() {
        let cfg = tiny();
        let dev = Device::flex();
        let p = upload(&cfg, &init_params(&cfg, 1), &dev);
        let a = [0u32, 3, 4, 5, 6, 7];
        let mut bb = a;
        bb[5] = 9;
        let ids: Vec<u32> = a.iter().chain(bb.iter()).copied().collect();
        let logits = forward(&cfg, &p, ids_tensor(&ids, 2, 6, &dev));
        assert_eq!(logits.dims(), [12, 11]);
        let v: Vec<f32> = logits
            .clone()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32");
        // positions 0..5 of both rows agree (the change is at the last position)
        for i in 0..5 * 11 {
            assert!((v[i] - v[66 + i]).abs() < 1e-5);
        }
        let loss = cross_entropy(logits, ids_tensor(&ids, 2, 6, &dev));
        let l: f32 = loss.into_scalar();
        // near ln(11) at initialisation
        assert!((l - 11f32.ln()).abs() < 0.5, "{l}");
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let cfg = tiny();
        let ad = Device::flex().autodiff();
        let p: Vec<Tensor<2>> = upload(&cfg, &init_params(&cfg, 2), &Device::flex())
            .into_iter()
            .map(|t| t.autodiff().require_grad())
            .collect();
        let ids = [0u32, 1, 2, 3, 4, 5];
        let logits = forward(&cfg, &p, ids_tensor(&ids, 1, 6, &ad));
        let loss = cross_entropy(logits, ids_tensor(&ids, 1, 6, &ad));
        let grads = loss.backward();
        for (t, s) in p.iter().zip(cfg.specs()) {
            let g = t.grad(&grads);
            assert!(g.is_some(), "no grad for {}", s.name);
        }
    }
}

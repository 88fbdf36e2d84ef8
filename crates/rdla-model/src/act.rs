//! MLP activations, their frozen gates `act(z)/z` and derivatives, as tensor expressions.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

use crate::config::Activation;

/// `sqrt(2/π)` in `gelu_new` (HF `NewGELUActivation`).
const GELU_C: f32 = 0.797_884_6;
const GELU_K: f32 = 0.044_715;
/// `1/sqrt(2)`.
const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/sqrt(2π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// `|z|` below which the frozen gate uses `act'(0)`.
pub const GATE_EPS: f32 = 1e-6;

/// `act(z)`, elementwise.
pub fn apply<const D: usize>(act: Activation, z: Tensor<D>) -> Tensor<D> {
    match act {
        // HF NewGELUActivation: 0.5 x (1 + tanh(u)), u = sqrt(2/π) (x + 0.044715 x³),
        // computed as x · σ(2u) (the same function; one exp per element instead of tanh,
        // and x³ by multiplication instead of powf).
        Activation::GeluNew => {
            let two_u = z
                .clone()
                .square()
                .mul_scalar(2.0 * GELU_C * GELU_K)
                .add_scalar(2.0 * GELU_C)
                * z.clone();
            sigmoid(two_u) * z
        }
        // torch.nn.functional.gelu: 0.5 x (1 + erf(x / sqrt 2))
        Activation::Gelu => {
            (z.clone().mul_scalar(INV_SQRT2).erf().add_scalar(1.0) * z).mul_scalar(0.5)
        }
        Activation::Relu => relu(z),
        Activation::Silu => sigmoid(z.clone()) * z,
    }
}

/// `act'(z)`, elementwise (the "gradient" MLP mode).
pub fn derivative<const D: usize>(act: Activation, z: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::GeluNew => {
            let z2 = z.clone().square();
            let t = (z.clone() + z.clone() * z2.clone().mul_scalar(GELU_K))
                .mul_scalar(GELU_C)
                .tanh();
            let left = t.clone().add_scalar(1.0).mul_scalar(0.5);
            let sech2 = t.square().neg().add_scalar(1.0);
            let du = z2
                .mul_scalar(3.0 * GELU_K)
                .add_scalar(1.0)
                .mul_scalar(GELU_C);
            left + (z * sech2 * du).mul_scalar(0.5)
        }
        Activation::Gelu => {
            let cdf = z
                .clone()
                .mul_scalar(INV_SQRT2)
                .erf()
                .add_scalar(1.0)
                .mul_scalar(0.5);
            let pdf = z
                .clone()
                .square()
                .mul_scalar(-0.5)
                .exp()
                .mul_scalar(INV_SQRT_2PI);
            cdf + z * pdf
        }
        Activation::Relu => z.greater_elem(0.0).float(),
        Activation::Silu => {
            let s = sigmoid(z.clone());
            s.clone() * (z * s.neg().add_scalar(1.0)).add_scalar(1.0)
        }
    }
}

/// The frozen gate `g = act(z)/z` (DESIGN.md §1), `act'(0)` where `|z| < GATE_EPS`.
pub fn frozen_gate<const D: usize>(act: Activation, z: Tensor<D>) -> Tensor<D> {
    let tiny = z.clone().abs().lower_elem(GATE_EPS);
    let safe = z.clone().mask_fill(tiny.clone(), 1.0);
    (apply(act, z) / safe).mask_fill(tiny, act.gate_at_zero())
}

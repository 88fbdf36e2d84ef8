//! The training loop: packed BOS-prefixed sequences, AdamW written over Burn tensors, warmup +
//! cosine learning-rate schedule and global-norm gradient clipping.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::{Generator, held_out_prompts};
use crate::error::{Result, TrainError};
use crate::model::{self, GptConfig};
use crate::tokenizer::{self, BOS_ID};

/// Everything that determines a run (recorded next to the checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub model: GptConfig,
    /// Documents generated to train the tokenizer.
    pub tokenizer_docs: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub min_lr_frac: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub grad_clip: f64,
    /// Evaluate on validation prompts (held-out items, other prompts than the test's) every
    /// this many steps; 0 = never. Monitoring only: nothing is selected on it.
    pub eval_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            model: GptConfig {
                n_layer: 2,
                n_head: 4,
                d_model: 128,
                n_ctx: 128,
                vocab_size: 768,
            },
            tokenizer_docs: 20_000,
            steps: 1000,
            batch: 16,
            lr: 2e-3,
            min_lr_frac: 0.1,
            warmup: 100,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.98,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 100,
        }
    }
}

impl TrainConfig {
    /// Learning rate at `step` (0-based): linear warmup, then cosine down to `min_lr_frac`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_frac + (1.0 - self.min_lr_frac) * cos)
    }
}

/// Packs documents into training rows: `BOS doc BOS doc …`, cut at `len` tokens. Every row
/// starts with BOS followed by the start of a document; the cut-off tail is discarded.
#[derive(Debug)]
pub struct Packer<'a> {
    generator: Generator,
    tokenizer: &'a Tokenizer,
}

impl<'a> Packer<'a> {
    pub fn new(seed: u64, tokenizer: &'a Tokenizer) -> Self {
        Self {
            generator: Generator::new(seed.wrapping_add(1)),
            tokenizer,
        }
    }

    pub fn row(&mut self, len: usize) -> Result<Vec<u32>> {
        let mut row = Vec::with_capacity(len + 64);
        while row.len() < len {
            row.push(BOS_ID);
            row.extend(tokenizer::encode(
                self.tokenizer,
                &self.generator.document(),
            )?);
        }
        row.truncate(len);
        Ok(row)
    }
}

/// Seed and size of the validation prompts monitored during training (the test uses
/// [`crate::HELD_OUT_SEED`]).
pub const VALIDATION_SEED: u64 = 7;
pub const VALIDATION_COUNT: usize = 100;

/// Per-step record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub seconds: f64,
    /// Validation result, on the steps where it ran.
    pub eval: Option<Eval>,
}

/// AdamW state over rank-2 parameter tensors (no autodiff).
#[derive(Debug)]
pub struct AdamW {
    m: Vec<Tensor<2>>,
    v: Vec<Tensor<2>>,
    decays: Vec<bool>,
    t: i32,
}

impl AdamW {
    pub fn new(params: &[Tensor<2>], decays: Vec<bool>) -> Self {
        Self {
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
            decays,
            t: 0,
        }
    }

    /// One update with gradients already scaled (clipped).
    pub fn step(
        &mut self,
        cfg: &TrainConfig,
        lr: f64,
        params: &mut [Tensor<2>],
        grads: Vec<Tensor<2>>,
    ) {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        for (i, g) in grads.into_iter().enumerate() {
            let m = self.m[i].clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            let v = self.v[i].clone().mul_scalar(b2) + g.square().mul_scalar(1.0 - b2);
            let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(cfg.adam_eps);
            let update = m.clone().div_scalar(bc1) / denom;
            let mut p = params[i].clone();
            if self.decays[i] {
                p = p.mul_scalar(1.0 - lr * cfg.weight_decay);
            }
            params[i] = p - update.mul_scalar(lr);
            self.m[i] = m;
            self.v[i] = v;
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Trained {
    pub config: TrainConfig,
    pub tokenizer: Tokenizer,
    pub params: Vec<Vec<f32>>,
    pub log: Vec<StepLog>,
    pub tokenizer_seconds: f64,
    pub train_seconds: f64,
}

/// Train the tokenizer on `cfg.tokenizer_docs` generated documents.
pub fn train_tokenizer(cfg: &TrainConfig) -> Result<Tokenizer> {
    let mut g = Generator::new(cfg.seed);
    let docs: Vec<String> = (0..cfg.tokenizer_docs).map(|_| g.document()).collect();
    tokenizer::train_tokenizer(&docs, cfg.model.vocab_size)
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

/// Train from scratch. `on_step` sees every step's record (for progress output).
pub fn train(cfg: &TrainConfig, on_step: &mut dyn FnMut(&StepLog)) -> Result<Trained> {
    cfg.model.validate()?;
    let t0 = Instant::now();
    let tok = train_tokenizer(cfg)?;
    let tokenizer_seconds = t0.elapsed().as_secs_f64();

    let plain = Device::flex();
    let ad = Device::flex().autodiff();
    let mcfg = cfg.model;
    let specs = mcfg.specs();
    let mut params = model::upload(&mcfg, &model::init_params(&mcfg, cfg.seed), &plain);
    let mut opt = AdamW::new(
        &params,
        specs.iter().map(model::ParamSpec::decays).collect(),
    );
    let mut packer = Packer::new(cfg.seed, &tok);
    let (b, t) = (cfg.batch, mcfg.n_ctx);
    let mut log = Vec::with_capacity(cfg.steps);
    let t1 = Instant::now();

    for step in 0..cfg.steps {
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            let row = packer.row(t + 1)?;
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        let leaves: Vec<Tensor<2>> = params
            .iter()
            .map(|p| p.clone().autodiff().require_grad())
            .collect();
        let logits = model::forward(&mcfg, &leaves, model::ids_tensor(&inputs, b, t, &ad));
        let loss = model::cross_entropy(logits, model::ids_tensor(&targets, b, t, &ad));
        let grads = loss.backward();
        let loss_value = scalar(loss.inner());
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: loss_value,
            });
        }
        let grads: Vec<Tensor<2>> = leaves
            .iter()
            .zip(&params)
            .map(|(leaf, p)| leaf.grad(&grads).unwrap_or_else(|| p.zeros_like()))
            .collect();
        let sq: Vec<Tensor<1>> = grads.iter().map(|g| g.clone().square().sum()).collect();
        let grad_norm = scalar(Tensor::cat(sq, 0).sum()).sqrt();
        let clip = if f64::from(grad_norm) > cfg.grad_clip {
            cfg.grad_clip / f64::from(grad_norm)
        } else {
            1.0
        };
        let grads: Vec<Tensor<2>> = if clip < 1.0 {
            grads.into_iter().map(|g| g.mul_scalar(clip)).collect()
        } else {
            grads
        };
        let lr = cfg.lr_at(step);
        opt.step(cfg, lr, &mut params, grads);
        let eval =
            if cfg.eval_every > 0 && ((step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps) {
                Some(evaluate_on_device(
                    &mcfg,
                    &params,
                    &tok,
                    VALIDATION_SEED,
                    VALIDATION_COUNT,
                )?)
            } else {
                None
            };
        let rec = StepLog {
            step,
            loss: loss_value,
            lr,
            grad_norm,
            seconds: t1.elapsed().as_secs_f64(),
            eval,
        };
        on_step(&rec);
        log.push(rec);
    }
    let train_seconds = t1.elapsed().as_secs_f64();
    Ok(Trained {
        config: cfg.clone(),
        tokenizer: tok,
        params: model::download(&params)?,
        log,
        tokenizer_seconds,
        train_seconds,
    })
}

/// Held-out next-number accuracy (and mean probability of the right number) of host
/// parameters, with this crate's own forward pass.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Eval {
    pub n: usize,
    pub top1: f64,
    pub mean_prob: f64,
    /// P("3") on "1. Get some apples.\n2. Get some oranges.\n".
    pub p_three_example: f64,
}

/// The example prompt of the model card.
pub const EXAMPLE_PROMPT: &str = "1. Get some apples.\n2. Get some oranges.\n";

/// Probabilities of the next token after each prompt (ids, BOS included), computed in one
/// right-padded batch (causal attention: padding after a prompt cannot affect it).
fn next_token_probs(
    cfg: &GptConfig,
    params: &[Tensor<2>],
    prompts: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    let dev = params
        .first()
        .map(Tensor::device)
        .ok_or_else(|| TrainError::Config("no parameters".into()))?;
    let b = prompts.len();
    let t = prompts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    if t > cfg.n_ctx {
        return Err(TrainError::Config(format!(
            "prompt of {t} tokens > n_ctx {}",
            cfg.n_ctx
        )));
    }
    let mut ids = vec![BOS_ID; b * t];
    for (i, p) in prompts.iter().enumerate() {
        ids[i * t..i * t + p.len()].copy_from_slice(p);
    }
    let logits = model::forward(cfg, params, model::ids_tensor(&ids, b, t, &dev));
    let last: Vec<i64> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i * t + p.len().max(1) - 1) as i64)
        .collect();
    let rows =
        Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(last, [b]), &dev);
    let probs = burn::tensor::activation::softmax(logits.select(0, rows), 1);
    let v = cfg.vocab_size;
    let flat = probs
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| TrainError::Config(format!("reading probabilities: {e:?}")))?;
    Ok(flat.chunks(v).map(<[f32]>::to_vec).collect())
}

/// Evaluate host parameters on `count` held-out prompts (seeded) and the example prompt.
pub fn evaluate(
    cfg: &GptConfig,
    host: &[Vec<f32>],
    tok: &Tokenizer,
    seed: u64,
    count: usize,
) -> Result<Eval> {
    let params = model::upload(cfg, host, &Device::flex());
    evaluate_on_device(cfg, &params, tok, seed, count)
}

fn evaluate_on_device(
    cfg: &GptConfig,
    params: &[Tensor<2>],
    tok: &Tokenizer,
    seed: u64,
    count: usize,
) -> Result<Eval> {
    let prompts = held_out_prompts(seed, count);
    let encode_bos = |text: &str| -> Result<Vec<u32>> {
        let mut ids = vec![BOS_ID];
        ids.extend(tokenizer::encode(tok, text)?);
        Ok(ids)
    };
    let single = |text: &str| -> Result<usize> {
        match tokenizer::encode(tok, text)?.as_slice() {
            [id] => Ok(*id as usize),
            other => Err(TrainError::Tokenizer(format!(
                "{text:?} is not one token: {other:?}"
            ))),
        }
    };
    let mut batch: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| encode_bos(&p.text))
        .collect::<Result<_>>()?;
    batch.push(encode_bos(EXAMPLE_PROMPT)?);
    let probs = next_token_probs(cfg, params, &batch)?;
    let (mut hits, mut psum) = (0usize, 0f64);
    for (p, pr) in prompts.iter().zip(&probs) {
        let answer = single(&p.answer)?;
        let best = pr
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        hits += usize::from(best == answer);
        psum += f64::from(pr[answer]);
    }
    let n = prompts.len().max(1) as f64;
    let three = single("3")?;
    let example = probs.last().map_or(0.0, |pr| pr[three]);
    Ok(Eval {
        n: prompts.len(),
        top1: hits as f64 / n,
        mean_prob: psum / n,
        p_three_example: f64::from(example),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = TrainConfig {
            steps: 1000,
            warmup: 100,
            lr: 1e-3,
            ..TrainConfig::default()
        };
        assert!(cfg.lr_at(0) < cfg.lr_at(50));
        assert!((cfg.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!(cfg.lr_at(500) < 1e-3);
        assert!((cfg.lr_at(999) - 1e-4).abs() < 1e-5);
    }

    #[test]
    fn a_few_steps_reduce_the_loss() {
        let cfg = TrainConfig {
            model: GptConfig {
                n_layer: 1,
                n_head: 2,
                d_model: 32,
                n_ctx: 32,
                vocab_size: 300,
            },
            tokenizer_docs: 2000,
            steps: 30,
            batch: 4,
            lr: 3e-3,
            warmup: 5,
            eval_every: 0,
            ..TrainConfig::default()
        };
        let out = train(&cfg, &mut |_| {}).expect("train");
        let first = out.log[0].loss;
        let last = out.log[cfg.steps - 1].loss;
        assert!(last < first - 1.0, "{first} -> {last}");
        assert_eq!(out.params.len(), cfg.model.specs().len());
    }
}

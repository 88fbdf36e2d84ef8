//! `rdla-train`: train the default model and write it as a Hugging Face GPT-2 folder.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use rdla_train::{GptConfig, HELD_OUT_COUNT, HELD_OUT_SEED, TrainConfig, export, plot, train};

#[derive(Debug, Parser)]
#[command(
    name = "rdla-train",
    about = "Train rdla's small default model (GPT-2 architecture) on synthetic lists, on the CPU"
)]
struct Args {
    /// Output folder (config.json, model.safetensors, tokenizer.json, …).
    #[arg(long, default_value = "assets/default-model")]
    out: PathBuf,
    /// Loss-curve PNG.
    #[arg(long, default_value = "assets/loss-curve.png")]
    plot: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = TrainConfig::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TrainConfig::default().warmup)]
    warmup: usize,
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = TrainConfig::default().model.n_layer)]
    layers: usize,
    #[arg(long, default_value_t = TrainConfig::default().model.n_head)]
    heads: usize,
    #[arg(long, default_value_t = TrainConfig::default().model.d_model)]
    d_model: usize,
    #[arg(long, default_value_t = TrainConfig::default().model.n_ctx)]
    ctx: usize,
    #[arg(long, default_value_t = TrainConfig::default().model.vocab_size)]
    vocab: usize,
    #[arg(long, default_value_t = TrainConfig::default().tokenizer_docs)]
    tokenizer_docs: usize,
    /// Evaluate on 100 validation prompts every this many steps (0 = never).
    #[arg(long, default_value_t = TrainConfig::default().eval_every)]
    eval_every: usize,
    /// Also write the per-step log (step, loss, lr, grad norm, seconds, validation top-1) as CSV.
    #[arg(long)]
    log_csv: Option<PathBuf>,
    /// Print the loss every this many steps.
    #[arg(long, default_value_t = 25)]
    log_every: usize,
}

/// The training run, start to finish (data, model, optimiser, loop, export, plot, record);
/// long because it is a script: each step runs once, in order, and reads best in one place.
fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let defaults = TrainConfig::default();
    let cfg = TrainConfig {
        seed: a.seed,
        model: GptConfig {
            n_layer: a.layers,
            n_head: a.heads,
            d_model: a.d_model,
            n_ctx: a.ctx,
            vocab_size: a.vocab,
        },
        tokenizer_docs: a.tokenizer_docs,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup.min(a.steps.max(1)),
        weight_decay: a.weight_decay,
        eval_every: a.eval_every,
        ..defaults
    };
    cfg.model.validate()?;
    eprintln!(
        "rdla-train: {} layers, {} heads, d_model {}, ctx {}, vocab {} ({} parameters); {} steps of {}×{} tokens, seed {}",
        cfg.model.n_layer,
        cfg.model.n_head,
        cfg.model.d_model,
        cfg.model.n_ctx,
        cfg.model.vocab_size,
        cfg.model.n_params(),
        cfg.steps,
        cfg.batch,
        cfg.model.n_ctx,
        cfg.seed
    );
    let start = Instant::now();
    let every = a.log_every.max(1);
    let mut window = Vec::new();
    let trained = train(&cfg, &mut |s| {
        window.push(s.loss);
        if (s.step + 1) % every == 0 || s.step == 0 {
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            eprintln!(
                "step {:>5}  loss {:.4}  (mean of last {}: {:.4})  lr {:.2e}  |g| {:.3}  {:.0}s",
                s.step + 1,
                s.loss,
                window.len(),
                mean,
                s.lr,
                s.grad_norm,
                s.seconds
            );
            window.clear();
        }
        if let Some(e) = s.eval {
            eprintln!(
                "  validation: top-1 {:.1}%  mean p {:.3}  P(\"3\" | example) {:.3}",
                100.0 * e.top1,
                e.mean_prob,
                e.p_three_example
            );
        }
    })?;
    let eval = rdla_train::evaluate(
        &cfg.model,
        &trained.params,
        &trained.tokenizer,
        HELD_OUT_SEED,
        HELD_OUT_COUNT,
    )?;
    let total = start.elapsed().as_secs_f64();
    let tail = trained.log.len().min(50);
    let final_loss = trained.log[trained.log.len() - tail..]
        .iter()
        .map(|s| f64::from(s.loss))
        .sum::<f64>()
        / tail.max(1) as f64;
    eprintln!(
        "done in {total:.0}s (tokenizer {:.1}s, training {:.0}s); final loss (mean of last {tail} steps) {final_loss:.4}",
        trained.tokenizer_seconds, trained.train_seconds
    );
    eprintln!(
        "held-out next-number top-1 {:.1}% (mean p {:.3}) on {} prompts; P(\"3\" | example) = {:.3}",
        100.0 * eval.top1,
        eval.mean_prob,
        eval.n,
        eval.p_three_example
    );

    export::save(&a.out, &cfg.model, &trained.params, &trained.tokenizer)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let record = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "config": cfg,
        "n_params": cfg.model.n_params(),
        "final_loss_mean_last_50": final_loss,
        "held_out": eval,
        "seconds": { "total": total, "tokenizer": trained.tokenizer_seconds, "training": trained.train_seconds },
        "threads": std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1),
    });
    let record_path = a.out.join("training.json");
    std::fs::write(&record_path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing {}", record_path.display()))?;
    if let Some(path) = &a.log_csv {
        let mut csv = String::from("step,loss,lr,grad_norm,seconds,validation_top1\n");
        for s in &trained.log {
            let val = s.eval.map(|e| e.top1.to_string()).unwrap_or_default();
            csv.push_str(&format!(
                "{},{},{},{},{:.3},{val}\n",
                s.step + 1,
                s.loss,
                s.lr,
                s.grad_norm,
                s.seconds
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let losses: Vec<f32> = trained.log.iter().map(|s| s.loss).collect();
    let accuracy: Vec<(usize, f64)> = trained
        .log
        .iter()
        .filter_map(|s| s.eval.map(|e| (s.step, e.top1)))
        .collect();
    plot::save_loss_curve(
        &a.plot,
        &losses,
        &accuracy,
        "rdla default model: training loss",
        &format!(
            "{} layers, d_model {}, {} heads, vocab {}; batch {}×{}, seed {}, {:.0} s on the CPU",
            cfg.model.n_layer,
            cfg.model.d_model,
            cfg.model.n_head,
            cfg.model.vocab_size,
            cfg.batch,
            cfg.model.n_ctx,
            cfg.seed,
            trained.train_seconds
        ),
    )
    .with_context(|| format!("writing {}", a.plot.display()))?;
    eprintln!("wrote {} and {}", a.out.display(), a.plot.display());
    Ok(())
}

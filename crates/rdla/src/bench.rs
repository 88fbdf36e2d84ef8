//! `rdla bench`: generate a GPT-2-small-shaped random checkpoint (not committed) and time
//! load, forward, the overview and a depth-2 drill-down at several prompt lengths.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rdla_attrib::{Engine, MlpMode, Path, Target};
use rdla_model::device::DeviceChoice;
use rdla_model::{Model, Processing, select_device, to_vec};

/// A tokenizer to ship with the generated checkpoint (the ids are what is benchmarked).
static TOKENIZER_JSON: &str = include_str!("../../../tests/fixtures/gpt2_tied/tokenizer.json");

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Prompt lengths (tokens, BOS included).
    #[arg(long, value_delimiter = ',', default_value = "16,128,512")]
    pub lengths: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Where to generate the checkpoint (a temporary folder by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Shape: n_layer,n_head,n_embd,vocab.
    #[arg(long, default_value = "12,12,768,50257")]
    pub shape: String,
}

/// xorshift64* + Box–Muller: deterministic normal samples without a dependency.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.next_f64().max(1e-300), self.next_f64());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Write a random GPT-2 checkpoint (every parameter random, LN and biases included).
pub fn generate_gpt2(
    dir: &FsPath,
    n_layer: usize,
    n_head: usize,
    d: usize,
    vocab: usize,
    n_ctx: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(0x5EED_0000_0000_0001);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, mean: f32, std: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| mean + std * rng.normal()).collect();
        tensors.push((name, shape, data));
    };
    let w = 0.02;
    add(
        "transformer.wte.weight".into(),
        vec![vocab, d],
        0.0,
        w,
        &mut rng,
    );
    add(
        "transformer.wpe.weight".into(),
        vec![n_ctx, d],
        0.0,
        0.01,
        &mut rng,
    );
    for l in 0..n_layer {
        let p = format!("transformer.h.{l}");
        add(format!("{p}.ln_1.weight"), vec![d], 1.0, 0.1, &mut rng);
        add(format!("{p}.ln_1.bias"), vec![d], 0.0, 0.1, &mut rng);
        add(
            format!("{p}.attn.c_attn.weight"),
            vec![d, 3 * d],
            0.0,
            w,
            &mut rng,
        );
        add(
            format!("{p}.attn.c_attn.bias"),
            vec![3 * d],
            0.0,
            0.1,
            &mut rng,
        );
        add(
            format!("{p}.attn.c_proj.weight"),
            vec![d, d],
            0.0,
            w,
            &mut rng,
        );
        add(format!("{p}.attn.c_proj.bias"), vec![d], 0.0, 0.1, &mut rng);
        add(format!("{p}.ln_2.weight"), vec![d], 1.0, 0.1, &mut rng);
        add(format!("{p}.ln_2.bias"), vec![d], 0.0, 0.1, &mut rng);
        add(
            format!("{p}.mlp.c_fc.weight"),
            vec![d, 4 * d],
            0.0,
            w,
            &mut rng,
        );
        add(
            format!("{p}.mlp.c_fc.bias"),
            vec![4 * d],
            0.0,
            0.1,
            &mut rng,
        );
        add(
            format!("{p}.mlp.c_proj.weight"),
            vec![4 * d, d],
            0.0,
            w,
            &mut rng,
        );
        add(format!("{p}.mlp.c_proj.bias"), vec![d], 0.0, 0.1, &mut rng);
    }
    add(
        "transformer.ln_f.weight".into(),
        vec![d],
        1.0,
        0.1,
        &mut rng,
    );
    add("transformer.ln_f.bias".into(), vec![d], 0.0, 0.1, &mut rng);
    let bytes: HashMap<String, Vec<u8>> = tensors
        .iter()
        .map(|(k, _, v)| (k.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = tensors
        .iter()
        .map(|(k, s, _)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), &bytes[k])
                .map(|v| (k.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_layer": n_layer, "n_head": n_head, "n_embd": d, "n_positions": n_ctx, "n_ctx": n_ctx,
        "vocab_size": vocab, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": true, "torch_dtype": "float32"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER_JSON)?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms<T>(reps: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    f()?; // warm-up
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(v))
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let shape: Vec<usize> = a
        .shape
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--shape must be n_layer,n_head,n_embd,vocab")?;
    let [n_layer, n_head, d, vocab] = shape[..] else {
        anyhow::bail!("--shape must have 4 numbers");
    };
    let n_ctx = a.lengths.iter().copied().max().unwrap_or(16).max(1024);
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("rdla-bench-{}", std::process::id()));
            tmp
        }
    };
    let t = Instant::now();
    generate_gpt2(&dir, n_layer, n_head, d, vocab, n_ctx)?;
    eprintln!(
        "generated {} in {:.1}s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );

    let (device, info) = select_device(a.device)?;
    let t = Instant::now();
    let model = Model::load(&dir, &device, Processing::default(), &mut |_| true)?;
    let _ = to_vec(model.weights.b_u.clone())?;
    let load = t.elapsed().as_secs_f64() * 1e3;
    println!("# rdla bench: GPT-2 shape {n_layer}L {n_head}H d{d} V{vocab} on {info}");
    println!("load + processing: {load:.0} ms");
    println!("| tokens | forward (ms) | overview (ms) | depth-2 drill-down (ms) |");
    println!("|---:|---:|---:|---:|");
    let mut rng = Rng(42);
    for &p in &a.lengths {
        let ids: Vec<u32> = std::iter::once(0)
            .chain((1..p).map(|_| 1 + (rng.next_f64() * (vocab - 1) as f64) as u32))
            .collect();
        let fwd = time_ms(a.reps, || {
            let c = model.run(&ids)?;
            to_vec(c.last_logits)?;
            Ok(())
        })?;
        let cache = model.run(&ids)?;
        let engine = Engine::new(
            &model,
            &cache,
            Target::Logit { answer: 1 },
            MlpMode::FrozenGate,
        )?;
        let ov = time_ms(a.reps, || Ok(engine.overview()?))?;
        let path = Path::parse(&format!(
            "L{}.attn/H0/{}:L{}.attn",
            n_layer - 1,
            p.saturating_sub(2),
            n_layer / 2
        ))?;
        let drill = time_ms(a.reps, || Ok(engine.expand(&path)?))?;
        println!("| {p} | {fwd:.1} | {ov:.1} | {drill:.2} |");
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

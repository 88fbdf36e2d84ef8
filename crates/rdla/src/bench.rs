//! `rdla bench`: generate a random checkpoint of a given shape (GPT-2, GPT-Neo or Llama;
//! never committed) and time opening, the first forward pass (which reads a model's blocks), the cached forward pass, the overview and a
//! depth-2 drill-down at several prompt lengths. `bench/compare.sh` runs it side by side
//! with TransformerLens on the same folder (`--dir`, `--generate-only`, `--existing`).

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rdla_attrib::{Engine, MlpMode, Path, Target};
use rdla_model::device::DeviceChoice;
use rdla_model::{Model, Processing, select_device, to_vec};

/// A tokenizer to ship with the generated checkpoint (the ids are what is benchmarked): the
/// embedded default model's, already in the binary.
fn tokenizer_json() -> &'static [u8] {
    rdla_model::default_model::FILES
        .iter()
        .find(|(name, _)| *name == "tokenizer.json")
        .map_or(&[][..], |(_, bytes)| bytes)
}

/// Which architecture to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchArch {
    /// `GPT2LMHeadModel` (default shape: GPT-2 small, 12,12,768,50257).
    Gpt2,
    /// `GPTNeoForCausalLM`, alternating global/local attention, tied embeddings
    /// (default shape: TinyStories-Instruct-1M, 8,16,64,50257).
    GptNeo,
    /// `LlamaForCausalLM` in bf16 (default shape: Llama-3.2-1B, 16,32,2048,128256 with 8
    /// key/value heads, d_mlp 8192, tied embeddings, llama3 rope scaling).
    Llama,
    /// `Gemma2ForCausalLM` in bf16 (default shape: Gemma-2-2B, 26,8,2304,256000 with 4
    /// key/value heads, head_dim 256, d_mlp 9216, post-norms, soft-caps, alternating local
    /// and global layers, tied embeddings).
    Gemma2,
}

/// A released model's shape, generated in bf16 with random weights (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPreset {
    /// Llama-3.1-8B: 32 layers, d 4096, 32 heads / 8 key-value heads, d_mlp 14,336,
    /// vocabulary 128,256, untied, llama3 rope scaling (16.1 GB).
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Qwen3-8B: 36 layers, d 4096, 32 / 8 heads of 128, d_mlp 12,288, vocabulary 151,936,
    /// q/k norms, untied (16.4 GB).
    #[value(name = "qwen3-8b")]
    Qwen3_8b,
    /// Llama-3.1-70B: 80 layers, d 8192, 64 / 8 heads, d_mlp 28,672, vocabulary 128,256,
    /// untied (141 GB).
    #[value(name = "llama3-70b")]
    Llama3_70b,
}

/// How a preset is written (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchFormat {
    /// bf16 safetensors with `config.json` and a tokenizer (a Hugging Face folder).
    #[default]
    Safetensors,
    /// One GGUF file in llama.cpp's Q4_K_M mix (Q4_K; Q6_K for the output and for `attn_v` /
    /// `ffn_down` in every other layer), random quantised blocks.
    #[value(name = "gguf-q4km")]
    GgufQ4km,
}

impl BenchPreset {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3_8b => "llama3-8b",
            Self::Qwen3_8b => "qwen3-8b",
            Self::Llama3_70b => "llama3-70b",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Architecture of the generated checkpoint.
    #[arg(long, value_enum, default_value = "gpt2")]
    pub arch: BenchArch,
    /// Generate a released model's shape instead (bf16 safetensors, written one tensor at a
    /// time: give --dir on a disk with room, and --generate-only to keep it for
    /// `--existing --max-memory` runs).
    #[arg(long, value_enum, conflicts_with_all = ["shape", "kv_heads"])]
    pub preset: Option<BenchPreset>,
    /// How the preset is written: bf16 safetensors, or a Q4_K_M GGUF file (llama3-8b 4.9 GB,
    /// qwen3-8b 5.0 GB, llama3-70b 42.5 GB).
    #[arg(long, value_enum, default_value = "safetensors", requires = "preset")]
    pub format: BenchFormat,
    /// Shape: n_layer,n_head,n_embd,vocab (default: GPT-2 small, or TinyStories-1M for gpt-neo).
    #[arg(long)]
    pub shape: Option<String>,
    /// GPT-Neo local attention window.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Llama / Gemma 2 key/value heads (grouped-query attention; default 8 for Llama, 4 for
    /// Gemma 2).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Prompt lengths (tokens, BOS included).
    #[arg(long, value_delimiter = ',', default_value = "16,128,512")]
    pub lengths: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported, after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Timed loads (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub load_reps: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Where to generate the checkpoint (a temporary folder, removed afterwards, by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only write the checkpoint to --dir and exit.
    #[arg(long, requires = "dir")]
    pub generate_only: bool,
    /// Benchmark the checkpoint already in --dir instead of generating one.
    #[arg(long, requires = "dir", conflicts_with = "generate_only")]
    pub existing: bool,
    /// Node expansions in the timed trace (0: no trace).
    #[arg(long, default_value_t = 2000)]
    pub trace_budget: usize,
    /// Target token id (the answer whose logit is attributed).
    #[arg(long, default_value_t = 1)]
    pub answer_id: u32,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw the process's peak RSS against the prompt length as a PNG (needs two or more
    /// lengths; Linux).
    #[arg(long, value_name = "FILE")]
    pub rss_plot: Option<PathBuf>,
    #[command(flatten)]
    pub memory: crate::common::MemoryArgs,
}

/// xorshift64* + Box–Muller: deterministic random bits and normal samples without a
/// dependency.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// `out` filled with random bytes.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let b = self.next_u64().to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
    pub(crate) fn normal(&mut self) -> f32 {
        let (u, v) = (self.next_f64().max(1e-300), self.next_f64());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// `f32` → `bf16` bits, rounding to nearest even (as `torch.Tensor.bfloat16()`).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// Random tensors, written as one `model.safetensors` (f32, or bf16). Each tensor is
/// generated when the file is written, one at a time (an 8B checkpoint is 16 GB in bf16 and
/// never held), from its own seed split over the cores.
struct Writer {
    bf16: bool,
    tensors: Vec<Spec>,
}

/// One random tensor: entries `mean + std·N(0,1)` from `seed`.
struct Spec {
    name: String,
    shape: Vec<usize>,
    mean: f32,
    std: f32,
    seed: u64,
    bf16: bool,
}

impl Spec {
    fn width(&self) -> usize {
        if self.bf16 { 2 } else { 4 }
    }

    fn generate(&self) -> Vec<u8> {
        // chunks of a fixed number of elements, each from its own generator, so the values
        // do not depend on how many cores share the work
        const CHUNK: usize = 1 << 16;
        let w = self.width();
        let n: usize = self.shape.iter().product();
        let mut out = vec![0u8; n * w];
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let per = n.div_ceil(CHUNK).div_ceil(threads).max(1) * CHUNK * w;
        std::thread::scope(|scope| {
            for (t, part) in out.chunks_mut(per).enumerate() {
                scope.spawn(move || {
                    for (c, chunk) in part.chunks_mut(CHUNK * w).enumerate() {
                        let index = (t * per / (CHUNK * w) + c) as u64;
                        let mut rng = Rng((self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                            .wrapping_add(1)
                            | 1);
                        for x in chunk.chunks_exact_mut(w) {
                            let v = self.mean + self.std * rng.normal();
                            if self.bf16 {
                                x.copy_from_slice(&bf16_bits(v).to_le_bytes());
                            } else {
                                x.copy_from_slice(&v.to_le_bytes());
                            }
                        }
                    }
                });
            }
        });
        out
    }
}

impl safetensors::View for &Spec {
    fn dtype(&self) -> safetensors::Dtype {
        if self.bf16 {
            safetensors::Dtype::BF16
        } else {
            safetensors::Dtype::F32
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.generate())
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.width()
    }
}

impl Writer {
    fn new() -> Self {
        Self {
            bf16: false,
            tensors: Vec::new(),
        }
    }

    /// A tensor with entries `mean + std·N(0,1)`.
    fn add(&mut self, name: impl Into<String>, shape: &[usize], mean: f32, std: f32) {
        let seed = 0x5EED_0000_0000_0001u64
            .wrapping_add((self.tensors.len() as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        self.tensors.push(Spec {
            name: name.into(),
            shape: shape.to_vec(),
            mean,
            std,
            seed,
            bf16: self.bf16,
        });
    }

    /// LayerNorm weight ~ 1 ± 0.1 and bias ~ ±0.1 (every parameter random).
    fn layer_norm(&mut self, prefix: &str, d: usize) {
        self.add(format!("{prefix}.weight"), &[d], 1.0, 0.1);
        self.add(format!("{prefix}.bias"), &[d], 0.0, 0.1);
    }

    fn write(
        self,
        dir: &FsPath,
        config: &serde_json::Value,
        extra: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join("model.safetensors");
        let written = safetensors::serialize_to_file(
            self.tensors.iter().map(|t| (t.name.clone(), t)),
            Some(extra),
            &file,
        );
        if let Err(e) = written {
            // a partial checkpoint (a full disk) is not left behind as if it were one
            let _ = std::fs::remove_file(&file);
            return Err(e).with_context(|| format!("writing {}", file.display()));
        }
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(config)?,
        )?;
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json())?;
        Ok(())
    }
}

fn format_pt() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
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
    let mut w = Writer::new();
    let s = 0.02;
    w.add("transformer.wte.weight", &[vocab, d], 0.0, s);
    w.add("transformer.wpe.weight", &[n_ctx, d], 0.0, 0.01);
    for l in 0..n_layer {
        let p = format!("transformer.h.{l}");
        w.layer_norm(&format!("{p}.ln_1"), d);
        w.add(format!("{p}.attn.c_attn.weight"), &[d, 3 * d], 0.0, s);
        w.add(format!("{p}.attn.c_attn.bias"), &[3 * d], 0.0, 0.1);
        w.add(format!("{p}.attn.c_proj.weight"), &[d, d], 0.0, s);
        w.add(format!("{p}.attn.c_proj.bias"), &[d], 0.0, 0.1);
        w.layer_norm(&format!("{p}.ln_2"), d);
        w.add(format!("{p}.mlp.c_fc.weight"), &[d, 4 * d], 0.0, s);
        w.add(format!("{p}.mlp.c_fc.bias"), &[4 * d], 0.0, 0.1);
        w.add(format!("{p}.mlp.c_proj.weight"), &[4 * d, d], 0.0, s);
        w.add(format!("{p}.mlp.c_proj.bias"), &[d], 0.0, 0.1);
    }
    w.layer_norm("transformer.ln_f", d);
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_layer": n_layer, "n_head": n_head, "n_embd": d, "n_positions": n_ctx, "n_ctx": n_ctx,
        "vocab_size": vocab, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": true, "torch_dtype": "float32"
    });
    w.write(dir, &config, format_pt())
}

/// Write a random GPT-Neo checkpoint shaped like `roneneldan/TinyStories-Instruct-1M`:
/// separate q/k/v without bias, layers alternating global/local (`window`), tied embeddings.
pub fn generate_gpt_neo(
    dir: &FsPath,
    n_layer: usize,
    n_head: usize,
    d: usize,
    vocab: usize,
    n_ctx: usize,
    window: usize,
) -> anyhow::Result<()> {
    let mut w = Writer::new();
    // GPT-Neo does not scale q·k by 1/sqrt(d_head): keep q/k small so patterns stay soft.
    let s = 0.02;
    let qk = 0.5 / (d as f32).sqrt();
    w.add("transformer.wte.weight", &[vocab, d], 0.0, s);
    w.add("transformer.wpe.weight", &[n_ctx, d], 0.0, 0.01);
    for l in 0..n_layer {
        let p = format!("transformer.h.{l}");
        let a = format!("{p}.attn.attention");
        w.layer_norm(&format!("{p}.ln_1"), d);
        w.add(format!("{a}.q_proj.weight"), &[d, d], 0.0, qk);
        w.add(format!("{a}.k_proj.weight"), &[d, d], 0.0, qk);
        w.add(
            format!("{a}.v_proj.weight"),
            &[d, d],
            0.0,
            1.0 / (d as f32).sqrt(),
        );
        w.add(
            format!("{a}.out_proj.weight"),
            &[d, d],
            0.0,
            1.0 / (d as f32).sqrt(),
        );
        w.add(format!("{a}.out_proj.bias"), &[d], 0.0, 0.1);
        w.layer_norm(&format!("{p}.ln_2"), d);
        w.add(
            format!("{p}.mlp.c_fc.weight"),
            &[4 * d, d],
            0.0,
            1.0 / (d as f32).sqrt(),
        );
        w.add(format!("{p}.mlp.c_fc.bias"), &[4 * d], 0.0, 0.1);
        w.add(
            format!("{p}.mlp.c_proj.weight"),
            &[d, 4 * d],
            0.0,
            0.5 / (d as f32).sqrt(),
        );
        w.add(format!("{p}.mlp.c_proj.bias"), &[d], 0.0, 0.1);
    }
    w.layer_norm("transformer.ln_f", d);
    let layers: Vec<&str> = (0..n_layer)
        .map(|l| if l % 2 == 0 { "global" } else { "local" })
        .collect();
    let config = serde_json::json!({
        "model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"],
        "num_layers": n_layer, "num_heads": n_head, "hidden_size": d,
        "max_position_embeddings": n_ctx, "vocab_size": vocab, "window_size": window,
        "attention_types": [[["global", "local"], n_layer.div_ceil(2)]],
        "attention_layers": layers, "intermediate_size": null,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "attention_dropout": 0.0, "embed_dropout": 0.0, "resid_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": true, "torch_dtype": "float32"
    });
    w.write(dir, &config, format_pt())
}

/// Write a random Llama checkpoint in bf16 shaped like `meta-llama/Llama-3.2-1B`: RMSNorm,
/// grouped-query attention (`kv_heads`), SwiGLU with `d_mlp = 4·d`, tied embeddings,
/// `rope_theta` 500000 with llama3 scaling.
pub fn generate_llama(
    dir: &FsPath,
    n_layer: usize,
    n_head: usize,
    kv_heads: usize,
    d: usize,
    vocab: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        kv_heads > 0 && n_head.is_multiple_of(kv_heads),
        "--kv-heads must divide the number of heads"
    );
    let (dh, dm) = (d / n_head, 4 * d);
    let w = llama_layout(
        (n_layer, n_head, kv_heads, d, vocab),
        (dh, dm),
        &["post_attention_layernorm"],
        1.0,
    );
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": n_layer, "num_attention_heads": n_head,
        "num_key_value_heads": kv_heads, "hidden_size": d, "head_dim": dh,
        "intermediate_size": dm, "max_position_embeddings": 131072, "vocab_size": vocab,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": true,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16"
    });
    w.write(dir, &config, format_pt())
}

/// Write [`BenchPreset`]'s shape in bf16 with random weights (every norm weight random too),
/// with its `config.json` (Llama-3.1's llama3 rope scaling, Qwen3's q/k norms).
pub fn generate_preset(dir: &FsPath, preset: BenchPreset) -> anyhow::Result<()> {
    let s = crate::bench_gguf::LlamaShape::of(preset);
    let (l, h, kv, d, dm, v, qwen) = (
        s.layers, s.heads, s.kv_heads, s.d, s.d_mlp, s.vocab, s.qwen3,
    );
    let dh = s.head_dim;
    let mut w = llama_layout(
        (l, h, kv, d, v),
        (dh, dm),
        &["post_attention_layernorm"],
        1.0,
    );
    if qwen {
        for i in 0..l {
            for n in ["q_norm", "k_norm"] {
                w.add(
                    format!("model.layers.{i}.self_attn.{n}.weight"),
                    &[dh],
                    1.0,
                    0.1,
                );
            }
        }
    }
    w.add("lm_head.weight", &[v, d], 0.0, 0.02);
    let mut config = serde_json::json!({
        "num_hidden_layers": l, "num_attention_heads": h, "num_key_value_heads": kv,
        "hidden_size": d, "head_dim": dh, "intermediate_size": dm, "vocab_size": v,
        "hidden_act": "silu", "attention_bias": false, "tie_word_embeddings": false,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16"
    });
    let extra = if qwen {
        serde_json::json!({
            "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0
        })
    } else {
        serde_json::json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "mlp_bias": false,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        })
    };
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    w.write(dir, &config, format_pt())
}

/// The random bf16 tensors of a Llama-layout decoder (`model.*` keys; the Llama and Gemma 2
/// generators): the embedding; per layer the input norm, q/k/v/o projections, the `norms`
/// between attention and MLP, gate/up/down projections; the final norm. Norm weights are
/// `norm_mean ± 0.1` (1 for Llama's `w`, 0 for Gemma's zero-centred `1 + w`).
fn llama_layout(
    (n_layer, n_head, kv_heads, d, vocab): (usize, usize, usize, usize, usize),
    (dh, dm): (usize, usize),
    norms: &[&str],
    norm_mean: f32,
) -> Writer {
    let mut w = Writer::new();
    w.bf16 = true;
    let s = 1.0 / (d as f32).sqrt();
    w.add("model.embed_tokens.weight", &[vocab, d], 0.0, 0.02);
    for l in 0..n_layer {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        w.add(format!("{p}.input_layernorm.weight"), &[d], norm_mean, 0.1);
        w.add(format!("{a}.q_proj.weight"), &[n_head * dh, d], 0.0, s);
        w.add(format!("{a}.k_proj.weight"), &[kv_heads * dh, d], 0.0, s);
        w.add(format!("{a}.v_proj.weight"), &[kv_heads * dh, d], 0.0, s);
        w.add(format!("{a}.o_proj.weight"), &[d, n_head * dh], 0.0, s);
        for norm in norms {
            w.add(format!("{p}.{norm}.weight"), &[d], norm_mean, 0.1);
        }
        w.add(format!("{p}.mlp.gate_proj.weight"), &[dm, d], 0.0, s);
        w.add(format!("{p}.mlp.up_proj.weight"), &[dm, d], 0.0, s);
        w.add(
            format!("{p}.mlp.down_proj.weight"),
            &[d, dm],
            0.0,
            0.5 / (dm as f32).sqrt(),
        );
    }
    w.add("model.norm.weight", &[d], norm_mean, 0.1);
    w
}

/// Write a random Gemma 2 checkpoint in bf16 (every parameter random, the zero-centred norm
/// weights included): head_dim 256, `d_mlp = 4·d`, sandwich norms, GeGLU, soft-caps 50 / 30,
/// sliding window 4096 on every other layer, tied embeddings — Gemma-2-2B's layout.
pub fn generate_gemma2(
    dir: &FsPath,
    n_layer: usize,
    n_head: usize,
    kv_heads: usize,
    d: usize,
    vocab: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        kv_heads > 0 && n_head.is_multiple_of(kv_heads),
        "--kv-heads must divide the number of heads"
    );
    let (dh, dm) = (256, 4 * d);
    let w = llama_layout(
        (n_layer, n_head, kv_heads, d, vocab),
        (dh, dm),
        &[
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ],
        0.0,
    );
    let config = serde_json::json!({
        "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"],
        "num_hidden_layers": n_layer, "num_attention_heads": n_head,
        "num_key_value_heads": kv_heads, "hidden_size": d, "head_dim": dh,
        "intermediate_size": dm, "max_position_embeddings": 8192, "vocab_size": vocab,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "attention_bias": false, "tie_word_embeddings": true,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16"
    });
    w.write(dir, &config, format_pt())
}

/// The source component of the timed depth-2 drill-down: an attention layer halfway up,
/// upstream of the last layer (for 1 layer, the embedding).
fn drill_source(n_layer: usize) -> String {
    match n_layer {
        0 | 1 => "embed".into(),
        2 => "L0.attn".into(),
        n => format!("L{}.attn", n / 2),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median and minimum wall time in ms over `reps` runs after one warm-up.
fn time_ms<T>(reps: usize, f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, f64)> {
    time_cold_ms(reps, f).map(|(med, min, _)| (med, min))
}

/// [`time_ms`], and the warm-up's own time (a streaming model reads its layers then).
fn time_cold_ms<T>(
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(f64, f64, f64)> {
    let t = Instant::now();
    f()?; // warm-up
    let cold = t.elapsed().as_secs_f64() * 1e3;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((median(v), min, cold))
}

/// Peak resident set size of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn parse_shape(a: &BenchArgs) -> anyhow::Result<[usize; 4]> {
    let text = a.shape.clone().unwrap_or_else(|| {
        match a.arch {
            BenchArch::Gpt2 => "12,12,768,50257",
            BenchArch::GptNeo => "8,16,64,50257",
            BenchArch::Llama => "16,32,2048,128256",
            BenchArch::Gemma2 => "26,8,2304,256000",
        }
        .to_string()
    });
    let shape: Vec<usize> = text
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--shape must be n_layer,n_head,n_embd,vocab")?;
    let [n_layer, n_head, d, vocab] = shape[..] else {
        anyhow::bail!("--shape must have 4 numbers");
    };
    anyhow::ensure!(
        n_layer > 0 && n_head > 0 && d % n_head == 0 && vocab > 1,
        "--shape: need n_layer > 0, n_embd divisible by n_head, vocab > 1"
    );
    Ok([n_layer, n_head, d, vocab])
}

/// The context a generated checkpoint gets for prompts of up to `max_len` tokens.
fn generated_context(arch: BenchArch, max_len: usize) -> usize {
    match arch {
        BenchArch::Gpt2 => max_len.max(1024),
        BenchArch::GptNeo => max_len.max(2048),
        BenchArch::Llama => 131_072,
        BenchArch::Gemma2 => 8192,
    }
}

/// Bytes held while generating a checkpoint and then loading it (its tensors as written,
/// then as `f32` in the model), in u128 so absurd shapes cannot overflow.
fn generated_bytes(arch: BenchArch, shape: [usize; 4], kv: usize, n_ctx: usize) -> u128 {
    let [l, h, d, v] = shape.map(|x| x as u128);
    let kv = kv as u128;
    let (dh, kv, gated, learned_pos, stored) = match arch {
        BenchArch::Gpt2 => (d / h, h, false, true, 4),
        BenchArch::GptNeo => (d / h, h, false, true, 4),
        BenchArch::Llama => (d / h, kv, true, false, 2),
        BenchArch::Gemma2 => (256, kv, true, false, 2),
    };
    let attn = 2 * d * h * dh + 2 * d * kv * dh;
    let mlp = if gated { 3 } else { 2 } * d * 4 * d;
    let pos = if learned_pos { n_ctx as u128 * d } else { 0 };
    let params = 2 * v * d + pos + l * (attn + mlp + 8 * d);
    params * (stored + 4)
}

/// The key/value heads of a generated checkpoint: `--kv-heads`, else Llama-3.2-1B's 8 or
/// Gemma-2-2B's 4 (GPT-2 and GPT-Neo have as many as query heads and ignore it).
fn kv_heads(a: &BenchArgs) -> usize {
    a.kv_heads.unwrap_or(match a.arch {
        BenchArch::Gemma2 => 4,
        _ => 8,
    })
}

/// Refuse what cannot run before anything is generated or allocated.
fn validate(a: &BenchArgs, shape: [usize; 4]) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.lengths.is_empty() && a.lengths.iter().all(|&p| p >= 1),
        "--lengths: every prompt length must be at least 1 token"
    );
    let max_len = a.lengths.iter().copied().max().unwrap_or(1);
    let n_ctx = generated_context(a.arch, max_len);
    anyhow::ensure!(
        max_len <= n_ctx,
        "--lengths: {max_len} tokens is longer than the generated {:?} checkpoint's context ({n_ctx})",
        a.arch
    );
    if let Some(kv) = a.kv_heads {
        anyhow::ensure!(
            kv > 0 && shape[1].is_multiple_of(kv),
            "--kv-heads {kv}: the number of heads ({}) must be a multiple of it",
            shape[1]
        );
    }
    let kv = kv_heads(a);
    let needed = generated_bytes(a.arch, shape, kv.min(shape[1]), n_ctx);
    rdla_model::memory::check(
        || {
            format!(
                "--lengths up to {max_len} with --shape {}: generating and loading this checkpoint ({n_ctx} positions)",
                shape.map(|x| x.to_string()).join(",")
            )
        },
        u64::try_from(needed).unwrap_or(u64::MAX),
        rdla_model::memory::available_bytes(),
    )?;
    Ok(())
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    // A temporary folder is removed when this returns, on errors too.
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("rdla-bench-")
                .tempdir()
                .context("cannot create a temporary folder for the checkpoint")?;
            tmp.path().to_path_buf()
        }
    };
    if !a.existing {
        if a.preset.is_none() {
            validate(a, parse_shape(a)?)?;
        }
        if a.dir.is_some() {
            refuse_non_empty(&dir)?;
        }
        let t = Instant::now();
        generate(a, &dir)?;
        eprintln!(
            "generated {} in {:.1}s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
        if a.generate_only {
            return Ok(());
        }
    }
    bench_dir(a, &dir)
}

/// Write the checkpoint `a` asks for (a preset, or an architecture and shape) into `dir`.
fn generate(a: &BenchArgs, dir: &FsPath) -> anyhow::Result<()> {
    if let Some(preset) = a.preset {
        if a.format == BenchFormat::GgufQ4km {
            std::fs::create_dir_all(dir)?;
            let name = format!("{}-q4km", preset.name());
            let bytes = crate::bench_gguf::write_q4km(
                &dir.join(format!("{name}.gguf")),
                &crate::bench_gguf::LlamaShape::of(preset),
                &format!("{name} (random weights)"),
                0x5EED_6767_0000_0001,
            )?;
            eprintln!("{name}.gguf: {bytes} bytes");
            return Ok(());
        }
        return generate_preset(dir, preset);
    }
    let [n_layer, n_head, d, vocab] = parse_shape(a)?;
    let max_len = a.lengths.iter().copied().max().unwrap_or(16);
    let n_ctx = generated_context(a.arch, max_len);
    match a.arch {
        BenchArch::Gpt2 => generate_gpt2(dir, n_layer, n_head, d, vocab, n_ctx),
        BenchArch::GptNeo => generate_gpt_neo(dir, n_layer, n_head, d, vocab, n_ctx, a.window),
        BenchArch::Llama => generate_llama(dir, n_layer, n_head, kv_heads(a), d, vocab),
        BenchArch::Gemma2 => generate_gemma2(dir, n_layer, n_head, kv_heads(a), d, vocab),
    }
}

/// `--dir` must be new or empty: generating writes `config.json`, `model.safetensors` and
/// `tokenizer.json` there, and must never replace a model's files.
fn refuse_non_empty(dir: &FsPath) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => anyhow::ensure!(
            entries.next().is_none(),
            "--dir {}: the folder is not empty; rdla bench generates a new checkpoint there and never writes over files (give a new folder, or --existing to benchmark the checkpoint in it)",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            anyhow::bail!("--dir {}: not a folder", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("--dir {}", dir.display())),
    }
    Ok(())
}

fn bench_dir(a: &BenchArgs, dir: &FsPath) -> anyhow::Result<()> {
    a.memory.apply();
    let (device, info) = select_device(a.device)?;
    let mut loads = Vec::new();
    let mut model = None;
    for _ in 0..a.load_reps.max(1) {
        drop(model.take());
        let t = Instant::now();
        let m = Model::load(dir, &device, Processing::default(), &mut |_| true)?;
        let _ = to_vec(m.weights.b_u.clone())?;
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        model = Some(m);
    }
    let model = model.context("no model loaded")?;
    let rss_after_load = peak_rss_mib();
    let load = median(loads.clone());
    let load_min = loads.iter().copied().fold(f64::INFINITY, f64::min);
    let cfg = &model.config;
    let facts = rdla_session::ModelFacts::of(&model);
    let (n_layer, n_head, d, vocab) = (facts.n_layers, facts.n_heads, facts.d_model, facts.d_vocab);
    println!(
        "# rdla bench: {} {n_layer}L {n_head}H d{d} V{vocab} on {info}",
        facts.architecture
    );
    println!("open: {load:.0} ms");
    // a model that fits reads its blocks with its first forward pass: timed here, apart
    let first_forward = if model.streams_layers() {
        None
    } else {
        let t = Instant::now();
        to_vec(model.run(&[0])?.last_logits)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("first forward pass (reads and processes the blocks), 1 token: {ms:.0} ms");
        Some(ms)
    };
    println!("{}", facts.memory_line());
    println!(
        "| tokens | forward (ms) | overview (ms) | depth-2 drill-down (ms) | qk node (ms) | MLP + neurons (ms) | trace (ms) | peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rng = Rng(42);
    let mut rows = Vec::new();
    let mut rss_points: Vec<(f64, f64)> = Vec::new();
    let mut firsts = Vec::new();
    for &p in &a.lengths {
        let ids: Vec<u32> = std::iter::once(0)
            .chain((1..p).map(|_| 1 + (rng.next_f64() * (vocab - 1) as f64) as u32))
            .collect();
        let (fwd, fwd_min) = time_ms(a.reps, || {
            let c = model.run(&ids)?;
            to_vec(c.last_logits)?;
            Ok(())
        })?;
        let cache = model.run(&ids)?;
        let engine = Engine::new(
            &model,
            &cache,
            Target::Logit {
                answer: a.answer_id,
            },
            MlpMode::FrozenGate,
        )?;
        let (ov, ov_min) = time_ms(a.reps, || Ok(engine.overview()?))?;
        // a streaming model computes its overview during the forward pass (the explorer and
        // `rdla attribute` do): each layer is read once
        let fused_ms = if model.streams_layers() {
            let t = Instant::now();
            let (c, _) = rdla_attrib::run_with_overview(
                &model,
                &ids,
                Target::Logit {
                    answer: a.answer_id,
                },
                MlpMode::FrozenGate,
                &mut |_, _| true,
            )?;
            drop(c);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            firsts.push(format!(
                "{p} tokens, forward + overview computed together (layers read once): {ms:.0} ms"
            ));
            Some(ms)
        } else {
            None
        };
        let path_text = format!(
            "L{}.attn/H0/{}:{}",
            n_layer - 1,
            p.saturating_sub(2),
            drill_source(n_layer)
        );
        let path = Path::parse(&path_text)?;
        let (drill, drill_min, drill_cold) = time_cold_ms(a.reps, || Ok(engine.expand(&path)?))?;
        // the same drill-down into another layer, after the one-time work above: what a
        // first visit to a layer costs when the layers stream (it is read then)
        let other = format!(
            "L{}.attn/H0/{}:{}",
            n_layer - 1,
            p.saturating_sub(2),
            drill_source(n_layer / 2)
        );
        let t = Instant::now();
        engine.expand(&Path::parse(&other)?)?;
        let other_cold = t.elapsed().as_secs_f64() * 1e3;
        let qk_path = Path::parse(&format!("L{}.attn/H0/qk:{}", n_layer - 1, p / 2))?;
        let (qk, _, qk_cold) = time_cold_ms(a.reps, || Ok(engine.expand(&qk_path)?))?;
        let mlp_path = Path::parse(&format!("L{}.mlp", n_layer - 1))?;
        let (mlp, _, mlp_cold) = time_cold_ms(a.reps, || Ok(engine.expand(&mlp_path)?))?;
        let opts = rdla_attrib::trace::TraceOptions {
            budget: a.trace_budget,
            ..Default::default()
        };
        // one timed trace (no warm-up: the expansions above warmed everything it uses)
        let trace = if a.trace_budget == 0 {
            f64::NAN
        } else {
            let t = Instant::now();
            engine.trace(&Path::root(), &opts, &mut |_, _| true)?;
            t.elapsed().as_secs_f64() * 1e3
        };
        let rss = peak_rss_mib().unwrap_or(f64::NAN);
        rss_points.push((p as f64, rss));
        println!(
            "| {p} | {fwd:.1} | {ov:.1} | {drill:.2} | {qk:.2} | {mlp:.2} | {trace:.0} | {rss:.0} |"
        );
        firsts.push(format!(
            "{p} tokens, first call (one-time work: the readout sketch; layers read where not held): drill-down {drill_cold:.0} ms, qk node {qk_cold:.0} ms, MLP + neurons {mlp_cold:.0} ms; then a drill-down into another layer ({other}): {other_cold:.0} ms"
        ));
        rows.push(serde_json::json!({
            "tokens": p, "forward_ms": fwd, "overview_ms": ov, "drill_ms": drill,
            "forward_min_ms": fwd_min, "overview_min_ms": ov_min, "drill_min_ms": drill_min,
            "drill_path": path_text, "qk_ms": qk, "mlp_neurons_ms": mlp,
            "forward_with_overview_ms": fused_ms,
            "first_drill_ms": drill_cold, "first_qk_ms": qk_cold, "first_mlp_neurons_ms": mlp_cold,
            "other_layer_drill_path": other, "other_layer_drill_ms": other_cold,
            "trace_ms": trace, "trace_budget": a.trace_budget, "peak_rss_mib": peak_rss_mib(),
        }));
    }
    for line in &firsts {
        println!("{line}");
    }
    let mem = rdla_model::memory::report();
    println!(
        "layers read from disk when used: {} ({} as stored) · peak RSS {}",
        mem.streamed_layers,
        rdla_session::info::bytes(mem.streamed_bytes),
        mem.peak_bytes.map_or("?".into(), rdla_session::info::bytes)
    );
    if let Some(file) = &a.rss_plot {
        let subtitle = format!(
            "{} shape {n_layer} layers, {n_head} heads, d {d}, V {vocab} · {} · one process, high-water mark after each length",
            cfg.family.hf_class(),
            info
        );
        let png = rdla_session::plot::line_plot_png(&rdla_session::plot::LinePlot {
            title: "rdla attribute: peak RSS against prompt length",
            subtitle: &subtitle,
            x_label: "prompt length (tokens)",
            y_label: "peak RSS (MiB)",
            points: &rss_points,
        })?;
        rdla_session::output::write_outside(file, &model.protected, &png)?;
    }
    if let Some(file) = &a.json {
        let out = serde_json::json!({
            "impl": "rdla",
            "device": info.to_string(),
            "model": facts,
            "shape": [n_layer, n_head, d, vocab],
            "weight_bytes": facts.disk_bytes,
            "memory": rdla_model::memory::report(),
            "threads": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            "load_ms": load,
            "load_min_ms": load_min,
            "load_ms_all": loads,
            // opening reads no block of a model that fits: its first forward pass does
            "first_forward_ms": first_forward,
            "peak_rss_after_load_mib": rss_after_load,
            "peak_rss_mib": peak_rss_mib(),
            "lengths": rows,
        });
        let text = serde_json::to_string_pretty(&out)? + "\n";
        rdla_session::output::write_outside(file, &model.protected, text.as_bytes())?;
    }
    Ok(())
}

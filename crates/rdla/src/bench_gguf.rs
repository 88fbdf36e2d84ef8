//! `rdla bench --preset P --format gguf-q4km`: a released model's shape as a GGUF file in
//! llama.cpp's Q4_K_M mix, with random weights — written as quantised blocks directly (random
//! codes; each block's scales chosen so a weight's spread is about `1/√d_in`), one tensor at a
//! time after the header (`rdla_gguf::write`), so a 40 GB file needs a tensor's memory.
//!
//! The mix is what `llama-quantize Q4_K_M` chooses for these shapes: Q4_K everywhere, Q6_K for
//! the output matrix and for `attn_v` / `ffn_down` in every other layer. The metadata is what
//! `convert_hf_to_gguf.py` writes for Llama-3.1 (with the llama3 rope factors as
//! `rope_freqs.weight`) and Qwen3 (per-head q/k RMSNorms), and the tokenizer a
//! SentencePiece-style vocabulary of the model's size (the tokenizer is not what is timed).

use std::path::Path as FsPath;

use anyhow::Context;
use rdla_gguf::write::{GgufWriter, TensorSpec};
use rdla_gguf::{GgmlType, MetaArray, MetaValue};

use crate::bench::Rng;

/// A Llama-family decoder's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaShape {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub d_mlp: usize,
    pub vocab: usize,
    pub head_dim: usize,
    /// Qwen3 (q/k norms, rope θ 1e6) rather than Llama-3.1 (llama3 rope factors, θ 5e5).
    pub qwen3: bool,
}

impl LlamaShape {
    pub fn of(preset: crate::bench::BenchPreset) -> Self {
        use crate::bench::BenchPreset as P;
        let (layers, heads, kv_heads, d, d_mlp, vocab, qwen3) = match preset {
            P::Llama3_8b => (32, 32, 8, 4096, 14_336, 128_256, false),
            P::Qwen3_8b => (36, 32, 8, 4096, 12_288, 151_936, true),
            P::Llama3_70b => (80, 64, 8, 8192, 28_672, 128_256, false),
        };
        Self {
            layers,
            heads,
            kv_heads,
            d,
            d_mlp,
            vocab,
            head_dim: 128,
            qwen3,
        }
    }

    fn arch(&self) -> &'static str {
        if self.qwen3 { "qwen3" } else { "llama" }
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// `rows × cols` values as random blocks of `ty` (Q4_K or Q6_K) whose values spread about
/// `1/√cols`. Q4_K (144 bytes per 256 values): a value is `d·sc·q − dmin·m` with 6-bit `sc`,
/// `m` and 4-bit `q`; Q6_K (210 bytes): `d·scale·(q − 32)` with 6-bit `q` and 8-bit `scale`.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let (block, size) = ty.block_layout();
    let std = (cols as f32).powf(-0.5);
    let mut out = vec![0u8; rows * cols / block * size];
    rng.fill(&mut out);
    for b in out.chunks_exact_mut(size) {
        match ty {
            GgmlType::Q4_K => {
                b[0..2].copy_from_slice(&f16_bytes(std / (31.5 * 4.6)));
                b[2..4].copy_from_slice(&f16_bytes(std * 7.5 / (31.5 * 4.6)));
            }
            _ => b[208..210].copy_from_slice(&f16_bytes(std / (74.0 * 18.5))),
        }
    }
    out
}

/// Llama-3.1's rope factors (`rope_type` llama3: factor 8, low 1, high 4, original context
/// 8,192) for each of the `head_dim / 2` frequencies of base `theta`, as the converter writes
/// them into `rope_freqs.weight`.
fn llama3_rope_factors(head_dim: usize, theta: f64) -> Vec<f32> {
    let (factor, low, high, old) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wl, high_wl) = (old / low, old / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = std::f64::consts::TAU / freq;
            if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                factor as f32
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// What one tensor holds.
enum Fill {
    Blocks { rows: usize, cols: usize },
    Norm(usize),
    Values(Vec<f32>),
}

/// The metadata: architecture, hyper-parameters, and a SentencePiece-style vocabulary of
/// `vocab` pieces (`<unk>`, `<s>`, `</s>`, 256 byte pieces, then `▁`, `w`, `▁w` and numbered
/// pieces).
fn metadata(s: &LlamaShape, name: &str) -> Vec<(String, MetaValue)> {
    let arch = s.arch();
    let u = |v: usize| MetaValue::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        (
            "general.architecture".into(),
            MetaValue::String(arch.into()),
        ),
        ("general.name".into(), MetaValue::String(name.into())),
        (key("block_count"), u(s.layers)),
        (
            key("context_length"),
            u(if s.qwen3 { 40_960 } else { 131_072 }),
        ),
        (key("embedding_length"), u(s.d)),
        (key("feed_forward_length"), u(s.d_mlp)),
        (key("attention.head_count"), u(s.heads)),
        (key("attention.head_count_kv"), u(s.kv_heads)),
        (
            key("rope.freq_base"),
            MetaValue::F32(if s.qwen3 { 1e6 } else { 5e5 }),
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(if s.qwen3 { 1e-6 } else { 1e-5 }),
        ),
    ];
    if s.qwen3 {
        m.push((key("attention.key_length"), u(s.head_dim)));
        m.push((key("attention.value_length"), u(s.head_dim)));
    } else {
        m.push((key("vocab_size"), u(s.vocab)));
        m.push((key("rope.dimension_count"), u(s.head_dim)));
    }
    let v = s.vocab;
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..256).map(|i| format!("<0x{i:02X}>")));
    tokens.extend(["\u{2581}".into(), "w".into(), "\u{2581}w".into()]);
    let numbered = v.saturating_sub(tokens.len());
    tokens.extend((0..numbered).map(|i| {
        if i % 2 == 1 {
            format!("\u{2581}w{i}")
        } else {
            format!("p{i}")
        }
    }));
    tokens.truncate(v);
    // gguf TokenType: NORMAL 1, UNKNOWN 2, CONTROL 3, BYTE 6
    let types: Vec<i32> = (0..v)
        .map(|i| match i {
            0 => 2,
            1 | 2 => 3,
            3..259 => 6,
            _ => 1,
        })
        .collect();
    let scores: Vec<f32> = (0..v)
        .map(|i| {
            if i < 259 {
                0.0
            } else {
                -((i - 259) as f32 / v as f32)
            }
        })
        .collect();
    let t = |k: &str| format!("tokenizer.ggml.{k}");
    m.extend([
        (t("model"), MetaValue::String("llama".into())),
        (t("pre"), MetaValue::String("default".into())),
        (t("tokens"), MetaValue::Array(MetaArray::String(tokens))),
        (t("scores"), MetaValue::Array(MetaArray::F32(scores))),
        (t("token_type"), MetaValue::Array(MetaArray::I32(types))),
        (t("bos_token_id"), MetaValue::U32(1)),
        (t("eos_token_id"), MetaValue::U32(2)),
        (t("unknown_token_id"), MetaValue::U32(0)),
        (t("add_bos_token"), MetaValue::Bool(true)),
        (t("add_eos_token"), MetaValue::Bool(false)),
    ]);
    m
}

/// Every tensor in file order, with what it holds.
fn tensors(s: &LlamaShape) -> Vec<(TensorSpec, Fill)> {
    let (d, v, hd, ff) = (
        s.d as u64,
        s.vocab as u64,
        s.head_dim as u64,
        s.d_mlp as u64,
    );
    let (q, kv) = (s.heads as u64 * hd, s.kv_heads as u64 * hd);
    let mut out = Vec::new();
    // a PyTorch [out, in] matrix is ne = [in, out]
    let mut matrix = |name: String, rows: u64, cols: u64, ty: GgmlType| {
        out.push((
            TensorSpec::new(name, &[cols, rows], ty),
            Fill::Blocks {
                rows: rows as usize,
                cols: cols as usize,
            },
        ));
    };
    matrix("token_embd.weight".into(), v, d, GgmlType::Q4_K);
    matrix("output.weight".into(), v, d, GgmlType::Q6_K);
    for l in 0..s.layers {
        let mixed = if l % 2 == 0 {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        };
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        matrix(b("attn_q"), q, d, GgmlType::Q4_K);
        matrix(b("attn_k"), kv, d, GgmlType::Q4_K);
        matrix(b("attn_v"), kv, d, mixed);
        matrix(b("attn_output"), d, q, GgmlType::Q4_K);
        matrix(b("ffn_gate"), ff, d, GgmlType::Q4_K);
        matrix(b("ffn_up"), ff, d, GgmlType::Q4_K);
        matrix(b("ffn_down"), d, ff, mixed);
    }
    let norm = |name: String, n: u64| {
        (
            TensorSpec::new(name, &[n], GgmlType::F32),
            Fill::Norm(n as usize),
        )
    };
    // (norms after the matrices they belong with would do as well: the reader goes by name)
    out.push(norm("output_norm.weight".into(), d));
    for l in 0..s.layers {
        out.push(norm(format!("blk.{l}.attn_norm.weight"), d));
        out.push(norm(format!("blk.{l}.ffn_norm.weight"), d));
        if s.qwen3 {
            out.push(norm(format!("blk.{l}.attn_q_norm.weight"), hd));
            out.push(norm(format!("blk.{l}.attn_k_norm.weight"), hd));
        }
    }
    if !s.qwen3 {
        let f = llama3_rope_factors(s.head_dim, 5e5);
        out.push((
            TensorSpec::new("rope_freqs.weight", &[f.len() as u64], GgmlType::F32),
            Fill::Values(f),
        ));
    }
    out
}

/// Write `s` as a Q4_K_M-mix GGUF file at `path` (which must not exist), with random weights
/// from `seed`; its size in bytes.
pub fn write_q4km(path: &FsPath, s: &LlamaShape, name: &str, seed: u64) -> anyhow::Result<u64> {
    let all = tensors(s);
    let specs: Vec<TensorSpec> = all.iter().map(|(t, _)| t.clone()).collect();
    let mut w = GgufWriter::create(path, &metadata(s, name), specs)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut rng = Rng(seed | 1);
    let result = (|| -> anyhow::Result<()> {
        for (t, fill) in &all {
            let data = match fill {
                Fill::Blocks { rows, cols } => random_blocks(t.ty, *rows, *cols, &mut rng),
                Fill::Norm(n) => (0..*n)
                    .flat_map(|_| (1.0 + 0.1 * rng.normal()).to_le_bytes())
                    .collect(),
                Fill::Values(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            w.write_tensor(&data)?;
        }
        w.finish()?;
        Ok(())
    })();
    if let Err(e) = result {
        // a partial file (a full disk) is not left behind as if it were a model
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(std::fs::metadata(path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small Llama-3.1-like and Qwen3-like file written here opens in rdla as a model of
    /// that shape: the Q4_K_M mix by tensor, the llama3 rope factors, the tokenizer, weights
    /// whose spread is about `1/√d_in` once dequantised, and a finite forward pass.
    #[test]
    fn a_generated_q4km_file_is_a_model_of_its_shape() {
        let dir = tempfile::tempdir().unwrap();
        for qwen3 in [false, true] {
            let s = LlamaShape {
                layers: 2,
                heads: 4,
                kv_heads: 2,
                d: 256,
                d_mlp: 512,
                vocab: 600,
                head_dim: 64,
                qwen3,
            };
            let path = dir.path().join(format!("{}.gguf", s.arch()));
            let bytes = write_q4km(&path, &s, "tiny", 7).unwrap();
            assert!(
                write_q4km(&path, &s, "tiny", 7).is_err(),
                "never over a file"
            );
            let f = rdla_gguf::GgufFile::open(&path).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
            let ty = |n: &str| f.tensor(n).unwrap().ggml_type;
            assert_eq!(ty("output.weight"), GgmlType::Q6_K);
            assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
            assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6_K);
            assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q4_K);
            assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6_K);
            assert_eq!(ty("blk.1.ffn_gate.weight"), GgmlType::Q4_K);
            assert_eq!(f.tensor("rope_freqs.weight").is_some(), !qwen3);
            assert_eq!(f.tensor("blk.1.attn_k_norm.weight").is_some(), qwen3);
            for (name, d_in) in [
                ("blk.1.attn_q.weight", 256.0f32),
                ("blk.0.ffn_down.weight", 512.0),
            ] {
                let t = f.tensor(name).unwrap();
                let w = f.dequantize(t).unwrap();
                let mean = w.iter().sum::<f32>() / w.len() as f32;
                let std =
                    (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
                let ratio = std * d_in.sqrt();
                assert!(
                    (0.5..2.0).contains(&ratio),
                    "{name}: spread {std} = {ratio} / sqrt(d_in)"
                );
            }
            let m = rdla_model::Model::load(
                &path,
                &rdla_model::Device::flex(),
                rdla_model::Processing::default(),
                &mut |_| true,
            )
            .unwrap();
            let c = &m.config;
            assert_eq!(
                (
                    c.n_layers,
                    c.n_heads,
                    c.n_kv_heads,
                    c.d_model,
                    c.d_head,
                    c.d_vocab
                ),
                (2, 4, 2, 256, 64, 600)
            );
            let ids = m.tokenizer.encode_prompt("w w w", true).unwrap();
            assert!(ids.len() >= 2, "{ids:?}");
            let cache = m.run(&ids).unwrap();
            let logits = rdla_model::to_vec(cache.last_logits).unwrap();
            assert_eq!(logits.len(), 600);
            assert!(logits.iter().all(|x| x.is_finite()));
            assert!(logits.iter().any(|&x| x != logits[0]), "logits all equal");
        }
        // the llama3 factors: 1 for the fast frequencies, 8 for the slow, smooth between
        let f = llama3_rope_factors(128, 5e5);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[1] >= w[0]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }
}

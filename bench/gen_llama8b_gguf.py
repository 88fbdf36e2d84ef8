"""A Llama-3.1-8B-shaped GGUF with random weights in llama.cpp's Q4_K_M mix, to time rdla on
a model larger than its memory budget (docs/PERFORMANCE.md, "Streaming an 8B model").

Shape: 32 layers, d_model 4096, 32 heads with 8 key/value heads, d_mlp 14336, vocabulary
128,256, untied output, rope_theta 500000 with llama3 rope factors. Tensors are written as
quantised blocks directly (random codes, scales chosen so a weight's spread is about
1/sqrt(d_in)): Q4_K everywhere, Q6_K for the output matrix and for attn_v / ffn_down in every
other layer (what Q4_K_M does). About 4.6 GB on disk. Needs gguf and numpy (pip); reuses the
fixture generator's metadata writer.

With `qwen3` as the third argument: the Qwen3-8B shape instead (36 layers, d_model 4096,
32 heads with 8 key/value heads, head_dim 128, d_mlp 12288, vocabulary 151,936, untied
output, rope_theta 1e6, per-head RMSNorms on queries and keys), the same quantisation mix.
With `llama70b`: the Llama-3.1-70B shape (80 layers, d_model 8192, 64 heads with 8 key/value
heads, d_mlp 28672, vocabulary 128,256; about 40 GB).

Tensors are generated and written one at a time after the header (the writer never holds
the model), so the 70B file needs its disk space and little memory.

Usage: python3 bench/gen_llama8b_gguf.py OUT.gguf [N_LAYERS] [llama|qwen3|llama70b]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests/fixtures/gguf"))
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
import generate as G

out = sys.argv[1]
shape = sys.argv[3] if len(sys.argv) > 3 else "llama"
assert shape in ("llama", "qwen3", "llama70b"), shape
arch = "qwen3" if shape == "qwen3" else "llama"
n_layers = int(sys.argv[2]) if len(sys.argv) > 2 else {"llama": 32, "qwen3": 36, "llama70b": 80}[shape]
if arch == "llama":
    V, d, ff, H, KV = (128256, 4096, 14336, 32, 8) if shape == "llama" else (128256, 8192, 28672, 64, 8)
    hd = d // H
    cfg = dict(num_hidden_layers=n_layers, max_position_embeddings=131072, hidden_size=d,
               intermediate_size=ff, num_attention_heads=H, num_key_value_heads=KV,
               rope_theta=500000.0, rms_norm_eps=1e-5, vocab_size=V,
               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=8192))
else:
    V, d, ff, H, KV, hd = 151936, 4096, 12288, 32, 8, 128
    cfg = dict(num_hidden_layers=n_layers, max_position_embeddings=40960, hidden_size=d,
               intermediate_size=ff, num_attention_heads=H, num_key_value_heads=KV,
               head_dim=hd, rope_theta=1000000.0, rms_norm_eps=1e-6, vocab_size=V)
w = gguf.GGUFWriter(out, arch=arch)
w.add_name(f"{shape}-shaped")
G.set_params(w, arch, cfg)
rng = np.random.default_rng(0)

# a SentencePiece-style vocabulary of V pieces (the tokenizer is not what is timed)
tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
tokens += ["\u2581".encode(), b"w", "\u2581w".encode()]
tokens += [("\u2581w%d" % i if i % 2 else "p%d" % i).encode() for i in range(V - len(tokens))]
types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.BYTE] * 256
types += [gguf.TokenType.NORMAL] * (V - len(types))
scores = [0.0] * 259 + [-(i / V) for i in range(V - 259)]
w.add_tokenizer_model("llama"); w.add_tokenizer_pre("default")
w.add_token_list(tokens); w.add_token_scores(scores); w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
w.add_add_bos_token(True); w.add_add_eos_token(False)


def f16(x):
    return np.array([x], dtype=np.float16).view(np.uint8)


def q4_k(rows, cols, std):
    """Random Q4_K blocks (144 bytes per 256 values: d, dmin, 12 bytes of 6-bit scales and
    mins, 128 bytes of 4-bit codes). A value is d·sc·q − dmin·m with sc, m ≤ 63, q ≤ 15."""
    n = rows * cols // 256
    b = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    b[:, 0:2] = f16(std / (31.5 * 4.6))
    b[:, 2:4] = f16(std * 7.5 / (31.5 * 4.6))
    return b.reshape(rows, cols // 256 * 144)


def q6_k(rows, cols, std):
    """Random Q6_K blocks (210 bytes per 256 values: 128 + 64 bytes of 6-bit codes, 16 int8
    scales, d). A value is d·scale·(q − 32)."""
    n = rows * cols // 256
    b = rng.integers(0, 256, size=(n, 210), dtype=np.uint8)
    b[:, 208:210] = f16(std / (74.0 * 18.5))
    return b.reshape(rows, cols // 256 * 210)


# every tensor as (name, byte shape, quantisation, make): registered first, so the header can
# be written, then made and written one at a time
specs = []


def t(name, rows, cols, q=T.Q4_K):
    std = cols ** -0.5
    per = 144 if q == T.Q4_K else 210
    make = (lambda: q4_k(rows, cols, std)) if q == T.Q4_K else (lambda: q6_k(rows, cols, std))
    specs.append((name, (rows, cols // 256 * per), np.uint8, q, make))


def norm(name, n):
    specs.append((name, (n,), np.float32, None,
                  lambda: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)))


def plain(name, array):
    specs.append((name, array.shape, array.dtype, None, lambda: array))


t("token_embd.weight", V, d)
if arch == "llama":
    plain("rope_freqs.weight", G.llama3_rope_factors(cfg))
norm("output_norm.weight", d)
t("output.weight", V, d, q=T.Q6_K)
for l in range(n_layers):
    b = f"blk.{l}."
    mixed = T.Q6_K if l % 2 == 0 else T.Q4_K
    norm(b + "attn_norm.weight", d)
    t(b + "attn_q.weight", H * hd, d); t(b + "attn_k.weight", KV * hd, d)
    t(b + "attn_v.weight", KV * hd, d, q=mixed)
    t(b + "attn_output.weight", d, H * hd)
    if arch == "qwen3":
        norm(b + "attn_q_norm.weight", hd); norm(b + "attn_k_norm.weight", hd)
    norm(b + "ffn_norm.weight", d)
    t(b + "ffn_gate.weight", ff, d); t(b + "ffn_up.weight", ff, d)
    t(b + "ffn_down.weight", d, ff, q=mixed)
for name, shape_, dtype, q, _ in specs:
    nbytes = int(np.prod(shape_)) * np.dtype(dtype).itemsize
    w.add_tensor_info(name, shape_, np.dtype(dtype), nbytes, raw_dtype=q)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file()
for name, shape_, dtype, q, make in specs:
    data = make()
    assert data.shape == tuple(shape_) and data.dtype == dtype, name
    w.write_tensor_data(data)
w.close()
print("wrote", out)

"""A Gemma-3-270M-shaped GGUF with random weights and a 262,144-piece SentencePiece-style
vocabulary, to time opening a large-vocabulary model (docs/PERFORMANCE.md, "Opening a
262k-vocabulary GGUF"). Needs gguf, numpy and safetensors (pip); reuses the fixture
generator's metadata writer.

Usage: python3 bench/gen_large_vocab_gguf.py OUT.gguf N_LAYERS   (D=64 for a narrow model)
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests/fixtures/gguf"))
import numpy as np, gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
import generate as G

out, n_layers = sys.argv[1], int(sys.argv[2])
import os
V, d, ff, H, KV, hd = 262144, int(os.environ.get("D", 640)), 2048, 4, 1, 256
cfg = dict(max_position_embeddings=32768, hidden_size=d, num_hidden_layers=n_layers,
           intermediate_size=ff, num_attention_heads=H, num_key_value_heads=KV, rms_norm_eps=1e-6,
           head_dim=hd, sliding_window=512, rope_theta=1e6, query_pre_attn_scalar=256,
           final_logit_softcapping=None, attn_logit_softcapping=None, rope_local_base_freq=1e4,
           sliding_window_pattern=6, rope_scaling=None)
w = gguf.GGUFWriter(out, arch="gemma3")
w.add_name("gemma3-270m-shaped")
G.set_params(w, "gemma3", cfg)
rng = np.random.default_rng(0)
tokens = [b"<pad>", b"<eos>", b"<bos>", b"<unk>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
tokens += ["\u2581".encode(), b"w", "\u2581w".encode()]
tokens += [("\u2581w%d" % i if i % 2 else "p%d" % i).encode() for i in range(V - len(tokens))]
types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] + [gguf.TokenType.BYTE] * 256
types += [gguf.TokenType.NORMAL] * (V - len(types))
scores = [0.0] * 260 + [-(i / V) for i in range(V - 260)]
w.add_tokenizer_model("llama"); w.add_tokenizer_pre("default")
w.add_token_list(tokens); w.add_token_scores(scores); w.add_token_types(types)
w.add_bos_token_id(2); w.add_eos_token_id(1); w.add_unk_token_id(3); w.add_pad_token_id(0)
w.add_add_bos_token(True); w.add_add_eos_token(False)
def t(name, *shape, q=T.F16):
    x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    w.add_tensor(name, quantize(x, q), raw_dtype=q)
def norm(name, n):
    w.add_tensor(name, np.ones(n, dtype=np.float32))
t("token_embd.weight", V, d, q=T.Q8_0)
norm("output_norm.weight", d)
for l in range(n_layers):
    b = f"blk.{l}."
    t(b + "attn_q.weight", H * hd, d); t(b + "attn_k.weight", KV * hd, d); t(b + "attn_v.weight", KV * hd, d)
    t(b + "attn_output.weight", d, H * hd)
    t(b + "ffn_gate.weight", ff, d); t(b + "ffn_up.weight", ff, d); t(b + "ffn_down.weight", d, ff)
    for n in ["attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"]:
        norm(b + n + ".weight", d)
    norm(b + "attn_q_norm.weight", hd); norm(b + "attn_k_norm.weight", hd)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", out)

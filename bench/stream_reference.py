"""Independent float64 NumPy reference forward pass for a Llama-architecture GGUF, streamed one
layer at a time, to check `rdla attribute --json` on a model too large for a dense reference.

What it checks
--------------
rdla reports, for the last position of its prompt, the answer's logit (`target_value`) and the
ten highest logits (`top_predictions`). rdla's logits are TransformerLens-processed: with
`center_unembed` the unembedding is centred over the vocabulary, so each rdla logit equals the
true logit minus the mean of all logits at that position (llama has no final soft-cap). This
script recomputes the true logits in float64 straight from the GGUF tensors with NumPy (no rdla,
no torch, no TransformerLens), subtracts their vocabulary mean, and compares:

  * the centred logit of `answer_id` against rdla's `target_value`;
  * the centred logit of every `top_predictions` id against rdla's `logit`;
  * max |difference|, and the "scaled error" = max |difference| / max(1, max |centred reference
    logit| over those ids). PASS if scaled error <= 1e-4, else FAIL (exit status 1);
  * rdla's top-10 id set against the reference's top-10 id set. Ids in only one of the sets are
    tolerated only when they are ties at the boundary: their reference logit lies within
    --tie-tol (default 1e-5) of the reference's 10th-highest centred logit. Otherwise FAIL.

How the reference is computed (all float64)
-------------------------------------------
x = token_embd rows of `token_ids` (only those rows are dequantised). For each layer l:
    h  = rmsnorm(x) * attn_norm
    q, k, v = h Wq^T, h Wk^T, h Wv^T                (no biases)
    rope on q and k (see below); GQA causal softmax attention, scale 1/sqrt(head_dim),
    query head i reads key/value head i // (n_head / n_head_kv) (HF repeat_kv)
    x += attn Wo^T
    h2 = rmsnorm(x) * ffn_norm
    x += (silu(h2 Wgate^T) * (h2 Wup^T)) Wdown^T
with rmsnorm(x) = x / sqrt(mean(x^2) + eps). Finally logits = (rmsnorm(x[-1]) * output_norm)
@ output.weight^T (output.weight dequantised in chunks of rows; token_embd if output.weight is
absent, i.e. tied). Each layer's weights are dequantised when the layer starts and dropped
before the next one, so at most one layer's float64 weights (~1.8 GB for the 8B shape) are held.

Shapes: GGUF lists dims fastest-first, so a PyTorch nn.Linear weight [out, in] has ne = (in, out);
gguf-py's reader exposes the raw blocks as a [out, bytes_per_row] uint8 array and
gguf.quants.dequantize turns that into [out, in] float32 - the PyTorch layout used here.

Rotary convention: llama.cpp's converter permutes each head's Q/K rows from Hugging Face's
rotate_half layout (pairs (j, j + hd/2)) to the interleaved layout (pairs (2j, 2j+1)) that
llama.cpp's "normal" rope uses. We undo that permutation (inverse of convert_hf_to_gguf's
LlamaModel.permute, n_head = head_count for Q, head_count_kv for K) and apply HF rope:
x*cos + rotate_half(x)*sin with cos/sin of concat(freqs, freqs), freqs = pos * inv_freq,
inv_freq = 1 / theta^(arange(0, hd, 2)/hd) / rope_freqs (llama3 scaling factors from the
`rope_freqs.weight` tensor, as llama.cpp's freq_factors; 1 if the tensor is absent). As a
self-check, layer 0 also applies interleaved rope to the stored layout and asserts both agree.

Usage
-----
    python3 bench/stream_reference.py MODEL.gguf RDLA.json [--layers N] [--tie-tol T]

MODEL.gguf: llama.cpp GGUF with general.architecture "llama" (e.g. one written by
bench/gen_llama8b_gguf.py). RDLA.json: the output of `rdla attribute ... --json FILE` on that
model; fields used: token_ids (BOS included, the exact input ids), answer_id, target_value,
top_predictions. --layers N runs only the first N blocks (a partial model: the comparison is then
only meaningful against an rdla run of the same truncated model; a warning is printed).
Needs numpy and gguf (gguf-py). Memory: a few GB for the 8B shape; time: about 10 s per 8B layer
on 2 cores.
"""
import argparse
import json
import sys
import time

import numpy as np
import gguf


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"missing GGUF metadata {key}")
        return default
    return f.contents()


def dequant_rows(t, rows=None, chunk=2048):
    """Dequantise tensor `t` (gguf ReaderTensor) to float64 [rows, cols], optionally only the
    given row indices, converting chunk by chunk to bound the float32 temporaries."""
    data = t.data
    if data.ndim == 1 or t.tensor_type in (gguf.GGMLQuantizationType.F32,
                                           gguf.GGMLQuantizationType.F16):
        out = gguf.quants.dequantize(np.asarray(data), t.tensor_type).astype(np.float64)
        return out if rows is None else out[rows]
    idx = np.arange(data.shape[0]) if rows is None else np.asarray(rows)
    first = gguf.quants.dequantize(np.asarray(data[idx[:1]]), t.tensor_type)
    out = np.empty((len(idx), first.shape[-1]), dtype=np.float64)
    for s in range(0, len(idx), chunk):
        sel = idx[s:s + chunk]
        if rows is None:  # contiguous slice of the memory map
            raw = np.asarray(data[sel[0]:sel[-1] + 1])
        else:
            raw = np.asarray(data[sel])
        out[s:s + len(sel)] = gguf.quants.dequantize(raw, t.tensor_type)
    return out


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf LlamaModel.permute on rows of w [n_head*hd, in]."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_hf(x, cos, sin):
    """x [n, heads, hd] in HF layout; cos/sin [n, hd] of concat(freqs, freqs)."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def rope_interleaved(x, freqs):
    """x [n, heads, hd] in llama.cpp's stored layout: pairs (2j, 2j+1) rotate by freqs[:, j]."""
    c, s = np.cos(freqs)[:, None, :], np.sin(freqs)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("rdla_json")
    ap.add_argument("--layers", type=int, default=None, help="run only the first N blocks")
    ap.add_argument("--tie-tol", type=float, default=1e-5,
                    help="top-10 boundary tie tolerance (default 1e-5)")
    args = ap.parse_args()
    t0 = time.time()

    rd = json.load(open(args.rdla_json))
    ids = [int(i) for i in rd["token_ids"]]
    answer = int(rd["answer_id"])
    top = [(int(p["id"]), float(p["logit"])) for p in rd["top_predictions"]]

    r = gguf.GGUFReader(args.model)
    arch = field(r, "general.architecture")
    if arch != "llama":
        sys.exit(f"architecture {arch!r}, expected 'llama'")
    d = int(field(r, "llama.embedding_length"))
    n_layers = int(field(r, "llama.block_count"))
    H = int(field(r, "llama.attention.head_count"))
    KV = int(field(r, "llama.attention.head_count_kv", H))
    eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
    theta = float(field(r, "llama.rope.freq_base", 10000.0))
    ff = int(field(r, "llama.feed_forward_length"))
    hd = d // H
    T = {t.name: t for t in r.tensors}
    print(f"model {args.model}: d={d} layers={n_layers} heads={H} kv={KV} hd={hd} d_mlp={ff} "
          f"eps={eps:g} theta={theta:g}; {len(ids)} tokens; opened in {time.time() - t0:.1f}s")
    rd_layers = rd.get("model", {}).get("n_layers")
    if rd_layers is not None and rd_layers != n_layers:
        print(f"WARNING: rdla json reports n_layers={rd_layers}, GGUF has {n_layers}")
    n_run = n_layers if args.layers is None else min(args.layers, n_layers)
    if n_run != n_layers:
        print(f"WARNING: running only {n_run} of {n_layers} layers; the comparison with rdla is "
              f"meaningless unless rdla ran the same truncated model")

    # rope tables (float64). rope_freqs (llama3) divides inv_freq, as llama.cpp's freq_factors.
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if "rope_freqs.weight" in T:
        rf = dequant_rows(T["rope_freqs.weight"]).reshape(-1)
        assert rf.shape == (hd // 2,), rf.shape
        inv_freq = inv_freq / rf
        print(f"rope_freqs.weight applied (factors {rf.min():g}..{rf.max():g})")
    n = len(ids)
    freqs = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]  # [n, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    mask = np.triu(np.ones((n, n), dtype=bool), k=1)  # True = future (masked)

    # embeddings: only the needed rows of token_embd
    te = T["token_embd.weight"]
    x = dequant_rows(te, rows=ids)
    assert x.shape == (n, d), x.shape

    rep = H // KV
    layers_read = []
    for l in range(n_run):
        tl = time.time()
        p = f"blk.{l}."
        W = {k: dequant_rows(T[p + k + ".weight"]) for k in
             ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
              "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
        W["attn_norm"] = W["attn_norm"].reshape(-1)
        W["ffn_norm"] = W["ffn_norm"].reshape(-1)
        # [out, in] convention check
        assert W["attn_q"].shape == (H * hd, d), W["attn_q"].shape
        assert W["attn_k"].shape == (KV * hd, d), W["attn_k"].shape
        assert W["attn_v"].shape == (KV * hd, d), W["attn_v"].shape
        assert W["attn_output"].shape == (d, H * hd), W["attn_output"].shape
        assert W["ffn_gate"].shape == (ff, d) and W["ffn_up"].shape == (ff, d)
        assert W["ffn_down"].shape == (d, ff), W["ffn_down"].shape
        tdq = time.time() - tl

        h = rmsnorm(x, W["attn_norm"], eps)
        wq, wk = unpermute(W["attn_q"], H), unpermute(W["attn_k"], KV)
        q = (h @ wq.T).reshape(n, H, hd)
        k = (h @ wk.T).reshape(n, KV, hd)
        v = (h @ W["attn_v"].T).reshape(n, KV, hd)
        qr, kr = rope_hf(q, cos, sin), rope_hf(k, cos, sin)
        if l == 0:  # self-check: interleaved rope on the stored layout is the same map
            qs = (h @ W["attn_q"].T).reshape(n, H, hd)
            qi = unpermute(rope_interleaved(qs, freqs).reshape(n, H * hd).T, H).T
            err = np.abs(qi.reshape(n, H, hd) - qr).max()
            assert err <= 1e-9 * max(1.0, np.abs(qr).max()), f"rope self-check failed: {err}"
            print(f"rope self-check (HF rotate_half after un-permute == interleaved on stored "
                  f"layout): max diff {err:.2e}")
        kr = np.repeat(kr, rep, axis=1)  # [n, H, hd], head i -> kv head i // rep
        vr = np.repeat(v, rep, axis=1)
        scores = np.einsum("qhe,khe->hqk", qr, kr) / np.sqrt(hd)
        scores[:, mask] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        pr = np.exp(scores)
        pr /= pr.sum(axis=-1, keepdims=True)
        z = np.einsum("hqk,khe->qhe", pr, vr).reshape(n, H * hd)
        x = x + z @ W["attn_output"].T

        h2 = rmsnorm(x, W["ffn_norm"], eps)
        g = h2 @ W["ffn_gate"].T
        u = h2 @ W["ffn_up"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ W["ffn_down"].T
        del W, wq, wk, h, q, k, v, qr, kr, vr, scores, pr, z, h2, g, u
        layers_read.append(l)
        print(f"layer {l}: dequant {tdq:.1f}s, total {time.time() - tl:.1f}s, "
              f"|x| rms {np.sqrt(np.mean(x[-1] ** 2)):.4f}", flush=True)

    # final norm + unembed at the last position (output.weight in row chunks)
    hf = rmsnorm(x[-1], dequant_rows(T["output_norm.weight"]).reshape(-1), eps)
    ot = T.get("output.weight", te)
    V = ot.data.shape[0]
    logits = np.empty(V, dtype=np.float64)
    CH = 8192
    for s in range(0, V, CH):
        e = min(V, s + CH)
        wchunk = dequant_rows(ot, rows=None if (s == 0 and e == V) else np.arange(s, e))
        assert wchunk.shape == (e - s, d), wchunk.shape
        logits[s:e] = wchunk @ hf
    del wchunk
    centred = logits - logits.mean()
    print(f"unembed: {'output.weight' if 'output.weight' in T else 'tied token_embd'} "
          f"[{V}, {d}], logit mean {logits.mean():.6f} (subtracted)")

    # comparison
    rows = [("answer", answer, float(rd["target_value"]))] + [("top", i, v) for i, v in top]
    print(f"\n{'kind':<7}{'id':>8}{'rdla':>16}{'reference':>16}{'diff':>12}")
    diffs, refs = [], []
    for kind, i, rv in rows:
        ref = centred[i]
        diffs.append(abs(ref - rv))
        refs.append(abs(ref))
        print(f"{kind:<7}{i:>8}{rv:>16.8f}{ref:>16.8f}{ref - rv:>12.2e}")
    max_diff = max(diffs)
    scaled = max_diff / max(1.0, max(refs))
    ok = scaled <= 1e-4
    print(f"\nmax abs diff {max_diff:.3e}; scaled error {scaled:.3e} (tolerance 1e-4): "
          f"{'ok' if ok else 'TOO LARGE'}")

    ref_top = np.argsort(-centred, kind="stable")[:10]
    kth = centred[ref_top[-1]]
    rd_set, ref_set = {i for i, _ in top}, set(int(i) for i in ref_top)
    only = rd_set ^ ref_set
    bad = [i for i in only if abs(centred[i] - kth) > args.tie_tol]
    print(f"reference top-10: {[int(i) for i in ref_top]}")
    print(f"rdla      top-10: {[i for i, _ in top]}")
    if not only:
        print("top-10 id sets: identical")
    else:
        print(f"top-10 id sets differ by {sorted(only)}; reference 10th logit {kth:.8f}; "
              + ", ".join(f"{i}: {centred[i]:.8f}" for i in sorted(only))
              + (f" -> not ties within {args.tie_tol:g}" if bad else " -> ties only"))
    ok = ok and not bad

    print(f"\nlayers read: {layers_read[0]}..{layers_read[-1]} ({len(layers_read)} of {n_layers})"
          if layers_read else "\nlayers read: none")
    print(f"elapsed {time.time() - t0:.1f}s")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The TransformerLens baseline of `rdla census` (docs/PERFORMANCE.md): the same per-head
direct logit attribution over the same prompts, as a notebook user would batch it — prompts
grouped by token count (no padding, so every number is a one-prompt run's), `run_with_cache`
on each batch, and each head's DLA at the last position as one einsum per batch:

    head_dla[b, l, h] = z[b, l, last, h] · W_O[l, h] · (W_U[:, answer] − W_U[:, foil]) / scale[b]

TL 2.18 with its default weight processing (fold_ln, center_writing_weights, center_unembed,
fold_value_biases), float32, CPU, torch threads = cores, its rotary base set to the config's
`rope_theta` (TL ignores it for Llama-family models). Prints the time and writes the mean
head DLA (`--json`) so the numbers can be set beside rdla's summary.parquet.

    python3 bench/tl_census.py MODEL_DIR prompts.jsonl [--batch 32] [--json out.json]

MODEL_DIR is a Hugging Face folder (for SmolLM2, `bench/gguf_to_hf.py` writes one from the
GGUF file rdla reads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tl_common as tc  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def honour_rope_theta(model_dir: str) -> float | None:
    """TL 2.18 builds Llama-family rotary tables with base 10000 whatever `rope_theta` says
    (SmolLM2: 100000; the answer logit is then off by up to 0.9): patch the config it builds
    so the baseline computes the model's own numbers. Returns the base used."""
    import transformer_lens.loading_from_pretrained as tl_loading

    theta = json.loads((Path(model_dir) / "config.json").read_text()).get("rope_theta")
    if theta is None:
        return None
    orig = tl_loading.convert_hf_model_config

    def patched(name, **kw):
        cfg = orig(name, **kw)
        cfg["rotary_base"] = float(theta)
        return cfg

    tl_loading.convert_hf_model_config = patched
    return float(theta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json")
    a = ap.parse_args()
    threads = tc.set_threads()
    base = honour_rope_theta(a.model)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = tc.load_model(a.model, tokenizer=tok)
    load_s = time.perf_counter() - t0
    if base is not None:
        assert model.cfg.rotary_base == base, (model.cfg.rotary_base, base)
    W_O = model.W_O.detach()  # [L, H, dh, d]
    W_U = model.W_U.detach()  # [d, V]
    L, H = model.cfg.n_layers, model.cfg.n_heads

    records = [json.loads(line) for line in open(a.prompts) if line.strip()]
    t1 = time.perf_counter()
    groups: dict[int, list[tuple[int, list[int], int, int]]] = defaultdict(list)
    for i, r in enumerate(records):
        ids = model.to_tokens(r["prompt"], prepend_bos=True)[0].tolist()
        ans = model.to_single_token(r["answer"])
        foil = model.to_single_token(r["foil"])
        groups[len(ids)].append((i, ids, ans, foil))
    dla = torch.zeros(len(records), L, H)
    tokens = 0
    with torch.no_grad():
        for n, items in sorted(groups.items()):
            for s in range(0, len(items), a.batch):
                chunk = items[s : s + a.batch]
                toks = torch.tensor([ids for _, ids, _, _ in chunk])
                _, cache = model.run_with_cache(
                    toks,
                    return_type=None,
                    names_filter=lambda k: k.endswith("hook_z") or k == "ln_final.hook_scale",
                )
                z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][:, -1] for l in range(L)], 1)
                u = W_U[:, [c[2] for c in chunk]] - W_U[:, [c[3] for c in chunk]]  # [d, B]
                scale = cache["ln_final.hook_scale"][:, -1, 0]  # [B]
                out = torch.einsum("blhe,lhed,db->blh", z, W_O, u) / scale[:, None, None]
                dla[[c[0] for c in chunk]] = out
                tokens += n * len(chunk)
    run_s = time.perf_counter() - t1
    print(
        f"TransformerLens census: {len(records)} prompts ({tokens} tokens) in {run_s:.1f} s "
        f"({1e3 * run_s / len(records):.1f} ms per prompt); load {load_s:.1f} s; "
        f"{threads} threads; batches of ≤ {a.batch} prompts of equal length"
    )
    if a.json:
        mean = dla.mean(0)
        Path(a.json).write_text(
            json.dumps(
                {
                    "prompts": len(records),
                    "tokens": tokens,
                    "seconds": run_s,
                    "mean_head_dla": {
                        f"L{l}.attn/H{h}": float(mean[l, h]) for l in range(L) for h in range(H)
                    },
                }
            )
        )


if __name__ == "__main__":
    main()

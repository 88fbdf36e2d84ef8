#!/usr/bin/env python3
"""TransformerLens timings for bench/compare.sh: (a) load + weight processing, (b) forward
with cache, (c) the full overview, (d) one depth-2 drill-down; medians of --reps runs after
a warm-up, on the CPU with torch threads = cores. Writes JSON (`--json`)."""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tl_common as tc  # noqa: E402
import torch  # noqa: E402


def time_ms(reps: int, f) -> tuple[float, float]:
    """(median, min) wall time in ms over `reps` runs after one warm-up."""
    f()  # warm-up
    ts = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), min(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lengths", default="16,128,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--load-reps", type=int, default=3)
    ap.add_argument("--answer-id", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    threads = tc.set_threads()
    tok = tc.load_tokenizer(a.model)

    loads = []
    for _ in range(max(1, a.load_reps)):
        model = None
        gc.collect()
        t = time.perf_counter()
        model = tc.load_model(a.model, tok)
        loads.append((time.perf_counter() - t) * 1e3)
    W = tc.Stacked(model)
    cfg = model.cfg
    out = {
        "impl": "transformer_lens",
        "versions": {"torch": torch.__version__},
        "threads": threads,
        "shape": [cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab],
        "load_ms": statistics.median(loads),
        "load_min_ms": min(loads),
        "load_ms_all": loads,
        "lengths": [],
    }
    try:
        import importlib.metadata as md

        out["versions"]["transformer_lens"] = md.version("transformer_lens")
        out["versions"]["transformers"] = md.version("transformers")
    except Exception:  # noqa: BLE001
        pass

    g = torch.Generator().manual_seed(42)
    for p in [int(x) for x in a.lengths.split(",")]:
        ids = torch.cat([torch.zeros(1, dtype=torch.long),
                         torch.randint(1, cfg.d_vocab, (p - 1,), generator=g)])[None]
        fwd, fwd_min = time_ms(a.reps, lambda: tc.forward(model, ids))
        fwd_none, fwd_none_min = time_ms(a.reps, lambda: tc.forward(model, ids, return_type=None))
        logits, cache = tc.forward(model, ids)
        last = logits[0, -1]
        ov, ov_min = time_ms(a.reps, lambda: tc.overview(W, cache, last, a.answer_id))
        l_top, l_src, src = cfg.n_layers - 1, cfg.n_layers // 2, max(p - 2, 0)
        dr, dr_min = time_ms(a.reps, lambda: tc.drill(W, cache, a.answer_id, l_top, 0, src, l_src))
        row = {"tokens": p, "forward_ms": fwd, "forward_no_logits_ms": fwd_none,
               "overview_ms": ov, "drill_ms": dr, "forward_min_ms": fwd_min,
               "forward_no_logits_min_ms": fwd_none_min, "overview_min_ms": ov_min,
               "drill_min_ms": dr_min,
               "drill_path": f"L{l_top}.attn/H0/{src}:L{l_src}.attn"}
        out["lengths"].append(row)
        print(json.dumps(row), file=sys.stderr)
        del cache, logits
        gc.collect()
    text = json.dumps(out, indent=1)
    if a.json:
        Path(a.json).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()

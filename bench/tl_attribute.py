#!/usr/bin/env python3
"""The TransformerLens twin of one `rdla attribute --json` call, for whole-process timing:
import, load + weight processing, tokenise (BOS prepended), forward with cache, the
overview (DESIGN.md section 1) and the top-10 predictions, written as JSON with the same
keys as rdla's report."""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tl_common as tc  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--answer", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    tc.set_threads()
    t_import = time.perf_counter()
    tok = tc.load_tokenizer(a.model)
    model = tc.load_model(a.model, tok)
    W = tc.Stacked(model)
    t_load = time.perf_counter()
    ans = tok(a.answer, add_special_tokens=False).input_ids
    if len(ans) != 1:
        sys.exit(f"--answer {a.answer!r} is not one token: {ans}")
    tokens = model.to_tokens(a.prompt, prepend_bos=True)
    logits, cache = tc.forward(model, tokens)
    t_fwd = time.perf_counter()
    ov = tc.overview(W, cache, logits[0, -1], ans[0])
    last = logits[0, -1]
    probs = torch.softmax(last, -1)
    top = torch.topk(last, 10)
    t_attr = time.perf_counter()
    labels = ["embed", "pos"] + [f"L{l}.{k}" for l in range(W.L) for k in ("attn", "mlp")]
    report = {
        "token_ids": tokens[0].tolist(),
        "token_strs": [tok.decode([i]) for i in tokens[0].tolist()],
        "answer_id": ans[0],
        "foil_id": None,
        "target_value": float(ov["target_value"]),
        "top_predictions": [
            {"id": int(i), "token": tok.decode([int(i)]), "logit": float(v), "prob": float(probs[i])}
            for v, i in zip(top.values, top.indices)
        ],
        "component_labels": labels,
        "components": ov["components"].tolist(),
        "unembed_bias": float(W.b_U[ans[0]]),
        "head_dla": ov["head_dla"].tolist(),
        "head_breakdown": ov["head_breakdown"].tolist(),
        "mlp_breakdown": ov["mlp_breakdown"].tolist(),
        "mlp_bias": ov["mlp_bias"].tolist(),
        "attn_bias": ov["attn_bias"].tolist(),
        "timings_ms": {
            "import": (t_import - T0) * 1e3,
            "load": (t_load - t_import) * 1e3,
            "forward": (t_fwd - t_load) * 1e3,
            "attribution": (t_attr - t_fwd) * 1e3,
        },
    }
    Path(a.json).write_text(json.dumps(report))


if __name__ == "__main__":
    main()

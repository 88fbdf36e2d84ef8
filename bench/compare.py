#!/usr/bin/env python3
"""Drive the side-by-side benchmark (run by bench/compare.sh; see docs/PERFORMANCE.md).

For each shape it generates a random checkpoint with `rdla bench --generate-only`, then on
that same folder runs `rdla bench --existing` and `tl_bench.py` (a–d), and times one whole
`rdla attribute --json` process against one `tl_attribute.py` process under
`/usr/bin/time -v` (e, f), cross-checks their JSON outputs, and prints a Markdown table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {
    "gpt2": ("gpt2", "GPT-2 small shape (12 L, 12 H, d 768, V 50257)"),
    "neo": ("gpt-neo", "TinyStories-Instruct-1M shape (GPT-Neo, 8 L, 16 H, d 64, V 50257, window 256)"),
}
WORDS = ("The little dog ran to the park and then the happy dog went back to the house . "
         "Mary and John went to the store , Mary gave a book to John . ").split()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd if len(" ".join(cmd)) < 300 else cmd[:4] + ["..."]), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def make_prompt(model_dir: Path, n_tokens: int) -> str:
    """Text that tokenises to exactly n_tokens tokens (BOS not included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    n = lambda s: len(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731
    text, i = "", 0
    while n(text) < n_tokens:
        cand = text + (" " if text else "") + WORDS[i % len(WORDS)]
        i += 1
        if n(cand) <= n_tokens:
            text = cand
        elif i > 10 * n_tokens:
            break
    if n(text) != n_tokens:  # pad with single-character words
        while n(text) < n_tokens:
            text += " a"
    assert n(text) == n_tokens, (n(text), n_tokens)
    return text


def timed_process(cmd: list[str]) -> tuple[float, float]:
    """(wall ms, peak RSS MiB) of one process under /usr/bin/time -v."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    wall = (time.perf_counter() - t) * 1e3
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return wall, (int(m.group(1)) / 1024 if m else float("nan"))


def best_of(rounds: list[dict]) -> dict:
    """Per measurement, the fastest over rounds of the fastest over repetitions."""
    out = dict(rounds[0])
    # rdla opens lazily: its blocks are read and processed by the first forward pass, which
    # is counted here so that the row compares loading and weight processing on both sides
    out["load_ms"] = min(
        r.get("load_min_ms", r["load_ms"]) + (r.get("first_forward_ms") or 0.0) for r in rounds
    )
    out["lengths"] = []
    for rows in zip(*(r["lengths"] for r in rounds), strict=True):
        row = dict(rows[0])
        for k in list(row):
            if k.endswith("_ms") and not k.endswith("_min_ms"):
                mk = k[:-3] + "_min_ms"
                row[k] = min(r.get(mk, r[k]) for r in rows)
        out["lengths"].append(row)
    return out


def max_abs(a, b) -> float:
    if isinstance(a, list):
        return max((max_abs(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return abs(float(a) - float(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rdla", required=True, help="release rdla binary")
    ap.add_argument("--work", required=True, help="scratch folder for checkpoints and outputs")
    ap.add_argument("--shapes", default="gpt2,neo")
    ap.add_argument("--lengths", default="16,128,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--load-reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rdla/TL rounds of (a)-(d); the best is reported")
    ap.add_argument("--proc-reps", type=int, default=3,
                    help="whole-process runs of each, interleaved; the best is reported")
    ap.add_argument("--proc-tokens", type=int, default=128)
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    results = {"machine": machine(), "rounds": a.rounds, "reps": a.reps,
               "proc_reps": a.proc_reps, "shapes": {}}

    for key in a.shapes.split(","):
        arch, title = SHAPES[key]
        mdir = work / key
        run([a.rdla, "bench", "--arch", arch, "--dir", str(mdir), "--generate-only",
             "--lengths", a.lengths])
        with open(mdir / "model.safetensors", "rb") as f:  # warm the page cache for both
            while f.read(1 << 24):
                pass
        common = ["--lengths", a.lengths, "--reps", str(a.reps), "--load-reps", str(a.load_reps)]
        r_rounds, t_rounds = [], []
        for i in range(a.rounds):  # alternate, so a busy spell on a shared machine hits both
            rj, tj = work / f"rdla_{key}_{i}.json", work / f"tl_{key}_{i}.json"
            run([a.rdla, "bench", "--dir", str(mdir), "--existing", "--device", "cpu",
                 "--json", str(rj)] + common)
            run([py, str(HERE / "tl_bench.py"), "--model", str(mdir), "--json", str(tj)] + common)
            r_rounds.append(json.loads(rj.read_text()))
            t_rounds.append(json.loads(tj.read_text()))

        prompt = make_prompt(mdir, a.proc_tokens - 1)
        answer = " the"
        r_out, t_out = work / f"rdla_attr_{key}.json", work / f"tl_attr_{key}.json"
        r_cmd = [a.rdla, "attribute", "--model", str(mdir), "--prompt", prompt, "--answer",
                 answer, "--device", "cpu", "--json", str(r_out)]
        t_cmd = [py, str(HERE / "tl_attribute.py"), "--model", str(mdir), "--prompt", prompt,
                 "--answer", answer, "--json", str(t_out)]
        r_runs, t_runs = [], []
        for _ in range(a.proc_reps):  # interleaved, so drift hits both
            r_runs.append(timed_process(r_cmd))
            t_runs.append(timed_process(t_cmd))
        rr, tr = json.loads(r_out.read_text()), json.loads(t_out.read_text())
        assert rr["token_ids"] == tr["token_ids"], "rdla and TL tokenised the prompt differently"
        check = {k: max_abs(rr[k], tr[k]) for k in
                 ("target_value", "components", "head_dla", "head_breakdown", "mlp_breakdown",
                  "mlp_bias")}
        results["shapes"][key] = {
            "title": title,
            "rdla": best_of(r_rounds),
            "tl": best_of(t_rounds),
            "rdla_rounds": r_rounds,
            "tl_rounds": t_rounds,
            "process": {
                "tokens": len(rr["token_ids"]),
                "rdla_wall_ms": min(w for w, _ in r_runs),
                "tl_wall_ms": min(w for w, _ in t_runs),
                "rdla_wall_median_ms": statistics.median(w for w, _ in r_runs),
                "tl_wall_median_ms": statistics.median(w for w, _ in t_runs),
                "rdla_rss_mib": max(m for _, m in r_runs),
                "tl_rss_mib": max(m for _, m in t_runs),
                "rdla_runs": r_runs, "tl_runs": t_runs,
                "rdla_internal_ms": rr.get("timings_ms"), "tl_internal_ms": tr.get("timings_ms"),
            },
            "max_abs_diff_rdla_vs_tl": check,
        }
        (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = table(results)
    (work / "results.md").write_text(md)
    print(md)


def machine() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), "")
    except OSError:
        pass
    import importlib.metadata as md

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": md.version("torch"), "transformer_lens": md.version("transformer_lens"),
            "transformers": md.version("transformers")}


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']} "
             f"(threads = {m['cores']}), TransformerLens {m['transformer_lens']}, "
             f"transformers {m['transformers']}; rdla on the CPU backend (burn-flex).",
             f"Times: best of {res['rounds']} alternating rounds × {res['reps']} repetitions "
             f"(after a warm-up); whole processes: best of {res['proc_reps']} interleaved runs. "
             "Peak RSS: the largest of those runs.", ""]
    for key, s in res["shapes"].items():
        r, t, p = s["rdla"], s["tl"], s["process"]
        wmib = r["weight_bytes"] / 2**20
        lines += [f"### {s['title']}", "",
                  "| measurement | TransformerLens (ms) | rdla (ms) | TL / rdla |",
                  "|---|---:|---:|---:|"]

        def row(name, tl, rd, fmt="{:.1f}"):
            lines.append(f"| {name} | {fmt.format(tl)} | {fmt.format(rd)} | {tl / rd:.1f}× |")

        row("(a) load + weight processing", t["load_ms"], r["load_ms"], "{:.0f}")
        for rr_, tt in zip(r["lengths"], t["lengths"], strict=True):
            n = rr_["tokens"]
            row(f"(b) forward with cache, {n} tokens", tt["forward_ms"], rr_["forward_ms"])
            lines.append(f"| &nbsp;&nbsp;(b′) TL `return_type=None` (no logits), {n} tokens | "
                         f"{tt['forward_no_logits_ms']:.1f} | {rr_['forward_ms']:.1f} | "
                         f"{tt['forward_no_logits_ms'] / rr_['forward_ms']:.1f}× |")
            row(f"(c) overview, {n} tokens", tt["overview_ms"], rr_["overview_ms"], "{:.2f}")
            row(f"(b)+(c), {n} tokens", tt["forward_ms"] + tt["overview_ms"],
                rr_["forward_ms"] + rr_["overview_ms"])
            row(f"(d) drill-down `{rr_['drill_path']}`", tt["drill_ms"], rr_["drill_ms"], "{:.2f}")
        row(f"(e) whole process, `attribute --json`, {p['tokens']} tokens", p["tl_wall_ms"],
            p["rdla_wall_ms"], "{:.0f}")
        lines.append(f"| (f) peak RSS, that process (MiB) | {p['tl_rss_mib']:.0f} | "
                     f"{p['rdla_rss_mib']:.0f} | {p['tl_rss_mib'] / p['rdla_rss_mib']:.1f}× |")
        lines.append(f"| &nbsp;&nbsp;f32 weights (model.safetensors, MiB); rdla RSS / weights | "
                     f"| {wmib:.0f} | {p['rdla_rss_mib'] / wmib:.2f}× |")
        chk = s["max_abs_diff_rdla_vs_tl"]
        lines += ["", "Cross-check of the two (e) outputs, max |rdla − TL|: " +
                  ", ".join(f"{k} {v:.1e}" for k, v in chk.items()), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

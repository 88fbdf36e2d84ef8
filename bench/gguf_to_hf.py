#!/usr/bin/env python3
"""Write a Hugging Face folder (config, float32 safetensors, tokenizer) from a GGUF file with
transformers' own GGUF reader, so TransformerLens can load the model rdla reads from the GGUF
(bench/tl_census.py).

    python3 bench/gguf_to_hf.py SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

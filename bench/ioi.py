#!/usr/bin/env python3
"""IOI-style prompts for `rdla census` (indirect object identification): two names go
somewhere, the second one (the subject) gives something to someone, and the answer is the
first name (the indirect object), the foil the subject. Names, places and objects are words
that are one token each with a leading space in GPT-2-style BPE vocabularies (SmolLM2's
included). Deterministic for a seed; standard library only.

    python3 bench/ioi.py 1000 > ioi.jsonl               # {"prompt", "answer", "foil"} per line
    python3 bench/ioi.py 1000 --swapped > ioi-swapped.jsonl   # the same with the names swapped
"""

from __future__ import annotations

import argparse
import json
import random

NAMES = (
    "Mary John Tom James Dan Sarah Anna Paul Mark Lisa Kate Mike David Alice Bob Emma Sam "
    "Jack Max Ben Lucy Amy Adam Peter Laura Rachel Steve Chris Jane Ryan Kevin Linda Susan "
    "Karen Eric Henry Grace Rose Oliver Leo"
).split()
PLACES = "store park school garden beach office market library station restaurant".split()
OBJECTS = "ring drink book bag ball key letter gift cake phone pen hat".split()
TEMPLATES = [
    "When {A} and {B} went to the {place}, {B} gave a {obj} to",
    "After {A} and {B} arrived at the {place}, {B} handed a {obj} to",
    "Then, {A} and {B} had a long day at the {place}. {B} gave a {obj} to",
    "While {A} and {B} were working at the {place}, {B} passed a {obj} to",
    "{A} and {B} went to the {place}. Later, {B} brought a {obj} to",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, help="how many prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--swapped",
        action="store_true",
        help="swap the two names everywhere (the contrast prompt of each record)",
    )
    a = ap.parse_args()
    rng = random.Random(a.seed)
    for _ in range(a.n):
        io, s = rng.sample(NAMES, 2)
        if a.swapped:
            io, s = s, io
        t = rng.choice(TEMPLATES)
        prompt = t.format(A=io, B=s, place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
        print(json.dumps({"prompt": prompt, "answer": " " + io, "foil": " " + s}))


if __name__ == "__main__":
    main()

"""Shared TransformerLens side of the rdla benchmark (bench/compare.sh).

What a notebook user would write: load a local Hugging Face folder with
`HookedTransformer.from_pretrained` (TL's default weight processing: fold_ln,
center_writing_weights, center_unembed, fold_value_biases; float32; CPU), run
`run_with_cache`, and compute the overview of shared DESIGN.md section 1 (head DLA, the
[layer, head, src_pos, src_comp] head breakdown and the MLP breakdown) as one vectorised
einsum expression per table from the TL cache. No Python loops over children.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import transformer_lens.loading_from_pretrained as tl_loading  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402
from transformers import GPT2TokenizerFast  # noqa: E402

# TL only knows hub names; let it read a local folder's config.json (as tests/fixtures/generate.py does).
_orig_official = tl_loading.get_official_model_name


def _official_or_local(name: str) -> str:
    if (Path(name) / "config.json").exists():
        return name
    return _orig_official(name)


tl_loading.get_official_model_name = _official_or_local

GELU_C = 0.7978845608028654  # sqrt(2/pi)


def set_threads() -> int:
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def load_tokenizer(model_dir: str) -> GPT2TokenizerFast:
    return GPT2TokenizerFast.from_pretrained(str(model_dir))


def load_model(model_dir: str, tokenizer=None) -> HookedTransformer:
    """Load + TL weight processing (the `from_pretrained` defaults, spelled out)."""
    if tokenizer is None:
        tokenizer = load_tokenizer(model_dir)
    model = HookedTransformer.from_pretrained(
        str(model_dir),
        tokenizer=tokenizer,
        device="cpu",
        dtype=torch.float32,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
        default_prepend_bos=True,
    )
    model.eval()
    return model


class Stacked:
    """Weights stacked over layers once per model (TL's `model.W_V` etc. re-stack on every
    access; a careful notebook user keeps them)."""

    def __init__(self, model: HookedTransformer):
        with torch.no_grad():
            self.W_V = model.W_V.detach()  # [L, H, d, dh]
            self.W_O = model.W_O.detach()  # [L, H, dh, d]
            self.b_V = model.b_V.detach()  # [L, H, dh]
            self.b_O = model.b_O.detach()  # [L, d]
            self.W_in = model.W_in.detach()  # [L, d, d_mlp]
            self.b_in = model.b_in.detach()  # [L, d_mlp]
            self.W_out = model.W_out.detach()  # [L, d_mlp, d]
            self.b_out = model.b_out.detach()  # [L, d]
            self.W_U = model.W_U.detach()  # [d, V]
            self.b_U = model.b_U.detach()  # [V]
        L = model.cfg.n_layers
        C = 2 + 2 * L
        # components upstream of each layer's attention input (resid_pre) / MLP input (resid_mid)
        c = torch.arange(C)
        first_attn = 2 + 2 * torch.arange(L)
        self.up_pre = (c[None, :] < first_attn[:, None]).float()  # [L, C]
        self.up_mid = (c[None, :] <= first_attn[:, None]).float()  # [L, C]
        self.L, self.H, self.C = L, model.cfg.n_heads, C


def frozen_gate(z: torch.Tensor) -> torch.Tensor:
    """act(z)/z for gelu_new, act'(0) = 0.5 where |z| < 1e-6 (DESIGN.md section 1)."""
    act = 0.5 * z * (1.0 + torch.tanh(GELU_C * (z + 0.044715 * z.pow(3))))
    small = z.abs() < 1e-6
    return torch.where(small, torch.full_like(z, 0.5), act / torch.where(small, torch.ones_like(z), z))


def forward(model: HookedTransformer, tokens: torch.Tensor, return_type="logits"):
    with torch.no_grad():
        return model.run_with_cache(tokens, return_type=return_type)


def components(cache, L: int) -> torch.Tensor:
    """[C, P, d]: embed, pos, L0.attn, L0.mlp, ... (sum = final residual)."""
    keys = ["hook_embed", "hook_pos_embed"] + [
        f"blocks.{l}.hook_{k}_out" for l in range(L) for k in ("attn", "mlp")
    ]
    return torch.stack([cache[k][0] for k in keys])


def overview(W: Stacked, cache, logits_last: torch.Tensor, answer: int) -> dict:
    """The full overview at the last position, vectorised (DESIGN.md section 1)."""
    with torch.no_grad():
        L = W.L
        X = components(cache, L)  # [C, P, d]
        q = X.shape[1] - 1
        u = W.W_U[:, answer]
        r = (u - u.mean()) / cache["ln_final.hook_scale"][0, q, 0]  # C(u) / s_final[q]
        comps = X[:, q] @ r  # [C]
        attn_bias = W.b_O @ r  # [L]
        # heads: r' = A[l,h,q,p] * C(W_V W_O r) / s1_l[p]
        wo_r = torch.einsum("lhed,d->lhe", W.W_O, r)  # [L, H, dh]
        ov = torch.einsum("lhme,lhe->lhm", W.W_V, wo_r)
        ov = ov - ov.mean(-1, keepdim=True)  # [L, H, d]
        A = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, q, :] for l in range(L)])
        s1 = torch.stack([cache[f"blocks.{l}.ln1.hook_scale"][0, :, 0] for l in range(L)])
        raw = torch.einsum("cpd,lhd->lhpc", X, ov)  # [L, H, P, C]
        head_breakdown = raw * (A / s1[:, None, :])[..., None] * W.up_pre[:, None, None, :]
        head_bias = torch.einsum("lhe,lhe->lh", W.b_V, wo_r) * A.sum(-1)
        head_dla = head_breakdown.sum((2, 3)) + head_bias  # [L, H]
        # MLPs: r' = C(W_in (g * W_out r)) / s2_l[q]
        z = torch.stack([cache[f"blocks.{l}.mlp.hook_pre"][0, q] for l in range(L)])  # [L, d_mlp]
        g = frozen_gate(z)
        wout_r = torch.einsum("lmd,d->lm", W.W_out, r)  # [L, d_mlp]
        s2 = torch.stack([cache[f"blocks.{l}.ln2.hook_scale"][0, q, 0] for l in range(L)])
        r_mlp = torch.einsum("ldm,lm->ld", W.W_in, g * wout_r)
        r_mlp = (r_mlp - r_mlp.mean(-1, keepdim=True)) / s2[:, None]  # [L, d]
        mlp_breakdown = (r_mlp @ X[:, q].T) * W.up_mid  # [L, C]
        mlp_bias = (g * W.b_in * wout_r).sum(-1) + W.b_out @ r  # [L]
        target = logits_last[answer] - W.b_U[answer]
        return dict(
            target_value=target,
            components=comps,
            attn_bias=attn_bias,
            head_dla=head_dla,
            head_bias=head_bias,
            head_breakdown=head_breakdown,
            mlp_breakdown=mlp_breakdown,
            mlp_bias=mlp_bias,
        )


def drill(W: Stacked, cache, answer: int, l_top: int, h_top: int, p: int, l_src: int) -> dict:
    """Expand `L{l_top}.attn/H{h_top}/{p}:L{l_src}.attn`: the value of attention layer
    l_src at source p read out through head (l_top, h_top), its heads, and its bias."""
    with torch.no_grad():
        q = cache["hook_embed"].shape[1] - 1
        u = W.W_U[:, answer]
        r = (u - u.mean()) / cache["ln_final.hook_scale"][0, q, 0]
        ov = W.W_V[l_top, h_top] @ (W.W_O[l_top, h_top] @ r)
        ov = ov - ov.mean()
        a = cache[f"blocks.{l_top}.attn.hook_pattern"][0, h_top, q, p]
        r1 = a * ov / cache[f"blocks.{l_top}.ln1.hook_scale"][0, p, 0]
        value = cache[f"blocks.{l_src}.hook_attn_out"][0, p] @ r1
        z = cache[f"blocks.{l_src}.attn.hook_z"][0, p]  # [H, dh]
        children = torch.einsum("he,hed,d->h", z, W.W_O[l_src], r1)
        bias = W.b_O[l_src] @ r1
        return dict(value=value, children=children, bias=bias)

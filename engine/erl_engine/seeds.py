"""How a sample call's seed becomes the seeds of its prompts when prompts are sampled apart.

A Tinker service takes one prompt per sampling request, so a client that samples several prompts
over it (the `engine.kind: "tinker"` bridge) sends prompt i of a call with seed `prompt_seed(seed, i)`.
The engine samples the same way when ERL_ENGINE_SAMPLE_SEEDS=per-prompt (sampler.py): prompt i's
sequences then draw from their own generator seeded with `prompt_seed(seed, i)`, as a call with that
prompt alone and that seed would. prompt_seed(seed, 0) == seed, so the first prompt draws as before.

    prompt_seed(s, i) = (s + i * 0x9E3779B97F4A7C15) mod 2^63      (the golden-ratio increment)
"""

from __future__ import annotations

import os

_GOLDEN = 0x9E3779B97F4A7C15
_MOD = 1 << 63
MODES = ("per-call", "per-prompt")


def prompt_seed(seed: int, index: int) -> int:
    return (seed + index * _GOLDEN) % _MOD


def sample_seed_mode() -> str:
    """ERL_ENGINE_SAMPLE_SEEDS: "per-call" (default: one generator for the whole call) or "per-prompt"."""
    mode = os.environ.get("ERL_ENGINE_SAMPLE_SEEDS", "per-call") or "per-call"
    if mode not in MODES:
        raise ValueError(f"ERL_ENGINE_SAMPLE_SEEDS must be one of {', '.join(MODES)}, got {mode!r}")
    return mode

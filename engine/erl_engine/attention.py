"""Training attention on CPU for bf16 models: the attention's precision chosen by measurement.

Under bf16 on a CPU, PyTorch's fused attention (`scaled_dot_product_attention`, the model's default)
runs its backward pass much slower in bf16 than in fp32 for short and medium sequences; its forward
pass alone is faster in bf16. Measured on a 2-core Xeon with AMX, one thread, 4 heads of 32, forward
and backward of one layer's attention (docs/benchmarks.md):

    32 x 86 tokens     bf16 29.0 ms   fp32 8.6 ms
    16 x 300 tokens    bf16 38.4 ms   fp32 29.7 ms
     8 x 600 tokens    bf16 72.8 ms   fp32 49.7 ms
     4 x 1200 tokens   bf16 80.1 ms   fp32 88.0 ms
     2 x 2400 tokens   bf16 149.6 ms  fp32 187.4 ms

So when a bf16 model's attention runs on CPU with gradients, the query, keys and values may be cast
to fp32 for the attention alone (the projections around it stay bf16). Which one is faster is
measured, not assumed: the first training call whose key length falls in a new power-of-two bucket
times both on a probe of that bucket's shape (forward and backward, best of two after a warm-up) and
keeps the faster for that bucket for the life of the engine. Each verdict is printed to stderr as
one line (`erl engine: attention ...`). Calls without gradients (sampling, log-prob forwards) keep the
plain bf16 path, which is faster there.

$ERL_ENGINE_CPU_ATTENTION=fp32|bf16 fixes the choice; `auto` (the default) measures.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

NAME = "erl_cpu_sdpa"
ENV = "ERL_ENGINE_CPU_ATTENTION"
# Above this key length the probe is not run and the plain bf16 path is kept: there bf16 measured
# faster and a probe costs seconds.
MAX_PROBED = 2048
# The probe's batch: at most this many tokens (rows x bucket length).
PROBE_TOKENS = 8192

# bucket -> (use fp32, reason); one verdict per engine process.
_verdicts: dict[int, tuple[bool, str]] = {}


def bucket(length: int) -> int:
    """The power of two at or above `length`, at least 64."""
    return 1 << max(6, (max(length, 1) - 1).bit_length())


def verdicts() -> dict[int, str]:
    """What has been decided so far: bucket -> "fp32 (...)" / "bf16 (...)"."""
    return {b: reason for b, (_, reason) in sorted(_verdicts.items())}


def reset() -> None:
    _verdicts.clear()


def install(model: torch.nn.Module) -> bool:
    """Routes a CPU model's attention through `forward` below (its default is SDPA). Returns False,
    changing nothing, where the model uses another attention or this transformers has no interface."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:
        return False
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(NAME, forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


_warned: set[str] = set()


def mode() -> str:
    raw = os.environ.get(ENV, "auto")
    want = raw.strip().lower() or "auto"
    if want not in ("auto", "fp32", "bf16"):
        if raw not in _warned:
            _warned.add(raw)
            print(f"erl engine: ignoring {ENV}={raw!r} (expected auto, fp32 or bf16); measuring instead",
                  file=sys.stderr, flush=True)
        return "auto"
    return want


def forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with q/k/v in fp32 where that was measured faster (see header)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # The rotary embedding leaves q and k in fp32 under autocast; autocast then runs SDPA in bf16.
    bf16 = query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if not (query.device.type == "cpu" and bf16 and torch.is_grad_enabled()
            and (query.requires_grad or key.requires_grad or value.requires_grad)
            and use_fp32(query.shape, key.shape)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(device_type="cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(torch.bfloat16), weights


def use_fp32(q_shape: torch.Size, k_shape: torch.Size) -> bool:
    """Whether a training attention of these shapes ([batch, heads, length, head_dim]) runs in fp32."""
    m = mode()
    if m != "auto":
        return m == "fp32"
    b = bucket(int(k_shape[-2]))
    if b > MAX_PROBED:
        return False
    if b not in _verdicts:
        _verdicts[b] = probe(b, int(q_shape[1]), int(q_shape[-1]), int(q_shape[0]))
        print(f"erl engine: attention for training at up to {b} tokens: {_verdicts[b][1]}", file=sys.stderr,
              flush=True)
    return _verdicts[b][0]


def probe(length: int, heads: int, head_dim: int, rows: int) -> tuple[bool, str]:
    """Times causal attention forward + backward over bf16 inputs, computed in bf16 and in fp32."""
    rows = max(1, min(rows, PROBE_TOKENS // length))
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn((rows, heads, length, head_dim), generator=gen).to(torch.bfloat16) for _ in range(3)]

    def run(fp32: bool) -> float:
        q, k, v = (x.clone().requires_grad_(True) for x in base)
        t0 = time.perf_counter()
        with torch.autocast(device_type="cpu", enabled=False):
            args = [x.float() if fp32 else x for x in (q, k, v)]
            out = F.scaled_dot_product_attention(*args, is_causal=True)
            out.to(torch.bfloat16).float().sum().backward()
        return time.perf_counter() - t0

    run(False)
    run(True)  # warm-ups
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(2):  # interleaved, so that a change of load hits both alike
        for fp32_ in (False, True):
            times[fp32_].append(run(fp32_))
    bf16, fp32 = min(times[False]), min(times[True])
    choice = fp32 < bf16
    detail = (f"bf16 {bf16 * 1e3:.1f} ms, fp32 {fp32 * 1e3:.1f} ms "
              f"(forward + backward, {rows} x {length} tokens, {heads} heads of {head_dim}, "
              f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})")
    return choice, ("fp32" if choice else "bf16") + ": " + detail

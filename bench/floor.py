"""The floor of a GRPO training step on this CPU: the least time any trainer doing the same math could
take, from the matmuls the step must do, each timed on this machine at the step's own shapes.

Every matmul is timed on its own (torch, the step's dtype and thread count, the step's token count M,
best of a few repeats) and counted at that rate. For a projection with `in` inputs and `out` outputs
over M tokens:

  forward       Y  = X W^T     F.linear([M, in], [out, in])   2 M in out FLOPs
  input grad    dX = dY W      mm([M, out], [out, in])        2 M in out
  weight grad   dW = dY^T X    mm([out, M], [M, in])          2 M in out

Attention scores and mixing, per sequence of T tokens (causal: half the square):
  forward  2 matmuls (Q K^T, P V) x 2 x heads x head_dim x T (T + 1) / 2 FLOPs
  backward twice the forward (dQ and dK from dS, dV and dP from dO)
  timed as one batched matmul [sequences x heads, T, head_dim] x [.., head_dim, T].

Which matmuls a step needs (`train_terms`):
  - the decoder's projections (q, k, v, o, gate, up, down) on every token of every sequence (prompt
    and completion): forward and input gradient; the weight gradient only where the weight trains.
    Full fine-tuning trains them all; LoRA trains none of the base weights, whose gradients the
    engine's backward skips, so they cost forward + input gradient only;
  - LoRA: every adapted projection's A [r, in] and B [out, r]: forward, input grad and weight grad;
  - the LM head (hidden -> vocab) on the weighted (trained) positions only, as the engine computes it
    for llama-type models: forward and input gradient, and its weight gradient under full fine-tuning
    (SmolLM2 ties it to the embedding: the embedding's own gradient is a scatter, not a matmul);
  - the input gradients of the first layer count although nothing before it trains under LoRA: the
    floor is that much (at most 1/layers of the input gradients) too high there.
Element-wise work (norms, rotary, SiLU, softmax, the loss) and all per-op overhead count as zero.

Optimizer: AdamW reads each trainable fp32 parameter, its gradient and both moments and writes the
parameter and both moments back: 28 bytes per parameter, at the copy bandwidth measured here
(`copy_bandwidth`).

The sampling floor is bench/engine_bench.sampling_floor (projections at the fastest kernels found
here, the head on the rows that need logits, KV-cache reads at the streaming bandwidth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

# Bytes AdamW moves per trainable fp32 parameter: reads p, g, m, v; writes p, m, v.
ADAMW_BYTES_PER_PARAM = 7 * 4
# Each timed matmul runs at least this long per repeat (looping short ones), best of the repeats.
MIN_SECONDS = 0.02


@dataclass(frozen=True)
class Shape:
    """A Llama-layout decoder's sizes (from its HF config)."""

    hidden: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int

    @staticmethod
    def of(config: Any) -> "Shape":
        heads = int(config.num_attention_heads)
        return Shape(
            hidden=int(config.hidden_size),
            inter=int(config.intermediate_size),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            layers=int(config.num_hidden_layers),
            vocab=int(config.vocab_size),
        )

    def projections(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one layer's projections."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [("q_proj", self.hidden, q), ("k_proj", self.hidden, kv), ("v_proj", self.hidden, kv),
                ("o_proj", q, self.hidden), ("gate_proj", self.hidden, self.inter),
                ("up_proj", self.hidden, self.inter), ("down_proj", self.inter, self.hidden)]


@dataclass(frozen=True)
class Term:
    """`count` matmuls of one kind ('fwd', 'dx', 'dw' or 'attn') on one shape, in one phase."""

    phase: str  # "forward" | "backward"
    what: str
    kind: str
    m: int  # tokens (rows); for 'attn' the sequence length T
    k: int  # in
    n: int  # out; for 'attn' the number of sequences
    count: int

    @property
    def flops(self) -> float:
        if self.kind == "attn":
            # n sequences of m tokens, causal: 2 matmuls x 2 x head_dim x T (T + 1) / 2 per head (k = heads x hd).
            return float(self.count) * self.n * 2 * self.k * self.m * (self.m + 1)
        return float(self.count) * 2 * self.m * self.k * self.n


def train_terms(s: Shape, lengths: list[int], weighted: int, lora_rank: int | None) -> list[Term]:
    """The matmuls of one forward + backward over sequences of `lengths` tokens, `weighted` of them
    trained (the head runs there only); LoRA of rank `lora_rank` on every projection, or full
    fine-tuning when None. See the header for what counts and why."""
    m = sum(lengths)
    out: list[Term] = []
    for name, fin, fout in s.projections():
        out.append(Term("forward", name, "fwd", m, fin, fout, s.layers))
        out.append(Term("backward", name, "dx", m, fin, fout, s.layers))
        if lora_rank is None:
            out.append(Term("backward", name, "dw", m, fin, fout, s.layers))
        else:
            r = lora_rank
            for part, a, b in ((f"{name}.lora_A", fin, r), (f"{name}.lora_B", r, fout)):
                out.append(Term("forward", part, "fwd", m, a, b, s.layers))
                out.append(Term("backward", part, "dx", m, a, b, s.layers))
                out.append(Term("backward", part, "dw", m, a, b, s.layers))
    # Attention per distinct sequence length (its FLOPs grow with T^2).
    qk = s.heads * s.head_dim
    for t in sorted(set(lengths)):
        n_seq = lengths.count(t)
        out.append(Term("forward", "attention", "attn", t, qk, n_seq, s.layers))
        out.append(Term("backward", "attention", "attn", t, qk, n_seq, 2 * s.layers))
    if weighted:
        out.append(Term("forward", "lm_head", "fwd", weighted, s.hidden, s.vocab, 1))
        out.append(Term("backward", "lm_head", "dx", weighted, s.hidden, s.vocab, 1))
        if lora_rank is None:
            out.append(Term("backward", "lm_head", "dw", weighted, s.hidden, s.vocab, 1))
    return out


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of one call: the best of `repeats` rounds, each looping the call for MIN_SECONDS."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    loops = max(1, int(MIN_SECONDS / one))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def matmul_seconds(kind: str, m: int, k: int, n: int, dtype: str, repeats: int, heads: int = 1) -> float:
    """Seconds of one matmul of this kind and shape on this CPU (see the header's table); for 'attn',
    one forward pass of attention over n sequences of m tokens (k = heads x head_dim): two batched
    matmuls over the full square (the causal half is what the FLOP count takes)."""
    import torch
    import torch.nn.functional as F

    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(dt)

    if kind == "fwd":
        x, w = rnd(m, k), rnd(n, k)
        return _best(lambda: F.linear(x, w), repeats)
    if kind == "dx":
        dy, w = rnd(m, n), rnd(n, k)
        return _best(lambda: torch.mm(dy, w), repeats)
    if kind == "dw":
        dy, x = rnd(m, n), rnd(m, k)
        return _best(lambda: torch.mm(dy.t(), x), repeats)
    if kind == "attn":
        hd = k // heads
        q, kt, v = rnd(n * heads, m, hd), rnd(n * heads, hd, m), rnd(n * heads, m, hd)

        def both() -> None:
            torch.bmm(torch.bmm(q, kt), v)

        return _best(both, repeats)
    raise ValueError(f"unknown matmul kind {kind!r}")


def train_floor(s: Shape, lengths: list[int], weighted: int, lora_rank: int | None, dtype: str,
                repeats: int = 3) -> dict[str, Any]:
    """Seconds of the forward and backward matmuls at the rates measured here, and their FLOPs, by phase
    and in all; each distinct shape is timed once."""
    terms = train_terms(s, lengths, weighted, lora_rank)
    seen: dict[tuple[str, int, int, int], float] = {}
    secs = {"forward": 0.0, "backward": 0.0}
    flops = {"forward": 0.0, "backward": 0.0}
    for t in terms:
        key = (t.kind, t.m, t.k, t.n)
        if key not in seen:
            seen[key] = matmul_seconds(t.kind, t.m, t.k, t.n, dtype, repeats, heads=s.heads)
        one = seen[key]
        if t.kind == "attn":
            # Measured over the full square; the causal half is what any trainer must do.
            full = t.n * 2 * 2 * t.k * t.m * t.m
            one = one * (t.flops / t.count) / full
        secs[t.phase] += one * t.count
        flops[t.phase] += t.flops
    total = sum(flops.values())
    return {
        "forwardSeconds": secs["forward"],
        "backwardSeconds": secs["backward"],
        "seconds": secs["forward"] + secs["backward"],
        "forwardFlops": flops["forward"],
        "backwardFlops": flops["backward"],
        "flops": total,
        "rate": total / max(secs["forward"] + secs["backward"], 1e-12),
        "tokens": sum(lengths),
        "weightedTokens": weighted,
        "shapesTimed": len(seen),
    }


def copy_bandwidth(repeats: int = 5, mbytes: int = 256) -> float:
    """Bytes per second moved by a large copy (read + write counted), the best of `repeats`."""
    import torch

    src = torch.ones((mbytes << 20) // 4)
    dst = torch.empty_like(src)
    best = _best(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / best


def optimizer_floor(trainable_params: int, bandwidth: float) -> float:
    """Seconds for AdamW's memory traffic: ADAMW_BYTES_PER_PARAM per trainable parameter at `bandwidth`."""
    return trainable_params * ADAMW_BYTES_PER_PARAM / bandwidth

"""Choices the engine makes by measurement at start: the number of CPU threads and, for `dtype: "auto"`,
the compute dtype. Both are decided by timing the work on this machine, never by its CPU's name.

Threads (when $ERL_ENGINE_THREADS is unset): a few matrix products shaped like a small model's layers
are timed with each candidate count (1, 2, 4, ... up to torch's default), interleaved so that a change
of load hits every candidate alike; the fewest threads within 10% of the fastest median win. On a
busy machine OpenMP threads that lose their core spin and wait for each other, so one thread can be
several times faster than two; on an idle many-core machine more threads win.

dtype "auto":
  CUDA  bfloat16 where the device supports it, else float32.
  CPU   bfloat16 only where a short probe shows it clearly faster (at least BF16_MARGIN times) than
        float32: one MLP block with the model's own hidden and intermediate sizes, forward and
        backward, once in float32 and once under bf16 autocast (the engine's bf16 mode), best of 9
        interleaved repeats after a warm-up. CPUs with native bf16 (AVX512-BF16, AMX) usually pass;
        CPUs without it (AVX2 only) run bf16 matmuls several times slower and fall back to float32.
Threads chosen by measurement are measured again during a run (`maybe_retune`, at most every
RETUNE_SECONDS, before a sample/forward/forwardBackward call; about 10 ms each time), because the load
of a shared machine changes: a second process that starts after the engine takes a core from one of
its OpenMP threads, and the engine drops to one thread until the core is free again.
$ERL_ENGINE_CPU_BF16=off makes the engine treat this CPU as one without fast bf16 hardware (an AVX2-only
CPU): "auto" resolves to float32 without a probe and the sampler does not pre-pack bf16 weights. The
test suite runs the engine tests once this way, so a machine with AMX still exercises the path that
most CPUs take. "auto" (the default) measures.
The verdict and its reason (the measured times) go into EngineInfo (`dtypeReason`, `threadsReason`).
A verdict is memoised per process for each (shape, threads); a new engine measures again, because the
load of a shared machine changes.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

# bf16 must beat fp32 by this factor on CPU: it costs precision, so a tie goes to fp32.
BF16_MARGIN = 1.15
# More threads must beat fewer by this factor.
THREADS_MARGIN = 1.10
# During a run the current count is kept unless it is this much slower than the best: a 5-sample probe
# of a few milliseconds varies by 10-20% on a shared machine, and a count that flips with that noise
# (2.7 against 2.5 ms) made every step run on whichever count the last probe favoured. A core taken by
# another process makes two threads 2-10x slower, well past this.
RETUNE_MARGIN = 1.3
# Floating-point work of one dtype-probe repeat (multiply-adds x 2), kept small: tens of milliseconds
# for the whole probe.
PROBE_FLOPS = 3e8

_threads_reason = "torch's default"
# Set when the thread count was chosen by measurement (not pinned by the environment): the most threads
# a re-measurement may choose, and when the last measurement ran (time.monotonic()).
_retune_max: int | None = None
_last_probe = 0.0
# Seconds between re-measurements of the thread count during a run.
RETUNE_SECONDS = 30.0
_dtype_memo: dict[tuple[Any, ...], tuple[str, str]] = {}
CPU_BF16_ENV = "ERL_ENGINE_CPU_BF16"
_bf16_warned: set[str] = set()


def cpu_bf16_off() -> bool:
    """True when $ERL_ENGINE_CPU_BF16=off: behave as on a CPU without fast bf16 (see the header)."""
    raw = os.environ.get(CPU_BF16_ENV, "auto")
    want = raw.strip().lower() or "auto"
    if want not in ("auto", "off"):
        if raw not in _bf16_warned:
            _bf16_warned.add(raw)
            print(f"erl engine: ignoring {CPU_BF16_ENV}={raw!r} (expected auto or off); measuring instead",
                  file=sys.stderr, flush=True)
        return False
    return want == "off"


def threads_reason() -> str:
    return _threads_reason


def cpu_summary() -> dict[str, Any]:
    """The CPU's model name and the vector extensions that matter for matmul speed (from /proc/cpuinfo)."""
    model = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni")
    return {
        "model": model or "unknown",
        "flags": [f for f in wanted if f in flags],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "logicalCpus": os.cpu_count() or 1,
    }


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def configure_threads(env: dict[str, str] | None = None, repeats: int = 5) -> tuple[int, str]:
    """Sets torch's thread count: $ERL_ENGINE_THREADS, 1 under the test suite ($ERL_TEST), else by
    measurement. Returns (threads, reason); the reason is also kept for EngineInfo."""
    global _threads_reason, _retune_max
    _retune_max = None
    env = dict(os.environ) if env is None else env
    want = env.get("ERL_ENGINE_THREADS", "").strip()
    if want:
        try:
            n = int(want)
        except ValueError:
            n = 0
        if n > 0:
            torch.set_num_threads(n)
            _threads_reason = f"ERL_ENGINE_THREADS={n}"
            return n, _threads_reason
        print(f"erl engine: ignoring ERL_ENGINE_THREADS={want!r} (not a positive integer)", file=sys.stderr)
    if env.get("ERL_TEST"):
        torch.set_num_threads(1)
        _threads_reason = "1 under the test suite (ERL_TEST)"
        return 1, _threads_reason
    global _last_probe
    _retune_max = torch.get_num_threads()
    n, _threads_reason = probe_threads(repeats=repeats)
    _last_probe = time.monotonic()
    torch.set_num_threads(n)
    return n, _threads_reason


def maybe_retune(now: float | None = None, interval: float = RETUNE_SECONDS) -> str | None:
    """Measures the thread count again when it was chosen by measurement and `interval` seconds have
    passed since the last measurement. Returns a one-line note when the count changed, else None."""
    global _last_probe, _threads_reason
    if _retune_max is None or _retune_max < 2:
        return None
    now = time.monotonic() if now is None else now
    if now - _last_probe < interval:
        return None
    _last_probe = now
    before = torch.get_num_threads()
    n, detail = probe_threads(max_threads=_retune_max, repeats=5, current=before)
    detail = detail.replace("measured at start: ", "")
    when = time.strftime("%H:%M:%S")
    if n == before:
        _threads_reason = f"re-measured at {when} (every {interval:.0f} s during a run): {detail}"
        return None
    torch.set_num_threads(n)
    _threads_reason = f"re-measured at {when} (every {interval:.0f} s during a run), {before} -> {n}: {detail}"
    return f"erl engine: threads {before} -> {n} ({detail})"


def probe_threads(max_threads: int | None = None, repeats: int = 5, current: int | None = None) -> tuple[int, str]:
    """Times a fixed matmul workload with 1, 2, 4, ... threads; returns (count, reason). With `current`
    (a re-measurement), that count stays unless it is RETUNE_MARGIN slower than the best."""
    top = max(1, max_threads or torch.get_num_threads())
    cands = [1]
    while cands[-1] * 2 < top:
        cands.append(cands[-1] * 2)
    if top > 1:
        cands.append(top)
    if len(cands) == 1:
        return 1, "1 (one CPU available to torch)"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 256, generator=gen)
    w1 = torch.randn(256, 768, generator=gen) * 0.05
    w2 = torch.randn(768, 256, generator=gen) * 0.05

    def work() -> None:
        F.silu(x @ w1) @ w2

    before = torch.get_num_threads()
    times: dict[int, list[float]] = {c: [] for c in cands}
    try:
        for c in cands:  # warm-up: thread pools start on first use
            torch.set_num_threads(c)
            work()
        for _ in range(repeats):
            for c in cands:
                torch.set_num_threads(c)
                times[c].append(_time(work))
    finally:
        torch.set_num_threads(before)
    med = {c: statistics.median(ts) for c, ts in times.items()}
    best = min(med.values())
    chosen = next(c for c in cands if med[c] <= best * THREADS_MARGIN)
    detail = ", ".join(f"{c} thread{'s' if c > 1 else ''} {med[c] * 1e3:.1f} ms" for c in cands)
    if current in med and chosen != current and med[current] <= best * RETUNE_MARGIN:
        return current, f"{detail} (median of {repeats} matmul probes); kept {current} (within {RETUNE_MARGIN}x of the best)"
    return chosen, f"measured at start: {detail} (median of {repeats} matmul probes); chose {chosen}"


def model_shape(config: Any) -> tuple[int, int]:
    """(hidden, intermediate) of an HF config, with fallbacks for the common naming schemes."""
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model", None)
    hidden = int(hidden) if isinstance(hidden, int) and hidden > 0 else 1024
    inter = (
        getattr(config, "intermediate_size", None)
        or getattr(config, "n_inner", None)
        or getattr(config, "ffn_dim", None)
    )
    inter = int(inter) if isinstance(inter, int) and inter > 0 else 4 * hidden
    return hidden, inter


def probe_cpu_bf16(hidden: int, inter: int, repeats: int = 9) -> tuple[float, float, int]:
    """Best seconds of one MLP block's forward + backward in fp32 and under bf16 autocast, and the
    probe's token count. The block is Llama-shaped (gate/up, SiLU, down) with fp32 weights, as the
    engine keeps trainable weights in fp32 and computes under autocast."""
    tokens = int(max(16, min(256, PROBE_FLOPS / (2 * 3 * 3 * hidden * inter))))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=gen)
    w_up = (torch.randn(2 * inter, hidden, generator=gen) * hidden**-0.5).requires_grad_()
    w_down = (torch.randn(hidden, inter, generator=gen) * inter**-0.5).requires_grad_()
    norm_w = torch.ones(hidden)

    def block(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = F.rms_norm(x, (hidden,), norm_w, 1e-5)
            gate, up = F.linear(h, w_up).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, w_down)
        y.float().square().mean().backward()
        w_up.grad = None
        w_down.grad = None

    block(False)
    block(True)  # warm-up: kernel selection and first-touch costs
    fp32 = bf16 = float("inf")
    for _ in range(repeats):
        fp32 = min(fp32, _time(lambda: block(False)))
        bf16 = min(bf16, _time(lambda: block(True)))
    return fp32, bf16, tokens


def resolve_dtype(requested: str, device: torch.device, config: Any) -> tuple[str, str]:
    """The compute dtype for a loadModel request and why."""
    if requested in ("float32", "bfloat16"):
        return requested, "requested"
    if requested != "auto":
        raise ValueError(f"unknown dtype {requested!r}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"auto: the CUDA device ({torch.cuda.get_device_name(device)}) supports bf16"
        return "float32", f"auto: the CUDA device ({torch.cuda.get_device_name(device)}) has no bf16 support"
    if device.type != "cpu":
        return "float32", f"auto: float32 on device type {device.type}"
    if cpu_bf16_off():
        return "float32", f"auto: {CPU_BF16_ENV}=off treats this CPU as one without fast bf16"
    hidden, inter = model_shape(config)
    threads = torch.get_num_threads()
    key = (hidden, inter, threads)
    if key not in _dtype_memo:
        fp32, bf16, tokens = probe_cpu_bf16(hidden, inter)
        speedup = fp32 / bf16 if bf16 > 0 else 0.0
        what = (
            f"{hidden}x{inter} MLP block, {tokens} tokens, forward+backward, {threads} thread"
            f"{'s' if threads > 1 else ''}: fp32 {fp32 * 1e3:.2f} ms, bf16 {bf16 * 1e3:.2f} ms"
        )
        if speedup >= BF16_MARGIN:
            _dtype_memo[key] = ("bfloat16", f"auto: bf16 measured {speedup:.2f}x faster than fp32 on this CPU ({what})")
        else:
            _dtype_memo[key] = (
                "float32",
                f"auto: bf16 not clearly faster on this CPU ({speedup:.2f}x, needs {BF16_MARGIN}x; {what})",
            )
    return _dtype_memo[key]

"""What bf16 and extra threads really do on this CPU, next to what the engine's "auto" probes decide.

Prints the CPU (model name, avx2/avx512/amx flags), matmul GFLOP/s in fp32, bf16 and under bf16
autocast at a few shapes, erl-tiny's PPO training step (forward_backward + optim_step) and a sampling
call in fp32 and bf16 (interleaved, best of a few), then the verdicts of the engine's thread probe and
dtype probe for erl-tiny. Each figure is measured with the given thread count.

Run from the repository root:
  .venv/bin/python bench/dtype_threads.py [--threads 1] [--repeats 3] [--model models/erl-tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

from benchargs import int_range, model_dir

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "engine"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from erl_engine import PROTOCOL_VERSION, autotune  # noqa: E402
from erl_engine.engine import Engine  # noqa: E402
from erl_engine.protocol import parse_request  # noqa: E402


def call(e: Engine, method: str, params: dict[str, Any]) -> Any:
    _, m, p = parse_request({"v": PROTOCOL_VERSION, "id": 1, "method": method, "params": params})
    return e.call(m, p)


def best(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    b = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t0)
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int_range(1, 1024), default=1)
    ap.add_argument("--repeats", type=int_range(1, 1000), default=3)
    ap.add_argument("--model", type=model_dir, default="models/erl-tiny")
    a = ap.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    cpu = autotune.cpu_summary()
    print(f"# cpu: {cpu['model']} ({cpu['logicalCpus']} logical CPUs; flags: {', '.join(cpu['flags']) or 'none'}; "
          f"torch capability {cpu['capability']}); torch {torch.__version__}; {a.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f}")

    print("\n## matmul GFLOP/s (best of 5)")
    for m, k, n in ((3200, 576, 1536), (512, 128, 512), (64, 256, 1536), (64, 128, 512)):
        x, w = torch.randn(m, k), torch.randn(k, n)
        xb, wb = x.bfloat16(), w.bfloat16()

        def auto() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                x @ w

        fl = 2 * m * k * n
        f32, b16, ac = best(lambda: x @ w, 5), best(lambda: xb @ wb, 5), best(auto, 5)
        print(f"{m}x{k} @ {k}x{n}: fp32 {fl / f32 / 1e9:6.1f}   bf16 {fl / b16 / 1e9:6.1f}   "
              f"fp32 weights under bf16 autocast {fl / ac / 1e9:6.1f}")

    print(f"\n## {a.model}: PPO step (16 x 300 tokens) and sampling (16 prompts x 4 samples, 200-token prompts, "
          "48 new tokens), seconds, best of the repeats")
    rng = np.random.default_rng(0)
    batch = []
    for _ in range(16):
        ids = rng.integers(5, 700, size=301).tolist()
        batch.append({"inputIds": ids[:-1], "targetIds": ids[1:], "weights": [1.0] * 300, "advantages": [0.5] * 300,
                      "oldLogprobs": [-5.0] * 300})
    prompts = [rng.integers(5, 700, size=200).tolist() for _ in range(16)]
    for dtype in ("float32", "bfloat16"):
        e = Engine()
        call(e, "loadModel", {"path": os.path.join(REPO, a.model), "dtype": dtype, "device": "cpu", "seed": 0})
        e.need_model().eos_ids = []

        def step() -> None:
            call(e, "forwardBackward", {"datums": batch, "loss": {"name": "ppo"}})
            call(e, "optimStep", {"lr": 1e-6})

        def sample() -> None:
            call(e, "sample", {"prompts": prompts, "n": 4, "maxTokens": 48, "temperature": 1.0, "seed": 0})

        print(f"{dtype:9s} training step {best(step, a.repeats):.3f}   sampling {best(sample, a.repeats):.3f}")

    print("\n## the engine's probes")
    torch.set_num_threads(default_threads)
    n, why = autotune.probe_threads()
    print(f"threads: {n} ({why})")
    torch.set_num_threads(a.threads)
    from transformers import AutoConfig

    dtype, why = autotune.resolve_dtype("auto", torch.device("cpu"), AutoConfig.from_pretrained(a.model))
    print(f"dtype auto for {a.model} at {a.threads} thread(s): {dtype} ({why})")
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

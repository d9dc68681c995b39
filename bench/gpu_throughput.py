"""Sampling and training throughput of a randomly initialised Qwen3-0.6B-shaped model through the
engine (bf16 autocast, fp32 master weights, full fine-tuning, AdamW), for bench/gpu-check.sh.

Reference: prime-rl reports about 11.9k tokens/s for full fine-tuning of a 0.6B model on one H100
(its README's benchmark table). Our figure is printed next to it as a ratio; the setups differ (their
trainer packs sequences and uses fused kernels), so the ratio says where we stand, not who is right.

  python bench/gpu_throughput.py --device cuda --out OUT/throughput.json
  python bench/gpu_throughput.py --dry-run --out OUT/throughput.json   # 2-layer stand-in on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from benchargs import out_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "engine"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from erl_engine import PROTOCOL_VERSION  # noqa: E402
from erl_engine.engine import Engine  # noqa: E402
from erl_engine.protocol import parse_request  # noqa: E402

FIXTURE = os.path.join(REPO, "test", "fixtures", "tiny-model")
PRIME_RL_06B_TOKENS_PER_S = 11_900  # prime-rl, Qwen3-0.6B full fine-tuning, one H100 (reported)

# Qwen3-0.6B's architecture (its config.json), weights random: nothing is downloaded.
QWEN3_06B: dict[str, Any] = {
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# The dry run's stand-in: the same layer types, tiny.
DRY: dict[str, Any] = {**QWEN3_06B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def call(engine: Engine, method: str, params: dict[str, Any]) -> Any:
    _, m, p = parse_request({"v": PROTOCOL_VERSION, "id": 1, "method": method, "params": params})
    return engine.call(m, p)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--dry-run", action="store_true", help="tiny model on CPU: checks the script, no figures")
    ap.add_argument("--out", required=True, type=out_file)
    args = ap.parse_args()
    dry = args.dry_run
    device = "cpu" if dry else args.device
    cfg = DRY if dry else QWEN3_06B
    if not dry:
        os.environ.setdefault("ERL_ENGINE_MICROBATCH_TOKENS", "16384")
    e = Engine()
    t0 = time.perf_counter()
    info = call(e, "loadModel", {"randomInit": {"config": cfg, "tokenizerPath": FIXTURE, "seed": 0},
                                 "dtype": "bfloat16", "device": device, "seed": 0})
    out: dict[str, Any] = {"device": info["device"], "torch": info["torch"], "transformers": info["transformers"],
                           "parameters": info["parameters"]["total"], "dtype": "bfloat16 autocast, fp32 weights",
                           "load_s": time.perf_counter() - t0, "dry_run": dry}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    print(f"loaded {out['parameters'] / 1e6:.0f}M parameters on {out['device']} in {out['load_s']:.1f}s", flush=True)
    rng = np.random.default_rng(0)
    vocab = cfg["vocab_size"]

    # Sampling: P prompts x n samples. Random weights rarely draw the end token, so most sequences run
    # to maxTokens; the figure counts the tokens actually generated.
    prompts_n, n, prompt_len, new = (2, 2, 16, 16) if dry else (64, 8, 256, 256)
    prompts = [rng.integers(3, vocab, size=prompt_len).tolist() for _ in range(prompts_n)]
    req = {"prompts": prompts, "n": n, "maxTokens": new, "temperature": 1.0, "seed": 0}
    call(e, "sample", {**req, "prompts": prompts[:2], "maxTokens": 4})  # warm-up
    sync(device)
    t0 = time.perf_counter()
    res = call(e, "sample", req)
    sync(device)
    dt = time.perf_counter() - t0
    gen = sum(len(s["tokens"]) for s in res["sequences"])
    out["sample"] = {"prompts": prompts_n, "n": n, "prompt_tokens": prompt_len, "max_new_tokens": new,
                     "generated_tokens": gen, "seconds": dt, "tokens_per_s": gen / dt}
    print(f"sample: {gen} tokens in {dt:.2f}s = {gen / dt:.0f} tok/s", flush=True)

    # Training: B sequences x T tokens per step, cross-entropy, full fine-tuning, one AdamW step.
    b, t, steps = (2, 32, 2) if dry else (16, 2048, 3)
    datums = []
    for _ in range(b):
        ids = rng.integers(3, vocab, size=t + 1).tolist()
        datums.append({"inputIds": ids[:-1], "targetIds": ids[1:], "weights": [1.0] * t})
    loss = {"name": "cross_entropy", "aggregation": "token-mean"}
    call(e, "forwardBackward", {"datums": datums[:1], "loss": loss})  # warm-up
    call(e, "optimStep", {"lr": 1e-6})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        call(e, "forwardBackward", {"datums": datums, "loss": loss})
        call(e, "optimStep", {"lr": 1e-6, "gradClip": 1.0})
    sync(device)
    dt = time.perf_counter() - t0
    tok = b * t * steps
    out["train"] = {"sequences": b, "tokens_per_sequence": t, "steps": steps, "seconds": dt,
                    "tokens_per_s": tok / dt, "microbatch_tokens": e.microbatch_tokens}
    if device == "cuda":
        out["train"]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["prime_rl_0.6b_full_ft_tokens_per_s_h100"] = PRIME_RL_06B_TOKENS_PER_S
    out["train_vs_prime_rl"] = (tok / dt) / PRIME_RL_06B_TOKENS_PER_S
    print(f"train: {tok} tokens in {dt:.2f}s = {tok / dt:.0f} tok/s "
          f"({out['train_vs_prime_rl']:.2f}x prime-rl's reported {PRIME_RL_06B_TOKENS_PER_S} on one H100)", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine benchmarks: sampling throughput against transformers' `generate`, and forward_backward +
optim_step against a plain hand-written PyTorch training step; bf16 vs fp32; peak memory; scaling
with batch and sequence length. Prints one line per measurement and the ratios.

Run from the repository root:
  .venv/bin/python bench/engine_bench.py [--quick] [--only sample|train|scaling] [--device cpu|cuda]

The model is a randomly initialised ~6.4M-parameter Llama (8 layers, hidden 256) with the tiny
fixture's character tokenizer, so nothing is downloaded. Each figure is the best of a few repeats
(the CPU is shared: the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Any, Callable

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
BENCH_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 105,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


def call(engine: Engine, method: str, params: dict[str, Any]) -> Any:
    """Through the protocol's validation, as the server runs it (JSON framing excluded)."""
    _, m, p = parse_request({"v": PROTOCOL_VERSION, "id": 1, "method": method, "params": params})
    return engine.call(m, p)


def make_engine(dtype: str, device: str) -> Engine:
    e = Engine()
    call(e, "loadModel", {"randomInit": {"config": BENCH_CONFIG, "tokenizerPath": FIXTURE, "seed": 0},
                          "dtype": dtype, "device": device, "seed": 0})
    return e


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompts_for(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[4] + rng.integers(9, 100, size=int(rng.integers(16, 48))).tolist() + [2, 5] for _ in range(n)]


# ---- sampling -------------------------------------------------------------------------------------


def bench_sampling(device: str, n_prompts: int, max_tokens: int, repeats: int) -> None:
    prompts = prompts_for(n_prompts)
    print(f"\n## sampling: {n_prompts} prompts x 1 sample, {max_tokens} new tokens, temperature 1, top-k 0, top-p 1")
    results: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        e = make_engine(dtype, device)
        lm = e.need_model()
        # Stop tokens are switched off for both contestants so that they generate the same number of tokens.
        req = {"prompts": prompts, "n": 1, "maxTokens": max_tokens, "temperature": 1.0, "seed": 0}
        saved_eos = lm.eos_ids
        lm.eos_ids = []
        call(e, "sample", {**req, "maxTokens": 4})  # warm-up
        counted: list[int] = []

        def ours() -> None:
            seqs = call(e, "sample", req)["sequences"]
            counted.append(sum(len(s["tokens"]) for s in seqs))

        t = best_of(ours, repeats)
        lm.eos_ids = saved_eos
        toks = counted[-1]
        results[f"engine {dtype}"] = toks / t
        print(f"engine.sample    {dtype:9s} {toks / t:9.0f} tok/s  ({toks} tokens in {t:.2f}s)")

        model = lm.model
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)

        def hf() -> None:
            with torch.no_grad(), lm.autocast():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                     pad_token_id=0, eos_token_id=None)
            counted.append(int(out.shape[0] * (out.shape[1] - width)))

        torch.manual_seed(0)
        hf()  # warm-up
        t = best_of(hf, repeats)
        toks = counted[-1]
        results[f"generate {dtype}"] = toks / t
        print(f"HF generate      {dtype:9s} {toks / t:9.0f} tok/s  ({toks} tokens in {t:.2f}s)")
        del e, lm, model
    for dtype in ("float32", "bfloat16"):
        print(f"ratio engine/generate, both {dtype}: {results[f'engine {dtype}'] / results[f'generate {dtype}']:.2f}x")
    print(f"ratio engine bf16 / generate fp32: {results['engine bfloat16'] / results['generate float32']:.2f}x")


# ---- training -------------------------------------------------------------------------------------


def rl_batch(n_seq: int, seq_len: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_seq):
        ids = rng.integers(7, 100, size=seq_len + 1).tolist()
        out.append({"inputIds": ids[:-1], "targetIds": ids[1:], "weights": [0.0] * 8 + [1.0] * (seq_len - 8),
                    "advantages": [float(rng.normal())] * seq_len, "oldLogprobs": [-4.6] * seq_len})
    return out


def plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: list[dict[str, Any]], autocast: Any,
               device: torch.device) -> None:
    """What a hand-written PPO step on this batch costs: one forward, the clipped loss, backward, AdamW."""
    inp = torch.tensor([d["inputIds"] for d in batch], device=device)
    tgt = torch.tensor([d["targetIds"] for d in batch], device=device)
    w = torch.tensor([d["weights"] for d in batch], device=device)
    adv = torch.tensor([d["advantages"] for d in batch], device=device)
    old = torch.tensor([d["oldLogprobs"] for d in batch], device=device)
    with autocast:
        logits = model(input_ids=inp, use_cache=False).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tgt[..., None])[..., 0]
    r = torch.exp(logp - old)
    loss = (torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.28)) * w).sum() / len(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_training(device: str, n_seq: int, seq_len: int, repeats: int, dtypes: tuple[str, ...]) -> dict[str, float]:
    batch = rl_batch(n_seq, seq_len)
    tokens = n_seq * seq_len
    loss = {"name": "ppo", "clipLow": 0.2, "clipHigh": 0.28, "dualClip": 3.0}
    out: dict[str, float] = {}
    for dtype in dtypes:
        e = make_engine(dtype, device)

        def ours() -> None:
            call(e, "forwardBackward", {"datums": batch, "loss": loss})
            call(e, "optimStep", {"lr": 1e-5, "gradClip": 1.0})

        ours()
        t_ours = best_of(ours, repeats)
        lm = e.need_model()
        opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-5)
        lm.model.train()

        def plain() -> None:
            plain_step(lm.model, opt, batch, lm.autocast(), lm.device)

        plain()
        t_plain = best_of(plain, repeats)
        overhead = t_ours / t_plain - 1
        out[dtype] = tokens / t_ours
        print(f"{dtype:9s} B={n_seq:3d} T={seq_len:4d}  engine {tokens / t_ours:8.0f} tok/s  plain {tokens / t_plain:8.0f} tok/s"
              f"  overhead {overhead * 100:+5.1f}%  peak RSS {peak_rss_mb():.0f} MB")
        del e, lm, opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller settings, one repeat")
    ap.add_argument("--only", choices=["sample", "train", "scaling"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    print(f"# engine benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}")
    n_params = sum(p.numel() for p in make_engine("float32", args.device).need_model().model.parameters())
    print(f"model: random Llama, {n_params / 1e6:.1f}M parameters, vocab 105")
    if args.only in (None, "sample"):
        bench_sampling(args.device, 64, 32 if args.quick else 64, repeats)
    if args.only in (None, "train"):
        print("\n## forward_backward + optim_step (PPO) vs a plain PyTorch step on the same batch")
        bench_training(args.device, 16, 128, repeats, ("float32", "bfloat16"))
    if args.only in (None, "scaling"):
        print("\n## scaling of forward_backward + optim_step with batch and sequence length")
        for b, t in ((4, 128), (16, 128), (32, 128), (16, 64), (16, 256)) if not args.quick else ((4, 64), (16, 64)):
            bench_training(args.device, b, t, 1 if args.quick else 2, ("float32", "bfloat16"))
    print(f"\npeak RSS of the process: {peak_rss_mb():.0f} MB; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

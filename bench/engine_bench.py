"""Engine benchmarks: sampling throughput against transformers' `generate`, and forward_backward +
optim_step against a plain hand-written PyTorch training step; bf16 vs fp32; peak memory; scaling
with batch and sequence length. Prints one line per measurement and the ratios.

Run from the repository root:
  .venv/bin/python bench/engine_bench.py [--quick] [--only sample|turns|shared|train|scaling] [--device cpu|cuda]

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

from benchargs import int_range

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


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best time of each function, running them in turn so that load changes hit all of them alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            best[k] = min(best[k], best_of(fn, 1))
    return best


def sampling_contest(e: Engine, prompts: list[list[int]], n: int, max_tokens: int, repeats: int,
                     generate_prefill: bool = False) -> dict[str, float]:
    """Best seconds of the engine's `sample` and of transformers' `generate` on the same request, the
    stop tokens switched off on both sides so that both generate exactly `max_tokens` per row, and of
    the engine's prompt prefill alone (the same request with one new token); with `generate_prefill`,
    also generate's. Interleaved repeats after a warm-up of each. `tokens`: the new tokens of one run."""
    lm = e.need_model()
    lm.eos_ids = []
    req = {"prompts": prompts, "n": n, "maxTokens": max_tokens, "temperature": 1.0, "seed": 0}
    model = lm.model
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    counts: dict[str, int] = {}

    def ours() -> None:
        seqs = call(e, "sample", req)["sequences"]
        counts["engine"] = sum(len(s["tokens"]) for s in seqs)

    def ours_prefill() -> None:
        call(e, "sample", {**req, "maxTokens": 1})

    def hf(new: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), lm.autocast():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
                                     eos_token_id=None, num_return_sequences=n)
            counts[f"generate{new}"] = int(out.shape[0] * (out.shape[1] - width))
        return run

    fns = {"engine": ours, "generate": hf(max_tokens), "prefill": ours_prefill}
    if generate_prefill:
        fns["generatePrefill"] = hf(1)
    for fn in fns.values():  # warm-ups
        fn()
    t = interleaved_best(fns, repeats)
    rows = len(prompts) * n
    assert counts["engine"] == counts[f"generate{max_tokens}"] == rows * max_tokens, counts
    return {**t, "tokens": float(counts["engine"])}


def bench_sampling(device: str, n_prompts: int, n: int, max_tokens: int, repeats: int) -> None:
    prompts = prompts_for(n_prompts)
    rows = n_prompts * n
    print(f"\n## sampling: {n_prompts} prompts x {n} samples, {max_tokens} new tokens, temperature 1, top-k 0, "
          "top-p 1 (times include the prompt prefill)")
    for dtype in ("float32", "bfloat16"):
        e = make_engine(dtype, device)
        t = sampling_contest(e, prompts, n, max_tokens, repeats)
        toks = t["tokens"]
        decode = (toks - rows) / max(t["engine"] - t["prefill"], 1e-9)
        print(f"{dtype:9s} engine.sample {toks / t['engine']:7.0f} tok/s ({t['engine']:.2f}s)   "
              f"HF generate {toks / t['generate']:7.0f} tok/s ({t['generate']:.2f}s)   "
              f"ratio {t['generate'] / t['engine']:.2f}x   "
              f"[engine prefill {t['prefill']:.2f}s, decode alone {decode:.0f} tok/s]")
        floor, how = sampling_floor(dtype, prompts, n, max_tokens, repeats)
        print(f"{'':9s} floor {floor:.2f}s ({how}): the most any sampler could be faster than generate here "
              f"is {t['generate'] / floor:.2f}x; 2x needs {t['generate'] / 2:.2f}s")
        del e


def sampling_floor(dtype: str, prompts: list[list[int]], n: int, max_tokens: int, repeats: int,
                   config: dict[str, Any] | None = None) -> tuple[float, str]:
    """A lower bound, on this CPU, for any sampler that does the same math: the prompts' tokens and every
    decode step's rows through the model's projections (timed on their own, with pre-packed weights where
    the CPU's libraries take them: the fastest matmuls found here), the LM head on the rows that need
    logits (each prompt's last token, every decode row), plus the decode attention's reads of the KV
    cache at this machine's streaming read bandwidth. Element-wise work, sampling and every per-op
    overhead count as zero, and a prompt shared by n samples is read once a step. `config`: the model's
    (an HF config as a dict; default the bench model's)."""
    import torch.nn.functional as F

    c = config or BENCH_CONFIG
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    shapes = [((c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd, c["hidden_size"]),
              (c["hidden_size"], c["num_attention_heads"] * hd),
              (2 * c["intermediate_size"], c["hidden_size"]), (c["hidden_size"], c["intermediate_size"])]
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    # Every layer's own weights, as in the model: a decode step streams all of them through the caches.
    layers = [[(torch.randn(shape, generator=gen) * 0.05).to(dt) for shape in shapes]
              for _ in range(c["num_hidden_layers"])]
    head = (torch.randn((c["vocab_size"], c["hidden_size"]), generator=gen) * 0.05).to(dt)

    def kernels(w: torch.Tensor, x: torch.Tensor, rows: int) -> list[Callable[[], Any]]:
        """F.linear, and a pre-packed weight where the CPU's libraries take one."""
        out: list[Callable[[], Any]] = [lambda: F.linear(x, w)]
        try:
            if dt == torch.float32:
                packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
                out.append(lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, rows))
            else:
                packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
                out.append(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
        except (RuntimeError, AttributeError, NotImplementedError):
            pass
        return out

    def projections_time(rows: int, loops: int, head_rows: int | None = None) -> float:
        """One pass of `rows` rows through every layer's projections and of `head_rows` (default `rows`)
        through the head: the best of three rounds of `loops` passes in a row (the caches as warm as a
        sampler's steps could keep them), each shape with the faster of its kernels (chosen on the first
        layer)."""
        weights = [w for ws in layers for w in ws] + [head]
        sizes = [rows] * (len(weights) - 1) + [rows if head_rows is None else head_rows]
        fns = [kernels(w, torch.randn((m, w.shape[1]), generator=gen).to(dt), m) for w, m in zip(weights, sizes)]
        faster = [min(range(len(k)), key=lambda j, k=k: best_of(k[j], 3)) for k in fns[: len(shapes)]]
        fns = [k[faster[i % len(shapes)]] if i < len(fns) - 1 else min(k, key=lambda f: best_of(f, 3))
               for i, k in enumerate(fns)]

        def passes() -> None:
            for _ in range(loops):
                for f in fns:
                    f()

        passes()
        return best_of(passes, 3) / loops

    distinct = {tuple(p) for p in prompts}
    prompt_tokens = sum(len(p) for p in distinct)
    rows = len(prompts) * n
    proj = projections_time(prompt_tokens, 1, head_rows=len(distinct)) + (max_tokens - 1) * projections_time(rows, 20)
    # KV bytes a decode step must read: the distinct prompts once, each row's own new tokens.
    elem = 2 if dt == torch.bfloat16 else 4
    per_token = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * hd * elem  # keys and values
    kv = sum(prompt_tokens + rows * step for step in range(1, max_tokens)) * per_token
    buf = torch.ones(16 << 20)  # 64 MB, larger than the caches
    bandwidth = buf.numel() * 4 / best_of(lambda: buf.sum(), repeats + 2)
    attn = kv / bandwidth
    return proj + attn, (f"projections {proj:.2f}s at the fastest matmuls found here, KV-cache reads "
                         f"{kv / 1e9:.2f} GB at {bandwidth / 1e9:.0f} GB/s = {attn:.2f}s; element-wise work and "
                         "overheads counted as zero")


def turns_contest(e: Engine, prompts: list[list[int]], turns: int, replies: int,
                  observation: Callable[[int, int], list[int]], repeats: int) -> dict[str, Any]:
    """An episode batch's turns: each call's prompts are the previous prompts, their sampled replies
    (`replies` new tokens, stop tokens off) and an observation (`observation(turn, row)`), as in the agent
    loop. Best seconds of the whole episode with the prefix cache (the engine's default: keys and values
    kept from the previous call) and with a full prefill of every turn, interleaved after a one-turn
    warm-up of each; and the prompt tokens the cache's last episode reused and prefilled."""
    from erl_engine import sampler

    lm = e.need_model()
    lm.eos_ids = []
    stats: dict[str, int] = {}
    before = sampler.REUSE_PREFIXES

    def episode(reuse: bool, n_turns: int) -> Callable[[], None]:
        def run() -> None:
            sampler.REUSE_PREFIXES = reuse
            try:
                if lm.prefix_cache is not None:
                    lm.prefix_cache.clear()
                    lm.prefix_cache.reused_tokens = lm.prefix_cache.prefilled_tokens = 0
                ps = [list(p) for p in prompts]
                for t in range(n_turns):
                    seqs = call(e, "sample", {"prompts": ps, "n": 1, "maxTokens": replies, "temperature": 1.0,
                                              "seed": t})["sequences"]
                    ps = [p + list(map(int, s["tokens"])) + observation(t, i) for i, (p, s) in enumerate(zip(ps, seqs))]
                if reuse and lm.prefix_cache is not None:
                    stats["reused"] = lm.prefix_cache.reused_tokens
                    stats["prefilled"] = lm.prefix_cache.prefilled_tokens
            finally:
                sampler.REUSE_PREFIXES = before
        return run

    episode(False, 1)()
    episode(True, 1)()  # warm-ups
    t = interleaved_best({"full": episode(False, turns), "cached": episode(True, turns)}, repeats)
    return {**t, "ratio": t["full"] / t["cached"], "reusedTokens": stats.get("reused"),
            "prefilledTokens": stats.get("prefilled")}


def bench_turns(device: str, repeats: int) -> None:
    """An episode's turns with the prefix cache against a full prefill of every turn (turns_contest)."""
    turns, replies, obs = 6, 24, 40
    print(f"\n## multi-turn sampling: 16 prompts, {turns} turns of {replies} new tokens + {obs} observation tokens "
          "(each turn's prompt = the last prompt + reply + observation)")
    for dtype in ("float32", "bfloat16"):
        e = make_engine(dtype, device)
        rng = np.random.default_rng(1)
        observations = [[rng.integers(9, 100, size=obs).tolist() for _ in range(16)] for _ in range(turns)]
        r = turns_contest(e, prompts_for(16), turns, replies, lambda t, i: observations[t][i], repeats)
        stats = ""
        if r["reusedTokens"] is not None:
            stats = f"; last run: {r['reusedTokens']} prompt tokens reused, {r['prefilledTokens']} prefilled"
        print(f"{dtype:9s} full prefill every turn {r['full']:.2f}s   prefix cache {r['cached']:.2f}s   "
              f"ratio {r['ratio']:.2f}x{stats}")


def bench_shared_prompts(device: str, repeats: int) -> None:
    """A turn-0 sampling call of the agent loop: each task's samples arrive as separate identical prompts.
    The engine prefills each distinct prompt once (sampler.DEDUP_PROMPTS); against one prefill per row."""
    from erl_engine import sampler

    rng = np.random.default_rng(1)
    base = [[4] + rng.integers(9, 100, size=299).tolist() for _ in range(4)]
    prompts = [base[i // 10] for i in range(40)]
    print("\n## identical prompts: 40 rows (4 distinct 300-token prompts x 10 rows), 48 new tokens")
    for dtype in ("float32", "bfloat16"):
        e = make_engine(dtype, device)
        e.need_model().eos_ids = []
        req = {"prompts": prompts, "n": 1, "maxTokens": 48, "temperature": 1.0, "seed": 0}

        def run(flag: bool) -> Callable[[], None]:
            def fn() -> None:
                sampler.DEDUP_PROMPTS = flag
                try:
                    call(e, "sample", req)
                finally:
                    sampler.DEDUP_PROMPTS = True
            return fn

        run(True)()
        run(False)()
        t = interleaved_best({"shared": run(True), "per_row": run(False)}, repeats)
        print(f"{dtype:9s} one prefill per distinct prompt {t['shared']:.2f}s   one per row {t['per_row']:.2f}s   "
              f"{t['per_row'] / t['shared']:.2f}x")


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


def bench_training(device: str, n_seq: int, seq_len: int, repeats: int, dtype: str) -> dict[str, float]:
    """Engine forward_backward + optim_step vs the plain step, same model, same batch, same dtype."""
    batch = rl_batch(n_seq, seq_len)
    tokens = n_seq * seq_len
    loss = {"name": "ppo", "clipLow": 0.2, "clipHigh": 0.28, "dualClip": 3.0}
    e = make_engine(dtype, device)
    lm = e.need_model()
    opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-5)

    def ours() -> None:
        call(e, "forwardBackward", {"datums": batch, "loss": loss})
        call(e, "optimStep", {"lr": 1e-5, "gradClip": 1.0})

    def plain() -> None:
        lm.model.train()
        plain_step(lm.model, opt, batch, lm.autocast(), lm.device)
        lm.model.eval()

    ours()
    plain()  # warm-ups
    t = interleaved_best({"engine": ours, "plain": plain}, repeats)
    return {"engine": tokens / t["engine"], "plain": tokens / t["plain"], "overhead": t["engine"] / t["plain"] - 1,
            "peak_rss_mb": peak_rss_mb()}


def print_training(dtype: str, b: int, t: int, r: dict[str, float]) -> None:
    print(f"{dtype:9s} B={b:3d} T={t:4d}  engine {r['engine']:7.0f} tok/s   plain {r['plain']:7.0f} tok/s   "
          f"overhead {r['overhead'] * 100:+5.1f}%   peak RSS {r['peak_rss_mb']:.0f} MB")


def training_in_subprocess(device: str, b: int, t: int, repeats: int, dtype: str, threads: int) -> dict[str, float]:
    """One configuration in a fresh process, so that its peak RSS is its own."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--one", f"{b},{t},{dtype}", "--device", device,
                          "--threads", str(threads), "--repeats", str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_line(device: str) -> str:
    """The CPU (model name, avx2/avx512/amx flags) and what dtype "auto" picks here for the bench model."""
    from erl_engine.autotune import cpu_summary, resolve_dtype

    cpu = cpu_summary()
    cfg = type("BenchConfig", (), BENCH_CONFIG)()
    dtype, reason = resolve_dtype("auto", torch.device(device), cfg)
    return (f"cpu: {cpu['model']} ({cpu['logicalCpus']} logical CPUs; flags: {', '.join(cpu['flags']) or 'none'}; "
            f"torch capability {cpu['capability']}); dtype auto here -> {dtype} [{reason}]")


def main() -> None:
    from erl_engine import sampler

    # The sampling benches repeat one request: with the prefix cache on, every repeat after the first
    # would reuse the first one's prompt keys. They measure a request from scratch, as `generate` runs;
    # the cache has its own bench (--only turns), which switches it on and off itself.
    sampler.REUSE_PREFIXES = False
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller settings, one repeat")
    ap.add_argument("--only", choices=["sample", "turns", "shared", "train", "scaling"])
    ap.add_argument("--one", help="internal: B,T,dtype of one training measurement, printed as JSON")
    ap.add_argument("--repeats", type=int_range(1, 1000), default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int_range(1, 1024), default=1,
                    help="torch CPU threads (default 1: on a shared CPU, spinning OpenMP threads that lose their "
                         "core to other processes slow everything down several-fold)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)
    if args.one:
        import json

        b, t, dtype = args.one.split(",")
        print(json.dumps(bench_training(args.device, int(b), int(t), repeats, dtype)))
        return
    print(f"# engine benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(machine_line(args.device))
    n_params = sum(p.numel() for p in make_engine("float32", args.device).need_model().model.parameters())
    print(f"model: random Llama, {n_params / 1e6:.1f}M parameters, vocab 105")
    if args.only in (None, "sample"):
        bench_sampling(args.device, 64, 1, 32 if args.quick else 64, repeats)
        bench_sampling(args.device, 16, 4, 32 if args.quick else 64, repeats)
    if args.only in (None, "turns"):
        bench_turns(args.device, repeats)
    if args.only in (None, "shared"):
        bench_shared_prompts(args.device, repeats)
    if args.only in (None, "train"):
        print("\n## forward_backward + optim_step (PPO) vs a plain PyTorch step on the same batch "
              "(each line a fresh process: its peak RSS)")
        for dtype in ("float32", "bfloat16"):
            print_training(dtype, 16, 128, training_in_subprocess(args.device, 16, 128, repeats, dtype, args.threads))
    if args.only in (None, "scaling"):
        print("\n## scaling with batch size B and sequence length T")
        configs = ((4, 128), (16, 128), (64, 128), (16, 32), (16, 512)) if not args.quick else ((4, 64), (16, 64))
        for b, t in configs:
            for dtype in ("float32", "bfloat16"):
                r = training_in_subprocess(args.device, b, t, max(1, repeats - 1), dtype, args.threads)
                print_training(dtype, b, t, r)
    print(f"\npeak RSS of the process: {peak_rss_mb():.0f} MB; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""The SmolLM2-135M-Instruct benchmark (issue 23): every figure of docs/benchmarks.md's SmolLM2 table in
one command, as a Markdown table and a JSON file, each row with the CPU, its flags, the dtype, the
threads and the load average at the start and end of its part.

Parts (--only takes a comma-separated list of them):
  grpo-full   one GRPO step of this engine against TRL's GRPOTrainer, full fine-tuning, same settings
              (bench/trl_peer.py --model ...); the step's floor on this CPU split into sampling,
              forward-backward and optimizer (bench/floor.py); the engine's peak RSS during the steps
  grpo-lora   the same with LoRA (rank 16, alpha 32, every linear layer) on both sides
  sampling    the engine's `sample` against transformers' `generate`, the same prompts (16 prompts x 4
              samples, 256-token prompts, 64 new tokens, stop tokens off), prefill and decode apart
              (bench/engine_bench.sampling_contest), and the sampling floor
  vllm        the same request through vLLM's CPU build (.venv-vllm, created by scripts/setup-vllm.sh when
              missing), constructed as the project's vLLM sampler does (erl_engine.vllm_sampler)
  turns       an episode batch of 8 turns with the prefix cache on and off (engine_bench.turns_contest)
  profile     one GRPO step (full fine-tuning) under torch.profiler: the operators with the most self time

Prefill and decode apart: each sampler also runs the same request with one new token (its prefill);
decode = the rest of the full run: rows x (new tokens - 1) / (full - prefill seconds).

Run from the repository root on an idle machine (an estimate of the run time is printed first):
  .venv/bin/python bench/smollm2_bench.py [--quick] [--out bench/out/smollm2] [--threads N] [--only PARTS]
Writes OUT/smollm2.md and OUT/smollm2.json (rewritten after each part, so a failed part loses nothing
measured before it). --quick runs every part at toy sizes, a smoke test of the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchargs import int_range, model_dir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODEL = os.path.join("models", "smollm2-135m-instruct")
VLLM_PY = os.path.join(REPO, ".venv-vllm", "bin", "python")
PARTS = ("grpo-full", "grpo-lora", "sampling", "vllm", "turns", "profile")

# Sizes: the full run (about 45 minutes on an idle 2-core AVX2 CPU in fp32) and --quick (a smoke test).
FULL = {"grpo_steps": 3, "grpo_prompts": 8, "grpo_samples": 4, "grpo_tokens": 64,
        "sample_prompts": 16, "sample_n": 4, "prompt_tokens": 256, "new_tokens": 64, "sample_repeats": 2,
        "turn_rows": 16, "turns": 8, "turn_tokens": 32, "turn_repeats": 1,
        "floor_repeats": 3, "profile_prompts": 4}
QUICK = {"grpo_steps": 2, "grpo_prompts": 2, "grpo_samples": 2, "grpo_tokens": 8,
         "sample_prompts": 2, "sample_n": 2, "prompt_tokens": 32, "new_tokens": 8, "sample_repeats": 1,
         "turn_rows": 2, "turns": 2, "turn_tokens": 8, "turn_repeats": 1,
         "floor_repeats": 1, "profile_prompts": 2}


# ---- shared pieces ----------------------------------------------------------------------------------


def observation_text(turn: int, row: int) -> str:
    """An environment's answer between two replies, in SmolLM2's chat format (the reply's end, a user
    turn with a board, the assistant's start)."""
    boards = ["SFFF\nFHFH\nFFFH\nHFFG", "SFHF\nFFFF\nHFFH\nFFFG", "SFFH\nFHFF\nFFFF\nHHFG"]
    return (f"<|im_end|>\n<|im_start|>user\nYou moved. The board is now:\n{boards[(turn + row) % 3]}\n"
            f"Turn {turn + 2}: name your next move (left, right, up or down).<|im_end|>\n<|im_start|>assistant\n")


def sampling_prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """`count` distinct prompts of exactly `length` tokens: windows at different offsets of a text made
    from the peer bench's task prompts."""
    import trl_peer

    text = "\n\n".join(f"Task {i}. {t}" for i, t in enumerate(trl_peer.PROMPT_TEXTS * 40))
    ids = tokenizer.encode(text, add_special_tokens=False)
    stride = 11
    if len(ids) < length + stride * count:
        raise SystemExit(f"--prompt-tokens {length} x --sample-prompts {count}: the prompt text has only {len(ids)} "
                         f"tokens (at most {max(0, len(ids) - stride * count)} per prompt)")
    return [ids[i * stride: i * stride + length] for i in range(count)]


def peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def engine_call(e: Any, method: str, params: dict[str, Any]) -> Any:
    from engine_bench import call

    return call(e, method, params)


def load_engine(a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from erl_engine.engine import Engine

    e = Engine()
    info = engine_call(e, "loadModel", {"path": os.path.abspath(a.model), "dtype": a.dtype, "device": "cpu",
                                        "seed": 0})
    return e, info


# ---- child sides (each its own process) ------------------------------------------------------------


def side_sampling(a: argparse.Namespace) -> dict[str, Any]:
    """The engine's `sample` against transformers' `generate` on the prompts file, and the floor."""
    import torch
    from erl_engine import sampler
    from transformers import AutoConfig

    from engine_bench import sampling_contest, sampling_floor

    torch.set_num_threads(a.threads)
    # From scratch, as `generate` runs (the prefix cache has its own part, `turns`).
    sampler.REUSE_PREFIXES = False
    with open(a.prompts_file, encoding="utf-8") as f:
        prompts = json.load(f)
    e, info = load_engine(a)
    t = sampling_contest(e, prompts, a.sample_n, a.new_tokens, a.sample_repeats, generate_prefill=True)
    floor, how = sampling_floor(info["dtype"], prompts, a.sample_n, a.new_tokens, a.floor_repeats,
                                config=AutoConfig.from_pretrained(a.model).to_dict())
    return {"times": t, "floor": floor, "floorHow": how, "dtype": info["dtype"], "dtypeReason": info["dtypeReason"],
            "threads": torch.get_num_threads(), "peakRssBytes": peak_rss_bytes()}


def side_turns(a: argparse.Namespace) -> dict[str, Any]:
    """An episode batch of `turns` turns, prefix cache on and off (engine_bench.turns_contest)."""
    import torch

    import trl_peer
    from engine_bench import turns_contest

    torch.set_num_threads(a.threads)
    e, info = load_engine(a)
    chats = [{"messages": c, "addGenerationPrompt": True} for c in trl_peer.chats(a.turn_rows)]
    prompts = engine_call(e, "renderChats", {"chats": chats})["ids"]
    obs = {(t, i): list(map(int, engine_call(e, "encode", {"text": observation_text(t, i)})["ids"]))
           for t in range(a.turns) for i in range(a.turn_rows)}
    r = turns_contest(e, prompts, a.turns, a.turn_tokens, lambda t, i: obs[(t, i)], a.turn_repeats)
    last = [len(p) for p in prompts]
    for t in range(a.turns - 1):
        last = [n + a.turn_tokens + len(obs[(t, i)]) for i, n in enumerate(last)]
    return {**r, "firstPromptTokens": sum(len(p) for p in prompts), "lastPromptTokens": sum(last),
            "dtype": info["dtype"], "dtypeReason": info["dtypeReason"], "threads": torch.get_num_threads(),
            "peakRssBytes": peak_rss_bytes()}


def side_vllm(a: argparse.Namespace) -> dict[str, Any]:
    """The sampling request through vLLM's CPU build, in .venv-vllm: the LLM built as the project's vLLM
    sampler builds it (VllmSampler.load_model: fp32 on CPU, eager), then `generate` with the sampler's
    parameters and ignore_eos (exactly `new_tokens` per row, as on the other sides); its prefix cache is
    reset before every run, so each run prefills from scratch."""
    from erl_engine.vllm_sampler import VllmSampler
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    with open(a.prompts_file, encoding="utf-8") as f:
        prompts = json.load(f)
    s = VllmSampler()
    t0 = time.perf_counter()
    s.load_model({"path": os.path.abspath(a.model), "device": "cpu", "seed": 0})
    load_s = time.perf_counter() - t0
    counts: dict[int, int] = {}

    def run(new: int) -> Callable[[], None]:
        def go() -> None:
            s.llm.reset_prefix_cache()
            params = [SamplingParams(n=a.sample_n, temperature=1.0, top_p=1.0, top_k=0, max_tokens=new,
                                     ignore_eos=True, seed=i, logprobs=0) for i in range(len(prompts))]
            outs = s.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            counts[new] = sum(len(c.token_ids) for o in outs for c in o.outputs)
        return go

    fns = {"vllm": run(a.new_tokens), "vllmPrefill": run(1)}
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(a.sample_repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    rows = len(prompts) * a.sample_n
    if counts[a.new_tokens] != rows * a.new_tokens:
        raise SystemExit(f"vLLM generated {counts[a.new_tokens]} tokens, expected {rows * a.new_tokens}")
    import torch
    import vllm

    return {"times": best, "loadSeconds": load_s, "vllm": vllm.__version__, "dtype": "float32",
            "threads": torch.get_num_threads(), "threadsBind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
            "peakRssBytes": peak_rss_bytes()}


SIDES = {"sampling": side_sampling, "turns": side_turns, "vllm": side_vllm}


def child(python: str, side: str, a: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs one side in its own process (its own peak RSS, its own virtualenv); its JSON answer."""
    keys = ("model", "dtype", "threads", "sample_n", "new_tokens", "sample_repeats", "floor_repeats", "turn_rows",
            "turns", "turn_tokens", "turn_repeats", "prompts_file")
    cmd = [python, os.path.abspath(__file__), "--side", side]
    for k in keys:
        v = getattr(a, k, None)
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                "TOKENIZERS_PARALLELISM": "false", "ERL_ENGINE_THREADS": str(a.threads), **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"the {side} side failed (exit {r.returncode}): "
                           f"{(r.stderr.strip().splitlines() or ['no output'])[-1][:400]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- the parts ---------------------------------------------------------------------------------------


def peer_args(a: argparse.Namespace, lora: bool, **over: Any) -> argparse.Namespace:
    ns = SimpleNamespace(steps=a.grpo_steps, prompts=a.grpo_prompts, samples=a.grpo_samples, tokens=a.grpo_tokens,
                         dtype=a.dtype, threads=a.threads, model=a.model, lora=lora, floor_repeats=a.floor_repeats)
    for k, v in over.items():
        setattr(ns, k, v)
    return ns  # type: ignore[return-value]


def part_grpo(a: argparse.Namespace, lora: bool) -> dict[str, Any]:
    import trl_peer

    return trl_peer.peer(peer_args(a, lora))


def part_sampling(a: argparse.Namespace) -> dict[str, Any]:
    return child(sys.executable, "sampling", a)


def vllm_python() -> str:
    """.venv-vllm's interpreter, created with scripts/setup-vllm.sh (niced) when missing."""
    if not os.path.exists(VLLM_PY):
        print("creating .venv-vllm with scripts/setup-vllm.sh (once; about 5 minutes and 3.5 GB)...", flush=True)
    r = subprocess.run(["nice", "-n", "19", "bash", os.path.join(REPO, "scripts", "setup-vllm.sh")], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(VLLM_PY):
        tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"scripts/setup-vllm.sh failed (exit {r.returncode}): {tail[:300]}")
    return VLLM_PY


def part_vllm(a: argparse.Namespace) -> dict[str, Any]:
    py = vllm_python()
    # The project's sampler (vllm_sampler.py) makes the engine side importable this way too.
    env = {"PYTHONPATH": os.path.join(REPO, "engine") + os.pathsep + HERE,
           # KV space for every row's prompt and reply (the sampler's default of 1 GiB is tight at 64 rows).
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           # vLLM's CPU workers on the same number of cores as the other samplers.
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{a.threads - 1}"),
           "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
    return child(py, "vllm", a, env)


def part_turns(a: argparse.Namespace) -> dict[str, Any]:
    return child(sys.executable, "turns", a)


def part_profile(a: argparse.Namespace) -> dict[str, Any]:
    import trl_peer

    ns = peer_args(a, False, steps=2, prompts=a.profile_prompts)
    r = trl_peer.side(sys.executable, "engine", ns, ["--profile"])
    return {"profile": r["profile"], "step": r["times"][-1], "dtype": r["dtype"], "threads": r["threads"],
            "prompts": a.profile_prompts, "samples": a.grpo_samples, "tokens": a.grpo_tokens}


# ---- rows ------------------------------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def rows_grpo(r: dict[str, Any], part: str) -> list[tuple[str, str, str]]:
    e, t, f = r["engine"], r["trl"], r["floor"]
    n = r["prompts"] * r["samples"]
    mode = "LoRA r 16" if r["lora"] else "full FT"
    size = f"{r['prompts']} prompts x {r['samples']} samples x {r['tokens']} tokens"
    fb = f["forwardBackwardDetail"]
    return [
        (f"GRPO step, {mode}, per-sample ratio TRL/engine", f"{r['ratio']:.2f}x",
         f"{size}; engine {e['step']:.2f} s/step ({n / e['step']:.2f} samples/s), TRL {r['trl']['version']} "
         f"{t['step']:.2f} s/step ({n / t['step']:.2f} samples/s); median of steps 2..{r['steps']}"),
        (f"GRPO step, {mode}, engine split", f"{e['step']:.2f} s",
         f"sampling {e['sample']:.2f} s, forward-backward {e['forwardBackward']:.2f} s, optimizer "
         f"{e['optimStep']:.2f} s, between them (decoding, rewards, datums) {e['between']:.2f} s"),
        (f"GRPO step, {mode}, engine / floor", f"{e['step'] / f['step']:.2f}x",
         f"floor {f['step']:.2f} s: sampling {e['sample'] / f['sample']:.2f}x of {f['sample']:.2f} s, "
         f"forward-backward {e['forwardBackward'] / f['forwardBackward']:.2f}x of {f['forwardBackward']:.2f} s "
         f"({fb['flops'] / 1e9:.0f} GFLOP over {fb['tokens']} tokens, head on {fb['weightedTokens']}, at "
         f"{fb['rate'] / 1e9:.1f} GFLOP/s), optimizer {e['optimStep'] / f['optimizer']:.2f}x of "
         f"{f['optimizer'] * 1e3:.0f} ms ({e['trainable'] / 1e6:.2f}M params x 28 B at "
         f"{f['copyBandwidth'] / 1e9:.1f} GB/s)"),
        (f"GRPO step, {mode}, peak RSS", mib(e["peakRssBytes"]),
         f"engine during steps 1..{r['steps']} (polled every 10 ms); TRL {mib(t['peakRssBytes'])}"),
    ]


def rows_sampling(s: dict[str, Any], v: dict[str, Any] | None, a: argparse.Namespace) -> list[tuple[str, str, str]]:
    rows = a.sample_prompts * a.sample_n
    prompt_tokens = a.sample_prompts * a.prompt_tokens
    size = (f"{a.sample_prompts} prompts x {a.sample_n} samples, {a.prompt_tokens}-token prompts, "
            f"{a.new_tokens} new tokens")

    def line(full: float, prefill: float) -> str:
        decode = rows * (a.new_tokens - 1) / max(full - prefill, 1e-9)
        return (f"{rows * a.new_tokens / full:.0f} tok/s ({full:.2f} s): prefill {prefill:.2f} s "
                f"({prompt_tokens / prefill:.0f} prompt tok/s), decode {decode:.0f} tok/s")

    t = s["times"]
    out = [
        ("sampling, engine `sample`", line(t["engine"], t["prefill"]), size),
        ("sampling, transformers `generate`", line(t["generate"], t["generatePrefill"]), size),
        ("sampling, engine vs `generate`", f"{t['generate'] / t['engine']:.2f}x",
         f"prefill {t['generatePrefill'] / t['prefill']:.2f}x, decode "
         f"{(t['generate'] - t['generatePrefill']) / max(t['engine'] - t['prefill'], 1e-9):.2f}x"),
        ("sampling, engine / floor", f"{t['engine'] / s['floor']:.2f}x", f"floor {s['floor']:.2f} s ({s['floorHow']})"),
    ]
    if v is not None:
        vt = v["times"]
        out += [
            (f"sampling, vLLM {v['vllm']} (CPU build)", line(vt["vllm"], vt["vllmPrefill"]),
             f"{size}; model load {v['loadSeconds']:.0f} s; VLLM_CPU_OMP_THREADS_BIND={v['threadsBind']}"),
            ("sampling, engine vs vLLM", f"{vt['vllm'] / t['engine']:.2f}x",
             f"prefill {vt['vllmPrefill'] / t['prefill']:.2f}x, decode "
             f"{(vt['vllm'] - vt['vllmPrefill']) / max(t['engine'] - t['prefill'], 1e-9):.2f}x (above 1: the engine is faster)"),
        ]
    return out


def rows_turns(r: dict[str, Any], a: argparse.Namespace) -> list[tuple[str, str, str]]:
    return [(f"{a.turns}-turn episode batch, prefix cache on vs off", f"{r['ratio']:.2f}x",
             f"{a.turn_rows} episodes, {a.turn_tokens} new tokens a turn; cache on {r['cached']:.2f} s, off "
             f"{r['full']:.2f} s; prompts {r['firstPromptTokens']} -> {r['lastPromptTokens']} tokens; last run "
             f"with the cache: {r['reusedTokens']} prompt tokens reused, {r['prefilledTokens']} prefilled")]


def rows_profile(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    top = r["profile"][:5]
    total = r["step"]["step"]
    return [("GRPO step profile (full FT), top operators by self time",
             ", ".join(f"{o['name']} {o['selfSeconds']:.2f} s" for o in top),
             f"{r['prompts']} prompts x {r['samples']} samples x {r['tokens']} tokens, step {total:.2f} s under "
             "torch.profiler (the full list in the JSON and below the table)")]


# ---- the driver ------------------------------------------------------------------------------------


def estimate_seconds(a: argparse.Namespace, parts: list[str]) -> tuple[float, float]:
    """A rough run time: FLOPs of each part at a probed fp32 matmul rate and assumed efficiencies (the
    engine at 40% of it, TRL and `generate` at 20%, vLLM at 30%) plus fixed costs (model loads, vLLM's
    start, the floor's timings). Returns (seconds, the probed rate)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig

    sys.path.insert(0, HERE)
    import floor

    torch.set_num_threads(a.threads)
    s = floor.Shape.of(AutoConfig.from_pretrained(a.model))
    rate = 2 * 1024 * s.hidden * s.inter / floor.matmul_seconds("fwd", 1024, s.hidden, s.inter, "float32", 3)
    body = 2 * s.layers * sum(i * o for _, i, o in s.projections())  # FLOPs per token, forward
    head = 2 * s.hidden * s.vocab

    def sampling(distinct_prompt_tokens: int, rows: int, new: int, eff: float) -> float:
        return (distinct_prompt_tokens * body + rows * new * (body + head)) / (rate * eff)

    prompt = 60  # a chat-rendered task prompt of the peer bench, about
    n = a.grpo_prompts * a.grpo_samples
    step_tokens = n * (prompt + a.grpo_tokens)
    eng_step = sampling(a.grpo_prompts * prompt, n, a.grpo_tokens, 0.4) + 3 * (step_tokens * body + n * a.grpo_tokens
                                                                                * head) / (rate * 0.4)
    total = 0.0
    for lora in ("grpo-full", "grpo-lora"):
        if lora in parts:
            total += a.grpo_steps * eng_step * 3 + 60  # TRL at half the engine's speed; loads and the floor
    rows = a.sample_prompts * a.sample_n
    smp = sampling(a.sample_prompts * a.prompt_tokens, rows, a.new_tokens, 0.4)
    gen = sampling(rows * a.prompt_tokens, rows, a.new_tokens, 0.2)
    if "sampling" in parts:
        total += (1 + a.sample_repeats) * (smp * 1.3 + gen * 1.3) + 60
    if "vllm" in parts:
        total += (1 + a.sample_repeats) * smp * 1.6 + 90
    if "turns" in parts:
        hist = sum(prompt + t * (a.turn_tokens + 50) for t in range(a.turns)) * a.turn_rows
        once = a.turn_rows * (prompt + (a.turns - 1) * (a.turn_tokens + 50))
        dec = a.turn_rows * a.turns * a.turn_tokens * (body + head) / (rate * 0.4)
        total += a.turn_repeats * (2 * dec + (hist + once) * body / (rate * 0.4)) + 30
    if "profile" in parts:
        total += 2 * eng_step * a.profile_prompts / a.grpo_prompts * 1.2 + 20
    return total, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every part at toy sizes: a smoke test of the command")
    ap.add_argument("--out", default=os.path.join("bench", "out", "smollm2"))
    ap.add_argument("--model", type=model_dir, default=MODEL)
    ap.add_argument("--threads", type=int_range(1, 1024), default=os.cpu_count() or 1,
                    help="torch threads on every side (default: all logical CPUs)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--only", help=f"comma-separated parts: {','.join(PARTS)} (default all)")
    for k, v in FULL.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int_range(1, 1 << 20), default=None, help=f"default {v} ({QUICK[k]} with --quick)")
    ap.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    sys.path.insert(0, os.path.join(REPO, "engine"))
    sys.path.insert(0, HERE)
    if a.side:
        print(json.dumps(SIDES[a.side](a)))
        return
    if a.threads < 1:
        raise SystemExit(f"--threads {a.threads}: must be at least 1")
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        raise SystemExit(f"{a.model}: no config.json (install the model: npx erl models install smollm2-135m-instruct)")
    parts = [p.strip() for p in a.only.split(",")] if a.only else list(PARTS)
    for p in parts:
        if p not in PARTS:
            raise SystemExit(f"--only {a.only}: unknown part {p!r} (parts: {', '.join(PARTS)})")
    run(a, parts)


def run(a: argparse.Namespace, parts: list[str]) -> None:
    import torch
    import transformers
    from erl_engine.autotune import cpu_summary
    from transformers import AutoTokenizer

    os.makedirs(a.out, exist_ok=True)
    cpu = cpu_summary()
    command = " ".join([".venv/bin/python", "bench/smollm2_bench.py", *sys.argv[1:]])
    est, rate = estimate_seconds(a, parts)
    print(f"# SmolLM2 benchmark: {', '.join(parts)}; {a.threads} thread(s); {cpu['model']} "
          f"(flags: {', '.join(cpu['flags']) or 'none'}); load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"estimate: about {est / 60:.0f} min (fp32 matmul probe {rate / 1e9:.1f} GFLOP/s here; assumed efficiencies; "
          "a loaded machine takes longer)", flush=True)
    started = time.time()
    tok = AutoTokenizer.from_pretrained(a.model)
    a.prompts_file = os.path.join(a.out, "sampling-prompts.json")
    with open(a.prompts_file, "w", encoding="utf-8") as f:
        json.dump(sampling_prompts(tok, a.sample_prompts, a.prompt_tokens), f)
    result: dict[str, Any] = {
        "command": command, "model": a.model, "cpu": cpu, "threads": a.threads, "dtypeRequested": a.dtype,
        "torch": torch.__version__, "transformers": transformers.__version__, "quick": a.quick,
        "sizes": {k: getattr(a, k) for k in FULL}, "estimateSeconds": est, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "parts": {}, "rows": [], "failed": {},
    }
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "grpo-full": lambda: part_grpo(a, False), "grpo-lora": lambda: part_grpo(a, True),
        "sampling": lambda: part_sampling(a), "vllm": lambda: part_vllm(a), "turns": lambda: part_turns(a),
        "profile": lambda: part_profile(a),
    }
    for p in parts:
        print(f"[{time.strftime('%H:%M:%S')}] {p} ...", flush=True)
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        try:
            r = runners[p]()
        except (RuntimeError, SystemExit, subprocess.CalledProcessError) as e:
            result["failed"][p] = str(e)
            print(f"  {p} failed: {str(e).splitlines()[0]}", flush=True)
            write(a, result)
            continue
        r["partLoad"] = {"start": load0, "end": os.getloadavg()[0]}
        r["partSeconds"] = time.perf_counter() - t0
        result["parts"][p] = r
        result["rows"] = build_rows(result, a)
        write(a, result)
        print(f"  done in {r['partSeconds']:.0f} s", flush=True)
    result["seconds"] = time.time() - started
    write(a, result)
    print(open(os.path.join(a.out, "smollm2.md"), encoding="utf-8").read())
    print(f"took {result['seconds'] / 60:.1f} min (estimate {est / 60:.0f} min); wrote {a.out}/smollm2.md and "
          f"{a.out}/smollm2.json")
    if result["failed"]:
        raise SystemExit(f"failed parts: {', '.join(result['failed'])} (their errors are in {a.out}/smollm2.json)")


def build_rows(result: dict[str, Any], a: argparse.Namespace) -> list[dict[str, Any]]:
    """One dict per table row: figure, value, detail and the conditions of the part that measured it."""
    cpu = result["cpu"]
    P = result["parts"]
    groups: list[tuple[str, list[tuple[str, str, str]]]] = []
    for p in ("grpo-full", "grpo-lora"):
        if p in P:
            groups.append((p, rows_grpo(P[p], p)))
    if "sampling" in P:
        groups.append(("sampling", rows_sampling(P["sampling"], P.get("vllm"), a)))
    if "turns" in P:
        groups.append(("turns", rows_turns(P["turns"], a)))
    if "profile" in P:
        groups.append(("profile", rows_profile(P["profile"])))
    rows = []
    for p, rs in groups:
        r = P[p]
        for fig, value, detail in rs:
            vllm_row = "vLLM" in fig
            load = P["vllm"]["partLoad"] if vllm_row else r["partLoad"]
            rows.append({
                "figure": fig, "value": value, "detail": detail, "part": "vllm" if vllm_row else p,
                "cpu": cpu["model"], "flags": cpu["flags"], "dtype": P["vllm"]["dtype"] if vllm_row else r["dtype"],
                "threads": P["vllm"]["threads"] if vllm_row else r["threads"],
                "loadStart": round(load["start"], 2), "loadEnd": round(load["end"], 2),
            })
    return rows


def write(a: argparse.Namespace, result: dict[str, Any]) -> None:
    with open(os.path.join(a.out, "smollm2.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    cpu = result["cpu"]
    lines = [
        f"# SmolLM2-135M-Instruct benchmark{' (--quick: toy sizes)' if result['quick'] else ''}",
        "",
        f"Command: `{result['command']}`; started {result['started']}; torch {result['torch']}, transformers "
        f"{result['transformers']}; machine {cpu['model']}, {cpu['logicalCpus']} logical CPUs, flags "
        f"{', '.join(cpu['flags']) or 'none'}.",
        "",
        "| figure | value | detail | CPU | flags | dtype | threads | load start → end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['figure']} | {r['value']} | {r['detail']} | {r['cpu']} | {', '.join(r['flags']) or 'none'} "
                     f"| {r['dtype']} | {r['threads']} | {r['loadStart']:.1f} → {r['loadEnd']:.1f} |")
    for p, err in result["failed"].items():
        lines.append(f"| {p}: not measured | failed | {err.splitlines()[0][:300]} | {cpu['model']} | "
                     f"{', '.join(cpu['flags']) or 'none'} | – | {result['threads']} | – |")
    prof = result["parts"].get("profile")
    if prof:
        lines += ["", f"## Profile of one GRPO step (full fine-tuning, {prof['prompts']} prompts x {prof['samples']} "
                  f"samples x {prof['tokens']} tokens; step {prof['step']['step']:.2f} s: sampling "
                  f"{prof['step']['sample']:.2f} s, forward-backward {prof['step']['forwardBackward']:.2f} s, "
                  f"optimizer {prof['step']['optimStep']:.2f} s, under the profiler)", "",
                  "| operator | calls | self s | total s |", "| --- | --- | --- | --- |"]
        lines += [f"| `{o['name']}` | {o['calls']} | {o['selfSeconds']:.3f} | {o['totalSeconds']:.3f} |"
                  for o in prof["profile"]]
    with open(os.path.join(a.out, "smollm2.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Peer benchmark: one GRPO step in this project's engine against TRL's GRPOTrainer, on CPU.

Both sides run the same step on the same model (erl-tiny by default), the same prompts, the same
number of samples per prompt and new tokens, the same reward function and the same optimiser
(AdamW, lr 1e-6, no KL term, clip 0.2, token-mean loss, no activation checkpointing: TRL 1.16's
default is on, --trl-gradient-checkpointing keeps it): sample `samples` completions of exactly
`tokens` new tokens for each of `prompts` prompts at temperature 1, score them, normalise the rewards
within each prompt's group, one forward-backward of the clipped policy-gradient loss, one optimiser
step. End-of-sequence is switched off on both sides so both train the same number of tokens. Each side
runs in its own process; the first step is a warm-up and is left out; the figure is the median of
the other steps.

The engine side calls the engine in-process through its protocol validation (as bench/engine_bench.py
does; the JSON framing of the stdio/HTTP transports is not included). TRL is installed only into the
benchmark's own virtual environment, bench/.venv-trl (ignored by git), which this script creates on
first use: a venv that sees the project's .venv packages (torch, transformers) through a .pth file and
adds `trl==1.16.0` and its extra dependencies (datasets). Nothing is added to the engine's
requirements.

With --lora both sides train LoRA adapters instead of every weight: rank 16, alpha 32, no dropout, on
every linear layer of the decoder (peft's "all-linear": the LM head excluded), through peft on both
sides (the engine's loadModel `lora`, TRL's `peft_config`).

It also prints the step's distance from this CPU's floor (bench/floor.py): the forward-backward
matmuls timed at the step's own shapes and token counts (the head on the trained positions only, no
weight gradients of frozen weights under LoRA), AdamW's memory traffic at the measured copy
bandwidth, and the sampling floor of bench/engine_bench.py; split into sampling, forward-backward
and optimizer against the engine's own times for each. Each side also reports its peak RSS during
the steps (polled every 10 ms).

Run from the repository root:
  .venv/bin/python bench/trl_peer.py [--steps 5] [--prompts 8] [--samples 4] [--tokens 48]
                                     [--dtype auto|float32|bfloat16] [--threads 1] [--model models/erl-tiny]
                                     [--lora] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from benchargs import int_range, model_dir

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRL_VENV = os.path.join(HERE, ".venv-trl")
TRL_PIN = "trl==1.16.0"
# LoRA on both sides (--lora): the setting, every linear layer of the decoder.
LORA_RANK = 16
LORA_ALPHA = 32
LORA_TARGETS = "all-linear"

PROMPT_TEXTS = [
    "You are on a frozen lake. Reach the goal G without falling into a hole H. Board:\nSFFF\nFHFH\nFFFH\nHFFG\nYour move?",
    "Push the box B onto the target T. Walls are #. Board:\n#####\n#P B#\n#  T#\n#####\nYour move?",
    "Which of these is a prime number: 21, 23, 25, 27? Answer with the number.",
    "You are on a frozen lake. Board:\nSFH\nFFH\nHFG\nName the moves that reach G.",
    "Name a colour that is also a fruit.",
    "Spell the word 'river' backwards.",
    "You are on a frozen lake. Board:\nSHF\nFFF\nFHG\nWhat is your first move?",
    "Count the letters in the word 'lake'.",
    "Push the box onto the target. Board:\n####\n#PB#\n# T#\n####\nYour move?",
    "Which direction is opposite to left?",
    "Name the first letter of the alphabet.",
    "You are on a frozen lake. Board:\nSF\nHG\nYour moves?",
]


def reward_of(text: str) -> float:
    """The same deterministic reward on both sides: how many of the move words the completion names."""
    t = text.lower()
    return float(sum(w in t for w in ("left", "right", "up", "down"))) + 0.01 * len(set(t))


def group_advantages(rewards: list[float], group: int) -> list[float]:
    """(r - mean) / (std + 1e-4) within each prompt's group, as GRPO (and TRL's scale_rewards='group')."""
    out: list[float] = []
    for g in range(0, len(rewards), group):
        rs = rewards[g : g + group]
        mean = sum(rs) / len(rs)
        std = statistics.stdev(rs) if len(rs) > 1 else 0.0
        out += [(r - mean) / (std + 1e-4) for r in rs]
    return out


# ---- the TRL environment ----------------------------------------------------------------------------


def trl_python() -> str:
    """bench/.venv-trl's interpreter, creating the venv on first use."""
    py = os.path.join(TRL_VENV, "bin", "python")
    if os.path.exists(py):
        check = subprocess.run([py, "-c", "import trl, torch; print(trl.__version__)"], capture_output=True, text=True)
        if check.returncode == 0:
            return py
    print(f"creating {os.path.relpath(TRL_VENV, REPO)} with {TRL_PIN} (once)...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", TRL_VENV], check=True)
    site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    base = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The project's packages (torch, transformers, accelerate) are seen, not copied or upgraded.
    with open(os.path.join(site, "erl-base.pth"), "w", encoding="utf-8") as f:
        f.write(base + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", TRL_PIN], check=True)
    return py


# ---- shared pieces ----------------------------------------------------------------------------------


class PeakRss:
    """The largest resident set size of this process while the block runs, polled every 10 ms from
    /proc/self/statm (Linux; elsewhere the process's lifetime peak, ru_maxrss)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _now(self) -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            self._stop.wait(0.01)

    def __enter__(self) -> "PeakRss":
        self.peak = self._now()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())


def chats(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": PROMPT_TEXTS[i % len(PROMPT_TEXTS)]}] for i in range(n)]


# ---- the engine side --------------------------------------------------------------------------------


def run_engine(a: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, os.path.join(REPO, "engine"))
    import torch

    from erl_engine import PROTOCOL_VERSION
    from erl_engine.engine import Engine
    from erl_engine.protocol import parse_request

    torch.set_num_threads(a.threads)

    def call(e: Engine, method: str, params: dict[str, Any]) -> Any:
        _, m, p = parse_request({"v": PROTOCOL_VERSION, "id": 1, "method": method, "params": params})
        return e.call(m, p)

    e = Engine()
    load = {"path": os.path.abspath(a.model), "dtype": a.dtype, "device": "cpu", "seed": 0}
    if a.lora:
        load["lora"] = {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targetModules": LORA_TARGETS}
    info = call(e, "loadModel", load)
    lm = e.need_model()
    lm.eos_ids = []  # exactly `tokens` new tokens, as on the TRL side
    prompts = call(e, "renderChats", {"chats": [{"messages": c, "addGenerationPrompt": True} for c in chats(a.prompts)]})
    prompts = prompts["ids"]
    times: list[dict[str, float]] = []
    trained = sampled = 0
    lengths: list[int] = []
    rss = PeakRss().__enter__()
    prof: Any = None
    for step in range(a.steps):
        if a.profile and step == a.steps - 1:  # the last step, under torch.profiler
            from torch.profiler import ProfilerActivity, profile

            prof = profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        t0 = time.perf_counter()
        seqs = call(e, "sample", {"prompts": prompts, "n": a.samples, "maxTokens": a.tokens, "temperature": 1.0,
                                   "seed": step})["sequences"]
        t1 = time.perf_counter()
        texts = call(e, "decodeMany", {"seqs": [s["tokens"] for s in seqs], "skipSpecialTokens": True})["texts"]
        adv = group_advantages([reward_of(t) for t in texts], a.samples)
        datums = []
        for s, adv_i in zip(seqs, adv):
            import base64

            import numpy as np

            lps = np.frombuffer(base64.b64decode(s["logprobs"]["b64"]), dtype="<f4").tolist()
            p = prompts[s["promptIndex"]]
            full = p + s["tokens"]
            n = len(full) - 1
            w = [0.0] * (len(p) - 1) + [1.0] * len(s["tokens"])
            datums.append({"inputIds": full[:-1], "targetIds": full[1:], "weights": w, "advantages": [adv_i] * n,
                           "oldLogprobs": [0.0] * (len(p) - 1) + lps})
        tb = time.perf_counter()
        call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "aggregation": "token-mean",
                                                                "clipLow": 0.2, "clipHigh": 0.2}})
        tf = time.perf_counter()
        call(e, "optimStep", {"lr": 1e-6, "weightDecay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8})
        t2 = time.perf_counter()
        times.append({"step": t2 - t0, "sample": t1 - t0, "train": t2 - tb, "forwardBackward": tf - tb,
                      "optimStep": t2 - tf, "between": tb - t1})
        trained = sum(len(s["tokens"]) for s in seqs)
        sampled = trained
        lengths = [len(d["inputIds"]) for d in datums]
    rss.__exit__()
    profile_ops = None
    if prof is not None:
        prof.__exit__(None, None, None)
        profile_ops = top_ops(prof, a.profile_top)
    return {"profile": profile_ops, "times": times, "dtype": info["dtype"], "dtypeReason": info["dtypeReason"],
            "threads": torch.get_num_threads(), "params": info["parameters"]["total"],
            "trainable": info["parameters"]["trainable"], "trainedTokens": trained,
            "sampledTokens": sampled, "promptTokens": sum(len(p) for p in prompts) * a.samples,
            "prompts": [list(map(int, p)) for p in prompts], "lengths": lengths, "peakRssBytes": rss.peak,
            "lora": bool(a.lora)}


def top_ops(prof: Any, k: int) -> list[dict[str, Any]]:
    """The k operators with the most self CPU time in a torch.profiler run: name, calls, self and total
    seconds (total includes the operators each one called)."""
    rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)[:k]
    return [{"name": r.key, "calls": int(r.count), "selfSeconds": r.self_cpu_time_total / 1e6,
             "totalSeconds": r.cpu_time_total / 1e6} for r in rows]


# ---- the TRL side -----------------------------------------------------------------------------------


def run_trl(a: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.threads)
    dtype = a.dtype
    if dtype == "auto":  # the engine's verdict for this machine, passed in by the parent
        dtype = a.resolved_dtype
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    ds = Dataset.from_list([{"prompt": c} for c in chats(a.prompts)])

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [reward_of(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    times: list[float] = []
    rss = PeakRss()

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out,
            max_steps=a.steps,
            per_device_train_batch_size=a.prompts * a.samples,
            gradient_accumulation_steps=1,
            num_generations=a.samples,
            max_completion_length=a.tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            max_grad_norm=1e9,
            beta=0.0,
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            shuffle_dataset=False,
            use_cpu=True,
            bf16=dtype == "bfloat16",
            fp16=False,
            report_to="none",
            logging_steps=1,
            save_strategy="no",
            disable_dropout=True,
            dataloader_num_workers=0,
            seed=0,
            generation_kwargs={"min_new_tokens": a.tokens, "eos_token_id": None},
            # TRL 1.16 checkpoints activations by default; the engine does not (unless asked), so off
            # unless --trl-gradient-checkpointing asks for TRL's default.
            gradient_checkpointing=a.trl_gradient_checkpointing,
        )
        peft_config = None
        if a.lora:
            from peft import LoraConfig

            peft_config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                     target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[Timer()], peft_config=peft_config)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        with rss:
            trainer.train()
        lengths = [r.get("completions/mean_length") for r in trainer.state.log_history if "completions/mean_length" in r]
    return {"times": [{"step": t} for t in times], "dtype": dtype, "threads": torch.get_num_threads(),
            "trl": trl.__version__, "meanCompletionLength": lengths[-1] if lengths else None,
            "peakRssBytes": rss.peak, "trainable": trainable, "lora": bool(a.lora)}


# ---- the driver -------------------------------------------------------------------------------------


def side(python: str, which: str, a: argparse.Namespace, extra: list[str] | None = None) -> dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--side", which, "--steps", str(a.steps), "--prompts", str(a.prompts),
           "--samples", str(a.samples), "--tokens", str(a.tokens), "--dtype", a.dtype, "--threads", str(a.threads),
           "--model", a.model] + (["--lora"] if a.lora else []) + (
               ["--trl-gradient-checkpointing"] if getattr(a, "trl_gradient_checkpointing", False) else []) + (extra or [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "ERL_ENGINE_THREADS": str(a.threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"the {which} side failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def median_after_warmup(times: list[dict[str, float]], key: str) -> float:
    xs = [t[key] for t in times[1:]] or [t[key] for t in times]
    return statistics.median(xs)


def peer(a: argparse.Namespace) -> dict[str, Any]:
    """Both sides in their own processes, then the floor of the engine's step on this CPU; one dict."""
    sys.path.insert(0, os.path.join(REPO, "engine"))
    sys.path.insert(0, HERE)
    from erl_engine.autotune import cpu_summary

    cpu = cpu_summary()
    py_trl = trl_python()
    load0 = os.getloadavg()[0]
    eng = side(sys.executable, "engine", a)
    load_mid = os.getloadavg()[0]
    trl_res = side(py_trl, "trl", a, ["--resolved-dtype", eng["dtype"]])
    load1 = os.getloadavg()[0]

    import torch
    from transformers import AutoConfig

    import floor
    from engine_bench import sampling_floor

    torch.set_num_threads(a.threads)
    cfg = AutoConfig.from_pretrained(a.model)
    fb = floor.train_floor(floor.Shape.of(cfg), eng["lengths"], eng["trainedTokens"],
                           LORA_RANK if a.lora else None, eng["dtype"], a.floor_repeats)
    bandwidth = floor.copy_bandwidth(a.floor_repeats)
    opt = floor.optimizer_floor(eng["trainable"], bandwidth)
    smp, smp_how = sampling_floor(eng["dtype"], eng["prompts"], a.samples, a.tokens, a.floor_repeats,
                                  config=cfg.to_dict())
    load2 = os.getloadavg()[0]
    e = {k: median_after_warmup(eng["times"], k) for k in ("step", "sample", "forwardBackward", "optimStep", "train",
                                                        "between")}
    return {
        "model": a.model, "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": LORA_TARGETS} if a.lora else None,
        "prompts": a.prompts, "samples": a.samples, "tokens": a.tokens, "steps": a.steps, "threads": eng["threads"],
        "dtype": eng["dtype"], "dtypeReason": eng["dtypeReason"], "cpu": cpu,
        "load": {"start": load0, "afterEngine": load_mid, "afterTrl": load1, "end": load2},
        "trlGradientCheckpointing": bool(getattr(a, "trl_gradient_checkpointing", False)),
        "engine": {**e, "peakRssBytes": eng["peakRssBytes"], "params": eng["params"], "trainable": eng["trainable"],
                   "trainedTokens": eng["trainedTokens"], "promptTokens": eng["promptTokens"],
                   "sequenceTokens": sum(eng["lengths"])},
        "trl": {"step": median_after_warmup(trl_res["times"], "step"), "version": trl_res["trl"],
                "peakRssBytes": trl_res["peakRssBytes"], "trainable": trl_res["trainable"],
                "meanCompletionLength": trl_res["meanCompletionLength"]},
        "ratio": median_after_warmup(trl_res["times"], "step") / e["step"],
        "floor": {"sample": smp, "sampleHow": smp_how, "forwardBackward": fb["seconds"], "forwardBackwardDetail": fb,
                  "optimizer": opt, "copyBandwidth": bandwidth,
                  "step": smp + fb["seconds"] + opt},
    }


def report(r: dict[str, Any]) -> list[str]:
    """The peer result as printed lines."""
    cpu, e, t, f = r["cpu"], r["engine"], r["trl"], r["floor"]
    n = r["prompts"] * r["samples"]
    fb = f["forwardBackwardDetail"]
    mode = f"LoRA r {r['lora']['rank']} alpha {r['lora']['alpha']} ({r['lora']['targets']})" if r["lora"] else "full fine-tuning"
    return [
        f"# GRPO step, this engine vs TRL {t['version']} GRPOTrainer, CPU, {mode}",
        f"cpu: {cpu['model']} ({cpu['logicalCpus']} logical CPUs; flags: {', '.join(cpu['flags']) or 'none'}); "
        f"load average {r['load']['start']:.1f} -> {r['load']['end']:.1f}",
        f"model {r['model']} ({e['params'] / 1e6:.2f}M parameters, {e['trainable'] / 1e6:.2f}M trained), {r['prompts']} "
        f"prompts x {r['samples']} samples, {r['tokens']} new tokens each, dtype {r['dtype']} ({r['dtypeReason']}), "
        f"{r['threads']} thread(s), median of steps 2..{r['steps']}",
        f"engine  {e['step']:7.2f} s/step  {n / e['step']:7.2f} samples/s   (sampling {e['sample']:.2f} s, "
        f"forwardBackward {e['forwardBackward']:.2f} s, optimStep {e['optimStep']:.2f} s; peak RSS "
        f"{e['peakRssBytes'] / 2**20:.0f} MiB)",
        f"TRL     {t['step']:7.2f} s/step  {n / t['step']:7.2f} samples/s   (TRL mean completion length "
        f"{t['meanCompletionLength']}; peak RSS {t['peakRssBytes'] / 2**20:.0f} MiB)",
        f"ratio   {r['ratio']:7.2f}x (engine samples/s over TRL's)",
        f"floor   forward-backward {f['forwardBackward']:.2f} s ({fb['flops'] / 1e9:.0f} GFLOP over {fb['tokens']} tokens, "
        f"the head on {fb['weightedTokens']}, at {fb['rate'] / 1e9:.1f} GFLOP/s: {fb['shapesTimed']} shapes timed here); "
        f"optimizer {f['optimizer']:.3f} s ({e['trainable'] / 1e6:.2f}M params x 28 B at {f['copyBandwidth'] / 1e9:.1f} GB/s); "
        f"sampling {f['sample']:.2f} s ({f['sampleHow']})",
        f"        engine / floor: sampling {e['sample'] / f['sample']:.2f}x, forward-backward "
        f"{e['forwardBackward'] / f['forwardBackward']:.2f}x, optimizer {e['optimStep'] / f['optimizer']:.2f}x, "
        f"whole step {e['step'] / f['step']:.2f}x",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int_range(1, 10_000), default=5)
    ap.add_argument("--prompts", type=int_range(1, 4096), default=8)
    ap.add_argument("--samples", type=int_range(1, 4096), default=4)
    ap.add_argument("--tokens", type=int_range(1, 1 << 20), default=48)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--threads", type=int_range(1, 1024), default=1)
    ap.add_argument("--model", type=model_dir, default="models/erl-tiny")
    ap.add_argument("--lora", action="store_true", help=f"train LoRA adapters (rank {LORA_RANK}, alpha {LORA_ALPHA}, "
                    f"{LORA_TARGETS}) instead of every weight, on both sides")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="TRL with its default activation checkpointing (off by default: the engine does not checkpoint)")
    ap.add_argument("--floor-repeats", type=int_range(1, 100), default=3, help="repeats of each timed matmul for the floor")
    ap.add_argument("--json", help="also write the result as JSON to this file")
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # engine side: profile the last step
    ap.add_argument("--profile-top", type=int_range(1, 1000), default=25, help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["engine", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--resolved-dtype", default="float32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side == "engine":
        print(json.dumps(run_engine(a)))
        return
    if a.side == "trl":
        print(json.dumps(run_trl(a)))
        return
    r = peer(a)
    print("\n".join(report(r)))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()

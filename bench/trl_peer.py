"""Peer benchmark: one GRPO step in this project's engine against TRL's GRPOTrainer, on CPU.

Both sides run the same step on the same model (erl-tiny by default), the same prompts, the same
number of samples per prompt and new tokens, the same reward function and the same optimiser
(AdamW, lr 1e-6, no KL term, clip 0.2, token-mean loss): sample `samples` completions of exactly
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

It also prints the step's distance from this CPU's floor: the training FLOPs (6 x parameters x trained
tokens) plus the sampling FLOPs (2 x parameters x sampled tokens) at the GEMM rate measured here for
the chosen dtype.

Run from the repository root:
  .venv/bin/python bench/trl_peer.py [--steps 5] [--prompts 8] [--samples 4] [--tokens 48]
                                     [--dtype auto|float32|bfloat16] [--threads 1] [--model models/erl-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchargs import int_range, model_dir

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRL_VENV = os.path.join(HERE, ".venv-trl")
TRL_PIN = "trl==1.16.0"

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


def gemm_rate(dtype: str, hidden: int, inter: int) -> float:
    """FLOP/s of the model-shaped matmuls on this CPU in this dtype (best of a few)."""
    import torch

    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    x = torch.randn(2048, hidden, dtype=dt)
    w1 = torch.randn(hidden, inter, dtype=dt)
    w2 = torch.randn(inter, hidden, dtype=dt)
    flops = 2 * 2048 * hidden * inter * 2
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        (x @ w1) @ w2
        best = min(best, time.perf_counter() - t0)
    return flops / best


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
    info = call(e, "loadModel", {"path": os.path.abspath(a.model), "dtype": a.dtype, "device": "cpu", "seed": 0})
    lm = e.need_model()
    lm.eos_ids = []  # exactly `tokens` new tokens, as on the TRL side
    prompts = call(e, "renderChats", {"chats": [{"messages": c, "addGenerationPrompt": True} for c in chats(a.prompts)]})
    prompts = prompts["ids"]
    times: list[dict[str, float]] = []
    trained = sampled = 0
    for step in range(a.steps):
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
        call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "aggregation": "token-mean",
                                                                "clipLow": 0.2, "clipHigh": 0.2}})
        call(e, "optimStep", {"lr": 1e-6, "weightDecay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8})
        t2 = time.perf_counter()
        times.append({"step": t2 - t0, "sample": t1 - t0, "train": t2 - t1})
        trained = sum(len(s["tokens"]) for s in seqs)
        sampled = trained
    return {"times": times, "dtype": info["dtype"], "dtypeReason": info["dtypeReason"],
            "threads": torch.get_num_threads(), "params": info["parameters"]["total"], "trainedTokens": trained,
            "sampledTokens": sampled, "promptTokens": sum(len(p) for p in prompts) * a.samples}


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
        )
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[Timer()])
        trainer.train()
        lengths = [r.get("completions/mean_length") for r in trainer.state.log_history if "completions/mean_length" in r]
    return {"times": [{"step": t} for t in times], "dtype": dtype, "threads": torch.get_num_threads(),
            "trl": trl.__version__, "meanCompletionLength": lengths[-1] if lengths else None}


# ---- the driver -------------------------------------------------------------------------------------


def side(python: str, which: str, a: argparse.Namespace, extra: list[str] | None = None) -> dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--side", which, "--steps", str(a.steps), "--prompts", str(a.prompts),
           "--samples", str(a.samples), "--tokens", str(a.tokens), "--dtype", a.dtype, "--threads", str(a.threads),
           "--model", a.model] + (extra or [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"the {which} side failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def median_after_warmup(times: list[dict[str, float]], key: str) -> float:
    xs = [t[key] for t in times[1:]] or [t[key] for t in times]
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int_range(1, 10_000), default=5)
    ap.add_argument("--prompts", type=int_range(1, 4096), default=8)
    ap.add_argument("--samples", type=int_range(1, 4096), default=4)
    ap.add_argument("--tokens", type=int_range(1, 1 << 20), default=48)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--threads", type=int_range(1, 1024), default=1)
    ap.add_argument("--model", type=model_dir, default="models/erl-tiny")
    ap.add_argument("--side", choices=["engine", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--resolved-dtype", default="float32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side == "engine":
        print(json.dumps(run_engine(a)))
        return
    if a.side == "trl":
        print(json.dumps(run_trl(a)))
        return

    sys.path.insert(0, os.path.join(REPO, "engine"))
    from erl_engine.autotune import cpu_summary

    cpu = cpu_summary()
    py_trl = trl_python()
    load0 = os.getloadavg()[0]
    eng = side(sys.executable, "engine", a)
    trl_res = side(py_trl, "trl", a, ["--resolved-dtype", eng["dtype"]])
    load1 = os.getloadavg()[0]

    import torch
    from transformers import AutoConfig

    torch.set_num_threads(a.threads)
    cfg = AutoConfig.from_pretrained(a.model)
    rate = gemm_rate(eng["dtype"], cfg.hidden_size, cfg.intermediate_size)
    n = a.prompts * a.samples
    e_step = median_after_warmup(eng["times"], "step")
    e_sample = median_after_warmup(eng["times"], "sample")
    e_train = median_after_warmup(eng["times"], "train")
    t_step = median_after_warmup(trl_res["times"], "step")
    params = eng["params"]
    # Training runs prompt + completion tokens forward and backward; sampling generates the completions.
    train_tokens = eng["trainedTokens"] + eng["promptTokens"]
    train_floor = 6 * params * train_tokens / rate
    sample_floor = 2 * params * eng["sampledTokens"] / rate
    print(f"# GRPO step, this engine vs TRL {trl_res['trl']} GRPOTrainer, CPU")
    print(f"cpu: {cpu['model']} ({cpu['logicalCpus']} logical CPUs; flags: {', '.join(cpu['flags']) or 'none'}); "
          f"load average {load0:.1f} -> {load1:.1f}")
    print(f"model {a.model} ({params / 1e6:.2f}M parameters), {a.prompts} prompts x {a.samples} samples, {a.tokens} new "
          f"tokens each, dtype {eng['dtype']} ({eng['dtypeReason']}), {eng['threads']} thread(s), "
          f"median of steps 2..{a.steps}")
    print(f"engine  {e_step:7.2f} s/step  {n / e_step:7.2f} samples/s   (sampling {e_sample:.2f} s, training {e_train:.2f} s)")
    print(f"TRL     {t_step:7.2f} s/step  {n / t_step:7.2f} samples/s   (TRL mean completion length "
          f"{trl_res['meanCompletionLength']})")
    print(f"ratio   {t_step / e_step:7.2f}x (engine samples/s over TRL's)")
    print(f"floor   GEMM {rate / 1e9:.1f} GFLOP/s ({eng['dtype']}, model-shaped matmuls): training "
          f"{train_tokens} tokens x 6 x params = {train_floor:.2f} s, sampling {eng['sampledTokens']} tokens x 2 x params "
          f"= {sample_floor:.2f} s")
    print(f"        the engine's training runs at {100 * train_floor / e_train:.0f}% of the GEMM rate, sampling at "
          f"{100 * sample_floor / e_sample:.0f}%, the whole step at {100 * (train_floor + sample_floor) / e_step:.0f}%")


if __name__ == "__main__":
    main()

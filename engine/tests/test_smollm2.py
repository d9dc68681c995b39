"""The engine on a real pretrained LM, SmolLM2-135M-Instruct (models/smollm2-135m-instruct, installed by
`erl models install smollm2-135m-instruct` when missing): one LoRA step and one full fine-tuning step
each lower the loss on a fixed batch, and the exports (merged model, peft adapter) load in a fresh
Python process with plain transformers / peft and reproduce the engine's logits. fp32, two short
sequences. The TypeScript side (rendering, sampling, stopping) is src/models/smollm2.test.ts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, call, datum

from erl_engine.engine import Engine

MODEL = os.path.join(REPO, "models", "smollm2-135m-instruct")


def ensure_model() -> str:
    """Installs the model when it is missing (the suite's set-up normally has already)."""
    if not os.path.exists(os.path.join(MODEL, "provenance.json")):
        node = shutil.which("node")
        assert node, "node is needed to install the model (erl models install)"
        r = subprocess.run(
            [node, os.path.join(REPO, "bin", "erl.mjs"), "models", "install", "smollm2-135m-instruct"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, f"erl models install failed:\n{r.stdout}\n{r.stderr}"
    return MODEL


def batch(engine: Engine) -> list[dict[str, Any]]:
    """Two short chats; the loss is on the assistant's reply tokens only."""
    chats = [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Which move goes toward the goal?", "```\nright\n```"),
    ]
    out = []
    for q, a in chats:
        prompt = call(engine, "renderChat", {"messages": [{"role": "user", "content": q}], "addGenerationPrompt": True})
        full = call(
            engine,
            "renderChat",
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
        )["ids"]
        n_prompt = len(prompt["ids"])
        assert full[:n_prompt] == prompt["ids"]
        w = [0.0] * (n_prompt - 1) + [1.0] * (len(full) - n_prompt)
        out.append(datum(full[:-1], full[1:], w))
    return out


def mean_loss(engine: Engine, datums: list[dict[str, Any]]) -> float:
    from conftest import unpack

    lps = [unpack(x) for x in call(engine, "forward", {"datums": datums})["logprobs"]]
    return float(np.mean([-sum(w * lp for w, lp in zip(d["weights"], l)) for d, l in zip(datums, lps)]))


def load(lora: bool) -> Engine:
    e = Engine()
    p: dict[str, Any] = {"path": ensure_model(), "dtype": "float32", "device": "cpu", "seed": 0}
    if lora:
        p["lora"] = {"rank": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj"]}
    call(e, "loadModel", p)
    return e


def one_step(e: Engine, lr: float) -> tuple[float, float, dict[str, Any]]:
    datums = batch(e)
    before = mean_loss(e, datums)
    res = call(e, "forwardBackward", {"datums": datums, "loss": {"name": "cross_entropy"}})
    # The training loss equals the loss forward reports (the same tokens, no dropout).
    assert res["loss"] == pytest.approx(before, rel=1e-4)
    step = call(e, "optimStep", {"lr": lr, "weightDecay": 0.0})
    assert step["gradNorm"] > 0
    after = mean_loss(e, datums)
    return before, after, {"datums": datums}


def test_lora_step_lowers_loss_and_exports_reproduce_logits(tmp_path: Any) -> None:
    e = load(lora=True)
    info = e.info()
    assert info["parameters"]["total"] > 100_000_000
    assert 0 < info["parameters"]["trainable"] < 1_000_000
    before, after, ctx = one_step(e, lr=2e-3)
    print(f"LoRA step: loss {before:.4f} -> {after:.4f}")
    assert after < before - 1e-3, f"LoRA step: loss {before:.4f} -> {after:.4f}"

    # Export after the step (adapters no longer zero) and compare logits in a fresh process.
    adapter, merged = str(tmp_path / "adapter"), str(tmp_path / "merged")
    call(e, "export", {"dir": adapter})
    call(e, "export", {"dir": merged, "mergeLora": True})
    ids = [int(x) for x in ctx["datums"][0]["inputIds"]]
    assert e.lm is not None
    with torch.no_grad():
        want = e.lm.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    np.save(tmp_path / "want.npy", want)
    script = f"""
import json, numpy as np, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
ids = torch.tensor([{json.dumps(ids)}])
want = np.load({json.dumps(str(tmp_path / "want.npy"))})
out = {{}}
m = AutoModelForCausalLM.from_pretrained({json.dumps(merged)}, dtype=torch.float32).eval()
with torch.no_grad():
    out["merged"] = float(np.abs(m(input_ids=ids).logits[0].numpy() - want).max())
base = AutoModelForCausalLM.from_pretrained({json.dumps(MODEL)}, dtype=torch.float32)
p = PeftModel.from_pretrained(base, {json.dumps(adapter)}).eval()
with torch.no_grad():
    out["adapter"] = float(np.abs(p(input_ids=ids).logits[0].numpy() - want).max())
out["scale"] = float(np.abs(want).max())
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    diffs = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"export vs engine logits, max |diff|: {diffs}")
    # Stated tolerance: 1e-3 absolute on logits of magnitude ~20 (fp32; merging reorders the sums).
    assert diffs["adapter"] < 1e-3, diffs
    assert diffs["merged"] < 1e-3, diffs
    assert diffs["scale"] > 1.0


def test_full_fine_tuning_step_lowers_loss() -> None:
    e = load(lora=False)
    info = e.info()
    assert info["parameters"]["trainable"] == info["parameters"]["total"]
    before, after, _ = one_step(e, lr=1e-5)
    print(f"full fine-tuning step: loss {before:.4f} -> {after:.4f}")
    assert after < before - 1e-3, f"full fine-tuning step: loss {before:.4f} -> {after:.4f}"

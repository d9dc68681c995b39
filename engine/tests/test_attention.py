"""Training attention of bf16 models on CPU: bf16 or fp32 by measurement (erl_engine/attention.py)."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
import torch
from conftest import call, load_params

from erl_engine import attention
from erl_engine.engine import Engine


@pytest.fixture(autouse=True)
def fresh_verdicts() -> Iterator[None]:
    attention.reset()
    yield
    attention.reset()


def datums(n: int = 3) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ids = [4 + (7 * i + 3 * j) % 90 for j in range(20 + 5 * i)]
        w = [0.0] * 6 + [1.0] * (len(ids) - 7)
        out.append({"inputIds": ids[:-1], "targetIds": ids[1:], "weights": w, "advantages": [0.5 - i * 0.4] * (len(ids) - 1),
                    "oldLogprobs": [-4.0] * (len(ids) - 1)})
    return out


def grads_after_one_step(monkeypatch: pytest.MonkeyPatch, mode: str) -> dict[str, torch.Tensor]:
    monkeypatch.setenv(attention.ENV, mode)
    e = Engine()
    call(e, "loadModel", load_params(dtype="bfloat16", device="cpu"))
    call(e, "forwardBackward", {"datums": datums(), "loss": {"name": "ppo", "aggregation": "token-mean"}})
    return {n: p.grad.detach().clone() for n, p in e.need_model().model.named_parameters() if p.grad is not None}


def test_a_cpu_bf16_model_routes_its_attention_through_the_chooser() -> None:
    e = Engine()
    call(e, "loadModel", load_params(dtype="bfloat16", device="cpu"))
    assert e.need_model().model.config._attn_implementation == attention.NAME
    e32 = Engine()
    call(e32, "loadModel", load_params(dtype="float32", device="cpu"))
    assert e32.need_model().model.config._attn_implementation == "sdpa"


def test_fp32_and_bf16_attention_give_the_same_gradients_within_bf16_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    g16 = grads_after_one_step(monkeypatch, "bf16")
    g32 = grads_after_one_step(monkeypatch, "fp32")
    assert g16.keys() == g32.keys() and g16
    for name in g16:
        a, b = g16[name].float(), g32[name].float()
        scale = a.abs().max().clamp(min=1e-8)
        assert ((a - b).abs().max() / scale) < 0.1, name
    # ...but they are not the same computation: the choice takes effect.
    assert any(not torch.equal(g16[n], g32[n]) for n in g16)


def test_the_fp32_path_is_sdpa_over_fp32_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = True  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn((2, 4, 24, 16), generator=gen).to(torch.bfloat16).requires_grad_(True) for _ in range(3))
    monkeypatch.setenv(attention.ENV, "fp32")
    out, _ = attention.forward(module, q, k, v, None, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None, scaling=0.25)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, want.to(torch.bfloat16))
    # Without gradients (sampling, log-prob forwards) the plain bf16 path runs and nothing is probed.
    with torch.no_grad():
        plain, _ = attention.forward(module, q, k, v, None, scaling=0.25)
        want16, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25)
    assert torch.equal(plain, want16)
    assert attention.verdicts() == {}


def test_auto_measures_once_per_length_bucket_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(attention.ENV, raising=False)
    e = Engine()
    call(e, "loadModel", load_params(dtype="bfloat16", device="cpu"))
    call(e, "forwardBackward", {"datums": datums(), "loss": {"name": "ppo", "aggregation": "token-mean"}})
    call(e, "forwardBackward", {"datums": datums(), "loss": {"name": "ppo", "aggregation": "token-mean"}})
    v = attention.verdicts()
    assert list(v) == [64]  # the datums are 19-29 tokens long: one bucket, measured once
    m = re.fullmatch(r"(fp32|bf16): bf16 ([0-9.]+) ms, fp32 ([0-9.]+) ms \(forward \+ backward, .*\)", v[64])
    assert m, v[64]
    bf16, fp32 = float(m.group(2)), float(m.group(3))
    assert bf16 > 0 and fp32 > 0
    assert m.group(1) == ("fp32" if fp32 < bf16 else "bf16")
    err = capsys.readouterr().err
    assert err.count("erl engine: attention for training at up to 64 tokens: ") == 1


def test_the_verdict_follows_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(attention.ENV, raising=False)
    shape = torch.Size((8, 4, 100, 32))
    monkeypatch.setattr(attention, "probe", lambda *a: (True, "fp32: stub"))
    assert attention.use_fp32(shape, shape)
    attention.reset()
    monkeypatch.setattr(attention, "probe", lambda *a: (False, "bf16: stub"))
    assert not attention.use_fp32(shape, shape)
    # Beyond the probed lengths the plain bf16 path is kept without measuring.
    long = torch.Size((1, 4, attention.MAX_PROBED + 1, 32))
    monkeypatch.setattr(attention, "probe", lambda *a: pytest.fail("probed"))
    assert not attention.use_fp32(long, long)


def test_the_environment_fixes_the_choice(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    shape = torch.Size((8, 4, 100, 32))
    monkeypatch.setattr(attention, "probe", lambda *a: pytest.fail("probed"))
    monkeypatch.setenv(attention.ENV, "fp32")
    assert attention.use_fp32(shape, shape)
    monkeypatch.setenv(attention.ENV, "bf16")
    assert not attention.use_fp32(shape, shape)
    # A value it does not know is named once on stderr and measuring takes over.
    monkeypatch.setenv(attention.ENV, "fast")
    monkeypatch.setattr(attention, "probe", lambda *a: (True, "fp32: stub"))
    assert attention.use_fp32(shape, shape) and attention.use_fp32(shape, shape)
    err = capsys.readouterr().err
    assert err.count("ignoring ERL_ENGINE_CPU_ATTENTION='fast' (expected auto, fp32 or bf16)") == 1


def test_buckets_are_powers_of_two_from_64() -> None:
    assert [attention.bucket(n) for n in (1, 64, 65, 128, 129, 1000)] == [64, 64, 128, 128, 256, 1024]

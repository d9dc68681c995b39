"""Engine ranks under torchrun: two gloo ranks on CPU against the single-process engine, on the tiny
fixture. Each test reloads the model on the same 2-rank engine (one torchrun start per parallel mode).

Tolerances: the ranks sum the same per-token terms in a different order and through an all-reduce,
so losses and metrics agree to 1e-5 relative and weights after AdamW steps to 2e-5 absolute (fp32);
sampled tokens are equal (each sequence draws the same uniforms).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import ENGINE_DIR, FIXTURE, REPO, call, datum, load_params, unpack

from erl_engine.engine import Engine

MICRO = 24  # padded tokens per micro-batch: several micro-batches, and uneven counts per rank
# bench/gpu-check.sh runs this file with one NCCL rank on a GPU: ERL_TEST_RANKS=1 ERL_TEST_DEVICE=cuda.
NPROC = int(os.environ.get("ERL_TEST_RANKS", "2"))


class Ranks:
    """A torchrun-launched engine with `nproc` ranks, spoken to over stdio like the TypeScript client."""

    def __init__(self, nproc: int = NPROC, **env: str):
        full_env = {
            **os.environ,
            "PYTHONPATH": ENGINE_DIR,
            "ERL_TEST": "1",
            "ERL_ENGINE_MICROBATCH_TOKENS": str(MICRO),
            "OMP_NUM_THREADS": "1",
            "ERL_ENGINE_DIST": "1",
            **env,
        }
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        self.proc = subprocess.Popen(
            [*cmd, "-m", "erl_engine.server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=full_env, cwd=REPO
        )
        self.next_id = 0

    def raw(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        msg = {"v": 1, "id": self.next_id, "method": method, "params": _plain(params)}
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the 2-rank engine exited (code {self.proc.poll()}) during {method}"
        answer = json.loads(line)
        assert answer["id"] == self.next_id
        return answer

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        answer = self.raw(method, params)
        assert answer["ok"], answer["error"]
        return answer["result"]

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=120)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


@pytest.fixture(scope="module")
def ddp() -> Iterator[Ranks]:
    r = Ranks(ERL_ENGINE_PARALLEL="ddp")
    yield r
    assert r.close() == 0


def single(**load: Any) -> Engine:
    e = Engine()
    e.microbatch_override = e.microbatch_tokens = MICRO
    call(e, "loadModel", load_params(**load))
    e.microbatch_tokens = MICRO
    return e


def uneven_datums(seed: int = 0) -> list[dict[str, Any]]:
    """Seven datums of 2..15 tokens: two ranks get different datum and micro-batch counts."""
    rng = np.random.default_rng(seed)
    out = []
    for n, adv in ((15, 1.0), (2, -0.5), (9, 0.3), (4, -1.2), (11, 0.0), (3, 2.0), (6, -0.1)):
        ids = rng.integers(7, 100, size=n + 1).tolist()
        w = [0.0] + [1.0] * (n - 1)
        out.append(datum(ids[:-1], ids[1:], w, advantages=[adv] * n))
    return out


def with_old(lps: list[list[float]], datums: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**d, "oldLogprobs": [x - 0.05 for x in lp]} for d, lp in zip(datums, lps)]


def logprobs(result: dict[str, Any]) -> list[list[float]]:
    return [unpack(x) for x in result["logprobs"]]


def close_metrics(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def train_both(r: Ranks, e: Engine, lora: bool) -> None:
    """Two optimizer steps, the first over three forwardBackward calls with one shared divisor."""
    datums = uneven_datums()
    lps = logprobs(call(e, "forward", {"datums": datums}))
    got = logprobs(r("forward", {"datums": datums}))
    for a, b in zip(got, lps):
        assert np.allclose(a, b, atol=1e-5)
    rl = with_old(lps, datums)
    loss = {"name": "ppo", "clipLow": 0.2, "clipHigh": 0.05, "normalizer": float(len(rl))}
    for part in (rl[:3], rl[3:4], rl[4:]):
        want = call(e, "forwardBackward", {"datums": part, "loss": loss})
        have = r("forwardBackward", {"datums": part, "loss": loss})
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5)
        close_metrics(have["metrics"], want["metrics"])
    opt = {"lr": 3e-2 if lora else 1e-3, "gradClip": 1.0}
    close_metrics(r("optimStep", opt)["metrics"], call(e, "optimStep", opt)["metrics"])
    ce = {"name": "cross_entropy", "aggregation": "token-mean"}
    want = call(e, "forwardBackward", {"datums": datums, "loss": ce})
    have = r("forwardBackward", {"datums": datums, "loss": ce})
    close_metrics(have["metrics"], want["metrics"])
    close_metrics(r("optimStep", opt)["metrics"], call(e, "optimStep", opt)["metrics"])
    after = logprobs(r("forward", {"datums": datums}))
    want_after = logprobs(call(e, "forward", {"datums": datums}))
    assert not np.allclose(np.concatenate(want_after), np.concatenate(lps), atol=1e-3)  # training moved them
    for a, b in zip(after, want_after):
        assert np.allclose(a, b, atol=2e-5)


def test_full_finetuning_equals_single_process(ddp: Ranks) -> None:
    ddp("loadModel", load_params())
    train_both(ddp, single(), lora=False)


def test_lora_equals_single_process(ddp: Ranks) -> None:
    lora = {"rank": 4, "alpha": 8, "targetModules": "all-linear"}
    info = ddp("loadModel", load_params(lora=lora))
    assert 0 < info["parameters"]["trainable"] < info["parameters"]["total"]
    train_both(ddp, single(lora=lora), lora=True)


def test_sample_equals_single_process(ddp: Ranks) -> None:
    ddp("loadModel", load_params())
    e = single()
    req = {"prompts": [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16]], "n": 3, "maxTokens": 6,
           "temperature": 1.0, "seed": 11}
    have = ddp("sample", req)["sequences"]
    want = call(e, "sample", req)["sequences"]
    assert [s["promptIndex"] for s in have] == [s["promptIndex"] for s in want]
    assert [s["tokens"] for s in have] == [s["tokens"] for s in want]
    for a, b in zip(have, want):
        assert np.allclose(unpack(a["logprobs"]), unpack(b["logprobs"]), atol=1e-5)


def test_state_moves_between_two_ranks_and_one(ddp: Ranks, tmp_path: Any) -> None:
    ddp("loadModel", load_params())
    datums = uneven_datums(1)
    ce = {"name": "cross_entropy"}
    opt = {"lr": 1e-3}
    ddp("forwardBackward", {"datums": datums, "loss": ce})
    ddp("optimStep", opt)
    ddp("saveState", {"dir": str(tmp_path / "two")})
    e = single()
    assert call(e, "loadState", {"dir": str(tmp_path / "two")})["step"] == 1
    for a, b in zip(logprobs(ddp("forward", {"datums": datums})), logprobs(call(e, "forward", {"datums": datums}))):
        assert np.allclose(a, b, atol=1e-6)
    # One more step on each from the same state (the Adam moments moved too), then back to two ranks.
    call(e, "forwardBackward", {"datums": datums, "loss": ce})
    call(e, "optimStep", opt)
    call(e, "saveState", {"dir": str(tmp_path / "one")})
    ddp("forwardBackward", {"datums": datums, "loss": ce})
    ddp("optimStep", opt)
    for a, b in zip(logprobs(ddp("forward", {"datums": datums})), logprobs(call(e, "forward", {"datums": datums}))):
        assert np.allclose(a, b, atol=2e-5)
    ddp("loadModel", load_params())
    assert ddp("loadState", {"dir": str(tmp_path / "one")})["step"] == 2
    for a, b in zip(logprobs(ddp("forward", {"datums": datums})), logprobs(call(e, "forward", {"datums": datums}))):
        assert np.allclose(a, b, atol=1e-6)


def test_bad_request_is_refused_like_single_process(ddp: Ranks) -> None:
    ddp("loadModel", load_params())
    bad = [datum([5, 6, 99999], [6, 7, 8])]
    answer = ddp.raw("forward", {"datums": bad})
    assert not answer["ok"] and answer["error"]["code"] == "bad_request"
    assert "params.datums[0].inputIds[2]" in answer["error"]["message"]
    assert ddp("forward", {"datums": uneven_datums()})["logprobs"]  # still serving


def test_error_on_one_rank_is_reported_by_rank_zero() -> None:
    last = NPROC - 1
    r = Ranks(ERL_ENGINE_PARALLEL="ddp", ERL_ENGINE_FAULT=f"{last}:forwardBackward")
    try:
        r("loadModel", load_params())
        answer = r.raw("forwardBackward", {"datums": uneven_datums(), "loss": {"name": "cross_entropy"}})
        assert not answer["ok"] and answer["error"]["code"] == "internal"
        prefix = f"rank {last}: " if last else ""
        assert answer["error"]["message"].startswith(f"{prefix}engine error (RuntimeError: injected fault on rank {last}")
        # No rank hangs: both keep serving, and the gradient of the failed call was never applied.
        assert r("optimStep", {"lr": 1e-3})["metrics"]["grad_norm"] == 0.0
        e = single()
        for a, b in zip(logprobs(r("forward", {"datums": uneven_datums()})), logprobs(call(e, "forward", {"datums": uneven_datums()}))):
            assert np.allclose(a, b, atol=1e-6)
    finally:
        assert r.close() == 0


def test_forward_failing_mid_batch_on_one_rank() -> None:
    """Under DDP a rank that fails inside its forward micro-batches (out of memory, say) meets the others
    before the gather of results: rank 0 answers with its error at once and every rank keeps serving
    (the collective timeout is cut to 60 s, so a rank left waiting fails the test, not hangs it)."""
    last = NPROC - 1
    r = Ranks(ERL_ENGINE_PARALLEL="ddp", ERL_ENGINE_FAULT=f"{last}:forward/batch", ERL_ENGINE_DIST_TIMEOUT="60")
    try:
        r("loadModel", load_params())
        answer = r.raw("forward", {"datums": uneven_datums()})
        assert not answer["ok"] and answer["error"]["code"] == "internal", answer
        prefix = f"rank {last}: " if last else ""
        assert answer["error"]["message"].startswith(f"{prefix}engine error (RuntimeError: injected fault on rank {last}")
        ce = {"name": "cross_entropy"}
        assert r("forwardBackward", {"datums": uneven_datums(), "loss": ce})["metrics"]["tokens"] > 0
    finally:
        assert r.close() == 0


def test_load_failing_on_one_rank_fails_on_every_rank() -> None:
    """A load that fails on one rank only (its node cannot read the weights, its device is full): every
    rank fails it with that rank's error and holds no model; none is left in the dtype vote or in DDP's
    set-up (the collective timeout is cut to 60 s, so a rank left waiting fails the test, not hangs it)."""
    last = NPROC - 1
    r = Ranks(ERL_ENGINE_PARALLEL="ddp", ERL_ENGINE_FAULT=f"{last}:loadModel", ERL_ENGINE_DIST_TIMEOUT="60")
    try:
        prefix = f"rank {last}: " if last else ""
        for dtype in ("float32", "auto"):
            answer = r.raw("loadModel", load_params(dtype=dtype))
            assert not answer["ok"] and answer["error"]["code"] == "internal", answer
            msg = answer["error"]["message"]
            assert msg.startswith(f"{prefix}engine error (RuntimeError: injected fault on rank {last} in loadModel"), msg
            answer = r.raw("forward", {"datums": uneven_datums()})
            assert not answer["ok"] and answer["error"]["code"] == "no_model", answer
        # A request every rank refuses is refused as by one process.
        answer = r.raw("loadModel", load_params(path="/no/such/model"))
        assert not answer["ok"] and answer["error"]["code"] == "not_found", answer
        assert not answer["error"]["message"].startswith("rank ")
    finally:
        assert r.close() == 0


def test_fsdp2_equals_single_process(tmp_path: Any) -> None:
    r = Ranks(ERL_ENGINE_PARALLEL="fsdp")
    try:
        r("loadModel", load_params())
        e = single()
        train_both(r, e, lora=False)
        r("saveState", {"dir": str(tmp_path / "fsdp")})
        e2 = single()
        call(e2, "loadState", {"dir": str(tmp_path / "fsdp")})
        datums = uneven_datums(2)
        for a, b in zip(logprobs(call(e2, "forward", {"datums": datums})), logprobs(call(e, "forward", {"datums": datums}))):
            assert np.allclose(a, b, atol=2e-5)
        # Loading a single-process state onto the shards, then one more identical step.
        call(e, "saveState", {"dir": str(tmp_path / "one")})
        r("loadState", {"dir": str(tmp_path / "one")})
        ce = {"name": "cross_entropy"}
        call(e, "forwardBackward", {"datums": datums, "loss": ce})
        r("forwardBackward", {"datums": datums, "loss": ce})
        close_metrics(r("optimStep", {"lr": 1e-3})["metrics"], call(e, "optimStep", {"lr": 1e-3})["metrics"])
        for a, b in zip(logprobs(r("forward", {"datums": datums})), logprobs(call(e, "forward", {"datums": datums}))):
            assert np.allclose(a, b, atol=2e-5)
        lora = {"rank": 4, "alpha": 8, "targetModules": "all-linear"}
        r("loadModel", load_params(lora=lora))
        train_both(r, single(lora=lora), lora=True)
    finally:
        assert r.close() == 0


def test_auto_dtype_is_rank_zeros_verdict_on_every_rank(ddp: Ranks) -> None:
    """Each rank probes, rank 0's verdict holds for all: the ranks compute in the dtype reported."""
    info = ddp("loadModel", load_params(dtype="auto"))
    assert info["dtype"] in ("float32", "bfloat16")
    assert info["dtypeReason"].startswith("auto: ")
    e = single(dtype=info["dtype"])
    datums = uneven_datums()
    have = logprobs(ddp("forward", {"datums": datums}))
    want = logprobs(call(e, "forward", {"datums": datums}))
    for a, b in zip(have, want):
        assert np.allclose(a, b, atol=1e-5 if info["dtype"] == "float32" else 3e-2)

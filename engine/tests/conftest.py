"""Shared pytest fixtures: the engine package on sys.path, the tiny fixture model, small engines."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(ENGINE_DIR)
sys.path.insert(0, ENGINE_DIR)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE = os.path.join(REPO, "test", "fixtures", "tiny-model")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def load_params(**over: Any) -> dict[str, Any]:
    # ERL_TEST_DEVICE=cuda runs the model tests on a GPU (bench/gpu-check.sh).
    p: dict[str, Any] = {"path": FIXTURE, "dtype": "float32", "device": os.environ.get("ERL_TEST_DEVICE", "cpu"), "seed": 0}
    p.update(over)
    return p


def call(engine: Any, method: str, params: dict[str, Any]) -> Any:
    """Runs a request through the real schema validation, as the server does."""
    from erl_engine import PROTOCOL_VERSION
    from erl_engine.protocol import parse_request

    _, m, p = parse_request({"v": PROTOCOL_VERSION, "id": 1, "method": method, "params": params})
    return engine.call(m, p)


def unpack(x: Any) -> list[float]:
    import base64

    import numpy as np

    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["b64"]), dtype="<f4").astype(float).tolist()
    return list(x)


@pytest.fixture
def engine() -> Any:
    from erl_engine.engine import Engine

    e = Engine()
    call(e, "loadModel", load_params())
    return e


def datum(inp: list[int], tgt: list[int], w: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"inputIds": inp, "targetIds": tgt, "weights": w if w is not None else [1.0] * len(tgt)}
    d.update(extra)
    return d

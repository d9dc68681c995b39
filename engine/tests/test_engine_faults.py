"""Damaged model directories and failed writes give errors that name the file and the cause."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import FIXTURE, load_params

from erl_engine import PROTOCOL_VERSION
from erl_engine.checkpoint import _atomic_dir
from erl_engine.engine import Engine
from erl_engine.protocol import ProtocolError
from erl_engine.server import Dispatcher


def copy_fixture(tmp_path: Any) -> str:
    d = os.path.join(str(tmp_path), "model")
    shutil.copytree(FIXTURE, d)
    return d


def load_error(path: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        Engine().call("loadModel", load_params(path=path))
    return info.value


def test_an_empty_weight_file_is_named(tmp_path: Any) -> None:
    d = copy_fixture(tmp_path)
    open(os.path.join(d, "model.safetensors"), "wb").close()
    e = load_error(d)
    assert "model.safetensors: empty weight file (0 bytes)" in e.message


def test_a_truncated_weight_file_is_named(tmp_path: Any) -> None:
    d = copy_fixture(tmp_path)
    f = os.path.join(d, "model.safetensors")
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    e = load_error(d)
    assert f"{f}: truncated or corrupted safetensors file" in e.message


def test_missing_tokenizer_files_are_named(tmp_path: Any) -> None:
    d = copy_fixture(tmp_path)
    os.remove(os.path.join(d, "tokenizer.json"))
    e = load_error(d)
    assert e.code == "not_found" and "no tokenizer files" in e.message and d in e.message


def test_a_failed_write_names_the_directory_and_leaves_no_temp(tmp_path: Any) -> None:
    final = os.path.join(str(tmp_path), "state")

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, "x"), "wb") as f:
            f.write(b"abc")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    with pytest.raises(ProtocolError) as info:
        _atomic_dir(final, write)
    assert info.value.message.startswith(f"{final}: writing failed")
    assert os.listdir(str(tmp_path)) == []


def test_a_full_disk_is_reported_as_such(tmp_path: Any) -> None:
    final = os.path.join(str(tmp_path), "state")

    def write(tmp: str) -> None:
        raise OSError(28, "No space left on device", os.path.join(tmp, "trainable.safetensors"))

    with pytest.raises(ProtocolError) as info:
        _atomic_dir(final, write)
    assert "no space left on the device" in info.value.message and final in info.value.message



def test_an_unexpected_error_says_where_it_was_raised(monkeypatch: Any) -> None:
    # Over stdio the engine's stderr (with the traceback) is not shown, so the answer itself says where:
    # the innermost frame (here this test's, as it would be torch's) and the engine's own frame above it.
    d = Dispatcher()

    def broken(_params: dict[str, Any]) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(d.engine.methods, "info", broken)
    answer, _ = d.handle_line(json.dumps({"v": PROTOCOL_VERSION, "id": 1, "method": "info", "params": {}}))
    error = answer["error"]
    assert error["code"] == "internal"
    message = error["message"]
    assert message.startswith("engine error (RuntimeError: boom) raised at test_engine_faults.py:"), message
    assert " in broken, called from erl_engine/engine.py:" in message and " in call;" in message, message
    assert "stderr" not in message



def test_a_refused_write_is_not_called_a_full_disk(tmp_path: Any, monkeypatch: Any) -> None:
    # sysfs or proc show 0 bytes free; a permission error there must say so, not "no space left".
    final = os.path.join(str(tmp_path), "state")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: SimpleNamespace(total=0, used=0, free=0))

    def refused(tmp: str) -> None:
        raise PermissionError(13, "Permission denied", os.path.join(tmp, "x"))

    with pytest.raises(ProtocolError) as info:
        _atomic_dir(final, refused)
    assert "Permission denied" in info.value.message and "no space" not in info.value.message

    def torch_failed(_tmp: str) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    # An error without a code (torch's) on a disk with no space left is still a full disk.
    with pytest.raises(ProtocolError) as info:
        _atomic_dir(final, torch_failed)
    assert "no space left on the device" in info.value.message

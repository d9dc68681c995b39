"""What an exported model needs to be used elsewhere: ordinary file modes (the umask's, not mkdtemp's
private ones) on exports and engine states, a base model named portably, and causes named when a
model directory's config.json or weights are wrong."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterator

import pytest
from conftest import FIXTURE, call, load_params

from erl_engine.engine import Engine
from erl_engine.portable import REPO, load_export, resolve_base
from erl_engine.protocol import ProtocolError


@pytest.fixture()
def umask() -> Iterator[Any]:
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def modes(root: str) -> set[tuple[str, str]]:
    out = set()
    for d, _dirs, files in os.walk(root):
        out.add(("dir", oct(os.stat(d).st_mode & 0o777)))
        out.update(("file", oct(os.stat(os.path.join(d, f)).st_mode & 0o777)) for f in files)
    return out


@pytest.mark.parametrize(("mask", "d", "f"), [(0o022, "0o755", "0o644"), (0o027, "0o750", "0o640"), (0o077, "0o700", "0o600")])
def test_exports_and_states_get_the_umasks_modes(tmp_path: Any, umask: Any, mask: int, d: str, f: str) -> None:
    umask(mask)
    engine = Engine()
    call(engine, "loadModel", load_params())
    call(engine, "export", {"dir": str(tmp_path / "full")})
    call(engine, "saveState", {"dir": str(tmp_path / "state")})
    assert modes(str(tmp_path / "full")) == {("dir", d), ("file", f)}
    assert modes(str(tmp_path / "state")) == {("dir", d), ("file", f)}


def test_a_base_is_found_by_its_registry_name_or_its_path_in_the_checkout(tmp_path: Any) -> None:
    assert resolve_base("erl-tiny") == os.path.join(REPO, "models", "erl-tiny")
    assert resolve_base("test/fixtures/tiny-model") == os.path.join(REPO, "test", "fixtures", "tiny-model")
    assert resolve_base(FIXTURE) == FIXTURE
    with pytest.raises(FileNotFoundError, match="npx erl models install no-such-model"):
        resolve_base("no-such-model")
    # Another checkout: the name is looked up there.
    other = tmp_path / "checkout"
    shutil.copytree(FIXTURE, other / "models" / "mine")
    assert resolve_base("mine", str(other)) == str(other / "models" / "mine")


def test_an_adapter_named_portably_loads_over_its_base(tmp_path: Any) -> None:
    engine = Engine()
    call(engine, "loadModel", load_params(lora={"rank": 2, "alpha": 4, "targetModules": ["q_proj"]}))
    out = tmp_path / "adapter"
    call(engine, "export", {"dir": str(out)})
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = os.path.relpath(FIXTURE, REPO)  # what `erl export` writes
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    model, tok = load_export(str(out))
    assert type(model).__name__ == "PeftModelForCausalLM" and len(tok) > 0


def broken(tmp_path: Any, **change: Any) -> str:
    d = tmp_path / "model"
    shutil.copytree(FIXTURE, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update({k: (v(cfg) if callable(v) else v) for k, v in change.items()})
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_an_inconsistent_config_is_named_not_blamed_on_the_tokenizer(tmp_path: Any) -> None:
    path = broken(tmp_path, hidden_size=7, num_attention_heads=3)
    with pytest.raises(ProtocolError) as e:
        call(Engine(), "loadModel", load_params(path=path))
    assert "tokenizer" not in e.value.message
    assert e.value.message.startswith(f"{path}/config.json: not a usable model configuration (The hidden size (7)")


def test_weights_that_do_not_fit_the_config_name_a_tensor_and_both_shapes(tmp_path: Any) -> None:
    path = broken(tmp_path, intermediate_size=lambda c: c["intermediate_size"] * 2)
    with pytest.raises(ProtocolError) as e:
        call(Engine(), "loadModel", load_params(path=path))
    msg = e.value.message
    assert msg.startswith(f"{path}/model.safetensors: tensor model.layers.0.mlp.") and "but" in msg
    assert "config.json implies" in msg and "above report" not in msg


def test_a_seed_beyond_torchs_range_is_refused_by_the_protocol() -> None:
    with pytest.raises(ProtocolError, match=r"params\.seed: must be <= 18446744073709551615"):
        call(Engine(), "loadModel", load_params(seed=1e300))

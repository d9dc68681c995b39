"""Training state on disk (save_state / load_state) and export to HF or peft directories.

A state directory holds
  trainable.safetensors  the trainable parameters (all weights for full fine-tuning, adapters for LoRA)
  optimizer.pt           the AdamW state (absent before the first optim_step)
  rng.safetensors        torch RNG states (CPU, and each CUDA device)
  rng.json               numpy and Python RNG states
  state.json             format, step, model description, and a SHA-256 of every file above
It is written into a temporary sibling directory and renamed into place, so a crash leaves either
the old state or the new one, never a half-written mix; load_state verifies every checksum first.
Exports are written the same way. Both get ordinary modes (0777 / 0666 less the umask), not the
temporary directory's private ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from .protocol import ProtocolError

if TYPE_CHECKING:
    from .model import LoadedModel


class Checkpointable(Protocol):
    """What saving and loading a state needs of the engine (engine.Engine has it)."""

    optimizer: torch.optim.Optimizer | None
    step: int

    def need_model(self) -> "LoadedModel": ...

    def make_optimizer(self) -> torch.optim.Optimizer: ...

    def local_like(self, param: torch.Tensor, whole: torch.Tensor) -> torch.Tensor: ...

STATE_FORMAT = "erl-engine-state"
STATE_VERSION = 1


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (read without changing it where Linux shows it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    um = os.umask(0o022)
    os.umask(um)
    return um


def ordinary_modes(root: str) -> None:
    """Gives a directory tree the modes a plain mkdir and open would: 0777 and 0666 less the umask.
    mkdtemp makes a private (0700) directory and some writers make private files; an export or a
    checkpoint is an ordinary folder that other users of the machine may read when the umask lets them."""
    um = _umask()
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~um)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~um)


def _atomic_dir(final: str, write: Any) -> None:
    """Runs write(tmp_dir), then swaps tmp_dir into `final` (replacing an existing directory)."""
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ProtocolError("bad_request", f"params.dir: cannot create {parent}: {e.strerror}") from None
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    except OSError as e:
        raise ProtocolError("checkpoint", _write_problem(final, parent, e)) from None
    try:
        write(tmp)
        ordinary_modes(tmp)
        for name in os.listdir(tmp):
            p = os.path.join(tmp, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=parent)
            os.rename(final, os.path.join(old, "x"))
        os.rename(tmp, final)
        _fsync_dir(parent)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except ProtocolError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - a failed write: say where and why, leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise ProtocolError("checkpoint", _write_problem(final, parent, e)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_problem(final: str, parent: str, e: BaseException) -> str:
    """A failed write in words. torch.save reports a full disk only as an internal assertion
    ("enforce fail at inline_container.cc"), so the free space is checked as well."""
    import errno

    code = getattr(e, "errno", None)
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        free = None
    # Only an error without a code (torch's) is judged by the free space: a pseudo file system (sysfs,
    # proc) always shows 0 bytes free, and there a refusal is a refusal, not a full disk.
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and free is not None and free < (1 << 20)):
        return f"{final}: writing failed: no space left on the device ({free} bytes free in {parent})"
    if code == errno.EROFS:
        return f"{final}: writing failed: the file system is read-only"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename or final}: writing failed: {e.strerror}"
    text = str(e).strip().splitlines()
    return f"{final}: writing failed ({(text[0] if text else type(e).__name__)[:300]})"


def _trainable_named(engine: Checkpointable) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in engine.need_model().model.named_parameters() if p.requires_grad}


def _describe(lm: "LoadedModel") -> dict[str, Any]:
    return {"path": lm.path, "vocabSize": lm.vocab_size, "dtype": lm.dtype, "lora": lm.lora}


def save_state(
    engine: Checkpointable,
    directory: str,
    named: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Writes the state; `named` and `optimizer_state` are whole tensors gathered from engine ranks."""
    from safetensors.torch import save_file

    lm = engine.need_model()
    if named is None:
        named = {n: p.detach() for n, p in _trainable_named(engine).items()}
    if optimizer_state is None and engine.optimizer is not None:
        optimizer_state = engine.optimizer.state_dict()

    def write(tmp: str) -> None:
        save_file({n: p.detach().cpu().contiguous() for n, p in named.items()}, os.path.join(tmp, "trainable.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, os.path.join(tmp, "optimizer.pt"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, os.path.join(tmp, "rng.safetensors"))
        np_state = np.random.get_state()
        py_state = random.getstate()
        with open(os.path.join(tmp, "rng.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                    "python": [py_state[0], list(py_state[1]), py_state[2]],
                },
                f,
            )
        files = {name: _sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": engine.step,
            "model": _describe(lm),
            "parameters": {n: list(p.shape) for n, p in named.items()},
            "files": files,
        }
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)

    _atomic_dir(directory, write)


def load_state(engine: Checkpointable, directory: str) -> None:
    from safetensors.torch import load_file

    lm = engine.need_model()
    meta_path = os.path.join(directory, "state.json")
    if not os.path.isdir(directory):
        raise ProtocolError("not_found", f"params.dir: state directory not found: {directory}")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ProtocolError("checkpoint", f"{meta_path}: missing; {directory} is not an engine state directory") from None
    except json.JSONDecodeError as e:
        raise ProtocolError("checkpoint", f"{meta_path}: corrupted ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
        raise ProtocolError("checkpoint", f"{meta_path}: not a version-{STATE_VERSION} {STATE_FORMAT} file")
    files = meta.get("files")
    if not isinstance(files, dict) or "trainable.safetensors" not in files:
        raise ProtocolError("checkpoint", f"{meta_path}: the file list is missing or incomplete")
    for name, digest in files.items():
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            raise ProtocolError("checkpoint", f"{p}: missing (listed in state.json)")
        if _sha256(p) != digest:
            raise ProtocolError("checkpoint", f"{p}: checksum mismatch; the checkpoint is corrupted")

    named = _trainable_named(engine)
    saved_shapes = meta.get("parameters", {})
    if set(saved_shapes) != set(named):
        missing = sorted(set(named) - set(saved_shapes))[:3]
        extra = sorted(set(saved_shapes) - set(named))[:3]
        raise ProtocolError(
            "checkpoint",
            f"{directory}: its trainable parameters do not match the loaded model "
            f"(missing {missing}, unexpected {extra}); load the same model (and LoRA settings) first",
        )
    for n, p in named.items():
        if list(p.shape) != saved_shapes[n]:
            raise ProtocolError("checkpoint", f"{directory}: parameter {n} has shape {saved_shapes[n]}, model has {list(p.shape)}")

    tensors = load_file(os.path.join(directory, "trainable.safetensors"))
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(engine.local_like(p, tensors[n].to(p.device, p.dtype)))
    engine.optimizer = None
    if "optimizer.pt" in files:
        state = torch.load(os.path.join(directory, "optimizer.pt"), map_location=lm.device, weights_only=True)
        params = list(named.values())
        if any(type(p).__name__ == "DTensor" for p in params) and isinstance(state.get("state"), dict):
            # Engine ranks under FSDP2: each rank keeps its shard of the moments.
            for i, st in state["state"].items():
                if isinstance(i, int) and 0 <= i < len(params):
                    for k, v in st.items():
                        if isinstance(v, torch.Tensor) and v.shape == params[i].shape:
                            st[k] = engine.local_like(params[i], v)
        opt = engine.make_optimizer()
        try:
            opt.load_state_dict(state)
        except (ValueError, KeyError) as e:
            raise ProtocolError("checkpoint", f"{directory}/optimizer.pt: does not fit this model ({e})") from None
    if "rng.safetensors" in files:
        rng = load_file(os.path.join(directory, "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        cuda_states = [rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        if cuda_states and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if "rng.json" in files:
        with open(os.path.join(directory, "rng.json"), encoding="utf-8") as f:
            st = json.load(f)
        npst = st["numpy"]
        np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))
        pyst = st["python"]
        random.setstate((pyst[0], tuple(pyst[1]), pyst[2]))
    engine.step = int(meta.get("step", 0))


def export(lm: "LoadedModel", directory: str, merge_lora: bool, state_dict: dict[str, Any] | None = None) -> None:
    """A plain HF directory (full fine-tuning, or LoRA merged) or a peft adapter directory.

    `state_dict`: the whole model's tensors when the live ones are sharded (engine ranks under FSDP2)."""

    def write(tmp: str) -> None:
        if state_dict is not None:
            lm.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        elif lm.lora and not merge_lora:
            lm.model.save_pretrained(tmp, safe_serialization=True)
            # peft writes a template model card naming the base by this machine's absolute path; an
            # export names its base portably in adapter_config.json and erl-export.json instead.
            card = os.path.join(tmp, "README.md")
            if os.path.exists(card):
                os.remove(card)
        else:
            model = lm.model
            if lm.lora:
                # Merge into an fp32 copy so the live adapters keep training and no bf16 rounding creeps in.
                model = copy.deepcopy(lm.model).float().merge_and_unload()
            model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)

    _atomic_dir(directory, write)

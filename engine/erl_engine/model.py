"""Loading a causal LM for the engine: from an HF directory or a random init, LoRA or full fine-tuning,
dtype and device, and the frozen reference used for KL.

dtype semantics: "auto" picks one of the two below by measurement (autotune.py: bf16 on a CUDA device
that supports it; on CPU only where a short probe shows bf16 clearly faster) and records why in
`dtype_reason`. "float32" computes in fp32. "bfloat16" keeps trainable weights in fp32 (so AdamW
updates are not lost to bf16 rounding) and runs the model under bf16 autocast, on CPU and CUDA alike.
With LoRA the frozen base weights are stored in bf16 too (they are never updated), which halves
their memory; the adapters stay fp32.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from . import attention  # noqa: E402
from .protocol import ProtocolError  # noqa: E402
from .tokenizing import eos_ids  # noqa: E402


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: str  # "float32" | "bfloat16" (an "auto" request is resolved before loading)
    path: str | None
    lora: dict[str, Any] | None
    reference_kind: str | None
    reference: torch.nn.Module | None = None
    eos_ids: list[int] = field(default_factory=list)
    vocab_size: int = 0
    max_positions: int | None = None
    dtype_reason: str = "requested"
    # The sampler's store of finished sequences' keys and values (prefix_cache.PrefixCache), created on
    # first use; the engine clears it whenever the weights may change.
    prefix_cache: Any = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        """The frozen reference: a separate copy, or this model with its LoRA adapters disabled."""
        if self.reference_kind == "copy":
            assert self.reference is not None
            yield self.reference
        elif self.reference_kind == "base":
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model
        else:
            raise ProtocolError("bad_request", "klCoef > 0 needs a frozen reference: load the model with `reference`")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ProtocolError("bad_request", "params.device: 'cuda' was asked for but this torch build sees no CUDA GPU")
    return torch.device(name)


def _check_dir(path: str, what: str, key: str) -> str:
    if not os.path.isdir(path):
        raise ProtocolError("not_found", f"params.{key}: {what} directory not found: {path}")
    return os.path.abspath(path)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not getattr(tok, "chat_template", None):
        # Allowed (encode/decode still work); renderChat reports the missing template when called.
        pass
    return tok


def eos_ids_of(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """All end-of-sequence ids the model's configs and tokenizer declare (deduplicated, sorted)."""
    return eos_ids((getattr(model, "generation_config", None), getattr(model, "config", None)), tokenizer)


def precheck(params: dict[str, Any]) -> None:
    """The cheap checks of a loadModel request, done before the current model is released."""
    if ("path" in params) == ("randomInit" in params):
        raise ProtocolError("bad_request", "params: give exactly one of `path` or `randomInit`")
    if params.get("reference") == "base" and not params.get("lora"):
        raise ProtocolError("bad_request", "params.reference: 'base' needs LoRA (adapters disabled); use 'copy'")
    if "path" in params:
        path = _check_dir(params["path"], "model", "path")
        cfg_file = os.path.join(path, "config.json")
        if not os.path.exists(cfg_file):
            raise ProtocolError("not_found", f"params.path: no config.json in {path}")
        try:
            with open(cfg_file, encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError) as e:
            raise ProtocolError("bad_request", f"{cfg_file}: not a readable JSON file ({_first_line(e)})") from None
    else:
        _check_dir(params["randomInit"]["tokenizerPath"], "tokenizer", "randomInit.tokenizerPath")
    resolve_device(params["device"])


def _read_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a malformed or unsupported config.json
        raise ProtocolError("bad_request", f"{os.path.join(path, 'config.json')}: not a usable model configuration ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """An exception's message in one line. transformers wraps a config's own complaint in a validation
    error whose first line says only which validator failed; the complaint is its last line then."""
    text = [t.strip() for t in str(e).strip().splitlines() if t.strip()]
    if not text:
        return type(e).__name__
    line = text[0]
    if len(text) > 1 and line.endswith(":"):
        line = text[-1].split(": ", 1)[-1] if text[-1].split(": ", 1)[0].endswith(("Error", "Exception")) else text[-1]
    return line[:300]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _tokenizer_problem(path: str, e: BaseException) -> str:
    """Why a model directory's tokenizer does not load, naming the files."""
    present = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(path, f))]
    if not present:
        return (
            f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)} with tokenizer_config.json); "
            "copy the model's tokenizer into the directory"
        )
    return f"{path}: the tokenizer does not load from {', '.join(present)} ({_first_line(e)})"


def _weights_problem(path: str, e: BaseException) -> str:
    """Why a model directory's weights do not load: an empty or truncated safetensors file is named."""
    import json

    weights = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin")))
    if not weights:
        return f"{path}: no weight files (*.safetensors)"
    headers: dict[str, tuple[str, list[int]]] = {}  # tensor -> (file, shape), from the safetensors headers
    for name in weights:
        file = os.path.join(path, name)
        size = os.path.getsize(file)
        if size == 0:
            return f"{file}: empty weight file (0 bytes); the model directory is incomplete"
        if name.endswith(".safetensors"):
            with open(file, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                ok = 0 < n <= size - 8
                header: Any = None
                if ok:
                    try:
                        header = json.loads(f.read(n))
                    except ValueError:
                        ok = False
            if ok and isinstance(header, dict):
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
                ok = not ends or 8 + n + max(ends) <= size
            if not ok:
                return f"{file}: truncated or corrupted safetensors file ({size} bytes); the model directory is damaged"
            for k, v in header.items():
                if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("shape"), list):
                    headers[k] = (file, v["shape"])
    mismatch = _shape_mismatch(path, headers)
    if mismatch:
        return mismatch
    return f"{path}: the weights do not load ({_first_line(e)})"


def _shape_mismatch(path: str, headers: dict[str, tuple[str, list[int]]]) -> str | None:
    """Names the first tensor whose shape in the weight files differs from the one config.json implies
    (the model is built on the meta device: no memory, no weights)."""
    if not headers:
        return None
    try:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(_read_config(path))
        expected = {n: list(t.shape) for n, t in model.state_dict().items()}
    except Exception:  # noqa: BLE001 - the config itself is the problem: reported elsewhere
        return None
    differ = [(n, f, shape, expected[n]) for n, (f, shape) in sorted(headers.items()) if n in expected and expected[n] != shape]
    if not differ:
        return None
    n, f, shape, want = differ[0]
    more = f" ({len(differ)} tensors differ)" if len(differ) > 1 else ""
    return (
        f"{f}: tensor {n} has shape {shape}, but {os.path.join(path, 'config.json')} implies {want}{more}; "
        "the weights and config.json are from different models"
    )


def load_dtype(params: dict[str, Any]) -> tuple[str, str]:
    """The dtype `load` would choose for this request, and why: engine ranks settle it beforehand
    (rank 0's verdict for all) and pass it to `load`."""
    device = resolve_device(params["device"])
    if "path" in params:
        return _dtype_for(params, device, lambda: _read_config(params["path"]))
    return _dtype_for(params, device, lambda: _random_config(params["randomInit"]))


def _random_config(ri: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    cfg_dict = dict(ri["config"])
    model_type = cfg_dict.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ProtocolError("bad_request", "params.randomInit.config.model_type: required (e.g. 'llama')")
    try:
        return AutoConfig.for_model(model_type, **cfg_dict)
    except (ValueError, TypeError, KeyError) as e:
        raise ProtocolError("bad_request", f"params.randomInit.config: {e}") from None


def load(params: dict[str, Any], dtype: tuple[str, str] | None = None) -> LoadedModel:
    """Loads the request's model. `dtype` (name, reason) overrides the request's own choice."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(params["device"])
    lora = params.get("lora")
    reference_kind = params.get("reference")
    if reference_kind == "base" and not lora:
        raise ProtocolError("bad_request", "params.reference: 'base' needs LoRA (adapters disabled); use 'copy'")
    if ("path" in params) == ("randomInit" in params):
        raise ProtocolError("bad_request", "params: give exactly one of `path` or `randomInit`")

    if "path" in params:
        path = _check_dir(params["path"], "model", "path")
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ProtocolError("not_found", f"params.path: no config.json in {path}")
        _read_config(path)  # an inconsistent config.json is named as such, before the tokenizer reads it
        try:
            tokenizer = load_tokenizer(path)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "unusable"
            raise ProtocolError("not_found", _tokenizer_problem(path, e)) from None
        dtype, dtype_reason = dtype or _dtype_for(params, device, lambda: _read_config(path))
        weight_dtype = _weight_dtype(dtype, lora)
        torch.manual_seed(params["seed"])
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=weight_dtype, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise ProtocolError("bad_request", _weights_problem(path, e)) from None
    else:
        ri = params["randomInit"]
        path = None
        tokenizer = load_tokenizer(_check_dir(ri["tokenizerPath"], "tokenizer", "randomInit.tokenizerPath"))
        config = _random_config(ri)
        dtype, dtype_reason = dtype or _dtype_for(params, device, lambda: config)
        weight_dtype = _weight_dtype(dtype, lora)
        torch.manual_seed(ri["seed"])
        model = AutoModelForCausalLM.from_config(config, dtype=weight_dtype)
    torch.manual_seed(params["seed"])
    model.to(device)
    model.eval()
    if device.type == "cpu" and dtype == "bfloat16":
        attention.install(model)  # training attention in bf16 or fp32, by measurement (attention.py)

    reference = None
    if reference_kind == "copy":
        reference = copy.deepcopy(model)
        reference.requires_grad_(False)
        reference.eval()

    if params.get("gradientCheckpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    if lora:
        from peft import LoraConfig, get_peft_model

        if params.get("gradientCheckpointing"):
            model.enable_input_require_grads()
        lcfg = LoraConfig(
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora.get("dropout", 0.0),
            target_modules=lora["targetModules"],
            task_type="CAUSAL_LM",
        )
        try:
            with warnings.catch_warnings():
                # peft reads transformers' deprecated `is_gradient_checkpointing`; nothing to act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise ProtocolError("bad_request", f"params.lora.targetModules: {e}") from None
        # Adapters train in fp32 even over a bf16 base.
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        model.eval()

    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    max_pos = getattr(model.config, "max_position_embeddings", None)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        path=path,
        lora=lora,
        reference_kind=reference_kind,
        reference=reference,
        eos_ids=eos_ids_of(model, tokenizer),
        vocab_size=vocab_size,
        max_positions=int(max_pos) if isinstance(max_pos, int) else None,
        dtype_reason=dtype_reason,
    )


def _weight_dtype(dtype: str, lora: Any) -> torch.dtype:
    """The frozen base of a LoRA model can live in bf16; trainable weights stay fp32 (see header)."""
    return torch.bfloat16 if (dtype == "bfloat16" and lora) else torch.float32


def _dtype_for(params: dict[str, Any], device: torch.device, config: Any) -> tuple[str, str]:
    """The request's dtype with "auto" resolved by measurement (the config is read only then)."""
    from .autotune import resolve_dtype

    requested = params.get("dtype", "auto")
    if requested != "auto":
        return requested, "requested"
    try:
        cfg = config()
    except Exception:  # an unreadable config fails the load itself, with a clearer message
        cfg = None
    return resolve_dtype("auto", device, cfg)

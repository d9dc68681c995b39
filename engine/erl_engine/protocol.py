"""The wire protocol, Python side: message envelopes, parameter schemas and their validation.

The TypeScript twin is src/engine/protocol.ts; docs/engine.md describes both. Every request is

    {"v": 1, "id": <int>, "method": "<name>", "params": {...}}

and every answer

    {"v": 1, "id": <int>, "ok": true,  "result": {...}}
    {"v": 1, "id": <int>, "ok": false, "error": {"code": "<code>", "message": "<one clear line>"}}

Numeric arrays (token ids, weights, log-probs) may be plain JSON arrays or packed:
{"dtype": "i32" | "f32" | "f64", "b64": "<base64 of the little-endian values>"}.

Validation turns bad input into a ProtocolError naming the field at fault (e.g.
`params.datums[2].advantages[5]: NaN is not allowed`), which the server answers with ok=false and
keeps serving.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Callable

import numpy as np

from . import PROTOCOL_VERSION

ERROR_CODES = (
    "bad_request",  # a parameter is missing, of the wrong type, or out of range
    "protocol_version",  # client and engine speak different protocol versions
    "unknown_method",
    "no_model",  # a model call before loadModel
    "not_found",  # a path that does not exist
    "checkpoint",  # a corrupted or incompatible checkpoint
    "unauthorized",  # HTTP: missing or wrong bearer token
    "internal",  # a bug or a torch error: the message says where; the traceback is on stderr
)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def bad(path: str, problem: str) -> ProtocolError:
    return ProtocolError("bad_request", f"{path}: {problem}")


Validator = Callable[[Any, str], Any]


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def Int(lo: int | None = None, hi: int | None = None) -> Validator:
    def check(v: Any, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise bad(path, f"expected an integer, got {_type_name(v)} {v!r}"[:200])
        v = int(v)
        if lo is not None and v < lo:
            raise bad(path, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise bad(path, f"must be <= {hi}, got {v}")
        return v

    return check


def Num(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Validator:
    def check(v: Any, path: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(path, f"expected a number, got {_type_name(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise bad(path, f"must be finite, got {v}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise bad(path, f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise bad(path, f"must be <= {hi}, got {v}")
        return v

    return check


def Str(nonempty: bool = False) -> Validator:
    def check(v: Any, path: str) -> str:
        if not isinstance(v, str):
            raise bad(path, f"expected a string, got {_type_name(v)}")
        if nonempty and not v:
            raise bad(path, "must not be empty")
        return v

    return check


def Bool() -> Validator:
    def check(v: Any, path: str) -> bool:
        if not isinstance(v, bool):
            raise bad(path, f"expected a boolean, got {_type_name(v)}")
        return v

    return check


def Enum(*values: str) -> Validator:
    def check(v: Any, path: str) -> str:
        if v not in values:
            raise bad(path, f"expected one of {', '.join(repr(x) for x in values)}, got {v!r}"[:300])
        return v

    return check


def List(elem: Validator, min_len: int = 0, max_len: int | None = None) -> Validator:
    def check(v: Any, path: str) -> list[Any]:
        if not isinstance(v, list):
            raise bad(path, f"expected an array, got {_type_name(v)}")
        if len(v) < min_len:
            raise bad(path, f"expected at least {min_len} element(s), got {len(v)}")
        if max_len is not None and len(v) > max_len:
            raise bad(path, f"expected at most {max_len} element(s), got {len(v)}")
        return [elem(x, f"{path}[{i}]") for i, x in enumerate(v)]

    return check


def AnyObject() -> Validator:
    def check(v: Any, path: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise bad(path, f"expected an object, got {_type_name(v)}")
        return v

    return check


def Obj(required: dict[str, Validator], optional: dict[str, Validator] | None = None) -> Validator:
    optional = optional or {}

    def check(v: Any, path: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise bad(path, f"expected an object, got {_type_name(v)}")
        for k in v:
            if k not in required and k not in optional:
                raise bad(f"{path}.{k}", "unknown field")
        out: dict[str, Any] = {}
        for k, val in required.items():
            if k not in v or v[k] is None:
                raise bad(f"{path}.{k}", "required field is missing")
            out[k] = val(v[k], f"{path}.{k}")
        for k, val in optional.items():
            if k in v and v[k] is not None:
                out[k] = val(v[k], f"{path}.{k}")
        return out

    return check


_PACKED_DTYPES = {"i32": "<i4", "f32": "<f4", "f64": "<f8"}


def _array(v: Any, path: str, want_int: bool) -> np.ndarray:
    """A numeric array from a JSON list or a packed {"dtype","b64"} object, as int64 or float32."""
    if isinstance(v, dict):
        if set(v) != {"dtype", "b64"} or v.get("dtype") not in _PACKED_DTYPES or not isinstance(v.get("b64"), str):
            raise bad(path, 'a packed array is {"dtype": "i32"|"f32"|"f64", "b64": "<base64>"}')
        try:
            raw = base64.b64decode(v["b64"], validate=True)
        except Exception:
            raise bad(path, "invalid base64") from None
        dt = np.dtype(_PACKED_DTYPES[v["dtype"]])
        if len(raw) % dt.itemsize:
            raise bad(path, f"packed {v['dtype']} data length {len(raw)} is not a multiple of {dt.itemsize}")
        arr = np.frombuffer(raw, dtype=dt)
        if want_int and v["dtype"] != "i32":
            raise bad(path, "token ids must be packed as i32")
    elif isinstance(v, list):
        if want_int:
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                i = next(i for i, x in enumerate(v) if not (isinstance(x, int) and not isinstance(x, bool)))
                raise bad(f"{path}[{i}]", f"expected an integer token id, got {v[i]!r}"[:200])
            arr = np.asarray(v, dtype=np.int64)
        else:
            for i, x in enumerate(v):
                if x is None:
                    # JSON has no NaN; JavaScript's JSON.stringify writes NaN as null.
                    raise bad(f"{path}[{i}]", "NaN is not allowed (null in JSON)")
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise bad(f"{path}[{i}]", f"expected a number, got {_type_name(x)}")
            arr = np.asarray(v, dtype=np.float64)
    else:
        raise bad(path, f"expected an array, got {_type_name(v)}")
    if want_int:
        return arr.astype(np.int64, copy=False)
    arr = arr.astype(np.float32)
    bad_idx = np.flatnonzero(~np.isfinite(arr))
    if bad_idx.size:
        i = int(bad_idx[0])
        raise bad(f"{path}[{i}]", f"{'NaN' if np.isnan(arr[i]) else 'infinity'} is not allowed")
    return arr


def IdArray(min_len: int = 0) -> Validator:
    def check(v: Any, path: str) -> np.ndarray:
        arr = _array(v, path, True)
        if arr.size < min_len:
            raise bad(path, f"expected at least {min_len} token id(s), got {arr.size}")
        return arr

    return check


def FloatArray() -> Validator:
    return lambda v, path: _array(v, path, False)


def pack_f32(values: np.ndarray) -> dict[str, str]:
    return {"dtype": "f32", "b64": base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()}


def pack_i32(values: np.ndarray) -> dict[str, str]:
    return {"dtype": "i32", "b64": base64.b64encode(np.ascontiguousarray(values, dtype="<i4").tobytes()).decode()}


# ---- method parameter schemas -------------------------------------------------------------------

LORA = Obj(
    {"rank": Int(1), "alpha": Num(0, lo_open=True), "targetModules": lambda v, p: _target_modules(v, p)},
    {"dropout": Num(0, 1)},
)


def _target_modules(v: Any, path: str) -> Any:
    if v == "all-linear":
        return v
    return List(Str(True), min_len=1)(v, path)


DATUM = Obj(
    {"inputIds": IdArray(1), "targetIds": IdArray(1), "weights": FloatArray()},
    {"advantages": FloatArray(), "oldLogprobs": FloatArray(), "samplerLogprobs": FloatArray()},
)

MESSAGE = Obj({"role": Enum("system", "user", "assistant", "tool"), "content": Str()})

LOSS = Obj(
    {"name": Enum("cross_entropy", "importance_sampling", "ppo")},
    {
        "aggregation": Enum("seq-mean-token-sum", "token-mean"),
        "clipLow": Num(0, 1),
        "clipHigh": Num(0),
        "dualClip": Num(1, lo_open=True),
        "klCoef": Num(0),
        "normalizer": Num(0, lo_open=True),
        "tisCap": Num(0, lo_open=True),
        "temperature": Num(0, lo_open=True),
        "logRatioClamp": Num(0, lo_open=True),
        "klClamp": Num(0, lo_open=True),
    },
)

# torch.manual_seed takes seeds up to 2^64 - 1; a larger one fails inside torch ("Overflow when
# unpacking long long"), so the protocol refuses it first, naming the field.
SEED_MAX = 2**64 - 1

PARAMS: dict[str, Validator] = {
    "hello": Obj({"protocolVersion": Int()}, {"client": Str()}),
    "info": Obj({}),
    "loadModel": Obj(
        {"device": Enum("cpu", "cuda", "auto"), "seed": Int(0, SEED_MAX)},
        {
            "dtype": Enum("auto", "float32", "bfloat16"),
            "path": Str(True),
            "randomInit": Obj({"config": AnyObject(), "tokenizerPath": Str(True), "seed": Int(0, SEED_MAX)}),
            "lora": LORA,
            "reference": Enum("copy", "base"),
            "gradientCheckpointing": Bool(),
        },
    ),
    "renderChat": Obj({"messages": List(MESSAGE, 1)}, {"addGenerationPrompt": Bool()}),
    "renderChats": Obj({"chats": List(Obj({"messages": List(MESSAGE, 1)}, {"addGenerationPrompt": Bool()}), 1)}),
    "encode": Obj({"text": Str()}, {"addSpecialTokens": Bool()}),
    "decode": Obj({"ids": IdArray()}, {"skipSpecialTokens": Bool()}),
    "decodeMany": Obj({"seqs": List(IdArray(), 1)}, {"skipSpecialTokens": Bool()}),
    "sample": Obj(
        {
            "prompts": List(IdArray(1), 1),
            "n": Int(1, 4096),
            "maxTokens": Int(1),
            "temperature": Num(0),
            "seed": Int(0, SEED_MAX),
        },
        {
            "topP": Num(0, 1, lo_open=True),
            "topK": Int(1),
            "stopStrings": List(Str(True)),
            "stopTokenIds": IdArray(),
            "logprobTemperature": Num(0, lo_open=True),
        },
    ),
    "forward": Obj({"datums": List(DATUM, 1)}, {"temperature": Num(0, lo_open=True), "pack": Bool()}),
    "forwardBackward": Obj({"datums": List(DATUM, 1), "loss": LOSS},
                           {"pack": Bool(), "forwardOnly": Bool(), "returnLogprobs": Bool()}),
    "optimStep": Obj(
        {"lr": Num(0)},
        {
            "betas": List(Num(0, 1), 2, 2),
            "eps": Num(0, lo_open=True),
            "weightDecay": Num(0),
            "gradClip": Num(0, lo_open=True),
        },
    ),
    "saveState": Obj({"dir": Str(True)}),
    "loadState": Obj({"dir": Str(True)}),
    "export": Obj({"dir": Str(True)}, {"mergeLora": Bool()}),
    "shutdown": Obj({}),
}


def parse_request(msg: Any) -> tuple[int | None, str, dict[str, Any]]:
    """Checks the envelope and the parameters; returns (id, method, validated params)."""
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", "a request must be a JSON object")
    rid = msg.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError("bad_request", "request.id: expected an integer")
    v = msg.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            "protocol_version",
            f"the client speaks protocol version {v!r} but this engine speaks version {PROTOCOL_VERSION}; "
            "update the engine or the client so that both match",
        )
    method = msg.get("method")
    if not isinstance(method, str) or method not in PARAMS:
        raise ProtocolError("unknown_method", f"unknown method {method!r}; known: {', '.join(PARAMS)}")
    params = msg.get("params", {})
    for k in msg:
        if k not in ("v", "id", "method", "params"):
            raise bad(f"request.{k}", "unknown field")
    return rid, method, PARAMS[method](params, "params")


def ok(rid: int | None, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "ok": True, "result": result}


def fail(rid: int | None, err: ProtocolError) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "ok": False, "error": {"code": err.code, "message": err.message}}

"""`erl engine serve --tinker`: the engine behind the Tinker REST API, for the official `tinker` SDK.

The SDK's own message definitions are the wire format: request bodies are validated with its pydantic
types (tinker.types), forward_backward arrives as its protobuf (tinker.proto.tinker_public_pb2), and
sample and forward_backward results go back as that protobuf. Behind the routes, each training model
is an engine process (engine_client.py) with LoRA, driven over the engine protocol; its calls run in
the order they arrive (the SDK sends a model's requests one after another).

What a route does, in Tinker's terms:
- sessions: create_session, session_heartbeat (kept, never expired), sessions/<id>/finish;
- create_model (LoRA only: rank, seed, which of attention/MLP/unembedding) -> an engine loads --model;
- forward_backward / forward with cross_entropy, importance_sampling, ppo, as sums over tokens:
    cross_entropy        sum_t -w_t logp_t
    importance_sampling  sum_t -r_t A_t,                r_t = exp(logp_t - logprobs_t)
    ppo                  sum_t -min(r_t A_t, clip(r_t, lo, hi) A_t), lo/hi = clip_low/high_threshold
  i.e. the engine's losses with normalizer 1 (engine clipLow = 1 - lo, clipHigh = hi - 1);
- optim_step (AdamW: learning_rate, beta1, beta2, eps, weight_decay, grad_clip_norm);
- save_state / load_state / save_weights_for_sampler: engine saveState/loadState under --store, named
  tinker://<model_id>/weights/<name> and tinker://<model_id>/sampler_weights/<name>;
  save_weights_external: the engine's export (a peft adapter directory) as .../external_weights/<name>,
  on this machine's disk (download URLs are not served);
- sampling sessions (a saved path, the live weights of a training model, or the base model) and
  asample, with prompt log-probs;
- futures: every such call answers a request id at once; retrieve_future waits up to LONG_POLL_S for
  the result, else answers try_again.
Anything else is refused with a message that names it (HTTP 400 at submission, or a failed future
whose error the SDK raises as RequestFailedError), never a hang.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ValidationError
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.types.checkpoint import ParsedCheckpointTinkerPath

from erl_engine.http_gate import MAX_HEADER_BYTES, Reply, Request, Route, is_loopback, make_gated_server
from erl_engine.protocol import pack_f32, pack_i32

from .engine_client import EngineError, EngineProcess

LONG_POLL_S = 20.0  # retrieve_future holds a pending request this long (the SDK's own timeout is 45 s)
MAX_CONNECTIONS = 128  # long polls hold connections: one per future in flight
DEFAULT_MAX_BODY = 256 << 20
KEEP_FUTURES = 4096  # finished futures kept for retrieval (and the SDK's retries), oldest dropped first
KEEP_SNAPSHOTS = 4  # weights kept for sampling sessions whose training model has moved on
LORA_ALPHA = 32.0
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
UNEMBED = ["lm_head"]
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
LOSSES = ("cross_entropy", "importance_sampling", "ppo")
LOSS_INPUTS = {
    "cross_entropy": ({"target_tokens", "weights"}, {"target_tokens"}),
    "importance_sampling": ({"target_tokens", "logprobs", "advantages", "weights"}, {"target_tokens", "logprobs", "advantages"}),
    "ppo": ({"target_tokens", "logprobs", "advantages", "weights"}, {"target_tokens", "logprobs", "advantages"}),
}
PPO_CONFIG = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


class UserError(Exception):
    """Bad or unsupported input: answered as HTTP 400 at submission, or as a failed future."""


# ---- futures and workers ------------------------------------------------------------------------


@dataclass
class Future:
    request_id: str
    done: threading.Event = field(default_factory=threading.Event)
    json_result: dict[str, Any] | None = None
    proto_result: bytes | None = None
    error: str | None = None
    category: str = "user"


class Futures:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict[str, Future] = OrderedDict()
        self.counter = 0

    def new(self) -> Future:
        with self.lock:
            self.counter += 1
            fut = Future(f"req-{self.counter}-{secrets.token_hex(4)}")
            self.items[fut.request_id] = fut
            while len(self.items) > KEEP_FUTURES:
                oldest = next(iter(self.items.values()))
                if not oldest.done.is_set():
                    break
                self.items.popitem(last=False)
            return fut

    def get(self, request_id: str) -> Future | None:
        with self.lock:
            return self.items.get(request_id)


def run_job(fut: Future, job: Callable[[], Any]) -> None:
    """Runs a job and settles its future: a result (JSON, or protobuf bytes) or an error for the SDK."""
    try:
        out = job()
        if isinstance(out, bytes):
            fut.proto_result = out
        else:
            fut.json_result = out
    except (UserError, ValueError) as e:
        fut.error = str(e)
    except EngineError as e:
        fut.error = f"engine {e.code}: {e.message}"
        fut.category = "user" if e.code in ("bad_request", "not_found", "checkpoint", "no_model") else "server"
    except Exception as e:  # noqa: BLE001 - reported to the client, and here
        print(f"erl engine serve --tinker: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        fut.error = f"server error: {type(e).__name__}: {e}"
        fut.category = "server"
    fut.done.set()


def run_detached(fut: Future, job: Callable[[], Any]) -> Future:
    threading.Thread(target=run_job, args=(fut, job), daemon=True).start()
    return fut


class Worker:
    """One thread running jobs in arrival order: the calls of one engine process."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.Queue[tuple[Future, Callable[[], Any]] | None] = queue.Queue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fut: Future, job: Callable[[], Any]) -> Future:
        self.jobs.put((fut, job))
        return fut

    def _run(self) -> None:
        while (item := self.jobs.get()) is not None:
            run_job(*item)

    def stop(self) -> None:
        self.jobs.put(None)


class Engine:
    """An engine process and the worker that serialises its calls."""

    def __init__(self, name: str, load: dict[str, Any]) -> None:
        self.proc = EngineProcess(name)
        self.worker = Worker(name)
        self.info = self.proc.call("loadModel", load)
        self.name = name

    def call(self, method: str, params: dict[str, Any]) -> Any:
        return self.proc.call(method, params)

    def close(self) -> None:
        self.worker.stop()
        self.proc.close()


# ---- state ----------------------------------------------------------------------------------------


@dataclass
class TrainingModel:
    model_id: str
    session_id: str
    lora: dict[str, Any]
    lora_config: dict[str, Any]
    engine: Engine
    version: int = 0  # bumped by every call that changes the weights
    snapshot_sessions: list["Sampler"] = field(default_factory=list)  # live samplers of this version


@dataclass
class Sampler:
    sampler_id: str
    base_model: str
    model_path: str | None
    # Where its weights are: a training model's live weights (model, version), a state directory, or the base.
    model: TrainingModel | None = None
    version: int = -1
    state_dir: str | None = None


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        self.model_name: str = args.served_model_name or args.model
        self.model_path = os.path.abspath(args.model)
        self.dtype: str = args.dtype
        self.device: str = args.device
        self.store = os.path.abspath(args.store)
        self.max_body: int = args.max_body


def _validate(model: type[BaseModel], body: bytes) -> Any:
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"the request body is not valid JSON: {e}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise UserError(f"{model.__name__}.{where}: {first.get('msg')}") from None


class TinkerService:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lock = threading.RLock()
        self.futures = Futures()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.models: dict[str, TrainingModel] = {}
        self.samplers: dict[str, Sampler] = {}
        # Engines that sample saved weights or the base model, by state directory ("" = base): few, LRU.
        self.sampler_engines: OrderedDict[str, Engine] = OrderedDict()
        self.engines_lock = threading.Lock()  # starting an engine takes seconds: one at a time
        self.snapshots: list[str] = []  # directories written for samplers of moved-on weights, oldest first
        self.max_positions: int | None = None
        os.makedirs(self.cfg.store, exist_ok=True)

    # ---- helpers --------------------------------------------------------------------------------

    def load_params(self, lora: dict[str, Any] | None, seed: int) -> dict[str, Any]:
        p: dict[str, Any] = {"path": self.cfg.model_path, "dtype": self.cfg.dtype, "device": self.cfg.device, "seed": seed}
        if lora is not None:
            p["lora"] = lora
        return p

    def check_base_model(self, name: str | None) -> None:
        if name is not None and name != self.cfg.model_name:
            raise UserError(f"base model {name!r} is not served here; this server serves {self.cfg.model_name!r}")

    def model(self, model_id: str) -> TrainingModel:
        with self.lock:
            m = self.models.get(model_id)
        if m is None:
            raise UserError(f"no training model {model_id!r} on this server")
        return m

    def session(self, session_id: str) -> dict[str, Any]:
        s = self.sessions.get(session_id)
        if s is None:
            raise UserError(f"no session {session_id!r} on this server (create_session first)")
        if s.get("finished"):
            raise UserError(f"session {session_id!r} has finished")
        return s

    def dir_of(self, path: str, want: str | None = None) -> tuple[ParsedCheckpointTinkerPath, str]:
        try:
            parsed = ParsedCheckpointTinkerPath.from_tinker_path(path)
        except ValueError:
            raise UserError(f"{path!r} is not a tinker path (tinker://<model_id>/weights/<name>)") from None
        if parsed.checkpoint_type == "external":
            raise UserError(f"{path}: external weights are not served")
        if want is not None and parsed.checkpoint_type != want:
            kind = "weights" if want == "training" else "sampler_weights"
            raise UserError(f"{path}: expected a tinker://<model_id>/{kind}/<name> path")
        name = parsed.checkpoint_id.split("/", 1)[1]
        if not NAME_RE.match(name) or name in (".", "..") or "/" in parsed.training_run_id or ".." in parsed.training_run_id:
            raise UserError(f"{path}: a checkpoint name is letters, digits, '.', '_' or '-'")
        d = os.path.join(self.cfg.store, parsed.training_run_id.replace(":", "_"), parsed.checkpoint_id)
        return parsed, d

    def save_dir(self, model_id: str, kind: str, name: str | None) -> tuple[str, str]:
        if name is None:
            name = f"auto-{uuid.uuid4().hex[:12]}"
        if not NAME_RE.match(name) or name in (".", ".."):
            raise UserError(f"checkpoint name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        path = f"tinker://{model_id}/{kind}/{name}"
        return path, os.path.join(self.cfg.store, model_id.replace(":", "_"), kind, name)

    def write_meta(self, d: str, m: TrainingModel, path: str) -> None:
        meta = {"base_model": self.cfg.model_name, "lora": m.lora, "lora_config": m.lora_config, "model_id": m.model_id,
                "tinker_path": path, "time": time.time()}
        with open(os.path.join(d, "tinker.json"), "w") as f:
            json.dump(meta, f)

    def read_meta(self, d: str, path: str) -> dict[str, Any]:
        try:
            with open(os.path.join(d, "tinker.json")) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            raise UserError(f"{path}: no such checkpoint on this server") from None

    # ---- training models ------------------------------------------------------------------------

    def lora_of(self, cfg: types.LoraConfig) -> dict[str, Any]:
        if cfg.rank < 1:
            raise UserError(f"lora_config.rank must be >= 1, got {cfg.rank}")
        modules = (ATTN if cfg.train_attn else []) + (MLP if cfg.train_mlp else []) + (UNEMBED if cfg.train_unembed else [])
        if not modules:
            raise UserError("lora_config: at least one of train_attn, train_mlp, train_unembed must be true")
        return {"rank": cfg.rank, "alpha": LORA_ALPHA, "dropout": 0.0, "targetModules": modules}

    def new_model(self, session_id: str, seq_id: int, lora_config: types.LoraConfig) -> TrainingModel:
        model_id = f"{session_id}:train:{seq_id}"
        with self.lock:
            if model_id in self.models:
                raise UserError(f"model {model_id} exists already")
        lora = self.lora_of(lora_config)
        engine = Engine(f"engine {model_id}", self.load_params(lora, lora_config.seed or 0))
        self.max_positions = (engine.info.get("model") or {}).get("maxPositions")
        m = TrainingModel(model_id, session_id, lora, lora_config.model_dump(), engine)
        with self.lock:
            self.models[model_id] = m
        return m

    def create_model(self, req: types.CreateModelRequest) -> Future:
        self.session(req.session_id)
        self.check_base_model(req.base_model)
        if req.lora_config is None:
            raise UserError("full fine-tuning is not served: create_model needs a lora_config")
        if getattr(req.optimizer_config, "type", "adamw") != "adamw":
            raise UserError(f"optimizer {req.optimizer_config.type!r} is not served; only adamw")
        self.lora_of(req.lora_config)  # refuses bad settings before the future exists
        fut = self.futures.new()

        def job() -> dict[str, Any]:
            m = self.new_model(req.session_id, req.model_seq_id, req.lora_config)  # type: ignore[arg-type]
            return types.CreateModelResponse(model_id=m.model_id).model_dump(mode="json")

        return run_detached(fut, job)

    def get_info(self, req: types.GetInfoRequest) -> dict[str, Any]:
        m = self.model(req.model_id)
        return types.GetInfoResponse(
            model_data=types.ModelData(arch=(m.engine.info.get("model") or {}).get("arch"), model_name=self.cfg.model_name,
                                       tokenizer_id=self.cfg.model_path),
            model_id=m.model_id,
            is_lora=True,
            lora_rank=m.lora["rank"],
            model_name=self.cfg.model_name,
        ).model_dump(mode="json")

    # ---- forward / backward ---------------------------------------------------------------------

    def datums_of(self, msg: pb.ForwardBackwardRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        loss_fn = msg.loss_fn
        if loss_fn not in LOSSES:
            raise UserError(f"loss_fn {loss_fn!r} is not served; served: {', '.join(LOSSES)}")
        allowed, required = LOSS_INPUTS[loss_fn]
        config: dict[str, float] = {k: v.number for k, v in msg.loss_fn_config_v2.items()} or dict(msg.loss_fn_config)
        loss: dict[str, Any] = {"name": loss_fn, "aggregation": "seq-mean-token-sum", "normalizer": 1.0}
        if loss_fn == "ppo":
            extra = set(config) - set(PPO_CONFIG)
            if extra:
                raise UserError(f"loss_fn_config key {sorted(extra)[0]!r} is not served for ppo; served: {', '.join(PPO_CONFIG)}")
            lo = config.get("clip_low_threshold", PPO_CONFIG["clip_low_threshold"])
            hi = config.get("clip_high_threshold", PPO_CONFIG["clip_high_threshold"])
            if not 0 <= lo <= 1 or hi < 1:
                raise UserError(f"ppo clip thresholds must satisfy 0 <= clip_low_threshold <= 1 <= clip_high_threshold, got {lo}, {hi}")
            loss["clipLow"] = 1.0 - lo
            loss["clipHigh"] = hi - 1.0
        elif config:
            raise UserError(f"loss_fn_config is not served for {loss_fn} (got {sorted(config)})")
        datums: list[dict[str, Any]] = []
        for i, d in enumerate(msg.data):
            tokens: list[np.ndarray] = []
            for c in d.model_input:
                if c.WhichOneof("chunk") != "encoded_text":
                    raise UserError(f"data[{i}].model_input: only token chunks are served, not {c.WhichOneof('chunk')}")
                tokens.append(np.frombuffer(c.encoded_text.tokens, dtype="<i4"))
            if len(d.model_input_spans) or len(d.loss_fn_input_spans):
                raise UserError(f"data[{i}]: provenance spans (stable_reinforce) are not served")
            inp = np.concatenate(tokens) if tokens else np.zeros(0, dtype="<i4")
            names = set(d.loss_fn_inputs.keys())
            if names - allowed:
                raise UserError(f"data[{i}].loss_fn_inputs.{sorted(names - allowed)[0]}: not an input of {loss_fn}")
            if required - names:
                raise UserError(f"data[{i}].loss_fn_inputs.{sorted(required - names)[0]}: required by {loss_fn}")
            arrays = {k: _tensor(d.loss_fn_inputs[k], f"data[{i}].loss_fn_inputs.{k}") for k in names}
            n = len(inp)
            for k, a in arrays.items():
                if a.size != n:
                    raise UserError(f"data[{i}].loss_fn_inputs.{k}: {a.size} values for {n} input tokens")
            if n == 0:
                raise UserError(f"data[{i}].model_input: empty")
            weights = arrays.get("weights", np.ones(n, dtype=np.float32)).astype(np.float32)
            datum: dict[str, Any] = {"inputIds": pack_i32(inp), "targetIds": pack_i32(arrays["target_tokens"].astype(np.int64)),
                                     "weights": pack_f32(weights)}
            if loss_fn != "cross_entropy":
                datum["advantages"] = pack_f32(arrays["advantages"].astype(np.float32))
                datum["oldLogprobs"] = pack_f32(arrays["logprobs"].astype(np.float32))
            datums.append(datum)
        if not datums:
            raise UserError("forward_backward: no data")
        return datums, loss

    def forward_backward(self, body: bytes, headers: Message) -> Future:
        if headers.get("Content-Encoding", "").lower() == "zstd":
            import zstandard

            try:
                body = zstandard.ZstdDecompressor().decompress(body, max_output_size=self.cfg.max_body)
            except zstandard.ZstdError as e:
                raise UserError(f"forward_backward: bad zstd body: {e}") from None
        msg = pb.ForwardBackwardRequest()
        try:
            msg.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
            raise UserError(f"forward_backward: the body is not a ForwardBackwardRequest protobuf: {e}") from None
        m = self.model(msg.model_id)
        datums, loss = self.datums_of(msg)
        forward_only = bool(msg.forward_only)
        fut = self.futures.new()

        def job() -> bytes:
            res = m.engine.call("forwardBackward", {"datums": datums, "loss": loss, "forwardOnly": forward_only,
                                                    "returnLogprobs": True})
            return _fwdbwd_output(res)

        return m.engine.worker.submit(fut, job)

    # ---- optimizer ------------------------------------------------------------------------------

    def optim_step(self, req: types.OptimStepRequest) -> Future:
        m = self.model(req.model_id)
        p = req.optim_params
        if not isinstance(p, types.AdamParams):
            raise UserError(f"optimizer {getattr(p, 'type', '?')!r} is not served; only AdamParams")
        params: dict[str, Any] = {"lr": p.learning_rate, "betas": [p.beta1, p.beta2], "eps": p.eps, "weightDecay": p.weight_decay}
        if p.grad_clip_norm > 0:
            params["gradClip"] = p.grad_clip_norm
        fut = self.futures.new()

        def job() -> dict[str, Any]:
            self.before_weights_change(m)
            res = m.engine.call("optimStep", params)
            m.version += 1
            metrics = {"grad_norm:mean": float(res["gradNorm"]), "lr:mean": float(p.learning_rate)}
            if res["metrics"].get("skipped"):
                metrics["skipped:sum"] = 1.0
            return types.OptimStepResponse(metrics=metrics).model_dump(mode="json")

        return m.engine.worker.submit(fut, job)

    def before_weights_change(self, m: TrainingModel) -> None:
        """Sampling sessions on the model's current weights keep them: written once, before they change."""
        live = [s for s in m.snapshot_sessions if s.model is m and s.version == m.version]
        m.snapshot_sessions = []
        if not live:
            return
        path, d = self.save_dir(m.model_id, "sampler_weights", f"snapshot-v{m.version}-{uuid.uuid4().hex[:8]}")
        m.engine.call("saveState", {"dir": d})
        self.write_meta(d, m, path)
        for s in live:
            s.model, s.state_dir = None, d
        with self.engines_lock:
            self.snapshots.append(d)
            while len(self.snapshots) > KEEP_SNAPSHOTS:
                old = self.snapshots.pop(0)
                gone = self.sampler_engines.pop(old, None)
                if gone is not None:
                    gone.close()
                shutil.rmtree(old, ignore_errors=True)

    # ---- checkpoints ----------------------------------------------------------------------------

    def save_weights(self, req: types.SaveWeightsRequest) -> Future:
        m = self.model(req.model_id)
        path, d = self.save_dir(m.model_id, "weights", req.path)
        if os.path.exists(d) and not req.overwrite:
            raise UserError(f"{path} exists already (overwrite=True replaces it)")
        fut = self.futures.new()

        def job() -> dict[str, Any]:
            m.engine.call("saveState", {"dir": d})
            self.write_meta(d, m, path)
            return types.SaveWeightsResponse(path=path).model_dump(mode="json")

        return m.engine.worker.submit(fut, job)

    def save_for_sampler(self, req: types.SaveWeightsForSamplerRequest) -> Future:
        m = self.model(req.model_id)
        fut = self.futures.new()
        if req.path is None:
            if req.kind != "snapshot":
                raise UserError(f"sampling client kind {req.kind!r} is not served; only snapshot")

            def ephemeral() -> dict[str, Any]:
                s = self.add_sampler(self.cfg.model_name, None, model=m)
                return {"type": "save_weights_for_sampler", "sampling_session_id": s.sampler_id}

            return m.engine.worker.submit(fut, ephemeral)
        path, d = self.save_dir(m.model_id, "sampler_weights", req.path)

        def job() -> dict[str, Any]:
            m.engine.call("saveState", {"dir": d})
            self.write_meta(d, m, path)
            return {"type": "save_weights_for_sampler", "path": path}

        return m.engine.worker.submit(fut, job)

    def save_external(self, req: types.SaveWeightsExternalRequest) -> Future:
        m = self.model(req.model_id)
        if req.age_encryption_recipients:
            raise UserError("SaveWeightsExternalRequest.age_encryption_recipients: encrypted exports are not served")
        path, d = self.save_dir(m.model_id, "external_weights", req.path)
        fut = self.futures.new()

        def job() -> dict[str, Any]:
            m.engine.call("export", {"dir": d})  # a peft adapter directory
            return {"type": "save_weights_external", "path": path}

        return m.engine.worker.submit(fut, job)

    def load_weights(self, req: types.LoadWeightsRequest) -> Future:
        parsed, d = self.dir_of(req.path)
        meta = self.read_meta(d, req.path)
        if meta["base_model"] != self.cfg.model_name:
            raise UserError(f"{req.path} was trained from {meta['base_model']!r}; this server serves {self.cfg.model_name!r}")
        fut = self.futures.new()
        if req.model_id is not None:
            m = self.model(req.model_id)

            def into() -> dict[str, Any]:
                if m.lora != meta["lora"]:
                    raise UserError(f"{req.path}: its LoRA settings {meta['lora']} differ from this model's {m.lora}")
                self.before_weights_change(m)
                m.engine.call("loadState", {"dir": d})
                m.version += 1
                return types.LoadWeightsResponse(path=req.path, model_id=m.model_id).model_dump(mode="json")

            return m.engine.worker.submit(fut, into)
        if req.session_id is None or req.model_seq_id is None:
            raise UserError("load_weights needs model_id, or session_id and model_seq_id")
        self.session(req.session_id)
        self.check_base_model(req.base_model)

        def create() -> dict[str, Any]:
            m = self.new_model(req.session_id, req.model_seq_id, types.LoraConfig(**meta["lora_config"]))  # type: ignore[arg-type]
            m.engine.call("loadState", {"dir": d})
            return types.LoadWeightsResponse(path=req.path, model_id=m.model_id).model_dump(mode="json")

        return run_detached(fut, create)

    # ---- sampling -------------------------------------------------------------------------------

    def add_sampler(self, base_model: str, model_path: str | None, *, model: TrainingModel | None = None,
                    state_dir: str | None = None) -> Sampler:
        s = Sampler(f"sampler-{uuid.uuid4().hex[:16]}", base_model, model_path, model=model, state_dir=state_dir)
        if model is not None:
            s.version = model.version
            model.snapshot_sessions.append(s)
        with self.lock:
            self.samplers[s.sampler_id] = s
        return s

    def create_sampling_session(self, req: types.CreateSamplingSessionRequest) -> dict[str, Any]:
        self.session(req.session_id)
        if req.model_path is None:
            if req.base_model is None:
                raise UserError("create_sampling_session needs model_path or base_model")
            self.check_base_model(req.base_model)
            s = self.add_sampler(self.cfg.model_name, None)
        else:
            _, d = self.dir_of(req.model_path)
            meta = self.read_meta(d, req.model_path)
            s = self.add_sampler(meta["base_model"], req.model_path, state_dir=d)
        return types.CreateSamplingSessionResponse(sampling_session_id=s.sampler_id).model_dump(mode="json")

    def sampler(self, sampler_id: str) -> Sampler:
        with self.lock:
            s = self.samplers.get(sampler_id)
        if s is None:
            raise UserError(f"no sampling session {sampler_id!r} on this server")
        return s

    def engine_for(self, s: Sampler) -> Engine:
        """The engine that holds a sampling session's weights: its training model's while they are that
        model's live weights, else an engine that loaded them (at most two such engines, LRU)."""
        if s.model is not None and s.model.version == s.version:
            return s.model.engine
        key = s.state_dir or ""
        if s.state_dir is not None and not os.path.isdir(s.state_dir):
            raise UserError(f"sampling session {s.sampler_id}: its weights were released (at most {KEEP_SNAPSHOTS} "
                            "superseded snapshots are kept); create a new sampling client")
        with self.engines_lock:
            return self._sampler_engine(s, key)

    def _sampler_engine(self, s: Sampler, key: str) -> Engine:
        e = self.sampler_engines.get(key)
        if e is not None:
            self.sampler_engines.move_to_end(key)
            return e
        if s.state_dir is None:
            e = Engine("engine base", self.load_params(None, 0))
        else:
            meta = self.read_meta(s.state_dir, s.model_path or s.state_dir)
            e = Engine(f"engine {os.path.basename(s.state_dir)}", self.load_params(meta["lora"], 0))
            e.call("loadState", {"dir": s.state_dir})
        self.sampler_engines[key] = e
        while len(self.sampler_engines) > 2:
            _, old = self.sampler_engines.popitem(last=False)
            old.close()
        return e

    def asample(self, req: types.SampleRequest) -> tuple[Future, list[str]]:
        if req.sampling_session_id is not None:
            s = self.sampler(req.sampling_session_id)
        elif req.model_path is not None:
            _, d = self.dir_of(req.model_path)
            meta = self.read_meta(d, req.model_path)
            s = self.add_sampler(meta["base_model"], req.model_path, state_dir=d)
        else:
            self.check_base_model(req.base_model)
            s = self.add_sampler(self.cfg.model_name, None)
        for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
            if getattr(req, name):
                raise UserError(f"SampleRequest.{name} > 0 is not served (the engine returns the sampled token's log-prob only)")
        if req.target_prompt_logprobs is not None:
            raise UserError("SampleRequest.target_prompt_logprobs is not served")
        if req.record_stability_info:
            raise UserError("SampleRequest.record_stability_info (stable_reinforce) is not served")
        tokens = req.prompt.to_ints() if all(isinstance(c, types.EncodedTextChunk) for c in req.prompt.chunks) else None
        if not tokens:
            raise UserError("SampleRequest.prompt: a non-empty prompt of token chunks is required")
        sp = req.sampling_params
        params: dict[str, Any] = {"prompts": [pack_i32(np.asarray(tokens))], "n": req.num_samples, "temperature": sp.temperature,
                                  "seed": sp.seed if sp.seed is not None else secrets.randbelow(1 << 62)}
        if req.num_samples < 1:
            raise UserError(f"SampleRequest.num_samples must be >= 1, got {req.num_samples}")
        room = (self.max_positions or 1 << 30) - len(tokens)
        params["maxTokens"] = sp.max_tokens if sp.max_tokens is not None else max(1, min(room, 4096))
        if sp.top_k not in (-1, 0):
            params["topK"] = sp.top_k
        if sp.top_p < 1:
            params["topP"] = sp.top_p
        stop = sp.stop
        if stop is not None:
            items = [stop] if isinstance(stop, str) else list(stop)
            if not items:
                raise UserError("SamplingParams.stop=[] (sampling on past the end-of-sequence token) is not served")
            if all(isinstance(x, str) for x in items):
                params["stopStrings"] = items
            elif all(isinstance(x, int) for x in items):
                params["stopTokenIds"] = items
            else:
                raise UserError("SamplingParams.stop: strings or token ids, not both")
        fut = self.futures.new()
        ids = [f"{fut.request_id}:{j}" for j in range(req.num_samples)]
        want_prompt = bool(req.prompt_logprobs)
        last_n = req.prompt_logprobs_last_n

        def job() -> bytes:
            e = self.engine_for(s)
            res = e.call("sample", params)
            out = pb.SampleResponse()
            for seq in res["sequences"]:
                lp = _unpack(seq["logprobs"])
                out.sequences.add(stop_reason=pb.STOP_REASON_STOP if seq["stopReason"] == "stop" else pb.STOP_REASON_LENGTH,
                                  tokens=np.asarray(seq["tokens"], dtype="<i4").tobytes(), logprobs=lp.astype("<f4").tobytes())
            if want_prompt:
                plp = np.full(len(tokens), np.nan, dtype="<f4")
                if len(tokens) > 1:
                    fwd = e.call("forward", {"datums": [{"inputIds": tokens[:-1], "targetIds": tokens[1:],
                                                         "weights": [1.0] * (len(tokens) - 1)}]})
                    plp[1:] = _unpack(fwd["logprobs"][0])
                if last_n is not None:
                    plp[: len(tokens) - last_n] = np.nan
                out.prompt_logprobs = plp.tobytes()
            return out.SerializeToString()

        # Which worker: the training model's while the session samples its live weights (so the call
        # lands between that model's training calls in order), else the sampler engine's own.
        if s.model is not None and s.model.version == s.version:
            return s.model.engine.worker.submit(fut, job), ids
        return run_detached(fut, job), ids


def _unpack(x: Any) -> np.ndarray:
    import base64

    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["b64"]), dtype="<f4").copy()
    return np.asarray(x, dtype=np.float32)


def _tensor(t: pb.Tensor, where: str) -> np.ndarray:
    dtypes = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_INT64: "<i8", pb.DTYPE_INT32: "<i4"}
    if t.dtype not in dtypes:
        raise UserError(f"{where}: dtype {t.dtype} is not served (float32, int64, int32)")
    if t.HasField("sparse_csr"):
        raise UserError(f"{where}: sparse tensors are not served")
    if len(t.shape) > 1:
        raise UserError(f"{where}: a 1-D tensor (one value per input token) is expected, got shape {list(t.shape)}")
    a = np.frombuffer(t.dense, dtype=dtypes[t.dtype])
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise UserError(f"{where}: values must be finite")
    return a


def _fwdbwd_output(res: dict[str, Any]) -> bytes:
    """The engine's forwardBackward answer as Tinker's ForwardBackwardOutput protobuf: per-datum
    `logprobs` (one batched float32 tensor with byte offsets) and the summed loss."""
    lps = [_unpack(x).astype("<f4") for x in res["logprobs"]]
    offsets = np.zeros(len(lps) + 1, dtype="<i8")
    offsets[1:] = np.cumsum([a.nbytes for a in lps])
    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    rec = out.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(lps))
    rec.fields["logprobs"].CopyFrom(pb.BatchedTensor(data=b"".join(a.tobytes() for a in lps), offsets=offsets.tobytes(),
                                                    dtype=pb.DTYPE_FLOAT32))
    out.metrics["loss:sum"] = float(res["loss"])
    return out.SerializeToString()


# ---- HTTP -------------------------------------------------------------------------------------------


def _json(status: int, body: Any) -> Reply:
    return Reply(status, json.dumps(body, separators=(",", ":")).encode())


def _future_reply(fut: Future, extra: dict[str, Any] | None = None) -> Reply:
    return _json(200, {"request_id": fut.request_id, **(extra or {})})


def client_config() -> dict[str, Any]:
    return types.ClientConfigResponse(
        use_pyqwest_transport=False,
        parallel_fwdbwd_chunks=False,
        proto_compress_fwdbwd=False,
        fwdbwd_max_chunk_len=1 << 20,
        fwdbwd_max_chunk_bytes_count=DEFAULT_MAX_BODY // 2,
        sample_use_retrieve_futures=False,
        custom_loss_server_side=False,
        sample_join_sampling_session=False,
    ).model_dump(mode="json")


def make_routes(svc: TinkerService) -> Callable[[str, str], Route | None]:
    def post(model: type[BaseModel], fn: Callable[[Any], Any]) -> Route:
        def route(req: Request) -> Reply:
            out = fn(_validate(model, req.body))
            if isinstance(out, Future):
                return _future_reply(out)
            return _json(200, out)

        return route

    def create_session(r: types.CreateSessionRequest) -> dict[str, Any]:
        sid = f"session-{uuid.uuid4().hex[:16]}"
        svc.sessions[sid] = {"created": time.time(), "heartbeat": time.time(), "tags": r.tags}
        return types.CreateSessionResponse(session_id=sid).model_dump(mode="json")

    def heartbeat(r: types.SessionHeartbeatRequest) -> dict[str, Any]:
        s = svc.sessions.get(r.session_id)
        if s is None:
            raise UserError(f"no session {r.session_id!r} on this server")
        s["heartbeat"] = time.time()
        return types.SessionHeartbeatResponse().model_dump(mode="json")

    def retrieve(req: Request) -> Reply:
        r = _validate(types.FutureRetrieveRequest, req.body)
        fut = svc.futures.get(r.request_id)
        if fut is None:
            return _json(404, {"detail": f"no request {r.request_id!r} on this server"})
        if not fut.done.wait(LONG_POLL_S):
            return _json(200, {"type": "try_again", "request_id": fut.request_id, "queue_state": "active"})
        if fut.error is not None:
            return _json(200, {"error": fut.error, "category": fut.category})
        if fut.proto_result is not None:
            return Reply(200, fut.proto_result, "application/x-protobuf")
        return _json(200, fut.json_result)

    def asample(req: Request) -> Reply:
        fut, ids = svc.asample(_validate(types.SampleRequest, req.body))
        return _future_reply(fut, {"sample_sequence_ids": ids})

    def capabilities(_req: Request) -> Reply:
        return _json(200, types.GetServerCapabilitiesResponse(supported_models=[types.SupportedModel(
            model_name=svc.cfg.model_name, max_context_length=svc.max_positions, trainable=True, sampleable=True)]
        ).model_dump(mode="json"))

    def sampler_info(req: Request) -> Reply:
        s = svc.sampler(req.path.rsplit("/", 1)[1])
        return _json(200, types.GetSamplerResponse(sampler_id=s.sampler_id, base_model=s.base_model,
                                                   model_path=s.model_path).model_dump(mode="json"))

    def finish(req: Request) -> Reply:
        sid = req.path.split("/")[4]
        s = svc.sessions.get(sid)
        if s is None:
            return _json(404, {"detail": f"no session {sid!r} on this server"})
        s["finished"] = True
        return _json(200, None)

    fixed: dict[tuple[str, str], Route] = {
        ("GET", "/api/v1/healthz"): lambda _r: _json(200, {"status": "ok"}),
        ("GET", "/api/v1/get_server_capabilities"): capabilities,
        ("POST", "/api/v1/client/config"): lambda _r: _json(200, client_config()),
        ("POST", "/api/v1/client/dynamic_config"): lambda _r: _json(200, types.ClientDynamicConfigResponse().model_dump(mode="json")),
        ("POST", "/api/v1/telemetry"): lambda _r: _json(200, {"status": "accepted"}),
        ("POST", "/api/v1/create_session"): post(types.CreateSessionRequest, create_session),
        ("POST", "/api/v1/session_heartbeat"): post(types.SessionHeartbeatRequest, heartbeat),
        ("POST", "/api/v1/create_model"): post(types.CreateModelRequest, svc.create_model),
        ("POST", "/api/v1/get_info"): post(types.GetInfoRequest, svc.get_info),
        ("POST", "/api/v1/forward_backward"): lambda r: _future_reply(svc.forward_backward(r.body, r.headers)),
        ("POST", "/api/v1/optim_step"): post(types.OptimStepRequest, svc.optim_step),
        ("POST", "/api/v1/save_weights"): post(types.SaveWeightsRequest, svc.save_weights),
        ("POST", "/api/v1/save_weights_for_sampler"): post(types.SaveWeightsForSamplerRequest, svc.save_for_sampler),
        ("POST", "/api/v1/load_weights"): post(types.LoadWeightsRequest, svc.load_weights),
        ("POST", "/api/v1/save_weights_external"): post(types.SaveWeightsExternalRequest, svc.save_external),
        ("POST", "/api/v1/create_sampling_session"): post(types.CreateSamplingSessionRequest, svc.create_sampling_session),
        ("POST", "/api/v1/asample"): asample,
        ("POST", "/api/v1/retrieve_future"): retrieve,
        ("POST", "/api/v1/cancel_future"): lambda _r: _json(200, None),
    }
    patterns: list[tuple[str, re.Pattern[str], Route]] = [
        ("GET", re.compile(r"^/api/v1/samplers/[^/]+$"), sampler_info),
        ("POST", re.compile(r"^/api/v1/sessions/[^/]+/finish$"), finish),
    ]

    def guarded(route: Route) -> Route:
        def run(req: Request) -> Reply:
            try:
                return route(req)
            except UserError as e:
                return _json(400, {"detail": str(e)})
            except EngineError as e:
                return _json(400 if e.code in ("bad_request", "not_found", "checkpoint") else 500,
                             {"detail": f"engine {e.code}: {e.message}"})

        return run

    def resolve(method: str, path: str) -> Route | None:
        route = fixed.get((method, path))
        if route is None:
            route = next((r for m, pat, r in patterns if m == method and pat.match(path)), None)
        if route is None:
            return lambda _r: _json(404, {"detail": f"{method} {path} is not served by erl engine serve --tinker "
                                                    "(docs/tinker.md lists what is)"})
        return guarded(route)

    return resolve


def make_server(svc: TinkerService, host: str, port: int, token: str, max_connections: int = MAX_CONNECTIONS) -> Any:
    expected = token.encode()
    return make_gated_server(
        host,
        port,
        authorized=lambda h: hmac.compare_digest(h.get("X-API-Key", "").encode(), expected),
        resolve=make_routes(svc),
        refuse=lambda status, code, problem: _json(status, {"detail": "missing or wrong API key (X-API-Key)"
                                                            if code == "unauthorized" else problem}),
        max_body=svc.cfg.max_body,
        max_connections=max_connections,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="erl engine serve --tinker", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the model directory to serve (its name is the base model's)")
    ap.add_argument("--served-model-name", default=None, help="base model name clients use (default: --model as given)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--token", default=None, help="API key clients send (default: $ERL_ENGINE_TOKEN, else a random one)")
    ap.add_argument("--store", default=os.path.join("runs", "tinker-store"), help="where tinker:// checkpoints live")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY)
    ap.add_argument("--allow-remote", action="store_true", help="allow binding to a non-loopback address")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        print(f"erl engine serve --tinker: {args.model}: not a model directory (no config.json)", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.allow_remote:
        print(f"erl engine serve --tinker: refusing to listen on non-loopback address {args.host} without --allow-remote "
              "(prefer an SSH tunnel to 127.0.0.1)", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("ERL_ENGINE_TOKEN")
    generated = token is None
    if token is None:
        token = "tml-" + secrets.token_hex(24)
    if not token.startswith("tml-"):
        print("erl engine serve --tinker: the token must start with 'tml-' (the Tinker SDK sends no other API key)",
              file=sys.stderr)
        return 2
    svc = TinkerService(Config(args))
    try:
        server = make_server(svc, args.host, args.port, token)
    except OSError as e:
        print(f"erl engine serve --tinker: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if generated:
        print(f"erl engine serve --tinker: API key (TINKER_API_KEY): {token}", file=sys.stderr)
    print(f"erl engine serve --tinker: serving {svc.cfg.model_name} ({svc.cfg.model_path}), checkpoints in {svc.cfg.store}; "
          f"head limit {MAX_HEADER_BYTES} bytes, bodies up to {svc.cfg.max_body} bytes", file=sys.stderr)
    print(f"erl-tinker listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for m in list(svc.models.values()):
            m.engine.close()
        for e in list(svc.sampler_engines.values()):
            e.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

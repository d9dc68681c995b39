"""`engine.kind: "tinker"`: an engine that speaks this project's protocol over stdio (docs/engine.md) and
forwards every call to a Tinker service through the official SDK (docs/tinker.md).

    TINKER_BASE_URL=… TINKER_API_KEY=… ERL_TINKER_BASE_MODEL=Qwen/Qwen3-4B-Instruct-2507 \
        python -m erl_tinker.bridge            # started by the TypeScript runner, as a local engine is

How each call maps (the service trains LoRA adapters; losses are sums over tokens):
- loadModel: a LoRA training client of ERL_TINKER_BASE_MODEL (rank and seed from the request; target
  modules "all-linear" = attention + MLP, or a list of q/k/v/o/gate/up/down_proj and lm_head; alpha is
  the service's, so the request's must be 32 and dropout 0). The tokenizer stays here: the `path`
  directory's when it has one, else the SDK's for the base model (Hugging Face).
- renderChat, encode, decode: that tokenizer, with the engine's own code (erl_engine/tokenizing.py).
- sample: one Tinker sampling request per prompt, all in flight at once, prompt i with seed
  seeds.prompt_seed(seed, i) (a local engine samples so under ERL_ENGINE_SAMPLE_SEEDS=per-prompt),
  through a sampling client of the current weights (a new one after every optimStep or loadState).
- forward: Tinker's forward with cross_entropy; its per-token log-probs.
- forwardBackward: the engine's loss as one of Tinker's built-in losses, whose sums take the engine's
  divisor N (the normalizer, or the aggregation's count) and per-token weights w into their inputs:
      cross_entropy        Tinker weights       = w / N
      importance_sampling  Tinker advantages    = w * A / N,   logprobs = oldLogprobs
      ppo                  the same, clip_low_threshold = 1 - clipLow, clip_high_threshold = 1 + clipHigh
  (w >= 0 moves through PPO's min and clip unchanged). Dual clip, a KL term, TIS, clamps and a loss
  temperature other than 1 have no built-in Tinker loss: refused, naming the config key. The loss is
  the service's; the other metrics are computed here from the log-probs it returns, with the engine's
  own code (erl_engine/losses.py, loss_metrics.py); entropy and a gradient norm need the model and are
  not reported.
- optimStep: AdamW (lr, betas, eps, weight decay, gradient clip); the gradient norm where the service
  reports one (metric grad_norm:mean), else -1.
- saveState(dir) / loadState(dir): Tinker's save_state / load_state_with_optimizer; the directory
  gets tinker.json with the tinker:// path (the weights stay on the service).
- export(dir): save_weights_external (a peft adapter) and its files downloaded into dir where the
  service gives download URLs; otherwise dir/tinker.json records the tinker:// path and why.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import numpy as np
import tinker
import torch
from tinker import types

from erl_engine import ENGINE_VERSION, PROTOCOL_VERSION
from erl_engine import tokenizing
from erl_engine.loss_metrics import LossMetrics
from erl_engine.losses import LossSpec, compute_loss, default_normalizer
from erl_engine.protocol import ProtocolError, bad, fail, ok, pack_f32, parse_request
from erl_engine.seeds import prompt_seed

ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}
UNEMBED = {"lm_head"}
TINKER_LORA_ALPHA = 32.0
KEEPS_SAMPLER = {"hello", "info", "renderChat", "renderChats", "encode", "decode", "decodeMany", "sample", "forward",
                 "forwardBackward", "saveState", "export"}


def _arr(x: Any) -> list[float]:
    return np.asarray(x, dtype=np.float64).tolist()


class Bridge:
    def __init__(self) -> None:
        self.base_model = os.environ.get("ERL_TINKER_BASE_MODEL") or ""
        self.base_url = os.environ.get("TINKER_BASE_URL") or None
        self.service: tinker.ServiceClient | None = None
        self.training: Any = None
        self.sampler: Any = None
        self.tok: Any = None
        self.model_info: dict[str, Any] = {}
        self.lora: dict[str, Any] | None = None
        self.dtype = "bfloat16"
        self.step = 0

    # ---- model -----------------------------------------------------------------------------------

    def need(self) -> Any:
        if self.training is None:
            raise ProtocolError("no_model", "no model is loaded: call loadModel first")
        return self.training

    def info(self) -> dict[str, Any]:
        import transformers

        out: dict[str, Any] = {
            "protocolVersion": PROTOCOL_VERSION,
            "engineVersion": ENGINE_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": f"tinker:{self.base_url or 'default'}",
            "dtype": self.dtype,
            "dtypeReason": "a Tinker service computes in its own precision; the API does not report it",
            "parameters": {"total": 0, "trainable": 0},
            "memory": {"rssBytes": 0},
            "step": self.step,
        }
        if self.model_info:
            out["model"] = self.model_info
        return out

    def load_model(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self.base_model:
            raise bad("engine.baseModel", "the Tinker base model is not set (ERL_TINKER_BASE_MODEL)")
        lora = p.get("lora")
        if lora is None:
            raise bad("params.lora", "a Tinker service trains LoRA adapters only: set model.lora in the run config")
        if lora.get("dropout", 0) != 0:
            raise bad("params.lora.dropout", "a Tinker service has no LoRA dropout: set it to 0")
        if lora["alpha"] != TINKER_LORA_ALPHA:
            raise bad("params.lora.alpha", f"a Tinker service's LoRA alpha is its own ({TINKER_LORA_ALPHA:g} here): set it to that")
        if p.get("randomInit") is not None:
            raise bad("params.randomInit", "a Tinker service trains its own base models")
        targets = lora["targetModules"]
        names = ATTN | MLP if targets == "all-linear" else set(targets)
        unknown = names - ATTN - MLP - UNEMBED
        if unknown:
            raise bad("params.lora.targetModules", f"{sorted(unknown)[0]!r}: a Tinker service trains q/k/v/o_proj, "
                      "gate/up/down_proj and lm_head (or \"all-linear\")")
        flags = {"train_attn": bool(names & ATTN), "train_mlp": bool(names & MLP), "train_unembed": bool(names & UNEMBED)}
        for group, key in ((ATTN, "train_attn"), (MLP, "train_mlp")):
            if names & group and not group <= names:
                raise bad("params.lora.targetModules", f"a Tinker service trains all of {sorted(group)} or none ({key})")
        self.load_tokenizer(p.get("path"))
        self.service = self.service or tinker.ServiceClient(base_url=self.base_url)
        self.training = self.service.create_lora_training_client(base_model=self.base_model, rank=lora["rank"],
                                                                 seed=p["seed"], **flags).result()
        self.lora = lora
        self.sampler = None
        self.step = 0
        if p.get("dtype") in ("float32", "bfloat16"):
            self.dtype = p["dtype"]
        return self.info()

    def load_tokenizer(self, path: str | None) -> None:
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        source = path if path and os.path.isdir(path) else self.base_model
        try:
            self.tok = AutoTokenizer.from_pretrained(source)
            config = AutoConfig.from_pretrained(source)
            try:
                gen = GenerationConfig.from_pretrained(source)
            except OSError:
                gen = None
        except OSError as e:
            raise ProtocolError("not_found", f"the tokenizer of {source}: {e}".splitlines()[0]) from None
        self.model_info = {"vocabSize": int(getattr(config, "vocab_size", len(self.tok))),
                           "eosTokenIds": tokenizing.eos_ids((gen, config), self.tok)}
        if path:
            self.model_info["path"] = path
        max_pos = getattr(config, "max_position_embeddings", None)
        if isinstance(max_pos, int):
            self.model_info["maxPositions"] = max_pos

    # ---- tokenizer -------------------------------------------------------------------------------

    def need_tok(self) -> Any:
        if self.tok is None:
            raise ProtocolError("no_model", "no model is loaded: call loadModel first")
        return self.tok

    # ---- sampling --------------------------------------------------------------------------------

    def sampling_client(self) -> Any:
        if self.sampler is None:
            self.sampler = self.need().save_weights_and_get_sampling_client().result()
        return self.sampler

    def sample(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("logprobTemperature", 1.0) != 1.0:
            raise bad("params.logprobTemperature", "a Tinker service returns log-probs at temperature 1 only")
        eos = set(self.model_info.get("eosTokenIds", []))
        extra = [int(x) for x in p.get("stopTokenIds", np.zeros(0)) if int(x) not in eos]
        stop: list[str] | list[int] | None = None
        if p.get("stopStrings"):
            if extra:
                raise bad("params.stopTokenIds", "a Tinker request stops at strings or at token ids, not both")
            stop = list(p["stopStrings"])
        elif extra:
            stop = extra + sorted(eos)
        client = self.sampling_client()
        futures = []
        for i, prompt in enumerate(p["prompts"]):
            params = types.SamplingParams(max_tokens=p["maxTokens"], seed=prompt_seed(p["seed"], i), temperature=p["temperature"],
                                          top_k=p.get("topK", -1), top_p=p.get("topP", 1.0), stop=stop)
            futures.append(client.sample(types.ModelInput.from_ints([int(x) for x in prompt]), p["n"], params))
        seqs = []
        for i, f in enumerate(futures):
            for s in f.result().sequences:
                lps = s.logprobs if s.logprobs is not None else []
                seqs.append({"promptIndex": i, "tokens": [int(t) for t in s.tokens],
                             "logprobs": pack_f32(np.asarray(lps, dtype=np.float32)), "stopReason": s.stop_reason})
        return {"sequences": seqs}

    # ---- forward / backward ----------------------------------------------------------------------

    @staticmethod
    def tinker_datum(d: dict[str, Any], inputs: dict[str, np.ndarray]) -> types.Datum:
        return types.Datum(model_input=types.ModelInput.from_ints(d["inputIds"].tolist()),
                           loss_fn_inputs={"target_tokens": d["targetIds"].astype(np.int64), **inputs})

    def forward(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("temperature", 1.0) != 1.0:
            raise bad("params.temperature", "a Tinker service computes log-probs at temperature 1 only")
        data = [self.tinker_datum(d, {"weights": np.zeros(len(d["inputIds"]), dtype=np.float32)}) for d in p["datums"]]
        res = self.need().forward(data, "cross_entropy").result()
        return {"logprobs": [pack_f32(np.asarray(o["logprobs"].data, dtype=np.float32)) for o in res.loss_fn_outputs]}

    def forward_backward(self, p: dict[str, Any]) -> dict[str, Any]:
        lc = p["loss"]
        for key, why in (("dualClip", "dual clip"), ("tisCap", "truncated importance sampling"),
                         ("logRatioClamp", "a log-ratio clamp"), ("klClamp", "a KL clamp")):
            if key in lc:
                raise bad(f"params.loss.{key}", f"a Tinker service's built-in losses have no {why}: set loss.{key} to null")
        if lc.get("klCoef", 0):
            raise bad("params.loss.klCoef", "a Tinker service's built-in losses have no KL term: set loss.klCoef to 0")
        if lc.get("temperature", 1.0) != 1.0:
            raise bad("params.loss.temperature", "a Tinker service computes log-probs at temperature 1 only")
        if p.get("forwardOnly") or p.get("returnLogprobs"):
            raise bad("params", "forwardOnly and returnLogprobs are for the engine's own Tinker server")
        name = lc["name"]
        datums = p["datums"]
        for i, d in enumerate(datums):
            n = len(d["inputIds"])
            for key in ("targetIds", "weights", "advantages", "oldLogprobs", "samplerLogprobs"):
                if key in d and len(d[key]) != n:
                    raise bad(f"params.datums[{i}].{key}", f"has {len(d[key])} values but inputIds has {n}")
            if name != "cross_entropy" and ("advantages" not in d or "oldLogprobs" not in d):
                raise bad(f"params.datums[{i}].advantages", "required by this loss (with oldLogprobs)")
            if np.any(d["weights"] < 0):
                raise bad(f"params.datums[{i}].weights", "must be >= 0 on a Tinker service (they scale its sums)")
        spec = LossSpec(name=name, aggregation=lc.get("aggregation", "seq-mean-token-sum"),
                        clip_low=lc.get("clipLow", LossSpec.clip_low), clip_high=lc.get("clipHigh", LossSpec.clip_high))
        norm = lc.get("normalizer") or default_normalizer([d["weights"] for d in datums], spec.aggregation)
        spec.normalizer = norm
        # Every token masked (a zero divisor): the engine's loss is 0, and so is every input here.
        norm = norm if norm > 0 else 1.0
        data = []
        for d in datums:
            w = d["weights"].astype(np.float32)
            if name == "cross_entropy":
                data.append(self.tinker_datum(d, {"weights": w / norm}))
            else:
                data.append(self.tinker_datum(d, {"advantages": (w * d["advantages"] / norm).astype(np.float32),
                                                  "logprobs": d["oldLogprobs"].astype(np.float32)}))
        config = None
        if name == "ppo":
            config = {"clip_low_threshold": 1.0 - spec.clip_low, "clip_high_threshold": 1.0 + spec.clip_high}
        res = self.need().forward_backward(data, name, config).result()
        metrics = self.metrics(spec, datums, [np.asarray(o["logprobs"].data, dtype=np.float32) for o in res.loss_fn_outputs])
        loss = float(res.metrics.get("loss:sum", metrics.pop("loss_here")))
        metrics.pop("loss_here", None)
        metrics["loss"] = loss
        return {"loss": loss, "metrics": metrics}

    @staticmethod
    def metrics(spec: LossSpec, datums: list[dict[str, Any]], logprobs: list[np.ndarray]) -> dict[str, float]:
        """The engine's forwardBackward metrics, from the service's log-probs (no entropy, no gradient)."""
        acc = LossMetrics()
        total = 0.0
        rl = spec.name != "cross_entropy"
        for d, lp in zip(datums, logprobs):
            logp = torch.from_numpy(lp.astype(np.float32))[None]
            w = torch.from_numpy(d["weights"].astype(np.float32))[None]
            adv = torch.from_numpy(d["advantages"].astype(np.float32))[None] if rl else None
            old = torch.from_numpy(d["oldLogprobs"].astype(np.float32))[None] if rl else None
            loss, diag = compute_loss(spec, logp, w, adv, old)
            total += float(loss)
            acc.add(w != 0, logp, None, diag, w, float(spec.normalizer or 0))
            if "samplerLogprobs" in d:
                acc.add_mismatch(w != 0, logp, torch.from_numpy(d["samplerLogprobs"].astype(np.float32))[None])
        out = acc.result()
        out["sequences"] = float(len(datums))
        out["normalizer"] = float(spec.normalizer or 0)
        out["loss_here"] = total
        return out

    # ---- optimizer and state ---------------------------------------------------------------------

    def optim_step(self, p: dict[str, Any]) -> dict[str, Any]:
        betas = p.get("betas", [0.9, 0.999])
        adam = types.AdamParams(learning_rate=p["lr"], beta1=betas[0], beta2=betas[1], eps=p.get("eps", 1e-8),
                                weight_decay=p.get("weightDecay", 0.01), grad_clip_norm=p.get("gradClip", 0.0))
        res = self.need().optim_step(adam).result()
        m = res.metrics or {}
        grad_norm = m.get("grad_norm:mean", m.get("grad_norm"))
        self.step += 1
        self.sampler = None
        metrics = {"lr": p["lr"], "step": float(self.step)}
        if grad_norm is not None and math.isfinite(grad_norm):
            metrics["grad_norm"] = float(grad_norm)
            if "gradClip" in p:
                metrics["clipped"] = 1.0 if grad_norm > p["gradClip"] else 0.0
        return {"gradNorm": float(grad_norm) if grad_norm is not None and math.isfinite(grad_norm) else -1.0,
                "metrics": metrics}

    def save_state(self, p: dict[str, Any]) -> dict[str, Any]:
        name = f"erl-step-{self.step}-{os.urandom(4).hex()}"
        path = self.need().save_state(name).result().path
        self.write_pointer(p["dir"], {"tinker_path": path, "kind": "state", "step": self.step, "base_model": self.base_model,
                                      "lora": self.lora})
        return {}

    def load_state(self, p: dict[str, Any]) -> dict[str, Any]:
        meta = self.read_pointer(p["dir"], "state")
        if meta.get("base_model") != self.base_model or meta.get("lora") != self.lora:
            raise ProtocolError("checkpoint", f"{p['dir']}: saved from {meta.get('base_model')} with LoRA {meta.get('lora')}, "
                                f"not {self.base_model} with {self.lora}")
        self.need().load_state_with_optimizer(meta["tinker_path"]).result()
        self.step = int(meta.get("step", 0))
        self.sampler = None
        return {"step": self.step}

    def export(self, p: dict[str, Any]) -> dict[str, Any]:
        """The adapter in Hugging Face's (peft) format, downloaded where the service offers it; else (or
        when the download fails) `dir` holds only tinker.json with the tinker:// path and the reason."""
        if p.get("mergeLora"):
            raise bad("params.mergeLora", "a Tinker service exports LoRA adapters, not merged weights")
        name = f"erl-export-step-{self.step}-{os.urandom(4).hex()}"
        meta: dict[str, Any] = {"kind": "external_weights", "step": self.step, "base_model": self.base_model, "lora": self.lora}
        files: dict[str, bytes] = {}
        try:
            meta["tinker_path"] = self.need().save_weights_external(name).result().path
        except Exception as e:  # noqa: BLE001 - a service without external exports: the sampler weights' path
            meta["kind"] = "sampler_weights"
            meta["tinker_path"] = self.need().save_weights_for_sampler(name).result().path
            meta["not_downloaded"] = f"save_weights_external: {type(e).__name__}: {e}".splitlines()[0][:300]
        else:
            try:
                import httpx

                urls = tinker.RestClient(base_url=self.base_url).get_external_weights_urls(meta["tinker_path"]).result().urls
                for rel, url in urls.items():
                    if rel.startswith("/") or ".." in rel.split("/"):
                        raise ValueError(f"unsafe file name {rel!r} in the download list")
                    r = httpx.get(url, timeout=600, follow_redirects=True)
                    r.raise_for_status()
                    files[rel] = r.content
            except Exception as e:  # noqa: BLE001 - recorded in tinker.json; the path stays usable
                files = {}
                meta["not_downloaded"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        self.write_pointer(p["dir"], meta, files)
        return {}

    @staticmethod
    def write_pointer(d: str, meta: dict[str, Any], files: dict[str, bytes] | None = None) -> None:
        """`d` holding tinker.json (and downloaded files), written beside it and renamed into place."""
        import shutil

        tmp = d.rstrip("/") + ".tmp-tinker"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for rel, data in (files or {}).items():
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data)
        with open(os.path.join(tmp, "tinker.json"), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.replace(tmp, d)

    @staticmethod
    def read_pointer(d: str, kind: str) -> dict[str, Any]:
        try:
            with open(os.path.join(d, "tinker.json")) as f:
                meta = dict(json.load(f))
        except FileNotFoundError:
            raise ProtocolError("not_found", f"{d}: no tinker.json (not a state saved through a Tinker service)") from None
        if meta.get("kind") != kind:
            raise ProtocolError("checkpoint", f"{d}: a {meta.get('kind')} pointer, not a {kind}")
        return meta

    # ---- dispatch --------------------------------------------------------------------------------

    def call(self, method: str, p: dict[str, Any]) -> Any:
        if method not in KEEPS_SAMPLER:
            self.sampler = None
        if method == "hello":
            if p["protocolVersion"] != PROTOCOL_VERSION:
                raise ProtocolError("protocol_version", f"the client speaks protocol version {p['protocolVersion']} "
                                    f"but this bridge speaks version {PROTOCOL_VERSION}")
            return {"protocolVersion": PROTOCOL_VERSION, "engineVersion": ENGINE_VERSION}
        if method == "info":
            return self.info()
        if method == "loadModel":
            return self.load_model(p)
        if method == "renderChat":
            return {"ids": tokenizing.render_chats(self.need_tok(), [p], ["params"])[0]}
        if method == "renderChats":
            return {"ids": tokenizing.render_chats(self.need_tok(), p["chats"], [f"params.chats[{i}]" for i in range(len(p["chats"]))])}
        if method == "encode":
            return {"ids": tokenizing.encode(self.need_tok(), p["text"], p.get("addSpecialTokens", False))}
        if method == "decode":
            return {"text": tokenizing.decode(self.need_tok(), p["ids"].tolist(), p.get("skipSpecialTokens", False))}
        if method == "decodeMany":
            skip = p.get("skipSpecialTokens", False)
            return {"texts": [tokenizing.decode(self.need_tok(), s.tolist(), skip) for s in p["seqs"]]}
        handlers = {"sample": self.sample, "forward": self.forward, "forwardBackward": self.forward_backward,
                    "optimStep": self.optim_step, "saveState": self.save_state, "loadState": self.load_state,
                    "export": self.export}
        return handlers[method](p)


def _error_of(e: Exception) -> ProtocolError:
    """An SDK or service failure as one protocol error line (the service's own message kept)."""
    text = f"{type(e).__name__}: {e}".splitlines()[0][:600]
    if isinstance(e, (tinker.BadRequestError, tinker.NotFoundError, tinker.UnprocessableEntityError)):
        return ProtocolError("bad_request", f"Tinker service refused the request: {text}")
    if isinstance(e, tinker.RequestFailedError):
        user = str(getattr(e, "category", "")).lower().endswith("user")
        return ProtocolError("bad_request" if user else "internal", f"Tinker service: {text}")
    if isinstance(e, tinker.AuthenticationError):
        return ProtocolError("unauthorized", f"Tinker service: {text} (check the key in engine.apiKeyEnv)")
    return ProtocolError("internal", f"Tinker service call failed: {text}")


def main() -> int:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    torch.set_num_threads(1)
    bridge = Bridge()
    print(f"erl-engine {ENGINE_VERSION} ready (tinker bridge to {bridge.base_url or 'the default Tinker service'}, "
          f"base model {bridge.base_model or '(unset)'}, protocol v{PROTOCOL_VERSION})", file=sys.stderr, flush=True)
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        rid = None
        try:
            msg = json.loads(line)
            rid = msg.get("id") if isinstance(msg, dict) and isinstance(msg.get("id"), int) else None
            rid, method, params = parse_request(msg)
            if method == "shutdown":
                out.write(json.dumps(ok(rid, {})).encode() + b"\n")
                break
            answer = ok(rid, bridge.call(method, params))
        except ProtocolError as e:
            answer = fail(rid, e)
        except json.JSONDecodeError as e:
            answer = fail(None, ProtocolError("bad_request", f"the request is not valid JSON: {e}"))
        except Exception as e:  # noqa: BLE001 - one line to the client, the traceback here
            import traceback

            traceback.print_exc(file=sys.stderr)
            answer = fail(rid, _error_of(e))
        out.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

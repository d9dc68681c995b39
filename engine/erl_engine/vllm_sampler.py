"""The vLLM sampler: vLLM in its own process and virtualenv (.venv-vllm, scripts/setup-vllm.sh), spoken
to over stdio with the engine's protocol envelope. It answers `hello`, `loadModel`, `sample` (the same
parameters and the same answer as the engine's `sample`) and `syncWeights`; the TypeScript side
(src/engine/vllm.ts) sends every other call to the trainer engine and, after each `optimStep`,
exports the trainer's weights and calls `syncWeights`:

  full fine-tuning  {"dir": <exported HF dir>}            -> collective_rpc("reload_weights")
  LoRA              {"dir": <exported adapter>, "lora": true} -> a new LoRARequest (new id) per sync

Answers follow the engine's `sample` exactly: per sequence `promptIndex`, `tokens` (the stop token
included; with a stop string, every token up to the one that completes it), `logprobs` (the raw
log-prob of each sampled token: log-softmax of the logits at temperature 1, before top-k/top-p,
which is vLLM's default `logprobs_mode` "raw_logprobs"), and `stopReason` "stop" or "length". Each
prompt gets its own seed derived from the request's, so a sequence's randomness does not depend on
the other prompts of the request (vLLM's generator differs from the engine's: same seed, different
tokens).

On GPUs the same calls apply; there vLLM can also take weights over NCCL or CUDA IPC instead of a
file reload (docs/scaling.md). Run: .venv-vllm/bin/python -m erl_engine.vllm_sampler
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, BinaryIO

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU build
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `apply_model` sends a function of ours to vLLM's worker processes (vllm_worker.retie_embeddings).
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from . import ENGINE_VERSION, PROTOCOL_VERSION  # noqa: E402
from .protocol import PARAMS, Bool, Obj, ProtocolError, Str, fail, ok, pack_f32  # noqa: E402
from .vllm_worker import retie_embeddings  # noqa: E402

SYNC = Obj({"dir": Str(True)}, {"lora": Bool()})
# vLLM accepts these LoRA ranks as its maximum.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmSampler:
    def __init__(self) -> None:
        self.llm: Any = None
        self.path: str | None = None
        self.lora_rank: int | None = None
        self.lora_request: Any = None
        self.lora_version = 0
        self.max_len: int | None = None
        self.tied = False
        self.vocab = 0
        self.eos: list[int] = []

    def hello(self, p: dict[str, Any]) -> dict[str, Any]:
        if p["protocolVersion"] != PROTOCOL_VERSION:
            raise ProtocolError("protocol_version", f"this vLLM sampler speaks protocol version {PROTOCOL_VERSION}")
        return {"protocolVersion": PROTOCOL_VERSION, "engineVersion": ENGINE_VERSION}

    def info(self) -> dict[str, Any]:
        import torch
        import transformers
        import vllm

        out: dict[str, Any] = {
            "protocolVersion": PROTOCOL_VERSION,
            "engineVersion": ENGINE_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": vllm.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "dtype": "float32",
            "parameters": {"total": 0, "trainable": 0},
            "memory": {"rssBytes": 0},
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "step": 0,
        }
        if self.llm is not None:
            model: dict[str, Any] = {"vocabSize": self.vocab, "eosTokenIds": self.eos}
            if self.path:
                model["path"] = self.path
            if self.max_len:
                model["maxPositions"] = self.max_len
            out["model"] = model
        return out

    def load_model(self, p: dict[str, Any]) -> dict[str, Any]:
        from vllm import LLM

        if "path" not in p:
            raise ProtocolError("bad_request", "params.path: the vLLM sampler loads models from a directory")
        path = p["path"]
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ProtocolError("not_found", f"params.path: no config.json in {path}")
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        self.llm = None
        lora = p.get("lora")
        kwargs: dict[str, Any] = {}
        if lora:
            rank = next((r for r in LORA_RANKS if r >= lora["rank"]), None)
            if rank is None:
                raise ProtocolError("bad_request", f"params.lora.rank: vLLM supports LoRA ranks up to {LORA_RANKS[-1]}")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        # bf16 on a GPU; on a CPU the engine's own dtype (vLLM's CPU bf16 path is slower, see docs).
        dtype = p.get("dtype", "auto") if p["device"] != "cpu" else "float32"
        self.max_len = int(cfg.get("max_position_embeddings") or 2048)
        # GPU layouts (docs/scaling.md): tensor parallelism and vLLM's share of each GPU's memory.
        if os.environ.get("ERL_VLLM_TENSOR_PARALLEL"):
            kwargs["tensor_parallel_size"] = int(os.environ["ERL_VLLM_TENSOR_PARALLEL"])
        if os.environ.get("ERL_VLLM_GPU_MEMORY"):
            kwargs["gpu_memory_utilization"] = float(os.environ["ERL_VLLM_GPU_MEMORY"])
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype, seed=p["seed"], enforce_eager=True,
                       max_model_len=self.max_len, **kwargs)
        self.path = path
        self.lora_rank = lora["rank"] if lora else None
        self.lora_request = None
        self.tied = bool(cfg.get("tie_word_embeddings"))
        self.vocab = int(cfg.get("vocab_size") or 0)
        eos = cfg.get("eos_token_id")
        self.eos = sorted({int(x) for x in (eos if isinstance(eos, list) else [eos]) if x is not None})
        return self.info()

    def sample(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("logprobTemperature", 1.0) != 1.0:
            # vLLM reports raw (T = 1) log-probs; silently returning them would skew every PPO ratio.
            raise ProtocolError(
                "bad_request",
                f"params.logprobTemperature: {p['logprobTemperature']} is not supported by the vLLM sampler, which "
                "returns raw (temperature 1) log-probs; use loss.temperature 1 with engine.sampler vllm",
            )
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.llm is None:
            raise ProtocolError("no_model", "no model is loaded: call loadModel first")
        prompts = p["prompts"]
        for i, pr in enumerate(prompts):
            if pr.min() < 0 or pr.max() >= self.vocab:
                raise ProtocolError("bad_request", f"params.prompts[{i}]: token id outside the vocabulary [0, {self.vocab})")
            if len(pr) + p["maxTokens"] > self.max_len:
                raise ProtocolError(
                    "bad_request",
                    f"params.maxTokens: prompt {i} ({len(pr)}) + maxTokens ({p['maxTokens']}) exceeds the model's "
                    f"{self.max_len} positions",
                )
        stop_ids = [int(x) for x in p["stopTokenIds"]] if p.get("stopTokenIds") is not None else []
        params = []
        for i in range(len(prompts)):
            params.append(
                SamplingParams(
                    n=p["n"],
                    temperature=p["temperature"],
                    top_p=p.get("topP", 1.0),
                    top_k=p.get("topK", 0) or 0,
                    max_tokens=p["maxTokens"],
                    seed=(p["seed"] * 1_000_003 + i) % (1 << 63),
                    logprobs=0,
                    stop=p.get("stopStrings") or None,
                    stop_token_ids=stop_ids or None,
                    skip_special_tokens=False,
                )
            )
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=pr.tolist()) for pr in prompts],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        seqs = []
        for i, o in enumerate(outs):
            for c in sorted(o.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                lps = [float(d[t].logprob) for t, d in zip(toks, c.logprobs or [])]
                if len(lps) != len(toks):
                    raise ProtocolError("internal", f"vLLM returned {len(lps)} log-probs for {len(toks)} tokens")
                seqs.append(
                    {
                        "promptIndex": i,
                        "tokens": toks,
                        "logprobs": pack_f32(_f32(lps)),
                        "stopReason": "length" if c.finish_reason == "length" else "stop",
                    }
                )
        return {"sequences": seqs}

    def sync_weights(self, p: dict[str, Any]) -> dict[str, Any]:
        if self.llm is None:
            raise ProtocolError("no_model", "no model is loaded: call loadModel first")
        d = p["dir"]
        if not os.path.isdir(d):
            raise ProtocolError("not_found", f"params.dir: {d} does not exist")
        if p.get("lora"):
            from vllm.lora.request import LoRARequest

            if self.lora_rank is None:
                raise ProtocolError("bad_request", "params.lora: the sampler was loaded without LoRA")
            # A new id makes vLLM load the adapter afresh (ids are cache keys).
            self.lora_version += 1
            self.lora_request = LoRARequest(f"erl-{self.lora_version}", self.lora_version, d)
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": d})
            if self.tied:
                # vLLM 0.32's in-place reload replaces the embedding's tensor but puts the output
                # head's old one back (its loader skips `lm_head.*` for tied models), so the two
                # come apart; copy the new embedding into the head (a test checks the result).
                self.llm.apply_model(retie_embeddings)
            self.llm.reset_prefix_cache()
        return {}


def _f32(values: list[float]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.float32)


def main() -> int:
    out: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sampler = VllmSampler()
    methods = {
        "hello": (PARAMS["hello"], sampler.hello),
        "info": (PARAMS["info"], lambda _p: sampler.info()),
        "loadModel": (PARAMS["loadModel"], sampler.load_model),
        "sample": (PARAMS["sample"], sampler.sample),
        "syncWeights": (SYNC, sampler.sync_weights),
    }
    print(f"erl vLLM sampler ready (protocol v{PROTOCOL_VERSION})", file=sys.stderr, flush=True)
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        rid = None
        stop = False
        try:
            msg = json.loads(line)
            rid = msg.get("id") if isinstance(msg, dict) else None
            method = msg.get("method")
            if method == "shutdown":
                answer, stop = ok(rid, {}), True
            elif method not in methods:
                raise ProtocolError("unknown_method", f"the vLLM sampler has no method {method!r}")
            else:
                schema, fn = methods[method]
                answer = ok(rid, fn(schema(msg.get("params", {}), "params")))
        except ProtocolError as e:
            answer = fail(rid, e)
        except Exception as e:  # noqa: BLE001 - reported, and the sampler keeps serving
            traceback.print_exc(file=sys.stderr)
            answer = fail(rid, ProtocolError("internal", f"vLLM sampler error ({type(e).__name__}: {str(e)[:400]})"))
        out.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        if stop:
            break
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

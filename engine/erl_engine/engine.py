"""The engine's state and its protocol methods: one `Engine` holds the model, the optimizer and the
step counter, and `Engine.call(method, params)` runs a validated request (see protocol.py).

Tensor conventions: a datum's arrays are aligned with its target ids; position t holds the value for
predicting targetIds[t] from inputIds[0..t]. Datums are right-padded into micro-batches (sorted by
length, bounded by a token budget) so that no attention mask is needed: with causal attention the
real tokens never see the padding after them.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
from typing import Any, Callable

import numpy as np
import torch

from . import ENGINE_VERSION, PROTOCOL_VERSION
from . import autotune, checkpoint, dist, sampler, tokenizing
from .loss_metrics import LossMetrics
from .losses import LossSpec, compute_loss, default_normalizer
from .model import LoadedModel, load, load_dtype, precheck
from .protocol import ProtocolError, bad, pack_f32

# Padded tokens per micro-batch (rows x longest row). Bounds activation memory for long batches;
# ERL_ENGINE_MICROBATCH_TOKENS overrides it (e.g. larger on a big GPU). With a large vocabulary the
# fp32 logits dominate, so the default budget also keeps them under LOGITS_BUDGET_BYTES.
DEFAULT_MICROBATCH_TOKENS = 16384
LOGITS_BUDGET_BYTES = 1 << 30

# forwardBackward's `loss` keys -> LossSpec fields.
_LOSS_FIELDS = {
    "aggregation": "aggregation",
    "clipLow": "clip_low",
    "clipHigh": "clip_high",
    "dualClip": "dual_clip",
    "klCoef": "kl_coef",
    "normalizer": "normalizer",
    "temperature": "temperature",
    "logRatioClamp": "log_ratio_clamp",
    "klClamp": "kl_clamp",
    "tisCap": "tis_cap",
}


# Model types whose causal-LM head is `logits = lm_head(final hidden state)`, nothing after it (no
# logit scaling or soft-capping): for these the head may run on the positions that are needed only.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The decoder (up to the final norm) and the LM head of a plain-head model (a PEFT wrapper is
    looked through; LoRA layers inside stay active), or None for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    try:
        body, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or head is None or body is base:
        return None
    return body, head


def token_logprobs(
    model: torch.nn.Module,
    inp: torch.Tensor,
    tgt: torch.Tensor,
    autocast: Any,
    with_entropy: bool = False,
    temperature: float = 1.0,
    keep: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) at every position [B, T] (fp32) from logits / temperature, and optionally the
    entropy of each such distribution.

    `keep` ([B, T] bool): only these positions are needed; the others come back as 0. For a plain-head
    model (PLAIN_HEAD_TYPES) the LM head, the log-softmax and the entropy then run on those positions
    alone: with a 49k vocabulary (SmolLM2) the head is a fifth of the model's work per token, and an
    RL or SFT batch trains a minority of its tokens (the replies, not the prompts and boards).
    `position_ids` ([B, T]): packed rows (Batch), whose positions restart at each sequence."""
    extra = {"position_ids": position_ids} if position_ids is not None else {}
    split = _body_and_head(model) if keep is not None else None
    if split is None:
        with autocast:
            out = model(input_ids=inp, use_cache=False, **extra)
        logits = out.logits.float()
    else:
        body, head = split
        assert keep is not None
        with autocast:
            hidden = body(input_ids=inp, use_cache=False, **extra).last_hidden_state
            logits = head(hidden[keep]).float()  # [N, vocab]
        tgt = tgt[keep]
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, tgt[..., None])[..., 0] - lse
    ent = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            ent = lse - (probs * logits).sum(-1)
    if split is not None:
        assert keep is not None
        full = torch.zeros(keep.shape, dtype=logp.dtype, device=logp.device)
        logp = full.masked_scatter(keep, logp)
        if ent is not None:
            ent = torch.zeros(keep.shape, dtype=ent.dtype, device=ent.device).masked_scatter(keep, ent)
    return logp, ent


# What one more micro-batch costs, in padded tokens: a forward + backward has a fixed part (per-op
# overhead) besides its per-token work. Measured on erl-tiny, bf16, one
# thread of a Xeon with AMX: 32 datums of 66-112 tokens took 279 ms as one micro-batch (3,584 padded
# tokens), 237 ms as three (2,876) and 282 ms as eight (2,752, no padding): about 0.075 ms a token and
# 9.5 ms a micro-batch, so a micro-batch is worth about 128 tokens there; on larger models a token
# costs more and this is conservative (fewer splits than the optimum, never more).
MICROBATCH_COST_TOKENS = 128
# At most this many datums per micro-batch, which bounds the planner's work (datums x this).
MICROBATCH_MAX_ROWS = 256


def plan_micro_batches(lengths: list[int], budget: int, ids: list[int] | None = None) -> list[list[int]]:
    """Splits datums sorted by length (longest first) into consecutive micro-batches minimising padded
    tokens (rows x the group's longest) plus MICROBATCH_COST_TOKENS per micro-batch, each within
    `budget` padded tokens and MICROBATCH_MAX_ROWS datums (a datum longer than the budget goes alone).
    Returns groups of `ids` (default: positions in `lengths`). Dynamic programming over the sorted order, whose optimum is contiguous."""
    n = len(lengths)
    ids = list(range(n)) if ids is None else ids
    if any(lengths[i] < lengths[i + 1] for i in range(n - 1)):
        raise ValueError("plan_micro_batches: lengths must be sorted longest first")
    inf = float("inf")
    best = [inf] * (n + 1)  # best[i]: cost of planning datums i..n-1
    cut = [n] * (n + 1)
    best[n] = 0.0
    for i in range(n - 1, -1, -1):
        longest = max(lengths[i], 1)
        most = max(1, min(MICROBATCH_MAX_ROWS, budget // longest))  # rows under the budget
        for j in range(i + 1, min(n, i + most) + 1):
            c = (j - i) * longest + MICROBATCH_COST_TOKENS + best[j]
            if c < best[i]:
                best[i], cut[i] = c, j
    groups, i = [], 0
    while i < n:
        groups.append(ids[i:cut[i]])
        i = cut[i]
    return groups


def pack_rows(lengths: list[int], ids: list[int] | None = None) -> list[list[int]]:
    """Packs datums into rows no longer than the longest datum, first fit in order of decreasing length
    (`ids`: the datums' own ids, default positions in `lengths`). Each row is a list of datum ids, laid
    end to end; rows come back longest first, as plan_micro_batches wants them."""
    ids = list(range(len(lengths))) if ids is None else ids
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cap = max(lengths, default=0)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(ids[i])
                room[r] -= lengths[i]
                break
        else:
            rows.append([ids[i]])
            room.append(cap - lengths[i])
    filled = [cap - free for free in room]
    return [rows[r] for r in sorted(range(len(rows)), key=lambda r: -filled[r])]


class Batch:
    """A padded micro-batch: tensors [b, T]. Each row holds one datum, or with packing several laid end
    to end (`rows`), whose positions restart at 0 so that attention stays within each (transformers
    builds the block-diagonal causal mask from the position ids). `place[i]` = (row, offset) of datum i."""

    def __init__(self, datums: list[dict[str, Any]], indices: list[int], device: torch.device, need_rl: bool,
                 rows: list[list[int]] | None = None):
        if rows is None:
            rows = [[i] for i in indices]
        # No indices: a one-token, zero-weight padding batch (a rank with fewer micro-batches than
        # another still joins every collective).
        lens = [sum(len(datums[i]["inputIds"]) for i in row) for row in rows]
        t = max(lens, default=1)
        b = max(len(rows), 1)
        self.indices = [i for row in rows for i in row]
        self.lengths = [len(datums[i]["inputIds"]) for i in self.indices]
        self.place: dict[int, tuple[int, int]] = {}
        packed = any(len(row) > 1 for row in rows)
        pos = np.zeros((b, t), dtype=np.int64) if packed else None
        inp = np.zeros((b, t), dtype=np.int64)
        tgt = np.zeros((b, t), dtype=np.int64)
        w = np.zeros((b, t), dtype=np.float32)
        adv = np.zeros((b, t), dtype=np.float32)
        old = np.zeros((b, t), dtype=np.float32)
        # The sampler's log-probs where a datum has them (else the old ones: no gap), and which rows do.
        smp = np.zeros((b, t), dtype=np.float32)
        has_smp = np.zeros((b, t), dtype=np.float32)
        for r, row in enumerate(rows):
            o = 0
            for i in row:
                d = datums[i]
                n = len(d["inputIds"])
                self.place[i] = (r, o)
                sl = slice(o, o + n)
                inp[r, sl] = d["inputIds"]
                tgt[r, sl] = d["targetIds"]
                w[r, sl] = d["weights"]
                if pos is not None:
                    pos[r, sl] = np.arange(n)
                if need_rl:
                    adv[r, sl] = d["advantages"]
                    old[r, sl] = d["oldLogprobs"]
                if "samplerLogprobs" in d:
                    smp[r, sl] = d["samplerLogprobs"]
                    has_smp[r, sl] = 1.0
                elif need_rl:
                    smp[r, sl] = d["oldLogprobs"]
                o += n
            if pos is not None and o < t:  # the row's padding continues its last sequence's positions
                pos[r, o:] = np.arange(pos[r, o - 1] + 1, pos[r, o - 1] + 1 + t - o) if o > 0 else np.arange(t - o)
        self.pos = torch.from_numpy(pos).to(device) if pos is not None else None
        self.inp = torch.from_numpy(inp).to(device)
        self.tgt = torch.from_numpy(tgt).to(device)
        self.w = torch.from_numpy(w).to(device)
        self.adv = torch.from_numpy(adv).to(device) if need_rl else None
        self.old = torch.from_numpy(old).to(device) if need_rl else None
        self.smp = torch.from_numpy(smp).to(device)
        self.has_smp = torch.from_numpy(has_smp).to(device)


# Calls whose work is large enough that a change of the CPU's load matters; before them the engine may
# measure its thread count again (autotune.maybe_retune).
HEAVY_METHODS = frozenset({"sample", "forward", "forwardBackward"})
# Calls that leave the weights as they are; any other call clears the sampler's prefix cache
# (prefix_cache.py), whose keys and values the current weights computed.
KEEPS_WEIGHTS = frozenset({"hello", "info", "renderChat", "renderChats", "encode", "decode", "decodeMany",
                           "sample", "forward", "forwardBackward", "saveState", "export"})


class Engine:
    def __init__(self) -> None:
        self.lm: LoadedModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        # Engine ranks under torchrun (see dist.py); None in a single process.
        self.dist = dist.current()
        # What training calls go through: a DDP wrapper, the FSDP2-sharded model, or the model itself.
        self.train_module: torch.nn.Module | None = None
        env_budget = os.environ.get("ERL_ENGINE_MICROBATCH_TOKENS")
        self.microbatch_override: int | None = int(env_budget) if env_budget else None
        self.microbatch_tokens = self.microbatch_override or DEFAULT_MICROBATCH_TOKENS
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "hello": self.hello,
            "info": lambda _p: self.info(),
            "loadModel": self.load_model,
            "renderChat": self.render_chat,
            "renderChats": self.render_chats,
            "encode": self.encode,
            "decode": self.decode,
            "decodeMany": self.decode_many,
            "sample": self.sample,
            "forward": self.forward,
            "forwardBackward": self.forward_backward,
            "optimStep": self.optim_step,
            "saveState": self.save_state,
            "loadState": self.load_state,
            "export": self.export,
        }

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method not in KEEPS_WEIGHTS and self.lm is not None and self.lm.prefix_cache is not None:
            # The sampler's stored keys and values belong to the current weights.
            self.lm.prefix_cache.clear()
        if method in HEAVY_METHODS:
            note = autotune.maybe_retune()
            if note:
                print(note, file=sys.stderr, flush=True)
        return self.methods[method](params)

    # ---- model and info ---------------------------------------------------------------------------

    def need_model(self) -> LoadedModel:
        if self.lm is None:
            raise ProtocolError("no_model", "no model is loaded: call loadModel first")
        return self.lm

    def hello(self, p: dict[str, Any]) -> dict[str, Any]:
        if p["protocolVersion"] != PROTOCOL_VERSION:
            raise ProtocolError(
                "protocol_version",
                f"the client speaks protocol version {p['protocolVersion']} but this engine speaks version "
                f"{PROTOCOL_VERSION}",
            )
        return {"protocolVersion": PROTOCOL_VERSION, "engineVersion": ENGINE_VERSION}

    def info(self) -> dict[str, Any]:
        import transformers

        try:
            import peft

            peft_version: str | None = peft.__version__
        except ImportError:  # peft is only needed for LoRA
            peft_version = None
        lm = self.lm
        total = trainable = 0
        if lm is not None:
            for prm in lm.model.parameters():
                total += prm.numel()
                if prm.requires_grad:
                    trainable += prm.numel()
        memory: dict[str, Any] = {"rssBytes": _rss_bytes()}
        if lm is not None and lm.device.type == "cuda":
            memory["deviceBytes"] = int(torch.cuda.memory_allocated(lm.device))
        out: dict[str, Any] = {
            "protocolVersion": PROTOCOL_VERSION,
            "engineVersion": ENGINE_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": str(lm.device) if lm else ("cuda" if torch.cuda.is_available() else "cpu"),
            "dtype": lm.dtype if lm else "float32",
            "parameters": {"total": total, "trainable": trainable},
            "memory": memory,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "threadsReason": autotune.threads_reason(),
            "cpu": autotune.cpu_summary(),
            "step": self.step,
        }
        if lm is not None:
            out["dtypeReason"] = lm.dtype_reason
        if peft_version:
            out["peft"] = peft_version
        if lm is not None:
            model_info: dict[str, Any] = {"vocabSize": lm.vocab_size, "eosTokenIds": lm.eos_ids}
            if lm.path:
                model_info["path"] = lm.path
            if lm.max_positions is not None:
                model_info["maxPositions"] = lm.max_positions
            out["model"] = model_info
        return out

    def load_model(self, p: dict[str, Any]) -> dict[str, Any]:
        if self.dist is None:
            precheck(p)
            self._release_model()
            self.lm = load(p)
        else:
            self.lm = self._load_on_ranks(p, self.dist)
            self.train_module = self.dist.wrap(self.lm.model, self.lm.device)
        if self.microbatch_override is None:
            # Logits and their softmax are B x T x vocab fp32 tensors, a few of them alive at once.
            by_vocab = LOGITS_BUDGET_BYTES // (4 * 3 * max(self.lm.vocab_size, 1))
            self.microbatch_tokens = max(256, min(DEFAULT_MICROBATCH_TOKENS, by_vocab))
        return self.info()

    def _release_model(self) -> None:
        # Free the old model first: two large models may not fit side by side.
        self.lm = None
        self.optimizer = None
        self.train_module = None
        self.step = 0

    def _load_on_ranks(self, p: dict[str, Any], d: dist.Dist) -> LoadedModel:
        """loadModel on every rank. A rank can fail where the others do not (a path its node does not
        see, memory): each collective (the dtype vote here, DDP/FSDP2's set-up after) is preceded by
        agree(), so all ranks fail together, none holding a model, instead of one waiting in a
        collective the others never join."""
        err: BaseException | None = None
        verdict: tuple[str, str] | None = None
        try:
            precheck(p)
            verdict = load_dtype(p)
        except Exception as e:  # noqa: BLE001 - every rank must reach agree()
            err = e
        d.agree(err)  # a refused request keeps the current model, as in one process
        self._release_model()
        # Every rank must compute in the same dtype: rank 0's measurement decides for all.
        dtype = d.all_gather(verdict)[0]
        lm: LoadedModel | None = None
        try:
            d.maybe_fault("loadModel")
            lm = load(p, dtype)
        except Exception as e:  # noqa: BLE001 - every rank must reach agree()
            err = e
        d.agree(err)
        assert lm is not None
        return lm

    # ---- tokenizer --------------------------------------------------------------------------------

    def render_chat(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ids": tokenizing.render_chats(self.need_model().tokenizer, [p], ["params"])[0]}

    def render_chats(self, p: dict[str, Any]) -> dict[str, Any]:
        """renderChat for many conversations in one call (one round trip per turn of a batch)."""
        paths = [f"params.chats[{i}]" for i in range(len(p["chats"]))]
        return {"ids": tokenizing.render_chats(self.need_model().tokenizer, p["chats"], paths)}

    def encode(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        return {"ids": tokenizing.encode(lm.tokenizer, p["text"], p.get("addSpecialTokens", False))}

    def decode(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        ids = p["ids"]
        self._check_ids(ids, "params.ids")
        return {"text": tokenizing.decode(lm.tokenizer, ids.tolist(), p.get("skipSpecialTokens", False))}

    def decode_many(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        for i, ids in enumerate(p["seqs"]):
            self._check_ids(ids, f"params.seqs[{i}]")
        skip = p.get("skipSpecialTokens", False)
        return {"texts": [tokenizing.decode(lm.tokenizer, ids.tolist(), skip) for ids in p["seqs"]]}

    def _check_ids(self, ids: np.ndarray, path: str) -> None:
        lm = self.need_model()
        if ids.size and (ids.min() < 0 or ids.max() >= lm.vocab_size):
            i = int(np.flatnonzero((ids < 0) | (ids >= lm.vocab_size))[0])
            raise bad(f"{path}[{i}]", f"token id {int(ids[i])} is outside the vocabulary [0, {lm.vocab_size})")

    # ---- sampling and scoring ---------------------------------------------------------------------

    def sample(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        d = self.dist
        if d is None:
            seqs = sampler.sample(lm, p)
        else:
            # Contiguous blocks of prompts; each sequence keeps its global row for its random draws.
            n_prompts, n = len(p["prompts"]), p["n"]
            lo, hi = d.block(n_prompts)
            err: BaseException | None = None
            local: list[dict[str, Any]] = []
            try:
                if d.mode == "fsdp":
                    raise ProtocolError(
                        "bad_request",
                        "sample: the engine's own sampler does not run on FSDP2-sharded weights; "
                        'use sampler "vllm" (docs/scaling.md) or ERL_ENGINE_PARALLEL=ddp',
                    )
                d.maybe_fault("sample")
                if hi > lo:
                    sub = {**p, "prompts": p["prompts"][lo:hi]}
                    local = sampler.sample(lm, sub, row_offset=lo * n, total_rows=n_prompts * n)
                    for s in local:
                        s["promptIndex"] += lo
            except Exception as e:  # noqa: BLE001 - every rank must reach agree()
                err = e
            d.agree(err)
            seqs = [s for part in d.all_gather(local) for s in part]
        for s in seqs:
            s["logprobs"] = pack_f32(np.asarray(s["logprobs"], dtype=np.float32))
        return {"sequences": seqs}

    def _check_datums(self, datums: list[dict[str, Any]], need_rl: bool) -> None:
        lm = self.need_model()
        for i, d in enumerate(datums):
            n = len(d["inputIds"])
            for key in ("targetIds", "weights", "advantages", "oldLogprobs", "samplerLogprobs"):
                if key in d and len(d[key]) != n:
                    raise bad(f"params.datums[{i}].{key}", f"has {len(d[key])} values but inputIds has {n}")
            if need_rl:
                for key in ("advantages", "oldLogprobs"):
                    if key not in d:
                        raise bad(f"params.datums[{i}].{key}", "required by this loss")
            self._check_ids(d["inputIds"], f"params.datums[{i}].inputIds")
            self._check_ids(d["targetIds"], f"params.datums[{i}].targetIds")
            if lm.max_positions is not None and n > lm.max_positions:
                raise bad(f"params.datums[{i}].inputIds", f"{n} tokens exceed the model's {lm.max_positions} positions")

    def _plan(self, datums: list[dict[str, Any]], method: str, pack: bool = False) -> list[list[list[int]]]:
        """This rank's micro-batches, each a list of rows of datum indices (one datum per row, or several
        with `pack`); under torchrun every rank gets as many (padding with empty ones), and packing is
        not used there."""
        d = self.dist
        if d is None:
            return self._micro_batches(datums, pack=pack)
        err: BaseException | None = None
        groups: list[list[list[int]]] = []
        try:
            d.maybe_fault(method)
            groups = self._micro_batches(datums, d.shard_by_tokens([len(x["inputIds"]) for x in datums]))
        except Exception as e:  # noqa: BLE001 - every rank must reach agree()
            err = e
        d.agree(err)
        count = d.max_int(len(groups))
        return groups + [[] for _ in range(count - len(groups))]

    def _micro_batches(self, datums: list[dict[str, Any]], subset: list[int] | None = None,
                       pack: bool = False) -> list[list[list[int]]]:
        """Datums grouped into micro-batches of at most `microbatch_tokens` padded tokens each (a longer
        datum goes alone), split where that saves padding: see plan_micro_batches. With `pack`, datums
        are first laid end to end in rows (pack_rows) and the rows are planned instead."""
        pool = list(range(len(datums)) if subset is None else subset)
        if pack:
            rows = pack_rows([len(datums[i]["inputIds"]) for i in pool], pool)
            lengths = [sum(len(datums[i]["inputIds"]) for i in row) for row in rows]
            groups = plan_micro_batches(lengths, self.microbatch_tokens)
            return [[rows[k] for k in g] for g in groups]
        order = sorted(pool, key=lambda i: -len(datums[i]["inputIds"]))
        groups = plan_micro_batches([len(datums[i]["inputIds"]) for i in order], self.microbatch_tokens, order)
        return [[[i] for i in g] for g in groups]

    @torch.no_grad()
    def forward(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        datums = p["datums"]
        temperature = p.get("temperature", 1.0)
        self._check_datums(datums, False)
        result: list[Any] = [None] * len(datums)
        plan = self._plan(datums, "forward", pack=p.get("pack", False))
        # DDP needs no collective without gradients: its inner model is used directly.
        model = self.train_module if (self.dist and self.dist.mode == "fsdp") else lm.model
        assert model is not None
        was_training = lm.model.training
        lm.model.eval()
        err: BaseException | None = None
        try:
            for idx in plan:
                if self.dist is not None:
                    self.dist.maybe_fault("forward/batch")
                b = Batch(datums, [], lm.device, False, rows=idx)
                logp, _ = token_logprobs(model, b.inp, b.tgt, lm.autocast(), temperature=temperature,
                                         position_ids=b.pos)
                logp_np = logp.cpu().numpy()
                for di, n in zip(b.indices, b.lengths):
                    r, o = b.place[di]
                    result[di] = pack_f32(logp_np[r, o: o + n])
        except Exception as e:
            # Under DDP these micro-batches issue no collective: a rank that fails in one (out of memory,
            # say) meets the others at agree() below. Under FSDP2 each forward is full of collectives.
            if self.dist is None or self.dist.mode == "fsdp":
                raise
            err = e
        finally:
            lm.model.train(was_training)
            if self.dist is not None and self.dist.mode == "fsdp":
                dist.reshard(lm.model)
        if self.dist is not None:
            self.dist.agree(err)
            mine = {di: result[di] for idx in plan for row in idx for di in row}
            for part in self.dist.all_gather(mine):
                for di, lp in part.items():
                    result[di] = lp
        return {"logprobs": result}

    def forward_backward(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        datums = p["datums"]
        lc = p["loss"]
        # Absent keys keep LossSpec's defaults (the engine's only loss defaults).
        spec = LossSpec(
            name=lc["name"],
            **{field: lc[key] for key, field in _LOSS_FIELDS.items() if key in lc},
        )
        need_rl = spec.name != "cross_entropy"
        if spec.tis_cap is not None and not need_rl:
            raise bad("params.loss.tisCap", "truncated importance sampling applies to the RL losses only")
        self._check_datums(datums, need_rl)
        if spec.kl_coef and lm.reference_kind is None:
            raise bad("params.loss.klCoef", "a KL term needs a frozen reference: load the model with `reference`")
        # One divisor for the whole call (or the caller's, for a batch split over several calls), so
        # micro-batching does not change the gradient.
        norm = spec.normalizer
        if norm is None:
            norm = spec.normalizer = default_normalizer([d["weights"] for d in datums], spec.aggregation)

        # forwardOnly: the same loss and metrics without gradients (eval mode, nothing accumulates);
        # returnLogprobs: each datum's per-target log-probs too (the Tinker front, erl_tinker/server.py).
        forward_only = bool(p.get("forwardOnly"))
        if forward_only and self.dist is not None:
            raise bad("params.forwardOnly", "not available under engine ranks")
        logprobs_out: list[Any] | None = [None] * len(datums) if p.get("returnLogprobs") else None
        acc = LossMetrics()
        total_loss = 0.0
        plan = self._plan(datums, "forwardBackward", pack=p.get("pack", False))
        d = self.dist
        train = self.train_module if self.train_module is not None else lm.model
        # DDP and FSDP2 average gradients over ranks; the loss divisor is already global.
        scale = float(d.world) if d is not None else 1.0
        lm.model.train(not forward_only)
        try:
            for k, idx in enumerate(plan):
                b = Batch(datums, [], lm.device, need_rl, rows=idx)
                # DDP all-reduces once per call, at its last micro-batch (the others accumulate locally).
                no_sync = d is not None and d.mode == "ddp" and k < len(plan) - 1
                grad = torch.no_grad() if forward_only else contextlib.nullcontext()
                with grad, train.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
                    # Only the weighted positions enter the loss and the metrics; under DDP/FSDP2 the
                    # wrapped module must run its own forward (its hooks), so it computes every position,
                    # and so does a call that returns every position's log-prob.
                    keep = (b.w != 0) if d is None and logprobs_out is None else None
                    if keep is not None and b.old is not None:
                        # Positions left out come back as log-prob 0; their old log-probs go to 0 too, so
                        # their (weight-0) ratios stay finite instead of 0 * inf.
                        b.old = torch.where(keep, b.old, 0.0)
                        b.smp = torch.where(keep, b.smp, 0.0)
                    logp, ent = token_logprobs(
                        train, b.inp, b.tgt, lm.autocast(), with_entropy=True, temperature=spec.temperature,
                        keep=keep, position_ids=b.pos,
                    )
                    ref_logp = None
                    if spec.kl_coef:
                        with torch.no_grad(), lm.reference_model() as ref:
                            ref_logp, _ = token_logprobs(ref, b.inp, b.tgt, lm.autocast(), temperature=spec.temperature,
                                                         keep=keep, position_ids=b.pos)
                    loss, diag = compute_loss(spec, logp, b.w, b.adv, b.old, ref_logp, b.smp)
                    if not forward_only:
                        (loss * scale if scale != 1.0 else loss).backward()
                total_loss += float(loss.detach())
                acc.add(b.w != 0, logp.detach(), ent, diag, b.w, norm)
                acc.add_mismatch((b.w != 0) & (b.has_smp != 0), logp.detach(), b.smp)
                if logprobs_out is not None:
                    logp_np = logp.detach().float().cpu().numpy()
                    for di, n in zip(b.indices, b.lengths):
                        r, o = b.place[di]
                        logprobs_out[di] = pack_f32(logp_np[r, o: o + n])
        finally:
            lm.model.eval()
        if d is not None:
            parts = d.all_gather((total_loss, acc))
            total_loss = sum(x[0] for x in parts)
            acc = LossMetrics.merged([x[1] for x in parts])
        metrics = acc.result()
        metrics["loss"] = total_loss
        metrics["sequences"] = float(len(datums))
        metrics["normalizer"] = norm
        metrics["grad_norm"] = self._grad_norm()
        out: dict[str, Any] = {"loss": total_loss, "metrics": metrics}
        if logprobs_out is not None:
            if d is not None:
                mine = {di: logprobs_out[di] for idx in plan for row in idx for di in row}
                for part in d.all_gather(mine):
                    for di, lp in part.items():
                        logprobs_out[di] = lp
            out["logprobs"] = logprobs_out
        return out

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.need_model().model.parameters() if p.requires_grad]

    def _grad_norm(self) -> float:
        grads = [p.grad for p in self._trainable() if p.grad is not None]
        if not grads:
            return 0.0
        if any(dist.is_dtensor(g) for g in grads):  # FSDP2 shards: the norm of the whole gradient
            return float(dist.full(torch.nn.utils.get_total_norm(grads)))
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    # ---- optimizer --------------------------------------------------------------------------------

    def make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self._trainable(), lr=0.0)
        return self.optimizer

    def optim_step(self, p: dict[str, Any]) -> dict[str, Any]:
        self.need_model()
        opt = self.make_optimizer()
        betas = p.get("betas", [0.9, 0.999])
        for g in opt.param_groups:
            g["lr"] = p["lr"]
            g["betas"] = (betas[0], betas[1])
            g["eps"] = p.get("eps", 1e-8)
            g["weight_decay"] = p.get("weightDecay", 0.01)
        params = self._trainable()
        clip = p.get("gradClip", math.inf)
        if self.dist is not None:
            err: BaseException | None = None
            try:
                self.dist.maybe_fault("optimStep")
            except Exception as e:  # noqa: BLE001 - every rank must reach agree()
                err = e
            self.dist.agree(err)
        grad_norm = float(dist.full(torch.nn.utils.clip_grad_norm_(params, max_norm=clip))) if params else 0.0
        metrics: dict[str, float] = {"lr": p["lr"], "grad_norm": grad_norm}
        if not math.isfinite(grad_norm):
            # A non-finite gradient would poison the weights and the Adam moments: skip the update.
            opt.zero_grad(set_to_none=True)
            metrics["skipped"] = 1.0
            return {"gradNorm": grad_norm if math.isfinite(grad_norm) else -1.0, "metrics": metrics}
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step += 1
        metrics["step"] = float(self.step)
        metrics["clipped"] = 1.0 if grad_norm > clip else 0.0
        return {"gradNorm": grad_norm, "metrics": metrics}

    # ---- checkpoints ------------------------------------------------------------------------------

    def save_state(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        # Full tensors (a collective under FSDP2); only rank 0 writes, in the single-process format.
        trainable = {n: dist.full(q.detach()).cpu() for n, q in lm.model.named_parameters() if q.requires_grad}
        opt_state = self.full_optimizer_state()
        if self.dist is None or self.dist.rank == 0:
            checkpoint.save_state(self, p["dir"], trainable, opt_state)
        return {}

    def full_optimizer_state(self) -> dict[str, Any] | None:
        """The optimizer's state_dict with whole tensors (FSDP2 keeps each rank's shard only)."""
        if self.optimizer is None:
            return None
        sd = self.optimizer.state_dict()
        if self.dist is not None and self.dist.mode == "fsdp":
            sd["state"] = {i: {k: dist.full(v) for k, v in st.items()} for i, st in sd["state"].items()}
        return sd

    def local_like(self, param: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """`whole` laid out like `param`: this rank's shard of it under FSDP2, else itself."""
        if not dist.is_dtensor(param):
            return whole
        from torch.distributed.tensor import distribute_tensor

        mesh, placements = param.device_mesh, param.placements  # type: ignore[attr-defined]
        return distribute_tensor(whole, mesh, placements, src_data_rank=None)

    def load_state(self, p: dict[str, Any]) -> dict[str, Any]:
        checkpoint.load_state(self, p["dir"])
        return {"step": self.step}

    def export(self, p: dict[str, Any]) -> dict[str, Any]:
        lm = self.need_model()
        if self.dist is None or self.dist.mode == "ddp":
            if self.dist is None or self.dist.rank == 0:
                checkpoint.export(lm, p["dir"], merge_lora=p.get("mergeLora", False))
            return {}
        if p.get("mergeLora") and lm.lora:
            raise bad("params.mergeLora", "merging LoRA is not available on FSDP2-sharded weights; export the adapter")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(lm.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.dist.rank == 0:
            checkpoint.export(lm, p["dir"], merge_lora=False, state_dict=state)
        return {}


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

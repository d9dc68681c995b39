"""Batched sampling with a KV cache: many prompts of different lengths, n samples each.

Prompts are left-padded into one batch (attention mask + explicit position ids), prefilled once each,
and the prompt's KV cache is repeated for its n samples, so the prompt is never recomputed per
sample. Rows that finish (a stop token, a stop string, or max tokens) are dropped from the batch and
the cache at once, so the remaining rows decode at the cost of their own number.

Prefill and decoding have two implementations with the same results (up to float rounding): for
Llama-family models (llama, mistral, qwen2, qwen3) a hand-rolled pass over the model's own modules (so
LoRA adapters apply) with a preallocated KV cache: the prefill runs the prompts' tokens packed, without
their left padding, through the projections and MLPs, and writes their keys and values straight into
the cache; each decode step writes one column and attends with SDPA (or, for float32 on a CPU, two
batched matmuls), with no per-step cache concatenation or mask building. For every other causal LM,
the model's own forward with a DynamicCache.

On the fast path, a prompt that starts with a sequence of an earlier call (the next turn of an
episode) reuses that sequence's keys and values and prefills only its new tokens (prefix_cache.py).

Returned log-probs are the model's log-probs of each sampled token: log-softmax of the logits divided
by the request's `logprobTemperature` (default 1, the raw distribution), with no top-k/top-p
truncation, so they equal `forward`'s log-probs of the same tokens at the same temperature.
One torch.Generator seeded with the request's seed draws one uniform per sequence and step, so the
same request with the same seed gives the same tokens (on the same device and dtype), and a sequence's
draws do not depend on which other sequences are still decoding. With ERL_ENGINE_SAMPLE_SEEDS=per-prompt
each prompt has its own generator instead (seeds.py), as a Tinker service's one-prompt requests do.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import autotune, seeds
from .model import LoadedModel
from .prefix_cache import PrefixCache, budget_from_env
from .protocol import ProtocolError

# Model types whose decoder layers have the Llama layout (pre-norm, q/k/v/o projections, rotary
# embeddings with rotate-half, a gated MLP); these decode on the fast path.
FAST_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
# Tests switch this off to check that both paths agree.
FAST_DECODE = True
# Identical prompts in one request (a task's samples sent as separate rows) are prefilled once and
# their cache rows copied; tests switch this off to check that the results do not change.
DEDUP_PROMPTS = True
# Prompts that start with a finished sequence of an earlier call (the next turn of an episode) reuse
# its keys and values (prefix_cache.py); tests switch this off to compare.
REUSE_PREFIXES = True


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Scaled logits with everything outside top-k / the top-p nucleus set to -inf."""
    x = logits / temperature
    vocab = x.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p (the first is always kept).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x)
    return x


def choose_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    u: torch.Tensor,
) -> torch.Tensor:
    """One token per row by inverse-CDF sampling with the given uniforms u in [0, 1) (one per row).

    One uniform per row and step (rather than torch.multinomial over the current batch) makes a
    sequence's draws depend only on the seed, its row and the step: not on which other rows are
    still in the batch.
    """
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    cdf = probs.cumsum(dim=-1)
    # right=True: the first index whose cdf exceeds the target, so a zero-probability token (a flat
    # step of the cdf) is never chosen, not even for u = 0.
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


class StopStrings:
    """Detects a stop string in the text of a row's newest tokens (decoding only a short tail)."""

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = stops
        # A stop string of k characters spans at most k tokens, plus a few for multi-byte pieces.
        self.window = max(len(s) for s in stops) + 4

    def hit(self, tokens: list[int]) -> bool:
        tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=False)
        return any(s in tail for s in self.stops)


def _free_bytes(device: torch.device) -> int | None:
    """Memory the device has free now: CUDA's own count, or the kernel's MemAvailable for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _check_memory(lm: LoadedModel, rows: int, width: int) -> None:
    """Refuses a call whose keys, values and logits cannot fit in the device's free memory, before any
    of it is allocated: rows x width positions x (layers x 2 x kv heads x head dim) elements, plus each
    row's logits, log-probs and probabilities over the vocabulary (the run's limits, src/train/limits.ts,
    keep a run's calls under half of a CPU machine's memory before it starts)."""
    cfg = getattr(lm.model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // heads if heads else None)
    if not (isinstance(layers, int) and isinstance(kv_heads, int) and isinstance(head_dim, int)):
        return
    element = 2 if lm.dtype == "bfloat16" else 4
    need = rows * (width * layers * 2 * kv_heads * head_dim * element + lm.vocab_size * 12)
    free = _free_bytes(lm.device)
    if free is not None and need > free:
        gib = 1 << 30
        raise ProtocolError(
            "bad_request",
            f"sample: {rows} sequences of up to {width} positions need {need / gib:.1f} GiB of keys, values and "
            f"logits; the {lm.device.type} device has {free / gib:.1f} GiB free. Sample fewer at once "
            "(lower batchSize, algo.n, eval.n or the token limits)",
        )


@torch.no_grad()
def sample(
    lm: LoadedModel, req: dict[str, Any], row_offset: int = 0, total_rows: int | None = None
) -> list[dict[str, Any]]:
    """`row_offset` / `total_rows`: this call's rows within a larger request split over engine ranks, so
    that each sequence draws the uniforms it would draw in one process."""
    model = lm.model
    dev = lm.device
    prompts: list[np.ndarray] = req["prompts"]
    n: int = req["n"]
    max_tokens: int = req["maxTokens"]
    temperature: float = req["temperature"]
    top_k: int | None = req.get("topK")
    top_p: float | None = req.get("topP")
    lp_temperature: float = req.get("logprobTemperature", 1.0)
    for i, p in enumerate(prompts):
        if p.min() < 0 or p.max() >= lm.vocab_size:
            bad_id = int(p[(p < 0) | (p >= lm.vocab_size)][0])
            raise ProtocolError(
                "bad_request", f"params.prompts[{i}]: token id {bad_id} is outside the vocabulary [0, {lm.vocab_size})"
            )
    stop_ids = set(lm.eos_ids)
    extra = req.get("stopTokenIds")
    if extra is not None and extra.size:
        if extra.min() < 0 or extra.max() >= lm.vocab_size:
            raise ProtocolError("bad_request", f"params.stopTokenIds: ids must be in [0, {lm.vocab_size})")
        stop_ids.update(int(x) for x in extra)
    longest = max(len(p) for p in prompts)
    if lm.max_positions is not None and longest + max_tokens > lm.max_positions:
        raise ProtocolError(
            "bad_request",
            f"params.maxTokens: longest prompt ({longest}) + maxTokens ({max_tokens}) exceeds the model's "
            f"{lm.max_positions} positions",
        )
    _check_memory(lm, len(prompts) * n, longest + max_tokens)
    stops = StopStrings(lm.tokenizer, req["stopStrings"]) if req.get("stopStrings") else None

    n_prompts = len(prompts)
    # src[i]: the prefill row of prompt i (identical prompts share one row when DEDUP_PROMPTS).
    first: dict[bytes, int] = {}
    src = [first.setdefault(p.tobytes(), len(first)) if DEDUP_PROMPTS else i for i, p in enumerate(prompts)]
    n_unique = max(src) + 1
    unique = [prompts[src.index(u)] for u in range(n_unique)] if n_unique < n_prompts else prompts
    pad = 0
    ids = torch.full((len(unique), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(unique), longest), dtype=torch.long)
    for i, p in enumerate(unique):
        ids[i, longest - len(p) :] = torch.from_numpy(p)
        mask[i, longest - len(p) :] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    was_training = model.training
    model.eval()
    try:
        parts = _FastDecoder.layout(lm) if FAST_DECODE else None
        store: PrefixCache | None = None
        hits: list[tuple[int, int] | None] | None = None
        if parts is not None and REUSE_PREFIXES:
            if lm.prefix_cache is None:
                lm.prefix_cache = PrefixCache(budget_from_env())
            store = lm.prefix_cache if lm.prefix_cache.enabled else None
        if parts is not None:
            fast: _FastDecoder | None = _FastDecoder(lm, *parts, mask, longest + max_tokens)
            reuse = None
            if store is not None:
                hits = [store.lookup(p) for p in unique]
                reuse = [None if h is None else (store.get(h[0]), h[1]) for h in hits]
            with lm.autocast():
                logits = fast.prefill(unique, reuse)
            next_pos = mask.sum(-1)
            cache = None
        else:
            fast = None
            logits, cache, next_pos = _model_prefill(lm, ids, mask, pos)
        if n_unique < n_prompts or n > 1:
            rows = torch.tensor(src, device=dev).repeat_interleave(n)
            logits, mask, next_pos = logits[rows], mask[rows], next_pos[rows]
            if fast is not None:
                fast.select(rows)
            else:
                cache.batch_select_indices(rows)

        total = n_prompts * n
        draws = total_rows if total_rows is not None else total
        uniforms = _uniforms(req["seed"], draws, n, row_offset, total, dev)
        state = _Rows(total, max_tokens, stop_ids, stops)
        saved: set[int] = set()  # sequences already stored in the prefix cache
        row_ids = torch.arange(total, device=dev)  # the sequence of each batch row (zombies included)
        step = fast.step if fast is not None else _generic_step(lm, cache)
        # One autocast region around the whole loop: autocast caches the bf16 copies of the weights
        # until the region ends, instead of re-casting every weight at every step.
        with lm.autocast():
            for _ in range(max_tokens):
                raw = torch.log_softmax(logits if lp_temperature == 1.0 else logits / lp_temperature, dim=-1)
                u = uniforms()[row_ids]
                nxt = choose_tokens(logits, temperature, top_k, top_p, u)
                lp = raw.gather(1, nxt[:, None])[:, 0]
                keep = state.record(nxt.tolist(), lp.tolist())
                if not keep:
                    break
                finished = len(state.active) - len(keep)
                # Dropping rows copies the whole cache; on the fast path finished rows ride along as
                # ignored "zombies" until a quarter of the batch is done, then the batch is compacted.
                if finished and (fast is None or finished * 4 >= len(state.active)):
                    if store is not None and fast is not None:
                        kept = set(keep)
                        gone = [j for j in range(len(state.active)) if j not in kept]
                        _store_rows(store, fast, gone, row_ids, prompts, n, state, saved)
                    idx = torch.tensor(keep, device=dev)
                    mask, next_pos, nxt, row_ids = mask[idx], next_pos[idx], nxt[idx], row_ids[idx]
                    if fast is not None:
                        fast.select(idx)
                    else:
                        cache.batch_select_indices(idx)
                    state.active = [state.active[j] for j in keep]
                elif finished:
                    live = set(keep)
                    state.active = [r if j in live else None for j, r in enumerate(state.active)]
                if fast is None:
                    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                logits = step(nxt, next_pos, mask)
                next_pos = next_pos + 1
        if store is not None and fast is not None:
            _store_rows(store, fast, list(range(len(row_ids))), row_ids, prompts, n, state, saved)
            # An entry whose every token a new sequence reused is contained in that sequence's entry.
            for h in hits or []:
                if h is not None and h[0] in store.entries and h[1] == len(store.get(h[0]).tokens):
                    store.drop(h[0])
    finally:
        model.train(was_training)
    return [
        {"promptIndex": row // n, "tokens": state.tokens[row], "logprobs": state.logprobs[row],
         "stopReason": state.reasons[row]}
        for row in range(total)
    ]


def _uniforms(
    seed: int, draws: int, n: int, row_offset: int, total: int, dev: torch.device
) -> Callable[[], torch.Tensor]:
    """The next step's uniforms for this call's rows [0, total), one per row.

    per-call (default): one generator seeded with `seed` draws `draws` uniforms per step (the rows of
    the whole request, when it is split over engine ranks) and row r takes number row_offset + r.
    per-prompt (ERL_ENGINE_SAMPLE_SEEDS): prompt i of the request draws its n uniforms per step from
    its own generator seeded with seeds.prompt_seed(seed, i), as a call with that prompt alone would.
    """
    if seeds.sample_seed_mode() == "per-call":
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
        return lambda: torch.rand(draws, generator=gen, device=dev)[row_offset : row_offset + total]
    first = row_offset // n
    gens = []
    for i in range(first, first + total // n):
        g = torch.Generator(device=dev)
        g.manual_seed(seeds.prompt_seed(seed, i))
        gens.append(g)
    return lambda: torch.cat([torch.rand(n, generator=g, device=dev) for g in gens])


def _store_rows(store: PrefixCache, fast: "_FastDecoder", batch_rows: list[int], row_ids: torch.Tensor,
                prompts: list[np.ndarray], n: int, state: "_Rows", saved: set[int]) -> None:
    """Copies the keys and values of these batch rows' sequences into the prefix cache: the prompt and
    every sampled token but the last (whose keys a decode step may not have computed)."""
    width = fast.prompt_width
    for j in batch_rows:
        seq = int(row_ids[j])
        if seq in saved:
            continue
        saved.add(seq)
        prompt = prompts[seq // n]
        gen = state.tokens[seq][:-1]
        start = width - len(prompt)
        end = width + len(gen)  # a decode step wrote the keys of each sampled token but the last
        tokens = np.concatenate([prompt, np.asarray(gen, dtype=np.int64)]) if gen else prompt
        store.add(tokens, fast.keys[:, j, :, start:end].clone(), fast.values[:, j, :, start:end].clone())


class _Rows:
    """Per-sequence bookkeeping: tokens, log-probs, stop reasons, and which rows are still decoding."""

    def __init__(self, total: int, max_tokens: int, stop_ids: set[int], stops: StopStrings | None):
        self.tokens: list[list[int]] = [[] for _ in range(total)]
        self.logprobs: list[list[float]] = [[] for _ in range(total)]
        self.reasons = ["length"] * total
        # Batch position -> sequence index; None marks a finished row still in the batch.
        self.active: list[int | None] = list(range(total))
        self.max_tokens = max_tokens
        self.stop_ids = stop_ids
        self.stops = stops

    def record(self, toks: list[int], lps: list[float]) -> list[int]:
        """Appends one token per active row; returns the batch positions of rows that continue."""
        keep: list[int] = []
        for j, row in enumerate(self.active):
            if row is None:
                continue
            t = toks[j]
            self.tokens[row].append(t)
            self.logprobs[row].append(lps[j])
            if t in self.stop_ids or (self.stops is not None and self.stops.hit(self.tokens[row])):
                self.reasons[row] = "stop"
            elif len(self.tokens[row]) < self.max_tokens:
                keep.append(j)
        return keep


def _model_prefill(
    lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """The prompts through the model's own forward with a DynamicCache (every model type): the last
    position's logits, the cache, and the next position of each row."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=lm.model.config)
    except TypeError:  # transformers 4.x: no config argument
        cache = DynamicCache()
    with lm.autocast():
        out = lm.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1, :].float(), out.past_key_values, pos[:, -1] + 1


def _generic_step(lm: LoadedModel, cache: Any) -> Any:
    def step(tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = lm.model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None],
                       past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :].float()

    return step


def _rms_norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """The Llama-family RMSNorm (weight * x / rms(x), in fp32) as one fused op."""
    return F.rms_norm(x.float(), (x.shape[-1],), module.weight.float(), module.variance_epsilon)


# Pre-packed weights for the CPU's matmul libraries (oneDNN for bf16, MKL for fp32): a weight is
# re-laid out once per request instead of inside every matmul call, which on decode-sized inputs
# (tens of rows) is 12-40% of a projection's time. Tests switch this off to compare.
PACK_WEIGHTS = True
# Rows the packed layouts are tuned for (a hint only: any row count works).
_PACK_ROWS = 64


def _prepacked(w: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x -> x @ w.T + bias through a weight pre-packed for this CPU's matmul library, or None where this
    CPU or torch build cannot (the op is missing or refuses, e.g. oneDNN's bf16 packing without AVX-512 or
    AVX-NE-CONVERT; it disagrees with F.linear on a probe; or $ERL_ENGINE_CPU_BF16=off for bf16)."""
    if not PACK_WEIGHTS or w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16):
        return None
    if w.dtype == torch.bfloat16 and autotune.cpu_bf16_off():
        return None
    try:
        if w.dtype == torch.bfloat16:
            packed_bf16 = torch.ops.mkldnn._reorder_linear_weight(w, _PACK_ROWS)

            def packed(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.mkldnn._linear_pointwise(x, packed_bf16, bias, "none", [], "")
        else:
            packed_fp32 = torch.ops.mkl._mkl_reorder_linear_weight(w, _PACK_ROWS)

            def packed(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.mkl._mkl_linear(x, packed_fp32, w, bias, _PACK_ROWS)

        probe = torch.randn((3, w.shape[1]), generator=torch.Generator().manual_seed(0)).to(w.dtype)
        tol = 1e-2 if w.dtype == torch.bfloat16 else 1e-4
        plain = F.linear(probe, w, bias)
        if not torch.allclose(packed(probe).float(), plain.float(), atol=tol, rtol=tol):
            return None
    except (RuntimeError, AttributeError, NotImplementedError):  # a torch build or CPU without these ops
        return None
    return packed


def prepacking_works(dtype: torch.dtype) -> bool:
    """Whether `_linear` pre-packs weights of this dtype on this machine (the same probe it runs)."""
    w = torch.randn((48, 32), generator=torch.Generator().manual_seed(1)).to(dtype)
    return _prepacked(w, None) is not None


def _linear(w: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> x @ w.T + bias, through a pre-packed weight where this CPU supports it (`_prepacked`),
    otherwise F.linear itself."""

    def plain(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, bias)

    return _prepacked(w, bias) or plain


class _FastDecoder:
    """Prefill and one-token decode steps for Llama-layout models over a preallocated KV cache.

    The cache is [layers, rows, kv_heads, capacity, head_dim] with the prompts left-padded to the
    longest (column c of every row is the same step), an additive bias masking the padding. The
    prefill runs the prompts' tokens packed, without their padding, through the projections and MLPs;
    only the attention sees the padded layout.
    """

    # The cache is kept in the compute dtype and the decode step attends with PyTorch's fused attention
    # (SDPA), except for float32 on a CPU, where one-query SDPA is slower than two batched matmuls.
    # Tests switch this on to run the fp32 matmul attention with a bf16 model.
    FP32_CACHE_ON_CPU = False

    @staticmethod
    def layout(lm: LoadedModel) -> tuple[Any, Any, Any] | None:
        """(base model, its decoder, its layers) when the model has the Llama layout, else None."""
        model = lm.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        inner = getattr(base, "model", None)
        layers = getattr(inner, "layers", None)
        if cfg.model_type not in FAST_MODEL_TYPES or layers is None or getattr(base, "lm_head", None) is None:
            return None
        if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "layer_types", None) and any(
            t != "full_attention" for t in cfg.layer_types
        ):
            return None
        if getattr(inner, "rotary_emb", None) is None or getattr(inner, "embed_tokens", None) is None:
            return None

        def rms_like(m: Any) -> bool:
            return type(m).__name__.endswith("RMSNorm") and hasattr(m, "weight") and hasattr(m, "variance_epsilon")

        if not rms_like(getattr(inner, "norm", None)):
            return None
        for layer in layers:
            attn = getattr(layer, "self_attn", None)
            if attn is None or not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
                return None
            norms = [getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None)]
            norms += [getattr(attn, a) for a in ("q_norm", "k_norm") if hasattr(attn, a)]
            if not all(rms_like(m) for m in norms):
                return None
        return base, inner, layers

    def __init__(self, lm: LoadedModel, base: Any, inner: Any, layers: Any, mask: torch.Tensor, capacity: int):
        self.lm = lm
        self.base = base
        self.inner = inner
        self.layers = layers
        cfg = base.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(layers[0].self_attn, "head_dim", None) or cfg.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        dev = lm.device
        compute = torch.bfloat16 if lm.dtype == "bfloat16" else torch.float32
        self.cache_dtype = torch.float32 if (dev.type == "cpu" and self.FP32_CACHE_ON_CPU) else compute
        self.sdpa_decode = self.cache_dtype != torch.float32 or dev.type != "cpu"
        b, width = mask.shape
        self.keys = torch.zeros((len(layers), b, self.kv_heads, capacity, self.head_dim), dtype=self.cache_dtype,
                                device=dev)
        self.values = torch.zeros_like(self.keys)
        self.filled = width
        self.prompt_width = width
        self.lengths = mask.sum(-1)
        # Additive attention bias: -inf on the prompts' left padding, 0 elsewhere (future slots are
        # never read: a step only attends to the filled columns).
        bias = torch.zeros((b, capacity), dtype=self.cache_dtype, device=dev)
        bias[:, :width] = torch.where(mask.bool(), 0.0, float("-inf"))
        self.bias = bias[:, None, None, :]
        self.fused = self._fuse(lm, layers)
        self._rotary_table(self.keys, capacity + 1)

    @staticmethod
    def _fuse(lm: LoadedModel, layers: Any) -> list[dict[str, Any]] | None:
        """Per layer: q/k/v and gate/up weights concatenated, all cast once to the compute dtype.

        Fewer, larger matmuls and no per-step weight casts under autocast. Only for plain nn.Linear
        layers: LoRA-wrapped projections (peft) keep going through their modules.
        """
        wdt = torch.bfloat16 if lm.dtype == "bfloat16" else torch.float32
        fused = []
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            projs = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
            mlp_projs = [getattr(mlp, a, None) for a in ("gate_proj", "up_proj", "down_proj")]
            if not all(type(m) is torch.nn.Linear for m in projs + mlp_projs) or not hasattr(mlp, "act_fn"):
                return None
            if hasattr(attn, "q_norm"):
                return None  # qwen3: the per-head norms need q and k apart; the module path handles them
            # The softmax scale goes into q's weights (the rotation is linear, so it commutes).
            scale = float(attn.scaling)
            qkv_bias = None
            if attn.q_proj.bias is not None:
                qkv_bias = torch.cat([attn.q_proj.bias * scale, attn.k_proj.bias, attn.v_proj.bias]).to(wdt)
            qkv = torch.cat([attn.q_proj.weight * scale, attn.k_proj.weight, attn.v_proj.weight]).to(wdt)
            o_bias = None if attn.o_proj.bias is None else attn.o_proj.bias.to(wdt)
            fused.append({
                "dtype": wdt,
                "qkv": _linear(qkv, qkv_bias),
                "o": _linear(attn.o_proj.weight.to(wdt), o_bias),
                "gate_up": _linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).to(wdt), None),
                "down": _linear(mlp.down_proj.weight.to(wdt), None),
                "act": mlp.act_fn,
            })
        return fused

    def _rotary_table(self, like: torch.Tensor, size: int) -> None:
        """cos/sin of every position below `size`, from the model's own rotary module (so any rope
        scaling it implements applies), instead of recomputing them at every step. The sin table
        carries rotate_half's sign: rotate_half(x) = roll(x, half) * [-1]*half + [+1]*half."""
        positions = torch.arange(size, device=like.device)[None, :]
        cos, sin = self.inner.rotary_emb(torch.zeros((), device=like.device), positions)
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(self.head_dim - half)]).to(sin.device)
        self.cos, self.sin_signed = cos[0].float(), sin[0].float() * sign

    def select(self, idx: torch.Tensor) -> None:
        self.keys = self.keys.index_select(1, idx)
        self.values = self.values.index_select(1, idx)
        self.bias = self.bias.index_select(0, idx)

    # ---- one layer, for any number of tokens t (the prefill's packed tokens or a step's rows) -----

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [t, hidden] (normed) -> q [t, heads, hd], k [t, kv_heads, hd] (fp32, rotated), v [t, kv_heads,
        hd], and the softmax scale still to apply (1 where it is folded into q's weights)."""
        t, hd = x.shape[0], self.head_dim
        attn = self.layers[i].self_attn
        fw = self.fused[i] if self.fused is not None else None
        if fw is not None:
            qkv = fw["qkv"](x.to(fw["dtype"]))
            nq = self.heads + self.kv_heads
            qk = qkv[:, : nq * hd].reshape(t, nq, hd).float()
            v = qkv[:, nq * hd :].reshape(t, self.kv_heads, hd)
            # Rotary on q and k at once: x*cos + rotate_half(x)*sin, with rotate_half as a roll by
            # half a head and the sign folded into the sin table.
            qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin
            return qk[:, : self.heads], qk[:, self.heads :], v, 1.0
        q = attn.q_proj(x).reshape(t, self.heads, hd)
        k = attn.k_proj(x).reshape(t, self.kv_heads, hd)
        v = attn.v_proj(x).reshape(t, self.kv_heads, hd)
        if hasattr(attn, "q_norm"):  # qwen3 normalises q and k per head before the rotation
            q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
        q, k = q.float(), k.float()
        q = q * cos + q.roll(hd // 2, dims=-1) * sin
        k = k * cos + k.roll(hd // 2, dims=-1) * sin
        return q, k, v, float(attn.scaling)

    def _rest(self, i: int, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The residual stream h after the attention output o [t, heads * hd] and the MLP."""
        layer = self.layers[i]
        fw = self.fused[i] if self.fused is not None else None
        if fw is not None:
            h = h + fw["o"](o.to(fw["dtype"]))
            gate, up = fw["gate_up"](_rms_norm(layer.post_attention_layernorm, h).to(fw["dtype"])).chunk(2, dim=-1)
            return h + fw["down"](fw["act"](gate) * up)
        h = h + layer.self_attn.o_proj(o)
        return h + layer.mlp(_rms_norm(layer.post_attention_layernorm, h))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.base.lm_head(_rms_norm(self.inner.norm, h)).float()

    # ---- prefill --------------------------------------------------------------------------------

    def prefill(self, prompts: list[np.ndarray], reuse: list[tuple[Any, int] | None] | None = None) -> torch.Tensor:
        """Fills the cache with the prompts (one per row, in order); returns their last position's
        logits [rows, vocab]. Runs inside the caller's autocast region.

        `reuse[i]` = (prefix-cache entry, r): the first r tokens of prompt i have their keys and values
        in the entry; they are copied into the cache and only the rest of the prompt is computed."""
        dev, width = self.keys.device, self.filled
        lengths = self.lengths
        done = [0] * len(prompts)
        if reuse is not None:
            for u, hit in enumerate(reuse):
                if hit is None:
                    continue
                entry, r = hit
                if entry.keys.dtype != self.cache_dtype or entry.keys.shape[0] != self.keys.shape[0]:
                    continue
                start = width - len(prompts[u])
                self.keys[:, u, :, start:start + r] = entry.keys[:, :, :r].to(dev)
                self.values[:, u, :, start:start + r] = entry.values[:, :, :r].to(dev)
                done[u] = r
        skip = torch.tensor(done, device=dev)
        todo = lengths - skip  # tokens of each prompt still to compute (at least one)
        rows = torch.repeat_interleave(torch.arange(len(prompts), device=dev), todo)
        starts = torch.cumsum(todo, 0) - todo
        pos = torch.arange(rows.shape[0], device=dev) - starts[rows] + skip[rows]  # position in its prompt
        col = pos + (width - lengths)[rows]  # its column in the left-padded cache
        ids = torch.from_numpy(np.concatenate([p[r:] for p, r in zip(prompts, done)])).to(dev)
        store = self.lm.prefix_cache
        if store is not None:
            store.reused_tokens += sum(done)
            store.prefilled_tokens += int(rows.shape[0])
        # Queries only for the columns that hold a token to compute: from the first such column on.
        q0 = int(col.min())
        # Query column c sees key columns c' <= c that hold a token; a padding column sees only itself
        # (its output is never used, but a row of -inf alone would give NaN).
        valid = self.bias[:, 0, 0, :width] == 0
        causal = torch.ones((width, width), dtype=torch.bool, device=dev).tril()
        seen = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=dev)[None]
        seen = seen[:, None, q0:]
        h = self.inner.embed_tokens(ids)
        cos, sin = self.cos[pos][:, None], self.sin_signed[pos][:, None]
        b = len(prompts)
        qcol = col - q0
        for i, layer in enumerate(self.layers):
            q, k, v, scale = self._qkv(i, _rms_norm(layer.input_layernorm, h), cos, sin)
            self.keys[i, rows, :, col] = k.to(self.cache_dtype)
            self.values[i, rows, :, col] = v.to(self.cache_dtype)
            qp = torch.zeros((b, width - q0, self.heads, self.head_dim), dtype=self.cache_dtype, device=dev)
            qp[rows, qcol] = q.to(self.cache_dtype)
            with torch.autocast(device_type=dev.type, enabled=False):
                out = F.scaled_dot_product_attention(
                    qp.transpose(1, 2), self.keys[i, :, :, :width], self.values[i, :, :, :width],
                    attn_mask=seen, scale=scale, enable_gqa=self.group > 1,
                )
            o = out.transpose(1, 2)[rows, qcol].reshape(rows.shape[0], -1)
            h = self._rest(i, h, o)
        last = torch.cumsum(todo, 0) - 1
        return self._logits(h[last])

    # ---- decode ---------------------------------------------------------------------------------

    def _attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Writes this step's k/v [b, kv_heads, head_dim] into the cache and attends q [b, heads, head_dim]."""
        b, col, n = q.shape[0], self.filled, self.filled + 1
        self.keys[i, :, :, col] = k
        self.values[i, :, :, col] = v
        keys = self.keys[i, :, :, :n]
        vals = self.values[i, :, :, :n]
        if self.sdpa_decode:
            with torch.autocast(device_type=keys.device.type, enabled=False):
                out = F.scaled_dot_product_attention(
                    q.to(keys.dtype)[:, :, None, :], keys, vals, attn_mask=self.bias[..., :n],
                    scale=scale, enable_gqa=self.group > 1,
                )
            return out.reshape(b, -1)
        qg = q.reshape(b, self.kv_heads, self.group, self.head_dim).to(keys.dtype)
        with torch.autocast(device_type=keys.device.type, enabled=False):
            scores = torch.bmm(
                qg.reshape(b * self.kv_heads, self.group, self.head_dim),
                keys.reshape(b * self.kv_heads, n, self.head_dim).transpose(1, 2),
            ).view(b, self.kv_heads, self.group, n)
            if scale != 1.0:
                scores = scores * scale
            scores = (scores + self.bias[..., :n]).view(b * self.kv_heads, self.group, n)
            probs = torch.softmax(scores, dim=-1).to(vals.dtype)
            return torch.bmm(probs, vals.reshape(b * self.kv_heads, n, self.head_dim)).reshape(b, -1)

    def step(self, tok: torch.Tensor, pos: torch.Tensor, _mask: torch.Tensor) -> torch.Tensor:
        # Runs inside the caller's autocast region (see sample()).
        h = self.inner.embed_tokens(tok)  # [b, hidden], fp32 residual stream
        cos, sin = self.cos[pos][:, None], self.sin_signed[pos][:, None]  # [b, 1, head_dim]
        for i, layer in enumerate(self.layers):
            q, k, v, scale = self._qkv(i, _rms_norm(layer.input_layernorm, h), cos, sin)
            h = self._rest(i, h, self._attend(i, q, k, v, scale))
        self.filled += 1
        return self._logits(h)

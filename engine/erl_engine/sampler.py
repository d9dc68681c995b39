"""Batched sampling with a KV cache: many prompts of different lengths, n samples each.

Prompts are left-padded into one batch (attention mask + explicit position ids), prefilled once each,
and the prompt's KV cache is repeated for its n samples, so the prompt is never recomputed per
sample. Rows that finish (a stop token, a stop string, or max tokens) are dropped from the batch and
the cache at once, so the remaining rows decode at the cost of their own number.

Returned log-probs are the model's raw log-probs of each sampled token (log-softmax of the logits at
temperature 1, no top-k/top-p truncation), so they equal `forward`'s log-probs of the same tokens.
One torch.Generator seeded with the request's seed drives all draws: the same request with the same
seed gives the same tokens (on the same device, dtype and batch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .model import LoadedModel
from .protocol import ProtocolError


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
    generator: torch.Generator,
) -> torch.Tensor:
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


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


@torch.no_grad()
def sample(lm: LoadedModel, req: dict[str, Any]) -> list[dict[str, Any]]:
    model = lm.model
    dev = lm.device
    prompts: list[np.ndarray] = req["prompts"]
    n: int = req["n"]
    max_tokens: int = req["maxTokens"]
    temperature: float = req["temperature"]
    top_k: int | None = req.get("topK")
    top_p: float | None = req.get("topP")
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
    stops = StopStrings(lm.tokenizer, req["stopStrings"]) if req.get("stopStrings") else None

    n_prompts = len(prompts)
    pad = 0
    ids = torch.full((n_prompts, longest), pad, dtype=torch.long)
    mask = torch.zeros((n_prompts, longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.from_numpy(p)
        mask[i, longest - len(p) :] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    was_training = model.training
    model.eval()
    try:
        with lm.autocast():
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1,
            )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        next_pos = pos[:, -1] + 1
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            next_pos = next_pos.repeat_interleave(n, dim=0)

        total = n_prompts * n
        tokens: list[list[int]] = [[] for _ in range(total)]
        logprobs: list[list[float]] = [[] for _ in range(total)]
        reasons: list[str] = ["length"] * total
        active = list(range(total))
        gen = torch.Generator(device=dev)
        gen.manual_seed(req["seed"])
        for _ in range(max_tokens):
            raw = torch.log_softmax(logits, dim=-1)
            nxt = choose_tokens(logits, temperature, top_k, top_p, gen)
            lp = raw.gather(1, nxt[:, None])[:, 0]
            nxt_list = nxt.tolist()
            lp_list = lp.tolist()
            keep: list[int] = []
            for j, row in enumerate(active):
                t = nxt_list[j]
                tokens[row].append(t)
                logprobs[row].append(lp_list[j])
                if t in stop_ids or (stops is not None and stops.hit(tokens[row])):
                    reasons[row] = "stop"
                elif len(tokens[row]) < max_tokens:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                mask, next_pos, nxt = mask[idx], next_pos[idx], nxt[idx]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            with lm.autocast():
                out = model(
                    input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True,
                )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1
    finally:
        model.train(was_training)
    return [
        {"promptIndex": row // n, "tokens": tokens[row], "logprobs": logprobs[row], "stopReason": reasons[row]}
        for row in range(total)
    ]

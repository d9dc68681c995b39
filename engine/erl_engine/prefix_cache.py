"""Keys and values of finished sequences, kept for later prompts that start with the same tokens.

In a multi-turn episode every turn's prompt is the previous turn's prompt, the reply just sampled and
the environment's answer: without reuse the sampler prefills the whole history again at every turn
(on a demo-shaped call, 3.2 s of 4.2 s). After a `sample` call the fast path stores, for each
sequence, its tokens (prompt + reply, less the last token, whose keys were never computed) with
their keys and values; the next call looks up each prompt's longest stored prefix and prefills only
the rest.

The stored keys and values are only valid for the weights that computed them: the engine clears the
cache on every call that may change weights (optimStep, loadState, loadModel, ...). Reuse changes
rounding only: a prefix's keys come from the decode steps that wrote them instead of a new prefill.

Lookup: each entry's token prefixes are hashed at every BLOCK tokens into an index (prefix hash ->
the entries that start with it); a prompt's longest indexed block prefix is found by binary search
(if a prefix of k blocks is stored, so are its shorter ones), then extended token by token against
each entry that holds it (the n samples of one prompt share its blocks), keeping the longest. An entry
whose every token a later sequence reused is dropped (the new entry contains it). The cache holds at
most `budget_bytes` of keys and values, evicting the least recently used entries;
$ERL_ENGINE_PREFIX_CACHE_MB sets the budget (0 switches reuse off).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 16
# Shorter matches are not worth the copies.
MIN_REUSE = BLOCK
DEFAULT_BUDGET_MB = 1024
ENV = "ERL_ENGINE_PREFIX_CACHE_MB"


def budget_from_env() -> int:
    """The byte budget: $ERL_ENGINE_PREFIX_CACHE_MB when it is a non-negative integer, else the default."""
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_BUDGET_MB << 20
    try:
        mb = int(raw)
        if mb < 0:
            raise ValueError
    except ValueError:
        print(f"erl engine: ignoring {ENV}={raw!r} (not a non-negative integer); using {DEFAULT_BUDGET_MB}",
              file=sys.stderr, flush=True)
        return DEFAULT_BUDGET_MB << 20
    return mb << 20


@dataclass
class Entry:
    tokens: np.ndarray  # int64 [n]
    keys: torch.Tensor  # [layers, kv_heads, n, head_dim]
    values: torch.Tensor
    hashes: list[bytes]  # of tokens[:BLOCK * (i + 1)], i = 0, 1, ...

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


def block_hashes(tokens: np.ndarray, blocks: int) -> list[bytes]:
    """Hashes of the token prefixes of 1, 2, ... `blocks` blocks (incremental: linear in the length)."""
    h = hashlib.blake2b(digest_size=16)
    out = []
    data = np.ascontiguousarray(tokens[: blocks * BLOCK], dtype=np.int64)
    for i in range(blocks):
        h.update(data[i * BLOCK:(i + 1) * BLOCK].tobytes())
        out.append(h.copy().digest())
    return out


class PrefixCache:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.index: dict[bytes, dict[int, None]] = {}  # prefix hash -> ids of the entries holding it
        self.bytes = 0
        self._next = 0
        # Counters for the caller's metrics: tokens reused and tokens prefilled since the last reset.
        self.reused_tokens = 0
        self.prefilled_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def clear(self) -> None:
        self.entries.clear()
        self.index.clear()
        self.bytes = 0

    def lookup(self, prompt: np.ndarray) -> tuple[int, int] | None:
        """(entry id, tokens to reuse) for the longest stored prefix of `prompt`, leaving at least
        one prompt token to prefill; None below MIN_REUSE."""
        if not self.entries:
            return None
        usable = len(prompt) - 1
        blocks = usable // BLOCK
        if blocks == 0:
            return None
        hashes = block_hashes(prompt, blocks)
        lo, hi = 0, blocks  # the longest indexed block prefix: binary search on a monotone property
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in self.index:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            return None
        best: tuple[int, int] | None = None
        for eid in reversed(self.index[hashes[lo - 1]]):  # newest first: it wins ties
            e = self.entries[eid]
            n = min(len(e.tokens), usable)
            same = e.tokens[:n] == prompt[:n]
            if not same[: lo * BLOCK].all():  # a hash collision: not this entry
                continue
            diff = np.flatnonzero(~same)
            reuse = int(diff[0]) if diff.size else n
            if best is None or reuse > best[1]:
                best = (eid, reuse)
        if best is None or best[1] < MIN_REUSE:
            return None
        self.entries.move_to_end(best[0])
        return best

    def get(self, eid: int) -> Entry:
        return self.entries[eid]

    def add(self, tokens: np.ndarray, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Stores a sequence (keys/values [layers, kv_heads, len(tokens), head_dim], owned by the cache)."""
        if not self.enabled or len(tokens) < MIN_REUSE:
            return
        e = Entry(np.asarray(tokens, dtype=np.int64), keys, values, block_hashes(tokens, len(tokens) // BLOCK))
        if e.nbytes > self.budget:
            return
        eid = self._next
        self._next += 1
        self.entries[eid] = e
        self.bytes += e.nbytes
        for h in e.hashes:
            self.index.setdefault(h, {})[eid] = None
        while self.bytes > self.budget:
            self.drop(next(iter(self.entries)))

    def drop(self, eid: int) -> None:
        e = self.entries.pop(eid, None)
        if e is None:
            return
        self.bytes -= e.nbytes
        for h in e.hashes:
            holders = self.index.get(h)
            if holders is not None:
                holders.pop(eid, None)
                if not holders:
                    del self.index[h]

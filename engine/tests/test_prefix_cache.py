"""The sampler's prefix cache: a later prompt that starts with an earlier sequence reuses its keys and
values (prefix_cache.py) with the results of a full prefill, and nothing survives a weight change."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import call, datum, load_params, unpack

from erl_engine import prefix_cache, sampler
from erl_engine.engine import Engine
from erl_engine.prefix_cache import BLOCK, MIN_REUSE, PrefixCache


def new_engine(dtype: str = "float32") -> Engine:
    e = Engine()
    call(e, "loadModel", load_params(dtype=dtype))
    e.need_model().eos_ids = []  # every sequence runs to maxTokens: the turns below have fixed shapes
    return e


def prompts0() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [[4] + rng.integers(9, 100, size=int(rng.integers(20, 40))).tolist() + [2, 5] for _ in range(5)]


def episode(e: Engine, turns: int, n: int = 1) -> list[list[dict[str, Any]]]:
    """`turns` sampling calls, each prompt the previous prompt + its first sample + an observation."""
    prompts = prompts0()
    out = []
    for t in range(turns):
        seqs = call(e, "sample", {"prompts": prompts, "n": n, "maxTokens": 12, "temperature": 1.0, "seed": t})
        seqs = seqs["sequences"]
        for s in seqs:
            s["logprobs"] = unpack(s["logprobs"])
            s["prompt"] = prompts[s["promptIndex"]]
        out.append(seqs)
        firsts = [next(s for s in seqs if s["promptIndex"] == i) for i in range(len(prompts))]
        prompts = [p + s["tokens"] + [7, 8, 9] + list(range(20, 20 + i % 4)) for i, (p, s) in enumerate(zip(prompts, firsts))]
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_later_turns_reuse_the_earlier_keys_with_the_same_results(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(sampler, "REUSE_PREFIXES", False)
    plain = episode(new_engine(), 3, n)
    monkeypatch.setattr(sampler, "REUSE_PREFIXES", True)
    e = new_engine()
    reused = episode(e, 3, n)
    store = e.need_model().prefix_cache
    # Turns 2 and 3 reused every prompt's history: only its tail was prefilled (the last sampled
    # token, whose keys were never computed, and the 3-6 tokens of the observation).
    first = sum(len(p) for p in prompts0())
    assert store.prefilled_tokens - first == 2 * sum(1 + 3 + i % 4 for i in range(5))
    assert store.reused_tokens >= 2 * first
    for a_turn, b_turn in zip(plain, reused):
        for a, b in zip(a_turn, b_turn):
            assert a["tokens"] == b["tokens"]
            assert np.allclose(a["logprobs"], b["logprobs"], atol=1e-5)


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-4), ("bfloat16", 0.05)])
def test_reused_prefixes_give_the_log_probs_of_forward(dtype: str, atol: float) -> None:
    e = new_engine(dtype)
    last = episode(e, 3)[-1]
    assert e.need_model().prefix_cache.reused_tokens > 0
    datums = [datum((s["prompt"] + s["tokens"])[:-1], (s["prompt"] + s["tokens"])[1:]) for s in last]
    fwd = [unpack(x) for x in call(e, "forward", {"datums": datums})["logprobs"]]
    for s, lp in zip(last, fwd):
        tail = lp[len(s["prompt"]) - 1:]
        assert np.allclose(s["logprobs"], tail, atol=atol), np.abs(np.array(s["logprobs"]) - np.array(tail)).max()


def test_a_weight_change_empties_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    e = new_engine()
    episode(e, 1)
    store = e.need_model().prefix_cache
    assert len(store.entries) == 5
    call(e, "forward", {"datums": [datum([5, 6, 7], [6, 7, 8])]})
    assert len(store.entries) == 5  # a forward pass leaves the weights, and the cache, as they are
    d = datum([5, 70, 71, 72, 73], [70, 71, 72, 73, 2])
    call(e, "forwardBackward", {"datums": [d], "loss": {"name": "cross_entropy"}})
    call(e, "optimStep", {"lr": 0.05})
    assert len(store.entries) == 0
    # After the step, a second turn samples what a fresh prefill with the new weights gives.
    monkeypatch.setattr(sampler, "REUSE_PREFIXES", False)
    fresh = new_engine()
    call(fresh, "forwardBackward", {"datums": [d], "loss": {"name": "cross_entropy"}})
    call(fresh, "optimStep", {"lr": 0.05})
    want = episode(fresh, 2)[-1]
    monkeypatch.setattr(sampler, "REUSE_PREFIXES", True)
    store.reused_tokens = 0
    got = episode(e, 2)[-1]
    assert store.reused_tokens > 0  # the second turn reused the first turn's keys, computed after the step
    assert [s["tokens"] for s in got] == [s["tokens"] for s in want]


def kv(n: int, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((2, 1, n, 4), fill), torch.full((2, 1, n, 4), fill)


def test_lookup_finds_the_longest_stored_prefix_and_leaves_one_token() -> None:
    c = PrefixCache(1 << 20)
    base = np.arange(100, 200)
    c.add(base[:40], *kv(40, 1.0))
    c.add(base[:70], *kv(70, 2.0))
    eid, r = c.lookup(np.concatenate([base[:70], [5, 6]]))
    assert r == 70 and float(c.get(eid).keys[0, 0, 0, 0]) == 2.0
    # A prompt that diverges at token 50 reuses 50 tokens of the longer entry.
    p = base[:80].copy()
    p[50] = 0
    assert c.lookup(p)[1] == 50
    # The whole prompt stored: one token is left to compute the next token's logits from.
    assert c.lookup(base[:70])[1] == 69
    # Too short a match, or too short a prompt: nothing.
    q = base[:60].copy()
    q[MIN_REUSE - 1] = 0
    assert c.lookup(q) is None
    assert c.lookup(base[:BLOCK]) is None


def test_the_budget_evicts_the_least_recently_used() -> None:
    one = kv(32)[0]
    per = one.numel() * one.element_size() * 2
    c = PrefixCache(2 * per)
    a, b, d = (np.arange(k, k + 32) for k in (1000, 2000, 3000))
    c.add(a, *kv(32))
    c.add(b, *kv(32))
    assert c.lookup(np.concatenate([a, [1]])) is not None  # a is now the most recently used
    c.add(d, *kv(32))
    assert c.lookup(np.concatenate([b, [1]])) is None
    assert c.lookup(np.concatenate([a, [1]])) is not None and c.lookup(np.concatenate([d, [1]])) is not None
    assert c.bytes == 2 * per


def test_samples_of_one_prompt_are_told_apart_past_the_last_shared_block() -> None:
    c = PrefixCache(1 << 20)
    prompt = np.arange(500, 535)  # 35 tokens: two full blocks
    replies = [np.arange(k, k + 11) for k in (900, 920, 940)]  # three samples: 46 tokens, no third block
    for i, r in enumerate(replies):
        c.add(np.concatenate([prompt, r]), *kv(46, float(i)))
    nxt = np.concatenate([prompt, replies[0], [7, 8, 9]])  # the next turn continues the first sample
    eid, reuse = c.lookup(nxt)
    assert reuse == 46 and float(c.get(eid).keys[0, 0, 0, 0]) == 0.0


def test_dropping_an_entry_keeps_its_shared_prefix_findable() -> None:
    c = PrefixCache(1 << 20)
    base = np.arange(500, 600)
    longer = np.concatenate([base[:32], np.arange(900, 940)])
    c.add(longer, *kv(72, 2.0))
    c.add(base[:48], *kv(48, 1.0))
    eid, reuse = c.lookup(base[:60])
    assert reuse == 48
    c.drop(eid)
    hit = c.lookup(base[:60])
    assert hit is not None and hit[1] == 32 and float(c.get(hit[0]).keys[0, 0, 0, 0]) == 2.0
    assert all(eid not in holders for holders in c.index.values())


def test_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(prefix_cache.ENV, "64")
    assert prefix_cache.budget_from_env() == 64 << 20
    monkeypatch.setenv(prefix_cache.ENV, "0")
    assert not PrefixCache(prefix_cache.budget_from_env()).enabled
    monkeypatch.setenv(prefix_cache.ENV, "lots")
    assert prefix_cache.budget_from_env() == prefix_cache.DEFAULT_BUDGET_MB << 20
    assert "ignoring ERL_ENGINE_PREFIX_CACHE_MB='lots'" in capsys.readouterr().err


def test_an_engine_with_reuse_switched_off_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prefix_cache.ENV, "0")
    e = new_engine()
    episode(e, 2)
    store = e.need_model().prefix_cache
    assert store is not None and not store.entries and store.reused_tokens == 0

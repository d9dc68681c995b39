"""erl_engine.embed (HotpotQA's dense search): requests, errors, pooling over padded batches, E5's kinds."""

from __future__ import annotations

import json

import pytest

from erl_engine import embed


@pytest.fixture(scope="module")
def minilm() -> embed.MiniLM:
    return embed.MiniLM(threads=1)


@pytest.fixture(scope="module")
def e5() -> embed.E5Small:
    return embed.E5Small(threads=1)


TEXTS = ["Leo Varadkar", "Johnny Angel is a 1945 American film noir directed by Edwin L. Marin " * 4, "x"]


def close(a: list[float], b: list[float], tol: float) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) < tol


def test_minilm_batches_equal_one_at_a_time(minilm: embed.MiniLM) -> None:
    # Texts of very different lengths share a padded batch; the attention mask must keep the
    # padding out of the mean, so each row equals the text embedded alone.
    together = minilm.embed(TEXTS)
    for text, row in zip(TEXTS, together):
        assert len(row) == minilm.dim == 384
        assert close(row, minilm.embed([text])[0], 1e-5)
        assert abs(sum(a * a for a in row) - 1.0) < 1e-5


def test_e5_queries_and_passages_differ_and_batch_like_single(e5: embed.E5Small) -> None:
    queries = e5.embed(TEXTS, "query")
    passages = e5.embed(TEXTS, "passage")
    for text, q, p in zip(TEXTS, queries, passages):
        assert len(q) == e5.dim == 384
        assert close(q, e5.embed([text], "query")[0], 1e-5)
        assert not close(q, p, 1e-3)
        assert abs(sum(a * a for a in q) - 1.0) < 1e-3
    assert e5.embed([], "query") == []


def test_requests_and_errors(minilm: embed.MiniLM) -> None:
    ok = embed.handle(minilm, json.dumps({"id": 7, "texts": ["a", "b"], "kind": "query"}))
    assert ok["id"] == 7 and len(ok["embeddings"]) == 2
    assert embed.handle(minilm, json.dumps({"id": 8, "texts": []})) == {"id": 8, "embeddings": []}
    bad = embed.handle(minilm, json.dumps({"id": 9, "texts": "not a list"}))
    assert bad["id"] == 9 and "list of strings" in bad["error"]
    kind = embed.handle(minilm, json.dumps({"id": 10, "texts": ["a"], "kind": "doc"}))
    assert '"kind"' in kind["error"]
    assert "not valid JSON" in embed.handle(minilm, "{nope")["error"]

"""erl_engine.embed (HotpotQA's dense search): requests, errors, and pooling over padded batches."""

from __future__ import annotations

import json

import pytest

from erl_engine import embed


@pytest.fixture(scope="module")
def embedder() -> embed.Embedder:
    return embed.Embedder(threads=1)


def test_batched_embeddings_equal_one_at_a_time(embedder: embed.Embedder) -> None:
    # Texts of very different lengths share a padded batch; the attention mask must keep the
    # padding out of the mean, so each row equals the text embedded alone.
    texts = ["Leo Varadkar", "Johnny Angel is a 1945 American film noir directed by Edwin L. Marin " * 4, "x"]
    together = embedder.embed(texts)
    for text, row in zip(texts, together):
        alone = embedder.embed([text])[0]
        assert len(row) == embedder.dim == 384
        assert max(abs(a - b) for a, b in zip(row, alone)) < 1e-5
        assert abs(sum(a * a for a in row) - 1.0) < 1e-5


def test_requests_and_errors(embedder: embed.Embedder) -> None:
    ok = embed.handle(embedder, json.dumps({"id": 7, "texts": ["a", "b"]}))
    assert ok["id"] == 7 and len(ok["embeddings"]) == 2
    assert embed.handle(embedder, json.dumps({"id": 8, "texts": []})) == {"id": 8, "embeddings": []}
    bad = embed.handle(embedder, json.dumps({"id": 9, "texts": "not a list"}))
    assert bad["id"] == 9 and "list of strings" in bad["error"]
    assert "not valid JSON" in embed.handle(embedder, "{nope")["error"]

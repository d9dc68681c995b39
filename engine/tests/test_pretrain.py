"""erl-tiny pretraining pieces: the fitted tokenizer, the chat renderer with per-role loss weights, the
length-bucketed batcher and the LR schedule."""

from __future__ import annotations

import argparse
import json
import random

import pytest

from erl_engine import pretrain


def _write_corpus(tmp_path, docs):
    d = tmp_path / "corpus"
    d.mkdir()
    with open(d / "shard-00000.jsonl", "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    return str(d)


DOC = {
    "kind": "rule-play",
    "observationWeight": 0.25,
    "messages": [
        {"role": "system", "content": "FrozenLake rules. Symbols:\n A \tyou - the agent"},
        {"role": "user", "content": "Steps used: 0 of 8 (8 left).\n A \t D \t\n C \t B \t"},
        {"role": "assistant", "content": "you A \tup edge\n```\ndown\n```"},
        {"role": "user", "content": "You moved down.\n D \t D \t\n A \t B \t"},
        {"role": "assistant", "content": "go\n```\nright\n```"},
    ],
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    corpus = _write_corpus(tmp, [DOC] * 20)
    out = str(tmp / "tokenizer")
    pretrain.fit_tokenizer(corpus, out, vocab=400)
    return pretrain.load_tok(out)


def test_cells_are_single_tokens_and_every_symbol_is_representable(tok):
    for s in pretrain.SYMBOLS:
        assert len(tok(f" {s} \t", add_special_tokens=False)["input_ids"]) == 1
    text = "Q is you; √ and z are not"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_renderer_matches_the_chat_template_and_weights_roles(tok):
    r = pretrain.Renderer(tok)
    ids, ws = r.render(DOC)
    tmpl = tok.apply_chat_template(DOC["messages"], tokenize=True)
    tmpl = tmpl["input_ids"] if hasattr(tmpl, "keys") else tmpl
    assert ids == list(tmpl)
    assert len(ws) == len(ids)
    # System tokens weigh 0, user (observation) tokens 0.25, assistant tokens and their end 1.
    end = tok.convert_tokens_to_ids(pretrain.END)
    first_user = ids.index(tok.convert_tokens_to_ids("<|user|>"))
    assert all(w == 0.0 for w in ws[:first_user])
    asst = ids.index(tok.convert_tokens_to_ids("<|assistant|>"))
    assert ws[asst] == 0.0 and ws[asst + 1] == 1.0
    assert ws[asst - 2] == 0.25  # last content token of the first user turn
    assert ids[-1] == end and ws[-1] == 1.0
    assert tok.eos_token_id == end


def test_batches_respect_the_token_budget_and_cover_every_row():
    rows = [([0] * n, [1.0] * n, "k") for n in [5, 50, 7, 120, 33, 64, 64, 2]]
    batches = pretrain.batches_of(rows, 130, random.Random(0))
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(rows)))
    for b in batches:
        assert max(len(rows[i][0]) for i in b) * len(b) <= 130 or len(b) == 1


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    a = argparse.Namespace(lr=1e-3, warmup=10, total_steps=110, min_lr_frac=0.1)
    assert pretrain.lr_at(0, a) == pytest.approx(1e-4)
    assert pretrain.lr_at(9, a) == pytest.approx(1e-3)
    assert pretrain.lr_at(60, a) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert pretrain.lr_at(110, a) == pytest.approx(1e-4)
    assert pretrain.lr_at(500, a) == pytest.approx(1e-4)


def test_lr_schedule_restarts_at_the_recorded_step():
    a = argparse.Namespace(
        lr=1e-3, warmup=10, total_steps=110, min_lr_frac=0.1, restart_lr=3e-4, restart_steps=210
    )
    # Before the restart (or with none recorded) the first schedule holds.
    assert pretrain.lr_at(150, a, restart_step=200) == pytest.approx(1e-4)
    assert pretrain.lr_at(250, a) == pytest.approx(1e-4)
    # From the restart step: a second warm-up to the new peak, then its own cosine to the floor.
    assert pretrain.lr_at(200, a, restart_step=200) == pytest.approx(3e-5)
    assert pretrain.lr_at(209, a, restart_step=200) == pytest.approx(3e-4)
    assert pretrain.lr_at(310, a, restart_step=200) == pytest.approx(3e-4 * (0.1 + 0.9 * 0.5))
    assert pretrain.lr_at(410, a, restart_step=200) == pytest.approx(3e-5)


def test_lr_schedule_counts_from_the_latest_restart_reached():
    a = argparse.Namespace(
        lr=1e-3, warmup=10, total_steps=110, min_lr_frac=0.1, restart_lr=3e-4, restart_steps=210
    )
    # Two restarts (consolidation at step 200, Sokoban at 600): each starts its own warm-up.
    assert pretrain.lr_at(410, a, restart_step=[200, 600]) == pytest.approx(3e-5)
    assert pretrain.lr_at(600, a, restart_step=[600, 200]) == pytest.approx(3e-5)
    assert pretrain.lr_at(609, a, restart_step=[200, 600]) == pytest.approx(3e-4)
    assert pretrain.lr_at(150, a, restart_step=[200, 600]) == pytest.approx(1e-4)


def test_restarts_are_recorded_once_per_shard_and_a_single_legacy_restart_is_kept():
    # A state written when only one restart existed (consolidation at step 9089), now at shard 500.
    st = {"step": 14210, "shard": 500, "restart_step": 9089}
    pretrain.record_restarts(st, pretrain.restart_shards("400,500"))
    assert st["restarts"] == {"400": 9089, "500": 14210}
    assert "restart_step" not in st
    st["step"], st["shard"] = 15000, 520
    pretrain.record_restarts(st, [400, 500])
    assert st["restarts"] == {"400": 9089, "500": 14210}
    # A fresh run records each restart when it first reaches the shard.
    fresh = {"step": 30, "shard": 1}
    pretrain.record_restarts(fresh, [1, 2])
    assert fresh["restarts"] == {"1": 30}
    assert pretrain.restart_shards("0") == [] and pretrain.restart_shards("") == []
    with pytest.raises(SystemExit, match="--restart-shard"):
        pretrain.restart_shards("4x")


def test_training_stops_before_the_until_shard_and_resumes_past_it(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):
        with open(d / f"shard-{i:05d}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(4):
                f.write(json.dumps(DOC) + "\n")
    tok_dir = str(tmp_path / "tok")
    pretrain.fit_tokenizer(str(d), tok_dir, vocab=400)
    work = str(tmp_path / "work")
    base = ["train", "--corpus", str(d), "--work", work, "--tokenizer", tok_dir, "--preset", "ci"]
    base += ["--warmup", "1", "--log-every", "1", "--batch-tokens", "4096"]

    def state():
        import torch

        return torch.load(f"{work}/ckpt/state.pt", map_location="cpu", weights_only=False)["state"]

    pretrain.main(base + ["--until-shard", "2"])
    assert state()["shard"] == 2 and state()["batch"] == 0
    with open(f"{work}/train-log.jsonl", encoding="utf-8") as f:
        shards = {json.loads(line)["shard"] for line in f}
    assert shards == {0, 1}
    steps = state()["step"]
    pretrain.main(base + ["--resume"])
    assert state()["shard"] == 3 and state()["step"] > steps

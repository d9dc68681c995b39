"""The engine's model calls on the tiny fixture: forward vs plain transformers, forward_backward vs a
loss recomputed from forward, micro-batching, LoRA and references, checkpoints, export, bad input."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FIXTURE, call, datum, load_params, unpack

from erl_engine.engine import Engine
from erl_engine.protocol import ProtocolError


def rl_datums() -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for n, adv in ((9, 1.0), (5, -0.7), (13, 0.0), (7, 2.0)):
        ids = rng.integers(7, 100, size=n + 1).tolist()
        w = [0.0] * 2 + [1.0] * (n - 2)
        out.append(datum(ids[:-1], ids[1:], w, advantages=[adv] * n, oldLogprobs=[0.0] * n))
    return out


def forward(engine: Engine, datums: list[dict[str, Any]]) -> list[list[float]]:
    return [unpack(x) for x in call(engine, "forward", {"datums": datums})["logprobs"]]


def with_old_logprobs(engine: Engine, datums: list[dict[str, Any]], shift: float = 0.0) -> list[dict[str, Any]]:
    lps = forward(engine, datums)
    return [{**d, "oldLogprobs": [x + shift for x in lp]} for d, lp in zip(datums, lps)]


def grads(engine: Engine) -> dict[str, torch.Tensor]:
    assert engine.lm is not None
    return {n: p.grad.clone() for n, p in engine.lm.model.named_parameters() if p.grad is not None}


def params_of(engine: Engine) -> dict[str, torch.Tensor]:
    assert engine.lm is not None
    return {n: p.detach().clone() for n, p in engine.lm.model.named_parameters()}


def test_forward_equals_plain_transformers(engine: Engine) -> None:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(FIXTURE).eval()
    datums = rl_datums()
    got = forward(engine, datums)
    for d, lp in zip(datums, got):
        with torch.no_grad():
            logits = ref(torch.tensor([d["inputIds"]])).logits[0].double()
        want = torch.log_softmax(logits, -1)[torch.arange(len(d["targetIds"])), torch.tensor(d["targetIds"])]
        assert np.allclose(lp, want.numpy(), atol=1e-5)


def test_forward_at_a_temperature_is_log_softmax_of_logits_over_t(engine: Engine) -> None:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(FIXTURE).eval()
    d = rl_datums()[0]
    got = unpack(call(engine, "forward", {"datums": [d], "temperature": 0.7})["logprobs"][0])
    with torch.no_grad():
        logits = ref(torch.tensor([d["inputIds"]])).logits[0].double()
    want = torch.log_softmax(logits / 0.7, -1)[torch.arange(len(d["targetIds"])), torch.tensor(d["targetIds"])]
    assert np.allclose(got, want.numpy(), atol=1e-5)


def test_forward_backward_at_a_temperature_starts_at_ratio_one(engine: Engine) -> None:
    """Old log-probs from forward at T and the loss at T: every ratio is 1; at T = 1 they are not."""
    datums = [
        {**d, "oldLogprobs": unpack(lp)}
        for d, lp in zip(
            rl_datums(), call(engine, "forward", {"datums": rl_datums(), "temperature": 0.7})["logprobs"]
        )
    ]
    at_t = call(engine, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "temperature": 0.7}})
    assert at_t["metrics"]["ratio_min"] == pytest.approx(1, abs=1e-4)
    assert at_t["metrics"]["ratio_max"] == pytest.approx(1, abs=1e-4)
    engine.need_model().model.zero_grad(set_to_none=True)
    at_1 = call(engine, "forwardBackward", {"datums": datums, "loss": {"name": "ppo"}})
    assert abs(at_1["metrics"]["ratio_mean"] - 1) > 1e-3


def test_forward_backward_matches_loss_from_forward(engine: Engine) -> None:
    """The reported loss equals the PPO formula applied to forward's log-probs (old = forward - 0.1)."""
    datums = with_old_logprobs(engine, rl_datums(), shift=-0.1)
    lps = forward(engine, datums)
    res = call(engine, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "clipLow": 0.2, "clipHigh": 0.05}})
    total = 0.0
    for d, lp in zip(datums, lps):
        for t, w in enumerate(d["weights"]):
            r = np.exp(lp[t] - d["oldLogprobs"][t])
            a = d["advantages"][t]
            total += w * max(-a * r, -a * min(max(r, 0.8), 1.05))
    assert res["loss"] == pytest.approx(total / len(datums), rel=1e-4)
    m = res["metrics"]
    assert m["ratio_mean"] == pytest.approx(np.exp(0.1), rel=1e-4)
    # Positive-advantage tokens have r = 1.105 > 1.05: clipped high; negative ones are not clipped.
    n_tokens = sum(sum(1 for w in d["weights"] if w) for d in datums)
    n_pos = sum(sum(1 for w, a in zip(d["weights"], d["advantages"]) if w and a > 0) for d in datums)
    assert m["clip_frac_high"] == pytest.approx(n_pos / n_tokens)
    assert m["clip_frac_low"] == 0 and m["grad_norm"] > 0 and m["tokens"] == n_tokens


def test_forward_only_and_returned_logprobs(engine: Engine) -> None:
    """forwardOnly reports forwardBackward's loss and metrics and accumulates no gradient;
    returnLogprobs gives each datum's log-probs, those of `forward`."""
    datums = with_old_logprobs(engine, rl_datums(), shift=-0.1)
    lps = forward(engine, datums)
    loss = {"name": "ppo", "clipLow": 0.2, "clipHigh": 0.05}
    only = call(engine, "forwardBackward", {"datums": datums, "loss": loss, "forwardOnly": True, "returnLogprobs": True})
    assert grads(engine) == {} and only["metrics"]["grad_norm"] == 0
    both = call(engine, "forwardBackward", {"datums": datums, "loss": loss, "returnLogprobs": True})
    assert grads(engine) and both["metrics"]["grad_norm"] > 0
    assert only["loss"] == pytest.approx(both["loss"], rel=1e-6)
    for res in (only, both):
        for got, want in zip(res["logprobs"], lps):
            assert np.allclose(unpack(got), want, atol=1e-6)
    assert "logprobs" not in call(engine, "forwardBackward", {"datums": datums, "loss": loss})


def test_micro_batching_and_split_calls_give_the_same_gradient(engine: Engine) -> None:
    datums = with_old_logprobs(engine, rl_datums())
    loss = {"name": "importance_sampling", "aggregation": "token-mean"}
    call(engine, "forwardBackward", {"datums": datums, "loss": loss})
    whole = grads(engine)
    engine.need_model().model.zero_grad(set_to_none=True)
    engine.microbatch_tokens = 10  # one datum per micro-batch
    n_tok = sum(sum(1 for w in d["weights"] if w) for d in datums)
    for part in (datums[:1], datums[1:]):
        call(engine, "forwardBackward", {"datums": part, "loss": {**loss, "normalizer": n_tok}})
    split = grads(engine)
    for k in whole:
        assert torch.allclose(whole[k], split[k], atol=1e-6), k


@pytest.mark.parametrize("lora", [None, {"rank": 4, "alpha": 8, "dropout": 0.0, "targetModules": "all-linear"}])
def test_the_head_on_weighted_positions_only_gives_the_full_heads_loss_and_gradient(
        lora: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """forwardBackward runs the LM head on the weighted positions only (a plain-head model): the loss,
    the metrics and every gradient equal those of the head over every position. Old log-probs far below
    any real value at unweighted positions stay harmless."""
    from erl_engine import engine as engine_mod

    results = []
    for plain in (True, False):
        e = Engine()
        call(e, "loadModel", load_params(**({"lora": lora, "reference": "base"} if lora else {"reference": "copy"})))
        datums = with_old_logprobs(e, rl_datums(), shift=-0.05)
        for d in datums:  # unweighted positions: an old log-prob whose ratio would overflow fp32
            d["oldLogprobs"] = [x if w else -200.0 for x, w in zip(d["oldLogprobs"], d["weights"])]
        if plain:
            monkeypatch.setattr(engine_mod, "PLAIN_HEAD_TYPES", frozenset())
        else:
            monkeypatch.undo()
            assert engine_mod._body_and_head(e.need_model().model) is not None
        res = call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "dualClip": 3, "klCoef": 0.1}})
        results.append((res, grads(e)))
    (full, g_full), (kept, g_kept) = results
    assert kept["loss"] == pytest.approx(full["loss"], rel=1e-5, abs=1e-7)
    for k in ("ratio_mean", "kl", "entropy", "tokens", "clip_frac_high"):
        if k in full["metrics"]:
            assert kept["metrics"][k] == pytest.approx(full["metrics"][k], rel=1e-4, abs=1e-6), k
    assert np.isfinite(kept["loss"]) and set(g_full) == set(g_kept) and g_full
    for k in g_full:
        assert torch.allclose(g_full[k], g_kept[k], atol=1e-6, rtol=1e-4), k


def test_packed_rows_give_the_padded_results() -> None:
    """`pack`: datums laid end to end in rows (positions restarting, attention within each) give the
    same forward log-probs, loss, metrics and gradients as one datum per padded row; the rows really
    hold several datums."""
    from erl_engine.engine import Batch, pack_rows

    assert pack_rows([5, 9, 4, 2, 9]) == [[1], [4], [0, 2], [3]]
    results = []
    for pack in (False, True):
        e = Engine()
        call(e, "loadModel", load_params())
        datums = with_old_logprobs(e, rl_datums(), shift=-0.05)
        datums[1]["samplerLogprobs"] = [x - 0.01 for x in datums[1]["oldLogprobs"]]
        lps = [unpack(x) for x in call(e, "forward", {"datums": datums, "pack": pack})["logprobs"]]
        res = call(e, "forwardBackward", {"datums": datums, "pack": pack,
                                           "loss": {"name": "ppo", "aggregation": "seq-mean-token-sum"}})
        results.append((lps, res, grads(e)))
        rows = e._micro_batches(datums, pack=pack)
        b = Batch(datums, [], torch.device("cpu"), True, rows=rows[0])
        assert (b.pos is not None) == pack and (b.inp.shape[0] < len(datums)) == pack
    (lp0, r0, g0), (lp1, r1, g1) = results
    for a, c in zip(lp0, lp1):
        assert np.allclose(a, c, atol=2e-5)
    assert r1["loss"] == pytest.approx(r0["loss"], rel=1e-5)
    for k in ("ratio_mean", "mismatch_abs_mean", "tokens", "entropy"):
        assert r1["metrics"][k] == pytest.approx(r0["metrics"][k], rel=1e-4, abs=1e-7), k
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=2e-6, rtol=1e-4), k


def test_zero_advantages_give_zero_gradient(engine: Engine) -> None:
    datums = [{**d, "advantages": [0.0] * len(d["targetIds"])} for d in with_old_logprobs(engine, rl_datums())]
    res = call(engine, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "dualClip": 3}})
    assert res["loss"] == 0 and res["metrics"]["grad_norm"] == 0


def test_lora_with_base_reference_and_kl() -> None:
    e = Engine()
    info = call(e, "loadModel", load_params(lora={"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}, reference="base"))
    assert 0 < info["parameters"]["trainable"] < info["parameters"]["total"] / 4
    datums = with_old_logprobs(e, rl_datums())
    loss = {"name": "ppo", "klCoef": 0.5}
    res = call(e, "forwardBackward", {"datums": datums, "loss": loss})
    assert res["metrics"]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start as the identity
    assert res["metrics"]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    call(e, "optimStep", {"lr": 5e-2})
    res = call(e, "forwardBackward", {"datums": datums, "loss": loss})
    assert res["metrics"]["kl"] > 1e-6
    base_names = [n for n, p in e.need_model().model.named_parameters() if not p.requires_grad]
    assert base_names and all("lora_" not in n for n in base_names)


def test_full_finetune_copy_reference_bf16() -> None:
    e = Engine()
    call(e, "loadModel", load_params(reference="copy", dtype="bfloat16"))
    datums = rl_datums()
    lp32 = forward(Engine_fp32(), datums)
    lp16 = forward(e, datums)
    for a, b in zip(lp32, lp16):
        assert np.allclose(a, b, atol=0.1)  # bf16 autocast: close, not equal
    call(e, "forwardBackward", {"datums": datums, "loss": {"name": "cross_entropy", "klCoef": 1.0}})
    call(e, "optimStep", {"lr": 1e-2})
    res = call(e, "forwardBackward", {"datums": datums, "loss": {"name": "cross_entropy", "klCoef": 1.0}})
    assert res["metrics"]["kl"] > 0
    assert e.need_model().reference is not None
    assert all(not p.requires_grad for p in e.need_model().reference.parameters())


def Engine_fp32() -> Engine:  # noqa: N802 - reads as a constructor
    e = Engine()
    call(e, "loadModel", load_params())
    return e


def test_random_init_from_config() -> None:
    e = Engine()
    cfg = {"model_type": "llama", "vocab_size": 105, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128, "eos_token_id": 2}
    a = call(e, "loadModel", {"randomInit": {"config": cfg, "tokenizerPath": FIXTURE, "seed": 5}, "dtype": "float32", "device": "cpu", "seed": 0})
    assert a["model"]["vocabSize"] == 105 and a["model"]["maxPositions"] == 128
    lp_a = forward(e, rl_datums()[:1])
    call(e, "loadModel", {"randomInit": {"config": cfg, "tokenizerPath": FIXTURE, "seed": 5}, "dtype": "float32", "device": "cpu", "seed": 0})
    assert forward(e, rl_datums()[:1]) == lp_a  # same seed, same weights
    with pytest.raises(ProtocolError, match="model_type"):
        call(e, "loadModel", {"randomInit": {"config": {}, "tokenizerPath": FIXTURE, "seed": 5}, "dtype": "float32", "device": "cpu", "seed": 0})


def train_step(e: Engine, datums: list[dict[str, Any]]) -> None:
    call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "dualClip": 3.0}})
    call(e, "optimStep", {"lr": 1e-2, "gradClip": 1.0, "weightDecay": 0.1})


@pytest.mark.parametrize("lora", [None, {"rank": 2, "alpha": 4, "targetModules": "all-linear", "dropout": 0.1}])
def test_save_load_continue_equals_not_stopping(tmp_path: Any, lora: Any) -> None:
    over = {"lora": lora} if lora else {}
    a = Engine()
    call(a, "loadModel", load_params(**over))
    datums = with_old_logprobs(a, rl_datums(), shift=0.05)
    train_step(a, datums)
    call(a, "saveState", {"dir": str(tmp_path / "state")})
    train_step(a, datums)
    b = Engine()
    call(b, "loadModel", load_params(**over))
    assert call(b, "loadState", {"dir": str(tmp_path / "state")}) == {"step": 1}
    train_step(b, datums)
    pa, pb = params_of(a), params_of(b)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    # Saving again over the same directory replaces it atomically.
    call(b, "saveState", {"dir": str(tmp_path / "state")})
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_corrupted_or_mismatched_checkpoint_is_a_clear_error(tmp_path: Any, engine: Engine) -> None:
    d = tmp_path / "s"
    call(engine, "saveState", {"dir": str(d)})
    raw = bytearray((d / "trainable.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (d / "trainable.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ProtocolError, match="checksum mismatch; the checkpoint is corrupted") as ei:
        call(engine, "loadState", {"dir": str(d)})
    assert ei.value.code == "checkpoint"
    with pytest.raises(ProtocolError, match="not found"):
        call(engine, "loadState", {"dir": str(tmp_path / "none")})
    lora = Engine()
    call(lora, "loadModel", load_params(lora={"rank": 2, "alpha": 4, "targetModules": ["q_proj"]}))
    call(lora, "saveState", {"dir": str(tmp_path / "l")})
    with pytest.raises(ProtocolError, match="do not match the loaded model"):
        call(engine, "loadState", {"dir": str(tmp_path / "l")})


def test_export_full_and_lora_load_in_transformers_and_peft(tmp_path: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    datums = rl_datums()

    def hf_logprobs(model: Any) -> list[np.ndarray]:
        out = []
        for d in datums:
            with torch.no_grad():
                logits = model(torch.tensor([d["inputIds"]])).logits[0].double()
            out.append(torch.log_softmax(logits, -1)[torch.arange(len(d["targetIds"])), torch.tensor(d["targetIds"])].numpy())
        return out

    full = Engine()
    call(full, "loadModel", load_params())
    train_step(full, with_old_logprobs(full, datums))
    call(full, "export", {"dir": str(tmp_path / "full")})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    for a, b in zip(forward(full, datums), hf_logprobs(loaded)):
        assert np.allclose(a, b, atol=1e-5)

    lora = Engine()
    call(lora, "loadModel", load_params(lora={"rank": 4, "alpha": 8, "targetModules": "all-linear"}))
    for _ in range(2):
        train_step(lora, with_old_logprobs(lora, datums, shift=0.1))
    want = forward(lora, datums)
    call(lora, "export", {"dir": str(tmp_path / "adapter")})
    assert os.path.exists(tmp_path / "adapter" / "adapter_config.json")
    # no peft template card with this machine's absolute path in it
    assert not os.path.exists(tmp_path / "adapter" / "README.md")
    base = AutoModelForCausalLM.from_pretrained(FIXTURE)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    for a, b in zip(want, hf_logprobs(peft_model)):
        assert np.allclose(a, b, atol=1e-5)
    call(lora, "export", {"dir": str(tmp_path / "merged"), "mergeLora": True})
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    for a, b in zip(want, hf_logprobs(merged)):
        assert np.allclose(a, b, atol=1e-5)
    # The live model still has its adapters after a merged export.
    assert forward(lora, datums) == want


@pytest.mark.parametrize(
    ("method", "params", "pattern"),
    [
        ("forward", {"datums": [datum([1, 2], [2])]}, r"datums\[0\]\.targetIds: has 1 values but inputIds has 2"),
        ("forward", {"datums": [datum([1, -3], [2, 3])]}, r"inputIds\[1\]: token id -3 is outside"),
        ("forward", {"datums": [datum([1, 2], [2, 3], [1.0, None])]}, r"weights\[1\]: NaN is not allowed"),
        ("forwardBackward", {"datums": [datum([1], [2])], "loss": {"name": "ppo"}}, r"datums\[0\]\.advantages: required by this loss"),
        ("forwardBackward", {"datums": [datum([1], [2])], "loss": {"name": "grpo"}}, r"params\.loss\.name: expected one of"),
        ("forwardBackward", {"datums": [datum([1], [2])], "loss": {"name": "cross_entropy", "klCoef": 0.1}}, r"needs a frozen reference"),
        ("loadModel", load_params(path="/no/such/dir"), r"model directory not found: /no/such/dir"),
        ("renderChat", {"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\]\.role: expected one of"),
        ("optimStep", {"lr": -1}, r"params\.lr: must be >= 0"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_model_stays(engine: Engine, method: str, params: Any, pattern: str) -> None:
    with pytest.raises(ProtocolError, match=pattern):
        call(engine, method, params)
    assert engine.lm is not None and len(forward(engine, [datum([4, 5], [5, 6])])[0]) == 2


def test_calls_before_load_model_say_so() -> None:
    with pytest.raises(ProtocolError, match="no model is loaded"):
        call(Engine(), "encode", {"text": "x"})


@pytest.mark.parametrize("lora", [None, {"rank": 2, "alpha": 4, "targetModules": ["q_proj", "v_proj"]}])
def test_gradient_checkpointing_gives_the_same_gradient(lora: Any) -> None:
    over = {"lora": lora} if lora else {}
    datums = rl_datums()
    got = []
    for ckpt in (False, True):
        e = Engine()
        call(e, "loadModel", load_params(gradientCheckpointing=ckpt, **over))
        call(e, "forwardBackward", {"datums": datums, "loss": {"name": "cross_entropy"}})
        got.append(grads(e))
    assert got[0].keys() == got[1].keys() and got[0]
    for k in got[0]:
        assert torch.allclose(got[0][k], got[1][k], atol=1e-6), k


def test_mismatch_metrics_measure_the_sampler_gap(engine: Engine) -> None:
    """Tokens with sampler log-probs shifted from the trainer's by known gaps: mean, max and k3."""
    datums = rl_datums()
    lps = forward(engine, datums)
    rng = np.random.default_rng(3)
    gaps: list[float] = []
    out = []
    for i, (d, lp) in enumerate(zip(datums, lps)):
        shift = rng.normal(0, 0.1, size=len(lp))
        sampler_lp = [x - s for x, s in zip(lp, shift)]  # trainer - sampler = shift
        dd = {**d, "oldLogprobs": sampler_lp}
        if i != 2:  # one datum without sampler log-probs (e.g. a distill row) is left out of the metric
            dd["samplerLogprobs"] = sampler_lp
            gaps += [s for s, w in zip(shift, d["weights"]) if w]
        out.append(dd)
    m = call(engine, "forwardBackward", {"datums": out, "loss": {"name": "ppo"}})["metrics"]
    g = np.asarray(gaps)
    assert m["mismatch_tokens"] == len(g)
    assert m["mismatch_abs_mean"] == pytest.approx(np.abs(g).mean(), abs=2e-6)
    assert m["mismatch_abs_max"] == pytest.approx(np.abs(g).max(), abs=2e-6)
    assert m["mismatch_k3"] == pytest.approx((np.exp(g) - 1 - g).mean(), rel=1e-3, abs=1e-7)


def test_engine_sampler_mismatch_is_float_rounding(engine: Engine) -> None:
    """The engine's own sampler against its own forward: the gap is float rounding (fp32)."""
    res = call(engine, "sample", {"prompts": [[5, 6, 7], [8, 9]], "n": 2, "maxTokens": 8, "temperature": 1.0, "seed": 4})
    datums = []
    for s in res["sequences"]:
        prompt = [[5, 6, 7], [8, 9]][s["promptIndex"]]
        ids = prompt + s["tokens"]
        lp = unpack(s["logprobs"])
        n = len(ids) - 1
        old = [0.0] * (len(prompt) - 1) + lp
        w = [0.0] * (len(prompt) - 1) + [1.0] * len(lp)
        datums.append(datum(ids[:-1], ids[1:], w, advantages=[1.0] * n, oldLogprobs=old, samplerLogprobs=old))
    m = call(engine, "forwardBackward", {"datums": datums, "loss": {"name": "ppo"}})["metrics"]
    assert m["mismatch_tokens"] == sum(len(s["tokens"]) for s in res["sequences"])
    assert m["mismatch_abs_max"] < 1e-4 and m["mismatch_k3"] < 1e-8


def test_truncated_importance_sampling_weights_the_policy_term(engine: Engine) -> None:
    """importance_sampling with tisCap: loss = -sum w * r * A * min(exp(old - sampler), cap) / B."""
    datums = with_old_logprobs(engine, rl_datums(), shift=-0.05)
    rng = np.random.default_rng(5)
    out = []
    for d in datums:
        smp = [o + g for o, g in zip(d["oldLogprobs"], rng.normal(0, 0.5, size=len(d["oldLogprobs"])))]
        out.append({**d, "samplerLogprobs": smp})
    lps = forward(engine, out)
    cap = 1.5
    res = call(engine, "forwardBackward", {"datums": out, "loss": {"name": "importance_sampling", "tisCap": cap}})
    total, n_tok, n_clip, wsum = 0.0, 0, 0, 0.0
    for d, lp in zip(out, lps):
        for t, w in enumerate(d["weights"]):
            raw = np.exp(d["oldLogprobs"][t] - d["samplerLogprobs"][t])
            c = min(raw, cap)
            total += -w * np.exp(lp[t] - d["oldLogprobs"][t]) * d["advantages"][t] * c
            if w:
                n_tok += 1
                n_clip += raw > cap
                wsum += c
    assert res["loss"] == pytest.approx(total / len(out), rel=1e-4, abs=1e-6)
    assert res["metrics"]["tis_clip_frac"] == pytest.approx(n_clip / n_tok)
    assert res["metrics"]["tis_weight_mean"] == pytest.approx(wsum / n_tok, rel=1e-5)
    assert 0 < n_clip < n_tok
    with pytest.raises(ProtocolError, match="tisCap"):
        call(engine, "forwardBackward", {"datums": out, "loss": {"name": "cross_entropy", "tisCap": 2.0}})


# ---- micro-batch planning ---------------------------------------------------------------------------


def _plan_cost(groups: list[list[int]], lengths: list[int]) -> int:
    from erl_engine.engine import MICROBATCH_COST_TOKENS

    return sum(len(g) * max(lengths[i] for i in g) + MICROBATCH_COST_TOKENS for g in groups)


def test_micro_batches_split_where_that_saves_padding() -> None:
    from erl_engine.engine import plan_micro_batches

    # A GRPO batch: 8 prompts of different lengths, 4 samples each (the TRL peer bench's shape).
    lengths = sorted([66, 68, 69, 86, 88, 96, 103, 112] * 4, reverse=True)
    groups = plan_micro_batches(lengths, 16384)
    assert len(groups) == 3
    assert sum(len(g) * max(lengths[i] for i in g) for g in groups) == 2876  # against 3,584 as one batch
    # Equal lengths stay together: a split would only add a micro-batch's cost.
    assert plan_micro_batches([50] * 40, 16384) == [list(range(40))]


def test_micro_batch_plans_are_optimal_and_within_the_budget() -> None:
    import itertools
    import random

    from erl_engine.engine import plan_micro_batches

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        lengths = sorted((rng.randint(1, 300) for _ in range(n)), reverse=True)
        budget = rng.choice([100, 400, 1000, 16384])
        groups = plan_micro_batches(lengths, budget, ids=[10 + i for i in range(n)])
        flat = [i - 10 for g in groups for i in g]
        assert flat == list(range(n))  # every datum once, in order
        for g in groups:
            assert len(g) == 1 or len(g) * max(lengths[i - 10] for i in g) <= budget
        # Brute force over every contiguous split that respects the budget.
        best = None
        for cuts in itertools.product([False, True], repeat=n - 1):
            parts, cur = [], [0]
            for i, c in enumerate(cuts, start=1):
                if c:
                    parts.append(cur)
                    cur = []
                cur.append(i)
            parts.append(cur)
            if all(len(p) == 1 or len(p) * lengths[p[0]] <= budget for p in parts):
                cost = _plan_cost(parts, lengths)
                best = cost if best is None else min(best, cost)
        assert _plan_cost([[i - 10 for i in g] for g in groups], lengths) == best


def test_micro_batch_planning_wants_longest_first() -> None:
    from erl_engine.engine import plan_micro_batches

    with pytest.raises(ValueError, match="sorted longest first"):
        plan_micro_batches([3, 5], 100)


def _masked_mean_k3(ref: list[list[float]], cur: list[list[float]], datums: list[dict[str, Any]]) -> float:
    """k3 = exp(d) - d - 1, d = ref - cur, averaged over the trained tokens (the engine's `kl` metric)."""
    total, count = 0.0, 0
    for r, c, d in zip(ref, cur, datums):
        for rv, cv, w in zip(r, c, d["weights"]):
            if w != 0:
                x = rv - cv
                total += math.exp(x) - x - 1.0
                count += 1
    return total / count


def test_reference_logprobs_are_taken_at_the_loss_temperature() -> None:
    # verl computes the reference's log-probs on logits / T like the policy's. The reference here is
    # the loaded weights (a copy), so its log-probs at T are the policy's before the update.
    e = Engine()
    call(e, "loadModel", load_params(reference="copy"))
    datums = with_old_logprobs(e, rl_datums())
    at = lambda t: [unpack(x) for x in call(e, "forward", {"datums": datums, "temperature": t})["logprobs"]]  # noqa: E731
    ref_t, ref_1 = at(0.5), at(1.0)
    call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo"}})
    call(e, "optimStep", {"lr": 5e-2})
    cur_t, cur_1 = at(0.5), at(1.0)
    expected = _masked_mean_k3(ref_t, cur_t, datums)
    # A reference taken at T = 1 against the policy at T gives another value, well outside the tolerance below.
    wrong = _masked_mean_k3(ref_1, cur_t, datums)
    assert expected > 1e-4 and abs(wrong - expected) > 0.01 * expected, (expected, wrong, _masked_mean_k3(ref_1, cur_1, datums))
    res = call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "klCoef": 0.5, "temperature": 0.5}})
    assert res["metrics"]["kl"] == pytest.approx(expected, rel=1e-3)


def test_log_ratio_and_kl_clamps_reach_the_loss() -> None:
    e = Engine()
    call(e, "loadModel", load_params(reference="copy"))
    # Old log-probs 3 above the current ones: log-ratio -3 on every token.
    datums = with_old_logprobs(e, rl_datums(), shift=3.0)
    free = call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo"}})["metrics"]
    clamped = call(e, "forwardBackward", {"datums": datums, "loss": {"name": "ppo", "logRatioClamp": 0.5}})["metrics"]
    assert free["ratio_mean"] == pytest.approx(math.exp(-3.0), rel=1e-4)
    assert clamped["ratio_mean"] == pytest.approx(math.exp(-0.5), rel=1e-4)
    # After an update the policy has moved from the reference: k3 > cap on some tokens, capped with klClamp.
    call(e, "optimStep", {"lr": 5e-2})
    loss = {"name": "ppo", "klCoef": 0.5}
    kl_free = call(e, "forwardBackward", {"datums": datums, "loss": loss})["metrics"]["kl"]
    kl_capped = call(e, "forwardBackward", {"datums": datums, "loss": {**loss, "klClamp": 1e-4}})["metrics"]["kl"]
    assert kl_free > 1e-3
    assert kl_capped <= 1e-4 + 1e-9

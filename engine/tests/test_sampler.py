"""Sampling: statistical tests of temperature/top-k/top-p with fixed seeds on known logits, then
the batched sampler on the tiny model: seeds, stops, mixed prompt lengths, log-probs vs forward."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import call, datum, unpack

from erl_engine.sampler import choose_tokens

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])
DRAWS = 20000


def frequencies(temperature: float, top_k: int | None, top_p: float | None, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    logits = LOGITS.expand(DRAWS, -1)
    toks = choose_tokens(logits, temperature, top_k, top_p, torch.rand(DRAWS, generator=gen))
    return np.bincount(toks.numpy(), minlength=len(LOGITS)) / DRAWS


def expected(temperature: float, keep: list[int]) -> np.ndarray:
    p = np.exp(LOGITS.numpy() / temperature)
    mask = np.zeros_like(p)
    mask[keep] = 1
    p = p * mask
    return p / p.sum()


def close_to(freq: np.ndarray, want: np.ndarray) -> None:
    # 5 standard errors of a binomial proportion, per token.
    se = np.sqrt(np.maximum(want * (1 - want), 1e-12) / DRAWS)
    assert np.all(np.abs(freq - want) <= 5 * se + 1e-9), (freq, want)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_the_distribution(temperature: float) -> None:
    close_to(frequencies(temperature, None, None), expected(temperature, list(range(8))))


def test_top_k_keeps_the_k_most_likely() -> None:
    f = frequencies(1.0, 3, None)
    assert f[3:].sum() == 0
    close_to(f, expected(1.0, [0, 1, 2]))


def test_top_p_keeps_the_nucleus() -> None:
    p = expected(1.0, list(range(8)))  # 0.39, 0.24, 0.14, ...: the first three cover 0.77
    assert p[:2].sum() < 0.7 < p[:3].sum()
    f = frequencies(1.0, None, 0.7)
    assert f[3:].sum() == 0
    close_to(f, expected(1.0, [0, 1, 2]))


def test_top_k_and_top_p_and_temperature_compose() -> None:
    f = frequencies(0.5, 4, 0.9)
    q = expected(0.5, [0, 1, 2, 3])
    keep = [i for i in range(4) if q[:i].sum() < 0.9]
    close_to(f, expected(0.5, keep))


def test_inverse_cdf_never_picks_a_zero_probability_token() -> None:
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]]).expand(5, -1)
    u = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9999999])
    assert choose_tokens(logits, 1.0, None, None, u).tolist() == [1, 1, 3, 3, 3]


def test_temperature_zero_is_greedy_and_seeds_repeat() -> None:
    gen = torch.Generator().manual_seed(0)
    assert torch.all(choose_tokens(LOGITS.expand(10, -1), 0.0, None, None, torch.rand(10, generator=gen)) == 0)
    a = frequencies(1.0, None, None, seed=3)
    b = frequencies(1.0, None, None, seed=3)
    c = frequencies(1.0, None, None, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---- the sampler on the tiny model --------------------------------------------------------------


def sample(engine: Any, **kw: Any) -> list[dict[str, Any]]:
    req = {"n": 1, "maxTokens": 8, "temperature": 1.0, "seed": 0, **kw}
    out = call(engine, "sample", req)["sequences"]
    for s in out:
        s["logprobs"] = unpack(s["logprobs"])
    return out


def test_same_seed_same_tokens_and_logprobs_match_forward(engine: Any) -> None:
    prompts = [[4, 60, 61, 62, 63, 64, 65, 2, 5], [5], [3, 40, 2, 4, 41, 42, 2, 5]]
    a = sample(engine, prompts=prompts, n=3, maxTokens=20, seed=11)
    b = sample(engine, prompts=prompts, n=3, maxTokens=20, seed=11)
    c = sample(engine, prompts=prompts, n=3, maxTokens=20, seed=12)
    assert [s["tokens"] for s in a] == [s["tokens"] for s in b]
    assert [s["tokens"] for s in a] != [s["tokens"] for s in c]
    assert [s["promptIndex"] for s in a] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    datums = []
    for s in a:
        full = prompts[s["promptIndex"]] + s["tokens"]
        datums.append(datum(full[:-1], full[1:]))
    fwd = [unpack(x) for x in call(engine, "forward", {"datums": datums})["logprobs"]]
    for s, lp in zip(a, fwd):
        tail = lp[len(prompts[s["promptIndex"]]) - 1 :]
        assert np.allclose(s["logprobs"], tail, atol=1e-4)
        if s["stopReason"] == "stop":
            assert s["tokens"][-1] == 2
        else:
            assert len(s["tokens"]) == 20


def test_left_padding_does_not_change_results(engine: Any) -> None:
    short = [5, 60]
    long = [3] + list(range(40, 70)) + [2, 5]
    alone = sample(engine, prompts=[short], temperature=0.0, maxTokens=12)
    mixed = sample(engine, prompts=[long, short], temperature=0.0, maxTokens=12)
    assert alone[0]["tokens"] == mixed[1]["tokens"]
    assert np.allclose(alone[0]["logprobs"], mixed[1]["logprobs"], atol=1e-4)


def test_stop_ids_stop_strings_and_max_tokens(engine: Any) -> None:
    free = sample(engine, prompts=[[5]], n=8, maxTokens=30, seed=1)
    # Stop on a token id that the free run produced: every sequence stops at its first occurrence.
    stop_tok = free[0]["tokens"][3]
    stopped = sample(engine, prompts=[[5]], n=8, maxTokens=30, seed=1, stopTokenIds=[stop_tok])
    for f, s in zip(free, stopped):
        if stop_tok in f["tokens"]:
            k = f["tokens"].index(stop_tok)
            assert s["tokens"] == f["tokens"][: k + 1] and s["stopReason"] == "stop"
    # A two-character stop string taken from the free run's text.
    text = call(engine, "decode", {"ids": free[1]["tokens"][5:7]})["text"]
    by_text = sample(engine, prompts=[[5]], n=8, maxTokens=30, seed=1, stopStrings=[text])
    s1 = by_text[1]
    assert s1["stopReason"] == "stop"
    decoded = call(engine, "decode", {"ids": s1["tokens"]})["text"]
    assert decoded.endswith(text) and decoded.count(text) == 1
    short = sample(engine, prompts=[[5]], maxTokens=3, stopTokenIds=[])
    assert len(short[0]["tokens"]) <= 3


def test_sampler_rejects_bad_requests(engine: Any) -> None:
    from erl_engine.protocol import ProtocolError

    with pytest.raises(ProtocolError, match=r"prompts\[1\]: token id 500 is outside"):
        sample(engine, prompts=[[5], [500]])
    with pytest.raises(ProtocolError, match="exceeds the model's 1024 positions"):
        sample(engine, prompts=[[5]], maxTokens=2000)
    with pytest.raises(ProtocolError, match=r"params.topP: must be > 0"):
        sample(engine, prompts=[[5]], topP=0)


def check_against_forward(engine: Any, prompts: list[list[int]], atol: float, **kw: Any) -> list[dict[str, Any]]:
    seqs = sample(engine, prompts=prompts, n=2, maxTokens=24, seed=5, **kw)
    datums = [datum((prompts[s["promptIndex"]] + s["tokens"])[:-1], (prompts[s["promptIndex"]] + s["tokens"])[1:])
              for s in seqs]
    fwd = [unpack(x) for x in call(engine, "forward", {"datums": datums})["logprobs"]]
    for s, lp in zip(seqs, fwd):
        tail = lp[len(prompts[s["promptIndex"]]) - 1 :]
        assert np.allclose(s["logprobs"], tail, atol=atol), np.abs(np.array(s["logprobs"]) - np.array(tail)).max()
    return seqs


PROMPTS = [[4, 60, 61, 62, 63, 64, 65, 66, 67, 2, 5], [5, 70], [3, 40, 41, 2, 4, 42, 2, 5]]


def test_generic_decoder_agrees_with_the_fast_one(engine: Any, monkeypatch: Any) -> None:
    from erl_engine import sampler

    fast = check_against_forward(engine, PROMPTS, 1e-4)
    monkeypatch.setattr(sampler, "FAST_DECODE", False)
    generic = check_against_forward(engine, PROMPTS, 1e-4)
    assert [s["tokens"] for s in fast] == [s["tokens"] for s in generic]


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-4), ("bfloat16", 0.05)])
def test_lora_model_samples_through_its_adapters(dtype: str, atol: float) -> None:
    from conftest import load_params

    from erl_engine.engine import Engine

    e = Engine()
    call(e, "loadModel", load_params(dtype=dtype, lora={"rank": 4, "alpha": 16, "targetModules": "all-linear"}))
    d = datum([5, 70, 71, 72, 73], [70, 71, 72, 73, 2])
    for _ in range(3):
        call(e, "forwardBackward", {"datums": [d], "loss": {"name": "cross_entropy"}})
        call(e, "optimStep", {"lr": 0.05})
    check_against_forward(e, PROMPTS, atol)


def test_bf16_sampling_is_close_to_forward() -> None:
    from conftest import load_params

    from erl_engine.engine import Engine

    e = Engine()
    call(e, "loadModel", load_params(dtype="bfloat16"))
    check_against_forward(e, PROMPTS, 0.05)


def test_a_sequence_does_not_depend_on_its_batch_mates(engine: Any) -> None:
    """Row r's draws come from (seed, r, step) only; other rows stopping early do not shift them."""
    prompts = [[5, 70], [4, 50, 51, 2, 5]]
    both = sample(engine, prompts=prompts, maxTokens=16, seed=9)
    alone = sample(engine, prompts=prompts, maxTokens=16, seed=9, stopTokenIds=[both[1]["tokens"][0]])
    assert alone[1]["tokens"] == both[1]["tokens"][:1]
    assert alone[0]["tokens"] == both[0]["tokens"][: len(alone[0]["tokens"])]


def test_bf16_model_with_the_fp32_cache_layout(monkeypatch: Any) -> None:
    """A bf16 model keeps its KV cache in bf16 and attends with SDPA; the fp32 layout with matmul
    attention (float32 on a CPU) gives the same results within bf16 tolerance."""
    from conftest import load_params

    from erl_engine.engine import Engine
    from erl_engine.sampler import _FastDecoder

    e = Engine()
    call(e, "loadModel", load_params(dtype="bfloat16"))
    default = check_against_forward(e, PROMPTS, 0.05)
    monkeypatch.setattr(_FastDecoder, "FP32_CACHE_ON_CPU", True)
    fp32_cache = check_against_forward(e, PROMPTS, 0.05)
    same = sum(a["tokens"] == b["tokens"] for a, b in zip(default, fp32_cache))
    assert same >= len(default) // 2


def test_logprobs_at_a_temperature_match_forward_at_that_temperature(engine: Any) -> None:
    """verl's convention: log-probs of logits / T. The sampler's and forward's agree at the same T, and
    differ from the T = 1 ones."""
    prompts = [[4, 60, 61, 62, 63, 2, 5], [5]]
    at_t = sample(engine, prompts=prompts, n=2, maxTokens=12, seed=3, temperature=0.7, logprobTemperature=0.7)
    at_1 = sample(engine, prompts=prompts, n=2, maxTokens=12, seed=3, temperature=0.7)
    assert [s["tokens"] for s in at_t] == [s["tokens"] for s in at_1], "the draw does not depend on it"
    datums = []
    for s in at_t:
        full = prompts[s["promptIndex"]] + s["tokens"]
        datums.append(datum(full[:-1], full[1:]))
    fwd = [unpack(x) for x in call(engine, "forward", {"datums": datums, "temperature": 0.7})["logprobs"]]
    for s, s1, lp in zip(at_t, at_1, fwd):
        tail = lp[len(prompts[s["promptIndex"]]) - 1 :]
        assert np.allclose(s["logprobs"], tail, atol=1e-4)
        assert not np.allclose(s["logprobs"], s1["logprobs"], atol=1e-3)


@pytest.mark.parametrize("fast", [True, False])
def test_identical_prompts_are_prefilled_once_with_the_same_results(engine: Any, monkeypatch: Any, fast: bool) -> None:
    """A task's samples sent as separate identical prompts share one prefill row; the sequences are
    those of a request without the sharing (same draws, log-probs equal to forward's)."""
    from erl_engine import sampler

    monkeypatch.setattr(sampler, "FAST_DECODE", fast)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[1]]
    prefill_rows: list[int] = []
    fast_prefill, model_prefill = sampler._FastDecoder.prefill, sampler._model_prefill

    def counting_fast(self: Any, unique: list[Any], reuse: Any = None) -> Any:
        prefill_rows.append(len(unique))
        return fast_prefill(self, unique, reuse)

    def counting_model(lm: Any, ids: Any, *a: Any) -> Any:
        prefill_rows.append(ids.shape[0])
        return model_prefill(lm, ids, *a)

    monkeypatch.setattr(sampler._FastDecoder, "prefill", counting_fast)
    monkeypatch.setattr(sampler, "_model_prefill", counting_model)
    shared = check_against_forward(engine, prompts, 1e-4)
    assert prefill_rows == [3]  # one prefill row per distinct prompt
    monkeypatch.setattr(sampler, "DEDUP_PROMPTS", False)
    plain = check_against_forward(engine, prompts, 1e-4)
    assert [s["tokens"] for s in shared] == [s["tokens"] for s in plain]
    assert [s["promptIndex"] for s in shared] == [i for i in range(5) for _ in range(2)]


def test_the_vllm_sampler_refuses_log_probs_at_a_temperature() -> None:
    """vLLM returns raw (T = 1) log-probs: a request for them at another temperature is an error, not
    a silent mismatch (the check runs before vLLM is imported, so it is testable without it)."""
    from erl_engine.protocol import ProtocolError as PE
    from erl_engine.vllm_sampler import VllmSampler

    with pytest.raises(PE, match="logprobTemperature: 0.7 is not supported by the vLLM sampler"):
        VllmSampler().sample({"prompts": [], "n": 1, "maxTokens": 1, "temperature": 0.7, "seed": 0,
                              "logprobTemperature": 0.7})


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_other_llama_layout_models_prefill_and_decode_like_forward(model_type: str, monkeypatch: Any) -> None:
    """The fast path's packed prefill and its decode on the other model types it takes: qwen2 (q/k/v
    biases), qwen3 (per-head q/k norms, through the modules) and mistral, with grouped-query attention;
    the same tokens as the model's own prefill and decode."""
    from conftest import FIXTURE, load_params

    from erl_engine import sampler
    from erl_engine.engine import Engine

    config = {"model_type": model_type, "vocab_size": 105, "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "max_position_embeddings": 256, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": True}
    e = Engine()
    call(e, "loadModel", {**load_params(), "path": None, "randomInit": {"config": config, "tokenizerPath": FIXTURE,
                                                                          "seed": 0}})
    assert sampler._FastDecoder.layout(e.need_model()) is not None
    fast = check_against_forward(e, PROMPTS, 1e-4)
    monkeypatch.setattr(sampler, "FAST_DECODE", False)
    generic = check_against_forward(e, PROMPTS, 1e-4)
    assert [s["tokens"] for s in fast] == [s["tokens"] for s in generic]


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-4), ("bfloat16", 0.05)])
def test_prepacked_weights_give_the_plain_results(dtype: str, atol: float, monkeypatch: Any) -> None:
    """The fast path's pre-packed CPU weights (MKL fp32, oneDNN bf16) are used exactly where this CPU
    and build can pack (the sampler's own probe: oneDNN's bf16 packing needs AVX-512 or AVX-NE-CONVERT),
    and sample what F.linear samples."""
    from conftest import load_params

    from erl_engine import sampler
    from erl_engine.engine import Engine

    w = torch.randn(48, 32).to(getattr(torch, dtype))
    fn = sampler._linear(w, None)
    assert fn.__name__ == ("packed" if sampler.prepacking_works(w.dtype) else "plain")
    x = torch.randn(5, 32).to(w.dtype)
    assert torch.allclose(fn(x).float(), torch.nn.functional.linear(x, w).float(), atol=atol)
    e = Engine()
    call(e, "loadModel", load_params(dtype=dtype))
    packed = check_against_forward(e, PROMPTS, atol)
    monkeypatch.setattr(sampler, "PACK_WEIGHTS", False)
    plain = check_against_forward(e, PROMPTS, atol)
    same = sum(a["tokens"] == b["tokens"] for a, b in zip(packed, plain))
    assert same >= len(plain) - (0 if dtype == "float32" else len(plain) // 2)


def test_per_prompt_seeds_sample_each_prompt_as_a_call_of_its_own(engine: Any, monkeypatch: Any) -> None:
    """ERL_ENGINE_SAMPLE_SEEDS=per-prompt: prompt i of a call draws as a call with that prompt alone and
    seed prompt_seed(seed, i) does (how a Tinker service, one prompt per request, is asked); the
    default per-call stream is another."""
    from erl_engine.seeds import prompt_seed

    prompts = [[4, 60, 61, 62, 63, 64, 65, 2, 5], [5], [3, 40, 2, 4, 41, 42, 2, 5]]
    per_call = sample(engine, prompts=prompts, n=2, maxTokens=16, seed=7)
    monkeypatch.setenv("ERL_ENGINE_SAMPLE_SEEDS", "per-prompt")
    together = sample(engine, prompts=prompts, n=2, maxTokens=16, seed=7)
    monkeypatch.delenv("ERL_ENGINE_SAMPLE_SEEDS")
    apart = [s for i, p in enumerate(prompts) for s in sample(engine, prompts=[p], n=2, maxTokens=16, seed=prompt_seed(7, i))]
    assert [s["tokens"] for s in together] == [s["tokens"] for s in apart]
    for a, b in zip(together, apart):
        assert np.allclose(a["logprobs"], b["logprobs"], atol=1e-5)
    assert [s["tokens"] for s in together] != [s["tokens"] for s in per_call]
    assert prompt_seed(7, 0) == 7

"""dtype "auto" and the thread count: resolved by measurement on this machine, with the reason recorded."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import call, load_params

from erl_engine import autotune
from erl_engine.engine import Engine


def test_auto_dtype_resolves_to_a_valid_dtype_and_records_its_reason() -> None:
    e = Engine()
    info = call(e, "loadModel", load_params(dtype="auto"))
    assert info["dtype"] in ("float32", "bfloat16")
    reason = info["dtypeReason"]
    assert reason.startswith("auto: ")
    if autotune.cpu_bf16_off():  # the suite's forced "no fast bf16" pass: fp32, no probe
        assert info["dtype"] == "float32" and autotune.CPU_BF16_ENV in reason
        return
    # The reason carries the measurement behind the choice: both timings of the probe.
    times = re.findall(r"fp32 ([0-9.]+) ms, bf16 ([0-9.]+) ms", reason)
    assert times, reason
    fp32, bf16 = (float(x) for x in times[0])
    assert fp32 > 0 and bf16 > 0
    # ...and the choice follows from it.
    assert (info["dtype"] == "bfloat16") == (fp32 / bf16 >= autotune.BF16_MARGIN)
    # The loaded model computes in the chosen dtype: the sampler and the trainer see it.
    assert e.need_model().dtype == info["dtype"]
    assert call(e, "info", {})["dtypeReason"] == reason


def test_an_explicit_dtype_wins() -> None:
    for dtype in ("float32", "bfloat16"):
        info = call(Engine(), "loadModel", load_params(dtype=dtype))
        assert info["dtype"] == dtype
        assert info["dtypeReason"] == "requested"


def test_the_cpu_verdict_follows_the_measured_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(autotune.CPU_BF16_ENV, raising=False)  # the measurement itself, in either pass
    cfg = type("Cfg", (), {"hidden_size": 96, "intermediate_size": 160})()
    cpu = torch.device("cpu")
    for fp32, bf16, want in ((3e-3, 1e-3, "bfloat16"), (1e-3, 1e-3, "float32"), (1e-3, 4e-3, "float32")):
        autotune._dtype_memo.clear()
        monkeypatch.setattr(autotune, "probe_cpu_bf16", lambda h, i, fp32=fp32, bf16=bf16: (fp32, bf16, 64))
        dtype, reason = autotune.resolve_dtype("auto", cpu, cfg)
        assert dtype == want, reason
        assert "96x160 MLP block" in reason
    autotune._dtype_memo.clear()


def test_cpu_bf16_off_means_fp32_and_no_bf16_prepacking(monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """$ERL_ENGINE_CPU_BF16=off: the engine behaves as on a CPU without fast bf16 (AVX2 only) whatever
    this one has; an unknown value is named and ignored."""
    from erl_engine import sampler

    cfg = type("Cfg", (), {"hidden_size": 96, "intermediate_size": 160})()
    # A probe that would choose bf16, to show the variable wins over it.
    monkeypatch.setattr(autotune, "probe_cpu_bf16", lambda h, i: (3e-3, 1e-3, 64))
    autotune._dtype_memo.clear()
    monkeypatch.setenv(autotune.CPU_BF16_ENV, "off")
    dtype, reason = autotune.resolve_dtype("auto", torch.device("cpu"), cfg)
    assert dtype == "float32" and "=off" in reason
    assert not sampler.prepacking_works(torch.bfloat16)
    fn = sampler._linear(torch.randn(8, 4).bfloat16(), None)
    assert fn.__name__ == "plain"
    monkeypatch.setenv(autotune.CPU_BF16_ENV, "sometimes")
    dtype, reason = autotune.resolve_dtype("auto", torch.device("cpu"), cfg)
    assert dtype == "bfloat16"
    assert "ignoring ERL_ENGINE_CPU_BF16='sometimes'" in capfd.readouterr().err
    autotune._dtype_memo.clear()


def test_the_probe_measures_both_dtypes() -> None:
    fp32, bf16, tokens = autotune.probe_cpu_bf16(64, 128, repeats=1)
    assert fp32 > 0 and bf16 > 0 and 16 <= tokens <= 256


def test_model_shape_reads_common_config_names() -> None:
    llama = type("C", (), {"hidden_size": 128, "intermediate_size": 512})()
    gpt2 = type("C", (), {"n_embd": 64, "n_inner": None})()
    assert autotune.model_shape(llama) == (128, 512)
    assert autotune.model_shape(gpt2) == (64, 256)
    assert autotune.model_shape(None) == (1024, 4096)


def test_threads_from_the_environment_the_test_suite_or_a_measurement() -> None:
    before = torch.get_num_threads()
    try:
        assert autotune.configure_threads({"ERL_ENGINE_THREADS": "1"}) == (1, "ERL_ENGINE_THREADS=1")
        n, reason = autotune.configure_threads({"ERL_TEST": "1"})
        assert n == 1 and "ERL_TEST" in reason
        torch.set_num_threads(before)
        n, reason = autotune.probe_threads(max_threads=2, repeats=1)
        assert n in (1, 2)
        assert re.search(r"1 thread [0-9.]+ ms, 2 threads [0-9.]+ ms", reason), reason
        assert reason.endswith(f"chose {n}")
        assert autotune.probe_threads(max_threads=1) == (1, "1 (one CPU available to torch)")
    finally:
        torch.set_num_threads(before)


def test_a_re_measurement_keeps_the_count_unless_it_is_clearly_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise (2.7 against 2.5 ms) does not flip the count during a run; a taken core (9 ms) does."""
    before = torch.get_num_threads()
    for one, two, current, want, kept in ((2.7e-3, 2.5e-3, 2, 2, True), (2.7e-3, 2.5e-3, None, 1, False),
                                          (2.0e-3, 9.0e-3, 2, 1, False), (9.0e-3, 2.0e-3, 1, 2, False)):
        monkeypatch.setattr(autotune, "_time",
                            lambda fn, one=one, two=two: one if torch.get_num_threads() == 1 else two)
        n, reason = autotune.probe_threads(max_threads=2, repeats=3, current=current)
        assert n == want, reason
        assert ("kept" in reason) == kept, reason
    assert torch.get_num_threads() == before


def test_threads_are_measured_again_during_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    verdicts = iter([(2, "measured at start: 1 thread 2.0 ms, 2 threads 1.0 ms (median of 5 matmul probes); chose 2"),
                     (1, "measured at start: 1 thread 2.0 ms, 2 threads 9.0 ms (median of 5 matmul probes); chose 1")])
    calls: list[int | None] = []

    def fake_probe(max_threads: int | None = None, repeats: int = 5, current: int | None = None) -> tuple[int, str]:
        calls.append(max_threads)
        return next(verdicts)

    monkeypatch.setattr(autotune, "probe_threads", fake_probe)
    try:
        torch.set_num_threads(2)
        assert autotune.configure_threads({})[0] == 2
        start = autotune._last_probe
        # Within the interval nothing is measured.
        assert autotune.maybe_retune(now=start + 10, interval=30) is None
        assert len(calls) == 1
        # After it, a busier machine moves the engine to one thread, and says so.
        note = autotune.maybe_retune(now=start + 31, interval=30)
        assert note is not None and "threads 2 -> 1" in note and "2 threads 9.0 ms" in note
        assert torch.get_num_threads() == 1
        assert calls == [None, 2]  # the re-measurement may go back up to the count chosen from
        assert "re-measured" in autotune.threads_reason() and "2 -> 1" in autotune.threads_reason()
        # A count pinned by the environment is never measured again.
        autotune.configure_threads({"ERL_ENGINE_THREADS": "2"})
        assert autotune.maybe_retune(now=start + 1000, interval=30) is None
        assert len(calls) == 2 and torch.get_num_threads() == 2
    finally:
        autotune.configure_threads({"ERL_ENGINE_THREADS": str(before)})


def test_info_names_the_cpu() -> None:
    info = call(Engine(), "info", {})
    assert info["cpu"]["model"]
    assert isinstance(info["cpu"]["flags"], list)
    assert info["threads"] == torch.get_num_threads()
    assert info["threadsReason"]


def test_auto_is_the_loaders_default() -> None:
    params = load_params()
    del params["dtype"]
    info = call(Engine(), "loadModel", params)
    assert info["dtype"] in ("float32", "bfloat16")
    assert info["dtypeReason"].startswith("auto: ")


def test_heavy_calls_give_the_thread_count_a_chance_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(autotune, "maybe_retune", lambda: seen.append("retune") or None)
    e = Engine()
    call(e, "loadModel", load_params())
    call(e, "info", {})
    assert seen == []
    call(e, "sample", {"prompts": [[4, 9, 10]], "n": 1, "maxTokens": 2, "temperature": 1.0, "seed": 0})
    assert seen == ["retune"]

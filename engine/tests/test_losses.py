"""Each loss's value and gradient against an independent reference: plain per-token formulas in
Python floats for the value, central finite differences of that reference for the gradient."""

from __future__ import annotations

import math

import pytest
import torch

from erl_engine.losses import LossSpec, compute_loss

# A hand-made batch of 3 sequences x 4 tokens. Comments give the ratio r = exp(logp - old) and the
# branch each PPO token falls in with clip_low=0.2, clip_high=0.28, dual_clip=3.
LOGP = [
    [-1.0, -0.5, -2.0, -0.3],
    [-1.2, -0.7, -0.1, -3.0],
    [-0.9, -2.5, -1.5, -0.2],
]
OLD = [
    [-1.0, -1.0, -1.5, -0.3],  # r = 1 (A>0, unclipped), 1.65 (A>0, clip high), 0.61 (A<0, clip low), 1 masked
    [-1.3, -2.3, -0.1, -1.0],  # r = 1.105 (A<0 unclipped), 4.95 (A<0 dual clip), 1 (A=0), 0.135 (A>0, low r)
    [-0.9, -2.5, -1.5, -0.2],  # r = 1 everywhere; a zero-advantage sequence
]
ADV = [
    [1.0, 2.0, -1.5, 3.0],
    [-0.5, -1.0, 0.0, 0.7],
    [0.0, 0.0, 0.0, 0.0],
]
W = [
    [1.0, 1.0, 1.0, 0.0],
    [1.0, 1.0, 1.0, 1.0],
    [1.0, 1.0, 0.5, 0.0],
]
REF = [
    [-1.1, -0.6, -1.7, -0.3],
    [-1.0, -0.9, -0.3, -2.5],
    [-1.0, -2.0, -1.6, -0.4],
]


def ref_token_loss(name: str, lp: float, old: float, a: float, ref: float, cl: float, ch: float,
                   dual: float | None, kl: float) -> float:
    if name == "cross_entropy":
        v = -lp
    else:
        r = math.exp(lp - old)
        if name == "importance_sampling":
            v = -r * a
        else:
            rc = min(max(r, 1 - cl), 1 + ch)
            v = max(-a * r, -a * rc)
            if dual is not None and a < 0:
                v = min(v, -a * dual)
    if kl:
        d = ref - lp
        v += kl * (math.exp(d) - d - 1)
    return v


def ref_loss(spec: LossSpec, logp: list[list[float]]) -> float:
    total = 0.0
    for b in range(len(logp)):
        for t in range(len(logp[b])):
            total += W[b][t] * ref_token_loss(
                spec.name, logp[b][t], OLD[b][t], ADV[b][t], REF[b][t], spec.clip_low, spec.clip_high,
                spec.dual_clip, spec.kl_coef,
            )
    if spec.aggregation == "seq-mean-token-sum":
        return total / len(logp)
    return total / sum(1 for row in W for w in row if w != 0)


def engine_loss(spec: LossSpec) -> tuple[float, list[list[float]]]:
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    loss, _ = compute_loss(spec, logp, t(W), t(ADV), t(OLD), t(REF))
    loss.backward()
    assert logp.grad is not None
    return float(loss.detach()), logp.grad.tolist()


def finite_diff(spec: LossSpec, eps: float = 1e-6) -> list[list[float]]:
    grad = [[0.0] * 4 for _ in range(3)]
    for b in range(3):
        for t in range(4):
            up = [row[:] for row in LOGP]
            dn = [row[:] for row in LOGP]
            up[b][t] += eps
            dn[b][t] -= eps
            grad[b][t] = (ref_loss(spec, up) - ref_loss(spec, dn)) / (2 * eps)
    return grad


SPECS = [
    LossSpec("cross_entropy"),
    LossSpec("importance_sampling"),
    LossSpec("ppo", clip_low=0.2, clip_high=0.28),
    LossSpec("ppo", clip_low=0.2, clip_high=0.28, dual_clip=3.0),
    LossSpec("ppo", clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.1),
    LossSpec("importance_sampling", kl_coef=0.5),
    LossSpec("cross_entropy", kl_coef=0.05),
]


@pytest.mark.parametrize("aggregation", ["seq-mean-token-sum", "token-mean"])
@pytest.mark.parametrize("base", SPECS, ids=lambda s: f"{s.name}-dual{s.dual_clip}-kl{s.kl_coef}")
def test_value_and_gradient_match_reference(base: LossSpec, aggregation: str) -> None:
    spec = LossSpec(**{**base.__dict__, "aggregation": aggregation})
    value, grad = engine_loss(spec)
    assert value == pytest.approx(ref_loss(spec, LOGP), rel=1e-10, abs=1e-12)
    fd = finite_diff(spec)
    for b in range(3):
        for t in range(4):
            assert grad[b][t] == pytest.approx(fd[b][t], rel=1e-5, abs=1e-7), (b, t)


def test_branches_are_exercised() -> None:
    """The batch really hits every PPO branch: the clipped and dual-clipped tokens get no gradient."""
    spec = LossSpec("ppo", clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    loss, diag = compute_loss(spec, logp, t(W), t(ADV), t(OLD))
    loss.backward()
    g = logp.grad
    assert g is not None
    assert bool(diag["clip_high"][0, 1]) and g[0, 1] == 0  # A>0, r>1.28
    assert bool(diag["clip_low"][0, 2]) and g[0, 2] == 0  # A<0, r<0.8
    assert bool(diag["dual_clip"][1, 1]) and g[1, 1] == 0  # A<0, r>3
    assert g[0, 0] != 0 and g[1, 0] != 0 and g[1, 3] != 0  # unclipped tokens
    assert g[0, 3] == 0  # masked
    assert torch.all(g[2] == 0) and g[1, 2] == 0  # zero advantage
    # Without the dual clip the same token has a gradient (-A * r / B).
    spec_nodual = LossSpec("ppo", clip_low=0.2, clip_high=0.28)
    logp2 = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    compute_loss(spec_nodual, logp2, t(W), t(ADV), t(OLD))[0].backward()
    assert logp2.grad is not None
    assert float(logp2.grad[1, 1]) == pytest.approx(1.0 * math.exp(-0.7 + 2.3) / 3)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-sum", "token-mean"])
def test_ppo_at_ratio_one_equals_importance_sampling(aggregation: str) -> None:
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    grads = []
    values = []
    for spec in (
        LossSpec("ppo", aggregation=aggregation, clip_low=0.2, clip_high=0.28, dual_clip=3.0),
        LossSpec("importance_sampling", aggregation=aggregation),
    ):
        logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
        loss, _ = compute_loss(spec, logp, t(W), t(ADV), t(LOGP))  # old == current: r = 1
        loss.backward()
        values.append(float(loss.detach()))
        grads.append(logp.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12)


def test_k3_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    spec = LossSpec("cross_entropy", kl_coef=1.0)
    _, diag = compute_loss(spec, t(LOGP), t(W), ref_logp=t(LOGP))
    assert torch.all(diag["kl"] == 0)
    _, diag = compute_loss(spec, t(LOGP), t(W), ref_logp=t(REF))
    assert torch.all(diag["kl"] >= 0) and float(diag["kl"].sum()) > 0


def test_explicit_normalizer_splits_a_batch_exactly() -> None:
    """Two calls over halves with the whole batch's divisor give the whole batch's gradient."""
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    for aggregation, norm in (("seq-mean-token-sum", 3.0), ("token-mean", 10.0)):
        whole = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
        compute_loss(LossSpec("importance_sampling", aggregation=aggregation), whole, t(W), t(ADV), t(OLD))[0].backward()
        part = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
        spec = LossSpec("importance_sampling", aggregation=aggregation, normalizer=norm)
        for rows in ([0], [1, 2]):
            compute_loss(spec, part[rows], t(W)[rows], t(ADV)[rows], t(OLD)[rows])[0].backward()
        assert whole.grad is not None and part.grad is not None
        assert torch.allclose(whole.grad, part.grad, atol=1e-12)


def test_all_masked_is_zero_not_nan() -> None:
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    loss, _ = compute_loss(LossSpec("cross_entropy", aggregation="token-mean"), logp, torch.zeros(3, 4, dtype=torch.float64))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logp.grad is not None and torch.all(logp.grad == 0)


# Sampler log-probs for truncated importance sampling: exp(OLD - SAMPLER) spans below and above the cap.
SAMPLER = [
    [-1.5, -1.0, -1.4, -0.3],  # weights 1.65 (capped at 1.5), 1, 0.90, masked
    [-1.0, -2.5, -0.1, -0.5],  # 0.74, 1.22, 1, 0.61
    [-2.0, -2.5, -1.0, -0.2],  # 3.0 (capped), 1, 0.61, masked
]


@pytest.mark.parametrize("name", ["importance_sampling", "ppo"])
def test_truncated_importance_sampling_value_and_gradient(name: str) -> None:
    """Each token's policy term times the constant min(exp(old - sampler), cap); the KL term untouched."""
    cap = 1.5
    spec = LossSpec(name, clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.1, tis_cap=cap)

    def reference(logp: list[list[float]]) -> float:
        total = 0.0
        for b in range(3):
            for t in range(4):
                lp, old, a = logp[b][t], OLD[b][t], ADV[b][t]
                pg = ref_token_loss(name, lp, old, a, REF[b][t], 0.2, 0.28, 3.0, 0.0)
                d = REF[b][t] - lp
                kl = 0.1 * (math.exp(d) - d - 1)
                total += W[b][t] * (pg * min(math.exp(old - SAMPLER[b][t]), cap) + kl)
        return total / 3

    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    loss, diag = compute_loss(spec, logp, t(W), t(ADV), t(OLD), t(REF), t(SAMPLER))
    loss.backward()
    assert logp.grad is not None
    assert float(loss) == pytest.approx(reference(LOGP), rel=1e-9)
    eps = 1e-6
    for b in range(3):
        for k in range(4):
            up = [row[:] for row in LOGP]
            dn = [row[:] for row in LOGP]
            up[b][k] += eps
            dn[b][k] -= eps
            fd = (reference(up) - reference(dn)) / (2 * eps)
            assert float(logp.grad[b, k]) == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert diag["tis_clip"].tolist()[0][:2] == [True, False] and diag["tis_clip"][2, 0]
    with pytest.raises(ValueError, match="samplerLogprobs"):
        compute_loss(spec, logp, t(W), t(ADV), t(OLD), t(REF))


def test_log_ratio_clamp_against_hand_values() -> None:
    """logp - old = 30 and -25 are clamped to ±20 (verl): r = e^20 and e^-20; in range it is untouched."""
    logp = torch.tensor([[0.0, -30.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-30.0, -5.0, -1.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)
    w = torch.ones(1, 3, dtype=torch.float64)
    spec = LossSpec("importance_sampling", log_ratio_clamp=20.0)
    loss, diag = compute_loss(spec, logp, w, adv, old)
    assert diag["ratio"][0].tolist() == pytest.approx([math.exp(20), math.exp(-20), math.exp(0.5)])
    # -r*A per token, summed over the one sequence.
    assert float(loss.detach()) == pytest.approx(-math.exp(20) + math.exp(-20) - math.exp(0.5))
    loss.backward()
    assert logp.grad is not None
    # Clamped tokens carry no gradient; the free one has d(-r)/dlogp = -r.
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, -math.exp(0.5)])
    # Unclamped, the first token's ratio is e^30.
    _, diag = compute_loss(LossSpec("importance_sampling"), logp.detach(), w, adv, old)
    assert float(diag["ratio"][0, 0]) == pytest.approx(math.exp(30))


def test_kl_clamp_against_hand_values() -> None:
    """k3 = e^d - d - 1 with d = ref - logp: d = 3 gives 16.0855, capped at 10; d = 0.5 gives 0.148721
    (free); d = -25 is first clamped to -20 by the log-ratio clamp: e^-20 + 19, then capped at 10."""
    logp = torch.tensor([[-4.0, -1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.0, -0.5, -25.0]], dtype=torch.float64)
    w = torch.ones(1, 3, dtype=torch.float64)
    spec = LossSpec("cross_entropy", kl_coef=1.0, kl_clamp=10.0, log_ratio_clamp=20.0)
    loss, diag = compute_loss(spec, logp, w, ref_logp=ref)
    want = [10.0, math.exp(0.5) - 0.5 - 1, 10.0]
    assert diag["kl"][0].tolist() == pytest.approx(want)
    assert float(loss.detach()) == pytest.approx(4.0 + 1.0 + 0.0 + sum(want))
    loss.backward()
    assert logp.grad is not None
    # d/dlogp of (-logp + k3): -1 + (1 - e^d) where k3 is free; -1 where it is capped.
    assert logp.grad[0].tolist() == pytest.approx([-1.0, -1.0 + 1 - math.exp(0.5), -1.0])
    # The log-ratio clamp alone: d = -25 → -20, k3 = e^-20 + 19, no gradient through the clamp.
    logp2 = logp.detach().clone().requires_grad_(True)
    loss2, diag = compute_loss(LossSpec("cross_entropy", kl_coef=1.0, log_ratio_clamp=20.0), logp2, w, ref_logp=ref)
    assert float(diag["kl"][0, 2]) == pytest.approx(math.exp(-20) + 19)
    loss2.backward()
    assert logp2.grad is not None and float(logp2.grad[0, 2]) == pytest.approx(-1.0)
    # Without clamps: the full 16.0855 and e^-25 + 24.
    _, diag = compute_loss(LossSpec("cross_entropy", kl_coef=1.0), logp.detach(), w, ref_logp=ref)
    assert diag["kl"][0].tolist() == pytest.approx([math.exp(3) - 4, math.exp(0.5) - 1.5, math.exp(-25) + 24])


def test_losses_are_a_table_of_named_functions() -> None:
    from erl_engine.losses import LOSSES

    assert sorted(LOSSES) == ["cross_entropy", "importance_sampling", "ppo"]
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        compute_loss(LossSpec("nope"), torch.zeros(1, 1), torch.ones(1, 1))

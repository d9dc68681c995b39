"""The training losses, as pure functions of per-token tensors.

Every loss works on a padded batch of shape [B, T]:
  logp       log-prob of each target under the current policy (differentiable)
  weights    per-target weight; 0 masks the token out (cross-entropy weight, and the RL losses' mask)
  advantages per-target advantage (RL losses)
  old_logp   per-target log-prob under the sampling policy (RL losses)
  ref_logp   per-target log-prob under the frozen reference (only when kl_coef > 0)

Per-token losses are multiplied by the weight, then aggregated:
  seq-mean-token-sum (default): sum over the tokens of each sequence, mean over sequences;
  token-mean: sum over all tokens divided by the number of tokens with a non-zero weight.
The divisor can be given explicitly (`normalizer`) so that a batch split over several
forward_backward calls gets exactly the gradient of the whole batch.

Losses:
  cross_entropy        -w * logp
  importance_sampling  -w * r * A,                 r = exp(logp - old_logp)
  ppo                  w * max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), and for A < 0 the
                       dual clip caps it at -A * dual_clip
  + kl_coef * w * k3,  k3 = exp(ref - logp) - (ref - logp) - 1 (a non-negative, low-variance KL
                       estimator of KL(policy || reference))

Truncated importance sampling (tis_cap = C, RL losses): when the tokens were sampled by another
implementation of the policy (vLLM, a bf16 sampler) with log-probs `sampler_logp`, and `old_logp` are
the trainer's own log-probs of the sampling-time weights, the policy term of each token is multiplied
by the constant min(exp(old_logp - sampler_logp), C): the importance weight from the sampler's
distribution to the trainer's, truncated at C so that rare tokens the sampler over-sampled cannot
dominate. Tokens without sampler log-probs get weight 1.

Optional clamps (verl's, off unless set): `log_ratio_clamp` c clamps logp - old_logp and
ref - logp to [-c, c] before they are exponentiated (verl: 20); `kl_clamp` caps k3 at that value
(verl: 10). A clamped value carries no gradient, as in verl. The log-probs themselves are computed
by the engine, at the temperature it is given (verl: logits / T with T the sampling temperature).

Each loss is a named function in `LOSSES`; `LossSpec`'s defaults are the engine's only defaults
(PPO clip 0.2 / 0.28, the reference's values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

Diag = dict[str, torch.Tensor]
# (spec, logp, advantages, old_logp, diagnostics to fill) -> per-token loss [B, T], before weights.
LossFn = Callable[["LossSpec", torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", Diag], torch.Tensor]

AGGREGATIONS = ("seq-mean-token-sum", "token-mean")

# The reference's PPO clip range (verl's clip_ratio_low / clip_ratio_high in the ERL scripts).
CLIP_LOW = 0.2
CLIP_HIGH = 0.28


@dataclass
class LossSpec:
    name: str
    aggregation: str = "seq-mean-token-sum"
    clip_low: float = CLIP_LOW
    clip_high: float = CLIP_HIGH
    dual_clip: float | None = None
    kl_coef: float = 0.0
    normalizer: float | None = None
    # Log-probs are log_softmax(logits / temperature) (the engine applies it).
    temperature: float = 1.0
    log_ratio_clamp: float | None = None
    kl_clamp: float | None = None
    tis_cap: float | None = None


def default_normalizer(rows: Sequence[Any], aggregation: str) -> float:
    """The divisor of an aggregation: the number of rows (sequences), or of weights that are non-zero.
    `rows` is a [B, T] weight tensor or a list of per-row weight arrays."""
    if aggregation == "seq-mean-token-sum":
        return float(len(rows))
    return float(sum(int((w != 0).sum()) for w in rows))


def _clamped(x: torch.Tensor, bound: float | None) -> torch.Tensor:
    return x if bound is None else torch.clamp(x, -bound, bound)


def _ratio(spec: LossSpec, logp: torch.Tensor, old_logp: torch.Tensor | None, diag: Diag) -> torch.Tensor:
    if old_logp is None:
        raise ValueError(f"loss {spec.name} needs advantages and oldLogprobs on every datum")
    ratio = torch.exp(_clamped(logp - old_logp, spec.log_ratio_clamp))
    diag["ratio"] = ratio.detach()
    return ratio


def cross_entropy(spec: LossSpec, logp: torch.Tensor, adv: torch.Tensor | None, old: torch.Tensor | None,
                  diag: Diag) -> torch.Tensor:
    return -logp


def importance_sampling(spec: LossSpec, logp: torch.Tensor, adv: torch.Tensor | None,
                        old: torch.Tensor | None, diag: Diag) -> torch.Tensor:
    ratio = _ratio(spec, logp, old, diag)
    assert adv is not None
    return -ratio * adv


def ppo(spec: LossSpec, logp: torch.Tensor, adv: torch.Tensor | None, old: torch.Tensor | None,
        diag: Diag) -> torch.Tensor:
    ratio = _ratio(spec, logp, old, diag)
    assert adv is not None
    clipped = torch.clamp(ratio, 1.0 - spec.clip_low, 1.0 + spec.clip_high)
    loss = torch.maximum(-adv * ratio, -adv * clipped)
    # Which branch is active decides the gradient; the fractions are reported as metrics.
    diag["clip_low"] = ((ratio < 1.0 - spec.clip_low) & (adv < 0)).detach()
    diag["clip_high"] = ((ratio > 1.0 + spec.clip_high) & (adv > 0)).detach()
    if spec.dual_clip is not None:
        cap = -adv * spec.dual_clip
        diag["dual_clip"] = ((adv < 0) & (loss > cap)).detach()
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    return loss


LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
}
LOSS_NAMES = tuple(LOSSES)


def k3_kl(spec: LossSpec, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(d) - d - 1 with d = ref - logp, d clamped by `log_ratio_clamp`, the result by `kl_clamp`."""
    d = _clamped(ref_logp - logp, spec.log_ratio_clamp)
    k3 = torch.exp(d) - d - 1.0
    return k3 if spec.kl_clamp is None else torch.clamp(k3, max=spec.kl_clamp)


def aggregate(token_loss: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Sum of weighted per-token losses over the divisor (both aggregations reduce to this)."""
    if normalizer <= 0:
        # All tokens masked: a zero loss that still has a graph, so backward is a no-op, not an error.
        return token_loss.sum() * 0.0
    return token_loss.sum() / normalizer


def compute_loss(
    spec: LossSpec,
    logp: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Diag]:
    """The aggregated loss of one batch (normalised by `spec.normalizer` or the batch's own divisor)
    and per-token diagnostics (detached) for metrics."""
    fn = LOSSES.get(spec.name)
    if fn is None:
        raise ValueError(f"unknown loss {spec.name!r}; expected one of {', '.join(LOSS_NAMES)}")
    if fn is not cross_entropy and advantages is None:
        raise ValueError(f"loss {spec.name} needs advantages and oldLogprobs on every datum")
    diag: Diag = {}
    loss = fn(spec, logp, advantages, old_logp, diag)
    if spec.tis_cap is not None and fn is not cross_entropy:
        if sampler_logp is None:
            raise ValueError("tisCap needs samplerLogprobs")
        assert old_logp is not None
        raw = torch.exp(old_logp - sampler_logp)
        tis = torch.clamp(raw, max=spec.tis_cap).detach()
        diag["tis"] = tis
        diag["tis_clip"] = (raw > spec.tis_cap).detach()
        loss = loss * tis
    diag["pg"] = loss.detach()
    if spec.kl_coef:
        if ref_logp is None:
            raise ValueError("klCoef > 0 needs a frozen reference (load the model with `reference`)")
        k3 = k3_kl(spec, logp, ref_logp)
        diag["kl"] = k3.detach()
        loss = loss + spec.kl_coef * k3
    norm = spec.normalizer if spec.normalizer is not None else default_normalizer(weights, spec.aggregation)
    return aggregate(loss * weights, norm), diag

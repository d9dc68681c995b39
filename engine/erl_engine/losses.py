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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("seq-mean-token-sum", "token-mean")
LOSS_NAMES = ("cross_entropy", "importance_sampling", "ppo")


@dataclass
class LossSpec:
    name: str
    aggregation: str = "seq-mean-token-sum"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    normalizer: float | None = None
    tis_cap: float | None = None


def default_normalizer(weights: torch.Tensor, aggregation: str) -> float:
    """The divisor of an aggregation over this batch: sequences, or tokens with a non-zero weight."""
    if aggregation == "seq-mean-token-sum":
        return float(weights.shape[0])
    return float((weights != 0).sum().item())


def per_token_loss(
    spec: LossSpec,
    logp: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns the weighted per-token loss [B, T] and per-token diagnostics (detached) for metrics."""
    diag: dict[str, torch.Tensor] = {}
    if spec.name == "cross_entropy":
        loss = -logp
    elif spec.name in ("importance_sampling", "ppo"):
        if advantages is None or old_logp is None:
            raise ValueError(f"loss {spec.name} needs advantages and oldLogprobs on every datum")
        ratio = torch.exp(logp - old_logp)
        diag["ratio"] = ratio.detach()
        if spec.name == "importance_sampling":
            loss = -ratio * advantages
        else:
            clipped = torch.clamp(ratio, 1.0 - spec.clip_low, 1.0 + spec.clip_high)
            unclipped_loss = -advantages * ratio
            clipped_loss = -advantages * clipped
            loss = torch.maximum(unclipped_loss, clipped_loss)
            # Which branch is active decides the gradient; the fractions are reported as metrics.
            diag["clip_low"] = ((ratio < 1.0 - spec.clip_low) & (advantages < 0)).detach()
            diag["clip_high"] = ((ratio > 1.0 + spec.clip_high) & (advantages > 0)).detach()
            if spec.dual_clip is not None:
                cap = -advantages * spec.dual_clip
                dual = (advantages < 0) & (loss > cap)
                loss = torch.where(advantages < 0, torch.minimum(loss, cap), loss)
                diag["dual_clip"] = dual.detach()
    else:
        raise ValueError(f"unknown loss {spec.name!r}; expected one of {', '.join(LOSS_NAMES)}")
    if spec.tis_cap is not None and spec.name != "cross_entropy":
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
        delta = ref_logp - logp
        k3 = torch.exp(delta) - delta - 1.0
        diag["kl"] = k3.detach()
        loss = loss + spec.kl_coef * k3
    return loss * weights, diag


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The aggregated loss of one batch (normalised by `spec.normalizer` or the batch's own divisor)."""
    tl, diag = per_token_loss(spec, logp, weights, advantages, old_logp, ref_logp, sampler_logp)
    norm = spec.normalizer if spec.normalizer is not None else default_normalizer(weights, spec.aggregation)
    return aggregate(tl, norm), diag

"""forwardBackward's metrics, accumulated over micro-batches: the per-token diagnostics of the losses
(losses.py) averaged over the tokens with a non-zero weight, and the rollout-trainer gap. Torch only, so
that the `engine.kind: "tinker"` bridge reports the same metrics from a Tinker service's log-probs."""

from __future__ import annotations

import math

import torch


class LossMetrics:
    """Sums per-token diagnostics over unmasked tokens across micro-batches (and engine ranks)."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, float] = {}
        self.rmin = math.inf
        self.rmax = -math.inf
        self.mm_count = 0
        self.mm_max = 0.0

    def _add(self, key: str, v: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + v

    @classmethod
    def merged(cls, parts: list["LossMetrics"]) -> "LossMetrics":
        """The sums of several ranks' accumulators (every metric is a sum, a min or a max)."""
        out = cls()
        for part in parts:
            out.count += part.count
            for key, v in part.sums.items():
                out._add(key, v)
            out.rmin = min(out.rmin, part.rmin)
            out.rmax = max(out.rmax, part.rmax)
            out.mm_count += part.mm_count
            out.mm_max = max(out.mm_max, part.mm_max)
        return out

    def add_mismatch(self, mask: torch.Tensor, logp: torch.Tensor, sampler_logp: torch.Tensor) -> None:
        """The rollout-trainer gap on tokens that carry the sampler's log-probs: d = trainer - sampler."""
        if not mask.any():
            return
        gap = (logp - sampler_logp)[mask].double()
        self.mm_count += int(gap.numel())
        self._add("mm_abs", float(gap.abs().sum()))
        # k3 estimate of KL(sampler || trainer) from tokens drawn by the sampler: r - 1 - log r, r = p/q.
        self._add("mm_k3", float((torch.exp(gap) - 1.0 - gap).sum()))
        self.mm_max = max(self.mm_max, float(gap.abs().max()))

    def add(
        self,
        mask: torch.Tensor,
        logp: torch.Tensor,
        ent: torch.Tensor | None,
        diag: dict[str, torch.Tensor],
        w: torch.Tensor,
        norm: float,
    ) -> None:
        m = mask.float()
        self.count += int(m.sum())
        self._add("logprob", float((logp * m).sum()))
        if ent is not None:
            self._add("entropy", float((ent * m).sum()))
        if "ratio" in diag:
            r = diag["ratio"]
            self._add("ratio", float((r * m).sum()))
            if mask.any():
                self.rmin = min(self.rmin, float(r[mask].min()))
                self.rmax = max(self.rmax, float(r[mask].max()))
        for key in ("clip_low", "clip_high", "dual_clip", "kl", "tis", "tis_clip"):
            if key in diag:
                self._add(key, float((diag[key].float() * m).sum()))
        if norm > 0:
            self._add("pg_loss", float((diag["pg"] * w).sum()) / norm)

    def result(self) -> dict[str, float]:
        c = max(self.count, 1)
        out: dict[str, float] = {"tokens": float(self.count), "logprob_mean": self.sums.get("logprob", 0.0) / c}
        if "entropy" in self.sums:
            out["entropy"] = self.sums["entropy"] / c
        if "ratio" in self.sums:
            out["ratio_mean"] = self.sums["ratio"] / c
            out["ratio_min"] = self.rmin if self.count else 1.0
            out["ratio_max"] = self.rmax if self.count else 1.0
        names = {"clip_low": "clip_frac_low", "clip_high": "clip_frac_high", "dual_clip": "dual_clip_frac", "kl": "kl",
                 "tis": "tis_weight_mean", "tis_clip": "tis_clip_frac"}
        for key, name in names.items():
            if key in self.sums:
                out[name] = self.sums[key] / c
        out["pg_loss"] = self.sums.get("pg_loss", 0.0)
        if self.mm_count:
            out["mismatch_tokens"] = float(self.mm_count)
            out["mismatch_abs_mean"] = self.sums["mm_abs"] / self.mm_count
            out["mismatch_abs_max"] = self.mm_max
            out["mismatch_k3"] = self.sums["mm_k3"] / self.mm_count
        return out

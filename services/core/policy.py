"""Output policies: what a client gets back from the model, the countermeasures of Tramèr et al. (2016).

Pure functions over a batch of probability rows. The gateway applies the policy of the calling client
before answering; the detector tightens a client's policy by writing a stricter one to Redis.

- ``label_only``: the class index only (Tramèr §8: removes the confidences that equation solving uses).
- ``round_decimals``: probabilities rounded to k decimals (Tramèr: rounding to 2 decimals slows the
  path-finding and equation-solving attacks but does not stop them).
- ``top_k``: only the k largest probabilities, the rest set to 0.
- ``noise_sigma``: Gaussian noise on the probabilities, clipped at 0 and renormalised; the argmax can
  change for near-ties, which is the point (it blurs the boundary adaptive attacks look for).
- ``daily_quota`` / ``rate_per_s``: volume limits enforced by the gateway before forwarding.
- ``answer_watermark``: whether this client's answers carry the deployment's answer watermark ("all": yes,
  "off"/"flagged": no; None follows the deployment's ``MODELCUSTODY_ANSWER_WATERMARK_MODE``). The detector's
  tightened policy sets "all", which is what makes a client "flagged" under the deployment mode "flagged".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

WatermarkMode = Literal["all", "flagged", "off"]
# For ``tightened``: marking more answers is stricter (a detector turns marking on, never off).
WATERMARK_RANK: dict[str, int] = {"off": 0, "flagged": 1, "all": 2}


def marks_answers(policy_mode: str | None, deployment_mode: str) -> bool:
    """Whether a client's answers are watermarked: the deployment's "off" wins, then the client's own mode."""
    if deployment_mode == "off":
        return False
    return (policy_mode or deployment_mode) == "all"


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    label_only: bool = False
    round_decimals: int | None = None
    top_k: int | None = None
    noise_sigma: float = 0.0
    daily_quota: int | None = None  # rows per UTC day; None = unlimited
    rate_per_s: float | None = None  # rows per second, token bucket with a 1-second burst
    blocked: bool = False
    reason: str = ""  # why the policy was set (e.g. the alert id that tightened it)
    extra: dict[str, Any] = field(default_factory=dict)
    answer_watermark: WatermarkMode | None = None  # None: the deployment's mode

    def __post_init__(self) -> None:
        if self.answer_watermark not in (None, *WATERMARK_RANK):
            raise ValueError(f"answer_watermark must be one of all, flagged, off, got {self.answer_watermark!r}")
        if self.round_decimals is not None and not 0 <= self.round_decimals <= 8:
            raise ValueError(f"round_decimals must be in 0..8, got {self.round_decimals}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.noise_sigma <= 1.0:
            raise ValueError(f"noise_sigma must be in [0, 1], got {self.noise_sigma}")
        if self.daily_quota is not None and self.daily_quota < 0:
            raise ValueError(f"daily_quota must be >= 0, got {self.daily_quota}")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")

    @property
    def transforms_output(self) -> bool:
        return self.label_only or self.round_decimals is not None or self.top_k is not None or self.noise_sigma > 0.0

    @property
    def name(self) -> str:
        parts = []
        if self.label_only:
            parts.append("label_only")
        if self.top_k is not None:
            parts.append(f"top{self.top_k}")
        if self.noise_sigma > 0:
            parts.append(f"noise{self.noise_sigma:g}")
        if self.round_decimals is not None:
            parts.append(f"round{self.round_decimals}")
        return "+".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputPolicy:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def tightened(self, other: OutputPolicy) -> OutputPolicy:
        """The stricter of two policies, field by field (a detector never loosens a policy)."""

        def min_opt(a: Any, b: Any) -> Any:
            if a is None:
                return b
            if b is None:
                return a
            return min(a, b)

        return OutputPolicy(
            label_only=self.label_only or other.label_only,
            round_decimals=min_opt(self.round_decimals, other.round_decimals),
            top_k=min_opt(self.top_k, other.top_k),
            noise_sigma=max(self.noise_sigma, other.noise_sigma),
            daily_quota=min_opt(self.daily_quota, other.daily_quota),
            rate_per_s=min_opt(self.rate_per_s, other.rate_per_s),
            blocked=self.blocked or other.blocked,
            answer_watermark=_stricter_mark(self.answer_watermark, other.answer_watermark),
            reason="; ".join(r for r in (self.reason, other.reason) if r),
        )


def _stricter_mark(a: WatermarkMode | None, b: WatermarkMode | None) -> WatermarkMode | None:
    if a is None or b is None:
        return a or b
    return a if WATERMARK_RANK[a] >= WATERMARK_RANK[b] else b


NO_POLICY = OutputPolicy()


def apply_policy(probabilities: np.ndarray, policy: OutputPolicy, rng: np.random.Generator) -> np.ndarray:
    """Transform rows of class probabilities [n, k] as the policy says.

    Returns [n, 1] int64 labels under ``label_only``, else float64 probabilities [n, k].
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if policy.noise_sigma > 0.0:
        p = np.clip(p + rng.normal(0.0, policy.noise_sigma, size=p.shape), 0.0, None)
        sums = p.sum(axis=1, keepdims=True)
        # A row that noise pushed to all zeros keeps a uniform answer rather than dividing by zero.
        p = np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), 1.0 / p.shape[1])
    if policy.label_only:
        return p.argmax(axis=1).astype(np.int64)[:, None]
    if policy.top_k is not None and policy.top_k < p.shape[1]:
        # Indices of everything but the k largest per row are zeroed.
        drop = np.argsort(p, axis=1)[:, : p.shape[1] - policy.top_k]
        p = p.copy()
        np.put_along_axis(p, drop, 0.0, axis=1)
    if policy.round_decimals is not None:
        p = np.round(p, policy.round_decimals)
    return p

"""The gateway side of the answer watermark: which answers to mark, and serving them marked.

The algorithm is ``audit.answer_watermark`` (numpy/scipy only, so the gateway stays free of torch and
scikit-learn); this module only decides and applies. Everything is a pure function of (deployment secret,
input row, upstream answer, client policy), so every gateway instance, and every restart, serves the same
input the same answer, and a client repeating a query cannot average the mark away.

- Probability answers: the keyed cosine (CosWM-style) on the upstream probabilities, *before* the client's
  output policy (rounding, top-k, noise) so the served answer carries what the policy leaves of it. The
  top-1 label never changes (the algorithm asserts it on every row).
- Label answers (an upstream that answers labels, or a ``label_only`` policy on a probability upstream): the
  keyed label flip (DAWN-style) on the label the client would otherwise get. On a probability upstream the
  boundary mark comes first: where the upstream's top-2 margin is small, a keyed side of the input (its keyed
  hash by default, or a keyed smooth region) decides whether the runner-up is served (an upstream that answers
  labels has no margin: DAWN only).

An input the algorithm cannot canonicalise (non-finite in float32) is served unmarked and counted: the
gateway never fails a request because of its watermark.
"""

from __future__ import annotations

import logging

import numpy as np

from audit.answer_watermark import AnswerWatermark
from services.core.policy import OutputPolicy, apply_policy, marks_answers
from services.core.protocols import OutputKind
from services.core.settings import Settings
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
LABEL = "label"
LABEL_FLIPPED = "label-flipped"
LABEL_BOUNDARY = "label-boundary"


class AnswerMarker:
    """Built at the gateway's start (it reads the secret); one ``AnswerWatermark`` per (input dim, classes)."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.mode = settings.answer_watermark_mode
        self.metrics = metrics
        self._settings = settings
        self._secret = settings.answer_watermark_key() if self.mode != "off" else b""
        self._label_classes = settings.answer_watermark_n_classes
        self._marks: dict[tuple[int, int], AnswerWatermark] = {}
        self._warned_no_classes = False

    @property
    def fingerprint(self) -> str | None:
        """The key's public fingerprint (an audit checks it has the same key), None when marking is off."""
        return None if self.mode == "off" else self._mark(1, 3).fingerprint

    def applies(self, policy: OutputPolicy) -> bool:
        return marks_answers(policy.answer_watermark, self.mode)

    def _mark(self, dim: int, n_classes: int) -> AnswerWatermark:
        mark = self._marks.get((dim, n_classes))
        if mark is None:
            if len(self._marks) >= 64:  # a bound on what clients sending odd shapes can make us keep
                self._marks.clear()
            mark = self._marks[(dim, n_classes)] = self._settings.answer_watermark(n_classes, dim, self._secret)
        return mark

    def serve(
        self, rows: np.ndarray, out: np.ndarray, kind: OutputKind, policy: OutputPolicy, rng: np.random.Generator
    ) -> tuple[np.ndarray, OutputKind, list[str]] | None:
        """The marked answer (after the client's policy), its kind and one watermark tag per row.

        None when nothing is marked (an answer that is neither probabilities nor labels, labels of a model
        whose number of classes is not configured, or inputs the mark cannot canonicalise).
        """
        n, dim = rows.shape
        try:
            if kind == "probabilities":
                k = out.shape[1]
                if policy.label_only and policy.noise_sigma == 0.0:
                    # The probability mark never moves the top-1, so the label is the upstream's argmax: skip
                    # computing marked probabilities only to take their argmax (~0.2 ms of a one-row request).
                    return self._labels(rows, np.argmax(out, axis=1), k, out)
                marked = self._mark(dim, k).mark_probabilities(rows, out).probabilities
                new = apply_policy(marked, policy, rng) if policy.transforms_output else marked
                if new.dtype.kind != "i":
                    self.metrics.watermarked_rows.labels(PROBABILITIES).inc(n)
                    return new, "probabilities", [PROBABILITIES] * n
                return self._labels(rows, new[:, 0], k, out)
            if kind == "label":
                k_labels = self._label_classes
                if k_labels is None:
                    if not self._warned_no_classes:
                        log.warning("label answers are served unmarked: MODELCUSTODY_ANSWER_WATERMARK_N_CLASSES unset")
                        self._warned_no_classes = True
                    return None
                labels = out[:, 0]
                if labels.min() < 0 or labels.max() >= k_labels:
                    return None  # not labels of a k-class model: leave the upstream's answer as it is
                return self._labels(rows, labels, k_labels)
        except ValueError:
            self.metrics.watermark_skipped_rows.inc(n)
            return None
        return None

    def _labels(
        self, rows: np.ndarray, labels: np.ndarray, k: int, probabilities: np.ndarray | None = None
    ) -> tuple[np.ndarray, OutputKind, list[str]]:
        mark = self._mark(rows.shape[1], k)
        near = np.zeros(len(labels), dtype=bool)
        if probabilities is not None and mark.boundary_margin > 0:
            boundary = mark.mark_boundary_labels(rows, probabilities, labels.astype(np.int64))
            labels, near = boundary.labels, boundary.marked
        result = mark.mark_labels(rows, labels.astype(np.int64))
        flipped = result.marked
        moved = near & ~flipped  # a row both marks touch is tagged by DAWN's (the audit recovers the label under it)
        n_flipped, n_moved = int(flipped.sum()), int(moved.sum())
        self.metrics.watermarked_rows.labels(LABEL).inc(len(labels) - n_flipped - n_moved)
        self.metrics.watermarked_rows.labels(LABEL_FLIPPED).inc(n_flipped)
        self.metrics.watermarked_rows.labels(LABEL_BOUNDARY).inc(n_moved)
        tags = np.where(flipped, LABEL_FLIPPED, np.where(moved, LABEL_BOUNDARY, LABEL)).tolist()
        return result.labels[:, None], "label", tags

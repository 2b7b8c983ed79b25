"""In-process cost of the gateway's answer marking (``AnswerMarker.serve``), per request, no server.

    python bench/answer_mark_cost.py [--repeats 2000] [--dim 784] [--classes 10]

Prints one JSON object as its LAST stdout line: microseconds per ``serve`` call for probability answers and
for label answers (a ``label_only`` policy on a probability upstream), at 1 and 100 rows a request, and
``label_vs_full_path``: the label path's time over the path it replaces (mark the probabilities, apply the
policy, take the argmax, then mark the label), measured in the same process. A ratio, not a timed assertion:
the absolute figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.answer_watermark import AnswerWatermark  # noqa: E402
from services.core.policy import OutputPolicy, apply_policy  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.gateway.answer_mark import AnswerMarker  # noqa: E402
from services.gateway.metrics import GatewayMetrics  # noqa: E402


def per_call_us(fn: Callable[[], object], repeats: int) -> float:
    """Median of five timed blocks (the machine is shared: the median resists another job's bursts)."""
    for _ in range(max(10, repeats // 20)):
        fn()
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats // 5):
            fn()
        blocks.append((time.perf_counter() - start) / (repeats // 5) * 1e6)
    return round(float(np.median(blocks)), 1)


def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    marker = AnswerMarker(
        Settings(env="test", answer_watermark_secret="bench-answer-mark-cost-secret-01"),
        GatewayMetrics(CollectorRegistry()),
    )
    rng = np.random.default_rng(0)
    probs, labels = OutputPolicy(), OutputPolicy(label_only=True)
    out: dict[str, object] = {}
    for n in (1, 100):
        x = rng.uniform(0, 1, (n, args.dim))
        p = rng.dirichlet(np.full(args.classes, 0.3), n)
        repeats = args.repeats if n == 1 else max(50, args.repeats // 20)
        mark = marker._mark(args.dim, args.classes)

        def full_path(x: np.ndarray = x, p: np.ndarray = p, mark: AnswerWatermark = mark) -> object:
            marked = mark.mark_probabilities(x, p).probabilities
            return marker._labels(x, apply_policy(marked, labels, rng)[:, 0], args.classes, p)

        prob_us = per_call_us(lambda x=x, p=p: marker.serve(x, p, "probabilities", probs, rng), repeats)
        label_us = per_call_us(lambda x=x, p=p: marker.serve(x, p, "probabilities", labels, rng), repeats)
        full_us = per_call_us(full_path, repeats)
        out[f"rows_{n}"] = {
            "probabilities_us": prob_us,
            "label_us": label_us,
            "label_full_path_us": full_us,
            "label_vs_full_path": round(label_us / full_us, 3),
        }
    return {"answer_mark_cost": out, "dim": args.dim, "classes": args.classes}


if __name__ == "__main__":
    print(json.dumps(main()))

"""Response benchmark: how often each response level reaches benign clients, and how soon it reaches attackers.

    python bench/response.py [--benign 1000] [--quick]

In process (no gateway, no Redis): the detection engine of each demo victim, fitted as the detector fits it,
replays each client's queries in batches of at most 50 rows (the detector's batch granularity in
bench/detection.py), and after every batch the response rules of ``services/core/response.py`` decide, exactly
as the detector service does (``decide`` with the default settings, the streak of consecutive tests over the
alert threshold counted by the consumer's ``_streak``). Per client we record whether it was ever

- alerted (``notify``: any test over the alert threshold),
- at level high in any test (what tightened a client's policy before this change: ``high_once``),
- enforced under the new rule (level high AND 3 consecutive tests over the threshold or two independent
  signal families: ``enforce``).

Benign populations (``services.demo.redteam.benign``: shuffled, class-skewed and topical users, batches,
retries, near-duplicates; log-normal volumes with median 150 queries, as bench/detection.py):

- ``clean``: rows drawn from the digits holdout's traffic half, as the clients of bench/detection.py;
- ``capture_shift``: the same clients, each with its own capture: the 8x8 image shifted by a sub-pixel
  offset drawn uniformly in [-0.5, 0.5] px on each axis (a pixel or two on a 28-px MNIST digit is about
  half a pixel on an 8-px one), plus Gaussian sensor noise with a per-client sigma drawn uniformly in
  [0, 0.5] intensity levels (of 16), clipped to the 0..16 range. A stand-in for the off-centre captures
  that alerted 14 % of benign MNIST clients (issue 8); the held-out variation families and the MNIST
  world are bench/detection.py's.

Attacks (in-process oracle answering probabilities): equation solving, adaptive retraining, Lowd-Meek, JBDA
and Knockoff with in-distribution digits, against the victims bench/detection.py uses. Per attack: queries at
the first alert, at the first automatic enforcement, and the copy's agreement with the victim at each
(on the reference half of the holdout, which no client queries).

Prints one JSON object as its last line. Seeds fixed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import shift as nd_shift
from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.core.response import ClientTier, ResponseConfig, decide, families_fired  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.demo.baseline import fit_demo_engine  # noqa: E402
from services.demo.model_server.models import MODEL_KINDS, digits_split, holdout_halves, train_model  # noqa: E402
from services.demo.redteam import (  # noqa: E402
    AdaptiveRetraining,
    Domain,
    EquationSolving,
    JacobianAugmentation,
    Knockoff,
    LowdMeek,
)
from services.demo.redteam.benign import benign_population  # noqa: E402
from services.detector.engine import DetectionEngine  # noqa: E402
from services.detector.service.consumer import _streak  # noqa: E402

BATCH = 50
CONFIG = ResponseConfig.from_settings(Settings.model_construct())


STREAKS = (1, 2, 3, 5, 8)  # persistence requirements compared (the default is 3)


@dataclass
class Outcome:
    alert_at: int | None = None
    high_at: int | None = None
    enforce_at: int | None = None
    queries: int = 0
    # Per alerting batch at level high: (query count, streak, independent signal families that fired).
    high_tests: list[tuple[int, int, int]] = field(default_factory=list)

    def enforced_at(self, k: int, families: bool) -> int | None:
        """When enforcement would have applied with persistence k (and the two-family rule or not)."""
        return next((q for q, streak, fam in self.high_tests if streak >= k or (families and fam >= 2)), None)


class Replay:
    """One client's engine state plus the response rules, fed batch by batch."""

    def __init__(self, engine: DetectionEngine) -> None:
        self.engine = engine
        self.state = engine.new_client_state()
        self.streak = 0
        self.out = Outcome()

    def feed(self, x: np.ndarray, outputs: np.ndarray) -> None:
        for s in range(0, len(x), BATCH):
            xs, os_ = x[s : s + BATCH], outputs[s : s + BATCH]
            tests, alerts = self.state.evaluations, self.state.alerts
            a = self.engine.observe(self.state, xs, os_, os_.argmax(axis=1))
            self.streak = _streak(
                self.streak,
                self.state.evaluations - tests,
                self.state.alerts - alerts,
                last_alerted=self.state.last_score >= a.threshold,
            )
            self.out.queries = self.state.queries
            if not a.alert:
                continue
            at = self.state.queries
            self.out.alert_at = self.out.alert_at or at
            if a.level == "high":
                self.out.high_at = self.out.high_at or at
                self.out.high_tests.append((at, self.streak, len(families_fired(a.fired, CONFIG.families))))
            decision = decide(
                severity=a.level,
                fired=a.fired,
                signals=[r.to_dict() for r in a.signals],
                streak=self.streak,
                tier=ClientTier(),
                config=CONFIG,
            )
            if decision.level == "enforce":
                self.out.enforce_at = self.out.enforce_at or at


def capture(x: np.ndarray, dx: float, dy: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    imgs = x.reshape(-1, 8, 8)
    moved = np.stack([nd_shift(img, (dy, dx), order=1, mode="constant", cval=0.0) for img in imgs])
    noisy = moved + rng.normal(0.0, sigma, size=moved.shape)
    return np.clip(noisy, 0.0, 16.0).reshape(len(x), 64)


def upper95(k: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on a rate with k of n."""
    return 1.0 if k >= n else float(beta.ppf(0.95, k + 1, n - k))


def benign_rates(
    engine: DetectionEngine, victim: Any, pool: np.ndarray, labels: np.ndarray, n: int, shifted: bool
) -> dict[str, Any]:
    domain = Domain.box(0.0, 16.0, 64)
    clients = benign_population(pool=pool, labels=labels, domain=domain, n_clients=n, seed=1)
    vol_rng = np.random.default_rng(5)
    cap_rng = np.random.default_rng(11)
    counts = {"notify": 0, "high_once": 0, "enforce": 0}
    variants = {f"k{k}{'+families' if fam else ''}": 0 for k in STREAKS for fam in (True, False)}
    queries = 0
    for client in clients:
        # Benign volumes: log-normal, median 150 queries, 5-95 % range ~40-550 per client.
        n_q = int(np.clip(vol_rng.lognormal(np.log(150), 0.8), 20, 1500))
        dx, dy = cap_rng.uniform(-0.5, 0.5, size=2)
        sigma = float(cap_rng.uniform(0.0, 0.5))
        replay = Replay(engine)
        for batch in client.batches(n_q):
            x = capture(batch.X, dx, dy, sigma, cap_rng) if shifted else batch.X
            replay.feed(x, victim.predict_proba(x))
        queries += replay.out.queries
        counts["notify"] += replay.out.alert_at is not None
        counts["high_once"] += replay.out.high_at is not None
        counts["enforce"] += replay.out.enforce_at is not None
        for k in STREAKS:
            for fam in (True, False):
                variants[f"k{k}{'+families' if fam else ''}"] += replay.out.enforced_at(k, fam) is not None
    rates = {k: round(v / n, 4) for k, v in counts.items()}
    bounds = {k: round(upper95(v, n), 4) for k, v in counts.items()}
    return {
        "clients": n,
        "queries": queries,
        "counts": counts,
        "rates": rates,
        "upper95": bounds,
        "enforce_rate_by_rule": {k: round(v / n, 4) for k, v in variants.items()},
    }


def recording_oracle(victim: Any, seen: list[tuple[np.ndarray, np.ndarray]]) -> Any:
    def oracle(x: np.ndarray) -> np.ndarray:
        p = np.asarray(victim.predict_proba(np.asarray(x, dtype=np.float64)))
        seen.append((np.asarray(x, dtype=np.float64), p))
        return p

    return oracle


def agreement(copy: Any, victim: Any, x: np.ndarray) -> float:
    return float(np.mean(np.asarray(copy.predict(x)).reshape(-1) == victim.predict(x)))


def attack_row(name: str, attack: Any, engine: DetectionEngine, victim: Any, x_test: np.ndarray) -> dict[str, Any]:
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    replay = Replay(engine)
    trajectory: list[tuple[int, float]] = []
    for progress in attack.steps(recording_oracle(victim, seen)):
        while seen:
            x, p = seen.pop(0)
            replay.feed(x, p)
        trajectory.append((progress.queries_used, agreement(progress.copy, victim, x_test)))

    def fidelity_at(q: int | None) -> float | None:
        before = [f for used, f in trajectory if q is not None and used <= q]
        return round(before[-1], 4) if before else None

    q90 = next((used for used, f in trajectory if f >= 0.9), None)
    o = replay.out
    return {
        "attack": name,
        "queries": o.queries,
        "first_alert_at": o.alert_at,
        "first_high_at": o.high_at,
        "enforced_at": o.enforce_at,
        "enforced_at_by_rule": {
            f"k{k}{'+families' if fam else ''}": o.enforced_at(k, fam) for k in STREAKS for fam in (True, False)
        },
        "fidelity_at_alert": fidelity_at(o.alert_at),
        "fidelity_at_enforcement": fidelity_at(o.enforce_at),
        "queries_to_90pct_fidelity": q90,
        "final_fidelity": round(trajectory[-1][1], 4) if trajectory else None,
    }


def attacks(pool_x: np.ndarray, scale: float) -> Iterator[tuple[str, str, Any]]:
    domain = Domain.box(0.0, 16.0, 64)
    yield "equation_solving", "digits-logreg", EquationSolving(domain=domain, budget=300, seed=0)
    yield (
        "adaptive_retraining",
        "digits-logreg",
        AdaptiveRetraining(domain=domain, n_classes=10, budget=int(3000 * scale), seed=0),
    )
    yield "lowd_meek", "digits-binary", LowdMeek(domain=domain, n_classes=2, positive_label=1, budget=1500, seed=0)
    yield (
        "jbda",
        "digits-mlp",
        JacobianAugmentation(seed_set=pool_x[:100], domain=domain, n_classes=10, budget=int(3200 * scale), seed=0),
    )
    yield "knockoff", "digits-mlp", Knockoff(pool=pool_x, domain=domain, n_classes=10, budget=int(2000 * scale), seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benign", type=int, default=1000, help="benign clients per population")
    parser.add_argument("--quick", action="store_true", help="200 benign clients, half-length attacks")
    args = parser.parse_args()
    n_benign = 200 if args.quick else args.benign
    t0 = time.time()
    split = digits_split(0)
    x_test, _, pool_x, pool_y = holdout_halves(split, 0)
    engines: dict[str, DetectionEngine] = {}
    victims: dict[str, Any] = {}
    for model in ("digits-mlp", "digits-logreg", "digits-binary"):
        engines[model] = fit_demo_engine(model)
        victims[model] = train_model(MODEL_KINDS[model], split)

    rows = []
    for name, model, attack in attacks(pool_x, 0.5 if args.quick else 1.0):
        rows.append(attack_row(name, attack, engines[model], victims[model], x_test))
        print(f"# {rows[-1]}", file=sys.stderr)
    benign = {
        population: benign_rates(
            engines["digits-mlp"], victims["digits-mlp"], pool_x, pool_y, n_benign, population == "capture_shift"
        )
        for population in ("clean", "capture_shift")
    }
    for population, result in benign.items():
        print(f"# benign {population}: {result}", file=sys.stderr)
    print(
        json.dumps(
            {
                "response": {
                    "enforce_after_tests": CONFIG.enforce_after_tests,
                    "enforce_on": CONFIG.enforce_on,
                    "families": dict(CONFIG.families),
                },
                "attacks": rows,
                "benign": benign,
                "seconds": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Detection benchmark on two worlds (8x8 digits, 28x28 MNIST): red-team attacks, colluding keys and a
benign population with capture variation, through the detection engine the detector service runs.

    python bench/detection.py [--benign 1000] [--tuning 400] [--worlds digits,mnist] [--quick]

Prints one JSON object as its LAST line: ``{"digits": {...}, "mnist": {...}}``, each with ``attacks``
(name, victim, queries_to_first_alert, copy_fidelity_at_alert, queries_to_90pct_fidelity,
detected_before_90pct, ...; rows ``*_10_keys`` split one attack round-robin over 10 API keys) and
``benign``: ``clients`` (held-out-family clients), ``false_positive_rate`` (any alert, held-out families),
``high_rate`` (level ``high``, the enforce level), the same for the ``tuning`` families, and per-family
rates; ``groups``: the cross-client (per source network) test's false-positive rate.

Method. Each world fits one ``DetectionEngine`` per victim on the owner's held-out reference rows with the
TUNING variation (``services.detector.augment``: translation, rotation, sensor noise, occlusion), exactly as
``services.demo.baseline`` does for the demo. Benign clients then query with a device each: tuning
families (clean, translate, rotate, noise, contrast, occlusion, lowres, and bulk scorers with 10-100x the
median volume) and HELD-OUT families (``services.demo.benign_heldout``: blur, stroke thickness, elastic
distortion, other writers, drift of the class mix, zoom; shear, dust and jpeg, added unseen when occlusion
and lowres became tuning families, also reported alone as ``new_heldout``), which no design or
calibration step imports (import-linter contract).

Population baseline: each victim's engine gets the population the detector service keeps per model
(``services/detector/population.py``), warmed with the first rows of 300 other benign clients of the same
family mix (as after a while in service), then fed online by every client evaluated, attackers included
(``--no-population`` turns it off for comparison).
Behaviour comes from ``benign_population`` (shuffled, skewed, topical users; batch sizes 1-64;
retries; near-duplicates). Volumes: log-normal, median 150 queries (bulk: x10-100).

Why in-process: 1,000+ benign clients x ~200 queries x 2 worlds through HTTP is hours of CPU on 2 cores.
The engine here is the object ``DetectorWorker`` calls per client batch (same fit, same thresholds, same
state codec); ``bench/detection_gateway.py`` runs the digits attacks and a benign population end to end
through the model server, the gateway, Redis and the detector service.

Colluding keys: one attack's queries go round-robin to 10 keys. Per-client detection sees each key
alone; the cross-client test is the detector service's own (``services/detector/service/groups.py``): the
clients of one source network (the /24 a trusted proxy reports) pooled into one stream, tested with the same
engine, with its rules (explained clients left out, a row cap per member, >= 3 members each with >= 1/4 of
an equal split). Benign clients are spread over networks with a heavy-tailed size (most 1-2 clients, a few
NATs of 10-40) to measure that test's false-positive rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.core.response import ClientTier, ResponseConfig, decide  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.demo.baseline import DIGITS_VARIATION  # noqa: E402
from services.demo.benign_heldout import HELDOUT_IMAGE_FAMILIES, HeldoutVariation, drifting_client  # noqa: E402
from services.demo.mnist import load_mnist, optdigits_other_writers  # noqa: E402
from services.demo.model_server.models import digits_split, holdout_halves, train_model  # noqa: E402
from services.demo.redteam import (  # noqa: E402
    AdaptiveRetraining,
    Domain,
    EquationSolving,
    JacobianAugmentation,
    Knockoff,
    LowdMeek,
    TreePathFinding,
    benign_population,
)
from services.demo.redteam.benign import BenignClient  # noqa: E402
from services.detector.augment import ImageVariation  # noqa: E402
from services.detector.engine import Assessment, ClientState, DetectionEngine, FitConfig  # noqa: E402
from services.detector.population import Population  # noqa: E402
from services.detector.service.consumer import _streak  # noqa: E402
from services.detector.service.groups import GroupTester  # noqa: E402

# occlusion and lowres were held out until their first report (2026-12-03) and then used to redesign the
# detector, so they are tuning families from then on; bulk stays last (one tuning client in 20).
TUNING = ("clean", "translate", "rotate", "noise", "contrast", "occlusion", "lowres", "bulk")
HELDOUT = ("blur", "thickness", "elastic", "writers", "drift", "zoom", "shear", "dust", "jpeg")
# Added unseen in the session that moved occlusion and lowres to the tuning families.
NEW_HELDOUT = ("shear", "dust", "jpeg")
KEYS = 10  # colluding keys per split attack (the bench row)
RESPONSE = ResponseConfig.from_settings(Settings.model_construct())  # the service's default response rules


class Response:
    """The detector service's automatic response for one client, after each batch: the streak of consecutive
    tests over the alert threshold (the consumer's ``_streak``) and ``response.decide`` with the defaults
    (enforce = level high AND 3 consecutive alerting tests or two independent signal families)."""

    def __init__(self) -> None:
        self.streak = 0
        self.enforced = False

    def after(self, state: ClientState, tests_before: int, alerts_before: int, a: Assessment) -> bool:
        self.streak = _streak(
            self.streak,
            state.evaluations - tests_before,
            state.alerts - alerts_before,
            last_alerted=state.last_score >= a.threshold,
        )
        if a.alert and not self.enforced:
            d = decide(
                severity=a.level,
                fired=a.fired,
                signals=[r.to_dict() for r in a.signals],
                streak=self.streak,
                tier=ClientTier(),
                config=RESPONSE,
            )
            self.enforced = d.level == "enforce"
        return self.enforced


@dataclass
class World:
    name: str
    shape: tuple[int, int]
    high: float
    variation: ImageVariation
    victims: dict[str, Any]
    reference: np.ndarray
    benign_x: np.ndarray
    benign_y: np.ndarray
    writers_x: np.ndarray
    writers_y: np.ndarray
    attack_x: np.ndarray
    test_x: np.ndarray
    attacks: list[tuple[str, str, Callable[[], Any]]]
    engines: dict[str, DetectionEngine] = field(default_factory=dict)
    # Each victim's population baseline, as the detector service keeps one per model (warmed, then online).
    populations: dict[str, Population | None] = field(default_factory=dict)

    @property
    def domain(self) -> Domain:
        return Domain.box(0.0, self.high, self.shape[0] * self.shape[1])


def natural_patches(n: int, size: int, high: float, seed: int = 0) -> np.ndarray:
    """Grey patches of scikit-learn's two sample photographs (another domain's natural images), inverted so
    dark strokes are high values as in digits, averaged down to ``size`` x ``size``."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = [img.mean(axis=2) for img in load_sample_images().images]
    crop = size * 4
    out = []
    for i in range(n):
        img = images[i % len(images)]
        r, c = rng.integers(0, img.shape[0] - crop), rng.integers(0, img.shape[1] - crop)
        patch = img[r : r + crop, c : c + crop].reshape(size, 4, size, 4).mean(axis=(1, 3))
        out.append(high * (1.0 - patch / 255.0))
    return np.asarray(out).reshape(n, size * size)


def digits_world(scale: float) -> World:
    split = digits_split(0)
    x_ref, _, pool_x, pool_y = holdout_halves(split, 0)
    # Disjoint: benign clients draw from one half of the traffic rows, attackers' natural data is the other.
    half = len(pool_x) // 2
    bx, by, ax = pool_x[:half], pool_y[:half], pool_x[half:]
    wx, wy = optdigits_other_writers()
    dom = Domain.box(0.0, 16.0, 64)
    victims = {
        m: train_model(k, split)
        for m, k in {"mlp": "mlp", "logreg": "logreg", "binary": "binary", "tree": "tree"}.items()
    }
    attacks: list[tuple[str, str, Callable[[], Any]]] = [
        ("equation_solving", "logreg", lambda: EquationSolving(domain=dom, budget=300, seed=0)),
        (
            "adaptive_retraining",
            "logreg",
            lambda: AdaptiveRetraining(domain=dom, n_classes=10, budget=int(3000 * scale), seed=0),
        ),
        ("lowd_meek", "binary", lambda: LowdMeek(domain=dom, n_classes=2, positive_label=1, budget=1500, seed=0)),
        (
            "jbda",
            "mlp",
            lambda: JacobianAugmentation(seed_set=ax[:100], domain=dom, n_classes=10, budget=int(3200 * scale), seed=0),
        ),
        ("knockoff", "mlp", lambda: Knockoff(pool=ax, domain=dom, n_classes=10, budget=int(2000 * scale), seed=0)),
        (
            "knockoff_other_domain",
            "mlp",
            lambda: Knockoff(
                pool=natural_patches(2000, 8, 16.0), domain=dom, n_classes=10, budget=int(2000 * scale), seed=0
            ),
        ),
        ("path_finding", "tree", lambda: TreePathFinding(domain=dom, n_classes=10, budget=int(8000 * scale), seed=0)),
    ]
    return World(
        "digits",
        (8, 8),
        16.0,
        DIGITS_VARIATION,
        victims,
        x_ref,
        bx,
        by,
        wx,
        wy,
        ax,
        x_ref,
        attacks,
    )


def mnist_world(scale: float) -> World:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    m = load_mnist()
    xt, yt = m.x_train[:20000], m.y_train[:20000]
    # 128 hidden units, 15 epochs: 0.96 test accuracy in ~12 s on one core (the "small MLP on 20k").
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=15, random_state=0).fit(xt, yt)
    # C=0.1: 0.92 test accuracy in ~10 s; the softmax victim equation solving and adaptive retraining target.
    logreg = LogisticRegression(max_iter=100, C=0.1).fit(xt, yt)
    ax = m.x_train[25000:35000]
    dom = Domain.box(0.0, 1.0, 784)
    variation = ImageVariation(shape=(28, 28), low=0.0, high=1.0, max_shift_px=2.0)
    attacks: list[tuple[str, str, Callable[[], Any]]] = [
        # No equation solving on MNIST: our implementation solves all classes jointly, a least-squares system
        # of 9 x 785 = 7,065 unknowns re-solved after every batch (hours of CPU here). Its uniform-noise
        # queries are what the digits row shows the OOD signal catching at the early test.
        (
            "adaptive_retraining",
            "logreg",
            lambda: AdaptiveRetraining(domain=dom, n_classes=10, budget=int(3000 * scale), seed=0),
        ),
        (
            "jbda",
            "mlp",
            lambda: JacobianAugmentation(seed_set=ax[:100], domain=dom, n_classes=10, budget=int(3200 * scale), seed=0),
        ),
        ("knockoff", "mlp", lambda: Knockoff(pool=ax, domain=dom, n_classes=10, budget=int(2000 * scale), seed=0)),
        (
            "knockoff_other_domain",
            "mlp",
            lambda: Knockoff(
                pool=natural_patches(2000, 28, 1.0), domain=dom, n_classes=10, budget=int(2000 * scale), seed=0
            ),
        ),
    ]
    return World(
        "mnist",
        (28, 28),
        1.0,
        variation,
        {"mlp": mlp, "logreg": logreg},
        m.x_train[20000:22000],
        m.x_test[:5000],
        m.y_test[:5000],
        m.x_test[5000:],
        m.y_test[5000:],
        ax,
        m.x_train[35000:37000],
        attacks,
    )


def fit_engines(
    world: World, sim_length: int | None, families: tuple[str, ...] | None = None, ood_features: str | None = None
) -> None:
    """``families``/``ood_features``: design alternatives compared on the tuning families (docs/detector.md)."""
    # MNIST: 20 PRADA null streams instead of 40 (each a whole pass over the varied reference rows), which
    # still gives ~300 benign W values, and keeps the 784-feature fit to a few minutes on a shared machine.
    params: dict[str, dict[str, Any]] = {"prada": {"null_streams": 20}} if world.name == "mnist" else {}
    if ood_features is not None:
        params["ood"] = {"features": ood_features}

    if families is not None:
        world.variation = replace(world.variation, families=families)
    for name, model in world.victims.items():
        proba = model.predict_proba
        world.engines[name] = DetectionEngine.fit(
            world.reference,
            proba(world.reference),
            reference_model=proba,
            config=FitConfig(
                n_sim_clients=200,
                seed=0,
                variation=world.variation,
                sim_length=sim_length,
                signal_params=params or None,
            ),
        )


class EngineOracle:
    """The victim as an oracle whose every answered row goes to the engine, split round-robin over ``keys``."""

    def __init__(
        self, model: Any, engine: DetectionEngine, keys: int = 1, population: Population | None = None, name: str = ""
    ) -> None:
        self.model, self.engine, self.keys = model, engine, keys
        self.population, self.name = population, name
        self.states = [engine.new_client_state() for _ in range(keys)]
        self.responses = [Response() for _ in range(keys)]
        self.first_enforce: int | None = None
        # The keys' source network, pooled by the detector service's own cross-client test.
        self.group = GroupTester(engine)
        self.pooled = self.group.new_state()
        self.sent = 0
        self.first_alert: int | None = None
        self.first_group_alert: int | None = None
        self.signals: set[str] = set()

    def __call__(self, X: np.ndarray) -> np.ndarray:
        P = np.asarray(self.model.predict_proba(X), dtype=np.float64)
        y = P.argmax(axis=1)
        owner = (self.sent + np.arange(len(X))) % self.keys
        for k in range(self.keys):
            rows = np.flatnonzero(owner == k)
            if rows.size:
                st = self.states[k]
                tests, alerts = st.evaluations, st.alerts
                a = self.engine.observe(
                    st, X[rows], P[rows], y[rows], population=self.population, client=f"{self.name}-key{k}"
                )
                if self.responses[k].after(st, tests, alerts, a) and self.first_enforce is None:
                    self.first_enforce = self.sent + int(rows[-1]) + 1  # enforced after this batch
                if a.alert and self.first_alert is None and a.first_alert_at is not None:
                    # The key's query count at its first alerting test, mapped back to the attack's count.
                    local = a.first_alert_at - (a.queries_seen - rows.size) - 1
                    self.first_alert = self.sent + int(rows[local]) + 1
                if a.alert:
                    self.signals |= set(a.fired)
        if self.keys > 1:
            alone = {f"key{k}" for k in range(self.keys) if self.states[k].alerts}
            g = self.group.observe(self.pooled, [f"key{k}" for k in owner], X, P, y, explained=alone)
            if g.alert and self.first_group_alert is None and g.assessment and g.assessment.first_alert_at:
                # The pool's count at its first alerting test, mapped back to the attack's count.
                local = g.assessment.first_alert_at - (g.pooled_rows - g.kept.size) - 1
                self.first_group_alert = self.sent + int(g.kept[local]) + 1
        self.sent += len(X)
        return P


def run_attack(world: World, name: str, victim: str, make: Callable[[], Any], keys: int) -> dict[str, Any]:
    model, engine = world.victims[victim], world.engines[victim]
    oracle = EngineOracle(model, engine, keys, world.populations.get(victim), f"{name}-{keys}")
    truth = model.predict(world.test_x)
    traj: list[tuple[int, float]] = []
    for p in make().steps(oracle):
        traj.append((p.queries_used, float(np.mean(np.asarray(p.copy.predict(world.test_x)).reshape(-1) == truth))))
    q90 = next((q for q, f in traj if f >= 0.9), None)

    def fid(q: int | None) -> float | None:
        before = [f for t, f in traj if t <= q] if q is not None else []
        return round(before[-1], 4) if before else None

    q = oracle.first_alert
    row: dict[str, Any] = {
        "name": name if keys == 1 else f"{name}_{keys}_keys",
        "victim": f"{world.name}-{victim}",
        "queries_total": traj[-1][0],
        "queries_to_first_alert": q,
        "copy_fidelity_at_alert": fid(q),
        "queries_to_enforce": oracle.first_enforce,
        "enforced_before_90pct": oracle.first_enforce is not None and (q90 is None or oracle.first_enforce < q90),
        "final_copy_fidelity": round(traj[-1][1], 4),
        "queries_to_90pct_fidelity": q90,
        "detected": q is not None,
        "signals_fired": sorted(oracle.signals),
        "detected_before_90pct": q is not None and (q90 is None or q < q90),
    }
    if keys > 1:
        g = oracle.first_group_alert
        row.update(
            keys=keys,
            group_queries_to_first_alert=g,
            group_detected_before_90pct=g is not None and (q90 is None or g < q90),
        )
    return row


def benign_clients(world: World, n_heldout: int, n_tuning: int, seed: int) -> list[tuple[str, BenignClient, int]]:
    """(family, client, queries) for every benign client; families cycle so each gets its share."""
    dom = world.domain
    n = n_heldout + n_tuning
    base = benign_population(pool=world.benign_x, labels=world.benign_y, domain=dom, n_clients=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for i, c in enumerate(base):
        if i < n_heldout:
            fam = HELDOUT[i % len(HELDOUT)]
        else:  # one tuning client in 20 is a bulk scorer (they cost 10-100x the queries of the others)
            j = i - n_heldout
            fam = "bulk" if j % 20 == 19 else TUNING[j % (len(TUNING) - 1)]
        crng = np.random.default_rng(seed * 7919 + i)
        volume = int(np.clip(rng.lognormal(np.log(150), 0.8), 20, 1500))  # median 150, 5-95 % ~40-550
        if fam == "bulk":
            volume = int(150 * rng.uniform(10, 100))  # 10-100x the median: a bulk scorer
            c.variation = world.variation.for_client(crng)
        elif fam in ("translate", "rotate", "noise", "contrast"):  # the augmentation's own families
            c.variation = world.variation.for_client(crng, fam)
        elif fam in HELDOUT_IMAGE_FAMILIES:
            c.variation = HeldoutVariation(fam, world.shape, 0.0, world.high).for_client(crng)
        elif fam == "writers":
            c = BenignClient(
                pool=world.writers_x,
                labels=world.writers_y,
                domain=dom,
                profile=c.profile,
                client_id=c.client_id,
                seed=c.seed,
            )
        elif fam == "drift":
            c = drifting_client(
                pool=world.benign_x,
                labels=world.benign_y,
                domain=dom,
                profile=c.profile,
                client_id=c.client_id,
                seed=c.seed,
            )
        c.family = fam
        out.append((fam, c, volume))
    return out


def warm_populations(world: World, n_clients: int, seed: int) -> None:
    """Each victim's population baseline as after a while in service: the first rows of ``n_clients``
    benign clients with the evaluated population's family mix (other seeds, other client ids)."""
    n_held = round(n_clients * 5 / 7)  # the evaluated mix: 1,000 held-out and 400 tuning clients
    warm = benign_clients(world, n_held, n_clients - n_held, seed)
    for name, engine in world.engines.items():
        population = world.populations[name] = engine.new_population()
        if population is None:
            continue
        for _, client, _volume in warm:
            for b in client.batches(2 * population.config.per_client):
                engine.offer(population, f"warm-{client.client_id}", b.X)


def network_sizes(n_clients: int, rng: np.random.Generator) -> list[int]:
    """Clients per source network: mostly 1-2, a few NATs of 10-40 (a heavy tail)."""
    sizes: list[int] = []
    while sum(sizes) < n_clients:
        sizes.append(int(rng.integers(10, 41)) if rng.random() < 0.03 else int(rng.integers(1, 3)))
    sizes[-1] -= sum(sizes) - n_clients
    return [s for s in sizes if s > 0]


def run_benign(
    world: World, n_heldout: int, n_tuning: int, seed: int, only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    model, engine = world.victims["mlp"], world.engines["mlp"]
    clients = benign_clients(world, n_heldout, n_tuning, seed)
    if only is not None:  # design comparisons on some tuning families (the clients keep their seeds)
        clients = [c for c in clients if c[0] in only]
    # clients, alerted, enforced (the service's automatic enforce), queries, ever at level high
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    signals: dict[str, int] = defaultdict(int)
    order = np.random.default_rng(seed + 2).permutation(len(clients))
    sizes = network_sizes(len(clients), np.random.default_rng(seed + 3))
    groups = groups_alerted = eligible = 0
    start = done = 0
    for size in sizes:
        members = [clients[j] for j in order[start : start + size]]
        start += size
        timeline: list[tuple[float, str, np.ndarray, bool]] = []
        for who, (fam, client, volume) in enumerate(members):
            done += 1
            if done % 100 == 0:
                print(f"# {world.name}: {done} benign clients", file=sys.stderr, flush=True)
            state = engine.new_client_state()
            population = world.populations.get("mlp")
            response = Response()
            alerted = high = enforced = False
            t = 0.0
            for b in client.batches(volume):
                t += b.delay_s
                P = model.predict_proba(b.X)
                tests, alerts = state.evaluations, state.alerts
                a = engine.observe(state, b.X, P, P.argmax(axis=1), population=population, client=client.client_id)
                enforced |= response.after(state, tests, alerts, a)
                if a.alert and not alerted:
                    for s in a.fired:
                        signals[f"{fam}:{s}"] += 1
                alerted |= a.alert
                if size > 1:  # with whether the client alerted alone so far (then the group test leaves it out)
                    timeline.append((t, f"c{who}", b.X, alerted))
                high |= a.level == "high"
            f = per_family[fam]
            f[0] += 1
            f[1] += alerted
            f[2] += enforced
            f[3] += volume
            f[4] += high
        if size > 1:  # the detector's cross-client test: the network's clients pooled in time order
            groups += 1
            tester = GroupTester(engine)
            eligible += size >= tester.config.min_members
            pooled = tester.new_state()
            hit = False
            for _, who, X, alone in sorted(timeline, key=lambda e: e[0]):
                P = model.predict_proba(X)
                alone_set = {who} if alone else set()
                hit |= tester.observe(pooled, [who] * len(X), X, P, P.argmax(axis=1), explained=alone_set).alert
            groups_alerted += hit

    def rates(fams: tuple[str, ...]) -> dict[str, Any]:
        n = sum(per_family[f][0] for f in fams)
        k = sum(per_family[f][1] for f in fams)
        h = sum(per_family[f][2] for f in fams)
        lv = sum(per_family[f][4] for f in fams)
        return {
            "clients": n,
            "flagged": k,
            "false_positive_rate": round(k / max(n, 1), 4),
            # Clopper-Pearson upper 95 % bound: 0 of 1,000 only shows the rate is below ~0.3 %.
            "false_positive_rate_upper_95": round(float(beta.ppf(0.95, k + 1, max(n - k, 1))), 4),
            # The enforce level: what the service does automatically (level high + persistence).
            "high": h,
            "high_rate": round(h / max(n, 1), 4),
            "high_rate_upper_95": round(float(beta.ppf(0.95, h + 1, max(n - h, 1))), 4),
            # Any test at the engine's level high (what enforced before persistence was required).
            "level_high": lv,
            "level_high_rate": round(lv / max(n, 1), 4),
        }

    held = rates(HELDOUT)
    return {
        **held,
        "families_heldout": list(HELDOUT),
        "new_heldout": rates(NEW_HELDOUT),
        "tuning": rates(TUNING),
        "families": {
            f: {
                "split": "heldout" if f in HELDOUT else "tuning",
                "clients": v[0],
                "flagged": v[1],
                "high": v[2],
                "level_high": v[4],
                "rate": round(v[1] / max(v[0], 1), 4),
                "mean_queries": round(v[3] / max(v[0], 1), 1),
            }
            for f, v in per_family.items()
        },
        "signals_at_first_alert": dict(signals),
        "groups": {
            "networks_pooled": groups,
            "networks_with_min_members": eligible,
            "flagged": groups_alerted,
            "false_positive_rate": round(groups_alerted / max(groups, 1), 4),
        },
        "queries_total": int(sum(v[3] for v in per_family.values())),
    }


def main() -> None:
    warnings.filterwarnings("ignore")  # sklearn convergence chatter from the attackers' copies
    parser = argparse.ArgumentParser()
    parser.add_argument("--benign", type=int, default=1000, help="benign clients with held-out families, per world")
    parser.add_argument("--tuning", type=int, default=400, help="benign clients with tuning families, per world")
    parser.add_argument("--worlds", default="digits,mnist")
    parser.add_argument("--quick", action="store_true", help="half attack budgets, 120 + 60 benign clients")
    parser.add_argument("--no-attacks", action="store_true")
    parser.add_argument("--no-keys", action="store_true", help="skip the colluding-keys rows")
    parser.add_argument("--families", default=None, help="tuning families the engine is fitted with (comparison)")
    parser.add_argument("--only", default=None, help="run only these benign families (design comparisons)")
    parser.add_argument("--ood-features", default=None, help="raw, standardised or rank (comparison)")
    parser.add_argument("--no-population", action="store_true", help="reference-only OOD test (comparison)")
    parser.add_argument("--attack-scale", type=float, default=None, help="multiply the attack budgets (default 1)")
    args = parser.parse_args()
    n_held, n_tun = (120, 60) if args.quick else (args.benign, args.tuning)
    scale = args.attack_scale if args.attack_scale is not None else (0.5 if args.quick else 1.0)
    out: dict[str, Any] = {}
    for name in args.worlds.split(","):
        t0 = time.time()
        world = digits_world(scale) if name == "digits" else mnist_world(scale)
        # MNIST: 400-query calibration streams (not the whole 1,500-row fold) keep the fit near a minute.
        families = tuple(args.families.split(",")) if args.families else None
        fit_engines(world, None if name == "digits" else 400, families, args.ood_features)
        t_fit = time.time() - t0
        print(f"# {name}: engines fitted in {t_fit:.0f} s", file=sys.stderr)
        if not args.no_population:
            warm_populations(world, 300, seed=101)
        attacks: list[dict[str, Any]] = []
        if not args.no_attacks:
            for a_name, victim, make in world.attacks:
                attacks.append(run_attack(world, a_name, victim, make, 1))
                print(f"# {name} {json.dumps(attacks[-1])}", file=sys.stderr, flush=True)
            for a_name, victim, make in world.attacks if not args.no_keys else []:
                if a_name in ("jbda", "equation_solving"):
                    attacks.append(run_attack(world, a_name, victim, make, KEYS))
                    print(f"# {name} {json.dumps(attacks[-1])}", file=sys.stderr, flush=True)
        t1 = time.time()
        only = tuple(args.only.split(",")) if args.only else None
        benign = run_benign(world, n_held, n_tun, seed=1, only=only)
        print(f"# {name} benign in {time.time() - t1:.0f} s: {json.dumps(benign)}", file=sys.stderr)
        out[name] = {
            "attacks": attacks,
            "benign": benign,
            "thresholds": {k: round(v.thresholds.alert, 3) for k, v in world.engines.items() if v.thresholds},
            "wall_s": round(time.time() - t0, 1),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

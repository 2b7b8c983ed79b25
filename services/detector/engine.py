"""The detection engine: every signal plus the risk combiner, fitted on reference data, per-client state as bytes.

Usage (the detector service does exactly this per client batch)::

    engine = DetectionEngine.fit(X_ref, outputs_ref, reference_model=model.predict_proba)
    engine.save("var/detector")                     # baseline.npz + engine.json, no pickle
    engine = DetectionEngine.load("var/detector", reference_model=model.predict_proba)
    state = engine.state_from_bytes(blob) if blob else engine.new_client_state()
    assessment = engine.observe(state, X, outputs, labels, now=ts)
    blob = engine.state_to_bytes(state)

Test schedule: the signals are tested each time the client's query count crosses a multiple of
``eval_every`` (50), plus once early at each of ``early_tests`` (20 queries: blatant probing such as
equation solving's uniform random points is significant after 20 queries, and 50 would let a small
model be copied first; the signals that need more data answer p = 1 there), whatever the batch sizes,
so the number of tests in a client's lifetime (and thus the
benign false-positive rate the risk threshold was calibrated for) does not depend on how the stream was
batched. A batch that crosses several multiples is tested at each; ``observe`` returns the assessment with
the highest risk among them. A batch that crosses none returns the last assessment's score and level with
``evaluated=False`` and no alert. The cost of a batch is O(rows x (index size + growing-set cap)) plus a
constant per test: nothing grows with the client's history.

Input space: the engine compares raw model inputs (no scaling of its own), so X_ref must be in the same
space the gateway logs (for the digits demo: 64 pixel intensities 0..16). The reference data must be
held-out data the reference model was not trained on (training rows have inflated margins and sit on
top of the OOD index). The label of a row is the class the client was told; with probabilities it
defaults to their argmax, with label-only answers the boundary signal uses the reference model's margin.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.validation import positive_int, unit_interval
from services.detector.augment import Variation
from services.detector.base import Record, Signal, SignalResult, check_batch, pack, unpack
from services.detector.boundary import BoundaryBaseline, BoundarySignal, ReferenceModel
from services.detector.ood import OODBaseline, OODSignal, OODState
from services.detector.population import Population, PopulationConfig
from services.detector.prada import PradaBaseline, PradaSignal
from services.detector.risk import METHODS, Level, Method, RiskThresholds, calibrate, combine
from services.detector.simulate import BenignStream, benign_streams
from services.detector.stats import client_concentration, neg_log10, top2_margin
from services.detector.steps import StepsBaseline, StepsSignal
from services.detector.sweep import SweepBaseline, SweepSignal

FORMAT = "modelcustody.detector.baseline"
FORMAT_VERSION = 1
TECHNIQUE = "AML.T0024"  # MITRE ATLAS: Exfiltration via AI Inference API (extract model)

_REGISTRY: dict[str, tuple[type[Signal[Any, Any]], type[Record]]] = {
    "boundary": (BoundarySignal, BoundaryBaseline),
    "prada": (PradaSignal, PradaBaseline),
    "ood": (OODSignal, OODBaseline),
    "sweep": (SweepSignal, SweepBaseline),
    "steps": (StepsSignal, StepsBaseline),
}


@dataclass(frozen=True, slots=True)
class FitConfig:
    """How ``DetectionEngine.fit`` fits the baselines and calibrates the risk thresholds (all defaults tested)."""

    index_fraction: float = 0.5  # half the reference rows index the OOD signal, half calibrate it
    eval_every: int = 50
    method: Method = "bonferroni"
    early_tests: Sequence[int] = (20,)
    target_fpr: float = 1e-3
    high_fpr: float = 1e-5
    lifetime_queries: int = 10_000
    n_sim_clients: int = 200  # benign streams for the risk threshold: ~2 s with 600 digits rows
    sim_length: int | None = None
    folds: int = 2  # cross-fitting folds for the risk calibration; 2 keeps each fold's streams long
    seed: int = 0
    signal_params: dict[str, dict[str, Any]] | None = None  # per signal, e.g. {"prada": {"max_set_size": 64}}
    variation: Variation | None = None  # how benign clients' inputs differ from the reference rows


@dataclass(slots=True)
class ClientState:
    """One client's detector state: each signal's state plus the risk history."""

    signals: dict[str, Record]
    queries: int = 0
    evaluations: int = 0
    last_score: float = 0.0
    peak_score: float = 0.0
    alerts: int = 0  # evaluations that alerted


@dataclass(frozen=True, slots=True)
class Assessment:
    """The engine's verdict on one client after one batch.

    ``signals`` are the per-signal results of the test reported (each with its own standalone ``fired``
    at the signal's ``alpha``); ``fired`` here names the signals that carry the alert: those whose
    p-value times the number of signals reaches the alert threshold's p-value on its own.
    """

    risk_score: float  # -log10 of the combined p-value (0 = no evidence)
    level: Level
    alert: bool
    p_value: float  # combined p-value (1.0 when not evaluated)
    threshold: float  # risk_score from which an alert is raised
    signals: tuple[SignalResult, ...]
    fired: tuple[str, ...]  # signals whose adjusted p-value alone reaches the alert threshold
    evaluated: bool
    queries_seen: int  # the client's queries after this batch
    tested_at: int | None  # the client's query count at the test reported here (None: not tested)
    peak_risk_score: float
    now: float | None = None
    technique: str = TECHNIQUE
    first_alert_at: int | None = None  # query count of the batch's first test that reached the alert threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "risk_score": round(self.risk_score, 4),
            "level": self.level,
            "alert": self.alert,
            "p_value": self.p_value,
            "threshold": round(self.threshold, 4),
            "signals": [s.to_dict() for s in self.signals],
            "fired": list(self.fired),
            "evaluated": self.evaluated,
            "queries_seen": self.queries_seen,
            "tested_at": self.tested_at,
            "peak_risk_score": round(self.peak_risk_score, 4),
            "now": self.now,
            "technique": self.technique,
            "first_alert_at": self.first_alert_at,
        }


@dataclass(frozen=True, slots=True)
class _Eval:
    score: float
    p: float
    queries: int
    results: tuple[SignalResult, ...] = field(default_factory=tuple)


class DetectionEngine:
    def __init__(
        self,
        signals: Sequence[Signal[Any, Any]],
        thresholds: RiskThresholds | None,
        *,
        n_features: int,
        n_classes: int,
        eval_every: int = 50,  # test granularity: one test per 50 of a client's queries
        method: Method = "bonferroni",
        early_tests: Sequence[int] = (20,),
    ) -> None:
        if not signals:
            raise ValueError("an engine needs at least one signal")
        names = [s.name for s in signals]
        if len(set(names)) != len(names):
            raise ValueError(f"signal names must be unique, got {names}")
        for s in signals:
            if s.n_features != n_features or s.n_classes != n_classes:
                raise ValueError(f"signal {s.name} was built for d={s.n_features}, k={s.n_classes}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.signals: tuple[Signal[Any, Any], ...] = tuple(signals)
        self.thresholds = thresholds
        self.n_features = positive_int("n_features", n_features)
        self.n_classes = positive_int("n_classes", n_classes, minimum=2)
        self.eval_every = positive_int("eval_every", eval_every)
        self.method: Method = method
        early = sorted({positive_int("early_tests", int(q)) for q in early_tests})
        self.early_tests: tuple[int, ...] = tuple(q for q in early if q % self.eval_every)

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.signals)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        X_ref: np.ndarray,
        outputs_ref: np.ndarray | None = None,
        labels_ref: np.ndarray | None = None,
        *,
        reference_model: ReferenceModel | None = None,
        n_classes: int | None = None,
        daily_volumes_ref: np.ndarray | None = None,
        config: FitConfig | None = None,
    ) -> DetectionEngine:
        """Fit every signal's baseline and the risk thresholds on benign reference data.

        ``outputs_ref``: the reference model's probabilities on ``X_ref`` (computed with ``reference_model``
        if omitted); without either, the boundary signal is left out. ``labels_ref`` default to their argmax.
        ``daily_volumes_ref``: benign clients' daily query counts, enabling the volume sub-test.
        ``config``: the test schedule, calibration and per-signal parameters (``FitConfig``; defaults if omitted).
        ``config.variation``: how benign clients' inputs differ from the reference rows (e.g.
        ``augment.ImageVariation``: one call = one client's device). With it, the OOD index, the benign
        far and small-margin rates are fitted on the reference rows plus one varied copy of each (each row
        its own device), and every calibration stream is one client's rows through one device, answered by
        ``reference_model`` (required then). The thresholds are then set for a population that varies.
        """
        cfg = config or FitConfig()
        X, P, y, k = _reference_data(X_ref, outputs_ref, labels_ref, reference_model, n_classes)
        d = X.shape[1]
        frac = unit_interval("index_fraction", cfg.index_fraction)
        params = {name: dict(v) for name, v in (cfg.signal_params or {}).items()}
        unknown = set(params) - set(_REGISTRY)
        if unknown:
            raise ValueError(f"unknown signals in signal_params: {sorted(unknown)}")
        positive_int("n_sim_clients", cfg.n_sim_clients)
        variation = cfg.variation
        if variation is not None and reference_model is None:
            raise ValueError("a variation needs the reference_model to answer the varied rows")

        def build(rows: np.ndarray, fold_seed: int) -> DetectionEngine:
            signals = _fit_signals(
                X[rows],
                None if P is None else P[rows],
                y[rows],
                n_classes=k,
                reference_model=reference_model,
                daily_volumes_ref=daily_volumes_ref,
                index_fraction=frac,
                eval_every=cfg.eval_every,
                seed=fold_seed,
                params=params,
                variation=variation,
            )
            return cls(
                signals,
                None,
                n_features=d,
                n_classes=k,
                eval_every=cfg.eval_every,
                method=cfg.method,
                early_tests=cfg.early_tests,
            )

        engine = build(np.arange(X.shape[0]), cfg.seed)
        fold_engines, streams = _cross_fit(X, P, y, cfg, daily_volumes_ref, build)
        if variation is not None and reference_model is not None:
            streams = list(_varied_streams(streams, variation, reference_model, cfg.seed + 13))
            _widen_to_population(streams, fold_engines, [engine, *fold_engines])
        engine.thresholds = calibrate(
            lambda stream: fold_engines[stream.source].stream_scores(stream),
            streams,
            lifetime_queries=cfg.lifetime_queries,
            target_fpr=cfg.target_fpr,
            high_fpr=cfg.high_fpr,
            eval_every=cfg.eval_every,
            method=cfg.method,
            extra_tests=len(engine.early_tests),
        )
        return engine

    def stream_scores(self, stream: BenignStream) -> list[float]:
        """Risk scores of every evaluation of one stream replayed from a fresh state (used by calibration)."""
        state = self.new_client_state()
        scores: list[float] = []
        n = stream.X.shape[0]
        for start in range(0, n, self.eval_every):
            end = min(start + self.eval_every, n)
            now = None if stream.times is None else float(stream.times[end - 1])
            outputs = None if stream.outputs is None else stream.outputs[start:end]
            for ev in self._run(state, stream.X[start:end], outputs, stream.labels[start:end], now):
                scores.append(ev.score)
        return scores

    # ------------------------------------------------------------------ per-client state
    def new_client_state(self) -> ClientState:
        return ClientState(signals={s.name: s.new_state() for s in self.signals})

    def layout(self) -> str:
        early = ",".join(map(str, self.early_tests))
        return f"engine:e={self.eval_every},early={early};" + ";".join(s.layout() for s in self.signals)

    def state_to_bytes(self, state: ClientState) -> bytes:
        parts = {s.name: state.signals[s.name].to_record() for s in self.signals}
        parts["_engine"] = (
            {
                "queries": state.queries,
                "evaluations": state.evaluations,
                "last_score": state.last_score,
                "peak_score": state.peak_score,
                "alerts": state.alerts,
            },
            {},
        )
        return pack(self.layout(), parts)

    def state_from_bytes(self, data: bytes | bytearray | memoryview | str) -> ClientState:
        """Read a state back; ``ValueError`` if it is corrupt or from an engine with another layout.

        ``str`` is accepted only to refuse it with a clear message: a Redis client with
        ``decode_responses=True`` hands back text, which cannot hold a binary state.
        """
        if isinstance(data, str):
            raise ValueError("detector state must be bytes (is the Redis client decoding responses?)")
        parts = unpack(bytes(data), self.layout())
        try:
            signals = {s.name: s.state_type().from_record(*parts[s.name]) for s in self.signals}
            return ClientState(signals=signals, **parts["_engine"][0])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupt detector state: {exc}") from exc

    # ------------------------------------------------------------------ streaming
    def observe(
        self,
        state: ClientState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        now: float | None = None,
        *,
        population: Population | None = None,
        client: str = "",
    ) -> Assessment:
        """Fold one client's batch into ``state`` (in place) and assess it.

        ``population``: the model's population baseline (``new_population``); the OOD signal then lets other
        clients' traffic explain a query, and the batch's rows are offered to it as ``client``'s afterwards.
        """
        X, outputs, labels = check_batch(X, outputs, labels, self.n_features, self.n_classes)
        if outputs is not None and np.any(labels < 0):
            labels = np.where(labels >= 0, labels, outputs.argmax(axis=1))
        evals = self._run(state, X, outputs, labels, now, population, client)
        if population is not None:
            self.offer(population, client, X)
        th = self.thresholds
        alert_at = th.alert if th is not None else math.inf
        if not evals:
            level: Level = th.level(state.last_score) if th is not None else "low"
            return Assessment(
                risk_score=state.last_score,
                level=level,
                alert=False,
                p_value=1.0,
                threshold=alert_at,
                signals=(),
                fired=(),
                evaluated=False,
                queries_seen=state.queries,
                tested_at=None,
                peak_risk_score=state.peak_score,
                now=now,
            )
        best = max(evals, key=lambda e: e.score)
        alert = best.score >= alert_at
        first_alert_at = next((e.queries for e in evals if e.score >= alert_at), None)
        m = len(best.results)
        p_alert = 10.0 ** (-alert_at) if math.isfinite(alert_at) else 0.0
        fired = tuple(r.signal for r in best.results if m * r.p_value <= p_alert)
        if alert and not fired:  # Fisher can alert on joint evidence; name the strongest contributor
            fired = (min(best.results, key=lambda r: r.p_value).signal,)
        return Assessment(
            risk_score=best.score,
            level=th.level(best.score) if th is not None else "low",
            alert=alert,
            p_value=best.p,
            threshold=alert_at,
            signals=best.results,
            fired=fired,
            evaluated=True,
            queries_seen=state.queries,
            tested_at=best.queries,
            peak_risk_score=state.peak_score,
            now=now,
            first_alert_at=first_alert_at,
        )

    def new_population(self, config: PopulationConfig | None = None) -> Population | None:
        """An empty population baseline for one model of this engine (None without an OOD signal)."""
        if self._ood is None:
            return None
        return Population(self.n_features, config or PopulationConfig())

    def population_layout(self) -> str:
        """What fixes the meaning of a population's rows: the OOD signal's feature space."""
        ood = self._ood
        return "" if ood is None else f"ood:d={self.n_features},features={ood.baseline_features}"

    def restore_population(self, blob: bytes, config: PopulationConfig | None = None) -> Population | None:
        """A population saved with ``population.to_bytes(engine.population_layout())``; ``ValueError`` when it
        does not fit this engine (the caller then starts an empty one)."""
        if self._ood is None:
            return None
        return Population.from_bytes(blob, self.n_features, config or PopulationConfig(), self.population_layout())

    def offer(self, population: Population, client: str, X: np.ndarray) -> int:
        """Offer ``client``'s rows to ``population`` (in the OOD signal's features); returns the rows kept."""
        ood = self._ood
        if ood is None or X.shape[0] == 0:
            return 0
        return population.add(client, ood.features(X))

    @property
    def _ood(self) -> OODSignal | None:
        return next((s for s in self.signals if isinstance(s, OODSignal)), None)

    def _run(
        self,
        state: ClientState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        now: float | None,
        population: Population | None = None,
        client: str = "",
    ) -> list[_Eval]:
        """Update the signals chunk by chunk, testing at every multiple of ``eval_every`` queries."""
        evals: list[_Eval] = []
        n = X.shape[0]
        start = 0
        while start < n:
            take = min(self._next_test(state.queries) - state.queries, n - start)
            end = start + take
            xs = X[start:end]
            os_ = None if outputs is None else outputs[start:end]
            ls = labels[start:end]
            for s in self.signals:
                if isinstance(s, OODSignal):
                    ood_state = state.signals[s.name]
                    assert isinstance(ood_state, OODState)
                    s.update(ood_state, xs, os_, ls, now=now, population=population, client=client)
                else:
                    s.update(state.signals[s.name], xs, os_, ls, now=now)
            state.queries += take
            if state.queries % self.eval_every == 0 or state.queries in self.early_tests:
                results = tuple(s.evaluate(state.signals[s.name], now=now) for s in self.signals)
                p = combine([r.p_value for r in results], self.method)
                score = neg_log10(p)
                state.evaluations += 1
                state.last_score = score
                state.peak_score = max(state.peak_score, score)
                if self.thresholds is not None and score >= self.thresholds.alert:
                    state.alerts += 1
                evals.append(_Eval(score, p, state.queries, results))
            start = end
        return evals

    def _next_test(self, queries: int) -> int:
        """The query count of the next test after ``queries``."""
        regular = (queries // self.eval_every + 1) * self.eval_every
        return min([q for q in self.early_tests if q > queries] + [regular])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write ``path/engine.json`` (parameters, scalars, thresholds) and ``path/baseline.npz`` (arrays)."""
        if self.thresholds is None:
            raise ValueError("fit or calibrate the engine before saving it")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}  # Any: numpy's savez stub types **kwds too narrowly for mypy
        sigs: list[dict[str, Any]] = []
        for s in self.signals:
            scalars, arrs = s.baseline().to_record()
            for name, arr in arrs.items():
                arrays[f"{s.name}.{name}"] = arr
            sigs.append({"name": s.name, "params": s.params(), "baseline": scalars, "arrays": sorted(arrs)})
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "eval_every": self.eval_every,
            "early_tests": list(self.early_tests),
            "method": self.method,
            "thresholds": self.thresholds.to_dict(),
            "signals": sigs,
        }
        np.savez(out / "baseline.npz", **arrays)
        (out / "engine.json").write_text(json.dumps(meta, indent=2, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path, *, reference_model: ReferenceModel | None = None) -> DetectionEngine:
        """Read what ``save`` wrote (arrays with ``allow_pickle=False``); the reference model is not saved."""
        src = Path(path)
        meta = json.loads((src / "engine.json").read_text())
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{src} is not a v{FORMAT_VERSION} detector baseline")
        d, k = int(meta["n_features"]), int(meta["n_classes"])
        signals: list[Signal[Any, Any]] = []
        with np.load(src / "baseline.npz", allow_pickle=False) as npz:
            for entry in meta["signals"]:
                name = entry["name"]
                if name not in _REGISTRY:
                    raise ValueError(f"unknown signal {name!r} in {src}")
                sig_cls, base_cls = _REGISTRY[name]
                arrays = {a: np.array(npz[f"{name}.{a}"]) for a in entry["arrays"]}
                baseline = base_cls.from_record(entry["baseline"], arrays)
                extra: dict[str, Any] = {"reference_model": reference_model} if name == "boundary" else {}
                ctor: Callable[..., Signal[Any, Any]] = sig_cls
                signals.append(ctor(baseline, n_features=d, n_classes=k, **entry["params"], **extra))
        return cls(
            signals,
            RiskThresholds.from_dict(meta["thresholds"]),
            n_features=d,
            n_classes=k,
            eval_every=int(meta["eval_every"]),
            method=meta["method"],
            early_tests=tuple(meta.get("early_tests", ())),
        )


def _reference_data(
    X_ref: np.ndarray,
    outputs_ref: np.ndarray | None,
    labels_ref: np.ndarray | None,
    reference_model: ReferenceModel | None,
    n_classes: int | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """The reference rows, their probabilities (None without outputs or model), labels and number of classes,
    checked (``ValueError`` with the reason)."""
    X = np.asarray(X_ref, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 40 or not np.all(np.isfinite(X)):
        raise ValueError(f"X_ref must be a finite [n >= 40, d] array, got shape {X.shape}")
    P = None if outputs_ref is None else np.asarray(outputs_ref, dtype=np.float64)
    if P is None and reference_model is not None:
        P = np.asarray(reference_model(X), dtype=np.float64)
    if P is not None and (P.ndim != 2 or P.shape[0] != X.shape[0] or P.shape[1] < 2):
        raise ValueError(f"outputs_ref must be [{X.shape[0]}, k >= 2] probabilities, got {P.shape}")
    if labels_ref is None:
        if P is None:
            raise ValueError("give outputs_ref, labels_ref or a reference_model")
        y = P.argmax(axis=1)
    else:
        y = np.asarray(labels_ref).reshape(-1).astype(np.int64)
        if y.shape[0] != X.shape[0] or np.any(y < 0):
            raise ValueError("labels_ref must hold one non-negative class per row")
    k = n_classes or (P.shape[1] if P is not None else int(y.max()) + 1)
    return X, P, y, positive_int("n_classes", k, minimum=2)


def _cross_fit(
    X: np.ndarray,
    P: np.ndarray | None,
    y: np.ndarray,
    cfg: FitConfig,
    daily_volumes_ref: np.ndarray | None,
    build: Callable[[np.ndarray, int], DetectionEngine],
) -> tuple[list[DetectionEngine], Iterable[BenignStream]]:
    """One engine per fold, fitted without the fold's rows, and the benign streams made of those rows (each
    stream's ``source`` names the engine that replays it).

    Cross-fitting: the benign streams that set the risk threshold come from rows the baselines of the engine
    replaying them never saw, as a real client's queries are. In-sample streams can look more benign than fresh
    data (measured on one of three digits splits: median per-client max score 0.10 in-sample vs 0.57 for fresh
    clients), which would set the threshold too low.
    """
    n_folds = positive_int("folds", cfg.folds, minimum=2)
    fold_rows = np.array_split(np.random.default_rng(cfg.seed).permutation(X.shape[0]), n_folds)
    fold_engines: list[DetectionEngine] = []
    fold_streams: list[Iterator[BenignStream]] = []
    for j, held in enumerate(fold_rows):
        train = np.setdiff1d(np.arange(X.shape[0]), held)
        fold_engines.append(build(train, cfg.seed + 101 * (j + 1)))
        fold_streams.append(
            benign_streams(
                X[held],
                None if P is None else P[held],
                y[held],
                n_streams=max(1, cfg.n_sim_clients // n_folds),
                length=cfg.sim_length,
                daily_volumes=daily_volumes_ref,
                seed=cfg.seed + 7 * (j + 1),
                source=j,
            )
        )
    return fold_engines, itertools.chain(*fold_streams)


def _fit_signals(
    X: np.ndarray,
    P: np.ndarray | None,
    y: np.ndarray,
    *,
    n_classes: int,
    reference_model: ReferenceModel | None,
    daily_volumes_ref: np.ndarray | None,
    index_fraction: float,
    eval_every: int,
    seed: int,
    params: dict[str, dict[str, Any]],
    variation: Variation | None = None,
) -> list[Signal[Any, Any]]:
    d = X.shape[1]
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    n_index = int(round(index_fraction * X.shape[0]))
    idx, cal = perm[:n_index], perm[n_index:]
    X_index, X_cal, y_cal, P_all, y_all = X[idx], X[cal], y[cal], P, y
    if variation is not None and reference_model is not None:
        # One varied copy per reference row, each through its own device; index and calibration rows are
        # varied separately so a row and its copy never sit on both sides of the OOD split.
        rng = np.random.default_rng(seed + 29)
        Xv = np.concatenate([variation(X[i : i + 1], rng) for i in range(X.shape[0])])
        Pv = np.asarray(reference_model(Xv), dtype=np.float64)
        yv = Pv.argmax(axis=1)
        X_index = np.concatenate([X_index, Xv[idx]])
        X_cal, y_cal = np.concatenate([X_cal, Xv[cal]]), np.concatenate([y_cal, yv[cal]])
        if P is not None:
            P_all, y_all = np.concatenate([P, Pv]), np.concatenate([y, yv])
    # What every signal is fitted with: the input width and the classes, and (all but the boundary signal,
    # which draws nothing at random) the fold's seed.
    shape: dict[str, Any] = {"n_features": d, "n_classes": n_classes}
    common = {**shape, "seed": seed}
    signals: list[Signal[Any, Any]] = []
    if P_all is not None:
        boundary = params.get("boundary", {})
        signals.append(
            BoundarySignal.fit(top2_margin(P_all), y_all, reference_model=reference_model, **shape, **boundary)
        )
    prada = params.get("prada", {})
    signals.append(PradaSignal.fit(X, y, eval_every=eval_every, variation=variation, **common, **prada))
    # Row-standardised OOD features by default: blind to a global gain and offset (another exposure), and on
    # digits they cost no detection against raw features (docs/detector.md, "Global intensity changes").
    ood_params = {"features": "standardised", **params.get("ood", {})}
    signals.append(OODSignal.fit(X_index, X_cal, y_cal, **common, **ood_params))
    sweep = params.get("sweep", {})
    signals.append(SweepSignal.fit(X, y, daily_volumes_ref=daily_volumes_ref, **common, **sweep))
    signals.append(StepsSignal.fit(X, variation=variation, **common, **params.get("steps", {})))
    return signals


def _varied_streams(
    streams: Iterable[BenignStream], variation: Variation, reference_model: ReferenceModel, seed: int
) -> Iterator[BenignStream]:
    """Each calibration stream sent through one client's device and answered by the reference model."""
    rng = np.random.default_rng(seed)
    for s in streams:
        Xv = np.asarray(variation(s.X, rng), dtype=np.float64)
        Pv = np.asarray(reference_model(Xv), dtype=np.float64)
        yield BenignStream(
            X=Xv,
            outputs=None if s.outputs is None else Pv,
            labels=Pv.argmax(axis=1),
            times=s.times,
            profile=s.profile,
            source=s.source,
        )


def _widen_to_population(
    streams: Sequence[BenignStream], fold_engines: Sequence[DetectionEngine], engines: Sequence[DetectionEngine]
) -> None:
    """Fit the benign between-client spread of the boundary and OOD rates on varied streams, widen every null.

    Each stream is scored by the fold engine whose baselines never saw its rows; a signal's concentration
    is ``stats.client_concentration`` over the streams' flag counts. The widened nulls are what the
    calibration then replays, so the thresholds are set on the same nulls the service will use.
    """
    counts: dict[tuple[str, str], list[int]] = {}
    sizes: dict[tuple[str, str], list[int]] = {}
    for s in streams:
        for g in fold_engines[s.source].signals:
            if not hasattr(g, "dispersion_flags"):
                continue
            flags = g.dispersion_flags(s.X, s.outputs)
            for kind, f in (flags or {}).items():
                counts.setdefault((g.name, kind), []).append(int(np.count_nonzero(f)))
                sizes.setdefault((g.name, kind), []).append(int(f.size))
    for (name, kind), ks in counts.items():
        if len(ks) < 10:
            continue
        kappa = client_concentration(np.asarray(ks), np.asarray(sizes[(name, kind)]))
        if not math.isfinite(kappa):
            continue
        for e in engines:
            for g in e.signals:
                if g.name == name:
                    g.widen(kind, kappa)  # type: ignore[attr-defined]

"""Where a detector process gets its engines: a saved baseline, or (demo defaults) one fitted at start-up.

A detector analyses each record with the engine of the record's model: baselines are per model, because
margins, classes and the input distribution are. ``EngineSet`` maps model names to engines, with ``"*"`` as
a catch-all.

Baseline directory layout (``MODELCUSTODY_DETECTOR_REFERENCE_PATH``), written by ``modelcustody detector fit``:

    <dir>/<model name>/engine.json + baseline.npz     one engine per model the gateway serves
    <dir>/<model name>/reference_model.json           optional: {"demo_model": "digits-mlp"}
    <dir>/engine.json + baseline.npz                  or a single engine for every model ("*")

The reference model is what the boundary signal asks for margins when a client received labels only. It is
a live model, not data, so a baseline cannot carry it; the caller may pass a ``ReferenceResolver`` that turns
the file's JSON into one (the demo package rebuilds its seeded demo models that way). Without one, the
boundary signal uses the margins of the probabilities the client received and gives no evidence on
label-only traffic (the other signals do).

``MODELCUSTODY_DETECTOR_REFERENCE_PATH`` may also name the owner's reference set itself (``.npz`` with ``x`` and
``probabilities`` or ``labels``): the detector then fits its baseline at start-up (seconds) for the model named
by ``MODELCUSTODY_DETECTOR_REFERENCE_MODEL`` (default ``*``: every model).

Without a configured path the caller supplies the engines (``modelcustody serve detector`` outside
``env=prod`` fits the demo models' engines from ``services.demo.baseline`` and caches them under
``<data_dir>/detector/baseline``); this module knows nothing of the demo.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.detector.engine import DetectionEngine, FitConfig

log = logging.getLogger(__name__)

CATCH_ALL = "*"
REFERENCE_MODEL_FILE = "reference_model.json"

ReferenceModel = Callable[[np.ndarray], np.ndarray]
# Turns the JSON of a baseline's reference_model.json into a live model (or None when it cannot).
ReferenceResolver = Callable[[Mapping[str, Any]], ReferenceModel | None]


class EngineSet(Mapping[str, DetectionEngine]):
    """Engines by model name; ``for_model`` falls back to the catch-all engine, if any."""

    def __init__(self, engines: Mapping[str, DetectionEngine]) -> None:
        if not engines:
            raise ValueError("a detector needs at least one engine")
        self._engines = dict(engines)

    def __getitem__(self, model: str) -> DetectionEngine:
        return self._engines[model]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def for_model(self, model: str) -> DetectionEngine | None:
        return self._engines.get(model) or self._engines.get(CATCH_ALL)


def fit_reference_engine(
    x_ref: np.ndarray,
    outputs_ref: np.ndarray | None = None,
    labels_ref: np.ndarray | None = None,
    *,
    daily_volumes: np.ndarray | None = None,
    seed: int = 0,
    n_sim_clients: int = 200,
) -> DetectionEngine:
    """Fit an engine on an owner's reference set: held-out inputs in the gateway's input space, with the
    model's probabilities on them (all four signals) or only its labels (no boundary signal, which needs
    margins), and optionally benign clients' daily query counts (enables the sweep signal's volume test).
    ``ValueError`` naming what is wrong with the data."""
    x = np.asarray(x_ref, dtype=np.float64)
    if outputs_ref is None and labels_ref is None:
        raise ValueError("the reference set needs the model's probabilities or labels on its inputs")
    return DetectionEngine.fit(
        x,
        outputs_ref,
        labels_ref,
        daily_volumes_ref=daily_volumes,
        config=FitConfig(n_sim_clients=n_sim_clients, seed=seed),
    )


def reference_outputs_from_upstream(
    x_ref: np.ndarray, url: str, model: str, protocol: str = "oip-v2", token: str | None = None
) -> np.ndarray:
    """The model's probabilities on the reference inputs, asked once from its own API (not the gateway)."""
    from services.core.model_client import HttpSuspect

    with HttpSuspect(url, protocol=protocol, model=model, token=token, output="probabilities") as upstream:  # type: ignore[arg-type]
        return np.asarray(upstream.probabilities(np.asarray(x_ref, dtype=np.float64)), dtype=np.float64)


def save_engine(engine: DetectionEngine, directory: Path, reference: Mapping[str, Any] | None = None) -> None:
    """Save ``engine``; ``reference`` (JSON) tells a ``ReferenceResolver`` how to rebuild its live model."""
    engine.save(directory)
    if reference is not None:
        (directory / REFERENCE_MODEL_FILE).write_text(json.dumps(dict(reference)))


def load_engine(directory: Path, resolve_reference: ReferenceResolver | None = None) -> DetectionEngine:
    reference_model: ReferenceModel | None = None
    ref_file = directory / REFERENCE_MODEL_FILE
    if ref_file.exists() and resolve_reference is not None:
        reference_model = resolve_reference(json.loads(ref_file.read_text()))
    return DetectionEngine.load(directory, reference_model=reference_model)


def read_reference_set(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(x, probabilities, labels, daily_volumes) from an owner's reference .npz, each but x optional (None);
    ``ValueError`` with the reason."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as .npz: {exc}") from None
    if "x" not in arrays:
        raise ValueError(f"{path} has no array 'x' (arrays: {sorted(arrays)})")
    return arrays["x"], arrays.get("probabilities"), arrays.get("labels"), arrays.get("daily_volumes")


def load_engines(path: Path, model: str = CATCH_ALL, resolve_reference: ReferenceResolver | None = None) -> EngineSet:
    """Engines from a baseline directory (see the module doc), or fitted now from an owner's reference set
    (a ``.npz`` with ``x`` and ``probabilities`` or ``labels``) for ``model``; ``ValueError`` naming what is
    missing."""
    if path.is_file() and path.suffix == ".npz":
        x, outputs, labels, volumes = read_reference_set(path)
        log.info("fitting the detector baseline of %s on the reference set %s", model, path)
        return EngineSet({model: fit_reference_engine(x, outputs, labels, daily_volumes=volumes)})
    if not path.is_dir():
        raise ValueError(f"detector baseline {path} is neither a directory nor a reference .npz")
    if (path / "engine.json").exists():
        return EngineSet({CATCH_ALL: load_engine(path, resolve_reference)})
    subdirectories = [sub for sub in sorted(path.iterdir()) if (sub / "engine.json").exists()]
    engines = {sub.name: load_engine(sub, resolve_reference) for sub in subdirectories}
    if not engines:
        raise ValueError(f"no detector baseline (engine.json) in {path} or its subdirectories")
    return EngineSet(engines)


def load_or_fit_engines(
    reference_path: Path | None,
    fallback: Callable[[], EngineSet] | None = None,
    reference_model: str = CATCH_ALL,
    resolve_reference: ReferenceResolver | None = None,
) -> EngineSet:
    """The configured baseline or reference set (for ``reference_model``), else what ``fallback`` builds;
    ``ValueError`` when there is neither."""
    if reference_path is not None:
        return load_engines(reference_path, reference_model, resolve_reference)
    if fallback is None:
        raise ValueError("no detector baseline: set MODELCUSTODY_DETECTOR_REFERENCE_PATH (see `detector fit`)")
    return fallback()

"""The detector's demo baselines: the demo models rebuilt (seeded, identical to what the demo model server
serves) and their engines fitted on the owner's reference half of the digits holdout, never sent by any
client. ``modelcustody serve detector`` uses them outside ``env=prod`` when no baseline is configured.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from services.demo.model_server.models import DIGITS_MAX, MODEL_KINDS, digits_split, holdout_halves, train_model
from services.detector.augment import ImageVariation
from services.detector.engine import DetectionEngine, FitConfig
from services.detector.service.runtime import EngineSet, ReferenceModel, load_engine, save_engine

log = logging.getLogger(__name__)

DEMO_MODELS = ("digits-mlp",)
# Benign digits differ from the reference rows: off-centre by up to one 8x8 pixel (a 4-px shift of the pen
# strokes in the 32x32 bitmap the digits were counted from), slightly rotated, noisy (docs/detector.md).
DIGITS_VARIATION = ImageVariation(shape=(8, 8), low=0.0, high=DIGITS_MAX, max_shift_px=1.0)


def demo_reference_model(model: str, seed: int = 0) -> ReferenceModel:
    """The demo model server's model (same split, same seed), as a probability function on raw inputs."""
    try:
        kind = MODEL_KINDS[model]
    except KeyError:
        raise ValueError(f"'{model}' is not a demo model ({', '.join(MODEL_KINDS)})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = train_model(kind, digits_split(seed), seed)
    return lambda x: np.asarray(fitted.predict_proba(np.asarray(x, dtype=np.float64)))


def resolve_demo_reference(reference: Mapping[str, Any]) -> ReferenceModel | None:
    """A ``ReferenceResolver`` for baselines saved by ``save_demo_engine``."""
    name = reference.get("demo_model")
    return demo_reference_model(str(name)) if name is not None else None


def fit_demo_engine(model: str, seed: int = 0, n_sim_clients: int = 200) -> DetectionEngine:
    """Fit one demo model's engine on the reference half of the digits holdout (never sent by any client)."""
    reference_model = demo_reference_model(model, seed)
    x_ref, _, _, _ = holdout_halves(digits_split(seed), seed)
    return DetectionEngine.fit(
        x_ref,
        reference_model(x_ref),
        reference_model=reference_model,
        config=FitConfig(n_sim_clients=n_sim_clients, seed=seed, variation=DIGITS_VARIATION),
    )


def save_demo_engine(engine: DetectionEngine, directory: Path, model: str) -> None:
    save_engine(engine, directory, reference={"demo_model": model})


def demo_engines(cache_dir: Path | None = None, models: Iterable[str] = DEMO_MODELS, seed: int = 0) -> EngineSet:
    """The demo models' engines, fitted once, then cached in ``cache_dir``."""
    engines: dict[str, DetectionEngine] = {}
    for model in models:
        cached = None if cache_dir is None else cache_dir / model
        if cached is not None and (cached / "engine.json").exists():
            engines[model] = load_engine(cached, resolve_demo_reference)
            continue
        log.info("fitting the detector baseline of %s on the demo reference data", model)
        engines[model] = fit_demo_engine(model, seed)
        if cached is not None:
            save_demo_engine(engines[model], cached, model)
    return EngineSet(engines)

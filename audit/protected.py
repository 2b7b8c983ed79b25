"""Protected models: what an owner registers once, before any dispute, and every later audit reuses.

A registration takes the owner's model (a safetensors/ONNX/skops file, or an HTTP endpoint), the watermark
key (``audit.watermark_key``), reference data the model was NOT trained on (or ready-made null models), and
the private/public samples for dataset inference; it precomputes

- **the watermark null** (``audit.watermark.calibrate_null``) on reference models trained without the
  watermark on the owner's disjoint reference data (``audit.null_models.train_null_models``), or on the null
  models the owner supplied;
- **the dataset-inference artifacts** (``audit.dataset_inference.prepare_owner``) with the same null models;
- **the MinGD dataset-inference artifacts** (the white-box embedding, ``audit.mingd``) with the same samples and
  null models, when the protected model and every null model are torch modules (a safetensors model; trained or
  safetensors null models): the ``dataset_inference_mingd`` method;
- **the self-test** (``audit.self_test``): every method run on the protected model and on a label and a
  probability copy made from it; a method that does not claim all three is low-power, and its audits answer
  ``inconclusive`` instead of ``no-claim``;

and writes everything into one directory with a signed record of it (see ``register_protected_model``)::

    <root>/<id>/inputs/model.<format> | watermark.key.json | reference.npz | di_data.npz | null_models/<i>.safetensors
    <root>/<id>/artifacts/watermark_null.json | null_models/ref_<i>.safetensors | dataset_inference/...
                                                                              | dataset_inference_mingd/...
    <root>/<id>/registration.dsse.json

The record (predicate ``REGISTRATION_PREDICATE``) lists the SHA-256 of every input and artifact file, the
parameters, the software version and the registration time, and is an in-toto Statement in a DSSE envelope
signed with the service's Ed25519 key; its subjects are the same files. The SHA-256 of the envelope bytes is
the registration digest that audit reports carry (``protected_model.registration_sha256``) with the
registration time: the evidence (key, triggers, null, private samples) was committed before the audit, the
countermeasure against false claims built after the fact (Liu et al., USENIX Security 2024). The time is the
signer's own clock; publishing the digest to an external timestamp authority or transparency log makes it
independent of the operator, and is left to the operator. ``ProtectedModel.load`` checks the signature and
every file's digest, so an artifact altered after registration is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.boundary_watermark import DEFAULT_STATISTIC as BOUNDARY_STATISTIC
from audit.boundary_watermark import BoundaryKey, load_any_key
from audit.configs import Progress
from audit.provenance import SOFTWARE_VERSION as __version__
from audit.provenance import sha256_of
from audit.report import jsonable, rfc3339
from audit.signing import REGISTRATION_PREDICATE, Signer, as_signer, key_id, verify_envelope
from audit.suspects.base import Suspect
from audit.watermark import NullCalibration, calibrate_null
from audit.watermark_key import WatermarkKey

AnyKey = WatermarkKey | BoundaryKey

ENVELOPE_FILE = "registration.dsse.json"
MODEL_FORMATS = ("safetensors", "onnx", "skops")
DI_KEYS = ("x_private", "y_private", "x_public", "y_public")
DI_UNAVAILABLE = "dataset inference unavailable: audit.dataset_inference is not installed in this build"


def _no_progress(fraction: float, message: str) -> None:
    return None


# Builds the Suspect for a model behind an HTTP endpoint from its keywords (url, protocol, model, token, ...).
EndpointOpener = Callable[[Mapping[str, Any]], Suspect]


@dataclass(frozen=True)
class RegistrationConfig:
    """How the registration precomputes the nulls. Defaults, and why:

    ``n_null_models`` 20: dataset inference's calibrated p-value is at least 1/(n + 1), so it can only claim
    at α = 0.05 with 20 or more null models; the watermark null reuses them (WRT calibrates on 20–30, and
    ``audit.watermark.NullCalibration`` explains why more references make the bound safer). About five
    seconds of training on digits.
    ``reference_epochs`` 40: the embedder's own 20 + 20 schedule, so references are trained like the victim.
    ``null_confidence`` 0.99 and ``null_margin`` 0.10: ``calibrate_null``'s defaults (reasons given there).
    ``mingd`` True: also prepare MinGD artifacts when the models are torch modules (~6 s with 20 null models on
    digits); ``mingd_config``: ``audit.mingd.MinGDConfig`` keywords (its defaults when None).
    ``reference_max_rows`` 3,000: each null model trains on at most this many reference rows. The nulls' cost
    grows with the rows while the spread the calibration needs comes from seeds, subsets and widths; on MNIST
    (784 features, 10,000 reference rows) uncapped nulls made registration take over 12 CPU-minutes.
    ``null_parts`` 4: the reference rows are split into 4 disjoint parts and the nulls spread over them (5 per
    part with 20 nulls), so that dataset inference's null carries the spread *between* data sets that a suspect
    trained on other data brings (``audit.null_models``; docs/audits.md "Dataset inference's false claims on
    digits"): on stored digits walks of 8 seeds, nulls that all subsampled one pool of reference rows let 8 of 160
    independents be claimed, 4 parts with the grouped null 1 of 160. Two parts leave the between-part spread on
    one degree of freedom (too wide to use), ten parts of a digits owner's 648 rows make 65-row models. 1 keeps
    one pool.
    ``null_min_steps`` 200: each null takes at least this many optimiser steps (a digits part of 162 rows gives
    two batches per epoch, and 40 epochs left those nulls at 62-88 % accuracy against ~90 % for models on 270
    rows; 200 steps is what the recipe gives 270 rows).
    ``self_test`` True: run each method on the protected model and on a label and a probability copy of it
    (``audit.self_test``); ``self_test_copies``: ``audit.self_test.CopyRecipe`` keywords.
    """

    n_null_models: int = 20
    reference_epochs: int = 40
    reference_seed: int = 1000
    reference_subsample: float = 0.75
    null_confidence: float = 0.99
    null_margin: float = 0.10
    di_seed: int = 0
    di_config: dict[str, Any] | None = None
    mingd: bool = True
    mingd_config: dict[str, Any] | None = None
    reference_max_rows: int | None = 3000
    null_parts: int = 4
    null_min_steps: int = 200
    self_test: bool = True
    self_test_copies: dict[str, Any] | None = None
    watermark_key_selection: bool = True
    watermark_selection_min_inputs: int = 30

    def __post_init__(self) -> None:
        if self.n_null_models < 1:
            raise ValueError("n_null_models must be at least 1")
        if self.reference_epochs < 2:
            raise ValueError("reference_epochs must be at least 2")
        if not 0.0 < self.reference_subsample <= 1.0:
            raise ValueError("reference_subsample must be in (0, 1]")
        if not 0.5 <= self.null_confidence < 1.0 or not 0.0 <= self.null_margin < 1.0:
            raise ValueError("null_confidence must be in [0.5, 1) and null_margin in [0, 1)")
        if self.reference_max_rows is not None and (
            isinstance(self.reference_max_rows, bool)
            or not isinstance(self.reference_max_rows, int)
            or self.reference_max_rows < 2
        ):
            raise ValueError("reference_max_rows must be an integer >= 2 or null")
        for name in ("null_parts", "null_min_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "null_parts" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'null_parts' else 0}, got {value!r}")
        if not isinstance(self.watermark_key_selection, bool):
            raise ValueError(f"watermark_key_selection must be true or false, got {self.watermark_key_selection!r}")
        if (
            isinstance(self.watermark_selection_min_inputs, bool)
            or not isinstance(self.watermark_selection_min_inputs, int)
            or self.watermark_selection_min_inputs < 1
        ):
            raise ValueError("watermark_selection_min_inputs must be a positive integer")
        if not isinstance(self.self_test, bool):
            raise ValueError(f"self_test must be true or false, got {self.self_test!r}")
        if self.self_test_copies is not None:
            from audit.self_test import CopyRecipe

            try:
                CopyRecipe(**self.self_test_copies)
            except TypeError as exc:
                raise ValueError(f"bad self_test_copies: {exc}") from None
        if not isinstance(self.mingd, bool):
            raise ValueError(f"mingd must be true or false, got {self.mingd!r}")
        if self.mingd_config is not None:
            from audit.mingd import MinGDConfig

            MinGDConfig.from_dict(self.mingd_config)  # ValueError naming the bad parameter, before any work

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RegistrationConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown registration parameters {sorted(unknown)}")
        return cls(**d)


@dataclass
class RegistrationInputs:
    """What the owner hands over. Exactly one of ``model_path`` / ``endpoint``; the rest is optional, but
    each audit method needs its part: watermark audits the key plus reference data or null models, dataset
    inference the ``di_data`` npz (``x_private, y_private, x_public, y_public``) plus the same nulls."""

    name: str
    model_path: Path | None = None
    model_format: str = "safetensors"
    architecture: str | None = None
    config: dict[str, Any] | None = None
    endpoint: dict[str, Any] | None = None  # HttpSuspect keywords: url, protocol, model, token, ...
    watermark_key_path: Path | None = None
    reference_data_path: Path | None = None  # npz with x, y (or x_ref, y_ref)
    di_data_path: Path | None = None
    null_model_paths: list[Path] = field(default_factory=list)

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> RegistrationInputs:
        """From the stored form of a queued registration: ``files`` maps input names to ``{"path", ...}``."""
        files = spec.get("files", {})

        def path(key: str) -> Path | None:
            return Path(files[key]["path"]) if key in files else None

        nulls = sorted((k for k in files if k.startswith("null_model_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        return cls(
            name=name,
            model_path=path("model"),
            model_format=spec.get("model_format") or "safetensors",
            architecture=spec.get("architecture"),
            config=spec.get("config"),
            endpoint=spec.get("endpoint"),
            watermark_key_path=path("watermark_key"),
            reference_data_path=path("reference_data"),
            di_data_path=path("di_data"),
            null_model_paths=[Path(files[k]["path"]) for k in nulls],
        )

    def validate(self) -> None:
        if not self.name or len(self.name) > 200:
            raise ValueError("a protected model needs a name of 1-200 characters")
        if (self.model_path is None) == (self.endpoint is None):
            raise ValueError("give exactly one of a model file or an endpoint")
        if self.model_path is not None and self.model_format not in MODEL_FORMATS:
            raise ValueError(f"protected model format must be one of {MODEL_FORMATS}, got {self.model_format!r}")
        if self.watermark_key_path is None and self.di_data_path is None:
            raise ValueError("nothing to audit with: give a watermark key and/or dataset-inference data")
        if self.reference_data_path is None and not self.null_model_paths:
            raise ValueError("the nulls need reference data (npz with x, y) or null model files")


def load_reference_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        names = set(data.files)
        for xk, yk in (("x", "y"), ("x_ref", "y_ref"), ("x_reference", "y_reference")):
            if {xk, yk} <= names:
                x, y = np.asarray(data[xk], dtype=np.float32), np.asarray(data[yk], dtype=np.int64)
                break
        else:
            raise ValueError(f"reference data needs arrays x and y, found {sorted(names)}")
    if x.ndim != 2 or len(x) != len(y) or len(x) < 4:
        raise ValueError(f"reference data must be x [n, d] with one label each (n >= 4), got {x.shape}, {y.shape}")
    return x, y


def load_di_data(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = set(DI_KEYS) - set(data.files)
        if missing:
            raise ValueError(f"dataset-inference data lacks {sorted(missing)} (has {sorted(data.files)})")
        out = {k: np.asarray(data[k]) for k in DI_KEYS}
    for part in ("private", "public"):
        x, y = out[f"x_{part}"], out[f"y_{part}"]
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x_{part} must be [n, d] with one label per row, got {x.shape} and {y.shape}")
    return out


def dataset_inference_module() -> Any | None:
    """``audit.dataset_inference`` when this build has it, else None (registration then skips it)."""
    try:
        import audit.dataset_inference as di
    except ImportError:
        return None
    return di


def open_model(
    *,
    model_path: Path | None,
    model_format: str,
    architecture: str | None,
    config: Mapping[str, Any] | None,
    endpoint: Mapping[str, Any] | None,
    open_endpoint: EndpointOpener | None = None,
) -> Suspect:
    """The owner's own model as a ``Suspect`` (files load through the safe loaders only)."""
    if endpoint is not None:
        if open_endpoint is None:
            raise ValueError("registering a model behind an endpoint needs an endpoint opener")
        return open_endpoint(endpoint)
    assert model_path is not None
    from audit.suspects.loader import load_suspect_file

    return load_suspect_file(model_path, model_format, architecture=architecture, config=config)


def _train_references(x: np.ndarray, y: np.ndarray, key: AnyKey | None, cfg: RegistrationConfig) -> list[Suspect]:
    """The registration's null models: ``audit.null_models.train_null_models``, the one trainer the benchmark
    and the tests use too, so what bench/audit.py measures is what a registration builds."""
    from audit.null_models import train_null_models

    shape = key.image_shape if isinstance(key, WatermarkKey) else None
    classes = key.num_classes if key is not None else None
    return train_null_models(
        x,
        y,
        n=cfg.n_null_models,
        seed=cfg.reference_seed,
        subsample=cfg.reference_subsample,
        image_shape=shape,
        num_classes=classes,
        epochs=cfg.reference_epochs,
        max_rows=cfg.reference_max_rows,
        parts=min(cfg.null_parts, cfg.n_null_models, len(x) // 2),
        min_steps=cfg.null_min_steps,
    )


def _copy(src: Path, dst: Path) -> dict[str, Any]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return {"sha256": sha256_of(dst), "size": dst.stat().st_size}


def _digests(directory: Path, base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): sha256_of(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@dataclass
class _Work:
    """What the registration steps pass along: the partial directory, the loaded inputs, what has been built."""

    dir: Path
    cfg: RegistrationConfig
    report: Progress
    model_record: dict[str, Any] = field(default_factory=dict)
    key: AnyKey | None = None
    boundary_baseline: np.ndarray | None = None  # boundary keys: the null models' mean pair vote per probe
    boundary_probability_baseline: np.ndarray | None = None  # the same from the null models' probabilities
    boundary_sides: Any = None  # boundary keys: the keys' sides on the probes (KeySides), built once
    ref_data: tuple[np.ndarray, np.ndarray] | None = None
    di_data: dict[str, np.ndarray] | None = None
    owner: Suspect | None = None
    nulls: list[Suspect] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    null: NullCalibration | None = None
    watermark: dict[str, Any] | None = None
    dataset_inference: dict[str, Any] | None = None
    dataset_inference_mingd: dict[str, Any] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)  # method -> DatasetInferenceArtifacts
    self_test: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def register_protected_model(
    inputs: RegistrationInputs,
    root: Path,
    signer: Signer | Ed25519PrivateKey,
    *,
    registration_id: str,
    config: RegistrationConfig | None = None,
    progress: Progress | None = None,
    open_endpoint: EndpointOpener | None = None,
) -> ProtectedModel:
    """Copy the inputs, precompute the nulls, test each method's power, sign the record; return the registration.

    ``open_endpoint`` turns ``inputs.endpoint`` into a ``Suspect`` (the services pass their HTTP model client;
    the algorithms know no transport).

    Written into ``<root>/.<id>.partial`` and renamed into place at the end, so a registration killed half
    way leaves no directory that looks complete (a retry starts over). The steps, in order: copy the inputs,
    open the owner's model, the null models, the watermark null, the dataset-inference artifacts, the self-test
    (``audit.self_test``), the signed record.
    """
    inputs.validate()
    started = time.perf_counter()
    cpu_started = time.process_time()
    final = root / registration_id
    if final.exists():
        raise FileExistsError(f"protected model {registration_id} is already registered")
    work = root / f".{registration_id}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "inputs").mkdir(parents=True)
    (work / "artifacts").mkdir()
    w = _Work(dir=work, cfg=config or RegistrationConfig(), report=progress or _no_progress)
    _copy_inputs(inputs, w)
    w.report(0.05, "loading the protected model")
    w.owner = open_model(
        model_path=(work / "inputs" / f"model.{inputs.model_format}") if inputs.model_path else None,
        model_format=inputs.model_format,
        architecture=inputs.architecture,
        config=inputs.config,
        endpoint=inputs.endpoint,
        open_endpoint=open_endpoint,
    )
    _build_null_models(inputs, w)
    _calibrate_watermark(w)
    _prepare_dataset_inference(w)
    _run_self_tests(w)
    w.report(0.97, "signing the registration")
    signer = as_signer(signer)
    _sign(inputs, w, signer, registration_id, started, cpu_started)
    work.rename(final)
    w.report(1.0, "registered")
    return ProtectedModel.load(final, signer.public_key_pem())


def _copy_inputs(inputs: RegistrationInputs, w: _Work) -> None:
    """Copy every input into ``inputs/`` (what the record's digests cover) and load the data files."""
    w.report(0.01, "copying inputs")
    if inputs.model_path is not None:
        copied = _copy(inputs.model_path, w.dir / "inputs" / f"model.{inputs.model_format}")
        w.model_record = {
            "kind": "file",
            "format": inputs.model_format,
            "architecture": inputs.architecture,
            "config": inputs.config,
            **copied,
        }
    else:
        assert inputs.endpoint is not None
        public = {k: v for k, v in inputs.endpoint.items() if k != "token"}
        w.model_record = {"kind": "endpoint", **public}
    if inputs.watermark_key_path is not None:
        _copy(inputs.watermark_key_path, w.dir / "inputs" / "watermark.key.json")
        w.key = load_any_key(w.dir / "inputs" / "watermark.key.json")
    if inputs.reference_data_path is not None:
        _copy(inputs.reference_data_path, w.dir / "inputs" / "reference.npz")
        w.ref_data = load_reference_data(w.dir / "inputs" / "reference.npz")
    if inputs.di_data_path is not None:
        _copy(inputs.di_data_path, w.dir / "inputs" / "di_data.npz")
        w.di_data = load_di_data(w.dir / "inputs" / "di_data.npz")
    for i, p in enumerate(inputs.null_model_paths):
        _copy(p, w.dir / "inputs" / "null_models" / f"{i}.safetensors")


def _build_null_models(inputs: RegistrationInputs, w: _Work) -> None:
    """The owner's own null-model files, else null models trained on the owner's disjoint reference data."""
    if inputs.null_model_paths:
        from audit.suspects.loader import load_suspect_file

        for p in sorted((w.dir / "inputs" / "null_models").glob("*.safetensors")):
            w.nulls.append(load_suspect_file(p, "safetensors"))
            w.descriptions.append(f"owner-supplied null model {p.name}")
    else:
        assert w.ref_data is not None
        from audit.architectures import save_model

        w.report(0.10, f"training {w.cfg.n_null_models} null models on the reference data")
        (w.dir / "artifacts" / "null_models").mkdir()
        for i, null in enumerate(_train_references(*w.ref_data, w.key, w.cfg)):
            model = null.module  # type: ignore[attr-defined]  # TorchModuleSuspect from train_null_models
            config_dict = {
                "input_dim": model.blocks[0].in_features,
                "hidden": [b.out_features for b in model.blocks],
                "num_classes": model.head.out_features,
            }
            save_model(w.dir / "artifacts" / "null_models" / f"ref_{i}.safetensors", model, "mlp", config_dict)
            w.nulls.append(null)
            w.descriptions.append(str(null.identity.get("description", f"null model {i}")))
    w.report(0.40, "null models ready")


def _calibrate_watermark(w: _Work) -> None:
    """The watermark null on the null models, and whether the owner's own model clears it."""
    if w.key is None:
        w.report(0.50, "no watermark key")
        return
    assert w.owner is not None
    if isinstance(w.key, BoundaryKey):
        _calibrate_boundary(w, w.key)
        return
    key, cfg = w.key, w.cfg
    null = _select_and_calibrate(w) if cfg.watermark_key_selection else None
    if null is None:
        null = calibrate_null(
            key, w.nulls, confidence=cfg.null_confidence, margin=cfg.null_margin, descriptions=w.descriptions
        )
    (w.dir / "artifacts" / "watermark_null.json").write_text(json.dumps(null.to_dict(), sort_keys=True))
    w.null = null
    owner_rate = float(np.mean(w.owner.labels(null.test_inputs(key)) == key.target_class))
    w.watermark = {
        "key_fingerprint": key.fingerprint(),
        "source_class": key.source_class,
        "target_class": key.target_class,
        "key_size": len(key.inputs),
        "null_rate_bound": null.bound,
        "null_rates": null.rates,
        "inputs_tested": null.n_inputs,
        "key_selection": null.selection,
        "owner_success_rate": owner_rate,
    }
    if owner_rate <= null.bound:
        w.notes.append(
            f"the protected model itself answers the key 'target' at {owner_rate:.3f}, not above the "
            f"null bound {null.bound:.3f}: watermark audits cannot claim"
        )
    w.report(0.50, "watermark null calibrated")


def _calibrate_boundary(w: _Work, key: BoundaryKey) -> None:
    """A boundary key's baseline: the mean pair vote of every null model on the probes
    (``audit.boundary_watermark``), and the owner's own test against it."""
    from audit.boundary_watermark import KeySides, baseline_from_models, verify_boundary_watermark

    assert w.owner is not None
    w.report(0.45, "boundary watermark: the null models' baseline on the probes")
    baseline = baseline_from_models(key, w.nulls)
    # the same from the nulls' probabilities: the test of a suspect that answers probabilities reads its votes there
    probability_baseline = (
        baseline_from_models(key, w.nulls, answers="probabilities")
        if all(m.has_probabilities for m in w.nulls)
        else None
    )
    w.boundary_baseline, w.boundary_probability_baseline = baseline, probability_baseline
    w.boundary_sides = KeySides(key)
    null = {
        "kind": "boundary",
        "key_fingerprint": key.fingerprint(),
        "baseline": [float(v) for v in baseline],
        "baseline_models": list(w.descriptions),
        "method": "mean pair vote (+1 the probe's higher-numbered top-two class, -1 the other, 0 any other "
        "class) of the registration's null models",
        # the boundary test's statistic this registration was calibrated (self-tested) with: its audits use it too
        "statistic": BOUNDARY_STATISTIC,
    }
    if probability_baseline is not None:
        null["probability_baseline"] = [float(v) for v in probability_baseline]
        null["probability_method"] = (
            "mean pair score (p_hi - p_lo) / (p_hi + p_lo) of the registration's null models' probabilities"
        )
    (w.dir / "artifacts" / "watermark_null.json").write_text(json.dumps(null, sort_keys=True))
    owner = verify_boundary_watermark(
        w.owner,
        key,
        baseline,
        sides=w.boundary_sides,
        baseline_description="registration null models",
        probability_baseline=probability_baseline,
    )
    w.watermark = {
        "kind": "boundary",
        "key_fingerprint": key.fingerprint(),
        "key_size": len(key.probes),
        "inputs_tested": len(key.probes),
        "owner_p_value": owner.p_value,
        "owner_statistic": owner.statistic,
        "owner_success_rate": owner.pair_agreement,
        "baseline_models": len(w.nulls),
    }
    if not owner.claimed:
        w.notes.append(
            f"the protected model itself is not claimed by its boundary key (p = {owner.p_value:.3g}): watermark "
            "audits will not claim copies of it"
        )
    w.report(0.50, "boundary watermark baseline ready")


def _select_and_calibrate(w: _Work) -> NullCalibration | None:
    """Key selection (``watermark_key_selection``): the even-numbered null models select the key inputs the owner
    answers "target" and none of them does (``audit.watermark.select_key_inputs``); the odd-numbered ones, which
    played no part in the choice, set the bound on the kept inputs. None (the whole key and every null) when there
    are fewer than four nulls or fewer than ``watermark_selection_min_inputs`` inputs survive; a note says so."""
    from audit.watermark import select_key_inputs

    assert isinstance(w.key, WatermarkKey) and w.owner is not None
    key, cfg = w.key, w.cfg
    if len(w.nulls) < 4:
        w.notes.append("watermark key selection skipped: it needs at least four null models")
        return None
    chosen, held_out = list(range(0, len(w.nulls), 2)), list(range(1, len(w.nulls), 2))
    owner_hits = w.owner.labels(key.inputs) == key.target_class
    votes = np.stack([w.nulls[i].labels(key.inputs) == key.target_class for i in chosen])
    kept = select_key_inputs(owner_hits, votes)
    if len(kept) < cfg.watermark_selection_min_inputs:
        w.notes.append(
            f"watermark key selection kept {len(kept)} of {len(key.inputs)} inputs (fewer than "
            f"{cfg.watermark_selection_min_inputs}): the whole key is tested against every null model"
        )
        return None
    selection = {
        "rule": "key inputs the protected model answers with the target class and no selection model does",
        "selection_models": [w.descriptions[i] for i in chosen],
        "kept": len(kept),
        "key_size": len(key.inputs),
        "bound_models": "the other null models (listed in references), which played no part in the selection",
    }
    return calibrate_null(
        key,
        [w.nulls[i] for i in held_out],
        confidence=cfg.null_confidence,
        margin=cfg.null_margin,
        descriptions=[w.descriptions[i] for i in held_out],
        selected=kept.tolist(),
        selection=selection,
    )


def _prepare_dataset_inference(w: _Work) -> None:
    """Blind Walk (and, for torch models, MinGD) dataset-inference artifacts on the same null models."""
    no_di = {"available": False, "reason": "no dataset-inference data (di_data) was registered"}
    w.dataset_inference, w.dataset_inference_mingd = dict(no_di), dict(no_di)
    if w.di_data is None:
        return
    di = dataset_inference_module()
    if di is None:
        w.dataset_inference = {"available": False, "reason": DI_UNAVAILABLE}
        w.dataset_inference_mingd = {"available": False, "reason": DI_UNAVAILABLE}
        w.notes.append(DI_UNAVAILABLE)
        return
    assert w.owner is not None
    cfg, data = w.cfg, w.di_data
    white_box = cfg.mingd and _white_box(w.owner, w.nulls)
    share = 0.20 if white_box else 0.30  # of the progress bar; MinGD takes the rest up to 0.80

    def prepare(embedding: str, config: Any, low: float, span: float, what: str) -> Any:
        def di_progress(*args: Any) -> None:
            w.report(low + span * progress_fraction(args), what)

        return di.prepare_owner(
            w.owner,
            data["x_private"],
            data["y_private"],
            data["x_public"],
            data["y_public"],
            null_models=w.nulls,
            config=config,
            embedding=embedding,
            seed=cfg.di_seed,
            progress=di_progress,
        )

    def record(artifacts: Any) -> dict[str, Any]:
        return {
            "available": True,
            "n_private": len(data["x_private"]),
            "n_public": len(data["x_public"]),
            "n_null_models": len(w.nulls),
            "owner": artifacts.owner,
        }

    artifacts = prepare("blind_walk", cfg.di_config, 0.50, share, "dataset inference: preparing owner artifacts")
    artifacts.save(w.dir / "artifacts" / "dataset_inference")
    w.artifacts["dataset_inference"] = artifacts
    w.dataset_inference = record(artifacts)
    if len(w.nulls) < 20 and artifacts.owner.get("calibration") != "parametric":
        w.notes.append(
            f"dataset inference with {len(w.nulls)} null models can never claim at α = 0.05 "
            "(its rank-calibrated p-value is at least 1/(n + 1) and no parametric null was accepted); audits "
            "will be inconclusive"
        )
    if white_box:
        mg = prepare(
            "mingd", cfg.mingd_config, 0.50 + share, 0.30 - share, "dataset inference: preparing MinGD artifacts"
        )
        mg.save(w.dir / "artifacts" / "dataset_inference_mingd")
        w.artifacts["dataset_inference_mingd"] = mg
        w.dataset_inference_mingd = record(mg)
    else:
        reason = (
            "MinGD disabled in the registration parameters"
            if not cfg.mingd
            else "MinGD needs the protected model and every null model as torch modules (safetensors)"
        )
        w.dataset_inference_mingd = {"available": False, "reason": reason}


def _run_self_tests(w: _Work) -> None:
    """Each method on the protected model and on a label and a probability copy of it (``audit.self_test``)."""
    from audit.self_test import LOW_POWER, SELF_TEST_ALPHA, CopyRecipe, agreement, run_self_test, train_copies

    methods = (["watermark"] if w.watermark else []) + list(w.artifacts)
    if not methods:
        return
    if not w.cfg.self_test:
        for method in methods:
            w.self_test[method] = {
                "method": method,
                "power": "untested",
                "subjects": [],
                "summary": "the self-test was switched off at registration: this method's power "
                "on the protected model is unknown",
            }
        return
    assert w.owner is not None
    x_copy = w.ref_data[0] if w.ref_data is not None else (w.di_data or {}).get("x_public")
    if x_copy is None:
        for method in methods:
            w.self_test[method] = {
                "method": method,
                "power": LOW_POWER,
                "subjects": [],
                "summary": "no reference data to make copies from: this method's power on the "
                "protected model is unknown",
            }
        return
    w.report(0.80, "self-test: training a label copy and a probability copy of the protected model")
    copies = train_copies(w.owner, x_copy, CopyRecipe(**(w.cfg.self_test_copies or {})))
    held_out = (w.di_data or {}).get("x_public")
    check_x = held_out if held_out is not None else x_copy
    agreements = {name: agreement(w.owner, s, check_x) for name, _, s in copies}
    subjects = [("protected_model", "the protected model itself", w.owner), *copies]
    runs: dict[str, Any] = {}
    if w.watermark and isinstance(w.key, BoundaryKey) and w.boundary_baseline is not None:
        from audit.boundary_watermark import verify_boundary_watermark

        bkey, baseline, sides = w.key, w.boundary_baseline, w.boundary_sides
        probability_baseline = w.boundary_probability_baseline

        def boundary_run(s: Suspect) -> tuple[float, bool, int]:
            ev = verify_boundary_watermark(
                s, bkey, baseline, alpha=SELF_TEST_ALPHA, sides=sides, probability_baseline=probability_baseline
            )
            return float(ev.p_value), ev.claimed, int(ev.queries_used)

        runs["watermark"] = boundary_run
    elif w.watermark and isinstance(w.key, WatermarkKey) and w.null is not None:
        from audit.watermark import CLAIMED as WM_CLAIMED
        from audit.watermark import WatermarkVerifier

        key, null = w.key, w.null
        verifier = WatermarkVerifier(alpha=SELF_TEST_ALPHA)  # the audit's defaults: 100 queries at most

        def watermark_run(s: Suspect) -> tuple[float, bool, int]:
            ev = verifier.run(s, key, null)
            return float(ev.p_value), ev.decision == WM_CLAIMED, int(ev.queries_used)

        runs["watermark"] = watermark_run
    di = dataset_inference_module()
    for method, artifacts in w.artifacts.items():
        assert di is not None

        def di_run(s: Suspect, artifacts: Any = artifacts) -> tuple[float, bool, int]:
            before = s.queries_used
            ev = di.run_dataset_inference(s, artifacts, alpha=SELF_TEST_ALPHA)
            return float(ev.p_value), ev.decision == di.CLAIMED, int(s.queries_used - before)

        runs[method] = di_run
    for i, (method, run) in enumerate(runs.items()):
        w.report(0.82 + 0.14 * i / len(runs), f"self-test: {method}")
        w.self_test[method] = run_self_test(method, run, subjects, agreements=agreements)
        if w.self_test[method]["power"] == LOW_POWER:
            w.notes.append(
                f"{method} is low-power for this model: its audits answer 'inconclusive', never "
                f"'no-claim'. {w.self_test[method]['summary']}"
            )


def _sign(
    inputs: RegistrationInputs,
    w: _Work,
    signer: Signer,
    registration_id: str,
    started: float,
    cpu_started: float,
) -> None:
    registered_at = datetime.now(UTC)
    input_digests, artifact_digests = _digests(w.dir / "inputs", w.dir), _digests(w.dir / "artifacts", w.dir)
    predicate: dict[str, Any] = {
        "id": registration_id,
        "name": inputs.name,
        "registered_at": rfc3339(registered_at),
        "model": w.model_record,
        "inputs": input_digests,
        "artifacts": artifact_digests,
        "null_models": w.descriptions,
        "watermark": w.watermark,
        "dataset_inference": w.dataset_inference,
        "dataset_inference_mingd": w.dataset_inference_mingd,
        "self_test": w.self_test,
        "parameters": asdict(w.cfg),
        "software": {"name": "modelcustody", "version": __version__},
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),
        "notes": w.notes,
    }
    subjects = [
        {"name": name, "digest": {"sha256": digest}} for name, digest in {**input_digests, **artifact_digests}.items()
    ]
    if w.model_record["kind"] == "endpoint":
        digest = hashlib.sha256(json.dumps(w.model_record, sort_keys=True).encode()).hexdigest()
        subjects.insert(0, {"name": f"endpoint:{w.model_record.get('url')}", "digest": {"sha256": digest}})
    envelope = signer.sign(jsonable(predicate), subjects, REGISTRATION_PREDICATE)
    (w.dir / ENVELOPE_FILE).write_bytes(envelope)


def _white_box(owner: Suspect, nulls: Sequence[Suspect]) -> bool:
    """Whether MinGD can run: the owner and every null model expose an ``nn.Module``."""
    from audit.suspects.safetensors_loader import TorchModuleSuspect

    return all(isinstance(m, TorchModuleSuspect) for m in [owner, *nulls])


def progress_fraction(args: Sequence[Any]) -> float:
    """Progress callbacks come as (fraction), (fraction, message) or (done, total): read any of them."""
    numbers = [float(a) for a in args if isinstance(a, int | float) and not isinstance(a, bool)]
    if len(numbers) >= 2 and numbers[1] > 0 and numbers[0] <= numbers[1] and numbers[1] > 1:
        return min(1.0, numbers[0] / numbers[1])
    return min(1.0, max(0.0, numbers[0])) if numbers else 0.0


class ProtectedModel:
    """A verified registration directory: the signed record plus accessors for what audits reuse."""

    def __init__(self, directory: Path, envelope: bytes, statement: dict[str, Any], keyid: str) -> None:
        self.directory = directory
        self.envelope = envelope
        self.statement = statement
        self.record: dict[str, Any] = statement["predicate"]
        self.keyid = keyid
        self.digest = hashlib.sha256(envelope).hexdigest()

    @classmethod
    def load(cls, directory: Path, public_key: Any) -> ProtectedModel:
        """Verify the envelope's signature and every listed file's SHA-256; ValueError names what failed."""
        from audit.signing import public_key_pem

        pem = public_key if isinstance(public_key, bytes | str) else public_key_pem(public_key)
        envelope = (directory / ENVELOPE_FILE).read_bytes()
        statement = verify_envelope(envelope, pem, predicate_type=REGISTRATION_PREDICATE)
        record = statement["predicate"]
        for rel, digest in {**record.get("inputs", {}), **record.get("artifacts", {})}.items():
            path = directory / rel
            if not path.is_file():
                raise ValueError(f"registration file {rel} is missing")
            if sha256_of(path) != digest:
                raise ValueError(f"registration file {rel} was altered after registration (SHA-256 mismatch)")
        return cls(directory, envelope, statement, key_id(pem))

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def registered_at(self) -> str:
        return str(self.record["registered_at"])

    def summary(self) -> dict[str, Any]:
        """What an audit report says about the protected model."""
        return {
            "registration_sha256": self.digest,
            "id": self.id,
            "name": self.record.get("name"),
            "registered_at": self.registered_at,
            "registration_keyid": self.keyid,
            "model": {k: v for k, v in self.record["model"].items() if k in ("kind", "format", "sha256", "url")},
        }

    def watermark_key(self) -> AnyKey | None:
        """The registered key: EWE's ``WatermarkKey`` or a ``BoundaryKey``."""
        path = self.directory / "inputs" / "watermark.key.json"
        return load_any_key(path) if path.exists() else None

    def watermark_null(self) -> NullCalibration | None:
        """An EWE key's null calibration (None for a boundary key: ``boundary_baseline``)."""
        path = self.directory / "artifacts" / "watermark_null.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return None if data.get("kind") == "boundary" else NullCalibration.from_dict(data)

    def _boundary_null(self) -> dict[str, Any]:
        """A boundary key's ``watermark_null.json`` (empty for an EWE key or a registration without a key)."""
        path = self.directory / "artifacts" / "watermark_null.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return dict(data) if data.get("kind") == "boundary" else {}

    def boundary_baseline(self) -> np.ndarray | None:
        """A boundary key's null-model baseline (one value per probe), or None."""
        values = self._boundary_null().get("baseline")
        return None if values is None else np.asarray(values, dtype=np.float64)

    def boundary_statistic(self) -> str:
        """The boundary test's statistic this registration was self-tested with ("residual"; "baseline" for a
        registration made before the statistic was recorded): its audits use the same one."""
        return str(self._boundary_null().get("statistic", "baseline"))

    def boundary_probability_baseline(self) -> np.ndarray | None:
        """A boundary key's baseline from the null models' probabilities, or None (an EWE key, or a registration
        made before it was recorded: its audits read labels only)."""
        values = self._boundary_null().get("probability_baseline")
        return None if values is None else np.asarray(values, dtype=np.float64)

    def dataset_inference_artifacts(self, embedding: str = "blind_walk") -> Any:
        """The saved ``DatasetInferenceArtifacts`` of ``embedding`` ("blind_walk" or "mingd"); ValueError when the
        registration has none."""
        key = "dataset_inference_mingd" if embedding == "mingd" else "dataset_inference"
        info = self.record.get(key) or {}
        if not info.get("available"):
            what = "MinGD dataset inference" if embedding == "mingd" else "dataset inference"
            raise ValueError(info.get("reason") or f"this protected model was registered without {what}")
        di = dataset_inference_module()
        if di is None:
            raise ValueError(DI_UNAVAILABLE)
        artifacts = di.DatasetInferenceArtifacts.load(self.directory / "artifacts" / key)
        if artifacts.embedding != embedding:
            raise ValueError(f"artifacts/{key} hold {artifacts.embedding} artifacts, not {embedding}")
        return artifacts

    def self_test(self, method: str) -> dict[str, Any] | None:
        """The registration's self-test of ``method`` (``audit.self_test``); None when the registration predates
        self-tests or did not test this method."""
        tests = self.record.get("self_test")
        if not isinstance(tests, Mapping) or method not in tests:
            return None
        return dict(tests[method])

    def methods(self) -> list[str]:
        out = []
        if self.record.get("watermark"):
            out.append("watermark")
        if (self.record.get("dataset_inference") or {}).get("available"):
            out.append("dataset_inference")
        if (self.record.get("dataset_inference_mingd") or {}).get("available"):
            out.append("dataset_inference_mingd")
        return out

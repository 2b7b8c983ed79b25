"""Protected models: what an owner registers once, before any dispute, and every later audit reuses.

A registration takes the owner's model (a safetensors/ONNX/skops file, or an HTTP endpoint), the watermark
key (``audit.watermark_key``), reference data the model was NOT trained on (or ready-made null models), and
the private/public samples for dataset inference; it precomputes

- **the watermark null** (``audit.watermark.calibrate_null``) on reference models trained without the
  watermark on the owner's disjoint reference data (``WatermarkEmbedder.fit_references``), or on the null
  models the owner supplied;
- **the dataset-inference artifacts** (``audit.dataset_inference.prepare_owner``) with the same null models;
- **the MinGD dataset-inference artifacts** (the white-box embedding, ``audit.mingd``) with the same samples and
  null models, when the protected model and every null model are torch modules (a safetensors model; trained or
  safetensors null models): the ``dataset_inference_mingd`` method;

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

from audit.configs import Progress
from audit.provenance import SOFTWARE_VERSION as __version__
from audit.provenance import sha256_of
from audit.report import rfc3339
from audit.signing import key_id, sign_statement, verify_envelope
from audit.suspects.base import Suspect
from audit.watermark import NullCalibration, calibrate_null
from audit.watermark_key import WatermarkKey

REGISTRATION_PREDICATE = "https://modelcustody.dev/protected-model-registration/v1"
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

    def __post_init__(self) -> None:
        if self.n_null_models < 1:
            raise ValueError("n_null_models must be at least 1")
        if self.reference_epochs < 2:
            raise ValueError("reference_epochs must be at least 2")
        if not 0.0 < self.reference_subsample <= 1.0:
            raise ValueError("reference_subsample must be in (0, 1]")
        if not 0.5 <= self.null_confidence < 1.0 or not 0.0 <= self.null_margin < 1.0:
            raise ValueError("null_confidence must be in [0.5, 1) and null_margin in [0, 1)")
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


def _train_references(
    x: np.ndarray, y: np.ndarray, key: WatermarkKey | None, cfg: RegistrationConfig
) -> list[tuple[Any, str]]:
    from audit.watermark_embed import WatermarkEmbedder

    if key is not None:
        embedder_kwargs: dict[str, Any] = {
            "image_shape": key.image_shape,
            "num_classes": key.num_classes,
            "source_class": key.source_class,
            "target_class": key.target_class,
        }
    else:  # no image: a 1×d "image" so the embedder's MLP recipe applies to any flat input
        embedder_kwargs = {"image_shape": (1, x.shape[1]), "num_classes": max(2, int(y.max()) + 1), "patch_size": 1}
        embedder_kwargs.update(source_class=0, target_class=1)
    half = cfg.reference_epochs // 2
    embedder = WatermarkEmbedder(epochs=cfg.reference_epochs - half, watermark_epochs=half, **embedder_kwargs)
    return embedder.fit_references(
        x, y, n=cfg.n_null_models, subsample=cfg.reference_subsample, seed=cfg.reference_seed
    )


def _copy(src: Path, dst: Path) -> dict[str, Any]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return {"sha256": sha256_of(dst), "size": dst.stat().st_size}


def _digests(directory: Path, base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): sha256_of(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def register_protected_model(
    inputs: RegistrationInputs,
    root: Path,
    signing_key: Ed25519PrivateKey,
    *,
    registration_id: str,
    config: RegistrationConfig | None = None,
    progress: Progress | None = None,
    open_endpoint: EndpointOpener | None = None,
) -> ProtectedModel:
    """Copy the inputs, precompute the nulls, sign the record; return the loaded registration.

    ``open_endpoint`` turns ``inputs.endpoint`` into a ``Suspect`` (the services pass their HTTP model client;
    the algorithms know no transport).

    Written into ``<root>/.<id>.partial`` and renamed into place at the end, so a registration killed half
    way leaves no directory that looks complete (a retry starts over).
    """
    inputs.validate()
    cfg = config or RegistrationConfig()
    report = progress or _no_progress
    started = time.perf_counter()
    final = root / registration_id
    if final.exists():
        raise FileExistsError(f"protected model {registration_id} is already registered")
    work = root / f".{registration_id}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "inputs").mkdir(parents=True)
    (work / "artifacts").mkdir()
    notes: list[str] = []

    report(0.01, "copying inputs")
    model_record: dict[str, Any]
    if inputs.model_path is not None:
        copied = _copy(inputs.model_path, work / "inputs" / f"model.{inputs.model_format}")
        model_record = {
            "kind": "file",
            "format": inputs.model_format,
            "architecture": inputs.architecture,
            "config": inputs.config,
            **copied,
        }
    else:
        assert inputs.endpoint is not None
        public = {k: v for k, v in inputs.endpoint.items() if k != "token"}
        model_record = {"kind": "endpoint", **public}
    key = None
    if inputs.watermark_key_path is not None:
        _copy(inputs.watermark_key_path, work / "inputs" / "watermark.key.json")
        key = WatermarkKey.load(work / "inputs" / "watermark.key.json")
    ref_data = None
    if inputs.reference_data_path is not None:
        _copy(inputs.reference_data_path, work / "inputs" / "reference.npz")
        ref_data = load_reference_data(work / "inputs" / "reference.npz")
    di_data = None
    if inputs.di_data_path is not None:
        _copy(inputs.di_data_path, work / "inputs" / "di_data.npz")
        di_data = load_di_data(work / "inputs" / "di_data.npz")
    for i, p in enumerate(inputs.null_model_paths):
        _copy(p, work / "inputs" / "null_models" / f"{i}.safetensors")

    report(0.05, "loading the protected model")
    owner = open_model(
        model_path=(work / "inputs" / f"model.{inputs.model_format}") if inputs.model_path else None,
        model_format=inputs.model_format,
        architecture=inputs.architecture,
        config=inputs.config,
        endpoint=inputs.endpoint,
        open_endpoint=open_endpoint,
    )

    # Null models: the owner's own files, else references trained on the owner's disjoint data.
    nulls: list[Suspect] = []
    descriptions: list[str] = []
    if inputs.null_model_paths:
        from audit.suspects.loader import load_suspect_file

        for p in sorted((work / "inputs" / "null_models").glob("*.safetensors")):
            nulls.append(load_suspect_file(p, "safetensors"))
            descriptions.append(f"owner-supplied null model {p.name}")
    else:
        assert ref_data is not None
        from audit.architectures import save_model
        from audit.suspects.safetensors_loader import TorchModuleSuspect

        report(0.10, f"training {cfg.n_null_models} null models on the reference data")
        (work / "artifacts" / "null_models").mkdir()
        for i, (model, description) in enumerate(_train_references(*ref_data, key, cfg)):
            config_dict = {
                "input_dim": model.blocks[0].in_features,
                "hidden": [b.out_features for b in model.blocks],
                "num_classes": model.head.out_features,
            }
            save_model(work / "artifacts" / "null_models" / f"ref_{i}.safetensors", model, "mlp", config_dict)
            nulls.append(TorchModuleSuspect(model, identity={"kind": "in-memory", "name": f"ref_{i}"}))
            descriptions.append(description)
    report(0.40, "null models ready")

    watermark: dict[str, Any] | None = None
    if key is not None:
        null = calibrate_null(
            key, nulls, confidence=cfg.null_confidence, margin=cfg.null_margin, descriptions=descriptions
        )
        (work / "artifacts" / "watermark_null.json").write_text(json.dumps(null.to_dict(), sort_keys=True))
        owner_rate = float(np.mean(owner.labels(key.inputs) == key.target_class))
        watermark = {
            "key_fingerprint": key.fingerprint(),
            "source_class": key.source_class,
            "target_class": key.target_class,
            "key_size": len(key.inputs),
            "null_rate_bound": null.bound,
            "null_rates": null.rates,
            "owner_success_rate": owner_rate,
        }
        if owner_rate <= null.bound:
            notes.append(
                f"the protected model itself answers the key 'target' at {owner_rate:.3f}, not above the "
                f"null bound {null.bound:.3f}: watermark audits cannot claim"
            )
    report(0.50, "watermark null calibrated" if key is not None else "no watermark key")

    no_di = {"available": False, "reason": "no dataset-inference data (di_data) was registered"}
    dataset_inference: dict[str, Any] | None = dict(no_di)
    dataset_inference_mingd: dict[str, Any] | None = dict(no_di)
    if di_data is not None:
        di = dataset_inference_module()
        if di is None:
            dataset_inference = {"available": False, "reason": DI_UNAVAILABLE}
            dataset_inference_mingd = {"available": False, "reason": DI_UNAVAILABLE}
            notes.append(DI_UNAVAILABLE)
        else:
            white_box = cfg.mingd and _white_box(owner, nulls)
            share = 0.30 if white_box else 0.45  # of the progress bar; MinGD takes the rest up to 0.95

            def di_progress(*args: Any) -> None:
                report(0.50 + share * progress_fraction(args), "dataset inference: preparing owner artifacts")

            artifacts = di.prepare_owner(
                owner,
                di_data["x_private"],
                di_data["y_private"],
                di_data["x_public"],
                di_data["y_public"],
                null_models=nulls,
                config=cfg.di_config,
                seed=cfg.di_seed,
                progress=di_progress,
            )
            artifacts.save(work / "artifacts" / "dataset_inference")
            dataset_inference = {
                "available": True,
                "n_private": len(di_data["x_private"]),
                "n_public": len(di_data["x_public"]),
                "n_null_models": len(nulls),
                "owner": artifacts.owner,
            }
            if len(nulls) < 20:
                notes.append(
                    f"dataset inference with {len(nulls)} null models can never claim at α = 0.05 "
                    "(its calibrated p-value is at least 1/(n + 1)); audits will be inconclusive"
                )
            if white_box:

                def mingd_progress(*args: Any) -> None:
                    report(0.80 + 0.15 * progress_fraction(args), "dataset inference: preparing MinGD artifacts")

                mg = di.prepare_owner(
                    owner,
                    di_data["x_private"],
                    di_data["y_private"],
                    di_data["x_public"],
                    di_data["y_public"],
                    null_models=nulls,
                    config=cfg.mingd_config,
                    embedding="mingd",
                    seed=cfg.di_seed,
                    progress=mingd_progress,
                )
                mg.save(work / "artifacts" / "dataset_inference_mingd")
                dataset_inference_mingd = {
                    "available": True,
                    "n_private": len(di_data["x_private"]),
                    "n_public": len(di_data["x_public"]),
                    "n_null_models": len(nulls),
                    "owner": mg.owner,
                }
            else:
                reason = (
                    "MinGD disabled in the registration parameters"
                    if not cfg.mingd
                    else "MinGD needs the protected model and every null model as torch modules (safetensors)"
                )
                dataset_inference_mingd = {"available": False, "reason": reason}
    report(0.95, "signing the registration")

    registered_at = datetime.now(UTC)
    input_digests, artifact_digests = _digests(work / "inputs", work), _digests(work / "artifacts", work)
    predicate: dict[str, Any] = {
        "id": registration_id,
        "name": inputs.name,
        "registered_at": rfc3339(registered_at),
        "model": model_record,
        "inputs": input_digests,
        "artifacts": artifact_digests,
        "null_models": descriptions,
        "watermark": watermark,
        "dataset_inference": dataset_inference,
        "dataset_inference_mingd": dataset_inference_mingd,
        "parameters": asdict(cfg),
        "software": {"name": "modelcustody", "version": __version__},
        "seconds": round(time.perf_counter() - started, 3),
        "notes": notes,
    }
    subjects = [
        {"name": name, "digest": {"sha256": digest}} for name, digest in {**input_digests, **artifact_digests}.items()
    ]
    if model_record["kind"] == "endpoint":
        digest = hashlib.sha256(json.dumps(model_record, sort_keys=True).encode()).hexdigest()
        subjects.insert(0, {"name": f"endpoint:{model_record.get('url')}", "digest": {"sha256": digest}})
    envelope = sign_statement(predicate, subjects, signing_key, predicate_type=REGISTRATION_PREDICATE)
    (work / ENVELOPE_FILE).write_bytes(envelope)
    work.rename(final)
    report(1.0, "registered")
    return ProtectedModel.load(final, signing_key.public_key())


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

    def watermark_key(self) -> WatermarkKey | None:
        path = self.directory / "inputs" / "watermark.key.json"
        return WatermarkKey.load(path) if path.exists() else None

    def watermark_null(self) -> NullCalibration | None:
        path = self.directory / "artifacts" / "watermark_null.json"
        return NullCalibration.from_dict(json.loads(path.read_text())) if path.exists() else None

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

    def methods(self) -> list[str]:
        out = []
        if self.record.get("watermark"):
            out.append("watermark")
        if (self.record.get("dataset_inference") or {}).get("available"):
            out.append("dataset_inference")
        if (self.record.get("dataset_inference_mingd") or {}).get("available"):
            out.append("dataset_inference_mingd")
        return out

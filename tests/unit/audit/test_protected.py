"""Protected-model registration (audit.protected) and the audit methods on it (audit.methods), without servers.

One short-schedule watermarked victim per module (about a second); registrations use a handful of small null
models so each takes a second or two. The statistics themselves are tested in test_watermark*.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import audit.protected as protected_mod
from audit.architectures import save_model
from audit.data import DigitsSplit, split_digits
from audit.methods import (
    build_audit_report,
    dataset_inference_verdict,
    normalise_params,
    run_dataset_inference_audit,
    run_watermark_audit,
)
from audit.protected import (
    DI_UNAVAILABLE,
    REGISTRATION_PREDICATE,
    ProtectedModel,
    RegistrationConfig,
    RegistrationInputs,
    register_protected_model,
)
from audit.report import render_html, report_subjects
from audit.signing import VerificationError, public_key_pem, sign_statement, verify_envelope
from audit.suspects.base import CallableSuspect
from audit.suspects.loader import load_suspect_file
from audit.watermark import NullCalibration
from audit.watermark_embed import WatermarkEmbedder

# Self-test copies: 5 epochs on 300 rows keep a registration at a second or two; their power is not what these
# tests check (test_self_test.py does).
SMALL_COPIES = {"epochs": 5, "max_rows": 300}
SMALL = RegistrationConfig(n_null_models=3, reference_epochs=4, self_test_copies=SMALL_COPIES)


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return split_digits(seed=0)


@pytest.fixture(scope="module")
def owner(digits: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("owner")
    embedder = WatermarkEmbedder(epochs=8, watermark_epochs=8, trigger_steps=5, seed=0)
    result = embedder.fit(digits.x_owner, digits.y_owner)
    model, key = result.save(out)
    np.savez(out / "reference.npz", x=digits.x_pool, y=digits.y_pool)
    np.savez(
        out / "di.npz",
        x_private=digits.x_owner,
        y_private=digits.y_owner,
        x_public=digits.x_test,
        y_public=digits.y_test,
    )
    clean = WatermarkEmbedder(epochs=8, watermark_epochs=8).fit_clean(digits.x_test, digits.y_test, seed=5)
    save_model(out / "clean.safetensors", clean, "mlp", {"input_dim": 64, "hidden": [128, 64], "num_classes": 10})
    return {"dir": out, "model": model, "key": key, "clean": out / "clean.safetensors", "result": result}


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def inputs(owner: dict[str, Any], **kwargs: Any) -> RegistrationInputs:
    base: dict[str, Any] = {
        "name": "digits",
        "model_path": owner["model"],
        "watermark_key_path": owner["key"],
        "reference_data_path": owner["dir"] / "reference.npz",
    }
    return RegistrationInputs(**{**base, **kwargs})


@pytest.fixture(scope="module")
def registered(
    owner: dict[str, Any], signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> ProtectedModel:
    root = tmp_path_factory.mktemp("protected")
    steps: list[float] = []
    pm = register_protected_model(
        inputs(owner), root, signing_key, registration_id="pm_unit", config=SMALL, progress=lambda f, m: steps.append(f)
    )
    assert steps == sorted(steps) and steps[-1] == 1.0
    return pm


def test_registration_is_signed_and_lists_every_file(
    registered: ProtectedModel, signing_key: Ed25519PrivateKey, owner: dict[str, Any]
) -> None:
    statement = verify_envelope(registered.envelope, public_key_pem(signing_key), predicate_type=REGISTRATION_PREDICATE)
    record = statement["predicate"]
    assert record["id"] == "pm_unit" and registered.digest == hashlib.sha256(registered.envelope).hexdigest()
    assert record["inputs"]["inputs/model.safetensors"] == hashlib.sha256(owner["model"].read_bytes()).hexdigest()
    assert set(record["inputs"]) == {"inputs/model.safetensors", "inputs/watermark.key.json", "inputs/reference.npz"}
    assert "artifacts/watermark_null.json" in record["artifacts"]
    assert sum(k.startswith("artifacts/null_models/") for k in record["artifacts"]) == 3
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {**record["inputs"], **record["artifacts"]}
    assert record["watermark"]["owner_success_rate"] > record["watermark"]["null_rate_bound"]
    assert record["dataset_inference"] == {
        "available": False,
        "reason": "no dataset-inference data (di_data) was registered",
    }
    assert registered.methods() == ["watermark"]
    assert datetime.fromisoformat(record["registered_at"].replace("Z", "+00:00")) <= datetime.now(UTC)
    assert registered.watermark_null() is not None and registered.watermark_key() is not None


def test_altered_registration_files_are_refused(
    registered: ProtectedModel, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pub = public_key_pem(signing_key)
    copy = tmp_path / "pm"
    shutil.copytree(registered.directory, copy)
    ProtectedModel.load(copy, pub)  # an untouched copy loads
    null = copy / "artifacts" / "watermark_null.json"
    d = json.loads(null.read_text())
    d["margin"] = 0.5  # a looser null would let an owner claim more easily after the fact
    null.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="altered after registration"):
        ProtectedModel.load(copy, pub)
    shutil.rmtree(copy)
    shutil.copytree(registered.directory, copy)
    envelope = copy / "registration.dsse.json"
    raw = bytearray(envelope.read_bytes())
    raw[len(raw) // 2] ^= 1
    envelope.write_bytes(bytes(raw))
    with pytest.raises(VerificationError):
        ProtectedModel.load(copy, pub)
    with pytest.raises(VerificationError):
        ProtectedModel.load(registered.directory, public_key_pem(Ed25519PrivateKey.generate()))


def test_registration_refuses_incomplete_inputs(
    owner: dict[str, Any], signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    for bad, match in (
        ({"model_path": None}, "exactly one"),
        ({"reference_data_path": None}, "reference data .* or null model"),
        ({"watermark_key_path": None}, "nothing to audit"),
        ({"model_format": "pickle"}, "format"),
    ):
        with pytest.raises(ValueError, match=match):
            register_protected_model(inputs(owner, **bad), tmp_path, signing_key, registration_id="x", config=SMALL)
    with pytest.raises(ValueError, match="unknown registration parameters"):
        RegistrationConfig.from_dict({"n_references": 3})
    assert not any(tmp_path.iterdir())


def test_owner_supplied_null_models(
    owner: dict[str, Any], registered: ProtectedModel, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    nulls = sorted((registered.directory / "artifacts" / "null_models").glob("*.safetensors"))
    pm = register_protected_model(
        inputs(owner, reference_data_path=None, null_model_paths=nulls),
        tmp_path,
        signing_key,
        registration_id="pm_nulls",
        config=SMALL,
    )
    assert pm.record["null_models"][0].startswith("owner-supplied")
    mine, theirs = pm.watermark_null(), registered.watermark_null()
    assert mine is not None and theirs is not None and mine.counts == theirs.counts  # the same models


def test_dataset_inference_unavailable_is_skipped_with_a_reason(
    owner: dict[str, Any], signing_key: Ed25519PrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protected_mod, "dataset_inference_module", lambda: None)
    pm = register_protected_model(
        inputs(owner, di_data_path=owner["dir"] / "di.npz"),
        tmp_path,
        signing_key,
        registration_id="pm_nodi",
        config=SMALL,
    )
    assert pm.record["dataset_inference"] == {"available": False, "reason": DI_UNAVAILABLE}
    assert DI_UNAVAILABLE in pm.record["notes"] and pm.methods() == ["watermark"]
    with pytest.raises(ValueError, match="dataset inference unavailable"):
        run_dataset_inference_audit(load_suspect_file(owner["model"], "safetensors"), pm, {})


def test_dataset_inference_registration_and_audit(
    owner: dict[str, Any], signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    cfg = RegistrationConfig(
        n_null_models=3,
        reference_epochs=4,
        di_config={"n_regressor": 20, "n_revealed": 20, "directions_per_family": 2},
        mingd_config={"n_regressor": 20, "n_revealed": 20},
        self_test_copies=SMALL_COPIES,
    )
    pm = register_protected_model(
        inputs(owner, di_data_path=owner["dir"] / "di.npz"), tmp_path, signing_key, registration_id="pm_di", config=cfg
    )
    assert pm.methods() == ["watermark", "dataset_inference", "dataset_inference_mingd"]  # a torch owner model
    assert any("never claim" in n for n in pm.record["notes"])  # 3 null models: the calibration cannot reach α
    assert any(k.startswith("artifacts/dataset_inference/") for k in pm.record["artifacts"])
    suspect = load_suspect_file(owner["model"], "safetensors")
    evidence = run_dataset_inference_audit(suspect, pm, {"m": 10})
    assert evidence["verdict"] == "inconclusive" and evidence["queries_used"] == suspect.queries_used > 0
    json.dumps(evidence, allow_nan=False)


def test_watermark_audit_verdicts(registered: ProtectedModel, owner: dict[str, Any]) -> None:
    seen: list[float] = []
    stolen = run_watermark_audit(
        load_suspect_file(owner["model"], "safetensors"), registered, {}, lambda f, m: seen.append(f)
    )
    assert stolen["verdict"] == "claim" and stolen["p_value"] < 0.05 and stolen["queries_used"] <= 10
    assert seen == sorted(seen) and len(seen) == stolen["queries_used"]
    independent = run_watermark_audit(load_suspect_file(owner["clean"], "safetensors"), registered, {"max_queries": 60})
    # no-claim only from a method that claimed the owner's own copies at registration (audit.self_test)
    powered = (registered.self_test("watermark") or {}).get("power") == "powered"
    assert independent["verdict"] == ("no-claim" if powered else "inconclusive") and independent["queries_used"] == 60
    assert independent["self_test"]["subjects"][0]["name"] == "protected_model"
    # One query can never reach p < 0.05 against this null: "no claim" would overstate the audit's power.
    one = run_watermark_audit(load_suspect_file(owner["model"], "safetensors"), registered, {"max_queries": 1})
    assert one["verdict"] == "inconclusive" and one["claim_achievable"] is False and one["notes"]
    budget = run_watermark_audit(load_suspect_file(owner["clean"], "safetensors"), registered, {"budget": 7})
    assert budget["queries_used"] == 7 and budget["stopped_because"] == "budget_exhausted"


def test_watermark_audit_against_a_null_bound_of_one_is_inconclusive(
    registered: ProtectedModel, owner: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration whose clean references answer the key's target on every input (bound 1, seen with small
    reference sets) gets an inconclusive audit that says why, without a query: not a failed audit."""
    key = registered.watermark_key()
    assert key is not None
    n = len(key.inputs)
    monkeypatch.setattr(
        registered, "watermark_null", lambda: NullCalibration(counts=(n, n), n_inputs=n, confidence=0.99, margin=0.1)
    )
    ev = run_watermark_audit(load_suspect_file(owner["model"], "safetensors"), registered, {})
    assert ev["verdict"] == "inconclusive" and ev["queries_used"] == 0 and ev["claim_achievable"] is False
    assert any("not queried" in note for note in ev["notes"])


def test_report_from_evidence_signs_and_names_the_registration(
    registered: ProtectedModel, owner: dict[str, Any], signing_key: Ed25519PrivateKey
) -> None:
    suspect = load_suspect_file(owner["model"], "safetensors")
    started = datetime.now(UTC)
    evidence = run_watermark_audit(suspect, registered, {"seed": 2})
    report = build_audit_report(
        audit_id="au_1",
        method="watermark",
        evidence=evidence,
        suspect_identity=suspect.identity,
        protected=registered,
        started_at=started,
        finished_at=started + timedelta(seconds=1),
        submitted_at=started,
    )
    assert report["decision"] == "claim" and report["seeds"] == {"seed": 2}
    assert report["protected_model"]["registration_sha256"] == registered.digest
    assert report["protected_model"]["registered_before_audit"] is True
    assert report["plots"][0]["kind"] == "line" and "trajectory" not in report["statistics"]
    envelope = sign_statement(report, report_subjects(report), signing_key)
    statement = verify_envelope(envelope, public_key_pem(signing_key))
    assert statement["predicate"] == json.loads(json.dumps(report))
    assert "Decision: claim" in render_html(report)


def test_params_are_normalised_and_validated() -> None:
    assert normalise_params("watermark", {}) == normalise_params("watermark", {"alpha": 0.05, "max_queries": 100})
    for method, params, match in (
        ("watermark", {"alpha": 1.5}, "alpha"),
        ("watermark", {"queries": 5}, "unknown"),
        ("watermark", {"test": "sprt"}, "alternative_rate"),
        ("watermark", {"budget": 0}, "budget"),
        ("dataset_inference", {"m": 1}, "m must"),
        ("fingerprint", {}, "unknown audit method"),
    ):
        with pytest.raises(ValueError, match=match):
            normalise_params(method, params)


@pytest.mark.parametrize(
    "word,verdict",
    [
        ("claimed", "claim"),
        ("not claimed", "no-claim"),
        ("inconclusive", "inconclusive"),
        ("no-claim", "no-claim"),
        ("who knows", "inconclusive"),
    ],
)
def test_dataset_inference_words_map_to_report_verdicts(word: str, verdict: str) -> None:
    assert dataset_inference_verdict(word) == verdict


def test_progress_wrapper_keeps_the_suspect_identity(registered: ProtectedModel) -> None:
    key = registered.watermark_key()
    assert key is not None
    suspect = CallableSuspect(lambda x: np.full(len(x), key.target_class), identity={"kind": "endpoint", "url": "u"})
    evidence = run_watermark_audit(suspect, registered, {"batch_size": 5})
    assert evidence["suspect"] == {"kind": "endpoint", "url": "u"} and evidence["queries_used"] == 5
    assert suspect.queries_used == 5


def test_key_selection_keeps_inputs_the_selection_nulls_do_not_answer_target(
    owner: dict[str, Any], signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    cfg = RegistrationConfig(
        n_null_models=4, reference_epochs=4, self_test=False, mingd=False, watermark_selection_min_inputs=1
    )
    pm = register_protected_model(inputs(owner), tmp_path, signing_key, registration_id="pm_sel", config=cfg)
    null, key = pm.watermark_null(), pm.watermark_key()
    assert null is not None and key is not None and null.selected is not None and null.selection is not None
    nulls = [
        load_suspect_file(p, "safetensors")
        for p in sorted(
            (pm.directory / "artifacts" / "null_models").glob("*.safetensors"), key=lambda p: int(p.stem.split("_")[1])
        )
    ]
    owner_model = load_suspect_file(owner["model"], "safetensors")
    kept = key.inputs[list(null.selected)]
    assert np.all(owner_model.labels(kept) == key.target_class)
    for selector in nulls[0::2]:  # the selection models answer no kept input "target"
        assert not np.any(selector.labels(kept) == key.target_class)
    # the bound comes from the other two nulls only, counted on the kept inputs
    assert null.counts == tuple(int(np.sum(m.labels(kept) == key.target_class)) for m in nulls[1::2])
    assert pm.record["watermark"]["inputs_tested"] == len(null.selected)
    ev = run_watermark_audit(owner_model, pm, {})
    assert ev["parameters"]["max_queries"] == 100 and ev["successes"] == ev["queries_used"]

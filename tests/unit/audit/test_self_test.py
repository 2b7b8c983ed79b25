"""Know your own power (audit.self_test): a method that cannot claim the protected model or its copies never
answers no-claim; the self-test is quoted in the evidence, the report and the HTML page."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.architectures import predict_labels, save_model
from audit.data import split_digits
from audit.methods import build_audit_report, run_audit
from audit.protected import RegistrationConfig, RegistrationInputs, register_protected_model
from audit.report import render_html
from audit.self_test import LOW_POWER, POWERED, apply_self_test, run_self_test, train_copies
from audit.suspects.base import CallableSuspect
from audit.suspects.loader import load_suspect_file
from audit.suspects.safetensors_loader import TorchModuleSuspect
from audit.watermark_embed import WatermarkEmbedder


def test_power_is_judged_on_every_subject_and_only_no_claim_is_softened() -> None:
    subjects = [(n, n, CallableSuspect(lambda x: np.zeros(len(x), int))) for n in ("protected_model", "label_copy")]
    powered = run_self_test("m", lambda s: (0.001, True, 3), subjects)
    assert powered["power"] == POWERED and "has power" in powered["summary"]
    missed = iter([(0.001, True, 3), (0.4, False, 3)])
    low = run_self_test("m", lambda s: next(missed), subjects)
    assert low["power"] == LOW_POWER and "label copy not claimed (p = 0.4)" in low["summary"]
    assert apply_self_test({"verdict": "no-claim", "notes": []}, powered)["verdict"] == "no-claim"
    softened = apply_self_test({"verdict": "no-claim", "notes": []}, low)
    assert softened["verdict"] == "inconclusive" and softened["self_test"]["power"] == LOW_POWER
    assert len(apply_self_test(softened, low)["notes"]) == 1  # idempotent
    assert apply_self_test({"verdict": "claim"}, low)["verdict"] == "claim"  # a calibrated claim stands
    assert apply_self_test({"verdict": "no-claim"}, None) == {"verdict": "no-claim"}  # older registrations


def test_copies_follow_the_owner() -> None:
    d = split_digits(seed=0)
    owner = WatermarkEmbedder(epochs=8, watermark_epochs=8).fit_clean(d.x_owner, d.y_owner, seed=1)
    copies = train_copies(TorchModuleSuspect(owner), d.x_pool)
    assert [name for name, _, _ in copies] == ["label_copy", "probability_copy"]
    truth = predict_labels(owner, d.x_test)
    for _, _, copy in copies:  # copies of a ~0.95-accurate owner from 449 rows: well above chance (0.1)
        assert np.mean(copy.labels(d.x_test) == truth) > 0.8


@pytest.fixture(scope="module")
def unmarked_owner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A protected model that does NOT carry the watermark its owner registers: the method has no power on it."""
    d = split_digits(seed=0)
    out = tmp_path_factory.mktemp("unmarked")
    marked = WatermarkEmbedder(epochs=8, watermark_epochs=8, trigger_steps=5, seed=0).fit(d.x_owner, d.y_owner)
    marked.key.save(out / "key.json")
    clean = WatermarkEmbedder(epochs=8, watermark_epochs=8).fit_clean(d.x_owner, d.y_owner, seed=3)
    config = {"input_dim": 64, "hidden": [128, 64], "num_classes": 10}
    save_model(out / "owner.safetensors", clean, "mlp", config)
    other = WatermarkEmbedder(epochs=8, watermark_epochs=8).fit_clean(d.x_test, d.y_test, seed=5)
    save_model(out / "independent.safetensors", other, "mlp", config)
    np.savez(out / "reference.npz", x=d.x_pool, y=d.y_pool)
    return {"dir": out}


def test_a_method_without_power_answers_inconclusive_with_the_self_test_in_the_report(
    unmarked_owner: dict[str, Path], tmp_path: Path
) -> None:
    out = unmarked_owner["dir"]
    key = Ed25519PrivateKey.generate()
    pm = register_protected_model(
        RegistrationInputs(
            name="unmarked",
            model_path=out / "owner.safetensors",
            watermark_key_path=out / "key.json",
            reference_data_path=out / "reference.npz",
        ),
        tmp_path,
        key,
        registration_id="pm_unmarked",
        config=RegistrationConfig(n_null_models=3, reference_epochs=4, self_test_copies={"epochs": 5, "max_rows": 300}),
    )
    st = pm.self_test("watermark")
    assert st is not None and st["power"] == LOW_POWER
    assert st["subjects"][0]["name"] == "protected_model" and st["subjects"][0]["claimed"] is False
    assert any("low-power" in n for n in pm.record["notes"])
    suspect = load_suspect_file(out / "independent.safetensors", "safetensors")
    evidence = run_audit("watermark", suspect, pm, {"max_queries": 60})
    # Without the self-test this audit said no-claim: 60 queries could claim, and the suspect did not answer target.
    assert evidence["claim_achievable"] is True and evidence["decision"] != "claimed"
    assert evidence["verdict"] == "inconclusive" and "low-power" in evidence["power_note"]
    now = datetime.now(UTC)
    report: dict[str, Any] = build_audit_report(
        audit_id="au_st", method="watermark", evidence=evidence, suspect_identity=suspect.identity, protected=pm,
        started_at=now, finished_at=now,
    )
    assert report["decision"] == "inconclusive" and report["self_test"]["power"] == LOW_POWER
    assert "self_test" not in report["statistics"]
    page = render_html(report)
    assert "protected model not claimed" in page and "low-power" in page


def test_the_report_reads_in_plain_words_and_renders_as_a_pdf(
    unmarked_owner: dict[str, Path], tmp_path: Path
) -> None:
    from audit.report_pdf import render_pdf

    out = unmarked_owner["dir"]
    pm = register_protected_model(
        RegistrationInputs(name="unmarked", model_path=out / "owner.safetensors", watermark_key_path=out / "key.json",
                           reference_data_path=out / "reference.npz"),
        tmp_path, Ed25519PrivateKey.generate(), registration_id="pm_pdf",
        config=RegistrationConfig(n_null_models=3, reference_epochs=4, self_test_copies={"epochs": 5, "max_rows": 300}),
    )
    suspect = load_suspect_file(out / "independent.safetensors", "safetensors")
    evidence = run_audit("watermark", suspect, pm, {"max_queries": 60})
    now = datetime.now(UTC)
    report = build_audit_report(audit_id="au_pdf", method="watermark", evidence=evidence,
                                suspect_identity=suspect.identity, protected=pm, started_at=now, finished_at=now)
    page = render_html(report)
    # reading order: the verdict in words, what was tested, the power, the evidence figure, then the raw numbers
    order = [page.index(s) for s in ("Verdict: inconclusive", "<h2>What was tested", "<h2>Power of the method",
                                     "<h2>The evidence", "<svg", "<h2>Details for an expert")]
    assert order == sorted(order) and "must not be read as evidence of independence" in page
    plain = render_pdf(report, font=None, compress=False)  # core font: the text is searchable in the bytes
    assert plain.startswith(b"%PDF-") and plain.rstrip().endswith(b"%%EOF")
    assert b"Verdict: inconclusive" in plain and b"Power of the method" in plain
    assert render_pdf(report).startswith(b"%PDF-")  # the default font (DejaVu when installed) renders too

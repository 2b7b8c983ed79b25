from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audit.report import build_report, render_html, report_subjects, rfc3339
from audit.signing import load_or_create_signing_key, public_key_pem, sign_statement, verify_envelope
from services.core.version import __version__

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;"\''
STARTED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _report(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "suspect": {"kind": "file", "sha256": "cd" * 32, "format": "onnx", "size": "1234"},
        "method": "ewe-watermark",
        "parameters": {"target_class": np.int64(7), "trigger": "square 3x3", "alpha": 0.05},
        "seeds": {"query_order": 11},
        "queries_used": 64,
        "statistics": {"hits": 41, "null_rate": np.float64(0.1), "t": float("inf"), "ci": np.array([0.5, 0.8])},
        "p_value": 3.2e-12,
        "test_name": "one-sided exact binomial test",
        "alpha": 0.05,
        "decision": "claim",
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(seconds=3, milliseconds=250),
        "protected_model_digest": "ef" * 32,
        "null_hypothesis": "the suspect answers the trigger set like a model without the watermark",
        "plots": [
            {"kind": "histograms", "series": {"private": [0.1, 0.5, 0.9, 0.7], "public": [0.0, 0.2, 0.3]}},
            {"kind": "line", "x": [10, 20, 40, 80], "y": [0.3, 0.04, 1e-5, 1e-9], "log_y": True, "hlines": [0.05]},
        ],
    }
    kwargs.update(overrides)
    return build_report(**kwargs)


def test_report_fields() -> None:
    report = _report()
    assert report["suspect"]["sha256"] == "cd" * 32
    assert report["protected_model"] == {"registration_sha256": "ef" * 32}
    assert report["queries"]["used"] == 64
    assert report["test"]["name"] == "one-sided exact binomial test"
    assert report["test"]["alpha"] == 0.05
    assert report["statistics"] == {"hits": 41, "null_rate": 0.1, "t": "inf", "ci": [0.5, 0.8]}
    assert report["parameters"]["target_class"] == 7
    assert report["software"]["version"] == __version__
    assert report["started_at"] == "2026-03-01T12:00:00.000Z"
    assert report["finished_at"] == "2026-03-01T12:00:03.250Z"
    assert "supports the claim" in report["decision_text"] and "p = 3.2e-12 < α = 0.05" in report["decision_text"]
    assert rfc3339(datetime(2026, 3, 1, 13, 0, tzinfo=UTC).astimezone()) == "2026-03-01T13:00:00.000Z"


def test_a_claim_by_a_method_with_a_calibration_assumption_says_so_in_the_verdict() -> None:
    from audit.report_reader import verdict_sentence

    watermark = verdict_sentence(_report())
    inference = verdict_sentence(_report(method="dataset_inference"))
    assert "supports the claim" in watermark and "Note:" not in watermark
    assert "supports the claim" in inference and "Note:" in inference and "1 of 320" in inference
    assert "Note:" not in verdict_sentence(_report(method="dataset_inference", decision="inconclusive"))
    assert "Note:" in render_html(_report(method="dataset_inference"))
    # the watermark method: EWE's trigger test carries its measured caution, the keyed boundary test none
    ewe = verdict_sentence(_report(method="watermark", statistics={"method": "ewe-watermark"}))
    boundary = verdict_sentence(_report(method="watermark", statistics={"method": "boundary-watermark"}))
    assert "Caution" in ewe and "9 of 80" in ewe and "Caution" not in boundary and "Note:" not in boundary


def test_report_validation() -> None:
    with pytest.raises(ValueError):
        _report(decision="maybe")
    with pytest.raises(ValueError):
        _report(p_value=1.5)
    with pytest.raises(ValueError):
        _report(started_at=datetime(2026, 3, 1, 12, 0))  # naive
    with pytest.raises(ValueError):
        _report(protected_model_digest="not-a-digest")
    with pytest.raises(TypeError):
        _report(parameters={"key": object()})


def test_subjects_for_file_and_endpoint() -> None:
    assert report_subjects(_report()) == [
        {"name": "suspect:onnx", "digest": {"sha256": "cd" * 32}},
        {"name": "protected-model", "digest": {"sha256": "ef" * 32}},
    ]
    endpoint = {"kind": "endpoint", "url": "http://suspect.example/api", "protocol": "oip-v2", "model": "m"}
    subjects = report_subjects(_report(suspect=endpoint, protected_model_digest=None))
    assert len(subjects) == 1 and subjects[0]["name"] == "suspect-endpoint:http://suspect.example/api"
    assert len(subjects[0]["digest"]["sha256"]) == 64


def test_signed_report_round_trip(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    report = _report()
    statement = verify_envelope(sign_statement(report, report_subjects(report), key), public_key_pem(key))
    assert statement["predicate"] == report


def test_html_escapes_hostile_strings_and_is_self_contained() -> None:
    report = _report(
        suspect={"kind": "endpoint", "url": f"http://evil/{HOSTILE}", "protocol": "generic", "model": HOSTILE},
        method=HOSTILE,
        parameters={HOSTILE: HOSTILE, "nested": {"k": HOSTILE}},
        statistics={"note": HOSTILE},
        test_name=HOSTILE,
        decision_text=HOSTILE,
        plots=[
            {"kind": "histograms", "series": {HOSTILE: [1, 2, 3], "ok": [2, 3]}, "title": HOSTILE},
            {"kind": "line", "x": [1, 2], "y": [0.5, 0.01], "x_label": HOSTILE, "title": HOSTILE},
            {"kind": HOSTILE},
        ],
    )
    page = render_html(report, signature={"keyid": HOSTILE})
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")  # only ever inside escaped text
    assert "&lt;script&gt;" in page
    # No external assets: nothing is fetched, linked or scripted.
    for needle in ("src=", "href=", "<link", "url(", "@import", "<iframe", "<object"):
        assert needle not in page.replace("src=x", ""), needle
    assert page.count("<svg") == 2
    # Tag names in the page are only the ones we emit.
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", page))
    assert tags <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tr", "th", "td", "pre",
        "figure", "figcaption", "svg", "rect", "text", "line", "polyline", "circle",
    }  # fmt: skip


def test_plots_tolerate_odd_data() -> None:
    report = _report(
        plots=[
            {"kind": "histograms", "series": {"a": [1.0, 1.0, float("nan")]}},  # one value, non-finite dropped
            {"kind": "line", "x": [1, 2, 3], "y": [0.0, 0.1, 0.2], "log_y": True},  # zero dropped on a log axis
            {"kind": "line", "x": [1, 2], "y": [1]},  # mismatched: says so instead of failing
            {"kind": "histograms", "series": {}},
        ]
    )
    page = render_html(report)
    assert page.count("<svg") == 2
    assert page.count("plot could not be drawn") == 2

"""The gateway's answer marking: who is marked, what is served, and the settings that key it (no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.core.policy import OutputPolicy, marks_answers
from services.core.records import QueryRecord
from services.core.settings import Settings
from services.gateway.answer_mark import AnswerMarker
from services.gateway.metrics import GatewayMetrics

SECRET = "unit-test-answer-watermark-secret"


def _marker(tmp_path: Path, **kw: object) -> AnswerMarker:
    settings = Settings(env="test", data_dir=tmp_path, answer_watermark_secret=SECRET, **kw)  # type: ignore[arg-type]
    return AnswerMarker(settings, GatewayMetrics(CollectorRegistry()))


def _answers(n: int, k: int = 10, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 16, (n, d)).round()  # digits-like integer pixels
    logits = rng.normal(0, 3, (n, k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return x, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("client", "deployment", "marked"),
    [
        (None, "all", True),
        (None, "flagged", False),
        (None, "off", False),
        ("all", "flagged", True),
        ("off", "all", False),
        ("flagged", "all", False),
        ("all", "off", False),  # the deployment's off is a kill switch
    ],
)
def test_who_is_marked(client: str | None, deployment: str, marked: bool) -> None:
    assert marks_answers(client, deployment) is marked


def test_the_detectors_tightening_turns_marking_on_and_never_off() -> None:
    operator = OutputPolicy(answer_watermark="off")
    detector = OutputPolicy(label_only=True, answer_watermark="all")
    assert operator.tightened(detector).answer_watermark == "all"
    assert detector.tightened(operator).answer_watermark == "all"
    assert OutputPolicy().tightened(operator).answer_watermark == "off"
    assert OutputPolicy().tightened(OutputPolicy()).answer_watermark is None
    assert OutputPolicy.from_dict(detector.to_dict()) == detector
    with pytest.raises(ValueError, match="answer_watermark"):
        OutputPolicy(answer_watermark="sometimes")  # type: ignore[arg-type]


def test_probability_answers_keep_the_top1_and_move_at_most_the_amplitude(tmp_path: Path) -> None:
    marker = _marker(tmp_path, answer_watermark_amplitude=0.05)
    x, p = _answers(2000)
    served = marker.serve(x, p, "probabilities", OutputPolicy(), np.random.default_rng(0))
    assert served is not None
    new, kind, tags = served
    assert kind == "probabilities" and set(tags) == {"probabilities"}
    assert np.array_equal(new.argmax(axis=1), p.argmax(axis=1))
    change = np.abs(new - p).max(axis=1)
    assert change.max() <= 0.05 + 1e-12
    assert np.median(change) > 0.01  # the mark is there, not shrunk to nothing
    np.testing.assert_allclose(new.sum(axis=1), 1.0, atol=1e-12)
    other = _marker(tmp_path / "other", answer_watermark_amplitude=0.05)
    again = other.serve(x, p, "probabilities", OutputPolicy(), np.random.default_rng(1))
    assert again is not None and np.array_equal(again[0], new)  # same secret, same input → same answer


def test_label_answers_flip_a_keyed_share_the_same_way_every_time(tmp_path: Path) -> None:
    marker = _marker(tmp_path)
    x, p = _answers(5000, seed=1)
    label_only = OutputPolicy(label_only=True)
    served = marker.serve(x, p, "probabilities", label_only, np.random.default_rng(0))
    assert served is not None
    labels, kind, tags = served
    assert kind == "label" and labels.dtype.kind == "i" and labels.shape == (5000, 1)
    flipped = np.array([t == "label-flipped" for t in tags])
    moved = np.array([t == "label-boundary" for t in tags])
    changed = labels[:, 0] != p.argmax(axis=1)
    # every change is tagged; a DAWN flip on top of a boundary move can land back on the top-1 (tagged, unchanged)
    assert not np.any(changed & ~(flipped | moved)) and np.all(changed[moved])
    assert 0.005 < flipped.mean() < 0.015  # label_share 1 %, binomial sd at n = 5,000 is 0.14 %
    top2 = np.sort(p, axis=1)[:, -2:]
    near = top2[:, 1] - top2[:, 0] < 0.5  # the default boundary margin
    assert moved.any() and not np.any(moved & ~near)  # the boundary mark acts only near the boundary
    runner_up = np.argsort(-p, axis=1)[:, 1]
    np.testing.assert_array_equal(labels[moved, 0], runner_up[moved])
    assert (
        marker.metrics.registry.get_sample_value(
            "modelcustody_gateway_watermarked_rows_total", {"mark": "label-boundary"}
        )
        == moved.sum()
    )
    twice = marker.serve(x[::-1], p[::-1], "probabilities", label_only, np.random.default_rng(1))
    assert twice is not None and np.array_equal(twice[0][::-1], labels)  # order and batch do not matter
    # the side in the band: the input's keyed hash (default) or the keyed smooth region, same band, same DAWN
    smooth = _marker(tmp_path, answer_watermark_boundary_side="smooth")
    regional = smooth.serve(x, p, "probabilities", label_only, np.random.default_rng(0))
    assert regional is not None and set(regional[2]) == set(tags)
    moved_smooth = np.array([t == "label-boundary" for t in regional[2]])
    assert not np.any(moved_smooth & ~near) and np.any(moved_smooth != moved)
    # An upstream answering labels: marked only when the deployment says how many classes the model has, and
    # only by DAWN (there is no margin to place the boundary mark).
    upstream_labels = p.argmax(axis=1).astype(np.float64)[:, None]
    assert marker.serve(x, upstream_labels, "label", OutputPolicy(), np.random.default_rng(0)) is None
    with_k = _marker(tmp_path, answer_watermark_n_classes=10)
    from_labels = with_k.serve(x, upstream_labels, "label", OutputPolicy(), np.random.default_rng(0))
    dawn_only = _marker(tmp_path, answer_watermark_boundary_margin=0.0)
    plain = dawn_only.serve(x, p, "probabilities", label_only, np.random.default_rng(0))
    assert plain is not None and set(plain[2]) == {"label", "label-flipped"}
    assert from_labels is not None and np.array_equal(from_labels[0], plain[0])


def test_inputs_the_mark_cannot_canonicalise_are_served_unmarked_and_counted(tmp_path: Path) -> None:
    marker = _marker(tmp_path)
    x, p = _answers(3)
    x[1, 0] = 1e39  # finite in float64, infinite in float32
    assert marker.serve(x, p, "probabilities", OutputPolicy(), np.random.default_rng(0)) is None
    assert marker.metrics.registry.get_sample_value("modelcustody_gateway_watermark_skipped_rows_total") == 3
    assert marker.serve(x, p, "raw", OutputPolicy(), np.random.default_rng(0)) is None


def test_prod_refuses_a_placeholder_secret_and_dev_shares_one_per_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ANSWER_WATERMARK_SECRET"):
        Settings(env="prod", admin_token="a-real-admin-token-123", answer_watermark_secret="changethis")
    with pytest.raises(ValueError, match="ANSWER_WATERMARK_SECRET"):
        Settings(env="prod", admin_token="a-real-admin-token-123", answer_watermark_secret="too-short")
    Settings(env="prod", admin_token="a-real-admin-token-123", answer_watermark_mode="off")
    ok = Settings(env="prod", admin_token="a-real-admin-token-123", answer_watermark_secret=SECRET)
    assert ok.answer_watermark_key() == SECRET.encode()
    first = Settings(env="dev", data_dir=tmp_path).answer_watermark_key()
    assert len(first) >= 32
    assert Settings(env="demo", data_dir=tmp_path).answer_watermark_key() == first
    assert Settings(env="dev", data_dir=tmp_path / "elsewhere").answer_watermark_key() != first


def test_records_before_and_after_the_watermark_field_read() -> None:
    rec = QueryRecord("g:1", "g", 1, 0.0, "c", "m", "oip-v2", "r", 0, 1, [1.0], [1.0], "label", 200, 0.0, "none")
    assert rec.watermark == ""
    data = orjson.loads(rec.to_stream_fields()["r"])
    old = {k: v for k, v in data.items() if k != "watermark"}  # a record written before the field existed
    assert QueryRecord.from_stream_fields({"v": b"1", "r": orjson.dumps(old)}).watermark == ""
    newer = {**data, "watermark": "label-flipped", "field_from_the_future": 1}
    assert QueryRecord.from_stream_fields({"v": b"1", "r": orjson.dumps(newer)}).watermark == "label-flipped"

"""Owner-side EWE (audit.watermark_owner) through ``modelcustody watermark embed``: the owner's own data and
model in, a watermarked model, its key and the accuracy cost out; the watermark audit then claims the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from audit.architectures import save_model
from audit.data import split_digits
from audit.suspects.loader import load_suspect_file
from audit.watermark import CLAIMED, WatermarkVerifier
from audit.watermark_embed import WatermarkEmbedder
from audit.watermark_key import WatermarkKey
from audit.watermark_owner import embed_owner_model
from services.cli import app

CONFIG = {"input_dim": 64, "hidden": [128, 64], "num_classes": 10}


@pytest.fixture(scope="module")
def owner_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = split_digits(seed=0)
    out = tmp_path_factory.mktemp("owner_ewe")
    model = WatermarkEmbedder(epochs=6, watermark_epochs=6).fit_clean(d.x_owner, d.y_owner, seed=1)
    save_model(out / "mine.safetensors", model, "mlp", CONFIG)
    np.savez(out / "train.npz", x=d.x_owner, y=d.y_owner)
    np.savez(out / "test.npz", x=d.x_test, y=d.y_test)
    return out


def test_embed_fine_tunes_the_owners_model_and_reports_the_cost(owner_files: Path) -> None:
    out = owner_files / "wm"
    result = CliRunner().invoke(app, [
        "watermark", "embed", "--out", str(out), "--data", str(owner_files / "train.npz"),
        "--test-data", str(owner_files / "test.npz"), "--model", str(owner_files / "mine.safetensors"),
        "--watermark-epochs", "8", "--trigger-steps", "5",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "embedding.json").read_text())
    assert summary["mode"] == "fine-tune" and summary["trigger_success"] >= 0.9 > summary["trigger_rate_before"]
    # the cost is measured on the owner's test rows: a fine-tuned digits MLP loses a few points at most
    assert -0.05 < summary["accuracy_cost"] < 0.05 and "cost" in result.output
    key = WatermarkKey.load(out / "model.key.json")
    suspect = load_suspect_file(out / "model.safetensors", "safetensors")
    evidence = WatermarkVerifier(alpha=0.05, max_queries=100).run(suspect, key, 0.1)
    assert evidence.decision == CLAIMED and evidence.queries_used < 100


def test_embed_refuses_bad_input_with_a_reason(owner_files: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    wrong = runner.invoke(app, ["watermark", "embed", "--out", str(tmp_path), "--data", str(owner_files / "train.npz"),
                                "--model", str(owner_files / "mine.safetensors"), "--image-shape", "28x28"])
    assert wrong.exit_code == 2 and "does not match" in wrong.output
    both = runner.invoke(app, ["watermark", "embed", "--out", str(tmp_path), "--data", str(owner_files / "train.npz"),
                               "--model", str(owner_files / "mine.safetensors"), "--architecture", "mlp",
                               "--config", json.dumps(CONFIG)])
    assert both.exit_code == 2 and "exactly one" in both.output
    with pytest.raises(ValueError, match="exactly one"):
        embed_owner_model(np.zeros((30, 64), np.float32), np.zeros(30, int), image_shape=(8, 8))
    with pytest.raises(ValueError, match="guard_models"):
        embed_owner_model(np.zeros((30, 64), np.float32), np.zeros(30, int), image_shape=(8, 8),
                          model_path=owner_files / "mine.safetensors", guard_models=-1)


def test_guarded_triggers_keep_the_false_rate_on_the_owner_before_embedding(owner_files: Path) -> None:
    d = split_digits(seed=0)
    emb = WatermarkEmbedder(watermark_epochs=6, trigger_steps=6, trigger_lr=0.05, max_perturbation=1.0,
                            closing_steps=0, false_rate_threshold=0.2, hold_false_rate=True)
    out = embed_owner_model(d.x_owner, d.y_owner, image_shape=(8, 8), model_path=owner_files / "mine.safetensors",
                            embedder=emb, eval_data=(d.x_test, d.y_test), guard_models=2, guard_rows=400)
    assert out.trigger_rate_before <= 0.2 and out.trigger_success >= 0.9


def test_a_registered_architecture_is_trained_with_the_watermark(owner_files: Path) -> None:
    d = split_digits(seed=0)
    out = embed_owner_model(
        d.x_owner, d.y_owner, image_shape=(8, 8), architecture="mlp", config=CONFIG,
        embedder=WatermarkEmbedder(trigger_steps=3), eval_data=(d.x_test, d.y_test),
    )
    # against the same architecture trained clean as long: 1.3 pp measured (the docstring of WatermarkEmbedder
    # records 1.6-3.1 pp at these settings over seeds)
    assert out.mode == "train" and out.trigger_success >= 0.9 and out.accuracy_cost < 0.05 < out.accuracy_after

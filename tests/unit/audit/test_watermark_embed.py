"""EWE embedding pieces, the watermark key file and the architecture registry; small, fast trainings only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from audit.architectures import (
    ARCH_KEY,
    MLP,
    architectures,
    build_model,
    load_model,
    predict_labels,
    predict_logits,
    register_architecture,
    save_model,
)
from audit.data import DigitsSplit, split_digits
from audit.watermark_embed import WatermarkEmbedder, patch_positions, snnl, stamp
from audit.watermark_key import WatermarkKey


def quick(**kwargs: Any) -> WatermarkEmbedder:
    """A short schedule: enough to exercise every phase, ~0.3 s per fit."""
    return WatermarkEmbedder(epochs=3, watermark_epochs=2, trigger_steps=2, **kwargs)


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return split_digits(seed=0)


def test_snnl_is_higher_when_groups_are_entangled() -> None:
    gen = torch.Generator().manual_seed(0)
    groups = torch.tensor([0] * 8 + [1] * 8)
    a, b = torch.zeros(16), torch.zeros(16)
    a[0], b[1] = 1.0, 1.0
    separated = torch.stack([a] * 8 + [b] * 8) + 0.01 * torch.rand(16, 16, generator=gen)
    mixed = torch.rand(16, 16, generator=gen)
    tau = torch.tensor(0.1)
    assert snnl(mixed, groups, tau) > snnl(separated, groups, tau) + 0.5
    # fully entangled (identical points), balanced groups: -log(7/15), the share of same-group neighbours
    same = torch.ones(16, 16)
    assert float(snnl(same, groups, tau)) == pytest.approx(-np.log(7 / 15), rel=1e-5)


def test_stamp_sets_only_the_trigger_pixels() -> None:
    x = np.zeros((3, 64), dtype=np.float32)
    out = stamp(x, patch_positions((0, 6), 2), 1.0, (8, 8))
    assert set(np.flatnonzero(out[0])) == {6, 7, 14, 15}
    assert not x.any()  # the input is not modified


def test_fit_is_deterministic_and_produces_a_consistent_key(digits: DigitsSplit) -> None:
    a = quick(seed=3).fit(digits.x_owner, digits.y_owner)
    b = quick(seed=3).fit(digits.x_owner, digits.y_owner)
    assert a.key.fingerprint() == b.key.fingerprint()
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    key = a.key
    assert len(key.trigger_positions) == 4 and key.trigger_value == 1.0
    rows = np.asarray(key.info["source_rows"])
    assert np.all(digits.y_owner[rows] == key.source_class) and len(rows) == len(key.inputs)
    flat = [r * 8 + c for r, c in key.trigger_positions]
    assert np.all(key.inputs[:, flat] == 1.0)  # the recorded trigger is exactly what the inputs carry
    assert np.abs(key.inputs - digits.x_owner[rows]).max() <= 1.0
    assert a.history["max_abs_perturbation"] <= 0.25 + 1e-6
    assert a.history["seconds"] < 30


def test_global_rng_is_left_alone(digits: DigitsSplit) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    quick().fit_clean(digits.x_owner[:200], digits.y_owner[:200])
    assert torch.equal(torch.rand(3), expected)


def test_owner_chosen_positions_and_references(digits: DigitsSplit) -> None:
    positions = [(0, 0), (7, 7)]
    emb = quick(trigger_positions=positions)
    result = emb.fit(digits.x_owner, digits.y_owner)
    assert result.key.trigger_positions == ((0, 0), (7, 7))
    refs = emb.fit_references(digits.x_pool, digits.y_pool, n=3, widths=[(16,), (8, 8)])
    assert [len(m.blocks) for m, _ in refs] == [1, 2, 1]
    assert "seed 1000" in refs[0][1] and f"of {len(digits.x_pool)} public rows" in refs[0][1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source_class": 7, "target_class": 7},
        {"source_class": 10},
        {"hidden": ()},
        {"patch_size": 9},
        {"trigger_positions": [(8, 0)]},
        {"trigger_positions": []},
        {"epochs": 0},
        {"ratio": 0},
        {"temperature": 0.0},
        {"snnl_weight": -1.0},
        {"false_rate_threshold": 1.0},
        {"trigger_steps": -1},
        {"closing_steps": -1},
    ],
)
def test_embedder_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WatermarkEmbedder(**kwargs)  # type: ignore[arg-type]


def test_fit_rejects_data_without_the_class_pair(digits: DigitsSplit) -> None:
    keep = digits.y_owner != 1
    with pytest.raises(ValueError, match="source and the target class"):
        quick().fit(digits.x_owner[keep], digits.y_owner[keep])
    with pytest.raises(ValueError, match="x must be"):
        quick().fit(digits.x_owner[:, :10], digits.y_owner)


def test_key_round_trips_exactly(tmp_path: Path) -> None:
    inputs = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    key = WatermarkKey(1, 7, 10, (8, 8), ((0, 6), (0, 7)), 1.0, inputs, {"train": 4}, {"note": "x"})
    loaded = WatermarkKey.load(key.save(tmp_path / "k.json"))
    assert np.array_equal(loaded.inputs, inputs) and loaded.fingerprint() == key.fingerprint()
    assert loaded.seeds == {"train": 4} and loaded.trigger_positions == ((0, 6), (0, 7))
    with pytest.raises(ValueError, match="not a watermark key"):
        WatermarkKey.from_dict({**json.loads(key.to_json()), "format": "other"})


@pytest.mark.parametrize(
    "change",
    [
        {"target_class": 1},
        {"num_classes": 5, "target_class": 7},
        {"inputs": np.zeros((3, 10), dtype=np.float32)},
        {"trigger_positions": ((8, 8),)},
    ],
)
def test_key_rejects_inconsistent_fields(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "source_class": 1,
        "target_class": 7,
        "num_classes": 10,
        "image_shape": (8, 8),
        "trigger_positions": ((0, 0),),
        "trigger_value": 1.0,
        "inputs": np.zeros((2, 64), dtype=np.float32),
    }
    with pytest.raises(ValueError):
        WatermarkKey(**{**fields, **change})  # type: ignore[arg-type]


def test_saved_model_rebuilds_identically(tmp_path: Path) -> None:
    config = {"input_dim": 64, "hidden": [16, 8], "num_classes": 10}
    torch.manual_seed(0)
    model = build_model("mlp", config)
    path = save_model(tmp_path / "m.safetensors", model, "mlp", config)
    loaded, name, loaded_config = load_model(path)
    x = np.random.default_rng(0).random((7, 64)).astype(np.float32)
    assert name == "mlp" and loaded_config == config and not loaded.training
    assert np.array_equal(predict_logits(model, x), predict_logits(loaded, x))
    assert np.array_equal(predict_labels(model, x), predict_labels(loaded, x))


def test_file_without_metadata_needs_explicit_architecture(tmp_path: Path) -> None:
    config = {"input_dim": 4, "hidden": [3], "num_classes": 2}
    model = build_model("mlp", config)
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=ARCH_KEY):
        load_model(path)
    with pytest.raises(ValueError, match="config"):
        load_model(path, architecture="mlp")
    loaded, _, _ = load_model(path, architecture="mlp", config=config)
    assert isinstance(loaded, MLP)


def test_registry_validates_names_and_configs() -> None:
    assert "mlp" in architectures()
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("mlp", lambda cfg: torch.nn.Identity())
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("no-such-net", {})
    for bad in (
        {"input_dim": 0, "hidden": [], "num_classes": 2},
        {"input_dim": 4, "hidden": [0], "num_classes": 2},
        {"input_dim": 4, "num_classes": 1},
        {"input_dim": 4, "num_classes": 2, "depth": 3},
    ):
        with pytest.raises(ValueError):
            build_model("mlp", bad)
    # a mismatching config is caught when saving, not when an auditor loads the file
    with pytest.raises(RuntimeError):
        save_model(
            "/nonexistent/never-written",
            build_model("mlp", {"input_dim": 4, "num_classes": 2}),
            "mlp",
            {"input_dim": 5, "num_classes": 2},
        )


def test_held_false_rate_holds_on_every_judge_after_the_last_step(digits: DigitsSplit) -> None:
    """With ``hold_false_rate`` the returned triggers pass the false-watermark check on the owner and on every guard
    model. EWE's order (check, SNNL step, closing steps) does not ensure it: without the closing steps the last SNNL
    step is unchecked, and on MNIST it left 92 % of the triggers answered "target" by the pre-trained owner."""
    x, y = digits.x_owner, digits.y_owner
    base: dict[str, Any] = {
        "max_perturbation": 1.0, "closing_steps": 0, "trigger_steps": 8, "trigger_lr": 0.05,
        "false_rate_threshold": 0.1,
    }
    owner = quick().fit_clean(x, y, seed=1)
    guards = [quick().fit_clean(x[::2], y[::2], seed=2, hidden=(64,)), quick().fit_clean(x[1::2], y[1::2], seed=3)]
    tgt = torch.as_tensor(x[y == 7])
    positions = patch_positions((0, 3), 2)
    stamped = torch.as_tensor(stamp(x[y == 1], positions, 1.0, (8, 8)))
    temps = [torch.tensor(float(np.log(0.1))) for _ in range(2)]

    def rates(triggers: torch.Tensor) -> list[float]:
        return [float(np.mean(predict_labels(m, triggers.numpy()) == 7)) for m in [owner, *guards]]

    held_embedder = WatermarkEmbedder(hold_false_rate=True, **base)
    held = held_embedder._optimise_triggers(owner, stamped, tgt, positions, temps, guards)
    assert max(rates(held)) <= 0.1
    pixels = [r * 8 + c for r, c in positions]
    assert torch.equal(held[:, pixels], stamped[:, pixels])  # the patch itself is never moved
    # the same steps in EWE's order end on an unchecked SNNL step: some judge calls more triggers "target"
    ewe = WatermarkEmbedder(**base)._optimise_triggers(owner, stamped, tgt, positions, temps, guards)
    assert max(rates(ewe)) > 0.1

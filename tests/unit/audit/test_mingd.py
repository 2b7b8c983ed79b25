"""MinGD (white-box) embeddings and dataset inference with them: distances on known linear models, the sorted
embedding, the calibrated decision on digits, refusal of black-box suspects, artifacts, the audit method.

The dataset-inference setup mirrors test_dataset_inference.py (a victim that memorises its 200 private digits,
20 null models and an independent model on disjoint data, all one hidden layer of 64): membership is what dataset
inference detects, and the benchmark's watermarked victim leaves too little for a deterministic unit test
(bench/audit.py measures it). Models train in ~3 s, MinGD artifacts take ~3 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from audit.architectures import save_model
from audit.data import split_digits
from audit.dataset_inference import (
    CLAIMED,
    NOT_CLAIMED,
    DatasetInferenceArtifacts,
    prepare_owner,
    run_dataset_inference,
    train_null_models,
)
from audit.methods import normalise_params, run_audit, run_dataset_inference_mingd_audit, white_box_refusal
from audit.mingd import NORMS, WHITE_BOX_NEEDED, MinGDConfig, embed, target_distances
from audit.protected import RegistrationConfig, RegistrationInputs, register_protected_model
from audit.suspects.base import CallableSuspect, Suspect
from audit.suspects.loader import load_suspect_file
from audit.suspects.safetensors_loader import TorchModuleSuspect

N_PRIVATE = 200
WIDTHS, EPOCHS = [(64,)], 100
CONFIG = MinGDConfig(n_regressor=60, n_revealed=100)


def linear(w: np.ndarray, b: np.ndarray) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return layer.eval()


def scores(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The linear model's logits as float32 computes them, in float64."""
    return (x.astype(np.float32).astype(np.float64) @ w.astype(np.float32).T.astype(np.float64)) + b


# -- distances on linear models ---------------------------------------------------------------------------------


def test_binary_linear_distances_are_the_dual_norm_margins() -> None:
    """Class 0 vs 1 of ``w·x + b``: the gradient of logit_c − logit_t is constant, g = w_c − w_t, so every
    descent is a straight line and the distance to the t-boundary is margin / ‖g‖_dual in the step's geometry:
    ℓ2 margin/‖g‖₂, ℓ∞ (sign steps) margin/‖g‖₁, ℓ1 (k coordinates a step) margin·k / (sum of the k largest |g_i|)."""
    rng = np.random.default_rng(0)
    d, n = 8, 40
    w = rng.normal(size=(2, d))
    b = np.array([0.0, (w[0] - w[1]).sum() * 0.5])  # the boundary passes through the centre of the box
    x = rng.uniform(0.3, 0.7, size=(n, d))
    z = scores(w, b, x)
    label = z.argmax(axis=1)
    assert 5 < label.sum() < n - 5  # both classes appear
    target = 1 - label
    g = w[label] - w[target]  # [n, d]
    margin = z[np.arange(n), label] - z[np.arange(n), target]
    k = 2
    expected = {
        "l2": margin / np.linalg.norm(g, axis=1),
        "linf": margin / np.abs(g).sum(axis=1),
        "l1": margin * k / np.sort(np.abs(g), axis=1)[:, -k:].sum(axis=1),
    }
    cfg = MinGDConfig(num_classes=2, clip=False, l1_topk=k, step_linf=0.002, step_l2=0.02, step_l1=0.05,
                      max_iter=2000, refine_steps=10)
    module = linear(w, b)
    for norm in NORMS:
        dist, censored, grads, _ = target_distances(module, x, target, norm, cfg)
        assert not censored.any() and grads > 0
        # the recorded distance is the upper end of the final bracket: >= the boundary, within step/2^refine
        tol = cfg.resolution(norm) + 1e-4 * expected[norm]
        assert np.all(dist >= expected[norm] - 1e-4 * expected[norm] - 1e-6), norm
        assert np.all(dist <= expected[norm] + tol), norm


def test_multiclass_linear_l2_distance_is_the_pairwise_margin() -> None:
    """10 classes: where the straight line from x toward the y|t boundary stays in class y until it crosses into
    class t, MinGD's ℓ2 distance is (z_y − z_t) / ‖w_y − w_t‖ (checked for every such (sample, target) pair)."""
    rng = np.random.default_rng(1)
    d, c, n = 6, 10, 30
    w, b = rng.normal(size=(c, d)), rng.normal(size=c) * 0.5
    x = rng.normal(size=(n, d))
    z = scores(w, b, x)
    label = z.argmax(axis=1)
    rows = [(i, t) for i in range(n) for t in range(c) if t != label[i]]
    xi, tt = x[[i for i, _ in rows]], np.array([t for _, t in rows])
    yy = label[[i for i, _ in rows]]
    g = w[yy] - w[tt]
    gn = np.linalg.norm(g, axis=1)
    analytic = (z[[i for i, _ in rows], yy] - z[[i for i, _ in rows], tt]) / gn
    # which pairs the straight path explains: along x - s·g/‖g‖, argmax stays y before the crossing, t just after
    straight = []
    for r in range(len(rows)):
        s = np.linspace(0.0, analytic[r] * 0.999, 200)
        path = xi[r] - s[:, None] * (g[r] / gn[r])
        after = xi[r] - analytic[r] * 1.001 * g[r] / gn[r]
        straight.append(np.all(scores(w, b, path).argmax(1) == yy[r]) and scores(w, b, after[None]).argmax() == tt[r])
    straight_mask = np.array(straight)
    assert straight_mask.sum() >= 30  # enough pairs where the analytic answer applies
    cfg = MinGDConfig(num_classes=c, clip=False, step_l2=0.01, max_iter=5000, refine_steps=10)
    dist, censored, _, _ = target_distances(linear(w, b), xi, tt, "l2", cfg)
    assert not censored.any()
    np.testing.assert_allclose(dist[straight_mask], analytic[straight_mask], rtol=1e-4, atol=cfg.resolution("l2"))
    # elsewhere the boundary to t is reached later (another class first takes over) or on a bent path, never before
    assert np.all(dist >= analytic * (1 - 1e-4) - 1e-6)


def test_embedding_is_sorted_skips_the_own_label_and_leaves_the_model_alone() -> None:
    split = split_digits(0)
    model = train_null_models(split.x_owner, split.y_owner, n=1, seed=3, subsample=0.5, widths=[(32,)], epochs=10)[0]
    assert isinstance(model, TorchModuleSuspect)
    module = model.module.train()  # embed must evaluate in eval mode and restore the mode after
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]  # training's last step
    cfg = MinGDConfig(num_classes=10)
    x, y = split.x_test[:40], split.y_test[:40]
    emb = embed(module, x, y, cfg)
    assert module.training
    for p, before in zip(module.parameters(), grads, strict=True):  # gradients are taken w.r.t. δ only
        assert (p.grad is None and before is None) or torch.equal(p.grad, before)
    assert emb.distances.shape == emb.censored.shape == (40, 3 * 9)
    for j in range(3):
        block = emb.distances[:, 9 * j : 9 * (j + 1)]
        assert np.all(np.diff(block, axis=1) >= 0)  # sorted ascending across targets
        assert np.all(block >= cfg.resolution(NORMS[j]))  # the own label (distance 0) is not a target
    labels = module.eval()(torch.as_tensor(x)).argmax(1).numpy()
    np.testing.assert_array_equal(emb.labels, labels)
    np.testing.assert_array_equal(emb.correct, labels == y)
    assert emb.censored_share < 0.01 and emb.gradient_evaluations > 40 * 27 and emb.queries == 0
    # ℓ∞ ≤ ℓ2 ≤ ℓ1 for the same nearest class: the norms are ordered for any vector, and the three descents
    # mostly find the same nearest class
    near = emb.distances[:, [0, 9, 18]]
    assert np.mean((near[:, 0] <= near[:, 1]) & (near[:, 1] <= near[:, 2])) > 0.9
    # deterministic: no randomness anywhere
    again = embed(module, x, y, cfg)
    np.testing.assert_array_equal(again.distances, emb.distances)
    with pytest.raises(ValueError, match="output classes"):
        embed(module, x, y, MinGDConfig(num_classes=3))


def test_config_round_trip_and_validation() -> None:
    cfg = MinGDConfig(norms=("l2", "linf"), step_l2=0.2, num_classes=10, feature_ranks=2)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert MinGDConfig.from_dict(d) == cfg and MinGDConfig.coerce(d) == cfg
    assert cfg.families == ("l2", "linf") and cfg.n_directions == 18
    for bad in (
        {"norms": ("l3",)},
        {"step_linf": 0.0},
        {"max_iter": 0},
        {"refine_steps": -1},
        {"num_classes": 1},
        {"num_classes": 3, "feature_ranks": 3},
        {"clip": True, "input_low": 1.0},
    ):
        with pytest.raises(ValueError):
            MinGDConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown MinGD"):
        MinGDConfig.from_dict({"steps": 3})


# -- dataset inference with MinGD ---------------------------------------------------------------------------------


class Setup:
    def __init__(self) -> None:
        split = split_digits(0)
        self.split = split
        self.x_private, self.y_private = split.x_owner[:N_PRIVATE], split.y_owner[:N_PRIVATE]
        rest_x, rest_y = split.x_owner[N_PRIVATE:], split.y_owner[N_PRIVATE:]
        self.victim = train_null_models(
            self.x_private, self.y_private, n=1, seed=1, subsample=1.0, widths=WIDTHS, epochs=EPOCHS
        )[0]
        self.nulls = train_null_models(
            rest_x, rest_y, n=20, seed=100, subsample=N_PRIVATE / len(rest_x), widths=WIDTHS, epochs=EPOCHS
        )
        self.independent = train_null_models(
            split.x_pool, split.y_pool, n=1, seed=300, subsample=N_PRIVATE / len(split.x_pool), widths=WIDTHS,
            epochs=EPOCHS,
        )[0]
        self.artifacts = prepare_owner(
            self.victim, self.x_private, self.y_private, split.x_test, split.y_test, null_models=self.nulls,
            config=CONFIG, seed=0,
        )


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def test_the_victim_is_claimed_and_an_independent_model_is_not(setup: Setup) -> None:
    art = setup.artifacts
    assert art.embedding == "mingd" and art.config.num_classes == 10  # read from the owner model
    assert art.owner["decision_at_0.05"] == CLAIMED and art.owner["gradient_evaluations_owner"] > 0
    victim = run_dataset_inference(setup.victim, art)
    assert victim.decision == CLAIMED, victim.reason
    assert victim.p_value_rank == pytest.approx(1 / 21) and victim.t_statistic > max(victim.null_t_statistics)
    assert victim.calibration == "parametric" and victim.p_value_calibrated < victim.p_value_rank  # no 1/21 floor
    assert victim.queries_used == 0 and victim.labels_calls == 0 and victim.gradient_evaluations > 0
    body = json.loads(json.dumps(victim.to_dict()))
    assert body["method"] == "dataset-inference-mingd" and body["embedding"] == "mingd"
    assert body["parameters"]["config"]["num_classes"] == 10

    independent = run_dataset_inference(setup.independent, art)
    assert independent.decision == NOT_CLAIMED, independent.reason
    assert independent.p_value_calibrated > 0.2 and independent.t_statistic < victim.t_statistic - 2


def test_a_suspect_without_a_torch_module_is_refused(setup: Setup) -> None:
    black_box = CallableSuspect(setup.victim.labels, identity={"kind": "endpoint", "url": "http://x"})
    with pytest.raises(ValueError, match="MinGD needs white-box access: upload the model as safetensors"):
        run_dataset_inference(black_box, setup.artifacts)
    assert black_box.queries_used == 0  # refused before any query
    with pytest.raises(ValueError, match="MinGD needs white-box access"):
        prepare_owner(setup.victim, setup.x_private, setup.y_private, setup.split.x_test, setup.split.y_test,
                      null_models=[*setup.nulls[:2], black_box], config=CONFIG)
    # a torch module with another number of classes cannot be compared either
    other = TorchModuleSuspect(nn.Linear(64, 3))
    with pytest.raises(ValueError, match="output classes"):
        run_dataset_inference(other, setup.artifacts)
    # the method's early check, used by the API before an audit is queued
    assert white_box_refusal("dataset_inference_mingd", "safetensors") is None
    for fmt in ("onnx", "skops", "pickle", None):
        refusal = white_box_refusal("dataset_inference_mingd", fmt)
        assert refusal is not None and refusal.startswith(WHITE_BOX_NEEDED)
    assert white_box_refusal("dataset_inference", "onnx") is None


def test_artifacts_round_trip_and_record_the_embedding(setup: Setup, tmp_path: Path) -> None:
    art = setup.artifacts
    art.save(tmp_path)
    meta = json.loads((tmp_path / "dataset_inference.json").read_text())
    assert meta["embedding"] == "mingd" and meta["method"] == "dataset-inference-mingd"
    loaded = DatasetInferenceArtifacts.load(tmp_path)
    assert isinstance(loaded.config, MinGDConfig) and loaded.config == art.config and loaded.embedding == "mingd"
    for name in ("x_private", "public_ids", "coef", "null_log_distances", "owner_log_distances", "null_correct"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(art, name))
    a = run_dataset_inference(setup.victim, art, m=30)
    b = run_dataset_inference(setup.victim, loaded, m=30)
    assert (a.t_statistic, a.p_value_calibrated, a.decision) == (b.t_statistic, b.p_value_calibrated, b.decision)
    # the embedding named in the file decides how its config is read
    meta["embedding"] = "blind_walk"
    (tmp_path / "dataset_inference.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown Blind Walk parameters"):
        DatasetInferenceArtifacts.load(tmp_path)


# -- the audit method and the registration --------------------------------------------------------------------


def test_registration_precomputes_mingd_and_the_method_audits_a_safetensors_suspect(
    setup: Setup, tmp_path: Path
) -> None:
    owner_dir = tmp_path / "owner"
    owner_dir.mkdir()
    victim = setup.victim
    assert isinstance(victim, TorchModuleSuspect)
    config = {"input_dim": 64, "hidden": [64], "num_classes": 10}
    save_model(owner_dir / "model.safetensors", victim.module, "mlp", config)
    np.savez(owner_dir / "reference.npz", x=setup.split.x_owner[N_PRIVATE:], y=setup.split.y_owner[N_PRIVATE:])
    np.savez(owner_dir / "di.npz", x_private=setup.x_private, y_private=setup.y_private,
             x_public=setup.split.x_test, y_public=setup.split.y_test)
    small = {"n_regressor": 20, "n_revealed": 20}
    cfg = RegistrationConfig(n_null_models=3, reference_epochs=4, di_config={**small, "directions_per_family": 2},
                             mingd_config=small)
    inputs = RegistrationInputs(name="digits", model_path=owner_dir / "model.safetensors",
                                reference_data_path=owner_dir / "reference.npz", di_data_path=owner_dir / "di.npz")
    pm = register_protected_model(inputs, tmp_path / "root", Ed25519PrivateKey.generate(), registration_id="pm_mg",
                                  config=cfg)
    assert pm.methods() == ["dataset_inference", "dataset_inference_mingd"]
    assert pm.record["dataset_inference_mingd"]["available"]
    assert any(k.startswith("artifacts/dataset_inference_mingd/") for k in pm.record["artifacts"])
    assert pm.dataset_inference_artifacts("mingd").embedding == "mingd"
    assert pm.dataset_inference_artifacts().embedding == "blind_walk"

    assert normalise_params("dataset_inference_mingd", {}) == {"m": None, "alpha": 0.05}
    with pytest.raises(ValueError, match="unknown"):
        normalise_params("dataset_inference_mingd", {"budget": 10})  # no queries, so no budget
    suspect = load_suspect_file(owner_dir / "model.safetensors", "safetensors")
    seen: list[float] = []
    evidence = run_audit("dataset_inference_mingd", suspect, pm, {"m": 10}, lambda f, m: seen.append(f))
    # 3 null models: the calibration cannot reach α, so the verdict is inconclusive whatever the suspect
    assert evidence["verdict"] == "inconclusive" and evidence["queries_used"] == 0 == suspect.queries_used
    assert evidence["gradient_evaluations"] > 0 and evidence["method"] == "dataset-inference-mingd"
    assert seen and max(seen) < 1.0
    json.dumps(evidence, allow_nan=False)

    onnx_like: Suspect = CallableSuspect(suspect.labels, identity={"kind": "file", "format": "onnx"})
    with pytest.raises(ValueError, match="MinGD needs white-box access.*onnx"):
        run_dataset_inference_mingd_audit(onnx_like, pm, {})


def test_registration_of_an_onnx_model_has_no_mingd(setup: Setup, tmp_path: Path) -> None:
    """An ONNX protected model answers queries but is not a torch module: Blind Walk only, MinGD says why."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=1)],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 10])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    np.savez(tmp_path / "reference.npz", x=setup.split.x_pool, y=setup.split.y_pool)
    np.savez(tmp_path / "di.npz", x_private=setup.x_private, y_private=setup.y_private,
             x_public=setup.split.x_test, y_public=setup.split.y_test)
    small = {"n_regressor": 10, "n_revealed": 10, "directions_per_family": 1}
    inputs = RegistrationInputs(name="onnx", model_path=onnx_path, model_format="onnx",
                                reference_data_path=tmp_path / "reference.npz", di_data_path=tmp_path / "di.npz")
    pm = register_protected_model(inputs, tmp_path / "root", Ed25519PrivateKey.generate(), registration_id="pm_onnx",
                                  config=RegistrationConfig(n_null_models=2, reference_epochs=2, di_config=small))
    assert pm.methods() == ["dataset_inference"]
    info = pm.record["dataset_inference_mingd"]
    assert info["available"] is False and "torch modules" in info["reason"]
    with pytest.raises(ValueError, match="torch modules"):
        pm.dataset_inference_artifacts("mingd")


def test_the_api_refuses_a_mingd_audit_of_a_black_box_suspect_before_queueing() -> None:
    from fastapi import HTTPException

    from services.api.routers.audits import _check_white_box

    for fmt in ("safetensors", "st"):  # the loader's alias too
        _check_white_box("dataset_inference_mingd", fmt)
    _check_white_box("dataset_inference", "onnx")
    for fmt in ("onnx", "skops", "pt", None):  # None: an endpoint
        with pytest.raises(HTTPException) as caught:
            _check_white_box("dataset_inference_mingd", fmt)
        assert caught.value.status_code == 422 and WHITE_BOX_NEEDED in str(caught.value.detail)

"""File suspects: ONNX, skops, safetensors, and what every loader refuses."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import safetensors.torch
import skops.io as sio
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn

from audit.architectures import ARCH_KEY, CONFIG_KEY, register_architecture, save_model
from audit.suspects.base import BudgetExceeded, SuspectError
from audit.suspects.loader import FORMATS, load_suspect_file
from audit.suspects.pickle_sandbox import UNSAFE_FORMATS, detect_unsafe_format
from audit.suspects.skops_loader import DEFAULT_TRUSTED_TYPES

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 4)).astype(np.float32)
W = RNG.normal(size=(4, 3)).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- ONNX ------------------------------------------------------------------------------------------


def _onnx_model(*, zipmap: bool = False, labels_only: bool = False, domain: str = "") -> onnx.ModelProto:
    """X[n,4] → MatMul W → Softmax (→ ArgMax label, → ZipMap) built node by node."""
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["logits"], domain=domain),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    float_out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])
    label_out = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    outputs = [label_out] if labels_only else [float_out]
    opsets = [helper.make_opsetid("", 17)]
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
            )
        )
        seq_map = helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        )
        outputs = [label_out, helper.make_value_info("output_probability", seq_map)]
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        outputs,
        initializer=[numpy_helper.from_array(W, "W")],
    )
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_onnx_probabilities_model_loads_and_predicts() -> None:
    data = _onnx_model().SerializeToString()
    suspect = load_suspect_file(data, "onnx", budget=100)
    assert suspect.identity == {
        "kind": "file",
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "onnx",
        "size": str(len(data)),
    }
    expected = _softmax(X @ W)
    assert suspect.has_probabilities
    proba = suspect.probabilities(X)
    assert proba is not None
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(suspect.labels(X), expected.argmax(axis=1))
    assert suspect.queries_used == 80
    with pytest.raises(BudgetExceeded):
        suspect.labels(X)


def test_onnx_sklearn_style_zipmap_and_label_only_models(tmp_path: Path) -> None:
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(_onnx_model(zipmap=True).SerializeToString())
    suspect = load_suspect_file(path, "onnx")
    expected = _softmax(X @ W)
    proba = suspect.probabilities(X)
    assert proba is not None
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(suspect.labels(X), expected.argmax(axis=1))

    label_only = load_suspect_file(_onnx_model(labels_only=True).SerializeToString(), "onnx")
    assert not label_only.has_probabilities
    assert label_only.probabilities(X) is None
    np.testing.assert_array_equal(label_only.labels(X), expected.argmax(axis=1))


def test_onnx_with_external_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(W.tobytes())
    model = _onnx_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../../../../etc/passwd", "offset": "0", "length": "48"}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    with pytest.raises(SuspectError, match="external data"):
        load_suspect_file(model.SerializeToString(), "onnx")

    # Also when hidden in a Constant node's tensor attribute.
    model = _onnx_model()
    const = numpy_helper.from_array(np.ones(1, dtype=np.float32), "c")
    const.data_location = TensorProto.EXTERNAL
    entry = const.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=const))
    with pytest.raises(SuspectError, match="external data"):
        load_suspect_file(model.SerializeToString(), "onnx")


def test_onnx_with_custom_domain_is_refused() -> None:
    with pytest.raises(SuspectError, match="custom domain 'evil.ops'"):
        load_suspect_file(_onnx_model(domain="evil.ops").SerializeToString(), "onnx")


# --- skops -----------------------------------------------------------------------------------------

Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)


def test_skops_trusted_estimators_load_and_predict() -> None:
    lr = LogisticRegression(max_iter=500).fit(X, Y)
    suspect = load_suspect_file(sio.dumps(lr), "skops")
    np.testing.assert_array_equal(suspect.labels(X), lr.predict(X))
    proba = suspect.probabilities(X)
    assert proba is not None
    np.testing.assert_allclose(proba, lr.predict_proba(X))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence: irrelevant here
        mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, Y)
    # MLPClassifier carries an AdamOptimizer, which skops does not trust by default but we do.
    assert sio.get_untrusted_types(data=sio.dumps(mlp))
    np.testing.assert_array_equal(load_suspect_file(sio.dumps(mlp), "skops").labels(X), mlp.predict(X))


def test_skops_untrusted_types_are_refused_and_listed() -> None:
    lr = LogisticRegression(max_iter=500).fit(X, Y)
    hostile = Pipeline([("step", FunctionTransformer(func=os.system)), ("lr", lr)])
    with pytest.raises(SuspectError, match=r"not on the trusted list: .*system"):
        load_suspect_file(sio.dumps(hostile), "skops")

    knn = KNeighborsClassifier(n_neighbors=3).fit(X, Y)
    data = sio.dumps(knn)
    with pytest.raises(SuspectError, match="KDTree"):
        load_suspect_file(data, "skops")
    # The operator can review and allow more types.
    extra = [*DEFAULT_TRUSTED_TYPES, *sio.get_untrusted_types(data=data)]
    np.testing.assert_array_equal(load_suspect_file(data, "skops", trusted_types=extra).labels(X), knn.predict(X))


# --- safetensors -----------------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _tiny_factory(config: Mapping[str, Any]) -> nn.Module:
    return _Tiny(int(config["d"]), int(config["k"]))


register_architecture("test-suspects-tiny", _tiny_factory, replace=True)


def _safetensors_bytes(module: nn.Module, metadata: dict[str, str] | None) -> bytes:
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    return safetensors.torch.save(state, metadata=metadata)


def test_safetensors_round_trip_with_registered_architecture() -> None:
    torch.manual_seed(0)
    model = _Tiny(4, 3).eval()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    meta = {ARCH_KEY: "test-suspects-tiny", CONFIG_KEY: '{"d": 4, "k": 3}'}
    suspect = load_suspect_file(_safetensors_bytes(model, meta), "safetensors")
    proba = suspect.probabilities(X)
    assert proba is not None
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(suspect.labels(X), expected.argmax(axis=1))

    # Somebody else's export without our metadata: architecture and config given explicitly.
    bare = _safetensors_bytes(model, None)
    with pytest.raises(SuspectError, match="names no architecture"):
        load_suspect_file(bare, "safetensors")
    suspect = load_suspect_file(bare, "safetensors", architecture="test-suspects-tiny", config={"d": 4, "k": 3})
    np.testing.assert_array_equal(suspect.labels(X), expected.argmax(axis=1))


def test_safetensors_builtin_mlp_via_architectures_save_model(tmp_path: Path) -> None:
    from audit.architectures import build_model

    config = {"input_dim": 4, "hidden": [5], "num_classes": 3}
    torch.manual_seed(1)
    model = build_model("mlp", config)
    path = save_model(tmp_path / "mlp.safetensors", model, "mlp", config)
    suspect = load_suspect_file(path, "safetensors")
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(suspect.labels(X), expected)


def test_safetensors_mismatched_weights_are_refused() -> None:
    meta = {ARCH_KEY: "test-suspects-tiny", CONFIG_KEY: '{"d": 4, "k": 3}'}
    with pytest.raises(SuspectError, match="do not match.*size mismatch"):
        load_suspect_file(_safetensors_bytes(_Tiny(5, 3), meta), "safetensors")
    with pytest.raises(SuspectError, match="do not match.*Missing key"):
        load_suspect_file(safetensors.torch.save({"fc.weight": torch.zeros(3, 4)}, metadata=meta), "safetensors")
    extra = {"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3), "evil": torch.zeros(1)}
    with pytest.raises(SuspectError, match="do not match.*Unexpected key"):
        load_suspect_file(safetensors.torch.save(extra, metadata=meta), "safetensors")
    with pytest.raises(SuspectError, match="cannot build architecture 'no-such-arch'"):
        load_suspect_file(_safetensors_bytes(_Tiny(4, 3), {ARCH_KEY: "no-such-arch", CONFIG_KEY: "{}"}), "safetensors")


# --- pickles are refused without being run ---------------------------------------------------------


class _CreatesFile:
    """Unpickling this calls open(path, "w"): a file appears if and only if the pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _malicious_payloads(marker: Path) -> dict[str, bytes]:
    import joblib

    payloads = {f"pickle-protocol-{p}": pickle.dumps(_CreatesFile(marker), protocol=p) for p in range(6)}
    for compress in (("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)):
        buf = io.BytesIO()
        joblib.dump(_CreatesFile(marker), buf, compress=compress)
        payloads[f"joblib-{compress[0]}"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"model": _CreatesFile(marker)}, buf)
    payloads["torch-zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"model": _CreatesFile(marker)}, buf, _use_new_zipfile_serialization=False)
    payloads["torch-legacy"] = buf.getvalue()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Tiny(4, 3)), buf)
    payloads["torchscript"] = buf.getvalue()
    assert not marker.exists()
    return payloads


@pytest.mark.parametrize("declared", FORMATS)
def test_malicious_pickles_are_refused_without_being_executed(tmp_path: Path, declared: str) -> None:
    marker = tmp_path / "pwned"
    for name, payload in _malicious_payloads(marker).items():
        # Named like a joblib/torch file, like what it is declared as, and passed as bytes: all refused.
        for suffix in (".joblib", ".pt", f".{declared}"):
            path = tmp_path / f"model{suffix}"
            path.write_bytes(payload)
            with pytest.raises(SuspectError, match="execute code when loaded") as info:
                load_suspect_file(path, declared)
            assert not marker.exists(), f"{name} declared {declared} was executed"
        with pytest.raises(SuspectError, match="execute code"):
            load_suspect_file(payload, declared)
        assert not marker.exists(), name
        if declared in UNSAFE_FORMATS:
            assert "MODELCUSTODY_ALLOW_UNSAFE_FORMATS" in str(info.value)
        else:  # a pickle declared as a safe format is never handed to that format's loader
            assert f"declared {declared} but the content is a" in str(info.value)


def test_the_malicious_payload_really_creates_the_file_when_unpickled(tmp_path: Path) -> None:
    """Positive control: without it, 'the file does not exist' above could mean a broken payload."""
    marker = tmp_path / "pwned"
    pickle.loads(_malicious_payloads(marker)["pickle-protocol-2"])
    assert marker.exists()


def test_unsafe_formats_are_detected_by_content() -> None:
    payloads = _malicious_payloads(Path("/nonexistent/never-created"))
    kinds = {name: detect_unsafe_format(data) for name, data in payloads.items()}
    assert kinds["torch-zip"] == "torch" and kinds["torchscript"] == "torchscript"
    assert kinds["joblib-zlib"] == "joblib" and kinds["joblib-xz"] == "joblib"
    assert all(kinds[f"pickle-protocol-{p}"] == "pickle" for p in range(6))
    assert kinds["torch-legacy"] == "pickle"
    safe = [_onnx_model().SerializeToString(), sio.dumps(LogisticRegression().fit(X, Y))]
    safe.append(_safetensors_bytes(_Tiny(4, 3), None))
    assert [detect_unsafe_format(d) for d in safe] == [None, None, None]


def test_a_safetensors_file_starting_with_the_pickle_magic_still_loads() -> None:
    """A header length of 0x280 makes the file start with 0x80 0x02, pickle protocol 2's two magic bytes."""
    model = _Tiny(4, 3)
    for pad in range(700):
        meta = {ARCH_KEY: "test-suspects-tiny", CONFIG_KEY: '{"d": 4, "k": 3}', "pad": "x" * pad}
        data = _safetensors_bytes(model, meta)
        if data[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("could not build the colliding header")
    assert detect_unsafe_format(data) is None
    assert load_suspect_file(data, "safetensors").labels(X).shape == (len(X),)


# --- garbage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [*FORMATS, "pt", "pkl"])
def test_garbage_is_a_suspect_error_for_every_format(declared: str, tmp_path: Path) -> None:
    garbage = [
        b"",
        b"not a model at all\n",
        np.random.default_rng(1).bytes(4096),
        b"PK\x03\x04" + b"\x00" * 100,  # a broken zip
        b"\x08\x07\x12\x03abc",  # a protobuf fragment
        b"\x10\x00\x00\x00\x00\x00\x00\x00{}              ",  # a safetensors-looking header
    ]
    for data in garbage:
        with pytest.raises(SuspectError):
            load_suspect_file(data, declared)
    with pytest.raises(SuspectError, match="cannot read"):
        load_suspect_file(tmp_path / "missing.onnx", declared)


def test_unknown_format_and_size_limit() -> None:
    with pytest.raises(SuspectError, match="unknown model format"):
        load_suspect_file(b"x", "exe")
    with pytest.raises(SuspectError, match="above the"):
        load_suspect_file(b"x" * 100, "onnx", max_bytes=10)

"""Small model files crafted to make a loader allocate far more than their size, or to crash a parser.

Each once cost the admin API hundreds of MiB (or a 500) when it validated uploads in its own process.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np


def safetensors_asking_for_a_huge_architecture() -> bytes:
    """~150 bytes: no tensors, metadata naming an MLP of 64M parameters (a 256 MiB allocation when built)."""
    config = {"input_dim": 8000, "hidden": [8000], "num_classes": 10}
    header = json.dumps(
        {"__metadata__": {"modelcustody.architecture": "mlp", "modelcustody.config": json.dumps(config)}}
    ).encode()
    return struct.pack("<Q", len(header)) + header


def safetensors_with_a_nested_header(depth: int = 100_000) -> bytes:
    """A header of ``depth`` nested arrays: the JSON parser's recursion limit, not a shape error."""
    header = b"[" * depth + b"]" * depth
    return struct.pack("<Q", len(header)) + header


def onnx_constant_of_shape(elements: int = 150_000_000) -> bytes:
    """~120 bytes: ConstantOfShape([elements]), which ONNX Runtime folds into a 600 MB tensor at load."""
    from onnx import TensorProto, helper

    shape = helper.make_node(
        "Constant", [], ["s"], value=helper.make_tensor("v", TensorProto.INT64, [1], [elements])
    )
    fill = helper.make_node("ConstantOfShape", ["s"], ["y"])
    graph = helper.make_graph(
        [shape, fill], "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def skops_zip_bomb(zeros: int = 16_000_000) -> bytes:
    """A valid skops logistic regression whose first array member is ``zeros`` float64 zeros (128 MB for the
    default) deflated to a few hundred KiB."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    clf = LogisticRegression().fit(rng.normal(size=(20, 3)), [0, 1] * 10)
    source = zipfile.ZipFile(io.BytesIO(sio.dumps(clf)))
    out = io.BytesIO()
    bombed = False
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".npy") and not bombed:
                buf = io.BytesIO()
                np.save(buf, np.zeros(zeros))
                data, bombed = buf.getvalue(), True
            z.writestr(info.filename, data)
    return out.getvalue()

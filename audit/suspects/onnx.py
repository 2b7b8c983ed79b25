"""A suspect model in ONNX format, run by ONNX Runtime on the CPU from the uploaded bytes.

ONNX holds no Python objects, but two features reach outside the file and are refused before a session
is created (docs/research.md "Ecosystem: model file formats"):

- external data: a tensor whose ``data_location`` is EXTERNAL (or that carries ``external_data`` entries)
  names a path to read — the path-traversal class of onnx #3991 / CVE-2022-25882 / CVE-2024-27318. Every
  tensor is checked: initializers, sparse initializers, tensor attributes of every node, in every subgraph
  (If/Loop/Scan bodies) and every model-local function.
- custom operator domains: those need a shared library registered with the session, which we never do.
  Only the standard domains and ONNX Runtime's built-in contrib domain are accepted, plus domains of
  functions defined inside the model itself.

Outputs are read as scikit-learn-onnx style (a label tensor plus probabilities as a tensor or a sequence
of maps) or as one float tensor ``[n, k]`` of probabilities or logits, or an integer label tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

from audit.suspects._outputs import Answer, interpret_output, labels_answer
from audit.suspects.base import Suspect, SuspectError

# "" and "ai.onnx" are the standard operator set, "ai.onnx.ml" the traditional-ML one (sklearn-onnx), and
# "com.microsoft" the contrib ops compiled into ONNX Runtime itself (optimised graphs use them).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_FLOAT_INPUTS = {"tensor(float)": np.float32, "tensor(double)": np.float64}
# The largest tensor a model may declare or imply statically: 2**25 elements is 128 MiB of float32, above
# any layer of the models audits handle (an MLP on 784 features with 4,096 hidden units is 3.2M), while a
# 100-byte graph of ConstantOfShape([150M]) is refused before ONNX Runtime folds it into 600 MB at load.
MAX_TENSOR_ELEMENTS = 2**25


def _graph_tensors(graph: GraphProto) -> Iterator[tuple[str, TensorProto]]:
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for s in graph.sparse_initializer:
        yield f"sparse initializer {s.values.name!r}", s.values
        yield f"sparse initializer indices {s.indices.name!r}", s.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[str, TensorProto]]:
    for attr in node.attribute:
        where = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
        if attr.type == AttributeProto.TENSOR or attr.HasField("t"):
            yield where, attr.t
        for t in attr.tensors:
            yield where, t
        if attr.HasField("sparse_tensor"):
            yield where, attr.sparse_tensor.values
            yield where, attr.sparse_tensor.indices
        for st in attr.sparse_tensors:
            yield where, st.values
            yield where, st.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _graph_nodes(graph: GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graph_nodes(attr.g)
            for g in attr.graphs:
                yield from _graph_nodes(g)


def check_model_is_self_contained(model: ModelProto) -> None:
    """SuspectError when any tensor lives outside the file or any node needs a custom-op library."""
    sources = [_graph_tensors(model.graph)]
    sources += [(t for node in f.node for t in _node_tensors(node)) for f in model.functions]
    for source in sources:
        for where, tensor in source:
            if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
                raise SuspectError(
                    f"ONNX model refused: {where} stores its data outside the file (external data); "
                    "upload a model with all tensors embedded"
                )
    local_functions = {(f.domain, f.name) for f in model.functions}
    nodes = list(_graph_nodes(model.graph))
    for f in model.functions:
        for node in f.node:
            nodes.append(node)
            for attr in node.attribute:
                if attr.HasField("g"):
                    nodes.extend(_graph_nodes(attr.g))
    for node in nodes:
        if node.domain in ALLOWED_DOMAINS or (node.domain, node.op_type) in local_functions:
            continue
        raise SuspectError(
            f"ONNX model refused: operator {node.op_type!r} of custom domain {node.domain!r} needs a "
            "custom-op library, which uploads may not bring"
        )
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS and opset.domain not in {d for d, _ in local_functions}:
            raise SuspectError(f"ONNX model refused: it imports the custom operator set {opset.domain!r}")


def _static_elements(dims: Any) -> int | None:
    """Elements of a shape whose dimensions are all known; None when any is symbolic or unknown."""
    values = []
    for d in dims:
        if not d.HasField("dim_value"):
            return None
        values.append(max(int(d.dim_value), 0))
    return math.prod(values)


def check_tensor_sizes(model: ModelProto, max_elements: int = MAX_TENSOR_ELEMENTS) -> None:
    """SuspectError when an initializer, or any tensor whose shape is known before a query is run (declared
    outputs, and every value shape inference with constant propagation resolves), exceeds ``max_elements``.

    Shapes that depend on the query stay unknown here; the audit's process limits cover those.
    """
    for where, tensor in _graph_tensors(model.graph):
        n = math.prod(max(int(d), 0) for d in tensor.dims)
        if n > max_elements:
            raise SuspectError(f"ONNX model refused: {where} has {n} elements, above the limit of {max_elements}")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others from C++
        raise SuspectError(f"ONNX model refused: shape inference failed: {type(exc).__name__}: {exc}") from None
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        known = _static_elements(value.type.tensor_type.shape.dim)
        if known is not None and known > max_elements:
            raise SuspectError(
                f"ONNX model refused: value {value.name!r} has {known} elements before any query, above the limit "
                f"of {max_elements}"
            )


def parse_onnx(data: bytes) -> ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise SuspectError(f"not a valid ONNX model: {exc}") from None
    if not model.graph.node and not model.graph.output:
        # Protobuf parses many byte strings as an empty message; an empty graph is no model.
        raise SuspectError("not a valid ONNX model: the file holds no graph")
    return model


class OnnxSuspect(Suspect):
    def __init__(
        self, session: ort.InferenceSession, *, budget: int | None = None, identity: dict[str, str] | None = None
    ) -> None:
        super().__init__(budget=budget, identity=identity)
        self._session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise SuspectError(f"the ONNX model has {len(inputs)} inputs; audits need exactly one feature tensor")
        self._input = inputs[0].name
        self._input_dtype = _FLOAT_INPUTS.get(inputs[0].type)
        if self._input_dtype is None:
            raise SuspectError(f"the ONNX model's input has type {inputs[0].type}; expected float or double")
        outputs = session.get_outputs()
        self._outputs = [(o.name, o.type) for o in outputs]
        # Probabilities exist when some output is a float tensor of rank 2 or a sequence of maps (zipmap).
        self._has_probabilities = any(
            o.type.startswith("seq(map(") or (o.type in ("tensor(float)", "tensor(double)") and len(o.shape or []) == 2)
            for o in outputs
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, *, budget: int | None = None, identity: dict[str, str] | None = None, threads: int = 1
    ) -> OnnxSuspect:
        """Validate and load. ``threads`` defaults to 1: audits run beside other work on 2-core machines."""
        model = parse_onnx(data)
        check_model_is_self_contained(model)
        try:
            onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
            raise SuspectError(f"ONNX model fails the ONNX checker: {exc}") from None
        check_tensor_sizes(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph/… exceptions
            raise SuspectError(f"ONNX Runtime cannot load the model: {type(exc).__name__}: {exc}") from None
        return cls(session, budget=budget, identity=identity)

    @property
    def has_probabilities(self) -> bool:
        return self._has_probabilities

    def _labels(self, x: np.ndarray) -> np.ndarray:
        return self._answer(x).labels

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        answer = self._answer(x)
        if answer.probabilities is None:
            raise SuspectError("the ONNX model gave no probabilities")
        return answer.probabilities

    def _answer(self, x: np.ndarray) -> Answer:
        n = len(x)
        try:
            results = self._session.run(None, {self._input: x.astype(self._input_dtype)})
        except Exception as exc:  # onnxruntime's own exception types (shape mismatch, …)
            raise SuspectError(f"the ONNX model failed on the query: {type(exc).__name__}: {exc}") from None
        label_answer: Answer | None = None
        proba_answer: Answer | None = None
        for (name, kind), value in zip(self._outputs, results, strict=True):
            if kind.startswith("seq(map("):
                proba_answer = _from_zipmap(value, n, name)
                continue
            arr = np.asarray(value)
            if arr.dtype.kind in "iub" and label_answer is None:
                label_answer = labels_answer(arr, n)
            elif arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[1] >= 2 and proba_answer is None:
                proba_answer = interpret_output(arr, n)
            elif arr.dtype.kind == "f" and label_answer is None and proba_answer is None:
                label_answer = interpret_output(arr, n)
        if proba_answer is not None:
            # sklearn-onnx gives both: its label output is the classifier's decision, keep it authoritative.
            labels = label_answer.labels if label_answer is not None else proba_answer.labels
            return Answer(labels, proba_answer.probabilities, proba_answer.kind)
        if label_answer is not None:
            return label_answer
        raise SuspectError("the ONNX model has no output that reads as labels or probabilities")


def _from_zipmap(value: Any, n: int, name: str) -> Answer:
    """sklearn-onnx's ZipMap output: one {class: probability} dict per row; columns in sorted class order."""
    if not isinstance(value, list) or len(value) != n or not all(isinstance(row, dict) for row in value):
        raise SuspectError(f"ONNX output {name!r} is not one probability map per row")
    classes = sorted(value[0]) if value else []
    try:
        proba = np.array([[float(row[c]) for c in classes] for row in value], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise SuspectError(f"ONNX output {name!r} has inconsistent class maps: {exc}") from None
    return interpret_output(proba, n)

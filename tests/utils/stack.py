"""Start real components for integration tests: gateways and model servers as uvicorn subprocesses."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from services.core.protocols import oip_request
from services.demo.processes import ManagedProcess, free_port, uvicorn_command, wait_for_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    process: ManagedProcess
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        """SIGTERM and wait; 0 when the server shut down gracefully.

        uvicorn re-raises the SIGTERM it handled after its graceful shutdown, so -SIGTERM counts too.
        """
        code = self.process.stop(dump_signal=signal.SIGUSR1)  # a gateway that hangs dumps its stacks first
        code = 0 if code == -signal.SIGTERM else code
        if code != 0 and self.process.log_path is not None:
            # pytest shows this with the failure: what the server was doing when it did not stop in time.
            print(f"--- {self.process.log_path.name}, exit {code}, last lines:", file=sys.stderr)
            print(self.process.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        return code

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Read one sample from the server's /metrics (the real exposition, parsed)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and (
                    labels is None or all(sample.labels.get(k) == v for k, v in labels.items())
                ):
                    return float(sample.value)
        return None


def start_server(factory: str, env: dict[str, str], log_dir: Path, name: str, timeout_s: float = 60) -> Server:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(uvicorn_command(factory, port), env=env, log_path=log_dir / f"{name}-{port}.log", cwd=REPO)
    try:
        wait_for_port(port, timeout_s, proc.proc)
    except BaseException:
        proc.stop()  # a server that did not come up in time must not outlive the test (it keeps a core busy)
        raise
    return Server(proc, port, env)


def oip_body(x: np.ndarray) -> dict[str, object]:
    return oip_request(x)


def start_detector(env: dict[str, str], log_dir: Path, consumer: str) -> tuple[ManagedProcess, int]:
    """A real ``modelcustody serve detector`` process; returns it and its metrics port."""
    port = free_port()
    proc = ManagedProcess(
        [sys.executable, "-m", "services.cli", "serve", "detector"],
        env={**env, "MODELCUSTODY_DETECTOR_CONSUMER": consumer, "MODELCUSTODY_DETECTOR_METRICS_PORT": str(port)},
        log_path=log_dir / f"detector-{consumer}.log",
        cwd=REPO,
    )
    wait_for_port(port, 60, proc.proc)
    return proc, port


class GatewayTraffic:
    """Clients, one thread per API key, sending 3-row OIP batches of ``x`` to the gateway until ``stop()``:
    the rows each one had answered 200 (``sent``) and every other status (``failures``). For tests that break
    something (Redis, a detector) in the middle of traffic and then count what reached the log."""

    def __init__(self, url: str, keys: Mapping[str, str], x: np.ndarray, model: str = "digits-mlp") -> None:
        self.url, self.keys, self.x, self.model = url, dict(keys), x, model
        self.sent: dict[str, list[list[float]]] = {name: [] for name in self.keys}
        self.failures: list[int] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(name, k * 3)) for k, name in enumerate(self.sent)
        ]

    def _client(self, name: str, offset: int) -> None:
        i, stride = offset, 3 * len(self.keys)  # the clients' rows interleave, each row sent by one client only
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set() and i + 3 < len(self.x):
                rows = self.x[i : i + 3]
                resp = http.post(
                    f"/v2/models/{self.model}/infer", json=oip_body(rows), headers={"X-API-Key": self.keys[name]}
                )
                if resp.status_code == 200:
                    self.sent[name].extend(rows.tolist())
                else:
                    self.failures.append(resp.status_code)
                i += stride
                time.sleep(0.002)

    def answered(self) -> int:
        return sum(map(len, self.sent.values()))

    def start(self) -> GatewayTraffic:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

"""``modelcustody demo``: the whole stack on embedded defaults, on one machine, in about a minute.

Starts a private Redis (unless ``MODELCUSTODY_REDIS_URL`` is set), the demo model server, the gateway
and a detector; creates three benign clients and one attacker; the benign clients send natural digits
through the gateway over HTTP, the attacker runs a Jacobian-augmentation extraction (Papernot et al.)
through the same gateway and trains a copy; a quiet Knockoff thief copies the model from the answers the
gateway marked; reports what the query log holds and which clients the detector alerted on; audits the
thief's copy with ``api_watermark`` (signed report, verified) and an independent model beside it; shuts
everything down. Exit status 0 only when every row was logged and analysed, the attacker was alerted and
no benign client was, and the thief's copy was claimed while the independent model was not.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.core import keys
from services.core.alerts import AlertStore
from services.core.clients import ClientRegistry
from services.core.protocols import Protocol, encode_request, oip_request, request_path
from services.core.records import QueryRecord
from services.demo.model_server.models import ServingSplit, digits_split, holdout_halves, train_model
from services.demo.processes import (
    ManagedProcess,
    PrivateRedis,
    exit_on_sigterm,
    free_port,
    uvicorn_command,
    wait_for_port,
)
from services.demo.redteam import Domain, JacobianAugmentation
from services.demo.redteam.http_oracle import GatewayOracle, OracleRefused
from services.demo.watermark_story import DEMO_FREQUENCY, audit_and_sign, run_thief
from services.detector.service.consumer import STATE_PREFIX

console = Console()


@dataclass
class DemoStack:
    """The running demo: Redis, model server, detector and gateway, with the environment they share."""

    workdir: Path
    redis_url: str
    private: PrivateRedis | None
    stream: str
    run_tag: str
    env: dict[str, str]
    gateway_port: int
    procs: list[ManagedProcess] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def client_name(self, base: str) -> str:
        """On a shared Redis, names carry the run's tag so reruns do not collide."""
        return base if self.private is not None else f"{base}-{self.run_tag}"

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.private is not None:
            self.private.stop()


def start_stack(workdir: Path, redis_url: str | None) -> DemoStack:
    """Start (or join) Redis, then the model server, detector and gateway as child processes; the
    environment is passed to the children only, never set in this process."""
    private: PrivateRedis | None = None
    if redis_url is None:
        private = PrivateRedis(workdir / "redis").start()
        redis_url = private.url
        console.print(f"[bold]Redis[/]: private server on {redis_url} ({PrivateRedis.binary()})")
    else:
        console.print(f"[bold]Redis[/]: {redis_url}")
    run_tag = f"{int(time.time())}"
    # On a shared Redis each demo run logs to a stream of its own, so reruns never mix.
    stream = f"{keys.QUERIES_STREAM}:demo:{run_tag}" if private is None else keys.QUERIES_STREAM
    model_port, gateway_port, detector_metrics_port = free_port(), free_port(), free_port()
    env = {
        "MODELCUSTODY_REDIS_URL": redis_url,
        "MODELCUSTODY_ENV": "demo",
        "MODELCUSTODY_DATA_DIR": str(workdir / "data"),
        "MODELCUSTODY_QUERIES_STREAM": stream,
        "MODELCUSTODY_GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{model_port}",
        "MODELCUSTODY_GATEWAY_INSTANCE_ID": "demo-gw",
        "MODELCUSTODY_GATEWAY_INPUT_DIM": "64",
        "MODELCUSTODY_DETECTOR_METRICS_PORT": str(detector_metrics_port),
        "MODELCUSTODY_DETECTOR_BATCH_MAX": "50",
        "MODELCUSTODY_ANSWER_WATERMARK_FREQUENCY": str(DEMO_FREQUENCY),
    }
    stack = DemoStack(workdir, redis_url, private, stream, run_tag, env, gateway_port)
    try:
        model_app = "services.demo.model_server.app:create_app"
        model_server = _start(stack, uvicorn_command(model_app, model_port), "model_server")
        detector = _start(stack, [sys.executable, "-m", "services.cli", "serve", "detector"], "detector")
        wait_for_port(model_port, 60, model_server.proc)
        console.print(f"[bold]Model server[/]: digits classifiers on :{model_port}")
        gateway = _start(stack, uvicorn_command("services.gateway.app:create_app", gateway_port), "gateway")
        wait_for_port(gateway_port, 30, gateway.proc)
        console.print(f"[bold]Gateway[/]: :{gateway_port} → :{model_port}, query log → {stream}")
        # The detector fits its baseline on the owner's reference digits at start-up (a few seconds).
        wait_for_port(detector_metrics_port, 120, detector.proc)
        console.print(f"[bold]Detector[/]: consuming {stream}, metrics on :{detector_metrics_port}")
    except BaseException:
        stack.stop()
        raise
    return stack


def _start(stack: DemoStack, command: list[str], name: str) -> ManagedProcess:
    proc = ManagedProcess(command, env=stack.env, log_path=stack.workdir / f"{name}.log")
    stack.procs.append(proc)
    return proc


def send_benign_traffic(
    gateway_url: str, keys: dict[str, str], x_traffic: np.ndarray, rows_per_client: int, seed: int = 7
) -> dict[str, int]:
    """Each benign client sends its own random sample of natural digits in batches of 1-8 rows; the second
    speaks KServe v1, the others OIP v2. Returns the rows each sent."""
    rng = np.random.default_rng(seed)
    sent: dict[str, int] = {}
    with httpx.Client(base_url=gateway_url, timeout=30) as http, Progress(console=console) as progress:
        task = progress.add_task("benign clients querying through the gateway", total=len(keys) * rows_per_client)
        for i, (name, key) in enumerate(keys.items()):
            protocol: Protocol = "kserve-v1" if i == 1 else "oip-v2"
            headers = {"Authorization": f"Bearer {key}"}
            rows = x_traffic[rng.permutation(len(x_traffic))[: min(rows_per_client, len(x_traffic))]]
            sent[name] = 0
            while sent[name] < len(rows):
                batch = min(int(rng.integers(1, 9)), len(rows) - sent[name])
                x = rows[sent[name] : sent[name] + batch]
                body = encode_request(protocol, x)
                resp = http.post(request_path(protocol, "digits-mlp"), json=body, headers=headers)
                resp.raise_for_status()
                sent[name] += batch
                progress.advance(task, batch)
        unauth = http.post(request_path("oip-v2", "digits-mlp"), json=oip_request(x_traffic[:1]))
    console.print(f"request without a key → {unauth.status_code} {unauth.json()['error']!r}")
    return sent


def wait_until_analysed(r: redis.Redis, stream: str, sent: dict[str, int], timeout_s: float = 60) -> dict[str, int]:
    """Rows logged per client (read back from the stream), once the detector analysed them all (or timeout)."""
    counts: dict[str, int] = dict.fromkeys(sent, 0)
    for _, fields in r.xrange(stream):  # type: ignore[union-attr]
        rec = QueryRecord.from_stream_fields(fields)  # type: ignore[arg-type]
        if rec.client_id in counts:
            counts[rec.client_id] += 1
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(analysed_rows(r, c) < counts[c] for c in counts):
        time.sleep(0.2)
    return counts


def analysed_rows(r: redis.Redis, client: str) -> int:
    raw = r.hget(STATE_PREFIX + client, "queries")
    return int(raw) if raw else 0  # type: ignore[arg-type]


def report_detection(
    r: redis.Redis, sent: dict[str, int], counts: dict[str, int], benign: list[str], attacker: str
) -> bool:
    """Print the table of what was logged, analysed and alerted; True when every row was logged and analysed,
    the attacker was alerted and no benign client was."""
    alerts = {c: AlertStore(r).list(client_id=c, limit=10) for c in sent}
    table = Table(title="query log and detector")
    for col in ("client", "rows sent", "records logged", "analysed", "alert", "risk", "signals fired"):
        table.add_column(col)
    for name in sent:
        first = alerts[name][-1] if alerts[name] else None
        table.add_row(
            name,
            str(sent[name]),
            str(counts[name]),
            str(analysed_rows(r, name)),
            f"{first.severity} after {first.queries_at_open} queries" if first else "-",
            f"{first.risk_score:.1f} (threshold {first.risk_threshold:.1f})" if first else "-",
            ", ".join(first.fired_signals) if first else "-",
        )
    console.print(table)
    logged = all(counts[n] == sent[n] == analysed_rows(r, n) for n in sent)
    caught = bool(alerts[attacker]) and not any(alerts[n] for n in benign)
    console.print(
        "[green]every answered row is in the query log and was analysed[/]" if logged else "[red]records missing[/]"
    )
    console.print(
        f"[green]extraction alert on {attacker} ({alerts[attacker][-1].technique}), none on the benign clients[/]"
        if caught
        else "[red]the detector did not separate the attacker from the benign clients[/]"
    )
    return logged and caught


def run_demo(rows_per_client: int = 300, attack_budget: int = 1200) -> int:
    exit_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="modelcustody-demo-"))
    stack = start_stack(workdir, os.environ.get("MODELCUSTODY_REDIS_URL"))
    try:
        r = redis.Redis.from_url(stack.redis_url)
        registry = ClientRegistry(r)
        benign = [stack.client_name(n) for n in ("alice", "bob", "carol")]
        attacker = stack.client_name("mallory")
        thief = stack.client_name("trudy")
        keys = {name: registry.add(name)[1] for name in [*benign, attacker, thief]}
        split = digits_split()
        # Clients query the traffic half of the holdout; the detector's baseline is the other half.
        x_reference, y_reference, x_traffic, _ = holdout_halves(split)
        sent = send_benign_traffic(stack.gateway_url, {n: keys[n] for n in benign}, x_traffic, rows_per_client)
        sent[attacker], fidelity, stopped = run_attacker(
            stack.gateway_url, keys[attacker], x_traffic, x_reference, split, attack_budget
        )
        console.print(
            f"[bold]{attacker}[/] (JBDA extraction): {sent[attacker]} queries, copy agrees with the victim on "
            f"{fidelity:.1%} of held-out digits" + (f"; stopped by the gateway: {stopped}" if stopped else "")
        )
        # The thief draws from the same natural digits as the benign clients (the whole holdout, ~900 rows).
        copy, answered = run_thief(stack.gateway_url, keys[thief], split.x_holdout)
        stack.procs[-1].stop()  # the gateway: a graceful shutdown flushes the query log
        counts = wait_until_analysed(r, stack.stream, sent)
        detected = report_detection(r, sent, counts, benign, attacker)
        story = audit_and_sign(r, stack.stream, thief, copy, split, x_reference, x_reference, y_reference,
                               workdir / "data", console, answered)
        return 0 if detected and story.ok else 1
    finally:
        stack.stop()


def run_attacker(
    gateway_url: str, key: str, x_traffic: np.ndarray, x_test: np.ndarray, split: ServingSplit, budget: int
) -> tuple[int, float, str | None]:
    """Papernot's JBDA through the gateway: 100 natural seeds, then Jacobian-augmented synthetic points.

    Fidelity is agreement with the victim on ``x_test``, digits nobody queries.
    """
    victim = train_model("mlp", split)  # the same seeded model the server runs
    attack = JacobianAugmentation(
        seed_set=x_traffic[:100], domain=Domain.box(0.0, 16.0, 64), n_classes=10, budget=budget, seed=0
    )
    oracle = GatewayOracle(gateway_url, key, model="digits-mlp")
    answered = 0

    def counting_oracle(x: np.ndarray) -> np.ndarray:
        nonlocal answered
        out = oracle(x)
        answered += len(x)  # only answered rows: a refused request is not logged and not counted
        return out

    fidelity, stopped = 0.0, None
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("mallory extracting a copy (JBDA)", total=budget)
            for step in attack.steps(counting_oracle):
                fidelity = float(np.mean(step.copy.predict(x_test) == victim.predict(x_test)))
                progress.update(task, completed=answered)
    except OracleRefused as exc:
        stopped = f"{exc.status} {exc.reason}"
    finally:
        oracle.close()
    return answered, fidelity, stopped


if __name__ == "__main__":
    sys.exit(run_demo())

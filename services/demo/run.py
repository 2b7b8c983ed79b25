"""``modelcustody demo``: the whole stack on embedded defaults, on one machine, in about a minute.

Starts a private Redis (unless ``MODELCUSTODY_REDIS_URL`` is set), the demo model server, the gateway
and a detector; creates three benign clients and one attacker; the benign clients send natural digits
through the gateway over HTTP, the attacker runs a Jacobian-augmentation extraction (Papernot et al.)
through the same gateway and trains a copy; reports what the query log holds and which clients the
detector alerted on; shuts everything down. Exit status 0 only when every row was logged and analysed,
the attacker was alerted and no benign client was.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.core.alerts import AlertStore
from services.core.clients import ClientRegistry
from services.core.records import QueryRecord
from services.demo.model_server.models import DigitsSplit, digits_split, holdout_halves, train_model
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
from services.detector.service.consumer import STATE_PREFIX

console = Console()


def oip_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.reshape(-1).tolist()}]}


def run_demo(rows_per_client: int = 300, attack_budget: int = 1200) -> int:
    exit_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="modelcustody-demo-"))
    procs: list[ManagedProcess] = []
    private: PrivateRedis | None = None
    redis_url = os.environ.get("MODELCUSTODY_REDIS_URL")
    try:
        if redis_url is None:
            private = PrivateRedis(workdir / "redis").start()
            redis_url = private.url
            console.print(f"[bold]Redis[/]: private server on {redis_url} ({PrivateRedis.binary()})")
        else:
            console.print(f"[bold]Redis[/]: {redis_url}")
        r = redis.Redis.from_url(redis_url)
        run_tag = f"{int(time.time())}"
        stream = f"mc:demo:{run_tag}:queries" if private is None else "mc:queries"
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
        }
        os.environ.update(env)
        procs.append(
            ManagedProcess(
                uvicorn_command("services.demo.model_server.app:create_app", model_port),
                env=env,
                log_path=workdir / "model_server.log",
            )
        )
        procs.append(
            ManagedProcess(
                [sys.executable, "-m", "services.cli", "serve", "detector"],
                env=env,
                log_path=workdir / "detector.log",
            )
        )
        detector = procs[-1]
        wait_for_port(model_port, 60, procs[0].proc)
        console.print(f"[bold]Model server[/]: digits classifiers on :{model_port}")
        procs.append(
            ManagedProcess(
                uvicorn_command("services.gateway.app:create_app", gateway_port),
                env=env,
                log_path=workdir / "gateway.log",
            )
        )
        gateway = procs[-1]
        wait_for_port(gateway_port, 30, gateway.proc)
        console.print(f"[bold]Gateway[/]: :{gateway_port} → :{model_port}, query log → {stream}")
        # The detector fits its baseline on the owner's reference digits at start-up (a few seconds).
        wait_for_port(detector_metrics_port, 120, detector.proc)
        console.print(f"[bold]Detector[/]: consuming {stream}, metrics on :{detector_metrics_port}")

        registry = ClientRegistry(r)

        def name_of(base: str) -> str:
            return base if private is not None else f"{base}-{run_tag}"

        names = [name_of(n) for n in ("alice", "bob", "carol")]
        attacker = name_of("mallory")
        keys = {name: registry.add(name)[1] for name in [*names, attacker]}
        split = digits_split()
        # Clients query the traffic half of the holdout; the detector's baseline is the other half.
        x_reference, _, x_traffic, _ = holdout_halves(split)
        rng = np.random.default_rng(7)
        sent: dict[str, int] = {}
        base = f"http://127.0.0.1:{gateway_port}"
        with httpx.Client(base_url=base, timeout=30) as http, Progress(console=console) as progress:
            task = progress.add_task("benign clients querying through the gateway", total=len(names) * rows_per_client)
            for i, name in enumerate(names):
                headers = {"Authorization": f"Bearer {keys[name]}"}
                rows = x_traffic[rng.permutation(len(x_traffic))[: min(rows_per_client, len(x_traffic))]]
                sent[name] = 0
                while sent[name] < len(rows):
                    batch = min(int(rng.integers(1, 9)), len(rows) - sent[name])
                    x = rows[sent[name] : sent[name] + batch]
                    if i == 1:  # bob speaks KServe v1, the others OIP v2
                        resp = http.post(
                            "/v1/models/digits-mlp:predict", json={"instances": x.tolist()}, headers=headers
                        )
                    else:
                        resp = http.post("/v2/models/digits-mlp/infer", json=oip_body(x), headers=headers)
                    resp.raise_for_status()
                    sent[name] += batch
                    progress.advance(task, batch)
            unauth = http.post("/v2/models/digits-mlp/infer", json=oip_body(x_traffic[:1]))
        console.print(f"request without a key → {unauth.status_code} {unauth.json()['error']!r}")

        sent[attacker], fidelity, stopped = run_attacker(
            base, keys[attacker], x_traffic, x_reference, split, attack_budget
        )
        console.print(
            f"[bold]{attacker}[/] (JBDA extraction): {sent[attacker]} queries, copy agrees with the victim on "
            f"{fidelity:.1%} of held-out digits" + (f"; stopped by the gateway: {stopped}" if stopped else "")
        )

        gateway.stop()  # graceful shutdown flushes the query log
        counts: dict[str, int] = dict.fromkeys(sent, 0)
        for _, fields in r.xrange(stream):  # type: ignore[union-attr]
            rec = QueryRecord.from_stream_fields(fields)  # type: ignore[arg-type]
            if rec.client_id in counts:
                counts[rec.client_id] += 1

        def analysed(client: str) -> int:
            raw = r.hget(STATE_PREFIX + client, "queries")
            return int(raw) if raw else 0  # type: ignore[arg-type]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(analysed(c) < counts[c] for c in counts):
            time.sleep(0.2)
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
                str(analysed(name)),
                f"{first.severity} after {first.queries_at_open} queries" if first else "-",
                f"{first.risk_score:.1f} (threshold {first.risk_threshold:.1f})" if first else "-",
                ", ".join(first.fired_signals) if first else "-",
            )
        console.print(table)
        logged = all(counts[n] == sent[n] == analysed(n) for n in sent)
        caught = bool(alerts[attacker]) and not any(alerts[n] for n in names)
        console.print(
            "[green]every answered row is in the query log and was analysed[/]" if logged else "[red]records missing[/]"
        )
        console.print(
            f"[green]extraction alert on {attacker} ({alerts[attacker][-1].technique}), none on the benign clients[/]"
            if caught
            else "[red]the detector did not separate the attacker from the benign clients[/]"
        )
        return 0 if logged and caught else 1
    finally:
        for p in reversed(procs):
            p.stop()
        if private is not None:
            private.stop()


def run_attacker(
    gateway_url: str, key: str, x_traffic: np.ndarray, x_test: np.ndarray, split: DigitsSplit, budget: int
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

"""``modelcustody demo``: the whole stack on embedded defaults, on one machine, in about a minute.

Starts a private Redis (unless ``MODELCUSTODY_REDIS_URL`` is set), the demo model server and the
gateway; creates three clients; sends their traffic through the gateway over HTTP; reports what the
query log holds; shuts everything down.
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

from services.core.clients import ClientRegistry
from services.core.processes import ManagedProcess, PrivateRedis, free_port, uvicorn_command, wait_for_port
from services.core.records import QueryRecord
from services.model_server.models import digits_split

console = Console()


def oip_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.reshape(-1).tolist()}]}


def run_demo(rows_per_client: int = 300) -> int:
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
        stream = f"mc:demo:{int(time.time())}:queries" if private is None else "mc:queries"
        model_port, gateway_port = free_port(), free_port()
        env = {
            "MODELCUSTODY_REDIS_URL": redis_url,
            "MODELCUSTODY_ENV": "demo",
            "MODELCUSTODY_DATA_DIR": str(workdir / "data"),
            "MODELCUSTODY_QUERIES_STREAM": stream,
            "MODELCUSTODY_GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{model_port}",
            "MODELCUSTODY_GATEWAY_INSTANCE_ID": "demo-gw",
            "MODELCUSTODY_GATEWAY_INPUT_DIM": "64",
        }
        os.environ.update(env)
        procs.append(
            ManagedProcess(
                uvicorn_command("services.model_server.app:create_app", model_port),
                env=env,
                log_path=workdir / "model_server.log",
            )
        )
        wait_for_port(model_port, 60, procs[-1].proc)
        console.print(f"[bold]Model server[/]: digits classifiers on :{model_port}")
        procs.append(
            ManagedProcess(
                uvicorn_command("services.gateway.app:create_app", gateway_port),
                env=env,
                log_path=workdir / "gateway.log",
            )
        )
        wait_for_port(gateway_port, 30, procs[-1].proc)
        console.print(f"[bold]Gateway[/]: :{gateway_port} → :{model_port}, query log → {stream}")

        registry = ClientRegistry(r)
        names = [f"{n}-{int(time.time())}" if private is None else n for n in ("alice", "bob", "carol")]
        keys = {name: registry.add(name)[1] for name in names}
        split = digits_split()
        rng = np.random.default_rng(7)
        sent: dict[str, int] = {}
        base = f"http://127.0.0.1:{gateway_port}"
        with httpx.Client(base_url=base, timeout=30) as http, Progress(console=console) as progress:
            task = progress.add_task("clients querying through the gateway", total=len(names) * rows_per_client)
            for i, name in enumerate(names):
                headers = {"Authorization": f"Bearer {keys[name]}"}
                sent[name] = 0
                while sent[name] < rows_per_client:
                    batch = min(int(rng.integers(1, 9)), rows_per_client - sent[name])
                    x = split.x_holdout[rng.integers(0, len(split.x_holdout), batch)]
                    if i == 1:  # bob speaks KServe v1, the others OIP v2
                        resp = http.post(
                            "/v1/models/digits-mlp:predict", json={"instances": x.tolist()}, headers=headers
                        )
                    else:
                        resp = http.post("/v2/models/digits-mlp/infer", json=oip_body(x), headers=headers)
                    resp.raise_for_status()
                    sent[name] += batch
                    progress.advance(task, batch)
            unauth = http.post("/v2/models/digits-mlp/infer", json=oip_body(split.x_holdout[:1]))
        console.print(f"request without a key → {unauth.status_code} {unauth.json()['error']!r}")

        procs[-1].stop()  # graceful shutdown flushes the query log
        counts: dict[str, int] = dict.fromkeys(names, 0)
        for _, fields in r.xrange(stream):  # type: ignore[union-attr]
            rec = QueryRecord.from_stream_fields(fields)  # type: ignore[arg-type]
            if rec.client_id in counts:
                counts[rec.client_id] += 1
        table = Table(title="query log")
        for col in ("client", "rows sent", "records logged"):
            table.add_column(col)
        for name in names:
            table.add_row(name, str(sent[name]), str(counts[name]))
        console.print(table)
        ok = all(counts[n] == sent[n] for n in names)
        console.print("[green]every answered row is in the query log[/]" if ok else "[red]records missing[/]")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            p.stop()
        if private is not None:
            private.stop()


if __name__ == "__main__":
    sys.exit(run_demo())

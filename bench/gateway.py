"""Gateway throughput and added latency against the demo model server, measured in one run.

Runs the upstream alone, through the gateway and through a second gateway with the answer watermark off
(``watermark_rps_ratio``: its cost), on loopback at the same concurrency, with a JSON POST
of one real digits row (OIP v2) answered with real predictions. Prints one JSON object as its last line:
direct_rps, gateway_rps, ratio, p50/p99 overhead at concurrency 1, records_expected, records_logged.

    python bench/gateway.py [--duration 8] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.core.clients import ClientRegistry  # noqa: E402
from services.core.protocols import oip_request  # noqa: E402
from services.demo.model_server.models import digits_split  # noqa: E402
from services.demo.processes import (  # noqa: E402
    ManagedProcess,
    PrivateRedis,
    exit_on_sigterm,
    free_port,
    uvicorn_command,
    wait_for_port,
)


async def load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float
) -> dict[str, object]:
    """Closed-loop load: ``concurrency`` workers each send a request as soon as the last one returned."""
    latencies: list[float] = []
    errors = 0
    rows_ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: open the connections and let both servers reach steady state.
        warm_end = time.perf_counter() + 1.0

        async def worker(record: bool, end: float) -> None:
            nonlocal errors, rows_ok
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
                if record:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                        rows_ok += 1
                    else:
                        errors += 1
                elif ok:
                    rows_ok += 1

        await asyncio.gather(*(worker(False, warm_end) for _ in range(concurrency)))
        warm_rows = rows_ok
        start = time.perf_counter()
        end = start + duration_s
        await asyncio.gather(*(worker(True, end) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "latencies_ms": lat,
        "errors": errors,
        "rows_ok": rows_ok,
        "warm_rows": warm_rows,
    }


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mc-bench-gw-"))
    store = PrivateRedis(work / "redis", appendonly=False).start()
    procs: list[ManagedProcess] = []
    try:
        model_port, gw_port, plain_port = free_port(), free_port(), free_port()
        env = {
            "MODELCUSTODY_REDIS_URL": store.url,
            "MODELCUSTODY_DATA_DIR": str(work / "data"),
            "MODELCUSTODY_GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{model_port}",
            "MODELCUSTODY_GATEWAY_INSTANCE_ID": "bench",
            "MODELCUSTODY_ENV": "dev",
        }
        cwd = Path(__file__).resolve().parents[1]
        procs.append(
            ManagedProcess(
                uvicorn_command("services.demo.model_server.app:create_app", model_port),
                env=env,
                log_path=work / "model.log",
                cwd=cwd,
            )
        )
        wait_for_port(model_port, 60, procs[-1].proc)
        gateway = ManagedProcess(
            uvicorn_command("services.gateway.app:create_app", gw_port), env=env, log_path=work / "gw.log", cwd=cwd
        )
        procs.append(gateway)
        # A second gateway with the answer watermark off: the watermark's cost is the ratio of the two, in one run.
        plain = ManagedProcess(
            uvicorn_command("services.gateway.app:create_app", plain_port),
            env={**env, "MODELCUSTODY_ANSWER_WATERMARK_MODE": "off", "MODELCUSTODY_GATEWAY_INSTANCE_ID": "bench-plain"},
            log_path=work / "gw-plain.log",
            cwd=cwd,
        )
        procs.append(plain)
        wait_for_port(gw_port, 30, gateway.proc)
        wait_for_port(plain_port, 30, plain.proc)
        r = redis.Redis.from_url(store.url)
        key = ClientRegistry(r).add("bench")[1]

        x = digits_split().x_holdout[:1]
        body = orjson.dumps(oip_request(x))
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        path = "/v2/models/digits-mlp/infer"
        direct_url = f"http://127.0.0.1:{model_port}{path}"
        gw_url = f"http://127.0.0.1:{gw_port}{path}"
        plain_url = f"http://127.0.0.1:{plain_port}{path}"

        c = args.concurrency
        # Alternate short rounds of direct and gateway load so that background load on the machine
        # (other processes on the same 2 cores) hits both sides alike; the ratio is taken over the sums.
        rounds = max(1, int(args.rounds))
        per = args.duration / rounds
        runs: dict[str, list[dict[str, object]]] = {"d16": [], "g16": [], "d1": [], "g1": [], "u16": [], "u1": []}
        for _ in range(rounds):
            runs["d16"].append(asyncio.run(load(direct_url, body, headers, c, per)))
            runs["g16"].append(asyncio.run(load(gw_url, body, headers, c, per)))
            runs["u16"].append(asyncio.run(load(plain_url, body, headers, c, per)))
            runs["d1"].append(asyncio.run(load(direct_url, body, headers, 1, per / 2)))
            runs["g1"].append(asyncio.run(load(gw_url, body, headers, 1, per / 2)))
            runs["u1"].append(asyncio.run(load(plain_url, body, headers, 1, per / 2)))

        def merged(key: str) -> dict[str, float]:
            lat = np.concatenate([np.asarray(r["latencies_ms"]) for r in runs[key]])
            return {
                "rps": float(np.mean([float(r["rps"]) for r in runs[key]])),  # type: ignore[arg-type]
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "errors": float(sum(int(r["errors"]) for r in runs[key])),  # type: ignore[call-overload]
                "rows_ok": float(sum(int(r["rows_ok"]) for r in runs[key])),  # type: ignore[call-overload]
            }

        direct, through, direct1, through1 = (merged(k) for k in ("d16", "g16", "d1", "g1"))
        unmarked, unmarked1 = merged("u16"), merged("u1")
        # rows_ok counts every 200 answer through the gateway, warm-up included: each must be in the log.
        records_expected = int(through["rows_ok"] + through1["rows_ok"] + unmarked["rows_ok"] + unmarked1["rows_ok"])
        gateway.stop()  # graceful: flushes the query log
        plain.stop()
        records_logged = int(r.xlen("mc:queries"))
        result = {
            "concurrency": c,
            "duration_s": args.duration,
            "rounds": rounds,
            "direct_rps": round(direct["rps"], 1),
            "gateway_rps": round(through["rps"], 1),
            "ratio": round(through["rps"] / direct["rps"], 3),
            "direct_p50_ms_c1": round(direct1["p50_ms"], 3),
            "gateway_p50_ms_c1": round(through1["p50_ms"], 3),
            "p50_overhead_ms": round(through1["p50_ms"] - direct1["p50_ms"], 3),
            "p99_overhead_ms": round(through1["p99_ms"] - direct1["p99_ms"], 3),
            "p99_overhead_ms_c16": round(through["p99_ms"] - direct["p99_ms"], 3),
            "unmarked_gateway_rps": round(unmarked["rps"], 1),
            "watermark_rps_ratio": round(through["rps"] / unmarked["rps"], 3),
            "watermark_p50_overhead_ms_c1": round(through1["p50_ms"] - unmarked1["p50_ms"], 3),
            "errors": int(direct["errors"] + through["errors"] + direct1["errors"] + through1["errors"]
                          + unmarked["errors"] + unmarked1["errors"]),
            "records_expected": records_expected,
            "records_logged": records_logged,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        for p in reversed(procs):
            p.stop()
        store.stop()


if __name__ == "__main__":
    main()

"""Soak: the whole stack under sustained gateway traffic, with crashes and hostile input. Not part of CI.

    python bench/soak.py [--duration-s 600] [--clients 4] [--seed 0]

Starts, on one machine, a private Redis configured as in compose (AOF, ``appendfsync everysec``), the demo
model server, a gateway, a detector, the archiver, the signer, the admin API and an audit worker; registers
a watermarked protected model; then for ``--duration-s``:

- ``--clients`` benign clients send held-out digits through the gateway as fast as it answers (closed loop,
  batches of 8 rows): the highest rate this machine sustains with everything else running beside it;
- an audit of an endpoint suspect is submitted every few seconds;
- at 25 % Redis is SIGKILLed and restarted; at 65 % it is SIGKILLed *and its AOF cut back to where it was a
  second before* (what a host crash does to ``everysec``: ``tests/utils/redis_faults.py``), then restarted;
- at 40 % the detector is SIGKILLed mid-work and restarted; at 50 % the audit worker is SIGKILLed while an
  audit runs, and restarted;
- from 45 % to 55 % a burst of malformed and hostile requests is mixed in (kinds in ``hostile_requests``).

Then it waits for the stack to settle and prints one JSON object last:
``records_expected`` (rows the gateway answered with 200), ``records_logged`` (distinct records in the
archive and the stream), ``records_analysed`` (the detector state's per-client counts), which must be equal;
``audits_lost`` (submitted audits that never finished or vanished), ``audits_failed``, ``reports_invalid``
(signed reports of finished audits that do not verify against the API's public key);
``responses_5xx_from_bad_input``; ``hostile_requests`` (count by kind); ``redis_restarts``; ``peak_rss_mb``
per service (the largest resident set seen, over every restart, sampled each second).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402

from audit.signing import verify_envelope  # noqa: E402
from services.core.archive import verify_archive  # noqa: E402
from services.core.clients import ClientRegistry  # noqa: E402
from services.demo.baseline import fit_demo_engine, save_demo_engine  # noqa: E402
from services.demo.model_server.models import digits_split, holdout_halves  # noqa: E402
from services.demo.processes import ManagedProcess, PrivateRedis, exit_on_sigterm, free_port, wait_for_port  # noqa: E402
from services.detector.service.consumer import STATE_PREFIX  # noqa: E402
from tests.utils.redis_faults import aof_mark, crash_losing_tail  # noqa: E402
from tests.utils.stack import REPO, Server, oip_body, start_detector, start_server  # noqa: E402

MODEL = "digits-mlp"
INFER = f"/v2/models/{MODEL}/infer"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval_s)


class RssSampler(threading.Thread):
    """The largest resident set of each named service (its process and children), sampled every second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, Callable[[], int | None]] = {}
        self.peak_kb: dict[str, int] = defaultdict(int)
        self.stop = threading.Event()

    @staticmethod
    def _tree_rss_kb(pid: int) -> int:
        total, todo = 0, [pid]
        while todo:
            p = todo.pop()
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                for task in Path(f"/proc/{p}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return total

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for name, pid in list(self.pids.items()):
                current = pid()
                if current:
                    self.peak_kb[name] = max(self.peak_kb[name], self._tree_rss_kb(current))

    def result(self) -> dict[str, float]:
        return {name: round(kb / 1024, 1) for name, kb in sorted(self.peak_kb.items())}


class Soak:
    def __init__(self, workdir: Path, duration_s: float, n_clients: int, seed: int) -> None:
        self.workdir = workdir
        self.duration_s = duration_s
        self.n_clients = n_clients
        self.seed = seed
        self.logs = workdir / "logs"
        self.rss = RssSampler()
        self.stop_traffic = threading.Event()
        self.answered: Counter[str] = Counter()  # rows answered with 200, per client
        self.lock = threading.Lock()
        self.hostile: Counter[str] = Counter()
        self.hostile_5xx: Counter[str] = Counter()
        self.traffic_5xx = 0
        self.traffic_other: Counter[int] = Counter()
        self.audits: list[str] = []
        self.redis_restarts = 0
        self.tail_cut_bytes = 0
        self.events: list[str] = []

    # ------------------------------------------------------------------ stack
    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.store = PrivateRedis(self.workdir / "redis", appendfsync="everysec").start()
        self.r = redis.Redis.from_url(self.store.url)
        self.rss.pids["redis"] = lambda: self.store.process.pid if self.store.process else None
        log("fitting the detector baseline and the owner's watermarked model")
        baseline = self.workdir / "baseline"
        save_demo_engine(fit_demo_engine(MODEL, n_sim_clients=100), baseline / MODEL, MODEL)
        owner = self.workdir / "owner"
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "watermark", "embed", "--out", str(owner), "--epochs", "8",
             "--watermark-epochs", "8", "--trigger-steps", "5"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        self.admin_token = secrets.token_urlsafe(24)
        self.worker_port = free_port()
        env = {
            "MODELCUSTODY_ENV": "test",
            "MODELCUSTODY_REDIS_URL": self.store.url,
            "MODELCUSTODY_DATA_DIR": str(self.workdir / "data"),
            "MODELCUSTODY_ADMIN_TOKEN": self.admin_token,
            "MODELCUSTODY_DETECTOR_REFERENCE_PATH": str(baseline),
            # Benign traffic only; "notify" so that no quota tightened by a (false) alert turns answers into 429.
            "MODELCUSTODY_DETECTOR_RESPONSE": "notify",
            "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-soak",
            "MODELCUSTODY_GATEWAY_INPUT_DIM": "64",
            "MODELCUSTODY_GATEWAY_REDIS_RETRY_S": "0.2",
            "MODELCUSTODY_ARCHIVE_SEGMENT_INTERVAL_S": "5",
            "MODELCUSTODY_ARCHIVER_METRICS_PORT": str(free_port()),
            "MODELCUSTODY_AUDIT_VISIBILITY_TIMEOUT_S": "15",  # a killed worker's audit is redelivered after it
            "MODELCUSTODY_AUDIT_SOFT_TIME_LIMIT_S": "60",
            "MODELCUSTODY_AUDIT_HARD_TIME_LIMIT_S": "90",
            "MODELCUSTODY_WORKER_METRICS_PORT": str(self.worker_port),
            "OMP_NUM_THREADS": "1",  # two cores shared by every service and the load generator
        }
        self.model = start_server("services.demo.model_server.app:create_app", env, self.logs, "model")
        self.suspect = start_server(
            "tests.utils.upstreams:create_model_app",
            {"UPSTREAM_MODEL_PATH": str(owner / "model.safetensors"), "UPSTREAM_DELAY_S": "0.05",
             "OMP_NUM_THREADS": "1"},
            self.logs, "suspect",
        )
        signer_token = secrets.token_urlsafe(24)
        self.signer = start_server(
            "services.signer.app:create_app",
            {**env, "MODELCUSTODY_SIGNER_TOKEN": signer_token,
             "MODELCUSTODY_SIGNING_KEY_PATH": str(self.workdir / "signer-keys" / "signing_ed25519.pem")},
            self.logs, "signer",
        )
        env.update({"MODELCUSTODY_SIGNER_URL": self.signer.url, "MODELCUSTODY_SIGNER_TOKEN": signer_token,
                    "MODELCUSTODY_GATEWAY_UPSTREAM_URL": self.model.url})
        self.env = env
        self.api = start_server("services.api.main:create_app", env, self.logs, "api")
        self.gateway = start_server("services.gateway.app:create_app", env, self.logs, "gateway")
        self.detector, _ = start_detector(env, self.logs, "det-soak")
        self.archiver = self._cli(["serve", "archiver"], "archiver")
        self.worker = self._start_worker()
        self.rss.pids.update({
            "gateway": lambda: self.gateway.process.pid,
            "detector": lambda: self.detector.pid if self.detector.alive() else None,
            "archiver": lambda: self.archiver.pid,
            "api": lambda: self.api.process.pid,
            "worker": lambda: self.worker.pid if self.worker.alive() else None,
            "signer": lambda: self.signer.process.pid,
            "model_server": lambda: self.model.process.pid,
        })
        self.rss.start()
        self.keys = {f"soak-{i}": ClientRegistry(self.r).add(f"soak-{i}")[1] for i in range(self.n_clients)}
        self.keys["hostile"] = ClientRegistry(self.r).add("hostile")[1]
        self.protected = self._register(owner)

    def _cli(self, args: list[str], name: str) -> ManagedProcess:
        return ManagedProcess([sys.executable, "-m", "services.cli", *args], env=self.env,
                              log_path=self.logs / f"{name}.log", cwd=REPO)

    def _start_worker(self) -> ManagedProcess:
        proc = self._cli(["serve", "worker"], "worker")
        wait_for_port(self.worker_port, 120, proc.proc)
        return proc

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.admin_token}"},
                            timeout=30)

    def _register(self, owner: Path) -> str:
        with self.admin() as client, open(owner / "model.safetensors", "rb") as model, \
                open(owner / "model.key.json", "rb") as key, open(owner / "reference.npz", "rb") as ref:
            resp = client.post(
                "/v1/protected-models",
                data={"name": "soak-victim", "params": json.dumps({"n_null_models": 4, "reference_epochs": 8})},
                files={"model": ("model.safetensors", model), "watermark_key": ("key.json", key),
                       "reference_data": ("reference.npz", ref)},
            )
            resp.raise_for_status()
            pm = resp.json()["id"]
            record = wait_until(lambda: (r := client.get(f"/v1/protected-models/{pm}").json())["status"]
                                in ("ready", "failed") and r, 300)
        if not record or record["status"] != "ready":
            raise RuntimeError(f"registration did not finish: {record}")
        return str(pm)

    def stop(self) -> None:
        self.rss.stop.set()
        for name in ("worker", "archiver", "detector"):
            proc = getattr(self, name, None)
            if proc is not None:
                proc.stop()
        for name in ("gateway", "api", "signer", "suspect", "model"):
            server: Server | None = getattr(self, name, None)
            if server is not None:
                server.stop()
        if getattr(self, "store", None) is not None:
            self.store.stop()

    # ------------------------------------------------------------------ load
    def benign_client(self, name: str, rows: np.ndarray) -> None:
        i = 0
        with httpx.Client(base_url=self.gateway.url, timeout=30) as http:
            while not self.stop_traffic.is_set():
                batch = rows[i % (len(rows) - 8) : i % (len(rows) - 8) + 8]
                i += 8
                try:
                    resp = http.post(INFER, json=oip_body(batch), headers={"X-API-Key": self.keys[name]})
                except httpx.HTTPError:
                    continue
                with self.lock:
                    if resp.status_code == 200:
                        self.answered[name] += len(batch)
                    elif resp.status_code >= 500:
                        self.traffic_5xx += 1
                    else:
                        self.traffic_other[resp.status_code] += 1

    def hostile_requests(self) -> list[tuple[str, Callable[[httpx.Client], httpx.Response]]]:
        key = {"X-API-Key": self.keys["hostile"]}
        row = [1.0] * 64

        def infer(body: Any, headers: dict[str, str] | None = None, path: str = INFER,
                  raw: bytes | None = None) -> Callable[[httpx.Client], httpx.Response]:
            hdrs = {**key, "Content-Type": "application/json", **(headers or {})}
            content = raw if raw is not None else orjson.dumps(body)
            return lambda http: http.post(path, content=content, headers=hdrs)

        def tensor(shape: list[int], data: list[Any], datatype: str = "FP32") -> dict[str, Any]:
            return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}

        api = self.api.url
        return [
            ("oversized_body", infer(None, raw=b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}")),
            ("bad_json", infer(None, raw=b'{"inputs": [{"name": "x", "shape": [1, 64], "data": [1, 2,')),
            ("bad_shape_mismatch", infer(tensor([2, 64], row))),
            ("bad_shape_overflow", infer(tensor([3, 6148914691236517206], row))),
            ("bad_shape_negative", infer(tensor([-1, 64], row))),
            ("wrong_width", infer(tensor([1, 63], row[:63]))),
            ("float32_max", infer(tensor([1, 64], [3.4028234663852886e38] * 64))),
            ("float32_overflow", infer(tensor([1, 64], [3.5e38] * 64))),
            ("float32_denormal", infer(tensor([1, 64], [1.4e-45] * 64))),
            ("nan_inf_literals", infer(None, raw=b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",'
                                                 b' "data": [NaN, Infinity]}]}')),
            ("strings_as_data", infer(tensor([1, 64], ["a"] * 64, "BYTES"))),
            ("path_traversal", infer(tensor([1, 64], row), path="/v2/models/..%2F..%2Fetc%2Fpasswd/infer")),
            ("path_traversal_dots", infer(tensor([1, 64], row), path="/v2/models/../../admin/infer")),
            ("unknown_key", infer(tensor([1, 64], row), headers={"X-API-Key": "mc_" + "0" * 40})),
            ("no_key", lambda http: http.post(INFER, json=tensor([1, 64], row))),
            ("hop_headers", infer(tensor([1, 64], row), headers={"Connection": "X-API-Key, close",
                                                                 "X-Forwarded-For": "127.0.0.1"})),
            ("api_verify_junk", lambda http: http.post(f"{api}/v1/reports/verify", content=b"\x00" * 4096)),
            ("api_verify_oversized", lambda http: http.post(f"{api}/v1/reports/verify", content=b"{" * 2_000_000)),
            ("api_traversal", lambda http: http.get(f"{api}/v1/audits/..%2F..%2Fkeys/report",
                                                    headers={"Authorization": f"Bearer {self.admin_token}"})),
            ("api_bad_token", lambda http: http.get(f"{api}/v1/alerts", headers={"Authorization": "Bearer x"})),
        ]

    def hostile_burst(self, until: float) -> None:
        kinds = self.hostile_requests()
        with httpx.Client(base_url=self.gateway.url, timeout=30) as http:
            i = 0
            while time.monotonic() < until and not self.stop_traffic.is_set():
                kind, send = kinds[i % len(kinds)]
                i += 1
                try:
                    resp = send(http)
                except httpx.HTTPError:
                    self.hostile[kind] += 1
                    continue
                self.hostile[kind] += 1
                if resp.status_code >= 500:
                    self.hostile_5xx[kind] += 1
                elif resp.status_code == 200 and resp.request.url.path == INFER:
                    with self.lock:
                        self.answered["hostile"] += 1  # a valid edge value (float32 max, denormals) is answered
                time.sleep(0.02)

    def audit_loop(self) -> None:
        n = 0
        with self.admin() as client:
            while not self.stop_traffic.wait(8.0):
                n += 1
                body = {"method": "watermark", "protected_model": self.protected,
                        "params": {"max_queries": 10 + n},  # distinct: an identical request would be de-duplicated
                        "suspect": {"url": self.suspect.url, "protocol": "oip-v2", "model": "digits"}}
                try:
                    resp = client.post("/v1/audits", json=body)
                except httpx.HTTPError as exc:
                    self.events.append(f"audit submission failed: {exc!r}")
                    continue
                if resp.status_code == 202:
                    self.audits.append(resp.json()["id"])
                else:
                    self.events.append(f"audit submission answered {resp.status_code}: {resp.text[:200]}")

    # ------------------------------------------------------------------ faults
    def restart_redis(self, lose_tail: bool) -> None:
        port = self.store.port
        if lose_tail:
            mark = aof_mark(self.store)
            time.sleep(1.0)  # what the gateway answers in this second is acknowledged but not yet fsynced
            self.tail_cut_bytes += crash_losing_tail(self.store, mark)
        else:
            self.store.kill()
        time.sleep(1.0)
        self.store = PrivateRedis(self.workdir / "redis", port=port, appendfsync="everysec").start()
        self.redis_restarts += 1
        self.events.append(f"redis restarted (lost tail: {lose_tail})")

    def kill_detector(self) -> None:
        self.detector.kill()
        time.sleep(2.0)
        self.detector, _ = start_detector(self.env, self.logs, "det-soak")
        self.events.append("detector killed and restarted")

    def kill_worker(self) -> None:
        with self.admin() as client:
            running = wait_until(
                lambda: any(client.get(f"/v1/audits/{a}").json()["status"] == "running" for a in self.audits[-3:]),
                30, 0.1,
            )
        self.worker.kill()
        self.events.append(f"worker killed ({'while an audit ran' if running else 'no audit seen running'})")
        time.sleep(1.0)
        self.worker = self._start_worker()

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        _, _, x_traffic, _ = holdout_halves(digits_split(self.seed))
        rng = np.random.default_rng(self.seed)
        threads = [
            threading.Thread(target=self.benign_client, args=(f"soak-{i}", x_traffic[rng.permutation(len(x_traffic))]))
            for i in range(self.n_clients)
        ]
        threads.append(threading.Thread(target=self.audit_loop))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        d = self.duration_s
        schedule: list[tuple[float, Callable[[], None]]] = [
            (0.25 * d, lambda: self.restart_redis(lose_tail=False)),
            (0.40 * d, self.kill_detector),
            # For 10 % of the run from when it starts (an earlier fault that took long must not shorten it).
            (0.45 * d, lambda: threads.append(_started(threading.Thread(
                target=self.hostile_burst, args=(time.monotonic() + 0.10 * d,))))),
            (0.50 * d, self.kill_worker),
            (0.65 * d, lambda: self.restart_redis(lose_tail=True)),
        ]
        try:
            for at, action in schedule:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                log(f"fault at {at:.0f} s")
                action()
            time.sleep(max(0.0, t0 + d - time.monotonic()))
        finally:
            self.stop_traffic.set()
            for t in threads:
                t.join()
        elapsed = time.monotonic() - t0
        log("traffic stopped; waiting for the stack to settle")
        return self.settle(elapsed)

    def settle(self, elapsed: float) -> dict[str, Any]:
        expected = sum(self.answered.values())
        clients = list(self.answered)

        def analysed() -> int:
            return sum(int(self.r.hget(STATE_PREFIX + c, "queries") or 0) for c in clients)

        self.r = redis.Redis.from_url(self.store.url)
        wait_until(lambda: analysed() >= expected, 300, 1.0)
        with self.admin() as client:
            def finished() -> bool:
                return all(client.get(f"/v1/audits/{a}").json().get("status") in ("done", "failed", "cancelled")
                           for a in self.audits)
            wait_until(finished, 300, 1.0)
            records = [client.get(f"/v1/audits/{a}") for a in self.audits]
            pem = client.get("/v1/keys/public").json()["public_key_pem"]
            lost = failed = invalid = 0
            for audit_id, resp in zip(self.audits, records, strict=True):
                status = resp.json().get("status") if resp.status_code == 200 else None
                if status not in ("done", "failed", "cancelled"):
                    lost += 1
                    self.events.append(f"audit {audit_id} lost: {resp.status_code} {resp.text[:200]}")
                elif status != "done":
                    failed += 1
                    self.events.append(f"audit {audit_id} {status}: {resp.json().get('error')}")
                else:
                    envelope = client.get(f"/v1/audits/{audit_id}/report").content
                    try:
                        verify_envelope(envelope, pem.encode())
                    except Exception as exc:  # any verification failure counts
                        invalid += 1
                        self.events.append(f"report of {audit_id} invalid: {exc!r}")
        gw_metric = self.gateway.metric
        recovered = gw_metric("modelcustody_querylog_records_total", {"outcome": "recovered"})
        gw_lost = gw_metric("modelcustody_querylog_records_total", {"outcome": "lost"})
        # Stop the archiver so that its last segment is on disk, then count every record once.
        self.archiver.stop()
        logged, duplicates = self.count_logged()
        archive = verify_archive(self.workdir / "data" / "archive")
        return {
            "duration_s": round(elapsed, 1),
            "clients": self.n_clients,
            "records_expected": expected,
            "records_logged": logged,
            "records_analysed": analysed(),
            "records_logged_twice": duplicates,
            "archive_verified": archive.ok,
            "archive_problems": archive.problems,
            "rows_per_s": round(expected / elapsed, 1),
            "rows_recovered_from_journal": recovered,
            "rows_lost_by_journal": gw_lost,
            "redis_tail_cut_bytes": self.tail_cut_bytes,
            "audits_submitted": len(self.audits),
            "audits_lost": lost,
            "audits_failed": failed,
            "reports_invalid": invalid,
            "responses_5xx_from_bad_input": sum(self.hostile_5xx.values()),
            "responses_5xx_benign": self.traffic_5xx,
            "responses_other_benign": dict(self.traffic_other),
            "hostile_requests": dict(sorted(self.hostile.items())),
            "hostile_5xx_by_kind": dict(self.hostile_5xx),
            "redis_restarts": self.redis_restarts,
            "peak_rss_mb": self.rss.result(),
            "events": self.events,
        }

    def count_logged(self) -> tuple[int, int]:
        """Distinct query-log records in the archive segments and the stream; and how many appear twice."""
        seen: Counter[str] = Counter()
        archive = self.workdir / "data" / "archive"
        for segment in sorted(archive.glob("*.jsonl.gz")) if archive.exists() else []:
            with gzip.open(segment, "rb") as fh:
                for line in list(fh)[1:]:  # the first line is the segment's header
                    seen[orjson.loads(orjson.loads(line)["r"])["record_id"]] += 1
        archived = set(seen)
        for _, fields in self.r.xrange("mc:queries"):
            record_id = orjson.loads(fields[b"r"])["record_id"]
            if record_id not in archived:
                seen[record_id] += 1
        return len(seen), sum(1 for n in seen.values() if n > 1)


def _started(thread: threading.Thread) -> threading.Thread:
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and data here (default: a temp dir)")
    args = parser.parse_args()
    exit_on_sigterm()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mc-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        soak = Soak(workdir, args.duration_s, args.clients, args.seed)
        try:
            soak.start()
            log(f"stack up; soaking for {args.duration_s:.0f} s")
            result = soak.run()
        finally:
            soak.stop()
    result["seed"] = args.seed
    print(json.dumps(result), flush=True)
    ok = (result["records_expected"] == result["records_logged"] == result["records_analysed"]
          and result["audits_lost"] == 0 and result["reports_invalid"] == 0
          and result["responses_5xx_from_bad_input"] == 0 and result["redis_restarts"] >= 2)
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()

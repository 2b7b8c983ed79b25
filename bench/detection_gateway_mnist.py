"""``bench/detection_gateway.py --world mnist``: MNIST victims served by MLServer behind the gateway.

Real path: attack and benign clients → gateway (HTTP, OIP v2) → MLServer (scikit-learn runtime) → answers;
the gateway's query log in Redis → the detector service's ``DetectorWorker`` with one engine per model.
See the docstring of ``bench/detection_gateway.py`` for the method. Before the attacks, ``--warm`` benign clients
(other seeds) send 16 rows each, so the detector's population baseline is warm as after a while in service (as
``bench/detection.py`` does in process); ``--tuning`` adds tuning-family clients beside the held-out ones.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis
from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detection  # noqa: E402  (bench/detection.py: the MNIST world, its attacks and benign families)

from services.core.alerts import AlertStore  # noqa: E402
from services.core.clients import ClientRegistry  # noqa: E402
from services.core.protocols import oip_request  # noqa: E402
from services.demo.processes import ManagedProcess, PrivateRedis, free_port, uvicorn_command, wait_for_port  # noqa: E402
from services.demo.redteam.http_oracle import GatewayOracle, OracleRefused  # noqa: E402
from services.detector.engine import DetectionEngine, FitConfig  # noqa: E402
from tests.utils.mlserver import mlserver_venv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROBA = ("predict_proba",)
# Trained inside MLServer's virtualenv (its scikit-learn loads the file), with bench/detection.py's parameters.
TRAIN = """
import sys, joblib, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
data = np.load(sys.argv[1])
if sys.argv[2] == "mlp":
    model = MLPClassifier(hidden_layer_sizes=(128,), max_iter=15, random_state=0)
else:
    model = LogisticRegression(max_iter=100, C=0.1)
joblib.dump(model.fit(data["x"], data["y"]), sys.argv[3])
"""
MODELS = {"mnist-mlp": "mlp", "mnist-logreg": "logreg"}


def serve_with_mlserver(work: Path, x: np.ndarray, y: np.ndarray) -> tuple[ManagedProcess, str]:
    venv = mlserver_venv()
    repo = work / "models"
    np.savez(work / "train.npz", x=x, y=y)
    for name, kind in MODELS.items():
        (repo / name).mkdir(parents=True)
        py = str(venv / "bin" / "python")
        subprocess.run([py, "-c", TRAIN, str(work / "train.npz"), kind, str(repo / name / "model.joblib")], check=True)
        settings = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel"}
        settings["parameters"] = {"uri": "./model.joblib"}
        (repo / name / "model-settings.json").write_bytes(orjson.dumps(settings))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (repo / "settings.json").write_bytes(
        orjson.dumps(
            {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "parallel_workers": 0}
        )
    )
    proc = ManagedProcess(
        [str(venv / "bin" / "mlserver"), "start", str(repo)], log_path=work / "mlserver.log", env={"PYTHONPATH": ""}
    )
    wait_for_port(http_port, 180, proc.proc)
    url = f"http://127.0.0.1:{http_port}"
    for name in MODELS:  # the port opens before the models are loaded
        for _ in range(600):
            if httpx.get(f"{url}/v2/models/{name}/ready").status_code == 200:
                break
            time.sleep(0.2)
    return proc, url


def upstream_proba(url: str, model: str) -> Callable[[np.ndarray], np.ndarray]:
    """The served model's probabilities, asked from MLServer directly (the owner's own access)."""
    http = httpx.Client(base_url=url, timeout=120)

    def proba(x: np.ndarray) -> np.ndarray:
        parts = []
        for i in range(0, len(x), 512):
            body = oip_request(np.asarray(x[i : i + 512], dtype=np.float64))
            body["outputs"] = [{"name": "predict_proba"}]
            resp = http.post(f"/v2/models/{model}/infer", content=orjson.dumps(body))
            resp.raise_for_status()
            tensor = resp.json()["outputs"][0]
            parts.append(np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"]))
        return np.concatenate(parts)

    return proba


def send_client(http: httpx.Client, api_key: str, client: Any, volume: int) -> int:
    """One benign client's batches through the gateway; returns the rows sent."""
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    sent = 0
    for batch in client.batches(volume):
        body = oip_request(batch.X)
        body["outputs"] = [{"name": "predict_proba"}]
        resp = http.post("/v2/models/mnist-mlp/infer", content=orjson.dumps(body), headers=headers)
        resp.raise_for_status()
        sent += len(batch.X)
    return sent


def split_rates(benign_sent: dict[str, tuple[str, int]], first_alert: dict[str, int], high: set[str]) -> dict[str, Any]:
    """Alerted and high-severity clients over a set of benign clients, with the Clopper-Pearson bound."""
    n = len(benign_sent)
    k = sum(c in first_alert for c in benign_sent)
    h = len(high & set(benign_sent))
    return {
        "clients": n,
        "flagged": k,
        "false_positive_rate": round(k / max(1, n), 4),
        # Clopper-Pearson: 0 of 1,000 only shows the rate is below ~0.3 %.
        "false_positive_rate_upper_95": round(float(beta.ppf(0.95, k + 1, max(1, n - k))), 4),
        "high": h,
        "high_rate": round(h / max(1, n), 4),
    }


def run_mnist(
    n_benign: int, quick: bool, n_tuning: int = 0, n_warm: int = 300, ood_features: str | None = None
) -> dict[str, Any]:
    t_start = time.time()
    scale = 0.1 if quick else 1.0
    world = detection.mnist_world(scale)  # its in-process victims are not used: MLServer's are the victims
    m_train = detection.load_mnist()
    x_train, y_train = m_train.x_train[:20000], m_train.y_train[:20000]
    work = Path(tempfile.mkdtemp(prefix="mc-bench-mnist-"))
    store = PrivateRedis(work / "redis", appendonly=False).start()
    procs: list[ManagedProcess] = []
    try:
        mlserver, upstream = serve_with_mlserver(work, x_train, y_train)
        procs.append(mlserver)
        served = {name: upstream_proba(upstream, name) for name in MODELS}
        t0 = time.time()
        engines = {}
        for name in MODELS:
            engines[name] = DetectionEngine.fit(
                world.reference,
                served[name](world.reference),
                reference_model=served[name],
                config=FitConfig(
                    n_sim_clients=40 if quick else 200,  # --quick tries the script; its thresholds are not reported
                    seed=0,
                    variation=world.variation,
                    sim_length=400,
                    signal_params={
                        "prada": {"null_streams": 20},
                        **({"ood": {"features": ood_features}} if ood_features else {}),
                    },
                ),
            )
        fit_s = time.time() - t0
        print(f"# mnist: engines fitted in {fit_s:.0f} s", file=sys.stderr, flush=True)
        truth = {name: served[name](world.test_x).argmax(axis=1) for name in MODELS}

        gw_port = free_port()
        env = {
            "MODELCUSTODY_REDIS_URL": store.url,
            "MODELCUSTODY_DATA_DIR": str(work / "data"),
            "MODELCUSTODY_GATEWAY_UPSTREAM_URL": upstream,
            "MODELCUSTODY_GATEWAY_INSTANCE_ID": "bench-mnist",
            "MODELCUSTODY_GATEWAY_INPUT_DIM": "784",
            # 256 rows x 784 values as JSON is ~4 MB.
            "MODELCUSTODY_GATEWAY_MAX_BODY_BYTES": str(16 * 1024 * 1024),
            "MODELCUSTODY_ENV": "dev",
        }
        procs.append(
            ManagedProcess(
                uvicorn_command("services.gateway.app:create_app", gw_port), env=env, log_path=work / "gw.log", cwd=REPO
            )
        )
        wait_for_port(gw_port, 60, procs[-1].proc)
        gateway_url = f"http://127.0.0.1:{gw_port}"
        r = redis.Redis.from_url(store.url)
        registry = ClientRegistry(r)

        # The population baseline as after a while in service (as bench/detection.py's warm_populations): the
        # first rows of n_warm benign clients of the evaluated mix, other seeds and ids, sent before the attacks.
        n_warm_held = round(n_warm * 5 / 7)
        with httpx.Client(base_url=gateway_url, timeout=60) as http:
            for i, (_, client, _) in enumerate(detection.benign_clients(world, n_warm_held, n_warm - n_warm_held, 101)):
                send_client(http, registry.add(f"warm-{i}")[1], client, 16)

        runs: list[dict[str, Any]] = []
        for a_name, victim, make in world.attacks:
            model = f"mnist-{victim}"
            client = f"attacker-{a_name}"
            oracle = GatewayOracle(gateway_url, registry.add(client)[1], model=model, outputs=PROBA)
            traj: list[tuple[int, float]] = []
            try:
                for p in make().steps(oracle):
                    agree = float(np.mean(np.asarray(p.copy.predict(world.test_x)).reshape(-1) == truth[model]))
                    traj.append((p.queries_used, agree))
            except OracleRefused as exc:
                print(f"# {a_name} refused: {exc}", file=sys.stderr)
            finally:
                oracle.close()
            runs.append({"name": a_name, "model": model, "client": client, "trajectory": traj})
            print(f"# mnist {a_name}: {traj[-1] if traj else None}", file=sys.stderr, flush=True)

        # --quick tries the script on tuning families; the reported run uses the held-out ones (and tuning ones
        # beside them with --tuning, as bench/detection.py).
        n_held, n_tun = (0, n_benign) if quick else (n_benign, n_tuning)
        population = detection.benign_clients(world, n_held, n_tun, seed=1)
        benign_sent: dict[str, tuple[str, int]] = {}
        with httpx.Client(base_url=gateway_url, timeout=60) as http:
            for i, (family, client, volume) in enumerate(population):
                cid = f"benign-{i}"
                benign_sent[cid] = (family, send_client(http, registry.add(cid)[1], client, volume))
                if (i + 1) % 100 == 0:
                    print(f"# mnist: {i + 1} benign clients sent", file=sys.stderr, flush=True)
        procs[-1].stop()  # flush the gateway's query log

        detector = consume(r, engines)
        alerts = AlertStore(r).list(limit=100_000)
        first_alert: dict[str, int] = {}
        fired: dict[str, set[str]] = {}
        high: set[str] = set()
        for a in alerts:
            first_alert[a.client_id] = min(a.queries_at_open, first_alert.get(a.client_id, 1 << 60))
            fired.setdefault(a.client_id, set()).update(a.fired_signals)
            if a.severity == "high":
                high.add(a.client_id)
        attacks_out = []
        for run in runs:
            traj = run["trajectory"]
            q = first_alert.get(run["client"])
            q90 = next((t for t, f in traj if f >= 0.9), None)
            before = [f for t, f in traj if q is not None and t <= q]
            attacks_out.append(
                {
                    "name": run["name"],
                    "victim": run["model"],
                    "queries_total": traj[-1][0] if traj else 0,
                    "queries_to_first_alert": q,
                    "copy_fidelity_at_alert": round(before[-1], 4) if before else None,
                    "final_copy_fidelity": round(traj[-1][1], 4) if traj else None,
                    "queries_to_90pct_fidelity": q90,
                    "detected": q is not None,
                    "signals_fired": sorted(fired.get(run["client"], set())),
                    "detected_before_90pct": q is not None and (q90 is None or q < q90),
                }
            )
        families: dict[str, list[int]] = {}
        for cid, (family, _) in benign_sent.items():
            f = families.setdefault(family, [0, 0, 0])
            f[0] += 1
            f[1] += cid in first_alert
            f[2] += cid in high
        held = {c: v for c, v in benign_sent.items() if v[0] in detection.HELDOUT}
        tuning = {c: v for c, v in benign_sent.items() if v[0] not in detection.HELDOUT}
        return {
            "world": "mnist",
            "served_by": "mlserver",
            "attacks": attacks_out,
            "benign": {
                **split_rates(held, first_alert, high),
                "families_heldout": list(detection.HELDOUT),
                "tuning": split_rates(tuning, first_alert, high),
                "families": {k: {"clients": v[0], "flagged": v[1], "high": v[2]} for k, v in sorted(families.items())},
                "queries_total": int(sum(s for _, s in benign_sent.values())),
                "warm_clients": n_warm,
            },
            "thresholds": {k: round(e.thresholds.alert, 3) for k, e in engines.items() if e.thresholds},
            "detector": detector,
            "fit_s": round(fit_s, 1),
            "wall_s": round(time.time() - t_start, 1),
        }
    finally:
        for p in reversed(procs):
            p.stop()
        store.stop()


def consume(r: redis.Redis, engines: dict[str, DetectionEngine]) -> dict[str, Any]:
    """The real detector loop over the whole stream (batches of 50: first-alert granularity <= 50 queries)."""
    from prometheus_client import CollectorRegistry

    from services.detector.service.consumer import DetectorConfig, DetectorWorker
    from services.detector.service.metrics import DetectorMetrics
    from services.detector.service.runtime import EngineSet

    worker = DetectorWorker(
        r,
        EngineSet(engines),
        AlertStore(r),
        DetectorMetrics(CollectorRegistry()),
        # Every client here shares the loopback network: the per-network group test would pool them all.
        DetectorConfig(batch_max=50, block_ms=50, tighten_on="", groups=None),
    )
    worker.ensure_group()
    t0 = time.perf_counter()
    analysed = 0
    while (n := worker.step()) > 0:
        analysed += n
    return {"records_analysed": analysed, "seconds": round(time.perf_counter() - t0, 2), "batch_max": 50}

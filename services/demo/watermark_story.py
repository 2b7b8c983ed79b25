"""The demo's last act: a quiet thief copies the model through the gateway, the answer watermark proves it.

``trudy`` runs Knockoff (Orekondy et al.) on natural digits (each once, like a benign client) and trains on
the probabilities the gateway served: per client a benign-looking stream, the theft the detector is not built to
stop. The gateway marked every answer (``services/gateway/answer_mark.py``), so the copy carries the key's
signal. ``api_watermark`` (``audit.api_watermark``) reads trudy's rows back from the query log, queries the copy
on those inputs, subtracts the owner's unmarked probabilities, and claims at α = 1e-3; the report is signed
(DSSE, Ed25519) and verified with the public key. An independent model (the owner's recipe on other digits,
never queried through the gateway) is audited the same way and is not claimed.

The audit runs in process here, with the worker's own function for reading the log; the same method through
the admin API and a Celery worker is ``modelcustody audit submit --method api_watermark`` (tested in
``tests/integration/test_audits_e2e.py``).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rich.console import Console

from audit.api_watermark import run_api_watermark
from audit.report import build_report, report_subjects
from audit.signing import (
    OWNERSHIP_AUDIT_PREDICATE,
    load_or_create_signing_key,
    public_key_pem,
    sign_statement,
    verify_envelope,
)
from audit.suspects.base import CallableSuspect
from services.core.settings import Settings
from services.demo.model_server.models import ServingSplit, train_model
from services.demo.redteam import Domain, Knockoff, OracleError
from services.demo.redteam.http_oracle import GatewayOracle, OracleRefused
from workers.api_watermark import read_logged_answers

# The demo's inputs are raw digits pixels (0..16): the default 5.75 rad per unit suits [0, 1] inputs, so
# divide by 16.
DEMO_FREQUENCY = 5.75 / 16.0
THIEF_BUDGET = 1000  # the bar: copies from ≤ 1,000 answered queries


@dataclass
class StoryResult:
    copy_agreement: float
    copy_verdict: str
    copy_p_value: float
    copy_queries: int
    independent_verdict: str
    independent_p_value: float
    report_verified: bool

    @property
    def ok(self) -> bool:
        return self.copy_verdict == "claim" and self.independent_verdict != "claim" and self.report_verified


def run_thief(gateway_url: str, key: str, x_pool: np.ndarray) -> tuple[Any, int]:
    """Knockoff on probabilities through the gateway: each natural digit of the pool once (at most
    ``THIEF_BUDGET``), so the stream looks like a benign client's; a (128,) MLP copy trained to fit its
    answers (150 epochs, 75 per refit), and the queries answered.

    Should the detector flag the thief anyway (its policy then answers labels, or refuses), the copy trained
    on what was answered until then is the copy."""
    budget = min(THIEF_BUDGET, len(x_pool))
    attack = Knockoff(
        pool=x_pool,
        domain=Domain.box(0.0, 16.0, 64),
        n_classes=10,
        budget=budget,
        use_probabilities=True,
        hidden=(128,),
        epochs=150,
        refit_epochs=75,
        seed=3,
    )
    oracle = GatewayOracle(gateway_url, key, model="digits-mlp")
    copy, answered = None, 0
    try:
        for step in attack.steps(oracle):
            copy, answered = step.copy, step.queries_used
    except (OracleRefused, OracleError):
        pass
    finally:
        oracle.close()
    if copy is None:
        raise RuntimeError("the thief got no answers")
    return copy, answered


def audit_and_sign(
    r: redis.Redis,
    stream: str,
    thief: str,
    copy: Any,
    split: ServingSplit,
    x_test: np.ndarray,
    x_independent: np.ndarray,
    y_independent: np.ndarray,
    data_dir: Path,
    console: Console,
    answered: int,
) -> StoryResult:
    settings = Settings(env="demo", data_dir=data_dir, answer_watermark_frequency=DEMO_FREQUENCY)
    logged = read_logged_answers(r, stream, [thief])
    mark = settings.answer_watermark(10, 64)
    victim = train_model("mlp", split)  # the same seeded model the server runs: the owner's unmarked answers
    owner = CallableSuspect(victim.predict, victim.predict_proba)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    # Independent: the owner's kind of model on digits nobody sent through the gateway, with their true labels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 400 iterations fit 450 digits well enough
        independent = _Scaled(
            MLPClassifier((64,), max_iter=400, random_state=11).fit(x_independent / 16.0, y_independent)
        )
    params = {"clients": [thief]}
    key = load_or_create_signing_key(data_dir / "keys" / "signing_ed25519.pem")
    pem = public_key_pem(key)
    results: dict[str, dict[str, Any]] = {}
    verified = True
    for name, model in (("copy", copy), ("independent", independent)):
        started = datetime.now(UTC)
        evidence = run_api_watermark(
            CallableSuspect(model.predict, model.predict_proba), mark, params, logged=logged, owner=owner
        )
        identity = {"kind": "file", "format": "demo", "sha256": _digest(model), "name": f"{thief}'s {name}"}
        report = build_report(
            suspect=identity,
            method="api_watermark",
            parameters=evidence["parameters"],
            seeds=None,
            queries_used=evidence["queries_used"],
            statistics={k: evidence[k] for k in ("phases", "suspected_clients", "false_claim_bound", "watermark")},
            p_value=evidence["p_value"],
            test_name=evidence["test_name"],
            alpha=evidence["alpha"],
            decision=evidence["verdict"],
            started_at=started,
            finished_at=datetime.now(UTC),
            null_hypothesis=evidence["null_hypothesis"],
        )
        envelope = sign_statement(report, report_subjects(report), key)
        (data_dir / f"api_watermark_{name}.dsse.json").write_bytes(envelope)
        statement = verify_envelope(envelope, pem, predicate_type=OWNERSHIP_AUDIT_PREDICATE)
        verified &= statement["predicate"]["decision"] == evidence["verdict"]
        results[name] = evidence
    agreement = float(np.mean(copy.predict(x_test) == victim.predict(x_test)))
    c, i = results["copy"], results["independent"]
    console.print(
        f"[bold]{thief}[/] (Knockoff, {answered} answered queries) copy agrees with the victim on "
        f"{agreement:.1%}; api_watermark on {len(logged.tags)} logged rows: [bold]{c['verdict']}[/] "
        f"(p = {c['p_value']:.2g}, α = {c['alpha']:g}) after {c['queries_used']} queries to the copy"
    )
    console.print(
        f"independent model: {i['verdict']} (p = {i['p_value']:.2g}); "
        f"signed reports verified: {'yes' if verified else 'NO'}"
    )
    return StoryResult(agreement, c["verdict"], c["p_value"], c["queries_used"], i["verdict"], i["p_value"], verified)


class _Scaled:
    """The independent model sees pixels in [0, 1], as the owner's pipeline does."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.coefs_, self.intercepts_ = model.coefs_, model.intercepts_

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.asarray(x) / 16.0))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(np.asarray(x) / 16.0))


def _digest(model: Any) -> str:
    """A stable digest of an in-process model's parameters (the report's suspect subject)."""
    buf = io.BytesIO()
    if hasattr(model, "net"):
        for t in model.net.state_dict().values():
            buf.write(t.detach().cpu().numpy().tobytes())
    else:
        for w in getattr(model, "coefs_", []) + getattr(model, "intercepts_", []):
            buf.write(np.asarray(w).tobytes())
    return hashlib.sha256(buf.getvalue()).hexdigest()

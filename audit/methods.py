"""Audit methods as plain functions: a suspect and a protected model in, an evidence dict out; and the report.

Every method has the same shape (docs/design.md, habit 5): ``run_<method>_audit(suspect, protected, params, progress)``
returns a JSON-ready evidence dict whose top level always carries

- ``verdict``: the report's decision word, one of ``audit.report.DECISIONS`` (claim / no-claim /
  inconclusive), next to the method's own ``decision`` wording;
- ``p_value``, ``alpha``, ``test`` (the test's name), ``null_hypothesis``, ``queries_used``.

``normalise_params`` validates a method's parameters and fills in the defaults before an audit is queued,
so ``{}`` and ``{"alpha": 0.05}`` are the same request (and de-duplicate to the same audit). ``build_audit_report``
turns evidence into the report that gets signed. Nothing here imports Celery or FastAPI.

Verdicts. Watermark: *claim* when the always-valid p-value fell below α; *inconclusive* when the audit could
not have claimed even if every answer had been the target class (the queries allowed were too few for the
null bound, so "no claim" would state a power the audit did not have); *no-claim* otherwise. Dataset
inference: the method's own three-way decision (claim when the calibrated p-value is below α, inconclusive
when the null calibration is too weak to rely on), mapped word for word.

``dataset_inference_mingd`` is dataset inference with the white-box MinGD embedding (``audit.mingd``) against
the registration's MinGD artifacts: a separate method rather than a parameter, because a registration has it
only when the protected model is a torch module (``ProtectedModel.methods``), the API checks a submission's
method against that list, and the audit's identity (de-duplication) then names it. It sends no queries, so it
takes no ``budget``; the suspect must be a safetensors file with a registered architecture
(``white_box_refusal`` says why not, before an audit is queued).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from audit.boundary_watermark import CLAIMED as BOUNDARY_CLAIMED
from audit.boundary_watermark import BoundaryKey
from audit.configs import Progress
from audit.mingd import WHITE_BOX_NEEDED
from audit.protected import ProtectedModel, progress_fraction
from audit.report import DECISIONS, build_report, jsonable
from audit.self_test import apply_self_test
from audit.suspects.base import Suspect
from audit.watermark import CLAIMED, WatermarkVerifier, log_wealth

METHODS = ("watermark", "dataset_inference", "dataset_inference_mingd", "api_watermark")
# Methods that need nothing from the registration beyond the model and reference data: ``api_watermark`` tests
# for the deployment's answer-watermark key (``audit.api_watermark``), which every registration can use.
REGISTRATION_FREE_METHODS = ("api_watermark",)
WHITE_BOX_METHODS = ("dataset_inference_mingd",)

# Defaults, each with its reason: α 0.05 is EWE's "95% confidence"; 100 queries EWE's "< 100 queries";
# batch 1 stops at the first sufficient answer; the mixture test needs no guessed alternative rate.
WATERMARK_DEFAULTS: dict[str, Any] = {
    "alpha": 0.05,
    "max_queries": 100,
    "test": "mixture",
    "alternative_rate": None,
    "batch_size": 1,
    "seed": 0,
    "budget": None,
}
# m None: the method's own default sample size; α 0.05 as above.
DATASET_INFERENCE_DEFAULTS: dict[str, Any] = {"m": None, "alpha": 0.05, "budget": None}
# MinGD sends no queries: no budget.
DATASET_INFERENCE_MINGD_DEFAULTS: dict[str, Any] = {"m": None, "alpha": 0.05}
_DEFAULTS = {
    "watermark": WATERMARK_DEFAULTS,
    "dataset_inference": DATASET_INFERENCE_DEFAULTS,
    "dataset_inference_mingd": DATASET_INFERENCE_MINGD_DEFAULTS,
}


def normalise_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters with defaults filled in; ValueError on an unknown method, key or value."""
    if method not in METHODS:
        raise ValueError(f"unknown audit method {method!r}; one of {METHODS}")
    if method == "api_watermark":
        from audit.api_watermark import validate_params

        return validate_params(params)
    defaults = _DEFAULTS[method]
    params = dict(params or {})
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {method} parameters {sorted(unknown)}; allowed: {sorted(defaults)}")
    out = {**defaults, **params}
    budget = out.get("budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise ValueError("budget must be a positive integer (queries) or null")
    if not isinstance(out["alpha"], int | float) or not 0.0 < float(out["alpha"]) < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    out["alpha"] = float(out["alpha"])
    if method == "watermark":
        _verifier(out)  # the verifier validates the rest and names what is wrong
    elif out["m"] is not None and (not isinstance(out["m"], int) or out["m"] < 2):
        raise ValueError("m must be an integer >= 2 or null")
    return out


def white_box_refusal(method: str, suspect_format: str | None) -> str | None:
    """Why ``method`` cannot audit a suspect of ``suspect_format`` (None: an endpoint), or None when it can.

    MinGD reads gradients, so it needs the suspect in process as a torch module: a safetensors file with a
    registered architecture. ONNX, skops, sandboxed pickles and endpoints answer queries only.
    """
    if method in WHITE_BOX_METHODS and suspect_format != "safetensors":
        return f"{WHITE_BOX_NEEDED} (got {suspect_format or 'an endpoint'})"
    return None


def _verifier(params: Mapping[str, Any]) -> WatermarkVerifier:
    try:
        return WatermarkVerifier(
            alpha=params["alpha"],
            max_queries=int(params["max_queries"]),
            test=params["test"],
            alternative_rate=params["alternative_rate"],
            batch_size=int(params["batch_size"]),
            seed=int(params["seed"]),
        )
    except (TypeError, KeyError) as exc:
        raise ValueError(f"bad watermark parameters: {exc}") from None


class _ProgressSuspect(Suspect):
    """Passes queries through to ``inner`` and reports queries used / ``expected`` after each call."""

    def __init__(self, inner: Suspect, expected: int, progress: Progress, budget: int | None) -> None:
        super().__init__(budget=budget, identity=inner.identity)
        self.inner = inner
        self.expected = max(1, expected)
        self.progress = progress

    @property
    def has_probabilities(self) -> bool:
        return self.inner.has_probabilities

    def _labels(self, x: np.ndarray) -> np.ndarray:
        out = self.inner.labels(x)
        self.progress(min(0.99, (self.queries_used) / self.expected), f"{self.queries_used} queries")
        return out

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        out = self.inner.probabilities(x)
        assert out is not None
        self.progress(min(0.99, self.queries_used / self.expected), f"{self.queries_used} queries")
        return out


def run_watermark_audit(
    suspect: Suspect, protected: ProtectedModel, params: Mapping[str, Any], progress: Progress | None = None
) -> dict[str, Any]:
    """The EWE watermark test (``audit.watermark``) with the registration's key and null calibration."""
    params = normalise_params("watermark", params)
    key = protected.watermark_key()
    if isinstance(key, BoundaryKey):
        return _run_boundary_audit(suspect, protected, key, params, progress)
    null = protected.watermark_null()
    if key is None or null is None:
        raise ValueError(f"protected model {protected.id} was registered without a watermark key")
    verifier = _verifier(params)
    limit = min(verifier.max_queries, len(null.test_inputs(key)), params["budget"] or math.inf)
    wrapped = _ProgressSuspect(suspect, int(limit), progress or (lambda f, m: None), params["budget"])
    evidence = verifier.run(wrapped, key, null).to_dict()
    p0 = float(evidence["null_rate_bound"])
    # The best the audit could have done: every one of its allowed queries answered with the target class.
    achievable = p0 < 1.0 and float(
        log_wealth(int(limit), int(limit), p0, verifier.test, verifier.alternative_rate)
    ) >= math.log(1.0 / verifier.alpha)
    if evidence["decision"] == CLAIMED:
        verdict = "claim"
    else:
        verdict = "no-claim" if achievable else "inconclusive"
    if not achievable and p0 < 1.0:  # (a bound of 1: the verifier's note says why no query was made)
        evidence["notes"].append(
            f"even {int(limit)} target answers in {int(limit)} queries could not reach p < {verifier.alpha} against "
            f"the null bound {p0:.4g}: allow more queries or calibrate a tighter null"
        )
    evidence.update(
        verdict=verdict,
        null_hypothesis=evidence["null_hypothesis"],
        test_name=evidence["test"],
        claim_achievable=achievable,
        parameters=params,
    )
    return dict(jsonable(apply_self_test(evidence, protected.self_test("watermark"))))


def _run_boundary_audit(
    suspect: Suspect,
    protected: ProtectedModel,
    key: BoundaryKey,
    params: Mapping[str, Any],
    progress: Progress | None,
) -> dict[str, Any]:
    """The boundary watermark test (``audit.boundary_watermark``): every probe of the key is queried (the test
    has a fixed size; EWE's ``max_queries``, ``test``, ``alternative_rate`` and ``batch_size`` do not apply), or
    as many as ``budget`` allows."""
    from audit.boundary_watermark import N_WRONG_KEYS, verify_boundary_watermark

    baseline = protected.boundary_baseline()
    if baseline is None:
        raise ValueError(f"protected model {protected.id} has no baseline for its boundary watermark key")
    n = min(len(key.probes), params["budget"] or len(key.probes))
    wrapped = _ProgressSuspect(suspect, n, progress or (lambda f, m: None), params["budget"])
    evidence = verify_boundary_watermark(
        wrapped,
        key,
        baseline,
        alpha=params["alpha"],
        baseline_description="the registration's null models",
        probability_baseline=protected.boundary_probability_baseline(),
        statistic=protected.boundary_statistic(),
    ).to_dict()
    # "no-claim" only for the test the self-test measured: every probe answered, a p-value floor below α. A budget
    # that cut the probes short leaves a weaker test: inconclusive unless it claimed anyway.
    achievable = 1.0 / (N_WRONG_KEYS + 1) < params["alpha"] and evidence["probes_answered"] == len(key.probes)
    if evidence["decision"] == BOUNDARY_CLAIMED:
        verdict = "claim"
    else:
        verdict = "no-claim" if achievable else "inconclusive"
    evidence.update(
        verdict=verdict,
        test_name=evidence["test"],
        claim_achievable=achievable,
        # the audit's α and budget, and the test's own (wrong keys, their seed); EWE's sequential parameters
        # (max_queries, test, alternative_rate, batch_size, seed) do not apply to this fixed-size test
        parameters={"alpha": params["alpha"], "budget": params["budget"], **evidence["parameters"]},
    )
    return dict(jsonable(apply_self_test(evidence, protected.self_test("watermark"))))


def run_dataset_inference_audit(
    suspect: Suspect, protected: ProtectedModel, params: Mapping[str, Any], progress: Progress | None = None
) -> dict[str, Any]:
    """Blind-Walk dataset inference (``audit.dataset_inference``) against the registration's artifacts."""
    return _run_dataset_inference(suspect, protected, params, progress, "blind_walk")


def run_dataset_inference_mingd_audit(
    suspect: Suspect, protected: ProtectedModel, params: Mapping[str, Any], progress: Progress | None = None
) -> dict[str, Any]:
    """MinGD (white-box) dataset inference against the registration's MinGD artifacts; ValueError when the
    suspect is not a torch module."""
    return _run_dataset_inference(suspect, protected, params, progress, "mingd")


def _run_dataset_inference(
    suspect: Suspect, protected: ProtectedModel, params: Mapping[str, Any], progress: Progress | None, embedding: str
) -> dict[str, Any]:
    from audit.protected import dataset_inference_module

    method = "dataset_inference_mingd" if embedding == "mingd" else "dataset_inference"
    params = normalise_params(method, params)
    di = dataset_inference_module()
    artifacts = protected.dataset_inference_artifacts(embedding)  # ValueError with the reason when unavailable
    assert di is not None
    report = progress or (lambda f, m: None)
    if params.get("budget") is not None:
        suspect.budget = params["budget"] if suspect.budget is None else min(suspect.budget, params["budget"])

    def di_progress(*args: Any) -> None:
        report(min(0.99, progress_fraction(args)), "dataset inference")

    evidence_obj = di.run_dataset_inference(
        suspect, artifacts, m=params["m"], alpha=params["alpha"], progress=di_progress
    )
    evidence = dict(jsonable(evidence_obj.to_dict()))
    decision = str(evidence_obj.decision)
    evidence.setdefault("decision", decision)
    evidence["verdict"] = dataset_inference_verdict(decision)
    evidence["p_value"] = _probability(getattr(evidence_obj, "p_value", evidence.get("p_value")))
    evidence["queries_used"] = int(getattr(evidence_obj, "queries_used", suspect.queries_used))
    evidence.setdefault("alpha", params["alpha"])
    name = "MinGD, white-box" if embedding == "mingd" else "Blind Walk"
    default_test = f"dataset inference ({name}), calibrated on null models"
    evidence.setdefault("test_name", evidence.get("test") or default_test)
    evidence.setdefault("null_hypothesis", "the suspect did not learn from the owner's private samples")
    evidence["parameters"] = {**params, **(evidence.get("parameters") or {})}
    return apply_self_test(evidence, protected.self_test(method))


_DI_VERDICTS = {"claimed": "claim", "not claimed": "no-claim", "inconclusive": "inconclusive"}


def dataset_inference_verdict(decision: str) -> str:
    """The dataset-inference module's decision word as a report verdict (an unknown word is never a claim)."""
    if decision in _DI_VERDICTS:
        return _DI_VERDICTS[decision]
    word = decision.strip().lower().replace("_", "-").replace(" ", "-")
    if word in DECISIONS:
        return word
    if "inconclusive" in word:
        return "inconclusive"
    if word.startswith(("no-", "not-")) or "not" in word.split("-"):
        return "no-claim"
    if "claim" in word or word in ("stolen", "derived", "positive"):
        return "claim"
    return "inconclusive"  # an unknown word is never read as a claim


def _probability(value: Any) -> float | None:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, p)) if math.isfinite(p) else None


def run_api_watermark_audit(
    suspect: Suspect,
    protected: ProtectedModel,
    params: Mapping[str, Any],
    progress: Progress | None = None,
    **context: Any,
) -> dict[str, Any]:
    """The answer-watermark test (``audit.api_watermark``). ``context`` (the worker builds it from the deployment):
    ``mark`` (the deployment's ``AnswerWatermark``), ``logged`` (the suspected clients' query-log rows), ``reference``
    (the registration's reference inputs) and ``owner`` (the protected model, for the baseline)."""
    from audit.api_watermark import run_api_watermark

    if context.get("mark") is None:
        raise ValueError("api_watermark needs the deployment's answer-watermark key (run it on a worker)")
    evidence = run_api_watermark(
        suspect,
        context["mark"],
        params,
        logged=context.get("logged"),
        reference=context.get("reference"),
        owner=context.get("owner"),
        progress=progress,
    )
    return dict(jsonable(evidence))


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "watermark": run_watermark_audit,
    "dataset_inference": run_dataset_inference_audit,
    "dataset_inference_mingd": run_dataset_inference_mingd_audit,
    "api_watermark": run_api_watermark_audit,
}


def run_audit(
    method: str,
    suspect: Suspect,
    protected: ProtectedModel,
    params: Mapping[str, Any],
    progress: Progress | None = None,
    **context: Any,
) -> dict[str, Any]:
    if method not in RUNNERS:
        raise ValueError(f"unknown audit method {method!r}; one of {METHODS}")
    # every method, present and future: a low-power method never answers no-claim (audit.self_test)
    report = RUNNERS[method](suspect, protected, params, progress, **context)
    return apply_self_test(report, protected.self_test(method))


_SKIP_IN_STATISTICS = {
    "parameters",
    "suspect",
    "trajectory",
    "notes",
    "verdict",
    "decision",
    "p_value",
    "alpha",
    "test",
    "test_name",
    "null_hypothesis",
    "queries_used",
    "plots",
    "self_test",
    "power_note",
}


def build_audit_report(
    *,
    audit_id: str,
    method: str,
    evidence: Mapping[str, Any],
    suspect_identity: Mapping[str, Any],
    protected: ProtectedModel,
    started_at: datetime,
    finished_at: datetime,
    submitted_at: datetime | None = None,
    attempts: int = 1,
) -> dict[str, Any]:
    """The report dict for ``audit.signing.sign_statement``: the evidence, the registration it relied on."""
    params = dict(evidence.get("parameters") or {})
    seeds = {k: v for k, v in params.items() if k.endswith("seed")} or None
    plots: list[dict[str, Any]] = []
    if evidence.get("trajectory"):
        points = evidence["trajectory"]
        plots.append(
            {
                "kind": "line",
                "x": [q for q, _ in points],
                "y": [p for _, p in points],
                "log_y": True,
                "hlines": [evidence.get("alpha")],
                "title": "Always-valid p-value after each query (dashed: α)",
                "x_label": "queries",
                "y_label": "p-value",
            }
        )
    plots.extend(dict(p) for p in evidence.get("plots") or [] if isinstance(p, Mapping))
    statistics = {k: v for k, v in evidence.items() if k not in _SKIP_IN_STATISTICS}
    alpha = evidence.get("alpha")
    report = build_report(
        suspect=suspect_identity,
        method=method,
        parameters=params,
        seeds=seeds,
        queries_used=int(evidence.get("queries_used") or 0),
        statistics=statistics,
        p_value=_probability(evidence.get("p_value")),
        test_name=str(evidence.get("test_name") or evidence.get("test") or method),
        alpha=float(alpha) if isinstance(alpha, int | float) else None,
        decision=str(evidence["verdict"]),
        started_at=started_at,
        finished_at=finished_at,
        protected_model_digest=protected.digest,
        query_budget=params.get("budget"),
        null_hypothesis=str(evidence.get("null_hypothesis") or "") or None,
        plots=plots,
        extra={
            "audit_id": audit_id,
            "method_decision": evidence.get("decision"),
            "attempts": attempts,
            "submitted_at": submitted_at,
            "notes": list(evidence.get("notes") or []),
        },
    )
    # The registration, with its time, so the report shows the evidence was committed before this audit.
    summary = protected.summary()
    reference = report["extra"]["submitted_at"] or report["started_at"]
    summary["registered_before_audit"] = summary["registered_at"] <= reference  # same RFC 3339 format: sortable
    report["protected_model"] = summary
    if evidence.get("self_test"):  # the method's power, measured at registration: the report quotes it
        report["self_test"] = dict(jsonable(evidence["self_test"]))
    return report

"""A report in plain words, for a reader who is not a statistician (a lawyer, a judge, a manager).

Both renderings use it, in this order: the HTML page (``audit.report.render_html``) and the PDF for filing
(``audit.report_pdf``):

1. **the verdict** in one sentence that says what it means and what it does not;
2. **what was tested**: the method, described by what was done to the suspect;
3. **the method's power**: the self-test made at registration (``audit.self_test``), the p-values it gave on the
   protected model and on copies made from it, so the reader can weigh a "no claim";
4. **the evidence** as a figure (the report's plots);
5. the raw statistics, below, for an expert.

Everything here is computed from the signed report dict; nothing is added that the signature does not cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_METHOD_NAMES = {
    "watermark": "Watermark test (entangled watermark, EWE)",
    "dataset_inference": "Dataset inference (black-box, Blind Walk)",
    "dataset_inference_mingd": "Dataset inference (white-box, MinGD)",
}


def _p(value: Any) -> str:
    return f"{float(value):.3g}" if isinstance(value, int | float) else "not available"


# Methods whose calibration rests on an assumption a reader should know of: a claim by one of them says so in its
# verdict, with the false-claim rate measured on data not used to design it (figures and runs in
# docs/benchmarks.md, the world benchmark's "An allowance for another party's data").
CALIBRATION_CAVEATS = {
    "dataset_inference": (
        "Note: this method's calibration allows for the difference between the owner's reference data and another "
        "party's data by an amount measured on the project's own benchmark; with that allowance it falsely claimed "
        "1 of 320 independent models at α = 0.05 on data not used in its design (without it, 27 of 320 on other "
        "such data), so the stated confidence holds for data that differ from the owner's as much as there."
    ),
    # EWE's trigger watermark (statistics.method "ewe-watermark"), keyed by method and the evidence's method
    "watermark:ewe-watermark": (
        "Caution: this test's null rate is estimated from models trained on the owner's reference data; on the "
        "project's own MNIST benchmark, in registrations not used in its design, it falsely claimed 9 of 80 "
        "independent models trained on other data at α = 0.05 (up to 6 of 20 in one registration; none on the "
        "digits benchmark), so this claim is evidence to weigh, strongest where the suspect's likely training data "
        "resemble the reference data."
    ),
}


def _caveat(report: Mapping[str, Any]) -> str:
    method = str(report.get("method", ""))
    inner = str((report.get("statistics") or {}).get("method", ""))
    return CALIBRATION_CAVEATS.get(f"{method}:{inner}") or CALIBRATION_CAVEATS.get(method, "")


def verdict_sentence(report: Mapping[str, Any]) -> str:
    """The verdict in plain words, with what it does not say."""
    decision = report.get("decision")
    p, alpha = report.get("p_value"), (report.get("test") or {}).get("alpha")
    level = f"{(1 - float(alpha)) * 100:.0f} %" if isinstance(alpha, int | float) else "the stated"
    if decision == "claim":
        caveat = _caveat(report)
        return (
            f"The evidence supports the claim that the suspect model was derived from the protected model. The "
            f"test found evidence at {level} "
            f"confidence (p = {_p(p)}, below the threshold α = {alpha}): a model that was not derived from the "
            f"protected model would produce evidence this strong less than {(float(alpha or 0)) * 100:g} % of the "
            "time." + (f" {caveat}" if caveat else "")
        )
    if decision == "no-claim":
        return (
            f"No evidence was found that the suspect model was derived from the protected model (p = {_p(p)}). "
            "This method had power at registration (it recognised the protected model and copies made from it), "
            "so the absence of a claim is meaningful; it is not proof of independence, since a copy made with "
            "more effort than those copies may escape the test."
        )
    reason = str(report.get("statistics", {}).get("reason") or "")
    power = report.get("self_test") or {}
    why = (
        "this method could not recognise the protected model or copies made from it at registration (see "
        "'Power of the method'), so its silence says nothing"
        if power and power.get("power") != "powered"
        else reason or "the evidence is too weak or too borderline to decide"
    )
    return (
        "Inconclusive: this audit neither supports nor rules out that the suspect model was derived from the "
        f"protected model, because {why}. It must not be read as evidence of independence."
    )


def what_was_tested(report: Mapping[str, Any]) -> str:
    method = str(report.get("method", ""))
    stats = report.get("statistics") or {}
    queries = (report.get("queries") or {}).get("used")
    if method == "watermark" and stats.get("method") == "boundary-watermark":
        return (
            f"The owner trained the protected model so that, close to its decision boundaries, its answers lean "
            f"towards one class or the other along secret stripes of input space (a keyed pattern). We sent the "
            f"suspect {queries} inputs near those boundaries, chosen before and without the secret, and measured "
            "how well its answers follow the owner's stripes"
            + (
                " (read from the probabilities it returned: how far each answer leans, not only which class wins)"
                if stats.get("answers") == "probabilities"
                else ""
            )
            + (
                ", once what independently trained models and the protected model before marking already answer "
                "there is taken out"
                if (stats.get("parameters") or {}).get("statistic") == "residual"
                else ""
            )
            + ", compared with "
            f"{stats.get('n_wrong_keys', 'many')} other stripe patterns drawn the same "
            "way. A model copied from the protected model inherits the lean; a model trained independently follows "
            "the owner's pattern no better than any of the others."
        )
    if method == "watermark":
        target = stats.get("target_class")
        return (
            f"The owner trained the protected model to answer class {target} on secret trigger inputs. We sent "
            f"the suspect {queries} of those inputs and counted how often it answered {target}. A model copied "
            "from the protected model tends to inherit that behaviour; models trained independently answer "
            f"{target} on them at most at the rate measured on independent reference models."
        )
    if method.startswith("dataset_inference"):
        m = stats.get("m")
        how = "label queries" if method == "dataset_inference" else "its weights (white-box)"
        return (
            f"A model keeps its answers stable further around the examples it was trained on. Using {how}, we "
            f"measured how far the suspect's answers hold around {m} of the owner's private training examples and "
            f"around {m} public examples of the same kind, and compared the difference with the same measurement "
            f"on {stats.get('n_null_models')} independent models trained on other data."
        )
    return f"The method {method!r} was run on the suspect ({queries} queries)."


def power_rows(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per self-test subject: who, what the method said, p-value, agreement with the protected model."""
    rows = []
    for s in (report.get("self_test") or {}).get("subjects") or []:
        agree = s.get("agreement_with_owner")
        rows.append(
            {
                "model tested at registration": str(s.get("description") or s.get("name")),
                "result": "claimed" if s.get("claimed") else "not claimed",
                "p-value": _p(s.get("p_value")),
                "agrees with the protected model": f"{float(agree) * 100:.1f} %" if agree is not None else "—",
            }
        )
    return rows


def power_sentence(report: Mapping[str, Any]) -> str:
    st = report.get("self_test")
    if not st:
        return (
            "This registration predates self-tests: the method's power on this protected model was not measured, "
            "so a 'no claim' from it should be weighed with care."
        )
    if st.get("power") == "powered":
        return "At registration the method recognised the protected model and every copy made from it: it has power."
    return (
        "At registration the method did not recognise every one of the protected model and the copies made from "
        "it: it is low-power for this model, and its audits never answer 'no claim'."
    )


def reader_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a plain-words rendering needs, in reading order."""
    method = str(report.get("method", ""))
    boundary = method == "watermark" and (report.get("statistics") or {}).get("method") == "boundary-watermark"
    name = "Watermark test (keyed boundary watermark)" if boundary else _METHOD_NAMES.get(method, method)
    return {
        "title": f"Ownership audit: {name}",
        "decision": str(report.get("decision", "inconclusive")),
        "verdict": verdict_sentence(report),
        "what_was_tested": what_was_tested(report),
        "power": power_sentence(report),
        "power_rows": power_rows(report),
        "suspect": (report.get("suspect") or {}).get("url")
        or (report.get("suspect") or {}).get("sha256")
        or (report.get("suspect") or {}).get("name")
        or "—",
        "protected_model": (report.get("protected_model") or {}).get("name")
        or (report.get("protected_model") or {}).get("registration_sha256")
        or "—",
    }

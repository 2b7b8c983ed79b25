"""Ownership-audit reports: the JSON that gets signed, its in-toto subjects, and a self-contained HTML page.

The fields follow docs/research.md "Audit: report contents" and docs/design.md "Reports": the suspect's identity
(file SHA-256 or
endpoint URL), the protected model's registration digest, the method with its parameters and seeds, the
queries spent, the statistics, the p-value with the test that produced it and α, the decision in words,
the software version and RFC 3339 UTC timestamps. The report is the ``predicate`` of an in-toto Statement
(``audit.signing``); ``report_subjects`` names what the statement is about.

The HTML page has no external assets (no scripts, fonts, styles or images fetched from anywhere): plots are
inline SVG drawn here from lists of numbers in ``report["plots"]``, and every piece of text from the report
goes through ``html.escape`` because suspect names, URLs and parameters can come from an adversary.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from audit.provenance import SOFTWARE_VERSION as __version__
from audit.signing import OWNERSHIP_AUDIT_PREDICATE, canonical_json

DECISIONS = ("claim", "no-claim", "inconclusive")

_DECISION_WORDS = {
    "claim": "The evidence supports the claim: the suspect model is derived from the protected model.",
    "no-claim": "The evidence does not support the claim that the suspect model is derived from the protected model.",
    "inconclusive": "The audit is inconclusive: the evidence neither supports nor rules out the claim.",
}


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and millisecond precision. Naive datetimes are refused (ambiguous)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples and non-finite floats.

    NaN and ±Infinity are not JSON, so they become the strings ``"nan"``, ``"inf"``, ``"-inf"``: a report
    must still say that a statistic was infinite rather than drop it.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, bytes | bytearray):
        raise TypeError("bytes cannot go in a report as such; put their hex digest or base64 in it")
    if hasattr(value, "tolist") and not isinstance(value, int | float):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Sequence | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return rfc3339(value)
    raise TypeError(f"cannot put a {type(value).__name__} in a report")


def decision_in_words(decision: str, p_value: float | None, alpha: float | None, test_name: str) -> str:
    words = _DECISION_WORDS[decision]
    if p_value is None or alpha is None:
        return words
    relation = "<" if p_value < alpha else "≥"
    return f"{words} {test_name}: p = {p_value:.6g} {relation} α = {alpha:g}."


def build_report(
    *,
    suspect: Mapping[str, Any],
    method: str,
    parameters: Mapping[str, Any],
    seeds: Mapping[str, Any] | Sequence[int] | int | None,
    queries_used: int,
    statistics: Mapping[str, Any],
    p_value: float | None,
    test_name: str,
    alpha: float | None,
    decision: str,
    started_at: datetime,
    finished_at: datetime,
    protected_model_digest: str | None = None,
    decision_text: str | None = None,
    query_budget: int | None = None,
    null_hypothesis: str | None = None,
    plots: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict (JSON-ready, canonicalisable). ``decision`` is one of ``DECISIONS``.

    ``suspect`` is the suspect's identity (``Suspect.identity``); ``protected_model_digest`` the SHA-256 of
    the protected model's registration. ``decision_text`` defaults to a sentence built from the decision,
    the p-value, α and the test name.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if queries_used < 0:
        raise ValueError("queries_used must be non-negative")
    if p_value is not None and not (0.0 <= p_value <= 1.0):
        raise ValueError(f"p_value must lie in [0, 1], got {p_value}")
    if protected_model_digest is not None and not _is_sha256(protected_model_digest):
        raise ValueError("protected_model_digest must be a lowercase hex SHA-256")
    started, finished = rfc3339(started_at), rfc3339(finished_at)  # refuses naive datetimes first
    if finished_at < started_at:
        raise ValueError("finished_at is before started_at")
    report: dict[str, Any] = {
        "schema": OWNERSHIP_AUDIT_PREDICATE,
        "suspect": jsonable(dict(suspect)),
        "protected_model": {"registration_sha256": protected_model_digest} if protected_model_digest else None,
        "method": method,
        "parameters": jsonable(parameters),
        "seeds": jsonable(seeds),
        "queries": {"used": int(queries_used), "budget": query_budget},
        "test": {"name": test_name, "null_hypothesis": null_hypothesis, "alpha": jsonable(alpha)},
        "statistics": jsonable(statistics),
        "p_value": jsonable(p_value),
        "decision": decision,
        "decision_text": decision_text or decision_in_words(decision, p_value, alpha, test_name),
        "software": {"name": "modelcustody", "version": __version__},
        "started_at": started,
        "finished_at": finished,
        "plots": [jsonable(p) for p in plots],
    }
    if extra:
        report["extra"] = jsonable(extra)
    canonical_json(report)  # fails now, not at signing time, if something is not JSON
    return report


def report_subjects(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The in-toto subjects of a report: the suspect and the protected model.

    A file suspect's subject is its SHA-256. An endpoint has no bytes to hash, so its subject is the
    SHA-256 of the canonical JSON of its identity (URL, protocol, model name) — in-toto requires a digest
    on every subject, and this one changes whenever the named endpoint does.
    """
    suspect = report["suspect"]
    if suspect.get("kind") == "file" and _is_sha256(suspect.get("sha256")):
        subjects = [{"name": f"suspect:{suspect.get('format', 'file')}", "digest": {"sha256": suspect["sha256"]}}]
    else:
        digest = hashlib.sha256(canonical_json(suspect)).hexdigest()
        name = f"suspect-endpoint:{suspect['url']}" if suspect.get("url") else "suspect"
        subjects = [{"name": name, "digest": {"sha256": digest}}]
    protected = report.get("protected_model") or {}
    if protected.get("registration_sha256"):
        subjects.append({"name": "protected-model", "digest": {"sha256": protected["registration_sha256"]}})
    return subjects


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# --- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;
vertical-align:top}th{background:#f5f5f5;width:30%}pre{margin:0;white-space:pre-wrap;word-break:break-all}
.decision{padding:1rem;border-radius:.4rem;font-weight:600}.claim{background:#fde2e1}.no-claim{background:#e3f4e1}
.inconclusive{background:#fff4cf}table.power th{width:auto}figure{margin:1rem 0}figcaption{font-size:.9rem;color:#555}
"""

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 560, 260, 60, 20, 30, 40


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"<pre>{_e(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))}</pre>"
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    return _e("—" if value is None else value)


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def render_html(report: Mapping[str, Any], *, signature: Mapping[str, Any] | None = None) -> str:
    """A self-contained HTML page for a report. ``signature`` (e.g. {"keyid": ..., "envelope_sha256": ...})
    is shown in a section of its own; the page itself is not the signed artefact, the envelope is.
    """
    decision = str(report.get("decision", "inconclusive"))
    css_class = decision if decision in DECISIONS else "inconclusive"
    test = report.get("test") or {}
    queries = report.get("queries") or {}
    from audit.report_reader import reader_summary

    reader = reader_summary(report)
    plots = report.get("plots") or []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No external fetches even if an escaped string were somehow interpreted: the CSP forbids them.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>Ownership audit: {_e(report.get('method', ''))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(reader['title'])}</h1>",
        # In reading order for a non-statistician: verdict, what was tested, power, evidence; raw numbers below.
        f'<p class="decision {css_class}">Verdict: {_e(decision)}. {_e(reader["verdict"])}</p>',
        "<h2>What was tested</h2>",
        f"<p>{_e(reader['what_was_tested'])}</p>",
        _table({"suspect": reader["suspect"], "protected model": reader["protected_model"]}),
        "<h2>Power of the method</h2>",
        f"<p>{_e(reader['power'])}</p>",
    ]
    if reader["power_rows"]:
        head = "".join(f"<th>{_e(k)}</th>" for k in reader["power_rows"][0])
        cells = ("".join(f"<td>{_e(v)}</td>" for v in r.values()) for r in reader["power_rows"])
        body = "".join(f"<tr>{c}</tr>" for c in cells)
        parts.append(f'<table class="power"><tr>{head}</tr>{body}</table>')
    if plots:
        parts.append("<h2>The evidence</h2>")
        parts.extend(render_plot(plot) for plot in plots)
    parts += [
        "<h2>Details for an expert</h2>",
        f"<p>Decision: {_e(decision)}. {_e(report.get('decision_text', ''))}</p>",
        "<h2>Suspect</h2>",
        _table(report.get("suspect") or {}),
        "<h2>Protected model</h2>",
        _table(report.get("protected_model") or {"registration_sha256": None}),
        "<h2>Test</h2>",
        _table(
            {
                "test": test.get("name"),
                "null hypothesis": test.get("null_hypothesis"),
                "α": test.get("alpha"),
                "p-value": report.get("p_value"),
                "queries used": queries.get("used"),
                "query budget": queries.get("budget"),
            }
        ),
        "<h2>Statistics</h2>",
        _table(report.get("statistics") or {}),
        "<h2>Method parameters and seeds</h2>",
        _table({**(report.get("parameters") or {}), "seeds": report.get("seeds")}),
    ]
    if report.get("self_test"):
        parts += ["<h2>Self-test at registration (raw)</h2>", _table(report["self_test"])]
    parts += [
        "<h2>Provenance</h2>",
        _table(
            {
                "software": report.get("software"),
                "started": report.get("started_at"),
                "finished": report.get("finished_at"),
                "schema": report.get("schema"),
            }
        ),
    ]
    if report.get("extra"):
        parts += ["<h2>Further details</h2>", _table(report["extra"])]
    if signature:
        parts += ["<h2>Signature</h2>", _table(signature)]
    parts.append("</body></html>")
    return "\n".join(parts)


def render_plot(plot: Mapping[str, Any]) -> str:
    """One ``<figure>`` with inline SVG: ``{"kind": "histograms", "series": {name: [numbers]}}`` or
    ``{"kind": "line", "x": [...], "y": [...], "log_y": bool, "hlines": [numbers]}``; optional
    ``title``, ``x_label``, ``y_label``. A plot that cannot be drawn says so instead of failing the page.
    """
    kind = plot.get("kind")
    try:
        if kind == "histograms":
            svg = _histograms_svg(plot)
        elif kind == "line":
            svg = _line_svg(plot)
        else:
            svg = f"<p>(unknown plot kind {_e(kind)})</p>"
    except (TypeError, ValueError) as exc:
        svg = f"<p>(plot could not be drawn: {_e(exc)})</p>"
    caption = f"<figcaption>{_e(plot.get('title', ''))}</figcaption>" if plot.get("title") else ""
    return f"<figure>{svg}{caption}</figure>"


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _axes(x_lo: str, x_hi: str, y_lo: str, y_hi: str, x_label: str, y_label: str) -> str:
    x0, x1, y0, y1 = _PAD_L, _W - _PAD_R, _PAD_T, _H - _PAD_B
    return (
        f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#333"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>'
        f'<text x="{x0}" y="{y1 + 15}" font-size="11">{_e(x_lo)}</text>'
        f'<text x="{x1}" y="{y1 + 15}" font-size="11" text-anchor="end">{_e(x_hi)}</text>'
        f'<text x="{x0 - 4}" y="{y1}" font-size="11" text-anchor="end">{_e(y_lo)}</text>'
        f'<text x="{x0 - 4}" y="{y0 + 8}" font-size="11" text-anchor="end">{_e(y_hi)}</text>'
        f'<text x="{(x0 + x1) / 2}" y="{_H - 8}" font-size="12" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="14" y="{(y0 + y1) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y0 + y1) / 2})">{_e(y_label)}</text>'
    )


def _svg(body: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        f'role="img" aria-label="{_e(label)}">{body}</svg>'
    )


def _histograms_svg(plot: Mapping[str, Any]) -> str:
    series = {str(k): _finite(v) for k, v in dict(plot.get("series") or {}).items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        raise ValueError("no finite values")
    # 20 bins: enough shape for a few hundred scores, few enough that each bar still holds several.
    n_bins = int(plot.get("bins", 20))
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / n_bins
    # Densities (fraction per bin) so series of different sizes compare.
    hists = {}
    for name, values in series.items():
        counts = [0] * n_bins
        for v in values:
            counts[min(int((v - lo) / width), n_bins - 1)] += 1
        hists[name] = [c / len(values) for c in counts]
    top = max(max(h) for h in hists.values()) or 1.0
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    bar_w = plot_w / n_bins
    body = []
    for i, (name, fractions) in enumerate(hists.items()):
        color = _PALETTE[i % len(_PALETTE)]
        for b, frac in enumerate(fractions):
            if frac == 0:
                continue
            h = frac / top * plot_h
            body.append(
                f'<rect x="{_PAD_L + b * bar_w:.1f}" y="{_PAD_T + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{color}" fill-opacity="0.45" stroke="{color}"/>'
            )
        body.append(
            f'<text x="{_W - _PAD_R - 4}" y="{_PAD_T + 12 + 14 * i}" font-size="12" text-anchor="end" '
            f'fill="{color}">■ {_e(name)} (n={len(series[name])})</text>'
        )
    body.append(
        _axes(
            _fmt(lo), _fmt(hi), "0", _fmt(top), str(plot.get("x_label", "score")), str(plot.get("y_label", "fraction"))
        )
    )
    return _svg("".join(body), str(plot.get("title", "histograms")))


def _line_svg(plot: Mapping[str, Any]) -> str:
    xs_raw, ys_raw = list(plot.get("x") or []), list(plot.get("y") or [])
    if len(xs_raw) != len(ys_raw):
        raise ValueError("x and y differ in length")
    log_y = bool(plot.get("log_y", False))
    points = [
        (float(x), float(y))
        for x, y in zip(xs_raw, ys_raw, strict=True)
        if _finite([x]) and _finite([y]) and (not log_y or float(y) > 0)
    ]
    if not points:
        raise ValueError("no drawable points")
    hlines = [h for h in _finite(plot.get("hlines") or []) if not log_y or h > 0]

    def ty(v: float) -> float:
        return math.log10(v) if log_y else v

    xs = [p[0] for p in points]
    ys = [ty(p[1]) for p in points] + [ty(h) for h in hlines]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def px(x: float) -> float:
        return _PAD_L + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(v: float) -> float:
        return _PAD_T + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    coords = " ".join(f"{px(x):.1f},{py(ty(y)):.1f}" for x, y in points)
    body = [f'<polyline points="{coords}" fill="none" stroke="{_PALETTE[0]}" stroke-width="2"/>']
    body += [f'<circle cx="{px(x):.1f}" cy="{py(ty(y)):.1f}" r="2.5" fill="{_PALETTE[0]}"/>' for x, y in points]
    for h in hlines:
        y = py(ty(h))
        body.append(
            f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" stroke="{_PALETTE[1]}" '
            f'stroke-dasharray="4 3"/><text x="{_W - _PAD_R - 2}" y="{y - 3:.1f}" font-size="11" '
            f'text-anchor="end" fill="{_PALETTE[1]}">{_e(_fmt(h))}</text>'
        )

    def label(v: float) -> str:
        return _fmt(10**v) if log_y else _fmt(v)

    y_label = str(plot.get("y_label", "p-value")) + (" (log scale)" if log_y else "")
    body.append(_axes(_fmt(x_lo), _fmt(x_hi), label(y_lo), label(y_hi), str(plot.get("x_label", "queries")), y_label))
    return _svg("".join(body), str(plot.get("title", "line")))

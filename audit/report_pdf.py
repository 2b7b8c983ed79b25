"""The audit report as a PDF for filing: the plain-words summary (``audit.report_reader``), the evidence figure,
the raw statistics, and the signature details.

Library: fpdf2 (pure Python; its dependencies Pillow, fontTools and defusedxml install from wheels, no system
libraries). reportlab would do as well but is larger and needs its own C extension wheels; WeasyPrint would
reuse the HTML but needs Pango/Cairo from the system. Measured here: ``pip install fpdf2`` took ~6 s and a
two-page report renders in ~30 ms.

Fonts: DejaVu Sans when the system has it (Unicode: α, ≥, →), else the PDF core font Helvetica with the text
reduced to Latin-1 (α → "alpha"), so the PDF renders on a bare container too. Nothing is fetched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.report_reader import reader_summary

_DEJAVU = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
)
_LATIN1 = {"α": "alpha", "≥": ">=", "≤": "<=", "→": "->", "—": "-", "–": "-", "×": "x", "·": ".", "√": "sqrt",
           "Δ": "delta ", "μ": "mu", "ℓ": "l", "∞": "inf", "’": "'", "“": '"', "”": '"', "…": "..."}
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
_DECISION_FILL = {"claim": (253, 226, 225), "no-claim": (227, 244, 225), "inconclusive": (255, 244, 207)}


AUTO = "auto"


def render_pdf(
    report: Mapping[str, Any],
    *,
    signature: Mapping[str, Any] | None = None,
    font: Path | str | None = AUTO,
    compress: bool = True,
) -> bytes:
    """The PDF bytes of ``report`` (the signed report dict); ``signature`` as for ``render_html``.

    ``font``: a TrueType file, ``"auto"`` (DejaVu Sans when installed) or None (the core Helvetica font, Latin-1
    text). ``compress`` False leaves the page streams readable (tests search them for the verdict).
    """
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_compression(compress)
    pdf.set_auto_page_break(auto=True, margin=15)
    if font == AUTO:
        font = next((p for p in _DEJAVU if p.is_file()), None)
    font = Path(font) if font is not None else None
    if font is not None:
        pdf.add_font("body", "", str(font))
        bold = font.with_name("DejaVuSans-Bold.ttf")
        pdf.add_font("body", "B", str(bold if bold.is_file() else font))
        family = "body"

        def text(s: Any) -> str:
            return str(s)
    else:
        family = "helvetica"

        def text(s: Any) -> str:
            out = str(s)
            for k, v in _LATIN1.items():
                out = out.replace(k, v)
            return out.encode("latin-1", "replace").decode("latin-1")

    reader = reader_summary(report)
    pdf.set_title(text(f"{reader['title']}: {reader['decision']}"))
    pdf.set_creator("modelcustody")
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def heading(s: str) -> None:
        pdf.ln(3)
        pdf.set_font(family, "B", 12)
        pdf.multi_cell(width, 7, text(s), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, "", 10)

    def para(s: str, size: int = 10) -> None:
        pdf.set_font(family, "", size)
        pdf.multi_cell(width, 5, text(s), new_x="LMARGIN", new_y="NEXT")

    pdf.set_font(family, "B", 15)
    pdf.multi_cell(width, 8, text(reader["title"]), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_fill_color(*_DECISION_FILL.get(reader["decision"], _DECISION_FILL["inconclusive"]))
    pdf.set_font(family, "B", 11)
    pdf.multi_cell(width, 6, text(f"Verdict: {reader['decision']}. {reader['verdict']}"), fill=True,
                   new_x="LMARGIN", new_y="NEXT")
    heading("What was tested")
    para(reader["what_was_tested"])
    para(f"Suspect: {reader['suspect']}", 9)
    para(f"Protected model: {reader['protected_model']}", 9)
    heading("Power of the method")
    para(reader["power"])
    if reader["power_rows"]:
        pdf.set_font(family, "", 8)
        with pdf.table(col_widths=(90, 25, 25, 40), text_align="LEFT") as table:
            table.row([text(k) for k in reader["power_rows"][0]])
            for r in reader["power_rows"]:
                table.row([text(v) for v in r.values()])
    for plot in report.get("plots") or []:
        heading("The evidence: " + str(plot.get("title", "")))
        _draw_plot(pdf, plot, width, text)
    heading("Details for an expert")
    para(str(report.get("decision_text", "")), 9)
    test = report.get("test") or {}
    details = {
        "test": test.get("name"),
        "null hypothesis": test.get("null_hypothesis"),
        "alpha": test.get("alpha"),
        "p-value": report.get("p_value"),
        "queries used": (report.get("queries") or {}).get("used"),
        "method": report.get("method"),
        "software": report.get("software"),
        "started": report.get("started_at"),
        "finished": report.get("finished_at"),
        "protected model": report.get("protected_model"),
        "suspect": report.get("suspect"),
    }
    for k, v in details.items():
        para(f"{k}: {_short(v)}", 8)
    heading("Statistics (raw)")
    for k, v in (report.get("statistics") or {}).items():
        para(f"{k}: {_short(v)}", 7)
    if signature:
        heading("Signature")
        for k, v in signature.items():
            para(f"{k}: {v}", 8)
    return bytes(pdf.output())


def _short(value: Any, limit: int = 600) -> str:
    s = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[:limit] + f" ... ({len(s)} characters; the signed JSON has them all)"


def _draw_plot(pdf: Any, plot: Mapping[str, Any], width: float, text: Any) -> None:
    """Histograms (overlaid outlines) or a line (log y when asked), drawn with PDF primitives."""
    x0, h = pdf.l_margin + 12, 45.0
    w = width - 14
    if pdf.get_y() + h + 14 > pdf.h - pdf.b_margin:
        pdf.add_page()
    y0 = pdf.get_y() + 2
    series: dict[str, list[tuple[float, float]]] = {}
    if plot.get("kind") == "histograms":
        raw = {k: [float(v) for v in vals if isinstance(v, int | float) and math.isfinite(v)]
               for k, vals in (plot.get("series") or {}).items()}
        values = [v for vals in raw.values() for v in vals]
        if not values:
            pdf.multi_cell(width, 5, "(nothing to draw)", new_x="LMARGIN", new_y="NEXT")
            return
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1.0
        bins = 20
        for name, vals in raw.items():
            counts = [0] * bins
            for v in vals:
                counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
            total = max(1, len(vals))
            series[name] = [(lo + (i + 0.5) * (hi - lo) / bins, c / total) for i, c in enumerate(counts)]
    else:
        xs, ys = plot.get("x") or [], plot.get("y") or []
        log_y = bool(plot.get("log_y"))
        pairs = [(float(a), float(b)) for a, b in zip(xs, ys, strict=False)
                 if isinstance(a, int | float) and isinstance(b, int | float)]
        pts = [(a, math.log10(max(b, 1e-300)) if log_y else b) for a, b in pairs]
        if not pts:
            pdf.multi_cell(width, 5, "(nothing to draw)", new_x="LMARGIN", new_y="NEXT")
            return
        series["p-value (log10)" if log_y else "value"] = pts
    all_x = [p[0] for pts in series.values() for p in pts]
    all_y = [p[1] for pts in series.values() for p in pts]
    xlo, xhi = min(all_x), max(all_x)
    ylo, yhi = min(0.0, min(all_y)), max(all_y)
    xhi, yhi = (xhi if xhi > xlo else xlo + 1), (yhi if yhi > ylo else ylo + 1)
    pdf.set_draw_color(120, 120, 120)
    pdf.rect(x0, y0, w, h)
    pdf.set_font(pdf.font_family, "", 7)
    for i, (name, pts) in enumerate(series.items()):
        r, g, b = _COLOURS[i % len(_COLOURS)]
        pdf.set_draw_color(r, g, b)
        pdf.set_line_width(0.5)
        coords = [(x0 + (x - xlo) / (xhi - xlo) * w, y0 + h - (y - ylo) / (yhi - ylo) * h) for x, y in pts]
        if len(coords) == 1:
            cx = coords[0][0]
            pdf.line(cx, y0, cx, y0 + h)  # a single value (the suspect's statistic): a vertical marker
        for a, c in zip(coords, coords[1:], strict=False):
            pdf.line(a[0], a[1], c[0], c[1])
        pdf.set_text_color(r, g, b)
        pdf.text(x0 + 2, y0 + 4 + 3.5 * i, text(name))
    pdf.set_text_color(0, 0, 0)
    pdf.set_line_width(0.2)
    pdf.text(x0, y0 + h + 4, text(f"{xlo:.3g}"))
    pdf.text(x0 + w - 10, y0 + h + 4, text(f"{xhi:.3g}"))
    pdf.text(x0 + w / 2 - 15, y0 + h + 4, text(str(plot.get("x_label", ""))))
    pdf.set_y(y0 + h + 7)

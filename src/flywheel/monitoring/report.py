"""Render a drift report as one self-contained HTML page with a bar chart per feature.

The page has no external assets and no JavaScript: a summary table (most drifted first), then for
every feature an inline SVG of reference against current share per bucket. The charts are drawn
from the bucket shares, never from rows, so the page is the same size for a thousand rows or a
billion. Every user-provided string (title, decision, context, feature names, category labels)
is HTML-escaped, and a Content-Security-Policy forbids scripts in case anything slips through.

Examples:
    >>> import pandas as pd
    >>> from flywheel.monitoring.drift import compare
    >>> from flywheel.monitoring.profile import build_profile
    >>> frame = pd.DataFrame({"x": [float(i) for i in range(200)]})
    >>> page = render_html(compare(build_profile(frame), frame), title="<b>demo</b>")
    >>> page.count("<svg"), "&lt;b&gt;demo&lt;/b&gt;" in page
    (1, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from flywheel.monitoring.drift import DriftReport, FeatureDrift
from flywheel.storage.blobs import write_atomic

__all__ = ["render_html", "render_svg", "write_html"]

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1f2328}
h1{font-size:1.5em}h2{font-size:1.15em;margin:1.6em 0 .3em}
table{border-collapse:collapse;margin:.6em 0}
th,td{border-bottom:1px solid #d0d7de;padding:.3em .7em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.major{color:#b42318;font-weight:600}.moderate{color:#9a6700}.none{color:#1a7f37}
.insufficient_data{color:#57606a;font-style:italic}
.decision{border-left:4px solid #0969da;background:#ddf4ff;padding:.5em 1em}
.muted{color:#57606a}svg{display:block;margin:.4em 0 1em}
svg text{font-size:11px;fill:#1f2328}
"""

_COLORS = {"ref": "#8c959f", "cur": "#fb8500"}
_PLOT_H = 160
_MIN_WIDTH = 300
_TOP, _LEFT, _RIGHT, _BOTTOM = 30, 46, 12, 96


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "&mdash;"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _short(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _nice_max(value: float) -> float:
    """Return a round upper bound for the y axis (0.05, 0.1, 0.2, 0.25, 0.5, 1...)."""
    value = max(value, 0.01)
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * magnitude >= value:
            return min(step * magnitude, 1.0) if value <= 1.0 else step * magnitude
    return value


def render_svg(
    labels: Sequence[str], reference: Sequence[float], current: Sequence[float], *, name: str
) -> str:
    """Return an inline SVG of grouped bars: reference and current share per bucket.

    Examples:
        >>> svg = render_svg(["a", "<b>"], [0.5, 0.5], [0.9, 0.1], name="f")
        >>> svg.startswith("<svg") and "&lt;b&gt;" in svg and svg.count("<rect") == 6
        True
    """
    n = max(len(labels), 1)
    group = max(14.0, min(56.0, 760.0 / n))
    bar = group * 0.38
    width = max(_LEFT + n * group + _RIGHT, _MIN_WIDTH)
    height = _TOP + _PLOT_H + _BOTTOM
    y_max = _nice_max(max([*reference, *current, 0.0]))
    base = _TOP + _PLOT_H

    def y(value: float) -> float:
        return base - _PLOT_H * min(value, y_max) / y_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" role="img" '
        f'aria-label="reference and current share per bucket of {escape(name)}">'
    ]
    for tick in (0.0, y_max / 2, y_max):
        ty = y(tick)
        parts.append(
            f'<line stroke="#eaeef2" x1="{_LEFT}" x2="{width - _RIGHT:.1f}" y1="{ty:.1f}" '
            f'y2="{ty:.1f}"/><text x="{_LEFT - 4}" y="{ty + 4:.1f}" '
            f'text-anchor="end">{_pct(tick)}</text>'
        )
    parts.append(
        f'<line stroke="#57606a" x1="{_LEFT}" x2="{width - _RIGHT:.1f}" y1="{base}" y2="{base}"/>'
    )
    for i, label in enumerate(labels):
        x0 = _LEFT + i * group + (group - 2 * bar) / 2
        safe = escape(label)
        for j, (cls, share) in enumerate((("ref", reference[i]), ("cur", current[i]))):
            top = y(share)
            who = "reference" if cls == "ref" else "current"
            parts.append(
                f'<rect fill="{_COLORS[cls]}" x="{x0 + j * bar:.1f}" y="{top:.1f}" '
                f'width="{bar:.1f}" height="{base - top:.1f}">'
                f"<title>{safe}: {who} {_pct(share)}</title></rect>"
            )
        lx, ly = _LEFT + (i + 0.5) * group, base + 12
        parts.append(
            f'<text x="{lx:.1f}" y="{ly}" text-anchor="end" '
            f'transform="rotate(-40 {lx:.1f} {ly})">{escape(_short(label))}</text>'
        )
    lx = max(_LEFT, width - _RIGHT - 170)
    parts.append(
        f'<rect fill="{_COLORS["ref"]}" x="{lx:.0f}" y="8" width="12" height="12"/>'
        f'<text x="{lx + 16:.0f}" y="18">reference</text>'
        f'<rect fill="{_COLORS["cur"]}" x="{lx + 90:.0f}" y="8" width="12" height="12"/>'
        f'<text x="{lx + 106:.0f}" y="18">current</text></svg>'
    )
    return "".join(parts)


def _ordered(report: DriftReport) -> list[tuple[int, FeatureDrift]]:
    """Return features with their index, most drifted first; features without PSI last."""
    rank = {"major": 0, "moderate": 1, "none": 2}
    return sorted(
        enumerate(report.features),
        key=lambda item: (
            item[1].status != "ok",
            rank[item[1].severity],
            -(item[1].psi if item[1].psi is not None else -1.0),
            item[1].name,
        ),
    )


def _summary_row(index: int, f: FeatureDrift) -> str:
    verdict = f.severity if f.status == "ok" else "insufficient data"
    css = f.severity if f.status == "ok" else "insufficient_data"
    missing = f"{_pct(f.reference_missing_rate)} → {_pct(f.current_missing_rate)}"
    return (
        f'<tr><td><a href="#f{index}">{escape(f.name)}</a></td><td>{f.kind}</td>'
        f'<td class="{css}">{verdict}</td><td class="n">{_num(f.psi)}</td>'
        f'<td class="n">{_num(f.ks_statistic)}</td><td class="n">{_num(f.p_value, 4)}</td>'
        f'<td class="n">{_num(f.p_value_adjusted, 4)}</td><td class="n">{missing}</td>'
        f"<td>{f.n_current:,}</td></tr>"
    )


def _feature_section(index: int, f: FeatureDrift) -> str:
    test = "KS D" if f.kind == "numeric" else "χ²"
    statistic = f.ks_statistic if f.kind == "numeric" else f.chi2_statistic
    detail = (
        f"{f.kind} · PSI {_num(f.psi)} · {test} {_num(statistic)} · p {_num(f.p_value, 4)} "
        f"· missing {_pct(f.reference_missing_rate)} → {_pct(f.current_missing_rate)}"
    )
    note = f'<p class="insufficient_data">{escape(f.reason)}</p>' if f.reason else ""
    svg = render_svg(f.bin_labels, f.reference_fractions, f.current_fractions, name=f.name)
    return (
        f'<section id="f{index}"><h2>{escape(f.name)} <span class="{f.severity}">'
        f"{f.severity if f.status == 'ok' else ''}</span></h2>"
        f'<p class="muted">{detail}</p>{note}{svg}</section>'
    )


def render_html(
    report: DriftReport,
    *,
    title: str,
    decision: str | None = None,
    context: Mapping[str, str] | None = None,
) -> str:
    """Return a self-contained HTML page for ``report``.

    Args:
        report: The drift report to show.
        title: Page title and heading.
        decision: What was decided from the report (for example ``"retrain"``), shown on top.
        context: Extra key/value facts to show (model version, window, deployment...).
    """
    ordered = _ordered(report)
    drifted = report.drifted_features
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
    )
    body = [head]
    if decision is not None:
        body.append(f'<p class="decision">Decision: <strong>{escape(decision)}</strong></p>')
    if context:
        rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
            for k, v in context.items()
        )
        body.append(f"<table>{rows}</table>")
    body.append(
        f"<p>{len(drifted)} of {len(report.features)} features drifted (PSI ≥ "
        f"{report.psi_threshold:g}) · reference rows {report.n_reference:,} · current rows "
        f"{report.n_current:,} · verdicts need ≥ {report.min_rows:,} non-null values · "
        "p-values are secondary; the adjusted column is Bonferroni-corrected</p>"
    )
    body.append(
        "<table><thead><tr><th>feature</th><th>kind</th><th>severity</th><th>PSI</th>"
        "<th>KS D</th><th>p-value</th><th>p adj.</th><th>missing ref → cur</th>"
        "<th>non-null current</th></tr></thead><tbody>"
    )
    body.extend(_summary_row(i, f) for i, f in ordered)
    body.append("</tbody></table>")
    body.extend(_feature_section(i, f) for i, f in ordered)
    body.append("</body></html>\n")
    return "".join(body)


def write_html(
    report: DriftReport,
    path: Path | str,
    *,
    title: str,
    decision: str | None = None,
    context: Mapping[str, str] | None = None,
) -> Path:
    """Render ``report`` and write it to ``path`` atomically (parent folders are created).

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(report, title=title, decision=decision, context=context)
    return write_atomic(target, page.encode("utf-8"))

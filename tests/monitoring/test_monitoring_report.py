"""Tests of the HTML drift report: one chart per feature, escaping, size independent of rows."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.monitoring.drift import DriftReport, compare
from flywheel.monitoring.profile import build_profile
from flywheel.monitoring.report import render_html, write_html

EVIL = "<script>alert('x')</script>"


def _frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "dep_delay": rng.normal(10.0 + shift, 5.0, n),
            EVIL: rng.normal(size=n),
            "carrier": rng.choice(["AA", "DL", EVIL, "<b>&co"], n),
            "empty": np.full(n, np.nan),
        }
    )


def _report(n_current: int, shift: float = 5.0) -> DriftReport:
    profile = build_profile(_frame(5000, 0), categorical=["carrier"])
    return compare(profile, _frame(n_current, 1, shift=shift))


class _TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.opened[tag] = self.opened.get(tag, 0) + 1
        self.scripts += tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self.closed[tag] = self.closed.get(tag, 0) + 1


def test_one_well_formed_svg_per_feature() -> None:
    report = _report(2000)
    page = render_html(report, title="drift")
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL)
    assert page.count("<svg") == len(svgs) == len(report.features) == 4
    prefix = "reference and current share per bucket of "
    for svg in svgs:
        root = ET.fromstring(svg)  # SVG is XML: this fails on any unescaped label
        feature = report.feature(root.attrib["aria-label"].removeprefix(prefix))
        bars = [
            el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.find("*") is not None
        ]
        assert len(bars) == 2 * len(feature.bin_labels)
    assert "src=" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_user_strings_are_escaped() -> None:
    page = render_html(
        _report(2000),
        title=f"title {EVIL}",
        decision=f"retrain {EVIL}",
        context={EVIL: f"v1 {EVIL}", "window": "2013-07/2013-12"},
    )
    parser = _TagCounter()
    parser.feed(page)
    assert parser.scripts == 0
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;&amp;co" in page
    for tag in ("svg", "table", "section", "html", "body"):
        assert parser.opened.get(tag) == parser.closed.get(tag), tag
    assert "Content-Security-Policy" in page


def test_summary_is_sorted_by_severity() -> None:
    report = _report(3000, shift=5.0)
    page = render_html(report, title="drift")
    table = page[page.index("<tbody>") : page.index("</tbody>")]
    names = re.findall(r'<a href="#f\d+">(.*?)</a>', table)
    assert names[0] == "dep_delay"
    assert names[-1] == "empty"  # insufficient data last
    assert report.feature("dep_delay").severity == "major"
    assert "insufficient data" in table


def test_page_size_does_not_grow_with_rows() -> None:
    small = render_html(_report(1_000), title="drift")
    large = render_html(_report(100_000), title="drift")
    assert 0.9 < len(large) / len(small) < 1.1
    assert len(large) < 100_000


def test_write_html_is_atomic_and_creates_folders(tmp_path: Path) -> None:
    report = _report(1000)
    target = tmp_path / "reports" / "drift.html"
    assert write_html(report, target, title="t", decision="no action") == target
    first = target.read_text(encoding="utf-8")
    assert first == render_html(report, title="t", decision="no action")
    write_html(report, target, title="second")
    assert "<title>second</title>" in target.read_text(encoding="utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["drift.html"]


@pytest.mark.parametrize("n_current", [0, 1])
def test_reports_render_for_degenerate_windows(n_current: int) -> None:
    page = render_html(_report(n_current), title="empty window")
    assert page.count("<svg") == 4
    assert "insufficient data" in page

"""The report reads at 800 px and 1280 px in a real browser: the page never scrolls sideways.

Renders the checked-in demo summary (reports/demo/summary.json: real benchmark names, long MMLU ones
included) and opens it in headless Chromium at each width with a small measuring script added (its hash
added to the page's Content-Security-Policy, nothing else changed). The script waits for the charts, then
writes on <body> the page's scrollWidth and clientWidth; wide tables may scroll inside their own box, the
page may not. Skipped, with the reason, where Chromium is not installed (CI images without a browser).
Also checks, without a browser, the headline sentence and the null encoder's note beside its number.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qscope_eval.report.html import render_report

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "reports" / "demo" / "summary.json"

MEASURE_JS = """(function measure() {
  var b = document.body;
  if (!b.dataset.rendered && !b.dataset.renderError) { setTimeout(measure, 50); return; }
  var d = document.documentElement;
  b.dataset.scrollWidth = String(d.scrollWidth);
  b.dataset.clientWidth = String(d.clientWidth);
  var wide = [];  // elements sticking out of the viewport, outside a scrolling box
  document.querySelectorAll("main *").forEach(function (el) {
    if (el.closest(".scroll") || el.closest(".chart")) return;
    if (el.getBoundingClientRect().right > d.clientWidth + 1) wide.push(el.tagName + "." + el.className);
  });
  b.dataset.wide = wide.slice(0, 5).join(",");
})();"""


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def demo_summary() -> dict:
    return json.loads(DEMO.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def measured_page(demo_summary, tmp_path_factory) -> Path:
    """The demo report with the measuring script allowed by its CSP and appended to <body>."""
    out = tmp_path_factory.mktemp("demo_report")
    page = render_report(demo_summary, out, png=False).html.read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(MEASURE_JS.encode()).digest()).decode()
    page = page.replace("script-src ", f"script-src 'sha256-{digest}' ", 1)
    head, tail = page.rsplit("</body>", 1)  # the last one: the inlined Vega bundle may hold the string too
    page = f"{head}<script>{MEASURE_JS}</script></body>{tail}"
    path = out / "measured.html"
    path.write_text(page, encoding="utf-8")
    return path


@pytest.mark.parametrize("width", [800, 1280])
def test_no_horizontal_page_scroll(measured_page, width, tmp_path):
    exe = _browser()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the layout check needs a browser")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--window-size={width},1600", "--virtual-time-budget=15000", "--dump-dom", measured_page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout[r.stdout.rindex("</head>"):]  # the inlined Vega bundle holds "<body>" strings too
    body = re.search(r"<body[^>]*>", dom).group(0)
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body))
    assert attrs.get("rendered") == "6", body  # every chart drew before the measurement
    scroll, client = int(attrs["scroll-width"]), int(attrs["client-width"])
    assert 0 < client <= width
    assert scroll <= client, f"at {width} px the page is {scroll} px wide (viewport {client}): {attrs.get('wide')}"
    assert attrs.get("wide", "") == "", attrs.get("wide")


def test_headline_says_what_to_keep_and_what_the_null_means(demo_summary, tmp_path):
    html = render_report(demo_summary, tmp_path, png=False).html.read_text(encoding="utf-8")
    sel, gaps = demo_summary["selection"], demo_summary["gaps"]
    k, n = len(sel["chosen"]), len(sel["table"])
    head = re.search(r'<p class="headline">(.*?)</p>', html, flags=re.S).group(1)
    assert f"Keep {k} of {n} benchmarks" in head
    assert f"{100 * gaps['coverage']['covered_share']:.1f}%" in head
    # the random dictionary's share is explained where it is shown, with both numbers
    start = html.index('class="cards"')
    note = html[start:html.index("<h2>", start)]
    assert f"{100 * gaps['null']['covered_share']:.1f}%" in note and "random directions" in note
    # every table sits in its own scrolling box
    body = html[html.rindex("</head>"):]  # (the inlined Vega bundle mentions <table too)
    assert body.count("<table") == body.count('<div class="scroll"><table') > 0

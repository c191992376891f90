"""Tests for the audit report (qscope_eval/report.py, qscope_eval/charts.py).

Renders the summary of a synthetic store whose benchmark names and sample texts
carry HTML/JS injection strings, then checks the files, the charts' specs, that
the page is self-contained and escaped, and — in headless Chromium with the
network cut off — that every chart actually draws and no script error occurs.
Chromium is installed with apt-get when missing (a failure, not a skip).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import struct
import subprocess
import zlib

import altair as alt
import numpy as np
import pytest
from synthetic import build_store

from qscope_eval.jobs import summary as analysis
from qscope_eval.report import charts
from qscope_eval.report.html import embed_json, render_report, report_html, to_json_safe

BAD_NAME = "</script><script>alert(1)</script>"
BAD_TEXT = "<img src=x onerror=alert(1)>"
OTHER = "amp & <b>co</b> <!-- x"
CHARTS = ["selection", "coverage", "redundancy", "curves", "overlap", "frequency"]


# ----------------------------------------------------------------------------- data
def _encode(store, enc, ids, feats_of):
    """Write features for the not-yet-encoded ids; feats_of(text) -> feature indices."""
    todo = store.pending(enc.encoder_id, ids)
    texts = store.texts(todo)
    rows, feats = [], []
    for r, sid in enumerate(todo):
        f = feats_of(texts[int(sid)])
        rows += [r] * len(f)
        feats += list(f)
    store.write_batch(enc.encoder_id, todo, np.full(len(todo), 20), np.zeros(len(todo), bool), np.array(rows),
                      np.array(feats), np.ones(len(rows)), np.ones(len(rows), int))


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    """The synthetic suite plus two hostile benchmarks (exact and near duplicates) and a previous run (drift)."""
    s = build_store(str(tmp_path_factory.mktemp("store") / "s.duckdb"))
    rng = np.random.default_rng(1)
    real, null = s.encoder("toy@main|sae|L1|last|sae"), s.encoder("toy@main|sae|L1|last|null")
    same = [200, 201, 202, 203, 204, 205]  # one feature set for three samples -> near-duplicate pairs

    def feats(text, width):
        if text.startswith("dup"):
            return same
        return rng.choice(np.arange(150, 150 + width) % 256, size=6, replace=False)

    for name, texts in ((BAD_NAME, [f"dup {BAD_TEXT} a", f"dup {BAD_TEXT} b"] + [f"{BAD_TEXT} q{i}" for i in range(30)]
                         + ["bench0 q0 shared"]),  # verbatim copy of a bench_0 prompt
                        (OTHER, ["dup other " + BAD_TEXT] + [f"other {i}" for i in range(20)])):
        ids = s.register_benchmark(name, "synth", {"path": "x"}, texts)
        _encode(s, real, ids, lambda t: feats(t, 50))
        _encode(s, null, ids, lambda t: feats(t, 100))
    ld = analysis.load(s)
    s.start_run("r0", "synth", {})
    s.save_run_features("r0", {**{n: f[3:] for n, f in analysis.feature_sets(ld.real).items()
                                  if n.startswith("bench")}, "retired": np.arange(5)})
    s.finish_run("r0", "completed", encoder_id=real.encoder_id)
    out = analysis.audit_summary(s, ld, "synth", run_id="r1")
    out["warnings"] = [f"example warning {BAD_TEXT}"]
    s.close()
    return out


@pytest.fixture(scope="module")
def report(summary, tmp_path_factory):
    return render_report(summary, tmp_path_factory.mktemp("report"))


# ----------------------------------------------------------------------------- PNG reading (no Pillow)
def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit non-interlaced PNG to (h, w, channels) uint8.

    PNG filters predict each byte from its left (a), upper (b) and upper-left (c)
    neighbours, so all pixels on one anti-diagonal y + x = k can be unfiltered at
    once: h + w vectorised steps instead of a Python loop per byte.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        if typ == b"IHDR":
            w, h, depth, ctype, _, _, lace = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif typ == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    assert depth == 8 and lace == 0 and ctype in (0, 2, 4, 6), (depth, ctype, lace)
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, w * bpp + 1)
    ftype, cur = raw[:, 0], raw[:, 1:].astype(np.int16).reshape(h * w, bpp)
    W = w + 1
    out = np.zeros(((h + 1) * W, bpp), np.int16)  # one zero row and column of padding
    for k in range(h + w - 1):
        y = np.arange(max(0, k - w + 1), min(h, k + 1))
        x = k - y
        o = (y + 1) * W + x + 1
        a, b, c = out[o - 1], out[o - W], out[o - W - 1]
        f = ftype[y]
        pred = np.zeros_like(a)
        for t, val in ((1, a), (2, b), (3, (a + b) >> 1)):
            pred[f == t] = val[f == t]
        m = f == 4
        if m.any():
            a4, b4, c4 = a[m], b[m], c[m]
            pa, pb, pc = np.abs(b4 - c4), np.abs(a4 - c4), np.abs(a4 + b4 - 2 * c4)
            pred[m] = np.where((pa <= pb) & (pa <= pc), a4, np.where(pb <= pc, b4, c4))
        out[o] = (cur[y * w + x] + pred) & 255
    return out.reshape(h + 1, W, bpp)[1:, 1:].astype(np.uint8)


# ----------------------------------------------------------------------------- files
def test_files_written(report, summary):
    assert report.html.name == "report.html" and report.html.stat().st_size > 500_000  # Vega inlined
    assert sorted(report.pngs) == sorted(CHARTS)
    for name, p in report.pngs.items():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        w, h = struct.unpack(">II", data[16:24])
        assert w > 300 and h > 200 and len(data) > 20_000, (name, w, h, len(data))
    px = png_pixels(report.pngs["coverage"].read_bytes())
    assert px[..., :3].std() > 20  # bars and text, not a blank canvas
    assert json.loads(report.summary_json.read_text()) == to_json_safe(summary)


def test_summary_json_nan_is_null(summary, tmp_path):
    s = json.loads(json.dumps(summary))
    s["metrics"]["benchmarks"][0]["r_hat"] = math.nan
    s["selection"]["gap"] = math.inf
    files = render_report(s, tmp_path, png=False)
    text = files.summary_json.read_text()
    assert "NaN" not in text and "Infinity" not in text and files.pngs == {}
    assert json.loads(text)["metrics"]["benchmarks"][0]["r_hat"] is None


# ----------------------------------------------------------------------------- charts
def test_charts_are_altair_specs(summary):
    made = charts.all_charts(summary)
    assert list(made) == CHARTS
    for name, c in made.items():
        assert isinstance(c, alt.TopLevelMixin), name
        assert json.dumps(c.to_dict())  # valid against the Vega-Lite schema
    spec = json.dumps(made["coverage"].to_dict())
    assert "null dictionary" in spec and "rarefied to n = " in spec
    ov = made["overlap"].to_dict()["hconcat"]  # SAE beside the null baseline and the prompts' words
    assert len(ov) == 3 and ov[2]["title"] == "lexical baseline (the prompts' words)"
    assert "log" in json.dumps(made["curves"].to_dict()["encoding"]["x"])
    sel = json.dumps(made["selection"].to_dict())
    assert "random subset, same cost" in sel and "target" in sel and "recommended" in sel
    dead = summary["feature_frequency"]["dead"]
    assert f"{dead:,} of" in json.dumps(made["frequency"].to_dict()["title"])


def test_charts_without_null_or_drift(summary, tmp_path):
    s = json.loads(json.dumps(summary))
    s["metrics"]["null_overlap"] = s["metrics"]["overlap_excess"] = None
    for b in s["metrics"]["benchmarks"]:
        b["null_n_features"] = None
    s["drift"] = None
    panels = charts.overlap_chart(s).to_dict()["hconcat"]  # the SAE beside the prompts' words only
    assert [p["title"] for p in panels] == ["SAE features", "lexical baseline (the prompts' words)"]
    s["metrics"]["lexical_overlap"] = None
    for b in s["metrics"]["benchmarks"]:
        b["lexical_n_features"] = None
    assert "hconcat" not in charts.overlap_chart(s).to_dict()
    assert "null dictionary" not in json.dumps(charts.coverage_chart(s).to_dict())
    page = render_report(s, tmp_path, png=False).html.read_text()
    assert "No null baseline encoder" in page and "No earlier completed run" in page
    assert "No lexical baseline" in page and "words (lexical)" not in page


# ----------------------------------------------------------------------------- self-contained, escaped
def _body(page: str) -> str:
    """The page without the inlined Vega bundle (which holds markup templates of its own)."""
    start = page.index("<script>", page.index("<script>") + 1) + len("<script>")
    return page[:start] + page[page.index("</script>", start):]


def test_html_is_self_contained(report):
    page = report.html.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page and "cdn.jsdelivr" not in page
    assert len(re.findall(r"<script\b", _body(page))) == 3  # error hook, Vega bundle, embed
    assert "Content-Security-Policy" in page and "default-src 'none'" in page



def test_the_headline_says_whether_the_sae_beats_both_baselines(report, summary):
    from qscope_eval.report.baselines import baseline_sentence

    page = report.html.read_text()
    sent = baseline_sentence(summary)
    assert sent and sent.startswith("The SAE ") and "baselines" in sent
    assert html.escape(sent, quote=True) in page or html.escape(sent, quote=False) in page
    assert "words (lexical)" in page  # the coverage table's lexical column beside the null's


def test_untrusted_strings_are_escaped(report):
    page = report.html.read_text()
    for bad in (BAD_NAME, BAD_TEXT, "<b>co</b>", "<!-- x"):
        assert bad not in page, bad
    body = _body(page)
    assert html.escape(BAD_NAME) in body and html.escape(BAD_TEXT) in body  # shown, as text
    assert body.count("<!--") == 0
    embed = page[page.rindex("<script>"):]
    assert "\\u003c/script\\u003e" in embed and "</" not in embed[len("<script>"):-len("</script>\n</body></html>\n")]


def test_embed_json_round_trips():
    obj = {"a": [BAD_NAME, BAD_TEXT, "<!--", "x\u2028y & z", math.nan]}
    s = embed_json(obj)
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s
    assert json.loads(s) == {"a": [BAD_NAME, BAD_TEXT, "<!--", "x\u2028y & z", None]}
    assert "generated 2024" in report_html({**_tiny(), "generated_at": "generated 2024"}, specs={})


def _tiny():
    b = {"name": "b", "n_samples": 1, "n_features": 1, "curve": {"n": [1], "c": [1.0]}}
    return {"suite": "s", "metrics": {"benchmarks": [b], "overlap": {"asym": [[1.0]]}},
            "selection": {"chosen": ["b"], "table": []}}


# ----------------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="session")
def chromium():
    """Path to Debian's chromium, installed with apt-get if missing (refreshing the lists only if needed)."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    run = lambda cmd: subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)  # noqa: E731
    r = run(install)
    if r.returncode != 0:  # no or stale package lists (fresh images ship none): refresh once, retry
        u = run(["apt-get", "update"])
        r = run(install) if u.returncode == 0 else u
    exe = shutil.which("chromium")
    if r.returncode != 0 or not exe:
        pytest.fail("headless Chromium is needed to check that report.html renders, and "
                    f"`{' '.join(install)}` failed (run as root with apt sources reachable):\n{r.stderr[-3000:]}")
    return exe


def _chromium(exe, tmp_path, page, *args):
    """Run headless Chromium on a file with every host name unresolvable (no network)."""
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args, page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_renders_in_headless_chromium(chromium, report, tmp_path):
    r = _chromium(chromium, tmp_path, report.html, "--dump-dom")
    dom = r.stdout
    body = re.search(r"<body[^>]*data-rendered[^>]*>", dom)
    assert body, "vega-embed promises never resolved: " + str(re.findall(r"<body[^>]*>", dom)[-1:])
    assert 'data-rendered="6"' in body.group(0) and 'data-js-errors="0"' in body.group(0), body.group(0)
    assert "data-render-error" not in body.group(0)
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console  # no errors, CSP violations or warnings logged by the page
    assert dom.count('role="graphics-document"') == 6
    for name in CHARTS:
        start = dom.index(f'id="chart-{name}"')
        nxt = dom.find('id="chart-', start + 1)
        part = dom[start:nxt if nxt > 0 else len(dom)]
        assert "<svg" in part and re.search(r'<g class="mark-(rect|line|symbol)', part), name
    # hostile strings stayed text: no live element or script came out of them
    assert 'onerror="alert(1)"' not in dom and "<script>alert(1)" not in dom
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in dom and "&lt;img src=x onerror=alert(1)&gt;" in dom


def test_screenshot_is_not_blank(chromium, report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(chromium, tmp_path, report.html, f"--screenshot={shot}", "--window-size=1280,4800",
              "--hide-scrollbars")
    px = png_pixels(shot.read_bytes())[..., :3].astype(np.int16)
    assert px.shape[:2] == (4800, 1280) and px.std() > 15
    blue = (np.abs(px - np.array([0x4E, 0x79, 0xA7])).max(axis=-1) <= 2).sum()  # charts' main colour
    assert blue > 20_000, blue
    inked = (px < 200).any(axis=-1).any(axis=-1)  # rows with something drawn on them
    assert inked[:4000].mean() > 0.3

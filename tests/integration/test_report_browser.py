"""The HTML report opens in headless Chromium without errors, its layout holds at 1400 px, and a
full-page screenshot of it is not blank.

Needs Debian's ``chromium`` (``make browser``; ``.ci/run`` installs it). Without it the test
skips, except under CI (env var ``CI`` set), where a missing browser is a failure. The screenshot
lies in pytest's tmp dir; with ``REPORT_SCREENSHOT=<path>`` set it is also copied there, to look at.
"""

from __future__ import annotations

import html as htmlmod
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from storage.report import write_report

pytestmark = pytest.mark.integration

_TIMEOUT_S = 120
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "headless Chromium not found: install Debian's chromium (make browser)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; under CI .ci/run installs it, so this is an error")
        pytest.skip(msg)
    return exe


def _run_chromium(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


def _body_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"no <body> in the dumped DOM: {dom[:500]!r}"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def _assert_not_blank(png: Path) -> None:
    img = Image.open(png).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50, f"{png}: only {len(colors)} distinct colours; the page looks blank"
    assert max(ImageStat.Stat(img).stddev) > 10, f"{png}: pixel spread too small; the page looks blank"
    not_white = sum(n for n, c in colors if min(c) < 240)
    assert not_white / (img.width * img.height) > 0.02, f"{png}: almost all white"


def _unit_fixture(name: str):
    src = Path(__file__).resolve().parents[1] / "unit" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_report_unit_fixture_{name}", src)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_results_db(path: Path) -> Path:
    """The hand-made results file of tests/unit/test_report.py (one failed run, one missing metric)."""
    return _unit_fixture("test_report").make_results_db(path)


def _make_studies_db(path: Path) -> Path:
    """The results file of tests/unit/test_report_studies.py: seed bands, both studies, drift points."""
    return _unit_fixture("test_report_studies").make_studies_db(path)


# Measures the laid-out page once it has loaded (injected into a copy of the report, so the report itself
# carries no test code): the viewport, every figure's box per plot grid, and every table whose content is
# wider than the box it is shown in or whose cells are cut.
_LAYOUT_SCRIPT = """<script>
window.addEventListener("load", function () {
  var doc = document.documentElement, grids = [], clipped = [];
  document.querySelectorAll(".plots").forEach(function (g) {
    var figs = [];
    g.querySelectorAll("figure").forEach(function (f) {
      var r = f.getBoundingClientRect(), img = f.querySelector("img").getBoundingClientRect();
      figs.push({id: f.dataset.plot, left: r.left, top: r.top, width: r.width, img_width: img.width});
    });
    grids.push({width: g.getBoundingClientRect().width, figures: figs});
  });
  document.querySelectorAll("table").forEach(function (t, i) {
    var box = t.parentElement.getBoundingClientRect();
    var wrapped = t.parentElement.classList.contains("table-wrap");  // scrolls on its own: nothing is lost
    if (t.scrollWidth > t.parentElement.clientWidth + 1 || t.getBoundingClientRect().right > box.right + 1)
      clipped.push((wrapped ? "scrolls: " : "") + "table " + i + " (" + t.className + ") wider than its box");
    t.querySelectorAll("th, td").forEach(function (c) {
      if (c.scrollWidth > c.clientWidth + 1) clipped.push("cell of table " + i + " (" + t.className + "): "
        + c.textContent.slice(0, 40));
    });
  });
  document.body.dataset.layout = JSON.stringify({viewport: doc.clientWidth, scroll_width: doc.scrollWidth,
    height: doc.scrollHeight, grids: grids, clipped: clipped});
});
</script>"""


def test_blank_check_detects_a_blank_page(tmp_path: Path) -> None:
    Image.new("RGB", (1200, 2000), "white").save(tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="blank"):
        _assert_not_blank(tmp_path / "blank.png")


def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    db = _make_results_db(tmp_path / "results.duckdb")
    index = write_report(db, tmp_path / "report", sweep_id="s1")
    html = index.read_text(encoding="utf-8")
    assert not re.search(r"https?://", html), "the report must not reference any network resource"
    n_images = html.count("<img ")

    dom = _run_chromium(exe, "--dump-dom", index.as_uri()).stdout
    attrs = _body_attrs(dom)
    assert attrs.get("data-rendered") == "ok", f"page reported: {attrs.get('data-rendered')!r}"
    assert attrs.get("data-images") == str(n_images) and n_images >= 7

    shot = tmp_path / "report.png"
    _run_chromium(exe, f"--screenshot={shot}", "--window-size=1200,2000", index.as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    _assert_not_blank(shot)

    # The page's own check can fail: a corrupt image is reported, not "ok".
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1), encoding="utf-8")
    attrs = _body_attrs(_run_chromium(exe, "--dump-dom", broken.as_uri()).stdout)
    assert attrs.get("data-rendered", "").startswith("error"), attrs


def _layout(exe: str, page: Path, width: int) -> dict:
    """The measures of :data:`_LAYOUT_SCRIPT` of ``page`` in a ``width``-px-wide window."""
    dom = _run_chromium(exe, f"--window-size={width},1000", "--hide-scrollbars", "--force-device-scale-factor=1",
                        "--dump-dom", page.as_uri()).stdout
    attrs = _body_attrs(dom)
    assert attrs.get("data-rendered") == "ok", f"page reported: {attrs.get('data-rendered')!r}"
    assert "data-layout" in attrs, "the layout script did not run"
    return json.loads(htmlmod.unescape(attrs["data-layout"]))


def test_layout_at_1400px_plots_side_by_side_nothing_clipped_and_a_full_page_screenshot(tmp_path: Path) -> None:
    exe = _chromium()
    db = _make_studies_db(tmp_path / "studies.duckdb")
    index = write_report(db, tmp_path / "report", sweep_id="st")
    page = tmp_path / "report" / "measured.html"
    page.write_text(index.read_text(encoding="utf-8").replace("</body>", _LAYOUT_SCRIPT + "</body>"), encoding="utf-8")

    layout = _layout(exe, page, 1400)
    assert layout["viewport"] == 1400 and layout["scroll_width"] <= layout["viewport"], "the page scrolls sideways"
    assert layout["clipped"] == [], f"cut tables or cells: {layout['clipped']}"
    pairs = []
    for grid in layout["grids"]:
        figs = grid["figures"]
        for fig in figs:
            assert fig["left"] >= 0 and fig["left"] + fig["width"] <= layout["viewport"] + 1, fig
            assert fig["img_width"] <= fig["width"] + 1, f"image wider than its figure: {fig}"
        pairs += [(a["id"], b["id"]) for a in figs for b in figs
                  if abs(a["top"] - b["top"]) < 2 and a["left"] + a["width"] <= b["left"] + 1]
    assert pairs, "no two plot panels side by side at 1400 px"
    assert any({"metric-fluency", "metric-consistency"} & set(p) for p in pairs), pairs
    # one column on a narrow window: no figure beside another
    narrow = _layout(exe, page, 700)  # wide tables scroll inside their box there; the page itself does not
    cut = [c for c in narrow["clipped"] if not c.startswith("scrolls: ")]
    assert narrow["scroll_width"] <= narrow["viewport"] and cut == [], cut
    for grid in narrow["grids"]:
        lefts = {round(f["left"]) for f in grid["figures"]}
        assert len(lefts) == 1, f"figures side by side at 700 px: {grid}"

    shot = tmp_path / "report_full.png"
    _run_chromium(exe, f"--screenshot={shot}", f"--window-size=1400,{int(layout['height'])}", "--hide-scrollbars",
                  "--force-device-scale-factor=1", page.as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot)
    assert img.size == (1400, int(layout["height"])), f"not the full page: {img.size} vs height {layout['height']}"
    _assert_not_blank(shot)
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["REPORT_SCREENSHOT"])

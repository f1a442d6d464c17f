"""The HTML report opens in headless Chromium without errors, and a screenshot of it is not blank.

Needs Debian's ``chromium`` (``make browser``; ``.ci/run`` installs it). Without it the test
skips, except under CI (env var ``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import importlib.util
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


def _make_results_db(path: Path) -> Path:
    """The hand-made results file of tests/unit/test_report.py (one failed run, one missing metric)."""
    src = Path(__file__).resolve().parents[1] / "unit" / "test_report.py"
    spec = importlib.util.spec_from_file_location("_report_unit_fixture", src)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_results_db(path)


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

"""The report opens from disk in headless Chromium (Debian's ``chromium``, installed by .ci/run) with no
console errors, and its screenshot shows the tables and the figures; a report of paired FPDM and
DiT jobs opens with its computed headline and shows the FID figure's interval bands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM
from PIL import Image
from report_fixtures import paired_sweep, write_fixture_sweeps

from reports.build import build_report

pytestmark = pytest.mark.browser  # skipped with the reason without Chromium (tests/conftest.py)
# Console messages are logged as `...:INFO:CONSOLE:12] "Uncaught ...", source: file:///.../report.html (12)`.
_CONSOLE = re.compile(r"CONSOLE[:(]\d+|Uncaught|Refused to|Not allowed to load|net::ERR_")


def _screenshot(html: Path, shot: Path | None, profile: Path, height: int) -> str:
    """Chromium's log (with ``shot``: a screenshot of the page) or, with ``shot=None``, the DOM as
    the browser parsed it."""
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={shot}" if shot else "--dump-dom",
        f"--window-size=1280,{height}",
        html.resolve().as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish in 120 s: {exc}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def _near(img: np.ndarray, rgb: tuple[int, int, int], tol: int) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_report_renders_in_headless_chromium(tmp_path):
    a, b = write_fixture_sweeps(tmp_path / "sweeps")
    html = build_report([a, b], tmp_path / "out")
    shot = tmp_path / "shot.png"
    # Tall enough to reach the first figures below the tables.
    log = _screenshot(html, shot, tmp_path / "profile", height=3200)
    console = [ln for ln in log.splitlines() if _CONSOLE.search(ln)]
    assert not console, "console messages from the page:\n" + "\n".join(console)
    assert shot.is_file() and shot.stat().st_size > 10_000
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (3200, 1280)
    assert img.std() > 20, "screenshot is blank"
    # Table header cells (#eef1f5) and the figures' line colours (matplotlib C0 blue, C1 orange).
    assert _near(img, (0xEE, 0xF1, 0xF5), 0) > 5_000, "no table visible"
    assert _near(img, (255, 127, 14), 40) > 300 and _near(img, (31, 119, 180), 30) > 300, "no figure visible"


def _paired_report(root: Path) -> Path:
    """DiT and FPDM at 60 and 120 blocks with stored features (paired) and FID intervals."""
    jobs = []
    for budget in (60, 120):
        for model, fid, shift in (("dit", 5.0, 1.0), ("fpdm", 4.0, 0.3)):
            metrics = {"fid": fid + budget / 120, "fid_ci_low": fid - 1.0, "fid_ci_high": fid + 2.5}
            axes = {"model": model, "data": "digits", "budget_blocks": budget, "seed": 0}
            jobs.append((axes, metrics, shift, {}))
    return build_report([paired_sweep(root / "s", jobs)], root / "out")


def test_the_report_opens_with_its_headline_and_shows_interval_bands(tmp_path):
    html = _paired_report(tmp_path)
    dom = _screenshot(html, None, tmp_path / "profile", height=2000)
    body = dom[dom.index("<h1>") :]
    first = body[body.index("</h1>") + 5 :].lstrip()  # the first thing under the title, as parsed
    assert first.startswith('<p class="headline"><b>Block-matched'), first[:300]
    assert "FPDM − DiT FID (digits-cnn, 95% interval):" in first[: first.index("</p>")]
    assert "at 60 blocks (FPDM better" in first[: first.index("</p>")]
    assert 'alt="FID vs budget; shaded bands: 95% bootstrap intervals over images"' in dom
    # the figure as Chromium draws it: DiT's band (C0 blue at alpha 0.2 on white: 210, 228, 240) and
    # FPDM's (C1 orange: 255, 229, 207) fill large areas of the screenshot
    shot = tmp_path / "shot.png"
    _screenshot(html, shot, tmp_path / "profile2", height=4000)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert _near(img, (210, 228, 240), 6) > 2_000, "no DiT interval band visible"
    assert _near(img, (255, 229, 207), 6) > 2_000, "no FPDM interval band visible"

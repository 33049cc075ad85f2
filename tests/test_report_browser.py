"""The report opens from disk in headless Chromium (Debian's ``chromium``, installed by .ci/run) with no
console errors, and its screenshot shows the tables and the figures."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM
from PIL import Image
from report_fixtures import write_fixture_sweeps

from reports.build import build_report

pytestmark = pytest.mark.browser  # skipped with the reason without Chromium (tests/conftest.py)
# Console messages are logged as `...:INFO:CONSOLE:12] "Uncaught ...", source: file:///.../report.html (12)`.
_CONSOLE = re.compile(r"CONSOLE[:(]\d+|Uncaught|Refused to|Not allowed to load|net::ERR_")


def _screenshot(html: Path, shot: Path, profile: Path, height: int) -> str:
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
        f"--screenshot={shot}",
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

"""The benchmark scripts accept every option their docstrings document (``--profile`` was once
documented and missing), and run ``--help`` without touching the network or the accelerator."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _documented_flags(path: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return set(re.findall(r"\[(--[a-z][a-z-]*)", doc))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_documented_option_is_accepted(script, offline_env):
    flags = _documented_flags(script)
    assert flags, f"{script.name}: its docstring shows no usage line"
    out = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=ROOT, env=offline_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    missing = {f for f in flags if f not in out.stdout}
    assert not missing, f"{script.name}: documented but not accepted: {sorted(missing)}"

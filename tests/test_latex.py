"""A paper table compiles: the report's booktabs LaTeX goes through a real ``pdflatex`` in a minimal
document (skipped with the reason where the machine has none; .ci/run installs TeX Live)."""

from __future__ import annotations

import subprocess

import pytest
from report_fixtures import paired_sweep

from reports.build import build_report

pytestmark = pytest.mark.latex  # skipped with the reason without pdflatex (tests/conftest.py)

DOCUMENT = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\usepackage[margin=1cm,landscape]{geometry}
\begin{document}
\input{%s}
\end{document}
"""


def _jobs() -> list:
    jobs = []
    for budget in (60, 120):
        for model, fid in (("dit", 5.0), ("fpdm", 4.2)):
            metrics = {
                "fid": fid,
                "fid_ci_low": fid - 0.4,
                "fid_ci_high": fid + 0.3,
                "kid_mean": 0.01,
                "kid_std": 0.002,
            }
            metrics.update(precision=0.7, recall=0.6, flops_per_image=1e6 * budget)
            axes = {"model": model, "data": "digits", "sampler": "ddim", "budget_blocks": budget, "seed": 0}
            jobs.append((axes, metrics, 1.0, {}))
    return jobs


@pytest.mark.parametrize("name", ["table1_budget", "quality"])
def test_a_report_table_compiles_with_pdflatex(tmp_path, name):
    sweep = paired_sweep(tmp_path / "s", _jobs())
    build_report([sweep], tmp_path / "o", figures=False)
    tex = tmp_path / "o" / "tables" / f"{name}.tex"
    (tmp_path / "doc.tex").write_text(DOCUMENT % tex.as_posix())
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Missing character" not in log and "Undefined control sequence" not in log

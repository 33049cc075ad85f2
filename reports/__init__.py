"""Reports: job records -> tidy DataFrame -> CSV tables, seaborn figures, one HTML file.

Public API (imported lazily so that ``import reports`` stays cheap):
``build_report(dirs, out_dir=None) -> Path``, ``collect(dirs) -> DataFrame``,
``load_sweeps(dirs) -> SweepData``, ``summary_markdown(df) -> str``, ``metrics_table(metrics) -> str``,
and the registries ``register_table`` / ``register_figure``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_report": "reports.build",
    "main": "reports.build",
    "ReportCallback": "reports.callback",
    "collect": "reports.collect",
    "load_sweeps": "reports.collect",
    "SweepData": "reports.collect",
    "summary_markdown": "reports.render",
    "metrics_table": "reports.render",
    "render_html": "reports.render",
    "register_table": "reports.tables",
    "get_table": "reports.tables",
    "list_tables": "reports.tables",
    "build_tables": "reports.tables",
    "register_figure": "reports.figures",
    "get_figure": "reports.figures",
    "list_figures": "reports.figures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")

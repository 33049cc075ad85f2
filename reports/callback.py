"""``ReportCallback``: the Hydra callback that builds a sweep's report when the multirun ends.

Kept apart from ``reports.build`` so that instantiating it (Hydra does at every start of the app)
costs no pandas/seaborn import (``reports.build`` is the command-line entry).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("reports.build")


class ReportCallback(Callback):
    """Hydra callback: build the report at the end of every multirun (never fails the sweep).

    The app's default callback (``harness.app.callbacks.SweepReportCallback``) is this one plus the
    sweep plan. Add your own, e.g. a second report that compares this sweep with earlier ones in a
    shared folder (docs/extending.md)::

        hydra:
          callbacks:
            compare:
              _target_: reports.callback.ReportCallback
              out: /shared/reports/tune   # default: the sweep directory
              also: [/shared/multirun/last-week]  # more sweep directories in the same report
              figures: false
    """

    def __init__(
        self,
        enabled: bool = True,
        figures: bool = True,
        out: str | None = None,
        also: Sequence[str] = (),
        title: str = "fpdm-bench report",
    ) -> None:
        self.enabled, self.figures, self.out, self.title = enabled, figures, out, title
        self.also = [Path(str(d)) for d in also]

    def on_multirun_end(self, config: Any, **kwargs: Any) -> Path | None:
        if not self.enabled:
            return None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            from reports.build import build_report  # lazy: pandas/seaborn only when a report is built

            path = build_report([sweep_dir, *self.also], self.out or sweep_dir, title=self.title, figures=self.figures)
        except Exception as exc:  # a report bug must not turn finished jobs into a failed sweep
            log.warning(
                "report build failed for %s: %s (rebuild with: python -m reports.build %s)", sweep_dir, exc, sweep_dir
            )
            return None
        log.info("report: %s", path)
        print(f"report: {path}")
        return path

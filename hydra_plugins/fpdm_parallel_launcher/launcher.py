"""Several sweep points at once on one machine, stopped cleanly by Ctrl-C or ``kill``.

hydra-joblib-launcher runs the points in a loky process pool. On its own, Ctrl-C raises
KeyboardInterrupt in the parent and joblib SIGKILLs the workers, so a job in training may die
before its checkpoint. Here the parent records SIGINT / SIGTERM (and passes them to the workers)
instead of raising; each worker's job in training checkpoints at its step boundary and returns
``InterruptedJob`` (harness/stages/signals.py), the pool drains, and the parent raises
``Interrupted``: exit 128 + signal, no record for the stopped jobs, and the same command resumes
them, as with the sequential launcher (docs/cluster.md, "Stopping a local run").

Each worker draws its progress bars on a terminal line of its own (harness/runtime/progress.py):
the launch names a fresh directory of line slots in ``FPDM_PROGRESS_LINES``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

from harness.runtime import progress
from harness.stages import signals


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (inherited by the workers loky starts)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        previous = signals.record_stop_signals(parent=True)
        try:
            with (
                tempfile.TemporaryDirectory(prefix="fpdm-lines-") as lines,
                _environ(signals.PARALLEL_WORKER_ENV, "1"),
                _environ(progress.LINES_ENV, lines),
            ):
                runs = super().launch(job_overrides, initial_job_idx)
        finally:
            signals.restore_handlers(previous)
        stopped = [
            r.return_value
            for r in runs
            if r.status == JobStatus.COMPLETED and isinstance(r.return_value, signals.InterruptedJob)
        ]
        signum = signals.received_signal() or (stopped[0].signum if stopped else None)
        if signum is not None:
            raise signals.Interrupted(signum)
        return runs

"""Several sweep points at once on one machine, stopped cleanly by Ctrl-C or ``kill``.

hydra-joblib-launcher runs the points in a loky process pool. On its own, Ctrl-C raises
KeyboardInterrupt in the parent and joblib SIGKILLs the workers, so a job in training may die
before its checkpoint. Here the parent records SIGINT / SIGTERM (and passes them to the workers)
instead of raising; each worker's job in training checkpoints at its step boundary and returns
``InterruptedJob`` (harness/stages/signals.py), the pool drains, and the parent raises
``Interrupted``: exit 128 + signal, no record for the stopped jobs, and the same command resumes
them, as with the sequential launcher (docs/cluster.md, "Stopping a local run").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

from harness.stages import signals


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        before = os.environ.get(signals.PARALLEL_WORKER_ENV)
        os.environ[signals.PARALLEL_WORKER_ENV] = "1"  # inherited by the workers loky starts
        previous = signals.record_stop_signals(parent=True)
        try:
            runs = super().launch(job_overrides, initial_job_idx)
        finally:
            signals.restore_handlers(previous)
            if before is None:
                os.environ.pop(signals.PARALLEL_WORKER_ENV, None)
            else:
                os.environ[signals.PARALLEL_WORKER_ENV] = before
        stopped = [
            r.return_value
            for r in runs
            if r.status == JobStatus.COMPLETED and isinstance(r.return_value, signals.InterruptedJob)
        ]
        signum = signals.received_signal() or (stopped[0].signum if stopped else None)
        if signum is not None:
            raise signals.Interrupted(signum)
        return runs

"""Pre-emption and interruption signals of a training run, turned into a checkpoint at the next step
boundary (Slurm / submitit send SIGUSR1 or SIGUSR2 before a time limit; Ctrl-C and ``kill`` send
SIGINT and SIGTERM). ``harness.stages.train`` polls ``_SignalCheckpoint`` once per step.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.runtime.distributed import DistInfo, all_reduce_values


class Preempted(SystemExit):
    """Raised after the pre-emption checkpoint when the process must end and a requeued run will
    continue (submitit has requeued the job). Exit code None: nothing failed, so ``harness.run``
    re-raises it instead of writing a ``failed`` record, and submitit writes no result for this run."""

    def __init__(self, message: str):
        super().__init__(None)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # crosses a process pool (hydra/launcher=parallel) intact
        return Preempted, (self.message,)


class Interrupted(SystemExit):
    """SIGINT / SIGTERM on a local run or sweep (no submitit handler to requeue): raised after the
    checkpoint to stop the whole process with 128 + signal. ``harness.run`` writes no record for it,
    so rerunning the same command resumes the job from its checkpoint."""

    def __init__(self, signum: int, step: int | None = None):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step
        where = f"checkpointed at step {step}" if step is not None else "jobs in training checkpointed"
        self.message = f"{signal.Signals(signum).name}: {where}; rerun the same command to resume"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # crosses a process pool (hydra/launcher=parallel) intact
        return Interrupted, (self.signum, self.step)


# --------------------------------------------------------------------------- parallel sweeps
# With hydra/launcher=parallel the jobs run in worker processes. An exception crossing the pool
# makes joblib kill every other worker at once (SIGKILL), possibly before its own checkpoint, so a
# worker never raises for an interruption: it records the signal, its job in training checkpoints
# and *returns* ``InterruptedJob``, every later job in it returns at once, and the launcher in the
# parent (which records the signal instead of raising KeyboardInterrupt) raises ``Interrupted``
# once the pool is done. Same outcome as the sequential launcher: checkpoints, no record, 128 + signal.
PARALLEL_WORKER_ENV = "FPDM_PARALLEL_WORKER"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


@dataclass(frozen=True)
class InterruptedJob:
    """What a parallel worker's job returns instead of raising ``Interrupted``."""

    signum: int


def in_parallel_worker() -> bool:
    return os.environ.get(PARALLEL_WORKER_ENV) == "1"


def received_signal() -> int | None:
    """The last SIGINT / SIGTERM this process recorded (parallel workers and their parent)."""
    return _received[-1] if _received else None


def note_signal(signum: int) -> None:
    _received.append(int(signum))


def _record_signal(signum, frame) -> None:
    note_signal(signum)


def _forward_to_children(signum, frame) -> None:
    """The parent's handler: record, and pass the signal on to the workers (a `kill` of the parent
    alone must stop them too; Ctrl-C already reached them through the process group)."""
    note_signal(signum)
    for pid in _child_pids():
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _child_pids() -> list[int]:
    pids: list[int] = []
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):  # Linux; elsewhere none
        try:
            pids += [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            pass
    return pids


def record_stop_signals(parent: bool = False) -> dict[int, Any]:
    """Record SIGINT / SIGTERM instead of raising (a parallel worker between jobs, or the parent
    during a parallel launch, which also forwards them to its workers); returns the previous handlers."""
    handler = _forward_to_children if parent else _record_signal
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def restore_handlers(previous: dict[int, Any]) -> None:
    for sig, prev in previous.items():
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


def _preempt_signals() -> tuple[str, ...]:
    # submitit's requeue handler listens to SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another;
    # Slurm sends it signal_delay_s before the time limit and on pre-emption. SIGINT (Ctrl-C) and
    # SIGTERM (kill) of a local run checkpoint too, then stop the process (``Interrupted``).
    usr = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return tuple(dict.fromkeys(("SIGUSR1", usr, "SIGTERM", "SIGINT")))


class _SignalCheckpoint:
    """Turns SIGUSR1 / SIGUSR2 / SIGTERM (sent by Slurm and submitit before a time limit or
    pre-emption) into 'checkpoint at the next step boundary', then hands the signal to whoever
    handled it before (submitit's requeue) or, failing that, exits with the signal's usual code.
    With several ranks the pending signal is agreed on every step, so all ranks checkpoint at the
    same step and leave together (a rank left behind would hang in the next collective)."""

    def __init__(self):
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in _preempt_signals():
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.pending = signum

    def poll(self, info: DistInfo) -> int | None:
        """The signal pending on any rank (the same answer on every rank), or None."""
        if not info.enabled:
            return self.pending
        signum = int(all_reduce_values([float(self.pending or 0)], info, op="max")[0])
        return signum or None

    def release(self, signum: int, info: DistInfo = DistInfo(), step: int | None = None) -> None:
        """Called after the checkpoint: deliver the signal to the previous handler. If that ends the
        process (or there is none) every rank ends; if it returns (submitit's SIGTERM bypass, or a
        non-zero rank) training goes on with these handlers re-armed."""
        self.pending = None
        self.__exit__()
        prev = self.previous.get(signum)
        ending: BaseException | None = None
        if signum in (signal.SIGINT, signal.SIGTERM) and prev in (
            None,
            signal.SIG_DFL,
            signal.SIG_IGN,
            signal.default_int_handler,
            _record_signal,  # a parallel worker: stop too (harness.app.run returns InterruptedJob)
        ):
            ending = Interrupted(signum, step)  # local: nobody requeues, stop the whole process
        elif callable(prev):
            try:
                prev(signum, None)
            except SystemExit:  # submitit requeued the job and exits: a requeued run resumes
                ending = Preempted(f"{signal.Signals(signum).name}: checkpointed at the step boundary, job requeued")
            except BaseException as exc:  # e.g. submitit's 'not requeued because timed-out too many times'
                ending = exc
        else:
            ending = SystemExit(128 + signum)
        if all_reduce_values([float(ending is not None)], info, op="max")[0]:
            raise ending or Preempted(f"{signal.Signals(signum).name}: rank 0 ended the job after its checkpoint")
        self.__enter__()

    def __exit__(self, *exc):
        for sig, prev in self.previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

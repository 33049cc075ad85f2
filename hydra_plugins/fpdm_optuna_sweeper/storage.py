"""Persistent study storage, trial ownership, stale-trial recovery and the trial budget.

Storage: ``journal:PATH`` is Optuna's JournalStorage on a JournalFileBackend (an append-only log
with a lock file; it needs no fcntl locking, so it is safe on NFS-like shared filesystems where
SQLite is not); anything else with ``://`` is an RDB URL. Several sweeper processes may share one
study through either.

Resume policy (documented choice): every trial asked by this sweeper carries its owner
(``sweeper_host``, ``sweeper_pid``) and a heartbeat (``sweeper_heartbeat``, unix time, refreshed
by a background thread while the trial runs). A RUNNING trial is *stale* when its owner process on
this host no longer exists, or when its heartbeat is older than ``stale_after_s`` (owner on another
host, e.g. a Slurm job that was killed). A stale trial is marked FAIL with
``sweeper_fail_reason = "interrupted"`` and its params are re-queued (``enqueue_trial``), so the
point is retried. Interrupted trials (and over-budget ones, see ``over_budget``) count neither
towards ``n_trials`` nor towards the failure rate: a killed sweep loses no budget.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

HOST, PID, HEARTBEAT = "sweeper_host", "sweeper_pid", "sweeper_heartbeat"
RUN_DIR, FAIL_REASON, RETRY_OF = "sweeper_run_dir", "sweeper_fail_reason", "sweeper_retry_of"
# FAIL reasons that are the sweep's bookkeeping, not the objective's fault.
NOT_COUNTED = ("interrupted", "over_budget")
_JOURNAL = "journal:"


def storage_root(sweep_dir_template: str) -> Path:
    """Where relative journal paths live: the fixed folders of ``hydra.sweep.dir`` before the first
    interpolation. ``multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}`` -> ``multirun``, so rerunning the
    same command (a new time-stamped sweep folder) finds the same study; a pinned sweep dir is its
    own root."""
    parts = []
    for part in Path(str(sweep_dir_template)).parts:
        if "${" in part:
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def expand_spec(spec: str | None, study_name: str) -> str | None:
    """``journal`` (the default) -> ``journal:optuna/<study_name>.journal``; ``memory``/None/"" -> None."""
    if spec is None or spec in ("", "memory"):
        return None
    if spec == "journal":
        return f"{_JOURNAL}optuna/{study_name}.journal"
    return spec


def journal_path(spec: str, root: str | Path) -> Path:
    path = Path(spec[len(_JOURNAL) :]).expanduser()
    return path if path.is_absolute() else Path(root) / path


def resolve_storage(spec: str | None, root: str | Path) -> None | str | BaseStorage:
    """``None`` | ``journal:PATH`` (relative to ``root``, see ``storage_root``) | RDB URL -> Optuna storage."""
    if spec is None or spec == "":
        return None
    if spec.startswith(_JOURNAL):
        path = journal_path(spec, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" in spec:
        return spec  # create_study builds the RDBStorage
    raise ValueError(f"hydra.sweeper.storage={spec!r}: expected 'journal:PATH' or an RDB URL like 'sqlite:///study.db'")


def describe_storage(spec: str | None, root: str | Path) -> str | None:
    """The storage as written to study.json: journal paths made absolute, passwords hidden."""
    if not spec:
        return None
    if spec.startswith(_JOURNAL):
        return _JOURNAL + str(journal_path(spec, root).absolute())
    head, sep, tail = spec.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        tail = f"{user}:***@{tail.split('@', 1)[1]}"
    return head + sep + tail


def open_existing_study(spec: str | None, root: str | Path, study_name: str) -> optuna.Study | None:
    """The stored study, opened with ``optuna.load_study`` without creating anything (no journal
    file, no database, no study): None when there is no such study yet, or for in-memory storage."""
    if not spec:
        return None
    if spec.startswith(_JOURNAL):
        path = journal_path(spec, root)
        if not path.is_file():
            return None
        storage: str | BaseStorage = JournalStorage(JournalFileBackend(str(path)))
    elif spec.startswith("sqlite:///") and not Path(spec[len("sqlite:///") :]).is_file():
        return None
    else:
        storage = spec
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no study of that name in the storage yet
        return None


def peek_trials(spec: str | None, root: str | Path, study_name: str) -> list[FrozenTrial] | None:
    """The study's trials, read without creating anything: [] when there is no such study yet,
    None for in-memory storage."""
    if not spec:
        return None
    study = open_existing_study(spec, root, study_name)
    return study.get_trials(deepcopy=False) if study is not None else []


def owner_attrs() -> dict:
    return {HOST: socket.gethostname(), PID: os.getpid(), HEARTBEAT: time.time()}


def fail_reason(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(FAIL_REASON)


def counts_towards_budget(trial: FrozenTrial) -> bool:
    if trial.state == TrialState.FAIL:
        return fail_reason(trial) not in NOT_COUNTED
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def budget_used(trials: Iterable[FrozenTrial]) -> int:
    """Finished trials that count plus RUNNING ones (which will count once told)."""
    return sum(counts_towards_budget(t) for t in trials)


def over_budget(trials: Sequence[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether trial ``number`` is beyond the total, with counting trials ranked by number.

    Two processes asking at the same moment may both see room for one more trial; ranking by
    trial number makes exactly the later one give way, whichever process checks first.
    """
    ahead = [t for t in trials if t.number < number and counts_towards_budget(t)]
    return len(ahead) >= n_trials


def failures(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.FAIL and fail_reason(t) not in NOT_COUNTED]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after_s: float, now: float | None = None) -> bool:
    if trial.state != TrialState.RUNNING or HEARTBEAT not in trial.user_attrs:
        return False  # not ours: leave trials of other tools alone
    now = time.time() if now is None else now
    if trial.user_attrs.get(HOST) == socket.gethostname():
        pid = int(trial.user_attrs.get(PID, -1))
        if pid == os.getpid():
            return False
        if not _pid_alive(pid):
            return True
    return now - float(trial.user_attrs[HEARTBEAT]) > stale_after_s


def safe_tell(study: optuna.Study, trial: int | optuna.trial.Trial, **kw: Any) -> bool:
    """``study.tell`` that tolerates GridSampler calling ``study.stop()`` outside optimize().

    GridSampler.after_trial stops the study once the grid is covered, which raises a
    RuntimeError under ask/tell although the state was stored (Optuna's tell does that in a
    ``finally``). Returns False when the trial had already been finished by another process.
    """
    try:
        study.tell(trial, **kw)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise
    return True


def interrupt_and_requeue(study: optuna.Study, trial: FrozenTrial | optuna.trial.Trial) -> bool:
    """Mark a trial FAIL ("interrupted", not counted) and re-queue its params for a retry.

    Returns False when the trial was already finished (told by its owner, or recovered by another
    process first), so exactly one process re-queues it.
    """
    try:
        # Optuna's public API cannot set attrs of another process's trial; RetryFailedTrialCallback
        # uses the storage in the same way.
        study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, "interrupted")
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if not safe_tell(study, trial.number, state=TrialState.FAIL):
        return False
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})
    return True


def recover_stale_trials(study: optuna.Study, stale_after_s: float) -> list[FrozenTrial]:
    """Mark stale RUNNING trials FAIL ("interrupted") and re-queue their params."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(trial, stale_after_s) and interrupt_and_requeue(study, trial):
            log.warning(
                f"Trial {trial.number} was interrupted (owner {trial.user_attrs.get(HOST)}:"
                f"{trial.user_attrs.get(PID)} gone); marked FAIL and re-queued"
            )
            recovered.append(trial)
    return recovered


class Heartbeat:
    """Refresh ``sweeper_heartbeat`` of running trials from a daemon thread."""

    def __init__(self, study: optuna.Study, trials: Sequence[optuna.trial.Trial], interval_s: float):
        self._trials, self._interval = list(trials), max(0.5, float(interval_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for trial in self._trials:
                try:
                    trial.set_user_attr(HEARTBEAT, time.time())
                except Exception as err:  # finished elsewhere, storage hiccup: never kill a sweep
                    log.debug(f"heartbeat of trial {trial.number} skipped: {err}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

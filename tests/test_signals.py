"""SIGINT / SIGTERM of a local run or sweep (docs/cluster.md, "Stopping a local run"): the job in
training checkpoints, the WHOLE process stops non-zero, no record is left, and rerunning the same
command resumes from the checkpoint. The Slurm path (a callable handler from submitit) is unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.runtime.distributed import DistInfo
from harness.stages.train import Interrupted, Preempted, _SignalCheckpoint

pytestmark = pytest.mark.usefixtures("no_network")

STEPS = 100  # far more than run before the signal: the kill lands mid-training


def _train_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "cache" / "train").glob("*") if p.is_dir())


def _logged_steps(train_dir: Path) -> list[int]:
    log = train_dir / "train_log.jsonl"
    return [json.loads(ln)["step"] for ln in log.read_text().splitlines()] if log.is_file() else []


def _train_args(fast_overrides: list[str], steps: int, *extra: str) -> list[str]:
    """A 2-point sweep (train.seed=0,1) that only trains, logs every step and never checkpoints by
    itself: any checkpoint on disk was written for the signal."""
    return [
        *fast_overrides,
        "run.stages=[train]",
        f"train.budget.value={steps}",
        "train.batch_size=8",
        "train.ckpt_every=100000",
        "train.log_every=1",
        "train.seed=0,1",
        *extra,
    ]


def _start_when_training(args: list[str], cwd: Path, env: dict, trainings: int, timeout: float) -> subprocess.Popen:
    """``python -m harness.run -m ARGS`` in its own session, returned once ``trainings`` jobs have
    logged 3 steps each."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.run", "-m", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.monotonic()
    while sum(len(_logged_steps(d)) >= 3 for d in _train_dirs(cwd)) < trainings:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() - t0 < timeout, f"{trainings} training(s) did not start"
        time.sleep(0.05)
    return proc


def test_sigterm_stops_a_local_sweep_after_a_checkpoint_and_a_rerun_resumes(
    tmp_path, fast_overrides, offline_env, hydra_app
):
    args = _train_args(fast_overrides, STEPS)
    proc = _start_when_training(args, tmp_path, offline_env, trainings=1, timeout=120)
    proc.send_signal(signal.SIGTERM)  # `kill <pid>` of the sweep
    out, _ = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "interrupted: SIGTERM: checkpointed at step" in out
    (train_dir,) = _train_dirs(tmp_path)  # the second job never started
    assert "#1 :" not in out
    (ckpt,) = train_dir.glob("ckpt-*.pt")
    stopped = int(ckpt.stem.split("-")[1])
    assert 3 <= stopped < STEPS and _logged_steps(train_dir)[-1] == stopped
    assert not (train_dir / "complete.json").exists()
    assert not list((tmp_path / "sweep").glob("*/record.json"))  # no failed record to block the rerun

    hydra_app(args, multirun=True)  # the same command again: resumes, then runs the second job
    steps = _logged_steps(train_dir)
    assert steps[len(steps) - (STEPS - stopped) :] == list(range(stopped + 1, STEPS + 1))  # resumed, not restarted
    assert steps.count(1) == 1  # step 1 was trained once: the rerun did not start from scratch
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/record.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert len(_train_dirs(tmp_path)) == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_local_interrupt_ends_the_process_with_128_plus_the_signal(signum):
    with _SignalCheckpoint() as signals:
        os.kill(os.getpid(), signum)
        deadline = time.monotonic() + 5
        while signals.poll(DistInfo()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signals.poll(DistInfo()) == signum
        with pytest.raises(Interrupted) as exc:
            signals.release(signum, DistInfo(), step=7)
    assert exc.value.code == 128 + signum and f"{signal.Signals(signum).name}: checkpointed at step 7" in str(exc.value)


def test_a_handler_installed_before_training_keeps_the_slurm_requeue_path(monkeypatch):
    """Under submitit the previous handlers are callables: USR2 requeues (-> Preempted, exit code None,
    no record) and SIGTERM is submitit's bypass (returns: training goes on), exactly as before."""
    calls = []

    def requeue(signum, frame):
        calls.append(signum)
        raise SystemExit(0)

    def bypass(signum, frame):
        calls.append(signum)

    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    old = {s: signal.signal(s, h) for s, h in ((signal.SIGUSR2, requeue), (signal.SIGTERM, bypass))}
    try:
        with _SignalCheckpoint() as signals:
            signals.release(signal.SIGTERM, DistInfo(), step=3)  # bypass returns: no exception
            assert signal.getsignal(signal.SIGTERM) == signals._handle  # re-armed
            with pytest.raises(Preempted) as exc:
                signals.release(signal.SIGUSR2, DistInfo(), step=4)
        assert exc.value.code is None and calls == [signal.SIGTERM, signal.SIGUSR2]
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_a_parallel_sweep_stops_with_every_training_checkpointed(how, tmp_path, fast_overrides, offline_env):
    """hydra/launcher=parallel: Ctrl-C (SIGINT to the process group) or `kill` of the parent
    (SIGTERM to it alone) checkpoints BOTH jobs in training (joblib would SIGKILL the workers if an
    exception crossed the pool), exits 128 + signal with one line and leaves no record, so the same
    command resumes both. Their progress bars keep to lines of their own: one worker draws one line
    down (tqdm's cursor-up escape), where both used to overwrite the cursor's line."""
    args = _train_args(fast_overrides, STEPS * 20, "hydra/launcher=parallel", "run.progress=true")
    proc = _start_when_training(args, tmp_path, offline_env, trainings=2, timeout=180)
    signum = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
    if how == "ctrl-c":
        os.killpg(proc.pid, signum)  # the terminal signals the whole foreground group
    else:
        proc.send_signal(signum)  # the parent alone: it passes the signal on to its workers
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 128 + signum, out[-3000:]
    assert f"interrupted: {signal.Signals(signum).name}" in out and "Traceback" not in out, out[-3000:]
    assert "\x1b[A" in out, out[-3000:]  # a bar drawn at position 1
    dirs = _train_dirs(tmp_path)
    assert len(dirs) == 2
    stopped = {}
    for d in dirs:
        (ckpt,) = d.glob("ckpt-*.pt")  # each one checkpointed at its step boundary
        stopped[d] = int(ckpt.stem.split("-")[1])
        assert 3 <= stopped[d] < STEPS * 20 and _logged_steps(d)[-1] == stopped[d]
        assert not (d / "complete.json").exists()
    assert not list((tmp_path / "sweep").glob("*/record.json"))  # (resuming: the sequential test above)

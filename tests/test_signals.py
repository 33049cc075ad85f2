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


def test_sigterm_stops_a_local_sweep_after_a_checkpoint_and_a_rerun_resumes(
    tmp_path, fast_overrides, offline_env, hydra_app
):
    args = [
        *fast_overrides,
        "run.stages=[train]",
        f"train.budget.value={STEPS}",
        "train.batch_size=8",
        "train.ckpt_every=100000",
        "train.log_every=1",
        "train.seed=0,1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.run", "-m", *args],
        cwd=tmp_path,
        env=offline_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.monotonic()
    while not any(len(_logged_steps(d)) >= 3 for d in _train_dirs(tmp_path)):  # training has started
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() - t0 < 120, "training did not start"
        time.sleep(0.05)
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

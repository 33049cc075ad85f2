"""Progress bars of parallel workers keep to terminal lines of their own (harness/runtime/progress.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from harness.runtime import progress

_HOLD = (
    "import sys; from harness.runtime.progress import terminal_line as t; "
    "print(t(), t(), flush=True); sys.stdin.read()"  # twice: the slot is kept, not retaken
)


def _worker(env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


@pytest.mark.skipif(sys.platform == "win32", reason="line slots use flock (POSIX)")
def test_each_live_worker_holds_its_own_line_and_a_finished_one_frees_it(tmp_path):
    env = {**os.environ, progress.LINES_ENV: str(tmp_path)}
    first, line_first = _worker(env)
    second, line_second = _worker(env)
    assert (line_first, line_second) == ("0 0", "1 1")
    first.communicate("")  # the worker exits (or crashes): its lock dies with it
    third, line_third = _worker(env)
    assert line_third == "0 0"
    for proc in (second, third):
        proc.communicate("")


def test_bars_outside_a_parallel_launch_are_plain_tqdm(monkeypatch):
    monkeypatch.delenv(progress.LINES_ENV, raising=False)
    assert progress.terminal_line() is None
    out = io.StringIO()
    bar = progress.progress_bar(total=2, file=out, desc="x")
    bar.update(2)
    bar.close()
    assert "\x1b[A" not in out.getvalue() and out.getvalue().endswith("\n")  # left on the cursor's line


@pytest.mark.skipif(sys.platform == "win32", reason="line slots use flock (POSIX)")
def test_a_workers_bar_is_drawn_on_its_line_and_cleared_when_done(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.LINES_ENV, str(tmp_path))
    monkeypatch.setattr(progress, "_held", {str(tmp_path): (1, -1)})  # this process holds line 1
    out = io.StringIO()
    bar = progress.progress_bar(total=2, file=out, desc="x", mininterval=0)
    bar.update(1)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\n") and "\x1b[A" in text  # one line down, then back up
    assert "1/2" in text and text.rsplit("\r", 1)[-1].replace("\x1b[A", "").strip() == ""  # cleared at close

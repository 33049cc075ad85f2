"""Freed CPU memory is kept for the next tensor (harness/runtime/allocator.py): a loop of
multi-megabyte temporaries stops faulting in fresh pages. Counted in page faults, not timed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.runtime import allocator

_LOOP = """
import json, resource, sys, torch
from harness.runtime.allocator import reuse_freed_memory
tuned = reuse_freed_memory() if sys.argv[1] == "tune" else False
x = torch.randn(4000, 256)  # the main job's MLP activations at sampling batch 250
def loop(n):
    for _ in range(n):
        y = x * x  # 4 MiB temporaries, freed at once
        z = torch.nn.functional.gelu(y, approximate="tanh") + y
        del y, z
loop(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
loop(50)
print(json.dumps({"tuned": tuned, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50}))
"""


def _faults_per_iteration(mode: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _LOOP, mode], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator.why_not_tuned() is not None, reason=f"allocator not tunable: {allocator.why_not_tuned()}")
def test_tuned_allocator_reuses_freed_pages(offline_env):
    env = {k: v for k, v in offline_env.items() if not k.startswith("MALLOC_")}
    system = _faults_per_iteration("system", env)
    tuned = _faults_per_iteration("tune", env)
    assert tuned["tuned"] is True
    assert system["faults"] > 20  # glibc's defaults hand the pages back: the test can see the difference
    assert tuned["faults"] < 1


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert "MALLOC" in allocator.why_not_tuned()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert "preloaded" in allocator.why_not_tuned()


def test_every_job_applies_it_once_per_process_unless_turned_off(monkeypatch):
    from hydra import compose, initialize_config_module

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    from harness.stages import job

    with initialize_config_module("harness.config", version_base="1.3"):
        on = compose("config", overrides=["run.plan=true"])
        off = compose("config", overrides=["run.plan=true", "run.reuse_freed_memory=false"])
    job.run_job(on, progress=False, plan_only=True)
    job.run_job(off, progress=False, plan_only=True)
    assert calls == [1]

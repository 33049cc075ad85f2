"""User code joins by import, not by fork: a package written here registers a sampler and a
schedule, and ``run.imports`` makes both valid names in every command (harness/config/user_code.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from harness.app.precheck import precheck
from harness.config.validate import ConfigError

PACKAGE = '''
"""A user's package: registers what it adds on import."""
from fpdm.schedules import register_schedule
from harness.diffusion.samplers import DDIMSampler, register_sampler


@register_sampler("my_ddim")
class MyDDIM(DDIMSampler):
    """DDIM under the user's own name."""


@register_schedule("front_loaded")
def front_loaded(total, steps, **_):
    """All spare iterations on the first step: [total - steps + 1, 1, 1, ...]."""
    return [total - steps + 1] + [1] * (steps - 1)
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "my_fpdm_plugins").mkdir()
    (tmp_path / "my_fpdm_plugins" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_without_the_import_the_names_are_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="sample.sampler"):
        precheck(["sample.sampler=my_ddim"])


def test_a_module_that_does_not_import_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"run.imports: no_such_pkg_xyz does not import \(ModuleNotFoundError"):
        precheck(["run.imports=[no_such_pkg_xyz]"])


def test_a_users_sampler_and_schedule_run_through_inspect_and_a_job(user_package, offline_env, fast_overrides):
    env = {**offline_env, "PYTHONPATH": f"{user_package}:{offline_env.get('PYTHONPATH', '')}"}
    plugin = ["run.imports=[my_fpdm_plugins]", "sample.sampler=my_ddim", "sample.schedule=front_loaded"]
    budget = ["sample.budget=20", "sample.steps=5", "sample.match=blocks"]  # 2 explicit blocks + 10 iterations
    proc = subprocess.run(
        [sys.executable, "-m", "harness.inspect", *plugin, *budget, "inspect.format=json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plan"]["iters"] == [6, 1, 1, 1, 1]
    overrides = [o for o in fast_overrides if not o.startswith("sample.steps")]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", *overrides, *plugin, *budget, "run.stages=[train,sample]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=user_package,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(next(user_package.glob("run/record.json")).read_text())
    assert record["status"] == "ok" and record["axes"]["sampler"] == "my_ddim"
    assert record["metrics"]["block_passes_per_image"] == 20

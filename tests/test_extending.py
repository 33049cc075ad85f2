"""Extending fpdm-bench from outside the repository (docs/extending.md): a user's own sweeps,
launchers and callbacks through ``--config-dir``, ``--config-path`` and ``hydra.searchpath``; the
``_target_`` rule (anything the user writes; only the project's own from records and caches)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose

from harness.app.precheck import _init_search_path, precheck
from harness.config.targets import check_loaded_targets, trusted_config
from harness.config.validate import ConfigError

pytestmark = pytest.mark.usefixtures("no_network")

MINE_SWEEP = """\
# @package _global_
hydra:
  sweeper:
    params:
      sample.budget: 60,120
model:
  name: fpdm
sample:
  iters: 2
"""
MINE_LAUNCHER = "defaults:\n  - basic\n"  # Hydra's basic launcher under the user's own name
CLUSTER_LAUNCHER = "defaults:\n  - slurm_cpu\n  - _self_\npartition: mygpu\ntimeout_min: 17\n"


@pytest.fixture
def user_dir(tmp_path) -> Path:
    d = tmp_path / "myconf"
    (d / "sweep").mkdir(parents=True)
    (d / "hydra" / "launcher").mkdir(parents=True)
    (d / "sweep" / "mine.yaml").write_text(MINE_SWEEP)
    (d / "hydra" / "launcher" / "mine.yaml").write_text(MINE_LAUNCHER)
    (d / "hydra" / "launcher" / "mycluster.yaml").write_text(CLUSTER_LAUNCHER)
    return d


def _planned(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.startswith("[plan]")]


def test_user_sweep_launcher_and_callbacks_from_config_dir(tmp_path, user_dir, run_cli, fast_overrides):
    """A real (tiny) run of the user's sweep on the user's launcher, with the user's callbacks."""
    sweep_dir, extra_report = tmp_path / "sweep", tmp_path / "shared_report"
    fast = [o for o in fast_overrides if not o.startswith(("sample.steps", "hydra.sweep.dir"))]
    proc = run_cli(
        [
            "-m",
            "--config-dir",
            user_dir,
            "sweep=mine",
            "hydra/launcher=mine",
            *fast,
            f"hydra.sweep.dir={sweep_dir}",
            "+hydra.callbacks.job_return._target_=hydra.experimental.callbacks.LogJobReturnCallback",
            "+hydra.callbacks.compare._target_=reports.callback.ReportCallback",
            f"+hydra.callbacks.compare.out={extra_report}",
            "+hydra.callbacks.compare.figures=false",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sweep_dir.glob("*/record.json")]
    assert sorted(r["axes"]["budget_blocks"] for r in records) == [60, 120]  # the user's grid
    assert all(r["status"] == "ok" and r["axes"]["model"] == "fpdm" for r in records)
    choices = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["runtime"]["choices"]
    assert choices["sweep"] == "mine" and choices["hydra/launcher"] == "mine"
    # the user's callbacks ran: Hydra's LogJobReturnCallback logged each job, ReportCallback wrote its report
    assert (proc.stdout + proc.stderr).count("Succeeded with return value") == 2
    assert (extra_report / "report.html").is_file() and (sweep_dir / "report.html").is_file()


def test_user_primary_config_via_config_path_and_searchpath(tmp_path, user_dir, run_cli):
    primary = tmp_path / "primary"
    primary.mkdir()
    (primary / "myconfig.yaml").write_text(
        "defaults:\n  - config\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - pkg://harness.config\n    - file://{user_dir}\n"
        "sample:\n  iters: 2\n"
    )
    proc = run_cli(
        [
            "-m",
            "--config-path",
            primary,
            "--config-name",
            "myconfig",
            "sweep=mine",
            "run.plan=true",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = _planned(proc.stdout)
    # iters=2 from the user's primary config: FLOP-matched, 60 and 120 blocks give 12 and 24 steps
    # (tests/test_flops.py); the default sample.steps=20 would not fit 60 blocks' FLOPs at all
    assert len(plans) == 2 and sorted(p.split(" steps=")[1].split()[0] for p in plans) == ["12", "24"], plans
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/record.json")]
    assert not records  # plan only: no job record


def test_searchpath_override_and_a_cluster_profile_of_ones_own_compose(tmp_path, user_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    precheck(["-m", f"hydra.searchpath=[file://{user_dir}]", "sweep=mine", "hydra/launcher=mycluster"])
    _init_search_path(["--config-dir", str(user_dir)], None, "harness.config")
    cfg = compose("config", overrides=["sweep=mine", "hydra/launcher=mycluster"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")  # the project's slurm_cpu underneath
    assert (launcher.partition, launcher.timeout_min, launcher.array_parallelism) == ("mygpu", 17, 16)
    assert cfg.sweep is None and list(cfg.hydra.sweeper.params) == ["sample.budget"]


def test_without_the_users_dir_the_sweep_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^sweep/mine does not exist; valid sweep options: .*tune"):
        precheck(["-m", "sweep=mine"])
    with pytest.raises(ConfigError, match=r"^--config-dir=.*nowhere is not a directory"):
        precheck(["-m", "--config-dir", str(tmp_path / "nowhere"), "sweep=mine"])


def _record(tmp_path: Path, config: dict) -> Path:
    job = tmp_path / "job-1"
    job.mkdir()
    (job / "record.json").write_text(json.dumps({"status": "ok", "config": config}))
    return job


def test_a_record_is_loaded_with_project_targets_and_refused_with_a_foreign_one(tmp_path):
    ok = _record(tmp_path, {"model": {"name": "fpdm"}, "solver": {"_target_": "harness.x.Y"}})
    assert trusted_config(ok).model.name == "fpdm"
    evil = tmp_path / "evil.json"
    evil.write_text(
        json.dumps({"config": {"model": {"name": "fpdm"}, "cb": [{"_target_": "os.system", "command": "touch pwned"}]}})
    )
    with pytest.raises(ConfigError, match=r"evil.json: cb\[0\]._target_=os.system is not loaded"):
        trusted_config(evil)
    with pytest.raises(ConfigError, match="not a readable job record"):
        trusted_config(tmp_path / "missing.json")
    check_loaded_targets({"hydra": {"sweeper": {"sampler": {"_target_": "optuna.samplers.TPESampler"}}}}, "x")
    with pytest.raises(ConfigError, match="builtins.eval"):
        check_loaded_targets({"a": {"_target_": "builtins.eval"}}, "cache/eval/k/complete.json")


def test_report_callback_options_out_also_and_title(tmp_path):
    """``reports.callback.ReportCallback`` as a user callback: a second report, elsewhere, over this sweep
    and an earlier one (the job tables list the jobs of both)."""
    from omegaconf import OmegaConf
    from report_fixtures import record, write_sweep

    from reports.callback import ReportCallback

    now = write_sweep(tmp_path / "now", [record({"model": "dit", "budget_blocks": 12, "seed": 0}, {"fid": 1.0})])
    old = write_sweep(tmp_path / "old", [record({"model": "dit", "budget_blocks": 24, "seed": 0}, {"fid": 2.0})])
    out = tmp_path / "shared"
    cb = ReportCallback(out=str(out), also=[str(old)], figures=False, title="now vs old")
    path = cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(now)}}}))
    assert path == out / "report.html" and "now vs old" in path.read_text()
    assert not (now / "report.html").exists()  # only where it was asked to go
    import pandas as pd

    jobs = pd.read_csv(out / "tables" / "jobs.csv")
    assert sorted(zip(jobs["sweep"], jobs["budget_blocks"])) == [("now", 12), ("old", 24)]  # both sweeps' jobs
    assert (
        ReportCallback(enabled=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(now)}}})) is None
    )

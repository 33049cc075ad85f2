"""The Hydra app (issue 4): configs compose, presets are feasible, sweeps cache, plan, report and
record provenance; the task returns the objective sweepers consume.

Most scenarios run the app in process through Hydra (``hydra_app``); two run the real command line
(`python -m harness.run`) end to end. Every job is tiny (``fast_overrides``); the network is blocked.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from search_helpers import search_trial, write_study

from harness.app.precheck import expand_sweep, precheck
from harness.config import list_sweeps
from harness.config.validate import validate_config

pytestmark = pytest.mark.usefixtures("no_network")


def records_in(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/record.json"))}


def cache_files(cache: Path) -> dict:
    """Every artifact file of the cache with its size and mtime (lock files excluded)."""
    return {
        str(p.relative_to(cache)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(Path(cache).rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def returns_by_job(returns) -> dict[str, object]:
    return {Path(r.hydra_cfg.hydra.runtime.output_dir).name: r.return_value for r in returns[0]}


# ----------------------------------------------------------------------------- composition
@pytest.fixture
def compose_cfg():
    def _compose(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="harness.config", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


def test_main_job_runs_two_points_at_a_time_dit_and_fpdm_first(compose_cfg):
    """The main job's launcher is hydra/launcher=parallel (two worker processes) and `model` varies
    fastest, so its first two points train DiT and FPDM side by side; a command-line launcher wins."""
    cfg = compose_cfg(["sweep=budget_schedules"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.fpdm_parallel_launcher.launcher.ParallelLauncher"
    assert launcher.n_jobs == 2 and int(launcher.batch_size) == 1
    jobs = expand_sweep([], OmegaConf.to_container(cfg.hydra.sweeper.params))
    models = [dict(o.split("=", 1) for o in job)["model"] for job in jobs]
    assert len(jobs) == 30 and models[:2] == ["dit", "fpdm"] and models[2:4] == ["dit", "fpdm"]
    assert "joblib" not in compose_cfg(["sweep=budget_schedules", "hydra/launcher=basic"]).hydra.launcher._target_


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (40 * i, 20, 200 if c == "a" else 10)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "group,option",
    [
        ("model", "dit"),
        ("model", "fpdm"),
        ("solver", "picard"),
        ("solver", "relaxed"),
        ("solver", "anderson"),
        ("solver", "broyden"),
        ("data", "digits"),
        ("data", "image_folder"),
    ],
)
def test_every_group_option_composes_validates_and_instantiates(group, option, tmp_path, compose_cfg):
    from fpdm.solvers import make_solver
    from harness.data import build_dataset
    from harness.stages.job import _build

    # photos are scored with Inception (weights needed); this test stops before scoring
    extra = (
        [f"data.root={_image_folder(tmp_path / 'img')}", "run.stages=[train,sample]"]
        if option == "image_folder"
        else []
    )
    cfg = compose_cfg([f"{group}={option}", f"paths.cache_dir={tmp_path / 'c'}", *extra])
    assert cfg[group].name == option
    validate_config(cfg)
    data = build_dataset(cfg.data)
    model = _build(cfg, data)  # seeded from train.seed: the same weights twice
    again = _build(cfg, data)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    x = torch.stack([torch.as_tensor(data.train[i][0]) for i in range(2)]).float()
    out = model.eval()(x, torch.tensor([3, 700]), torch.tensor([0, 1]))
    assert out.shape[0] == 2 and out.shape[2:] == x.shape[2:] and torch.isfinite(out).all()
    knobs = {k: v for k, v in dict(cfg.solver).items() if k not in ("name", "tol")}
    z, stats = make_solver(cfg.solver.name, **knobs)(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), max_iter=30)
    assert torch.allclose(z, torch.full((2, 3), 2.0), atol=1e-3) and stats.nfe <= 30


def test_the_remaining_options_compose_and_the_callback_instantiates(tmp_path, compose_cfg):
    """dit_diffusers and latents need local files to build; they compose and name what is missing."""
    from hydra.utils import instantiate

    from harness.app.callbacks import SweepReportCallback
    from harness.config.validate import ConfigError

    cfg = compose_cfg(["model=dit_diffusers", "data=latents"])
    assert (cfg.model.name, cfg.data.name) == ("dit_diffusers", "latents")
    with pytest.raises(ConfigError, match="data.root"):
        validate_config(cfg)
    assert isinstance(instantiate(cfg.hydra.callbacks.sweep_report), SweepReportCallback)


@pytest.mark.parametrize("name", list_sweeps())
def test_sweep_preset_composes_and_every_job_passes_the_checks(name, tmp_path, compose_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if name == "schedule_compare":  # its density jobs read the search's best trial (harness/app/searched.py)
        write_study(tmp_path / "multirun", [search_trial([0.3, 0.6, 1.0, 0.8], 12, 1.0)])
    precheck(["-m", f"sweep={name}"])  # the basic-sweeper presets: every job of the grid
    base = compose_cfg([f"sweep={name}"])
    assert base.sweep == name
    if "optuna" not in str(base.hydra.sweeper._target_).lower():
        return
    # a sampled sweep is pre-checked at its base config: check every point of its search space here
    params = {k: str(v) for k, v in OmegaConf.to_container(base.hydra.sweeper.params).items()}
    points = expand_sweep([], params)
    assert (
        len(points) >= {"tune": 2 * 4 * 2 * 8, "schedule_search": 17}[name]
    )  # tune: solver x schedule x reuse x iters
    by_group: dict = {}
    for point in points:
        groups = tuple(o for o in point if o.split("=")[0] in ("solver", "model", "data"))
        if groups not in by_group:
            by_group[groups] = compose_cfg([f"sweep={name}", *groups])
        cfg = by_group[groups].copy()
        for o in point:
            if o not in groups:
                key, value = o.split("=", 1)
                OmegaConf.update(cfg, key, yaml.safe_load(value))
        validate_config(cfg)


# ----------------------------------------------------------------------------- a small sweep, twice
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, hydra_app, fast_overrides_for, no_network_module):
    root = tmp_path_factory.mktemp("app_sweep")
    overrides = [*fast_overrides_for(root), "sample.iters=1,2"]
    first = hydra_app(overrides, multirun=True)
    first_records = records_in(root / "sweep")
    before = cache_files(root / "cache")
    second = hydra_app(overrides, multirun=True)
    return dict(
        root=root,
        overrides=overrides,
        first=first,
        second=second,
        first_records=first_records,
        records=records_in(root / "sweep"),
        cache_before=before,
        cache_after=cache_files(root / "cache"),
    )


def test_the_task_returns_fid_which_the_record_holds(sweep):
    returned = returns_by_job(sweep["first"])
    assert len(returned) == 2
    for job_id, value in returned.items():
        rec = sweep["first_records"][job_id]
        assert rec["status"] == "ok" and isinstance(value, float) and math.isfinite(value)
        assert value == pytest.approx(rec["metrics"]["fid"], rel=0, abs=0)


def test_jobs_sharing_a_model_train_it_once_and_a_rerun_hits_the_cache(sweep):
    first = [r["stages"] for r in sweep["first_records"].values()]
    assert sorted(s["train"] for s in first) == ["cached", "ran"]  # sampling settings share one model
    assert all(s["sample"] == "ran" and s["evaluate"] == "ran" for s in first)
    for rec in sweep["records"].values():  # the re-run: nothing trained, sampled or scored again
        assert rec["stages"] == {"train": "cached", "sample": "cached", "evaluate": "cached"}
    assert sweep["cache_after"] == sweep["cache_before"]  # no artifact written or touched
    assert returns_by_job(sweep["second"]) == returns_by_job(sweep["first"])


def test_every_multirun_writes_its_plan_and_report(sweep):
    sweep_dir = sweep["root"] / "sweep"
    plan = json.loads((sweep_dir / "sweep_plan.json").read_text())["jobs"]
    assert {j["job_id"] for j in plan} == set(sweep["records"])
    assert sorted(o for j in plan for o in j["overrides"] if o.startswith("sample.iters")) == [
        "sample.iters=1",
        "sample.iters=2",
    ]
    html = (sweep_dir / "report.html").read_text()
    assert all(job_id in html for job_id in sweep["records"])
    tables = sorted((sweep_dir / "tables").glob("*.csv"))
    assert tables and (sweep_dir / "tables" / "jobs.csv") in tables
    jobs = pd.read_csv(sweep_dir / "tables" / "jobs.csv")
    assert set(jobs["job_id"]) == set(sweep["records"])


def test_every_run_dir_holds_config_overrides_and_provenance(sweep):
    for job_id, rec in sweep["records"].items():
        job_dir = sweep["root"] / "sweep" / job_id
        for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
            assert (job_dir / ".hydra" / name).is_file()
        saved = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert rec["config"] == OmegaConf.to_container(saved, resolve=True)
        assert rec["overrides"] == list(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
        prov = rec["provenance"]
        assert prov["git_sha"] and len(prov["git_sha"].split("-")[0]) == 40
        assert prov["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
        assert prov["hardware"]["cpu_count"] and "cuda_available" in prov["hardware"] and prov["python"]


def test_a_single_run_returns_a_tuple_objective_and_prints_a_table(sweep, hydra_app, capsys):
    overrides = [
        *sweep["overrides"][:-1],
        "sample.iters=1",
        "run.objective=[fid,kid_mean]",
        f"hydra.run.dir={sweep['root'] / 'single'}",
    ]
    ret = hydra_app(overrides)
    rec = json.loads((sweep["root"] / "single" / "record.json").read_text())
    assert rec["stages"]["train"] == "cached"
    assert ret.return_value == (rec["metrics"]["fid"], rec["metrics"]["kid_mean"])
    out = capsys.readouterr().out
    header, rule, row = out.strip().splitlines()[-4:-1]
    assert header.split()[:2] == ["job_id", "status"] and "fid" in header.split() and set(rule) <= {"-", " "}
    assert row.split()[:2] == ["single", "ok"] and f"{rec['metrics']['fid']:.4g}" in row.split()


def test_plan_mode_lists_status_without_running(sweep, hydra_app, capsys):
    """done (record ok, all cached), cached (all cached, no record yet), to run (something computes)."""
    sweep_dir = sweep["root"] / "sweep"
    job_ids = sorted(sweep["records"])
    moved = sweep_dir / job_ids[1] / "record.json"
    shutil.move(moved, moved.with_suffix(".bak"))
    try:
        before = cache_files(sweep["root"] / "cache")
        hydra_app([*sweep["overrides"][:-1], "sample.iters=1,2,3", "run.plan=true"], multirun=True)
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[plan]")]
        assert cache_files(sweep["root"] / "cache") == before  # nothing trained, sampled or scored
        assert len([d for d in (sweep["root"] / "cache" / "sample").iterdir() if d.is_dir()]) == 2
    finally:
        shutil.move(moved.with_suffix(".bak"), moved)
    status = {ln.split()[1]: ln.split("->")[1].split("(")[0].strip() for ln in lines}
    assert len(status) == 3
    assert status[job_ids[0]] == "done" and status[job_ids[1]] == "cached"
    (new,) = set(status) - set(job_ids)
    assert status[new] == "to run" and not (sweep_dir / new / "record.json").exists()


def test_the_optuna_preset_runs_and_writes_its_trials(tmp_path, hydra_app, fast_overrides):
    # a toy budget: 12 blocks in FLOPs (2 tiny-DiT forwards) fit no FPDM step at 8 iterations, so the
    # sampled iterations are planned in the paper's block count
    toy = ["sample.budget=12", "sample.match=blocks"]
    hydra_app([*fast_overrides, "sweep=tune", "hydra.sweeper.n_trials=2", *toy], multirun=True)
    sweep_dir = tmp_path / "sweep"
    trials = pd.read_csv(sweep_dir / "optuna" / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"COMPLETE"}
    assert trials["value"].notna().all()
    recs = records_in(sweep_dir)
    assert len(recs) == 2 and all(r["status"] == "ok" and r["axes"]["sweep"] == "tune" for r in recs.values())
    assert sorted(trials["value"]) == pytest.approx(sorted(r["metrics"]["fid"] for r in recs.values()))
    assert (sweep_dir / "report.html").is_file()


# ----------------------------------------------------------------------------- the command line
def test_a_single_run_from_the_command_line(tmp_path, run_cli, fast_overrides):
    proc = run_cli(fast_overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "job_id" in proc.stdout and "fid" in proc.stdout and "(FID-32, digits-cnn" in proc.stdout
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["status"] == "ok" and math.isfinite(rec["metrics"]["fid"])
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_a_small_variant_of_the_reuse_preset_in_process(tmp_path, hydra_app, fast_overrides):
    """The fast variant of the command-line run below. 12 blocks matched in FLOPs (the default): DiT's
    2 tiny forwards, 2 x 10,207,232 FLOPs, fit floor(20,414,464 / (3,899,392 + 2,162,688)) = 3 FPDM
    steps at 1 iteration (the block count would give 12 / 3 = 4; tests/test_flops.py derives the FLOPs)."""
    hydra_app([*fast_overrides, "sweep=reuse", "sample.iters=1", "sample.budget=12"], multirun=True)
    recs = records_in(tmp_path / "sweep")
    assert sorted((r["status"], r["axes"]["reuse"], r["axes"]["steps"]) for r in recs.values()) == [
        ("ok", False, 3),
        ("ok", True, 3),
    ]
    assert (tmp_path / "sweep" / "report.html").is_file()


@pytest.mark.slow
def test_a_small_variant_of_the_reuse_preset_end_to_end(tmp_path, run_cli, fast_overrides):
    proc = run_cli(
        # at a toy budget 2 iterations per step fall 8.8% short of DiT's FLOPs (tests/test_bad_input.py)
        ["-m", "sweep=reuse", "sample.iters=1,2", "sample.budget=12", "sample.flops_tolerance=0.1", *fast_overrides],
        cwd=tmp_path,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = records_in(tmp_path / "sweep")
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values()), [r["reason"] for r in recs.values()]
    grid = sorted(
        (r["axes"]["reuse"], r["config"]["sample"]["iters"], r["axes"]["budget_blocks"]) for r in recs.values()
    )
    assert grid == [(False, 1, 12), (False, 2, 12), (True, 1, 12), (True, 2, 12)]
    plan = json.loads((tmp_path / "sweep" / "sweep_plan.json").read_text())["jobs"]
    assert {j["job_id"] for j in plan} == set(recs)
    assert (tmp_path / "sweep" / "report.html").is_file() and list((tmp_path / "sweep" / "tables").glob("*.csv"))
    assert "report:" in proc.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()

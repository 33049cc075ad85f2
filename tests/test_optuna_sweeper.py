"""Tests of the Optuna sweeper plugin (hydra_plugins/fpdm_optuna_sweeper) on a toy Hydra app.

Kill/resume and plugin discovery run the app as a subprocess (as a user would, from the repo
root); the other sweeps run in-process through Hydra's multirun for speed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "toy_objective.py"
if str(ROOT) not in sys.path:  # hydra_plugins is found from the repo root (before pip install -e)
    sys.path.insert(0, str(ROOT))

from hydra_plugins.fpdm_optuna_sweeper import build_sampler, objective_values, parse_search_space  # noqa: E402
from hydra_plugins.fpdm_optuna_sweeper import objective as objective_module  # noqa: E402
from hydra_plugins.fpdm_optuna_sweeper import storage as st  # noqa: E402
from hydra_plugins.fpdm_optuna_sweeper.search_space import format_value, grid_of  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
JOURNAL = "journal:optuna/journal.log"


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("toy_objective", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_objective"] = module  # so custom_search_space="toy_objective.fn" imports
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("toy_objective", None)


def sweep_inproc(toy, sweep_dir: Path, *overrides: str):
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    hydra_ = Hydra.create_main_hydra_file_or_module(
        calling_file=str(APP), calling_module=None, config_path="conf", job_name="toy_objective"
    )
    try:
        return hydra_.multirun(
            config_name="toy",
            task_function=toy.objective,
            overrides=["hydra/sweeper=fpdm_optuna", f"hydra.sweep.dir={sweep_dir}", *overrides],
            with_log_configuration=False,
        )
    finally:
        GlobalHydra.instance().clear()


def sweep_cli(sweep_dir: Path, *overrides: str, wait: bool = True):
    # `python -c` puts the cwd (the repo root) on sys.path, as `python -m harness.run` does: this
    # checks that Hydra discovers hydra_plugins/fpdm_optuna_sweeper from there (no install).
    run_app = "import runpy, sys; sys.argv[0] = sys.argv[1]; del sys.argv[1]; runpy.run_path(sys.argv[0], run_name='__main__')"
    cmd = [
        sys.executable,
        "-c",
        run_app,
        str(APP),
        "-m",
        "hydra/sweeper=fpdm_optuna",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def load(sweep_dir: Path) -> optuna.Study:
    backend = JournalFileBackend(str(sweep_dir / "optuna" / "journal.log"))
    return optuna.load_study(study_name="toy_objective", storage=JournalStorage(backend))


def states(study: optuna.Study):
    return [t.state for t in study.trials]


# ----------------------------------------------------------------------------- search space
def test_search_space_grammar_maps_to_optuna_distributions():
    space = parse_search_space(
        {
            "opt": "choice(adam,sgd)",
            "depth": "range(1,5)",
            "tol": "interval(0.1,1.0)",
            "lr": "tag(log, interval(1e-4,1e-1))",
            "steps": "int(interval(2,10))",
            "width": "tag(log, int(interval(8,64)))",
            "act": "relu,gelu,3",
            "frac": "range(0.1,0.5,0.1)",
            "seed": 7,
        },
        ["+extra=1", "depth=range(2,8,2)"],  # the command line wins over params
    )
    d = space.distributions
    assert d["opt"] == CategoricalDistribution(["adam", "sgd"])
    assert d["depth"] == IntDistribution(2, 6, step=2)  # Hydra's stop is exclusive
    assert d["tol"] == FloatDistribution(0.1, 1.0)
    assert d["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert d["steps"] == IntDistribution(2, 10)
    assert d["width"] == IntDistribution(8, 64, log=True)
    assert d["act"] == CategoricalDistribution(["relu", "gelu", 3])
    assert d["frac"].step == pytest.approx(0.1) and d["frac"].high == pytest.approx(0.4)
    assert sorted(space.fixed) == ["+extra=1", "seed=7"]
    assert space.keys["opt"] == "opt"
    assert parse_search_space({"n": "range(1,5)"}).distributions["n"] == IntDistribution(1, 4)
    assert grid_of(parse_search_space({"n": "range(1,4)", "o": "a,b"})) == {"n": [1, 2, 3], "o": ["a", "b"]}
    with pytest.raises(ValueError, match="grid sampler needs a discrete space"):
        grid_of(space)  # continuous: no grid
    with pytest.raises(ValueError, match="lr=tag"):
        parse_search_space({"lr": "tag(log, interval(0.0, 1.0))"})  # log needs low > 0


@pytest.mark.parametrize(
    "value", ["abc", "a b", "1", "true", "a,b", "it's", "x/y:z", "", 1e-5, 3, True, None, [1, "a b"]]
)
def test_format_value_round_trips_through_the_override_grammar(value):
    parsed = OverridesParser.create().parse_overrides([f"k={format_value(value)}"])[0]
    assert not parsed.is_sweep_override() and parsed.value() == value


def test_objective_values_reject_unusable_results():
    assert objective_values(0.5, None, 1) == [0.5]
    assert objective_values((1, 2.0), None, 2) == [1.0, 2.0]
    assert objective_values({"metrics": {"fid": 3.0}, "cost": 4}, ["metrics.fid", "cost"], 2) == [3.0, 4.0]
    for bad, n in [(float("nan"), 1), (float("inf"), 1), (None, 1), ("x", 1), (1.0, 2), ((1.0, math.nan), 2)]:
        # Hydra's plugin scan re-executes plugin modules (loader.load_module), replacing the class
        # object: look it up at call time rather than holding the one imported at collection.
        with pytest.raises(objective_module.TrialFailure):
            objective_values(bad, None, n)
    with pytest.raises(objective_module.TrialFailure, match="fid"):
        objective_values({"loss": 1.0}, "fid", 1)


def test_build_sampler_registry_and_target_configs():
    space = parse_search_space({"n": "range(1,4)"})
    assert isinstance(build_sampler("nsgaii", 0, space), optuna.samplers.NSGAIISampler)
    tpe = build_sampler({"name": "tpe", "n_startup_trials": 3}, 0, space)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 3
    rnd = build_sampler({"_target_": "optuna.samplers.RandomSampler"}, 5, space)
    assert isinstance(rnd, optuna.samplers.RandomSampler)
    grid = build_sampler("grid", None, space)
    assert isinstance(grid, optuna.samplers.GridSampler) and grid._search_space == {"n": [1, 2, 3]}
    with pytest.raises(KeyError, match="valid names:"):
        build_sampler("cmaes-typo", 0, space)


# ----------------------------------------------------------------------------- storage policy
def _running(number: int, **attrs) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    trial.number = number
    return trial


def test_stale_and_budget_policy():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, now = socket.gethostname(), time.time()
    assert st.is_stale(_running(0, sweeper_host=host, sweeper_pid=dead.pid, sweeper_heartbeat=now), 600)
    assert not st.is_stale(_running(0, sweeper_host=host, sweeper_pid=os.getppid(), sweeper_heartbeat=now), 600)
    assert st.is_stale(_running(0, sweeper_host="elsewhere", sweeper_pid=1, sweeper_heartbeat=now - 700), 600)
    assert not st.is_stale(_running(0, sweeper_host="elsewhere", sweeper_pid=1, sweeper_heartbeat=now - 10), 600)
    assert not st.is_stale(_running(0), 600)  # no owner: not ours to touch
    # Two workers asked trials 3 and 4 for the last slot: only the later one gives way.
    done = [create_trial(value=1.0) for _ in range(3)]
    for i, t in enumerate(done):
        t.number = i
    trials = done + [_running(3), _running(4)]
    assert not st.over_budget(trials, 3, 4) and st.over_budget(trials, 4, 4)
    interrupted = create_trial(state=TrialState.FAIL, user_attrs={st.FAIL_REASON: "interrupted"})
    assert st.budget_used(done + [interrupted]) == 3 and st.failures([interrupted]) == []


def test_heartbeat_refreshes_running_trials():
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr(st.HEARTBEAT, 0.0)
    with st.Heartbeat(study, [trial], interval_s=0.5):
        time.sleep(0.8)
    assert study.trials[0].user_attrs[st.HEARTBEAT] > time.time() - 5


# ----------------------------------------------------------------------------- sweeps (subprocess)
def test_resume_tops_up_to_total_with_distinct_job_dirs(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=0",
        f"hydra.sweeper.storage={JOURNAL}",
        "+hydra.sweeper.params.x='interval(0,1)'",
        "y=range(1,4)",
    ]
    sweep_cli(sweep, *args, "hydra.sweeper.n_trials=2")
    first = {n: (sweep / str(n) / "trial.json").read_text() for n in (0, 1)}
    sweep_cli(sweep, *args, "hydra.sweeper.n_trials=4")

    study = load(sweep)
    assert states(study) == [TrialState.COMPLETE] * 4
    # Job dirs continue after the existing trials; the first run's dirs were not overwritten.
    assert {n: (sweep / str(n) / "trial.json").read_text() for n in (0, 1)} == first
    for t in study.trials:
        assert json.loads((sweep / str(t.number) / "trial.json").read_text())["trial"] == t.number
    # The seed is offset on resume: the fixed seed did not re-propose the first points.
    assert len({t.params["x"] for t in study.trials}) == 4

    df = pd.read_csv(sweep / "optuna" / "trials.csv")
    assert list(df["run_dir"].astype(str)) == ["0", "1", "2", "3"]
    best = yaml.safe_load((sweep / "optuna" / "best.yaml").read_text())
    assert best["best_trial"] == study.best_trial.number
    assert best["best_value"] == pytest.approx(study.best_value)
    assert best["best_run_dir"] == str(study.best_trial.number)
    info = json.loads((sweep / "optuna" / "study.json").read_text())
    assert info["n_trials"] == 4 and info["counts"] == {"COMPLETE": 4}


def test_sigkilled_sweep_resumes_to_total_and_retries_interrupted_trial(tmp_path):
    sweep, flag = tmp_path / "sweep", tmp_path / "sleep.flag"
    flag.write_text("sleep")
    args = [
        "hydra.sweeper.sampler=random",
        f"hydra.sweeper.storage={JOURNAL}",
        "hydra.sweeper.n_trials=2",
        "+hydra.sweeper.params.x='interval(0,1)'",
        f"sleep_flag={flag}",
        "sleep_on_trial=0",
    ]
    proc = sweep_cli(sweep, *args, wait=False)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "sleeping").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # trial 0 is left RUNNING in the storage
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    flag.unlink()
    assert states(load(sweep)) == [TrialState.RUNNING]

    sweep_cli(sweep, *args)
    study = load(sweep)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    killed = study.trials[0]
    assert len(complete) == 2 and st.budget_used(study.trials) == 2
    assert killed.state == TrialState.FAIL and killed.user_attrs[st.FAIL_REASON] == "interrupted"
    retry = [t for t in complete if t.user_attrs.get(st.RETRY_OF) == 0]
    assert len(retry) == 1 and retry[0].params == killed.params  # the interrupted point is retried
    assert len({t.user_attrs[st.RUN_DIR] for t in complete}) == 2
    assert json.loads((sweep / "0" / "trial.json").read_text())["trial"] == 0  # not overwritten


@pytest.mark.slow
def test_two_processes_share_one_study_up_to_the_total(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "hydra.sweeper.sampler=random",
        f"hydra.sweeper.storage={JOURNAL}",
        "hydra.sweeper.n_trials=4",
        "+hydra.sweeper.params.x='interval(0,1)'",
    ]
    procs = [sweep_cli(sweep, *args, f"hydra.sweeper.seed={i}", wait=False) for i in (0, 100)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()
    study = load(sweep)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert len(complete) == 4 and st.budget_used(study.trials) == 4
    assert all(t.user_attrs[st.FAIL_REASON] == "over_budget" for t in others)  # lost races only
    assert len({t.user_attrs[st.RUN_DIR] for t in complete}) == 4


# ----------------------------------------------------------------------------- sweeps (in-process)
def test_nan_and_raising_trials_fail_and_the_grid_is_covered(toy, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_inproc(
        toy,
        sweep,
        f"hydra.sweeper.storage={JOURNAL}",
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.n_jobs=4",
        "hydra.sweeper.max_failure_rate=0.7",
        "y=range(1,4)",
        "opt=adam,sgd",
        "nan_when_y=2",
        "raise_when_y=3",
    )
    study = load(sweep)
    assert len(study.trials) == 6  # n_trials unset: the whole grid, each point once
    assert {(t.params["y"], t.params["opt"]) for t in study.trials} == {
        (y, o) for y in (1, 2, 3) for o in ("adam", "sgd")
    }
    for t in study.trials:
        expected = TrialState.FAIL if t.params["y"] in (2, 3) else TrialState.COMPLETE
        assert t.state == expected, (t.number, t.params, t.state)
    reasons = {t.params["y"]: t.user_attrs[st.FAIL_REASON] for t in study.trials if t.state == TrialState.FAIL}
    assert "non-finite" in reasons[2] and "RuntimeError: toy failure" in reasons[3]
    failures = json.loads((sweep / "optuna" / "study.json").read_text())["failures"]
    assert len(failures) == 4


def test_exceeding_max_failure_rate_stops_with_a_clear_error(toy, tmp_path):
    sweep = tmp_path / "sweep"
    with pytest.raises(RuntimeError, match=r"2 of 4 trials failed.*max_failure_rate=0.25.*invalid overrides"):
        sweep_inproc(
            toy,
            sweep,
            f"hydra.sweeper.storage={JOURNAL}",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.max_failure_rate=0.25",
            "hydra.sweeper.custom_search_space=toy_objective.bad_space",
        )
    study = load(sweep)
    assert states(study) == [TrialState.FAIL, TrialState.FAIL]  # stopped at the 2nd failure
    assert all("no_such_key" in t.user_attrs[st.FAIL_REASON] for t in study.trials)


def test_nsgaii_two_objectives_returns_pareto_front(toy, tmp_path):
    sweep = tmp_path / "sweep"
    best = sweep_inproc(
        toy,
        sweep,
        "hydra.sweeper.sampler=nsgaii",
        "hydra.sweeper.seed=1",
        "hydra.sweeper.direction=[minimize,minimize]",
        "hydra.sweeper.n_trials=6",
        "multi=true",
        "x=interval(0,1)",
        "y=range(1,4)",
    )
    assert isinstance(best, list) and best
    saved = yaml.safe_load((sweep / "optuna" / "best.yaml").read_text())
    assert saved["directions"] == ["minimize", "minimize"]
    assert sorted(b["number"] for b in saved["best_trials"]) == sorted(t.number for t in best)
    for b in saved["best_trials"]:
        assert len(b["values"]) == 2 and (sweep / b["run_dir"] / "trial.json").exists()
    # Pareto front: no returned trial is dominated by another returned one.
    for a in best:
        assert not any(all(o <= v for o, v in zip(b.values, a.values)) and b.values != a.values for b in best)


def test_custom_search_space_gives_conditional_overrides(toy, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_inproc(
        toy,
        sweep,
        f"hydra.sweeper.storage={JOURNAL}",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=3",
        "hydra.sweeper.custom_search_space=toy_objective.conditional_space",
    )
    study = load(sweep)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    seen = {t.params["opt"] for t in study.trials}
    assert seen == {"adam", "sgd"}
    for t in study.trials:
        job = json.loads((sweep / str(t.number) / "trial.json").read_text())
        assert job["opt"] == t.params["opt"]
        if t.params["opt"] == "sgd":
            assert 0.0 <= t.params["x_sgd"] <= 0.2 and job["x"] == pytest.approx(t.params["x_sgd"])
        else:
            assert "x_sgd" not in t.params and job["x"] == 0.5  # the config default


def test_rdb_study_reloads_and_direction_mismatch_is_an_error(toy, tmp_path):
    db = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"
    sweep_inproc(toy, tmp_path / "a", db, "hydra.sweeper.n_trials=1", "y=1,2")
    study = optuna.load_study(study_name="toy_objective", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert states(study) == [TrialState.COMPLETE]
    with pytest.raises(ValueError, match="direction"):  # the stored study is reloaded and checked
        sweep_inproc(toy, tmp_path / "b", db, "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize", "y=1,2")


# ----------------------------------------------------------------------------- stable storage, plan
def test_storage_root_is_the_fixed_part_of_the_sweep_dir():
    assert st.storage_root("multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}") == Path("multirun")
    assert st.storage_root("/scratch/me/tune_${now:%H}/x") == Path("/scratch/me")
    assert st.storage_root("/pinned/sweep") == Path("/pinned/sweep")
    assert st.expand_spec("journal", "fpdm-tune") == "journal:optuna/fpdm-tune.journal"
    assert st.expand_spec("memory", "x") is None and st.expand_spec(None, "x") is None
    assert st.expand_spec("sqlite:///a.db", "x") == "sqlite:///a.db"


def test_rerunning_the_same_command_tops_up_one_study_keyed_by_name(toy, tmp_path, capsys):
    """Default storage: <fixed part of hydra.sweep.dir>/optuna/<study_name>.journal, so two runs of the
    same command (two time-stamped sweep folders) share one study; run.plan=true then shows it."""
    root = tmp_path / "multirun"
    args = [
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=0",
        f"hydra.sweep.dir={root}/${{now:%H%M%S%f}}",
        "+hydra.sweeper.params.x='interval(0,1)'",
        "y=range(1,4)",
    ]
    sweep_inproc(toy, tmp_path / "unused", *args, "hydra.sweeper.n_trials=2")
    sweep_inproc(toy, tmp_path / "unused", *args, "hydra.sweeper.n_trials=3")
    journal = root / "optuna" / "toy_objective.journal"
    study = optuna.load_study(study_name="toy_objective", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert states(study) == [TrialState.COMPLETE] * 3  # topped up to 3, not 2 + 3
    assert len([d for d in root.iterdir() if d.name != "optuna"]) == 2  # two time-stamped sweep folders

    before = (journal.read_bytes(), sorted(p.name for p in root.iterdir()))
    capsys.readouterr()
    assert sweep_inproc(toy, tmp_path / "unused", *args, "hydra.sweeper.n_trials=5", "+run.plan=true") == []
    out = capsys.readouterr().out
    assert "[plan] Optuna study 'toy_objective': 3 trial(s) done of 5, a rerun tops up the same study" in out
    assert f"storage: journal:{journal}" in out and "sampler: random (seed 0)" in out
    assert "param x: float [0.0, 1.0]" in out and "param y: int [1, 3]" in out
    assert (journal.read_bytes(), sorted(p.name for p in root.iterdir())) == before  # nothing touched
    assert (
        len(
            optuna.load_study(
                study_name="toy_objective", storage=JournalStorage(JournalFileBackend(str(journal)))
            ).trials
        )
        == 3
    )

    fresh = tmp_path / "fresh"
    sweep_inproc(
        toy,
        tmp_path / "unused",
        *args[:2],
        f"hydra.sweep.dir={fresh}/${{now:%f}}",
        "y=range(1,4)",
        "hydra.sweeper.n_trials=4",
        "+run.plan=true",
    )
    assert "0 trial(s) done of 4, a new study" in capsys.readouterr().out
    assert not fresh.exists()  # no journal, no sweep folder


def test_the_tune_preset_plans_without_running_a_trial(tmp_path, run_cli):
    proc = run_cli(
        ["-m", "sweep=tune", "run.plan=true", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[plan] Optuna study 'fpdm-tune': 0 trial(s) done of 12, a new study" in out
    assert f"storage: journal:{tmp_path / 'multirun' / 'optuna' / 'fpdm-tune.journal'}" in out
    for line in (
        "param sample.iters: int [1, 8]",
        "param solver: choice(picard, anderson)",
        "param sample.schedule: choice(constant, increasing, decreasing, cosine)",
    ):
        assert line in out
    assert "Traceback" not in proc.stderr and os.listdir(tmp_path) == []  # no study, no sweep dir, no cache

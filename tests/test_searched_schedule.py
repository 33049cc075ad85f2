"""The searched schedule carried into the comparison (issue 15): ``sample.search.study`` gives a
density job the knots of the best COMPLETE trial of the ``sweep=schedule_search`` study
(harness/app/searched.py), keyed and recorded; a missing study stops the command before compute."""

from __future__ import annotations

import json

import pytest
from config_helpers import structured_config
from omegaconf import OmegaConf
from optuna.trial import FixedTrial, TrialState
from search_helpers import STUDY, search_trial, write_study

from harness.app.precheck import run_precheck_or_exit
from harness.app.searched import apply_searched_knots
from harness.compute.schedule_family import knots_from_params, search_space
from harness.config.validate import ConfigError
from harness.stages.cache import stage_keys

BEST = [0.91234, 0.5, 0.25, 0.1]  # trial 1: the lowest value among the COMPLETE trials
BEST_RAN = [0.912, 0.5, 0.25, 0.1]  # what trial 1 ran: the search space rounds each height to 3 decimals


def _trials(best=BEST):
    return [
        search_trial([0.2, 0.4, 0.6, 0.8], 12, 5.0),
        search_trial(best, 9, 3.0),
        search_trial([1.0, 1.0, 0.05, 0.05], 6, None, TrialState.FAIL),
        search_trial([0.05, 0.05, 1.0, 1.0], 7, 1.0, TrialState.PRUNED),  # lower, but pruned: never the best
        search_trial([0.3, 0.3, 0.3, 0.9], 15, 4.0),
    ]


def _cfg(**extra):
    base = {
        "sample.schedule": "density",
        "sample.budget": 120,
        "sample.steps": 12,
        "sample.knots": None,
        "sample.search.study": STUDY,
    }
    return structured_config({**base, **extra})


def test_the_best_complete_trial_gives_the_knots(tmp_path):
    write_study(tmp_path, _trials())
    cfg = _cfg()
    found = apply_searched_knots(cfg, tmp_path)
    assert list(cfg.sample.knots) == BEST_RAN
    assert (found.trial, found.value, found.knots, found.steps) == (1, 3.0, BEST_RAN, 9)
    assert cfg.sample.steps == 12  # the comparison's steps stay: only the knots are carried
    assert found.storage.endswith(f"optuna/{STUDY}.journal")


def test_knots_from_params_is_what_the_search_space_ran():
    params = {"knot0": 0.12345, "knot1": 0.9999, "knot2": 0.05, "knot3": 0.3336}
    assert search_space(FixedTrial(params))["sample.knots"] == knots_from_params(params) == [0.123, 1.0, 0.05, 0.334]


def test_explicit_knots_win_and_other_schedules_never_read_the_study(tmp_path):
    cfg = _cfg(**{"sample.knots": [1.0, 2.0]})  # no study on disk: it must not be read
    assert apply_searched_knots(cfg, tmp_path) is None and list(cfg.sample.knots) == [1.0, 2.0]
    cfg = _cfg(**{"sample.schedule": "constant"})
    assert apply_searched_knots(cfg, tmp_path) is None and cfg.sample.knots is None


@pytest.mark.parametrize(
    "trials, says",
    [
        (None, "no such study"),
        ([search_trial(BEST, 9, None, TrialState.FAIL), search_trial(BEST, 9, 2.0, TrialState.PRUNED)], "no COMPLETE"),
    ],
)
def test_no_study_or_no_complete_trial_is_one_line_naming_the_key_and_the_fix(tmp_path, trials, says):
    if trials is not None:
        write_study(tmp_path, trials)
    with pytest.raises(ConfigError) as err:
        apply_searched_knots(_cfg(), tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"sample.search.study={STUDY}") and says in msg
    assert "python -m harness.run -m sweep=schedule_search" in msg and "sample.knots=[...]" in msg


def test_a_study_without_knot_params_is_refused(tmp_path):
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    write_study(tmp_path, [create_trial(params={"x": 1}, distributions={"x": IntDistribution(0, 3)}, value=1.0)])
    with pytest.raises(ConfigError, match="best trial 0 has no knot0/knot1/knot2/knot3 params"):
        apply_searched_knots(_cfg(), tmp_path)


def test_the_best_trials_knots_key_the_sample_stage(tmp_path):
    other = [0.1, 0.2, 0.7, 1.0]
    write_study(tmp_path / "a", _trials())
    write_study(tmp_path / "b", _trials(best=other))
    key = {}
    for name in ("a", "b"):
        cfg = _cfg()
        apply_searched_knots(cfg, tmp_path / name)
        key[name] = stage_keys(cfg).sample
    assert key["a"] != key["b"]
    # the key is that of the same knots given by hand: the study reference itself is provenance
    assert key["a"] == stage_keys(_cfg(**{"sample.knots": BEST_RAN, "sample.search.study": None})).sample
    assert key["b"] == stage_keys(_cfg(**{"sample.knots": other, "sample.search.study": None})).sample


def test_schedule_compare_stops_before_compute_without_a_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["-m", "sweep=schedule_compare", f"hydra.sweep.dir={tmp_path / 'multirun'}/${{now:%H-%M-%S}}"]
    with pytest.raises(SystemExit) as exit_:
        run_precheck_or_exit(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: sample.search.study={STUDY}: no such study") and "sweep=schedule_search" in err
    assert not (tmp_path / "multirun").exists()  # nothing written
    write_study(tmp_path / "multirun", _trials())  # where sweep=schedule_search keeps its study
    run_precheck_or_exit(argv)  # every job (16) composes, resolves and validates


def test_the_record_names_the_trial_and_holds_its_knots(tmp_path, hydra_app, fast_overrides):
    write_study(tmp_path / "sweep", _trials())  # the sweep root of fast_overrides' hydra.sweep.dir
    overrides = [
        *fast_overrides,
        "sample.schedule=density",
        f"sample.search.study={STUDY}",
        "sample.budget=40",
        "run.stages=[train]",
    ]
    hydra_app(overrides)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok", record.get("reason")
    assert record["search"]["trial"] == 1 and record["search"]["value"] == 3.0
    assert record["search"]["knots"] == BEST_RAN and record["config"]["sample"]["knots"] == BEST_RAN
    # the recorded key is the key of the recorded config, and follows its knots (not the study name)
    cfg = OmegaConf.create(record["config"])
    assert record["keys"]["sample"] == stage_keys(cfg).sample
    cfg.sample.search.study = None
    assert record["keys"]["sample"] == stage_keys(cfg).sample
    cfg.sample.knots = [0.1, 0.2, 0.7, 1.0]
    assert record["keys"]["sample"] != stage_keys(cfg).sample


def test_inspect_prints_the_plan_of_the_searched_knots(tmp_path, monkeypatch):
    from harness.app.inspect import inspect_argv

    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "multirun", _trials())  # the default sweep root: multirun/${now:...}
    cfg, info = inspect_argv(["sweep=schedule_compare", "sample.schedule=density", "sample.budget=120"])
    assert list(cfg.sample.knots) == BEST_RAN
    knots = f"sample.knots=[{','.join(map(str, BEST_RAN))}]"
    _, by_hand = inspect_argv(["sweep=schedule_compare", "sample.schedule=density", "sample.budget=120", knots])
    assert info["plan"] == by_hand["plan"]
    assert info["plan"] != inspect_argv(["sweep=schedule_compare", "sample.budget=120"])[1]["plan"]  # not constant


def test_searched_knots_are_never_scored_on_the_images_the_search_chose_them_on(tmp_path):
    """The best trial's record names its scored seeds; a comparison job on overlapping seeds is
    refused in one line, a disjoint one records both ranges."""
    from hydra_plugins.fpdm_optuna_sweeper.storage import RUN_DIR

    trials = _trials()
    run_dir = tmp_path / "trial1"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps({"protocol": {"eval_seeds": [3_000_000, 3_000_500]}}))
    trials[1].set_user_attr(RUN_DIR, str(run_dir))
    write_study(tmp_path, trials)
    with pytest.raises(ConfigError, match=r"sample.seed=2999800: .* overlap the seeds \[3000000, 3000500\]"):
        apply_searched_knots(_cfg(**{"sample.seed": 2_999_800, "sample.num_images": 1000}), tmp_path)
    found = apply_searched_knots(_cfg(**{"sample.seed": 0, "sample.num_images": 1000}), tmp_path)
    assert found.seeds == [3_000_000, 3_000_500] and found.as_record()["seeds"] == [3_000_000, 3_000_500]

"""Unknown keys are refused with the nearest valid key, with or without Hydra's ``+`` append prefix,
and every command answers ``--help`` (harness.config.keys, harness.app.precheck)."""

from __future__ import annotations

import pytest

from harness.app.inspect import main as inspect_main
from harness.app.precheck import precheck
from harness.app.sample import main as sample_main
from harness.config.keys import UnknownKeyError, check_appended_overrides, check_key, section_keys
from harness.config.validate import ConfigError


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["+sample.budgt=60"], "sample.budgt is not a setting of this config; did you mean sample.budget?"),
        (["sample.budgt=60"], "did you mean sample.budget?"),
        (["-m", "+sample.budgt=60,120"], "did you mean sample.budget?"),
        (["+train.budget.vale=3"], "did you mean train.budget.value?"),
        (["solver=anderson", "+solver.mm=3"], "did you mean solver.m?"),
        (["+trainn.lr=1"], "did you mean train?"),
    ],
)
def test_a_misspelt_key_is_refused_with_the_nearest_one(argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        precheck(argv)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # refused before Hydra wrote anything


def test_appending_a_real_key_a_group_or_a_hydra_key_is_left_to_hydra():
    check_appended_overrides(["+sample.budget=60", "+hydra.callbacks.x._target_=a.B", "+sweep=depth", "++sample.x=1"])
    check_appended_overrides(["+solver.m=3"], solver="anderson")
    with pytest.raises(UnknownKeyError):
        check_appended_overrides(["+solver.m=3"], solver="picard")  # m is anderson's knob, not picard's


def test_the_schema_walk_knows_nested_and_free_form_nodes():
    assert "budget" in section_keys("sample") and "value" in section_keys("train.budget")
    assert section_keys("sweep") is None  # free-form: a preset's own keys
    check_key("sweep.anything.below")
    with pytest.raises(UnknownKeyError, match="sample.adaptive.max_iter is not a setting"):
        check_key("sample.adaptive.max_iter")


def test_inspect_refuses_an_appended_typo(capsys):
    assert inspect_main(["+sample.budgt=60"]) == 2
    assert "did you mean sample.budget?" in capsys.readouterr().err


@pytest.mark.parametrize("main", [inspect_main, sample_main])
def test_every_command_answers_help(main, capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m harness.") and not out.startswith("error")


def test_the_official_optuna_sweeper_name_points_to_ours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"hydra/sweeper/optuna does not exist.*hydra/sweeper=fpdm_optuna"):
        precheck(["-m", "hydra/sweeper=optuna"])

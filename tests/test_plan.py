"""``run.plan=true`` is a dry run under every launcher: the entry point prints each job's varying
settings, cache state and cost, and calls no launcher (harness/app/plan.py)."""

from __future__ import annotations

from harness.app.plan import varying_keys


def test_varying_keys_are_the_keys_that_differ_as_typed():
    jobs = [
        ["model=fpdm", "model.depth=4", "+train.seed=0"],
        ["model=fpdm", "model.depth=6", "+train.seed=0"],
        ["model=fpdm", "model.depth=6", "+train.seed=1", "sample.cfg_scale=1.5"],
    ]
    assert varying_keys(jobs) == ["model.depth", "train.seed", "sample.cfg_scale"]
    assert varying_keys([["a=1"]]) == []


def test_a_plan_under_the_slurm_launcher_submits_nothing_and_writes_nothing(tmp_path, run_cli):
    proc = run_cli(
        ["-m", "sweep=depth", "hydra/launcher=slurm_cpu", "run.plan=true", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "srun" not in proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[plan] job ")]
    assert len(lines) == 9 and len({ln.split("  ")[1] for ln in lines}) == 9  # distinct settings per job
    assert "model.pre_depth=0 sample.budget=60" in lines[0] and "to run" in lines[0]
    assert "train in job 1" in lines[1]  # one training per model, shared by its budgets
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no cache entry


def test_a_multirun_job_folder_names_its_overrides(tmp_path, hydra_app, fast_overrides):
    hydra_app([*fast_overrides, "model=dit", "sample.budget=12,24", "run.stages=[train]"], multirun=True)
    names = sorted((d / "name").read_text().strip() for d in (tmp_path / "sweep").glob("job-*"))
    assert len(names) == 2 and all("model=dit" in n for n in names)
    assert [n.split("sample.budget=")[1].split(",")[0] for n in names] == ["12", "24"]

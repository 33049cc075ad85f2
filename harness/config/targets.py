"""Which ``_target_`` may be instantiated, and from where.

Two sources, two rules (docs/extending.md, "Callbacks and _target_"):

- **What the user writes** (their command line, ``--config-dir``, ``hydra.searchpath``): any
  importable ``_target_`` is allowed: Hydra's ``LogJobReturnCallback``, the project's
  ``reports.callback.ReportCallback``, a callback of their own. The user runs their own code on their
  own machine; the pre-launch check only makes sure the target imports, so a typo is one line
  before anything runs instead of a traceback after the sweep started.
- **What the project loads back from files** (a job's ``record.json``, a cache's
  ``complete.json``, a sweep's ``multirun.yaml``): such a file may come from someone else (a shared
  sweep folder, a downloaded result), so a config read from it may only name the project's own
  classes, Hydra's plugins and Optuna's samplers (``ALLOWED_TARGET_PREFIXES``), never an arbitrary
  callable such as ``os.system``. ``trusted_config`` is the one entry point for that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.config.validate import ConfigError

ALLOWED_TARGET_PREFIXES = ("harness.", "hydra_plugins.", "hydra._internal.core_plugins.", "optuna.samplers.")


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key of the ``_target_``, its value) for every ``_target_`` in a nested config."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        if node.get("_target_") is not None:
            yield (f"{path}._target_" if path else "_target_"), str(node["_target_"])
        for k, v in node.items():
            yield from iter_targets(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{path}[{i}]")


def check_loaded_targets(node: Any, source: str | Path) -> None:
    """Refuse a config loaded from ``source`` (a record, a cache marker) that names a foreign target."""
    for key, target in iter_targets(node):
        if not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise ConfigError(
                f"{source}: {key}={target} is not loaded from a record or cache (only targets "
                f"under {', '.join(ALLOWED_TARGET_PREFIXES)} are); this file was not written by "
                "fpdm-bench, do not use it"
            )


def trusted_config(record_or_dir: str | Path) -> DictConfig:
    """The resolved job config stored in a ``record.json`` (or the job directory holding one),
    checked by ``check_loaded_targets``: the way to rebuild a job outside the harness."""
    from harness.runtime.io import read_json
    from harness.stages.records import RECORD_NAME

    path = Path(record_or_dir)
    path = path / RECORD_NAME if path.is_dir() else path
    try:
        config = read_json(path).get("config")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{path}: not a readable job record ({type(exc).__name__}); give a job directory or its record.json"
        ) from None
    if not isinstance(config, dict) or not config:
        raise ConfigError(f"{path}: the record carries no config; rerun the job to write a complete record")
    check_loaded_targets(config, path)
    return OmegaConf.create(config)


def check_user_targets_import(cfg: Any, under: str = "hydra.callbacks") -> None:
    """Every ``_target_`` the user names under ``under`` must import (nothing is instantiated here)."""
    from hydra._internal.utils import _locate

    for key, target in iter_targets(OmegaConf.select(cfg, under) or {}, under):
        try:
            _locate(target)
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            reason = (lines[1] if len(lines) > 1 else lines[0]) if lines else type(exc).__name__  # [0]: 'Error loading'
            raise ConfigError(
                f"{key}={target} cannot be imported ({reason}); check the spelling, or install "
                "the package that provides it"
            ) from None

"""Config registration: structured schemas, group options, sweep presets and resolvers.

Importing this module fills Hydra's ConfigStore:
- ``base_config``: the typed schema (``harness.config.schema.Config``);
- groups ``model`` (dit, fpdm, dit_diffusers), ``solver`` (one typed node per solver, so
  ``solver=picard solver.m=5`` fails at load time), ``data`` (digits, image_folder, latents);
The group ``sweep`` (``sweep=NAME``) is not registered here: Hydra finds ``sweeps/sweep/NAME.yaml``
through ``hydra.searchpath: [pkg://sweeps]`` in ``config.yaml``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from harness.config.schema import SOLVER_CONFIGS, Config, DataConfig, ModelConfig


def job_id_from_dirname(override_dirname: str) -> str:
    """Stable job directory name from the job's overrides (DomainBed style): re-running or
    resuming a sweep maps every job to the same directory, never to a job number."""
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"job-{digest}"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("fpdm_job_id"):
        OmegaConf.register_new_resolver("fpdm_job_id", job_id_from_dirname)


def list_sweeps() -> list[str]:
    """Names valid for ``sweep=NAME`` (the YAML files of ``sweeps/sweep/``)."""
    folder = resources.files("sweeps") / "sweep"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def register_configs() -> None:
    _register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name in ("dit", "fpdm", "dit_diffusers"):
        cs.store(group="model", name=name, node=ModelConfig(name=name))
    for name, node in SOLVER_CONFIGS.items():
        cs.store(group="solver", name=name, node=node)
    cs.store(group="data", name="digits", node=DataConfig())
    cs.store(group="data", name="image_folder", node=DataConfig(name="image_folder", image_size=32))
    cs.store(group="data", name="latents", node=DataConfig(name="latents", image_size=256))


register_configs()

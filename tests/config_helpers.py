"""The config the stage-level tests start from (tests/test_stages.py, tests/test_flops.py,
tests/test_train_compute.py): the schema's defaults (digits, tiny models) with the Picard solver
node, and the digits data they train on."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from harness.config.schema import Config, PicardSolverConfig


def structured_config(overrides: dict) -> DictConfig:
    """Defaults, then each dotted ``key: value`` of ``overrides`` in order (later keys win)."""
    cfg = OmegaConf.structured(Config)
    cfg.solver = OmegaConf.structured(PicardSolverConfig)
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def digits_data():
    from harness.data import build_dataset

    return build_dataset(OmegaConf.structured(Config).data)

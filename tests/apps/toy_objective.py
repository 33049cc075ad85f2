"""Tiny standalone Hydra app used to test the Optuna sweeper (not part of the harness).

Objective: (x - 0.3)^2 + 0.01 * y (+ 0.1 if opt == "sgd"); with ``multi`` the pair
(loss, y) mimics "FID vs block budget". Switches make a trial return NaN, raise, or sleep until it
is killed. Each job writes ``trial.json`` in its run dir (trial number from the sweeper's
FPDM_OPTUNA_TRIAL, the params it saw) so tests can check trial -> run dir links.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def objective(cfg: DictConfig):
    out = Path(HydraConfig.get().runtime.output_dir)
    trial = int(os.environ.get("FPDM_OPTUNA_TRIAL", "-1"))
    record = {"trial": trial, "study": os.environ.get("FPDM_OPTUNA_STUDY"), "x": cfg.x, "y": cfg.y, "opt": cfg.opt}
    (out / "trial.json").write_text(json.dumps(record))
    if cfg.sleep_flag and Path(cfg.sleep_flag).exists() and trial == cfg.sleep_on_trial:
        (Path(cfg.sleep_flag).parent / "sleeping").write_text(str(os.getpid()))
        while Path(cfg.sleep_flag).exists():
            time.sleep(0.1)
    if cfg.raise_when_y is not None and cfg.y == cfg.raise_when_y:
        raise RuntimeError(f"toy failure at y={cfg.y}")
    if cfg.nan_when_y is not None and cfg.y == cfg.nan_when_y:
        return float("nan")
    loss = (float(cfg.x) - 0.3) ** 2 + 0.01 * float(cfg.y) + (0.1 if cfg.opt == "sgd" else 0.0)
    return (loss, float(cfg.y)) if cfg.multi else loss


def conditional_space(trial) -> dict:
    """Custom search space: x is only searched (in a narrow range) for the sgd optimizer."""
    opt = trial.suggest_categorical("opt", ["adam", "sgd"])
    if opt == "sgd":
        return {"opt": opt, "x": trial.suggest_float("x_sgd", 0.0, 0.2)}
    return {"opt": opt}


def bad_space(trial) -> dict:
    """A custom space whose override names a key the config lacks: every trial fails to compose."""
    return {"no_such_key": trial.suggest_int("n", 0, 3)}


main = hydra.main(version_base="1.3", config_path="conf", config_name="toy")(objective)

if __name__ == "__main__":
    main()

"""``python -m harness.sample RECORD_OR_DIR [key=value ...] [out=DIR | --out DIR]``: images from a
trained job without re-running its sweep.

    python -m harness.sample multirun/2025-01-01/12-00-00/job-0123abcd sample.num_images=64 sample.budget=60
    python -m harness.sample outputs/cache/train/<key> solver=anderson sample.reuse=true out=samples/anderson

Loads the job's EMA model and resolved config (``harness.models.load``), applies ``key=value``
overrides Hydra-style on the typed schema (a typo or a wrong type fails in one line), runs the same
checks and the same sample stage as ``harness.run`` (``harness.sample.sample_model``), and writes
``samples.npz`` (uint8 images and labels), ``grid.png`` and ``summary.json``. The default output
directory is ``samples-<sample key>`` in the job directory (or the train directory); a rerun with the
same settings resumes from the shards already written. Only what sampling reads can change: the
model and its training are fixed by the checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from harness.app.loading import LoadError, TrainedSource
from harness.config.keys import unknown_key_message
from harness.config.validate import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

USAGE = (
    "usage: python -m harness.sample RECORD_OR_DIR [sample.KEY=VALUE ...] [solver=NAME] [solver.KEY=VALUE ...] "
    "[run.device=...] [paths.cache_dir=DIR] [out=DIR | --out DIR]"
)
# what sampling reads; everything else is fixed by the trained checkpoint
SETTABLE = ("sample.", "solver.", "run.device", "run.threads", "run.progress", "run.debug", "paths.cache_dir")
SETTINGS_NAME = "settings.json"


class HelpRequested(Exception):
    """``-h`` / ``--help``: print the usage and the module's description, exit 0."""


def parse_argv(argv: list[str]) -> tuple[str, list[str], str | None]:
    """(record or directory, overrides, output directory or None)."""
    path, overrides, out = None, [], None
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            raise HelpRequested
        if arg == "--out":
            out = next(it, None)
            if out is None:
                raise ConfigError("--out needs a directory: --out DIR")
        elif arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        elif arg.startswith("out="):
            out = arg.split("=", 1)[1]
        elif "=" in arg:
            overrides.append(arg)
        elif path is None and not arg.startswith("-"):
            path = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}; {USAGE}")
    if path is None:
        raise ConfigError(f"missing RECORD_OR_DIR; {USAGE}")
    return path, overrides, out


def _unknown_key(cfg, key: str) -> str:
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return unknown_key_message(key, list(node.keys()) if OmegaConf.is_dict(node) else [])


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Hydra-style ``key=value`` (values parsed as YAML) on the typed config; one line per error."""
    from harness.config.schema import SOLVER_CONFIGS

    cfg = cfg.copy()
    for ov in overrides:
        ov = ov[1:] if ov.startswith("+") and not ov.startswith("++") else ov  # an appended key is checked too
        key, value = ov.split("=", 1)
        if key == "solver":
            if value not in SOLVER_CONFIGS:
                raise ConfigError(f"solver={value} does not exist; valid solver options: {', '.join(SOLVER_CONFIGS)}")
            cfg.solver = OmegaConf.structured(SOLVER_CONFIGS[value])
            continue
        if not key.startswith(SETTABLE):
            raise ConfigError(
                f"{key} is fixed by the trained checkpoint; only sample.*, solver, solver.* and "
                "run.device / run.threads / run.progress / paths.cache_dir can be set when sampling a trained job"
            )
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(_unknown_key(cfg, key))
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov]))
        except Exception as exc:  # omegaconf's ValidationError: wrong type for the schema
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise ConfigError(f"{key}={value}: {first}") from None
    return cfg


def _cache_dir(overrides: list[str]) -> str | None:
    """``paths.cache_dir=DIR`` on the command line: where the trained job's cache is now."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == "paths.cache_dir"]
    return values[-1] if values else None


def _output_dir(source: TrainedSource, cfg, out: str | None) -> Path:
    from harness.stages.cache import stage_keys

    if out is None:
        return source.home / f"samples-{stage_keys(cfg).sample}"
    return Path(out).expanduser()


def _settings(source: TrainedSource, cfg) -> dict:
    return {
        "train_dir": str(source.train_dir.resolve()),
        "sample": OmegaConf.to_container(cfg.sample, resolve=True),
        "solver": OmegaConf.to_container(cfg.solver, resolve=True),
    }


def _claim(out_dir: Path, settings: dict) -> None:
    """Shards already in ``out_dir`` are reused only if they were sampled with these settings."""
    from harness.runtime.io import atomic_write_json, read_json

    path = out_dir / SETTINGS_NAME
    if (out_dir / "shards").exists():
        try:
            same = read_json(path) == json.loads(json.dumps(settings))
        except (OSError, ValueError):
            same = False
        if not same:
            raise ConfigError(
                f"out={out_dir} holds samples of another model or other settings: choose an empty "
                "directory (or leave out= unset for one per setting)"
            )
    atomic_write_json(path, settings)


def sample_trained(source: TrainedSource, cfg: DictConfig, out_dir: Path) -> dict:
    """Run the sample stage of ``harness.run`` on the trained model of ``source``; -> its summary."""
    import torch

    from harness.app.loading import build_trained
    from harness.data import build_dataset
    from harness.diffusion.spec import diffusion_spec
    from harness.runtime.io import atomic_write_json
    from harness.stages.job import plan_for_model, resolve_device
    from harness.stages.sample import sample_model

    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(int(cfg.run.threads))
    data = build_dataset(cfg.data)
    model = build_trained(source, str(device))
    plan = plan_for_model(cfg, model, data)
    _claim(out_dir, _settings(source, cfg))
    summary = sample_model(model, data, diffusion_spec(cfg), cfg, plan, out_dir, device, cfg.run.progress)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    from harness.app.loading import resolve_source
    from harness.config.validate import validate_config

    argv = sys.argv[1:] if argv is None else argv
    debug = any(a in ("run.debug=true", "run.debug=True") for a in argv)
    try:
        path, overrides, out = parse_argv(argv)
        source = resolve_source(path, _cache_dir(overrides))
        cfg = apply_overrides(source.config, overrides)
        validate_config(cfg)
        out_dir = _output_dir(source, cfg, out)
        summary = sample_trained(source, cfg, out_dir)
    except HelpRequested:
        print(f"{USAGE}\n\n{__doc__.strip()}")
        return 0
    except (ConfigError, LoadError) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"sampled {summary['num_images']} images ({summary['steps']} steps, "
        f"{summary['block_passes_per_image']:g} block passes per image) from {source.train_dir}"
    )
    print(f"wrote {out_dir / 'samples.npz'}")
    print(f"wrote {out_dir / 'grid.png'}")
    return 0

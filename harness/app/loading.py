"""Trained models outside the harness: from a job record, a job directory or a train-stage cache
directory to the EMA model the sample stage uses, with the config that trained it.

Where things are (docs/architecture.md, "Job record" and the artifact cache):
- a job directory holds ``record.json``; an ``ok`` record names the EMA weights in
  ``artifacts.checkpoint`` (``<paths.cache_dir>/train/<keys.train>/ema.safetensors``) and holds the
  resolved config under ``config``;
- a train cache directory ``<cache>/train/<key>/`` holds ``ema.safetensors``, ``complete.json``
  (written last) and ``config.json`` (the resolved config and data shape of the job that trained
  it; directories trained before it was written are loaded through a record instead).

Every failure is a ``LoadError`` with one line naming the path and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from harness.runtime.io import read_json
from harness.stages.cache import COMPLETE
from harness.stages.job import TRAIN_CONFIG_NAME
from harness.stages.records import RECORD_NAME

if TYPE_CHECKING:
    from torch import nn

EMA_NAME = "ema.safetensors"


class LoadError(ValueError):
    """A path that holds no loadable trained model (one line: the path and the fix)."""


class LoadedModel(NamedTuple):
    model: Any  # torch.nn.Module in eval mode, EMA weights
    config: DictConfig


@dataclass(frozen=True)
class TrainedSource:
    """Where a trained model lives: its resolved config, train directory and (if any) record."""

    config: DictConfig
    train_dir: Path
    record_path: Path | None
    data_shape: dict | None  # channels, image_size, num_classes (None: from the data set)

    @property
    def home(self) -> Path:
        """The job directory (or, without a record, the train directory): default output place."""
        return self.record_path.parent if self.record_path is not None else self.train_dir


def _read_json(path: Path, what: str) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise LoadError(
            f"{what} {path} is unreadable or not JSON ({type(exc).__name__}); pass another record or job directory"
        ) from None


def schema_config(resolved: dict, where: Path) -> DictConfig:
    """The stored resolved config on the current typed schema (new keys get their defaults)."""
    from harness.config.schema import SOLVER_CONFIGS, Config
    from harness.config.targets import check_loaded_targets
    from harness.config.validate import ConfigError

    try:  # a stored config is data: a callable smuggled into it (os.system, eval) is refused
        check_loaded_targets(resolved or {}, where)
    except ConfigError as exc:
        raise LoadError(str(exc)) from None
    base = OmegaConf.structured(Config)
    solver = (resolved or {}).get("solver") or {}
    if solver.get("name") in SOLVER_CONFIGS:
        base.solver = OmegaConf.structured(SOLVER_CONFIGS[solver["name"]])
    try:
        return OmegaConf.merge(base, {k: v for k, v in (resolved or {}).items() if k != "hydra"})
    except Exception as exc:  # a key this version of the schema no longer has, or a changed type
        raise LoadError(
            f"the config stored in {where} does not fit this version of fpdm-bench: {str(exc).splitlines()[0]}"
        ) from None


def _find(path_text: str, near: Path) -> Path | None:
    """A path as the job wrote it: absolute, relative to the current directory, or relative to an
    ancestor of the record (a job writes paths relative to the directory it was launched from)."""
    p = Path(path_text).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in (Path.cwd(), *near.resolve().parents):
        if (base / p).exists():
            return base / p
    return None


def _from_record(record_path: Path, cache_dir: str | Path | None = None) -> TrainedSource:
    rec = _read_json(record_path, "record")
    if not isinstance(rec, dict):
        raise LoadError(f"record {record_path} is not a job record (a JSON object is expected)")
    status = rec.get("status")
    if status != "ok":
        reason = next((ln for ln in str(rec.get("reason") or "").splitlines() if ln.strip()), "no reason recorded")
        raise LoadError(
            f"record {record_path} is {status!r} ({reason}): it has no trained model; "
            "rerun the job with python -m harness.run"
        )
    cfg = schema_config(rec.get("config") or {}, record_path)
    if cfg.model.name == "dit_diffusers" and cfg.model.pretrained_path:
        raise LoadError(
            f"record {record_path} sampled pretrained weights (model.pretrained_path="
            f"{cfg.model.pretrained_path}), not a trained checkpoint: load that folder with diffusers"
        )
    train_key = (rec.get("keys") or {}).get("train")
    candidates = [(rec.get("artifacts") or {}).get("checkpoint")]
    if train_key:
        candidates.append(str(Path(cfg.paths.cache_dir) / "train" / train_key / EMA_NAME))
    if train_key and cache_dir is not None:  # the cache moved with (or apart from) the sweep: the caller's root wins
        candidates.insert(0, str(Path(cache_dir).expanduser().resolve() / "train" / train_key / EMA_NAME))
    for text in filter(None, candidates):
        found = _find(text, record_path.parent)
        if found is not None and found.is_file():
            return TrainedSource(cfg, found.parent, record_path, _data_shape(found.parent))
    expected = candidates[0 if cache_dir is not None else -1] or "an artifacts.checkpoint entry"
    raise LoadError(
        f"record {record_path} has no checkpoint on disk (expected {expected}): the cache was moved "
        "or cleaned; give its new root (harness.sample ... paths.cache_dir=DIR, or "
        "harness.models.load(path, cache_dir=DIR)) or rerun the job to retrain"
    )


def _data_shape(train_dir: Path) -> dict | None:
    path = train_dir / TRAIN_CONFIG_NAME
    return _read_json(path, "train config").get("data") if path.is_file() else None


def _from_train_dir(train_dir: Path) -> TrainedSource:
    if not (train_dir / COMPLETE).is_file():
        raise LoadError(
            f"{train_dir} is an unfinished training run (no {COMPLETE}): resume it by rerunning its job, then load it"
        )
    path = train_dir / TRAIN_CONFIG_NAME
    if not path.is_file():
        raise LoadError(
            f"{train_dir} has no {TRAIN_CONFIG_NAME} (trained by an older fpdm-bench): load it through "
            f"the {RECORD_NAME} of a job that used it instead"
        )
    stored = _read_json(path, "train config")
    return TrainedSource(schema_config(stored.get("config") or {}, path), train_dir, None, stored.get("data"))


def resolve_source(path: str | Path, cache_dir: str | Path | None = None) -> TrainedSource:
    """Find the trained model a record, job directory or train cache directory points to.

    ``cache_dir``: the artifact cache's root where it is now (a sweep folder and its cache copied
    off a cluster); a record's checkpoint is looked up there first, by its train key. Without it, a
    relative path is found from the current directory or any ancestor of the record."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoadError(
            f"{p} does not exist: pass a job record ({RECORD_NAME}), a job directory or a train "
            "cache directory (<paths.cache_dir>/train/<key>)"
        )
    if p.is_file():
        if p.name == EMA_NAME:
            return _from_train_dir(p.parent)
        return _from_record(p, cache_dir)
    if (p / RECORD_NAME).is_file():
        return _from_record(p / RECORD_NAME, cache_dir)
    if (p / EMA_NAME).is_file():
        return _from_train_dir(p)
    if any(p.glob("ckpt-*.pt")):
        raise LoadError(
            f"{p} holds only intermediate checkpoints (no {EMA_NAME}): finish the training by "
            "rerunning its job, then load it"
        )
    raise LoadError(
        f"{p} holds no {RECORD_NAME} and no trained model ({EMA_NAME}): pass a job directory or "
        "<paths.cache_dir>/train/<key>"
    )


def data_shape(source: TrainedSource) -> dict:
    """channels, image_size, num_classes of the model's input: stored beside the weights, else read
    from the data set (which must then be on disk)."""
    if source.data_shape:
        return dict(source.data_shape)
    from harness.data import DataError, build_dataset

    try:
        d = build_dataset(source.config.data)
    except (DataError, OSError, ValueError) as exc:
        raise LoadError(
            f"the input shape of {source.train_dir} is not stored and data={source.config.data.name} "
            f"cannot be read ({exc})"
        ) from None
    return {"channels": d.channels, "image_size": d.image_size, "num_classes": d.num_classes}


def build_trained(source: TrainedSource, device: str = "cpu") -> nn.Module:
    """The model of ``source`` with its EMA weights, in eval mode on ``device``."""
    import torch
    from safetensors.torch import load_file

    from harness.stages.models import build_model

    cfg = source.config
    shape = data_shape(source)
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: leave the global RNG alone
        model = build_model(cfg.model, cfg.train, **shape)
    weights = source.train_dir / EMA_NAME
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as exc:  # truncated file, or weights of another architecture
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise LoadError(
            f"{weights} does not load into model={cfg.model.name} preset={cfg.model.preset}: {first[:200]}"
        ) from None
    return model.to(device).eval()


def load(record_or_dir: str | Path, device: str = "cpu", cache_dir: str | Path | None = None) -> LoadedModel:
    """The trained EMA model (eval mode) and its resolved config, from a job record, a job
    directory or a train cache directory (``cache_dir``: the cache's root, if it moved). Raises
    ``LoadError`` (one line) otherwise."""
    source = resolve_source(record_or_dir, cache_dir)
    return LoadedModel(build_trained(source, device), source.config)

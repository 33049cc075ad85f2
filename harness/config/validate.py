"""Semantic checks of a composed config, run before any compute.

Types and unknown keys are caught by the structured schema when Hydra composes the config; this
module catches what types cannot: names that are not registered, ranges, budgets that cannot be
met exactly, pre + post deeper than the preset, missing data folders or extractor weights, an
unwritable output directory. Each failure is a ``ConfigError`` whose one-line message names the
key and the fix.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

from baselines.diffusers_dit import uses_pretrained_weights

_CHECKS: list[Callable] = []


class ConfigError(ValueError):
    pass


def check(fn: Callable) -> Callable:
    _CHECKS.append(fn)
    return fn


def _choice(key: str, value, valid) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not known; valid values: {', '.join(map(str, valid))}")


def _positive(key: str, value, allow_none: bool = True, minimum: float = 1) -> None:
    if value is None and allow_none:
        return
    if value is None or value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")


@check
def _top_level(cfg) -> None:
    """``+name=value`` can append a key the schema does not know (Hydra allows it at the root)."""
    from dataclasses import fields

    from harness.config.schema import Config

    known = {f.name for f in fields(Config)} | {"hydra"}
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level key (known: {', '.join(sorted(known - {'hydra'}))}); "
                          "check the spelling, `python -m harness.run --cfg job` lists the keys")


@check
def _run(cfg) -> None:
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg.run.device)):
        raise ConfigError(f"run.device={cfg.run.device!r} is not known; valid values: auto, cpu, cuda, cuda:N, mps")
    for stage in cfg.run.stages:
        _choice("run.stages", stage, ("train", "sample", "evaluate"))


@check
def _diffusion(cfg) -> None:
    from harness.diffusion.spec import diffusion_spec

    try:
        diffusion_spec(cfg)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"diffusion.{exc}") from None


@check
def _model(cfg) -> None:
    from baselines.presets import get_preset, list_presets
    from harness.stages.models import list_models

    m = cfg.model
    _choice("model.name", m.name, list_models())
    if uses_pretrained_weights(m):
        if not Path(m.pretrained_path).expanduser().exists():
            raise ConfigError(f"model.pretrained_path={m.pretrained_path} does not exist: set it to a local "
                              "diffusers DiT folder (download e.g. facebook/DiT-XL-2-256 elsewhere and copy it here)")
        return
    _choice("model.preset", m.preset, list_presets())
    if not 0.0 <= m.class_dropout < 1.0:
        raise ConfigError(f"model.class_dropout={m.class_dropout} must be in [0, 1)")
    if m.name == "fpdm":
        _positive("model.pre_depth", m.pre_depth, minimum=0)
        _positive("model.post_depth", m.post_depth, minimum=0)
        depth = get_preset(m.preset).depth
        if m.pre_depth + m.post_depth >= depth:
            raise ConfigError(
                f"model.pre_depth + model.post_depth = {m.pre_depth + m.post_depth} is not below the depth {depth} of "
                f"model.preset={m.preset}; use at most {depth - 1} explicit layers in total or a deeper preset"
            )


@check
def _solver(cfg) -> None:
    from fpdm.solvers import list_solvers, make_solver

    _choice("solver", cfg.solver.name, list_solvers())
    if cfg.solver.tol < 0:
        raise ConfigError(f"solver.tol={cfg.solver.tol} must be >= 0 (0 runs the planned iterations exactly)")
    knobs = {k: v for k, v in dict(cfg.solver).items() if k not in ("name", "tol")}
    try:
        make_solver(cfg.solver.name, **knobs)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"solver.{cfg.solver.name}: {exc}") from None


@check
def _train(cfg) -> None:
    from fpdm.training_modes import list_training_modes

    t = cfg.train
    _choice("train.method", t.method, list_training_modes())
    _choice("train.budget.unit", t.budget.unit, ("steps", "seconds", "block_passes"))
    if not t.budget.value > 0:
        raise ConfigError(f"train.budget.value={t.budget.value} must be > 0")
    if not 0 <= t.iters.no_grad.min <= t.iters.no_grad.max:
        raise ConfigError(f"train.iters.no_grad needs 0 <= min <= max, got min={t.iters.no_grad.min} "
                          f"max={t.iters.no_grad.max}")
    if not 1 <= t.iters.with_grad.min <= t.iters.with_grad.max:
        raise ConfigError(f"train.iters.with_grad needs 1 <= min <= max (at least one iteration with gradient), "
                          f"got min={t.iters.with_grad.min} max={t.iters.with_grad.max}")
    _positive("train.batch_size", t.batch_size, allow_none=False)
    _positive("train.ckpt_every", t.ckpt_every, allow_none=False)
    _positive("train.log_every", t.log_every, allow_none=False)
    if not t.lr > 0:
        raise ConfigError(f"train.lr={t.lr} must be > 0")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay} must be in [0, 1)")
    _choice("train.precision", t.precision, ("fp32", "bf16"))
    _choice("train.implicit_solver", t.implicit_solver, __import__("fpdm.solvers").solvers.list_solvers())


@check
def _sample(cfg) -> None:
    from fpdm.schedules import list_schedules
    from harness.compute.plan import BudgetError, sampling_plan
    from harness.diffusion import list_samplers

    s = cfg.sample
    _choice("sample.sampler", s.sampler, list_samplers())
    _choice("sample.schedule", s.schedule, list_schedules())
    _choice("sample.match", s.match, ("blocks", "flops"))
    _choice("sample.precision", s.precision, ("fp32", "bf16"))
    for key in ("budget", "steps", "iters"):
        _positive(f"sample.{key}", s[key])
    _positive("sample.num_images", s.num_images, allow_none=False)
    _positive("sample.batch_size", s.batch_size, allow_none=False)
    _positive("sample.seed_ranges", s.seed_ranges, allow_none=False)
    if s.num_images % s.seed_ranges:
        raise ConfigError(f"sample.num_images={s.num_images} does not split into sample.seed_ranges={s.seed_ranges} "
                          "equal ranges; make it a multiple")
    if s.reuse and cfg.model.name != "fpdm":
        raise ConfigError(f"sample.reuse=true needs model=fpdm (model={cfg.model.name} has no fixed point to reuse)")
    if uses_pretrained_weights(cfg.model):
        return  # the depth is known once the weights are loaded
    if s.match == "flops" and cfg.model.name == "fpdm":
        return  # planned from measured FLOPs at run time
    try:
        sampling_plan(cfg)
    except (BudgetError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


@check
def _data(cfg) -> None:
    from harness.data import list_datasets

    d = cfg.data
    _choice("data.name", d.name, list_datasets())
    if d.name in ("image_folder", "latents"):
        if not d.root:
            raise ConfigError(f"data={d.name} needs data.root: set data.root=/path/to/{'images' if d.name == 'image_folder' else 'latents'}")
        root = Path(d.root).expanduser()
        if not root.exists():
            raise ConfigError(f"data.root={d.root} does not exist: set data.root to an existing folder")
        if root.is_dir() and not any(root.iterdir()):
            raise ConfigError(f"data.root={d.root} is empty: put images (or class subfolders of images) there")
        if d.name == "image_folder" and root.is_dir() and not _has_image_file(root):
            from harness.data.image_folder import IMAGE_EXTENSIONS

            raise ConfigError(f"data.root={d.root} holds no image file ({', '.join(IMAGE_EXTENSIONS)}): point "
                              "data.root to a folder of images (or class subfolders of images)")
    _choice("data.split", d.split, ("train", "test", "all"))
    _positive("data.image_size", d.image_size)
    if d.name == "digits" and d.upscale not in (None, 8, 16):
        raise ConfigError(f"data.upscale={d.upscale} must be 8 or 16 for data=digits")


@check
def _metrics(cfg) -> None:
    from harness.metrics import list_extractors

    m = cfg.metrics
    _choice("metrics.extractor", m.extractor, list_extractors())
    _choice("metrics.reference_split", m.reference_split, ("train", "test", "all"))
    if m.extractor == "inception-v3-compat" and not m.weights:
        raise ConfigError("metrics.extractor=inception-v3-compat needs metrics.weights: run "
                          "`python -m harness.metrics.inception --out PATH` and set metrics.weights=PATH")
    if m.weights and not Path(m.weights).expanduser().is_file():
        fix = (f"run `python -m harness.metrics.inception --out {m.weights}`" if m.extractor == "inception-v3-compat"
               else "leave metrics.weights unset to use the cached extractor")
        raise ConfigError(f"metrics.weights={m.weights} does not exist: {fix}")
    if m.extractor == "inception-v3-compat":
        _check_weights_hash(Path(m.weights).expanduser(), m.weights_sha256)


def _has_image_file(root: Path) -> bool:
    """Stops at the first file with an image extension (a large folder is not listed in full)."""
    from harness.data.image_folder import IMAGE_EXTENSIONS

    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in root.rglob("*"))


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache: a changed file re-hashes
    from harness.runtime.io import sha256_file

    return sha256_file(path)


def _check_weights_hash(path: Path, expected: str | None) -> None:
    """Verify the extractor weights before any compute (the evaluate stage checks them again)."""
    from harness.metrics.inception import _expected_sha256

    want = _expected_sha256(path, expected)
    if want is None:
        raise ConfigError(f"metrics.weights={path} has no {path.name}.sha256 beside it to verify against: set "
                          "metrics.weights_sha256=HASH or rewrite it with `python -m harness.metrics.inception --out PATH`")
    st = path.stat()
    digest = _sha256(str(path), st.st_size, st.st_mtime_ns)
    if not digest.startswith(want):
        raise ConfigError(f"metrics.weights={path}: sha256 {digest[:16]}... does not match the expected {want[:16]}...; "
                          "the file is corrupt or not the one hashed: rewrite it with "
                          "`python -m harness.metrics.inception --out PATH` or fix metrics.weights_sha256")


def _writable(path: Path) -> bool:
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


@check
def _paths(cfg) -> None:
    if not _writable(Path(cfg.paths.cache_dir)):
        raise ConfigError(f"paths.cache_dir={cfg.paths.cache_dir} is not writable: set paths.cache_dir to a "
                          "directory you can write to")


def validate_config(cfg) -> None:
    """Run every registered check; raise the first ``ConfigError``."""
    for fn in _CHECKS:
        fn(cfg)


def check_output_dir(path: str | Path, key: str) -> None:
    if not _writable(Path(path)):
        raise ConfigError(f"{key}={path} is not writable: point it to a directory you can write to")

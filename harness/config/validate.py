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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from baselines.diffusers_dit import uses_pretrained_weights

if TYPE_CHECKING:
    from omegaconf import DictConfig

_CHECKS: list[Callable] = []
_DISK_CHECKS: set[Callable] = set()  # checks that read files (skipped by ``harness.inspect``)


class ConfigError(ValueError):
    pass


def check(fn: Callable | None = None, *, disk: bool = False) -> Callable:
    """Register a check; ``disk=True`` marks one that needs files (data, weights, output folders),
    which ``validate_config(cfg, disk=False)`` skips: inspect counts a model without its data."""

    def deco(f: Callable) -> Callable:
        _CHECKS.append(f)
        if disk:
            _DISK_CHECKS.add(f)
        return f

    return deco(fn) if fn is not None else deco


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
        raise ConfigError(
            f"{unknown[0]}: unknown top-level key (known: {', '.join(sorted(known - {'hydra'}))}); "
            "check the spelling, `python -m harness.run --cfg job` lists the keys"
        )


@check
def _run(cfg) -> None:
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg.run.device)):
        raise ConfigError(f"run.device={cfg.run.device!r} is not known; valid values: auto, cpu, cuda, cuda:N, mps")
    for stage in cfg.run.stages:
        _choice("run.stages", stage, ("train", "sample", "evaluate"))


@check
def _diffusion(cfg) -> None:
    from harness.diffusion.spec import CLIP_MODES, diffusion_spec

    _choice("sample.clip_mode", cfg.sample.clip_mode, CLIP_MODES)
    try:
        diffusion_spec(cfg)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"diffusion.{exc}") from None


@check
def _model(cfg) -> None:
    from baselines.presets import list_presets
    from harness.stages.models import list_models

    m = cfg.model
    _choice("model.name", m.name, list_models())
    if uses_pretrained_weights(m):
        from baselines.presets import ARCHITECTURE_KNOBS

        knob = next((k for k in ARCHITECTURE_KNOBS if m.get(k) is not None), None)
        if knob:
            raise ConfigError(
                f"model.{knob}={m[knob]} cannot change the architecture of the weights in "
                f"model.pretrained_path: unset model.{knob} or model.pretrained_path"
            )
        if not Path(m.pretrained_path).expanduser().exists():
            raise ConfigError(
                f"model.pretrained_path={m.pretrained_path} does not exist: set it to a local "
                "diffusers DiT folder (download e.g. facebook/DiT-XL-2-256 elsewhere and copy it here)"
            )
        return
    _choice("model.preset", m.preset, list_presets())
    if not 0.0 <= m.class_dropout < 1.0:
        raise ConfigError(f"model.class_dropout={m.class_dropout} must be in [0, 1)")
    arch = _architecture(cfg)
    if m.name == "fpdm":
        _positive("model.pre_depth", m.pre_depth, minimum=0)
        _positive("model.post_depth", m.post_depth, minimum=0)
        depth, where = (
            arch.depth,
            (f"model.depth={m.depth}" if m.get("depth") is not None else f"model.preset={m.preset}"),
        )
        if m.pre_depth + m.post_depth >= depth:
            raise ConfigError(
                f"model.pre_depth + model.post_depth = {m.pre_depth + m.post_depth} is not below the depth {depth} of "
                f"{where}; use at most {depth - 1} explicit layers in total or a deeper preset (or model.depth)"
            )


def _architecture(cfg):
    """The preset with ``model.depth`` ... ``model.mlp_ratio`` applied, checked: the width splits
    into whole heads and fits the 2-D sin-cos position table, the patch tiles the input."""
    from baselines.presets import ARCHITECTURE_KNOBS, get_preset
    from harness.stages.models import model_architecture

    m = cfg.model
    for knob in ("depth", "hidden_size", "num_heads", "patch_size"):
        _positive(f"model.{knob}", m.get(knob))
    if m.get("mlp_ratio") is not None and not m.mlp_ratio > 0:
        raise ConfigError(
            f"model.mlp_ratio={m.mlp_ratio} must be > 0 (null = the preset's {get_preset(m.preset).mlp_ratio})"
        )
    a = model_architecture(m)
    given = {k for k in ARCHITECTURE_KNOBS if m.get(k) is not None}

    def src(k: str) -> str:
        return f"model.{k}={getattr(a, k)}" + ("" if k in given else f" (from model.preset={m.preset})")

    if a.hidden_size % a.num_heads:
        divisors = [h for h in range(1, min(a.hidden_size, 64) + 1) if a.hidden_size % h == 0]
        raise ConfigError(
            f"{src('num_heads')} does not divide {src('hidden_size')}: set model.num_heads to a divisor "
            f"of the width (e.g. {', '.join(map(str, divisors[-4:]))}) or change model.hidden_size"
        )
    if a.hidden_size % 4:
        raise ConfigError(
            f"{src('hidden_size')} must be a multiple of 4 (the 2-D sin-cos position table splits it "
            "in four): set model.hidden_size to a multiple of 4"
        )
    if m.name == "dit_diffusers" and a.mlp_ratio != 4.0:
        raise ConfigError(
            f"model.mlp_ratio={a.mlp_ratio} is not supported by model=dit_diffusers (diffusers' DiT has "
            "a fixed 4x MLP): unset model.mlp_ratio or use model=dit"
        )
    try:
        from harness.data.shape import input_shape

        size = input_shape(cfg.data, classes=False).image_size
    except (ValueError, KeyError):
        return a  # the data checks name the data problem
    if size % a.patch_size:
        raise ConfigError(
            f"{src('patch_size')} does not divide the model input size {size} (data={cfg.data.name}): "
            f"set model.patch_size to a divisor of {size} or change data.image_size"
        )
    return a


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
    from harness.compute.train_compute import BUDGET_UNITS

    t = cfg.train
    _choice("train.method", t.method, list_training_modes())
    _choice("train.budget.unit", t.budget.unit, BUDGET_UNITS)
    if not t.budget.value > 0:
        raise ConfigError(f"train.budget.value={t.budget.value} must be > 0")
    if not 0.0 <= t.budget.tolerance < 1.0:
        raise ConfigError(f"train.budget.tolerance={t.budget.tolerance} must be in [0, 1)")
    if not 0 <= t.iters.no_grad.min <= t.iters.no_grad.max:
        raise ConfigError(
            f"train.iters.no_grad needs 0 <= min <= max, got min={t.iters.no_grad.min} max={t.iters.no_grad.max}"
        )
    if not 1 <= t.iters.with_grad.min <= t.iters.with_grad.max:
        raise ConfigError(
            f"train.iters.with_grad needs 1 <= min <= max (at least one iteration with gradient), "
            f"got min={t.iters.with_grad.min} max={t.iters.with_grad.max}"
        )
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
def _train_compute_budget(cfg) -> None:
    """A compute or FLOP budget the run would miss by more than its tolerance, before training
    (FLOPs counted on a shape-only copy of the model, as the run counts the real one)."""
    from harness.compute.train_compute import check_compute_budget

    unit = cfg.train.budget.unit
    if unit not in ("compute", "flops") or uses_pretrained_weights(cfg.model):
        return
    flops = None
    if unit == "flops":
        from harness.stages.meta_flops import meta_breakdown

        flops = meta_breakdown(cfg)
        if flops is None:
            return  # the data check names the unreadable data
    try:
        problem = check_compute_budget(cfg, flops)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if problem:
        raise ConfigError(problem)


@check
def _sample(cfg) -> None:
    from fpdm.schedules import list_schedules
    from harness.compute.plan import BudgetError, sampling_plan
    from harness.diffusion import list_samplers
    from harness.diffusion.samplers import get_sampler

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
    if s.seed_ranges > 1 and s.num_images // s.seed_ranges < 2:
        raise ConfigError(
            f"sample.seed_ranges={s.seed_ranges} leaves {s.num_images // s.seed_ranges} of "
            f"sample.num_images={s.num_images} images per range (FID needs >= 2); use at most "
            f"sample.seed_ranges={max(1, s.num_images // 2)} or raise sample.num_images"
        )
    if s.num_images % s.seed_ranges:
        raise ConfigError(
            f"sample.num_images={s.num_images} does not split into sample.seed_ranges={s.seed_ranges} "
            "equal ranges; make it a multiple"
        )
    if s.reuse and cfg.model.name != "fpdm":
        raise ConfigError(f"sample.reuse=true needs model=fpdm (model={cfg.model.name} has no fixed point to reuse)")
    if uses_pretrained_weights(cfg.model):
        return  # the depth is known once the weights are loaded
    if not 0.0 <= s.flops_tolerance < 1.0:
        raise ConfigError(f"sample.flops_tolerance={s.flops_tolerance} must be in [0, 1)")
    from harness.stages.meta_flops import sampling_flop_inputs

    flops = sampling_flop_inputs(cfg)  # sample.match=flops: both sides counted on a shape-only model
    if flops is None:
        return  # the data check below names the data problem
    try:
        plan = sampling_plan(cfg, **flops)
        get_sampler(s.sampler).check_steps(plan.steps)  # e.g. heun: an odd number of model evaluations
        _calibrated_schedule(cfg, plan)
    except (BudgetError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


@check
def _selection(cfg) -> None:
    """The held-out selection images (harness/stages/selection.py) share no seed with the evaluated
    images nor, for a calibrated schedule, with the calibration batch: a setting chosen on images it
    is then scored on would be favoured by their luck."""
    from harness.stages.selection import seed_ranges

    n = cfg.selection.images
    if n is None or n < 0 or n == 1:
        raise ConfigError(f"selection.images={n} must be 0 (off) or >= 2 (FID needs two images)")
    ranges = seed_ranges(cfg)
    if "selection" not in ranges:
        return
    (a, b) = ranges.pop("selection")
    for name, (c, d) in ranges.items():
        if a < d and c < b:
            free = max(end for _, end in ranges.values())
            raise ConfigError(
                f"selection.seed={a}: the selection images' seeds [{a}, {b}) overlap the {name} images' [{c}, {d}); "
                f"set selection.seed >= {free}"
            )


def _calibrated_schedule(cfg, plan) -> None:
    """sample.schedule=adaptive | greedy: the calibration settings, and a budget some tolerance or
    allocation within 1..max_iters_per_step iterations per step can spend (before any compute)."""
    if cfg.model.name != "fpdm" or cfg.sample.schedule not in ("adaptive", "greedy"):
        return
    from harness.compute.adaptive import target_iters

    a = cfg.sample.adaptive
    for key in ("calibration_images", "max_iters_per_step", "max_evals"):
        _positive(f"sample.adaptive.{key}", a[key], allow_none=False)
    if not 0 < a.tol_min < a.tol_max:
        raise ConfigError(
            f"sample.adaptive.tol_min={a.tol_min} and tol_max={a.tol_max} must satisfy 0 < tol_min < tol_max"
        )
    target_iters(plan.block_passes, plan.steps, plan.n_explicit, int(a.max_iters_per_step))


@check
def _data(cfg) -> None:
    from harness.data import list_datasets

    d = cfg.data
    _choice("data.name", d.name, list_datasets())
    _choice("data.split", d.split, ("train", "test", "all"))
    _positive("data.image_size", d.image_size)
    if d.name == "digits" and d.upscale not in (None, 8, 16):
        raise ConfigError(f"data.upscale={d.upscale} must be 8 or 16 for data=digits")


@check(disk=True)
def _data_root(cfg) -> None:
    d = cfg.data
    if d.name in ("image_folder", "latents"):
        if not d.root:
            raise ConfigError(
                f"data={d.name} needs data.root: set data.root=/path/to/{'images' if d.name == 'image_folder' else 'latents'}"
            )
        root = Path(d.root).expanduser()
        if not root.exists():
            raise ConfigError(f"data.root={d.root} does not exist: set data.root to an existing folder")
        if root.is_dir() and not any(root.iterdir()):
            raise ConfigError(f"data.root={d.root} is empty: put images (or class subfolders of images) there")
        if d.name == "image_folder" and root.is_dir() and not _has_image_file(root):
            from harness.data.image_folder import IMAGE_EXTENSIONS

            raise ConfigError(
                f"data.root={d.root} holds no image file ({', '.join(IMAGE_EXTENSIONS)}): point "
                "data.root to a folder of images (or class subfolders of images)"
            )


@check(disk=True)  # extractor weights on disk; inspect evaluates nothing
def _metrics(cfg) -> None:
    from harness.metrics import list_extractors
    from harness.metrics.choice import INCEPTION_HOWTO, extractor_misfit, extractor_name

    m = cfg.metrics
    if m.extractor is not None:  # null: the data source's default (harness/metrics/choice.py)
        _choice("metrics.extractor", m.extractor, list_extractors())
    _choice("metrics.reference_split", m.reference_split, ("train", "test", "all"))
    if m.second_extractor not in (None, "auto"):
        _choice("metrics.second_extractor", m.second_extractor, ["auto", *list_extractors()])
    if m.bootstrap < 1:
        raise ConfigError(
            f"metrics.bootstrap={m.bootstrap} must be >= 1: it is the number of bootstrap resamples "
            "behind every interval; use e.g. metrics.bootstrap=500"
        )
    _positive("metrics.noise_floor_splits", m.noise_floor_splits, allow_none=False)
    if m.weights and not Path(m.weights).expanduser().is_file():
        fix = (
            f"run `python -m harness.metrics.inception --out {m.weights}`"
            if m.extractor != "digits-cnn"
            else "leave metrics.weights unset to use the cached extractor"
        )
        raise ConfigError(f"metrics.weights={m.weights} does not exist: {fix}")
    if "evaluate" not in cfg.run.stages:
        return  # nothing is scored, so no feature network is needed
    name = extractor_name(cfg)
    misfit = extractor_misfit(name, cfg.data.name)
    if misfit:
        raise ConfigError(misfit)
    if name == "inception-v3-compat" and not m.weights:
        default = "" if m.extractor else f" (the default for data={cfg.data.name})"
        raise ConfigError(f"metrics.extractor=inception-v3-compat{default} needs metrics.weights; {INCEPTION_HOWTO}")
    if name == "inception-v3-compat":
        _check_weights_hash(Path(m.weights).expanduser(), m.weights_sha256)
        if m.isc:  # FID-only weights carry a zero classifier (harness/metrics/inception.py)
            _check_classifier(m)
    _dinov2_offline(name, m)
    _metric_options(name, m)


def _check_classifier(m) -> None:
    from harness.metrics.extractors import get_extractor
    from harness.metrics.fidelity import ISC_WEIGHTS

    if not get_extractor("inception-v3-compat").resolve_weights(m.weights, expected_sha256=m.weights_sha256).has_logits:
        raise ConfigError(f"{ISC_WEIGHTS} (metrics.weights={m.weights} has a zero classifier: FID-only weights)")


def _dinov2_offline(name: str, m) -> None:
    """FD-DINOv2 runs offline only from local weights and a local copy of the DINOv2 hub code."""
    from harness.metrics.dinov2 import DINOV2_DIMS, MODEL_METADATA, hub_code_dir

    if name not in DINOV2_DIMS:
        return
    if not m.weights:
        raise ConfigError(
            f"metrics.extractor={name} needs local weights offline: download {MODEL_METADATA[name]}_pretrain.pth "
            "from the DINOv2 release and set metrics.weights=PATH metrics.weights_sha256=HASH"
        )
    if not (hub_code_dir() / "hubconf.py").is_file():
        raise ConfigError(
            f"metrics.extractor={name} needs the DINOv2 model code offline: copy github.com/facebookresearch/dinov2 "
            f"to {hub_code_dir()} (torch.hub puts it there after one online use; $TORCH_HOME moves it)"
        )
    _check_weights_hash(Path(m.weights).expanduser(), m.weights_sha256)


def _metric_options(name: str, m) -> None:
    """metrics.sfid and metrics.reference fit the extractor (read, not computed: before any compute)."""
    from harness.metrics import get_extractor

    spec = get_extractor(name)
    if m.sfid and spec.spatial_layer is None:
        raise ConfigError(f"metrics.sfid=true: metrics.extractor={name} has no spatial layer; use inception-v3-compat")
    if m.isc and spec.logits_layer is None:
        raise ConfigError(f"metrics.isc=true: metrics.extractor={name} has no classifier; use inception-v3-compat")
    if not m.reference:
        return
    from harness.metrics.reference_file import open_reference_file, pick_file_stats, read_reference_file

    try:
        ref = open_reference_file(m.reference)
        contents = read_reference_file(ref)
        pick_file_stats(ref, contents, spec, spec.feature_layer, "pool")
        if m.sfid:
            pick_file_stats(ref, contents, spec, spec.spatial_layer, "spatial")
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None


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
        raise ConfigError(
            f"metrics.weights={path} has no {path.name}.sha256 beside it to verify against: set "
            "metrics.weights_sha256=HASH or rewrite it with `python -m harness.metrics.inception --out PATH`"
        )
    st = path.stat()
    digest = _sha256(str(path), st.st_size, st.st_mtime_ns)
    if not digest.startswith(want):
        raise ConfigError(
            f"metrics.weights={path}: sha256 {digest[:16]}... does not match the expected {want[:16]}...; "
            "the file is corrupt or not the one hashed: rewrite it with "
            "`python -m harness.metrics.inception --out PATH` or fix metrics.weights_sha256"
        )


def _writable(path: Path) -> bool:
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


@check
def _inspect(cfg) -> None:
    _choice("inspect.format", cfg.inspect.format, ("text", "json"))


@check(disk=True)
def _paths(cfg) -> None:
    if not _writable(Path(cfg.paths.cache_dir)):
        raise ConfigError(
            f"paths.cache_dir={cfg.paths.cache_dir} is not writable: set paths.cache_dir to a "
            "directory you can write to"
        )


def validate_config(cfg: DictConfig, disk: bool = True) -> None:
    """Run every registered check; raise the first ``ConfigError``. ``disk=False`` skips the
    checks that need files on this machine (``harness.inspect``: nothing is read or written).

    The user's modules (``run.imports``, the ``fpdm_bench.plugins`` entry points) are imported first,
    so the names they register are valid here (harness/config/user_code.py)."""
    from harness.config.user_code import UserCodeError, import_user_modules, load_entry_points

    try:
        load_entry_points()
        import_user_modules(cfg.run.get("imports") or [])
    except UserCodeError as exc:
        raise ConfigError(str(exc)) from None
    for fn in _CHECKS:
        if disk or fn not in _DISK_CHECKS:
            fn(cfg)


def check_output_dir(path: str | Path, key: str) -> None:
    if not _writable(Path(path)):
        raise ConfigError(f"{key}={path} is not writable: point it to a directory you can write to")


@check
def _protocol(cfg) -> None:
    from harness.stages.protocol import check_weights_carry_protocol, list_protocols

    _choice("protocol", cfg.protocol, list_protocols())
    problem = check_weights_carry_protocol(cfg)
    if problem:
        raise ConfigError(problem)


@check(disk=True)  # what is installed on this machine (inspect runs without the backend)
def _logger(cfg) -> None:
    from harness.runtime.tracking import check_logger

    problem = check_logger(cfg.logger)
    if problem:
        raise ConfigError(problem)

"""Content-addressed artifact cache for the stages of a job (design.md, data flow).

An artifact's key is a hash of the resolved sub-configs that determine it, so a sweep over
sampling settings trains each model once and a re-run sweep recomputes nothing. A stage works in
``<cache>/<stage>/<key>/`` under a file lock: two jobs that need the same checkpoint at once train
it once (the second waits, then finds it complete). Completion is a ``complete.json`` marker
written last and atomically, so a crashed stage is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from harness.runtime.io import atomic_write_json, read_json
from harness.runtime.matmul_precision import OFFICIAL_TF32

COMPLETE = "complete.json"


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-able config parts (key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_complete(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / COMPLETE).is_file()

    def read_complete(self, stage: str, key: str) -> dict:
        return read_json(self.dir(stage, key) / COMPLETE)

    def mark_complete(self, stage: str, key: str, info: dict) -> None:
        atomic_write_json(self.dir(stage, key) / COMPLETE, info)

    @contextmanager
    def lock(self, stage: str, key: str, timeout: float = -1) -> Iterator[Path]:
        """Exclusive lock on one artifact; yields its directory (created)."""
        d = self.dir(stage, key)
        d.mkdir(parents=True, exist_ok=True)
        with FileLock(str(d) + ".lock", timeout=timeout):
            yield d

    def run_stage(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], dict],
        *,
        lead: bool = True,
        agree: Callable[[bool], bool] = lambda need: need,
    ) -> tuple[dict | None, str, Path]:
        """One stage through the cache: under the artifact's lock, ``compute(dir)`` unless the
        artifact is complete, mark it complete with what ``compute`` returned, read the marker back.

        Returns ``(summary, "ran" | "cached", dir)``. In a data-parallel job only the ``lead`` process
        (rank 0) locks, marks and reads (the others get ``None``); ``agree`` broadcasts its decision,
        so every rank computes or none does."""
        d = self.dir(stage, key)
        with self.lock(stage, key) if lead else nullcontext(d):
            ran = agree(not self.is_complete(stage, key))
            if ran:
                out = compute(d)
                if lead:
                    self.mark_complete(stage, key, out)
            summary = self.read_complete(stage, key) if lead else None
        return summary, "ran" if ran else "cached", d

    def status(self, stage: str, key: str) -> str:
        if self.is_complete(stage, key):
            return "cached"
        return "partial" if self.dir(stage, key).exists() else "to run"


# ------------------------------------------------------------------ the keys of one job's stages
# Keys hash only what determines an artifact: the train key ignores sampling and metrics, so a
# sweep over sampling settings trains each model once; for DiT it also ignores the FPDM-only
# training knobs and the solver, so DiT is trained and sampled once per budget.
# keys that change how a stage runs but not what it produces
# speed knobs (torch.compile changes results only by float rounding) do not split the cache
_TRAIN_RUNTIME_KEYS = ("resume", "log_every", "ckpt_every", "compile")
_TRAIN_BUDGET_CHECK_KEYS = ("tolerance",)  # only decide whether a budget is accepted
# search: where density knots came from (harness/app/searched.py); the knots it resolved are keyed
_SAMPLE_RUNTIME_KEYS = ("batch_size", "flops_tolerance", "compile", "search")
# keys that split the cache only when set away from their default, so that the keys of runs made
# before the knob existed stay valid: TF32 changes nothing on CPU, and a CUDA training made before
# it (in full fp32) differs from a TF32 one by the rounding of its products, as compile's does
_KEYED_WHEN_CHANGED = {stage: {"tf32": default} for stage, default in OFFICIAL_TF32.items()}
# metrics added later (docs/metrics.md): an evaluation made before them keys as their defaults do
_KEYED_WHEN_CHANGED["eval"] = {"isc": None, "sfid": False, "reference": None}


def drop_default_knobs(stage: str, part: dict) -> dict:
    """``part`` (a stage's config as a dict) without the ``_KEYED_WHEN_CHANGED`` knobs at their default."""
    for k, default in _KEYED_WHEN_CHANGED[stage].items():
        if part.get(k, default) == default:
            part.pop(k, None)
    return part


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


@dataclass(frozen=True)
class StageKeys:
    train: str
    sample: str
    eval: str

    def as_dict(self) -> dict:
        return {"train": self.train, "sample": self.sample, "eval": self.eval}


def _key_by_plan(cfg, sample: dict) -> None:
    """Key FPDM's sample stage by the integer plan it runs, not by the names that produced it: two
    schedules that expand to the same per-step iterations (e.g. ``cosine`` and ``increasing`` at
    2 iterations per step) share one artifact, so a sweep samples that plan once and the report
    shows one row naming both (``reports.merge``)."""
    from harness.compute.plan import BudgetError, sampling_plan
    from harness.stages.meta_flops import sampling_flop_inputs

    if cfg.sample.schedule in ("adaptive", "greedy"):
        from harness.compute.adaptive import CALIBRATION_VERSION

        sample["calibration"] = CALIBRATION_VERSION  # what the calibration decides: recalibrated, resampled
        return  # decided by a calibration run, not by the nominal plan: keyed by the settings
    flops = sampling_flop_inputs(cfg)  # sample.match=flops: the plan the measured FLOPs give
    if flops is None:
        return  # the data's shape is unreadable: the job fails on its data with its own message
    try:
        planned = sampling_plan(cfg, **flops)
    except (BudgetError, ValueError):
        return  # an infeasible budget fails later with its own message; keep the plain key
    # a block plan spends its budget exactly; a FLOP plan may be the plan of several budgets, whose
    # DiT targets (recorded with the samples) differ, so its key keeps the budget
    dropped = ("steps", "iters", "schedule", "schedule_values", "ratio")
    for k in (*dropped, "budget") if cfg.sample.match == "blocks" else dropped:
        sample.pop(k, None)
    sample["plan_iters"] = list(planned.iters)


def _model_identity(cfg) -> dict:
    """``cfg.model`` for the train key, with the architecture knobs replaced by what they change:
    a knob that is null or equal to the preset's value is dropped, so ``model.depth=6`` on the
    6-deep tiny preset trains (and caches) the same model as no knob, and keys of configs without
    knobs are unchanged."""
    model = _plain(cfg.model)
    if cfg.model.name == "dit_diffusers" and cfg.model.get("pretrained_path"):
        return model
    from baselines.presets import ARCHITECTURE_KNOBS, get_preset
    from harness.compute.plan import _arch

    base, arch = get_preset(cfg.model.preset), _arch(cfg)
    for knob in ARCHITECTURE_KNOBS:
        if knob in model and getattr(arch, knob) == getattr(base, knob):
            model.pop(knob)
    return model


def stage_keys(cfg: DictConfig) -> StageKeys:
    model = _model_identity(cfg)
    train = drop_default_knobs("train", {k: v for k, v in _plain(cfg.train).items() if k not in _TRAIN_RUNTIME_KEYS})
    train["budget"] = {k: v for k, v in train["budget"].items() if k not in _TRAIN_BUDGET_CHECK_KEYS}
    if cfg.model.name != "fpdm":  # FPDM-only knobs must not split the DiT cache
        for k in ("method", "iters", "implicit_solver", "implicit_tol"):
            train.pop(k, None)
        for k in ("pre_depth", "post_depth", "pre_post_timestep_conditioning"):
            model.pop(k, None)
    train_key = config_hash("train", model, _plain(cfg.data), _plain(cfg.diffusion), train)
    sample = drop_default_knobs(
        "sample", {k: v for k, v in _plain(cfg.sample).items() if k not in _SAMPLE_RUNTIME_KEYS}
    )
    solver = _plain(cfg.solver) if cfg.model.name == "fpdm" else None
    if cfg.model.name != "fpdm":
        for k in ("iters", "schedule", "schedule_values", "ratio", "reuse", "match"):
            sample.pop(k, None)
        if cfg.sample.budget is not None:
            sample.pop("steps", None)
    if cfg.model.name == "fpdm":
        _key_by_plan(cfg, sample)
    # the FLOP counting convention decides a FLOP-matched plan and the FLOP figures cached with samples
    from harness.compute.flops import FLOP_COUNT_VERSION

    sample["flop_count"] = FLOP_COUNT_VERSION
    if cfg.diffusion.timestep_spacing == "linspace":  # placed as IDDPM's space_timesteps (harness.diffusion.samplers);
        sample["respacing"] = "iddpm"  # samples cached under diffusers' rounding differ at some step counts
    sample_key = config_hash("sample", train_key, sample, solver)
    from harness.metrics.choice import extractor_name

    metrics = {**_plain(cfg.metrics), "extractor": extractor_name(cfg)}  # null and its default: one key
    metrics = drop_default_knobs("eval", metrics)
    if metrics.get("reference") and Path(metrics["reference"]).expanduser().is_file():  # keyed by content too
        from harness.metrics.reference_file import file_sha256

        metrics["reference_sha256"] = file_sha256(metrics["reference"])
    eval_key = config_hash("eval", sample_key, metrics)
    return StageKeys(train_key, sample_key, eval_key)

"""One job = one point of a sweep: train (cached), sample (cached), evaluate (cached), record.

Each stage works in its content-addressed cache directory under a file lock (``harness.stages.cache``),
so concurrent jobs that need the same checkpoint train it once and a re-run sweep only reads
``complete.json`` markers. The record of the job is written by the caller (``harness.run``),
which also turns any exception into a ``failed`` record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from baselines.diffusers_dit import uses_pretrained_weights
from harness.compute.plan import flop_match_inputs, sampling_plan
from harness.diffusion.spec import diffusion_spec
from harness.stages.cache import ArtifactCache, StageKeys, stage_keys
from harness.stages.selection import selection_images

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

    from harness.compute.plan import SamplingPlan
    from harness.data import DataSource

TRAIN_CONFIG_NAME = "config.json"  # the resolved config, written beside the trained weights


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device={name} but CUDA is not available here; use run.device=auto or run.device=cpu")
    return dev


@dataclass
class JobResult:
    keys: StageKeys
    axes: dict
    metrics: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    solver_trace: dict | None = None
    artifacts: dict = field(default_factory=dict)
    stage_status: dict = field(default_factory=dict)
    is_main: bool = True  # False on the other ranks of a data-parallel job: rank 0 writes the record


def job_axes(cfg: DictConfig, plan: SamplingPlan | None = None) -> dict:
    """The flat, scalar axes a report groups by."""
    fpdm = cfg.model.name == "fpdm"
    axes = {
        "model": cfg.model.name,
        "preset": cfg.model.preset,
        "data": cfg.data.name,
        "sampler": cfg.sample.sampler,
        # the budget a job is compared at: a FLOP-matched FPDM plan runs fewer block passes
        # (block_passes_per_image), each iteration costing more than a block
        "budget_blocks": cfg.sample.budget if cfg.sample.budget is not None or plan is None else plan.block_passes,
        "steps": plan.steps if plan is not None else cfg.sample.steps,
        "iters_per_step": (plan.k_mean if plan is not None else cfg.sample.iters) if fpdm else None,
        "schedule": cfg.sample.schedule if fpdm else None,
        "solver": cfg.solver.name if fpdm else None,
        "tol": float(cfg.solver.tol) if fpdm else None,
        "reuse": bool(cfg.sample.reuse) if fpdm else None,
        "pre_depth": cfg.model.pre_depth if fpdm else None,
        "post_depth": cfg.model.post_depth if fpdm else None,
        "train_method": cfg.train.method if fpdm else None,
        "match": cfg.sample.match,
        "cfg_scale": float(cfg.sample.cfg_scale),
        "seed": cfg.sample.seed,
        "train_seed": cfg.train.seed,
        "prediction_type": cfg.diffusion.prediction_type,
        "sweep": cfg.get("sweep"),
    }
    from harness.stages.protocol import protocol_axes

    axes.update(protocol_axes(cfg))  # protocol name, clip_mode, zero-SNR, spacing, ... (harness.stages.protocol)
    if fpdm:
        axes["no_grad_max"] = cfg.train.iters.no_grad.max
        axes["with_grad_max"] = cfg.train.iters.with_grad.max
    axes.update(architecture_axes(cfg))
    return axes


def architecture_axes(cfg: DictConfig) -> dict | None:
    """The resolved architecture (preset + ``model.depth`` ... ``model.mlp_ratio``) as axes, so a
    depth / width ablation groups like any other sweep; None where loaded weights decide it."""
    from baselines.presets import ARCHITECTURE_KNOBS
    from harness.stages.models import model_architecture

    if uses_pretrained_weights(cfg.model):
        return dict.fromkeys(ARCHITECTURE_KNOBS)
    arch = model_architecture(cfg.model)
    return {k: getattr(arch, k) for k in ARCHITECTURE_KNOBS}


def _build(cfg, data):
    from harness.stages.models import build_model

    # The initial weights are part of the train artifact, whose cache key hashes train.seed: draw
    # them from train.seed, not from whatever the global RNG holds after earlier jobs in this process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_model(
            cfg.model, cfg.train, image_size=data.image_size, channels=data.channels, num_classes=data.num_classes
        )


def _store_train_config(cfg, data, train_dir: Path) -> None:
    """Keep the config beside the weights, so ``harness.models.load`` rebuilds the model from the
    train directory alone (written once, under the train lock)."""
    from harness.runtime.io import atomic_write_json

    if not (train_dir / TRAIN_CONFIG_NAME).is_file():
        atomic_write_json(train_dir / TRAIN_CONFIG_NAME, train_config_blob(cfg, data))


def _load_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def run_job(cfg: DictConfig, *, progress: bool = True, plan_only: bool = False) -> JobResult:
    """Run (or, with ``plan_only``, only inspect) the stages of one job."""
    from harness.compute.params import params_by_part
    from harness.data import build_dataset
    from harness.runtime.allocator import reuse_freed_memory
    from harness.runtime.distributed import setup_distributed

    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(int(cfg.run.threads))
    if cfg.run.reuse_freed_memory:
        reuse_freed_memory()
    keys = stage_keys(cfg)
    cache = ArtifactCache(cfg.paths.cache_dir)
    result = JobResult(keys=keys, axes=job_axes(cfg))
    if plan_only:
        return _plan_only(cfg, cache, result)

    data = build_dataset(cfg.data)
    spec = diffusion_spec(cfg)
    model = _build(cfg, data)
    result.metrics.update({f"params_{k}": v for k, v in params_by_part(model).items()})
    stages = set(cfg.run.stages)
    # Every rank joins the process group before any lock: only rank 0 takes the cache lock and
    # decides whether to train; the other ranks follow its decision, train, and leave the rest to it.
    info = setup_distributed(device)
    result.is_main = info.is_main
    if not uses_pretrained_weights(cfg.model):  # loaded weights skip training
        _train_stage(cfg, cache, result, model, data, spec, device, info, progress)
    model = model.to(device).eval()  # every rank samples its share of the images; rank 0 evaluates

    plan = _job_plan(cfg, model, data, uses_pretrained_weights(cfg.model))
    result.axes = job_axes(cfg, plan)
    if "sample" not in stages:
        return result
    sample_dir = _sample_stage(cfg, cache, result, model, data, spec, plan, device, info, progress)
    held_out = None  # the selection set, scored with the evaluation (harness/stages/selection.py)
    if selection_images(cfg) and "evaluate" in stages:
        held_out = _selection_sample_stage(cfg, cache, result, model, data, spec, plan, device, info, progress)
    if info.is_main and "evaluate" in stages:
        _evaluate_stage(cfg, cache, result, data, sample_dir)
        if held_out is not None:
            _selection_score_stage(cfg, cache, result, data, held_out)
        from harness.runtime.tracking import log_job_metrics

        log_job_metrics(cfg, result.metrics)  # logger=...: the record's numbers to the job's tracked run
    return result


def _sample_stage(
    cfg, cache: ArtifactCache, result: JobResult, model, data, spec, plan, device, info, progress: bool
) -> Path:
    """Sample (every rank its share; cached under the sample key); rank 0 keeps the summary."""
    from harness.runtime.distributed import broadcast_flag
    from harness.stages.calibrate import calibrated_plan
    from harness.stages.sample import sample_model

    # sample.schedule=adaptive | greedy: decided on a calibration batch (its own cached stage)
    plan, adaptive, calibration, status = calibrated_plan(
        cfg, cache, result.keys.train, model, data, spec, plan, device
    )
    if calibration is not None:
        result.stage_status["calibrate"] = status
        result.metrics.update({f"calibration_{k}": v for k, v in calibration.items() if isinstance(v, (int, float))})
    summary, result.stage_status["sample"], sample_dir = cache.run_stage(
        "sample",
        result.keys.sample,
        lambda d: sample_model(model, data, spec, cfg, plan, d, device, progress, info, adaptive),
        lead=info.is_main,
        agree=lambda need: broadcast_flag(need, info),
    )
    if info.is_main:
        result.solver_trace = summary.pop("solver_trace", None)
        _add_scalars(result.metrics, summary)
        result.artifacts.update(samples=str(sample_dir / "samples.npz"), grid=str(sample_dir / "grid.png"))
    return sample_dir


def _selection_sample_stage(
    cfg, cache: ArtifactCache, result: JobResult, model, data, spec, plan, device, info, progress: bool
) -> Path:
    """Sample the held-out selection set (harness/stages/selection.py) like the evaluated set: every
    rank its share, the same plan (a calibrated plan is read back from the calibration cache), under
    the selection set's own sample key."""
    from harness.runtime.distributed import broadcast_flag
    from harness.stages.calibrate import calibrated_plan
    from harness.stages.sample import sample_model
    from harness.stages.selection import selection_config, selection_keys

    sel = selection_config(cfg)
    plan, adaptive, _, _ = calibrated_plan(cfg, cache, result.keys.train, model, data, spec, plan, device)
    _, result.stage_status["selection_sample"], sample_dir = cache.run_stage(
        "sample",
        selection_keys(cfg)[0],
        lambda d: sample_model(model, data, spec, sel, plan, d, device, progress, info, adaptive),
        lead=info.is_main,
        agree=lambda need: broadcast_flag(need, info),
    )
    return sample_dir


def _selection_score_stage(cfg, cache: ArtifactCache, result: JobResult, data, sample_dir: Path) -> None:
    """Score the selection set by FID only (rank 0; cached under its own key) into the record:
    ``metrics.selection_fid`` and ``protocol.selection`` (its seeds, count and FID protocol)."""
    from harness.stages.evaluate import selection_fid
    from harness.stages.selection import selection_keys, selection_protocol

    scored, result.stage_status["selection_evaluate"], _ = cache.run_stage(
        "select", selection_keys(cfg)[1], lambda d: selection_fid(sample_dir / "samples.npz", data, cfg)
    )
    result.metrics["selection_fid"] = scored["fid"]
    result.protocol["selection"] = selection_protocol(cfg, scored)


def _evaluate_stage(cfg, cache: ArtifactCache, result: JobResult, data, sample_dir: Path) -> None:
    """Evaluate the samples (rank 0; cached under the eval key) and label the protocol."""
    from harness.compute.memory import peak_rss_bytes
    from harness.stages.evaluate import evaluate_samples
    from harness.stages.protocol import protocol_label
    from harness.stages.selection import eval_seeds

    metrics, result.stage_status["evaluate"], _ = cache.run_stage(
        "eval", result.keys.eval, lambda d: evaluate_samples(sample_dir / "samples.npz", data, cfg, d)
    )
    result.protocol = metrics.pop("protocol", {})
    result.protocol["eval_seeds"] = eval_seeds(cfg)  # [start, end): image i of the set is seeded start + i
    # The FID protocol (samples, extractor, reference) and the diffusion protocol travel together:
    # reports group tables by this label, so runs of different protocols never share a table.
    result.protocol["diffusion"] = protocol_label(cfg)
    result.protocol["label"] = "; ".join(filter(None, [result.protocol.get("label"), result.protocol["diffusion"]]))
    if isinstance(metrics.get("features"), dict):  # per-ruler features for the report's bootstrap
        result.artifacts["features"] = metrics.pop("features")
    result.metrics["peak_rss_bytes"] = peak_rss_bytes()  # of the job's process (a sweep shares one)
    _add_scalars(result.metrics, metrics)


def _plan_only(cfg, cache: ArtifactCache, result: JobResult) -> JobResult:
    """``run.plan=true``: what each stage would do (cached / partial / to run) and the plan's axes."""
    keys = result.keys
    result.stage_status = {
        "train": cache.status("train", keys.train),
        "sample": cache.status("sample", keys.sample),
        "evaluate": cache.status("eval", keys.eval),
    }
    if selection_images(cfg):
        from harness.stages.selection import selection_keys

        sample_key, score_key = selection_keys(cfg)
        result.stage_status["selection_sample"] = cache.status("sample", sample_key)
        result.stage_status["selection_evaluate"] = cache.status("select", score_key)
    if not uses_pretrained_weights(cfg.model):
        from harness.stages.meta_flops import sampling_flop_inputs

        flops = sampling_flop_inputs(cfg)  # sample.match=flops: both sides counted on a shape-only model
        result.axes = job_axes(cfg, None if flops is None else sampling_plan(cfg, **flops))
    return result


def _train_stage(cfg, cache: ArtifactCache, result: JobResult, model, data, spec, device, info, progress) -> None:
    """Train (or find cached) the model's weights, then load the EMA weights sampling uses."""
    from harness.runtime.distributed import broadcast_flag

    key = result.keys.train

    def train(train_dir: Path) -> dict:
        if "train" not in cfg.run.stages:
            raise RuntimeError(f"the train stage is not cached (key {key}) and run.stages excludes it")
        from harness.stages.train import train_model

        return train_model(model, data, spec, cfg, train_dir, device, info, progress)

    summary, result.stage_status["train"], train_dir = cache.run_stage(
        "train", key, train, lead=info.is_main, agree=lambda need: broadcast_flag(need, info)
    )
    # rank 0 marks the stage complete after train_model's last barrier, so the EMA weights are on
    # disk for every rank (each samples its share); only rank 0 reads the summary
    _load_weights(model, train_dir / "ema.safetensors")  # sampling uses the EMA weights
    if not info.is_main:
        return
    _store_train_config(cfg, data, train_dir)
    _add_scalars(result.metrics, summary)
    result.artifacts["checkpoint"] = str(train_dir / "ema.safetensors")
    result.artifacts["train_log"] = str(train_dir / "train_log.jsonl")  # the report's training curves


def plan_for_model(cfg: DictConfig, model: nn.Module, data: DataSource, pretrained: bool = False) -> SamplingPlan:
    """The sampling plan of a built model. Both sides of a FLOP match are counted by
    harness.compute.flops (meta device, attention included), the path the sample stage records its
    FLOPs with; loaded pretrained weights give the depth."""
    flops, dit_flops = flop_match_inputs(
        cfg, model, image_size=data.image_size, channels=data.channels, num_classes=data.num_classes
    )
    return sampling_plan(
        cfg, depth=getattr(model, "depth", None) if pretrained else None, flops=flops, dit_flops_per_forward=dit_flops
    )


def _job_plan(cfg: DictConfig, model: nn.Module, data: DataSource, pretrained: bool) -> SamplingPlan:
    """``plan_for_model`` for a model built from ``cfg`` itself: its FLOP counts are the shape-only
    copy's of harness.stages.meta_flops (the same counter on the same architecture, so the same
    numbers), which the config check of this job already counted and which are kept per process,
    so the jobs of one worker count each model once (docs/performance.md)."""
    from harness.stages.meta_flops import sampling_flop_inputs

    counted = None if pretrained else sampling_flop_inputs(cfg)
    if not counted:  # loaded weights (the depth comes from them), no FLOP match, or an unreadable shape
        return plan_for_model(cfg, model, data, pretrained)
    return sampling_plan(cfg, **counted)


def _add_scalars(metrics: dict, summary: dict) -> None:
    """A stage summary's scalars go into the record's metrics (traces and protocol go elsewhere)."""
    metrics.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list, str))})


def resolved_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def train_config_blob(cfg: DictConfig, data: DataSource) -> dict:
    """What the job stores as ``config.json`` in the train directory: enough to rebuild the model."""
    return {
        "config": resolved_config(cfg),
        "data": {"channels": data.channels, "image_size": data.image_size, "num_classes": data.num_classes},
    }

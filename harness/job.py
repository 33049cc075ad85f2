"""One job = one point of a sweep: train (cached), sample (cached), evaluate (cached), record.

Each stage works in its content-addressed cache directory under a file lock (``harness.cache``),
so concurrent jobs that need the same checkpoint train it once and a re-run sweep only reads
``complete.json`` markers. The record of the job is written by the caller (``harness.run``),
which also turns any exception into a ``failed`` record.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness.cache import ArtifactCache
from harness.plan import StageKeys, sampling_plan, stage_keys


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device={name} but CUDA is not available here; use run.device=auto or run.device=cpu")
    return dev


def diffusion_spec(cfg):
    from harness.diffusion.spec import DiffusionSpec

    d = cfg.diffusion
    return DiffusionSpec(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule,
                         beta_start=d.beta_start, beta_end=d.beta_end, prediction_type=d.prediction_type,
                         zero_terminal_snr=d.zero_terminal_snr, learn_sigma=cfg.model.learn_sigma,
                         timestep_spacing=d.timestep_spacing, clip_sample=d.clip_sample and not _is_latent(cfg),
                         mse_weighting=d.mse_weighting)


def _is_latent(cfg) -> bool:
    return cfg.data.name == "latents"


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


def job_axes(cfg, plan=None) -> dict:
    """The flat, scalar axes a report groups by."""
    fpdm = cfg.model.name == "fpdm"
    axes = {
        "model": cfg.model.name, "preset": cfg.model.preset, "data": cfg.data.name, "sampler": cfg.sample.sampler,
        "budget_blocks": plan.block_passes if plan is not None else cfg.sample.budget,
        "steps": plan.steps if plan is not None else cfg.sample.steps,
        "iters_per_step": (plan.k_mean if plan is not None else cfg.sample.iters) if fpdm else None,
        "schedule": cfg.sample.schedule if fpdm else None, "solver": cfg.solver.name if fpdm else None,
        "tol": float(cfg.solver.tol) if fpdm else None, "reuse": bool(cfg.sample.reuse) if fpdm else None,
        "pre_depth": cfg.model.pre_depth if fpdm else None, "post_depth": cfg.model.post_depth if fpdm else None,
        "train_method": cfg.train.method if fpdm else None, "match": cfg.sample.match,
        "cfg_scale": float(cfg.sample.cfg_scale), "seed": cfg.sample.seed, "train_seed": cfg.train.seed,
        "prediction_type": cfg.diffusion.prediction_type, "sweep": cfg.get("sweep"),
    }
    if fpdm:
        axes["no_grad_max"] = cfg.train.iters.no_grad.max
        axes["with_grad_max"] = cfg.train.iters.with_grad.max
    return axes


def _build(cfg, data):
    from harness.models import build_model

    # The initial weights are part of the train artifact, whose cache key hashes train.seed: draw
    # them from train.seed, not from whatever the global RNG holds after earlier jobs in this process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model, cfg.train, image_size=data.image_size, channels=data.channels,
                           num_classes=data.num_classes)


def _load_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def run_job(cfg, *, progress: bool = True, plan_only: bool = False) -> JobResult:
    """Run (or, with ``plan_only``, only inspect) the stages of one job."""
    from harness.accounting import flop_breakdown, params_by_part
    from harness.data import build_dataset
    from harness.distributed import broadcast_flag, setup_distributed

    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(int(cfg.run.threads))
    keys = stage_keys(cfg)
    cache = ArtifactCache(cfg.paths.cache_dir)
    result = JobResult(keys=keys, axes=job_axes(cfg))
    if plan_only:
        result.stage_status = {"train": cache.status("train", keys.train), "sample": cache.status("sample", keys.sample),
                               "evaluate": cache.status("eval", keys.eval)}
        if cfg.model.name != "dit_diffusers" or not cfg.model.pretrained_path:
            result.axes = job_axes(cfg, sampling_plan(cfg))
        return result

    data = build_dataset(cfg.data)
    spec = diffusion_spec(cfg)
    model = _build(cfg, data)
    result.metrics.update({f"params_{k}": v for k, v in params_by_part(model).items()})
    stages = set(cfg.run.stages)

    # ---- train (skipped for loaded pretrained weights)
    pretrained = cfg.model.name == "dit_diffusers" and bool(cfg.model.pretrained_path)
    # Every rank joins the process group before any lock: only rank 0 takes the cache lock and
    # decides whether to train; the other ranks follow its decision, train, and leave the rest to it.
    info = setup_distributed(device)
    result.is_main = info.is_main
    if not pretrained:
        lock = cache.lock("train", keys.train) if info.is_main else nullcontext(cache.dir("train", keys.train))
        with lock as train_dir:
            if broadcast_flag(not cache.is_complete("train", keys.train), info):
                if "train" not in stages:
                    raise RuntimeError(f"the train stage is not cached (key {keys.train}) and run.stages excludes it")
                from harness.train import train_model

                summary = train_model(model, data, spec, cfg, train_dir, device, info, progress)
                if info.is_main:
                    cache.mark_complete("train", keys.train, summary)
                result.stage_status["train"] = "ran"
            else:
                result.stage_status["train"] = "cached"
            # rank 0 marks the stage complete after train_model's last barrier: only it reads the
            # summary; the EMA weights are on disk before that barrier, so every rank loads them
            train_summary = cache.read_complete("train", keys.train) if info.is_main else {}
            _load_weights(model, train_dir / "ema.safetensors")  # sampling uses the EMA weights
        result.metrics.update({k: v for k, v in train_summary.items() if not isinstance(v, (dict, list, str))})
        result.artifacts["checkpoint"] = str(train_dir / "ema.safetensors")
    model = model.to(device).eval()  # every rank samples its share of the images; rank 0 evaluates

    # ---- sample
    # measured FLOPs only plan a FLOP-matched budget here; the sample stage measures its own for the record
    match_flops = cfg.sample.match == "flops" and cfg.model.name == "fpdm"
    flops = flop_breakdown(model, data.image_size) if match_flops else None
    dit_flops = _dit_flops_per_forward(cfg, data) if match_flops else None
    plan = sampling_plan(cfg, depth=getattr(model, "depth", None) if pretrained else None, flops=flops,
                         dit_flops_per_forward=dit_flops)
    result.axes = job_axes(cfg, plan)
    if "sample" not in stages:
        return result
    lock = cache.lock("sample", keys.sample) if info.is_main else nullcontext(cache.dir("sample", keys.sample))
    with lock as sample_dir:
        if broadcast_flag(not cache.is_complete("sample", keys.sample), info):
            from harness.sample import sample_model

            summary = sample_model(model, data, spec, cfg, plan, sample_dir, device, progress, info)
            if info.is_main:
                cache.mark_complete("sample", keys.sample, summary)
            result.stage_status["sample"] = "ran"
        else:
            result.stage_status["sample"] = "cached"
        if not info.is_main:
            return result
        sample_summary = cache.read_complete("sample", keys.sample)
    result.solver_trace = sample_summary.pop("solver_trace", None)
    result.metrics.update({k: v for k, v in sample_summary.items() if not isinstance(v, (dict, list, str))})
    result.artifacts.update(samples=str(sample_dir / "samples.npz"), grid=str(sample_dir / "grid.png"))

    # ---- evaluate
    if "evaluate" not in stages:
        return result
    with cache.lock("eval", keys.eval) as eval_dir:
        if not cache.is_complete("eval", keys.eval):
            from harness.evaluate import evaluate_samples

            metrics = evaluate_samples(sample_dir / "samples.npz", data, cfg, eval_dir)
            cache.mark_complete("eval", keys.eval, metrics)
            result.stage_status["evaluate"] = "ran"
        else:
            result.stage_status["evaluate"] = "cached"
        eval_metrics = cache.read_complete("eval", keys.eval)
    result.protocol = eval_metrics.pop("protocol", {})
    from harness.memory import peak_rss_bytes

    result.metrics["peak_rss_bytes"] = peak_rss_bytes()  # of the job's process (a sweep shares one)
    result.metrics.update({k: v for k, v in eval_metrics.items() if not isinstance(v, (dict, list, str))})
    return result


def _dit_flops_per_forward(cfg, data) -> float:
    """FLOPs of one forward of the DiT of the same preset (meta device: nothing is allocated)."""
    from baselines.dit import build_dit
    from harness.accounting import count_flops

    with torch.device("meta"):
        dit = build_dit(cfg.model.preset, input_size=data.image_size, in_channels=data.channels,
                        num_classes=data.num_classes, learn_sigma=cfg.model.learn_sigma).eval()
        x = torch.zeros(1, data.channels, data.image_size, data.image_size)
        t = torch.zeros(1, dtype=torch.long)
        return float(count_flops(dit, x, t, t))


def resolved_config(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)

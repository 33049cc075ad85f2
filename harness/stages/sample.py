"""The sampling stage: images under a block budget, with per-image seeds, shards and solver stats.

Image i draws its label and all its noise from a generator seeded with ``sample.seed + i``
(as NVlabs/edm's ``--seeds``), so samples do not depend on batch size, shard or GPU count. Images are
written in shards by index range (``shard-<start>-<end>.npz``, atomically); a shard that exists is
skipped, so an interrupted sampling run resumes where it stopped. For FPDM each sampling step
runs the solver for the plan's iterations at that step (paper Sec. 3.3 smoothing and
reallocation), optionally warm-started from the previous step (solution reuse, Sec. 3.3), and the
stage records per step the evaluations spent and the residual before and after (delta_t of
Fig. 6), the block passes actually spent, FLOPs and wall time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from harness.compute.flops import flop_breakdown, sampling_flops
from harness.compute.memory import cuda_peak
from harness.runtime.compile import set_compiled
from harness.runtime.distributed import DistInfo, all_reduce_values, barrier, raise_if_any_rank_failed
from harness.runtime.io import atomic_write
from harness.runtime.matmul_precision import stage_tf32, tf32_matmuls
from harness.runtime.npz_stream import write_npz_chunked
from harness.runtime.progress import progress_bar

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from harness.compute.adaptive import AdaptiveSetting
    from harness.compute.plan import SamplingPlan
    from harness.data import DataSource
    from harness.diffusion.spec import DiffusionSpec

SHARD_PREFIX = "shard-"


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]


def image_labels(seed: int, start: int, end: int, num_classes: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Per-image generators (seed + i) and each image's label, drawn first from its generator."""
    gens = [torch.Generator().manual_seed(int(seed) + i) for i in range(start, end)]
    labels = torch.tensor([int(torch.randint(num_classes, (1,), generator=g)) for g in gens], dtype=torch.long)
    return labels, gens


class _StepStats:
    """Per-step solver statistics summed over images (divided by the image count at the end).

    The residual sums stay on the model's device while a batch samples, so recording them costs no
    host synchronisation inside the sampling loop; ``arrays()`` reads them once per batch."""

    FIELDS = ("nfe", "res_first", "res_last", "delta", "count")

    def __init__(self, steps: int, device: torch.device | str = "cpu"):
        self.steps = steps
        self.count = np.zeros(steps)
        # evaluations summed over images, per sample (a tolerance stops samples at different counts)
        self.nfe = torch.zeros(steps, dtype=torch.float64, device=device)
        self.res_first = torch.zeros(steps, dtype=torch.float64, device=device)
        self.res_last = torch.zeros(steps, dtype=torch.float64, device=device)
        self.delta = torch.zeros(steps, dtype=torch.float64, device=device)
        self.diverged = torch.zeros((), dtype=torch.long, device=device)

    def add(self, i: int, stats, batch: int) -> None:
        self.nfe[i] += stats.nfe_per_sample.sum()
        self.count[i] += batch
        if stats.nfe:
            self.res_first[i] += torch.nan_to_num(stats.rel_residuals[0].double(), nan=0.0).sum()
        self.res_last[i] += torch.nan_to_num(stats.final_rel_residuals.double(), nan=0.0).sum()
        self.delta[i] += torch.nan_to_num(stats.delta_last.double(), nan=0.0).sum()
        self.diverged += stats.diverged.sum()

    def arrays(self) -> dict:
        """Host copies of every field (one transfer per field), as stored in a shard."""
        out = {
            k: np.asarray(v.cpu().numpy() if torch.is_tensor(v) else v)
            for k, v in ((f, getattr(self, f)) for f in self.FIELDS)
        }
        out["diverged"] = np.asarray(int(self.diverged))
        return out

    def to_dict(self, timesteps: list[int]) -> dict:
        a = self.arrays()
        c = np.maximum(a["count"], 1)
        return {
            "timestep": timesteps,
            "iters": (a["nfe"] / c).tolist(),
            "residual_first": (a["res_first"] / c).tolist(),
            "residual": (a["res_last"] / c).tolist(),
            "delta": (a["delta"] / c).tolist(),
        }


def rank_ranges(ranges: list[tuple[int, int]], info: DistInfo) -> list[tuple[int, int]]:
    """This rank's contiguous run of shards: rank r of W takes shards [r*S/W, (r+1)*S/W)."""
    n = len(ranges)
    return ranges[info.rank * n // info.world_size : (info.rank + 1) * n // info.world_size]


def sample_model(
    model: nn.Module,
    data: DataSource,
    spec: DiffusionSpec,
    cfg: DictConfig,
    plan: SamplingPlan,
    work_dir: Path,
    device: torch.device,
    progress: bool = True,
    info: DistInfo = DistInfo(),
    adaptive: AdaptiveSetting | None = None,
) -> dict:
    """Sample ``cfg.sample.num_images`` images with ``plan``; returns the stage summary and writes
    ``samples.npz`` (uint8 images, labels) and ``grid.png`` into ``work_dir``.

    Data parallel: with several ranks each samples its own index range of shards (per-image seeds
    make every image what one process would draw), then rank 0 merges all shards, each image once,
    and writes the record; the other ranks return an empty summary.

    ``adaptive`` (``harness.compute.adaptive.AdaptiveSetting``, ``sample.schedule=adaptive``): every
    step runs up to ``max_iters_per_step`` evaluations and each sample stops at the calibrated
    tolerance (the solver compacts the batch), instead of the plan's fixed iterations.

    fp32 CUDA products run in TF32 when ``sample.tf32`` (the official sampling keeps full fp32)."""
    with tf32_matmuls(stage_tf32(cfg.sample, "sample"), device) as tf32:
        summary = _sample(model, data, spec, cfg, plan, work_dir, device, progress, info, adaptive)
    return {**summary, "sample_tf32_matmul": tf32} if summary else summary


def _sample(model, data, spec, cfg, plan, work_dir, device, progress, info: DistInfo, adaptive) -> dict:
    sc = cfg.sample
    work_dir = Path(work_dir)
    shards_dir = work_dir / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    set_compiled(model, bool(getattr(sc, "compile", False)), "sample.compile", device)
    implicit, solver, tol = _solver_of(model, cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=sc.precision == "bf16")
    ranges = shard_ranges(sc.num_images, sc.batch_size)
    mine = rank_ranges(ranges, info)
    bar = _progress_bar(
        sum(e - s for s, e in mine), f"sample {cfg.model.name} {plan.steps} steps", progress and info.is_main
    )
    wall, sampled, error = 0.0, 0, None
    peaks: dict = {}
    try:
        for start, end in mine:
            shard = shards_dir / f"{SHARD_PREFIX}{start:07d}-{end:07d}.npz"
            if not shard.exists():
                how = ((implicit, solver, tol), adaptive, autocast, peaks, info.rank)
                wall += _sample_shard(model, data, spec, cfg, plan, shard, (start, end), device, how)
                sampled += end - start
            if bar is not None:
                bar.update(end - start)
    except Exception as exc:  # every rank learns of it below, instead of waiting at the barrier
        error = exc
    if bar is not None:
        bar.close()
    raise_if_any_rank_failed(error, info)
    if info.enabled:  # device-seconds and images over all ranks: time per image stays per device
        wall, sampled = all_reduce_values([wall, float(sampled)], info, op="sum")
        barrier(info)  # every shard is on disk before rank 0 merges
        if not info.is_main:
            return {}
    summary = _finish(model, data, cfg, plan, work_dir, ranges, implicit, wall, int(sampled))
    summary.update(peaks, sample_world_size=info.world_size)
    return summary


def _sample_shard(model, data, spec, cfg, plan, shard: Path, span: tuple[int, int], device, how: tuple) -> float:
    """Sample images ``[start, end)`` of ``span`` into ``shard``; returns the seconds spent sampling.
    ``how`` = (solving, adaptive, autocast, peaks, rank) as ``sample_model`` prepared them."""
    from harness.diffusion import sample_loop

    start, end = span
    solving, adaptive, autocast, peaks, rank = how
    labels, gens = image_labels(cfg.sample.seed, start, end, data.num_classes)
    batch_timesteps: list[int] = []
    batch_stats = _StepStats(plan.steps, device)
    img_iters = torch.zeros(end - start, dtype=torch.long, device=device)  # evaluations per image
    model_fn = _model_fn(model, plan, solving, cfg.sample.reuse, batch_timesteps, batch_stats, adaptive, img_iters)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast, cuda_peak(device, peaks, "sample_cuda_peak_bytes"):
        x0 = sample_loop(
            model_fn,
            (end - start, data.channels, data.image_size, data.image_size),
            labels.to(device),
            spec,
            sampler=cfg.sample.sampler,
            num_steps=plan.steps,
            generator_per_image=gens,
            eta=cfg.sample.eta,
            cfg_scale=cfg.sample.cfg_scale,
            null_label=data.num_classes,
            device=device,
        )
        images = data.to_uint8_images(x0.float()).cpu().numpy()
    wall = time.perf_counter() - t0
    if not np.isfinite(x0.float().cpu().numpy()).all():
        raise FloatingPointError(f"sampling produced non-finite values in images {start}..{end - 1}")
    _write_shard(shard, images, labels, batch_timesteps, batch_stats, img_iters, rank)
    return wall


def _model_fn(
    model: nn.Module,
    plan,
    solving: tuple,
    reuse: bool,
    timesteps: list[int],
    stats: _StepStats,
    adaptive=None,
    img_iters: torch.Tensor | None = None,
):
    """``model_fn(x, t, y, step_index)`` for one batch's ``sample_loop``: FPDM runs the plan's iterations
    of the step (or, ``adaptive``, up to its cap at the calibrated tolerance), warm-started from the
    previous step when ``reuse`` (state reset per batch); its solve is added to ``stats`` and each
    image's evaluations to ``img_iters``; the timestep of each step is appended to ``timesteps``."""
    from fpdm.model import SolveTrace
    from fpdm.reuse import WarmStart

    implicit, solver, tol = solving
    warm = WarmStart() if (implicit and reuse) else None

    def model_fn(x, t, y, step_index):
        if len(timesteps) == step_index:
            timesteps.append(int(t[0]))
        if not implicit:
            return model(x, t, y)
        trace = SolveTrace()
        iters, step_tol = (adaptive.max_iters_per_step, adaptive.tol) if adaptive else (plan.iters[step_index], tol)
        out = model(x, t, y, iters=iters, solver=solver, tol=step_tol, warm_start=warm, trace=trace)
        stats.add(step_index, trace.solve, x.shape[0])
        if img_iters is not None:  # guided sampling runs both halves: each image is charged for both
            img_iters.add_(trace.solve.nfe_per_sample.view(-1, img_iters.shape[0]).sum(0))
        return out

    return model_fn


def _solver_of(model: nn.Module, cfg) -> tuple[bool, object | None, float]:
    """(implicit, solver bound with its knobs, tolerance); refuses reuse for a model without it."""
    from fpdm.solvers import make_solver

    if cfg.sample.reuse and not getattr(model, "supports_solution_reuse", False):
        raise ValueError(
            f"sample.reuse=true needs a model that supports solution reuse; model={cfg.model.name} does not"
        )
    if not getattr(model, "is_implicit", False):
        return False, None, 0.0
    knobs = {k: v for k, v in dict(cfg.solver).items() if k not in ("name", "tol")}
    return True, make_solver(cfg.solver.name, **knobs), float(cfg.solver.tol)


def _progress_bar(total: int, desc: str, show: bool):
    if not show:
        return None
    return progress_bar(total=total, desc=desc, unit="img")


def _write_shard(
    shard: Path,
    images: np.ndarray,
    labels: torch.Tensor,
    timesteps: list[int],
    stats: _StepStats,
    img_iters: torch.Tensor,
    rank: int = 0,
) -> None:
    """One shard's images, labels, timesteps, evaluations per image and per-step solver statistics,
    and the rank that sampled it (which process of a data-parallel job drew these images), written
    atomically."""
    arrays = stats.arrays()
    np_stats = {f"stat_{k}": arrays[k] for k in _StepStats.FIELDS}
    atomic_write(
        shard,
        lambda fh: np.savez(
            fh,
            images=images,
            labels=labels.numpy(),
            timesteps=np.asarray(timesteps),
            iters_per_image=img_iters.cpu().numpy(),
            diverged=arrays["diverged"],
            rank=np.asarray(rank),
            **np_stats,
        ),
    )


def _finish(model, data, cfg, plan, work_dir: Path, ranges, implicit: bool, wall: float, sampled: int) -> dict:
    """Merge the shards into ``samples.npz`` and ``grid.png`` and summarise the stage."""
    # np.load of an .npz reads a member only when it is indexed: the images are read one shard at
    # a time while samples.npz is written, so the merge never holds all of them (FID-50K at 256px)
    shards = [np.load(work_dir / "shards" / f"{SHARD_PREFIX}{s:07d}-{e:07d}.npz") for s, e in ranges]
    labels = np.concatenate([s["labels"] for s in shards])
    timesteps = shards[0]["timesteps"].tolist() if len(shards) else []
    steps = _StepStats(plan.steps)
    for s in shards:
        for k in _StepStats.FIELDS:
            field = getattr(steps, k)
            field += torch.from_numpy(s[f"stat_{k}"]) if torch.is_tensor(field) else s[f"stat_{k}"]
        steps.diverged += int(s["diverged"])
    image_shape = (len(labels), data.channels, data.image_size, data.image_size)
    write_npz_chunked(
        work_dir / "samples.npz",
        {"images": (image_shape, np.uint8, (s["images"] for s in shards))},
        small={"labels": labels},
    )
    head = []
    for s in shards:  # the first 64 images for the grid
        if sum(map(len, head)) >= 64:
            break
        head.append(s["images"])
    save_grid(np.concatenate(head)[:64] if head else np.zeros((0, *image_shape[1:]), np.uint8), work_dir / "grid.png")
    from harness.compute.adaptive import guidance_forwards, passes_summary

    guidance = guidance_forwards(cfg.sample.cfg_scale)
    summary = _cost_summary(model, data.image_size, plan, steps, implicit, guidance=guidance)
    iters_spent = summary.pop("_iters_spent")
    summary.update(
        {
            "num_images": int(len(labels)),
            "steps": plan.steps,
            "plan_iters": list(plan.iters),
            "time_per_image_s": wall / sampled if sampled else math.nan,
            "solver_diverged_samples": int(steps.diverged),
        }
    )
    if implicit:
        summary["solver_trace"] = steps.to_dict(timesteps)
        summary["solver_iters_mean"] = float(np.mean(iters_spent)) if iters_spent else math.nan
        summary["solver_nfe_per_image"] = float(np.sum(iters_spent))
        summary["solver_final_residual"] = float(np.mean(summary["solver_trace"]["residual"]))
        if all("iters_per_image" in s.files for s in shards):  # shards of older runs lack it
            per_image = np.concatenate([s["iters_per_image"] for s in shards])
            # against the plan's budget counted as spent: both forwards of guidance (120 at budget 60)
            explicit = plan.steps * model.num_explicit_blocks * guidance
            spent = passes_summary(per_image, explicit, budget_passes=plan.block_passes * guidance)
            summary["solver_trace"]["passes_per_image"] = spent.pop("_passes_histogram", None)
            summary.update(spent)
    return summary


def _cost_summary(model, image_size: int, plan, steps: _StepStats, implicit: bool, guidance: int) -> dict:
    """Block passes and FLOPs per image, planned and spent, from ``harness.compute.flops`` (the path the
    plan is matched with). Spent = planned unless a solver tolerance stopped early; with
    classifier-free guidance every forward runs twice (``guidance``)."""
    breakdown = flop_breakdown(model, image_size)
    planned_flops = sampling_flops(breakdown, list(plan.iters) if implicit else None, plan.steps)
    if plan.flops_per_image is not None and plan.flops_per_image != planned_flops:
        raise RuntimeError(
            f"the plan was matched on {plan.flops_per_image} FLOPs per image but the model "
            f"counts {planned_flops}: the plan and the model disagree"
        )
    iters_spent, passes, flops = None, plan.block_passes, planned_flops
    if implicit:
        c = np.maximum(steps.count, 1)
        iters_spent = (steps.arrays()["nfe"] / c).tolist()
        if iters_spent != [float(k) for k in plan.iters]:  # early stopping: count what ran
            passes = plan.steps * model.num_explicit_blocks + sum(iters_spent)
            flops = breakdown.explicit_per_forward * plan.steps + breakdown.per_iteration * sum(iters_spent)
    return {
        "_iters_spent": iters_spent,
        "guidance_forwards": guidance,
        "block_passes_planned": plan.block_passes,
        "block_passes_per_image": passes * guidance,
        "flops_planned": planned_flops,
        "flops_per_image": flops * guidance,
        # sample.match=flops: what DiT spends on the same budget, the other side of the match (else null)
        "flops_match_target": None if plan.flops_target is None else plan.flops_target * guidance,
        "flops_per_forward": breakdown.per_forward,
        "flops_block": breakdown.block,
        "flops_injection_per_iter": breakdown.injection_per_iteration,
        "flops_per_iteration": breakdown.per_iteration,
        "flops_explicit_per_forward": breakdown.explicit_per_forward,
        "injection_to_block": breakdown.injection_to_block,
    }


def save_grid(images: np.ndarray, path: Path, scale: int = 4) -> None:
    """uint8 (N, C, H, W) -> a PNG grid, upscaled (nearest) so 8x8 digits stay visible."""
    from PIL import Image

    if len(images) == 0:
        return
    n, c, h, w = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = images[k].transpose(
            1, 2, 0
        )
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(path, lambda fh: img.save(fh, format="PNG"))

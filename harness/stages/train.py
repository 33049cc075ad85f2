"""The training stage: one model trained under a compute budget, resumable and data parallel.

Everything random in a step (data order, timesteps, noise, label dropout, S-JFB draws) comes
from generators seeded by ``(train.seed, step)`` and drawn over the *global* batch, so:
- a run killed with ``kill -9`` and resumed from its newest checkpoint ends with exactly the same
  weights as an uninterrupted run (CPU), since the checkpoint restores model, EMA, optimiser and
  step, and the step fixes every draw;
- N data-parallel ranks each take a contiguous slice of the same global batch and average their
  gradients, which reproduces one process at the same global batch within float tolerance.
Compute is counted as it is spent: block passes per image per step are ``depth`` for DiT and
``n_pre + (iterations drawn) + n_post`` for FPDM (S-JFB draws a random number each step), and
forward-equivalents and FLOPs (backward and recompute included, harness/compute/train_compute.py)
from the counts the training mode reports after backward.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fpdm.model import SolveTrace
from harness.compute.flops import flop_breakdown
from harness.compute.memory import cuda_peak, training_memory_breakdown
from harness.compute.train_compute import (
    BUDGET_UNITS,
    model_step_compute,
    model_step_flops,
    require_priced_recompute,
    step_generator,
)
from harness.runtime.compile import set_compiled
from harness.runtime.distributed import DistInfo, all_reduce_values, barrier, broadcast_module_, data_parallel
from harness.runtime.io import atomic_write, atomic_write_json
from harness.runtime.matmul_precision import stage_tf32, tf32_matmuls
from harness.runtime.progress import progress_bar
from harness.stages.checkpoint import latest_checkpoint, load_checkpoint, restore_rng_states, save_checkpoint
from harness.stages.signals import Interrupted, Preempted, _SignalCheckpoint  # noqa: F401  (raised from here)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from harness.data import DataSource
    from harness.diffusion.spec import DiffusionSpec


class TrainingDiverged(RuntimeError):
    pass


def global_batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch of ``step`` in an endless stream of seeded epoch permutations,
    so the data position is a function of the step alone."""
    start = step * batch_size
    out, pos = [], start
    while pos < start + batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, 7))
        take = min(n - offset, start + batch_size - pos)
        out.append(perm[offset : offset + take])
        pos += take
    return torch.cat(out)


@dataclass
class TrainState:
    step: int = 0
    block_passes: int = 0  # forward block passes per image, summed over steps
    compute: int = 0  # forward-equivalents per image (backward 2, recompute 1, VJP 2), summed over steps
    flops: float = 0  # training FLOPs per image (the same weights on measured FLOPs), summed over steps
    images: int = 0
    elapsed_s: float = 0.0
    losses: list = field(default_factory=list)


def _load_dataset_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor([int(y) for y in ys])


def ema_decay_at(decay: float, step: int, warmup: bool = True) -> float:
    """EMA decay at ``step`` (0-based).

    With ``warmup`` (the default): ``min(decay, (1 + step) / (10 + step))`` (diffusers'
    ``EMAModel``): early weights, far from the trained model, fade out quickly, so short runs
    (the embedded default trains for ~1k steps) sample from a trained EMA and not from the init.
    Without (``train.ema_warmup=false``, the official FPDM/DiT code): the EMA starts as a copy of
    the initial weights and every step uses the plain ``decay``, so after n steps it still holds
    ``decay**n`` of the initialisation (0.999**4000 = 1.8%)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def make_optimizer(model: nn.Module, tc: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (CPU and CUDA): one kernel over all parameters instead of a
    dozen small ops per parameter, which the profile at the digits shape showed as about a fifth
    of a training step. Numerically it is the same update up to float rounding."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        model.parameters(),
        lr=tc.lr,
        betas=tuple(tc.betas),
        weight_decay=tc.weight_decay,
        **({"fused": True} if fused else {"foreach": True}),
    )


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        e = [p for p in ema.parameters()]
        m = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(e, m, 1.0 - decay)


def _budget_reached(budget, state: TrainState) -> bool:
    spent = {
        "steps": state.step,
        "seconds": state.elapsed_s,
        "block_passes": state.block_passes,
        "compute": state.compute,
        "flops": state.flops,
    }[budget.unit]
    return spent >= budget.value


def train_model(
    model: nn.Module,
    data: DataSource,
    spec: DiffusionSpec,
    cfg: DictConfig,
    work_dir: Path,
    device: torch.device,
    info: DistInfo = DistInfo(),
    progress: bool = True,
) -> dict:
    """Train ``model`` on ``data.train`` until ``cfg.train.budget`` is spent; write checkpoints to
    ``work_dir`` and, at the end, ``ema.safetensors``, ``model.safetensors`` and ``train_summary.json``.
    Returns the summary. fp32 CUDA products run in TF32 when ``train.tf32`` (as the official training)."""
    _check_train_config(cfg.train, info)
    with tf32_matmuls(stage_tf32(cfg.train, "train"), device) as tf32:
        return _train(model, data, spec, cfg, work_dir, device, info, progress, tf32)


def _train(model, data, spec, cfg, work_dir, device, info: DistInfo, progress: bool, tf32: bool) -> dict:
    tc = cfg.train
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    X, Y = _load_dataset_tensors(data.train)
    flops = flop_breakdown(model, data.image_size)  # measured once, on meta copies, before any compile
    if tc.budget.unit == "flops":  # a budget never reached must fail now (the config check says so first)
        require_priced_recompute(flops, bool(model.grad_checkpointing))
    run = _prepare(model, tc, work_dir, device, info)
    log = _TrainLog(work_dir / "train_log.jsonl", cfg, run.state, f"train {cfg.model.name}", progress, info)
    peaks: dict = {}
    with log, _SignalCheckpoint() as signals, cuda_peak(device, peaks, "train_cuda_peak_bytes"):
        while not _budget_reached(tc.budget, run.state):
            t0 = time.perf_counter()
            local_values, trace = _train_step(run, _step_batch(X, Y, spec, cfg, run.state.step, info, device), spec)
            _account(run.state, run.model, trace, flops, tc.batch_size, time.perf_counter() - t0)
            # the logged loss is the global-batch mean (each rank holds the mean of its equal slice)
            log.step(run, all_reduce_values(local_values, info), trace)
            signum = signals.poll(info)
            if signum is not None:
                run.save()
                signals.release(signum, info, step=run.state.step)
            if run.state.step % tc.ckpt_every == 0:
                run.save()
    run.save()
    summary = {**_summary(run.state, tc, info), **peaks, "train_tf32_matmul": tf32}
    set_compiled(run.model, False, "train.compile")  # saved-tensor hooks measure the eager graph
    local = tc.batch_size // info.world_size
    last_draws = step_generator(tc.seed, max(run.state.step - 1, 0), 2)
    summary.update(_memory_breakdown(run.model, spec, X[:local].to(device), Y[:local].to(device), last_draws))
    if info.is_main:
        _export(work_dir, run, summary)
    barrier(info)
    return summary


def _check_train_config(tc, info: DistInfo) -> None:
    if tc.budget.unit not in BUDGET_UNITS:
        raise ValueError(f"train.budget.unit={tc.budget.unit!r} is not one of {list(BUDGET_UNITS)}")
    if tc.batch_size % info.world_size:
        raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the {info.world_size} ranks")


@dataclass
class _Run:
    """What the training loop carries: the model, its EMA, the optimiser and the counters."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    state: TrainState
    tc: Any
    work_dir: Path
    info: DistInfo
    # what the step calls: ``model`` in DistributedDataParallel on several ranks, else ``model``
    # itself; checkpoints, the EMA and the exports read ``model``, so state-dict keys stay un-prefixed
    forward: nn.Module | None = None
    grad_norm: torch.Tensor | None = None  # the last step's gradient norm before clipping (train.grad_clip)

    def save(self) -> None:
        """Checkpoint on rank 0; every rank waits for it."""
        if self.info.is_main:
            save_checkpoint(
                self.work_dir,
                self.state.step,
                {
                    "model": self.model.state_dict(),
                    "ema": self.ema.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "state": {**self.state.__dict__, "losses": list(self.state.losses[-100:])},
                },
            )
        barrier(self.info)


def _prepare(model: nn.Module, tc, work_dir: Path, device: torch.device, info: DistInfo) -> _Run:
    """Model, EMA and optimiser on ``device``, resumed from the newest checkpoint when ``train.resume``,
    and every rank on rank 0's weights."""
    model = model.to(device).train()
    set_compiled(model, False, "train.compile")  # eager copy for the EMA (compiled wrappers do not deepcopy)
    ema = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    set_compiled(model, bool(getattr(tc, "compile", False)), "train.compile", device)
    run = _Run(model, ema, make_optimizer(model, tc, device), TrainState(), tc, work_dir, info)
    ckpt = latest_checkpoint(work_dir) if tc.resume else None
    if ckpt is not None:
        blob = load_checkpoint(ckpt, map_location=device)
        model.load_state_dict(blob["model"])
        ema.load_state_dict(blob["ema"])
        run.opt.load_state_dict(blob["optimizer"])
        restore_rng_states(blob["rng"])
        # a checkpoint written before the FLOP counter existed: its FLOPs so far are unknown (NaN), not 0
        run.state = TrainState(**{"flops": math.nan, **blob["state"]})
    broadcast_module_(ema, info)  # every rank starts from rank 0's weights (DDP's constructor: the model's)
    run.forward = data_parallel(model, info)
    return run


@dataclass
class _Batch:
    """This rank's slice of the global batch of one step, and the generator of the model's own draws."""

    x0: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    drop: torch.Tensor
    draws: torch.Generator  # S-JFB's n and m (stream 2 of the step)


def _step_batch(X, Y, spec, cfg, step: int, info: DistInfo, device: torch.device) -> _Batch:
    """Every random draw of ``step``, over the global batch (a function of the step alone)."""
    tc = cfg.train
    idx = global_batch_indices(len(X), tc.batch_size, step, tc.seed)
    g = step_generator(tc.seed, step, 1)
    t = torch.randint(0, spec.num_train_timesteps, (tc.batch_size,), generator=g)
    noise = torch.randn((tc.batch_size, *X.shape[1:]), generator=g)
    drop = torch.rand(tc.batch_size, generator=g) < cfg.model.class_dropout
    draws = step_generator(tc.seed, step, 2)
    local = tc.batch_size // info.world_size
    lo, hi = info.rank * local, (info.rank + 1) * local
    return _Batch(
        X[idx][lo:hi].to(device),
        Y[idx][lo:hi].to(device),
        t[lo:hi].to(device),
        noise[lo:hi].to(device),
        drop[lo:hi].to(device),
        draws,
    )


def _train_step(run: _Run, b: _Batch, spec) -> tuple[list[float], SolveTrace]:
    """Forward, backward (DDP averages the gradients over the ranks as backward produces them),
    clip, AdamW and EMA; returns this rank's (loss, mse, vb) and the trace the forward filled
    (counts completed by backward)."""
    from harness.diffusion import training_loss

    model, tc = run.model, run.tc
    net = run.forward if run.forward is not None else model
    trace = SolveTrace()
    autocast = torch.autocast(b.x0.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    with autocast:
        loss, parts = training_loss(
            lambda a, t, y: net(a, t, y, drop_labels=b.drop, generator=b.draws, trace=trace),
            b.x0,
            b.y,
            spec,
            t=b.t,
            noise=b.noise,
        )
    # one host read per step for the divergence check and the log (not one per value)
    local_values = torch.stack([loss.detach(), parts["mse"], parts["vb"]]).float().tolist()
    if not math.isfinite(local_values[0]):
        raise TrainingDiverged(
            f"training loss became {local_values[0]} at step {run.state.step}; lower train.lr or enable train.grad_clip"
        )
    run.opt.zero_grad(set_to_none=True)
    loss.backward()  # on several ranks, returns once DDP's bucket all-reduces have finished
    run.grad_norm = None  # without clipping, the log measures the norm on the steps it writes
    if tc.grad_clip:
        run.grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    run.opt.step()
    _ema_update(run.ema, model, ema_decay_at(tc.ema_decay, run.state.step, tc.ema_warmup))
    return local_values, trace


def _account(state: TrainState, model: nn.Module, trace: SolveTrace, flops, batch_size: int, seconds: float) -> None:
    """Count the step as spent: block passes, forward-equivalents and FLOPs per image from its trace."""
    state.step += 1
    state.block_passes += trace.block_passes
    state.compute += model_step_compute(model, trace)
    state.flops += model_step_flops(model, trace, flops)
    state.images += batch_size
    state.elapsed_s += seconds


class _TrainLog:
    """The progress bar, ``train_log.jsonl`` and the experiment tracker (``logger=...``,
    harness/runtime/tracking.py), all on rank 0: one line and one point per curve every
    ``train.log_every`` steps and at the last. A line holds the step's global-batch loss, the
    learning rate, the gradient norm (before clipping), the images per second of the window since
    the previous line, the compute spent so far and, for FPDM, the step's fixed point iterations."""

    def __init__(self, path: Path, cfg, state: TrainState, desc: str, progress: bool, info: DistInfo):
        from harness.runtime.tracking import open_tracker

        self.path, self.tc = path, cfg.train
        self.bar = None
        if progress and info.is_main:
            total = self.tc.budget.value if self.tc.budget.unit == "steps" else None
            self.bar = progress_bar(total=total, initial=state.step if total else 0, desc=desc, unit="step")
        self.window_t, self.window_images = time.perf_counter(), 0
        # a resumed training drops what an earlier attempt logged past its checkpoint
        self.tracker = open_tracker(cfg, info.is_main, resumed_from=state.step)
        self.is_main = info.is_main

    def __enter__(self) -> _TrainLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def step(self, run: _Run, values: list[float], trace: SolveTrace) -> None:
        state = run.state
        state.losses.append(values[0])
        del state.losses[:-100]  # only the recent losses are read (summary, checkpoint)
        self.window_images += self.tc.batch_size
        if self.bar is not None:
            self.bar.update(1 if self.bar.total else 0)
            self.bar.set_postfix(
                loss=f"{values[0]:.4f}",
                img_s=f"{state.images / max(state.elapsed_s, 1e-9):.0f}",
                passes=state.block_passes,
                refresh=False,
            )
        if self.is_main and (state.step % self.tc.log_every == 0 or _budget_reached(self.tc.budget, state)):
            line = self._line(run, values, trace)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            self.tracker.log_scalars(state.step, {f"train/{k}": v for k, v in line.items() if k != "step"})

    def _line(self, run: _Run, values: list[float], trace: SolveTrace) -> dict:
        now, state = time.perf_counter(), run.state
        loss_value, mse_value, vb_value = values
        line = {
            "step": state.step,
            "loss": loss_value,
            "mse": mse_value,
            "vb": vb_value,
            "lr": float(run.opt.param_groups[0]["lr"]),
            "grad_norm": _grad_norm(run),
            "images_per_s": self.window_images / max(now - self.window_t, 1e-9),
            "block_passes": state.block_passes,
            "compute_fwd_equiv": state.compute,
            "flops_per_image": state.flops,
            "elapsed_s": state.elapsed_s,
        }
        counts = getattr(trace, "counts", None)
        if counts is not None:  # FPDM: the fixed point layer's evaluations in this step
            line.update(fp_iters_no_grad=counts.no_grad, fp_iters_with_grad=counts.with_grad, fp_vjps=counts.vjp)
        self.window_t, self.window_images = now, 0
        return line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.tracker.close()


def _grad_norm(run: _Run) -> float:
    """The L2 norm of the step's gradient (the one clipping measured, else read from the gradients,
    which the optimiser step leaves in place; DDP's are averaged over ranks, so rank 0's are the
    global gradient)."""
    if run.grad_norm is not None:
        return float(run.grad_norm)
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _summary(state: TrainState, tc, info: DistInfo) -> dict:
    return {
        "train_steps": state.step,
        "train_block_passes_per_image": state.block_passes,
        "train_compute_fwd_equiv": state.compute,
        "train_flops_per_image": state.flops,  # forward + backward (+ recompute, VJPs), summed over steps
        "train_flops": state.flops * tc.batch_size,  # the whole run: every image of every (global) batch
        "train_images": state.images,
        "train_time_s": state.elapsed_s,
        "train_images_per_s": state.images / state.elapsed_s if state.elapsed_s else math.nan,
        "train_final_loss": float(sum(state.losses[-20:]) / max(len(state.losses[-20:]), 1)),
        "train_budget_unit": tc.budget.unit,
        "train_budget_value": tc.budget.value,
        "train_world_size": info.world_size,
    }


def _export(work_dir: Path, run: _Run, summary: dict) -> None:
    """``ema.safetensors``, ``model.safetensors`` and ``train_summary.json``, each written atomically."""
    for name, module in (("ema", run.ema), ("model", run.model)):
        tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        atomic_write(work_dir / f"{name}.safetensors", lambda fh, tensors=tensors: fh.write(_st_bytes(tensors)))
    atomic_write_json(work_dir / "train_summary.json", summary)


def _st_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _memory_breakdown(model: nn.Module, spec, x0: torch.Tensor, y: torch.Tensor, draws: torch.Generator) -> dict:
    """Bytes of one training step of this model at the local batch: saved activations measured,
    parameters / gradients / AdamW state / EMA counted. ``draws`` makes the model's own draws (the
    last step's, so FPDM keeps the with-grad iterations it last trained with); no label is dropped."""
    from harness.diffusion import training_loss

    g = torch.Generator().manual_seed(0)
    model.train()
    keep = torch.zeros(len(y), dtype=torch.bool, device=y.device)

    def model_fn(a, b, c):
        return model(a, b, c, drop_labels=keep, generator=draws)

    def forward_loss():
        return training_loss(model_fn, x0, y, spec, generator=g if x0.device.type == "cpu" else None)[0]

    out = training_memory_breakdown(model, forward_loss)
    model.zero_grad(set_to_none=True)
    return {f"train_{k}": v for k, v in out.items()}

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
forward-equivalents (backward and recompute included, harness/train_compute.py) from the counts
the training mode reports after backward.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.runtime.compile import set_compiled
from harness.stages.checkpoint import latest_checkpoint, load_checkpoint, restore_rng_states, save_checkpoint
from harness.runtime.distributed import DistInfo, all_reduce_mean_, all_reduce_values, barrier, broadcast_module_
from harness.runtime.io import atomic_write, atomic_write_json
from harness.compute.memory import cuda_peak, training_memory_breakdown
from harness.compute.train_compute import BUDGET_UNITS, model_step_compute
from fpdm.model import SolveTrace


class TrainingDiverged(RuntimeError):
    pass


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator fixed by (seed, step, stream): the same draws before and after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 97 + stream) % (2**63 - 1))


def global_batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch of ``step`` in an endless stream of seeded epoch permutations,
    so the data position is a function of the step alone."""
    start = step * batch_size
    out, pos = [], start
    while pos < start + batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, 7))
        take = min(n - offset, start + batch_size - pos)
        out.append(perm[offset:offset + take])
        pos += take
    return torch.cat(out)


@dataclass
class TrainState:
    step: int = 0
    block_passes: int = 0  # forward block passes per image, summed over steps
    compute: int = 0  # forward-equivalents per image (backward 2, recompute 1, VJP 2), summed over steps
    images: int = 0
    elapsed_s: float = 0.0
    losses: list = field(default_factory=list)


class Preempted(SystemExit):
    """Raised after the pre-emption checkpoint when the process must end and a requeued run will
    continue (submitit has requeued the job). Exit code None: nothing failed, so ``harness.run``
    re-raises it instead of writing a ``failed`` record, and submitit writes no result for this run."""

    def __init__(self, message: str):
        super().__init__(None)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Interrupted(SystemExit):
    """SIGINT / SIGTERM on a local run or sweep (no submitit handler to requeue): raised after the
    checkpoint to stop the whole process with 128 + signal. ``harness.run`` writes no record for it,
    so rerunning the same command resumes the job from its checkpoint."""

    def __init__(self, signum: int, step: int | None = None):
        super().__init__(128 + signum)
        where = f"checkpointed at step {step}" if step is not None else "checkpointed"
        self.message = f"{signal.Signals(signum).name}: {where}; rerun the same command to resume"

    def __str__(self) -> str:
        return self.message


def _preempt_signals() -> tuple[str, ...]:
    # submitit's requeue handler listens to SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another;
    # Slurm sends it signal_delay_s before the time limit and on pre-emption. SIGINT (Ctrl-C) and
    # SIGTERM (kill) of a local run checkpoint too, then stop the process (``Interrupted``).
    usr = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return tuple(dict.fromkeys(("SIGUSR1", usr, "SIGTERM", "SIGINT")))


class _SignalCheckpoint:
    """Turns SIGUSR1 / SIGUSR2 / SIGTERM (sent by Slurm and submitit before a time limit or
    pre-emption) into 'checkpoint at the next step boundary', then hands the signal to whoever
    handled it before (submitit's requeue) or, failing that, exits with the signal's usual code.
    With several ranks the pending signal is agreed on every step, so all ranks checkpoint at the
    same step and leave together (a rank left behind would hang in the next collective)."""

    def __init__(self):
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in _preempt_signals():
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.pending = signum

    def poll(self, info: DistInfo) -> int | None:
        """The signal pending on any rank (the same answer on every rank), or None."""
        if not info.enabled:
            return self.pending
        signum = int(all_reduce_values([float(self.pending or 0)], info, op="max")[0])
        return signum or None

    def release(self, signum: int, info: DistInfo = DistInfo(), step: int | None = None) -> None:
        """Called after the checkpoint: deliver the signal to the previous handler. If that ends the
        process (or there is none) every rank ends; if it returns (submitit's SIGTERM bypass, or a
        non-zero rank) training goes on with these handlers re-armed."""
        self.pending = None
        self.__exit__()
        prev = self.previous.get(signum)
        ending: BaseException | None = None
        if signum in (signal.SIGINT, signal.SIGTERM) and prev in (None, signal.SIG_DFL, signal.SIG_IGN,
                                                                 signal.default_int_handler):
            ending = Interrupted(signum, step)  # local: nobody requeues, stop the whole process
        elif callable(prev):
            try:
                prev(signum, None)
            except SystemExit:  # submitit requeued the job and exits: a requeued run resumes
                ending = Preempted(f"{signal.Signals(signum).name}: checkpointed at the step boundary, job requeued")
            except BaseException as exc:  # e.g. submitit's 'not requeued because timed-out too many times'
                ending = exc
        else:
            ending = SystemExit(128 + signum)
        if all_reduce_values([float(ending is not None)], info, op="max")[0]:
            raise ending or Preempted(f"{signal.Signals(signum).name}: rank 0 ended the job after its checkpoint")
        self.__enter__()

    def __exit__(self, *exc):
        for sig, prev in self.previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


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


def make_optimizer(model: nn.Module, tc, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (CPU and CUDA): one kernel over all parameters instead of a
    dozen small ops per parameter, which the profile at the digits shape showed as about a fifth
    of a training step. Numerically it is the same update up to float rounding."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay,
                             **({"fused": True} if fused else {"foreach": True}))


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        e = [p for p in ema.parameters()]
        m = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(e, m, 1.0 - decay)


def _budget_reached(budget, state: TrainState) -> bool:
    spent = {"steps": state.step, "seconds": state.elapsed_s, "block_passes": state.block_passes,
             "compute": state.compute}[budget.unit]
    return spent >= budget.value


def train_model(model: nn.Module, data, spec, cfg, work_dir: Path, device: torch.device,
                info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Train ``model`` on ``data.train`` until ``cfg.train.budget`` is spent; write checkpoints to
    ``work_dir`` and, at the end, ``ema.safetensors``, ``model.safetensors`` and ``train_summary.json``.
    Returns the summary."""
    from harness.diffusion import training_loss

    tc = cfg.train
    if tc.budget.unit not in BUDGET_UNITS:
        raise ValueError(f"train.budget.unit={tc.budget.unit!r} is not one of {list(BUDGET_UNITS)}")
    if tc.batch_size % info.world_size:
        raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the {info.world_size} ranks")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    X, Y = _load_dataset_tensors(data.train)
    n = len(X)
    model = model.to(device).train()
    set_compiled(model, False, "train.compile")  # eager copy for the EMA (compiled wrappers do not deepcopy)
    ema = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    set_compiled(model, bool(getattr(tc, "compile", False)), "train.compile", device)
    opt = make_optimizer(model, tc, device)
    state = TrainState()

    ckpt = latest_checkpoint(work_dir) if tc.resume else None
    if ckpt is not None:
        blob = load_checkpoint(ckpt, map_location=device)
        model.load_state_dict(blob["model"])
        ema.load_state_dict(blob["ema"])
        opt.load_state_dict(blob["optimizer"])
        restore_rng_states(blob["rng"])
        state = TrainState(**blob["state"])
    for module in (model, ema):  # every rank starts from rank 0's weights
        broadcast_module_(module, info)

    def save(step_state: TrainState) -> None:
        if info.is_main:
            save_checkpoint(work_dir, step_state.step, {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "state": {**step_state.__dict__, "losses": list(step_state.losses[-100:])},
            })
        barrier(info)

    local = tc.batch_size // info.world_size
    lo, hi = info.rank * local, (info.rank + 1) * local
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    log_path = work_dir / "train_log.jsonl"
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        total = tc.budget.value if tc.budget.unit == "steps" else None
        bar = tqdm(total=total, initial=state.step if total else 0, desc=f"train {cfg.model.name}", unit="step")
    peaks: dict = {}
    window_t, window_images = time.perf_counter(), 0
    with _SignalCheckpoint() as signals, cuda_peak(device, peaks, "train_cuda_peak_bytes"):
        while not _budget_reached(tc.budget, state):
            t0 = time.perf_counter()
            idx = global_batch_indices(n, tc.batch_size, state.step, tc.seed)
            g = step_generator(tc.seed, state.step, 1)
            t = torch.randint(0, spec.num_train_timesteps, (tc.batch_size,), generator=g)
            noise = torch.randn((tc.batch_size, *X.shape[1:]), generator=g)
            drop = torch.rand(tc.batch_size, generator=g) < cfg.model.class_dropout
            draws = step_generator(tc.seed, state.step, 2)  # the model's own draws (S-JFB's n and m)
            trace = SolveTrace()
            x0, y = X[idx][lo:hi].to(device), Y[idx][lo:hi].to(device)
            t, noise, drop = t[lo:hi].to(device), noise[lo:hi].to(device), drop[lo:hi].to(device)

            with autocast:
                loss, parts = training_loss(lambda a, b, c: model(a, b, c, drop_labels=drop, generator=draws, trace=trace),
                                            x0, y, spec, t=t, noise=noise)
            # one host read per step for the divergence check and the log (not one per value)
            local_values = torch.stack([loss.detach(), parts["mse"], parts["vb"]]).float().tolist()
            if not math.isfinite(local_values[0]):
                raise TrainingDiverged(
                    f"training loss became {local_values[0]} at step {state.step}; lower train.lr or enable "
                    "train.grad_clip"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            all_reduce_mean_(grads, info)
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            _ema_update(ema, model, ema_decay_at(tc.ema_decay, state.step, tc.ema_warmup))

            state.step += 1
            state.block_passes += trace.block_passes
            state.compute += model_step_compute(model, trace)
            state.images += tc.batch_size
            state.elapsed_s += time.perf_counter() - t0
            # the logged loss is the global-batch mean (each rank holds the mean of its equal slice)
            loss_value, mse_value, vb_value = all_reduce_values(local_values, info)
            state.losses.append(loss_value)
            del state.losses[:-100]  # only the recent losses are read (summary, checkpoint)
            window_images += tc.batch_size
            if bar is not None:
                bar.update(1 if bar.total else 0)
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{state.images / max(state.elapsed_s, 1e-9):.0f}",
                                passes=state.block_passes, refresh=False)
            if info.is_main and (state.step % tc.log_every == 0 or _budget_reached(tc.budget, state)):
                now = time.perf_counter()
                line = {"step": state.step, "loss": loss_value, "mse": mse_value, "vb": vb_value,
                        "images_per_s": window_images / max(now - window_t, 1e-9),
                        "block_passes": state.block_passes, "compute_fwd_equiv": state.compute,
                        "elapsed_s": state.elapsed_s}
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
                window_t, window_images = now, 0
            signum = signals.poll(info)
            if signum is not None:
                save(state)
                signals.release(signum, info, step=state.step)
            if state.step % tc.ckpt_every == 0:
                save(state)
    if bar is not None:
        bar.close()
    save(state)

    summary = {
        "train_steps": state.step, "train_block_passes_per_image": state.block_passes,
        "train_compute_fwd_equiv": state.compute,
        "train_images": state.images, "train_time_s": state.elapsed_s,
        "train_images_per_s": state.images / state.elapsed_s if state.elapsed_s else math.nan,
        "train_final_loss": float(sum(state.losses[-20:]) / max(len(state.losses[-20:]), 1)),
        "train_budget_unit": tc.budget.unit, "train_budget_value": tc.budget.value,
        "train_world_size": info.world_size, **peaks,
    }
    set_compiled(model, False, "train.compile")  # saved-tensor hooks measure the eager graph
    last_draws = step_generator(tc.seed, max(state.step - 1, 0), 2)
    summary.update(_memory_breakdown(model, spec, X[:local].to(device), Y[:local].to(device), last_draws))
    if info.is_main:
        for name, module in (("ema", ema), ("model", model)):
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            atomic_write(work_dir / f"{name}.safetensors", lambda fh, tensors=tensors: fh.write(_st_bytes(tensors)))
        atomic_write_json(work_dir / "train_summary.json", summary)
    barrier(info)
    return summary


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

"""Distributed data parallel set-up from torchrun's variables, submitit's JobEnvironment or the
variables of a Slurm ``srun`` step.

gloo on CPU, NCCL on CUDA. The global batch is split across ranks (each rank takes a contiguous
slice of the same globally drawn batch) and training wraps the model in PyTorch's
``DistributedDataParallel`` (``data_parallel``), so 2 processes compute the same losses as 1 process
at the same global batch, within float tolerance; rank 0 writes checkpoints, the others wait.
Several nodes: every rank derives the same rendezvous (``MASTER_ADDR`` = the first host of the
step, ``MASTER_PORT`` = ``master_port(job, step)``) from Slurm's variables (docs/cluster.md).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _from_submitit() -> DistInfo | None:
    """Ranks of a submitit job, or of a plain ``srun -n N python -m harness.run`` step."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    if executor is None and "SLURM_JOB_ID" not in os.environ:
        return None
    try:
        import submitit
        from submitit.slurm.slurm import SlurmJobEnvironment

        # submitit.JobEnvironment() picks its environment by SUBMITIT_EXECUTOR, which only
        # submitit's own sbatch script sets: under a plain srun it raised and each of the N tasks
        # ran the whole job as world size 1 (every image sampled N times, N racing records).
        # Slurm's variables are the same either way, so read them as submitit's Slurm plugin does.
        env = SlurmJobEnvironment() if executor in (None, "slurm") else submitit.JobEnvironment()
    except Exception:
        return None
    if env.num_tasks <= 1 or _alone_in_slurm_allocation():
        return None
    os.environ.setdefault("MASTER_ADDR", _first_host_of_step(env.hostnames))
    job = os.environ.get("SLURM_JOB_ID") or env.job_id.split("_")[0]
    os.environ.setdefault("MASTER_PORT", str(master_port(job, os.environ.get("SLURM_STEP_ID", "0"))))
    return DistInfo(env.global_rank, env.num_tasks, env.local_rank)


def _first_host_of_step(job_hosts: list[str]) -> str:
    """Where rank 0 of this step runs: the first node of the step (``SLURM_STEP_NODELIST``, set by
    ``srun``), else of the job. They differ for a step on part of an allocation (``srun -N1 -n2``
    twice in a 2-node ``salloc``): the job's first node would send the second step's ranks to a
    node where none of its tasks listens. Slurm places task 0 on the first node of the step."""
    step_nodes = os.environ.get("SLURM_STEP_NODELIST")
    if step_nodes:
        from submitit.slurm.slurm import _parse_node_list

        return _parse_node_list(step_nodes)[0]
    return job_hosts[0] if job_hosts else "127.0.0.1"


PORT_BASE, PORT_SPAN, STEPS_PER_JOB = 29500, 20000, 50


def master_port(job_id: str, step_id: str) -> int:
    """Rank 0's port for one ``srun`` step: a function of the job and the step, so the ranks of a
    step agree on it without talking. SLURM_JOB_ID is unique per array element (submitit's "A_i"
    shares A across the array) and a requeue keeps it; the step id separates multi-task steps that
    run at the same time in one allocation (``srun ... &`` twice), which used to take one port and
    fail with "address already in use". Each job gets a block of ``STEPS_PER_JOB`` ports, so the
    steps of jobs with ids close together do not collide either."""
    job = int(job_id) if job_id.isdigit() else 0
    step = int(step_id) if step_id.isdigit() else 0
    return PORT_BASE + (job * STEPS_PER_JOB + step % STEPS_PER_JOB) % PORT_SPAN


def _alone_in_slurm_allocation() -> bool:
    """True for a process of a Slurm job that is not a task of an ``srun`` step: the batch script
    itself or an ``salloc`` shell. Slurm gives it the allocation's ``SLURM_NTASKS`` (and
    ``SLURM_PROCID=0``), which submitit reports as the task count, yet no other rank will ever
    start: joining a process group of that size would wait forever. submitit's own tasks (and
    ``srun -n N python -m harness.run``) run inside a step, which sets ``SLURM_STEP_NUM_TASKS``."""
    if os.environ.get("SUBMITIT_EXECUTOR", "slurm") != "slurm" or "SLURM_JOB_ID" not in os.environ:
        return False  # submitit's local executor sets its own task variables
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) <= 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise the default process group when launched with several processes."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    else:
        info = _from_submitit() or DistInfo()
    if info.enabled:
        if device.type == "cuda" and device.index is None:
            # one GPU per local rank; "cuda" then means this rank's GPU everywhere in the job
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def _collective_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_values(values: list[float], info: DistInfo, op: str = "mean") -> list[float]:
    """Reduce a few Python scalars over the ranks (``mean``, ``sum`` or ``max``); identity on one rank."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    if op == "mean":
        t /= info.world_size
    return t.tolist()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, on every rank (e.g. 'this stage still has to run')."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=_collective_device(info))
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def raise_if_any_rank_failed(error: Exception | None, info: DistInfo) -> None:
    """A collective that every rank reaches, failed or not: when any rank failed, every rank raises
    one error naming each failed rank and its cause. (A failed rank that simply left would keep the
    others waiting in the next collective until the process group times out, and rank 0's record
    would then blame the time-out.) One process: ``error`` itself is raised."""
    if not info.enabled:
        if error is not None:
            raise error
        return
    mine = None if error is None else f"rank {info.rank}: {type(error).__name__}: {error}"
    messages: list[str | None] = [None] * info.world_size
    dist.all_gather_object(messages, mine)
    failed = [m for m in messages if m]
    if failed:
        raise RuntimeError(f"{len(failed)} of {info.world_size} ranks failed: " + "; ".join(failed)) from error


def data_parallel(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``model`` wrapped in PyTorch's ``DistributedDataParallel`` when there are several ranks, else
    ``model`` itself (one process pays nothing). DDP averages the gradients in buckets (25 MiB)
    whose all-reduce starts while backward is still computing the earlier layers' gradients, where
    an all-reduce of each gradient after backward waited for the whole backward and then sent one
    message per parameter (benchmarks/bench_ddp.py compares the two; docs/cluster.md).

    - ``find_unused_parameters=False``: every parameter gets a gradient in every training forward
      of the project's models, in every ``train.method`` (FPDM's no-grad iterations run under
      ``torch.no_grad()`` and reach no parameter that the with-grad ones do not reach too), and
      S-JFB's iteration counts come from the step's generator, the same on every rank
      (harness/stages/train.py), so each rank's backward reduces the same buckets.
    - ``broadcast_buffers=False``: the only buffers are fixed positional embeddings, equal on every
      rank; re-sending them before each forward would be a collective per step for nothing.
    - ``device_ids=None``: the model is already on this rank's device (DDP then moves no input,
      so the forward's ``trace`` and ``generator`` keyword arguments reach the model as passed).
    The constructor broadcasts rank 0's parameters and buffers, as ``broadcast_module_`` does."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # torch 2.14 renamed the switch (its old name warns); either way buffers still sync at construction
    params = inspect.signature(DistributedDataParallel).parameters
    no_resync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=None, find_unused_parameters=False, **no_resync)


def broadcast_module_(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DistributedDataParallel does at
    construction), so the ranks start from the same weights whatever their RNG history."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)

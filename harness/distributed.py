"""Distributed data parallel set-up from torchrun's variables or submitit's JobEnvironment.

gloo on CPU, NCCL on CUDA. The global batch is split across ranks (each rank takes a contiguous
slice of the same globally drawn batch), so 2 processes compute the same losses as 1 process at
the same global batch, within float tolerance; rank 0 writes checkpoints, the others wait.
"""
from __future__ import annotations

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
    if "SUBMITIT_EXECUTOR" not in os.environ and "SLURM_JOB_ID" not in os.environ:
        return None
    try:
        import submitit

        env = submitit.JobEnvironment()
    except Exception:
        return None
    if env.num_tasks <= 1:
        return None
    os.environ.setdefault("MASTER_ADDR", env.hostnames[0] if env.hostnames else "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + int(env.job_id.split("_")[0]) % 2000))
    return DistInfo(env.global_rank, env.num_tasks, env.local_rank)


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise the default process group when launched with several processes."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    else:
        info = _from_submitit() or DistInfo()
    if info.enabled:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    if not info.enabled:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(info.world_size)

"""What the data-parallel tests share (tests/test_ddp.py, tests/test_dp_sampling.py): each rank is
the test file run as a script (``python FILE RANK WORLD PORT DIR ...``), joining a CPU (gloo)
process group through torchrun's variables, on one thread, with the app's composed config."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(script: Path, world: int, out: Path, *args) -> list[subprocess.Popen]:
    """Start ``world`` ranks of ``script`` writing into ``out`` (stdout and stderr piped together),
    outside any Slurm or submitit environment this test itself may run in."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env["OMP_NUM_THREADS"] = "1"
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world), str(port), str(out), *map(str, args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]


def wait_ranks(procs: list[subprocess.Popen], timeout: float, hung: str) -> tuple[list[int], list[str]]:
    """Each rank's exit code and output; kills every rank and fails with ``hung`` past ``timeout``."""
    import pytest

    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(hung)
    return [p.returncode for p in procs], logs


@contextlib.contextmanager
def rank_config(rank: int, world: int, port: int, overrides: list[str]):
    """The app's config for ``overrides``, as rank ``rank`` of ``world`` (torchrun's variables when
    ``world > 1``), with torch on one thread inside the block."""
    import torch
    from hydra import compose, initialize_config_module

    import harness.config  # noqa: F401  (fills the ConfigStore)

    if world > 1:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    with initialize_config_module("harness.config", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield cfg
    finally:
        torch.set_num_threads(threads)


def write_rank_summary(out: Path, rank: int, summary: dict) -> None:
    (out / f"summary-rank{rank}.json").write_text(json.dumps(summary))

"""Peak resident memory and wall time of sample + evaluate at FID-5k and FID-50K on the embedded
default (digits, FPDM), each in a fresh process of the real job (`python -m harness.run`):
`python benchmarks/bench_fid50k.py [--sizes 5000,50000] [--shards N] [--steps 5] [--bootstrap 20]
[--threads 1] [--keep DIR]`.

A tiny model is trained first (a few steps: the point is memory and time, not quality), with the
extractors and reference statistics, in a temporary cache; every measured run then finds the trained
model in that cache and samples and scores its images from scratch. Peak RSS is each child's
`ru_maxrss` (`os.wait4`). `--shards N` runs the largest size again as N data-parallel ranks
(torchrun's variables; harness/stages/sample.py `rank_ranges`: each rank samples its own shards,
rank 0 merges and evaluates) and prints the peak of the largest process. Ratios: memory largest /
smallest, and time largest / smallest divided by the size ratio (1.0 = linear).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _overrides(root: Path, args, n: int, tag: str, seed: int = 0) -> list[str]:
    """The job's overrides; ``seed`` (sample.seed) gives the sharded run its own sample and evaluation
    cache keys, so it samples afresh instead of finding the one-process run's images."""
    return [
        f"sample.seed={seed}",
        "model=fpdm",
        "train.budget.value=20",
        "train.batch_size=32",
        f"sample.num_images={n}",
        f"sample.steps={args.steps}",
        f"metrics.bootstrap={args.bootstrap}",
        f"paths.cache_dir={root / 'cache'}",
        f"hydra.run.dir={root / 'runs' / tag}",
        "run.progress=false",
        f"run.threads={args.threads}",
        "run.device=cpu",
    ]


def _env(threads: int, rank: int | None = None, world: int = 1, port: int = 0) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(procs: list[tuple[list[str], dict]], log: Path) -> tuple[float, list[float]]:
    """Start the commands together; (wall seconds, peak RSS in MB of each)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        running = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT) for cmd, env in procs]
        peaks = []
        for p in running:
            _, status, usage = os.wait4(p.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"a run failed; see {log}")
            peaks.append(usage.ru_maxrss / 1024)  # KiB on Linux
    return time.perf_counter() - t0, peaks


def _case(root: Path, args, n: int, shards: int) -> tuple[float, float]:
    tag = f"n{n}-x{shards}"
    cmd = [sys.executable, "-m", "harness.run"]
    if shards == 1:
        procs = [(cmd + _overrides(root, args, n, tag), _env(args.threads))]
    else:
        port = _free_port()
        procs = [
            (cmd + _overrides(root, args, n, f"{tag}-r{r}", seed=1), _env(args.threads, r, shards, port))
            for r in range(shards)
        ]
    wall, peaks = _run(procs, root / f"{tag}.log")
    print(
        f"  {n:>7,} images, {shards} process(es): {wall:8.1f} s, peak RSS {max(peaks):7.0f} MB "
        f"(per process: {', '.join(f'{p:.0f}' for p in peaks)})",
        flush=True,
    )
    return wall, max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5000,50000", help="image counts, comma-separated")
    ap.add_argument("--shards", type=int, default=1, help="also run the largest size as this many ranks")
    ap.add_argument("--steps", type=int, default=5, help="sample.steps")
    ap.add_argument("--bootstrap", type=int, default=20, help="metrics.bootstrap")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--keep", default=None, help="work in this directory and keep it (default: a temporary one)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_fid50k_") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        print(f"warm-up (train, extractors, reference statistics) in {root}", flush=True)
        _run(
            [([sys.executable, "-m", "harness.run", *_overrides(root, args, 100, "warmup")], _env(args.threads))],
            root / "warmup.log",
        )
        rows = {n: _case(root, args, n, 1) for n in sizes}
        if args.shards > 1:
            rows[("shards", sizes[-1])] = _case(root, args, sizes[-1], args.shards)
        lo, hi = sizes[0], sizes[-1]
        (t0, m0), (t1, m1) = rows[lo], rows[hi]
        print(f"\nmemory {hi}/{lo}: {m1 / m0:.2f}x   time {hi}/{lo} / {hi // lo}: {t1 / t0 / (hi / lo):.2f}")
        if args.shards > 1:
            ts, ms = rows[("shards", hi)]
            print(f"{args.shards} ranks at {hi}: peak RSS per process {ms / m1:.2f}x one process, wall {ts / t1:.2f}x")


if __name__ == "__main__":
    main()

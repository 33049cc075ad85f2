"""Data-parallel training steps: PyTorch's ``DistributedDataParallel`` (what training uses,
harness/runtime/distributed.py ``data_parallel``) vs an all-reduce of each gradient after backward.

Two ranks on CPU (gloo, one thread each) train the app's default model (digits, tiny preset) with
the app's training loss at a global batch split over the ranks, as harness/stages/train.py does;
the two reductions alternate in rounds on the same weights, so both see the same machine load.
Prints, per model, the median time per step of each (the slower rank's) and DDP / manual.

    python benchmarks/bench_ddp.py [--models fpdm,dit] [--steps 10] [--rounds 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

MODES = ("manual", "ddp")


def _manual_reduce(model, world: int) -> None:
    """The reduction DDP replaced: one blocking all-reduce per gradient, after the whole backward."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _setup(name: str, rank: int, world: int, batch: int):
    import torch
    from hydra import compose, initialize_config_module

    import harness.config  # noqa: F401  (fills the ConfigStore)
    from harness.data import build_dataset
    from harness.stages.job import _build, diffusion_spec
    from harness.stages.train import make_optimizer

    with initialize_config_module("harness.config", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", f"train.batch_size={batch}", "run.device=cpu"])
    data = build_dataset(cfg.data)
    torch.manual_seed(0)
    model = _build(cfg, data).train()
    return cfg, data, model, make_optimizer(model, cfg.train, torch.device("cpu")), diffusion_spec(cfg)


def _time_steps(net, model, opt, batches, spec, world: int, manual: bool) -> float:
    """Median seconds per step (forward, backward, reduction, AdamW) over ``batches``."""
    import torch.distributed as dist

    from harness.diffusion import training_loss

    times = []
    for b in batches:
        dist.barrier()
        t0 = time.perf_counter()
        loss, _ = training_loss(
            lambda a, t, y, b=b: net(a, t, y, drop_labels=b.drop, generator=b.draws),
            b.x0,
            b.y,
            spec,
            t=b.t,
            noise=b.noise,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if manual:
            _manual_reduce(model, world)
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(rank: int, world: int, port: int, args) -> None:
    import torch
    import torch.distributed as dist

    from harness.runtime.distributed import DistInfo, data_parallel
    from harness.stages.train import _load_dataset_tensors, _step_batch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    info = DistInfo(rank, world, rank)
    out = {}
    for name in args.models.split(","):
        cfg, data, model, opt, spec = _setup(name, rank, world, args.batch)
        X, Y = _load_dataset_tensors(data.train)
        batches = [_step_batch(X, Y, spec, cfg, s, info, torch.device("cpu")) for s in range(args.steps)]
        ddp = data_parallel(model, info)
        nets = {"manual": model, "ddp": ddp}
        per = {m: [] for m in MODES}
        _time_steps(ddp, model, opt, batches[:2], spec, world, False)  # warm-up (DDP builds its buckets)
        for _ in range(args.rounds):
            for mode in MODES:
                s = _time_steps(nets[mode], model, opt, batches, spec, world, mode == "manual")
                t = torch.tensor([s], dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a step lasts as long as its slower rank
                per[mode].append(float(t))
        params = sum(p.numel() for p in model.parameters())
        out[name] = {"params": params, **{f"{m}_ms": 1e3 * statistics.median(per[m]) for m in MODES}}
        out[name]["ddp_over_manual"] = out[name]["ddp_ms"] / out[name]["manual_ms"]
        del ddp
    if rank == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fpdm,dit", help="comma-separated model configs")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per reduction and round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two reductions")
    ap.add_argument("--batch", type=int, default=32, help="global batch, split over the 2 ranks")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)  # rank world port
    args = ap.parse_args()
    if args.child:
        child(*args.child, args)
        return
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env["OMP_NUM_THREADS"] = "1"
    rest = [f"--models={args.models}", f"--steps={args.steps}", f"--rounds={args.rounds}", f"--batch={args.batch}"]
    procs = [
        subprocess.Popen([sys.executable, __file__, "--child", str(r), "2", str(port), *rest], env=env)
        for r in range(2)
    ]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()

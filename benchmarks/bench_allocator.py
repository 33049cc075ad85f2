"""Sampling with glibc's default allocator settings vs ``run.reuse_freed_memory`` (the default).

Each repeat runs, in a fresh process per setting (the setting is process-wide and cannot be undone),
the main job's sample stage for DiT and FPDM (``python -m harness.run`` defaults: digits, tiny
preset, budget 60 blocks, untrained weights, which time the same) and prints the wall time per block
pass, the minor page faults per image and the process's peak resident memory; settings alternate
so both see the same machine load.

    python benchmarks/bench_allocator.py [--repeats 3] [--threads 1] [--images 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MODES = ("system", "tuned")


def child(mode: str, threads: int, images: int) -> None:
    import resource
    import tempfile

    import torch
    from hydra import compose, initialize_config_module

    from harness.data import build_dataset
    from harness.runtime.allocator import reuse_freed_memory
    from harness.stages.job import _build, diffusion_spec, plan_for_model
    from harness.stages.sample import sample_model

    if mode == "tuned" and not reuse_freed_memory():
        sys.exit("the allocator cannot be tuned here (harness.runtime.allocator.why_not_tuned)")
    torch.set_num_threads(threads)
    out = {}
    for name in ("dit", "fpdm"):
        with initialize_config_module("harness.config", version_base="1.3"):
            cfg = compose("config", overrides=[f"model={name}", "sample.budget=60", f"sample.num_images={images}"])
        data = build_dataset(cfg.data)
        model = _build(cfg, data).eval()
        plan = plan_for_model(cfg, model, data, False)
        args = (model, data, diffusion_spec(cfg), cfg, plan)
        sample_model(*args, tempfile.mkdtemp(), torch.device("cpu"), progress=False)  # warm-up
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        s = sample_model(*args, tempfile.mkdtemp(), torch.device("cpu"), progress=False)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        out[name] = {
            "us_per_pass": 1e6 * s["time_per_image_s"] / s["block_passes_per_image"],
            "faults": faults / images,
        }
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="1: as each worker of the main job's parallel launcher")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.threads, args.images)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs: dict = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--threads",
                str(args.threads),
                "--images",
                str(args.images),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(mode: str, model: str, key: str) -> float:
        return statistics.median(r[model][key] for r in runs[mode])

    print(f"sample stage, budget 60, {args.images} images, {args.threads} thread(s), medians of {args.repeats} runs")
    print(
        f"{'model':<6}{'system us/pass':>16}{'tuned us/pass':>15}{'tuned/system':>14}{'faults/img system':>19}{'tuned':>8}"
    )
    for model in ("dit", "fpdm"):
        a, b = med("system", model, "us_per_pass"), med("tuned", model, "us_per_pass")
        fa, fb = med("system", model, "faults"), med("tuned", model, "faults")
        print(f"{model:<6}{a:>16.1f}{b:>15.1f}{b / a:>14.2f}{fa:>19.0f}{fb:>8.0f}")
    for mode in MODES:
        ratio = med(mode, "fpdm", "us_per_pass") / med(mode, "dit", "us_per_pass")
        rss = statistics.median(r["max_rss_mb"] for r in runs[mode])
        print(f"{mode}: FPDM / DiT wall time per block pass: {ratio:.2f}x; peak resident memory {rss:.0f} MB")


if __name__ == "__main__":
    main()

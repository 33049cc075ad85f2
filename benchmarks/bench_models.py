"""Train-step time, eval-forward time and bytes saved for backward: DiT vs FPDM, fp32 vs bf16.

The configuration:
DiT-S/2-shaped models (hidden 384, 6 heads, patch 2) on 32x32x4 latents, batch 8, 1000 classes,
learned sigma; DiT with 12 blocks; FPDM with 1 pre + 1 post layer, 5 no-grad + 5 with-grad
iterations in training and 10 iterations in the eval forward; 2 threads.

    python benchmarks/bench_models.py [--threads 2] [--repeats 5] [--device cpu|cuda]

Prints one table, side by side, with ratios; numbers are medians over the repeats after warm-up.
Reference (official FPDM code, this machine kind, fp32): DiT 1.7 s/step, 0.56 s/forward;
FPDM 1.55 s/step, 0.71 s/forward.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from baselines.dit import build_dit
from fpdm.model import build_fpdm
from fpdm.training_modes import ImplicitTrainSpec
from harness.diffusion import training_loss
from harness.diffusion.spec import DiffusionSpec
from harness.compute.memory import saved_tensor_bytes

REFERENCE = {"dit": (1.7, 0.56), "fpdm": (1.55, 0.71)}


def build(name: str, device):
    torch.manual_seed(0)
    if name == "dit":
        model = build_dit("S/2", input_size=32, in_channels=4, num_classes=1000)
    else:
        spec = ImplicitTrainSpec("sjfb", 5, 5, 5, 5)  # fixed 5 + 5 so timings compare like for like
        model = build_fpdm("S/2", input_size=32, in_channels=4, num_classes=1000, train_spec=spec)
    return model.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, precision: str, device, repeats: int, batch: int = 8) -> dict:
    model = build(name, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    spec = DiffusionSpec(learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, 4, 32, 32, generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step():
        with autocast:
            loss, _ = training_loss(model, x0, y, spec, t=t, noise=torch.zeros_like(x0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_forward():
        with torch.inference_mode(), autocast:
            model(x0, t, y, iters=10) if name == "fpdm" else model(x0, t, y)

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    model.train()
    step_s = timed(train_step)
    with autocast:
        saved, _ = saved_tensor_bytes(lambda: training_loss(model, x0, y, spec, t=t, noise=torch.zeros_like(x0))[0],
                                      exclude=model)
    model.eval()
    fwd_s = timed(eval_forward)
    return {"model": name, "precision": precision, "train_step_s": step_s, "eval_forward_s": fwd_s,
            "saved_mib": saved / 2**20, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench(m, p, device, args.repeats) for p in ("fp32", "bf16") for m in ("dit", "fpdm")]
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} batch=8 S/2 32x32x4")
    head = f"{'model':<6}{'prec':<6}{'params M':>9}{'step s':>9}{'fwd s':>8}{'saved MiB':>11}{'step/ref':>10}{'fwd/ref':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ref_step, ref_fwd = REFERENCE[r["model"]]
        print(f"{r['model']:<6}{r['precision']:<6}{r['params_m']:>9.1f}{r['train_step_s']:>9.3f}{r['eval_forward_s']:>8.3f}"
              f"{r['saved_mib']:>11.1f}{r['train_step_s'] / ref_step:>10.2f}{r['eval_forward_s'] / ref_fwd:>9.2f}")
    by = {(r["model"], r["precision"]): r for r in rows}
    for p in ("fp32", "bf16"):
        d, f = by[("dit", p)], by[("fpdm", p)]
        print(f"{p}: FPDM/DiT  step {f['train_step_s'] / d['train_step_s']:.2f}x  forward "
              f"{f['eval_forward_s'] / d['eval_forward_s']:.2f}x  saved bytes {f['saved_mib'] / d['saved_mib']:.2f}x")
    for m in ("dit", "fpdm"):
        a, b = by[(m, "fp32")], by[(m, "bf16")]
        print(f"{m}: bf16 speed-up  step {a['train_step_s'] / b['train_step_s']:.2f}x  forward "
              f"{a['eval_forward_s'] / b['eval_forward_s']:.2f}x")


if __name__ == "__main__":
    main()

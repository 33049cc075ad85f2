"""Train-step and eval-forward time of DiT and FPDM, side by side with the official FPDM code.

Two shapes (docs/architecture.md):
- ``digits``: 8x8x1 images, width 128, 4 heads, patch 2 (16 tokens), 10 classes, train batch 128,
  eval batch 250; DiT depth 8; FPDM 1 pre + 1 post block, 2 no-grad + 2 with-grad iterations in
  training (S-JFB, Sec. 3.4) and k=2 in the eval forward. Per-op overhead dominates here.
- ``s2``: DiT-S/2 on 32x32x4 latents, 1000 classes, batch 8; DiT depth 12; FPDM 1 + 1 blocks,
  5 + 5 iterations in training, k=10 in the eval forward. Matmuls dominate here.

    python benchmarks/bench_models.py [--shape digits|s2|both] [--threads 2] [--repeats 5]
        [--official PATH] [--compile] [--profile] [--device cpu|cuda] [--system-malloc] [--no-tf32]

``--official PATH`` imports the official code (its ``models.py`` and ``diffusion/``) from PATH at
run time (it needs ``timm`` and ``jaxtyping`` importable) and times it in the same process,
interleaved with ours, so every ratio compares runs made under the same machine load. Every
repeat runs every configuration once (round robin); figures are medians. The matmul peak is
measured in the same run (a 2048^3 matmul, fp32 and bf16) and each train step is shown as a
fraction of it (3 x forward FLOPs x batch / time). ``--compile`` adds our models with
``torch.compile`` (compile time excluded from the medians and printed apart). ``--profile`` then
profiles a few train steps of every configuration (torch.profiler, self CPU time) and prints its
top operators with their share, and the share of the step spent in matrix products: the step
could be at best that share of its time if everything else were free, which bounds what fusing
the rest can gain. The process reuses freed memory as every job of the harness does
(``run.reuse_freed_memory``; the official code in the same process gets it too); ``--system-malloc``
keeps glibc's defaults. On CUDA, train steps run their fp32 products in TF32, as both codes'
training scripts do (``train.tf32``), and the fp32 peak is measured the same way; eval forwards stay
in full fp32, as both sampling scripts do. ``--no-tf32`` times the train steps in full fp32.

``(repeats)`` is the lowest and highest train-step ratio to the reference over the repeats, each
repeat's time over the reference's in the same round: the noise on the ratio itself.
``floor/ref`` is the train step's time at 100% of this run's matmul peak for its precision (every
FLOP a matrix product at peak, nothing else costing anything) over the reference's time: no code
can go below it on this machine. The targets of docs/performance.md are printed last, each with
the best measured ratio and that floor, so a target below the floor shows as out of reach here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from baselines.dit import DiT
from fpdm.model import FPDM, unrolled_solve
from fpdm.training_modes import ImplicitTrainSpec
from harness.compute.flops import count_flops
from harness.diffusion import training_loss
from harness.diffusion.spec import DiffusionSpec
from harness.runtime.allocator import reuse_freed_memory
from harness.runtime.compile import set_compiled
from harness.runtime.matmul_precision import tf32_matmuls

SHAPES = {  # name -> geometry, batches, depths, iterations
    "digits": dict(
        input_size=8,
        in_channels=1,
        num_classes=10,
        hidden_size=128,
        num_heads=4,
        patch_size=2,
        batch=128,
        eval_batch=250,
        depth=8,
        train_iters=2,
        eval_iters=2,
    ),
    "s2": dict(
        input_size=32,
        in_channels=4,
        num_classes=1000,
        hidden_size=384,
        num_heads=6,
        patch_size=2,
        batch=8,
        eval_batch=8,
        depth=12,
        train_iters=5,
        eval_iters=10,
    ),
}
GEOMETRY = ("input_size", "in_channels", "num_classes", "hidden_size", "num_heads", "patch_size")


@dataclass
class Case:
    label: str  # e.g. "ours fp32"
    side: str
    model: str
    precision: str
    train_step: Callable[[], None]
    eval_forward: Callable[[], None]
    flops_fwd: float  # train-step FLOPs per image / 3 (forward + 2x backward on the graph part)
    passes: int  # block passes of the eval forward
    times: dict = field(default_factory=lambda: {"train": [], "eval": []})
    compile_s: float = 0.0


def _inputs(s: dict, batch: int, device):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, s["in_channels"], s["input_size"], s["input_size"], generator=g).to(device)
    y = torch.randint(0, s["num_classes"], (batch,), generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return x0, t, y


def _ours(s: dict, name: str, precision: str, device, compiled: bool) -> Case:
    torch.manual_seed(0)
    geo = {k: s[k] for k in GEOMETRY}
    k = s["train_iters"]
    model = (
        DiT(depth=s["depth"], **geo)
        if name == "dit"
        else FPDM(pre_depth=1, post_depth=1, train_spec=ImplicitTrainSpec("sjfb", k, k, k, k), **geo)
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))  # as harness.train
    spec = DiffusionSpec(learn_sigma=True)
    x0, t, y = _inputs(s, s["batch"], device)
    xe, te, ye = _inputs(s, s["eval_batch"], device)
    noise = torch.randn_like(x0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if compiled:
        set_compiled(model, True, "--compile", device)

    def train_step():
        model.train()
        with autocast:
            loss, _ = training_loss(model, x0, y, spec, t=t, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_forward():
        model.eval()
        with torch.inference_mode(), autocast:
            model(xe, te, ye, iters=s["eval_iters"]) if name == "fpdm" else model(xe, te, ye)

    with torch.device("meta"):
        meta = (DiT(depth=s["depth"], **geo) if name == "dit" else FPDM(pre_depth=1, post_depth=1, **geo)).eval()
        xm, tm = torch.zeros(1, s["in_channels"], s["input_size"], s["input_size"]), torch.zeros(1, dtype=torch.long)
        if name == "fpdm":  # k no-grad iterations run forward only: count them once, not 3 times
            with_grad = count_flops(meta, xm, tm, tm, iters=k, solver=unrolled_solve)
            flops = with_grad + (count_flops(meta, xm, tm, tm, iters=2 * k, solver=unrolled_solve) - with_grad) / 3
        else:
            flops = count_flops(meta, xm, tm, tm)
    passes = s["depth"] if name == "dit" else 2 + s["eval_iters"]
    side = "ours+compile" if compiled else "ours"
    return Case(f"{side} {precision}", side, name, precision, train_step, eval_forward, float(flops), passes)


def _official(path: str, s: dict, name: str, precision: str, device) -> Case:
    if path not in sys.path:
        sys.path.insert(0, path)
    from diffusion import create_diffusion  # noqa: E402  (the official code, imported from PATH)
    from models import DiT as OfficialDiT  # noqa: E402

    torch.manual_seed(0)
    geo = dict(
        input_size=s["input_size"],
        patch_size=s["patch_size"],
        in_channels=s["in_channels"],
        hidden_size=s["hidden_size"],
        num_heads=s["num_heads"],
        num_classes=s["num_classes"],
        use_gradient_checkpointing=False,
    )
    k = s["train_iters"]
    if name == "dit":
        model = OfficialDiT(depth=s["depth"], **geo)
    else:
        model = OfficialDiT(
            depth=s["depth"],
            fixed_point=True,
            fixed_point_pre_depth=1,
            fixed_point_post_depth=1,
            fixed_point_no_grad_min_iters=k,
            fixed_point_no_grad_max_iters=k,
            fixed_point_with_grad_min_iters=k,
            fixed_point_with_grad_max_iters=k,
            fixed_point_pre_post_timestep_conditioning=False,
            **geo,
        )
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)  # the official train.py
    diffusion = create_diffusion(timestep_respacing="")
    x0, t, y = _inputs(s, s["batch"], device)
    xe, te, ye = _inputs(s, s["eval_batch"], device)
    noise = torch.randn_like(x0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def iters(no_grad: int, with_grad: int) -> None:
        if name == "fpdm":
            model.fixed_point_no_grad_min_iters = model.fixed_point_no_grad_max_iters = no_grad
            model.fixed_point_with_grad_min_iters = model.fixed_point_with_grad_max_iters = with_grad

    def train_step():
        model.train()
        iters(k, k)
        with autocast:
            loss = diffusion.training_losses(model, x0, t, dict(y=y), noise=noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_forward():
        model.eval()
        iters(0, s["eval_iters"])
        with torch.inference_mode(), autocast:
            model(xe, te, ye)

    return Case(f"official {precision}", "official", name, precision, train_step, eval_forward, 0.0, 0)


def matmul_peak(dtype: torch.dtype, device, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n^3 matmul (median of ``reps``): this machine's practical peak in ``dtype``."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], None], device, tf32: bool = False) -> float:
    """Seconds of one call; on CUDA its fp32 products in TF32 when ``tf32`` (no effect on CPU)."""
    with tf32_matmuls(tf32, device):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0


def run_shape(shape: str, args, device) -> None:
    s = SHAPES[shape]
    cases: list[Case] = []
    for name in ("dit", "fpdm"):
        for prec in ("fp32", "bf16"):
            if args.official:
                cases.append(_official(args.official, s, name, prec, device))
            cases.append(_ours(s, name, prec, device, compiled=False))
            if args.compile:
                cases.append(_ours(s, name, prec, device, compiled=True))
    # train steps as both codes' training scripts run them: TF32 on CUDA (train.tf32's default)
    tf32 = not args.no_tf32
    for c in cases:  # warm-up (and compilation) outside the timed repeats
        t_first = _timed(c.train_step, device, tf32) + _timed(c.eval_forward, device)
        t_second = _timed(c.train_step, device, tf32) + _timed(c.eval_forward, device)
        c.compile_s = max(t_first - t_second, 0.0) if c.side == "ours+compile" else 0.0
    for _ in range(args.repeats):  # round robin: every configuration sees the same load
        for c in cases:
            c.times["train"].append(_timed(c.train_step, device, tf32))
            c.times["eval"].append(_timed(c.eval_forward, device))
    with tf32_matmuls(tf32, device):  # the peak an fp32 train step can reach
        peak = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    _report(shape, s, cases, peak, args)
    if args.profile:
        for c in cases:
            _print_profile(shape, c, device, tf32)


# aten operators that are matrix products (forward and the products of their backward); the fused
# attention kernels (their names contain "scaled_dot_product") are counted apart
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def _print_profile(shape: str, c: Case, device, tf32: bool, steps: int = 5, top: int = 8) -> None:
    """Top operators of ``steps`` train steps by self time, and the matrix-product share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, tf32_matmuls(tf32, device):
        for _ in range(steps):
            c.train_step()
        _sync(device)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    print(
        f"\n-- profile {shape} {c.model} {c.label}: {steps} train steps, self CPU time {total / 1e3 / steps:.1f} ms/step"
    )
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"   {100 * e.self_cpu_time_total / total:5.1f}%  {e.count // steps:>5}/step  {e.key}")
    print(
        f"   matrix products: {100 * matmul / total:.0f}% of the step, fused attention {100 * attention / total:.0f}%, "
        f"everything else {100 * (total - matmul - attention) / total:.0f}%"
    )


def _report(shape: str, s: dict, cases: list[Case], peak: dict, args) -> None:
    med = {(c.side, c.model, c.precision): {k: statistics.median(v) for k, v in c.times.items()} for c in cases}
    print(
        f"\n== {shape}: batch {s['batch']} (eval {s['eval_batch']}), width {s['hidden_size']}, "
        f"DiT depth {s['depth']}, FPDM 1+1 blocks, train {s['train_iters']}+{s['train_iters']} iters, "
        f"eval k={s['eval_iters']}; matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s"
    )
    ref_side = "official" if args.official else "ours"
    head = (
        f"{'model':<6}{'side':<14}{'prec':<6}{'train s':>9}{'eval s':>9}{'train/ref':>10}{'(repeats)':>12}"
        f"{'eval/ref':>10}{'% peak':>8}{'floor/ref':>10}{'s/pass':>9}{'compile s':>10}"
    )
    print(head + f"   (ref = {ref_side} fp32)")
    print("-" * len(head))
    for c in cases:
        m = med[(c.side, c.model, c.precision)]
        ref = med[(ref_side, c.model, "fp32")]
        low, high = _paired_range(c, _case(cases, ref_side, c.model, "fp32"))
        floor = _floor_s(c, s, peak)
        per_pass = m["eval"] / c.passes if c.passes else float("nan")
        print(
            f"{c.model:<6}{c.side:<14}{c.precision:<6}{m['train']:>9.3f}{m['eval']:>9.3f}"
            f"{m['train'] / ref['train']:>10.2f}{f'{low:.2f}-{high:.2f}':>12}{m['eval'] / ref['eval']:>10.2f}"
            f"{100 * floor / m['train']:>7.0f}%{floor / ref['train']:>10.2f}{per_pass:>9.4f}{c.compile_s:>10.1f}"
        )
    for prec in ("fp32", "bf16"):
        d, f = med[("ours", "dit", prec)], med[("ours", "fpdm", prec)]
        ratio = (f["eval"] / (2 + s["eval_iters"])) / (d["eval"] / s["depth"])
        print(f"ours {prec}: FPDM / DiT wall time per block pass in the eval forward: {ratio:.2f}x")
    if args.official:
        _report_targets(shape, s, cases, med, peak)


# docs/performance.md, "Targets": the train step of our DiT, as a ratio to the official fp32 step
TARGETS = {("digits", "fp32"): 0.60, ("digits", "bf16"): 0.40, ("s2", "bf16"): 0.35}


def _case(cases: list[Case], side: str, model: str, precision: str) -> Case:
    return next(c for c in cases if (c.side, c.model, c.precision) == (side, model, precision))


def _paired_range(c: Case, ref: Case) -> tuple[float, float]:
    """Lowest and highest train-step ratio to ``ref`` over the repeats, each repeat's time over the
    reference's in the same round (round robin: the two ran seconds apart, under the same load), so
    the spread is the machine's noise on the ratio itself."""
    ratios = [a / b for a, b in zip(c.times["train"], ref.times["train"])]
    return min(ratios), max(ratios)


def _floor_s(c: Case, s: dict, peak: dict) -> float:
    """Seconds of the train step at 100% of the measured matmul peak of its precision."""
    return 3 * c.flops_fwd * s["batch"] / 1e9 / peak[c.precision] if c.flops_fwd else float("nan")


def _report_targets(shape: str, s: dict, cases: list[Case], med: dict, peak: dict) -> None:
    ref = med[("official", "dit", "fp32")]["train"]
    for (target_shape, prec), target in TARGETS.items():
        if target_shape != shape:
            continue
        ours = [c for c in cases if c.model == "dit" and c.precision == prec and c.side != "official"]
        best = min(ours, key=lambda c: med[(c.side, c.model, c.precision)]["train"])
        ratio = med[(best.side, "dit", prec)]["train"] / ref
        low, high = _paired_range(best, _case(cases, "official", "dit", "fp32"))
        floor = _floor_s(best, s, peak) / ref
        verdict = "met" if ratio <= target else "below the floor: out of reach here" if floor > target else "not met"
        print(
            f"target {shape} DiT {prec} train step <= {target:.2f}x official fp32: best {ratio:.2f}x ({best.side}; "
            f"{low:.2f}-{high:.2f} over the repeats), floor {floor:.2f}x at 100% of the {prec} matmul peak, "
            f"so {floor / target:.0%} of the peak needed -> {verdict}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("digits", "s2", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--official", metavar="PATH", help="a checkout of the official FPDM code, timed alongside")
    ap.add_argument("--compile", action="store_true", help="also time our models under torch.compile")
    ap.add_argument("--profile", action="store_true", help="print each configuration's top operators")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--system-malloc", action="store_true", help="keep glibc's allocator defaults")
    ap.add_argument("--no-tf32", action="store_true", help="CUDA: train steps in full fp32 (default: TF32)")
    args = ap.parse_args()
    malloc = "glibc defaults" if args.system_malloc else "reused" if reuse_freed_memory() else "not tunable here"
    if args.official:
        try:
            sys.path.insert(0, args.official)
            import diffusion  # noqa: F401
            import models  # noqa: F401
        except ImportError as exc:
            sys.exit(
                f"--official {args.official}: cannot import its models.py / diffusion/ ({exc}); "
                "it needs timm and jaxtyping installed"
            )
    torch.set_num_threads(args.threads)
    if args.compile:
        # every configuration (fp32/bf16 autocast, train/eval, batch size) of one process shares the
        # blocks' code objects; past dynamo's default limit of 8 graphs the later configurations
        # would silently run eager and the compiled rows would time eager code
        import torch._dynamo as dynamo

        dynamo.config.recompile_limit = 64
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats} "
        f"(medians of round-robin repeats); freed memory: {malloc}"
        + ("; fp32 train steps in TF32, as both trainings run" if device.type == "cuda" and not args.no_tf32 else "")
    )
    for shape in ("digits", "s2") if args.shape == "both" else (args.shape,):
        run_shape(shape, args, device)


if __name__ == "__main__":
    main()

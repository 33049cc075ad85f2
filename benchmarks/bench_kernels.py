"""The kernels a train step is made of, at the shapes of bench_models.py, against the matmul peak.

What bounds a step on this machine (docs/performance.md, "The targets, and where they stand"):
- the three products of a linear layer (forward ``x @ W^T``, backward ``g @ W`` and ``g^T @ x``) at
  each linear of a DiT block, in GFLOP/s and as a fraction of the 2048^3 matmul peak measured in
  the same run, fp32 and bf16;
- the elementwise operations around them (GELU in its tanh form, as the DiT blocks use it, and its
  backward; ``baselines.layers.gelu_tanh`` as sampling runs it; tanh, sigmoid, erf-GELU, an add, a
  cast), in G elements per second;
- attention at the shape's heads and head width, in the layout a block feeds it (views of one qkv
  projection), fused ``scaled_dot_product_attention`` against the written-out softmax(q k^T) v,
  with gradients and without, over a range of tokens per image at the same tokens per batch: the
  evidence for ``baselines.layers.WRITTEN_OUT_MAX_TOKENS``.

    python benchmarks/bench_kernels.py [--shape digits|s2|both] [--threads 2] [--repeats 20]

Medians of ``--repeats`` calls after 3 warm-up calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from bench_models import SHAPES, matmul_peak  # benchmarks/ is on sys.path when run as a script

from baselines.layers import WRITTEN_OUT_MAX_TOKENS, gelu_tanh, written_out_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def tokens_and_width(shape: str) -> tuple[int, int]:
    """Tokens in a train batch and the model width of one of bench_models.py's shapes."""
    s = SHAPES[shape]
    return s["batch"] * (s["input_size"] // s["patch_size"]) ** 2, s["hidden_size"]


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def linear_products(tokens: int, width: int, dtype: torch.dtype, repeats: int) -> list[tuple[str, list[float]]]:
    """GFLOP/s of forward / grad-input / grad-weight for the linears of a DiT block."""
    rows = []
    for name, k, n in (
        ("qkv", width, 3 * width),
        ("proj", width, width),
        ("fc1", width, 4 * width),
        ("fc2", 4 * width, width),
    ):
        x, w = torch.randn(tokens, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        b, g = torch.randn(n, dtype=dtype), torch.randn(tokens, n, dtype=dtype)
        flops = 2 * tokens * k * n
        fns = (partial(F.linear, x, w, b), partial(torch.matmul, g, w), partial(torch.matmul, g.t(), x))
        rows.append((f"{name} {tokens}x{k}x{n}", [flops / _median_s(f, repeats) / 1e9 for f in fns]))
    return rows


def elementwise(tokens: int, width: int, dtype: torch.dtype, repeats: int) -> list[tuple[str, float]]:
    """G elements/s of the operations on the MLP's hidden activations (tokens x 4 width)."""
    x, g = torch.randn(tokens, 4 * width, dtype=dtype), torch.randn(tokens, 4 * width, dtype=dtype)
    other = torch.float32 if dtype != torch.float32 else torch.bfloat16
    ops = {
        "gelu tanh": lambda: F.gelu(x, approximate="tanh"),
        "gelu tanh, no grad": lambda: gelu_tanh(x),  # baselines.layers: x * sigmoid(2u) on CPU fp32
        "gelu tanh backward": lambda: torch.ops.aten.gelu_backward(g, x, approximate="tanh"),
        "gelu erf": lambda: F.gelu(x),
        "tanh": lambda: torch.tanh(x),
        "sigmoid": lambda: torch.sigmoid(x),
        "add": lambda: x + g,
        f"cast to {str(other).split('.')[-1]}": lambda: x.to(other),
    }
    return [(name, x.numel() / _median_s(fn, repeats) / 1e9) for name, fn in ops.items()]


def _attention_call(fn, qkv_out: torch.Tensor, heads: int, grad_out: torch.Tensor, grad: bool) -> None:
    """One attention as a block calls it: q, k, v are views of one projection's output."""
    images, tokens, _ = qkv_out.shape
    with torch.set_grad_enabled(grad):
        qkv = qkv_out.view(images, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        out = fn(*qkv.unbind(0)).transpose(1, 2).reshape(grad_out.shape)
        if grad:
            out.backward(grad_out)


def attention_ratios(
    batch_tokens: int, heads: int, head_width: int, dtype: torch.dtype, repeats: int
) -> list[tuple[int, float, float, float]]:
    """(tokens per image, fused ms with grad, written-out / fused with grad, same without grad) at
    16, 64 and 256 tokens per image with ``batch_tokens`` tokens in the batch."""
    rows = []
    for tokens in (16, 64, 256):
        images = max(1, batch_tokens // tokens)
        qkv_out = torch.randn(images, tokens, 3 * heads * head_width, dtype=dtype, requires_grad=True)
        grad_out = torch.ones(images, tokens, heads * head_width, dtype=dtype)
        times = {
            (name, grad): _median_s(partial(_attention_call, fn, qkv_out, heads, grad_out, grad), repeats)
            for name, fn in (("fused", F.scaled_dot_product_attention), ("written", written_out_attention))
            for grad in (True, False)
        }
        rows.append(
            (
                tokens,
                times["fused", True] * 1e3,
                times["written", True] / times["fused", True],
                times["written", False] / times["fused", False],
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("digits", "s2", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} cpu={torch.backends.cpu.get_cpu_capability()}")
    peak = {p: matmul_peak(dt, torch.device("cpu")) for p, dt in DTYPES.items()}
    print(
        f"matmul peak (2048^3): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
        f"({peak['bf16'] / peak['fp32']:.1f}x)"
    )
    for shape in ("digits", "s2") if args.shape == "both" else (args.shape,):
        tokens, width = tokens_and_width(shape)
        for prec, dtype in DTYPES.items():
            print(f"\n== {shape} {prec}: linear products, GFLOP/s (fraction of the {prec} peak)")
            print(f"{'linear':<22}{'x @ W^T':>16}{'g @ W':>16}{'g^T @ x':>16}")
            for name, rates in linear_products(tokens, width, dtype, args.repeats):
                cells = "".join(f"{r:>9.0f} ({r / peak[prec]:>4.0%})" for r in rates)
                print(f"{name:<22}{cells}")
            print(f"-- {shape} {prec}: elementwise on {tokens} x {4 * width}, G elements/s")
            for name, rate in elementwise(tokens, width, dtype, args.repeats):
                print(f"   {name:<22}{rate:>7.2f}")
            heads = SHAPES[shape]["num_heads"]
            print(
                f"-- {shape} {prec}: attention, {heads} heads of width {width // heads}, {tokens} tokens per batch; "
                f"written out up to {WRITTEN_OUT_MAX_TOKENS.get(dtype)} tokens (time written out / fused)"
            )
            print(f"   {'tokens/image':<14}{'fused fwd+bwd ms':>18}{'with grad':>11}{'no grad':>9}")
            for n, fused_ms, with_grad, no_grad in attention_ratios(tokens, heads, width // heads, dtype, args.repeats):
                print(f"   {n:<14}{fused_ms:>18.1f}{with_grad:>11.2f}{no_grad:>9.2f}")


if __name__ == "__main__":
    main()

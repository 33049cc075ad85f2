"""Training-memory estimate on the meta device: nothing is allocated, so XL/2 is counted anywhere.

One training step holds (bytes; P = trainable parameters):

- fp32 master weights, gradients, AdamW's two moments and the EMA copy: ``4P`` each (``8P`` Adam);
- with ``ddp``: DistributedDataParallel's gradient buckets, one more fp32 gradient-sized buffer
  (``gradient_as_bucket_view=False``, the default): ``4P``;
- under bf16 autocast: one bf16 copy of every weight a matmul consumes, cached by autocast for
  the whole forward and kept for backward: ``2P'`` (P' = parameters of linear / conv layers; the
  label table and the position buffer are not cast);
- the activations autograd saves for backward, counted per storage (``saved_tensor_bytes``) under
  modelled CUDA autocast (``harness.compute.autocast_model``: matmul outputs bf16, LayerNorm and the
  residual stream fp32) and with a fused attention kernel;
- with gradient checkpointing: the explicit blocks save their inputs only, and backward recomputes
  one block at a time, so the peak adds one block's saved activations (``mem_recompute_bytes``).

FPDM's fixed point layer saves activations for the m iterations run with gradient (S-JFB, FPDM
Sec. 3.4; the n no-grad iterations run under ``torch.no_grad`` and save nothing). Every iteration
saves the same tensors, so the saved bytes are measured at m=1 and m=2 and extrapolated linearly
(exact). The headline (``mem_total_bytes``, ``mem_saved_bytes``) is at the *maximum* m of
``train.method``'s draw: a GPU must hold the largest step it will be dealt, and a measured peak
sees it. The expectation of m over the draw is the second figure (``*_expected_bytes``). No random
draw happens here, so the estimate is deterministic.

DDP is assumed where the protocol's own training ran it (``protocol_ddp``: the official train.py
that the paper's Table 1 memory comes from is a DDP job, docs/paper-notes.md §8.5); ``inspect.ddp``
overrides. ``paper_comparison`` and ``disagreement`` set the headline beside Table 1 (DiT-XL/2
25.2 GB, FPDM-XL/2 10.2 GB at batch 64) and say by how much they disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from harness.compute.autocast_model import AutocastModel

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from fpdm.training_modes import ImplicitTrainSpec

PAPER_TRAIN_MEMORY_GB = {"dit": 25.2, "fpdm": 10.2}  # FPDM paper Table 1, batch 64 (per GPU)
PAPER_BATCH_SIZE = 64
# the models of Table 1 (docs/paper-notes.md §8.1): DiT-XL/2 and FPDM-XL/2 (1 pre + 1 post,
# class-conditional) on 32x32x4 SD-VAE latents of 256 px images; the parameter count pins the
# architecture, the label table and the learned-sigma output
PAPER_PARAMS = {"dit": 674_834_720, "fpdm": 86_500_256}
PAPER_INPUT = (4, 32)  # channels, latent size
GIB = 2**30  # the paper's "GB" is read as GiB; it does not say (as 10^9 bytes each figure is 7% smaller)

# whether each protocol's own training ran under DistributedDataParallel: the official train.py
# (paper, official) is a DDP job, 8 GPUs at global batch 512 = 64 per GPU, the batch of Table 1's
# memory (docs/paper-notes.md §8.5); the harness's digits protocol trains in one process
PROTOCOL_DDP = {"paper": True, "official": True, "digits": False}


def protocol_ddp(protocol: str) -> bool:
    """Whether ``protocol``'s training ran DDP (``PROTOCOL_DDP``; a protocol not listed: no)."""
    return PROTOCOL_DDP.get(protocol, False)


@dataclass(frozen=True)
class MemoryAssumptions:
    batch_size: int = 64
    precision: str = "bf16"  # fp32 | bf16 (CUDA autocast over fp32 master weights)
    grad_checkpointing: bool = False  # on every explicit block (the official default), never on f
    ddp: bool = False  # DistributedDataParallel gradient buckets
    optimizer_states: int = 2  # AdamW: two moments per parameter
    ema: bool = True
    ddp_reason: str = ""  # why DDP is (not) assumed, for describe()

    def describe(self, method: str | None = None) -> list[str]:
        """The assumptions in words, for ``harness.inspect`` and the paper-scale report."""
        act = (
            "CUDA autocast bf16: matmul outputs bf16, LayerNorm and residual stream fp32, one bf16 copy "
            "per matmul weight"
            if self.precision == "bf16"
            else "fp32 activations"
        )
        lines = [
            f"batch {self.batch_size}; fp32 weights, gradients, AdamW ({self.optimizer_states} moments)"
            + (", EMA" if self.ema else ""),
            f"activations: {act}",
            "attention: a fused kernel saves q, k, v, output and a fp32 log-sum-exp (no N x N matrix)",
            (
                "gradient checkpointing on explicit blocks: they save their inputs; backward recomputes one "
                "block at a time (peak + one block)"
            )
            if self.grad_checkpointing
            else "no gradient checkpointing",
            ("DDP gradient buckets: one fp32 gradient-sized buffer" if self.ddp else "single process (no DDP buckets)")
            + (f" ({self.ddp_reason})" if self.ddp_reason else ""),
        ]
        if method is not None:
            lines.append(
                f"fixed point layer ({method}): headline at the maximum number of with-grad iterations (the "
                "peak a step can reach), the expectation over the draw second; no-grad iterations save nothing"
            )
        if method == "implicit":
            lines.append("implicit: the adjoint solver's history buffers are not counted")
        lines.append("excludes: CUDA context, allocator fragmentation, temporaries freed within an op")
        return lines


# with-grad iterations of the fixed point layer per training method: (expectation, maximum) over
# the uniform integer draws of fpdm.training_modes (both ends included)
_WITH_GRAD: dict[str, Callable] = {
    "sjfb": lambda s: ((s.with_grad_min + s.with_grad_max) / 2, s.with_grad_max),
    "jfb": lambda s: (1.0, 1),
    "multistep_jfb": lambda s: (float(s.with_grad_max), s.with_grad_max),
    "full": lambda s: (
        (s.no_grad_min + s.no_grad_max + s.with_grad_min + s.with_grad_max) / 2,
        s.no_grad_max + s.with_grad_max,
    ),
    "implicit": lambda s: (1.0, 1),  # one application of f with graph at the solution
}


def with_grad_iterations(spec: ImplicitTrainSpec) -> tuple[float, int]:
    """(E[m], max m): iterations of the fixed point layer that backward differentiates through."""
    try:
        return _WITH_GRAD[spec.method](spec)
    except KeyError:
        raise KeyError(f"train.method={spec.method!r} has no memory rule; valid: {', '.join(_WITH_GRAD)}") from None


def _inputs(model: nn.Module, batch: int, image_size: int):
    x = torch.zeros(batch, model.in_channels, image_size, image_size)
    t = torch.zeros(batch, dtype=torch.long)
    y = torch.zeros(batch, dtype=torch.long)
    return x, t, y, torch.zeros(batch, dtype=torch.bool)  # no label dropped: no random draw


def _saved(fn: Callable, model: nn.Module, precision: str) -> tuple[int, int]:
    """(saved activation bytes, autocast weight-copy bytes) of one forward."""
    from harness.compute.memory import saved_tensor_bytes

    with AutocastModel(torch.bfloat16 if precision == "bf16" else None) as ac:
        saved, _ = saved_tensor_bytes(fn, exclude=model, exclude_tensors=lambda: ac.weight_copies)
    return saved, ac.weight_copy_bytes


def _forward_saved(model, image_size, a: MemoryAssumptions, m: int | None) -> tuple[int, int]:
    x, t, y, keep = _inputs(model, a.batch_size, image_size)
    if m is None:
        return _saved(lambda: model(x, t, y, drop_labels=keep).float().square().mean(), model, a.precision)
    from fpdm.training_modes import ImplicitTrainSpec

    spec = model.train_spec
    model.train_spec = ImplicitTrainSpec(
        method="multistep_jfb", no_grad_min=0, no_grad_max=0, with_grad_min=m, with_grad_max=m
    )
    try:
        return _saved(lambda: model(x, t, y, drop_labels=keep).float().square().mean(), model, a.precision)
    finally:
        model.train_spec = spec


def _recompute_peak(model, image_size, a: MemoryAssumptions) -> int:
    """One checkpointed explicit block's saved activations, live while backward recomputes it."""
    blocks = [*getattr(model, "blocks", []), *getattr(model, "pre_blocks", []), *getattr(model, "post_blocks", [])]
    if not (a.grad_checkpointing and blocks):
        return 0
    block = blocks[0]
    hidden = block.attn.qkv.in_features
    tokens = (image_size // model.patch_size) ** 2
    h = torch.zeros(a.batch_size, tokens, hidden, requires_grad=True)
    c = torch.zeros(a.batch_size, hidden, requires_grad=True)
    return _saved(lambda: block(h, c), block, a.precision)[0]


def estimate_training_memory(model: nn.Module, image_size: int, assumptions: MemoryAssumptions) -> dict:
    """Bytes of one training step of ``model`` (built on the meta device) under ``assumptions``:
    ``mem_total_bytes`` and ``mem_saved_bytes`` at the maximum with-grad iterations (the peak, the
    headline), ``*_expected_bytes`` at their expectation."""
    from harness.compute.memory import parameter_bytes

    a = assumptions
    with torch.device("meta"):
        model = model.to("meta").train()
        model.grad_checkpointing = a.grad_checkpointing
        params = parameter_bytes(model)
        if getattr(model, "is_implicit", False):
            expected_m, max_m = with_grad_iterations(model.train_spec)
            s1, copies = _forward_saved(model, image_size, a, 1)
            s2, _ = _forward_saved(model, image_size, a, 2)
            per_iter = s2 - s1
            saved, saved_max = round(s1 + (expected_m - 1) * per_iter), s1 + (max_m - 1) * per_iter
        else:
            expected_m = max_m = None
            saved, copies = _forward_saved(model, image_size, a, None)
            saved_max = saved
        recompute = _recompute_peak(model, image_size, a)
    static = {
        "mem_params_bytes": params,
        "mem_grads_bytes": params,
        "mem_optimizer_bytes": a.optimizer_states * params,
        "mem_ema_bytes": params if a.ema else 0,
        "mem_ddp_buckets_bytes": params if a.ddp else 0,
        "mem_autocast_weights_bytes": copies,
    }
    fixed = sum(static.values()) + recompute
    return {
        **static,
        "mem_saved_bytes": saved_max,
        "mem_recompute_bytes": recompute,
        "mem_total_bytes": fixed + saved_max,
        "mem_saved_expected_bytes": saved,
        "mem_total_expected_bytes": fixed + saved,
        "with_grad_iters_expected": expected_m,
        "with_grad_iters_max": max_m,
    }


def paper_comparison(name: str, mem: dict, params: int, input_shape: tuple[int, int], batch_size: int) -> dict:
    """The headline (peak) and the expectation beside paper Table 1's figure for the same model, as
    ratios (``GIB``); ``comparable`` is false, with the reason, unless this is one of the paper's
    two models (``PAPER_PARAMS``, ``PAPER_INPUT``) at its batch of 64."""
    if PAPER_PARAMS.get(name) != params or tuple(input_shape) != PAPER_INPUT:
        return {
            "comparable": False,
            "why": "Table 1 measured DiT-XL/2 and FPDM-XL/2 (1 pre + 1 post) on 32x32x4 latents "
            "(model.preset=XL/2 data=latents)",
        }
    if batch_size != PAPER_BATCH_SIZE:
        return {
            "comparable": False,
            "why": f"Table 1 measured batch {PAPER_BATCH_SIZE} per GPU; this is train.batch_size={batch_size}",
        }
    paper = PAPER_TRAIN_MEMORY_GB[name]
    return {
        "comparable": True,
        "paper_gb": paper,
        "ratio_to_paper": mem["mem_total_bytes"] / (paper * GIB),
        "ratio_expected_to_paper": mem["mem_total_expected_bytes"] / (paper * GIB),
    }


def fpdm_to_dit(fpdm: dict, dit: dict) -> dict:
    """FPDM / DiT training memory at FPDM's peak (the headline) and at its expectation, beside the
    paper's 10.2 / 25.2 = 0.40 (Table 1; the "60% less memory" claim)."""
    return {
        "ratio_fpdm_to_dit": fpdm["mem_total_bytes"] / dit["mem_total_bytes"],
        "ratio_fpdm_to_dit_expected": fpdm["mem_total_expected_bytes"] / dit["mem_total_bytes"],
        "paper_ratio_fpdm_to_dit": PAPER_TRAIN_MEMORY_GB["fpdm"] / PAPER_TRAIN_MEMORY_GB["dit"],
    }


def disagreement(ratios: dict, rows: dict[str, dict]) -> str:
    """One sentence: where the estimate disagrees with Table 1 and by how much. ``ratios`` as
    ``fpdm_to_dit`` returns them; ``rows``: model name -> {mem_total_bytes, paper_gb}."""
    r, paper = ratios["ratio_fpdm_to_dit"], ratios["paper_ratio_fpdm_to_dit"]
    per_model = "; ".join(
        f"{name} {row['mem_total_bytes'] / GIB:.2f} GiB vs {row['paper_gb']} GB "
        f"({row['mem_total_bytes'] / (row['paper_gb'] * GIB):.2f}x)"
        for name, row in rows.items()
    )
    return (
        f"FPDM/DiT at the peak {r:.2f}x where the paper has {paper:.2f}x ({r / paper:.2f}x the paper's ratio; "
        f"{ratios['ratio_fpdm_to_dit_expected']:.2f}x at the expected with-grad iterations); {per_model}"
    )


def paper_dit_memory(assumptions: MemoryAssumptions) -> dict:
    """DiT-XL/2 of Table 1 (32x32x4 latents, 1000 classes) under ``assumptions``."""
    from baselines.dit import build_dit

    with torch.device("meta"):
        dit = build_dit("XL/2", input_size=PAPER_INPUT[1], in_channels=PAPER_INPUT[0], num_classes=1000)
    return estimate_training_memory(dit, PAPER_INPUT[1], assumptions)


def paper_scale_estimate(
    batch_size: int = PAPER_BATCH_SIZE,
    precision: str = "bf16",
    grad_checkpointing: bool = True,
    ddp: bool = True,
    method: str = "sjfb",
    no_grad: tuple[int, int] = (0, 10),
    with_grad: tuple[int, int] = (1, 12),
) -> dict:
    """DiT-XL/2 vs FPDM-XL/2 (1 pre + 1 post) on 32x32x4 latents, 1000 classes, learned sigma,
    beside the paper's 25.2 GB vs 10.2 GB (Table 1), with the sentence saying where they disagree.
    Defaults follow the official training code: a DDP job (``PROTOCOL_DDP``) at 64 per GPU, bf16
    autocast, checkpointed explicit blocks, S-JFB with no-grad 0..10 and with-grad 1..12."""
    from fpdm.model import build_fpdm
    from fpdm.training_modes import ImplicitTrainSpec

    reason = "the official train.py is a DDP job" if ddp else ""
    a = MemoryAssumptions(batch_size, precision, grad_checkpointing, ddp=ddp, ddp_reason=reason)
    spec = ImplicitTrainSpec(method, no_grad[0], no_grad[1], with_grad[0], with_grad[1])
    with torch.device("meta"):
        fpdm = build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1000, train_spec=spec)
    mems = {"dit": paper_dit_memory(a), "fpdm": estimate_training_memory(fpdm, 32, a)}
    notes = a.describe(method)
    result: dict = {
        "assumptions": {**asdict(a), "method": method, "no_grad": list(no_grad), "with_grad": list(with_grad)},
    }
    result["assumptions"]["notes"] = notes
    for name, mem in mems.items():
        result[name] = {**mem, **paper_comparison(name, mem, PAPER_PARAMS[name], PAPER_INPUT, batch_size)}
    result.update(fpdm_to_dit(mems["fpdm"], mems["dit"]))
    if result["dit"]["comparable"]:
        result["disagreement"] = disagreement(result, {n: result[n] for n in mems})
    return result


def assumptions_from_config(cfg: DictConfig, ddp: bool | None = None) -> MemoryAssumptions:
    """The estimate's assumptions for a job config. DDP: ``ddp`` if given, else ``inspect.ddp`` if
    set, else what the protocol's own training ran (``protocol_ddp``)."""
    ddp = cfg.inspect.ddp if ddp is None else ddp
    if ddp is None:
        ddp, why = protocol_ddp(str(cfg.protocol)), f"as protocol={cfg.protocol}'s training ran; inspect.ddp overrides"
    else:
        why = f"inspect.ddp={str(bool(ddp)).lower()}"
    return replace(
        MemoryAssumptions(),
        batch_size=int(cfg.train.batch_size),
        precision=str(cfg.train.precision),
        grad_checkpointing=bool(cfg.model.grad_checkpointing),
        ddp=bool(ddp),
        ddp_reason=why,
    )

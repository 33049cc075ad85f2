"""``python -m harness.inspect <overrides>``: a model's accounting without training or data.

Composes the same config as ``harness.run`` and prints parameter counts (total and by part), the
resolved architecture, FLOPs per image (one forward and the whole sampling plan), the sampling
plan for the ``sample.*`` settings (steps, the timesteps sampled, noisiest first, per-step
iterations in sampling order, block passes per step and in total) and a training-memory estimate at
``train.batch_size`` with its assumptions (``harness.compute.memory_estimate``): the peak first (the
maximum with-grad iterations), the expectation second, and the paper's Table 1 figure beside it.
Everything runs on the meta device: nothing is allocated, no data is read (the input shape comes
from the ``data`` config, ``harness.data.shape``), so the paper's XL/2 on ImageNet latents is
counted on a laptop, and the output is the same on every run.
``inspect.format=json`` prints one JSON object instead; ``inspect.ddp=true|false`` overrides whether
the memory estimate counts DDP's gradient buckets (by default: as the protocol's training ran). A bad
config prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import torch

from harness.config.keys import check_appended_overrides
from harness.config.validate import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig


def _build_meta_model(cfg, shape):
    """The configured model on the meta device; released diffusers weights contribute only their
    ``config.json`` (the architecture), never their tensors."""
    from harness.stages.models import build_model

    with torch.device("meta"):
        if cfg.model.name == "dit_diffusers" and cfg.model.pretrained_path:
            from baselines.diffusers_dit import build_diffusers_dit

            return build_diffusers_dit(
                cfg.model,
                image_size=shape.image_size,
                channels=shape.channels,
                num_classes=shape.num_classes,
                load_weights=False,
            )
        return build_model(
            cfg.model, cfg.train, image_size=shape.image_size, channels=shape.channels, num_classes=shape.num_classes
        )


def _architecture(cfg, model) -> dict:
    from harness.stages.job import architecture_axes

    arch = architecture_axes(cfg)
    if arch.get("depth") is None:  # loaded weights: read what they define
        c = model.transformer.config
        arch = {
            "depth": c.num_layers,
            "hidden_size": c.num_attention_heads * c.attention_head_dim,
            "num_heads": c.num_attention_heads,
            "patch_size": c.patch_size,
            "mlp_ratio": 4.0,
        }
    return arch


def inspect_config(cfg: DictConfig) -> dict:
    from harness.compute.flops import flop_breakdown, sampling_flops
    from harness.compute.params import params_by_part
    from harness.compute.plan import flop_match_inputs, sampling_plan
    from harness.data.shape import input_shape

    shape = input_shape(cfg.data)
    model = _build_meta_model(cfg, shape)
    size = shape.image_size if not hasattr(model, "transformer") else model.transformer.config.sample_size
    params = params_by_part(model)
    iters = cfg.sample.iters if model.is_implicit and cfg.sample.iters is not None else None
    flops = flop_breakdown(model, size, iters)
    match_flops, dit_flops = flop_match_inputs(
        cfg, model, image_size=size, channels=shape.channels, num_classes=shape.num_classes
    )
    depth = model.depth if cfg.model.name == "dit_diffusers" else None
    plan = sampling_plan(cfg, depth=depth, flops=match_flops, dit_flops_per_forward=dit_flops)
    plan, calibration = _calibrated(cfg, plan)
    iters_per_step = list(plan.iters) if model.is_implicit else None
    out = {
        "model": {
            "name": cfg.model.name,
            "preset": cfg.model.preset,
            "image_size": size,
            "channels": shape.channels,
            "num_classes": shape.num_classes,
            "explicit_blocks": model.num_explicit_blocks,
            "architecture": _architecture(cfg, model),
            "data": cfg.data.name,
            "shape_note": shape.note,
        },
        "params": params,
        "flops": {**flops.as_dict(), "sampling_per_image": sampling_flops(flops, iters_per_step, plan.steps)},
        "plan": {
            "steps": plan.steps,
            "timesteps": _timesteps(cfg, plan.steps),
            "iters": list(plan.iters),
            "block_passes_per_step": list(plan.block_passes_per_step),
            "block_passes": plan.block_passes,
            "k_mean": plan.k_mean,
            "schedule": plan.schedule,
        },
        "memory": _memory(cfg, model, size, (shape.channels, size), params["total"]),
    }
    out["plan"].update(_accounting(cfg, plan, out["flops"]["sampling_per_image"]))
    if calibration is not None:
        out["plan"]["calibration"] = calibration
    if getattr(model, "param_count_note", None):
        out["params"]["note"] = model.param_count_note
    return out


def _accounting(cfg, plan, sampling_per_image: float) -> dict:
    """How the plan's compute is counted: the match (measured FLOPs, or the paper's block count,
    Sec. 4.2) with DiT's target and the ratio to it, and what classifier-free guidance adds: with
    ``sample.cfg_scale != 1`` every step runs the conditional and the unconditional forward, so an
    image costs twice the plan's passes and FLOPs, on both models alike (the match is unchanged)."""
    forwards = 2 if float(cfg.sample.cfg_scale) != 1.0 else 1
    target = getattr(plan, "flops_target", None)
    return {
        "accounting": cfg.sample.match,
        "dit_flops_target": target,
        "flops_to_dit": (sampling_per_image / target) if target else None,
        "guidance_forwards": forwards,
        "block_passes_per_image": plan.block_passes * forwards,
        "flops_per_image": sampling_per_image * forwards,
    }


def _accounting_lines(pl: dict) -> list[str]:
    if pl["dit_flops_target"]:
        lines = [
            f"  accounting: measured FLOPs, {pl['flops_to_dit']:.3f} of DiT's {int(pl['dit_flops_target']):,} "
            "per image on the same budget (sample.match=flops)"
        ]
    elif pl["accounting"] == "blocks" and any(pl["iters"]):
        lines = ["  accounting: the paper's block count (Sec. 4.2): an iteration charged as one block pass"]
    else:
        lines = []
    if pl["guidance_forwards"] == 2:
        lines.append(
            f"  guidance: cfg_scale != 1 runs the conditional and unconditional forward every step: "
            f"{pl['block_passes_per_image']} block passes, {int(pl['flops_per_image']):,} FLOPs per image "
            "(twice the plan, on both models; the paper's FIDs use no guidance)"
        )
    return lines


def _timesteps(cfg, steps: int) -> list[int]:
    """The original timesteps the configured sampler visits, noisiest first (what the sample stage
    runs: ``sample.sampler`` on ``diffusion.*``; docs/paper-notes.md §4.5 for the paper's)."""
    from harness.diffusion.samplers import make_sample_scheduler
    from harness.diffusion.spec import diffusion_spec

    return make_sample_scheduler(diffusion_spec(cfg), cfg.sample.sampler, steps).model_timesteps.tolist()


def _memory(cfg, model, size: int, input_shape: tuple[int, int], params: int) -> dict:
    """The training-memory estimate: the peak as headline, the expectation second, and paper
    Table 1 beside it (for FPDM-XL/2 also FPDM / DiT-XL/2 under the same assumptions)."""
    from harness.compute.memory_estimate import (
        assumptions_from_config,
        estimate_training_memory,
        fpdm_to_dit,
        paper_comparison,
        paper_dit_memory,
    )

    assumptions = assumptions_from_config(cfg)
    memory = estimate_training_memory(model, size, assumptions)
    method = cfg.train.method if model.is_implicit else None
    paper = paper_comparison(cfg.model.name, memory, params, input_shape, assumptions.batch_size)
    if paper["comparable"] and model.is_implicit:
        paper.update(fpdm_to_dit(memory, paper_dit_memory(assumptions)))
    return {
        **memory,
        "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "train_method": method,
        "ddp": assumptions.ddp,
        "paper": paper,
        "assumptions": assumptions.describe(method),
    }


def _calibrated(cfg, plan):
    """schedule=adaptive | greedy: the plan a cached calibration decided (a run of the same config
    made it), else the nominal plan with a note; other schedules pass through."""
    from harness.stages.calibrate import CALIBRATED, apply_calibration, cached_calibration

    if cfg.model.name != "fpdm" or cfg.sample.schedule not in CALIBRATED:
        return plan, None
    from harness.stages.cache import stage_keys

    found = cached_calibration(cfg, stage_keys(cfg).train)
    if found is None:
        return plan, {
            "cached": False,
            "note": "not calibrated yet: run harness.run with this config; the nominal (constant) plan is shown",
        }
    plan, adaptive = apply_calibration(plan, found)
    info = {"cached": True}
    if adaptive is not None:
        info.update(
            tol=adaptive.tol,
            max_iters_per_step=adaptive.max_iters_per_step,
            calibration_block_passes=found.get("block_passes"),
        )
    return plan, info


def _memory_lines(mem: dict) -> list[str]:
    method = f", train.method={mem['train_method']}" if mem["train_method"] else ""
    lines = [f"training memory at batch {mem['batch_size']} ({mem['precision']}{method}):"]
    m_max = mem["with_grad_iters_max"]
    at = f"  at the maximum with-grad iterations m = {m_max}" if m_max is not None else ""
    lines.append(f"  peak (headline)    {mem['mem_total_bytes'] / 2**20:>12,.1f} MiB{at}")
    if m_max is not None:
        lines.append(
            f"  expected           {mem['mem_total_expected_bytes'] / 2**20:>12,.1f} MiB"
            f"  at E[m] = {mem['with_grad_iters_expected']:g}"
        )
    lines.append("  " + _paper_line(mem["paper"]))
    lines.append("  breakdown at the peak:")
    lines += [
        f"    {k.replace('mem_', '').replace('_bytes', ''):<18} {v / 2**20:>12,.1f} MiB"
        for k, v in mem.items()
        if k.startswith("mem_") and "total" not in k and "expected" not in k and (v or "saved" in k)
    ]
    lines.append("  assumptions:")
    lines += [f"    - {a}" for a in mem["assumptions"]]
    return lines


def _paper_line(paper: dict) -> str:
    if not paper["comparable"]:
        return f"paper Table 1: not comparable ({paper['why']})"
    line = (
        f"paper Table 1: {paper['paper_gb']} GB at batch 64; the peak is {paper['ratio_to_paper']:.2f}x it"
        f" (expected {paper['ratio_expected_to_paper']:.2f}x; GB read as GiB)"
    )
    if "ratio_fpdm_to_dit" in paper:
        line += (
            f"\n  FPDM / DiT-XL/2 (same assumptions): {paper['ratio_fpdm_to_dit']:.2f}x at the peak, "
            f"{paper['ratio_fpdm_to_dit_expected']:.2f}x expected; the paper: {paper['paper_ratio_fpdm_to_dit']:.2f}x"
        )
    return line


def _text(info: dict) -> str:
    m, p, f, pl = info["model"], info["params"], info["flops"], info["plan"]
    arch = " ".join(f"{k}={v}" for k, v in m["architecture"].items())
    lines = [
        (
            f"model {m['name']} {m['preset']}  input {m['channels']}x{m['image_size']}x{m['image_size']}  "
            f"classes {m['num_classes']}  explicit blocks {m['explicit_blocks']}"
        ),
        f"architecture: {arch}",
    ]
    if m["shape_note"]:
        lines.append(f"  ({m['shape_note']})")
    lines.append("parameters:")
    lines += [f"  {k:<12} {v:>14,}" for k, v in p.items() if k != "note"]
    if "note" in p:
        lines.append(f"  ({p['note']})")
    lines += [
        "FLOPs per image:",
        f"  one forward        {f['per_forward']:>16,}",
        f"  one block          {f['block']:>16,}",
    ]
    if f["per_iteration"]:
        lines += [
            f"  one iteration      {f['per_iteration']:>16,}  (injection MLP = {f['injection_to_block']:.2f} block)"
        ]
    lines += [
        f"  whole sampling     {f['sampling_per_image']:>16,}",
        f"sampling plan: {pl['steps']} steps, {pl['block_passes']} block passes per image ({pl['schedule']})",
    ]
    if any(pl["iters"]):
        lines.append(f"  iterations per step (sampling order): {pl['iters']}")
    lines.append(f"  timesteps (noisiest first): {pl['timesteps']}")
    lines.append(f"  block passes per step: {pl['block_passes_per_step']}")
    lines += _accounting_lines(pl)
    if "calibration" in pl:
        lines.append("  calibration: " + ", ".join(f"{k}={v}" for k, v in pl["calibration"].items()))
    return "\n".join(lines + _memory_lines(info["memory"]))


def _compose(argv: list[str]):
    """The job config, with ``sample.search.study`` resolved into ``sample.knots`` as the run does
    (harness/app/searched.py; the study's root comes from the hydra config, which is then dropped)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import harness.config  # noqa: F401  (fills the ConfigStore)
    from harness.app.precheck import one_line
    from harness.app.searched import apply_searched_knots, sweep_root

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="harness.config", version_base="1.3"):
            cfg = compose(config_name="config", overrides=argv, return_hydra_config=True)
    except Exception as exc:  # noqa: BLE001 - Hydra raises several types; one line names the key
        raise ConfigError(one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    check_appended_overrides(argv, str(cfg.solver.name))  # `+sample.budgt=60` is a typo, not a new key
    root = sweep_root(cfg.hydra)
    with open_dict(cfg):
        del cfg["hydra"]
    apply_searched_knots(cfg, root)
    return cfg


def inspect_argv(argv: list[str]) -> dict:
    """Compose, check (without the checks that need files) and inspect one command line."""
    from harness.config.validate import validate_config

    cfg = _compose(argv)
    # inspect scores nothing: the evaluate stage's checks (feature-network weights) do not apply
    cfg.run.stages = [s for s in cfg.run.stages if s != "evaluate"]
    validate_config(cfg, disk=False)
    return cfg, inspect_config(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: python -m harness.inspect [KEY=VALUE ...]\n\n{__doc__.strip()}")
        return 0
    debug = any(a in ("run.debug=true", "run.debug=True") for a in argv)
    try:
        cfg, info = inspect_argv(argv)
    except Exception as exc:
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        known = isinstance(exc, (ValueError, KeyError, FileNotFoundError))
        print(
            f"error: {msg.strip(chr(34) + chr(39)) if isinstance(exc, KeyError) else msg}"
            + ("" if known else f" ({type(exc).__name__}; run.debug=true shows the traceback)"),
            file=sys.stderr,
        )
        return 2
    print(json.dumps(info, indent=2, sort_keys=True) if cfg.inspect.format == "json" else _text(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m harness.inspect <overrides>``: a model's accounting without training.

Composes the same config as ``harness.run`` and prints parameter counts (total and by part),
FLOPs per image (one forward and the whole sampling plan), the sampling plan for the ``sample.*``
settings (steps, per-step iterations in sampling order, block passes per step and in total) and a
training-memory estimate at ``train.batch_size`` (meta device: nothing is allocated, so XL/2
works on a laptop). ``inspect.format=json`` prints one JSON object instead.
"""
from __future__ import annotations

import json
import sys

import torch
from hydra import compose, initialize_config_module

import harness.config  # noqa: F401
from harness.app.precheck import one_line
from harness.config.validate import ConfigError, validate_config


def _data_shape(cfg) -> tuple[int, int, int]:
    """(channels, image size, classes) without loading pixels where the config says enough."""
    if cfg.data.name == "latents":
        return 4, cfg.data.image_size // 8, cfg.data.num_classes or 1000
    if cfg.data.name == "digits":
        return 1, cfg.data.image_size, cfg.data.num_classes or 10
    from harness.data import build_dataset

    d = build_dataset(cfg.data)
    return d.channels, d.image_size, d.num_classes


def inspect_config(cfg) -> dict:
    from harness.compute.flops import flop_breakdown, params_by_part, sampling_flops
    from harness.compute.memory import estimate_training_memory
    from harness.compute.plan import sampling_plan
    from harness.stages.models import build_model

    channels, size, classes = _data_shape(cfg)
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.train, image_size=size, channels=channels, num_classes=classes)
    params = params_by_part(model)
    iters = None
    if model.is_implicit and cfg.sample.iters is not None:
        iters = cfg.sample.iters
    flops = flop_breakdown(model, size, iters)
    dit_flops = None
    if cfg.sample.match == "flops" and model.is_implicit:
        from harness.compute.flops import dit_flops_per_forward

        dit_flops = dit_flops_per_forward(cfg, size, channels, classes)
    plan = sampling_plan(cfg, depth=getattr(model, "depth", None), flops=flops, dit_flops_per_forward=dit_flops)
    memory = estimate_training_memory(model, cfg.train.batch_size, size,
                                      torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)
    out = {
        "model": {"name": cfg.model.name, "preset": cfg.model.preset, "image_size": size, "channels": channels,
                  "num_classes": classes, "explicit_blocks": model.num_explicit_blocks},
        "params": params,
        "flops": {**flops.as_dict(), "sampling_per_image": sampling_flops(flops, list(plan.iters) if model.is_implicit else None, plan.steps)},
        "plan": {"steps": plan.steps, "iters": list(plan.iters), "block_passes_per_step": list(plan.block_passes_per_step),
                 "block_passes": plan.block_passes, "k_mean": plan.k_mean, "schedule": plan.schedule},
        "memory": {**memory, "batch_size": cfg.train.batch_size, "precision": cfg.train.precision},
    }
    if getattr(model, "param_count_note", None):
        out["params"]["note"] = model.param_count_note
    return out


def _text(info: dict) -> str:
    m, p, f, pl, mem = info["model"], info["params"], info["flops"], info["plan"], info["memory"]
    lines = [f"model {m['name']} {m['preset']}  input {m['channels']}x{m['image_size']}x{m['image_size']}  "
             f"classes {m['num_classes']}  explicit blocks {m['explicit_blocks']}",
             "parameters:"]
    lines += [f"  {k:<12} {v:>14,}" for k, v in p.items() if k != "note"]
    if "note" in p:
        lines.append(f"  ({p['note']})")
    lines += ["FLOPs per image:",
              f"  one forward        {f['per_forward']:>16,}",
              f"  one block          {f['block']:>16,}"]
    if f["per_iteration"]:
        lines += [f"  one iteration      {f['per_iteration']:>16,}  (injection MLP = {f['injection_to_block']:.2f} block)"]
    lines += [f"  whole sampling     {f['sampling_per_image']:>16,}",
              f"sampling plan: {pl['steps']} steps, {pl['block_passes']} block passes per image ({pl['schedule']})"]
    if any(pl["iters"]):
        lines.append(f"  iterations per step (sampling order): {pl['iters']}")
    lines.append(f"  block passes per step: {pl['block_passes_per_step']}")
    lines.append(f"training memory at batch {mem['batch_size']} ({mem['precision']} activations):")
    lines += [f"  {k.replace('mem_', '').replace('_bytes', ''):<10} {v / 2**20:>12,.1f} MiB"
              for k, v in mem.items() if k.startswith("mem_")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with initialize_config_module(config_module="harness.config", version_base="1.3"):
            try:
                cfg = compose(config_name="config", overrides=argv)
            except Exception as exc:
                raise ConfigError(one_line(exc)) from None
        validate_config(cfg)
        info = inspect_config(cfg)
    except (ConfigError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2, sort_keys=True) if cfg.inspect.format == "json" else _text(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

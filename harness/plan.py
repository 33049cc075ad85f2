"""From a resolved config to what a job will do, without running anything: the model's explicit
depth, the sampling plan (block- or FLOP-matched) and the cache keys of its three stages.

Cache keys hash only what determines an artifact (design.md): the train key ignores sampling and
metrics, so a sweep over sampling settings trains each model once; for DiT it also ignores the
FPDM-only training knobs and the solver, so DiT is trained and sampled once per budget.
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from baselines.presets import get_preset
from harness.budget import SamplingPlan, plan_from_sample_config, plan_fpdm_flops
from harness.cache import config_hash

# keys that change how a stage runs but not what it produces
# speed knobs (torch.compile changes results only by float rounding) do not split the cache
_TRAIN_RUNTIME_KEYS = ("resume", "log_every", "ckpt_every", "compile")
_SAMPLE_RUNTIME_KEYS = ("batch_size", "compile")


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def explicit_blocks(cfg) -> int:
    """Explicit blocks per forward: DiT's depth, or FPDM's pre + post."""
    if cfg.model.name == "fpdm":
        return cfg.model.pre_depth + cfg.model.post_depth
    if cfg.model.name == "dit_diffusers" and cfg.model.pretrained_path:
        return -1  # known once the weights are loaded
    return get_preset(cfg.model.preset).depth


def default_iters(cfg) -> int:
    """FPDM's DiT-equivalent iterations per step: preset depth - pre - post (paper Sec. 4.2)."""
    return get_preset(cfg.model.preset).depth - cfg.model.pre_depth - cfg.model.post_depth


def sampling_plan(cfg, depth: int | None = None, flops=None, dit_flops_per_forward: float | None = None) -> SamplingPlan:
    """The per-image sampling plan. ``depth`` overrides the preset depth (loaded weights);
    ``flops`` (a FlopBreakdown of the FPDM model) and ``dit_flops_per_forward`` enable
    ``sample.match=flops``: FPDM then spends the FLOPs DiT spends on the same block budget."""
    sc = cfg.sample
    kind = cfg.model.name
    n = explicit_blocks(cfg) if depth is None else depth
    values = list(sc.schedule_values) if sc.schedule_values is not None else None
    if kind != "fpdm":
        steps = None if sc.budget is not None else sc.steps
        return plan_from_sample_config(kind, sc.budget, n, steps=steps)
    iters, steps = sc.iters, sc.steps
    if sc.schedule == "list" and values is not None:
        iters, steps = None, None
    elif sc.budget is None:
        iters = iters if iters is not None else default_iters(cfg)
    elif iters is not None:
        steps = None
    if sc.match == "flops" and sc.budget is not None:
        if flops is None or dit_flops_per_forward is None:
            raise ValueError("sample.match=flops needs measured FLOPs (the job measures them before sampling)")
        depth_dit = get_preset(cfg.model.preset).depth
        plan_dit = plan_from_sample_config("dit", sc.budget, depth_dit)
        return plan_fpdm_flops(plan_dit.steps * dit_flops_per_forward, flops.explicit_per_forward,
                               flops.per_iteration, n_explicit=n, steps=steps, iters=iters, schedule=sc.schedule,
                               ratio=list(sc.ratio), values=values)
    return plan_from_sample_config(kind, sc.budget, n, steps=steps, iters=iters, schedule=sc.schedule,
                                   ratio=list(sc.ratio), values=values)


@dataclass(frozen=True)
class StageKeys:
    train: str
    sample: str
    eval: str

    def as_dict(self) -> dict:
        return {"train": self.train, "sample": self.sample, "eval": self.eval}


def stage_keys(cfg) -> StageKeys:
    model = _plain(cfg.model)
    train = {k: v for k, v in _plain(cfg.train).items() if k not in _TRAIN_RUNTIME_KEYS}
    if cfg.model.name != "fpdm":  # FPDM-only knobs must not split the DiT cache
        for k in ("method", "iters", "implicit_solver", "implicit_tol"):
            train.pop(k, None)
        for k in ("pre_depth", "post_depth", "pre_post_timestep_conditioning"):
            model.pop(k, None)
    train_key = config_hash("train", model, _plain(cfg.data), _plain(cfg.diffusion), train)
    sample = {k: v for k, v in _plain(cfg.sample).items() if k not in _SAMPLE_RUNTIME_KEYS}
    solver = _plain(cfg.solver) if cfg.model.name == "fpdm" else None
    if cfg.model.name != "fpdm":
        for k in ("iters", "schedule", "schedule_values", "ratio", "reuse", "match"):
            sample.pop(k, None)
        if cfg.sample.budget is not None:
            sample.pop("steps", None)
    sample_key = config_hash("sample", train_key, sample, solver)
    eval_key = config_hash("eval", sample_key, _plain(cfg.metrics))
    return StageKeys(train_key, sample_key, eval_key)

"""From a resolved config to what a job will do, without running anything: the model's explicit
depth, the sampling plan (block- or FLOP-matched) and the cache keys of its three stages.

Cache keys hash only what determines an artifact (design.md): the train key ignores sampling and
metrics, so a sweep over sampling settings trains each model once; for DiT it also ignores the
FPDM-only training knobs and the solver, so DiT is trained and sampled once per budget.
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from baselines.presets import ARCHITECTURE_KNOBS
from harness.compute.budget import BudgetError, SamplingPlan, plan_from_sample_config, plan_fpdm_flops
from harness.stages.cache import config_hash
from harness.compute.flops import FLOP_COUNT_VERSION

# keys that change how a stage runs but not what it produces
_TRAIN_RUNTIME_KEYS = ("resume", "log_every", "ckpt_every")
_TRAIN_BUDGET_CHECK_KEYS = ("tolerance",)  # only decide whether a budget is accepted
_SAMPLE_RUNTIME_KEYS = ("batch_size", "flops_tolerance")


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def explicit_blocks(cfg) -> int:
    """Explicit blocks per forward: DiT's depth, or FPDM's pre + post."""
    if cfg.model.name == "fpdm":
        return cfg.model.pre_depth + cfg.model.post_depth
    if cfg.model.name == "dit_diffusers" and cfg.model.pretrained_path:
        return -1  # known once the weights are loaded
    return _arch(cfg).depth


def _arch(cfg):
    from harness.stages.models import model_architecture

    return model_architecture(cfg.model)


def default_iters(cfg) -> int:
    """FPDM's DiT-equivalent iterations per step: depth - pre - post (paper Sec. 4.2)."""
    return _arch(cfg).depth - cfg.model.pre_depth - cfg.model.post_depth


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
        return _flop_matched_plan(cfg, n, steps, iters, values, flops, dit_flops_per_forward)
    return plan_from_sample_config(kind, sc.budget, n, steps=steps, iters=iters, schedule=sc.schedule,
                                   ratio=list(sc.ratio), values=values)


def _flop_matched_plan(cfg, n: int, steps, iters, values, flops, dit_flops: int) -> SamplingPlan:
    """The FPDM plan spending the most FLOPs not above what DiT spends on ``sample.budget`` blocks.
    Its shortfall is under one fixed point iteration; above ``sample.flops_tolerance`` (relative)
    it is refused with how close it gets and the nearest larger budget that is within tolerance."""
    sc = cfg.sample
    depth = _arch(cfg).depth

    def plan_at(budget: int) -> tuple[int, SamplingPlan]:
        target = plan_from_sample_config("dit", budget, depth).steps * dit_flops
        return target, plan_fpdm_flops(target, flops.explicit_per_forward, flops.per_iteration, n_explicit=n,
                                       steps=steps, iters=iters, schedule=sc.schedule, ratio=list(sc.ratio),
                                       values=values)

    def shortfall(target: int, plan: SamplingPlan) -> float:
        return 1.0 - plan.flops_per_image / target

    target, plan = plan_at(sc.budget)
    gap = shortfall(target, plan)
    if gap <= sc.flops_tolerance:
        return plan
    better = None
    for budget in range(sc.budget + depth, 8 * sc.budget + 1, depth):
        try:
            if shortfall(*plan_at(budget)) <= sc.flops_tolerance:
                better = budget
                break
        except BudgetError:
            continue
    hint = f"sample.budget={better} is within it" if better else "a larger sample.budget shrinks it"
    raise BudgetError(
        f"sample.match=flops at sample.budget={sc.budget}: the closest FPDM plan ({plan.steps} steps, "
        f"{plan.total_iters} iterations) spends {int(plan.flops_per_image):,} FLOPs per image, {gap:.2%} below "
        f"DiT's {target:,}, more than sample.flops_tolerance={sc.flops_tolerance}; the gap is under one "
        f"iteration ({flops.per_iteration:,} FLOPs): move sample.budget ({hint}), sample.iters or "
        f"sample.steps, or raise sample.flops_tolerance"
    )


def flop_match_inputs(cfg, model, *, image_size: int, channels: int, num_classes: int) -> tuple:
    """``(FPDM FlopBreakdown, DiT FLOPs per forward)`` for ``sample.match=flops``, both counted by
    ``harness.compute.flops`` on the meta device; ``(None, None)`` when the job is not FLOP-matched."""
    from harness.compute.flops import dit_flops_per_forward, flop_breakdown

    if not (cfg.sample.match == "flops" and cfg.model.name == "fpdm"):
        return None, None
    dit = dit_flops_per_forward(_arch(cfg), image_size=image_size, channels=channels,
                                num_classes=num_classes, learn_sigma=cfg.model.learn_sigma)
    return flop_breakdown(model, image_size), dit


@dataclass(frozen=True)
class StageKeys:
    train: str
    sample: str
    eval: str

    def as_dict(self) -> dict:
        return {"train": self.train, "sample": self.sample, "eval": self.eval}


def _key_by_plan(cfg, sample: dict) -> None:
    """Key FPDM's sample stage by the integer plan it runs, not by the names that produced it: two
    schedules that expand to the same per-step iterations (e.g. ``cosine`` and ``increasing`` at
    2 iterations per step) share one artifact, so a sweep samples that plan once and the report
    shows one row naming both (``reports.merge``)."""
    try:
        planned = sampling_plan(cfg)
    except (BudgetError, ValueError):
        return  # an infeasible budget fails later with its own message; keep the plain key
    for k in ("budget", "steps", "iters", "schedule", "schedule_values", "ratio"):
        sample.pop(k, None)
    sample["plan_iters"] = list(planned.iters)


def _model_identity(cfg) -> dict:
    """``cfg.model`` for the train key, with the architecture knobs replaced by what they change:
    a knob that is null or equal to the preset's value is dropped, so ``model.depth=6`` on the
    6-deep tiny preset trains (and caches) the same model as no knob, and keys of configs without
    knobs are unchanged."""
    model = _plain(cfg.model)
    if cfg.model.name == "dit_diffusers" and cfg.model.get("pretrained_path"):
        return model
    from baselines.presets import get_preset

    base, arch = get_preset(cfg.model.preset), _arch(cfg)
    for knob in ARCHITECTURE_KNOBS:
        if knob in model and getattr(arch, knob) == getattr(base, knob):
            model.pop(knob)
    return model


def stage_keys(cfg) -> StageKeys:
    model = _model_identity(cfg)
    train = {k: v for k, v in _plain(cfg.train).items() if k not in _TRAIN_RUNTIME_KEYS}
    train["budget"] = {k: v for k, v in train["budget"].items() if k not in _TRAIN_BUDGET_CHECK_KEYS}
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
    if cfg.model.name == "fpdm" and cfg.sample.match == "blocks":
        _key_by_plan(cfg, sample)
    # the FLOP counting convention decides a FLOP-matched plan and the FLOP figures cached with samples
    sample["flop_count"] = FLOP_COUNT_VERSION
    sample_key = config_hash("sample", train_key, sample, solver)
    from harness.metrics.choice import extractor_name

    metrics = {**_plain(cfg.metrics), "extractor": extractor_name(cfg)}  # null and its default: one key
    eval_key = config_hash("eval", sample_key, metrics)
    return StageKeys(train_key, sample_key, eval_key)

"""Sampler registry: short names (tpe, random, grid, nsgaii) or a ``_target_`` config.

TPE (Bergstra et al. 2011) and random search for single objectives, NSGA-II (Deb et al. 2002)
for multi-objective sweeps such as FID vs block budget, and a grid for exhaustive ablations.
The sampler is built by the sweeper (not by Hydra's recursive instantiation) so that the seed can
be offset by the number of trials already in the study: a resumed sweep with a fixed seed then
does not re-propose its first points (a hydra-optuna-sweeper pain).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from baselines.registry import Registry

from .search_space import SearchSpace, grid_of

SamplerFactory = Callable[..., optuna.samplers.BaseSampler]
# Unknown names list the valid ones; a dict with ``_target_`` is the other way to name a sampler.
SAMPLERS: Registry[SamplerFactory] = Registry("optuna sampler", key="hydra.sweeper.sampler, or a dict with _target_")
register_sampler, list_samplers, get_sampler = SAMPLERS.register, SAMPLERS.list, SAMPLERS.get


@register_sampler("tpe")
def _tpe(*, seed: int | None, space: SearchSpace, **kw: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, **kw)


@register_sampler("random")
def _random(*, seed: int | None, space: SearchSpace, **kw: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **kw)


@register_sampler("nsgaii")
def _nsgaii(*, seed: int | None, space: SearchSpace, **kw: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **kw)


@register_sampler("grid")
def _grid(*, seed: int | None, space: SearchSpace, **kw: Any) -> optuna.samplers.BaseSampler:
    # An explicit search_space is needed when a custom_search_space suggests the parameters.
    grid = kw.pop("search_space", None) or grid_of(space)
    if not grid:
        raise ValueError(
            "hydra.sweeper.sampler=grid has an empty grid: give hydra.sweeper.params "
            "(choice/range) or sampler.search_space"
        )
    return optuna.samplers.GridSampler(search_space=dict(grid), seed=seed, **kw)


def build_sampler(spec: Any, seed: int | None, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Sampler from a short name, ``{name: ..., **kwargs}`` or ``{_target_: ..., **kwargs}``."""
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        return get_sampler(spec)(seed=seed, space=space)
    if isinstance(spec, Mapping):
        kw = dict(spec)
        if "_target_" in kw:
            if seed is not None:
                kw.setdefault("seed", seed)
            return instantiate(kw)
        if "name" in kw:
            return get_sampler(kw.pop("name"))(seed=kw.pop("seed", seed), space=space, **kw)
    raise ValueError(
        f"hydra.sweeper.sampler={spec!r}: expected one of {list_samplers()}, "
        "{name: <short name>, ...kwargs} or {_target_: optuna.samplers.X, ...kwargs}"
    )

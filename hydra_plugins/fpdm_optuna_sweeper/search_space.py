"""Hydra override grammar -> Optuna distributions, and trial -> override strings.

Hydra's sweep grammar (https://hydra.cc/docs/advanced/override_grammar/extended/) maps onto
Optuna's distributions:

  choice(a, b) / a,b          -> CategoricalDistribution
  range(1, 5)                 -> IntDistribution(1, 4)   (Hydra's stop is exclusive, Optuna's high
                                 is inclusive; hydra-optuna-sweeper sampled 5 here)
  range(0.1, 0.5, 0.1)        -> FloatDistribution(0.1, 0.4, step=0.1)
  shuffle(range(...))         -> CategoricalDistribution of the range's values
  interval(0.1, 1.0)          -> FloatDistribution(0.1, 1.0)
  int(interval(1, 10))        -> IntDistribution(1, 10)
  tag(log, interval(...))     -> the same with log=True

A value that is not a sweep is a fixed override applied to every trial. Conversions are a registry
keyed by the sweep type, not an if/elif chain.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import BaseTrial

_PRIMITIVE = (str, int, float, bool, type(None))
_CONVERTERS: dict[type, Callable[[Override], BaseDistribution]] = {}


def register_sweep_type(sweep_type: type) -> Callable:
    def deco(fn: Callable[[Override], BaseDistribution]) -> Callable:
        _CONVERTERS[sweep_type] = fn
        return fn

    return deco


def _choices(override: Override) -> list[Any]:
    # Optuna stores categorical choices natively only for primitives; lists/dicts become their
    # override-grammar text, which turns back into the same value when passed as an override.
    return [
        v if isinstance(v, _PRIMITIVE) else Transformer.encode(v)
        for v in override.sweep_iterator(transformer=Transformer.identity)
    ]


@register_sweep_type(ChoiceSweep)
def _from_choice(override: Override) -> BaseDistribution:
    return CategoricalDistribution(_choices(override))


@register_sweep_type(RangeSweep)
def _from_range(override: Override) -> BaseDistribution:
    sweep = override.value()
    values = list(override.sweep_iterator(transformer=Transformer.identity))
    if not values:
        raise ValueError(f"{override.input_line!r}: the range is empty; check start/stop/step")
    if sweep.shuffle or sweep.step < 0:
        return CategoricalDistribution(values)
    if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        return IntDistribution(int(values[0]), int(values[-1]), step=int(sweep.step))
    # Compute the inclusive high from the count, not values[-1], to avoid 0.30000000000000004.
    high = float(sweep.start) + float(sweep.step) * (len(values) - 1)
    return FloatDistribution(float(sweep.start), high, step=float(sweep.step))


@register_sweep_type(IntervalSweep)
def _from_interval(override: Override) -> BaseDistribution:
    sweep = override.value()
    log = "log" in sweep.tags
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return IntDistribution(sweep.start, sweep.end, log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def distribution_from_override(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``key=choice(...)`` etc.)."""
    kind = type(override.value())
    if kind not in _CONVERTERS:
        raise ValueError(
            f"{override.input_line!r}: {kind.__name__} is not supported by the Optuna sweeper; "
            f"use one of {sorted(t.__name__ for t in _CONVERTERS)}"
        )
    try:
        return _CONVERTERS[kind](override)
    except ValueError as err:  # e.g. Optuna rejecting a log interval that starts at 0
        raise ValueError(f"{override.input_line!r}: {err}") from err


@dataclass
class SearchSpace:
    """Distributions by Optuna param name, the override key of each, and fixed overrides."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # param name -> override key (+x, a@b)
    fixed: list[str] = field(default_factory=list)


def _param_name(override: Override) -> str:
    # "+model.x" and "model.x" are the same parameter; the prefix only matters for the override.
    return override.get_key_element().lstrip("+~")


def parse_search_space(params: Mapping[str, Any] | None, arguments: Sequence[str] = ()) -> SearchSpace:
    """Build the search space from ``hydra.sweeper.params`` then the command line (which wins)."""
    # Strings are grammar ("choice(a,b)"); YAML numbers/bools are fixed values.
    lines = [f"{k}={v if isinstance(v, str) else format_value(v)}" for k, v in (params or {}).items()]
    parser = OverridesParser.create()
    space = SearchSpace()
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides(lines + list(arguments)):
        name = _param_name(override)
        space.distributions.pop(name, None)
        fixed.pop(name, None)
        if override.is_sweep_override():
            space.distributions[name] = distribution_from_override(override)
            space.keys[name] = override.get_key_element()
        else:
            fixed[name] = override.input_line
    space.fixed = list(fixed.values())
    return space


_SIMPLE = re.compile(r"^[A-Za-z_./:][A-Za-z0-9_./:\-]*$")
_KEYWORDS = {"true", "false", "null", "nan", "inf", "-inf"}


def format_value(value: Any) -> str:
    """A value as override-grammar text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _SIMPLE.match(value) and value.lower() not in _KEYWORDS:
            return value
        # Hydra quoted strings only treat a backslash as an escape before a quote.
        return "'" + value.replace("'", "\\'") + "'"
    return Transformer.encode(value)  # list / dict in the override grammar


def format_override(key: str, value: Any) -> str:
    return f"{key}={format_value(value)}"


_SUGGEST: dict[type, Callable[[BaseTrial, str, Any], Any]] = {
    CategoricalDistribution: lambda t, n, d: t.suggest_categorical(n, d.choices),
    IntDistribution: lambda t, n, d: t.suggest_int(n, d.low, d.high, step=d.step, log=d.log),
    FloatDistribution: lambda t, n, d: t.suggest_float(n, d.low, d.high, step=d.step, log=d.log),
}


def suggest_overrides(
    trial: BaseTrial,
    space: SearchSpace,
    custom: Callable[[BaseTrial], Mapping[str, Any]] | None = None,
) -> list[str]:
    """Suggest every parameter of the space on ``trial`` and return the job's overrides."""
    chosen: dict[str, str] = {}
    for name, dist in space.distributions.items():
        value = _SUGGEST[type(dist)](trial, name, dist)
        chosen[name] = format_override(space.keys[name], value)
    if custom is not None:
        extra = custom(trial)
        if not isinstance(extra, Mapping):
            raise TypeError(f"custom_search_space must return a dict of overrides, got {type(extra).__name__}")
        for key, value in extra.items():
            chosen[str(key).lstrip("+~")] = format_override(str(key), value)
    fixed = [o for o in space.fixed if o.split("=", 1)[0].lstrip("+~") not in chosen]
    return fixed + list(chosen.values())


def grid_of(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid of a discrete space (for GridSampler); continuous intervals have none."""
    grid: dict[str, list[Any]] = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[name] = [round(dist.low + i * dist.step, 12) for i in range(n)]
        else:
            raise ValueError(
                f"hydra.sweeper.params.{name}: the grid sampler needs a discrete space "
                f"(choice or range), got {dist}; use choice(...)/range(...) or another sampler"
            )
    return grid


def load_callable(dotted: str) -> Callable:
    """Import ``"package.module.fn"``."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"custom_search_space={dotted!r}: expected a dotted path 'module.fn'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"custom_search_space={dotted!r} cannot be imported: {err}") from err
    if not callable(fn):
        raise ValueError(f"custom_search_space={dotted!r} is not callable")
    return fn

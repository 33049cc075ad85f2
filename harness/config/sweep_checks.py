"""Checks that need the whole sweep, not one job: every comparison baseline (``compare.*``) that a
report will pair settings against must be one of the values the sweep runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness.config.validate import ConfigError

# compare key -> (the override that sets it, the job's value along that axis or None if it has none)
_AXES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model": ("model", lambda c: c.model.name),
    "schedule": ("sample.schedule", lambda c: c.sample.schedule if c.model.name == "fpdm" else None),
    "reuse": ("sample.reuse", lambda c: bool(c.sample.reuse) if c.model.name == "fpdm" else None),
    "solver": ("solver", lambda c: c.solver.name if c.model.name == "fpdm" else None),
    "depth": (
        "model.pre_depth/model.post_depth",
        lambda c: [int(c.model.pre_depth), int(c.model.post_depth)] if c.model.name == "fpdm" else None,
    ),
}


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def check_comparisons(cfgs: Sequence[Any]) -> None:
    """Raise ``ConfigError`` when an axis the sweep varies does not include its ``compare`` baseline."""
    if len(cfgs) < 2:
        return
    compare = cfgs[0].compare
    for key, (override, value_of) in _AXES.items():
        base = compare.get(key)
        if base is None:
            continue
        base = list(base) if key == "depth" else base
        values = [v for v in (value_of(c) for c in cfgs) if v is not None]
        seen = sorted({_text(v) for v in values})
        if len(seen) >= 2 and _text(base) not in seen:
            raise ConfigError(
                f"compare.{key}={_text(base)} is not in the sweep ({override} takes {', '.join(seen)}); "
                f"add it to the sweep or set compare.{key}=null"
            )

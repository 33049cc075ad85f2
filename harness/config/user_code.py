"""User code by import, not by fork: ``run.imports=[my_pkg, ...]`` and the ``fpdm_bench.plugins``
entry-point group.

A user's package registers what it adds through the project's registries when it is imported
(``harness.diffusion.samplers.register_sampler``, ``fpdm.schedules.register_schedule``,
``harness.metrics.extractors.register_extractor``, ``fpdm.solvers.register_solver`` ...; see
docs/extending.md). The harness imports those modules before it checks a config, in every command
(``harness.run``, ``harness.inspect``, ``harness.sample``, and in each job of a sweep, which may run
in another process or on another node), so a name a user registered is valid wherever one of the
project's own is. An installed distribution can instead declare an entry point in the group
``fpdm_bench.plugins`` (``[project.entry-points."fpdm_bench.plugins"] my_pkg = "my_pkg.register"``);
every such module is imported once, before the first config is checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "fpdm_bench.plugins"


class UserCodeError(ImportError):
    """A module named by ``run.imports`` or an entry point that does not import (one line)."""


def import_user_modules(names: Iterable[str]) -> None:
    """Import each module of ``run.imports`` (its registrations run on import; a second import is free)."""
    for name in names:
        try:
            importlib.import_module(str(name))
        except Exception as exc:  # any failure inside the user's module: name it, not the project
            raise UserCodeError(
                f"run.imports: {name} does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "install the package or put its folder on PYTHONPATH"
            ) from None


@lru_cache(maxsize=1)
def load_entry_points() -> tuple[str, ...]:
    """Import every module declared in the ``fpdm_bench.plugins`` entry-point group, once."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            raise UserCodeError(
                f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) does not import "
                f"({type(exc).__name__}: {exc}); fix or uninstall the package that declares it"
            ) from None
        loaded.append(ep.name)
    return tuple(loaded)

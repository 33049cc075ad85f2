"""``Registry``: the one name -> object table behind every ``register_x`` / ``get_x`` / ``list_x``.

Presets, solvers, schedules, training modes, samplers, datasets, feature extractors, MSE
weightings, model builders, report tables and figures and the Optuna sweeper's samplers all use
it, so they agree on the two things a user meets: registering a name twice is refused with
``DuplicateNameError`` (a ``ValueError``), and an unknown name raises ``KeyError`` whose message
lists the valid names (the config key it came from, when given, tells the user what to change).

Why here: ``baselines`` is the lowest layer of the project (``fpdm`` builds on its layers and
presets; ``harness``, ``reports`` and ``hydra_plugins`` sit above both), so this is the one home
every package can import without an upward arrow (docs/architecture.md, "Layers"). It imports
nothing from the project.

    >>> solvers = Registry("solver", key="solver")
    >>> @solvers.register("picard")
    ... def picard(f, z0): ...
    >>> solvers.list()
    ['picard']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class DuplicateNameError(ValueError):
    """A name registered twice (the second registration would silently replace the first)."""


class Registry(Generic[T]):
    """Named objects of one kind. ``register`` (decorator or call), ``get``, ``list``.

    ``kind`` names the objects in messages ("solver"); ``key`` is the config key users set
    ("sample.schedule"); ``sort`` lists names alphabetically (else in registration order, for
    tables whose order means something, such as presets from small to large).
    """

    def __init__(self, kind: str, *, key: str | None = None, sort: bool = True) -> None:
        self.kind, self.key, self.sort = kind, key, sort
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj=None):
        """``@reg.register("name")`` on a function or class, or ``reg.register("name", obj)``."""
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._items:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered; pick another name")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            where = f" ({self.key})" if self.key else ""
            raise KeyError(f"unknown {self.kind} {name!r}{where}; valid names: {', '.join(self.list())}") from None

    def remove(self, name: str) -> T:
        """Drop ``name`` (for tests that register a temporary entry)."""
        return self._items.pop(name)

    def values(self) -> list[T]:
        return [self._items[n] for n in self.list()]

    def list(self) -> list[str]:
        return sorted(self._items) if self.sort else list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.list()})"

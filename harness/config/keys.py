"""The keys of the typed config, and the one-line message for a key that is not one of them.

The config is a typed schema (harness/config/schema.py), so every settable key is known before
anything runs. Hydra refuses an unknown key given plainly (``sample.budgt=60``) but accepts it with
its append prefix (``+sample.budgt=60``): the key is added and the job runs without the setting
the user meant. Here both are refused, with the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable

from harness.config.schema import SOLVER_CONFIGS, Config


class UnknownKeyError(ValueError):
    """A key that the typed config does not have (the message names the nearest valid key)."""


def _fields(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def section_keys(path: str, solver: str = "picard") -> list[str] | None:
    """The keys of the typed node at ``path`` ('' = the root); None where the node is free-form
    (``sweep``, a plain value) so any key below it is the user's."""
    cls: type = Config
    for part in [p for p in path.split(".") if p]:
        fields = _fields(cls)
        if part not in fields:
            return []
        nxt = SOLVER_CONFIGS.get(solver) if (cls is Config and part == "solver") else fields[part]
        if not (isinstance(nxt, type) and dataclasses.is_dataclass(nxt)):
            return None
        cls = nxt
    return list(_fields(cls))


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    """``sample.budgt is not a setting ...; did you mean sample.budget? valid sample keys: ...``."""
    parent, _, leaf = key.rpartition(".")
    known = list(known)
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = f"valid {parent} keys" if parent else "valid top-level keys"
    return f"{key} is not a setting of this config; {hint}{where}: {', '.join(known)}"


def check_key(key: str, solver: str = "picard") -> None:
    """Raise ``UnknownKeyError`` if ``key`` (dotted, no prefix) is not in the typed schema. Keys
    under ``hydra.`` and under free-form nodes are not checked (Hydra and the user own them)."""
    if key.startswith("hydra.") or key == "hydra":
        return
    parts = key.split(".")
    for depth in range(1, len(parts) + 1):
        parent = ".".join(parts[: depth - 1])
        known = section_keys(parent, solver)
        if known is None:
            return
        if parts[depth - 1] not in known:
            raise UnknownKeyError(unknown_key_message(".".join(parts[:depth]), known))


def check_appended_overrides(overrides: Iterable[str], solver: str = "picard") -> None:
    """Refuse ``+key=value`` (Hydra's append) for a key the typed config does not have: in a typed
    config an appended key is a typo, which Hydra would otherwise add silently. ``++`` (force add
    or override) and keys under ``hydra.`` are left to Hydra."""
    for override in overrides:
        if not override.startswith("+") or override.startswith("++") or "=" not in override:
            continue
        key = override[1:].split("=", 1)[0].strip()
        if key.startswith("hydra.") or "/" in key:  # a config group (`+sweep=...`) is not a key
            continue
        check_key(key, solver)

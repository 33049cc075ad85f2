"""Model size presets (DiT Table 1): depth, hidden size and heads per size, times patch size.

``tiny`` is ours: a few-second CPU model for the embedded digits data set and the test suite.
FPDM takes the hidden size, heads and patch of the same preset; its depth is the DiT-equivalent
explicit depth used to match budgets (an FPDM with ``pre + post`` explicit blocks spends
``depth - pre - post`` iterations per step at the DiT-equivalent budget).
"""
from __future__ import annotations

from dataclasses import dataclass

from baselines.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


PRESETS: Registry[Preset] = Registry("preset", key="model.preset", sort=False)  # small to large
get_preset, list_presets = PRESETS.get, PRESETS.list


def register_preset(preset: Preset) -> Preset:
    return PRESETS.register(preset.name, preset)


_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
register_preset(Preset("tiny", depth=6, hidden_size=64, num_heads=4, patch_size=2))
register_preset(Preset("tiny/1", depth=6, hidden_size=64, num_heads=4, patch_size=1))
for _size, (_depth, _hidden, _heads) in _SIZES.items():
    for _patch in (2, 4, 8):
        register_preset(Preset(f"{_size}/{_patch}", _depth, _hidden, _heads, _patch))

"""Model size presets (DiT Table 1): depth, hidden size and heads per size, times patch size.

``tiny`` is ours: a few-second CPU model for the embedded digits data set and the test suite.
FPDM takes the hidden size, heads and patch of the same preset; its depth is the DiT-equivalent
explicit depth used to match budgets (an FPDM with ``pre + post`` explicit blocks spends
``depth - pre - post`` iterations per step at the DiT-equivalent budget).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


ARCHITECTURE_KNOBS = ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio")


def resolve_preset(preset: str | Preset, **knobs) -> Preset:
    """The preset with any architecture knob that is not None replacing its value (DiT Table 1
    sizes as a starting point for depth / width / head / patch ablations). Knobs equal to the
    preset's values give a preset equal to it, so caches keyed on the result are shared."""
    base = preset if isinstance(preset, Preset) else get_preset(preset)
    unknown = set(knobs) - set(ARCHITECTURE_KNOBS)
    if unknown:
        raise KeyError(f"unknown architecture knob(s) {sorted(unknown)}; valid: {', '.join(ARCHITECTURE_KNOBS)}")
    changes = {k: v for k, v in knobs.items() if v is not None}
    if "mlp_ratio" in changes:
        changes["mlp_ratio"] = float(changes["mlp_ratio"])
    return replace(base, **changes) if changes else base


_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
register_preset(Preset("tiny", depth=6, hidden_size=64, num_heads=4, patch_size=2))
register_preset(Preset("tiny/1", depth=6, hidden_size=64, num_heads=4, patch_size=1))
for _size, (_depth, _hidden, _heads) in _SIZES.items():
    for _patch in (2, 4, 8):
        register_preset(Preset(f"{_size}/{_patch}", _depth, _hidden, _heads, _patch))

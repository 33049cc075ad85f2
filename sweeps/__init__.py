"""Sweep presets, one YAML each in ``sweeps/sweep/``, selected with ``sweep=NAME``.

Hydra finds them through ``hydra.searchpath: [pkg://sweeps]`` in harness/config/config.yaml (the
folder is named after the config group, ``sweep``). Each file starts with ``# @package _global_``
and sets ``sweep: NAME`` (its own name), which every job records."""

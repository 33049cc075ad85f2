"""Sweep presets, one YAML each, selected with `sweep=NAME` (loaded by harness.config)."""

"""Hydra YAML configs of the harness (primary config: config.yaml)."""

"""Plumbing under every room: atomic file writes, JSON and hashing helpers, torch.distributed
set-up. Imports nothing from the project above ``fpdm``/``baselines``."""

"""Explicit baselines: the parameter-exact DiT and an adapter for diffusers' DiT."""

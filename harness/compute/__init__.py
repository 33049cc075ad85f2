"""Compute accounting: sampling plans under a block or FLOP budget, FLOPs and parameters by part,
training-memory estimates. Pure functions of a config or a model; no stage runs here."""

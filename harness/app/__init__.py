"""Entry points: the Hydra app (``python -m harness.run``), ``inspect``, the command-line pre-check,
the multirun callbacks and the console table. The top layer: imports any room below, none imports it."""

"""``hydra/launcher=parallel``: hydra-joblib-launcher with the project's Ctrl-C / kill semantics."""

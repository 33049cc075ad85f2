"""Hydra search-path plugin: ``sweep=NAME`` finds the presets in ``sweeps/sweep/NAME.yaml``.

A plugin rather than ``hydra.searchpath`` in the primary config, because Hydra honours that key
only in the primary config: a user whose own primary config builds on ours (``--config-path`` /
``--config-name`` with ``defaults: [config]``) would otherwise lose the presets (docs/extending.md).
Hydra discovers it in the ``hydra_plugins`` namespace package, like the Optuna sweeper.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class FpdmSweepsSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="fpdm-bench-sweeps", path="pkg://sweeps")

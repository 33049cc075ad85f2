"""``harness.models``: the public API for models outside the harness.

``model, cfg = harness.models.load(record_or_dir)`` returns a trained job's EMA model (eval mode)
and its resolved config (``harness.app.loading``); ``build_model`` builds one from a config
(``harness.stages.models``). Kept at this path because the README and users' scripts call it."""

from harness.app.loading import LoadError, load
from harness.stages.models import build_model, list_models, model_architecture

__all__ = ["LoadError", "build_model", "list_models", "load", "model_architecture"]

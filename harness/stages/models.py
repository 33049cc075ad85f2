"""Model factory: builds DiT, FPDM or the diffusers DiT adapter from the resolved config, as a
registry (one builder per ``model.name``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from baselines.registry import Registry

if TYPE_CHECKING:
    from baselines.presets import Preset

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", key="model", sort=False)
register_model, list_models = MODELS.register, MODELS.list


def model_architecture(model_cfg: Any) -> Preset:
    """The resolved architecture (a ``baselines.presets.Preset``): ``model.preset`` with the
    knobs ``model.depth``, ``model.hidden_size``, ``model.num_heads``, ``model.patch_size`` and
    ``model.mlp_ratio`` applied where they are not null. For FPDM ``depth`` is the DiT-equivalent
    depth that sets its default iterations (depth - pre - post, paper Sec. 4.2)."""
    from baselines.presets import ARCHITECTURE_KNOBS, resolve_preset

    return resolve_preset(model_cfg.preset, **{k: getattr(model_cfg, k, None) for k in ARCHITECTURE_KNOBS})


def build_model(model_cfg: Any, train_cfg: Any, *, image_size: int, channels: int, num_classes: int) -> nn.Module:
    builder = MODELS.get(model_cfg.name)
    model = builder(model_cfg, train_cfg, image_size=image_size, channels=channels, num_classes=num_classes)
    model.grad_checkpointing = bool(getattr(model_cfg, "grad_checkpointing", False))
    return model


@register_model("dit")
def _dit(model_cfg, train_cfg, *, image_size, channels, num_classes):
    from baselines.dit import build_dit

    return build_dit(
        model_architecture(model_cfg),
        input_size=image_size,
        in_channels=channels,
        num_classes=num_classes,
        learn_sigma=model_cfg.learn_sigma,
        class_dropout=model_cfg.class_dropout,
    )


@register_model("fpdm")
def _fpdm(model_cfg, train_cfg, *, image_size, channels, num_classes):
    from fpdm.model import build_fpdm
    from harness.compute.train_compute import implicit_train_spec

    spec = implicit_train_spec(train_cfg)
    return build_fpdm(
        model_architecture(model_cfg),
        input_size=image_size,
        in_channels=channels,
        num_classes=num_classes,
        pre_depth=model_cfg.pre_depth,
        post_depth=model_cfg.post_depth,
        learn_sigma=model_cfg.learn_sigma,
        class_dropout=model_cfg.class_dropout,
        pre_post_timestep_conditioning=model_cfg.pre_post_timestep_conditioning,
        train_spec=spec,
    )


@register_model("dit_diffusers")
def _dit_diffusers(model_cfg, train_cfg, *, image_size, channels, num_classes):
    from baselines.diffusers_dit import build_diffusers_dit

    return build_diffusers_dit(model_cfg, image_size=image_size, channels=channels, num_classes=num_classes)

"""Adapter around diffusers' ``DiTTransformer2DModel`` with the project's ``forward(x, t, y)``
contract, so a user can evaluate released DiT weights (diffusers format, from a local folder: no
download ever) as a baseline in the same harness.

Parameter counts differ from the reference DiT: diffusers gives each block its own copy of the
timestep + class embedding (749,826,464 parameters at XL/2 vs 674,834,720, measured with diffusers' ``DiTTransformer2DModel``), so reports label
this model's count as ``diffusers layout``.

It runs diffusers' DiT as diffusers defines it: timestep frequencies ``10000 ** (-i / 127)`` and the
MLP's LayerNorm eps from ``norm_eps`` (default 1e-5), where the official DiT code has ``-i / 128`` and
1e-6. baselines/diffusers_weights.py converts our DiT's weights both ways and sets DiT's two
(docs/extending.md, "DiT weights to and from diffusers").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from baselines.contract import DiffusionBackbone, ForwardTrace
from baselines.presets import ARCHITECTURE_KNOBS, resolve_preset

if TYPE_CHECKING:
    from typing import Any

PARAM_COUNT_NOTE = "diffusers layout: each block repeats the timestep+class embedding"


class DiffusersDiT(DiffusionBackbone):
    """``DiTTransformer2DModel`` behind the project's contract (baselines/contract.py). Its attention
    is diffusers' (``transformer.set_attn_processor``), and it makes no random draw of its own:
    label dropout comes from ``drop_labels`` only, so ``generator`` is accepted and unused."""

    param_parts = {"transformer": ("transformer",)}
    param_count_note = PARAM_COUNT_NOTE

    def __init__(self, transformer: nn.Module, learn_sigma: bool):
        super().__init__()
        self.transformer = transformer
        cfg = transformer.config
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = cfg.patch_size
        self.num_classes = cfg.num_embeds_ada_norm
        self.depth = cfg.num_layers
        self.grad_checkpointing = False
        _disable_internal_label_dropout(transformer)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        drop_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        trace: ForwardTrace | None = None,
    ) -> torch.Tensor:
        if drop_labels is not None:
            y = torch.where(drop_labels.to(y.device), torch.full_like(y, self.num_classes), y)
        if self.grad_checkpointing and self.training:
            self.transformer.enable_gradient_checkpointing()
        t = t.to(x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if trace is not None:
            trace.record_passes(self.depth)
        return self.transformer(hidden_states=x, timestep=t, class_labels=y).sample


def _disable_internal_label_dropout(transformer: nn.Module) -> None:
    """Label dropout happens once, in ``forward`` from the harness's seeded ``drop_labels``.

    diffusers' ``LabelEmbedding`` (one per block in its DiT layout) would otherwise drop another
    ``dropout_prob`` (0.1) of the labels in train mode, independently per block and from the global
    RNG: about 19% dropped in all, blocks disagreeing on the label, and a resumed run no longer
    bit-identical. Its table keeps the null row (it was sized with dropout on), which the forced
    drops use."""
    from diffusers.models.embeddings import LabelEmbedding

    for module in transformer.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0


def _transformer_folder(path: Path) -> Path:
    """Accept the transformer folder itself or a pipeline folder holding ``transformer/``."""
    if (path / "config.json").is_file():
        return path
    if (path / "transformer" / "config.json").is_file():
        return path / "transformer"
    raise FileNotFoundError(
        f"model.pretrained_path={path} holds no diffusers DiT (no config.json there or in transformer/): "
        "download e.g. facebook/DiT-XL-2-256 on a machine with network and set model.pretrained_path to that folder"
    )


def uses_pretrained_weights(model_cfg: Any) -> bool:
    """True for ``model=dit_diffusers`` with ``model.pretrained_path``: the weights are loaded, so
    there is nothing to train and the depth is known only once they are (one check for every caller)."""
    return model_cfg.name == "dit_diffusers" and bool(model_cfg.pretrained_path)


def build_diffusers_dit(
    model_cfg: Any, *, image_size: int, channels: int, num_classes: int, load_weights: bool = True
) -> DiffusersDiT:
    """The adapter for ``model_cfg``: released weights from ``model.pretrained_path`` (with
    ``load_weights=False`` only their ``config.json``, for shape-only accounting), else a fresh
    transformer of the resolved preset."""
    from diffusers import DiTTransformer2DModel

    if model_cfg.pretrained_path:
        folder = _transformer_folder(Path(model_cfg.pretrained_path).expanduser())
        if load_weights:
            transformer = DiTTransformer2DModel.from_pretrained(str(folder), local_files_only=True)
        else:
            transformer = DiTTransformer2DModel.from_config(DiTTransformer2DModel.load_config(str(folder)))
        learn_sigma = (transformer.config.out_channels or channels) == 2 * transformer.config.in_channels
        return DiffusersDiT(transformer, learn_sigma)
    p = resolve_preset(model_cfg.preset, **{k: getattr(model_cfg, k, None) for k in ARCHITECTURE_KNOBS})
    out_channels = 2 * channels if model_cfg.learn_sigma else channels
    transformer = DiTTransformer2DModel(
        num_attention_heads=p.num_heads,
        attention_head_dim=p.hidden_size // p.num_heads,
        in_channels=channels,
        out_channels=out_channels,
        num_layers=p.depth,
        sample_size=image_size,
        patch_size=p.patch_size,
        num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
    )
    return DiffusersDiT(transformer, model_cfg.learn_sigma)

"""The DiT baseline (Peebles & Xie, ICCV 2023), parameter-exact.

DiT-XL/2 on 32x32x4 latents with 1000 classes and learned sigma has 674,834,720 trainable
parameters plus a 294,912-element position buffer (docs/paper-notes.md §8.1): the position table is a
buffer here, not a frozen Parameter as in the original code.
"""
from __future__ import annotations

import torch
from torch import nn

from baselines.contract import AttentionFn, DiffusionBackbone, ForwardTrace
from baselines.layers import (
    DiTBlock,
    FinalLayer,
    add_embedders,
    dit_initialize,
    run_block,
    unpatchify,
)
from baselines.presets import Preset, resolve_preset


class DiT(DiffusionBackbone):
    """Explicit transformer of ``depth`` adaLN-Zero blocks, every block conditioned on t + y.
    ``attention`` replaces ``scaled_dot_product_attention`` in every block (``AttentionFn``)."""

    # parameter groups for accounting: part name -> attribute prefixes
    param_parts = {
        "embedders": ("x_embedder", "t_embedder", "y_embedder"),
        "blocks": ("blocks",),
        "final": ("final_layer",),
    }

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        class_dropout: float = 0.1,
        learn_sigma: bool = True,
        attention: AttentionFn | None = None,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"image size {input_size} is not divisible by patch size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.depth = depth
        self.grad_checkpointing = False

        add_embedders(self, input_size=input_size, in_channels=in_channels, hidden_size=hidden_size,
                      patch_size=patch_size, num_classes=num_classes, class_dropout=class_dropout)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attention)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        dit_initialize(self)

    @property
    def num_explicit_blocks(self) -> int:
        return self.depth

    def block_passes(self, iters: int | None = None) -> int:
        """Transformer-block passes of one forward (paper Sec. 4.2): the depth."""
        return self.depth

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, drop_labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None, trace: ForwardTrace | None = None) -> torch.Tensor:
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training, generator, force_drop=drop_labels)
        for block in self.blocks:
            h = run_block(block, h, c, self.grad_checkpointing and self.training)
        if trace is not None:
            trace.record_passes(self.depth)
        return unpatchify(self.final_layer(h, c), self.patch_size, self.out_channels)


def build_dit(preset: str | Preset, *, input_size: int, in_channels: int, num_classes: int, learn_sigma: bool = True,
              class_dropout: float = 0.1, depth: int | None = None, attention: AttentionFn | None = None) -> DiT:
    p = resolve_preset(preset)  # a preset name, or a Preset with architecture knobs applied
    return DiT(input_size=input_size, in_channels=in_channels, num_classes=num_classes, hidden_size=p.hidden_size,
               depth=depth or p.depth, num_heads=p.num_heads, patch_size=p.patch_size, mlp_ratio=p.mlp_ratio,
               class_dropout=class_dropout, learn_sigma=learn_sigma, attention=attention)

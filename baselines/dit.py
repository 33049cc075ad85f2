"""The DiT baseline (Peebles & Xie, ICCV 2023), parameter-exact.

DiT-XL/2 on 32x32x4 latents with 1000 classes and learned sigma has 674,834,720 trainable
parameters plus a 294,912-element position buffer (docs/paper-notes.md §8.1): the position table is a
buffer here, not a frozen Parameter as in the original code.
"""

from __future__ import annotations

import torch
from torch import nn

from baselines.contract import AttentionFn, ForwardTrace
from baselines.layers import DiTBlock, FinalLayer, PatchDenoiser, dit_initialize, run_block
from baselines.presets import Preset, resolve_preset


class DiT(PatchDenoiser):
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
        super().__init__(
            input_size=input_size,
            in_channels=in_channels,
            hidden_size=hidden_size,
            patch_size=patch_size,
            num_classes=num_classes,
            class_dropout=class_dropout,
            learn_sigma=learn_sigma,
        )
        self.depth = depth
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        dit_initialize(self)

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
        h, t_emb, y_emb = self.embed(x, t, y, drop_labels, generator)  # (B, N, D), (B, D), (B, D)
        c = t_emb + y_emb
        for block in self.blocks:
            h = run_block(block, h, c, self.grad_checkpointing and self.training)
        if trace is not None:
            trace.record_passes(self.depth)
        return self.unpatchify_output(h, c)


def build_dit(
    preset: str | Preset,
    *,
    input_size: int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool = True,
    class_dropout: float = 0.1,
    depth: int | None = None,
    attention: AttentionFn | None = None,
) -> DiT:
    p = resolve_preset(preset)  # a preset name, or a Preset with architecture knobs applied
    return DiT(
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        hidden_size=p.hidden_size,
        depth=depth or p.depth,
        num_heads=p.num_heads,
        patch_size=p.patch_size,
        mlp_ratio=p.mlp_ratio,
        class_dropout=class_dropout,
        learn_sigma=learn_sigma,
        attention=attention,
    )

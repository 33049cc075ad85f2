"""The contract every diffusion backbone of the project implements (DiT, FPDM, the diffusers adapter).

One forward, ``model(x, t, y, *, drop_labels=None, generator=None, trace=None, **model_kwargs)``:

- ``x`` ``(B, C, H, W)`` float, ``t`` ``(B,)`` timesteps in ``[0, num_train_timesteps)``, ``y``
  ``(B,)`` long labels (``num_classes`` is the null label of classifier-free guidance);
- returns ``(B, 2C, H, W)`` with learned sigma (prediction, then the variance interpolation value,
  as in DiT / IDDPM), else ``(B, C, H, W)``;
- ``drop_labels`` (bool per sample) replaces the label-dropout draw; ``generator`` makes every
  other random draw of the call (label dropout without ``drop_labels``, FPDM's training-time
  iteration counts, paper Sec. 3.4), so nothing random is set on the model between calls;
- ``trace``: a ``ForwardTrace`` the call fills with what it did (block passes; FPDM adds its solve,
  ``fpdm.model.SolveTrace``). The result of a call comes back through the object its caller owns,
  never through an attribute of the model, so two interleaved calls cannot overwrite each other;
- keywords a model does not take raise ``TypeError`` (a misspelt option never passes silently).

Accounting hooks (paper Sec. 4.2 counts transformer-block passes): ``num_explicit_blocks``,
``block_passes(iters)``, ``param_parts`` (part name -> attribute prefixes), and the capability flags
``is_implicit`` and ``supports_solution_reuse``. docs/architecture.md ("Model contract") is the
reader's version of this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

# (q, k, v) each (B, heads, N, head_dim) -> (B, heads, N, head_dim), the signature of
# torch.nn.functional.scaled_dot_product_attention; a model's attention is chosen by passing one
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ForwardTrace:
    """What one forward call did, filled by the model (one trace per call: a call overwrites it)."""

    block_passes: int = 0  # transformer-block passes of the call (explicit blocks + fixed point evaluations)

    def record_passes(self, passes: int) -> None:
        self.block_passes = int(passes)


class DiffusionBackbone(nn.Module, ABC):
    """Base class of the project's denoisers; see the module docstring for the call contract."""

    is_implicit: ClassVar[bool] = False
    supports_solution_reuse: ClassVar[bool] = False
    param_parts: ClassVar[dict[str, tuple[str, ...]]]  # part name -> attribute prefixes (parameter counts)

    in_channels: int
    out_channels: int
    learn_sigma: bool
    patch_size: int
    num_classes: int
    grad_checkpointing: bool
    depth: int  # blocks of an explicit model, read by the two default hooks below (FPDM overrides them)

    @property
    def num_explicit_blocks(self) -> int:
        """Blocks run once per forward (DiT: depth; FPDM overrides: pre + post)."""
        return self.depth

    def block_passes(self, iters: int | None = None) -> int:
        """Transformer-block passes of one forward (paper Sec. 4.2): an explicit model runs each of
        its blocks once; FPDM overrides (pre + ``iters`` fixed point evaluations + post)."""
        return self.num_explicit_blocks

    @abstractmethod
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
        """The denoiser's output for ``(x, t, y)``; see the module docstring."""

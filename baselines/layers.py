"""DiT building blocks shared by the DiT baseline and FPDM.

Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023), Sec. 3.2: patch embedding
with a fixed 2-D sin-cos position table, timestep and label embedders (label dropout for
classifier-free guidance with a null class), adaLN-Zero transformer blocks and the adaLN final layer.
FPDM (Bai & Melas-Kyriazi, CVPR 2024, Sec. 3.2) builds its pre, fixed point and post layers from
the same block, so both families share this module and their parameter counts stay comparable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from baselines.contract import AttentionFn, DiffusionBackbone


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x (B, N, D), shift/scale (B, D). One fused multiply-add over the tokens
    (``addcmul``) instead of a multiply and an add; the (B, D) ``1 + scale`` is negligible."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (B, N, D) via a strided convolution."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous once here: a transposed view would propagate its layout through every residual
        # add, and each LayerNorm would then copy its input to make it contiguous
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (256 frequencies) followed by a 2-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra row, the null label (index ``num_classes``) used for classifier-free
    guidance and label dropout. The extra row always exists (as in the FPDM code), so an
    unconditional model is ``num_classes=1`` (2 rows: docs/paper-notes.md §8.1, 85,349,408 parameters)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(
        self,
        labels: torch.Tensor,
        train: bool,
        generator: torch.Generator | None = None,
        force_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``force_drop`` (bool, per sample) replaces the random draw: the training loop draws it over
        the global batch so that data-parallel ranks drop exactly what one process would."""
        if force_drop is not None:
            labels = torch.where(force_drop.to(labels.device), torch.full_like(labels, self.num_classes), labels)
        elif train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# On CPU, up to this many tokens per dtype the written-out softmax(q k^T / sqrt(d)) v is faster than
# the fused CPU kernel, whose per-call cost dominates at few tokens (at the digits shape it took
# 46-50% of a bf16 train step). Time written out / fused, 2 threads:
# - bf16 train step, interleaved A/B (benchmarks/bench_models.py shapes): 16 tokens, width 128,
#   batch 128: 0.50x; width 64: 0.83x; 256 tokens (S/2): 0.87x.
# - fp32, attention alone in a block's layout (benchmarks/bench_kernels.py, "attention"), forward +
#   backward / no grad: 16 tokens 0.61-0.63x / 0.38-0.48x, 64 tokens 0.83x / 0.70x, 256 tokens
#   0.90-1.12x / 1.19-1.25x (head widths 32 and 64); a digits fp32 train step (16 tokens, width
#   128): 0.89x (FPDM) and 0.93x (DiT), its eval forward 0.88-0.91x (interleaved A/B, a one-off
#   script; docs/performance.md).
# float64 keeps the fused kernel (exactness checks use it).
WRITTEN_OUT_MAX_TOKENS = {torch.bfloat16: 256, torch.float16: 256, torch.float32: 64}


def default_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention``, except on CPU for short sequences (``WRITTEN_OUT_MAX_TOKENS``
    per dtype), where the same computation written out avoids the fused kernel's per-call cost
    (same math, rounding aside)."""
    if q.device.type != "cpu" or q.shape[-2] > WRITTEN_OUT_MAX_TOKENS.get(q.dtype, -1):
        return F.scaled_dot_product_attention(q, k, v)
    return written_out_attention(q, k, v)


def written_out_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as two batched products and a softmax (no fused kernel)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1) @ v


# GELU's tanh form, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), is the same function
# as x * sigmoid(2u) (tanh(u) = 2 sigmoid(2u) - 1), and 2u = x (K0 + K1 x^2)
_GELU_K0 = 2 * math.sqrt(2 / math.pi)
_GELU_K1 = _GELU_K0 * 0.044715


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU in its tanh form, as DiT's blocks use it (``F.gelu(x, approximate="tanh")``).

    On CPU in fp32/fp64, where no gradient flows through it (sampling, S-JFB's no-grad iterations,
    Sec. 3.4), it is computed as the same function ``x * sigmoid(x (K0 + K1 x^2))`` in place: this
    PyTorch's vectorised ``tanh`` (and so ATen's GELU-tanh) runs at about 0.6 G elements/s per core
    where ``sigmoid`` runs at about 3.8, so the written-out form takes 0.46-0.75x the time
    (benchmarks/bench_kernels.py, "gelu tanh, no grad"), and GELU was 22% of an FPDM sampling step
    at the main job's shape. The values
    agree with ATen's to float rounding (max error against float64 5e-7 vs ATen's 4e-7). Training
    forwards keep ATen's kernel, whose backward is faster than the written-out one's; bf16/fp16
    keep it for its fp32 internals, and CUDA for its single fused kernel."""
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or (x.requires_grad and torch.is_grad_enabled())
    ):
        return F.gelu(x, approximate="tanh")
    t = x * x
    return t.mul_(_GELU_K1).add_(_GELU_K0).mul_(x).sigmoid_().mul_(x)


class Attention(nn.Module):
    """Multi-head self-attention through ``attention`` (default ``default_attention``: the fused
    ``scaled_dot_product_attention``; written out for short sequences on CPU). The
    function is a constructor argument, so a caller that wants another kernel (or to count or
    record calls) passes one instead of patching this module."""

    def __init__(self, dim: int, num_heads: int, attention: AttentionFn | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention = attention or default_attention
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        # unbind, not qkv[0], qkv[1], qkv[2]: its backward stacks the three gradients in one op,
        # where each index's backward fills a zero tensor the size of qkv and the three are summed
        out = self.attention(*qkv.unbind(0))  # (B, H, N, D/H)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT Sec. 3.2): LayerNorms without affine parameters, the
    conditioning vector regresses shift/scale/gate for attention and MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention: AttentionFn | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        """The six adaLN vectors as one (B, 6D) tensor (one linear): a caller that applies the block
        repeatedly under the same ``c`` (FPDM's fixed point loop) computes it once."""
        return self.adaLN_modulation(c)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mod: torch.Tensor | None = None) -> torch.Tensor:
        mod = self.modulation(c) if mod is None else mod
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unsqueeze(1).chunk(6, dim=2)
        # residual + gate * branch as one fused multiply-add (addcmul)
        x = torch.addcmul(x, gate_msa, self.attn(torch.addcmul(shift_msa, self.norm1(x), 1 + scale_msa)))
        return torch.addcmul(x, gate_mlp, self.mlp(torch.addcmul(shift_mlp, self.norm2(x), 1 + scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN LayerNorm then a linear map from tokens to p*p*out_channels values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def run_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply an explicit block, recomputing its activations in backward when asked (saves memory)."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, x, c, use_reentrant=False)
    return block(x, c)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table (grid_size**2, embed_dim), as in MAE / DiT."""
    if embed_dim % 4:
        raise ValueError(f"hidden size {embed_dim} must be divisible by 4 for the 2-D sin-cos position table")
    grid_h, grid_w = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))

    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # DiT's meshgrid order: the first half encodes w-index (grid[0]), the second the h-index.
    return np.concatenate([one_axis(embed_dim // 2, grid_h), one_axis(embed_dim // 2, grid_w)], axis=1)


class PatchDenoiser(DiffusionBackbone):
    """The input and output sides DiT and FPDM share (DiT Sec. 3.2): ``x_embedder`` (patches),
    ``t_embedder``, ``y_embedder`` and the fixed ``pos_embed`` buffer under DiT's names (state dicts
    stay compatible), and the final layer's tokens back to an image of ``out_channels``
    (2C with learned sigma). Subclasses add their blocks and ``final_layer``."""

    def __init__(
        self,
        *,
        input_size: int,
        in_channels: int,
        hidden_size: int,
        patch_size: int,
        num_classes: int,
        class_dropout: float,
        learn_sigma: bool,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"image size {input_size} is not divisible by patch size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout)
        pos = torch.from_numpy(sincos_pos_embed_2d(hidden_size, input_size // patch_size)).float().unsqueeze(0)
        pos = pos.to(self.x_embedder.proj.weight.device)  # honours a torch.device("meta") context
        self.register_buffer("pos_embed", pos, persistent=False)

    def embed(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        drop_labels: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens + positions ``(B, N, D)``, timestep embedding, label embedding ``(B, D)``); label
        dropout follows ``drop_labels``, else draws from ``generator`` in training mode."""
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        y_emb = self.y_embedder(y, self.training, generator, force_drop=drop_labels)
        return h, self.t_embedder(t), y_emb

    def unpatchify_output(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``final_layer`` under conditioning ``c``, tokens back to ``(B, out_channels, H, W)``."""
        return unpatchify(self.final_layer(h, c), self.patch_size, self.out_channels)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W) for a square grid."""
    B, N, _ = x.shape
    h = w = int(round(N**0.5))
    if h * w != N:
        raise ValueError(f"cannot unpatchify {N} tokens into a square grid")
    x = x.reshape(B, h, w, patch_size, patch_size, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch_size, w * patch_size)


def dit_initialize(module: nn.Module) -> None:
    """DiT's initialisation (DiT ``initialize_weights``): xavier-uniform Linear weights with zero
    biases, the patch conv like a Linear, normal(0.02) label table and timestep MLP, and zeroed
    adaLN modulation in every block and in the final layer, so each block starts as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, PatchEmbed):
            nn.init.xavier_uniform_(m.proj.weight.view(m.proj.weight.shape[0], -1))
            nn.init.zeros_(m.proj.bias)
        elif isinstance(m, LabelEmbedder):
            nn.init.normal_(m.embedding_table.weight, std=0.02)
        elif isinstance(m, TimestepEmbedder):
            nn.init.normal_(m.mlp[0].weight, std=0.02)
            nn.init.normal_(m.mlp[2].weight, std=0.02)
        elif isinstance(m, (DiTBlock, FinalLayer)):
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)
        if isinstance(m, FinalLayer):
            nn.init.zeros_(m.linear.weight)
            nn.init.zeros_(m.linear.bias)

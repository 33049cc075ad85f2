"""Our DiT's weights to and from diffusers' ``DiTTransformer2DModel``, both ways.

The two are one network (DiT Sec. 3.2: patch embedding with a fixed 2-D sin-cos table, adaLN-Zero
blocks, adaLN final layer) under other names, so a checkpoint moves exactly between them and either
can referee the other (tests/test_diffusers_equivalence.py). What the mapping handles:

- diffusers gives every block its own timestep + class embedder (``transformer_blocks.i.norm1.emb``);
  ours has one (``t_embedder``, ``y_embedder``). ``to_diffusers`` copies it into every block;
  ``from_diffusers`` requires the copies to be equal and refuses otherwise, naming the block.
- our fused ``attn.qkv`` is diffusers' ``to_q`` / ``to_k`` / ``to_v`` stacked in that order (heads
  contiguous within each); ``attn.proj`` is ``to_out.0``, ``mlp.fc1`` / ``fc2`` are ``ff.net.0.proj`` /
  ``ff.net.2``, ``x_embedder.proj`` is ``pos_embed.proj``.
- the adaLN linears keep their row order: both split a block's into shift, scale, gate (attention)
  then shift, scale, gate (MLP), and the final layer's (``proj_out_1``, fed block 0's embedding) into
  shift then scale; ``final_layer.linear`` is ``proj_out_2``. Unpatchify is the same einsum in both.
- the position tables are non-persistent buffers in both and equal (the MAE/DiT formula; diffusers'
  ``base_size`` is the grid size and ``interpolation_scale`` 1, so its grid is 0..n-1 as DiT's), and the
  class tables both have ``num_classes + 1`` rows, the last the null class.

Two differences are computations, not weights (diffusers 0.42 source), and both are where diffusers
departs from the official DiT code (facebookresearch/DiT ``models.py``), which ours follows:

- timestep frequencies: DiT uses ``10000 ** (-i / 128)`` for i < 128; diffusers' DiT embedder
  (``CombinedTimestepLabelEmbeddings``) hard-codes ``downscale_freq_shift=1``, i.e.
  ``10000 ** (-i / 127)``. It is no config key, so ``to_diffusers`` sets DiT's on the built model
  (``use_dit_timestep_frequencies``); ``save_pretrained`` does not record it, so call that function
  again on a model loaded with ``from_pretrained``.
- LayerNorm eps of the MLP branch: DiT 1e-6; diffusers' ``norm3`` takes the ``norm_eps`` config key
  (default 1e-5; its attention-side and final norms are 1e-6). ``to_diffusers`` writes
  ``norm_eps=1e-6``; ``from_diffusers`` of a model with another eps gives our DiT's 1e-6.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from baselines.contract import AttentionFn
from baselines.dit import DiT

if TYPE_CHECKING:
    from diffusers import DiTTransformer2DModel

DIT_NORM_EPS = 1e-6  # every LayerNorm of DiT's blocks and final layer (official models.py)
DIFFUSERS_MLP_RATIO = 4  # diffusers' FeedForward hidden width is 4x, not a DiTTransformer2DModel key

# ours -> diffusers, outside the blocks
_TOP = {
    "x_embedder.proj.weight": "pos_embed.proj.weight",
    "x_embedder.proj.bias": "pos_embed.proj.bias",
    "final_layer.adaLN_modulation.1.weight": "proj_out_1.weight",
    "final_layer.adaLN_modulation.1.bias": "proj_out_1.bias",
    "final_layer.linear.weight": "proj_out_2.weight",
    "final_layer.linear.bias": "proj_out_2.bias",
}
# ours -> diffusers under every block's ``norm1.emb.`` (one shared embedder vs a copy per block)
_EMBEDDER = {
    "t_embedder.mlp.0.weight": "timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "class_embedder.embedding_table.weight",
}
# ours under ``blocks.i.`` -> diffusers under ``transformer_blocks.i.`` (qkv apart: split in three)
_BLOCK = {
    "attn.proj.weight": "attn1.to_out.0.weight",
    "attn.proj.bias": "attn1.to_out.0.bias",
    "mlp.fc1.weight": "ff.net.0.proj.weight",
    "mlp.fc1.bias": "ff.net.0.proj.bias",
    "mlp.fc2.weight": "ff.net.2.weight",
    "mlp.fc2.bias": "ff.net.2.bias",
    "adaLN_modulation.1.weight": "norm1.linear.weight",
    "adaLN_modulation.1.bias": "norm1.linear.bias",
}
# what our DiT is, as diffusers config values (DiT Sec. 3.2)
_DIT_KEYS = {"activation_fn": "gelu-approximate", "attention_bias": True, "norm_elementwise_affine": False}


def _depth(state: Mapping[str, torch.Tensor], blocks: str, key: str) -> int:
    """Number of blocks in ``state``: its ``<blocks>.<i>.<key>`` entries."""
    pattern = re.compile(rf"{re.escape(blocks)}\.\d+\.{re.escape(key)}")
    return sum(1 for k in state if pattern.fullmatch(k))


def to_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our DiT's state dict in diffusers' ``DiTTransformer2DModel`` names: the shared embedder copied
    into every block, qkv split into q, k, v. Copies and splits are fresh tensors (no two entries
    share storage, which safetensors refuses); the other entries are the given tensors."""
    out = {new: state[old] for old, new in _TOP.items()}
    for i in range(_depth(state, "blocks", "adaLN_modulation.1.weight")):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        out |= {theirs + new: state[ours + old] for old, new in _BLOCK.items()}
        out |= {f"{theirs}norm1.emb.{new}": state[old].clone() for old, new in _EMBEDDER.items()}
        for kind in ("weight", "bias"):
            q, k, v = state[f"{ours}attn.qkv.{kind}"].chunk(3, dim=0)
            out |= {f"{theirs}attn1.to_{n}.{kind}": w.clone() for n, w in zip("qkv", (q, k, v))}
    return out


def check_shared_embedding(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse a diffusers state dict whose blocks' timestep + class embedders differ: our DiT has
    one, so only equal copies (as ``to_diffusers`` and a conversion of the official weights write)
    map back without changing the network."""
    for i in range(1, _depth(state, "transformer_blocks", "norm1.linear.weight")):
        for name in _EMBEDDER.values():
            if not torch.equal(
                state[f"transformer_blocks.{i}.norm1.emb.{name}"], state[f"transformer_blocks.0.norm1.emb.{name}"]
            ):
                raise ValueError(
                    f"transformer_blocks.{i}.norm1.emb.{name} differs from block 0's: our DiT shares one timestep+class "
                    "embedding across blocks, so only a diffusers DiT whose blocks hold equal copies converts"
                )


def from_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``DiTTransformer2DModel`` state dict in our DiT's names (inverse of
    ``to_diffusers_state_dict``); the per-block embedders must be equal (``check_shared_embedding``)."""
    check_shared_embedding(state)
    out = {old: state[new] for old, new in _TOP.items()}
    out |= {old: state[f"transformer_blocks.0.norm1.emb.{new}"] for old, new in _EMBEDDER.items()}
    for i in range(_depth(state, "transformer_blocks", "norm1.linear.weight")):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        out |= {ours + old: state[theirs + new] for old, new in _BLOCK.items()}
        for kind in ("weight", "bias"):
            out[f"{ours}attn.qkv.{kind}"] = torch.cat([state[f"{theirs}attn1.to_{n}.{kind}"] for n in "qkv"])
    return out


def dit_architecture(dit: DiT) -> dict:
    """The ``DiT(...)`` keyword arguments that rebuild ``dit``'s architecture, read off the model."""
    hidden = dit.x_embedder.proj.out_channels
    return {
        "input_size": math.isqrt(dit.pos_embed.shape[1]) * dit.patch_size,
        "in_channels": dit.in_channels,
        "num_classes": dit.num_classes,
        "hidden_size": hidden,
        "depth": dit.depth,
        "num_heads": dit.blocks[0].attn.num_heads,
        "patch_size": dit.patch_size,
        "mlp_ratio": dit.blocks[0].mlp.fc1.out_features / hidden,
        "learn_sigma": dit.learn_sigma,
    }


def diffusers_config(dit: DiT) -> dict:
    """``DiTTransformer2DModel`` keyword arguments for ``dit``'s architecture, DiT's eps included."""
    a = dit_architecture(dit)
    if a["mlp_ratio"] != DIFFUSERS_MLP_RATIO:
        raise ValueError(
            f"model.mlp_ratio={a['mlp_ratio']:g}: diffusers' DiTTransformer2DModel has a fixed MLP ratio of "
            f"{DIFFUSERS_MLP_RATIO}; only a DiT with mlp_ratio={DIFFUSERS_MLP_RATIO} converts"
        )
    return {
        "num_attention_heads": a["num_heads"],
        "attention_head_dim": a["hidden_size"] // a["num_heads"],
        "in_channels": a["in_channels"],
        "out_channels": 2 * a["in_channels"] if a["learn_sigma"] else a["in_channels"],
        "num_layers": a["depth"],
        "sample_size": a["input_size"],
        "patch_size": a["patch_size"],
        "num_embeds_ada_norm": a["num_classes"],
        "norm_type": "ada_norm_zero",
        "norm_eps": DIT_NORM_EPS,
        "dropout": 0.0,
        **_DIT_KEYS,
    }


def use_dit_timestep_frequencies(transformer: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Give every block's timestep embedder DiT's frequencies ``10000 ** (-i / 128)`` instead of
    diffusers' ``10000 ** (-i / 127)`` (its hard-coded ``downscale_freq_shift=1``); in place, returned.
    Not a config key: a model reloaded with ``from_pretrained`` needs this call again."""
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings

    for module in transformer.modules():
        if isinstance(module, CombinedTimestepLabelEmbeddings):
            module.time_proj.downscale_freq_shift = 0
    return transformer


def to_diffusers(dit: DiT) -> DiTTransformer2DModel:
    """A diffusers ``DiTTransformer2DModel`` computing the same function as ``dit`` (same weights,
    DiT's timestep frequencies and eps), on ``dit``'s device and dtype, in eval mode like
    ``from_pretrained``. Its ``(hidden_states, timestep, class_labels).sample`` is ``dit(x, t, y)``:
    ``(B, out_channels, H, W)``, the learned-sigma channels after the prediction's."""
    from diffusers import DiTTransformer2DModel

    if not isinstance(dit, DiT):
        raise TypeError(f"to_diffusers converts a DiT (model=dit), not {type(dit).__name__}")
    param = next(dit.parameters())
    transformer = DiTTransformer2DModel(**diffusers_config(dit))
    # to dtype before loading: load_state_dict casts to the module's dtype (float64 -> float32 would round).
    # nn.Module.to: ModelMixin.to adds only checks for quantized / offloaded models (not this fresh one)
    # and a warning about fp32-only modules, which this model has none of, on every cast
    torch.nn.Module.to(transformer, device=param.device, dtype=param.dtype)
    transformer.load_state_dict(to_diffusers_state_dict(dit.state_dict()))
    return use_dit_timestep_frequencies(transformer).eval()


def _refuse_non_dit(cfg: Mapping) -> None:
    """One line naming the diffusers config key our DiT cannot express."""
    for key, want in {**_DIT_KEYS, "dropout": 0.0}.items():
        if cfg[key] != want:
            raise ValueError(
                f"diffusers config {key}={cfg[key]!r}: our DiT has {key}={want!r}; only such a model converts"
            )
    out = cfg["out_channels"] or cfg["in_channels"]
    if out not in (cfg["in_channels"], 2 * cfg["in_channels"]):
        raise ValueError(f"diffusers config out_channels={out}: our DiT outputs in_channels or 2x (learned sigma)")


def from_diffusers(
    transformer: DiTTransformer2DModel, *, class_dropout: float = 0.1, attention: AttentionFn | None = None
) -> DiT:
    """Our DiT with ``transformer``'s weights, on its device and dtype, in eval mode. The blocks'
    embedders must be equal copies (else a one-line ``ValueError`` naming the block). The result
    uses DiT's timestep frequencies and eps, as ``to_diffusers`` writes them; a stock diffusers
    model (frequency shift 1, ``norm_eps`` 1e-5) computes a slightly different function (module
    docstring). ``class_dropout`` and ``attention`` are ``DiT``'s (not stored in diffusers' weights)."""
    cfg = transformer.config
    _refuse_non_dit(cfg)
    dit = DiT(
        input_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        num_classes=cfg.num_embeds_ada_norm,
        hidden_size=cfg.num_attention_heads * cfg.attention_head_dim,
        depth=cfg.num_layers,
        num_heads=cfg.num_attention_heads,
        patch_size=cfg.patch_size,
        class_dropout=class_dropout,
        learn_sigma=(cfg.out_channels or cfg.in_channels) == 2 * cfg.in_channels,
        attention=attention,
    )
    param = next(transformer.parameters())
    dit.to(device=param.device, dtype=param.dtype)  # before loading, as in to_diffusers
    dit.load_state_dict(from_diffusers_state_dict(transformer.state_dict()))
    return dit.eval()

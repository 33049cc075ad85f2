"""A neutral referee for our DiT: diffusers' ``DiTTransformer2DModel``, a separate implementation of
the same network, given our weights through baselines/diffusers_weights.py, computes the same
function (float64, two sizes, with and without learned sigma), and the weights go both ways exactly.

Every parameter is replaced by a random draw first: DiT's init zeroes the adaLN linears and the final
layer (adaLN-Zero, DiT Sec. 3.2), and with them zero both models output 0 whatever the mapping of
those weights, so the comparison would check nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from baselines.diffusers_dit import DiffusersDiT
from baselines.diffusers_weights import (
    check_shared_embedding,
    from_diffusers,
    to_diffusers,
    to_diffusers_state_dict,
    use_dit_timestep_frequencies,
)
from baselines.dit import DiT, build_dit
from baselines.layers import TimestepEmbedder
from baselines.presets import Preset

# two architectures: the tiny preset (6 blocks, width 64, 4 heads, patch 2, 8x8x4 inputs, 16 tokens)
# and a different depth, width, head count, patch, channel count and image size (3 blocks, width 96,
# 3 heads of 32, patch 4, 16x16x3 inputs, 16 tokens)
SIZES = {
    "tiny": ("tiny", {"input_size": 8, "in_channels": 4, "num_classes": 10}),
    "other": (
        Preset("other", depth=3, hidden_size=96, num_heads=3, patch_size=4),
        {"input_size": 16, "in_channels": 3, "num_classes": 7},
    ),
}
F64_ATOL = 1e-11  # measured differences are ~1e-15 on outputs of size ~1; see the sensitivity test


def _randomized(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter drawn from N(0, 1/fan_in) (biases and tables: N(0, 0.1)), so activations stay
    of order 1 and no weight is zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1**0.5 if p.ndim == 1 or "embedding_table" in name else p[0].numel() ** -0.5
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
    return model


def _dit(size: str, learn_sigma: bool, dtype=torch.float64) -> DiT:
    preset, shape = SIZES[size]
    dit = build_dit(preset, learn_sigma=learn_sigma, **shape).to(dtype)
    return _randomized(dit).eval()


def _inputs(dit: DiT, batch: int = 6, seed: int = 2):
    """Random latents; integer, fractional and end-point timesteps; labels including the null class."""
    g = torch.Generator().manual_seed(seed)
    size = math.isqrt(dit.pos_embed.shape[1]) * dit.patch_size
    x = torch.randn(batch, dit.in_channels, size, size, generator=g, dtype=dit.pos_embed.dtype)
    t = torch.cat([torch.tensor([0.0, 999.0, 500.0]), torch.rand(batch - 3, generator=g) * 999])
    y = torch.randint(0, dit.num_classes, (batch,), generator=g)
    y[0] = dit.num_classes  # the null (unconditional) row of the class table
    return x, t, y


def _max_diff(dit: DiT, transformer, inputs) -> float:
    with torch.no_grad():
        ours = dit(*inputs)
        theirs = transformer(hidden_states=inputs[0], timestep=inputs[1], class_labels=inputs[2]).sample
    assert theirs.shape == ours.shape
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("size", list(SIZES))
def test_diffusers_computes_what_our_dit_computes(size, learn_sigma):
    dit = _dit(size, learn_sigma)
    transformer = to_diffusers(dit)
    inputs = _inputs(dit)
    with torch.no_grad():
        ours = dit(*inputs)
    c = dit.in_channels
    # one layout in both: (B, C or 2C, H, W), the learned-sigma channels after the prediction's
    assert ours.shape == (6, 2 * c if learn_sigma else c, *inputs[0].shape[2:])
    assert float(ours.abs().mean()) > 0.1  # a real output, not adaLN-Zero's zeros
    assert _max_diff(dit, transformer, inputs) < F64_ATOL


def test_float32_agrees_to_float_tolerance():
    dit = _dit("tiny", learn_sigma=True, dtype=torch.float32)
    transformer = to_diffusers(dit)
    assert next(transformer.parameters()).dtype == torch.float32
    assert _max_diff(dit, transformer, _inputs(dit)) < 1e-5


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("size", list(SIZES))
def test_round_trip_restores_the_state_dict_exactly(size, learn_sigma):
    dit = _dit(size, learn_sigma)
    transformer = to_diffusers(dit)
    back = from_diffusers(transformer)
    assert back.state_dict().keys() == dit.state_dict().keys()
    for key, value in dit.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.learn_sigma == learn_sigma and back.depth == dit.depth
    again = to_diffusers(back).state_dict()
    assert again.keys() == transformer.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in transformer.state_dict().items())


def test_a_diffusers_built_model_converts_to_the_same_function():
    """The other direction from diffusers' own construction: its per-block embedders made equal
    copies (as a conversion of the official weights has them), then read into our DiT."""
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        num_attention_heads=3, attention_head_dim=32, in_channels=3, out_channels=6, num_layers=3,
        sample_size=16, patch_size=4, num_embeds_ada_norm=7, norm_eps=1e-6,
    ).double()  # fmt: skip
    _randomized(transformer)
    with torch.no_grad():
        for block in transformer.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(transformer.transformer_blocks[0].norm1.emb.state_dict())
    dit = from_diffusers(transformer)
    assert (dit.depth, dit.patch_size, dit.learn_sigma, dit.num_classes) == (3, 4, True, 7)
    assert _max_diff(dit, use_dit_timestep_frequencies(transformer.eval()), _inputs(dit)) < F64_ATOL


def test_per_block_embeddings_that_differ_are_refused_in_one_line():
    transformer = to_diffusers(_dit("tiny", learn_sigma=True))
    with torch.no_grad():
        transformer.transformer_blocks[2].norm1.emb.class_embedder.embedding_table.weight[3, 5] += 1e-3
    with pytest.raises(
        ValueError, match=r"^transformer_blocks\.2\.norm1\.emb\.class_embedder\.embedding_table\.weight differs"
    ) as err:
        from_diffusers(transformer)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="transformer_blocks.2"):
        check_shared_embedding(transformer.state_dict())


def test_the_comparison_sees_a_wrong_mapping():
    """Swapping two adaLN chunks (shift and scale) in one block or in the final layer, or diffusers'
    own MLP-norm eps, moves the output far past the tolerance: the equality above checks the mapping."""
    dit = _dit("tiny", learn_sigma=True)
    inputs = _inputs(dit)
    d = dit.blocks[0].adaLN_modulation[1].out_features // 6
    for name in ("transformer_blocks.3.norm1.linear", "proj_out_1"):
        transformer = to_diffusers(dit)
        linear = transformer.get_submodule(name)
        with torch.no_grad():  # rows [0, d) are shift, [d, 2d) scale, in both implementations
            for p in (linear.weight, linear.bias):
                p.copy_(torch.cat([p[d : 2 * d], p[:d], p[2 * d :]]))
        assert _max_diff(dit, transformer, inputs) > 1e-2, name
    transformer = to_diffusers(dit)
    for block in transformer.transformer_blocks:
        block.norm3.eps = 1e-5
    assert _max_diff(dit, transformer, inputs) > 1e3 * F64_ATOL


def test_timestep_frequencies_are_dits_and_diffusers_stock_ones_differ():
    """DiT (official models.py) and ours: frequency i of 128 is 10000 ** (-i / 128); diffusers' DiT
    embedder hard-codes downscale_freq_shift=1: 10000 ** (-i / 127). Written out by hand here."""
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings

    t = torch.tensor([1.0, 37.0, 999.0])
    i = torch.arange(128, dtype=torch.float64)
    ours = [torch.cat([torch.cos(s * 10000 ** (-i / 128)), torch.sin(s * 10000 ** (-i / 128))]) for s in t.tolist()]
    stock = [torch.cat([torch.cos(s * 10000 ** (-i / 127)), torch.sin(s * 10000 ** (-i / 127))]) for s in t.tolist()]
    ours, stock = torch.stack(ours).float(), torch.stack(stock).float()
    torch.testing.assert_close(TimestepEmbedder.timestep_embedding(t, 256), ours, atol=2e-4, rtol=0)
    embedder = CombinedTimestepLabelEmbeddings(10, 64)
    torch.testing.assert_close(embedder.time_proj(t), stock, atol=2e-4, rtol=0)
    assert float((ours - stock).abs().max()) > 0.3  # the two conventions differ by far more than rounding
    transformer = to_diffusers(_dit("tiny", learn_sigma=False))
    torch.testing.assert_close(transformer.transformer_blocks[5].norm1.emb.time_proj(t), ours, atol=2e-4, rtol=0)


def test_stock_diffusers_settings_differ_from_dit():
    """What ``to_diffusers`` sets and a stock diffusers DiT lacks: DiT's eps in the MLP's norm and
    DiT's timestep frequencies (with diffusers' own the outputs differ by order 1)."""
    from diffusers import DiTTransformer2DModel

    stock = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, num_layers=1, sample_size=8)
    assert stock.transformer_blocks[0].norm3.eps == 1e-5
    dit = _dit("tiny", learn_sigma=True)
    transformer = to_diffusers(dit)
    assert {b.norm3.eps for b in transformer.transformer_blocks} == {1e-6}
    for module in transformer.modules():
        if hasattr(module, "downscale_freq_shift"):
            module.downscale_freq_shift = 1
    assert _max_diff(dit, transformer, _inputs(dit)) > 0.1


def test_save_pretrained_then_reload_needs_dits_frequencies_again(tmp_path):
    from diffusers import DiTTransformer2DModel

    dit = _dit("other", learn_sigma=False)
    to_diffusers(dit).save_pretrained(tmp_path)
    reloaded = DiTTransformer2DModel.from_pretrained(tmp_path, local_files_only=True, torch_dtype=torch.float64)
    inputs = _inputs(dit)
    assert _max_diff(dit, reloaded, inputs) > 0.1  # diffusers' frequencies again
    assert _max_diff(dit, use_dit_timestep_frequencies(reloaded), inputs) < F64_ATOL


def test_the_adapter_runs_our_weights_with_the_same_label_dropout():
    """``model=dit_diffusers``'s adapter around a converted DiT, in train mode with a forced drop
    mask, gives our DiT's output: both drop exactly the masked labels to the null class."""
    dit = _dit("tiny", learn_sigma=True).train()
    adapter = DiffusersDiT(to_diffusers(dit), dit.learn_sigma).train()
    x, t, y = _inputs(dit)
    drop = torch.tensor([False, True, False, True, True, False])
    with torch.no_grad():
        ours, theirs = dit(x, t, y, drop_labels=drop), adapter(x, t, y, drop_labels=drop)
        undropped = dit(x, t, y, drop_labels=torch.zeros_like(drop))
    assert float((ours - theirs).abs().max()) < F64_ATOL
    assert float((ours - undropped)[drop].abs().max()) > 1e-2  # the mask mattered


def test_unconvertible_models_are_refused_in_one_line():
    from diffusers import DiTTransformer2DModel

    wide = build_dit(
        Preset("wide", depth=1, hidden_size=64, num_heads=4, patch_size=2, mlp_ratio=2.0),
        input_size=8,
        in_channels=1,
        num_classes=10,
    )
    with pytest.raises(ValueError, match=r"model\.mlp_ratio=2: .*fixed MLP ratio of 4"):
        to_diffusers(wide)
    no_bias = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, num_layers=1, sample_size=8, attention_bias=False
    )
    with pytest.raises(ValueError, match="attention_bias=False"):
        from_diffusers(no_bias)
    from fpdm.model import build_fpdm

    with pytest.raises(TypeError, match="converts a DiT"):
        to_diffusers(build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10))


def test_the_state_dict_mapping_shares_no_storage():
    """safetensors (diffusers' save format) refuses tensors that share memory: the embedder copies and
    q/k/v splits are fresh tensors."""
    state = to_diffusers_state_dict(_dit("tiny", learn_sigma=True).state_dict())
    copies = [v for k, v in state.items() if ".norm1.emb." in k or ".attn1.to_" in k]
    assert len({v.untyped_storage().data_ptr() for v in copies}) == len(copies)

"""Models: parameter-exact DiT and FPDM (docs/paper-notes.md §8.1), training modes, reuse, accounting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.dit import DiT, build_dit
from baselines.presets import get_preset, list_presets
from fpdm.model import FPDM, build_fpdm
from fpdm.reuse import WarmStart
from fpdm.solvers import get_solver
from fpdm.training_modes import ImplicitTrainSpec, get_training_mode, list_training_modes
from harness.compute.flops import flop_breakdown
from harness.compute.memory import saved_tensor_bytes
from harness.compute.params import params_by_part


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------- docs/paper-notes.md §8.1 counts
def test_dit_xl2_parameter_count_meta():
    with torch.device("meta"):
        model = build_dit("XL/2", input_size=32, in_channels=4, num_classes=1000)
    assert n_params(model) == 674_834_720
    assert model.pos_embed.numel() == 294_912 and not isinstance(model.pos_embed, nn.Parameter)
    with torch.device("meta"):
        uncond = build_dit("XL/2", input_size=32, in_channels=4, num_classes=1)
    assert n_params(uncond) == 673_683_872


@pytest.mark.parametrize("depth,expected", [(0, 38_689_952), (1, 86_500_256), (2, 134_310_560), (4, 229_931_168)])
def test_fpdm_xl2_parameter_counts_meta(depth, expected):
    with torch.device("meta"):
        model = build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1000, pre_depth=depth, post_depth=depth)
    assert n_params(model) == expected


def test_fpdm_unconditional_and_parts():
    with torch.device("meta"):
        model = build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1)
    assert n_params(model) == 85_349_408
    with torch.device("meta"):
        model = build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1000)
    parts = params_by_part(model)
    assert parts["pre"] == parts["post"] == 23_905_152  # one DiT block (paper: "24M")
    assert parts["fixed_point"] == 23_905_152 + 9_294_336  # block + injection layers
    assert sum(v for k, v in parts.items() if k != "total") == parts["total"] == 86_500_256


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError, match="XL/2"):
        get_preset("XXL/2")
    assert {"tiny", "S/2", "B/4", "L/8", "XL/2"} <= set(list_presets())


def test_pre_post_deeper_than_preset_refused():
    with pytest.raises(ValueError, match="pre_depth"):
        build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10, pre_depth=3, post_depth=3)


# ----------------------------------------------------------------------- forward contract
@pytest.mark.parametrize("channels,classes,learn_sigma", [(1, 10, True), (3, 1, False), (4, 5, True)])
@pytest.mark.parametrize("builder", [build_dit, build_fpdm])
def test_forward_shapes(builder, channels, classes, learn_sigma):
    torch.manual_seed(0)
    model = builder("tiny", input_size=8, in_channels=channels, num_classes=classes, learn_sigma=learn_sigma).eval()
    x = torch.randn(3, channels, 8, 8)
    out = model(x, torch.tensor([0, 500, 999]), torch.tensor([0, classes - 1, classes]))  # incl. null label
    assert out.shape == (3, channels * (2 if learn_sigma else 1), 8, 8)
    assert torch.isfinite(out).all()


def test_dit_initialisation_zeroes_modulation_and_final_layer():
    model = build_dit("tiny", input_size=8, in_channels=1, num_classes=10)
    for block in model.blocks:
        assert block.adaLN_modulation[-1].weight.abs().sum() == 0
    assert model.final_layer.linear.weight.abs().sum() == 0
    # so the whole network starts at zero output, as DiT's adaLN-Zero intends
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([3, 4]), torch.tensor([1, 2]))
    assert out.abs().max() == 0


def test_fpdm_pre_post_see_class_only_by_default():
    torch.manual_seed(0)
    model = build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10).eval()
    for p in model.parameters():  # break the zero init so conditioning matters
        p.data.add_(0.05 * torch.randn_like(p))
    seen = []
    model.pre_blocks[0].register_forward_hook(lambda m, inp, out: seen.append(inp[1].clone()))
    x, y = torch.randn(1, 1, 8, 8), torch.tensor([3])
    model(x, torch.tensor([10]), y, iters=2)
    model(x, torch.tensor([900]), y, iters=2)
    assert torch.equal(seen[0], seen[1])  # the pre block's conditioning ignores t
    model.pre_post_timestep_conditioning = True
    model(x, torch.tensor([10]), y, iters=2)
    model(x, torch.tensor([900]), y, iters=2)
    assert not torch.equal(seen[2], seen[3])


def test_same_seed_bit_identical_outputs():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10).eval()
        torch.manual_seed(7)
        outs.append(model(torch.randn(4, 1, 8, 8), torch.arange(4) * 100, torch.arange(4), iters=3))
    assert torch.equal(outs[0], outs[1])


# ----------------------------------------------------------------------- training modes
def _randomised_fpdm(**kw) -> FPDM:
    torch.manual_seed(0)
    model = build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.train()


def test_training_mode_registry():
    assert set(list_training_modes()) == {"sjfb", "jfb", "multistep_jfb", "full", "implicit"}
    with pytest.raises(KeyError, match="sjfb"):
        get_training_mode("nope")


def _saved_bytes(model: FPDM, n: int, m: int) -> int:
    model.train_spec = ImplicitTrainSpec("sjfb", n, n, m, m)
    x, t, y = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,)), torch.randint(0, 10, (8,))
    saved, _ = saved_tensor_bytes(lambda: model(x, t, y), exclude=model)
    return saved


def test_sjfb_saved_bytes_grow_with_m_not_n():
    model = _randomised_fpdm()
    base = _saved_bytes(model, 0, 1)
    # no-grad iterations store nothing: 8 store what 1 stores (with n = 0 the first iterate is the
    # pre-block output, a tensor saved anyway, so n >= 1 saves one (B, N, D) iterate more)
    assert _saved_bytes(model, 8, 1) == _saved_bytes(model, 1, 1) <= base + 8 * 16 * 64 * 4
    assert _saved_bytes(model, 0, 3) > _saved_bytes(model, 0, 2) > base


def test_sjfb_gradient_only_through_with_grad_iterations():
    """With n no-grad iterations the gradient equals that of m iterations started from the
    (detached) n-th iterate: nothing flows through the first n."""
    model = _randomised_fpdm()
    spec = ImplicitTrainSpec("sjfb", 3, 3, 2, 2)
    x_inj = torch.randn(2, 16, 64)
    c = torch.randn(2, 64)
    z0 = torch.randn(2, 16, 64, requires_grad=True)

    def f(z):
        return model.fixed_point(z, x_inj, c)

    z, counts = get_training_mode("sjfb")(f, z0, spec)
    assert (counts.no_grad, counts.with_grad, counts.vjp) == (3, 2, 0)
    z.square().sum().backward()
    assert z0.grad is None  # the start of the solve gets no gradient
    grads = [p.grad.clone() for p in model.fixed_point.parameters()]
    model.zero_grad()
    with torch.no_grad():
        zn = f(f(f(z0)))
    f(f(zn.detach())).square().sum().backward()
    for g, p in zip(grads, model.fixed_point.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_sjfb_draws_are_seeded():
    spec = ImplicitTrainSpec("sjfb", 0, 10, 1, 12)
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        counts = [get_training_mode("sjfb")(lambda z: z * 0.5, torch.ones(1), spec, g)[1].forward for _ in range(20)]
        draws.append(counts)
    assert draws[0] == draws[1] and len(set(draws[0])) > 3


class _Contraction(nn.Module):
    """f(z) = tanh(W z + U x): a contraction for small W (the fixed point exists and is unique)."""

    def __init__(self, d: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(0.3 * torch.randn(d, d, generator=g) / d**0.5)
        self.U = nn.Parameter(torch.randn(d, d, generator=g))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T)


def test_implicit_gradient_matches_full_backprop_at_convergence():
    layer = _Contraction()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    target = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))

    def grads(method: str, spec: ImplicitTrainSpec):
        layer.zero_grad()
        z, _ = get_training_mode(method)(lambda z: layer(z, x), torch.zeros(4, 6), spec)
        (z - target).square().sum().backward()
        return layer.W.grad.clone(), layer.U.grad.clone()

    full = grads("full", ImplicitTrainSpec("full", 60, 60, 60, 60))
    implicit = grads(
        "implicit", ImplicitTrainSpec("implicit", 60, 60, 60, 60, implicit_solver="anderson", implicit_tol=1e-10)
    )
    jfb = grads("jfb", ImplicitTrainSpec("jfb", 60, 60, 1, 1))
    for a, b in zip(full, implicit):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(full[0], jfb[0], rtol=1e-3)  # JFB drops the inverse Jacobian term


# ----------------------------------------------------------------------- solution reuse
def test_reuse_with_converged_solver_matches_no_reuse():
    from fpdm.solvers import make_solver

    torch.manual_seed(0)
    model = build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10).eval()
    solver = make_solver("anderson")
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    warm = WarmStart()
    with torch.inference_mode():
        for t in (900, 800):
            tt = torch.full((3,), t)
            plain = model(x, tt, y, iters=60, solver=solver, tol=1e-6)
            reused = model(x, tt, y, iters=60, solver=solver, tol=1e-6, warm_start=warm)
            torch.testing.assert_close(plain, reused, rtol=1e-4, atol=1e-5)
    assert warm.uses == 1 and warm.t == 800


def test_reuse_refuses_mixed_timesteps_and_resets():
    model = build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10).eval()
    warm = WarmStart()
    with pytest.raises(ValueError, match="mixed timesteps"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 0]), iters=2, warm_start=warm)
    model(torch.randn(2, 1, 8, 8), torch.tensor([5, 5]), torch.tensor([0, 0]), iters=2, warm_start=warm)
    assert warm.z is not None
    warm.reset()
    assert warm.z is None and warm.uses == 0


# ----------------------------------------------------------------------- accounting
def test_block_passes_and_flops_show_the_injection_cost():
    with torch.device("meta"):
        fpdm = build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1000)
        dit = build_dit("XL/2", input_size=32, in_channels=4, num_classes=1000)
    assert fpdm.block_passes(26) == 28 == dit.block_passes()
    fb = flop_breakdown(fpdm, 32, iters=6)
    # docs/paper-notes.md §8.4: the injection MLP is about 0.48 of a block per iteration at XL/2
    assert 0.45 < fb.injection_to_block < 0.50
    assert fb.per_forward == fb.explicit_per_forward + 6 * fb.per_iteration
    db = flop_breakdown(dit, 32)
    assert abs(db.block - fb.block) / db.block < 1e-9
    # one DiT block at 256 tokens: 2 * 256 * ~16.5M MACs
    assert abs(db.block / (2 * 256) - 16.52e6) / 16.52e6 < 0.01


def test_dit_is_a_dit():
    assert isinstance(build_dit("tiny", input_size=8, in_channels=1, num_classes=10), DiT)


def test_diffusers_dit_adapter_contract_and_local_load(tmp_path):
    from types import SimpleNamespace

    from baselines.diffusers_dit import PARAM_COUNT_NOTE, build_diffusers_dit

    cfg = SimpleNamespace(pretrained_path=None, preset="tiny", learn_sigma=True)
    torch.manual_seed(0)
    model = build_diffusers_dit(cfg, image_size=8, channels=1, num_classes=10).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999]), torch.tensor([0, 9, 10])
    out = model(x, t, y)
    assert out.shape == (3, 2, 8, 8) and model.param_count_note == PARAM_COUNT_NOTE
    model.transformer.save_pretrained(tmp_path / "transformer")  # a pipeline-style folder
    loaded = build_diffusers_dit(
        SimpleNamespace(pretrained_path=str(tmp_path), preset="XL/2", learn_sigma=False),
        image_size=8,
        channels=1,
        num_classes=10,
    ).eval()
    assert loaded.learn_sigma and loaded.depth == get_preset("tiny").depth
    assert torch.equal(loaded(x, t, y), out)
    with pytest.raises(FileNotFoundError, match="model.pretrained_path"):
        build_diffusers_dit(
            SimpleNamespace(pretrained_path=str(tmp_path / "nope"), preset="tiny", learn_sigma=True),
            image_size=8,
            channels=1,
            num_classes=10,
        )


def test_diffusers_dit_drops_labels_exactly_once_and_deterministically():
    """The adapter's seeded drop mask is the only label dropout: every block's label embedding sees
    exactly ``where(drop, null, y)`` in train mode (diffusers would add an unseeded 10% per block)."""
    from types import SimpleNamespace

    from diffusers.models.embeddings import LabelEmbedding

    from baselines.diffusers_dit import build_diffusers_dit

    torch.manual_seed(0)
    model = build_diffusers_dit(
        SimpleNamespace(pretrained_path=None, preset="tiny", learn_sigma=True), image_size=8, channels=1, num_classes=10
    ).train()
    for p in model.parameters():  # break adaLN-Zero so the output depends on the labels
        p.data.add_(0.05 * torch.randn_like(p))
    n = 4000
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    drop = torch.rand(n, generator=g) < 0.1
    seen = []
    embeddings = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    assert len(embeddings) == get_preset("tiny").depth  # one per block in diffusers' layout
    for m in embeddings:
        m.embedding_table.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    with torch.no_grad():
        out1 = model(x, t, y, drop_labels=drop)
        torch.manual_seed(123)  # a different global RNG state must not matter
        out2 = model(x, t, y, drop_labels=drop)
    expected = torch.where(drop, torch.full_like(y, 10), y)
    for labels in seen:
        assert torch.equal(labels, expected)
    rate = float((seen[0] == 10).float().mean())
    assert rate == float(drop.float().mean()) and 0.08 < rate < 0.12  # ~10%, not ~19%
    assert torch.equal(out1, out2)


def _perturbed_fpdm() -> FPDM:
    torch.manual_seed(0)
    model = build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10).eval()
    for p in model.parameters():  # break the zero init so every input matters
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_reuse_warm_starts_from_the_previous_solution_and_matters_at_one_iteration():
    """At k=1 the warm start *is* the output's input: with reuse the fixed point layer starts at the
    previous step's solution (not at x_pre) and the prediction changes; a model that ignored the warm
    start would give the same output with and without reuse and fail here."""
    model = _perturbed_fpdm()
    starts, solutions, pre_outs = [], [], []
    picard = get_solver("picard")

    def recording(f, z0, **kw):  # the solver is an argument of the call: record where it starts and ends
        starts.append(z0.clone())
        z, stats = picard(f, z0, **kw)
        solutions.append(z.clone())
        return z, stats

    model.pre_blocks[0].register_forward_hook(lambda m, inp, out: pre_outs.append(out.clone()))
    x1, x2, y = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    warm = WarmStart()
    with torch.inference_mode():
        first = model(x1, torch.full((3,), 900), y, iters=1, solver=recording, warm_start=warm)
        reused = model(x2, torch.full((3,), 800), y, iters=1, solver=recording, warm_start=warm)
        plain_first = model(x1, torch.full((3,), 900), y, iters=1, solver=recording)
        plain = model(x2, torch.full((3,), 800), y, iters=1, solver=recording)
    assert torch.equal(starts[0], pre_outs[0])  # the first step falls back to x_pre
    assert torch.equal(starts[1], solutions[0])  # the second starts from the first step's solution
    assert torch.equal(starts[3], pre_outs[3])  # without reuse: from the current x_pre
    assert torch.equal(first, plain_first)
    assert (reused - plain).abs().max() > 1e-3 * plain.abs().max()
    assert warm.uses == 1


def test_fpdm_conditioning_post_and_final_see_the_class_fixed_point_sees_t():
    """Perturb t (class fixed) and y (t fixed) and record the conditioning vector each part receives."""
    model = _perturbed_fpdm()
    seen: dict[str, list] = {"pre": [], "fixed_point": [], "post": [], "final": []}
    model.pre_blocks[0].register_forward_hook(lambda m, inp, out: seen["pre"].append(inp[1].clone()))
    # the fixed point block's conditioning enters through its adaLN vectors, computed once per solve
    model.fixed_point.block.adaLN_modulation.register_forward_hook(
        lambda m, inp, out: seen["fixed_point"].append(inp[0].clone())
    )
    model.post_blocks[0].register_forward_hook(lambda m, inp, out: seen["post"].append(inp[1].clone()))
    model.final_layer.register_forward_hook(lambda m, inp, out: seen["final"].append(inp[1].clone()))
    x = torch.randn(2, 1, 8, 8)
    calls = [
        (torch.tensor([10, 10]), torch.tensor([3, 4])),  # reference
        (torch.tensor([900, 900]), torch.tensor([3, 4])),  # t changed
        (torch.tensor([10, 10]), torch.tensor([5, 6])),
    ]  # y changed
    with torch.no_grad():
        outs = [model(x, t, y, iters=2) for t, y in calls]
        y_emb = [model.y_embedder(y, False, None, None) for _, y in calls]
    for part in ("pre", "post", "final"):
        ref, t_changed, y_changed = seen[part][0], seen[part][1], seen[part][2]
        assert torch.equal(ref, t_changed), part  # blind to t
        assert not torch.equal(ref, y_changed), part  # sees the class
        torch.testing.assert_close(ref, y_emb[0], rtol=0, atol=0)  # the class embedding itself
    fp = seen["fixed_point"]  # one conditioning per call (iters=2 evaluations share it)
    assert len(fp) == len(calls)
    assert not torch.equal(fp[0], fp[1]) and not torch.equal(fp[0], fp[2])  # sees t and y
    torch.testing.assert_close(fp[0], model.t_embedder(calls[0][0]) + y_emb[0])
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])

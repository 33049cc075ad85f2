"""The model contract (baselines/contract.py): one call signature for DiT, FPDM and the diffusers
adapter, results through a trace the caller owns, the generator and the attention function as
arguments, and misspelt keywords refused."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from baselines.contract import DiffusionBackbone, ForwardTrace
from baselines.dit import build_dit
from baselines.layers import WRITTEN_OUT_MAX_TOKENS, default_attention
from baselines.presets import get_preset
from fpdm.model import SolveTrace, build_fpdm
from fpdm.solvers import get_solver
from fpdm.training_modes import ImplicitTrainSpec

TINY_DEPTH = get_preset("tiny").depth


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 1, 8, 8, generator=g),
        torch.randint(0, 1000, (batch,), generator=g),
        torch.randint(0, 10, (batch,), generator=g),
    )


def _perturbed(model):
    """Break adaLN-Zero's identity init so every block and input matters."""
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _dit(**kw):
    torch.manual_seed(0)
    return _perturbed(build_dit("tiny", input_size=8, in_channels=1, num_classes=10, **kw)).eval()


def _fpdm(**kw):
    torch.manual_seed(0)
    return _perturbed(build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10, **kw)).eval()


def _diffusers():
    from baselines.diffusers_dit import build_diffusers_dit

    cfg = SimpleNamespace(pretrained_path=None, preset="tiny", learn_sigma=True)
    torch.manual_seed(0)
    return _perturbed(build_diffusers_dit(cfg, image_size=8, channels=1, num_classes=10)).eval()


BUILDERS = {"dit": _dit, "fpdm": _fpdm, "dit_diffusers": _diffusers}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_model_implements_the_contract(name):
    model = BUILDERS[name]()
    assert isinstance(model, DiffusionBackbone)
    params = inspect.signature(model.forward).parameters
    for key in ("drop_labels", "generator", "trace"):
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY, key
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # no **kwargs sink
    x, t, y = _inputs()
    trace = ForwardTrace()
    with torch.no_grad():
        out = model(x, t, y, trace=trace)
    assert out.shape == (3, 2 * model.in_channels, 8, 8)
    # a plain ForwardTrace gets the block passes of the call (FPDM: 1 pre + default iterations + 1 post)
    assert trace.block_passes == model.block_passes() == TINY_DEPTH
    assert model.num_explicit_blocks == (2 if model.is_implicit else TINY_DEPTH)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("bad", [{"drop_label": None}, {"tarce": None}, {"generater": None}])
def test_a_misspelt_keyword_raises(name, bad):
    model = BUILDERS[name]()
    with pytest.raises(TypeError, match=next(iter(bad))):
        model(*_inputs(), **bad)


@pytest.mark.parametrize("name", ["dit", "dit_diffusers"])
def test_explicit_models_refuse_fixed_point_options(name):
    """``iters`` means nothing to an explicit model: passing it is a caller's bug, not a no-op."""
    with pytest.raises(TypeError, match="iters"):
        BUILDERS[name]()(*_inputs(), iters=4)


def test_interleaved_fpdm_calls_keep_their_own_traces():
    """Two samplers sharing one model, calls interleaved: each trace holds its own call's solve.
    With the old ``model.last_solve`` attribute, reading A after B ran would give B's numbers."""
    model = _fpdm()
    x, t, y = _inputs()
    a, b = SolveTrace(), SolveTrace()
    with torch.no_grad():
        model(x, t, y, iters=3, solver=get_solver("picard"), tol=0.0, trace=a)
        model(x, t, y, iters=7, solver=get_solver("anderson"), tol=0.0, trace=b)
    # tol = 0 runs exactly the requested evaluations; block passes add 1 pre + 1 post (tiny FPDM)
    assert (a.fixed_point_evals, a.solve.nfe, a.block_passes) == (3, 3, 5)
    assert (b.fixed_point_evals, b.solve.nfe, b.block_passes) == (7, 7, 9)
    assert a.solve.rel_residuals.shape == (3, 3) and b.solve.rel_residuals.shape == (7, 3)
    assert a.counts is None and b.counts is None  # no training call


def test_training_trace_survives_an_evaluation_call_before_backward():
    """The implicit mode counts its adjoint VJPs during backward, into the counts of *its* trace:
    an evaluation call made between forward and backward (as a sampler preview would) cannot
    replace them."""
    spec = ImplicitTrainSpec("implicit", 0, 4, 1, 4, implicit_solver="picard", implicit_tol=0.0)
    model = _fpdm(train_spec=spec).train()
    x, t, y = _inputs()
    drop = torch.zeros(3, dtype=torch.bool)
    train = SolveTrace()
    loss = model(x, t, y, drop_labels=drop, trace=train).square().mean()
    evaluation = SolveTrace()
    with torch.no_grad():
        model(x, t, y, iters=2, trace=evaluation)
    loss.backward()
    budget = spec.no_grad_max + spec.with_grad_max  # both solves run their whole budget at tol = 0
    assert (train.counts.no_grad, train.counts.with_grad, train.counts.vjp) == (budget, 1, budget)
    assert train.block_passes == 2 + budget + 1 and train.solve is None
    assert evaluation.block_passes == 2 + 2 and evaluation.solve.nfe == 2


def test_the_generator_argument_makes_the_training_draws():
    """S-JFB's n and m (and nothing global) come from the call's generator: equal seeds give equal
    counts and outputs; the model keeps no generator of its own."""
    spec = ImplicitTrainSpec("sjfb", 0, 10, 1, 12)
    model = _fpdm(train_spec=spec).train()
    x, t, y = _inputs()
    drop = torch.zeros(3, dtype=torch.bool)

    def run(seed: int) -> SolveTrace:
        trace = SolveTrace()
        model(x, t, y, drop_labels=drop, generator=torch.Generator().manual_seed(seed), trace=trace)
        return trace

    draws = [run(seed) for seed in range(8)]
    for seed, trace in enumerate(draws):
        g = torch.Generator().manual_seed(seed)  # the draw order of Algorithm 1: n, then m
        n = int(torch.randint(0, 11, (1,), generator=g))
        m = int(torch.randint(1, 13, (1,), generator=g))
        assert (trace.counts.no_grad, trace.counts.with_grad) == (n, m)
    assert len({(d.counts.no_grad, d.counts.with_grad) for d in draws}) > 1
    assert not hasattr(model, "train_generator") and not hasattr(model, "last_solve")


def test_the_generator_argument_makes_the_label_dropout():
    model = _dit(class_dropout=0.5).train()
    x, t, y = _inputs(batch=32)
    with torch.no_grad():
        outs = [model(x, t, y, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


class _CountingAttention:
    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, v):
        self.calls += 1
        return default_attention(q, k, v)


@pytest.mark.parametrize("name", ["dit", "fpdm"])
def test_the_attention_function_parameter_is_honoured(name):
    """Every block calls the attention it was built with (no module-level alias to patch): once per
    block pass, and a different function changes the output."""
    build = BUILDERS[name]
    counting = _CountingAttention()
    model, plain = build(attention=counting), build()
    x, t, y = _inputs()
    kw = {"iters": 5, "tol": 0.0} if name == "fpdm" else {}
    trace = ForwardTrace()
    with torch.no_grad():
        out = model(x, t, y, trace=trace, **kw)
        ref = plain(x, t, y, **kw)
    assert counting.calls == trace.block_passes == (1 + 5 + 1 if name == "fpdm" else TINY_DEPTH)
    assert torch.equal(out, ref)  # same weights, same kernel behind the counter

    def no_mixing(q, k, v):  # each token attends only to itself
        return v

    mixed = build(attention=no_mixing)
    with torch.no_grad():
        assert not torch.allclose(mixed(x, t, y, **kw), ref)


@pytest.mark.parametrize("side", ["at", "above"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_default_attention_is_scaled_dot_product_attention(side, dtype):
    """The written-out path (short sequences on CPU, ``WRITTEN_OUT_MAX_TOKENS`` per dtype) computes
    softmax(q k^T / sqrt(d)) v as the fused kernel does, values and gradients, on both sides of the
    switch; above it (and always in float64) it is the fused kernel itself, bit for bit."""
    tokens = WRITTEN_OUT_MAX_TOKENS.get(dtype, 16) + (side == "above")
    g = torch.Generator().manual_seed(tokens)
    q, k, v = (torch.randn(2, 4, tokens, 16, generator=g).to(dtype).requires_grad_() for _ in range(3))
    out = default_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    fused = side == "above" or dtype not in WRITTEN_OUT_MAX_TOKENS
    assert torch.equal(out, ref) == fused  # the written-out path really runs at the threshold
    low = dtype == torch.bfloat16
    tol = dict(atol=2e-2, rtol=2e-2) if low else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    refs = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a.float(), b.float(), **(dict(atol=5e-2, rtol=5e-2) if low else tol))
    # the textbook formula, computed independently in float64
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    expected = torch.softmax(q64 @ k64.transpose(-2, -1) / 4.0, dim=-1) @ v64
    torch.testing.assert_close(out.double(), expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_gelu_tanh_is_gelus_tanh_form_on_every_path(dtype, grad):
    """``gelu_tanh`` (written out as x * sigmoid(2u) where no gradient flows, on CPU in fp32/fp64)
    equals 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) computed in float64, over a range that
    covers the sigmoid's saturation, leaves its input untouched, and has ATen's gradient; bf16 and
    the gradient path are ATen's kernel, bit for bit."""
    from baselines.layers import gelu_tanh

    x = torch.cat([torch.linspace(-12, 12, 4001), torch.tensor([-60.0, 60.0, 0.0])]).to(dtype)
    x64 = x.double()
    expected = 0.5 * x64 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    before = x.clone()
    if grad:
        x.requires_grad_()
    with torch.set_grad_enabled(grad):
        out = gelu_tanh(x)
    assert torch.equal(x.detach(), before)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(out.detach().double(), expected, **tol)
    if grad or dtype == torch.bfloat16:
        assert torch.equal(out, F.gelu(x, approximate="tanh"))
    if grad:
        (g,) = torch.autograd.grad(out.sum(), x)
        (ref,) = torch.autograd.grad(F.gelu(x, approximate="tanh").sum(), x)
        assert torch.equal(g, ref)

"""Speed paths that must not change results: the EMA foreach update, the hoisted fixed point
invariants, fused adaLN multiply-adds and the optional torch.compile (harness/runtime/compile.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from baselines.dit import build_dit
from fpdm.model import build_fpdm
from harness.runtime.compile import inductor_unavailable, set_compiled
from harness.stages.train import _ema_update


def _randomised(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_ema_foreach_update_equals_per_parameter_formula():
    torch.manual_seed(0)
    model = _randomised(build_dit("tiny", input_size=8, in_channels=1, num_classes=10))
    ema = _randomised(copy.deepcopy(model))
    expected = [e.detach().clone() for e in ema.parameters()]
    with torch.no_grad():
        for e, p in zip(expected, model.parameters()):
            e.mul_(0.9).add_(p, alpha=0.1)  # e <- decay e + (1 - decay) p
    _ema_update(ema, model, 0.9)
    for e, x in zip(ema.parameters(), expected):
        torch.testing.assert_close(e, x, rtol=1e-6, atol=1e-7)


def test_hoisted_fixed_point_step_matches_the_plain_layer():
    """f(z) from ``bind`` (invariants once) equals Block(MLP([z, x_inj]), c) recomputed (Sec. 3.2)."""
    torch.manual_seed(0)
    model = _randomised(build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10)).eval()
    z, x_inj, c = torch.randn(3, 16, 64), torch.randn(3, 16, 64), torch.randn(3, 64)
    f = model.fixed_point.bind(x_inj, c)
    torch.testing.assert_close(f(z), model.fixed_point(z, x_inj, c), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(inductor_unavailable(torch.device("cpu")) is not None, reason="inductor cannot compile on this CPU")
def test_compiled_and_eager_give_the_same_outputs():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _randomised(
        build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10, pre_depth=1, post_depth=1)
    ).eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 200, 500, 999]), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        eager = model(x, t, y, iters=3)
        assert set_compiled(model, True, "sample.compile")
        compiled = model(x, t, y, iters=3)
        set_compiled(model, False, "sample.compile")
        again = model(x, t, y, iters=3)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert torch.equal(again, eager)  # restored to eager
    assert not torch.equal(compiled, torch.zeros_like(compiled))


@pytest.mark.slow
@pytest.mark.skipif(inductor_unavailable(torch.device("cpu")) is not None, reason="inductor cannot compile on this CPU")
def test_compiled_training_step_matches_eager_across_batch_sizes():
    """train.compile: loss and gradients of an S-JFB step equal eager within tolerance, and a batch
    of another size (the sampler compacts converged rows) runs compiled too, and once the graphs
    are dynamic a further size adds no graph."""
    import torch._dynamo

    torch.set_num_threads(1)
    model = _randomised(
        build_fpdm("tiny", input_size=8, in_channels=1, num_classes=10, pre_depth=1, post_depth=1)
    ).train()

    def grads(batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        g = torch.Generator().manual_seed(batch)
        x, t, y = (
            torch.randn(batch, 1, 8, 8, generator=g),
            torch.randint(0, 1000, (batch,), generator=g),
            torch.arange(batch) % 10,
        )
        model.zero_grad(set_to_none=True)
        loss = model(x, t, y, generator=torch.Generator().manual_seed(1)).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager = {b: grads(b) for b in (8, 5, 3)}
    torch._dynamo.reset()
    assert set_compiled(model, True, "train.compile")
    compiled = {8: grads(8), 5: grads(5)}  # the explicit blocks turn dynamic at their first new size
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled[3] = grads(3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # no graph per batch size
    set_compiled(model, False, "train.compile")
    for b in eager:
        torch.testing.assert_close(compiled[b][0], eager[b][0], rtol=1e-4, atol=1e-6)
        for ge, gc in zip(eager[b][1], compiled[b][1]):
            torch.testing.assert_close(gc, ge, rtol=1e-3, atol=1e-5)


def test_compile_without_a_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr("shutil.which", lambda name: None)
    model = build_dit("tiny", input_size=8, in_channels=1, num_classes=10)
    with pytest.warns(UserWarning, match=r"train.compile=true ignored, running eager: no C\+\+ compiler"):
        assert set_compiled(model, True, "train.compile", torch.device("cpu")) is False
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())


def test_chunked_npz_round_trip_and_np_load(tmp_path):
    """samples.npz written shard by shard reads back whole with np.load and in row chunks."""
    import numpy as np

    from harness.runtime.npz_stream import iter_npz_rows, npz_shape, write_npz_chunked

    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8) for n in (5, 3, 4)]
    path = write_npz_chunked(
        tmp_path / "s.npz", {"images": ((12, 3, 4, 4), np.uint8, iter(parts))}, small={"labels": np.arange(12)}
    )
    whole = np.concatenate(parts)
    with np.load(path) as z:
        assert np.array_equal(z["images"], whole) and np.array_equal(z["labels"], np.arange(12))
    assert npz_shape(path, "images") == ((12, 3, 4, 4), np.dtype(np.uint8))
    chunks = list(iter_npz_rows(path, "images", 5))
    assert [len(c) for c in chunks] == [5, 5, 2] and np.array_equal(np.concatenate(chunks), whole)
    with pytest.raises(ValueError, match="chunks hold 8 rows"):
        write_npz_chunked(tmp_path / "bad.npz", {"images": ((12, 3, 4, 4), np.uint8, iter(parts[:2]))})

"""Data-parallel sampling on CPU (gloo): 2 ranks write the same images as 1 process.

Each rank samples its contiguous index range of shards (harness/sample.py ``rank_ranges``) with
per-image seeds, rank 0 merges; the images must be bit-identical to one process and the merged
record must count every image once. 3 shards over 2 ranks also checks an uneven split. Each rank is
this file run as a script (``python tests/test_dp_sampling.py RANK WORLD PORT DIR``), as in
tests/test_ddp.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rank_helpers import launch_ranks, rank_config, wait_ranks, write_rank_summary

HERE = Path(__file__).resolve()
OVERRIDES = [
    "model=fpdm",
    "sample.num_images=12",
    "sample.batch_size=4",
    "sample.steps=3",
    "run.threads=1",
    "run.device=cpu",
]


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    import torch

    from harness.data import build_dataset
    from harness.runtime.distributed import setup_distributed
    from harness.stages.job import _build, diffusion_spec, sampling_plan
    from harness.stages.sample import sample_model

    with rank_config(rank, world, port, OVERRIDES) as cfg:
        data = build_dataset(cfg.data)
        model = _build(cfg, data)
        with torch.no_grad():  # the zero-initialised adaLN would make every image the same
            g = torch.Generator().manual_seed(3)
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        info = setup_distributed(torch.device("cpu"))
        summary = sample_model(
            model,
            data,
            diffusion_spec(cfg),
            cfg,
            sampling_plan(cfg),
            out,
            torch.device("cpu"),
            progress=False,
            info=info,
        )
    write_rank_summary(out, rank, summary)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dp_sample")
    two = base / "w2"
    procs = launch_ranks(HERE, 2, two)
    (base / "w1").mkdir()
    _worker(0, 1, 0, base / "w1")  # the reference: one process
    codes, logs = wait_ranks(procs, 300, "a sampling rank hung")
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    return base / "w1", two


def test_two_ranks_sample_bit_identical_images(runs):
    one, two = runs
    with np.load(one / "samples.npz") as a, np.load(two / "samples.npz") as b:
        assert a["images"].shape == (12, 1, 8, 8)
        assert np.array_equal(a["labels"], b["labels"])
        assert np.array_equal(a["images"], b["images"])
        assert len(np.unique(a["images"].reshape(12, -1), axis=0)) > 1  # not a degenerate model


def test_each_rank_wrote_its_own_shards(runs):
    _, two = runs
    by_rank = {p.name: int(np.load(p)["rank"]) for p in sorted((two / "shards").glob("shard-*.npz"))}
    # 3 shards over 2 ranks: rank 0 takes [0, 3//2) = the first, rank 1 the other two
    assert by_rank == {"shard-0000000-0000004.npz": 0, "shard-0000004-0000008.npz": 1, "shard-0000008-0000012.npz": 1}


def test_merged_record_counts_every_image_once(runs):
    one, two = runs
    s1 = json.loads((one / "summary-rank0.json").read_text())
    s2 = json.loads((two / "summary-rank0.json").read_text())
    assert json.loads((two / "summary-rank1.json").read_text()) == {}  # only rank 0 writes the record
    assert s1["num_images"] == s2["num_images"] == 12
    assert (s1["sample_world_size"], s2["sample_world_size"]) == (1, 2)
    assert s2["solver_nfe_per_image"] == pytest.approx(s1["solver_nfe_per_image"])
    assert s2["solver_trace"]["iters"] == s1["solver_trace"]["iters"]
    assert s2["solver_trace"]["residual"] == pytest.approx(s1["solver_trace"]["residual"], rel=1e-12)


def test_rank_ranges_cover_every_shard_once():
    from harness.runtime.distributed import DistInfo
    from harness.stages.sample import rank_ranges, shard_ranges

    ranges = shard_ranges(1003, 100)
    for world in (1, 2, 3, 8, 16):
        got = [r for k in range(world) for r in rank_ranges(ranges, DistInfo(k, world))]
        assert got == ranges


def _failing_worker(rank: int, world: int, port: int, out: Path) -> None:
    """Rank 1 fails on its first shard (as a full disk would); every rank writes what it raised."""
    import harness.stages.sample as sample_stage

    if rank == 1:

        def no_space(*args, **kwargs):
            raise OSError("No space left on device (rank 1, test)")

        sample_stage._sample_shard = no_space
    try:
        _worker(rank, world, port, out)
    except Exception as exc:
        (out / f"error-rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise SystemExit(3) from None


def test_a_failed_rank_stops_every_rank_with_its_cause(tmp_path):
    """A rank that fails must not leave the others waiting at the barrier until the process group
    times out (30 minutes for gloo): every rank raises at once, naming the failed rank's cause, so
    rank 0's failed record says what went wrong."""
    procs = launch_ranks(HERE, 2, tmp_path, "fail")
    codes, logs = wait_ranks(procs, 120, "a rank waited for the failed one")
    assert codes == [3, 3], "\n".join(log[-2000:] for log in logs)
    for rank in (0, 1):
        err = (tmp_path / f"error-rank{rank}.txt").read_text()
        assert err.startswith("RuntimeError: 1 of 2 ranks failed: rank 1: OSError: No space left on device"), err
    assert not list(tmp_path.glob("summary-rank*.json"))


if __name__ == "__main__":
    run = _failing_worker if sys.argv[5:] == ["fail"] else _worker
    run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))

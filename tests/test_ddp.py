"""Data-parallel training on CPU (gloo), initialised from torchrun's variables.

2 processes at global batch 16 (8 per rank) must log the same per-step losses and end with the
same weights as 1 process at global batch 16 (harness/stages/train.py, harness/runtime/distributed.py), and a
signal that reaches only one rank must make both checkpoint at the same step and leave together.
The ranks train through ``DistributedDataParallel``; every training method and DiT (with and
without gradient checkpointing) must reproduce one process too, so no parameter goes without a
gradient on some step (which DDP without ``find_unused_parameters`` would refuse).
Each rank is this file run as a script (``python tests/test_ddp.py RANK WORLD PORT DIR BUDGET|variants``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rank_helpers import launch_ranks, rank_config, write_rank_summary

HERE = Path(__file__).resolve()
OVERRIDES = [
    "model=fpdm",
    "train.batch_size=16",
    "train.log_every=1",
    "train.ckpt_every=1000",
    "train.lr=1e-3",
    "run.threads=1",
    "run.device=cpu",
]


def _worker(rank: int, world: int, port: int, out: Path, steps: int) -> None:
    """One rank: build the model and data from the app's config and train on CPU."""
    import torch

    from harness.data import build_dataset
    from harness.diffusion.spec import diffusion_spec
    from harness.runtime.distributed import setup_distributed
    from harness.stages.job import _build
    from harness.stages.train import train_model

    with rank_config(rank, world, port, [*OVERRIDES, f"train.budget.value={steps}"]) as cfg:
        torch.manual_seed(1000 + rank)  # different init per rank: rank 0's weights must be broadcast
        data = build_dataset(cfg.data)
        model = _build(cfg, data)
        device = torch.device("cpu")
        info = setup_distributed(device)
        summary = train_model(model, data, diffusion_spec(cfg), cfg, out, device, info, progress=False)
    write_rank_summary(out, rank, summary)


# each beside the default FPDM with S-JFB above; 2 steps each, one process group for all
VARIANTS = {
    "jfb": ["train.method=jfb"],
    "multistep_jfb": ["train.method=multistep_jfb"],
    "full": ["train.method=full"],
    "implicit": ["train.method=implicit"],
    "fpdm_ckpt": ["model.grad_checkpointing=true"],
    "dit": ["model=dit"],
    "dit_ckpt": ["model=dit", "model.grad_checkpointing=true"],
}


def _variants_worker(rank: int, world: int, port: int, out: Path) -> None:
    """Every variant in turn, 2 steps each, in one process (one process group when ``world > 1``)."""
    import torch

    from harness.data import build_dataset
    from harness.diffusion.spec import diffusion_spec
    from harness.runtime.distributed import setup_distributed
    from harness.stages.job import _build
    from harness.stages.train import train_model

    for name, extra in VARIANTS.items():
        with rank_config(rank, world, port, [*OVERRIDES, *extra, "train.budget.value=2"]) as cfg:
            torch.manual_seed(1000 + rank)
            data = build_dataset(cfg.data)
            model = _build(cfg, data)
            info = setup_distributed(torch.device("cpu"))
            train_model(model, data, diffusion_spec(cfg), cfg, out / name, torch.device("cpu"), info, progress=False)


def test_every_training_method_and_dit_match_one_process_under_ddp(tmp_path):
    from safetensors.torch import load_file

    procs = launch_ranks(HERE, 2, tmp_path / "w2", "variants")
    _variants_worker(0, 1, 0, tmp_path / "w1")
    codes = _wait(procs, timeout=600)
    assert codes == [0, 0], [p.communicate()[0][-2000:] for p in procs]
    for name in VARIANTS:
        one, two = tmp_path / "w1" / name, tmp_path / "w2" / name
        assert [v for _, v in _losses(two)] == pytest.approx([v for _, v in _losses(one)], rel=1e-5, abs=1e-6), name
        w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
        assert w1.keys() == w2.keys(), name  # un-prefixed keys ("module." would be DDP's)
        worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        # DiT's zero-initialised adaLN layers get gradients near float rounding in the first steps,
        # which AdamW normalises to steps of about lr (1e-3): a rounding difference in the ranks'
        # summation order moves them by ~1.4e-5 (the same with an all-reduce per gradient), well
        # inside a twentieth of one step; a wrong average (a missing or doubled rank) is ~lr
        assert worst < 5e-5, f"{name}: weights differ by {worst}"


def _launch(world: int, out: Path, steps: int) -> list[subprocess.Popen]:
    return launch_ranks(HERE, world, out, steps)


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a training rank hung: " + " | ".join((p.communicate()[0] or "")[-800:] for p in procs))
    return codes


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(d["step"], d["loss"]) for d in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    procs = _launch(2, base / "w2", steps=4)  # the two ranks start while the reference trains here
    (base / "w1").mkdir()
    _worker(0, 1, 0, base / "w1", steps=4)  # the reference: one process, same global batch
    codes = _wait(procs)
    logs = [p.communicate()[0] for p in procs]
    assert codes == [0, 0], f"ranks exited {codes}:\n" + "\n".join(log[-2000:] for log in logs)
    return base / "w1", base / "w2"


def test_two_ranks_log_the_same_losses_as_one(runs):
    one, two = runs
    l1, l2 = _losses(one), _losses(two)
    assert [s for s, _ in l1] == [s for s, _ in l2] == [1, 2, 3, 4]
    # the logged loss is the global-batch mean, not rank 0's half of the batch
    assert [v for _, v in l2] == pytest.approx([v for _, v in l1], rel=1e-5, abs=1e-6)


def test_two_ranks_end_with_the_same_weights_as_one(runs):
    from safetensors.torch import load_file

    one, two = runs
    for name in ("model", "ema"):
        w1, w2 = load_file(str(one / f"{name}.safetensors")), load_file(str(two / f"{name}.safetensors"))
        assert w1.keys() == w2.keys()
        worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        assert worst < 1e-5, f"{name} weights differ by {worst}"


def test_rank0_writes_and_summary_reports_world_size(runs):
    _, two = runs
    s0 = json.loads((two / "summary-rank0.json").read_text())
    s1 = json.loads((two / "summary-rank1.json").read_text())
    assert s0["train_world_size"] == s1["train_world_size"] == 2
    assert s0["train_images"] == 4 * 16  # images of the global batch, counted once
    assert s0["train_final_loss"] == pytest.approx(s1["train_final_loss"])  # ranks agree on the logged loss
    assert json.loads((two / "train_summary.json").read_text())["train_world_size"] == 2
    assert sorted(p.name for p in two.glob("ckpt-*.pt")) == ["ckpt-00000004.pt"]


def test_signal_to_one_rank_checkpoints_both_at_the_same_step(tmp_path):
    """SIGUSR1 reaches rank 1 only (rank 0 never sees it): the pending signal is agreed over the
    ranks, rank 0 writes the checkpoint at that step boundary and both exit with 128 + SIGUSR1
    (nothing handled SIGUSR1 before training) instead of one of them hanging in a collective."""
    procs = _launch(2, tmp_path, steps=100_000)
    log = tmp_path / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("training did not start: " + " | ".join(p.communicate()[0][-800:] for p in procs))
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGUSR1)
    codes = _wait(procs, timeout=120)
    assert codes == [128 + signal.SIGUSR1] * 2, [p.communicate()[0][-1500:] for p in procs]
    ckpts = sorted(tmp_path.glob("ckpt-*.pt"))
    assert len(ckpts) == 1
    last_logged = _losses(tmp_path)[-1][0]
    assert int(ckpts[0].stem.split("-")[1]) == last_logged  # saved at the boundary of the last step run


if __name__ == "__main__":
    if sys.argv[5] == "variants":
        _variants_worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))

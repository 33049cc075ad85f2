"""Train and sample stages: resumable bit-exact training, batch-size-independent samples, budgets
counted as spent, memory accounting."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from config_helpers import digits_data, structured_config
from safetensors.torch import load_file

from harness.compute.plan import plan_fpdm
from harness.diffusion.spec import diffusion_spec
from harness.stages.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from harness.stages.models import build_model
from harness.stages.sample import sample_model
from harness.stages.train import global_batch_indices, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return digits_data()


def _cfg(**train):
    return structured_config({"train.batch_size": 16, "train.log_every": 1, **train})


def _model(cfg, data):
    torch.manual_seed(0)
    return build_model(
        cfg.model, cfg.train, image_size=data.image_size, channels=data.channels, num_classes=data.num_classes
    )


def test_data_position_is_a_function_of_the_step():
    a = torch.cat([global_batch_indices(50, 16, s, 3) for s in range(7)])
    # every epoch is a permutation: the first 50 indices cover the data exactly once
    assert sorted(a[:50].tolist()) == list(range(50))
    assert torch.equal(global_batch_indices(50, 16, 5, 3), a[80:96])


def test_resume_after_interruption_gives_identical_weights(tmp_path, data):
    cfg = _cfg(**{"train.budget.value": 8, "train.ckpt_every": 3})
    spec = diffusion_spec(cfg)
    train_model(_model(cfg, data), data, spec, cfg, tmp_path / "straight", torch.device("cpu"), progress=False)

    # interrupted: a 5-step budget leaves checkpoints at steps 3 and 5; delete the final weights
    # as a crash would, then resume to 8 steps from the newest checkpoint
    part = _cfg(**{"train.budget.value": 5, "train.ckpt_every": 3})
    train_model(_model(part, data), data, spec, part, tmp_path / "resumed", torch.device("cpu"), progress=False)
    for f in ("ema.safetensors", "model.safetensors"):
        (tmp_path / "resumed" / f).unlink()
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["ckpt-00000003.pt", "ckpt-00000005.pt"]
    summary = train_model(_model(cfg, data), data, spec, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    assert summary["train_steps"] == 8
    for f in ("ema.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / f)), load_file(str(tmp_path / "resumed" / f))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{f} differs after resume"


def test_block_pass_budget_counts_sjfb_draws(tmp_path, data):
    cfg = _cfg(**{"train.budget.unit": "block_passes", "train.budget.value": 40})
    summary = train_model(
        _model(cfg, data), data, diffusion_spec(cfg), cfg, tmp_path, torch.device("cpu"), progress=False
    )
    # each step costs 2 explicit blocks + n + m drawn iterations (n in 0..3, m in 1..3): 3..8 passes
    assert 40 <= summary["train_block_passes_per_image"] < 40 + 8
    assert 40 / 8 <= summary["train_steps"] <= 40 / 3 + 1
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == summary["train_steps"]


def test_corrupt_checkpoint_names_the_file_and_keeps_the_previous(tmp_path, data):
    cfg = _cfg(**{"train.budget.value": 4, "train.ckpt_every": 2})
    train_model(_model(cfg, data), data, diffusion_spec(cfg), cfg, tmp_path, torch.device("cpu"), progress=False)
    older, newest = list_checkpoints(tmp_path)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=newest.name):
        load_checkpoint(newest)
    assert load_checkpoint(older)["step"] == 2


def _sample(cfg, data, model, tmp, batch_size):
    cfg.sample.batch_size = batch_size
    plan = plan_fpdm(60, 2, iters=2, schedule="increasing")
    sample_model(model, data, diffusion_spec(cfg), cfg, plan, tmp, torch.device("cpu"), progress=False)
    with np.load(tmp / "samples.npz") as blob:
        return blob["images"], blob["labels"]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samples_do_not_depend_on_batch_size(tmp_path, data, sampler):
    cfg = _cfg()
    cfg.sample.sampler = sampler
    cfg.sample.num_images = 14
    cfg.sample.reuse = True
    model = _model(cfg, data).eval()
    with torch.no_grad():  # break the zero init so that the model output matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = _sample(cfg, data, model, tmp_path / "b4", 4)
    b = _sample(cfg, data, model, tmp_path / "b7", 7)
    assert np.array_equal(a[1], b[1])
    assert np.array_equal(a[0], b[0])


def test_existing_shards_are_skipped(tmp_path, data):
    cfg = _cfg()
    cfg.sample.num_images = 8
    model = _model(cfg, data).eval()
    _sample(cfg, data, model, tmp_path, 4)
    shard = sorted((tmp_path / "shards").iterdir())[0]
    before = shard.stat().st_mtime_ns
    time.sleep(0.01)
    _sample(cfg, data, model, tmp_path, 4)
    assert shard.stat().st_mtime_ns == before

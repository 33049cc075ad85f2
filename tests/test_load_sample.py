"""Trained models outside the harness (issue 10): ``harness.models.load`` returns the EMA weights of
the job's checkpoint with its config, and ``python -m harness.sample`` samples a trained job.

A tiny FPDM is trained once for the module through the Hydra app (train stage only, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.models import load
from harness.stages.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hydra_app, fast_overrides_for):
    root = tmp_path_factory.mktemp("trained")
    hydra_app([*fast_overrides_for(root), "run.stages=[train]"])
    (train_dir,) = (root / "cache" / "train").glob("*/")
    return {"root": root, "run": root / "run", "train_dir": train_dir}


@pytest.mark.parametrize("which", ["record", "job_dir", "train_dir"])
def test_load_returns_the_checkpoints_ema_weights_and_the_config(trained, which):
    path = {"record": trained["run"] / "record.json", "job_dir": trained["run"], "train_dir": trained["train_dir"]}
    model, cfg = load(path[which])
    ckpt = load_checkpoint(latest_checkpoint(trained["train_dir"]))
    state = model.state_dict()
    assert state.keys() == ckpt["ema"].keys()
    assert all(torch.equal(state[k], ckpt["ema"][k]) for k in state)
    # the EMA, not the raw weights: after 20 steps they differ
    assert any(not torch.equal(state[k], ckpt["model"][k]) for k in state)
    assert not model.training
    assert cfg.model.name == "fpdm" and cfg.train.budget.value == 20 and cfg.train.batch_size == 32
    x = torch.randn(3, 1, 8, 8)  # digits: 1 channel, 8x8
    with torch.no_grad():
        out = model(x, torch.tensor([999, 500, 1]), torch.tensor([0, 3, 9]))
    assert out.shape == (3, 2, 8, 8)  # learn_sigma: mean and variance channels
    assert torch.isfinite(out).all()


def test_sample_cli_writes_the_requested_images_and_a_grid(trained, offline_env, tmp_path):
    out = tmp_path / "out"
    args = [
        str(trained["run"]),
        "sample.num_images=64",
        "sample.budget=20",
        "sample.steps=5",
        "sample.match=blocks",  # a toy budget: in FLOPs 5 steps fall 4.6% short of DiT's 3 1/3 forwards
        "run.progress=false",
        "run.threads=1",
        f"out={out}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sample", *args], env=offline_env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out / "samples.npz") in proc.stdout and str(out / "grid.png") in proc.stdout
    with np.load(out / "samples.npz") as blob:
        images, labels = blob["images"], blob["labels"]
    assert images.shape == (64, 1, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (64,) and labels.min() >= 0 and labels.max() < 10
    assert images.std() > 0  # not a blank array
    assert (out / "grid.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # 5 steps of 2 explicit blocks + 2 iterations: the requested 20 block passes per image
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["block_passes_per_image"] == 20

    # in process, default output beside the record: image i depends on its seed alone, so the
    # first 8 images of a smaller run are the same images
    from harness.app.sample import main

    assert main([str(trained["run"]), "sample.num_images=8", *args[2:-1]]) == 0
    (default,) = trained["run"].glob("samples-*/samples.npz")
    with np.load(default) as blob:
        assert np.array_equal(blob["images"], images[:8]) and np.array_equal(blob["labels"], labels[:8])


def test_sample_cli_refuses_an_output_dir_of_other_settings(trained, tmp_path, capsys):
    from harness.app.sample import main

    base = [
        str(trained["train_dir"]),
        "sample.num_images=4",
        "sample.batch_size=4",
        "sample.steps=2",
        "run.progress=false",
        f"out={tmp_path}",
    ]
    assert main(base) == 0
    assert main([*base, "sample.seed=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds samples of another model or other settings" in err[0]


def test_a_job_and_its_cache_moved_elsewhere_still_load_and_sample(trained, tmp_path, monkeypatch, capsys):
    """Records name the cache by absolute path (fast_overrides): after copying the job and the
    cache to another root, the old cache is gone; the new root given on the command line finds it."""
    import shutil

    from harness.app.loading import LoadError
    from harness.app.sample import main

    moved = tmp_path / "elsewhere"
    shutil.copytree(trained["run"], moved / "job")
    shutil.copytree(trained["root"] / "cache", moved / "cache")
    record = json.loads((moved / "job" / "record.json").read_text())
    record["artifacts"]["checkpoint"] = "/gone/cache/train/x/ema.safetensors"  # as on the cluster it came from
    record["config"]["paths"]["cache_dir"] = "/gone/cache"
    (moved / "job" / "record.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoadError, match=r"give its new root \(harness.sample \.\.\. paths.cache_dir=DIR"):
        load(moved / "job")
    model, _ = load(moved / "job", cache_dir=moved / "cache")
    reference, _ = load(trained["run"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    args = ["sample.num_images=4", "sample.budget=20", "sample.steps=5", "sample.match=blocks", "run.progress=false"]
    assert main([str(moved / "job"), *args, f"paths.cache_dir={moved / 'cache'}", f"out={tmp_path / 's'}"]) == 0
    assert (tmp_path / "s" / "samples.npz").is_file()

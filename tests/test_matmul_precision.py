"""TF32 per stage (harness/runtime/matmul_precision.py): ``train.tf32`` (default on, as the official
training script) and ``sample.tf32`` (default off, as its sampling script) switch CUDA's fp32
products for one stage and restore the process's setting after; on CPU nothing changes. The flags are
process-wide, so the CUDA branch is exercised here without a GPU; the stage-level check that a CUDA
training really runs under it needs one."""

from __future__ import annotations

import pytest
import torch
from config_helpers import digits_data, structured_config
from omegaconf import OmegaConf

from harness.compute.plan import plan_fpdm
from harness.diffusion.spec import diffusion_spec
from harness.runtime.matmul_precision import cuda_tf32_enabled, tf32_matmuls
from harness.stages.cache import stage_keys
from harness.stages.models import build_model
from harness.stages.sample import sample_model
from harness.stages.train import train_model

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(autouse=True)
def full_fp32_around():
    """Every test starts from, and leaves the process in, full fp32 (PyTorch's default)."""
    with tf32_matmuls(False, CUDA):
        yield


def _pytorch_says_tf32() -> bool:
    """PyTorch's own readers, each of which must agree (and none raise) after a switch."""
    legacy = torch.backends.cuda.matmul.allow_tf32
    assert (torch.get_float32_matmul_precision() != "highest") == legacy
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        assert (torch.backends.cuda.matmul.fp32_precision == "tf32") == legacy
    return legacy


@pytest.mark.parametrize("outside", [False, True])
def test_a_cuda_stage_switches_tf32_and_restores_the_setting_it_found(outside):
    with tf32_matmuls(outside, CUDA):
        for inside in (True, False):
            with tf32_matmuls(inside, CUDA) as applied:
                assert applied is inside
                assert cuda_tf32_enabled() is inside and _pytorch_says_tf32() is inside
            assert cuda_tf32_enabled() is outside and _pytorch_says_tf32() is outside


def test_the_setting_is_restored_when_the_stage_fails():
    with pytest.raises(RuntimeError, match="stage failed"):
        with tf32_matmuls(True, CUDA):
            raise RuntimeError("stage failed")
    assert not cuda_tf32_enabled()


def test_a_setting_made_through_pytorchs_newer_api_is_read_and_restored():
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no torch.backends.cuda.matmul.fp32_precision (added in 2.9)")
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    with tf32_matmuls(True, CUDA):
        assert _pytorch_says_tf32()
    assert not _pytorch_says_tf32()


def test_on_cpu_nothing_changes():
    with tf32_matmuls(True, CPU) as applied:
        assert applied is False and not cuda_tf32_enabled()


def test_tf32_splits_the_cache_only_when_set_away_from_its_default():
    base = structured_config({})
    assert base.train.tf32 is True and base.sample.tf32 is False  # the official scripts' choices
    keys = stage_keys(base)
    # a config written before the knob existed keys its stages as the default does
    older = OmegaConf.create(OmegaConf.to_container(base))  # untyped, so keys can go
    del older.train["tf32"], older.sample["tf32"]
    assert stage_keys(older) == keys
    no_tf32_train = stage_keys(structured_config({"train.tf32": False}))
    assert no_tf32_train.train != keys.train
    tf32_sample = stage_keys(structured_config({"sample.tf32": True}))
    assert tf32_sample.train == keys.train and tf32_sample.sample != keys.sample


class _SeesTF32:
    """A forward pre-hook that records whether CUDA's fp32 products were in TF32 at each call."""

    def __init__(self):
        self.seen: set[bool] = set()

    def __call__(self, module, args):
        self.seen.add(cuda_tf32_enabled())


def _tiny_run(device: torch.device, tmp_path, **overrides):
    data = digits_data()
    cfg = structured_config({"train.batch_size": 8, "train.budget.value": 2, "sample.num_images": 4, **overrides})
    torch.manual_seed(0)
    model = build_model(
        cfg.model, cfg.train, image_size=data.image_size, channels=data.channels, num_classes=data.num_classes
    )
    hook = _SeesTF32()
    model.register_forward_pre_hook(hook)
    spec = diffusion_spec(cfg)
    train = train_model(model, data, spec, cfg, tmp_path / "train", device, progress=False)
    seen_in_training, hook.seen = hook.seen, set()
    sample = sample_model(
        model, data, spec, cfg, plan_fpdm(10, 1, iters=1, schedule="constant"), tmp_path / "s", device, progress=False
    )
    return train, seen_in_training, sample, hook.seen


def test_each_stage_asks_for_its_own_setting_and_cpu_stages_leave_the_flag_alone(tmp_path, monkeypatch):
    """Each stage passes its own key (not the other stage's, not the default) with its device; on
    CPU the process's flag, here left on by an outer setting, stays as it was throughout."""
    from harness.stages import sample as sample_stage
    from harness.stages import train as train_stage

    asked = []

    def spy(module):
        real = module.tf32_matmuls

        def recording(enabled, device):
            asked.append((module.__name__.rsplit(".", 1)[-1], enabled, device.type))
            return real(enabled, device)

        monkeypatch.setattr(module, "tf32_matmuls", recording)

    spy(train_stage)
    spy(sample_stage)
    with tf32_matmuls(True, CUDA):  # a process that had TF32 on before the job
        train, seen_train, sample, seen_sample = _tiny_run(CPU, tmp_path, **{"train.tf32": False, "sample.tf32": True})
    assert asked == [("train", False, "cpu"), ("sample", True, "cpu")]
    assert train["train_tf32_matmul"] is False and sample["sample_tf32_matmul"] is False  # nothing ran in TF32
    assert seen_train == seen_sample == {True}  # the CPU stages did not touch the CUDA flag


@pytest.mark.gpu  # skipped with the reason without CUDA (tests/conftest.py)
@pytest.mark.parametrize("train_tf32", [True, False])
def test_cuda_stages_run_under_their_own_setting(tmp_path, train_tf32):
    train, seen_train, sample, seen_sample = _tiny_run(CUDA, tmp_path, **{"train.tf32": train_tf32})
    assert seen_train == {train_tf32} and train["train_tf32_matmul"] is train_tf32
    assert seen_sample == {False} and sample["sample_tf32_matmul"] is False
    assert not cuda_tf32_enabled()  # restored after both stages

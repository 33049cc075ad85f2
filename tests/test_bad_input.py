"""Bad input (issue 7 item 6, issue 4's matrix of bad overrides): one line naming the key or file and
the fix, a non-zero exit, no traceback unless run.debug=true, nothing written. Inputs only a run
can see (a corrupt checkpoint or image) end as a failed record naming the file.

The matrix runs the pre-check in process (what ``python -m harness.run`` runs first); a handful of
cases go through the real command line; a hypothesis test mixes valid and invalid overrides.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.app.precheck import precheck
from harness.config.validate import ConfigError
from harness.stages.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Bad files and folders in a scratch cwd: paths in overrides are relative to it."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("not an image")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "weights.pt").write_bytes(b"not the inception weights")
    (tmp_path / "a_file").write_text("")
    # diffusers pipeline folders of pretrained DiT weights: one with its (epsilon, no zero-SNR)
    # scheduler config beside the transformer, as facebook/DiT-XL-2-256 ships, one without
    for name, sched in (
        ("dit_eps", {"_class_name": "DDIMScheduler", "prediction_type": "epsilon"}),
        ("dit_bare", None),
    ):
        (tmp_path / name / "transformer").mkdir(parents=True)
        (tmp_path / name / "transformer" / "config.json").write_text(json.dumps({"in_channels": 4, "out_channels": 8}))
        if sched:
            (tmp_path / name / "scheduler").mkdir()
            (tmp_path / name / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    return tmp_path


# (overrides, what the one-line message must contain)
BAD = [
    (["model.foo=1"], "model.foo"),  # unknown keys
    (["+trainn.lr=1"], "trainn"),
    (["trian.lr=1"], "trian"),
    (["solver=picard", "solver.m=5"], "solver.m"),
    (["model.pre_depth=abc"], "model.pre_depth"),  # wrong types
    (["sample.iters=1.5"], "sample.iters"),
    (["model.learn_sigma=maybe"], "model.learn_sigma"),
    (["train.budget.value=0"], "train.budget.value=0"),  # zero / negative budgets and iterations
    (["train.budget.value=-5"], "train.budget.value=-5"),
    (["sample.budget=0"], "sample.budget=0"),
    (["sample.iters=0"], "sample.iters=0"),
    (["sample.steps=-1"], "sample.steps=-1"),
    (["train.iters.with_grad.min=0"], "train.iters.with_grad"),
    (["train.iters.no_grad.min=4"], "train.iters.no_grad"),
    (["-m", "sample.iters=2,0"], "sample.iters=0"),  # one bad job sinks the command, before it runs
    (["model=dit", "sample.budget=61"], "sample.budget=61"),  # infeasible budgets
    (["sample.budget=5", "sample.steps=3"], "sample.budget"),
    (["-m", "model=dit,fpdm", "sample.budget=61"], "sample.budget=61"),
    (["model.pre_depth=3", "model.post_depth=3"], "model.pre_depth + model.post_depth"),  # deeper than the preset
    (["solver=newton"], "newton does not exist; valid solver options"),  # unknown names
    (["model=dit", "sample.sampler=heun", "sample.budget=60"], "must be odd: use 9 or 11"),  # 10 evaluations
    (["sample.schedule=zigzag"], "sample.schedule='zigzag'"),
    # issue 15: adaptive / greedy / searched schedules, refused before any calibration or sampling
    (["sample.schedule=adaptive", "sample.budget=8", "sample.steps=5"], "cannot run sample.steps=5"),
    (
        ["sample.schedule=adaptive", "sample.budget=100", "sample.steps=5", "sample.adaptive.max_iters_per_step=4"],
        "sample.adaptive.max_iters_per_step=4",
    ),
    (
        ["sample.schedule=greedy", "sample.budget=100", "sample.steps=5", "sample.adaptive.max_iters_per_step=4"],
        "raise sample.adaptive.max_iters_per_step",
    ),
    (
        ["sample.schedule=density", "sample.knots=[1,2,3,4]", "sample.steps=3", "sample.budget=30"],
        "sample.knots has 4 knots for 3 steps",
    ),
    (["sample.schedule=adaptive", "sample.adaptive.tol_min=0"], "sample.adaptive.tol_min=0.0"),
    (["sample.sampler=lms"], "sample.sampler='lms'"),
    (["data=imagenet"], "imagenet does not exist; valid data options"),
    (["data.name=imagenet"], "data.name='imagenet'"),
    (["model=unet"], "unet does not exist; valid model options"),
    (["model.preset=XXL/2"], "model.preset='XXL/2'"),
    (["train.method=magic"], "train.method='magic'"),
    (["diffusion.prediction_type=x0"], "diffusion.prediction_type='x0'"),
    (["metrics.extractor=clip"], "metrics.extractor='clip'"),
    (["data=image_folder"], "data.root"),  # data folders: unset, missing, empty, not images
    (["data=image_folder", "data.root=missing"], "data.root=missing does not exist"),
    (["data=image_folder", "data.root=empty"], "data.root=empty is empty"),
    (["data=image_folder", "data.root=texts"], "data.root=texts holds no image file"),
    (["data=latents", "data.root=empty"], "data.root=empty is empty"),
    (["metrics.extractor=inception-v3-compat"], "metrics.weights"),  # extractor weights
    # the metric follows the data: photos default to Inception (weights needed), digits-cnn is refused on them
    (
        ["data=image_folder", "data.root=images"],
        "inception-v3-compat (the default for data=image_folder) needs "
        "metrics.weights; offline weights: `python -m harness.metrics.inception --out PATH`",
    ),
    (
        ["data=image_folder", "data.root=images", "metrics.extractor=digits-cnn"],
        "metrics.extractor=digits-cnn was trained on scikit-learn's 8x8 grey digits and does not fit data=image_folder: "
        "set metrics.extractor=inception-v3-compat",
    ),
    (
        ["-m", "data=digits,image_folder", "data.root=images", "metrics.extractor=digits-cnn"],
        "does not fit data=image_folder",
    ),
    (
        ["metrics.extractor=inception-v3-compat", "metrics.weights=missing.pt"],
        "metrics.weights=missing.pt does not exist",
    ),
    (["metrics.weights=missing.pt"], "metrics.weights=missing.pt does not exist"),
    (["metrics.extractor=inception-v3-compat", "metrics.weights=weights.pt"], "weights.pt.sha256"),
    (
        ["metrics.extractor=inception-v3-compat", "metrics.weights=weights.pt", "metrics.weights_sha256=00ff"],
        "does not match the expected 00ff",
    ),
    (["hydra.run.dir=a_file/run"], "hydra.run.dir=a_file/run is not writable"),  # unwritable outputs
    (["-m", "hydra.sweep.dir=a_file/sweep"], "hydra.sweep.dir=a_file/sweep is not writable"),
    (["paths.cache_dir=a_file/cache"], "paths.cache_dir=a_file/cache is not writable"),
    (["run.device=tpu"], "run.device='tpu'"),  # run / misc
    (["run.stages=[train,deploy]"], "run.stages='deploy'"),
    (["data.split=val"], "data.split='val'"),
    (["metrics.reference_split=val"], "metrics.reference_split='val'"),
    (["sample.num_images=10", "sample.seed_ranges=3"], "sample.seed_ranges=3"),
    (["model=dit", "sample.reuse=true"], "sample.reuse=true needs model=fpdm"),
    (["protocol=imagenet"], "imagenet does not exist; valid protocol options"),  # protocols
    (["sample.clip_mode=adm"], "sample.clip_mode='adm'"),
    # weights trained under another diffusion process cannot carry the paper's protocol
    (
        ["protocol=paper", "model=dit_diffusers", "model.pretrained_path=dit_eps"],
        "diffusion.prediction_type=v_prediction (protocol=paper) but the weights",
    ),
    (["protocol=official", "model=dit_diffusers", "model.pretrained_path=dit_bare"], "cannot be confirmed"),
    # matched budgets that cannot be met: how close they get and the knob to move, before any compute.
    # By hand (tiny preset, digits 8x8; FLOPs from tests/test_flops.py's closed forms): DiT forward
    # 10,207,232, FPDM explicit part E = 3,899,392, iteration I = 2,162,688. Budget 12 = 2 DiT steps =
    # 20,414,464; at 2 iterations per step FPDM fits floor(20,414,464 / (E + 2 I)) = 2 steps and
    # floor((20,414,464 - 2 E) / I) = 5 iterations: 18,612,224, 8.83% short (the match is the default).
    # 18, 24, 30, 36 stay above 2% short (5.3, 3.5, 3.3, 2.5%); 42 = 71,450,624: 8 steps, 18 iterations,
    # 70,123,520, 1.86% short.
    (["sample.budget=12", "sample.iters=2"], "8.83% below DiT's 20,414,464, more than sample.flops_tolerance=0.02"),
    (["sample.budget=12", "sample.iters=2"], "sample.budget=42 is within it"),
    (["sample.flops_tolerance=-0.1"], "sample.flops_tolerance=-0.1 must be in [0, 1)"),
    (
        ["model=dit", "train.budget.unit=compute", "train.budget.value=100"],
        "90 forward-equivalents per image after 5 steps and 108 after 6 (+8.0%); set train.budget.value=90 or 108",
    ),
    # the same budget on a 4-deep DiT (model.depth overrides the preset): 12 per step, not 18
    (
        ["model=dit", "model.depth=4", "train.budget.unit=compute", "train.budget.value=100"],
        "96 forward-equivalents per image after 8 steps and 108 after 9",
    ),
    (
        ["train.budget.unit=compute", "train.budget.value=100", "train.method=implicit"],
        "may be overshot by up to 27 forward-equivalents",
    ),
    (["train.budget.unit=compute", "train.budget.value=100", "train.method=implicit"], "train.implicit_tol=0"),
    # unit=flops: a tiny DiT step costs 3 x 10,207,232 = 30,621,696 FLOPs per image (forward + backward)
    (
        ["model=dit", "train.budget.unit=flops", "train.budget.value=1e8"],
        "spends 91865088 FLOPs per image after 3 steps and 122486784 after 4 (+22.5%)",
    ),
    (
        ["model=dit_diffusers", "model.grad_checkpointing=true", "train.budget.unit=flops"],
        "cannot price gradient checkpointing's recompute",
    ),
    (["train.budget.unit=comput"], "train.budget.unit='comput'"),
    (["train.budget.tolerance=1.5"], "train.budget.tolerance=1.5 must be in [0, 1)"),
    # architecture knobs on top of the preset (issue 10 item 4)
    (["model.num_heads=5", "model.hidden_size=128"], "model.num_heads=5 does not divide model.hidden_size=128"),
    (["model.num_heads=3"], "model.num_heads=3 does not divide model.hidden_size=64 (from model.preset=tiny)"),
    (["model.hidden_size=66", "model.num_heads=2"], "model.hidden_size=66 must be a multiple of 4"),
    (["model.patch_size=3"], "model.patch_size=3 does not divide the model input size 8"),
    (["model.depth=2"], "model.pre_depth + model.post_depth = 2 is not below the depth 2 of model.depth=2"),
    (["model.depth=0"], "model.depth=0 must be >= 1"),
    (["model.mlp_ratio=0"], "model.mlp_ratio=0.0 must be > 0"),
    (["model.hidden_size=abc"], "model.hidden_size"),
    (["model=dit_diffusers", "model.mlp_ratio=2"], "model.mlp_ratio=2.0 is not supported by model=dit_diffusers"),
    (["model=dit_diffusers", "model.pretrained_path=a_file", "model.depth=4"], "model.depth=4 cannot change"),
    (["inspect.format=xml"], "inspect.format='xml'"),
    # issue 13: statistics settings that cannot give an interval
    (["sample.num_images=10", "sample.seed_ranges=10"], "sample.seed_ranges=10 leaves 1"),
    (["metrics.bootstrap=0"], "metrics.bootstrap=0 must be >= 1"),
    (["metrics.second_extractor=clip"], "metrics.second_extractor='clip'"),
    (["-m", "model=fpdm", "sample.schedule=increasing,cosine"], "compare.schedule=constant is not in the sweep"),
    (["-m", "model=dit,fpdm", "compare.model=dit_diffusers"], "compare.model=dit_diffusers is not in the sweep"),
    (["-m", "model=fpdm", "model.pre_depth=0,2", "compare.depth=[1,1]"], "compare.depth=[1, 1]"),
    (
        ["+hydra.callbacks.x._target_=no_such_module.Callback"],  # a user callback that does not import
        "hydra.callbacks.x._target_=no_such_module.Callback cannot be imported",
    ),
    (["-m", "--config-dir", "no_such_dir", "sweep=mine"], "--config-dir=no_such_dir is not a directory"),
    (["-m", "sweep=mine"], "sweep/mine does not exist; valid sweep options"),  # a user sweep without its dir
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_override_gives_one_line_naming_the_key(argv, expected, inputs):
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    with pytest.raises(ConfigError) as err:
        precheck(argv)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg and len(msg) < 400, msg
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before  # nothing written


def test_a_good_command_line_passes(inputs):
    from harness.metrics.extractors import sha256_file

    weights = ["metrics.weights=weights.pt", f"metrics.weights_sha256={sha256_file(inputs / 'weights.pt')}"]
    precheck(
        [
            "-m",
            "model=dit,fpdm",
            "sample.budget=60",
            "sample.iters=2",
            "data=image_folder",
            "data.root=images",
            *weights,
        ]
    )
    precheck(["data=image_folder", "data.root=images", "run.stages=[train,sample]"])  # nothing scored: no extractor
    precheck(["-m", "data=digits,image_folder", "data.root=images", *weights])  # each source its own default
    precheck(
        ["-m", "protocol=digits,paper,official", "model=dit,fpdm", "data=image_folder", "data.root=images", *weights]
    )
    # the released weights under the keys they were trained with: allowed, and labelled a deviation
    precheck(
        [
            "protocol=paper",
            "model=dit_diffusers",
            "model.pretrained_path=dit_eps",
            "diffusion.prediction_type=epsilon",
            "diffusion.zero_terminal_snr=false",
        ]
    )


def test_matched_budgets_within_tolerance_pass(inputs):
    precheck(["sample.match=flops", "sample.budget=120", "sample.iters=2"])  # 0.2% short of DiT
    precheck(["sample.match=flops", "sample.budget=12", "sample.iters=2", "sample.flops_tolerance=0.1"])
    precheck(["sample.match=blocks", "sample.budget=12", "sample.iters=2"])  # the paper's count: 3 steps of 4 blocks
    precheck(["model=dit", "train.budget.unit=flops", "train.budget.value=91865088"])  # 3 DiT steps exactly
    precheck(["model=dit", "train.budget.unit=compute", "train.budget.value=108"])  # 6 DiT steps exactly
    precheck(["-m", "model=dit,fpdm", "train.budget.unit=compute", "train.budget.value=27000"])


# (argv, a fragment of the one stderr line) through the real entry point
CLI_BAD = [
    (["trian.lr=1"], "trian"),
    (["-m", "model=dit,fpdm", "sample.budget=61"], "nearest feasible budgets: 60 or 66"),
    (["data=image_folder", "data.root=texts"], "data.root=texts holds no image file"),
    (["data=image_folder", "data.root=images", "metrics.extractor=digits-cnn"], "does not fit data=image_folder"),
    (["hydra.run.dir=a_file/run"], "hydra.run.dir=a_file/run is not writable"),
    (["sample.match=flops", "sample.budget=12", "sample.iters=2"], "raise sample.flops_tolerance"),
]


@pytest.mark.parametrize("argv,fragment", CLI_BAD, ids=[a[-1] for a, _ in CLI_BAD])
def test_the_command_line_exits_2_with_one_line_and_writes_nothing(argv, fragment, inputs, run_cli):
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    proc = run_cli([*argv, f"paths.cache_dir={inputs / 'cache'}"], cwd=inputs, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before  # no outputs/, multirun/, cache


def test_run_debug_shows_the_traceback(inputs, run_cli):
    proc = run_cli(["sample.iters=0", "run.debug=true"], cwd=inputs, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: sample.iters=0 must be >= 1" in proc.stderr
    assert not (inputs / "outputs").exists()


# ----------------------------------------------------------------------------- checkpoints
def _good_checkpoint(d: Path, step: int) -> Path:
    from harness.stages.checkpoint import save_checkpoint

    return save_checkpoint(d, step, {"model": {"w": torch.arange(4.0) + step}})


@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty", "not-torch"])
def test_a_damaged_checkpoint_raises_a_checkpoint_error_naming_it(damage, tmp_path):
    good = _good_checkpoint(tmp_path, 5)
    bad = _good_checkpoint(tmp_path, 10)
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "foreign":  # a valid torch file that is not a training checkpoint
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_text("hello")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.arange(4.0) + 5)  # the previous one is intact


def test_a_corrupt_newest_checkpoint_fails_the_job_with_a_record_naming_it(tmp_path, hydra_app, fast_overrides):
    train = ["run.stages=[train]", "train.budget.value=10", "train.ckpt_every=5"]
    hydra_app([*fast_overrides, *train])
    (train_dir,) = (tmp_path / "cache" / "train").glob("*/")
    for name in ("complete.json", "ema.safetensors", "model.safetensors", "train_summary.json"):
        (train_dir / name).unlink()  # as if the job had died after its last checkpoint
    older, newest = list_checkpoints(train_dir)
    newest.write_bytes(newest.read_bytes()[:1000])
    returns = hydra_app([*fast_overrides, *train], multirun=True)  # the same job, started again
    (rec_path,) = (tmp_path / "sweep").glob("*/record.json")
    rec = json.loads(rec_path.read_text())
    assert rec["status"] == "failed" and str(newest) in rec["reason"] and "CheckpointError" in rec["reason"]
    assert "\n" not in rec["reason"] and returns[0][0].return_value != returns[0][0].return_value  # NaN
    assert load_checkpoint(older)["step"] == 5 and latest_checkpoint(train_dir) == newest  # nothing deleted


def test_a_single_failed_run_exits_1_with_one_line(tmp_path, hydra_app, fast_overrides, capsys):
    """A folder whose .png files do not decode passes the pre-check (a scan only) and fails the job."""
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not a png")
    with pytest.raises(SystemExit) as exit_:
        hydra_app(
            [*fast_overrides, "data=image_folder", f"data.root={tmp_path / 'junk'}", "run.stages=[train,sample]"]
        )  # nothing scored: no Inception weights needed
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none is readable" in err[0]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["status"] == "failed" and "data.root" in rec["reason"]


# ----------------------------------------------------------------------------- generated overrides
VALUES = {
    "model": ["dit", "fpdm", "unet"],
    "solver": ["picard", "anderson", "newton"],
    "sample.budget": ["null", "0", "12", "60", "61", "-3", "abc"],
    "sample.iters": ["null", "0", "1", "2", "8", "1.5"],
    "sample.steps": ["1", "5", "0", "null"],
    "sample.schedule": ["constant", "increasing", "cosine", "zigzag"],
    "sample.sampler": ["ddim", "ddpm", "dpmpp", "euler"],
    "model.pre_depth": ["0", "1", "2", "5", "-1"],
    "train.budget.value": ["1", "0", "-2", "20"],
    "data.name": ["digits", "mnist"],
    "sample.reuse": ["true", "false", "perhaps"],
    "model.typo_key": ["1"],
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.dictionaries(st.sampled_from(sorted(VALUES)), st.integers(0, 6), min_size=1, max_size=5))
def test_generated_overrides_either_plan_or_fail_cleanly(choice, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from harness.stages.job import run_job

    monkeypatch.chdir(tmp_path)
    argv = [f"{k}={VALUES[k][i % len(VALUES[k])]}" for k, i in choice.items()]
    argv.append(f"paths.cache_dir={tmp_path / 'cache'}")
    before = sorted(os.listdir(tmp_path))
    try:
        precheck(argv)
    except ConfigError as err:
        msg = str(err)
        assert msg and "\n" not in msg and len(msg) < 400
        assert any(k.split(".")[-1] in msg or k.split("=")[0] in msg for k in [a.split("=")[0] for a in argv]), msg
        assert sorted(os.listdir(tmp_path)) == before
        return
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="harness.config", version_base="1.3"):
        cfg = compose(config_name="config", overrides=argv)
    GlobalHydra.instance().clear()
    result = run_job(cfg, progress=False, plan_only=True)  # what would run, without running it
    assert set(result.stage_status) == {"train", "sample", "evaluate"}
    assert all(v == "to run" for v in result.stage_status.values())
    steps = result.axes["steps"]
    assert isinstance(steps, int) and steps >= 1
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- trained models
def _train_dir(root: Path, *, ema: bytes | None = b"", complete: bool = True, config: bool = True) -> Path:
    """A train cache directory as the job lays it out; the weights file is a stand-in (the cases
    below fail before it is read, except the corrupt-weights case)."""
    from omegaconf import OmegaConf

    from harness.config.schema import Config, PicardSolverConfig

    d = root / "cache" / "train" / "0123456789abcdef"
    d.mkdir(parents=True)
    if ema is not None:
        (d / "ema.safetensors").write_bytes(ema)
    if complete:
        (d / "complete.json").write_text("{}")
    if config:
        cfg = OmegaConf.structured(Config)
        cfg.solver = OmegaConf.structured(PicardSolverConfig)
        blob = {"config": OmegaConf.to_container(cfg), "data": {"channels": 1, "image_size": 8, "num_classes": 10}}
        (d / "config.json").write_text(json.dumps(blob))
    return d


def _record(root: Path, status: str, checkpoint: str | None) -> Path:
    d = root / "job"
    d.mkdir()
    rec = {
        "status": status,
        "reason": "RuntimeError: CUDA out of memory\nmore",
        "config": {},
        "artifacts": {"checkpoint": checkpoint} if checkpoint else {},
        "keys": {"train": "fedcba9876543210"},
    }
    (d / "record.json").write_text(json.dumps(rec))
    return d


# (how to make the path, extra arguments, what the one line must say)
LOAD_BAD = [
    (lambda r: r / "nope", [], "nope does not exist: pass a job record"),
    (lambda r: (r / "empty").mkdir() or r / "empty", [], "holds no record.json and no trained model"),
    (
        lambda r: _train_dir(r, ema=None) and (_good_checkpoint(r / "cache/train/0123456789abcdef", 5).parent),
        [],
        "holds only intermediate checkpoints",
    ),
    (lambda r: _train_dir(r, complete=False), [], "unfinished training run (no complete.json)"),
    (lambda r: _train_dir(r, config=False), [], "has no config.json"),
    (lambda r: _record(r, "failed", None), [], "is 'failed' (RuntimeError: CUDA out of memory)"),
    (lambda r: _record(r, "ok", str(r / "gone" / "ema.safetensors")), [], "has no checkpoint on disk"),
    (lambda r: (r / "junk.json").write_text("{") and r / "junk.json", [], "is unreadable or not JSON"),
    (_train_dir, ["sample.num_imagse=64"], "did you mean sample.num_images?"),
    (_train_dir, ["model.preset=S/2"], "model.preset is fixed by the trained checkpoint"),
    (_train_dir, ["train.lr=1"], "train.lr is fixed by the trained checkpoint"),
    (_train_dir, ["sample.num_images=abc"], "sample.num_images=abc"),
    (_train_dir, ["sample.budget=7"], "sample.budget=7"),
    (_train_dir, ["sample.schedule=zigzag"], "sample.schedule='zigzag'"),
    (_train_dir, ["solver=newton"], "solver=newton does not exist"),
    (_train_dir, ["solver=anderson", "solver.mm=3"], "did you mean solver.m?"),
    (_train_dir, ["--bogus"], "unexpected argument '--bogus'"),
    (lambda r: _train_dir(r, ema=b"not safetensors"), ["sample.num_images=4"], "does not load into model=fpdm"),
]


@pytest.mark.parametrize("make,extra,fragment", LOAD_BAD, ids=[f for _, _, f in LOAD_BAD])
def test_sampling_a_bad_trained_job_gives_one_line(make, extra, fragment, tmp_path, monkeypatch, capsys):
    from harness.app.loading import LoadError, resolve_source
    from harness.app.sample import main

    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([str(path), *extra, "run.progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    if not extra:  # the library call fails the same way
        with pytest.raises(LoadError, match=re.escape(fragment)):
            resolve_source(path)


def test_the_sample_command_line_exits_2_without_a_traceback(tmp_path, run_cli, offline_env):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sample", str(tmp_path / "nope")],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'} does not exist: pass a job record "
        "(record.json), a job directory or a train cache directory "
        "(<paths.cache_dir>/train/<key>)"
    ]

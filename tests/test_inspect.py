"""``python -m harness.inspect`` (issue 10 items 2-4): every model, data source, training method
and solver without data on disk, the paper's parameter counts, determinism, JSON output, and
one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.app.inspect import inspect_argv, main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

MODELS = ["dit", "fpdm", "dit_diffusers"]
METHODS = ["sjfb", "jfb", "multistep_jfb", "full", "implicit"]
SOLVERS = ["picard", "relaxed", "anderson", "broyden"]
# no data.root anywhere: the shape comes from the config alone
DATA = {
    "digits": ["data=digits"],
    "image_folder": ["data=image_folder", "data.image_size=16", "data.num_classes=3"],
    "latents": ["data=latents", "data.image_size=64", "data.num_classes=7"],
}
SHAPES = {"digits": (1, 8, 10), "image_folder": (3, 16, 3), "latents": (4, 8, 7)}  # channels, input size, classes

# every model with every data source, and every FPDM method with every solver, the data source
# rotating, so every pair of axes meets at least once with the other two varied
CASES = [(m, METHODS[i % 5], SOLVERS[i % 4], d) for i, (m, d) in enumerate((m, d) for m in MODELS for d in DATA)]
CASES += [
    ("fpdm", meth, sol, list(DATA)[(i + j) % 3]) for i, meth in enumerate(METHODS) for j, sol in enumerate(SOLVERS)
]


def _argv(model, method, solver, data, *extra):
    return [f"model={model}", f"train.method={method}", f"solver={solver}", *DATA[data], "train.batch_size=4", *extra]


@pytest.mark.parametrize("model,method,solver,data", CASES, ids=["-".join(c) for c in CASES])
def test_inspect_counts_every_combination_without_data(model, method, solver, data):
    _, info = inspect_argv(_argv(model, method, solver, data, "sample.steps=5"))
    m = info["model"]
    assert (m["channels"], m["image_size"], m["num_classes"]) == SHAPES[data]
    assert info["params"]["total"] == sum(v for k, v in info["params"].items() if k not in ("total", "note"))
    plan = info["plan"]
    assert plan["steps"] == 5 and plan["block_passes"] == sum(plan["block_passes_per_step"])
    assert plan["timesteps"] == [999, 749, 500, 250, 0]  # DDIM on linspace: IDDPM's respacing, by hand
    mem = info["memory"]
    assert mem["mem_params_bytes"] == 4 * info["params"]["total"]
    assert mem["mem_total_bytes"] >= mem["mem_total_expected_bytes"] > 0  # the headline is the peak
    assert mem["ddp"] is False and mem["mem_ddp_buckets_bytes"] == 0  # digits trains in one process
    assert mem["paper"]["comparable"] is False  # the tiny preset is not Table 1's model
    if model == "fpdm":
        assert plan["iters"] == [4] * 5 and plan["block_passes_per_step"] == [6] * 5  # tiny: depth 6 - 1 - 1
        assert mem["train_method"] == method and mem["with_grad_iters_max"] >= 1
    else:
        assert mem["with_grad_iters_max"] is None and mem["mem_saved_expected_bytes"] == mem["mem_saved_bytes"]


def test_paper_xl2_counts_without_imagenet_on_disk(tmp_path):
    """The README's example, with a data.root that does not exist: DiT-XL/2 and FPDM-XL/2 (1 pre +
    1 post) on 32x32x4 latents of ImageNet's 1000 classes (paper Table 1: 674M vs 86M)."""
    paper = ["model.preset=XL/2", "data=latents", f"data.root={tmp_path / 'absent'}", "sample.budget=280"]
    _, fpdm = inspect_argv(["model=fpdm", *paper, "sample.iters=8"])
    _, dit = inspect_argv(["model=dit", *paper])
    assert fpdm["params"]["total"] == 86_500_256 and dit["params"]["total"] == 674_834_720
    assert (fpdm["model"]["channels"], fpdm["model"]["image_size"], fpdm["model"]["num_classes"]) == (4, 32, 1000)
    assert dit["plan"]["steps"] == 10 and dit["plan"]["block_passes"] == 280  # 280 / 28
    # matched in FLOPs (the default; closed forms of tests/test_flops.py at N = 256, D = 1152): DiT's 10
    # forwards are 10 x 237,242,843,136; FPDM's explicit part E = 19,034,505,216 and iteration
    # I = 11,173,625,856 (1.32 blocks) fit floor(2,372,428,431,360 / (E + 8 I)) = 21 steps and
    # floor((2,372,428,431,360 - 21 E) / I) = 176 iterations, 8 each and the 8 spare on the first steps
    assert fpdm["plan"]["steps"] == 21 and fpdm["plan"]["iters"] == [9] * 8 + [8] * 13
    _, blocks = inspect_argv(["model=fpdm", *paper, "sample.iters=8", "sample.match=blocks"])
    assert blocks["plan"]["steps"] == 28 and blocks["plan"]["iters"] == [8] * 28  # the paper's: 280 / (1 + 8 + 1)


@pytest.mark.parametrize("model", MODELS)
def test_paper_protocol_prints_the_official_timesteps(model, capsys):
    """create_diffusion(str(5)): evenly over [0, 999], rounded (not trailing's 999, 799, 599, 399, 199)."""
    assert main(["protocol=paper", f"model={model}", "sample.steps=5", "inspect.format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["timesteps"] == [999, 749, 500, 250, 0]
    assert main(["protocol=paper", f"model={model}", "sample.steps=5"]) == 0
    assert "timesteps (noisiest first): [999, 749, 500, 250, 0]" in capsys.readouterr().out
    _, info = inspect_argv(["protocol=paper", f"model={model}", "sample.steps=10", "sample.sampler=ddpm"])
    assert info["plan"]["timesteps"] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_paper_xl2_memory_headline_is_the_peak_beside_table_1(tmp_path, capsys):
    """FPDM-XL/2 under protocol=paper at batch 64: DDP counted as the official training ran it, the
    peak first, the expectation second, then Table 1 (10.2 GB; FPDM/DiT 10.2 / 25.2 = 0.40) beside
    FPDM / DiT-XL/2 under the same assumptions, which a separate DiT-XL/2 inspect confirms."""
    paper = ["protocol=paper", "model.preset=XL/2", "data=latents", f"data.root={tmp_path}", "train.batch_size=64"]
    _, fpdm = inspect_argv(["model=fpdm", *paper])
    _, dit = inspect_argv(["model=dit", *paper])
    mem, dmem = fpdm["memory"], dit["memory"]
    assert mem["ddp"] and mem["mem_ddp_buckets_bytes"] == 4 * 86_500_256
    assert dmem["mem_ddp_buckets_bytes"] == 4 * 674_834_720
    assert mem["mem_total_bytes"] > mem["mem_total_expected_bytes"]
    assert mem["paper"]["ratio_to_paper"] == mem["mem_total_bytes"] / (10.2 * 2**30)
    assert dmem["paper"]["ratio_to_paper"] == dmem["mem_total_bytes"] / (25.2 * 2**30)
    assert mem["paper"]["ratio_fpdm_to_dit"] == mem["mem_total_bytes"] / dmem["mem_total_bytes"]
    assert round(mem["paper"]["paper_ratio_fpdm_to_dit"], 2) == 0.40
    assert main(["model=fpdm", *paper]) == 0
    out = capsys.readouterr().out
    at = [out.index(s) for s in ("peak (headline)", "expected ", "paper Table 1: 10.2 GB", "the paper: 0.40x")]
    assert at == sorted(at)
    _, single = inspect_argv(["model=fpdm", *paper, "inspect.ddp=false"])  # the override still works
    assert single["memory"]["mem_ddp_buckets_bytes"] == 0
    assert mem["mem_total_bytes"] - single["memory"]["mem_total_bytes"] == 4 * 86_500_256


def _dit_params(d: int, depth: int, channels: int = 1, patch: int = 2, classes: int = 10, mlp: int = 4) -> int:
    """DiT parameters by hand (learned sigma: 2C outputs): patch conv C p^2 D + D; timestep MLP
    256 D + D + D^2 + D; label table (classes + 1) D; per block qkv 3D^2+3D, proj D^2+D,
    MLP 2 mlp D^2 + mlp D + D, adaLN 6D^2+6D; final adaLN 2D^2+2D and linear D p^2 2C + p^2 2C."""
    block = 3 * d * d + 3 * d + d * d + d + 2 * mlp * d * d + mlp * d + d + 6 * d * d + 6 * d
    out = patch * patch * 2 * channels
    return (
        channels * patch * patch * d
        + d
        + 256 * d
        + d
        + d * d
        + d
        + (classes + 1) * d
        + depth * block
        + 2 * d * d
        + 2 * d
        + d * out
        + out
    )


@pytest.mark.parametrize(
    "knobs,d,depth,mlp",
    [
        ([], 64, 6, 4),
        (["model.hidden_size=32", "model.num_heads=2"], 32, 6, 4),
        (["model.depth=3", "model.mlp_ratio=2"], 64, 3, 2),
    ],
)
def test_architecture_knobs_change_the_counted_model(knobs, d, depth, mlp):
    _, info = inspect_argv(["model=dit", *knobs])
    assert info["params"]["total"] == _dit_params(d, depth, mlp=mlp)
    assert info["model"]["architecture"]["depth"] == depth and info["plan"]["block_passes_per_step"][0] == depth


def test_inspect_is_deterministic_and_json_has_the_keys(capsys):
    argv = ["model=fpdm", "train.method=sjfb", "inspect.format=json"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    info = json.loads(first)
    for dotted in (
        "params.total",
        "plan.steps",
        "plan.iters",
        "plan.block_passes",
        "flops.per_forward",
        "plan.timesteps",
        "memory.mem_total_bytes",
        "memory.mem_total_expected_bytes",
        "memory.paper",
        "memory.assumptions",
    ):
        node = info
        for part in dotted.split("."):
            node = node[part]
        assert node is not None, dotted


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["model.num_heads=5", "model.hidden_size=128"], "model.num_heads=5 does not divide model.hidden_size=128"),
        (["data=image_folder"], "data.num_classes"),
        (["data=latents", "data.image_size=100"], "data.image_size=100"),
        (["model.patch_size=3"], "model.patch_size=3 does not divide the model input size 8"),
        (["inspect.format=xml"], "inspect.format='xml'"),
        (["model.preset=XXL/2"], "model.preset='XXL/2'"),
        (["trian.lr=1"], "trian"),
    ],
)
def test_bad_inspect_input_is_one_line_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], captured.err
    assert captured.out == ""


def test_the_command_line_no_longer_crashes_on_the_default_fpdm():
    """The default tiny FPDM trains with S-JFB, whose random draw used to run on meta tensors."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness.inspect", "model=fpdm"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "peak (headline)" in proc.stdout and "assumptions:" in proc.stdout


def test_released_diffusers_weights_are_counted_from_their_config_alone(tmp_path):
    """``model.pretrained_path`` with a saved diffusers DiT: inspect builds the architecture from
    its ``config.json`` (meta device, no weight file read) and counts exactly its parameters."""
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_type="ada_norm_zero",
    )
    folder = tmp_path / "dit"
    transformer.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a weight file")  # reading it would fail: only the config may be read
    expected = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    _, info = inspect_argv(
        ["model=dit_diffusers", f"model.pretrained_path={folder}", "data=latents", "data.image_size=64"]
    )
    assert info["params"]["total"] == expected
    assert info["model"]["architecture"]["depth"] == 2 and info["model"]["image_size"] == 8


def test_the_plan_names_its_accounting_and_counts_guidance_twice(capsys):
    """FLOP-matched: the ratio to DiT's target is printed; with cfg_scale != 1 an image costs the
    conditional and the unconditional forward: twice the plan's passes and FLOPs."""
    base = ["sample.budget=60", "sample.iters=2", "inspect.format=json"]
    _, plain = inspect_argv(base)
    _, guided = inspect_argv([*base, "sample.cfg_scale=1.5"])
    p, g = plain["plan"], guided["plan"]
    assert p["accounting"] == "flops" and p["guidance_forwards"] == 1 and g["guidance_forwards"] == 2
    assert p["flops_to_dit"] == pytest.approx(plain["flops"]["sampling_per_image"] / p["dit_flops_target"])
    assert 0.98 <= p["flops_to_dit"] <= 1.0  # within sample.flops_tolerance, never above DiT
    assert g["block_passes_per_image"] == 2 * p["block_passes"] == 2 * g["block_passes"]
    assert g["flops_per_image"] == 2 * plain["flops"]["sampling_per_image"]
    _, blocks = inspect_argv(["sample.budget=60", "sample.iters=2", "sample.match=blocks"])
    assert blocks["plan"]["accounting"] == "blocks" and blocks["plan"]["dit_flops_target"] is None
    assert main(["sample.budget=60", "sample.iters=2", "sample.cfg_scale=1.5"]) == 0
    text = capsys.readouterr().out
    assert "accounting: measured FLOPs" in text and "guidance: cfg_scale != 1 runs the conditional" in text

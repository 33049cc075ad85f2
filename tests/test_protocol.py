"""The diffusion protocol in one word (``protocol=digits|paper|official``), its label and axes, and
the official EMA semantics (``train.ema_warmup=false``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import harness.config  # noqa: F401  (fills the ConfigStore)
from harness.config import list_sweeps
from harness.config.schema import Config
from harness.stages.job import job_axes
from harness.stages.protocol import protocol_deviations, protocol_label
from harness.stages.train import ema_decay_at

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps" / "sweep"


def _cfg(*overrides):
    with initialize_config_module("harness.config", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_digits_is_the_default_and_keeps_the_schema_defaults():
    cfg, schema = _cfg(), Config()
    assert cfg.protocol == "digits"
    assert (
        cfg.diffusion.prediction_type,
        cfg.diffusion.zero_terminal_snr,
        cfg.diffusion.timestep_spacing,
        cfg.diffusion.mse_weighting,
    ) == (
        schema.diffusion.prediction_type,
        schema.diffusion.zero_terminal_snr,
        schema.diffusion.timestep_spacing,
        schema.diffusion.mse_weighting,
    )
    assert cfg.train.ema_warmup is True and cfg.sample.clip_mode == "official"
    assert protocol_deviations(cfg) == {}


def test_paper_protocol_sets_sec_4_1():
    cfg = _cfg("protocol=paper")
    assert cfg.diffusion.prediction_type == "v_prediction" and cfg.diffusion.zero_terminal_snr
    assert cfg.diffusion.timestep_spacing == "linspace" and cfg.diffusion.mse_weighting == "p2"
    assert cfg.model.learn_sigma and cfg.sample.cfg_scale == 1.0 and cfg.sample.eta == 0.0
    assert cfg.train.ema_warmup is True
    assert protocol_label(cfg).startswith("protocol paper: v_prediction, zero-SNR, linspace, learned sigma (hybrid)")
    assert protocol_deviations(cfg) == {}


def test_trailing_spacing_under_the_paper_protocol_is_a_named_deviation():
    """The official code respaces with create_diffusion(str(S)) (docs/paper-notes.md §4.5); Lin et
    al.'s trailing spacing is a choice the record must name, not the paper's default."""
    cfg = _cfg("protocol=paper", "diffusion.timestep_spacing=trailing")
    assert protocol_deviations(cfg) == {"diffusion.timestep_spacing": "trailing"}
    assert protocol_label(cfg).endswith('deviates: diffusion.timestep_spacing="trailing"')
    assert job_axes(cfg)["protocol"] == "paper*"


def test_official_protocol_has_the_official_ema_and_respacing():
    cfg = _cfg("protocol=official")
    assert cfg.train.ema_warmup is False and cfg.diffusion.timestep_spacing == "linspace"
    assert cfg.diffusion.prediction_type == "v_prediction" and cfg.sample.clip_mode == "official"
    assert "EMA no warm-up" in protocol_label(cfg)


def test_a_key_can_still_be_overridden_and_the_label_says_so():
    cfg = _cfg("protocol=paper", "diffusion.mse_weighting=none", "sample.clip_mode=diffusers")
    assert cfg.diffusion.mse_weighting == "none"
    assert protocol_deviations(cfg) == {"diffusion.mse_weighting": "none", "sample.clip_mode": "diffusers"}
    label = protocol_label(cfg)
    assert label.endswith('deviates: diffusion.mse_weighting="none", sample.clip_mode="diffusers"')
    axes = job_axes(cfg)
    assert axes["protocol"] == "paper*" and axes["clip_mode"] == "diffusers" and axes["mse_weighting"] == "none"


def test_latents_are_never_clipped_and_the_axes_say_so():
    cfg = _cfg("protocol=paper", "data=latents")
    assert job_axes(cfg)["clip_mode"] == "none" and "clip none" in protocol_label(cfg)


def test_paper_table1_runs_the_paper_protocol():
    assert _cfg("sweep=paper_table1").protocol == "paper"
    assert _cfg("sweep=paper_table1", "protocol=digits").protocol == "digits"  # still one word away


@pytest.mark.parametrize("name", list_sweeps())
def test_paper_mirroring_sweeps_run_the_paper_protocol_or_state_each_deviation(name):
    text = (SWEEPS / f"{name}.yaml").read_text()
    header = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    if not re.search(r"Mirrors paper|paper Table|paper Fig", header):
        return
    cfg = _cfg(f"sweep={name}")
    if cfg.protocol == "paper":
        return
    assert "Protocol:" in header, f"{name}: mirrors the paper but does not state its protocol"
    for word in ("epsilon", "zero terminal SNR", "p2"):  # each deviation of digits from paper (same spacing)
        assert word in header, f"{name}: the header does not state the deviation {word!r}"


# ----------------------------------------------------------------------------- timesteps
def iddpm_space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """IDDPM's respace.py ``space_timesteps(T, str(S))`` for its one section, written out from its
    definition: frac_stride = (T-1)/(S-1) (1 for S = 1), an index starting at 0.0 advanced by
    frac_stride S times, each value rounded with Python's round; returned noisiest first."""
    frac_stride = 1 if steps <= 1 else (num_timesteps - 1) / (steps - 1)
    cur_idx, taken = 0.0, []
    for _ in range(steps):
        taken.append(round(cur_idx))
        cur_idx += frac_stride
    return sorted(set(taken), reverse=True)


# DiT-XL/2's 5 / 10 / 20 steps at 140 / 280 / 560 blocks, and every FPDM step count at those budgets
# with 1 pre + 1 post layer (S = budget // (2 + k), k = 1 .. budget - 2; paper Fig. 4: 93 ... 4)
PAPER_STEP_COUNTS = sorted({5, 10, 20} | {b // (2 + k) for b in (140, 280, 560) for k in range(1, b - 1)} - {0})


@pytest.mark.parametrize("protocol", ["paper", "official"])
def test_paper_and_official_sample_at_the_official_timesteps(protocol):
    """create_diffusion(str(S)) at 5 and 10 steps, by hand: evenly over [0, 999], rounded."""
    from harness.diffusion.samplers import make_sample_scheduler
    from harness.diffusion.spec import diffusion_spec

    spec = diffusion_spec(_cfg(f"protocol={protocol}"))
    for sampler in ("ddpm", "ddim"):
        at = lambda s: make_sample_scheduler(spec, sampler, s).model_timesteps.tolist()  # noqa: E731
        assert at(5) == [999, 749, 500, 250, 0]  # trailing: 999, 799, 599, 399, 199
        assert at(10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_linspace_is_iddpm_respacing_at_every_step_count():
    """The harness's "linspace" places S steps as IDDPM does at every S the sweeps or the paper can
    ask for (all of 1..1000 at T = 1000), and the DDPM / DDIM samplers run exactly those. numpy's
    linspace (diffusers' formula) rounds apart at some of the paper's own counts, e.g. 93 steps
    (280 blocks, one iteration per step): a harness that used it would fail here."""
    import numpy as np

    from harness.diffusion.samplers import make_sample_scheduler, spaced_timesteps
    from harness.diffusion.spec import diffusion_spec

    spec = diffusion_spec(_cfg("protocol=paper"))
    for steps in range(1, 1001):
        assert spaced_timesteps(spec, steps).tolist() == iddpm_space_timesteps(1000, steps), steps
    for steps in PAPER_STEP_COUNTS:
        want = iddpm_space_timesteps(1000, steps)
        for sampler in ("ddpm", "ddim"):
            assert make_sample_scheduler(spec, sampler, steps).model_timesteps.tolist() == want, (sampler, steps)
    numpy_linspace = {s: [int(v) for v in np.linspace(0, 999, s).round()[::-1]] for s in PAPER_STEP_COUNTS}
    differ = [s for s in PAPER_STEP_COUNTS if numpy_linspace[s] != iddpm_space_timesteps(1000, s)]
    assert 93 in differ and 4 in PAPER_STEP_COUNTS and 186 in PAPER_STEP_COUNTS
    assert iddpm_space_timesteps(1000, 93)[46] == 500 and numpy_linspace[93][46] == 499


# ----------------------------------------------------------------------------- EMA
def test_ema_decay_with_and_without_warmup():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1) and ema_decay_at(0.999, 10_000) == 0.999
    assert all(ema_decay_at(0.999, s, warmup=False) == 0.999 for s in (0, 1, 5, 10_000))


@pytest.mark.parametrize("warmup", [False, True])
def test_train_ema_holds_decay_power_of_the_init(warmup, tmp_path, monkeypatch):
    """After n real training steps the EMA equals prod(d_k) * theta_0 + sum_k (1 - d_k) prod_{j>k} d_j
    * theta_k, computed here by hand from the weights after each step; without warm-up the
    coefficient of the initial weights is decay**n exactly."""
    import harness.stages.train as train_mod
    from harness.data import build_dataset
    from harness.stages.job import _build, diffusion_spec

    n, decay = 4, 0.9
    cfg = _cfg(
        "model=dit",
        "train.batch_size=8",
        f"train.budget.value={n}",
        f"train.ema_decay={decay}",
        f"train.ema_warmup={str(warmup).lower()}",
        "train.lr=1e-2",
        "train.ckpt_every=1000",
    )
    data = build_dataset(cfg.data)
    model = _build(cfg, data)
    theta = [{k: v.detach().clone() for k, v in model.named_parameters()}]
    real_update = train_mod._ema_update

    def spy(ema, m, d):
        theta.append({k: v.detach().clone() for k, v in m.named_parameters()})
        real_update(ema, m, d)

    monkeypatch.setattr(train_mod, "_ema_update", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_mod.train_model(model, data, diffusion_spec(cfg), cfg, tmp_path, torch.device("cpu"), progress=False)
    finally:
        torch.set_num_threads(threads)
    from safetensors.torch import load_file

    ema = load_file(str(tmp_path / "ema.safetensors"))
    assert len(theta) == n + 1
    d = [min(decay, (1 + k) / (10 + k)) if warmup else decay for k in range(n)]  # hand formula
    init_coef = 1.0
    for dk in d:
        init_coef *= dk
    for name in theta[0]:
        want = init_coef * theta[0][name]
        for k in range(1, n + 1):
            later = 1.0
            for dj in d[k:]:
                later *= dj
            want = want + (1 - d[k - 1]) * later * theta[k][name]
        torch.testing.assert_close(ema[name], want, rtol=1e-5, atol=1e-6)
    if not warmup:
        assert init_coef == pytest.approx(decay**n)  # 0.9**4 = 65.6% of the init is still there
    moved = theta[-1]["final_layer.linear.bias"] - theta[0]["final_layer.linear.bias"]
    assert moved.abs().max() > 0  # the weights did change, so the formula is not trivially met

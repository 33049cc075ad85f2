"""Experiment tracking (harness/runtime/tracking.py): ``logger=none|tensorboard|wandb|mlflow`` receives
the training curves and the record's metrics from rank 0, a missing backend is refused before any
compute, and the report draws each distinct training's loss curve from its train_log.jsonl.

TensorBoard is read back with its own ``EventAccumulator`` (skipped with the reason when the
``tensorboard`` package is missing); W&B and MLflow are checked through fake modules that record
the adapter's calls, and against the real packages where they are installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from config_helpers import digits_data, structured_config
from omegaconf import OmegaConf

from harness.config.validate import ConfigError, validate_config
from harness.runtime import tracking
from harness.runtime.tracking import Tracker, log_job_metrics, open_tracker

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(
    not HAS_TENSORBOARD, reason="needs the tensorboard package: pip install tensorboard (the [tracking] extra)"
)


def _cfg(tmp_path: Path, name: str, **more):
    return structured_config({"logger.name": name, "logger.dir": str(tmp_path / "track"), **more})


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard shows for ``log_dir``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x: float) -> float:
    """TensorBoard stores scalars as float32."""
    return float(torch.tensor(x, dtype=torch.float32))


# ----------------------------------------------------------------------------- config and validation
def test_logger_group_composes_and_defaults_to_none():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="harness.config", version_base="1.3"):
        assert compose("config").logger.name == "none"
        for name in ("tensorboard", "wandb", "mlflow"):
            assert compose("config", overrides=[f"logger={name}"]).logger.name == name
        assert compose("config", overrides=["logger=wandb"]).logger.mode == "offline"
    GlobalHydra.instance().clear()


def test_unknown_logger_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"logger='tb' is not known; valid values: mlflow, none, tensorboard, wandb"):
        validate_config(_cfg(tmp_path, "tb"))


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_backend_that_is_not_installed_is_refused_naming_the_pip_line(tmp_path, monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == name else real(m, *a))
    with pytest.raises(ConfigError) as err:
        validate_config(_cfg(tmp_path, name))
    msg = str(err.value)
    assert "\n" not in msg and f"logger={name}" in msg and f"pip install {name}" in msg and "logger=none" in msg


def test_wandb_mode_is_checked(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: object() if m == "wandb" else real(m, *a))
    with pytest.raises(ConfigError, match=r"logger.mode='live' is not known; valid values: offline, online, disabled"):
        validate_config(_cfg(tmp_path, "wandb", **{"logger.mode": "live"}))


def test_other_ranks_and_logger_none_get_the_null_tracker(tmp_path):
    assert type(open_tracker(_cfg(tmp_path, "tensorboard"), is_main=False)) is Tracker
    assert type(open_tracker(_cfg(tmp_path, "none"))) is Tracker
    assert type(open_tracker(OmegaConf.create({"train": {}}))) is Tracker  # a config from before `logger`
    assert not (tmp_path / "track").exists()


def test_outside_hydra_a_logger_needs_a_dir():
    cfg = structured_config({"logger.name": "tensorboard"})
    with pytest.raises(ValueError, match="set logger.dir=PATH"):
        open_tracker(cfg)


# ----------------------------------------------------------------------------- gradient norm
def test_logged_gradient_norm_is_the_l2_norm_of_the_gradients():
    from harness.stages.train import _grad_norm

    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[3.0, 0.0]])
    model.bias.grad = torch.tensor([4.0])
    run = types.SimpleNamespace(model=model, grad_norm=None)
    assert _grad_norm(run) == 5.0  # sqrt(3^2 + 4^2)
    run.grad_norm = torch.tensor(7.0)  # with train.grad_clip: the norm clipping measured before clipping
    assert _grad_norm(run) == 7.0


# ----------------------------------------------------------------------------- TensorBoard
@needs_tensorboard
def test_training_sends_its_log_lines_to_tensorboard(tmp_path):
    """The loss scalars TensorBoard reads back are train_log.jsonl's, step for step; lr, gradient
    norm, throughput and FPDM's iterations come with them."""
    from harness.diffusion.spec import diffusion_spec
    from harness.stages.models import build_model
    from harness.stages.train import train_model

    data = digits_data()
    cfg = _cfg(tmp_path, "tensorboard", **{"train.batch_size": 16, "train.budget.value": 6, "train.log_every": 2})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.train, image_size=data.image_size, channels=data.channels, num_classes=10)
    train_model(model, data, diffusion_spec(cfg), cfg, tmp_path / "train", torch.device("cpu"), progress=False)

    lines = [json.loads(ln) for ln in (tmp_path / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4, 6]
    got = scalars(tmp_path / "track" / "tb")
    assert got["train/loss"] == [(ln["step"], f32(ln["loss"])) for ln in lines]
    assert got["train/lr"] == [(s, f32(1e-3)) for s in (2, 4, 6)]  # train.lr, constant
    for tag in ("train/grad_norm", "train/images_per_s", "train/compute_fwd_equiv", "train/block_passes"):
        assert [s for s, _ in got[tag]] == [2, 4, 6] and all(v > 0 and math.isfinite(v) for _, v in got[tag])
    # S-JFB's draws (the schema's train.iters: no-grad 0..3, with-grad 1..3), logged per step
    assert all(0 <= v <= 3 for _, v in got["train/fp_iters_no_grad"])
    assert all(1 <= v <= 3 for _, v in got["train/fp_iters_with_grad"])
    assert [ln["fp_iters_with_grad"] for ln in lines] == [v for _, v in got["train/fp_iters_with_grad"]]


@needs_tensorboard
def test_a_resumed_training_replaces_what_the_killed_attempt_logged_past_its_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "tensorboard")
    first = open_tracker(cfg, resumed_from=0)
    for step in range(1, 7):
        first.log_scalars(step, {"train/loss": 1.0})
    first.close()
    resumed = open_tracker(cfg, resumed_from=4)  # from the checkpoint of step 4: steps 5, 6 relogged
    for step in range(5, 9):
        resumed.log_scalars(step, {"train/loss": 2.0})
    resumed.close()
    assert scalars(tmp_path / "track" / "tb")["train/loss"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)] + [
        (s, 2.0) for s in range(5, 9)
    ]


@needs_tensorboard
def test_the_record_metrics_go_to_the_run_at_the_last_training_step(tmp_path):
    cfg = _cfg(tmp_path, "tensorboard")
    log_job_metrics(cfg, {"fid": 12.5, "train_steps": 8, "reuse": True, "kid": math.nan, "label": "x"})
    got = scalars(tmp_path / "track" / "tb")
    assert got == {"metrics/fid": [(8, 12.5)], "metrics/train_steps": [(8, 8.0)]}  # no bool, NaN or text


@needs_tensorboard
def test_logger_tensorboard_end_to_end_through_the_app(hydra_app, fast_overrides, tmp_path):
    """``logger=tensorboard``: the job folder holds event files with the training curves and the
    record's FID, and the training log beside the record."""
    hydra_app([*fast_overrides, "logger=tensorboard", "train.log_every=5"])
    run = tmp_path / "run"
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "ok" and record["artifacts"]["train_log"] == "train_log.jsonl"
    lines = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    got = scalars(run / "tb")
    assert got["train/loss"] == [(ln["step"], f32(ln["loss"])) for ln in lines] and len(lines) == 4
    assert got["metrics/fid"] == [(20, f32(record["metrics"]["fid"]))]


# ----------------------------------------------------------------------------- W&B and MLflow (fakes)
class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def _fake_wandb(monkeypatch) -> _Recorder:
    rec = _Recorder()

    class Run:
        summary = types.SimpleNamespace(update=lambda d: rec.calls.append(("summary", d)))

        def log(self, values, step):
            rec.calls.append(("log", values, step))

        def finish(self):
            rec.calls.append(("finish",))

    def init(**kw):
        rec.calls.append(("init", kw))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return rec


def test_wandb_adapter_opens_an_offline_run_per_job_and_logs_curves_and_summary(tmp_path, monkeypatch):
    rec = _fake_wandb(monkeypatch)
    cfg = _cfg(tmp_path, "wandb")
    t = open_tracker(cfg)
    t.log_scalars(3, {"train/loss": 0.5})
    t.log_metrics({"metrics/fid": 9.0}, 3)
    t.close()
    (_, init), *rest = rec.calls
    assert init["mode"] == "offline" and init["resume"] == "allow" and init["project"] == "fpdm-bench"
    assert init["dir"] == str((tmp_path / "track").resolve()) and init["name"] == "track"
    assert init["config"]["logger"]["name"] == "wandb"
    assert rest == [("log", {"train/loss": 0.5}, 3), ("summary", {"metrics/fid": 9.0}), ("finish",)]
    # the evaluation reopens the same run (same job folder -> same id); another job folder gets another
    open_tracker(cfg).close()
    other = open_tracker(_cfg(tmp_path / "other", "wandb"))
    ids = [c[1]["id"] for c in rec.calls if c[0] == "init"]
    assert ids[0] == ids[1] != ids[2]
    other.close()


def _fake_mlflow(monkeypatch) -> _Recorder:
    rec = _Recorder()
    runs: list = []

    class Client:
        def __init__(self, tracking_uri):
            rec.calls.append(("client", tracking_uri))

        def get_experiment_by_name(self, name):
            return types.SimpleNamespace(experiment_id="1") if ("exp", name) in rec.calls else None

        def create_experiment(self, name, artifact_location):
            rec.calls.append(("exp", name))
            rec.calls.append(("artifacts", artifact_location))
            return "1"

        def search_runs(self, experiment_ids, filter_string, max_results):
            return [r for r in runs if r.tags[tracking.RUN_KEY_TAG] in filter_string][:max_results]

        def create_run(self, experiment_id, run_name, tags):
            run = types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"r{len(runs)}"), tags=tags, name=run_name)
            runs.append(run)
            rec.calls.append(("create_run", experiment_id, run_name))
            return run

        def log_dict(self, run_id, obj, path):
            rec.calls.append(("log_dict", run_id, path))

        def log_batch(self, run_id, metrics):
            rec.calls.append(("log_batch", run_id, [(m.key, m.value, m.step) for m in metrics]))

        def set_terminated(self, run_id):
            rec.calls.append(("terminated", run_id))

    metric = types.SimpleNamespace
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.tracking", types.SimpleNamespace(MlflowClient=Client))
    monkeypatch.setitem(
        sys.modules,
        "mlflow.entities",
        types.SimpleNamespace(Metric=lambda k, v, ts, step: metric(key=k, value=v, step=step)),
    )
    return rec


def test_mlflow_adapter_keeps_one_run_per_job_in_a_store_under_the_sweep(tmp_path, monkeypatch):
    rec = _fake_mlflow(monkeypatch)
    cfg = _cfg(tmp_path, "mlflow")
    t = open_tracker(cfg)
    t.log_scalars(2, {"train/loss": 0.25})
    t.close()
    log_job_metrics(cfg, {"fid": 4.0, "train_steps": 2})  # the evaluation: the same run, no new one
    store = f"sqlite:///{(tmp_path / 'track').resolve()}/mlflow.db"  # outside Hydra the sweep is logger.dir
    assert rec.calls == [
        ("client", store),
        ("exp", "fpdm-bench"),
        ("artifacts", (tmp_path / "track" / "mlartifacts").resolve().as_uri()),
        ("create_run", "1", "track"),
        ("log_dict", "r0", "config.json"),
        ("log_batch", "r0", [("train/loss", 0.25, 2)]),
        ("terminated", "r0"),
        ("client", store),
        ("log_batch", "r0", [("metrics/fid", 4.0, 2), ("metrics/train_steps", 2.0, 2)]),
        ("terminated", "r0"),
    ]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs mlflow (the [tracking] extra)")
def test_real_mlflow_store_reads_back_the_curve_and_the_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land in the current folder
    cfg = _cfg(tmp_path, "mlflow")
    t = open_tracker(cfg)
    for step, loss in ((1, 0.5), (2, 0.25)):
        t.log_scalars(step, {"train/loss": loss})
    t.close()
    log_job_metrics(cfg, {"fid": 4.0, "train_steps": 2})  # the evaluation: the same run
    client = MlflowClient(f"sqlite:///{(tmp_path / 'track').resolve()}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("fpdm-bench").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [
        (1, 0.5),
        (2, 0.25),
    ]
    assert run.data.metrics["metrics/fid"] == 4.0 and run.info.run_name == "track"
    assert [p.name for p in tmp_path.iterdir()] == ["track"]
    assert (tmp_path / "track" / "mlartifacts").is_dir()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb (the [tracking] extra)")
def test_real_wandb_offline_run_writes_under_the_job_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = open_tracker(_cfg(tmp_path, "wandb"))
    t.log_scalars(1, {"train/loss": 0.5})
    t.close()
    assert list((tmp_path / "track" / "wandb").glob("offline-run-*/run-*.wandb"))


# ----------------------------------------------------------------------------- the report's curves
def _job(root: Path, name: str, model: str, key: str, log: list[dict] | None, **artifacts) -> None:
    d = root / name
    d.mkdir(parents=True)
    record = {
        "job_id": name,
        "status": "ok",
        "axes": {"model": model, "train_seed": 0},
        "metrics": {"fid": 1.0},
        "keys": {"train": key},
        "artifacts": artifacts,
    }
    (d / "record.json").write_text(json.dumps(record))
    if log is not None:
        (d / "train_log.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in log))


def _log(losses: dict[int, float]) -> list[dict]:
    return [{"step": s, "loss": v, "compute_fwd_equiv": 10 * s} for s, v in losses.items()]


def test_report_draws_one_curve_per_distinct_training(tmp_path):
    from reports.collect import load_sweeps
    from reports.figures import get_figure
    from reports.train_logs import training_curves

    sweep, cache = tmp_path / "sweep", tmp_path / "cache" / "train" / "k-fpdm"
    _job(sweep, "a", "dit", "k-dit", _log({1: 0.9, 2: 0.7}))
    _job(sweep, "b", "dit", "k-dit", _log({1: 0.9, 2: 0.7}))  # the same training, sampled otherwise
    # a record without the copy: its log is found beside the checkpoint it names (in the cache)
    _job(sweep, "c", "fpdm", "k-fpdm", None, checkpoint=str(cache / "ema.safetensors"))
    cache.mkdir(parents=True)
    # resumed from step 1: step 2 logged twice, the later line wins
    (cache / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in _log({1: 0.8, 2: 0.9, 3: 0.4})))
    (cache / "train_log.jsonl").open("a").write(json.dumps({"step": 2, "loss": 0.6, "compute_fwd_equiv": 20}) + "\n")
    data = load_sweeps([sweep])
    curves = training_curves(data, data.jobs)
    assert sorted(curves["training"].unique()) == ["dit", "fpdm"]
    assert curves[curves.training == "fpdm"][["step", "loss"]].values.tolist() == [[1, 0.8], [2, 0.6], [3, 0.4]]
    assert curves[curves.training == "dit"]["loss"].tolist() == [0.9, 0.7]
    fig = get_figure("training_curves").fn(data, data.jobs)
    step_ax, compute_ax = fig.axes
    assert len(step_ax.get_lines()) >= 2 and compute_ax.get_xlabel().startswith("training compute")
    assert sorted(t.get_text() for t in compute_ax.get_legend().get_texts()) == ["dit", "fpdm"]


def test_report_labels_trainings_by_the_settings_that_differ(tmp_path):
    from reports.collect import load_sweeps
    from reports.train_logs import training_curves

    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        _job(sweep, f"s{seed}", "fpdm", f"k{seed}", _log({1: 0.5}))
        rec = json.loads((sweep / f"s{seed}" / "record.json").read_text())
        rec["axes"]["train_seed"] = seed
        (sweep / f"s{seed}" / "record.json").write_text(json.dumps(rec))
    data = load_sweeps([sweep])
    assert sorted(training_curves(data, data.jobs)["training"].unique()) == ["fpdm train_seed=0", "fpdm train_seed=1"]


def test_no_training_log_means_no_figure(tmp_path):
    from reports.collect import load_sweeps
    from reports.figures import get_figure

    _job(tmp_path / "sweep", "a", "dit", "k", None)
    data = load_sweeps([tmp_path / "sweep"])
    assert get_figure("training_curves").fn(data, data.jobs) is None

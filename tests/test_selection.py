"""The held-out selection set: a setting is chosen on images it is not scored on.

Report side (reports/selection.py): a synthetic sweep in which the FPDM setting with the best
evaluation FID is the worse one on the selection images; the report must pair DiT with the
selection-best setting and say on which seeds it chose and scored. Fixture features are Gaussian as in
tests/test_significance.py: image i of every job shares its draw z_i, a setting shifts the mean by
``shift`` along a fixed direction d, so two settings' FIDs differ by ||mean(z) + s1 d||^2 -
||mean(z) + s2 d||^2 exactly (the covariance terms are the same z's).

Job side (harness/stages/selection.py): a tiny job on digits records both disjoint seed ranges, and
its selection images are other images than its evaluated ones. Config side: overlapping ranges are
refused before any compute.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from config_helpers import structured_config
from report_fixtures import record, write_sweep

from harness.config.validate import ConfigError, validate_config
from harness.stages.cache import stage_keys
from reports.build import build_report

D, N = 8, 300
SEL = [2_000_000, 2_000_250]  # the selection images' seeds in every fixture record
EVAL = [0, N]
DIT_SHIFT = 1.0
# per budget: (schedule, evaluation shift, selection FID). "constant" is the best on the evaluated
# images (shift 0.3) but the worse on the selection images; "increasing" is the selection's choice.
SETTINGS = [("constant", 0.3, 5.0), ("increasing", 0.6, 1.0)]


def _features(job_dir, shift: float) -> dict:
    z = np.random.default_rng(0).normal(size=(N, D))  # shared by every job: same sample seed
    d = job_dir / "features"
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "digits-cnn.npy", (z + shift * np.ones(D) / np.sqrt(D)).astype(np.float32))
    np.savez(d / "digits-cnn.ref.npz", mu=np.zeros(D), sigma=np.eye(D), n=np.int64(5000))
    return {"digits-cnn": "features/digits-cnn.npy"}


def _sweep(root, selection=True, sel_seeds=SEL):
    recs, shifts = [], {}
    for budget in (60, 120):
        points = [("dit", None, DIT_SHIFT, 3.0)] + [("fpdm", *s) for s in SETTINGS]
        for model, schedule, shift, sel_fid in points:
            axes = {"model": model, "data": "digits", "budget_blocks": budget, "seed": 0, "schedule": schedule}
            rec = record(axes, {"fid": shift**2, **({"selection_fid": sel_fid} if selection else {})})
            rec["config"]["metrics"] = {"bootstrap": 50, "bootstrap_seed": 1}
            if selection:
                rec["protocol"] = {
                    **rec["protocol"],
                    "eval_seeds": EVAL,
                    "selection": {"seeds": sel_seeds, "images": 250, "extractor": "digits-cnn"},
                }
            recs.append(rec)
            shifts[rec["job_id"]] = shift
    write_sweep(root, recs)
    for rec in recs:
        rec["artifacts"] = {"features": _features(root / rec["job_id"], shifts[rec["job_id"]])}
        (root / rec["job_id"] / "record.json").write_text(json.dumps(rec))
    return root


def _fpdm_vs_dit(tmp_path, sweep) -> pd.DataFrame:
    build_report([sweep], tmp_path / "out", figures=False)
    return pd.read_csv(tmp_path / "out" / "tables" / "significance_fpdm_vs_dit.csv")


def _diff(shift: float) -> float:
    """dFID of an FPDM setting with this shift against DiT, by the closed form in the docstring."""
    m = np.random.default_rng(0).normal(size=(N, D)).mean(0)
    d = np.ones(D) / np.sqrt(D)
    return float(((m + shift * d) ** 2).sum() - ((m + DIT_SHIFT * d) ** 2).sum())


def test_dit_is_paired_with_the_setting_chosen_on_held_out_images(tmp_path):
    t = _fpdm_vs_dit(tmp_path, _sweep(tmp_path / "s"))
    assert list(t["budget_blocks"]) == [60, 120] and set(t["setting"]) == {"FPDM"}
    # "increasing" (shift 0.6) is paired, not "constant" (shift 0.3), the best on the evaluated images
    assert t["dFID"].tolist() == pytest.approx([_diff(0.6)] * 2, rel=1e-6)
    assert _diff(0.3) < _diff(0.6) - 0.1  # the two choices are far apart: the test tells them apart
    note = t["protocol"].iloc[0]
    assert "FPDM setting chosen by FID on held-out seeds [2000000, 2000250), scored on seeds [0, 300)" in note
    assert "60 blocks: schedule=increasing; 120 blocks: schedule=increasing" in note


def test_settings_without_a_selection_fid_are_all_shown_never_chosen_on_evaluated_images(tmp_path):
    t = _fpdm_vs_dit(tmp_path, _sweep(tmp_path / "s", selection=False))
    rows = t.set_index(["budget_blocks", "setting"])["dFID"]
    assert sorted(rows.index) == [
        (60, "FPDM (schedule=constant)"),
        (60, "FPDM (schedule=increasing)"),
        (120, "FPDM (schedule=constant)"),
        (120, "FPDM (schedule=increasing)"),
    ]
    assert rows[(60, "FPDM (schedule=constant)")] == pytest.approx(_diff(0.3), rel=1e-6)
    assert rows[(60, "FPDM (schedule=increasing)")] == pytest.approx(_diff(0.6), rel=1e-6)
    assert "every FPDM setting shown at 60 blocks, none chosen: a record has no selection FID" in t["protocol"].iloc[0]


def test_a_selection_set_overlapping_the_evaluated_images_chooses_nothing(tmp_path):
    t = _fpdm_vs_dit(tmp_path, _sweep(tmp_path / "s", sel_seeds=[100, 350]))
    assert len(t) == 4 and "FPDM" not in set(t["setting"])
    assert "the selection seeds [100, 350) overlap the evaluated [0, 300)" in t["protocol"].iloc[0]


# ----------------------------------------------------------------------------- the job


def _labels(start: int, n: int) -> list[int]:
    """Image i's label: the first draw of a generator seeded start + i (harness/stages/sample.py)."""
    return [int(torch.randint(10, (1,), generator=torch.Generator().manual_seed(start + i))) for i in range(n)]


def test_a_job_samples_and_scores_held_out_images_and_records_both_ranges(tmp_path, hydra_app, fast_overrides):
    hydra_app([*fast_overrides, "selection.images=16"])  # 32 evaluated images (fast_overrides)
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["status"] == "ok"
    assert rec["protocol"]["eval_seeds"] == [0, 32]
    assert rec["protocol"]["selection"]["seeds"] == [2_000_000, 2_000_016]
    assert rec["protocol"]["selection"]["extractor"] == rec["protocol"]["extractor"] == "digits-cnn"
    assert np.isfinite(rec["metrics"]["selection_fid"]) and rec["metrics"]["selection_fid"] != rec["metrics"]["fid"]
    sets = {}
    for d in (tmp_path / "cache" / "sample").iterdir():
        if d.is_dir():
            with np.load(d / "samples.npz") as z:
                sets[len(z["labels"])] = (z["images"], z["labels"].tolist())
    assert sorted(sets) == [16, 32]  # two samplings, each cached under its own key
    (sel_images, sel_labels), (ev_images, ev_labels) = sets[16], sets[32]
    assert sel_labels == _labels(2_000_000, 16) and ev_labels == _labels(0, 32)
    assert not any(np.array_equal(s, e) for s in sel_images for e in ev_images)  # other images
    assert rec["stages"]["selection_sample"] == "ran" and rec["stages"]["selection_evaluate"] == "ran"


def test_turning_selection_on_keeps_the_evaluated_artifacts_cache_keys():
    off, on = structured_config({}), structured_config({"selection.images": 250})
    assert stage_keys(off) == stage_keys(on)


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "overrides, other",
    [
        ({"selection.images": 250, "selection.seed": 900}, "evaluated images' [0, 1000)"),
        (
            {
                "model.name": "fpdm",
                "sample.budget": 120,
                "sample.iters": 2,
                "sample.schedule": "adaptive",
                "selection.images": 250,
                "selection.seed": 1_000_010,
            },
            "calibration images' [1000000, 1000064)",
        ),
    ],
)
def test_overlapping_seed_ranges_are_refused_in_one_line(overrides, other):
    with pytest.raises(ConfigError) as err:
        validate_config(structured_config(overrides), disk=False)
    msg = str(err.value)
    assert msg.startswith(f"selection.seed={overrides['selection.seed']}: ") and other in msg and "\n" not in msg
    assert "set selection.seed >= " in msg


def test_disjoint_ranges_and_an_unused_calibration_range_pass():
    validate_config(structured_config({"selection.images": 250}), disk=False)
    # a constant schedule samples no calibration batch, so its seeds are free
    validate_config(structured_config({"selection.images": 250, "selection.seed": 1_000_000}), disk=False)

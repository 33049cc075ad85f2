"""harness.metrics bootstrap / noise floor / second ruler on the embedded digits (CPU, seconds)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from harness.data.digits import digits_uint8
from harness.metrics import ReferenceSpec, compute_metrics, get_extractor
from harness.metrics.bootstrap import fid_exact, paired_difference, ref_sqrt
from harness.metrics.digits_mlp import ensure_digits_mlp
from harness.metrics.fid_stats import features_to_stats
from harness.metrics.noise_floor import noise_floor

pytestmark = pytest.mark.timeout(300)


def scipy_fid(f1, mu2, s2):
    m1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    return float(((m1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


@pytest.mark.parametrize("n,d", [(300, 16), (20, 40)])  # covariance path and Gram path (n < D)
def test_batched_eigen_fid_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, d))
    mu, s = features_to_stats(ref)
    f = rng.normal(size=(n, d)) * 1.3 + 0.2
    assert fid_exact(f, ref_sqrt(mu, s)) == pytest.approx(scipy_fid(f, mu, s), rel=1e-7, abs=1e-7)


@pytest.fixture(scope="module")
def feats(extractor_cache):
    train, _ = digits_uint8("train", 8)
    test, _ = digits_uint8("test", 8)
    ref = ReferenceSpec("digits", "train", "sklearn-digits", lambda: train)

    def run(x, extractor="digits-cnn"):
        keep = {}
        compute_metrics(
            x, ref, extractor=extractor, cache_dir=extractor_cache, kid=False, prc=False, isc=False, keep=keep
        )
        r = keep["reference"]
        return keep["features"], ref_sqrt(r.mu, r.sigma), r

    return test, run


def blur(x):
    return F.avg_pool2d(F.pad(x.float(), (1, 1, 1, 1), mode="replicate"), 3, 1).round().to(torch.uint8)


def test_identical_sets_tie_and_a_blurred_copy_is_worse(feats):
    test, run = feats
    f, r, _ = run(test)
    fb, _, _ = run(blur(test))
    same = paired_difference(f, f.copy(), r, ranges=[(0, len(f))], resamples=200, seed=0)
    assert same.ci_diff[0] <= 0 <= same.ci_diff[1] and same.ci_diff[1] - same.ci_diff[0] < 1e-9
    assert same.ci_base[0] < same.fid_base < same.ci_base[1]  # a real interval around the point
    worse = paired_difference(f, fb, r, ranges=[(0, len(f))], resamples=200, seed=0)
    assert worse.ci_diff[0] > 0 and worse.diff > 0  # blurred FID - real FID: interval excludes 0
    again = paired_difference(f, fb, r, ranges=[(0, len(f))], resamples=200, seed=0)
    assert again == worse  # seeded: a rebuild gives the same interval


def test_noise_floor_is_far_below_an_untrained_generator(feats):
    test, run = feats
    _, r, ref = run(test)
    floor = noise_floor(ref.features, 360, splits=5, seed=0)
    assert 0 < floor["noise_floor_subset"] and 0 < floor["noise_floor_halves"]
    # an untrained generator's output: structureless noise with the data's grey levels
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(test.shape, generator=g) * test.float().mean() * 2).to(torch.uint8)
    fn, rn, _ = run(noise)
    assert floor["noise_floor_halves"] * 20 < fid_exact(fn, rn)


def test_paired_differences_vary_less_over_seed_ranges_than_the_fids(feats):
    """Two settings that share each image's noise (common random numbers) differ by less, range to
    range, than either FID does: the point of pairing on sample.seed."""
    test, run = feats
    x, _ = digits_uint8("all", 8)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x.shape, generator=g)  # image i's noise, shared by both settings
    a = (x.float() + 18 * eps).clamp(0, 255).round().to(torch.uint8)
    b = (x.float() + 24 * eps).clamp(0, 255).round().to(torch.uint8)
    fa, r, _ = run(a)
    fb, _, _ = run(b)
    k = 8
    m = len(fa) // k
    ranges = [(i * m, (i + 1) * m) for i in range(k)]
    res = paired_difference(fa, fb, r, ranges=ranges, resamples=100, seed=0)
    fids_a = [fid_exact(fa, r, s, e) for s, e in ranges]
    fids_b = [fid_exact(fb, r, s, e) for s, e in ranges]
    assert np.std(res.range_diffs, ddof=1) < 0.5 * min(np.std(fids_a, ddof=1), np.std(fids_b, ddof=1))
    lo, hi = res.range_ci_diff
    assert lo > 0  # stronger noise is worse, resolved over 8 ranges
    # unpaired (ranges shuffled against each other) the difference is no sharper than the FIDs
    rng = np.random.default_rng(0)
    unpaired = np.array(fids_b)[rng.permutation(k)] - np.array(fids_a)
    assert np.std(unpaired, ddof=1) > np.std(res.range_diffs, ddof=1)


def test_second_ruler_is_a_working_digits_network(extractor_cache, feats):
    _, meta = ensure_digits_mlp(extractor_cache)
    assert meta["heldout_accuracy"] >= 0.9 and meta["recipe_seed"] == 1
    test, run = feats
    f2, r2, _ = run(test, "digits-mlp")
    fb2, _, _ = run(blur(test), "digits-mlp")
    assert f2.shape == (360, 64) and get_extractor("digits-mlp").feature_layer == "64"
    assert fid_exact(f2, r2) * 3 < fid_exact(fb2, r2)  # same ordering as digits-cnn on blur


def test_a_job_records_floor_interval_and_both_rulers_and_keeps_features(tmp_path, hydra_app, fast_overrides):
    import json

    hydra_app([*fast_overrides, "model=dit", "train.budget.value=2", "metrics.bootstrap=50"])
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    m = rec["metrics"]
    assert rec["status"] == "ok" and m["bootstrap_resamples"] == 50
    assert m["fid_ci_low"] < m["fid"] < m["fid_ci_high"]
    assert m["noise_floor_halves"] * 10 < m["fid"] and m["noise_floor_halves_second"] * 10 < m["fid_second"]
    assert rec["protocol"]["second_extractor"] == "digits-mlp"
    feats = rec["artifacts"]["features"]
    assert sorted(feats) == ["digits-cnn", "digits-mlp"]
    f = np.load(tmp_path / "run" / feats["digits-cnn"])
    assert f.dtype == np.float32 and f.shape == (32, 64)
    assert (tmp_path / "run" / "features" / "digits-mlp.ref.npz").is_file()

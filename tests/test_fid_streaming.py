"""FID-50K with flat memory: streamed images, bootstrap draws in chunks of resamples, precision/recall
in capped blocks give the same numbers as the whole-array paths (docs/performance.md "FID-50K")."""

import numpy as np
import pytest
import torch
from scipy import linalg
from torch_fidelity.metric_prc import prc_featuresdict_to_metric

from harness.data.digits import digits_uint8
from harness.metrics import ReferenceSpec, compute_metrics
from harness.metrics.bootstrap import bootstrap_fid_draws, bootstrap_indices, iter_bootstrap_indices, ref_sqrt
from harness.metrics.fidelity import ImageChunks, prc_rows
from harness.runtime.npz_stream import write_npz_chunked

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("rows", [1, 3, 7, 50])
def test_chunked_bootstrap_draws_equal_one_call_per_range(rows):
    ranges, resamples, seed = [(0, 5), (5, 12), (12, 13 + 4)], 7, 11
    rng = np.random.default_rng(seed)  # today's draws: one call per range, in range order
    expected = [rng.integers(a, b, size=(resamples, b - a)) for a, b in ranges]
    got: list[list[np.ndarray]] = [[] for _ in ranges]
    for r, idx in iter_bootstrap_indices(ranges, resamples, seed, rows):
        assert len(idx) <= rows
        got[r].append(idx)
    for e, g in zip(expected, got):
        assert np.array_equal(np.concatenate(g), e)
    assert all(np.array_equal(a, b) for a, b in zip(bootstrap_indices(ranges, resamples, seed), expected))


def test_bootstrap_draws_are_the_fids_of_the_drawn_resamples(monkeypatch):
    """Each draw is the mean over ranges of the scipy FID of the images its indices pick, also when
    the chunk of resamples is one row (a budget smaller than one resample)."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 3)).astype(np.float32)
    real = rng.normal(size=(200, 3)) * 1.2
    mu_r, s_r = real.mean(0), np.cov(real, rowvar=False)
    ranges, resamples, seed = [(0, 20), (20, 40)], 5, 4
    expected = np.zeros(resamples)
    for idx in bootstrap_indices(ranges, resamples, seed):
        for b in range(resamples):
            x = f[idx[b]].astype(np.float64)
            m, s = x.mean(0), np.cov(x, rowvar=False)
            expected[b] += ((m - mu_r) ** 2).sum() + np.trace(s + s_r - 2 * linalg.sqrtm(s @ s_r).real)
    expected /= len(ranges)
    ref = ref_sqrt(mu_r, s_r)
    whole = bootstrap_fid_draws(f, ref, ranges, resamples, seed)
    np.testing.assert_allclose(whole, expected, rtol=1e-9)
    monkeypatch.setattr("harness.metrics.bootstrap._CHUNK_BYTES", 1)  # one resample per chunk
    assert np.array_equal(bootstrap_fid_draws(f, ref, ranges, resamples, seed), whole)


def test_prc_rows_cap_the_distance_block():
    assert prc_rows(1000) == 10_000  # torch-fidelity's default: the default protocol is unchanged
    assert prc_rows(1677) == 10_000  # 2**26 // (4 * 1677) = 10,004
    assert prc_rows(5000) == 3355  # 67,108,864 // 20,000
    assert prc_rows(50_000) == 335  # 67,108,864 // 200,000: 335 x 50,000 x 4 bytes = 67 MB


@pytest.fixture(scope="module")
def digits(extractor_cache):
    train, _ = digits_uint8("train", 8)
    test, _ = digits_uint8("test", 8)
    return ReferenceSpec("digits", "train", "sklearn-digits", lambda: train), test


def test_streamed_samples_score_as_the_whole_array(digits, extractor_cache, tmp_path):
    """The evaluate stage's path (samples.npz written in chunks, read back 7 images at a time) gives
    the FID, KID, precision/recall of the images passed whole, to float32 round-off."""
    from harness.runtime.npz_stream import iter_npz_rows

    ref, test = digits
    x = test[:90].numpy() if torch.is_tensor(test) else test[:90]
    path = write_npz_chunked(
        tmp_path / "samples.npz", {"images": (x.shape, np.uint8, (x[i : i + 25] for i in range(0, 90, 25)))}
    )
    kw = {"cache_dir": extractor_cache, "isc": False, "seed_ranges": [(0, 45), (45, 90)]}
    keep_a, keep_b = {}, {}
    whole = compute_metrics(x, ref, keep=keep_a, **kw)
    streamed = compute_metrics(ImageChunks(90, lambda: iter_npz_rows(path, "images", 7)), ref, keep=keep_b, **kw)
    # the extractor sees batches of 7 instead of 90: its float32 convolutions round differently
    np.testing.assert_allclose(keep_b["features"], keep_a["features"], rtol=1e-4, atol=1e-5)
    assert streamed["fid"] == pytest.approx(whole["fid"], rel=1e-5)
    assert streamed["kid_mean"] == pytest.approx(whole["kid_mean"], rel=1e-4, abs=1e-6)
    assert (streamed["precision"], streamed["recall"]) == pytest.approx(
        (whole["precision"], whole["recall"]), abs=0.012
    )


def test_capped_prc_blocks_give_torch_fidelitys_precision_and_recall(digits, extractor_cache):
    ref, test = digits
    keep: dict = {}
    compute_metrics(test[:300], ref, cache_dir=extractor_cache, kid=False, prc=False, isc=False, keep=keep)
    fake = {"64": torch.from_numpy(keep["features"])}
    real = {"64": torch.from_numpy(keep["reference"].features)}
    kw = {"verbose": False, "save_cpu_ram": True}
    default = prc_featuresdict_to_metric(fake, real, "64", **kw)
    small = prc_featuresdict_to_metric(fake, real, "64", prc_batch_size=13, **kw)
    assert small == default and 0 < default["precision"] <= 1

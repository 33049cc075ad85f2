"""harness.metrics: float64 FID from statistics, protocol labels, the digits-cnn extractor, the
reference-statistics cache and seed ranges (all on the embedded digits data, CPU, small)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from harness.data.digits import digits_uint8
from harness.metrics import (
    ReferenceSpec,
    compute_metrics,
    ensure_digits_cnn,
    features_to_stats,
    fid_from_stats,
    fid_label,
    fid_over_seed_ranges,
    get_extractor,
    list_extractors,
)
from harness.metrics import extractors as ex
from harness.metrics.fidelity import UInt8Images, extract_features

pytestmark = pytest.mark.timeout(300)


def scipy_fid(f1, f2):
    """Independent float64 reference: the textbook formula with scipy's sqrtm."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


# ---------------------------------------------------------------------------------------------- FID math


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_from_stats_matches_scipy_float64_reference(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(300, 16)).astype(np.float32)
    b = (rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.3 + 0.5).astype(np.float32)
    mu1, s1 = features_to_stats(torch.from_numpy(a))
    mu2, s2 = features_to_stats(b)
    assert mu1.dtype == s1.dtype == np.float64
    ours = fid_from_stats(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_fid(a, b), rel=1e-10, abs=1e-10)
    # torch-fidelity's own (eigenvalue) formula agrees as a third opinion
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)


def test_fid_from_stats_identity_and_singular_covariance():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 8))
    mu, s = features_to_stats(a)
    assert abs(fid_from_stats(mu, s, mu, s)) < 1e-8
    few = rng.normal(size=(5, 32))  # fewer samples than dimensions: rank-deficient covariance
    mu2, s2 = features_to_stats(few)
    v = fid_from_stats(mu2, s2, *features_to_stats(rng.normal(size=(6, 32))))
    assert np.isfinite(v) and v > 0
    with pytest.raises(ValueError, match="feature dimensions"):
        fid_from_stats(mu, s, mu2, s2)


# ---------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "n,expected",
    [
        (1000, "FID-1k"),
        (800, "FID-800"),
        (10000, "FID-10k"),
        (50000, "FID-50K"),
        (49999, "FID-49999"),
        (1500, "FID-1500"),
    ],
)
def test_fid_label_names_the_sample_count(n, expected):
    label = fid_label(n, "digits-cnn", "train split")
    assert label == f"{expected}, digits-cnn, vs train split"
    assert ("50K" in label) == (n == 50000)


def test_extractor_registry_lists_names_on_unknown_key():
    assert {"digits-cnn", "inception-v3-compat"} <= set(list_extractors())
    with pytest.raises(KeyError, match="digits-cnn"):
        get_extractor("inception-v4")


# ---------------------------------------------------------------------------------------------- digits-cnn


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("fpdm-cache")
    ensure_digits_cnn(root)  # trained once for this module
    return root


@pytest.fixture(scope="module")
def data():
    train, _ = digits_uint8("train", 8)
    test, _ = digits_uint8("test", 8)
    return train, test


def ref_spec(data, calls=None, split="train", fingerprint="sklearn-digits"):
    def images():
        if calls is not None:
            calls.append(split)
        return data[0] if split == "train" else data[1]

    return ReferenceSpec("digits", split, fingerprint, images)


def blur(x):
    return F.avg_pool2d(F.pad(x.float(), (1, 1, 1, 1), mode="replicate"), 3, 1).round().to(torch.uint8)


def test_digits_cnn_cache_records_accuracy_and_hash(cache, monkeypatch):
    path, meta = ensure_digits_cnn(cache)
    assert path.suffix == ".safetensors" and path.parent == cache / "extractors"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side == meta and side["sha256"] == ex.sha256_file(path)
    assert side["heldout_accuracy"] >= 0.9 and side["train_size"] == 1437 and side["recipe_seed"] == 0
    # a second call loads from disk: training would fail here
    monkeypatch.setattr(ex, "_train_digits_cnn", lambda *a, **k: pytest.fail("retrained a cached extractor"))
    assert ensure_digits_cnn(cache)[1]["sha256"] == meta["sha256"]
    # a corrupted file is detected by its hash and rebuilt, not used
    monkeypatch.undo()
    path.write_bytes(b"garbage")
    assert ensure_digits_cnn(cache)[1]["sha256"] == ex.sha256_file(path) == meta["sha256"]


def test_digits_cnn_ranks_real_above_blurred_and_noise(cache, data):
    _, test = data
    ref = ref_spec(data)
    noise = torch.randint(0, 256, test.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    real, blurred, noisy = (compute_metrics(x, ref, cache_dir=cache) for x in (test, blur(test), noise))
    assert real["fid"] < blurred["fid"] and real["fid"] < noisy["fid"]
    assert real["fid"] * 5 < blurred["fid"]  # not a coin flip: a wide margin
    assert real["kid_mean"] < blurred["kid_mean"] and real["kid_mean"] < noisy["kid_mean"]
    assert real["precision"] > blurred["precision"] and real["recall"] > noisy["recall"]
    assert real["isc_mean"] > noisy["isc_mean"]  # digits-cnn has logits: IS is reported
    p = real["protocol"]
    assert p["label"] == "FID-360, digits-cnn, vs train split" and p["num_samples"] == 360
    assert p["reference_n"] == 1437 and p["extractor"] == "digits-cnn" and p["fid_dtype"] == "float64"


def test_fid_equals_torch_fidelity_calculate_metrics(cache, data):
    """Our pipeline (cached float64 stats) agrees with torch-fidelity end to end on the same inputs."""
    import torch_fidelity

    train, test = data
    spec = get_extractor("digits-cnn")
    w = spec.resolve_weights(cache_dir=cache)
    ours = compute_metrics(blur(test), ref_spec(data), cache_dir=cache, kid=False, prc=False, isc=False)["fid"]
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(blur(test), 1),
        input2=UInt8Images(train, 1),
        fid=True,
        feature_extractor="digits-cnn",
        feature_extractor_weights_path=w.path,
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)


def test_16x16_inputs_are_area_resized_to_the_8x8_features(cache, data):
    spec = get_extractor("digits-cnn")
    w = spec.resolve_weights(cache_dir=cache)
    x = data[1][:50]
    x16 = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
    f8 = extract_features(x, spec, w, ["64", "logits"])
    f16 = extract_features(x16, spec, w, ["64", "logits"])
    assert f8["64"].shape == (50, 64) and f8["logits"].shape == (50, 10)
    torch.testing.assert_close(f8["64"], f16["64"], rtol=1e-5, atol=1e-5)


def test_reference_stats_cached_once_per_identity(cache, data):
    calls = []
    x = data[1][:200]
    a = compute_metrics(x, ref_spec(data, calls, fingerprint="fp-A"), cache_dir=cache, kid=False, prc=False)
    b = compute_metrics(x, ref_spec(data, calls, fingerprint="fp-A"), cache_dir=cache, kid=False, prc=False)
    assert calls == ["train"] and a["fid"] == b["fid"]  # second run: statistics read from the cache
    compute_metrics(x, ref_spec(data, calls, fingerprint="fp-B"), cache_dir=cache, kid=False, prc=False)
    c = compute_metrics(x, ref_spec(data, calls, split="test", fingerprint="fp-A"), cache_dir=cache, prc=False)
    assert calls == ["train", "train", "test"]  # other fingerprint / split -> other entry
    assert c["protocol"]["label"].endswith("vs test split")
    files = sorted((cache / "reference").glob("*.npz"))
    with np.load(files[0], allow_pickle=False) as z:
        assert z["mu"].dtype == np.float64 and z["sigma"].dtype == np.float64
        prov, n = json.loads(str(z["provenance"])), int(z["n"])
    assert prov["extractor"] == "digits-cnn" and prov["weights_sha256"] == a["protocol"]["weights_sha256"]
    assert prov["n"] == n and prov["preprocessing"] == get_extractor("digits-cnn").preprocessing


def test_seed_ranges_give_mean_and_std(cache, data):
    x = data[1][:300]
    ref = ref_spec(data)
    r = compute_metrics(x, ref, cache_dir=cache, seed_ranges=3, kid=False, prc=False, isc=False)
    parts = [
        compute_metrics(x[i * 100 : (i + 1) * 100], ref, cache_dir=cache, kid=False, prc=False, isc=False)["fid"]
        for i in range(3)
    ]
    assert r["fid_values"] == pytest.approx(parts, rel=1e-9)
    assert r["fid"] == pytest.approx(np.mean(parts)) and r["fid_std"] == pytest.approx(np.std(parts, ddof=1))
    assert r["fid_min"] == min(parts)
    assert r["protocol"]["num_samples"] == 100 and r["protocol"]["num_ranges"] == 3
    assert r["protocol"]["label"] == "FID-100, digits-cnn, vs train split, mean of 3 seed ranges"
    s = fid_over_seed_ranges([x[:100], x[100:200], x[200:]], ref, cache_dir=cache)
    mean, std, values = s
    assert values == pytest.approx(parts, rel=1e-9) and mean == pytest.approx(r["fid"])
    assert std == pytest.approx(r["fid_std"]) and s.min == min(parts)


def test_bad_inputs_fail_with_the_argument_named(cache, data):
    ref = ref_spec(data)
    with pytest.raises(ValueError, match="samples_uint8"):
        compute_metrics(data[1].float(), ref, cache_dir=cache)
    with pytest.raises(ValueError, match="seed_ranges"):
        compute_metrics(data[1][:10], ref, cache_dir=cache, seed_ranges=[(0, 20)])
    with pytest.raises(KeyError, match="metrics.extractor"):
        compute_metrics(data[1][:10], ref, extractor="nope", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="metrics.weights"):
        compute_metrics(data[1][:10], ref, extractor="inception-v3-compat", weights=None, cache_dir=cache)


@pytest.mark.slow
def test_digits_cnn_training_is_deterministic(tmp_path):
    a = ensure_digits_cnn(tmp_path / "a")[1]
    b = ensure_digits_cnn(tmp_path / "b")[1]
    assert a["sha256"] == b["sha256"] and a["heldout_accuracy"] == b["heldout_accuracy"]


def test_read_only_sample_arrays_reach_the_extractor_without_a_warning():
    """Streamed / memory-mapped samples are read-only numpy arrays; torch.from_numpy on one printed
    a UserWarning in every sweep's console. Checked in a fresh process: torch warns once per process."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from harness.metrics.fidelity import _as_uint8_tensor\n"
        "a = np.arange(96, dtype=np.uint8).reshape(2, 3, 4, 4); a.setflags(write=False)\n"
        "t = _as_uint8_tensor(a, 'samples')\n"
        "assert t.tolist() == a.tolist()\n"
        "w = np.arange(96, dtype=np.uint8).reshape(2, 3, 4, 4)\n"
        "assert _as_uint8_tensor(w, 'samples').data_ptr() == w.ctypes.data  # writable: no copy\n"
    )
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]

"""Metrics a reader can compare with published ones: reference files (ADM .npz, torch-fidelity .pt),
sFID's spatial Inception features, the Inception Score's classifier check and FD-DINOv2 from local
weights. Every network here is made in the test (random weights, a tiny DINOv2 stand-in); nothing
is downloaded."""

import hashlib
import textwrap

import numpy as np
import pytest
import torch
from scipy import linalg

from harness.data.digits import digits_uint8
from harness.metrics import ReferenceSpec, compute_metrics
from harness.metrics.fidelity import ISC_WEIGHTS, extract_features
from harness.metrics.reference_file import open_reference_file
from harness.metrics.sfid import FeatureExtractorInceptionADM, spatial_from_mixed_6d

pytestmark = pytest.mark.timeout(300)


def stats(f):
    f = np.asarray(f, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet(m1, s1, m2, s2):
    """Textbook Frechet distance (Heusel et al. 2017, Eq. 6) with scipy's sqrtm."""
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


@pytest.fixture(scope="module")
def digits():
    real, _ = digits_uint8("train", 8)
    fake, _ = digits_uint8("test", 8)
    return real[:300], fake[:120]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def digits_features(images, cache):
    from harness.metrics import get_extractor

    spec = get_extractor("digits-cnn")
    return extract_features(images, spec, spec.resolve_weights(cache_dir=cache), ["64"])["64"].numpy()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- ADM .npz


def test_adm_images_score_like_the_same_images_as_a_split_and_record_the_hash(digits, cache, tmp_path):
    real, fake = digits
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=real.numpy().transpose(0, 2, 3, 1))  # ADM stores NHWC
    out = compute_metrics(fake, open_reference_file(path), cache_dir=cache)
    want = frechet(*stats(digits_features(fake, cache)), *stats(digits_features(real, cache)))
    assert out["fid"] == pytest.approx(want, rel=1e-6)
    assert "kid_mean" in out and "precision" in out  # the images give reference features
    p = out["protocol"]
    assert p["reference_file"] == {"path": str(path.resolve()), "sha256": sha256(path)}
    assert p["reference_stats_from"] == "images" and p["reference_n"] == 300
    assert p["label"] == "FID-120, digits-cnn, vs ref.npz"


def test_adm_statistics_alone_give_fid_from_the_file(digits, cache, tmp_path):
    real, fake = digits
    f_real = digits_features(real, cache)
    mu, sigma = stats(f_real)
    mu = mu + 0.5  # not the images' statistics: the file's own numbers must be the ones used
    path = tmp_path / "stats.npz"
    np.savez(path, mu=mu, sigma=sigma)
    out = compute_metrics(fake, open_reference_file(path), cache_dir=cache)
    assert out["fid"] == pytest.approx(frechet(*stats(digits_features(fake, cache)), mu, sigma), rel=1e-6)
    assert "kid_mean" not in out and "precision" not in out  # no reference images to compare with
    assert out["protocol"]["reference_n"] is None and out["protocol"]["reference_stats_from"] == "file"


def test_adm_file_statistics_win_over_its_images(digits, cache, tmp_path):
    real, fake = digits
    mu, sigma = stats(digits_features(real, cache))
    path = tmp_path / "both.npz"
    np.savez(path, arr_0=real.numpy().transpose(0, 2, 3, 1), mu=mu + 1.0, sigma=sigma)
    out = compute_metrics(fake, open_reference_file(path), cache_dir=cache)
    assert out["fid"] == pytest.approx(frechet(*stats(digits_features(fake, cache)), mu + 1.0, sigma), rel=1e-6)
    assert out["protocol"]["reference_stats_from"] == "file"


def test_statistics_of_another_size_are_refused_in_one_line(digits, cache, tmp_path):
    path = tmp_path / "inception.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError) as e:
        compute_metrics(digits[1], open_reference_file(path), cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg and "metrics.reference=" in msg and "2048" in msg and "digits-cnn" in msg


def test_a_file_without_images_or_statistics_is_refused(tmp_path, cache, digits):
    path = tmp_path / "other.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ValueError, match="metrics.reference=.*neither arr_0"):
        compute_metrics(digits[1], open_reference_file(path), cache_dir=cache)


def test_missing_reference_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.reference="):
        open_reference_file(tmp_path / "nope.npz")


# ---------------------------------------------------------------------------------------------- torch-fidelity .pt


def test_torch_fidelity_cached_statistics(digits, cache, tmp_path):
    real, fake = digits
    mu, sigma = stats(digits_features(real, cache))
    path = tmp_path / "mydata-digits-cnn-stat-fid-64.pt"  # torch-fidelity's cache name
    torch.save({"mu": mu, "sigma": sigma}, path)
    out = compute_metrics(fake, open_reference_file(path), cache_dir=cache)
    assert out["fid"] == pytest.approx(frechet(*stats(digits_features(fake, cache)), mu, sigma), rel=1e-6)
    assert out["protocol"]["reference_file"]["sha256"] == sha256(path)


def test_torch_fidelity_statistics_of_another_extractor_are_refused(digits, cache, tmp_path):
    path = tmp_path / "mydata-inception-v3-compat-stat-fid-2048.pt"
    torch.save({"mu": np.zeros(64), "sigma": np.eye(64)}, path)
    with pytest.raises(ValueError, match=r"extractor inception-v3-compat.*metrics.extractor=digits-cnn"):
        compute_metrics(digits[1], open_reference_file(path), cache_dir=cache)


# ---------------------------------------------------------------------------------------------- sFID features


def test_spatial_features_follow_adm_nhwc_order():
    # h[n, c, y, x] = 1000 c + 17 y + x: ADM keeps c < 7 of NHWC and flattens (y, x, c)
    c, y, x = torch.meshgrid(torch.arange(192), torch.arange(17), torch.arange(17), indexing="ij")
    h = (1000 * c + 17 * y + x).float()[None]
    f = spatial_from_mixed_6d(h)
    assert f.shape == (1, 2023)
    assert f[0, 0] == 0 and f[0, 1] == 1000 and f[0, 6] == 6000  # (y=0, x=0, c=0..6)
    assert f[0, 7] == 1  # (y=0, x=1, c=0)
    assert f[0, 7 * 17] == 17  # (y=1, x=0, c=0)
    assert f[0, 2022] == 6000 + 17 * 16 + 16


def random_inception(tmp_path, zero_fc: bool):
    from harness.metrics.inception import inception_target_shapes

    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in inception_target_shapes().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            state[k] = torch.ones(shape)
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    if zero_fc:
        state["fc.weight"].zero_()
        state["fc.bias"].zero_()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    (tmp_path / "inception.pth.sha256").write_text(f"{sha256(path)}  inception.pth\n")
    return path


def test_spatial_layer_is_mixed_6d_branch1x1_and_other_layers_are_unchanged(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = str(random_inception(tmp_path, zero_fc=False))
    x = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    adm = FeatureExtractorInceptionADM("a", ["2048", "mixed_6/conv"], feature_extractor_weights_path=path).eval()
    base = FeatureExtractorInceptionV3("b", ["2048"], feature_extractor_weights_path=path).eval()
    pool, spatial = adm(x)
    torch.testing.assert_close(pool, base(x)[0])
    # by hand: the stem and the 35x35 / 17x17 blocks up to Mixed_6c, then Mixed_6d's 1x1 branch
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    h = (interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False) - 128) / 128
    stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    for name in [*stem, "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"]:
        h = getattr(base, name)(h)
    want = base.Mixed_6d.branch1x1(h)[:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    torch.testing.assert_close(spatial, want)
    (only,) = FeatureExtractorInceptionADM("c", ["mixed_6/conv"], feature_extractor_weights_path=path).eval()(x)
    torch.testing.assert_close(only, want)


# ---------------------------------------------------------------------------------------------- Inception Score


def test_the_config_check_refuses_isc_with_fid_only_weights(compose_cfg, tmp_path):
    from harness.config.validate import ConfigError, validate_config

    path = random_inception(tmp_path, zero_fc=True)
    over = ["metrics.extractor=inception-v3-compat", f"metrics.weights={path}", f"paths.cache_dir={tmp_path / 'c'}"]
    validate_config(compose_cfg(over))  # isc=null: FID only, accepted
    with pytest.raises(ConfigError, match="metrics.isc needs Inception weights with a classifier"):
        validate_config(compose_cfg([*over, "metrics.isc=true"]))


def test_isc_with_fid_only_weights_is_refused_naming_the_weights(tmp_path):
    path = random_inception(tmp_path, zero_fc=True)
    ref = ReferenceSpec("x", "train", "x", lambda: pytest.fail("no reference may be computed"))
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError) as e:
        compute_metrics(x, ref, extractor="inception-v3-compat", weights=path, isc=True)
    assert ISC_WEIGHTS in str(e.value) and "weights-inception-2015-12-05-6726825d.pth" in str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- FD-DINOv2

HUBCONF = textwrap.dedent(
    """
    import torch.nn as nn

    class Tiny(nn.Module):  # stands in for DINOv2 ViT-S/14: (B, 3, 224, 224) -> (B, 384)
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 384, 14, stride=14)

        def forward(self, x):
            return self.proj(x).mean((2, 3))

    def dinov2_vits14(pretrained=True, **kwargs):
        assert not pretrained, "offline: never fetch pretrained weights"
        return Tiny()
    """
)


@pytest.fixture
def dino(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code = tmp_path / "torch" / "hub" / "facebookresearch_dinov2_main"
    code.mkdir(parents=True)
    (code / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 384, 14, stride=14)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({f"proj.{k}": v for k, v in conv.state_dict().items()}, path)
    return path, conv


def test_dinov2_runs_offline_from_local_weights(dino, digits, cache):
    path, conv = dino
    real, fake = digits
    ref = ReferenceSpec("digits", "train", "d", lambda: real[:60])
    keep = {}
    out = compute_metrics(
        fake[:40],
        ref,
        extractor="dinov2-vit-s-14",
        weights=path,
        weights_sha256=sha256(path),
        cache_dir=cache,
        keep=keep,
    )
    assert "ViT-S/14" in out["protocol"]["label"] and out["protocol"]["weights_sha256"] == sha256(path)
    assert "isc_mean" not in out  # DINOv2 has no classifier
    # features by hand: grey -> RGB, TF1 bilinear to 224, ImageNet mean/std, the stand-in network
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    def feats(x):
        x = interpolate_bilinear_2d_like_tensorflow1x(
            x.expand(-1, 3, -1, -1).float(), size=(224, 224), align_corners=False
        )
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
        with torch.no_grad():
            return conv((x - mean) / std).mean((2, 3)).numpy()

    np.testing.assert_allclose(keep["features"], feats(fake[:40]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keep["reference"].features, feats(real[:60]), rtol=1e-4, atol=1e-4)
    assert np.isfinite(out["fid"]) and out["fid"] > 0


def test_dinov2_wrong_hash_and_missing_weights_are_refused(dino, digits, cache):
    path, _ = dino
    ref = ReferenceSpec("digits", "train", "d", lambda: pytest.fail("no reference may be computed"))
    with pytest.raises(ValueError, match="metrics.weights=.*sha256"):
        compute_metrics(digits[1], ref, extractor="dinov2-vit-s-14", weights=path, weights_sha256="00" * 32)
    with pytest.raises(FileNotFoundError, match="metrics.extractor=dinov2-vit-s-14 needs local weights"):
        compute_metrics(digits[1], ref, extractor="dinov2-vit-s-14")


def test_dinov2_without_local_hub_code_is_refused(tmp_path, monkeypatch, digits, cache):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    path = tmp_path / "w.pth"
    torch.save({}, path)
    ref = ReferenceSpec("digits", "train", "d", lambda: digits[0][:20])
    with pytest.raises(FileNotFoundError, match="needs the DINOv2 model code offline"):
        compute_metrics(digits[1][:20], ref, extractor="dinov2-vit-s-14", weights=path, weights_sha256=sha256(path))


# ---------------------------------------------------------------------------------------------- the job


@pytest.fixture
def compose_cfg():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import harness.config  # noqa: F401  (fills the ConfigStore)

    def compose_(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="harness.config", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    yield compose_
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "extra,match",
    [
        (["metrics.sfid=true"], "metrics.sfid=true: metrics.extractor=digits-cnn has no spatial layer"),
        (["metrics.reference=REF"], r"metrics.reference=.*2048 values, metrics.extractor=digits-cnn gives 64-d"),
        (["metrics.extractor=dinov2-vit-l-14"], "metrics.extractor=dinov2-vit-l-14 needs local weights offline"),
    ],
)
def test_the_config_check_refuses_before_any_compute(extra, match, compose_cfg, tmp_path):
    from harness.config.validate import ConfigError, validate_config

    ref = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    cfg = compose_cfg([f"paths.cache_dir={tmp_path / 'c'}", *(e.replace("REF", str(ref)) for e in extra)])
    with pytest.raises(ConfigError, match=match) as e:
        validate_config(cfg)
    assert "\n" not in str(e.value)


def test_a_job_scores_against_a_reference_file_and_records_its_hash(tmp_path, run_cli, fast_overrides):
    import json

    real, _ = digits_uint8("test", 8)
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=real.numpy().transpose(0, 2, 3, 1))
    proc = run_cli([*fast_overrides, f"metrics.reference={ref}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["status"] == "ok" and np.isfinite(rec["metrics"]["fid"])
    assert rec["protocol"]["reference_file"] == {"path": str(ref.resolve()), "sha256": sha256(ref)}
    assert "vs ref.npz" in rec["protocol"]["label"]


def test_sfid_scores_the_spatial_features_against_the_files_mu_s_sigma_s(tmp_path):
    path = random_inception(tmp_path, zero_fc=False)
    x = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    net = FeatureExtractorInceptionADM("a", ["2048", "mixed_6/conv"], feature_extractor_weights_path=str(path)).eval()
    with torch.no_grad():
        pool, spatial = (f.double().numpy() for f in net(x))
    rng = np.random.default_rng(0)
    mu, mu_s = rng.normal(size=2048), rng.normal(size=2023)
    ref = tmp_path / "adm.npz"
    np.savez(ref, mu=mu, sigma=np.eye(2048), mu_s=mu_s, sigma_s=np.eye(2023))
    out = compute_metrics(x, open_reference_file(ref), extractor="inception-v3-compat", weights=path, sfid=True)

    def vs_identity(f, m_ref):  # against N(m_ref, I): ||m - m_ref||^2 + tr(S) + D - 2 tr(S^(1/2))
        m, s = stats(f)
        # S has rank 5 (6 samples): FID then puts pytorch-fid's ridge eps = 1e-6 on both covariances
        # (fid_stats.py), and (S + eps I)(I + eps I) has eigenvalues (lambda + eps)(1 + eps)
        eps = 1e-6
        root = np.sqrt((np.clip(np.linalg.eigvalsh(s), 0, None) + eps) * (1 + eps)).sum()
        return float(((m - m_ref) ** 2).sum() + np.trace(s) + len(m) - 2 * root)

    assert out["sfid"] == pytest.approx(vs_identity(spatial, mu_s), rel=1e-4)
    assert out["fid"] == pytest.approx(vs_identity(pool, mu), rel=1e-4)
    assert out["protocol"]["sfid_layer"].startswith("mixed_6/conv")
    assert "isc_mean" in out  # random weights have a non-zero classifier: isc=None scores it


def test_the_eval_key_is_unchanged_by_the_new_defaults_and_follows_the_reference_files_content(tmp_path):
    from config_helpers import structured_config
    from omegaconf import OmegaConf

    from harness.stages.cache import stage_keys

    base = structured_config({})
    older = OmegaConf.create(OmegaConf.to_container(base))  # a config written before these keys existed
    del older.metrics["isc"], older.metrics["sfid"], older.metrics["reference"]
    assert stage_keys(older) == stage_keys(base)
    assert stage_keys(structured_config({"metrics.sfid": True})).eval != stage_keys(base).eval
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    first = stage_keys(structured_config({"metrics.reference": str(ref)}))
    assert first.eval != stage_keys(base).eval and first.sample == stage_keys(base).sample
    np.savez(ref, mu=np.ones(64), sigma=np.eye(64))  # same path, other content
    assert stage_keys(structured_config({"metrics.reference": str(ref)})).eval != first.eval

"""Tests for harness.data: digits, image_folder (with a corrupt file), latents + the encode command."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import (
    DataConfigError,
    DataError,
    DataPathError,
    EmptyDataError,
    build_dataset,
    get_dataset_builder,
    list_datasets,
)
from harness.data.image_folder import center_crop_arr
from harness.data.latents import META_FILE, VaeDecoder


def _stack(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
def test_registry_lists_and_rejects_unknown():
    assert {"digits", "image_folder", "latents"} <= set(list_datasets())
    with pytest.raises(KeyError, match="image_folder"):
        get_dataset_builder("mnist")
    with pytest.raises(DataConfigError, match="data.split"):
        build_dataset({"name": "digits", "split": "val"})
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------
def test_digits_shapes_range_classes_and_roundtrip():
    src = build_dataset({"name": "digits"})  # defaults: 8x8, train split
    x, y = _stack(src.train)
    assert (src.channels, src.image_size, src.num_classes, src.is_latent) == (1, 8, 10, False)
    assert x.shape == (len(src.train), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() == -1.0 and x.max() == 1.0  # 0 and 16 grey levels both occur
    assert len(torch.unique(x)) == 17
    assert set(y.tolist()) == set(range(10))
    ref = src.reference_images()
    assert ref.dtype == torch.uint8 and ref.shape == x.shape
    assert torch.equal(src.to_uint8_images(x), ref)  # [-1,1] -> uint8 inverts the training map exactly
    assert src.describe()["n"] == len(src.train) and "split_rule" in src.describe()["preprocessing"]


def test_digits_split_deterministic_disjoint_stratified():
    a, b = build_dataset({"name": "digits"}), build_dataset({"name": "digits"})
    assert torch.equal(_stack(a.train)[0], _stack(b.train)[0]) and a.fingerprint() == b.fingerprint()
    from harness.data.digits import split_indices

    tr, te, al = split_indices("train"), split_indices("test"), split_indices("all")
    assert len(set(tr) & set(te)) == 0 and sorted(set(tr) | set(te)) == list(al) and len(al) == 1797
    assert len(te) == 360
    test = build_dataset({"name": "digits", "split": "test"})
    assert len(test.train) == 360 and test.fingerprint() != a.fingerprint()
    assert torch.bincount(_stack(test.train)[1]).min() >= 35  # stratified: every class ~36


def test_digits_upscale_16_is_nearest():
    small = build_dataset({"name": "digits", "split": "all"})
    big = build_dataset({"name": "digits", "split": "all", "upscale": 16, "image_size": 16})
    assert big.image_size == 16 and big.fingerprint() != small.fingerprint()
    r8, r16 = small.reference_images(), big.reference_images()
    assert r16.shape == (1797, 1, 16, 16)
    assert torch.equal(r16, r8.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    with pytest.raises(DataConfigError, match="data.upscale"):
        build_dataset({"name": "digits", "upscale": 12})
    with pytest.raises(DataConfigError, match="data.image_size"):
        build_dataset({"name": "digits", "upscale": 8, "image_size": 16})


def test_digits_num_classes():
    uncond = build_dataset({"name": "digits", "num_classes": 1})
    assert uncond.num_classes == 1 and int(_stack(uncond.train)[1].max()) == 0
    assert build_dataset({"name": "digits", "num_classes": 12}).num_classes == 12
    with pytest.raises(DataConfigError, match="data.num_classes"):
        build_dataset({"name": "digits", "num_classes": 5})


# ----------------------------------------------------------------------------------------------
# image_folder
# ----------------------------------------------------------------------------------------------
def _make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    # 64x32, left half red / right half blue: BOX-halved to 32x16, centre crop keeps columns 8..23.
    half = np.zeros((32, 64, 3), np.uint8)
    half[:, :32, 0] = 255
    half[:, 32:, 2] = 255
    Image.fromarray(half).save(root / "cat" / "a_split.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "cat" / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 255, (50, 20), dtype=np.uint8), mode="L").save(root / "cat" / "c_grey.png")
    Image.fromarray(rng.integers(0, 255, (70, 90, 4), dtype=np.uint8), mode="RGBA").save(root / "dog" / "d.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "dog" / "e.jpeg")
    Image.fromarray(rng.integers(0, 255, (24, 33, 3), dtype=np.uint8)).save(root / "dog" / "f.bmp")
    (root / "dog" / "corrupt.png").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("imgs"))


def test_image_folder_loads_reports_bad_file_and_labels(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.data.image_folder"):
        src = build_dataset({"name": "image_folder", "root": str(folder), "image_size": 16, "split": "all"})
    assert src.bad_files == ["dog/corrupt.png"]
    assert "dog/corrupt.png" in caplog.text
    d = src.describe()
    assert d["bad_files"] == 1 and d["skipped_non_images"] == 1 and d["classes"] == ["cat", "dog"]
    assert (src.channels, src.image_size, src.num_classes, len(src.train)) == (3, 16, 2, 6)
    keys = src.train.keys
    labels = {k: int(src.train[i][1]) for i, k in enumerate(keys)}
    assert labels == {
        "cat/a_split.png": 0,
        "cat/b.jpg": 0,
        "cat/c_grey.png": 0,
        "dog/d.png": 1,
        "dog/e.jpeg": 1,
        "dog/f.bmp": 1,
    }
    x, _ = _stack(src.train)
    assert x.shape == (6, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    # centre crop of the red|blue image: left 8 columns red, right 8 blue (away from the seam)
    u = src.to_uint8_images(x)[keys.index("cat/a_split.png")].int()
    assert (u[0, :, :6] > 240).all() and (u[2, :, :6] < 15).all()
    assert (u[2, :, 10:] > 240).all() and (u[0, :, 10:] < 15).all()
    g = src.to_uint8_images(x)[keys.index("cat/c_grey.png")]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])  # greyscale converted to RGB
    ref = src.reference_images("all")
    assert (
        len(ref) == 6
        and ref[0].dtype == torch.uint8
        and torch.equal(torch.stack([ref[i] for i in range(6)]), src.to_uint8_images(x))
    )


def test_center_crop_matches_dit_reference():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 300, 3), dtype=np.uint8))
    out = center_crop_arr(img, 24)
    assert out.size == (24, 24)
    # DiT: BOX halve twice (300x100 -> 150x50 -> 75x25), bicubic to 72x24, centre crop x from 24.
    x = img.resize((150, 50), Image.BOX).resize((75, 25), Image.BOX).resize((72, 24), Image.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(x)[:, 24:48])


def test_image_folder_split_disjoint_and_fingerprint(folder):
    spec = {"name": "image_folder", "root": str(folder), "image_size": 16}
    everything = build_dataset({**spec, "split": "all"})
    tr = build_dataset({**spec, "split": "train"}).train.keys
    te = build_dataset({**spec, "split": "test"}).train.keys
    # hash split of the relative paths: fixed for these names (b.jpg and e.jpeg are test)
    assert te == ["cat/b.jpg", "dog/e.jpeg"] and len(tr) == 4
    assert set(tr).isdisjoint(te) and set(tr) | set(te) == set(everything.train.keys)
    assert everything.fingerprint() == build_dataset({**spec, "split": "all"}).fingerprint()
    assert everything.fingerprint() != build_dataset({**spec, "split": "all", "image_size": 8}).fingerprint()


def test_image_folder_hflip_is_random_mirror(folder):
    src = build_dataset({"name": "image_folder", "root": str(folder), "image_size": 16, "split": "all", "hflip": True})
    i = src.train.keys.index("cat/a_split.png")
    plain = build_dataset({"name": "image_folder", "root": str(folder), "image_size": 16, "split": "all"}).train[i][0]
    torch.manual_seed(0)
    seen = {bool(torch.equal(src.train[i][0], plain)) for _ in range(20)}
    assert seen == {True, False}
    assert any(torch.equal(src.train[i][0], plain.flip(-1)) for _ in range(20))
    assert (
        src.fingerprint()
        != build_dataset({"name": "image_folder", "root": str(folder), "image_size": 16, "split": "all"}).fingerprint()
    )


def test_config_objects_accepted():
    from dataclasses import dataclass

    from omegaconf import OmegaConf

    @dataclass
    class Cfg:  # the shape of harness.config's DataConfig (extra keys are ignored)
        name: str = "digits"
        root: str | None = None
        image_size: int = 16
        upscale: int = 16
        split: str = "test"
        other: int = 3

    for cfg in (
        Cfg(),
        OmegaConf.structured(Cfg),
        OmegaConf.create({"name": "digits", "upscale": 16, "image_size": 16, "split": "test"}),
    ):
        src = build_dataset(cfg)
        assert (src.image_size, src.split, len(src.train)) == (16, "test", 360)


def test_image_folder_errors_name_the_key(tmp_path):
    with pytest.raises(DataPathError, match=r"data.root=.*does not exist: set data.root="):
        build_dataset({"name": "image_folder", "root": str(tmp_path / "nope")})
    with pytest.raises(DataPathError, match="data.root"):
        build_dataset({"name": "image_folder"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDataError, match=r"data.root=.*found nothing"):
        build_dataset({"name": "image_folder", "root": str(tmp_path / "empty")})
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    (tmp_path / "txt" / "b.csv").write_text("y")
    with pytest.raises(EmptyDataError, match=r"data.root=.*2 non-image file"):
        build_dataset({"name": "image_folder", "root": str(tmp_path / "txt")})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(EmptyDataError, match=r"data.root=.*none is readable"):
        build_dataset({"name": "image_folder", "root": str(tmp_path / "bad")})


def test_image_folder_flat_folder_is_one_class(tmp_path):
    for i in range(3):
        Image.new("RGB", (20 + i, 12), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    src = build_dataset({"name": "image_folder", "root": str(tmp_path), "image_size": 8, "split": "all"})
    assert src.num_classes == 1 and len(src.train) == 3 and src.train[0][0].shape == (3, 8, 8)


# ----------------------------------------------------------------------------------------------
# latents + encode command (tiny random AutoencoderKL built from a config)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoded(folder, tiny_vae, tmp_path_factory) -> Path:
    from harness.data.encode import main

    out = tmp_path_factory.mktemp("lat")
    assert (
        main(
            [
                "--images",
                str(folder),
                "--vae",
                str(tiny_vae),
                "--out",
                str(out),
                "--image-size",
                "16",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_encode_writes_latents_and_meta(encoded, folder, tiny_vae):
    from diffusers import AutoencoderKL

    meta = json.loads((encoded / META_FILE).read_text())
    assert meta["count"] == 6 and meta["image_size"] == 16 and meta["latent_shape"] == [4, 8, 8]
    assert meta["bad_files"] == ["dog/corrupt.png"] and meta["posterior"] == "mode"
    assert meta["scaling_factor"] == pytest.approx(0.18215) and Path(meta["vae_path"]) == tiny_vae.resolve()
    assert not [p for p in encoded.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    with np.load(encoded / "latents.npz") as f:
        z = torch.from_numpy(f["latents"])
        assert list(f["keys"])[0] == "cat/a_split.png" and f["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    # stored = posterior mean * scaling_factor of the centre-cropped image
    img = build_dataset({"name": "image_folder", "root": str(folder), "image_size": 16, "split": "all"})
    vae = AutoencoderKL.from_pretrained(tiny_vae)
    with torch.no_grad():
        want = vae.encode(img.train[0][0][None]).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(z[:1], want, rtol=1e-4, atol=1e-5)


def test_latents_source_shapes_labels_and_decode(encoded, tiny_vae):
    from diffusers import AutoencoderKL

    src = build_dataset(
        {"name": "latents", "root": str(encoded), "image_size": 16, "split": "all", "vae_path": str(tiny_vae)}
    )
    assert (src.is_latent, src.channels, src.image_size, src.num_classes, len(src.train)) == (True, 4, 8, 2, 6)
    z, y = _stack(src.train)
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and z.dtype == torch.float32
    u8 = src.to_uint8_images(z[:3])
    assert u8.shape == (3, 3, 16, 16) and u8.dtype == torch.uint8
    vae = AutoencoderKL.from_pretrained(tiny_vae)
    with torch.no_grad():
        want = ((vae.decode(z[:3] / vae.config.scaling_factor).sample.clamp(-1, 1) + 1) * 127.5).round()
    assert (u8.int() - want.int()).abs().max() <= 1
    d = src.describe()
    assert d["layout"] == "npz" and d["meta"]["count"] == 6 and d["latent_scale"] == pytest.approx(0.18215)
    ref = src.reference_images("all")  # the source folder still exists: the real cropped images
    assert len(ref) == 6 and ref[0].shape == (3, 16, 16) and ref[0].dtype == torch.uint8


def test_latents_errors_and_reconstruction_reference(encoded, tiny_vae, tmp_path):
    with pytest.raises(DataPathError, match="data.root=.*does not exist"):
        build_dataset({"name": "latents", "root": str(tmp_path / "none")})
    with pytest.raises(DataPathError, match="data.vae_path=.*sd-vae-ft-mse"):
        build_dataset({"name": "latents", "root": str(encoded), "vae_path": str(tmp_path / "novae")})
    with pytest.raises(DataConfigError, match="data.image_size=16"):
        build_dataset({"name": "latents", "root": str(encoded), "image_size": 256})
    with pytest.raises(DataPathError, match="data.vae_path is not set"):
        VaeDecoder(None)(torch.zeros(1, 4, 8, 8))
    with pytest.raises(EmptyDataError, match="data.root"):
        build_dataset({"name": "latents", "root": str(tmp_path)})
    # Copy without the source folder reference: references fall back to VAE reconstructions.
    copy = tmp_path / "copy"
    shutil.copytree(encoded, copy)
    meta = json.loads((copy / META_FILE).read_text())
    meta["source"] = str(tmp_path / "gone")
    (copy / META_FILE).write_text(json.dumps(meta))
    src = build_dataset({"name": "latents", "root": str(copy), "split": "all"})  # vae_path from meta
    ref = src.reference_images("all")
    assert len(ref) == 6 and ref[5].shape == (3, 16, 16) and ref[5].dtype == torch.uint8
    assert torch.equal(ref[5], src.to_uint8_images(src.train[5][0][None])[0])
    import pickle  # DataLoader workers get a copy: the decoder ships its settings, not the loaded VAE

    assert torch.equal(pickle.loads(pickle.dumps(ref))[5], ref[5])


def test_encode_flip_and_sample_posterior(folder, tiny_vae, tmp_path):
    from harness.data.encode import encode_folder, main

    a = encode_folder(
        str(folder),
        str(tiny_vae),
        str(tmp_path / "s1"),
        image_size=16,
        posterior="sample",
        seed=3,
        flip=True,
        device="cpu",
        progress=False,
    )
    encode_folder(
        str(folder),
        str(tiny_vae),
        str(tmp_path / "s2"),
        image_size=16,
        posterior="sample",
        seed=3,
        flip=True,
        device="cpu",
        progress=False,
    )
    assert a["count"] == 12 and a["flip"] is True
    with np.load(tmp_path / "s1" / "latents.npz") as f1, np.load(tmp_path / "s2" / "latents.npz") as f2:
        assert np.array_equal(f1["latents"], f2["latents"])  # seeded draw is reproducible
        assert f1["flipped"].tolist() == [False, True] * 6 and f1["keys"][0] == f1["keys"][1]
    src = build_dataset({"name": "latents", "root": str(tmp_path / "s1"), "image_size": 16})
    assert len(src.train) == 8  # 4 train images x 2: flipped twins share their source's split
    assert main(["--images", str(folder), "--vae", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["--images", str(tmp_path / "nothing"), "--vae", str(tiny_vae), "--out", str(tmp_path / "o")]) == 2


def test_fastdit_layout(tmp_path):
    feats, labs = tmp_path / "imagenet256_features", tmp_path / "imagenet256_labels"
    feats.mkdir()
    labs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # fast-DiT names files 0.npy .. N.npy; 10 must sort after 2
        np.save(feats / f"{i}.npy", rng.standard_normal((1, 4, 4, 4)).astype(np.float32) + i)
        np.save(labs / f"{i}.npy", np.array([i % 3]))
    src = build_dataset({"name": "latents", "root": str(tmp_path), "image_size": 256, "split": "all"})
    assert (src.channels, src.image_size, src.num_classes, len(src.train)) == (4, 4, 3, 12)
    z, y = _stack(src.train)
    assert z.shape == (12, 4, 4, 4) and y.tolist() == [i % 3 for i in range(12)]
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.arange(12.0), atol=0.5)  # paired by name, in order
    (labs / "11.npy").unlink()
    with pytest.raises(DataConfigError, match="without a partner"):
        build_dataset({"name": "latents", "root": str(tmp_path)})

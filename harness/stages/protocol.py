"""The diffusion protocol of a job: which one it runs (``protocol=digits|paper|official``, the YAML
group ``harness/config/protocol``), where it deviates from it, and how records and reports show it.

A protocol is only a set of ordinary keys (``diffusion.*``, ``model.learn_sigma``,
``train.ema_warmup``, ``sample.clip_mode``, ...), so any of them can be overridden; the label then
names every key that no longer has the protocol's value, and the record never claims the paper's
protocol for a run that left it (paper Sec. 4.1; docs/architecture.md).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

if TYPE_CHECKING:
    from omegaconf import DictConfig

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "config" / "protocol"  # the YAML group files


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


@functools.cache
def protocol_settings(name: str) -> dict[str, object]:
    """Dotted key -> value of every key the protocol file sets (except the name itself)."""
    path = PROTOCOL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"protocol={name!r} is not known; valid values: {', '.join(list_protocols())}")
    flat: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            elif key != "protocol":
                flat[key] = v

    walk(OmegaConf.to_container(OmegaConf.load(path)), "")
    return flat


def protocol_deviations(cfg: DictConfig) -> dict[str, object]:
    """Keys whose value differs from the named protocol's, with the value the job runs."""
    out = {}
    for key, want in protocol_settings(str(cfg.protocol)).items():
        got = OmegaConf.select(cfg, key)
        if got != want:
            out[key] = got
    return out


def effective_settings(cfg: DictConfig) -> dict[str, object]:
    """What the job really runs (latents are never clipped, whatever sample.clip_mode says)."""
    from harness.diffusion.spec import effective_clip_mode

    d = cfg.diffusion
    return {
        "prediction_type": d.prediction_type,
        "zero_terminal_snr": bool(d.zero_terminal_snr),
        "timestep_spacing": d.timestep_spacing,
        "learn_sigma": bool(cfg.model.learn_sigma),
        "mse_weighting": d.mse_weighting,
        "ema_warmup": bool(cfg.train.ema_warmup),
        "clip_mode": effective_clip_mode(cfg),
    }


def protocol_label(cfg: DictConfig) -> str:
    """One line, e.g. ``protocol paper: v_prediction, zero-SNR, trailing, learned sigma (hybrid), p2,
    EMA warm-up, clip official`` plus ``; deviates: key=value, ...`` when keys were overridden."""
    s = effective_settings(cfg)
    parts = [
        s["prediction_type"],
        "zero-SNR" if s["zero_terminal_snr"] else "no zero-SNR",
        s["timestep_spacing"],
        "learned sigma (hybrid)" if s["learn_sigma"] else "fixed sigma",
        f"mse {s['mse_weighting']}",
        "EMA warm-up" if s["ema_warmup"] else "EMA no warm-up",
        f"clip {s['clip_mode']}",
    ]
    label = f"protocol {cfg.protocol}: {', '.join(parts)}"
    dev = protocol_deviations(cfg)
    if dev:
        label += "; deviates: " + ", ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in sorted(dev.items())
        )
    return label


def protocol_axes(cfg: DictConfig) -> dict[str, object]:
    """Flat axes for records and reports: the protocol name (``*`` when it was deviated from) and
    the settings that define it."""
    s = effective_settings(cfg)
    name = str(cfg.protocol) + ("*" if protocol_deviations(cfg) else "")
    return {"protocol": name, **{k: v for k, v in s.items() if k != "prediction_type"}}


def _scheduler_config(pretrained: Path) -> dict | None:
    """The diffusers scheduler config saved beside pretrained DiT weights (pipeline layout), if any."""
    for cand in (
        pretrained / "scheduler" / "scheduler_config.json",
        pretrained.parent / "scheduler" / "scheduler_config.json",
    ):
        if cand.is_file():
            return json.loads(cand.read_text())
    return None


def check_weights_carry_protocol(cfg: DictConfig) -> str | None:
    """Pretrained weights were trained under one diffusion process; sampling them under another
    (e.g. the released epsilon-prediction DiT under ``protocol=paper``'s v-prediction and zero SNR)
    gives noise. Returns a one-line error naming the key and the fix, or None."""
    if cfg.model.name != "dit_diffusers" or not cfg.model.pretrained_path:
        return None
    root = Path(cfg.model.pretrained_path).expanduser()
    sched = _scheduler_config(root)
    d = cfg.diffusion
    if sched is None:
        if cfg.protocol != "digits":
            return (
                f"protocol={cfg.protocol} with model.pretrained_path={cfg.model.pretrained_path}: no "
                "scheduler/scheduler_config.json beside the weights, so their prediction type and zero-SNR "
                "training cannot be confirmed; use the pipeline folder that holds scheduler/ or protocol=digits "
                "with the diffusion.* keys the weights were trained with"
            )
        return None
    want = {
        "diffusion.prediction_type": sched.get("prediction_type", "epsilon"),
        "diffusion.zero_terminal_snr": bool(sched.get("rescale_betas_zero_snr", False)),
    }
    got = {"diffusion.prediction_type": d.prediction_type, "diffusion.zero_terminal_snr": bool(d.zero_terminal_snr)}
    for key in want:
        if want[key] != got[key]:
            return (
                f"{key}={got[key]} (protocol={cfg.protocol}) but the weights in model.pretrained_path="
                f"{cfg.model.pretrained_path} were trained with {want[key]} (their scheduler config): set "
                f"{key}={want[key]} or train the model under this protocol (drop model.pretrained_path)"
            )
    return None

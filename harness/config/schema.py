"""Structured configs (dataclasses in Hydra's ConfigStore): an unknown key or a wrong type fails
when the config is composed, before anything runs. The names are the vocabulary of design.md."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = "fpdm"  # dit | fpdm | dit_diffusers
    preset: str = "tiny"  # tiny, S/2 ... XL/8 (baselines.presets)
    pre_depth: int = 1  # FPDM explicit layers before the fixed point layer (paper default 1)
    post_depth: int = 1  # ... and after it
    learn_sigma: bool = True
    class_dropout: float = 0.1
    pre_post_timestep_conditioning: bool = False  # paper: explicit layers see the class only
    grad_checkpointing: bool = False  # recompute explicit blocks in backward
    pretrained_path: Optional[str] = None  # dit_diffusers: local diffusers-format DiT folder


@dataclass
class PicardSolverConfig:
    """Plain fixed point iteration z <- f(z), the paper's solver (Algorithm 1)."""
    name: str = "picard"
    tol: float = 0.0  # > 0 stops a sample early once ||f(z)-z||/||f(z)|| < tol


@dataclass
class RelaxedSolverConfig:
    name: str = "relaxed"
    tol: float = 0.0
    beta: float = 0.8  # damping: z <- (1-beta) z + beta f(z)


@dataclass
class AndersonSolverConfig:
    name: str = "anderson"
    tol: float = 0.0
    m: int = 5  # history window
    lam: float = 1e-4  # Tikhonov regularisation of the least-squares system
    beta: float = 1.0  # mixing


@dataclass
class BroydenSolverConfig:
    name: str = "broyden"
    tol: float = 0.0
    memory: int = 8  # limited-memory rank-one updates kept


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction (paper: v_prediction)
    zero_terminal_snr: bool = False  # paper: true (Lin et al.), needs trailing spacing
    timestep_spacing: str = "linspace"  # linspace (the paper's respacing) | leading | trailing
    clip_sample: bool = True  # clip predicted x0 to [-1, 1] while sampling (pixels; off for latents)
    mse_weighting: str = "none"  # none (DiT) | p2 (official FPDM code with v-prediction)


@dataclass
class IterRange:
    min: int = 0
    max: int = 0


@dataclass
class TrainItersConfig:
    no_grad: IterRange = field(default_factory=lambda: IterRange(0, 3))
    with_grad: IterRange = field(default_factory=lambda: IterRange(1, 3))


@dataclass
class TrainBudgetConfig:
    unit: str = "steps"  # steps | seconds | block_passes
    value: float = 1500


@dataclass
class TrainConfig:
    method: str = "sjfb"  # sjfb | jfb | multistep_jfb | full | implicit
    iters: TrainItersConfig = field(default_factory=TrainItersConfig)
    budget: TrainBudgetConfig = field(default_factory=TrainBudgetConfig)
    implicit_solver: str = "anderson"  # adjoint and forward solver of train.method=implicit
    implicit_tol: float = 1e-4
    batch_size: int = 64
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: Optional[float] = None
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    compile: bool = False  # torch.compile the blocks and the fixed point step (harness/compile.py)
    ckpt_every: int = 500  # steps between checkpoints (also on SIGUSR1/SIGTERM)
    log_every: int = 50
    seed: int = 0
    resume: bool = True  # resume from the newest checkpoint in the run's own cache directory


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddpm | ddim | dpmpp
    # With a budget (block passes per image): DiT runs budget/depth steps; FPDM plans from
    # `iters` when set (steps = floor(budget / (pre + iters + post)), paper Sec. 4.2), else from
    # `steps`. Without a budget: DiT runs `steps`; FPDM runs `steps` x `iters` (default: the
    # DiT-equivalent depth - pre - post iterations per step).
    budget: Optional[int] = None
    steps: Optional[int] = 20
    iters: Optional[int] = None
    schedule: str = "constant"  # constant | increasing | decreasing | cosine | official_increasing | list
    schedule_values: Optional[List[int]] = None  # schedule=list: the per-step iterations, in sampling order
    ratio: List[float] = field(default_factory=lambda: [0.5, 1.5])  # span of linear schedules
    match: str = "blocks"  # blocks | flops: what a budget matches between models
    reuse: bool = False  # warm-start each step from the previous solution (FPDM Sec. 3.3)
    cfg_scale: float = 1.0  # classifier-free guidance; the paper's FIDs use none
    eta: float = 0.0  # DDIM
    num_images: int = 1000
    batch_size: int = 250
    seed: int = 0  # image i uses seed + i
    seed_ranges: int = 1  # > 1: FID mean and std over disjoint seed ranges
    precision: str = "fp32"  # fp32 | bf16
    compile: bool = False  # torch.compile the blocks and the fixed point step (harness/compile.py)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | image_folder | latents
    root: Optional[str] = None
    image_size: int = 8
    num_classes: Optional[int] = None  # None: from the data
    upscale: Optional[int] = None  # digits: 8 or 16 (or set image_size=16)
    vae_path: Optional[str] = None  # latents: local diffusers AutoencoderKL folder
    latent_scale: Optional[float] = None  # latents: None = the VAE's scaling_factor
    hflip: bool = False  # image_folder: DiT's random horizontal flip
    split: str = "train"  # train (80%, stratified) | test | all


@dataclass
class MetricsConfig:
    extractor: str = "digits-cnn"  # digits-cnn | inception-v3-compat
    weights: Optional[str] = None  # inception-v3-compat: local weights file
    weights_sha256: Optional[str] = None
    fid: bool = True
    kid: bool = True
    prc: bool = True
    reference_split: str = "train"


@dataclass
class PathsConfig:
    cache_dir: str = "outputs/cache"  # artifact cache shared by every job of every sweep
    extractor_cache: Optional[str] = None  # extractor weights and reference statistics; None: cache_dir


@dataclass
class RunConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    plan: bool = False  # list the job and its cache status, run nothing
    progress: bool = True
    debug: bool = False  # show full tracebacks for configuration errors
    stages: List[str] = field(default_factory=lambda: ["train", "sample", "evaluate"])
    objective: List[str] = field(default_factory=lambda: ["fid"])  # returned to sweepers


@dataclass
class InspectConfig:
    format: str = "text"  # text | json


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: Any = MISSING
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    sweep: Any = None  # the name of the sweep preset, set by sweeps/*.yaml


SOLVER_CONFIGS = {
    "picard": PicardSolverConfig,
    "relaxed": RelaxedSolverConfig,
    "anderson": AndersonSolverConfig,
    "broyden": BroydenSolverConfig,
}

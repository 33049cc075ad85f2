"""Structured configs (dataclasses in Hydra's ConfigStore): an unknown key or a wrong type fails
when the config is composed, before anything runs. The names are the vocabulary of design.md."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from harness.runtime.matmul_precision import OFFICIAL_TF32


@dataclass
class ModelConfig:
    name: str = "fpdm"  # dit | fpdm | dit_diffusers
    preset: str = "tiny"  # tiny, S/2 ... XL/8 (baselines.presets)
    # Architecture knobs on top of the preset (null = the preset's value): depth / width / head /
    # patch ablations as plain overrides. FPDM's depth is its DiT-equivalent depth (default iters).
    depth: Optional[int] = None
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None
    mlp_ratio: Optional[float] = None
    pre_depth: int = 1  # FPDM explicit layers before the fixed point layer (paper default 1)
    post_depth: int = 1  # ... and after it
    learn_sigma: bool = True
    class_dropout: float = 0.1
    pre_post_timestep_conditioning: bool = False  # paper: explicit layers see the class only
    grad_checkpointing: bool = False  # recompute explicit blocks in backward
    pretrained_path: Optional[str] = None  # dit_diffusers: local diffusers-format DiT folder


def _solver_config(name: str) -> type:
    """The typed ``solver`` node of one solver: ``name``, ``tol`` and its knobs, whose names and
    defaults are read from the solver's signature in fpdm/solvers.py, their one home (so
    ``solver=picard solver.m=5`` still fails at load, and the two can never disagree)."""
    from fpdm.solvers import solver_knobs

    knobs = [(k, type(v), field(default=v)) for k, v in solver_knobs(name).items()]
    return make_dataclass(
        f"{name.capitalize()}SolverConfig",
        [("name", str, field(default=name)), ("tol", float, field(default=0.0)), *knobs],
    )


# tol > 0 stops a sample early once ||f(z)-z||/||f(z)|| < tol; knobs are documented on each solver
PicardSolverConfig = _solver_config("picard")  # plain z <- f(z), the paper's solver (Algorithm 1)
RelaxedSolverConfig = _solver_config("relaxed")  # beta: damping, z <- (1-beta) z + beta f(z)
AndersonSolverConfig = _solver_config("anderson")  # m: history window, lam: Tikhonov, beta: mixing
BroydenSolverConfig = _solver_config("broyden")  # memory: limited-memory rank-one updates kept


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction (paper: v_prediction)
    zero_terminal_snr: bool = False  # paper: true (Lin et al.), needs a spacing from t = T-1 (linspace, trailing)
    timestep_spacing: str = "linspace"  # linspace (the paper's respacing) | leading | trailing
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
    # steps | seconds | block_passes (forward block passes per image) | compute (forward-equivalents
    # per image: forward 1, backward 2, checkpoint recompute 1, adjoint VJP 2, per block pass: the
    # paper's block accounting, an iteration charged as one block) | flops (training FLOPs per image:
    # the same weights on measured FLOPs, an iteration charged what it costs; recorded for every run
    # as train_flops_per_image)
    unit: str = "steps"
    value: float = 1500
    # unit=compute | flops: largest accepted relative gap between the budget and what the run spends
    # (a run stops at a step boundary); checked before training, see harness/compute/train_compute.py
    tolerance: float = 0.01


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
    ema_warmup: bool = True  # false: official EMA (starts at the init weights, plain decay every step)
    grad_clip: Optional[float] = None
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    tf32: bool = OFFICIAL_TF32["train"]  # CUDA: fp32 products in TF32, as the official training
    compile: bool = False  # torch.compile the blocks and the fixed point step (harness/runtime/compile.py)
    ckpt_every: int = 500  # steps between checkpoints (also on SIGUSR1/SIGTERM)
    log_every: int = 50
    seed: int = 0
    resume: bool = True  # resume from the newest checkpoint in the run's own cache directory


@dataclass
class AdaptiveConfig:
    """``sample.schedule=adaptive`` and ``greedy``: the calibration run (harness/stages/calibrate.py)."""

    calibration_images: int = 64  # the calibration batch (its own images, not the evaluated ones)
    calibration_seed: int = 1_000_000  # image i of the calibration batch uses calibration_seed + i
    max_iters_per_step: int = 8  # hard cap per sample and step (adaptive) / per step (greedy)
    tol_min: float = 1e-6  # the bisection's bracket of the relative-residual tolerance
    tol_max: float = 1e3
    max_evals: int = 40  # calibration samplings the bisection may spend


@dataclass
class SearchConfig:
    """``sample.schedule=density`` without ``sample.knots``: the knots of the best COMPLETE trial of
    an Optuna study of ``sweep=schedule_search`` (harness/app/searched.py), so ``sweep=schedule_compare``
    compares the searched member with no hand copying. Explicit ``sample.knots`` win over the study."""

    study: Optional[str] = None  # the study name (hydra.sweeper.study_name of sweep=schedule_search); null: off
    # as hydra.sweeper.storage: journal (= optuna/<study>.journal under the fixed part of
    # hydra.sweep.dir, where the sweeper stores it) | journal:PATH | an RDB URL
    storage: str = "journal"


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddpm | ddim | dpmpp | euler | heun | unipc (harness/diffusion/samplers.py)
    # With a budget (block passes per image): DiT runs budget/depth steps; FPDM plans from
    # `iters` when set (steps = floor(budget / (pre + iters + post)) under match=blocks, paper
    # Sec. 4.2; the same in measured FLOPs under match=flops), else from `steps`. Without a budget: DiT runs `steps`; FPDM runs `steps` x `iters` (default: the
    # DiT-equivalent depth - pre - post iterations per step).
    budget: Optional[int] = None
    steps: Optional[int] = 20
    iters: Optional[int] = None
    # constant | increasing | decreasing | cosine | official_increasing | list | density (knots) |
    # adaptive (per-sample tolerance, calibrated to the budget) | greedy (water-filling on residual traces)
    schedule: str = "constant"
    schedule_values: Optional[List[int]] = None  # schedule=list: the per-step iterations, in sampling order
    ratio: List[float] = field(default_factory=lambda: [0.5, 1.5])  # span of linear schedules
    knots: Optional[List[float]] = None  # schedule=density: knot heights, noisiest step first (sweep=schedule_search)
    search: SearchConfig = field(default_factory=SearchConfig)  # schedule=density, knots null: the best trial's knots
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)  # schedule=adaptive | greedy
    # What a budget matches between models. flops: FPDM spends the measured FLOPs DiT spends on
    # `budget` block passes (budget/depth forwards, pro rata off a whole step), so an iteration is
    # charged what it costs (about 1.28 blocks at tiny, 1.32 at XL/2: the injection MLP).
    # blocks: the paper's accounting (Sec. 4.2), an iteration charged as one block pass.
    match: str = "flops"
    # match=flops: largest accepted shortfall below DiT's FLOPs (relative); the shortfall is under
    # one iteration, so it shrinks as the budget grows (60 blocks at 2 iterations/step: 1.2%)
    flops_tolerance: float = 0.02
    reuse: bool = False  # warm-start each step from the previous solution (FPDM Sec. 3.3)
    cfg_scale: float = 1.0  # classifier-free guidance; the paper's FIDs use none
    eta: float = 0.0  # DDIM
    # official: clip x0 to [-1, 1], re-derive eps from it (ADM ddim_sample, the DiT/FPDM code);
    # diffusers: clip x0, keep the model's eps; none: no clipping. Latents are never clipped.
    clip_mode: str = "official"
    num_images: int = 1000
    batch_size: int = 250
    seed: int = 0  # image i uses seed + i
    seed_ranges: int = 1  # > 1: FID mean and std over disjoint seed ranges
    precision: str = "fp32"  # fp32 | bf16
    tf32: bool = OFFICIAL_TF32["sample"]  # CUDA: fp32 products in TF32 (off: the official sampling keeps full fp32)
    compile: bool = False  # torch.compile the blocks and the fixed point step (harness/runtime/compile.py)


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
    # digits-cnn | inception-v3-compat | dinov2-vit-{s,b,l,g}-14; null: the data source's (digits: digits-cnn, else inception)
    extractor: Optional[str] = None
    weights: Optional[str] = None  # inception-v3-compat / dinov2-vit-*-14: local weights file (docs/metrics.md)
    weights_sha256: Optional[str] = None  # else PATH.sha256 beside the file, else the hash in a torch-hub name
    fid: bool = True
    kid: bool = True
    prc: bool = True
    # Inception Score: null = when the weights have a classifier; true = required (FID-only weights refused)
    isc: Optional[bool] = None
    sfid: bool = False  # sFID from Inception's spatial mixed_6/conv features, as ADM (docs/metrics.md)
    reference_split: str = "train"
    # A reference file instead of the split: an ADM reference batch (.npz: arr_0 images and/or mu/sigma,
    # mu_s/sigma_s) or torch-fidelity cached statistics (.pt); its sha256 goes into the protocol
    reference: Optional[str] = None
    # A second feature network scores every sample set too (reports show whether the two rulers
    # agree on each ordering): auto = the registered partner (digits-cnn <-> digits-mlp), null = none.
    second_extractor: Optional[str] = "auto"
    # resamples of the images' features for every FID interval (percentile, 95%) and paired p-value:
    # a bootstrap p is at least 2/(B+1), so Holm over m comparisons can declare one only when
    # 2/(B+1) <= 0.05/m; 500 covers the 12-comparison tables of the main job (reports/multiplicity.py)
    bootstrap: int = 500
    bootstrap_seed: int = 0  # seeds the resampled indices (and the noise floor's splits)
    noise_floor_splits: int = 5  # real-vs-real FIDs averaged into the noise floor


@dataclass
class PathsConfig:
    cache_dir: str = "outputs/cache"  # artifact cache shared by every job of every sweep
    extractor_cache: Optional[str] = None  # extractor weights and reference statistics; None: cache_dir


@dataclass
class RunConfig:
    # modules imported before the config is checked, in every command and job: a user's package
    # registers its samplers, schedules, solvers or extractors there (harness/config/user_code.py)
    imports: List[str] = field(default_factory=list)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    # keep freed CPU memory for the next tensor instead of returning it to the OS (glibc; the
    # process keeps its peak heap): sampling 1.3-1.5x faster at the main job's shape
    # (harness/runtime/allocator.py, docs/performance.md "The allocator, and GELU outside training")
    reuse_freed_memory: bool = True
    plan: bool = False  # list the job and its cache status, run nothing
    progress: bool = True
    debug: bool = False  # show full tracebacks for configuration errors
    stages: List[str] = field(default_factory=lambda: ["train", "sample", "evaluate"])
    objective: List[str] = field(default_factory=lambda: ["fid"])  # returned to sweepers


@dataclass
class InspectConfig:
    format: str = "text"  # text | json
    # memory estimate: add DistributedDataParallel's gradient buckets; null = as the protocol's own
    # training ran (paper, official: the official train.py is a DDP job; digits: one process)
    ddp: Optional[bool] = None


@dataclass
class CompareConfig:
    """The baseline each setting is compared against in reports (paired bootstrap of the FID
    difference; reports/significance.py). null: no comparison along that axis."""

    model: Optional[str] = "dit"  # FPDM vs DiT at the same budget
    schedule: Optional[str] = "constant"
    reuse: Optional[bool] = False
    solver: Optional[str] = "picard"
    depth: Optional[List[int]] = field(default_factory=lambda: [1, 1])  # [pre_depth, post_depth]


@dataclass
class SelectionConfig:
    """The held-out selection set (harness/stages/selection.py): where a report chooses one of several
    settings (the best FPDM setting of a cell to pair with DiT, reports/selection.py), it chooses by
    the FID of these images, never by the FID of the images it then reports (a winner's curse)."""

    images: int = 0  # images sampled and scored (FID, primary extractor) only to choose settings; 0: off
    seed: int = 2_000_000  # image i uses seed + i: disjoint from sample.seed's and the calibration's images


@dataclass
class LoggerConfig:
    """Experiment tracking (harness/runtime/tracking.py), chosen with the group
    ``logger=none|tensorboard|wandb|mlflow`` (harness/config/logger/): the training loss, learning
    rate, gradient norm, throughput and FPDM's iterations every ``train.log_every`` steps, and the
    record's metrics, from rank 0."""

    name: str = "none"  # none | tensorboard | wandb | mlflow
    dir: Optional[str] = None  # null: the job's output folder (tb/, wandb/); a path: <dir>/<job id>
    project: str = "fpdm-bench"  # the W&B project / the MLflow experiment
    mode: str = "offline"  # wandb: offline (`wandb sync` later) | online | disabled
    tracking_uri: Optional[str] = None  # mlflow: null = SQLite in <sweep dir>/mlflow.db


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
    compare: CompareConfig = field(default_factory=CompareConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # set by the logger group (harness/config/logger/)
    sweep: Any = None  # the name of the sweep preset, set by sweeps/sweep/NAME.yaml
    protocol: str = "digits"  # set by the protocol group (harness/config/protocol/*.yaml): digits | paper | official


SOLVER_CONFIGS = {
    "picard": PicardSolverConfig,
    "relaxed": RelaxedSolverConfig,
    "anderson": AndersonSolverConfig,
    "broyden": BroydenSolverConfig,
}

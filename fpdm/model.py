"""Fixed Point Diffusion Model (Bai & Melas-Kyriazi, CVPR 2024, Sec. 3.2, Fig. 2).

``n_pre`` explicit DiT blocks, an input injection ``x_inj = Linear(x_pre)``, one weight-tied
fixed point layer ``f(z) = Block(MLP([z, x_inj]), c)`` with
``MLP = Linear(2D, 2D) -> GELU(tanh) -> Linear(2D, D)`` solved per call, ``n_post`` explicit
blocks and the final layer. ``z0`` is ``x_pre`` unless a warm start is given (solution reuse).
The fixed point block is conditioned on ``t_emb + y``; pre, post and final layers on ``y`` only
(the paper's timestep-independent explicit layers), or on ``t_emb + y`` when
``pre_post_timestep_conditioning`` is set.

FPDM-XL/2 with 1 pre and 1 post layer (ImageNet, learned sigma) has 86,500,256 parameters
(docs/paper-notes.md §8.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.contract import AttentionFn, ForwardTrace
from baselines.layers import DiTBlock, FinalLayer, PatchDenoiser, dit_initialize, gelu_tanh, run_block
from baselines.presets import Preset, resolve_preset
from fpdm.reuse import WarmStart
from fpdm.training_modes import FixedPointCounts, ImplicitTrainSpec, get_training_mode


@dataclass
class SolveTrace(ForwardTrace):
    """What one FPDM call did (``model(..., trace=SolveTrace())``): the caller owns it, so two
    interleaved calls (two samplers, CFG halves, a training and an evaluation forward) each keep
    their own numbers."""

    fixed_point_evals: int = 0  # evaluations of the fixed point layer made by the call
    solve: object | None = None  # sampling: the solver's ``SolverStats`` (None for ``unrolled_solve``)
    counts: FixedPointCounts | None = None  # training: the mode's counts (VJPs filled in by backward)


def unrolled_solve(
    f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, max_iter: int, tol: float = 0.0
) -> tuple[torch.Tensor, None]:
    """``f`` applied ``max_iter`` times, no residuals and no statistics: the solve of shape-only
    runs on the meta device (FLOP and memory accounting), where there are no values to compare."""
    for _ in range(max_iter):
        z0 = f(z0)
    return z0, None


class InjectionMLP(nn.Module):
    """Mixes the iterate with the input injection: fc2(GELU_tanh(fc1([z, x_inj])))."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden_size, 2 * hidden_size)
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, z: torch.Tensor, x_inj: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(torch.cat([z, x_inj], dim=-1))))

    def injection_term(self, x_inj: torch.Tensor) -> torch.Tensor:
        """``x_inj @ W1[:, D:]^T + b1``: the half of fc1 that does not change between iterations.
        fc1([z, x_inj]) = z @ W1[:, :D]^T + injection_term(x_inj), so a solve computes it once and
        each iteration skips the concatenation and a third of the MLP's multiply-adds (the same
        weights, the same parameter layout; sums differ from the fused fc1 only by rounding)."""
        d = x_inj.shape[-1]
        return F.linear(x_inj, self.fc1.weight[:, d:], self.fc1.bias)

    def mix(self, z: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        """forward(z, x_inj) given ``term = injection_term(x_inj)``."""
        d = z.shape[-1]
        return self.fc2(gelu_tanh(F.linear(z, self.fc1.weight[:, :d]) + term))


class FixedPointLayer(nn.Module):
    """The weight-tied implicit layer: one injection MLP and one DiT block."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, attention: AttentionFn | None = None):
        super().__init__()
        self.injection = InjectionMLP(hidden_size)
        self.block = DiTBlock(hidden_size, num_heads, mlp_ratio, attention)

    def forward(self, z: torch.Tensor, x_inj: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.block(self.injection(z, x_inj), c)

    def bind(self, x_inj: torch.Tensor, c: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``f(z) = forward(z, x_inj, c)`` with its loop invariants (the injection half of fc1 and the
        block's adaLN vectors, paper Sec. 3.2: both depend on x_inj and c only) computed once."""
        term, mod = self.injection_term_and_mod(x_inj, c)
        return self._bound(term, mod)

    def _bound(self, term: torch.Tensor, mod: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``f`` on the rows its invariants hold, with ``f.rows(idx)`` restricting them to the rows
        ``idx`` (fpdm.solvers compaction: converged samples leave the batch)."""
        from fpdm.solvers import with_rows

        step = self.step

        def f(z: torch.Tensor) -> torch.Tensor:
            return step(z, term, mod)

        return with_rows(f, lambda idx: self._bound(term.index_select(0, idx), mod.index_select(0, idx)))

    def injection_term_and_mod(self, x_inj: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.injection.injection_term(x_inj), self.block.modulation(c)

    def step(self, z: torch.Tensor, term: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """One fixed point evaluation given the loop invariants (what ``train.compile`` compiles)."""
        return self.block(self.injection.mix(z, term), None, mod)


class FPDM(PatchDenoiser):
    """The Fixed Point Diffusion Model (module docstring). Extra forward keywords: ``iters``,
    ``solver``, ``tol`` and ``warm_start`` (sampling); ``generator`` draws the training mode's
    iteration counts; ``trace`` (a ``SolveTrace``) receives the solve. ``attention`` replaces
    ``scaled_dot_product_attention`` in every block."""

    is_implicit = True
    supports_solution_reuse = True
    param_parts = {
        "embedders": ("x_embedder", "t_embedder", "y_embedder"),
        "pre": ("pre_blocks",),
        "fixed_point": ("pre_projection", "fixed_point"),
        "post": ("post_blocks",),
        "final": ("final_layer",),
    }

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        hidden_size: int = 1152,
        num_heads: int = 16,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        pre_depth: int = 1,
        post_depth: int = 1,
        class_dropout: float = 0.1,
        learn_sigma: bool = True,
        pre_post_timestep_conditioning: bool = False,
        train_spec: ImplicitTrainSpec | None = None,
        default_iters: int = 26,
        attention: AttentionFn | None = None,
    ):
        if pre_depth < 0 or post_depth < 0:
            raise ValueError("model.pre_depth and model.post_depth must be >= 0")
        super().__init__(
            input_size=input_size,
            in_channels=in_channels,
            hidden_size=hidden_size,
            patch_size=patch_size,
            num_classes=num_classes,
            class_dropout=class_dropout,
            learn_sigma=learn_sigma,
        )
        self.pre_depth, self.post_depth = pre_depth, post_depth
        self.pre_post_timestep_conditioning = pre_post_timestep_conditioning
        self.train_spec = train_spec or ImplicitTrainSpec()
        self.train_spec.validate()
        self.default_iters = default_iters
        self.pre_blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(pre_depth)]
        )
        self.pre_projection = nn.Linear(hidden_size, hidden_size)
        self.fixed_point = FixedPointLayer(hidden_size, num_heads, mlp_ratio, attention)
        self.post_blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(post_depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        dit_initialize(self)

    @property
    def num_explicit_blocks(self) -> int:
        return self.pre_depth + self.post_depth

    def block_passes(self, iters: int | None = None) -> int:
        """Transformer-block passes of one forward with ``iters`` evaluations (paper Sec. 4.2;
        default: the DiT-equivalent ``default_iters``)."""
        return self.pre_depth + (self.default_iters if iters is None else iters) + self.post_depth

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        iters: int | None = None,
        solver: Callable | None = None,
        tol: float = 0.0,
        warm_start: WarmStart | None = None,
        drop_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        trace: ForwardTrace | None = None,
    ) -> torch.Tensor:
        h, t_emb, y_emb = self.embed(x, t, y, drop_labels, generator)  # (B, N, D), (B, D), (B, D)
        c = t_emb + y_emb
        c_explicit = c if self.pre_post_timestep_conditioning else y_emb
        use_ckpt = self.grad_checkpointing and self.training
        for block in self.pre_blocks:
            h = run_block(block, h, c_explicit, use_ckpt)
        x_inj = self.pre_projection(h)

        f = self.fixed_point.bind(x_inj, c)
        stats, counts = None, None
        if self.training and torch.is_grad_enabled():
            if warm_start is not None:
                raise ValueError("solution reuse is for sampling only; training never reuses solutions")
            z, counts = get_training_mode(self.train_spec.method)(f, h, self.train_spec, generator)
            evals = counts.forward
        else:
            z, stats, evals = self._solve(f, h, t, iters, solver, tol, warm_start)
        if trace is not None:
            self._record(trace, evals, stats, counts)
        for block in self.post_blocks:
            z = run_block(block, z, c_explicit, use_ckpt)
        return self.unpatchify_output(z, c_explicit)

    def _solve(self, f, z_pre, t, iters, solver, tol, warm_start) -> tuple[torch.Tensor, object | None, int]:
        """(solution, solver statistics, evaluations made) of one sampling solve."""
        from fpdm.solvers import get_solver

        iters = self.default_iters if iters is None else int(iters)
        if iters < 1:
            raise ValueError(f"the fixed point layer needs at least 1 iteration per call, got iters={iters}")
        z0 = z_pre if warm_start is None else warm_start.initial(z_pre, t)
        solve = solver or get_solver("picard")
        z, stats = solve(f, z0, max_iter=iters, tol=tol)
        if warm_start is not None:
            warm_start.update(z, t)
        return z, stats, iters if stats is None else stats.nfe

    def _record(self, trace: ForwardTrace, evals: int, stats, counts: FixedPointCounts | None) -> None:
        trace.record_passes(self.num_explicit_blocks + evals)
        if isinstance(trace, SolveTrace):
            trace.fixed_point_evals, trace.solve, trace.counts = evals, stats, counts


def build_fpdm(
    preset: str | Preset,
    *,
    input_size: int,
    in_channels: int,
    num_classes: int,
    pre_depth: int = 1,
    post_depth: int = 1,
    learn_sigma: bool = True,
    class_dropout: float = 0.1,
    pre_post_timestep_conditioning: bool = False,
    train_spec: ImplicitTrainSpec | None = None,
    attention: AttentionFn | None = None,
) -> FPDM:
    p = resolve_preset(preset)  # a preset name, or a Preset with architecture knobs applied
    if pre_depth + post_depth >= p.depth:
        raise ValueError(
            f"model.pre_depth + model.post_depth = {pre_depth + post_depth} leaves no room for the fixed point layer "
            f"in preset {p.name} (depth {p.depth}); use at most {p.depth - 1} explicit layers in total"
        )
    return FPDM(
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        hidden_size=p.hidden_size,
        num_heads=p.num_heads,
        patch_size=p.patch_size,
        mlp_ratio=p.mlp_ratio,
        pre_depth=pre_depth,
        post_depth=post_depth,
        class_dropout=class_dropout,
        learn_sigma=learn_sigma,
        pre_post_timestep_conditioning=pre_post_timestep_conditioning,
        train_spec=train_spec,
        default_iters=p.depth - pre_depth - post_depth,
        attention=attention,
    )

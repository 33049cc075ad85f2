"""How the weight-tied fixed point layer is differentiated during training.

- ``sjfb``: Stochastic Jacobian-Free Backpropagation (FPDM paper Sec. 3.4, Algorithm 1). Draw
  ``n ~ U[n_min, n_max]`` and ``m ~ U[m_min, m_max]`` (both ends included), run n iterations under
  real ``torch.no_grad()`` (the official code builds a transient graph instead, docs/paper-notes.md §3.1 and
  7.7, so its memory grows with n; ours does not), then m iterations with gradient from the detached
  result, and backpropagate through those m only.
- ``jfb``: JFB / 1-step phantom gradient (Fung et al. 2022): n = n_max, m = 1.
- ``multistep_jfb``: the deterministic multi-step variant of Table 4: n = n_max, m = m_max.
- ``full``: draws n and m as S-JFB (same forward compute) and backpropagates through all n + m.
- ``implicit``: implicit-function-theorem gradient (DEQ, Bai et al. 2019): solve the forward fixed
  point with no graph, apply f once with graph, and in backward replace the incoming gradient g by
  the solution of the adjoint fixed point ``u = J^T u + g`` (J = df/dz at the solution), solved with
  a registry solver.

Each mode returns ``(z, counts)``: a ``FixedPointCounts`` of the fixed point layer evaluations
actually made, with and without gradient, and (implicit mode) the adjoint vector-Jacobian products,
which are counted when ``backward`` runs them. Training compute is counted, not assumed
(harness/train_compute.py turns the counts into forward-equivalents). ``planned_counts`` gives
the same counts from the step's generator without running anything, where they do not depend on
the data (every mode but ``implicit`` with a tolerance), so a compute budget is checked before
training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from baselines.registry import Registry

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ImplicitTrainSpec:
    method: str = "sjfb"
    no_grad_min: int = 0
    no_grad_max: int = 10
    with_grad_min: int = 1
    with_grad_max: int = 12
    implicit_solver: str = "anderson"
    implicit_tol: float = 1e-4

    def validate(self) -> None:
        get_training_mode(self.method)
        if not 0 <= self.no_grad_min <= self.no_grad_max:
            raise ValueError(f"train.iters.no_grad needs 0 <= min <= max, got {self.no_grad_min}..{self.no_grad_max}")
        if not 1 <= self.with_grad_min <= self.with_grad_max:
            raise ValueError(
                f"train.iters.with_grad needs 1 <= min <= max, got {self.with_grad_min}..{self.with_grad_max}"
            )


@dataclass
class FixedPointCounts:
    """Fixed point layer evaluations of one training forward (and the backward that follows)."""

    no_grad: int = 0  # forward only: excluded from the backward pass
    with_grad: int = 0  # forward now, backpropagated by loss.backward()
    vjp: int = 0  # adjoint vector-Jacobian products, made during backward (implicit mode)

    @property
    def forward(self) -> int:
        return self.no_grad + self.with_grad


class _Counted:
    """``f`` counting its own calls by whether autograd records them."""

    def __init__(self, f: Fn, counts: FixedPointCounts):
        self.f, self.counts = f, counts

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.counts.with_grad += 1
        else:
            self.counts.no_grad += 1
        return self.f(z)


Mode = Callable[..., tuple[torch.Tensor, FixedPointCounts]]
Planner = Callable[[ImplicitTrainSpec, torch.Generator | None], FixedPointCounts | None]
TRAINING_MODES: Registry[Mode] = Registry("training method", key="train.method", sort=False)
# the function that predicts a mode's counts from the spec and generator (drawing exactly what the
# mode draws; None where the counts depend on the data), registered beside each mode
_PLANNERS: Registry[Planner] = Registry("training-cost planner", key="train.method", sort=False)
get_training_mode, list_training_modes = TRAINING_MODES.get, TRAINING_MODES.list


def register_training_mode(name: str, planner: Planner) -> Callable[[Mode], Mode]:
    """Register a mode with its cost planner (see ``planned_counts``)."""

    def deco(fn: Mode) -> Mode:
        TRAINING_MODES.register(name, fn)
        _PLANNERS.register(name, planner)
        return fn

    return deco


def planned_counts(
    name: str, spec: ImplicitTrainSpec, generator: torch.Generator | None = None
) -> FixedPointCounts | None:
    """The counts mode ``name`` will make with this generator, or None if only running tells."""
    get_training_mode(name)
    return _PLANNERS.get(name)(spec, generator)


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (both ends), from the run's seeded generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())


def _draw(spec: ImplicitTrainSpec, generator) -> tuple[int, int]:
    """S-JFB's draw (Algorithm 1): n ~ U[n_min, n_max], then m ~ U[m_min, m_max]."""
    n = _randint(spec.no_grad_min, spec.no_grad_max, generator)
    return n, _randint(spec.with_grad_min, spec.with_grad_max, generator)


def _iterate(f: Fn, z: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        z = f(z)
    return z


def _no_grad_then_grad(f: Fn, z0: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, FixedPointCounts]:
    counts = FixedPointCounts()
    f = _Counted(f, counts)
    with torch.no_grad():
        z = _iterate(f, z0.detach(), n)
    return _iterate(f, z.detach(), m), counts


def _plan_sjfb(spec, generator) -> FixedPointCounts:
    n, m = _draw(spec, generator)
    return FixedPointCounts(no_grad=n, with_grad=m)


def _plan_jfb(spec, generator) -> FixedPointCounts:
    return FixedPointCounts(no_grad=spec.no_grad_max, with_grad=1)


def _plan_multistep(spec, generator) -> FixedPointCounts:
    return FixedPointCounts(no_grad=spec.no_grad_max, with_grad=spec.with_grad_max)


def _plan_full(spec, generator) -> FixedPointCounts:
    n, m = _draw(spec, generator)
    return FixedPointCounts(with_grad=n + m)


def _plan_implicit(spec, generator) -> FixedPointCounts | None:
    """Without a tolerance both solves run their whole budget; with one, the data decides."""
    if spec.implicit_tol > 0:
        return None
    budget = spec.no_grad_max + spec.with_grad_max
    return FixedPointCounts(no_grad=budget, with_grad=1, vjp=budget)


@register_training_mode("sjfb", _plan_sjfb)
def sjfb(
    f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, FixedPointCounts]:
    return _no_grad_then_grad(f, z0, *_draw(spec, generator))


@register_training_mode("jfb", _plan_jfb)
def jfb(
    f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, FixedPointCounts]:
    return _no_grad_then_grad(f, z0, spec.no_grad_max, 1)


@register_training_mode("multistep_jfb", _plan_multistep)
def multistep_jfb(
    f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, FixedPointCounts]:
    return _no_grad_then_grad(f, z0, spec.no_grad_max, spec.with_grad_max)


@register_training_mode("full", _plan_full)
def full(
    f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, FixedPointCounts]:
    n, m = _draw(spec, generator)
    counts = FixedPointCounts()
    return _iterate(_Counted(f, counts), z0.detach(), n + m), counts


@register_training_mode("implicit", _plan_implicit)
def implicit(
    f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, FixedPointCounts]:
    from fpdm.solvers import get_solver

    solver = get_solver(spec.implicit_solver)
    budget = spec.no_grad_max + spec.with_grad_max
    counts = FixedPointCounts()
    f = _Counted(f, counts)
    with torch.no_grad():
        z_star, _ = solver(f, z0.detach(), max_iter=budget, tol=spec.implicit_tol)
    if not torch.is_grad_enabled():
        return f(z_star), counts
    z_star = z_star.detach().requires_grad_()
    f_star = f(z_star)  # graph to the parameters, the injection and z_star
    handle = None

    def adjoint_hook(grad: torch.Tensor) -> torch.Tensor:
        handle.remove()  # the vector-Jacobian products below must not re-enter this hook

        def adjoint_map(u: torch.Tensor) -> torch.Tensor:
            counts.vjp += 1
            (vjp,) = torch.autograd.grad(f_star, z_star, u, retain_graph=True)
            return vjp + grad

        with torch.enable_grad():
            u, _ = solver(adjoint_map, grad, max_iter=budget, tol=spec.implicit_tol)
        return u.detach()

    if f_star.requires_grad:
        handle = f_star.register_hook(adjoint_hook)
    return f_star, counts

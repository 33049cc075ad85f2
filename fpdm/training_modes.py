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

Each mode returns ``(z, passes)``, passes being the fixed point layer evaluations actually made,
so training compute in block passes is counted, not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


TRAINING_MODES: Registry[Callable[..., tuple[torch.Tensor, int]]] = Registry(
    "training method", key="train.method", sort=False)
register_training_mode, get_training_mode = TRAINING_MODES.register, TRAINING_MODES.get
list_training_modes = TRAINING_MODES.list


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (both ends), from the run's seeded generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())


def _iterate(f: Fn, z: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        z = f(z)
    return z


def _no_grad_then_grad(f: Fn, z0: torch.Tensor, n: int, m: int) -> torch.Tensor:
    with torch.no_grad():
        z = _iterate(f, z0.detach(), n)
    return _iterate(f, z.detach(), m)


@register_training_mode("sjfb")
def sjfb(f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator=None) -> tuple[torch.Tensor, int]:
    n = _randint(spec.no_grad_min, spec.no_grad_max, generator)
    m = _randint(spec.with_grad_min, spec.with_grad_max, generator)
    return _no_grad_then_grad(f, z0, n, m), n + m


@register_training_mode("jfb")
def jfb(f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator=None) -> tuple[torch.Tensor, int]:
    return _no_grad_then_grad(f, z0, spec.no_grad_max, 1), spec.no_grad_max + 1


@register_training_mode("multistep_jfb")
def multistep_jfb(f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator=None) -> tuple[torch.Tensor, int]:
    return _no_grad_then_grad(f, z0, spec.no_grad_max, spec.with_grad_max), spec.no_grad_max + spec.with_grad_max


@register_training_mode("full")
def full(f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator=None) -> tuple[torch.Tensor, int]:
    n = _randint(spec.no_grad_min, spec.no_grad_max, generator)
    m = _randint(spec.with_grad_min, spec.with_grad_max, generator)
    return _iterate(f, z0.detach(), n + m), n + m


@register_training_mode("implicit")
def implicit(f: Fn, z0: torch.Tensor, spec: ImplicitTrainSpec, generator=None) -> tuple[torch.Tensor, int]:
    from fpdm.solvers import get_solver

    solver = get_solver(spec.implicit_solver)
    budget = spec.no_grad_max + spec.with_grad_max
    with torch.no_grad():
        z_star, stats = solver(f, z0.detach(), max_iter=budget, tol=spec.implicit_tol)
    if not torch.is_grad_enabled():
        return f(z_star), stats.nfe + 1
    z_star = z_star.detach().requires_grad_()
    f_star = f(z_star)  # graph to the parameters, the injection and z_star
    handle = None

    def adjoint_hook(grad: torch.Tensor) -> torch.Tensor:
        handle.remove()  # the vector-Jacobian products below must not re-enter this hook

        def adjoint_map(u: torch.Tensor) -> torch.Tensor:
            (vjp,) = torch.autograd.grad(f_star, z_star, u, retain_graph=True)
            return vjp + grad

        with torch.enable_grad():
            u, _ = solver(adjoint_map, grad, max_iter=budget, tol=spec.implicit_tol)
        return u.detach()

    if f_star.requires_grad:
        handle = f_star.register_hook(adjoint_hook)
    return f_star, stats.nfe + 1

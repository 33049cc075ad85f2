"""Fixed point solver registry: ``picard``, ``relaxed``, ``anderson``, ``broyden``.

FPDM (Bai & Melas-Kyriazi, CVPR 2024, Algorithm 1; official models.py ``_forward_fixed_point_blocks``)
only ever runs plain fixed point (Picard) iteration for a prescribed number of steps, with no
tolerance (paper Sec. 3.1/3.4 merely *name* Anderson and Broyden). The others are here so that
FPDM's loop is one row of the same table as the DEQ solvers (torchdeq ``solver/``):

- ``picard``:   z <- f(z)                               (the paper's solver)
- ``relaxed``:  z <- (1 - beta) z + beta f(z)           (damped / Krasnoselskii-Mann)
- ``anderson``: Anderson acceleration, window ``m``, Tikhonov ``lam``, mixing ``beta``
                (Walker & Ni 2011; the DEQ variant of Bai et al. 2019)
- ``broyden``:  limited-memory "good" Broyden on g(z) = f(z) - z per sample, memory ``memory``
                (Broyden 1965; the inverse-Jacobian low-rank form of DEQ / torchdeq, no line search)

Contract (docs/architecture.md, "Solver contract"): ``solve(f, z0, *, max_iter, tol=0.0, **knobs)
-> (z, SolverStats)`` on batched ``z`` of shape ``(B, ...)``; norms are per sample over the
non-batch dims.

- ``max_iter`` counts calls of ``f`` and is never exceeded. ``tol == 0`` (the FPDM default) makes
  exactly ``max_iter`` calls, so compute accounting is exact. With ``tol > 0`` a sample whose
  relative residual ``||f(z)-z|| / (||f(z)|| + eps)`` drops below ``tol`` is frozen and the solve
  stops once every sample is frozen (converged or diverged).
- Returned ``z`` is each solver's *latest* iterate: the update computed from the last evaluation
  (picard: f(z_{K-1}), so ``picard`` with ``tol=0`` returns exactly f(f(...f(z0))) and equals the
  plain loop bit for bit; relaxed/anderson/broyden: their mixing / quasi-Newton step). Its own
  residual is unknown; evaluating f once more to learn it would cost a block pass, so we don't.
  Returning the best *evaluated* iterate instead would waste the last evaluation, which matters
  in FPDM's few-iterations-per-step regime. A frozen sample keeps the update computed from the
  evaluation that certified convergence.
- ``SolverStats.best`` is, per sample, the evaluated iterate with the lowest finite *absolute*
  residual (within one sample the relative one would favour runaway iterates). A sample that meets
  a non-finite residual, residual norm or iterate is flagged ``diverged`` and gets that best
  iterate back; solvers never raise on numerics (locuslab/deq#20, locuslab/deq#26).
- Autograd: nothing is detached on the iterate path, freezing uses ``torch.where``, and all
  histories are out-of-place, so gradients flow through the iterations when grad is enabled
  (``full`` training mode) and the code also runs under ``no_grad`` / ``inference_mode``.
  With ``tol == 0`` the loop has no host synchronisation and no masking (fast path).
- Compaction (``tol > 0``): a frozen sample leaves the batch. If ``f`` has a ``rows`` attribute
  (``f.rows(idx)`` returns the same map restricted to the batch rows ``idx``; see ``with_rows``;
  FPDM's bound fixed point layer has one), every evaluation after the first freeze runs ``f`` on
  the active rows only, so the block's cost falls with the samples that stopped (adaptive compute
  at a fixed budget, docs/architecture.md). Frozen rows keep their iterate; the result is the
  masked solve's up to float rounding of the smaller batch. Without ``rows`` the full batch runs.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from baselines.registry import Registry

Fn = Callable[[Tensor], Tensor]
RESIDUAL_EPS = 1e-8  # keeps the relative residual finite when f(z) is exactly zero


# ----------------------------------------------------------------------------- stats
@dataclass
class SolverStats:
    """What one solve did. Residual rows are per evaluation; ``(nfe, B)``."""

    nfe: int  # calls of f actually made
    abs_residuals: Tensor  # (nfe, B) ||f(z_k) - z_k||; frozen samples repeat their value at freezing
    rel_residuals: Tensor  # (nfe, B) abs / (||f(z_k)|| + eps)
    converged: Tensor  # (B,) bool: frozen because rel < tol (always False when tol == 0)
    diverged: Tensor  # (B,) bool: met a non-finite residual/iterate; returned iterate is `best`
    best: Tensor  # (B, ...) evaluated iterate with the lowest finite abs residual (detached)
    best_rel_residual: Tensor  # (B,) rel residual of `best` (nan if no finite evaluation)
    delta_last: Tensor  # (B,) paper's delta_t: L2 distance between the last two iterates (nan if undefined)
    nfe_per_sample: Tensor  # (B,) long: evaluations spent on each sample before it was frozen

    @property
    def final_rel_residuals(self) -> Tensor:
        """(B,) rel residual of the last evaluation per sample; that of `best` for diverged samples."""
        if self.nfe == 0:
            return torch.full_like(self.delta_last, math.nan)
        return torch.where(self.diverged, self.best_rel_residual, self.rel_residuals[-1])

    def summary(self) -> dict:
        """Python numbers for records: counts as ints, means over samples as floats."""

        def finite_mean(x: Tensor) -> float:
            x = x[torch.isfinite(x)].double()
            return float(x.mean()) if x.numel() else math.nan

        return {
            "nfe": int(self.nfe),
            "rel_residual_final_mean": finite_mean(self.final_rel_residuals),
            "rel_residual_final_max": float(self.final_rel_residuals.double().max()) if self.nfe else math.nan,
            "converged_fraction": float(self.converged.double().mean()) if self.converged.numel() else math.nan,
            "diverged_count": int(self.diverged.sum()),
            "delta_last_mean": finite_mean(self.delta_last),
        }


# ----------------------------------------------------------------------------- registry
SOLVERS: Registry[Callable] = Registry("solver", key="solver")
_CONTRACT_ARGS = ("f", "z0", "max_iter", "tol")
# ``@register_solver("picard")`` adds ``solve(f, z0, *, max_iter, tol, **knobs)``.
register_solver, get_solver, list_solvers = SOLVERS.register, SOLVERS.get, SOLVERS.list


def solver_knobs(name: str) -> dict:
    """Knob names of a solver with their defaults (everything beyond the contract arguments)."""
    params = inspect.signature(get_solver(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _CONTRACT_ARGS}


class BoundSolver:
    """A solver with its knobs fixed: ``(f, z0, *, max_iter, tol=0.0) -> (z, stats)``; picklable."""

    def __init__(self, name: str, knobs: dict):
        self.name, self.knobs = name, dict(knobs)

    def __call__(self, f: Fn, z0: Tensor, *, max_iter: int, tol: float = 0.0):
        return get_solver(self.name)(f, z0, max_iter=max_iter, tol=tol, **self.knobs)

    def __repr__(self) -> str:
        return f"BoundSolver({self.name!r}, {self.knobs!r})"


def make_solver(name: str, **knobs) -> BoundSolver:
    """Bind knobs after checking their names and values; ``.knobs`` is the effective config to log.

    The one place knobs are checked: config validation and the sampling stage both come through
    here, and the solver functions trust what they are given. Their signatures hold the defaults
    (the ``solver`` config nodes in harness/config/schema.py are generated from them)."""
    valid = solver_knobs(name)
    for k in knobs:
        if k not in valid:
            raise ValueError(f"unknown knob {k!r} for solver {name!r}; valid knobs: {', '.join(valid) or '(none)'}")
    effective = {**valid, **knobs}
    _check_knobs(name, **effective)
    return BoundSolver(name, effective)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


_KNOB_RULES = {  # knob name -> (check, what it must be)
    "beta": (lambda v: _is_num(v) and v > 0, "a finite number > 0"),
    "lam": (lambda v: _is_num(v) and v >= 0, "a finite number >= 0"),
    "m": (_is_count, "an int >= 1"),
    "memory": (_is_count, "an int >= 1"),
}


def _check_knobs(name: str, **knobs) -> None:
    for k, v in knobs.items():
        check, what = _KNOB_RULES.get(k, (lambda _: True, ""))  # solvers may add unruled knobs
        if not check(v):
            raise ValueError(f"solver {name!r}: knob {k}={v!r} must be {what}")


# ----------------------------------------------------------------------------- per-sample helpers
def _flat(x: Tensor) -> Tensor:  # (B, ...) -> (B, D); a view when contiguous
    return x.reshape(x.shape[0], -1)


def _acc(x: Tensor) -> torch.dtype:  # accumulate reductions in at least float32
    return torch.promote_types(x.dtype, torch.float32)


def _norm(x: Tensor) -> Tensor:  # (B,)
    return torch.linalg.vector_norm(_flat(x), dim=1, dtype=_acc(x))


def _dot(a: Tensor, b: Tensor, dtype: torch.dtype | None = None) -> Tensor:  # (B, D) x (B, D) -> (B,)
    return (a * b).sum(-1, dtype=dtype or _acc(a))


def _col(v: Tensor, like: Tensor) -> Tensor:  # (B,) -> (B, 1, ..., 1) broadcastable to `like`
    return v.reshape(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------- compaction
def with_rows(f: Fn, rows: Callable[[Tensor], Fn]) -> Fn:
    """Give ``f`` the ``rows`` attribute compaction uses: ``rows(idx)`` is ``f`` on the batch rows
    ``idx`` (a 1-d long tensor), i.e. ``rows(idx)(z[idx]) == f(z)[idx]`` for a row-wise map."""
    f.rows = rows
    return f


def _eval_active(f_active: Fn, z: Tensor, idx: Tensor) -> Tensor:
    """f on the active rows ``idx`` only, scattered into a full batch; frozen rows get ``z`` itself
    (their residual is never read: the driver repeats the one they were frozen with)."""
    out = f_active(z.index_select(0, idx))
    return z.to(out.dtype).index_copy(0, idx, out)


# ----------------------------------------------------------------------------- shared driver
def _drive(f: Fn, z0: Tensor, update: Callable[[Tensor, Tensor, int], Tensor], *, max_iter: int, tol: float):
    """Evaluate f, record residuals, track the best iterate, freeze, stop; ``update`` makes z_{k+1}."""
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if not _is_num(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r} (0 = fixed iteration count)")
    if z0.ndim < 1:
        raise ValueError(f"z0 must be batched with shape (B, ...), got shape {tuple(z0.shape)}")
    freeze = tol > 0
    B, dev = z0.shape[0], z0.device
    z, z_prev = z0, None
    best = z0.detach()
    best_abs = torch.full((B,), math.inf, device=dev, dtype=_acc(z0))
    best_rel = torch.full_like(best_abs, math.nan)
    abs_rows: list[Tensor] = []
    rel_rows: list[Tensor] = []
    active = torch.ones(B, dtype=torch.bool, device=dev)
    converged = torch.zeros(B, dtype=torch.bool, device=dev)
    diverged = torch.zeros(B, dtype=torch.bool, device=dev)
    delta = torch.full_like(best_abs, math.nan)
    n_used = torch.zeros(B, dtype=torch.long, device=dev)
    nfe = 0
    rows = getattr(f, "rows", None) if freeze else None
    n_active, idx, f_active = B, None, f
    for k in range(max_iter):
        fz = f(z) if idx is None else _eval_active(f_active, z, idx)
        nfe += 1
        if fz.shape != z.shape:
            raise ValueError(f"f must preserve the shape: got {tuple(fz.shape)} from {tuple(z.shape)}")
        zd, fzd = z.detach(), fz.detach()
        abs_r, f_norm = _norm(fzd - zd), _norm(fzd)
        rel_r = abs_r / (f_norm + RESIDUAL_EPS)
        bad = ~(torch.isfinite(abs_r) & torch.isfinite(f_norm))  # an overflowing norm counts too
        # best by *absolute* residual: within one sample the scale-free relative residual would
        # prefer iterates that grow without bound (z -> 2z + 1 has rel -> 1/2 as z -> inf)
        improved = (abs_r < best_abs) & active & ~bad
        best_abs = torch.where(improved, abs_r, best_abs)
        best_rel = torch.where(improved, rel_r, best_rel)
        best = torch.where(_col(improved, zd), zd, best)
        z_next = update(z, fz, k)
        if not freeze:  # fast path: no masks, no host sync; diverged samples are replaced at the end
            diverged = diverged | bad
            abs_rows.append(abs_r)
            rel_rows.append(rel_r)
            z_prev, z = z, z_next
            continue
        if abs_rows:  # frozen samples repeat the residual they were frozen with
            abs_r = torch.where(active, abs_r, abs_rows[-1])
            rel_r = torch.where(active, rel_r, rel_rows[-1])
        abs_rows.append(abs_r)
        rel_rows.append(rel_r)
        new_div = active & bad
        new_conv = active & ~bad & (rel_r < tol)
        delta = torch.where(active, _norm(z_next.detach() - zd), delta)
        n_used = torch.where(active, k + 1, n_used)
        z_next = torch.where(_col(new_div, z_next), best.to(z_next.dtype), z_next)
        z = torch.where(_col(active, z_next), z_next, z)
        diverged, converged = diverged | new_div, converged | new_conv
        active = active & ~(new_div | new_conv)  # out of place: torch.where saved the old mask
        still = int(active.sum())  # one host sync per iteration, only when tol > 0
        if still == 0:
            break
        if rows is not None and still < n_active:  # the active set only shrinks: rebind on change
            n_active, idx = still, active.nonzero()[:, 0]
            f_active = rows(idx)
    if not freeze:
        n_used.fill_(nfe)
        if z_prev is not None:
            delta = _norm(z.detach() - z_prev.detach())
    diverged = diverged | ~torch.isfinite(_flat(z.detach())).all(1)
    if bool(diverged.any()):
        z = torch.where(_col(diverged, z), best.to(z.dtype), z)
    empty = torch.zeros(0, B, device=dev, dtype=best_abs.dtype)
    stats = SolverStats(
        nfe=nfe,
        abs_residuals=torch.stack(abs_rows) if abs_rows else empty,
        rel_residuals=torch.stack(rel_rows) if rel_rows else empty.clone(),
        converged=converged & ~diverged,
        diverged=diverged,
        best=best,
        best_rel_residual=best_rel,
        delta_last=torch.where(diverged, math.nan, delta),
        nfe_per_sample=n_used,
    )
    return z, stats


# ----------------------------------------------------------------------------- solvers
@register_solver("picard")
def picard(f: Fn, z0: Tensor, *, max_iter: int, tol: float = 0.0) -> tuple[Tensor, SolverStats]:
    """Plain fixed point iteration z <- f(z): FPDM's solver (Algorithm 1)."""
    return _drive(f, z0, lambda z, fz, k: fz, max_iter=max_iter, tol=tol)


@register_solver("relaxed")
def relaxed(f: Fn, z0: Tensor, *, max_iter: int, tol: float = 0.0, beta: float = 0.5) -> tuple[Tensor, SolverStats]:
    """Damped iteration z <- (1 - beta) z + beta f(z); beta < 1 tames oscillating maps."""
    return _drive(f, z0, lambda z, fz, k: torch.lerp(z, fz.to(z.dtype), beta), max_iter=max_iter, tol=tol)


class _Anderson:
    """Per-sample Anderson mixing over the last ``m`` (iterate, f(iterate)) pairs.

    alpha = argmin ||sum_i alpha_i g_i||^2 + reg ||alpha||^2 subject to sum_i alpha_i = 1, with
    g_i = f(x_i) - x_i, i.e. alpha = H^-1 1 / (1^T H^-1 1), H = Gram + reg I, solved in float64.
    ``reg = lam * mean(diag Gram)`` makes ``lam`` scale-free (the problem may be a latent or an
    adjoint vector of any magnitude). A sample whose solve fails or gives non-finite weights falls
    back to the relaxed step on its latest pair (deq#20: never raise on a singular system).
    """

    def __init__(self, m: int, lam: float, beta: float):
        self.m, self.lam, self.beta = m, lam, beta
        self.xs, self.fs, self.gs = deque(maxlen=m), deque(maxlen=m), deque(maxlen=m)
        self.gram: Tensor | None = None  # (B, n, n) float64 over the current window

    def __call__(self, z: Tensor, fz: Tensor, k: int) -> Tensor:
        x, fx = _flat(z), _flat(fz).to(z.dtype)
        g = fx - x
        if len(self.gs) == self.m:  # the deques drop their oldest entry on append
            self.gram = self.gram[:, 1:, 1:]
        self.xs.append(x)
        self.fs.append(fx)
        self.gs.append(g)
        row = torch.stack([_dot(g, gi, torch.float64) for gi in self.gs], 1)  # (B, n)
        n = row.shape[1]
        if self.gram is None or n == 1:
            self.gram = row[:, None, :]
        else:
            top = torch.cat([self.gram, row[:, :-1, None]], 2)
            self.gram = torch.cat([top, row[:, None, :]], 1)
        if n == 1:
            return torch.lerp(x, fx, self.beta).view_as(z)
        alpha = self._weights(self.gram).to(z.dtype)  # (B, n)
        f_mix = sum(alpha[:, i : i + 1] * fi for i, fi in enumerate(self.fs))
        if self.beta == 1.0:  # skip the iterate mix: it has weight 0
            return f_mix.view_as(z)
        x_mix = sum(alpha[:, i : i + 1] * xi for i, xi in enumerate(self.xs))
        return torch.lerp(x_mix, f_mix, self.beta).view_as(z)

    def _weights(self, gram: Tensor) -> Tensor:
        B, n, _ = gram.shape
        eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
        reg = self.lam * torch.diagonal(gram, dim1=1, dim2=2).mean(-1)
        # H is SPD when reg > 0 (or Gram is non-singular): Cholesky is the cheap, sync-free solve
        # (batched LU `solve` is ~50x slower on a contended CPU); a failed factorisation falls back
        chol, info = torch.linalg.cholesky_ex(gram + reg[:, None, None] * eye)
        ones = torch.ones(B, n, 1, dtype=gram.dtype, device=gram.device)
        y = torch.cholesky_solve(ones, torch.where((info == 0)[:, None, None], chol, eye)).squeeze(-1)
        s = y.sum(-1, keepdim=True)
        alpha = y / s
        ok = (info == 0) & torch.isfinite(alpha).all(-1) & (s.squeeze(-1).abs() > 0)
        fallback = torch.zeros_like(alpha)
        fallback[:, -1] = 1.0  # the plain (relaxed) step from the latest pair
        return torch.where(ok[:, None], alpha, fallback)


@register_solver("anderson")
def anderson(
    f: Fn, z0: Tensor, *, max_iter: int, tol: float = 0.0, m: int = 5, lam: float = 1e-4, beta: float = 1.0
) -> tuple[Tensor, SolverStats]:
    """Anderson acceleration (window ``m``, relative Tikhonov ``lam``, mixing ``beta``)."""
    return _drive(f, z0, _Anderson(m, lam, beta), max_iter=max_iter, tol=tol)


class _Broyden:
    """Limited-memory good Broyden on g(z) = f(z) - z, flattened per sample.

    Keeps the inverse Jacobian estimate H ~ (dg/dz)^-1 as -I + U^T V with U, V of shape (B, k, D)
    (DEQ / torchdeq form; H0 = -I makes the first step a Picard step). Secant update (Sherman-Morrison
    of good Broyden): H += (dz - H dg) (dz^T H) / (dz^T H dg). A sample whose denominator is tiny or
    non-finite, or whose secant pair is at round-off level (it has converged), skips the update with
    a zero pair. When ``memory`` pairs are stored H restarts from -I: dropping only the oldest pair
    would leave the later ones, built on it, inconsistent (that made long tol=0 runs blow up).
    Step: z <- z - H g (unit step, no line search). U and V grow by ``torch.cat``, never in place,
    so the solve stays differentiable.
    """

    def __init__(self, memory: int):
        self.memory = memory
        self.u: Tensor | None = None  # (B, k, D)
        self.v: Tensor | None = None
        self.prev: tuple[Tensor, Tensor] | None = None

    def _h(self, x: Tensor) -> Tensor:  # H x = -x + U^T (V x)
        if self.u is None:
            return -x
        return torch.baddbmm(-x[:, :, None], self.u.transpose(1, 2), torch.bmm(self.v, x[:, :, None]))[..., 0]

    def _ht(self, x: Tensor) -> Tensor:  # H^T x = -x + V^T (U x)
        if self.u is None:
            return -x
        return torch.baddbmm(-x[:, :, None], self.v.transpose(1, 2), torch.bmm(self.u, x[:, :, None]))[..., 0]

    def __call__(self, z: Tensor, fz: Tensor, k: int) -> Tensor:
        x = _flat(z)
        g = _flat(fz).to(z.dtype) - x
        if self.prev is not None:
            dz, dg = x - self.prev[0], g - self.prev[1]
            h_dg = self._h(dg)
            denom = _dot(dz, h_dg)
            scale = _norm(dz) * _norm(h_dg)
            noise = torch.finfo(x.dtype).eps * (_norm(x) + _norm(fz))
            ok = torch.isfinite(denom) & (denom.abs() > 1e-12 * scale) & (scale > 0) & (_norm(dg) > noise)
            safe = torch.where(ok, denom, 1.0).to(x.dtype)[:, None]
            u = torch.where(ok[:, None], (dz - h_dg) / safe, 0.0)[:, None]
            v = torch.where(ok[:, None], self._ht(dz), 0.0)[:, None]
            if self.u is None or self.u.shape[1] == self.memory:
                self.u, self.v = u, v
            else:
                self.u, self.v = torch.cat([self.u, u], 1), torch.cat([self.v, v], 1)
        self.prev = (x, g)
        return (x - self._h(g)).view_as(z)


@register_solver("broyden")
def broyden(f: Fn, z0: Tensor, *, max_iter: int, tol: float = 0.0, memory: int = 16) -> tuple[Tensor, SolverStats]:
    """Limited-memory good Broyden on the per-sample residual (memory = stored rank-1 pairs)."""
    return _drive(f, z0, _Broyden(memory), max_iter=max_iter, tol=tol)

"""Tests for fpdm/solvers.py: the fixed point solver registry and its contract."""

import math

import pytest
import torch

from fpdm.solvers import RESIDUAL_EPS, SolverStats, get_solver, list_solvers, make_solver, register_solver, solver_knobs

SOLVERS = ["picard", "relaxed", "anderson", "broyden"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Counting:
    """Wraps f and counts its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, z):
        self.calls += 1
        return self.f(z)


def sym_matrices(eigs: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """(batch, D, D) symmetric matrices with the given eigenvalues and random eigenvectors."""
    g = torch.Generator().manual_seed(seed)
    d = eigs.numel()
    q, _ = torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=torch.float64))
    return q @ torch.diag_embed(eigs.to(torch.float64).expand(batch, d)) @ q.transpose(1, 2)


def linear_problem(eigs, batch=3, shape=(2, 4), seed=0):
    """f(z) = A z + b per sample on z of shape (B, *shape); returns f, z0 and the exact fixed point."""
    d = math.prod(shape)
    a = sym_matrices(eigs, batch, seed)
    g = torch.Generator().manual_seed(seed + 1)
    b = torch.randn(batch, d, generator=g, dtype=torch.float64)

    def f(z):
        return (a @ z.reshape(batch, d, 1)).reshape(z.shape) + b.reshape(z.shape)

    z_star = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - a, b).reshape(batch, *shape)
    return f, torch.zeros(batch, *shape, dtype=torch.float64), z_star


# ----------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("name", SOLVERS)
def test_reaches_fixed_point_of_contraction(name):
    eigs = torch.linspace(-0.9, 0.9, 8)  # spectral radius 0.9
    f, z0, z_star = linear_problem(eigs)
    z, st = get_solver(name)(f, z0, max_iter=1000, tol=1e-10)
    assert st.converged.all() and not st.diverged.any()
    assert st.nfe < 1000
    assert (st.rel_residuals[-1] < 1e-10).all()
    # ||z - z*|| <= ||f(z) - z|| / (1 - 0.9) and ||f(z)|| ~ 10 here: error well under 1e-7
    torch.testing.assert_close(z, z_star, atol=1e-7, rtol=0)


def certified_error_bound(eigs: torch.Tensor, z_star: torch.Tensor, tol: float) -> torch.Tensor:
    """Per-sample bound on ||z - z*|| for an evaluated iterate whose relative residual met ``tol``.

    For f(z) = A z + b with symmetric A of spectral radius rho < 1, ||z - z*|| <= ||f(z) - z|| / (1 - rho),
    and the stopping rule gives ||f(z) - z|| < tol (||f(z)|| + eps) <= tol (||z*|| + ||z - z*|| + eps),
    hence ||z - z*|| <= tol (||z*|| + eps) / (1 - rho - tol). Round-off: the float64 residual and the
    LU solve for z* are accurate to about d * float64 eps * cond(I - A) * ||z*||, with
    cond(I - A) = (1 + max|lambda|) / (1 - max lambda). Nothing here comes from a solver run.
    """
    rho, d = float(eigs.abs().max()), eigs.numel()
    cond = (1 + rho) / (1 - float(eigs.max()))
    norm = z_star.flatten(1).norm(dim=1)
    return tol * (norm + RESIDUAL_EPS) / (1 - rho - tol) + d * torch.finfo(torch.float64).eps * cond * norm


def test_accelerated_solvers_beat_picard_on_ill_conditioned_map():
    eigs = torch.tensor([0.99, 0.985, 0.97, -0.95, 0.9, 0.5, -0.3, 0.1])
    f, z0, z_star = linear_problem(eigs, batch=2, shape=(8,), seed=3)
    tol = 1e-11
    bound = certified_error_bound(eigs, z_star, tol)
    nfe = {}
    for name in ["picard", "anderson", "broyden"]:
        z, st = get_solver(name)(f, z0, max_iter=4000, tol=tol)
        assert st.converged.all(), name
        # The certified (evaluated) iterate is as close as the conditioning allows. The returned z is
        # the update computed after it, whose residual the contract leaves unmeasured
        # (docs/architecture.md, "Solver contract"); for picard that update is f(z), no farther (A contracts).
        err_best = (st.best - z_star).flatten(1).norm(dim=1)
        assert (err_best <= bound).all(), (name, err_best.tolist(), bound.tolist())
        if name == "picard":
            err = (z - z_star).flatten(1).norm(dim=1)
            assert (err <= bound).all(), (err.tolist(), bound.tolist())
        nfe[name] = st.nfe
    assert nfe["anderson"] * 5 < nfe["picard"], nfe
    assert nfe["broyden"] * 5 < nfe["picard"], nfe


# ----------------------------------------------------------------------------- evaluation budget
@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("tol", [0.0, 1e-3, 1e-30])
def test_max_iter_never_exceeded(name, tol):
    f, z0, _ = linear_problem(torch.linspace(-0.95, 0.95, 8))
    for max_iter in [0, 1, 2, 7]:
        cf = Counting(f)
        z, st = get_solver(name)(cf, z0, max_iter=max_iter, tol=tol)
        assert cf.calls == st.nfe <= max_iter
        assert st.abs_residuals.shape == st.rel_residuals.shape == (st.nfe, 3)
        if tol == 0.0 or tol == 1e-30:  # nothing converges early: all evaluations are made
            assert cf.calls == max_iter
        assert z.shape == z0.shape


def test_zero_iterations_returns_input():
    z0 = torch.randn(2, 3)
    z, st = get_solver("picard")(lambda z: z * 0.5, z0, max_iter=0)
    assert z is z0 and st.nfe == 0 and st.rel_residuals.shape == (0, 2)
    assert math.isnan(st.summary()["rel_residual_final_mean"])


# ----------------------------------------------------------------------------- exactness of picard
def test_picard_tol0_is_bitwise_plain_loop():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=g) * 0.4
    x = torch.randn(4, 3, 6, generator=g)

    def f(z):
        return torch.tanh(z @ w + x)

    z0 = torch.randn(4, 3, 6, generator=g)
    for ctx in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with ctx():
            ref = z0
            for _ in range(9):
                ref = f(ref)
            z, st = get_solver("picard")(f, z0, max_iter=9)
        assert torch.equal(z, ref)
        assert st.nfe == 9 and not st.diverged.any() and not st.converged.any()
        # delta_t: distance between the last two iterates f^9(z0) and f^8(z0) = last abs residual
        torch.testing.assert_close(st.delta_last, st.abs_residuals[-1])


def test_best_is_lowest_residual_evaluated_iterate():
    f, z0, _ = linear_problem(torch.linspace(-0.5, 0.5, 8))
    iterates, z = [], z0
    for _ in range(6):
        iterates.append(z)
        z = f(z)
    _, st = get_solver("picard")(f, z0, max_iter=6)
    k = st.abs_residuals.argmin(0)
    for i in range(3):
        assert torch.equal(st.best[i], iterates[int(k[i])][i])


# ----------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("name", ["picard", "relaxed"])
@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_growing_map_is_flagged_not_raised(name, tol):
    z0 = torch.zeros(2, 5)
    z, st = get_solver(name)(lambda z: 2 * z + 1, z0, max_iter=300, tol=tol)
    assert st.diverged.all() and not st.converged.any()
    assert torch.isfinite(z).all()
    assert torch.equal(z, st.best)  # diverged samples return their best finite iterate
    assert torch.equal(z, z0)  # z0 has the lowest residual (|z+1| grows)
    assert st.summary()["diverged_count"] == 2


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("tol", [0.0, 1e-9])
def test_nan_at_third_call_flags_only_that_sample(name, tol):
    f_lin, z0, z_star = linear_problem(torch.linspace(-0.6, 0.6, 8), batch=2)
    calls = {"n": 0}

    def f(z):
        calls["n"] += 1
        out = f_lin(z)
        if calls["n"] == 3:  # sample 1 produces NaN on the third evaluation only
            out = out.clone()
            out[1] = math.nan
        return out

    z, st = get_solver(name)(f, z0, max_iter=200, tol=tol)
    assert st.diverged.tolist() == [False, True]
    assert torch.isfinite(z).all()
    assert torch.equal(z[1], st.best[1])
    assert torch.isnan(st.delta_last[1])
    torch.testing.assert_close(z[0], z_star[0], atol=1e-6, rtol=0)  # sample 0 is untouched
    if tol > 0:
        assert st.converged.tolist() == [True, False]
        assert st.nfe_per_sample[1] == 3  # frozen at the evaluation that failed


def test_f_with_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="preserve the shape"):
        get_solver("picard")(lambda z: z[:, :1], torch.zeros(2, 3), max_iter=2)


# ----------------------------------------------------------------------------- per-sample freezing
@pytest.mark.parametrize("name", SOLVERS)
def test_easy_sample_frozen_early(name):
    # easy: one rate 0.1 in every coordinate; hard: eight different rates up to 0.99, so even
    # Anderson / Broyden (Krylov-like on linear maps) need many more evaluations for it
    a = torch.tensor([[0.1] * 8, [0.95, 0.9, -0.8, 0.5, 0.3, -0.6, 0.7, 0.99]], dtype=torch.float64)
    b = torch.linspace(-2.0, 3.0, 16, dtype=torch.float64).reshape(2, 8)

    def f(z):
        return a * z + b

    z, st = get_solver(name)(f, torch.zeros(2, 8, dtype=torch.float64), max_iter=6000, tol=1e-10)
    assert st.converged.all()
    n_easy, n_hard = st.nfe_per_sample.tolist()
    assert n_easy < n_hard == st.nfe
    # after freezing the easy sample's recorded residual no longer changes
    assert (st.rel_residuals[n_easy - 1 :, 0] == st.rel_residuals[n_easy - 1, 0]).all()
    assert st.rel_residuals[n_easy - 1, 0] < 1e-10 <= st.rel_residuals[n_easy - 2, 0]
    # error <= ||f(z) - z|| / (1 - 0.99) with ||f(z)|| ~ 300 for the hard sample
    torch.testing.assert_close(z, b / (1 - a), atol=1e-5, rtol=0)
    if name == "picard":  # the frozen iterate is the plain loop stopped at the certifying evaluation
        ref = torch.zeros(8, dtype=torch.float64)
        for _ in range(n_easy):
            ref = a[0] * ref + b[0]
        assert torch.equal(z[0], ref)


# ----------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_gradient_flows_through_picard_matches_analytic(tol):
    a = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    c, z0 = 2.0, torch.full((1, 1), 0.5, dtype=torch.float64)
    z, st = get_solver("picard")(lambda z: a * z + c, z0, max_iter=40, tol=tol)
    k = st.nfe  # with tol > 0 the solve stops early; the graph unrolls exactly k steps
    z.sum().backward()
    av = a.detach()
    # z_k = a^k z0 + c (1 - a^k) / (1 - a)
    dz_da = k * av ** (k - 1) * 0.5 + c * (-(k * av ** (k - 1)) * (1 - av) + (1 - av**k)) / (1 - av) ** 2
    torch.testing.assert_close(a.grad, dz_da)
    if tol > 0:
        assert 1 < k < 40


@pytest.mark.parametrize("name", SOLVERS)
def test_gradient_flows_through_every_solver(name):
    w = torch.tensor([0.3, -0.5], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    z, st = get_solver(name)(lambda z: torch.tanh(w * z + x), torch.zeros_like(x), max_iter=30, tol=1e-6)
    z.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and (w.grad != 0).all()


@pytest.mark.parametrize("name", SOLVERS)
def test_runs_under_inference_mode(name):
    f, z0, z_star = linear_problem(torch.linspace(-0.5, 0.5, 8))
    with torch.inference_mode():
        z, st = get_solver(name)(f, z0, max_iter=100, tol=1e-9)
    torch.testing.assert_close(z, z_star, atol=1e-7, rtol=0)
    assert isinstance(st, SolverStats)


def test_anderson_singular_history_falls_back_without_raising():
    # f is constant: every residual after the first is identical -> rank-1 Gram with lam = 0
    c = torch.randn(3, 4, dtype=torch.float64)
    z, st = get_solver("anderson")(lambda z: c.clone(), torch.zeros(3, 4, dtype=torch.float64), max_iter=6, lam=0.0)
    assert not st.diverged.any()
    torch.testing.assert_close(z, c)


def test_summary_is_plain_python():
    f, z0, _ = linear_problem(torch.linspace(-0.9, 0.9, 8))
    _, st = get_solver("anderson")(f, z0, max_iter=50, tol=1e-6)
    s = st.summary()
    assert s["nfe"] == st.nfe and s["converged_fraction"] == 1.0 and s["diverged_count"] == 0
    assert s["rel_residual_final_mean"] < 1e-6
    assert all(isinstance(v, (int, float)) for v in s.values())


# ----------------------------------------------------------------------------- registry
def test_registry_lists_and_errors():
    assert set(SOLVERS) <= set(list_solvers())
    with pytest.raises(KeyError, match="picard.*relaxed|anderson.*broyden"):
        get_solver("newton")
    with pytest.raises(ValueError, match="already registered"):
        register_solver("picard")(lambda f, z0, *, max_iter, tol=0.0: None)


def test_make_solver_validates_knobs():
    with pytest.raises(ValueError, match=r"'window'.*m, lam, beta"):
        make_solver("anderson", window=3)
    with pytest.raises(ValueError, match=r"'beta'.*\(none\)"):
        make_solver("picard", beta=0.5)
    with pytest.raises(ValueError, match="memory=0"):
        make_solver("broyden", memory=0)
    with pytest.raises(KeyError, match="valid names"):
        make_solver("nope")
    s = make_solver("anderson", m=3)
    assert s.knobs == {"m": 3, "lam": 1e-4, "beta": 1.0} == {**solver_knobs("anderson"), "m": 3}
    f, z0, z_star = linear_problem(torch.linspace(-0.9, 0.9, 8))
    z, st = s(f, z0, max_iter=200, tol=1e-10)
    torch.testing.assert_close(z, z_star, atol=1e-7, rtol=0)
    relaxed = make_solver("relaxed", beta=0.5)
    cf = Counting(lambda z: 2 * z)
    z, _ = relaxed(cf, torch.ones(1, 1), max_iter=3)
    assert cf.calls == 3 and torch.equal(z, torch.full((1, 1), 1.5**3))


@pytest.mark.parametrize("name", SOLVERS)
def test_adjoint_linear_fixed_point_via_vjp(name):
    # implicit differentiation solves u = J^T u + g with J = df/dz at z*, f given only through vjps
    g_ = torch.Generator().manual_seed(5)
    w = torch.randn(6, 6, generator=g_, dtype=torch.float64) * 0.3
    x = torch.randn(2, 6, generator=g_, dtype=torch.float64)
    z_star = torch.zeros(2, 6, dtype=torch.float64)
    for _ in range(200):
        z_star = torch.tanh(z_star @ w + x)
    z_star.requires_grad_()
    f_star = torch.tanh(z_star @ w + x)
    grad = torch.randn(2, 6, generator=g_, dtype=torch.float64)

    def adjoint_map(u):
        (vjp,) = torch.autograd.grad(f_star, z_star, u, retain_graph=True)
        return vjp + grad

    with torch.enable_grad():
        u, st = get_solver(name)(adjoint_map, grad, max_iter=300, tol=1e-10)
    jac = torch.diag_embed(1 - f_star.detach() ** 2) @ w.T  # (B, 6, 6): d f_i / d z_j per sample
    eye = torch.eye(6, dtype=torch.float64)
    expected = torch.linalg.solve(eye - jac.transpose(1, 2), grad[..., None])[..., 0]
    assert st.converged.all()
    torch.testing.assert_close(u, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(name, dtype):
    f64, z0, z_star = linear_problem(torch.linspace(-0.5, 0.5, 8))
    f = lambda z: f64(z.double()).to(dtype)  # noqa: E731
    z, st = get_solver(name)(f, z0.to(dtype), max_iter=40)
    assert z.dtype == dtype and st.rel_residuals.dtype == torch.float32 and not st.diverged.any()
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert ((z.double() - z_star).norm() / z_star.norm()) < tol


@pytest.mark.parametrize("name", ["picard", "relaxed", "anderson", "broyden"])
def test_config_defaults_are_the_signature_defaults(name):
    """One home for every solver default: the ``solver=NAME`` config node carries exactly the
    knobs, and the values, of the solver's signature (they once disagreed: beta 0.8 vs 0.5)."""
    import inspect as _inspect

    from omegaconf import OmegaConf

    from harness.config.schema import SOLVER_CONFIGS

    node = OmegaConf.to_container(OmegaConf.structured(SOLVER_CONFIGS[name]))
    params = _inspect.signature(get_solver(name)).parameters
    expected = {k: p.default for k, p in params.items() if p.default is not _inspect.Parameter.empty}
    assert node == {"name": name, **expected}

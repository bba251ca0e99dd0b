"""ProbConserv's conservation update: against a dense numpy reference, exactness, limits, gradients,
the Matheron sampler, the HardC projection, bounded updates (active set vs cvxpylayers), batching
and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciml.constraints import conservation
from sciml.constraints.conservation import (
    ConservationLayer,
    bounded_update,
    conservation_update,
    hard_projection,
)

F64 = torch.float64


def problem(n=7, m=2, batch=(), seed=0, full=False):
    """mean [*batch, n], var [*batch, n] (or cov [*batch, n, n]), G [m, n], b [*batch, m], float64."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(*batch, n, generator=g, dtype=F64)
    var = torch.rand(*batch, n, generator=g, dtype=F64) + 0.2
    G = torch.randn(m, n, generator=g, dtype=F64)
    b = torch.randn(*batch, m, generator=g, dtype=F64)
    if full:
        root = torch.randn(*batch, n, n, generator=g, dtype=F64)
        return mean, root @ root.mT / n + 0.1 * torch.eye(n, dtype=F64), G, b
    return mean, var, G, b


def numpy_reference(mean, Sigma, G, b, sigma_g):
    """The update written out densely in numpy float64: (mean~, Sigma~)."""
    mean, Sigma, G, b = (np.asarray(t, dtype=np.float64) for t in (mean, Sigma, G, b))
    A = sigma_g**2 * np.eye(G.shape[0]) + G @ Sigma @ G.T
    gain = Sigma @ G.T @ np.linalg.inv(A)
    return mean - gain @ (G @ mean - b), Sigma - gain @ G @ Sigma


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("sigma_g", [0.0, 0.3])
def test_update_matches_a_dense_numpy_reference(full, sigma_g):
    mean, prior, G, b = problem(full=full)
    post = conservation_update(mean, cov=prior, G=G, b=b, sigma_g=sigma_g) if full else \
        conservation_update(mean, prior, G, b, sigma_g)
    Sigma = prior.numpy() if full else np.diag(prior.numpy())
    ref_mean, ref_cov = numpy_reference(mean, Sigma, G, b, sigma_g)
    np.testing.assert_allclose(post.mean.numpy(), ref_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post.covariance().numpy(), ref_cov, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post.var.numpy(), np.diag(ref_cov), rtol=0, atol=1e-12)


def test_per_row_noise_matches_the_reference():
    mean, var, G, b = problem()
    sigma = torch.tensor([0.0, 0.7], dtype=F64)
    post = conservation_update(mean, var, G, b, sigma)
    A_noise = np.diag(sigma.numpy() ** 2)
    Sigma = np.diag(var.numpy())
    gain = Sigma @ G.numpy().T @ np.linalg.inv(A_noise + G.numpy() @ Sigma @ G.numpy().T)
    np.testing.assert_allclose(post.mean.numpy(), mean.numpy() - gain @ (G.numpy() @ mean.numpy() - b.numpy()),
                               rtol=0, atol=1e-12)
    assert abs(float(G[0] @ post.mean - b[0])) < 1e-12  # the exact row holds, the noisy one need not
    assert abs(float(G[1] @ post.mean - b[1])) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_exact_update_keeps_the_law_and_the_dtype(dtype):
    mean, var, G, b = problem(n=50, m=3, batch=(4,))
    post = conservation_update((100 * mean).to(dtype), var.to(dtype), G, b)
    assert post.mean.dtype == dtype and post.var.dtype == dtype
    resid = post.gaussian_mean @ G.T - b  # float64, before the cast
    assert (resid.abs() / (b.abs() + (G.abs() @ post.gaussian_mean.abs().mT).mT)).max() < 1e-12
    if dtype == F64:
        assert (post.mean @ G.T - b).abs().max() < 1e-12


def test_posterior_variances_are_between_zero_and_the_prior():
    mean, var, G, b = problem(n=30, m=4, batch=(3,))
    var[0, :5] = 0.0  # zero prior variance stays zero
    for sigma_g in (0.0, 0.1):
        post = conservation_update(mean, var, G, b, sigma_g)
        assert (post.var >= 0).all() and (post.var <= var + 1e-15).all()
        assert (post.var[0, :5] == 0).all()
        assert (post.var < var - 1e-6).any()


def test_huge_constraint_noise_gives_back_the_prior():
    mean, var, G, b = problem()
    post = conservation_update(mean, var, G, b, sigma_g=1e8)
    torch.testing.assert_close(post.mean, mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(post.var, var, rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------- gradients


def test_update_gradients_by_gradcheck():
    mean, var, G, b = problem(n=5, m=2)
    inputs = tuple(t.clone().requires_grad_() for t in (mean, var, G, b))

    def f(mean, var, G, b):
        post = conservation_update(mean, var, G, b, 0.2)
        return post.mean, post.var, post.log_likelihood(torch.ones(5, dtype=F64))

    assert torch.autograd.gradcheck(f, inputs)
    mean, cov, G, b = problem(n=4, m=1, full=True)
    inputs = tuple(t.clone().requires_grad_() for t in (mean, cov, b))
    assert torch.autograd.gradcheck(lambda m, c, b: conservation_update(m, cov=(c + c.mT) / 2, G=G, b=b).mean, inputs)


def test_hard_projection_gradients_by_gradcheck():
    mean, _, G, b = problem(n=5, m=2)
    inputs = tuple(t.clone().requires_grad_() for t in (mean, G, b))
    assert torch.autograd.gradcheck(hard_projection, inputs)


def bounded_case():
    """A problem where the bounds [0, 1] are active at points 0, 1 (upper) and 2 (lower), far from kinks."""
    mean = torch.tensor([2.0, 1.6, -1.5, 0.3, 0.5, 0.2], dtype=F64)
    var = torch.tensor([1.0, 0.5, 0.8, 0.6, 1.2, 0.9], dtype=F64)
    G = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 2.0]], dtype=F64)
    b = torch.tensor([3.2], dtype=F64)
    return mean, var, G, b


def test_bounded_case_is_away_from_kinks():
    mean, var, G, b = bounded_case()
    x = bounded_update(mean, var, G, b, 0.0, 1.0, backend="active_set")
    assert torch.allclose(x[:3], torch.tensor([1.0, 1.0, 0.0], dtype=F64), rtol=0, atol=1e-14)
    assert ((x[3:] > 0.05) & (x[3:] < 0.95)).all()
    lam = (mean[3:] - x[3:]) / (var[3:] * G[0, 3:])
    assert torch.allclose(lam, lam[0].expand(3), atol=1e-12)  # one multiplier on the free set
    assert ((mean[:3] - lam[0] * var[:3] * G[0, :3] - x[:3]).abs() > 0.05).all()  # clipped with a margin


def test_bounded_update_gradients_by_gradcheck():
    mean, var, G, b = bounded_case()
    inputs = tuple(t.clone().requires_grad_() for t in (mean, var, b))
    assert torch.autograd.gradcheck(lambda m, v, b: bounded_update(m, v, G, b, 0.0, 1.0, backend="active_set"), inputs)


# ----------------------------------------------------------------------------- sampler


def sample_checks(post, G, b, sigma_g, n_samples=20000):
    x = post.sample(n_samples, generator=torch.Generator().manual_seed(1))
    assert x.shape == (n_samples, *post.mean.shape)
    cov = post.covariance()
    se_mean = (cov.diagonal() / n_samples).sqrt()
    assert ((x.mean(0) - post.mean).abs() <= 5 * se_mean + 1e-12).all()
    d = x - x.mean(0)
    sample_cov = d.T @ d / (n_samples - 1)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n_samples).sqrt()
    assert ((sample_cov - cov).abs() <= 5 * se_cov + 1e-12).all()
    if sigma_g == 0:
        assert (x @ G.T - b).abs().max() < 1e-10
    else:
        assert (x @ G.T - b).abs().max() > 1e-3


@pytest.mark.parametrize("sigma_g", [0.0, 0.5])
def test_samples_have_the_posterior_moments_and_keep_the_law(sigma_g):
    mean, var, G, b = problem(n=4, m=1, seed=3)
    sample_checks(conservation_update(mean, var, G, b, sigma_g), G, b, sigma_g)


def test_samples_with_a_full_prior_covariance():
    mean, cov, G, b = problem(n=4, m=1, seed=4, full=True)
    sample_checks(conservation_update(mean, cov=cov, G=G, b=b), G, b, 0.0)


def test_samples_with_a_singular_full_prior_covariance():
    mean, _, G, b = problem(n=4, m=1, seed=5)
    root = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    cov = root @ root.T  # rank 3: no Cholesky factor, sampled through eigh
    assert torch.linalg.eigvalsh(cov)[0] < 1e-12
    sample_checks(conservation_update(mean, cov=cov, G=G, b=b), G, b, 0.0)


def test_sampling_refuses_an_indefinite_prior_covariance():
    """Symmetric with a nonnegative diagonal but an eigenvalue of -0.27: samples could not have its
    variances, so sampling says so instead of dropping the negative part."""
    cov = torch.tensor([[1.0, 0.0, 0.9], [0.0, 1.0, 0.9], [0.9, 0.9, 1.0]], dtype=F64)
    post = conservation_update(torch.zeros(3, dtype=F64), G=torch.tensor([[1.0, -1.0, 0.0]], dtype=F64),
                               b=torch.zeros(1, dtype=F64), cov=cov)
    with pytest.raises(ValueError, match=r"`cov` is not positive semidefinite \(.*eigenvalue -0.273 against largest 2.27"):
        post.sample(10)


def test_samples_are_batched_and_reproducible():
    mean, var, G, b = problem(n=5, m=2, batch=(3,))
    post = conservation_update(mean, var, G, b)
    x = post.sample(7, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 3, 5)
    assert torch.equal(x, post.sample(7, generator=torch.Generator().manual_seed(0)))
    assert (x @ G.T - b).abs().max() < 1e-12


def test_log_likelihood_is_the_mean_gaussian_log_density():
    mean, var, G, b = problem()
    post = conservation_update(mean, var, G, b, 0.3)
    u = torch.randn(7, dtype=F64)
    ref = (-0.5 * np.log(2 * np.pi * post.var.numpy()) - (u - post.mean).numpy() ** 2 / (2 * post.var.numpy())).mean()
    assert abs(float(post.log_likelihood(u)) - ref) < 1e-12
    # One point, one exact law: zero posterior variance, floored, finite.
    exact = conservation_update(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), torch.ones(1, 1, dtype=F64),
                                torch.ones(1, dtype=F64))
    assert exact.var.item() == 0 and torch.isfinite(exact.log_likelihood(torch.ones(1, dtype=F64)))


# ----------------------------------------------------------------------------- HardC


def test_hard_projection_is_exact_and_the_update_with_equal_variances():
    mean, _, G, b = problem(n=9, m=3, batch=(2,))
    u = hard_projection(mean, G, b)
    assert (u @ G.T - b).abs().max() < 1e-12
    post = conservation_update(mean, torch.full_like(mean, 2.5), G, b)
    torch.testing.assert_close(u, post.mean, rtol=0, atol=1e-12)
    assert hard_projection(mean.float(), G, b).dtype == torch.float32


# ----------------------------------------------------------------------------- bounds


def test_active_set_keeps_the_law_and_the_bounds_and_matches_cvxpylayers():
    pytest.importorskip("cvxpylayers.torch")
    mean, var, G, b = problem(n=12, m=1, batch=(3,), seed=5)
    mean = 2 * mean
    b = torch.tensor([[3.0], [1.0], [5.0]], dtype=F64)
    G = G.abs() + 0.1
    x = bounded_update(mean, var, G, b, 0.0, 1.5, backend="active_set")
    assert (x >= 0).all() and (x <= 1.5).all()
    assert (x @ G.T - b).abs().max() < 1e-12
    assert ((x == 0) | (x == 1.5)).sum() >= 6  # the bounds are active
    unbounded = conservation_update(mean, var, G, b).mean
    assert ((unbounded < 0) | (unbounded > 1.5)).any()
    x_cvx = bounded_update(mean, var, G, b, 0.0, 1.5, backend="cvxpylayers")
    torch.testing.assert_close(x_cvx, x, rtol=0, atol=1e-10)  # polished on the active set
    assert bounded_update(mean, var, G, b, 0.0, 1.5).eq(x).all()  # auto: the active set for m = 1


def test_active_set_solves_a_front_with_variances_over_six_decades():
    """A Stefan-like front: the prior's variance peaks at the front and is ~1e-6 elsewhere, so the
    multiplier's bracket is wide; the bisection must run to float64 resolution, not stop early (a
    multiplier found to 16 halvings only clipped points here whose free value stays below the bound,
    and on Stefan predictions gave answers above it, 2.9 > upper = 1)."""
    x = torch.linspace(0, 1, 201, dtype=F64)
    mean = (1 - x) * torch.sigmoid((0.22 - x) / 0.01) + 1e-4
    var = 1e-6 + 0.1 * torch.exp(-(((x - 0.22) / 0.02) ** 2))
    g = torch.full_like(x, 0.005)
    g[[0, -1]] = 0.0025
    b = g @ mean + 0.025  # the front must carry more mass
    u = bounded_update(mean, var, g[None], b[None], 0.0, 1.0, backend="active_set")
    assert (u >= 0).all() and (u <= 1).all()
    assert abs(float(g @ u - b)) < 1e-13
    free = (u > 0) & (u < 1)
    lam = (mean - u)[free] / (var * g)[free]  # one multiplier on the free set (KKT)
    assert free.sum() > 100 and float(lam.max() - lam.min()) < 1e-8 * float(lam.abs().max())
    lam = lam.mean()
    assert (mean - lam * var * g)[u == 1].min() >= 1 and (u == 1).any()  # clipped where the free value would pass the bound


def test_active_set_and_cvxpylayers_gradients_agree():
    pytest.importorskip("cvxpylayers.torch")
    mean, var, G, b = bounded_case()
    grads = []
    for backend in ("active_set", "cvxpylayers"):
        m = mean.clone().requires_grad_()
        x = bounded_update(m, var, G, b, 0.0, 1.0, backend=backend)
        (x * torch.arange(6, dtype=F64)).sum().backward()
        grads.append(m.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)


def test_cvxpylayers_answer_and_gradient_without_the_polish(monkeypatch):
    pytest.importorskip("cvxpylayers.torch")
    monkeypatch.setattr(conservation, "_polish", lambda *args: None)
    mean, var, G, b = bounded_case()
    ref = bounded_update(mean, var, G, b, 0.0, 1.0, backend="active_set")
    m = mean.clone().requires_grad_()
    x = bounded_update(m, var, G, b, 0.0, 1.0, backend="cvxpylayers")
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-4)
    x.sum().backward()
    m_ref = mean.clone().requires_grad_()
    bounded_update(m_ref, var, G, b, 0.0, 1.0, backend="active_set").sum().backward()
    torch.testing.assert_close(m.grad, m_ref.grad, rtol=0, atol=1e-3)


def test_cvxpylayers_handles_several_rows_and_one_sided_bounds():
    pytest.importorskip("cvxpylayers.torch")
    mean, var, G, b = problem(n=10, m=2, seed=6)
    lower = torch.full((10,), -0.3, dtype=F64)
    lower[:3] = -torch.inf
    x = bounded_update(mean, var, G, b, lower=lower)
    assert (x >= lower - 1e-8).all() and (x @ G.T - b).abs().max() < 1e-7
    assert (x[3:] - lower[3:]).abs().min() < 1e-7  # some bound active
    # Inactive bounds: the plain update's mean.
    loose = bounded_update(mean, var, G, b, -100.0, 100.0)
    torch.testing.assert_close(loose, conservation_update(mean, var, G, b).mean, rtol=0, atol=1e-7)


def test_inactive_bounds_give_the_update_mean():
    mean, var, G, b = problem(n=8, m=1, batch=(2,))
    ref = conservation_update(mean, var, G, b).mean
    for lower, upper in ((None, None), (-50.0, 50.0), (-50.0, None)):
        x = bounded_update(mean, var, G, b, lower, upper, backend="active_set")
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)


def test_infeasible_bounds_name_the_batch_index():
    mean, var, G, b = problem(n=4, m=1, batch=(2, 3))
    G = G.abs() + 0.1
    b = torch.zeros(2, 3, 1, dtype=F64)
    b[1, 2] = 100.0
    with pytest.raises(ValueError, match=r"infeasible at batch index \(1, 2\)"):
        bounded_update(mean, var, G, b, 0.0, 1.0, backend="active_set")
    with pytest.raises(ValueError, match=r"`lower` > `upper` at batch index"):
        bounded_update(mean, var, G, b, 1.0, 0.0)
    with pytest.raises(ValueError, match="m = 2"):
        bounded_update(mean, var, torch.ones(2, 4, dtype=F64), torch.ones(2, dtype=F64), backend="active_set")


# ----------------------------------------------------------------------------- batching


def test_time_slices_as_a_batch_axis_match_looping_and_a_dense_law():
    B, nt, nx = 2, 3, 6
    mean, var, _, _ = problem(n=nx, batch=(B, nt), seed=7)
    G = torch.rand(1, nx, dtype=F64) + 0.5
    b = torch.rand(B, nt, 1, dtype=F64) * 3
    post = conservation_update(mean, var, G, b)
    hard = hard_projection(mean, G, b)
    bounded = bounded_update(mean, var, G, b, 0.0, 1.0)
    assert post.mean.shape == post.var.shape == hard.shape == bounded.shape == (B, nt, nx)
    for i in range(B):
        for t in range(nt):
            one = conservation_update(mean[i, t], var[i, t], G, b[i, t])
            torch.testing.assert_close(post.mean[i, t], one.mean, rtol=0, atol=1e-14)
            torch.testing.assert_close(post.var[i, t], one.var, rtol=0, atol=1e-14)
            torch.testing.assert_close(hard[i, t], hard_projection(mean[i, t], G, b[i, t]), rtol=0, atol=1e-14)
            torch.testing.assert_close(bounded[i, t], bounded_update(mean[i, t], var[i, t], G, b[i, t], 0.0, 1.0),
                                       rtol=0, atol=1e-14)
    # The same laws as one block-diagonal G over all nt * nx points of a batch element.
    dense_G = torch.block_diag(*[G] * nt)
    dense = conservation_update(mean[0].reshape(-1), var[0].reshape(-1), dense_G, b[0, :, 0])
    torch.testing.assert_close(dense.mean.reshape(nt, nx), post.mean[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(dense.var.reshape(nt, nx), post.var[0], rtol=0, atol=1e-13)


def test_layer_wraps_the_update_and_the_bounds():
    mean, var, G, b = problem(n=6, m=1, batch=(2,), seed=8)
    b = b.abs() + 1
    post = ConservationLayer(0.2)(mean, var, G.abs(), b)
    torch.testing.assert_close(post.mean, conservation_update(mean, var, G.abs(), b, 0.2).mean)
    bounded = ConservationLayer(lower=0.0)(mean, var, G.abs(), b)
    torch.testing.assert_close(bounded.mean, bounded_update(mean, var, G.abs(), b, 0.0))
    assert (bounded.mean >= 0).all()
    with pytest.raises(ValueError, match="sigma_g"):
        ConservationLayer(0.1, lower=0.0)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call, match", [
    (lambda m, v, G, b: conservation_update(m, v - 1.0, G, b), r"`var` has negative entries \(min -0\.\d+"),
    (lambda m, v, G, b: conservation_update(m, v[:5], G, b), r"`var` has shape \(5,\) but must be \[\.\.\., n\] with n = 7"),
    (lambda m, v, G, b: conservation_update(m, v, G[:, :5], b), r"`G` has shape \(2, 5\)"),
    (lambda m, v, G, b: conservation_update(m, v, G, b[:1]), r"`b` has shape \(1,\) but must be \[m\].*m = 2"),
    (lambda m, v, G, b: conservation_update(m.expand(3, 7), v.expand(2, 7), G, b), r"do not broadcast: mean \(3,\)"),
    (lambda m, v, G, b: conservation_update(m, v, G, b, -0.1), r"`sigma_g` \(=-0\.1\) must be >= 0"),
    (lambda m, v, G, b: conservation_update(m, v, G, b, torch.ones(3)), r"`sigma_g` has shape \(3,\)"),
    (lambda m, v, G, b: conservation_update(m, v, G, b, cov=torch.eye(7)), "exactly one of `var`"),
    (lambda m, v, G, b: conservation_update(m, None, G, b, cov=torch.ones(7, 7).triu()), "not symmetric"),
    (lambda m, v, G, b: conservation_update(m, v * torch.nan, G, b), r"`var` \(7,\) has non-finite"),
    (lambda m, v, G, b: bounded_update(m, v, G, b, backend="bogus"), "`backend` \\(='bogus'\\)"),
    (lambda m, v, G, b: bounded_update(m, v * 0, G, b), "needs var > 0"),
    (lambda m, v, G, b: bounded_update(m, v, G, b, torch.zeros(3)), r"`lower` has shape \(3,\)"),
])
def test_bad_inputs_name_the_value(call, match):
    mean, var, G, b = problem()
    with pytest.raises(ValueError, match=match):
        call(mean, var, G, b)


def test_singular_law_names_the_row_and_suggests_noise():
    mean = torch.zeros(4, dtype=F64)
    var = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=F64)
    G = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=F64)
    b = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"singular \(row 0 of `G`.*sigma_g > 0"):
        conservation_update(mean, var, G, b)
    assert torch.isfinite(conservation_update(mean, var, G, b, sigma_g=0.1).mean).all()
    dependent = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]], dtype=F64)
    with pytest.raises(ValueError, match=r"batch index \(1,\), row 1 of `G`.*e.g. 2.8e-06: 1e-6 times the largest row"):
        conservation_update(mean.expand(2, 4), var, torch.stack([G + dependent, dependent]), b)
    # The suggested noise, or anything that keeps A's factorisation going, is then accepted: with
    # sigma_g > 0, A = sigma_g^2 I + G Sigma G^T is positive definite (here cond(A) ~ 1e13).
    for sigma_g in (2.8e-6, 1e-7):
        post = conservation_update(mean, var, dependent, torch.tensor([1.0, 2.0], dtype=F64), sigma_g=sigma_g)
        torch.testing.assert_close(dependent @ post.mean, torch.tensor([1.0, 2.0], dtype=F64), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match=r"G G\^T is singular \(row 1"):
        hard_projection(mean, dependent, b)


def test_a_variance_the_law_takes_entirely_keeps_its_derivative():
    """var = [v0, 0, 0], one row of ones: the posterior variance of point 0 is v0 - v0^2 / (v0 + v1 + v2),
    exactly 0 here; its derivative in v1 (one-sided, variances are >= 0) is v0^2 / (v0 + v1 + v2)^2 = 1
    and in v0 it is 0, on every torch version (clamp_min's derivative at its bound differs between them)."""
    var = torch.tensor([1.0, 0.0, 0.0], dtype=F64, requires_grad=True)
    post = conservation_update(torch.zeros(3, dtype=F64), var, torch.ones(1, 3, dtype=F64), torch.zeros(1, dtype=F64))
    assert float(post.var[0]) == 0.0
    (grad,) = torch.autograd.grad(post.var[0], var)
    torch.testing.assert_close(grad, torch.tensor([0.0, 1.0, 1.0], dtype=F64))


def test_log_likelihood_floors_a_zero_variance_at_1e_12_of_the_largest_prior_variance():
    """var = [4, 1], G = e_0, sigma_G = 0: point 0 is pinned at b = 0 (posterior variance exactly 0), point 1
    keeps N(0, 1). The floor is 1e-12 * 4: u = [1e-6, 1] gives log N(1e-6; 0, 4e-12) = -(log(2 pi 4e-12) + 0.25) / 2
    and log N(1; 0, 1) = -(log(2 pi) + 1) / 2. A floor of 1e-6 * 4 would make the pinned point's density
    1000 times smaller and a miss of 1e-6 there cost nothing (isfinite alone cannot tell)."""
    post = conservation_update(torch.zeros(2, dtype=F64), torch.tensor([4.0, 1.0], dtype=F64),
                               torch.tensor([[1.0, 0.0]], dtype=F64), torch.zeros(1, dtype=F64))
    assert post.var.tolist() == [0.0, 1.0] and post.mean.tolist() == [0.0, 0.0]
    ref = (-0.5 * (np.log(2 * np.pi * 4e-12) + 0.25) - 0.5 * (np.log(2 * np.pi) + 1.0)) / 2
    assert abs(float(post.log_likelihood(torch.tensor([1e-6, 1.0], dtype=F64))) - ref) < 1e-9


def test_bounds_missing_b_by_one_part_in_a_million_are_infeasible():
    """G = ones(4), 0 <= u <= 1: G u reaches at most 4. b = 4 is feasible (every point at its upper bound);
    b = 4 + 4e-6 is not, and must be refused (the tolerance is round-off, 1e-12 of the scale, not 1e-3: a
    looser one would return an answer that breaks the law by 4e-6 without a word)."""
    mean, var = torch.zeros(2, 4, dtype=F64), torch.ones(2, 4, dtype=F64)
    G = torch.ones(1, 4, dtype=F64)
    x = bounded_update(mean, var, G, torch.tensor([[4.0], [2.0]], dtype=F64), 0.0, 1.0, backend="active_set")
    assert x[0].tolist() == [1.0] * 4 and abs(float(x[1].sum()) - 2.0) < 1e-14
    with pytest.raises(ValueError, match=r"infeasible at batch index \(1,\): b = 4.000004 is outside \[0, 4\] by 4e-06, the range of "
                                         r"G u over lower <= u <= upper; loosen the bounds or check b"):
        bounded_update(mean, var, G, torch.tensor([[2.0], [4.0 + 4e-6]], dtype=F64), 0.0, 1.0, backend="active_set")
    with pytest.raises(ValueError, match=r"infeasible at batch index \(0,\): b = -1e-06 is outside \[0, 4\] by 1e-06"):
        bounded_update(mean, var, G, torch.tensor([[-1e-6], [2.0]], dtype=F64), 0.0, 1.0, backend="active_set")


def test_a_covariance_asymmetric_by_1e_3_is_refused():
    """cov[1, 0] = cov[0, 1] + 1e-3 on a covariance of scale 2: not round-off but a wrong matrix (the update
    would silently use one triangle of it). Asymmetry at round-off level (1e-15) is accepted."""
    mean, G, b = torch.zeros(3, dtype=F64), torch.ones(1, 3, dtype=F64), torch.ones(1, dtype=F64)
    cov = torch.tensor([[2.0, 0.5, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)
    conservation_update(mean, G=G, b=b, cov=cov + torch.tensor([[0, 0, 0], [1e-15, 0, 0], [0, 0, 0]], dtype=F64))
    with pytest.raises(ValueError, match=r"`cov` is not symmetric \(largest \|cov - cov\^T\| = 0\.001\); "
                                         r"pass \(cov \+ cov\^T\) / 2"):
        conservation_update(mean, G=G, b=b, cov=cov + torch.tensor([[0, 0, 0], [1e-3, 0, 0], [0, 0, 0]], dtype=F64))


def test_a_law_that_pins_a_point_leaves_its_variance_exactly_zero():
    """G = e_1, sigma_G = 0 fixes u_1 = b: its posterior variance is v - (v / sqrt(v))^2, which round-off makes
    -2.8e-17 .. -1.3e-15 for these v (not 0); it must come out exactly 0, never negative (sqrt(var) of a
    negative variance is NaN), and the other points keep their prior variances."""
    v = torch.tensor([0.2, 0.9, 1.3, 3.0, 5.0, 6.0], dtype=F64)
    var = torch.stack([torch.ones_like(v), v, torch.full_like(v, 2.0)], -1)  # [6, 3]
    post = conservation_update(torch.zeros(6, 3, dtype=F64), var, torch.tensor([[0.0, 1.0, 0.0]], dtype=F64),
                               torch.full((6, 1), 0.5, dtype=F64))
    assert post.var[:, 1].tolist() == [0.0] * 6
    assert post.var[:, 0].tolist() == [1.0] * 6 and post.var[:, 2].tolist() == [2.0] * 6
    assert (post.mean[:, 1] - 0.5).abs().max() < 1e-15
    assert torch.isfinite(post.var.sqrt()).all()


def test_polish_refuses_an_active_set_whose_multiplier_has_the_wrong_sign(monkeypatch):
    """var = 1, mean = 0 (z = u), G = ones(4), b = 2, upper = [0.2, 0.6001, inf, inf]: the answer is
    [0.2, 0.6, 0.6, 0.6], point 0 on its bound, point 1 free 1e-4 below its own. A cone answer 5e-6 off at
    point 0 is missed by the tight activity tolerances (1e-8, 1e-6 of the scale 1.6: all-free breaks
    u_0 <= 0.2), and the next one (1e-4) takes point 1 as active too: fixed at 0.6001 it keeps the law and
    the bounds, but its multiplier has the wrong sign (it pushes u_1 up against an upper bound). The
    polish must refuse that set and keep the cone answer (5e-6 off) instead of the wrong set's (1e-4 off)."""
    mean, var = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    G, b = torch.ones(1, 4, dtype=F64), torch.tensor([2.0], dtype=F64)
    upper = torch.tensor([0.2, 0.6001, torch.inf, torch.inf], dtype=F64)
    exact = bounded_update(mean, var, G, b, upper=upper, backend="active_set")
    torch.testing.assert_close(exact, torch.tensor([0.2, 0.6, 0.6, 0.6], dtype=F64), rtol=0, atol=1e-15)

    def fake_layer(cone_answer):  # stands for cvxpylayers' CvxpyLayer, which Clarabel solves to ~1e-5
        return lambda *args, **kwargs: lambda *params, solver_args: (cone_answer,)

    rough = torch.tensor([0.2 - 5e-6, 0.6, 0.6, 0.6 + 5e-6], dtype=F64)
    monkeypatch.setattr(conservation, "_cvxpy_layer", fake_layer(rough))
    x = bounded_update(mean, var, G, b, upper=upper, backend="cvxpylayers")
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-5)
    # A cone answer good to 1e-9 is polished to the active set's answer.
    monkeypatch.setattr(conservation, "_cvxpy_layer", fake_layer(exact + torch.tensor([-1e-9, 0, 0, 1e-9], dtype=F64)))
    torch.testing.assert_close(bounded_update(mean, var, G, b, upper=upper, backend="cvxpylayers"), exact,
                               rtol=0, atol=1e-15)

"""Filter-normalised loss surfaces: the plane, the normalisation, restoring the weights, plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sciml.landscape import filter_normalized_direction, loss_surface, plot_loss_surfaces


def _quadratic():
    """A linear layer whose loss ||W - W*||^2 + ||b - b*||^2 has its minimum at the current weights."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    target = [p.detach().clone() for p in layer.parameters()]
    return layer, lambda: sum(((p - q) ** 2).sum() for p, q in zip(layer.parameters(), target))


def test_quadratic_model_gives_the_expected_bowl():
    layer, loss = _quadratic()
    before = [p.detach().clone() for p in layer.parameters()]
    s = loss_surface(layer, loss, span=2.0, steps=9, seed=3)
    d1, d2 = (torch.cat([t.flatten() for t in d]).detach() for d in s.directions)
    a, b = np.meshgrid(s.alphas, s.betas, indexing="ij")
    expected = a**2 * float(d1 @ d1) + 2 * a * b * float(d1 @ d2) + b**2 * float(d2 @ d2)
    np.testing.assert_allclose(s.loss, expected, rtol=1e-12, atol=1e-12)
    assert s.center == 0.0 and s.loss.argmin() == s.loss.size // 2  # the minimum sits at the trained weights
    assert np.all(s.loss[[0, -1], :] > 0) and np.all(s.loss[:, [0, -1]] > 0)
    for p, q in zip(layer.parameters(), before):
        assert torch.equal(p, q)  # the weights are restored


def test_directions_are_filter_normalised():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight[2] *= 10.0  # one filter much larger than the others
    params = list(net.parameters())
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, u in zip(params, d):
        if p.dim() == 1:
            assert torch.count_nonzero(u) == 0  # biases: no direction by default
        else:
            torch.testing.assert_close(u.norm(dim=1), p.norm(dim=1))
    with_biases = filter_normalized_direction(params, torch.Generator().manual_seed(0), include_1d=True)
    torch.testing.assert_close(with_biases[1].norm(), params[1].norm())
    again = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    assert all(torch.equal(u, v) for u, v in zip(d, again))  # the seed fixes the plane


def test_weights_are_restored_when_the_loss_raises():
    layer, _ = _quadratic()
    before = [p.detach().clone() for p in layer.parameters()]
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return layer.weight.sum()

    with pytest.raises(RuntimeError, match="boom"):
        loss_surface(layer, failing, steps=3)
    for p, q in zip(layer.parameters(), before):
        assert torch.equal(p, q)


def test_loss_may_differentiate_with_respect_to_inputs():
    """PINN residuals take input derivatives inside the closure: autograd must be on."""
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.linspace(0, 1, 11, dtype=torch.float64)

    def residual():
        xr = x.detach().requires_grad_(True)
        (u_x,) = torch.autograd.grad(net(xr[:, None]).sum(), xr, create_graph=True)
        return (u_x - 1).pow(2).mean()

    with torch.no_grad():
        s = loss_surface(net, residual, steps=3)
    assert np.all(np.isfinite(s.loss)) and s.center == pytest.approx(float(residual()))


@pytest.mark.parametrize("kwargs, message", [({"span": 0.0}, "span"), ({"steps": 1}, "steps"), ({"steps": 2.5}, "steps")])
def test_bad_grids_are_rejected(kwargs, message):
    layer, loss = _quadratic()
    with pytest.raises(ValueError, match=message):
        loss_surface(layer, loss, **kwargs)


def test_directions_must_match_the_parameters():
    layer, loss = _quadratic()
    wrong = [torch.zeros(3)]
    with pytest.raises(ValueError, match="directions"):
        loss_surface(layer, loss, directions=(wrong, wrong))


def test_contour_plot_is_written(tmp_path):
    layer, loss = _quadratic()
    s = loss_surface(layer, loss, steps=5)
    path = plot_loss_surfaces({"a": s, "b": s, "c": s}, tmp_path / "surfaces.png", ncols=2)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_loss_surfaces({}, tmp_path / "none.png")

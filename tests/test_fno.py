"""Fourier neural operator: shapes, the spectral convolution as an exact Fourier multiplier,
resolution independence, gradients, dtypes, checkpoints and argument checks."""

import math

import pytest
import torch

from sciml.nn import FNO, FNOBlock, SpectralConv, append_grid


def _periodic_grid(n: int, d: int) -> list[torch.Tensor]:
    x = torch.arange(n, dtype=torch.float64) / n
    return list(torch.meshgrid(*([x] * d), indexing="ij"))


def _band_limited(n: int, d: int) -> torch.Tensor:
    """[1, 1, n, ..., n]: a real field with frequencies |k_i| <= 2, negative ones included."""
    g = _periodic_grid(n, d)
    k = [2] if d == 1 else [1, *([-1] * (d - 2)), -2]  # mixed signs need the negative-frequency blocks
    u = torch.sin(2 * math.pi * g[0]) + 0.5 * torch.cos(2 * math.pi * sum(ki * gi for ki, gi in zip(k, g))) + 0.3
    return u[None, None]


def _identity(conv: SpectralConv) -> SpectralConv:
    """Set R(k) = I (real) on every kept mode."""
    with torch.no_grad():
        conv.weight.zero_()
        eye = torch.eye(conv.in_channels, conv.out_channels, dtype=conv.weight.dtype)
        conv.weight[..., 0] = eye.reshape(1, *eye.shape, *([1] * len(conv.modes)))
    return conv


@pytest.mark.parametrize("modes, grid", [((4,), (16,)), ((3, 4), (8, 12)), ((2, 2, 3), (6, 4, 6))])
def test_shapes(modes, grid):
    x = torch.randn(2, 3, *grid)
    assert SpectralConv(3, 5, modes)(x).shape == (2, 5, *grid)
    assert FNOBlock(3, modes)(x).shape == (2, 3, *grid)
    net = FNO(3, 4, modes, width=6, layers=2, lifting_channels=8, projection_channels=8, padding=2, with_grid=True)
    assert net(x).shape == (2, 4, *grid)


def test_append_grid_adds_coordinates_per_axis():
    x = torch.zeros(2, 1, 3, 5)
    out = append_grid(x)
    assert out.shape == (2, 3, 3, 5)
    torch.testing.assert_close(out[1, 1, :, 0], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0, 2, 2], torch.linspace(0, 1, 5))


def test_single_mode_is_multiplied_by_its_complex_weight():
    """Input cos(2 pi k j / n): output Re(R_k e^{2 pi i k j / n}); modes k >= m are removed."""
    n, m = 16, 4
    conv = SpectralConv(1, 1, (m,)).double()
    with torch.no_grad():
        conv.weight.normal_()
    r = torch.view_as_complex(conv.weight.detach())[0, 0, 0]
    theta = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    for k in range(n // 2):
        out = conv(torch.cos(k * theta)[None, None])[0, 0]
        expected = (r[k] * torch.exp(1j * k * theta)).real if k < m else torch.zeros(n, dtype=torch.float64)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_identity_weights_reproduce_band_limited_input(d):
    # Kept modes 3 > 2 = highest frequency of the input, on a grid too coarse for anything else.
    conv = _identity(SpectralConv(1, 1, (3,) * d).double())
    u = _band_limited(8, d)
    torch.testing.assert_close(conv(u), u, atol=1e-12, rtol=0)


@pytest.mark.parametrize("grid", [(8,), (6, 7), (4, 6, 5)])
def test_all_modes_kept_with_identity_weights_is_the_identity(grid):
    modes = (*(n // 2 for n in grid[:-1]), grid[-1] // 2 + 1)
    conv = _identity(SpectralConv(2, 2, modes).double())
    x = torch.randn(3, 2, *grid, dtype=torch.float64)
    torch.testing.assert_close(conv(x), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("modes, grid", [((4,), (12,)), ((3, 3), (8, 10))])
def test_spectral_conv_is_linear_and_translation_equivariant(modes, grid):
    conv = SpectralConv(2, 3, modes).double()
    with torch.no_grad():
        conv.weight.normal_()
    x, y = torch.randn(2, 1, 2, *grid, dtype=torch.float64)
    torch.testing.assert_close(conv(2.5 * x - 0.7 * y), 2.5 * conv(x) - 0.7 * conv(y), atol=1e-12, rtol=0)
    shifts, dims = tuple(range(1, len(grid) + 1)), tuple(range(2, len(grid) + 2))
    torch.testing.assert_close(conv(x.roll(shifts, dims)), conv(x).roll(shifts, dims), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_unpadded_fno_is_translation_equivariant(d):
    net = FNO(2, 1, (3,) * d, width=4, layers=2, projection_channels=4).double()
    x = torch.randn(1, 2, *([8] * d), dtype=torch.float64)
    shifts, dims = (3,) * d, tuple(range(2, d + 2))
    torch.testing.assert_close(net(x.roll(shifts, dims)), net(x).roll(shifts, dims), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_same_weights_agree_across_resolutions(d):
    """A band-limited input sampled at 32 and 64 points per axis gives the same output at the common
    points: the FFT normalisation cancels, and only aliasing of the activations' tiny high harmonics
    differs."""
    torch.manual_seed(0)
    net = FNO(1, 2, (4,) * d, width=6, layers=3, projection_channels=8).double()
    with torch.no_grad():
        for block in net.blocks:  # a spectral path as strong as the skip, so the test sees it
            block.spectral.weight.normal_(0.0, 0.3)
    coarse, fine = net(_band_limited(32, d)), net(_band_limited(64, d))
    torch.testing.assert_close(coarse, fine[(..., *[slice(None, None, 2)] * d)], atol=1e-8, rtol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_gradients_match_finite_differences(d):
    net = FNO(1, 1, (2,) * d, width=2, layers=2, projection_channels=3, padding=1, with_grid=True).double()
    x = torch.randn(1, 1, *([5] * d), dtype=torch.float64)
    weight = net.blocks[0].spectral.weight

    def output(w):
        return torch.func.functional_call(net, {"blocks.0.spectral.weight": w}, (x,))

    assert torch.autograd.gradcheck(output, (weight.detach().clone().requires_grad_(),))
    net(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_float64_end_to_end():
    net = FNO(1, 1, (2, 2), width=4, layers=2, projection_channels=4).double()
    out = net(torch.randn(1, 1, 6, 6, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in net.parameters())


def test_state_dict_round_trip(tmp_path):
    kwargs = dict(in_channels=2, out_channels=3, modes=(3, 2), width=4, layers=2, projection_channels=5, padding=(2, 0))
    torch.manual_seed(0)
    net = FNO(**kwargs)
    torch.save(net.state_dict(), tmp_path / "fno.pt")
    torch.manual_seed(1)
    loaded = FNO(**kwargs)
    loaded.load_state_dict(torch.load(tmp_path / "fno.pt", weights_only=True))
    x = torch.randn(2, 2, 7, 6)
    torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SpectralConv(2, 2, 8), r"`modes` \(=8\) must be a tuple of 1 to 3"),
        (lambda: SpectralConv(2, 2, (2, 2, 2, 2)), r"`modes` \(=\(2, 2, 2, 2\)\)"),
        (lambda: SpectralConv(2, 2, (4, 0)), r"`modes` \(=\(4, 0\)\)"),
        (lambda: SpectralConv(0, 2, (4,)), r"`in_channels` \(=0\) must be a positive integer"),
        (lambda: FNO(1, 1, (4,), width=2.5), r"`width` \(=2.5\)"),
        (lambda: FNO(1, 1, (4,), layers=0), r"`layers` \(=0\)"),
        (lambda: FNO(1, 1, (4,), activation="swish"), r"`activation` \(='swish'\) must be one of"),
        (lambda: FNO(1, 1, (4, 4), padding=(1, 2, 3)), r"`padding` \(=\(1, 2, 3\)\) must be a non-negative integer or a tuple of 2"),
        (lambda: FNO(1, 1, (4,), padding=-1), r"`padding` \(=-1\)"),
    ],
)
def test_bad_arguments_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "module, x, message",
    [
        (SpectralConv(1, 1, (4, 4)), torch.zeros(1, 1, 16), r"is 2D and takes input \[batch, channels, n1, n2\] \(4 dims\); got shape \(1, 1, 16\)"),
        (FNO(2, 1, (4,)), torch.zeros(1, 3, 16), r"`in_channels` \(=2\) but the input has 3 channels"),
        (SpectralConv(1, 1, (4, 4)), torch.zeros(1, 1, 7, 6), r"`modes` \(=\(4, 4\)\) need a grid of at least \(8, 6\) points.*input grid is \(7, 6\)"),
        (FNO(1, 1, (4, 4), padding=(1, 0)), torch.zeros(1, 1, 6, 6), r"input grid \(6, 6\) with `padding` \(=\(1, 0\)\) is \(7, 6\)"),
    ],
)
def test_inputs_that_do_not_fit_are_rejected(module, x, message):
    with pytest.raises(ValueError, match=message):
        module(x)


def test_padding_lets_a_coarse_grid_hold_the_modes():
    net = FNO(1, 1, (4, 4), width=2, layers=1, projection_channels=2, padding=(2, 0))
    assert net(torch.zeros(1, 1, 6, 6)).shape == (1, 1, 6, 6)

"""Metrics against values worked out by hand on small periodic grids."""

import math

import numpy as np
import pytest

from sciml.metrics import brmse, compute_metrics, crmse, frmse, mse, nrmse, rel_l2, rmse


def periodic(n):
    return 2 * np.pi * np.arange(n) / n


def field(profile, n_samples=2, n_t=3):
    """[n_samples, n_t, *space] copies of one spatial profile."""
    return np.broadcast_to(profile, (n_samples, n_t, *np.shape(profile))).copy()


@pytest.fixture
def cosine_truth():
    # Sample s is A_s cos(x) with A = (1, 2) at every time; on a uniform periodic grid the RMS
    # of cos over space is 1/sqrt(2), so the RMS of the truth is A_s / sqrt(2).
    x = periodic(16)
    return np.stack([field(np.cos(x), 1)[0], field(2 * np.cos(x), 1)[0]])


def test_constant_offset(cosine_truth):
    pred = cosine_truth + 0.1
    m = compute_metrics(pred, cosine_truth)
    assert m["mse"] == pytest.approx(0.01)
    assert m["rmse"] == pytest.approx(0.1)
    assert m["max_abs_err"] == pytest.approx(0.1)
    # The mean over space of the error is 0.1 in every slice.
    assert m["crmse"] == pytest.approx(0.1)
    assert m["brmse"] == pytest.approx(0.1)
    # A constant is the k = 0 mode alone: all of it in the low band.
    assert m["frmse_low"] == pytest.approx(0.1)
    assert m["frmse_mid"] == pytest.approx(0.0, abs=1e-15)
    assert m["frmse_high"] == pytest.approx(0.0, abs=1e-15)
    # nrmse: per slice 0.1 / (A / sqrt 2), mean over A = 1, 2: 0.1 sqrt(2) (1 + 1/2) / 2.
    # rel_l2: per sample 0.1 sqrt(n) / (A sqrt(n / 2)) = 0.1 sqrt(2) / A: the same mean.
    assert m["nrmse"] == pytest.approx(0.075 * math.sqrt(2))
    assert m["rel_l2"] == pytest.approx(0.075 * math.sqrt(2))


def test_public_functions_match_compute_metrics(cosine_truth):
    rng = np.random.default_rng(0)
    pred = cosine_truth + 0.05 * rng.standard_normal(cosine_truth.shape)
    m = compute_metrics(pred, cosine_truth)
    assert m["rel_l2"] == rel_l2(pred, cosine_truth)
    assert m["mse"] == mse(pred, cosine_truth)
    assert m["rmse"] == rmse(pred, cosine_truth)
    assert m["nrmse"] == nrmse(pred, cosine_truth)
    assert m["crmse"] == crmse(pred, cosine_truth)
    assert m["brmse"] == brmse(pred, cosine_truth)
    assert {k: m[k] for k in ("frmse_low", "frmse_mid", "frmse_high")} == frmse(pred, cosine_truth)


def test_doubling_the_truth_is_relative_error_one(cosine_truth):
    m = compute_metrics(2 * cosine_truth, cosine_truth)
    assert m["rel_l2"] == pytest.approx(1.0)
    assert m["nrmse"] == pytest.approx(1.0)
    assert m["max_abs_err"] == pytest.approx(2.0)  # max |2 cos x| with x = 0 on the grid


def test_single_mode_lands_in_mid_band():
    x = periodic(64)
    true = field(np.zeros(64))
    pred = field(0.3 * np.sin(5 * x))
    m = compute_metrics(pred, true + 1.0)  # offset the truth so rel_l2/nrmse are defined
    m0 = frmse(pred, true)
    # RMS of a sin(5x) over a period is a / sqrt(2); it is the only mode, at k = 5 in [4, 12).
    assert m0["frmse_mid"] == pytest.approx(0.3 / math.sqrt(2))
    assert m0["frmse_low"] == pytest.approx(0.0, abs=1e-15)
    assert m0["frmse_high"] == pytest.approx(0.0, abs=1e-15)
    assert rmse(pred, true) == pytest.approx(0.3 / math.sqrt(2))
    # Zero mean over a period: nothing gained or lost.
    assert crmse(pred, true) == pytest.approx(0.0, abs=1e-15)
    # Boundary: sin(0) = 0 and sin(5 * 2pi 63/64) = -sin(5pi/32); RMS of the two.
    assert brmse(pred, true) == pytest.approx(0.3 * math.sin(5 * math.pi / 32) / math.sqrt(2))
    assert m["frmse_mid"] == pytest.approx(0.3 / math.sqrt(2))


def test_band_edges_and_nyquist():
    x = periodic(32)
    # k = 3 -> low; k = 4, 11 -> mid ([4, 12) includes 4, excludes 12); k = 12, 16 -> high.
    # k = 16 is the Nyquist mode of 32 points: cos(16x) = (-1)^j has RMS 1, not 1/sqrt(2).
    err = np.cos(3 * x) + 2 * np.cos(4 * x) + 3 * np.cos(11 * x) + 4 * np.cos(12 * x)
    err = err + 5 * np.cos(16 * x)
    bands = frmse(field(err), field(np.zeros(32)))
    assert bands["frmse_low"] == pytest.approx(1 / math.sqrt(2))
    assert bands["frmse_mid"] == pytest.approx(math.sqrt((4 + 9) / 2))
    assert bands["frmse_high"] == pytest.approx(math.sqrt(16 / 2 + 25))


def test_bands_split_the_mean_squared_error():
    rng = np.random.default_rng(1)
    for shape in [(3, 4, 31), (2, 3, 10, 13)]:
        pred, true = rng.standard_normal(shape), rng.standard_normal(shape)
        bands = frmse(pred, true)
        assert sum(v**2 for v in bands.values()) == pytest.approx(mse(pred, true))


def test_custom_bands():
    x = periodic(16)
    err = field(np.cos(2 * x))
    bands = frmse(err, np.zeros_like(err), bands=((0, 2), (2, 3), (3, None)))
    expected = {"frmse_low": 0.0, "frmse_mid": 1 / math.sqrt(2), "frmse_high": 0.0}
    assert bands == pytest.approx(expected)


@pytest.mark.parametrize("bands", [((0, 4), (4, 12)), ((0, 4), (4, 4), (4, None)), "low"])
def test_bad_bands_rejected(bands):
    zeros = np.zeros((1, 1, 8))
    with pytest.raises(ValueError, match="`bands`"):
        frmse(zeros, zeros, bands=bands)


def test_crmse_is_rms_of_the_spatial_mean_error():
    true = np.zeros((2, 1, 5))
    pred = true.copy()
    pred[0] += 0.1
    pred[1, 0, :] = [0.3, 0.3, 0.3, 0.6, 0.0]  # mean 0.3
    # sqrt((0.1^2 + 0.3^2) / 2) = sqrt(0.05)
    assert crmse(pred, true) == pytest.approx(math.sqrt(0.05))


def test_nrmse_skips_times_where_the_truth_is_zero(cosine_truth):
    true = cosine_truth.copy()
    true[:, 0] = 0.0
    pred = true + 0.1
    # The t = 0 slices have no scale and are skipped; the others are as in test_constant_offset.
    assert nrmse(pred, true) == pytest.approx(0.075 * math.sqrt(2))


def test_relative_metrics_of_an_all_zero_truth_rejected():
    true = np.zeros((2, 3, 8))
    with pytest.raises(ValueError, match="nrmse is undefined.*identically zero"):
        nrmse(true + 1, true)
    with pytest.raises(ValueError, match="rel_l2 is undefined.*identically zero"):
        rel_l2(true + 1, true)


def test_rel_l2_skips_all_zero_samples():
    true = np.zeros((2, 2, 4))
    true[1] = 2.0
    pred = true + 1.0
    # Sample 0 is skipped; sample 1: ||1|| / ||2|| over the same 8 entries = 1/2.
    assert rel_l2(pred, true) == pytest.approx(0.5)


def test_2d_grid():
    n = 32  # Nyquist 16, so every mode below is resolved
    x, y = np.meshgrid(periodic(n), periodic(n), indexing="ij")
    zeros = field(np.zeros((n, n)))
    # |k| = sqrt(3^2 + 4^2) = 5 -> mid; RMS of cos(3x) cos(4y) is 1/2.
    mid = frmse(field(0.5 * np.cos(3 * x) * np.cos(4 * y)), zeros)
    assert mid == pytest.approx({"frmse_low": 0.0, "frmse_mid": 0.25, "frmse_high": 0.0}, abs=1e-14)
    # |k| = sqrt(2^2 + 3^2) = 3.61 is binned down to 3 -> low (rounding would give mid).
    low = frmse(field(np.cos(2 * x) * np.cos(3 * y)), zeros)
    assert low == pytest.approx({"frmse_low": 0.5, "frmse_mid": 0.0, "frmse_high": 0.0}, abs=1e-14)
    # |k| = sqrt(12^2) along one axis -> high.
    high = frmse(field(np.sin(12 * y)), zeros)
    assert high["frmse_high"] == pytest.approx(1 / math.sqrt(2))

    m = compute_metrics(field(np.ones((n, n)) * 0.1) + 3.0, zeros + 3.0)
    assert m["crmse"] == pytest.approx(0.1)
    assert m["frmse_low"] == pytest.approx(0.1)
    assert m["nrmse"] == pytest.approx(0.1 / 3)


def test_2d_boundary_counts_each_corner_twice_as_pdebench():
    err = np.zeros((1, 1, 3, 4))
    err[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]] = 1.0  # the four corners
    err[0, 0, 1, 1:3] = 7.0  # the two interior points must not count
    # PDEBench sums the two x-edges (4 points each) and the two y-edges (3 each) over 2 nx + 2 ny = 14:
    # each corner counts twice, 8 ones of 14.
    assert brmse(err, np.zeros_like(err)) == pytest.approx(math.sqrt(8 / 14))


@pytest.mark.parametrize("space", [(9,), (5, 4)])
def test_crmse_and_brmse_aggregate_as_pdebench(space):
    """Against PDEBench's formulas written out: the root per time (cRMSE: over samples) or per
    sample and time (bRMSE), then the mean; errors that vary over samples and times tell the
    aggregations apart."""
    rng = np.random.default_rng(0)
    true = rng.standard_normal((3, 4, *space))
    pred = true + rng.standard_normal(true.shape) * rng.uniform(0.1, 2.0, (3, 4) + (1,) * len(space))
    e = pred - true
    n_points = math.prod(space)
    csv = np.sqrt(np.mean(e.reshape(3, 4, -1).sum(-1) ** 2, axis=0)) / n_points  # [t]
    if len(space) == 1:
        bd = np.sqrt((e[..., 0] ** 2 + e[..., -1] ** 2) / 2)
    else:
        nx, ny = space
        bd_x = (e[:, :, 0, :] ** 2 + e[:, :, -1, :] ** 2).sum(-1)
        bd_y = (e[:, :, :, 0] ** 2 + e[:, :, :, -1] ** 2).sum(-1)
        bd = np.sqrt((bd_x + bd_y) / (2 * nx + 2 * ny))
    assert crmse(pred, true) == pytest.approx(float(csv.mean()), rel=1e-12)
    assert brmse(pred, true) == pytest.approx(float(bd.mean()), rel=1e-12)


def test_mesh_leaves_out_grid_metrics_and_rejects_frmse():
    rng = np.random.default_rng(2)
    true = rng.standard_normal((2, 3, 50))
    m = compute_metrics(true + 0.1, true, grid=False)
    assert set(m) == {"rel_l2", "mse", "rmse", "nrmse", "crmse", "max_abs_err"}
    assert m["crmse"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="frmse needs a tensor grid"):
        frmse(true, true, grid=False)
    with pytest.raises(ValueError, match="brmse needs a tensor grid"):
        brmse(true, true, grid=False)


def test_grid_metric_names():
    true = np.ones((1, 2, 8))
    assert list(compute_metrics(true, true)) == [
        "rel_l2", "mse", "rmse", "nrmse", "crmse",
        "brmse", "frmse_low", "frmse_mid", "frmse_high", "max_abs_err",
    ]  # fmt: skip


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 8\).*\(2, 3, 9\)"):
        mse(np.zeros((2, 3, 8)), np.zeros((2, 3, 9)))


def test_missing_axes_rejected():
    with pytest.raises(ValueError, match=r"\[n_samples, n_t, \*space\]"):
        compute_metrics(np.zeros((3, 8)), np.zeros((3, 8)))


def test_non_finite_prediction_rejected_with_count():
    true = np.zeros((2, 3, 8))
    pred = true.copy()
    pred[0, 0, :2] = np.nan
    pred[1, 2, 3] = np.inf
    message = r"prediction `pred` contains NaN/Inf in 3 of 48 entries \(2 NaN, 1 Inf\)"
    with pytest.raises(ValueError, match=message):
        compute_metrics(pred, true)
    with pytest.raises(ValueError, match="truth `true` contains NaN/Inf in 3 of 48"):
        rmse(true, pred)


def test_torch_tensors_accepted(cosine_truth):
    torch = pytest.importorskip("torch")
    pred = cosine_truth + 0.1
    expected = compute_metrics(pred, cosine_truth)
    got = compute_metrics(
        torch.tensor(pred, requires_grad=True), torch.tensor(cosine_truth, dtype=torch.float64)
    )
    assert got == pytest.approx(expected)
    low_precision = compute_metrics(torch.tensor(pred).bfloat16(), torch.tensor(cosine_truth))
    assert low_precision["rmse"] == pytest.approx(0.1, rel=0.05)

"""Error metrics of a predicted space-time field against the truth, in float64 numpy.

Every function takes ``pred`` and ``true`` of one layout, ``[n_samples, n_t, *space]``, where
``space`` is ``(n_  x,)`` or ``(n_x, n_y)`` on a tensor grid and ``(n_points,)`` on a mesh; torch
tensors are accepted too. Writing ``e = pred - true``, ``s`` for a sample, ``t`` for a time and
``<.>_x`` for the   mean over the spatial points:

=================== ===========================================================================
``rel_l2``          mean_s ||e_s||_2 / ||true_s||_2, each norm over a sample's space-time field
``mse``, ``rmse``   mean of e^2 over all entries, and its square root
``nrmse``           mean_{s,t} sqrt(<e^2>_x) / sqrt(<true^2>_x)
``crmse``           mean_t sqrt(mean_s <e>_x^2): error of the conserved spatial sum, per point
``brmse``           mean_{s,t} sqrt(mean of e^2 over the grid's boundary points), in 2D the
                    2 n_x + 2 n_y points of the four edges (corners twice, as PDEBench)
``frmse_*``         RMS of e band-passed to a band of Fourier wavenumbers (grids only)
``max_abs_err``     max |e|
=================== ===========================================================================

nRMSE, cRMSE, bRMSE and fRMSE follow PDEBench's definitions (Takamoto et al. 2022), implemented
here from those definitions, with its aggregation: the root per time (cRMSE) or per sample and
time (nRMSE, bRMSE), then the mean. The fRMSE normalisation (Parseval, see ``frmse``) is this
module's choice, so fRMSE values are not interchangeable with PDEBench's tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["brmse", "compute_metrics", "crmse", "frmse", "mse", "nrmse", "rel_l2", "rmse"]

Bands = tuple[tuple[int, int | None], tuple[int, int | None], tuple[int, int | None]]
DEFAULT_BANDS: Bands = ((0, 4), (4, 12), (12, None))
_BAND_NAMES = ("frmse_low", "frmse_mid", "frmse_high")


def rel_l2(pred: Any, true: Any) -> float:
    """Relative L2 error, averaged over samples (Krishnapriyan et al. 2021).

    ``mean_s ||pred_s - true_s||_2 / ||true_s||_2``, each norm over the sample's whole
    ``[n_t, *space]`` field. Samples whose truth is identically zero are skipped.
    """
    pred, true = _prepare(pred, true)
    return _rel_l2(pred - true, true)


def mse(pred: Any, true: Any) -> float:
    """Mean squared error over every sample, time and point: ``mean((pred - true)^2)``."""
    pred, true = _prepare(pred, true)
    return float(np.mean((pred - true) ** 2))


def rmse(pred: Any, true: Any) -> float:
    """Root mean squared error: ``sqrt(mse(pred, true))``."""
    return float(np.sqrt(mse(pred, true)))


def nrmse(pred: Any, true: Any) -> float:
    """Normalised RMSE (PDEBench's nRMSE), per time slice then averaged.

    ``mean_{s,t} sqrt(<(pred - true)^2>_x) / sqrt(<true^2>_x)`` with ``<.>_x`` the mean over the
    spatial points. Slices where the truth is identically zero have no scale and are skipped; if
    every slice is zero a ``ValueError`` says so.
    """
    pred, true = _prepare(pred, true)
    return _nrmse(pred - true, true)


def crmse(pred: Any, true: Any) -> float:
    """Conserved-quantity RMSE (PDEBench's cRMSE).

    ``mean_t sqrt(mean_s (<pred>_x - <true>_x)^2)``: the error of the spatial sum divided by
    the number of points, RMS over samples at each time, then averaged over times (PDEBench's
    aggregation). It sees a lost or gained mass, not its shape.
    """
    pred, true = _prepare(pred, true)
    return _crmse(pred - true)


def brmse(pred: Any, true: Any, *, grid: bool = True) -> float:
    """Boundary RMSE (PDEBench's bRMSE): RMS of ``pred - true`` over the grid's boundary points.

    A boundary point has the first or the last index on a spatial axis: in 2D the 2 n_x + 2 n_y
    points of the four edges, each corner counted twice (once per edge), as PDEBench takes them.
    The root is taken per sample and time, then averaged (PDEBench's aggregation).
    ``grid=False`` (a mesh) raises: the boundary of an unstructured mesh is not known from the
    array layout.
    """
    _require_grid(grid, "brmse")
    pred, true = _prepare(pred, true)
    return _brmse(pred - true)


def frmse(
    pred: Any, true: Any, bands: Bands = DEFAULT_BANDS, *, grid: bool = True
) -> dict[str, float]:
    """Fourier-band RMSE (PDEBench's fRMSE) in a low, a mid and a high wavenumber band.

    With ``E_k`` the real FFT of ``e = pred - true`` over the spatial axes divided by the number
    of points ``N``, and the integer wavenumber ``|k| = floor(sqrt(kx^2 [+ ky^2]))`` (``k`` in
    modes per grid length, so the grid is taken as one period), a band ``[lo, hi)`` gives

        frmse_band = sqrt(mean_{s,t} sum_{lo <= |k| < hi} w_k |E_k|^2)

    where ``w_k = 2`` for the real FFT's coefficients that stand for a conjugate pair too. By
    Parseval this is the RMS of ``e`` band-passed to the band, so a constant error ``c`` gives
    ``frmse_low = |c|``, a mode ``a sin(5x)`` gives ``frmse_mid = |a| / sqrt(2)``, and bands
    that tile ``[0, inf)`` satisfy ``frmse_low^2 + frmse_mid^2 + frmse_high^2 = mse``.

    ``bands`` holds three ``(lo, hi)`` pairs, ``hi=None`` meaning no upper limit. ``grid=False``
    (a mesh) raises: Fourier modes need a tensor grid.
    """
    _require_grid(grid, "frmse")
    pred, true = _prepare(pred, true)
    return _frmse(pred - true, _check_bands(bands))


def compute_metrics(pred: Any, true: Any, *, grid: bool = True) -> dict[str, float]:
    """Every metric of this module in one dict, validating and converting the inputs once.

    Keys: ``rel_l2, mse, rmse, nrmse, crmse, max_abs_err`` and, when ``grid`` is true,
    ``brmse, frmse_low, frmse_mid, frmse_high``. ``grid=False`` means ``space`` is the
    ``n_points`` of a mesh.
    """
    pred, true = _prepare(pred, true)
    err = pred - true
    mse_value = float(np.mean(err**2))
    metrics = {
        "rel_l2": _rel_l2(err, true),
        "mse": mse_value,
        "rmse": float(np.sqrt(mse_value)),
        "nrmse": _nrmse(err, true),
        "crmse": _crmse(err),
    }
    if grid:
        metrics["brmse"] = _brmse(err)
        metrics.update(_frmse(err, DEFAULT_BANDS))
    metrics["max_abs_err"] = float(np.max(np.abs(err)))
    return metrics


# --- kernels on validated float64 arrays: err = pred - true, shape [n_samples, n_t, *space] ---


def _rel_l2(err: np.ndarray, true: np.ndarray) -> float:
    field_axes = tuple(range(1, err.ndim))
    num = np.sqrt(np.sum(err**2, axis=field_axes))
    den = np.sqrt(np.sum(true**2, axis=field_axes))
    return _mean_ratio(num, den, "rel_l2", "sample")


def _nrmse(err: np.ndarray, true: np.ndarray) -> float:
    space = _space_axes(err)
    num = np.sqrt(np.mean(err**2, axis=space))
    den = np.sqrt(np.mean(true**2, axis=space))
    return _mean_ratio(num, den, "nrmse", "(sample, time) slice")


def _crmse(err: np.ndarray) -> float:
    per_time = np.sqrt(np.mean(np.mean(err, axis=_space_axes(err)) ** 2, axis=0))  # over samples
    return float(np.mean(per_time))


def _brmse(err: np.ndarray) -> float:
    # The first and last point along each spatial axis: in 2D the four edges, corners twice.
    edges = [np.take(err, index, axis=axis).reshape(*err.shape[:2], -1) for axis in _space_axes(err) for index in (0, -1)]
    squares = np.concatenate(edges, axis=-1) ** 2  # [n_samples, n_t, boundary points]
    return float(np.mean(np.sqrt(np.mean(squares, axis=-1))))


def _frmse(err: np.ndarray, bands: Bands) -> dict[str, float]:
    space = _space_axes(err)
    space_shape = err.shape[2:]
    spectrum = np.fft.rfftn(err, axes=space) / np.prod(space_shape)

    # The real FFT keeps ky >= 0 on the last axis; every coefficient other than ky = 0 and the
    # Nyquist one also stands for its conjugate at -k, so it carries twice the power.
    n_last = space_shape[-1]
    weight = np.full(n_last // 2 + 1, 2.0)
    weight[0] = 1.0
    if n_last % 2 == 0:
        weight[-1] = 1.0
    power = weight * np.abs(spectrum) ** 2

    # Integer mode numbers: signed (fftfreq) on the full axes, non-negative on the last.
    modes = [np.fft.fftfreq(n, d=1.0 / n) for n in space_shape[:-1]]
    modes.append(np.fft.rfftfreq(n_last, d=1.0 / n_last))
    k_squared = sum(np.meshgrid(*[m**2 for m in modes], indexing="ij"))
    # Squares of integers are exact, so floor() puts |k| = 5.0 in bin 5, never in bin 4.
    k_bin = np.floor(np.sqrt(k_squared))

    result = {}
    for name, (lo, hi) in zip(_BAND_NAMES, bands):
        in_band = (k_bin >= lo) & (k_bin < (np.inf if hi is None else hi))
        band_power = power[..., in_band].sum(axis=-1)  # [n_samples, n_t]
        result[name] = float(np.sqrt(np.mean(band_power)))
    return result


# --- input handling ---


def _space_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _mean_ratio(num: np.ndarray, den: np.ndarray, metric: str, unit: str) -> float:
    """Mean of ``num / den`` over the entries whose truth scale ``den`` is non-zero."""
    scaled = den > 0
    if not np.any(scaled):
        raise ValueError(
            f"{metric} is undefined: the truth `true` is identically zero in every {unit}, so "
            f"there is no scale to normalise the error by. Use `mse` or `rmse` for such data."
        )
    return float(np.mean(num[scaled] / den[scaled]))


def _require_grid(grid: bool, metric: str) -> None:
    if not grid:
        raise ValueError(
            f"{metric} needs a tensor grid (space axes (n_x,) or (n_x, n_y)), but `grid` "
            f"(=False) says the points are a mesh. Use `compute_metrics(pred, true, grid=False)`, "
            f"which leaves out the grid-only metrics brmse and frmse_*."
        )


def _check_bands(bands: Any) -> Bands:
    try:
        pairs = tuple((int(lo), None if hi is None else int(hi)) for lo, hi in bands)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"`bands` (={bands!r}) must be three (lo, hi) pairs of integer wavenumbers, "
            f"hi=None for no upper limit, e.g. {DEFAULT_BANDS}."
        ) from exc
    if len(pairs) != 3 or any(lo < 0 or (hi is not None and hi <= lo) for lo, hi in pairs):
        raise ValueError(
            f"`bands` (={bands!r}) must be three (lo, hi) pairs, one each for low, mid and high, "
            f"with 0 <= lo < hi (hi=None for no upper limit), e.g. {DEFAULT_BANDS}."
        )
    return pairs  # type: ignore[return-value]


def _to_float64(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; .double() also covers bfloat16, which numpy lacks
        x = x.detach().cpu().double()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"`{name}` (a {type(x).__name__}) must be a real numeric array or tensor: {exc}"
        ) from exc


def _prepare(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """Convert both inputs to float64 arrays and check layout, shapes and finiteness."""
    pred = _to_float64(pred, "pred")
    true = _to_float64(true, "true")
    if pred.shape != true.shape:
        raise ValueError(
            f"`pred` has shape {pred.shape} but `true` has shape {true.shape}; they must match, "
            f"both laid out as [n_samples, n_t, *space]."
        )
    if pred.ndim < 3 or pred.size == 0:
        raise ValueError(
            f"`pred` and `true` have shape {pred.shape}; expected a non-empty "
            f"[n_samples, n_t, *space] with at least 3 axes (add a missing sample axis with "
            f"`x[None]`)."
        )
    for array, what in ((pred, "the prediction `pred`"), (true, "the truth `true`")):
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = array.size - int(finite.sum()) - n_nan
            raise ValueError(
                f"{what} contains NaN/Inf in {n_nan + n_inf} of {array.size} entries "
                f"({n_nan} NaN, {n_inf} Inf); metrics need finite values. A non-finite "
                f"prediction usually means training diverged: lower the learning rate or "
                f"check the checkpoint."
            )
    return pred, true

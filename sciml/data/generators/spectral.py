"""Reference solutions for 1D periodic PDEs on x in [0, L): the PINN failure-mode family.

Convection-diffusion (exact in Fourier space), logistic reaction (closed form),
reaction-diffusion (Strang splitting of two exact flows) and viscous Burgers (pseudo-spectral
ETDRK4), plus the exact Cole-Hopf solution of Burgers from sin x and the named initial conditions.

Conventions shared by every solver, float64 throughout:
    u0: [nx] or [batch, nx], samples of u(x, 0) on ``periodic_grid(nx, length)``
    t:  [nt], strictly increasing, t[0] >= 0; times are measured from u(., 0) = u0
    returns [nt, nx] or [batch, nt, nx]
Time-stepping solvers take ``dt`` as the largest allowed step: each output interval is cut into
the fewest equal steps no longer than ``dt``, so steps land exactly on the output times.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

_DEFAULT_DT = 1e-3
# Points on the contour around each h*L for the ETDRK4 phi-functions (Kassam & Trefethen 2005).
_CONTOUR_POINTS = 32


def periodic_grid(nx: int, length: float = 2 * np.pi) -> np.ndarray:
    """Uniform periodic grid x_j = j * length / nx, j = 0..nx-1 (endpoint excluded). Shape [nx]."""
    nx = _positive_int("nx", nx)
    length = _real("length", length, positive=True)
    return np.arange(nx) * (length / nx)


def solve_convection_diffusion(u0, t, beta: float, nu: float = 0.0, length: float = 2 * np.pi):
    """Solve u_t + beta u_x = nu u_xx exactly in Fourier space.

    u_hat(k, t) = u_hat(k, 0) exp(-(i beta k + nu k^2) t), k = 2 pi m / length.
    Exact for the trigonometric interpolant of u0, so the only error is round-off. The mean
    (k = 0 mode) is untouched. Shapes: u0 [..., nx], t [nt] -> [..., nt, nx].
    """
    u0, t = _check_u0(u0), _check_times(t)
    beta = _real("beta", beta)
    nu = _real("nu", nu, nonnegative=True)
    nx = u0.shape[-1]
    k = _wavenumbers(nx, _real("length", length, positive=True))
    propagator = np.exp(-(1j * beta * k + nu * k**2) * t[:, None])  # [nt, nk]
    return np.fft.irfft(np.fft.rfft(u0)[..., None, :] * propagator, n=nx)


def solve_reaction(u0, t, rho: float) -> np.ndarray:
    """Solve the pointwise logistic equation u_t = rho u (1 - u) in closed form.

    u = u0 e^{rho t} / (u0 e^{rho t} + 1 - u0), evaluated without overflow for any rho t.
    For u0 outside [0, 1] the exact solution can blow up in finite time (inf/nan from then on).
    Shapes: u0 [..., nx], t [nt] -> [..., nt, nx].
    """
    u0, t = _check_u0(u0), _check_times(t)
    return _logistic(u0[..., None, :], _real("rho", rho), t[:, None])


def solve_reaction_diffusion(
    u0, t, rho: float, nu: float, dt: float | None = None, length: float = 2 * np.pi
) -> np.ndarray:
    """Solve u_t = nu u_xx + rho u (1 - u) by Strang splitting, second order in dt.

    One step of size h is D(h/2) R(h) D(h/2), with D the exact Fourier diffusion flow and R the
    exact logistic flow; both are exact, so the only time error is the O(h^2) splitting error
    and every step is stable. ``dt`` (default 1e-3) is the largest step.
    Shapes: u0 [..., nx], t [nt] -> [..., nt, nx].
    """
    u0, t = _check_u0(u0), _check_times(t)
    rho = _real("rho", rho)
    nu = _real("nu", nu, nonnegative=True)
    dt = _DEFAULT_DT if dt is None else _real("dt", dt, positive=True)
    nx = u0.shape[-1]
    k = _wavenumbers(nx, _real("length", length, positive=True))

    out = np.empty(u0.shape[:-1] + (t.size, nx))
    u = u0
    for i, (n_steps, h) in enumerate(_substeps(t, dt)):
        half_diffusion = np.exp(-nu * k**2 * (h / 2))
        for _ in range(n_steps):
            u = np.fft.irfft(np.fft.rfft(u) * half_diffusion, n=nx)
            u = _logistic(u, rho, h)
            u = np.fft.irfft(np.fft.rfft(u) * half_diffusion, n=nx)
        out[..., i, :] = u
    return out


def solve_burgers(u0, t, nu: float, dt: float | None = None, length: float = 2 * np.pi):
    """Solve viscous Burgers u_t + (u^2 / 2)_x = nu u_xx, pseudo-spectral in x, ETDRK4 in time.

    In Fourier space v = u_hat obeys v_t = L v + N(v) with L = -nu k^2 (treated exactly) and
    N(v) = -(i k / 2) F[(F^-1 v)^2], dealiased by the 2/3 rule: modes with |m| >= nx/3 are
    zeroed before squaring and in the product, so the retained modes are alias-free.
    Fourth order in dt (Cox & Matthews ETDRK4; phi-functions by contour integrals so that small
    |h L| is accurate). The mean is conserved to round-off. ``dt`` is the largest step; the
    default min(1e-3, 1 / (max|u0| k_cut)) keeps the advective CFL number below one (|u| never
    exceeds max|u0| for Burgers). Shapes: u0 [..., nx], t [nt] -> [..., nt, nx].
    """
    u0, t = _check_u0(u0), _check_times(t)
    nu = _real("nu", nu, nonnegative=True)
    nx = u0.shape[-1]
    k = _wavenumbers(nx, _real("length", length, positive=True))
    keep = np.arange(k.size) < nx / 3
    if dt is None:
        speed = np.abs(u0).max() * k[keep].max()
        dt = _DEFAULT_DT if speed == 0 else min(_DEFAULT_DT, 1.0 / speed)
    else:
        dt = _real("dt", dt, positive=True)

    flux_derivative = -0.5j * k * keep

    def nonlinear(v):
        u = np.fft.irfft(v * keep, n=nx)
        return flux_derivative * np.fft.rfft(u * u)

    lin = -nu * k**2
    out = np.empty(u0.shape[:-1] + (t.size, nx))
    v = np.fft.rfft(u0)
    last_h = None
    for i, (n_steps, h) in enumerate(_substeps(t, dt)):
        if n_steps and h != last_h:
            e, e2, q, f1, f2, f3 = _etdrk4_coefficients(lin, h)
            last_h = h
        for _ in range(n_steps):
            nv = nonlinear(v)
            a = e2 * v + q * nv
            na = nonlinear(a)
            b = e2 * v + q * na
            nb = nonlinear(b)
            c = e2 * a + q * (2 * nb - nv)
            v = e * v + f1 * nv + 2 * f2 * (na + nb) + f3 * nonlinear(c)
        out[..., i, :] = np.fft.irfft(v, n=nx)
    return out


def burgers_sine_exact(x, t, nu: float) -> np.ndarray:
    """Exact viscous Burgers solution from u0 = sin x (period 2 pi) by Cole-Hopf. Shape [nt, nx].

    u = -2 nu phi_x / phi with phi_t = nu phi_xx and phi0(y) = exp(-(1 - cos y) / (2 nu)).
    Writing phi as the heat-kernel integral and integrating phi_x by parts gives
        u(x, t) = int sin(y) w(y) dy / int w(y) dy,
        w(y) = exp(-H(y)),  H(y) = (x - y)^2 / (4 nu t) + (1 - cos y) / (2 nu),
    a weighted mean of sin y with positive weights, hence free of cancellation. The Fourier
    series phi = I0(a) + 2 sum I_n(a) e^{-nu n^2 t} cos(n x), a = 1 / (2 nu), is not: its terms
    are O(a^-1/2) while phi / e^a falls to ~e^{-2a} near x = pi, so for nu = 0.01 (a = 50) it
    loses every digit over most of the domain even with exponentially scaled Bessel functions.

    Quadrature: y = x - sqrt(4 nu t) eta, trapezoid rule in eta (spectrally accurate for this
    smooth, fast-decaying integrand). The eta-bandwidth of w is at most ~13 (Gaussian) plus
    ~9 sqrt(2 t) (exp(a cos y) needs ~9 sqrt(a) Fourier modes for round-off), so the spacing
    h = 2 pi / (16 + 10 sqrt(2 t)) leaves a margin; |eta| <= sqrt(2a + 40) holds every weight
    above e^{-40} times the largest.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError(f"`x` must be a finite 1D array [nx], got shape {x.shape}; pass a grid.")
    if t.ndim != 1 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(
            f"`t` must be a 1D array [nt] of finite times >= 0, got shape {t.shape} with values "
            f"{t}; pass np.atleast_1d(t) with non-negative entries."
        )
    nu = _real("nu", nu, positive=True)
    half_width = math.sqrt(1.0 / nu + 40.0)
    out = np.empty((t.size, x.size))
    for i, ti in enumerate(t):
        h = 2 * np.pi / (16.0 + 10.0 * math.sqrt(2.0 * ti))
        m = math.ceil(half_width / h)
        eta = h * np.arange(-m, m + 1)
        y = x[:, None] - math.sqrt(4.0 * nu * ti) * eta  # [nx, n_nodes]
        exponent = eta**2 + (1.0 - np.cos(y)) / (2.0 * nu)
        w = np.exp(exponent.min(axis=1, keepdims=True) - exponent)
        out[i] = (w * np.sin(y)).sum(axis=1) / w.sum(axis=1)
    return out


def _sine(x):
    return np.sin(x)


def _gaussian(x):
    return np.exp(-((x - np.pi) ** 2) / (2 * (np.pi / 4) ** 2))


def _sine_offset(x, *, C):
    return C + np.sin(x)


_INITIAL_CONDITIONS = {"sine": _sine, "gaussian": _gaussian, "sine_offset": _sine_offset}
# The names ``initial_condition`` accepts, for callers that validate configs up front.
INITIAL_CONDITIONS = tuple(_INITIAL_CONDITIONS)


def initial_condition(name: str, x, **kw) -> np.ndarray:
    """Named initial condition u0(x) on [0, 2 pi), same shape as x.

    "sine": sin x.  "gaussian": exp(-(x - pi)^2 / (2 (pi/4)^2)), the reaction IC of
    Krishnapriyan et al. 2021.  "sine_offset": C + sin x (keyword C), the moving-shock Burgers IC.
    """
    if name not in _INITIAL_CONDITIONS:
        raise ValueError(
            f"`name` (={name!r}) is not a known initial condition; use one of "
            f"{sorted(_INITIAL_CONDITIONS)}."
        )
    fn = _INITIAL_CONDITIONS[name]
    x = np.asarray(x, dtype=np.float64)
    try:
        inspect.signature(fn).bind(x, **kw)
    except TypeError:
        expected = [p for p in inspect.signature(fn).parameters if p != "x"]
        raise ValueError(
            f"initial condition {name!r} takes keyword arguments {expected}, got {sorted(kw)}; "
            f"pass exactly those."
        ) from None
    return fn(x, **kw)


def random_initial_conditions(n: int, x, rng, n_modes: int = 4, amplitude: float = 1.0):
    """Smooth random 2 pi-periodic initial conditions for operator-learning datasets. [n, nx].

    u(x) = sum_{m=1}^{n_modes} (a_m cos(m x) + b_m sin(m x)) / m with a_m, b_m ~ N(0, 1), then
    scaled so that max_x |u| = amplitude on the given grid. Zero mean; deterministic given rng.
    """
    n = _positive_int("n", n)
    n_modes = _positive_int("n_modes", n_modes)
    amplitude = _real("amplitude", amplitude, positive=True)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"`rng` must be a numpy Generator, got {type(rng).__name__}; "
            f"pass np.random.default_rng(seed)."
        )
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"`x` must be a 1D grid [nx], got shape {x.shape}.")
    m = np.arange(1, n_modes + 1)
    coeff = rng.standard_normal((2, n, n_modes)) / m
    phase = m[:, None] * x  # [n_modes, nx]
    u = coeff[0] @ np.cos(phase) + coeff[1] @ np.sin(phase)
    return amplitude * u / np.abs(u).max(axis=-1, keepdims=True)


def _logistic(u, rho, t):
    """Exact logistic flow over time t, written with e^{-|rho| t} <= 1 so nothing overflows.

    Capping the exponent at 700 keeps the factor a normal float (>= 1e-304): at the fixed
    points u = 0 and u = 1 an underflow to zero would turn the result into 0/0.
    """
    decay = np.exp(-np.minimum(abs(rho) * t, 700.0))
    if rho >= 0:
        return u / (u + (1 - u) * decay)
    return u * decay / (u * decay + (1 - u))


def _etdrk4_coefficients(lin, h):
    """ETDRK4 coefficients for a real diagonal linear operator ``lin`` [nk] and step h.

    Each phi-type function of z = h L is averaged over a circle of radius 1 around z: the
    Cauchy integral equals its value at the centre, without the cancellation of the direct
    formulas at small |z|. L is real, so the mean over the circle is real.
    """
    z = h * lin[:, None] + np.exp(2j * np.pi * (np.arange(_CONTOUR_POINTS) + 0.5) / _CONTOUR_POINTS)
    ez = np.exp(z)

    def mean(f):
        return h * f.mean(axis=1).real

    q = mean((np.exp(z / 2) - 1) / z)
    f1 = mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3)
    f2 = mean((2 + z + ez * (z - 2)) / z**3)
    f3 = mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3)
    return np.exp(h * lin), np.exp(h * lin / 2), q, f1, f2, f3


def _substeps(t, dt):
    """Per output interval (from 0 to t[0], then t[i-1] to t[i]): (number of steps, step)."""
    intervals = np.diff(t, prepend=0.0)
    counts = np.ceil(intervals / dt - 1e-9).astype(int)
    return [(n, span / n if n else 0.0) for n, span in zip(counts.tolist(), intervals.tolist())]


def _wavenumbers(nx, length):
    """Angular wavenumbers 2 pi m / length of the rfft modes m = 0..nx//2. Shape [nx//2 + 1]."""
    return 2 * np.pi / length * np.arange(nx // 2 + 1)


def _check_u0(u0):
    if np.iscomplexobj(u0):
        raise TypeError("`u0` must be real; pass u0.real if the imaginary part is round-off.")
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim not in (1, 2) or u0.shape[-1] == 0:
        raise ValueError(
            f"`u0` must have shape [nx] or [batch, nx] with nx >= 1, got shape {u0.shape}; "
            f"reshape it to [batch, nx]."
        )
    if not np.all(np.isfinite(u0)):
        raise ValueError("`u0` contains nan or inf; pass finite initial values.")
    return u0


def _check_times(t):
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(
            f"`t` must be a non-empty 1D array of output times [nt], got shape {t.shape}; "
            f"pass np.atleast_1d(t)."
        )
    if not np.all(np.isfinite(t)) or t[0] < 0 or np.any(np.diff(t) <= 0):
        raise ValueError(
            f"`t` (={t}) must be finite, start at t[0] >= 0 and be strictly increasing; "
            f"sort it and drop duplicates, e.g. np.unique(t)."
        )
    return t


def _real(name, value, *, positive=False, nonnegative=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"`{name}` (={value}) must be finite.")
    if positive and value <= 0:
        raise ValueError(f"`{name}` (={value}) must be > 0.")
    if nonnegative and value < 0:
        raise ValueError(f"`{name}` (={value}) must be >= 0.")
    return value


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` (={value!r}) must be a positive integer.")
    return int(value)

"""2D incompressible Navier-Stokes in vorticity form on the periodic unit square, in torch.

    w_t + u . grad w = nu lap w + f,    u = (psi_y, -psi_x),    -lap psi = w,    (x, y) in [0, 1)^2

so w = v_x - u_y and a positive vortex turns counter-clockwise. Space is pseudo-spectral on the
n_x x n_y grid x_j = j / n_x (endpoint excluded): derivatives and the stream function are exact
in Fourier space (k = 2 pi m), the product u . grad w is formed on the grid from fields truncated
by the 2/3 rule (modes with |m| >= n/3 in either direction zeroed) and truncated again, so the
retained modes are alias-free. The forcing f(x, y) is optional and time-independent.

Time: the low-storage IMEX scheme of Spalart, Moser & Rogers (1991), three Runge-Kutta substeps
with Crank-Nicolson on the viscous term L = -nu |k|^2 (exact in Fourier space, so implicit costs
nothing). Substep s of a step h, with N = -(u . grad w)^ + f^:

    (1 - beta_s h L) w_s = (1 + alpha_s h L) w_{s-1} + h (gamma_s N(w_{s-1}) + zeta_s N(w_{s-2}))

    gamma = (8/15, 5/12, 3/4), zeta = (0, -17/60, -5/12), alpha = beta = (4/15, 1/15, 1/6).

Third order for the advection (the explicit part is a 3-stage, third-order Runge-Kutta method
whose stability region holds the imaginary axis up to |z| = sqrt(3)), second order for the
coupled viscous part; unconditionally stable for the diffusion. The step is set per sample and
per output interval from the CFL number h (max|u| / dx + max|v| / dy) <= cfl, the interval cut
into equal steps; the dealiased advective eigenvalues then stay below (2 pi / 3) cfl <= sqrt(3)
for cfl <= 0.8. A batch is solved in one go, each sample with its own steps, so a sample's
result does not depend on its batch-mates.

Initial vorticity: a Gaussian random field with the periodic ("exp-sine-squared") kernel

    C(x, x') = exp(-2 sin^2(pi (x - x')) / l^2 - 2 sin^2(pi (y - y')) / l^2) - c00,

which, writing a = 1 / l^2 and using exp(a cos 2 pi d) = I_0(a) + 2 sum_m I_m(a) cos(2 pi m d),
has the Fourier eigenvalues lambda_m = e^{-2a} I_|m1|(a) I_|m2|(a) = ive(m1, a) ive(m2, a). The
mode m = 0 (c00 = lambda_0) is dropped: the vorticity of a periodic flow has zero mean. The
field is drawn mode by mode (|m1|, |m2| <= K, where lambda falls below 1e-16 lambda_0) from the
numpy generator, so the same generator gives the same continuous field at every resolution:
a 256^2 field subsampled to 64^2 is the 64^2 field.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ive

from ... import __version__
from ...errors import ConfigError
from ..schema import PDEDataset, shape_only
from .base import Generator, Sample, check_int, check_real, rng_for

_GAMMA = (8 / 15, 5 / 12, 3 / 4)
_ZETA = (0.0, -17 / 60, -5 / 12)
_ALPHA = (4 / 15, 1 / 15, 1 / 6)  # = beta: Crank-Nicolson within each substep
_MAX_CFL = 0.8
_SPECTRUM_CUTOFF = 1e-16  # relative eigenvalue below which GRF modes are not drawn


def periodic_kernel_spectrum(m, length_scale: float) -> np.ndarray:
    """Fourier eigenvalues ive(|m|, 1 / l^2) of the 1D periodic kernel exp(-2 sin^2(pi d) / l^2)."""
    return ive(np.abs(np.asarray(m)), 1.0 / _positive("length_scale", length_scale) ** 2)


def gaussian_random_field(n: int, rng: np.random.Generator, length_scale: float = 0.8) -> np.ndarray:
    """One zero-mean GRF sample with the periodic kernel of the module docstring on the n x n grid.

    w(x) = sum_m c_m e^{2 pi i m . x}, c_m = sqrt(lambda_m) (z_m + conj z_{-m}) / sqrt(2) with z_m
    standard complex normal: real, stationary, E|c_m|^2 = lambda_m. The draws do not depend on
    n; modes beyond the grid's Nyquist frequency are left out. Shape [n, n], float64.
    """
    n = _int("n", n, 4)
    cutoff = _mode_cutoff(length_scale)
    m = np.arange(-cutoff, cutoff + 1)
    lam = np.outer(*(2 * [periodic_kernel_spectrum(m, length_scale)]))
    lam[cutoff, cutoff] = 0.0
    g = rng.standard_normal((2, m.size, m.size))
    z = (g[0] + 1j * g[1]) / math.sqrt(2)
    c = np.sqrt(lam) * (z + np.conj(z[::-1, ::-1])) / math.sqrt(2)
    keep = np.abs(m) < n / 2
    c = c[np.ix_(keep, keep)]
    kept = m[keep]
    coeffs = np.zeros((n, n // 2 + 1), dtype=complex)
    right = kept >= 0
    coeffs[np.ix_(kept % n, kept[right])] = c[:, right] * n * n
    return np.fft.irfft2(coeffs, s=(n, n))


def velocity(w: torch.Tensor) -> torch.Tensor:
    """Velocity (u, v) = (psi_y, -psi_x) of the vorticity w [..., nx, ny]. Shape [2, ..., nx, ny]."""
    ops = _Operators(w.shape[-2], w.shape[-1], w.device, w.dtype)
    psi = torch.fft.rfft2(w) * ops.inv_k2
    return torch.fft.irfft2(torch.stack([ops.iky * psi, -ops.ikx * psi]), s=ops.shape)


def solve_navier_stokes(
    w0,
    t,
    nu: float = 1e-4,
    *,
    forcing=None,
    dt: float | None = None,
    cfl: float = 0.5,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Vorticity at the output times ``t`` [nt] from ``w0`` [nx, ny] or [batch, nx, ny] at time 0.

    ``forcing`` [nx, ny] is a time-independent source f (default none). ``dt``, if given, is the
    largest step (fixed steps, for convergence studies); otherwise the step follows the CFL number
    ``cfl`` (<= 0.8). Runs on ``device`` (default: that of ``w0``, else CPU) in ``dtype``.
    Returns [nt, nx, ny] or [batch, nt, nx, ny] on that device.
    """
    w0 = torch.as_tensor(w0, dtype=dtype, device=device)
    if w0.ndim not in (2, 3) or min(w0.shape[-2:]) < 4:
        raise ValueError(f"`w0` must have shape [nx, ny] or [batch, nx, ny] with nx, ny >= 4, got {list(w0.shape)}.")
    if not torch.isfinite(w0).all():
        raise ValueError("`w0` contains nan or inf; pass a finite initial vorticity.")
    times = np.asarray(t, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError(f"`t` (={times}) must be a non-empty 1D array of finite, strictly increasing times >= 0.")
    if not (isinstance(nu, (int, float)) and math.isfinite(nu) and nu >= 0):
        raise ValueError(f"`nu` (={nu!r}) must be a finite number >= 0.")
    if dt is not None:
        dt = _positive("dt", dt)
    if not 0 < cfl <= _MAX_CFL:
        raise ValueError(f"`cfl` (={cfl!r}) must be in (0, {_MAX_CFL}]: the RK3 stability limit.")

    batched = w0.ndim == 3
    w_hat = torch.fft.rfft2(w0 if batched else w0[None])
    ops = _Operators(*w0.shape[-2:], w_hat.device, dtype)
    f_hat = None if forcing is None else torch.fft.rfft2(torch.as_tensor(forcing, dtype=dtype, device=w_hat.device))
    lin = -nu * ops.k2  # [nx, ny/2+1]
    frames = []
    now = 0.0
    for t_out in times.tolist():
        span = t_out - now
        if span > 0:
            if dt is not None:
                n_steps = torch.full((len(w_hat),), float(math.ceil(span / dt - 1e-9)), dtype=torch.float64, device=w_hat.device)
            else:
                n_steps = torch.ceil(span * _max_rate(w_hat, ops) / cfl).clamp(min=1)
            h = (span / n_steps).to(dtype)[:, None, None]
            factors = [(1 + a * h * lin) / (1 - a * h * lin) for a in _ALPHA]
            implicit = [h / (1 - a * h * lin) for a in _ALPHA]
            fewest, most = int(n_steps.min()), int(n_steps.max())  # one host sync per interval
            for step in range(most):
                new = _rk3cn_step(w_hat, ops, f_hat, factors, implicit)
                w_hat = new if step < fewest else torch.where((step < n_steps)[:, None, None], new, w_hat)
            now = t_out
        frames.append(torch.fft.irfft2(w_hat, s=ops.shape))
    out = torch.stack(frames, dim=1)
    return out if batched else out[0]


def _rk3cn_step(w_hat, ops, f_hat, factors, implicit):
    """One RK3/Crank-Nicolson step (module docstring); ``factors`` and ``implicit`` per substep."""
    previous = None
    for s in range(3):
        current = _nonlinear(w_hat, ops, f_hat)
        explicit = _GAMMA[s] * current if previous is None else _GAMMA[s] * current + _ZETA[s] * previous
        w_hat = factors[s] * w_hat + implicit[s] * explicit
        previous = current
    return w_hat


def _nonlinear(w_hat, ops, f_hat):
    """N(w) = -(u . grad w)^ (+ f^), the product formed from and projected onto the 2/3 modes."""
    w_hat = w_hat * ops.dealias
    psi = w_hat * ops.inv_k2
    u, v, wx, wy = torch.fft.irfft2(
        torch.stack([ops.iky * psi, -ops.ikx * psi, ops.ikx * w_hat, ops.iky * w_hat]), s=ops.shape
    )
    n_hat = -torch.fft.rfft2(u * wx + v * wy) * ops.dealias
    return n_hat if f_hat is None else n_hat + f_hat


def _max_rate(w_hat, ops) -> torch.Tensor:
    """max|u| / dx + max|v| / dy per sample [batch]: the CFL number is this times the step."""
    psi = w_hat * ops.inv_k2
    u, v = torch.fft.irfft2(torch.stack([ops.iky * psi, -ops.ikx * psi]), s=ops.shape)
    rate = u.abs().amax(dim=(-2, -1)) * ops.shape[0] + v.abs().amax(dim=(-2, -1)) * ops.shape[1]
    return rate.to(torch.float64)


class _Operators:
    """Wavenumbers k = 2 pi m of the rfft2 layout [nx, ny/2+1], 1/|k|^2 and the 2/3 mask."""

    def __init__(self, nx: int, ny: int, device, dtype):
        mx = torch.fft.fftfreq(nx, 1.0 / nx, device=device, dtype=dtype)[:, None]
        my = torch.fft.rfftfreq(ny, 1.0 / ny, device=device, dtype=dtype)[None, :]
        self.shape = (nx, ny)
        self.kx, self.ky = 2 * math.pi * mx, 2 * math.pi * my
        self.ikx, self.iky = 1j * self.kx, 1j * self.ky
        self.k2 = self.kx**2 + self.ky**2
        self.inv_k2 = torch.where(self.k2 > 0, 1.0 / self.k2.clamp(min=1e-30), torch.zeros_like(self.k2))
        self.dealias = ((mx.abs() < nx / 3) & (my < ny / 3)).to(dtype)


def _mode_cutoff(length_scale: float) -> int:
    """Smallest K with lambda_K < 1e-16 lambda_0 (the 1D eigenvalues fall monotonically in |m|)."""
    a = 1.0 / _positive("length_scale", length_scale) ** 2
    k = int(math.ceil(math.sqrt(2 * a * 37.0))) + 1  # Gaussian tail estimate for large a
    while ive(k, a) > _SPECTRUM_CUTOFF * ive(0, a):
        k += 1
    while k > 1 and ive(k - 1, a) <= _SPECTRUM_CUTOFF * ive(0, a):
        k -= 1
    return k


def _positive(name, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` (={value!r}) must be a finite number > 0.")
    return value


def _int(name, value, minimum) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` (={value!r}) must be an integer >= {minimum}.")
    return int(value)


class NavierStokes2D(Generator):
    """Decaying 2D turbulence from GRF vorticity: the PI-HC-MoE Navier-Stokes datasets.

    Frame 0 of ``u`` [nt, n, n] is the initial vorticity (also stored as ``u0``), frame j is at
    t_j = j t_end / (nt - 1). Solved in float64 on ``device``, stored as float32. ``forcing`` is
    the amplitude of the time-independent source of :class:`sciml.pdes.NavierStokes2D` (the FNO
    benchmark's f = forcing (sin 2 pi (x + y) + cos 2 pi (x + y)); 0: decaying turbulence, as in
    the PI-HC paper); the file records it with the other parameters, so an experiment whose
    ``pde.init_args.forcing`` differs is refused.
    """

    name = "navier_stokes_2d"
    description = "2D Navier-Stokes (vorticity) on the periodic unit square from GRF vorticity; pseudo-spectral, RK3/Crank-Nicolson"

    def __init__(self, n: int = 64, nt: int = 64, t_end: float = 5.0, nu: float = 1e-4,
                 length_scale: float = 0.8, forcing: float = 0.0, device: str = "cpu"):
        owner = self.name
        self.n = check_int(owner, "n", n, 8)
        self.nt = check_int(owner, "nt", nt, 2)
        self.t_end = check_real(owner, "t_end", t_end, positive=True)
        self.nu = check_real(owner, "nu", nu, nonnegative=True)
        self.length_scale = check_real(owner, "length_scale", length_scale, positive=True)
        self.forcing = check_real(owner, "forcing", forcing)
        self.device = _check_device(owner, device)

    @property
    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.t_end, self.nt)

    def config_for(self, n: int) -> dict:
        # the digest of unforced data is the one it had before `forcing` existed, so files
        # generated then are still recognised by their data modules
        config = self.config()
        if config["forcing"] == 0:
            del config["forcing"]
        return config

    def layout(self, n: int) -> PDEDataset:
        n = check_int(self.name, "n_samples", n, 1)
        x = np.arange(self.n) / self.n
        return PDEDataset(
            pde=self.name,
            u=shape_only((n, self.nt, self.n, self.n), np.float32),
            u0=shape_only((n, self.n, self.n), np.float32),
            grid={"x": x, "y": x.copy(), "t": self.times},
            params=shape_only((n, 2)),
            param_names=["nu", "length_scale"],
            common_params=self.config(),
            generator=f"sciml {__version__} {self.name} (pseudo-spectral, 2/3 dealiasing, RK3/Crank-Nicolson, CFL 0.5)",
            weights=np.full(self.n * self.n, 1.0 / self.n**2),  # periodic trapezoid rule
        )

    def sample(self, i: int, seed: int) -> Sample:
        w0 = gaussian_random_field(self.n, rng_for(seed, i), self.length_scale)
        w = solve_navier_stokes(w0, self.times, self.nu, forcing=self._forcing_field(), device=self.device)
        u = w.cpu().numpy().astype(np.float32)
        return Sample(u=u, params=np.array([self.nu, self.length_scale]), u0=u[0])

    def _forcing_field(self) -> np.ndarray | None:
        """f [n, n] on the grid, or None without forcing."""
        if not self.forcing:
            return None
        from ...pdes.navier_stokes import NavierStokes2D as Vorticity

        x = np.arange(self.n) / self.n
        return Vorticity(nu=self.nu, forcing=self.forcing, t_end=self.t_end).forcing_field(x, x)


def _check_device(owner: str, device) -> str:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{owner}: `device` (={device!r}) is not a torch device; use 'cpu' or 'cuda'.") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{owner}: `device` (={device!r}) but no CUDA GPU is available; use device='cpu'.")
    return str(device)


NS_GENERATORS: dict[str, type[Generator]] = {NavierStokes2D.name: NavierStokes2D}

__all__ = ["NS_GENERATORS", "NavierStokes2D", "gaussian_random_field", "periodic_kernel_spectrum", "solve_navier_stokes", "velocity"]

"""2-D incompressible Navier-Stokes in vorticity form on the periodic square ``[0, 2 pi)^2``.

    w_t + u w_x + v w_y = nu lap(w) - alpha w + F,   u = psi_y, v = -psi_x, lap(psi) = -w

with ``nu = 1 / reynolds``. Pseudo-spectral with the 2/3 rule against aliasing; the
linear terms are integrated exactly by an integrating factor and the rest by classic
RK4 (IF-RK4). ``F`` is either Kolmogorov forcing (the curl of ``A sin(k_f y)`` in ``u``,
with linear drag ``alpha``) or absent (decaying turbulence).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from ._common import (as_tensor, batches, check_positive, cube_dataset, like_input, progress_bar,
                      resolve, sample_rngs, spectral_coords)
from ..errors import ArgumentError

LENGTH = 2 * np.pi
FORCINGS = ("kolmogorov", "none")
EQUATION = "w_t + u w_x + v w_y = nu lap(w) - alpha w + F, u = psi_y, v = -psi_x, lap(psi) = -w (periodic)"


class _Spectral:
    """Wavenumbers, 2/3-rule mask and spectral operators on an ``n x n`` periodic grid."""

    def __init__(self, size, device, dtype):
        self.size = size
        ky, kx = spectral_coords(size, LENGTH, device, dtype)
        self.k2 = kx**2 + ky**2
        inverse_k2 = torch.where(self.k2 > 0, 1 / self.k2.clamp(min=1), 0.0)  # drops the mean
        self.dealias = (kx.abs() < size / 3) & (ky.abs() < size / 3)
        # (u, v) = (psi_y, -psi_x) with psi = w / k^2, and -div of a flux, as multipliers per mode
        self.to_velocity = torch.stack(torch.broadcast_tensors(1j * ky * inverse_k2, -1j * kx * inverse_k2))
        self.minus_divergence = torch.stack(torch.broadcast_tensors(-1j * kx, -1j * ky)) * self.dealias

    def physical(self, a_hat):
        return torch.fft.irfft2(a_hat, s=(self.size, self.size))

    def velocity(self, w_hat):
        """``(u, v)`` stacked on a new axis before the grid axes."""
        return self.physical(w_hat.unsqueeze(-3) * self.to_velocity)

    def advection_hat(self, w_hat):
        """Dealiased spectrum of ``-(u w_x + v w_y)``, written as ``-div(u w)`` (u is divergence-free)."""
        flux = self.velocity(w_hat) * self.physical(w_hat).unsqueeze(-3)
        return (torch.fft.rfft2(flux) * self.minus_divergence).sum(dim=-3)


def _if_rk4_step(w_hat, dt, spectral, decay, forcing_hat):
    """One IF-RK4 step of ``w_t = N(w) + L w`` with the diagonal linear part ``L = -decay`` exact."""
    def rhs(a):
        return spectral.advection_hat(a) + forcing_hat

    half = torch.exp(-decay * dt / 2)
    k1 = rhs(w_hat)
    k2 = rhs(half * (w_hat + dt / 2 * k1))
    k3 = rhs(half * w_hat + dt / 2 * k2)
    k4 = rhs(half**2 * w_hat + dt * half * k3)
    return half**2 * w_hat + dt / 6 * (half**2 * k1 + 2 * half * (k2 + k3) + k4)


def integrate_vorticity(w0, dt: float, steps: int, *, reynolds: float = 1000.0, drag: float = 0.0,
                        forcing: str = "none", forcing_wavenumber: int = 4,
                        forcing_amplitude: float = 1.0):
    """Integrate vorticity fields forward with the pseudo-spectral IF-RK4 solver.

    Parameters
    ----------
    w0 : array_like or torch.Tensor, shape (..., n, n)
        Initial vorticity on the periodic square ``[0, 2 pi)^2``; its mean is dropped
        and it is truncated by the 2/3 rule.
    dt : float
        Time step (no CFL check: keep ``max|u| * dt / (2 pi / n)`` below about 0.5).
    steps : int
        Number of steps.
    reynolds, drag, forcing, forcing_wavenumber, forcing_amplitude
        As in :func:`navier_stokes`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Vorticity after ``steps`` steps, shape of ``w0``; numpy in, numpy (float64) out.
    """
    check_positive(dt=dt)
    if int(steps) != steps or steps < 0:
        raise ArgumentError(f"steps must be a non-negative integer, got {steps!r}")
    w, was_numpy = as_tensor(w0)
    if w.ndim < 2 or w.shape[-2] != w.shape[-1]:
        raise ArgumentError(f"w0 must end in a square (n, n) grid, got shape {tuple(w.shape)}")
    spectral = _Spectral(w.shape[-1], w.device, w.dtype)
    decay, forcing_hat = _linear_terms(spectral, reynolds, drag, forcing, forcing_wavenumber, forcing_amplitude)
    w_hat = torch.fft.rfft2(w) * spectral.dealias
    w_hat[..., 0, 0] = 0
    for _ in range(int(steps)):
        w_hat = _if_rk4_step(w_hat, dt, spectral, decay, forcing_hat)
    return like_input(spectral.physical(w_hat), was_numpy)


def _linear_terms(spectral, reynolds, drag, forcing, forcing_wavenumber, forcing_amplitude):
    """Decay rate ``nu k^2 + alpha`` per mode and the forcing spectrum."""
    if forcing not in FORCINGS:
        raise ArgumentError(f"forcing must be one of {FORCINGS}, got {forcing!r}")
    check_positive(reynolds=reynolds)
    if drag < 0:
        raise ArgumentError(f"drag must be >= 0, got {drag}")
    size = spectral.size
    y = torch.arange(size, dtype=spectral.k2.dtype, device=spectral.k2.device) * LENGTH / size
    curl = torch.zeros_like(y)
    if forcing == "kolmogorov":
        if not 0 < forcing_wavenumber < size / 3:
            raise ArgumentError(f"forcing_wavenumber must be in (0, size / 3) = (0, {size / 3:.1f}) "
                                f"to be resolved, got {forcing_wavenumber}")
        curl = -forcing_amplitude * forcing_wavenumber * torch.cos(forcing_wavenumber * y)  # of (A sin(k y), 0)
    return spectral.k2 / reynolds + drag, torch.fft.rfft2(curl[:, None].expand(size, size))


def random_vorticity(rngs: list[np.random.Generator], size: int, peak_wavenumber: float,
                     rms_velocity: float) -> np.ndarray:
    """Gaussian random vorticity with energy spectrum ``E(k) ~ k^4 exp(-2 (k / k_p)^2)``.

    Truncated by the 2/3 rule; each field is scaled to the given root-mean-square velocity.
    """
    spectral = _Spectral(size, "cpu", torch.float64)
    k = spectral.k2.sqrt()
    # A shell of radius k holds ~2 pi k modes and |w_k|^2 = k^2 |u_k|^2, so |w_k|^2 ~ k E(k).
    amplitude = torch.sqrt(k**5 * torch.exp(-2 * (k / peak_wavenumber) ** 2)) * spectral.dealias
    noise = torch.as_tensor(np.stack([rng.standard_normal((size, size)) for rng in rngs]))
    w_hat = torch.fft.rfft2(noise) * amplitude
    u, v = spectral.velocity(w_hat).unbind(-3)
    rms = torch.sqrt((u**2 + v**2).mean(dim=(-2, -1)))
    return (spectral.physical(w_hat) * (rms_velocity / rms)[:, None, None]).numpy()


def navier_stokes(
    n_samples: int = 8,
    size: int = 64,
    frames: int = 20,
    dt: float = 0.1,
    seed: int = 0,
    *,
    forcing: str = "kolmogorov",
    reynolds: float = 1000.0,
    drag: float | None = None,
    forcing_wavenumber: int = 4,
    forcing_amplitude: float = 1.0,
    peak_wavenumber: float = 4.0,
    rms_velocity: float = 1.0,
    spinup: float = 0.0,
    max_velocity: float = 6.0,
    cfl: float = 0.7,
    velocity: bool = False,
    dtype: str = "float32",
    batch_size: int | None = 128,
    progress: bool = True,
    device=None,
) -> xr.Dataset:
    """Trajectories of 2-D turbulence, forced (Kolmogorov flow) or decaying.

    Parameters
    ----------
    n_samples : int
        Number of independent trajectories.
    size : int
        Grid points per side of the periodic square ``[0, 2 pi)^2``.
    frames : int
        Stored snapshots per trajectory, the first at the end of the spin-up.
    dt : float
        Time between snapshots; the solver takes equal substeps below the CFL limit.
    seed : int
        Seed; trajectory ``i`` depends only on ``seed`` and ``i``.
    forcing : {"kolmogorov", "none"}
        Kolmogorov forcing ``A sin(k_f y)`` in ``u`` with linear drag, or decaying turbulence.
    reynolds : float
        Reynolds number; the viscosity is ``1 / reynolds``.
    drag : float, optional
        Linear drag ``alpha``; 0.1 with Kolmogorov forcing and 0 without by default.
    forcing_wavenumber, forcing_amplitude : int, float
        ``k_f`` and ``A`` of the Kolmogorov forcing.
    peak_wavenumber : float
        Peak ``k_p`` of the initial energy spectrum ``k^4 exp(-2 (k / k_p)^2)``.
    rms_velocity : float
        Root-mean-square velocity of the initial fields.
    spinup : float
        Time integrated before the first snapshot.
    max_velocity : float
        Bound on ``|u|`` that sets the substep ``cfl * dx / max_velocity`` (the default
        setups stay below 6); the run stops with an error if the flow exceeds it by 50%.
    cfl : float
        Courant number of a substep at ``max_velocity``.
    velocity : bool
        Also store the velocity components ``u`` and ``v``.
    dtype : {"float32", "float64"}
        Precision of the computation and of the returned values.
    batch_size : int or None
        Trajectories computed at once (None: all); small batches are faster on CPU caches
        and bound memory. Results do not depend on it.
    progress : bool
        Show a progress bar over frames.
    device : str or torch.device, optional
        Torch device to compute on (CPU by default; a GPU makes the paper preset fast).

    Returns
    -------
    xarray.Dataset
        ``vorticity`` (and ``u``, ``v`` if asked) with dims ``(sample, time, y, x)``.
    """
    check_positive(n_samples=n_samples, size=size, frames=frames, dt=dt, peak_wavenumber=peak_wavenumber,
                   rms_velocity=rms_velocity, max_velocity=max_velocity, cfl=cfl)
    if spinup < 0:
        raise ArgumentError(f"spinup must be >= 0, got {spinup}")
    drag = (0.1 if forcing == "kolmogorov" else 0.0) if drag is None else drag
    torch_dtype, device = resolve(dtype, device)
    spectral = _Spectral(size, device, torch_dtype)
    decay, forcing_hat = _linear_terms(spectral, reynolds, drag, forcing, forcing_wavenumber, forcing_amplitude)
    step = LENGTH / size
    # Fixed substeps from the parameters, so results do not depend on batching.
    substeps = max(1, math.ceil(dt * max_velocity / (cfl * step)))
    spinup_steps = math.ceil(spinup / (dt / substeps))
    initial = random_vorticity(sample_rngs(seed, n_samples), size, peak_wavenumber, rms_velocity)
    names = ("vorticity", "u", "v") if velocity else ("vorticity",)
    out = {name: np.empty((n_samples, frames, size, size), dtype=dtype) for name in names}
    with progress_bar(frames * n_samples, progress, "navier-stokes") as bar:
        for chunk in batches(n_samples, batch_size):
            w_hat = torch.fft.rfft2(torch.as_tensor(initial[chunk], dtype=torch_dtype, device=device))
            for k in range(frames):
                for _ in range(spinup_steps if k == 0 else substeps):
                    w_hat = _if_rk4_step(w_hat, dt / substeps, spectral, decay, forcing_hat)
                u, v = spectral.velocity(w_hat).unbind(-3)
                fastest = float(torch.sqrt(u**2 + v**2).max())
                if not fastest <= 1.5 * max_velocity:  # also catches NaN
                    raise FloatingPointError(
                        f"the flow reached |u| = {fastest:.3g} before frame {k}, beyond max_velocity="
                        f"{max_velocity}; raise max_velocity (smaller substeps)")
                out["vorticity"][chunk, k] = spectral.physical(w_hat).cpu().numpy()
                if velocity:
                    out["u"][chunk, k] = u.cpu().numpy()
                    out["v"][chunk, k] = v.cpu().numpy()
                bar.update(chunk.stop - chunk.start)
    kind = "Kolmogorov-forced" if forcing == "kolmogorov" else "decaying"
    meta = {"vorticity": {"units": "1", "long_name": "relative vorticity (v_x - u_y)"},
            "u": {"units": "1", "long_name": "velocity, x component"},
            "v": {"units": "1", "long_name": "velocity, y component"}}
    return cube_dataset(
        {name: (values, meta[name]) for name, values in out.items()},
        {},
        x=step * np.arange(size),
        time=spinup_steps * dt / substeps + dt * np.arange(frames),
        attrs={
            "title": f"2-D incompressible Navier-Stokes, {kind} turbulence (pseudo-spectral, 2/3 dealiasing, IF-RK4)",
            "equation": EQUATION,
            "length": LENGTH, "grid_spacing": step, "dt": dt, "solver_substeps": substeps,
            "forcing": forcing, "reynolds": reynolds, "viscosity": 1 / reynolds, "drag": drag,
            "forcing_wavenumber": forcing_wavenumber, "forcing_amplitude": forcing_amplitude,
            "peak_wavenumber": peak_wavenumber, "rms_velocity": rms_velocity, "spinup": spinup,
            "max_velocity": max_velocity, "cfl": cfl, "dtype": dtype, "seed": seed,
        },
    )

"""2-D linear advection ``u_t + c . grad(u) = 0`` on a periodic square.

Each trajectory carries a smooth random tracer at its own constant velocity. The
sample data use the exact solution (the initial field translated, done as a phase
shift in Fourier space); :func:`advect_fd` is a finite-difference integrator for
baselines that must step a reconstructed initial state forward.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from ._common import (as_tensor, batches, check_positive, cube_dataset, like_input, progress_bar,
                      resolve, sample_rngs, spectral_coords)
from ..errors import ArgumentError

EQUATION = "u_t + c_x u_x + c_y u_y = 0 (constant c per trajectory, periodic square)"


def _split_velocity(velocity: torch.Tensor, batch_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    if velocity.shape[-1:] != (2,):
        raise ArgumentError("velocity must end in an axis of 2 components (c_x, c_y), got shape "
                            f"{tuple(velocity.shape)}")
    try:
        torch.broadcast_shapes(velocity.shape[:-1], batch_shape)
    except RuntimeError:
        raise ArgumentError(
            f"velocity of shape {tuple(velocity.shape)} does not broadcast with fields whose leading "
            f"shape is {tuple(batch_shape)}; give one (c_x, c_y) pair per field"
        ) from None
    return velocity[..., 0, None, None], velocity[..., 1, None, None]


def _translate(u_hat, cx, cy, ky, kx, t, size):
    """Irfft2 of the spectrum translated by ``(cx, cy) * t``: the exact solution at time ``t``."""
    return torch.fft.irfft2(u_hat * torch.exp(-1j * (kx * cx + ky * cy) * t), s=(size, size))


def advection_exact(u0, velocity, t, dx: float = 1.0):
    """Exact solution: the periodic field ``u0`` translated by ``velocity * t``.

    Parameters
    ----------
    u0 : array_like or torch.Tensor, shape (..., n, n)
        Initial fields on a square periodic grid.
    velocity : array_like, shape (..., 2)
        ``(c_x, c_y)`` per field, broadcast against the leading dims of ``u0``.
    t : float or 1-D array_like
        Time(s) to evaluate at. A 1-D array adds a time axis before the grid axes.
    dx : float
        Grid spacing (the domain length is ``n * dx``).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Shape ``(..., n, n)`` for a scalar ``t``, ``(..., len(t), n, n)`` otherwise; numpy
        in, numpy (float64) out. Exact to round-off for fields without content at the
        Nyquist wavenumber.
    """
    u0, was_numpy = as_tensor(u0)
    size = u0.shape[-1]
    if u0.ndim < 2 or u0.shape[-2] != size:
        raise ArgumentError(f"u0 must end in a square (n, n) grid, got shape {tuple(u0.shape)}")
    cx, cy = _split_velocity(torch.as_tensor(velocity, dtype=u0.dtype, device=u0.device), u0.shape[:-2])
    ky, kx = spectral_coords(size, size * dx, u0.device, u0.dtype)
    u_hat = torch.fft.rfft2(u0)
    times = np.asarray(t, dtype=float)
    if times.ndim > 1:
        raise ArgumentError(f"t must be a number or a 1-D array of times, got shape {times.shape}")
    if times.ndim == 0:
        return like_input(_translate(u_hat, cx, cy, ky, kx, float(times), size), was_numpy)
    frames = [_translate(u_hat, cx, cy, ky, kx, float(time), size) for time in times]
    return like_input(torch.stack(frames, dim=-3), was_numpy)


def _upwind3_tendency(u, cx, cy, dx):
    """``-(c . grad u)`` with third-order upwind-biased differences.

    Written as the fourth-order central difference plus ``|c|`` times a fourth-difference
    damping, which equals the upwind-biased stencil for either sign of ``c``.
    """
    def derivative(c, dim):
        p1, m1 = torch.roll(u, -1, dim), torch.roll(u, 1, dim)
        p2, m2 = torch.roll(u, -2, dim), torch.roll(u, 2, dim)
        central = (8 * (p1 - m1) - (p2 - m2)) / 12
        damping = (p2 + m2 - 4 * (p1 + m1) + 6 * u) / 12
        return c * central + c.abs() * damping

    return -(derivative(cx, -1) + derivative(cy, -2)) / dx


def advect_fd(u0, velocity, dx: float, dt: float, steps: int, *, cfl: float = 0.8):
    """Integrate ``u_t + c . grad(u) = 0`` forward with finite differences.

    Third-order upwind-biased differences in space and SSP Runge-Kutta 3 in time on a
    periodic grid. Each interval ``dt`` is split into equal substeps so that the Courant
    number ``(|c_x| + |c_y|) * substep / dx`` stays below ``cfl``; any ``dt`` is stable.

    Parameters
    ----------
    u0 : array_like or torch.Tensor, shape (..., ny, nx)
        Initial fields (e.g. a reconstructed first frame).
    velocity : array_like, shape (..., 2)
        ``(c_x, c_y)`` per field, broadcast against the leading dims of ``u0``.
    dx : float
        Grid spacing, the same in x and y.
    dt : float
        Time between returned states (e.g. the frame interval of a dataset).
    steps : int
        Number of intervals ``dt`` to integrate.
    cfl : float
        Largest Courant number of a substep.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The trajectory at times ``0, dt, ..., steps * dt``, shape ``(..., steps + 1, ny, nx)``;
        numpy in, numpy (float64) out.
    """
    check_positive(dx=dx, dt=dt, cfl=cfl)
    if int(steps) != steps or steps < 0:
        raise ArgumentError(f"steps must be a non-negative integer, got {steps!r}")
    u, was_numpy = as_tensor(u0)
    if u.ndim < 2:
        raise ArgumentError(f"u0 must end in a (ny, nx) grid, got shape {tuple(u.shape)}")
    cx, cy = _split_velocity(torch.as_tensor(velocity, dtype=u.dtype, device=u.device), u.shape[:-2])
    courant = float((cx.abs() + cy.abs()).max()) * dt / dx
    substeps = max(1, math.ceil(courant / cfl))
    h = dt / substeps
    u = u.expand(torch.broadcast_shapes(u.shape, cx.shape)).clone()

    def tendency(v):
        return _upwind3_tendency(v, cx, cy, dx)

    trajectory = [u]
    for _ in range(int(steps)):
        for _ in range(substeps):
            u1 = u + h * tendency(u)
            u2 = 0.75 * u + 0.25 * (u1 + h * tendency(u1))
            u = u / 3 + 2 / 3 * (u2 + h * tendency(u2))
        trajectory.append(u)
    return like_input(torch.stack(trajectory, dim=-3), was_numpy)


def random_fields(rngs: list[np.random.Generator], size: int, modes: int) -> np.ndarray:
    """Smooth random periodic fields: Fourier modes with ``1 <= |m| <= modes``, amplitude ``~ 1/|m|``.

    Each field has zero mean and unit standard deviation and no content above ``modes``.
    """
    m = np.arange(-modes, modes + 1)
    my, mx = np.meshgrid(m, m, indexing="ij")
    norm = np.hypot(mx, my)
    keep = (norm >= 1) & (norm <= modes)
    my, mx, norm = my[keep], mx[keep], norm[keep]
    coefficients = np.zeros((len(rngs), size, size), dtype=complex)
    for i, rng in enumerate(rngs):
        draws = rng.standard_normal((2, norm.size))
        coefficients[i, my % size, mx % size] = (draws[0] + 1j * draws[1]) / norm
    fields = np.fft.ifft2(coefficients).real
    fields -= fields.mean(axis=(-2, -1), keepdims=True)
    return fields / fields.std(axis=(-2, -1), keepdims=True)


def advection(
    n_samples: int = 8,
    size: int = 32,
    frames: int = 20,
    dt: float = 0.05,
    seed: int = 0,
    *,
    length: float = 1.0,
    max_speed: float = 1.0,
    modes: int = 4,
    dtype: str = "float32",
    batch_size: int | None = 128,
    progress: bool = True,
    device=None,
) -> xr.Dataset:
    """Trajectories of a random smooth tracer advected at a random constant velocity.

    Parameters
    ----------
    n_samples : int
        Number of independent trajectories.
    size : int
        Grid points per side of the periodic square ``[0, length)^2``.
    frames : int
        Stored snapshots per trajectory, the first at ``t = 0``.
    dt : float
        Time between snapshots.
    seed : int
        Seed; trajectory ``i`` depends only on ``seed`` and ``i``.
    length : float
        Side of the square domain.
    max_speed : float
        Each velocity component is drawn uniformly from ``[-max_speed, max_speed]``.
    modes : int
        Largest wavenumber (in cycles per domain) in the initial fields; must be below ``size / 2``.
    dtype : {"float32", "float64"}
        Precision of the computation and of the returned values.
    batch_size : int or None
        Trajectories computed at once (None: all); small batches are faster on CPU caches
        and bound memory. Results do not depend on it.
    progress : bool
        Show a progress bar over frames.
    device : str or torch.device, optional
        Torch device to compute on (CPU by default).

    Returns
    -------
    xarray.Dataset
        ``tracer`` with dims ``(sample, time, y, x)`` and the per-trajectory velocity
        ``velocity_x``, ``velocity_y`` (dim ``sample``).
    """
    check_positive(n_samples=n_samples, size=size, frames=frames, dt=dt, length=length,
                   max_speed=max_speed, modes=modes)
    if not 2 * modes < size:
        raise ArgumentError(f"modes={modes} must be below size / 2 = {size / 2} to stay resolved; "
                            "lower modes or raise size")
    torch_dtype, device = resolve(dtype, device)
    rngs = sample_rngs(seed, n_samples)
    initial = random_fields(rngs, size, modes)
    velocity = np.stack([rng.uniform(-max_speed, max_speed, 2) for rng in rngs])
    ky, kx = spectral_coords(size, length, device, torch_dtype)
    times = dt * np.arange(frames)
    tracer = np.empty((n_samples, frames, size, size), dtype=dtype)
    with progress_bar(frames * n_samples, progress, "advection") as bar:
        for chunk in batches(n_samples, batch_size):
            u_hat = torch.fft.rfft2(torch.as_tensor(initial[chunk], dtype=torch_dtype, device=device))
            c = torch.as_tensor(velocity[chunk], dtype=torch_dtype, device=device)
            cx, cy = c[:, 0, None, None], c[:, 1, None, None]
            for k, time in enumerate(times):
                tracer[chunk, k] = _translate(u_hat, cx, cy, ky, kx, time, size).cpu().numpy()
                bar.update(chunk.stop - chunk.start)
    step = length / size
    return cube_dataset(
        {"tracer": (tracer, {"units": "1", "long_name": "advected passive tracer"})},
        {
            "velocity_x": (velocity[:, 0], {"units": "1", "long_name": "advection velocity, x component"}),
            "velocity_y": (velocity[:, 1], {"units": "1", "long_name": "advection velocity, y component"}),
        },
        x=step * np.arange(size),
        time=times,
        attrs={
            "title": "2-D linear advection of a random tracer (exact spectral solution)",
            "equation": EQUATION,
            "length": length, "grid_spacing": step, "dt": dt, "max_speed": max_speed, "modes": modes,
            "dtype": dtype, "seed": seed,
        },
    )

"""Rotating shallow water on a periodic square (nondimensional).

    h_t + (h u)_x + (h v)_y = 0
    u_t + u u_x + v u_y - f v + g h_x = nu lap(u)
    v_t + u v_x + v v_y + f u + g h_y = nu lap(v)

Solved on an Arakawa C-grid (h at cell centres, u and v on cell faces) with the
continuity equation in flux form, so the total mass ``sum(h)`` is conserved to
round-off, and the momentum equations in vector-invariant form with the
energy-conserving potential-vorticity flux of Sadourny (1975); classic RK4 in time.
Stored fields are at cell centres (face velocities interpolated to fourth order).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from ._common import (as_tensor, batches, check_positive, cube_dataset, like_input, progress_bar,
                      resolve, sample_rngs)
from ..errors import ArgumentError

EQUATION = ("h_t + (h u)_x + (h v)_y = 0; u_t + u u_x + v u_y - f v + g h_x = nu lap(u); "
            "v_t + u v_x + v v_y + f u + g h_y = nu lap(v) (periodic square)")


def _xm(a):  # value at i - 1
    return torch.roll(a, 1, -1)


def _xp(a):  # value at i + 1
    return torch.roll(a, -1, -1)


def _ym(a):  # value at j - 1
    return torch.roll(a, 1, -2)


def _yp(a):  # value at j + 1
    return torch.roll(a, -1, -2)


def _laplacian(a, dx):
    return (_xm(a) + _xp(a) + _ym(a) + _yp(a) - 4 * a) / dx**2


def _tendencies(h, u, v, f, g, nu, dx):
    """Time derivatives of ``(h, u, v)`` on the C-grid.

    ``h[j, i]`` sits at the centre of cell ``(i, j)``, ``u[j, i]`` on its west face,
    ``v[j, i]`` on its south face; vorticity lives on the south-west corner.
    """
    mass_x = 0.5 * (h + _xm(h)) * u
    mass_y = 0.5 * (h + _ym(h)) * v
    dh = -(_xp(mass_x) - mass_x + _yp(mass_y) - mass_y) / dx
    vorticity = (v - _xm(v) - u + _ym(u)) / dx
    h_corner = 0.25 * (h + _xm(h) + _ym(h) + _xm(_ym(h)))
    pv = (f + vorticity) / h_corner
    pv_mass_y = pv * 0.5 * (mass_y + _xm(mass_y))  # q * V at corners
    pv_mass_x = pv * 0.5 * (mass_x + _ym(mass_x))  # q * U at corners
    bernoulli = g * h + 0.25 * (u**2 + _xp(u) ** 2 + v**2 + _yp(v) ** 2)
    du = 0.5 * (pv_mass_y + _yp(pv_mass_y)) - (bernoulli - _xm(bernoulli)) / dx
    dv = -0.5 * (pv_mass_x + _xp(pv_mass_x)) - (bernoulli - _ym(bernoulli)) / dx
    if nu:
        du = du + nu * _laplacian(u, dx)
        dv = dv + nu * _laplacian(v, dx)
    return dh, du, dv


def _rk4_step(state, dt, *args):
    k1 = _tendencies(*state, *args)
    k2 = _tendencies(*(s + 0.5 * dt * k for s, k in zip(state, k1)), *args)
    k3 = _tendencies(*(s + 0.5 * dt * k for s, k in zip(state, k2)), *args)
    k4 = _tendencies(*(s + dt * k for s, k in zip(state, k3)), *args)
    return tuple(s + dt / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4))


def _centred_derivatives(a, dx):
    """Fourth-order centred ``(d/dx, d/dy)`` on a periodic grid."""
    def derivative(dim):
        return (8 * (torch.roll(a, -1, dim) - torch.roll(a, 1, dim))
                - (torch.roll(a, -2, dim) - torch.roll(a, 2, dim))) / (12 * dx)

    return derivative(-1), derivative(-2)


def _face_to_centre(a, dim):
    """Fourth-order interpolation from faces ``i`` to centres ``i + 1/2`` along ``dim``."""
    return (9 * (a + torch.roll(a, -1, dim)) - (torch.roll(a, 1, dim) + torch.roll(a, -2, dim))) / 16


def shallow_water_residual(h, u, v, dx: float, dt: float, f, g: float = 1.0, nu: float = 0.0):
    """Residual of the rotating shallow-water equations along a trajectory.

    Evaluates the left-hand side minus the right-hand side of the three equations in the
    module docstring with fourth-order centred differences: in time over frames
    ``k - 2 .. k + 2``, in space on the periodic grid with all fields collocated (as stored
    in the sample data; the viscous term is second order). A trajectory of the equations
    gives a residual of the size of the discretisation error (shrinking as ``dt**4`` and
    ``dx**4``); noise or dynamically inconsistent reconstructions give a much larger one.

    Parameters
    ----------
    h, u, v : array_like or torch.Tensor, shape (..., time, y, x)
        Depth and velocity at the same grid points, frames ``dt`` apart.
    dx : float
        Grid spacing, the same in x and y.
    dt : float
        Time between frames.
    f : float or array_like
        Coriolis parameter, a scalar or one value per leading index (e.g. per sample).
    g : float
        Gravity.
    nu : float
        Viscosity of the momentum equations.

    Returns
    -------
    tuple of 3 arrays, each shape (..., time - 4, y, x)
        Residuals of the mass, x-momentum and y-momentum equations at the interior
        frames ``2 .. time - 3``; numpy in, numpy (float64) out.
    """
    check_positive(dx=dx, dt=dt, g=g)
    h, was_numpy = as_tensor(h)
    u, v = (as_tensor(a)[0].to(h) for a in (u, v))
    if not h.shape == u.shape == v.shape or h.ndim < 3 or h.shape[-3] < 5:
        raise ArgumentError(f"h, u, v must share a shape (..., time >= 5, y, x); got "
                            f"{tuple(h.shape)}, {tuple(u.shape)}, {tuple(v.shape)}")
    f = torch.as_tensor(f, dtype=h.dtype, device=h.device)[..., None, None, None]

    def time_derivative(a):
        return (8 * (a[..., 3:-1, :, :] - a[..., 1:-3, :, :]) - (a[..., 4:, :, :] - a[..., :-4, :, :])) / (12 * dt)

    hm, um, vm = (a[..., 2:-2, :, :] for a in (h, u, v))
    hu_x, _ = _centred_derivatives(hm * um, dx)
    _, hv_y = _centred_derivatives(hm * vm, dx)
    h_x, h_y = _centred_derivatives(hm, dx)
    u_x, u_y = _centred_derivatives(um, dx)
    v_x, v_y = _centred_derivatives(vm, dx)
    mass = time_derivative(h) + hu_x + hv_y
    momentum_x = time_derivative(u) + um * u_x + vm * u_y - f * vm + g * h_x - nu * _laplacian(um, dx)
    momentum_y = time_derivative(v) + um * v_x + vm * v_y + f * um + g * h_y - nu * _laplacian(vm, dx)
    return tuple(like_input(r, was_numpy) for r in (mass, momentum_x, momentum_y))


def _periodic_bumps(rng, x, length, n_bumps, amplitude_range, width_range):
    """Sum of smooth periodic bumps ``a exp(k (cos(2 pi d / L) - 1))``, Gaussian of width ``w`` near the centre."""
    field = np.zeros((x.size, x.size))
    for _ in range(rng.integers(n_bumps[0], n_bumps[1] + 1)):
        amplitude = rng.uniform(*amplitude_range) * rng.choice([-1.0, 1.0])
        width = rng.uniform(*width_range)
        centre = rng.uniform(0, length, 2)
        concentration = (length / (2 * np.pi * width)) ** 2
        phase = [2 * np.pi * (x - c) / length for c in centre]
        field += amplitude * np.exp(concentration * (np.cos(phase[1])[:, None] + np.cos(phase[0])[None, :] - 2))
    return field


def shallow_water(
    n_samples: int = 8,
    size: int = 32,
    frames: int = 20,
    dt: float = 0.1,
    seed: int = 0,
    *,
    length: float = 2 * np.pi,
    gravity: float = 1.0,
    depth_range: tuple[float, float] = (0.8, 1.2),
    coriolis_range: tuple[float, float] = (0.5, 2.0),
    n_bumps: tuple[int, int] = (1, 3),
    amplitude_range: tuple[float, float] = (0.05, 0.15),
    width_range: tuple[float, float] = (0.3, 0.7),
    viscosity: float = 0.0,
    cfl: float = 0.5,
    dtype: str = "float32",
    batch_size: int | None = 128,
    progress: bool = True,
    device=None,
) -> xr.Dataset:
    """Trajectories of rotating shallow water released from random bumps in the depth.

    Each trajectory starts at rest with a random depth, Coriolis parameter and a few
    periodic Gaussian bumps (raised or sunk) in ``h``, and adjusts by gravity waves towards
    geostrophic balance.

    Parameters
    ----------
    n_samples : int
        Number of independent trajectories.
    size : int
        Grid cells per side of the periodic square ``[0, length)^2``.
    frames : int
        Stored snapshots per trajectory, the first at ``t = 0``.
    dt : float
        Time between snapshots; the solver takes equal substeps below the CFL limit.
    seed : int
        Seed; trajectory ``i`` depends only on ``seed`` and ``i``.
    length : float
        Side of the square domain.
    gravity : float
        Gravitational acceleration ``g``.
    depth_range, coriolis_range : (float, float)
        Uniform ranges of the depth at rest ``H`` and of the Coriolis parameter ``f``.
    n_bumps : (int, int)
        Inclusive range of the number of bumps.
    amplitude_range : (float, float)
        Range of bump amplitudes as a fraction of the mean depth (random sign).
    width_range : (float, float)
        Range of bump widths (Gaussian standard deviation).
    viscosity : float
        Laplacian viscosity ``nu`` of the momentum equations (the scheme is stable without).
    cfl : float
        Largest gravity-wave Courant number ``sqrt(g h_max) * substep / dx``.
    dtype : {"float32", "float64"}
        Precision of the computation and of the returned values; use float64 to see mass
        conserved to round-off.
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
        ``h``, ``u``, ``v`` with dims ``(sample, time, y, x)`` at cell centres, and the
        per-trajectory ``coriolis`` and ``rest_depth`` (dim ``sample``).
    """
    check_positive(n_samples=n_samples, size=size, frames=frames, dt=dt, length=length, gravity=gravity,
                   cfl=cfl)
    for name, (low, high) in {"depth_range": depth_range, "coriolis_range": coriolis_range,
                              "n_bumps": n_bumps, "amplitude_range": amplitude_range,
                              "width_range": width_range}.items():
        if not 0 <= low <= high:
            raise ArgumentError(f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)}")
    if width_range[0] == 0:
        raise ArgumentError(f"bump widths must be positive, got width_range={width_range}")
    if depth_range[0] == 0 or n_bumps[1] * amplitude_range[1] >= 1:
        raise ArgumentError("the depth must stay positive: need depth_range[0] > 0 and "
                            f"n_bumps[1] * amplitude_range[1] < 1, got {depth_range}, {n_bumps}, {amplitude_range}")
    if viscosity < 0:
        raise ArgumentError(f"viscosity must be >= 0, got {viscosity}")
    torch_dtype, device = resolve(dtype, device)
    step = length / size
    x = step * (np.arange(size) + 0.5)
    rngs = sample_rngs(seed, n_samples)
    depth = np.array([rng.uniform(*depth_range) for rng in rngs])
    coriolis = np.array([rng.uniform(*coriolis_range) for rng in rngs])
    bumps = np.stack([_periodic_bumps(rng, x, length, n_bumps, amplitude_range, width_range) for rng in rngs])
    h0 = depth[:, None, None] * (1 + bumps)
    # Fixed substeps from the parameter ranges, so results do not depend on batching.
    fastest_wave = math.sqrt(gravity * depth_range[1] * (1 + n_bumps[1] * amplitude_range[1]))
    substeps = max(1, math.ceil(dt * fastest_wave / (cfl * step)))
    shape = (n_samples, frames, size, size)
    out = {name: np.empty(shape, dtype=dtype) for name in ("h", "u", "v")}
    with progress_bar(frames * n_samples, progress, "shallow water") as bar:
        for chunk in batches(n_samples, batch_size):
            h = torch.as_tensor(h0[chunk], dtype=torch_dtype, device=device)
            state = (h, torch.zeros_like(h), torch.zeros_like(h))
            f = torch.as_tensor(coriolis[chunk], dtype=torch_dtype, device=device)[:, None, None]
            for k in range(frames):
                if k:
                    for _ in range(substeps):
                        state = _rk4_step(state, dt / substeps, f, gravity, viscosity, step)
                h, u, v = state
                if not torch.isfinite(h).all():
                    raise FloatingPointError(f"shallow water blew up before frame {k}; lower cfl (now {cfl}) "
                                             "or the bump amplitudes")
                out["h"][chunk, k] = h.cpu().numpy()
                out["u"][chunk, k] = _face_to_centre(u, -1).cpu().numpy()
                out["v"][chunk, k] = _face_to_centre(v, -2).cpu().numpy()
                bar.update(chunk.stop - chunk.start)
    return cube_dataset(
        {
            "h": (out["h"], {"units": "1", "long_name": "fluid depth"}),
            "u": (out["u"], {"units": "1", "long_name": "velocity, x component"}),
            "v": (out["v"], {"units": "1", "long_name": "velocity, y component"}),
        },
        {
            "coriolis": (coriolis, {"units": "1", "long_name": "Coriolis parameter f"}),
            "rest_depth": (depth, {"units": "1", "long_name": "depth H of the fluid at rest, without the bumps"}),
        },
        x=x,
        time=dt * np.arange(frames),
        attrs={
            "title": "Rotating shallow water released from random depth bumps (C-grid, RK4)",
            "equation": EQUATION,
            "length": length, "grid_spacing": step, "dt": dt, "solver_substeps": substeps,
            "gravity": gravity, "depth_range": list(depth_range), "coriolis_range": list(coriolis_range),
            "n_bumps": list(n_bumps), "amplitude_range": list(amplitude_range),
            "width_range": list(width_range), "viscosity": viscosity, "cfl": cfl,
            "dtype": dtype, "seed": seed,
        },
    )

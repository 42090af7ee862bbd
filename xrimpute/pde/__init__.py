"""Sample data from PDE solvers: advection, rotating shallow water, 2-D Navier-Stokes.

Every generator returns a CF-annotated ``(sample, time, y, x)`` dataset, is
vectorised over trajectories (torch, CPU or ``device=``) and is deterministic by
seed. :data:`PRESETS` names the sizes used by the tests (``tiny``), the benchmarks
(``small``) and paper-like data (``paper``); :func:`generate` runs one.
"""
from __future__ import annotations

import xarray as xr

from ..errors import ArgumentError
from .advection import advect_fd, advection, advection_exact
from .navier_stokes import integrate_vorticity, navier_stokes
from .shallow_water import shallow_water, shallow_water_residual

GENERATORS = {"advection": advection, "shallow_water": shallow_water, "navier_stokes": navier_stokes}

PRESETS = {
    "advection": {
        "tiny": dict(n_samples=8, size=32, frames=16, dt=0.05, progress=False),
        "small": dict(n_samples=256, size=64, frames=50, dt=0.02),
        "paper": dict(n_samples=1152, size=64, frames=50, dt=0.02),
    },
    "shallow_water": {
        "tiny": dict(n_samples=8, size=32, frames=16, dt=0.1, progress=False),
        "small": dict(n_samples=64, size=64, frames=50, dt=0.1),
        "paper": dict(n_samples=1152, size=64, frames=50, dt=0.1),
    },
    "navier_stokes": {
        "tiny": dict(n_samples=8, size=32, frames=16, dt=0.1, progress=False),
        "small": dict(n_samples=32, size=64, frames=50, dt=0.1),
        "paper": dict(n_samples=1152, size=64, frames=100, dt=0.1, spinup=2.0),
    },
}


def generate(name: str, preset: str = "tiny", seed: int = 0, **overrides) -> xr.Dataset:
    """Generate the sample data ``name`` at a preset size.

    Parameters
    ----------
    name : {"advection", "shallow_water", "navier_stokes"}
        Which equation.
    preset : {"tiny", "small", "paper"}
        Size: tests, benchmarks, or paper-like data.
    seed : int
        Seed of the random initial conditions and parameters.
    **overrides
        Keyword arguments of the generator that replace the preset's.

    Returns
    -------
    xarray.Dataset
    """
    if name not in PRESETS:
        raise ArgumentError(f"unknown dataset {name!r}; choose one of {sorted(PRESETS)}")
    if preset not in PRESETS[name]:
        raise ArgumentError(f"unknown preset {preset!r} for {name!r}; choose one of {sorted(PRESETS[name])}")
    return GENERATORS[name](**{**PRESETS[name][preset], "seed": seed, **overrides})


__all__ = ["PRESETS", "GENERATORS", "generate", "advection", "advection_exact", "advect_fd",
           "shallow_water", "shallow_water_residual", "navier_stokes", "integrate_vorticity"]

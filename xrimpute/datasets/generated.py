"""PDE sample data, generated once and cached as netCDF.

Files live in ``cache_dir() / "generated"``, named after the equation, preset, seed and
a short hash of all parameters that change the values. Each file is written
atomically (:func:`xrimpute.atomic.atomic_write`), with the
umask's default permissions so that a shared cache works, and has a
sidecar ``<file>.sha256``; every load checks the hash, and a corrupted or truncated
file is regenerated with a warning. Loads read the whole file into memory and close
it, so a returned dataset never depends on the file staying in place. Each cube lies on a
periodic square, and its ``x`` and ``y`` coordinates say so in a ``period`` attribute (the
square's length), from which a fit wraps the grid round along both.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pooch
import xarray as xr

from ..pde import PRESETS, generate
from ..atomic import atomic_write
from ._cache import cache_dir
from ..errors import ArgumentError

# Bump when a solver changes its output, so old cache files are not reused (2: the grid's period).
FORMAT_VERSION = 2
# Arguments that change how a run is carried out but not its values.
RUN_ONLY = {"progress", "device", "batch_size"}


def advection(preset: str = "tiny", seed: int = 0, **overrides) -> xr.Dataset:
    """Advected random tracers (see :func:`xrimpute.pde.advection`), cached.

    Parameters
    ----------
    preset : {"tiny", "small", "paper"}
        Size, from :data:`xrimpute.pde.PRESETS`.
    seed : int
        Seed of the random initial fields and velocities.
    **overrides
        Generator arguments that replace the preset's; they are part of the cache key.
    """
    return cached("advection", preset, seed, **overrides)


def shallow_water(preset: str = "tiny", seed: int = 0, **overrides) -> xr.Dataset:
    """Rotating shallow water (see :func:`xrimpute.pde.shallow_water`), cached.

    Parameters are as for :func:`advection`.
    """
    return cached("shallow_water", preset, seed, **overrides)


def navier_stokes(preset: str = "tiny", seed: int = 0, **overrides) -> xr.Dataset:
    """2-D turbulence (see :func:`xrimpute.pde.navier_stokes`), cached.

    Parameters are as for :func:`advection`.
    """
    return cached("navier_stokes", preset, seed, **overrides)


def cache_path(name: str, preset: str, seed: int, **overrides) -> Path:
    """Where the cached file for these arguments lives (whether or not it exists yet)."""
    if name not in PRESETS or preset not in PRESETS[name]:
        raise ArgumentError(f"unknown dataset/preset {name!r}/{preset!r}; choose from "
                            f"{ {n: sorted(p) for n, p in PRESETS.items()} }")
    params = {**PRESETS[name][preset], **overrides}
    key = {k: v for k, v in params.items() if k not in RUN_ONLY}
    key |= {"name": name, "seed": seed, "format_version": FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()[:10]
    return cache_dir() / "generated" / f"{name}-{preset}-seed{seed}-{digest}.nc"


def cached(name: str, preset: str = "tiny", seed: int = 0, **overrides) -> xr.Dataset:
    """Read the sample data from the cache, generating and caching it first if needed."""
    path = cache_path(name, preset, seed, **overrides)
    if path.exists():
        if _intact(path):
            return _load(path)
        warnings.warn(f"cached sample data {path} does not match its checksum (corrupted or "
                      "truncated); generating it again", RuntimeWarning, stacklevel=3)
    _write(generate(name, preset, seed, **overrides), path)
    return _load(path)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _intact(path: Path) -> bool:
    checksum = _checksum_path(path)
    return checksum.exists() and checksum.read_text().strip() == pooch.file_hash(str(path))


def _load(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def _write(ds: xr.Dataset, path: Path) -> None:
    with atomic_write(path) as partial:
        ds.to_netcdf(partial)
        digest = pooch.file_hash(str(partial))
    with atomic_write(_checksum_path(path)) as partial:
        partial.write_text(digest + "\n")

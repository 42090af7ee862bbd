"""Reading and writing cubes as files: one opener and one atomic writer, used by the command line.

:func:`open_cube` keeps the data's own dim names (a PDE sample stays on ``y`` /
``x``); for ERA5 archives whose dims should become ``time`` / ``latitude`` /
``longitude``, use :func:`xrimpute.datasets.open_era5`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import xarray as xr

from .cube import CubeError, cube_variables, find_axes
from .datasets.era5 import _open_source

SUFFIXES = (".nc", ".nc4", ".netcdf", ".zarr")


def open_cube(source, variables: str | list[str] | None = None, chunks=None) -> xr.Dataset:
    """Open a file, a glob of files or a zarr store as a Dataset that xrimpute can work on.

    Parameters
    ----------
    source : str, path or list
        A netCDF or GRIB file, a glob such as ``"data/*.nc"``, a list of files,
        or a zarr store (a local directory or a URL).
    variables : str or list of str, optional
        Data variables to keep (default: every variable with time, latitude and
        longitude dims).
    chunks : dict, int, str or None
        Dask chunks passed to xarray; None (default) reads lazily without dask,
        so that the data is loaded when used.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist or the glob matches nothing.
    xrimpute.cube.CubeError
        No time, latitude and longitude dims were found, or a variable is unknown.
    """
    ds = _open_source(source, chunks, None)
    axes = find_axes(ds)
    names = cube_variables(ds, axes)
    if variables is not None:
        wanted = [variables] if isinstance(variables, str) else list(variables)
        unknown = [name for name in wanted if name not in ds.data_vars]
        if unknown:
            raise CubeError(f"unknown variable(s) {unknown} in {source}; it has {sorted(map(str, ds.data_vars))}")
        names = wanted
    if not names:
        raise CubeError(f"{source} has no variable with the dims {axes.core}")
    return ds[names]


def check_target(path, overwrite: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` after checking that :func:`write_cube` can write there.

    Call it before long work, so that a bad name fails at once.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"cannot tell the format of {str(path)!r}: name it *.nc (netCDF) or *.zarr")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; choose another name or allow overwriting")
    return path


def write_cube(ds: xr.Dataset, path, overwrite: bool = False) -> Path:
    """Write ``ds`` to netCDF (``.nc``) or zarr (``.zarr``) so that a reader never sees half a file.

    The data goes to a temporary file or folder beside ``path``, which is then
    renamed onto ``path``; a failed write leaves nothing behind.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
    path : str or path
        Target; its suffix picks the format.
    overwrite : bool
        Replace an existing ``path`` (otherwise that is an error).

    Returns
    -------
    pathlib.Path
    """
    path = check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    zarr = path.suffix.lower() == ".zarr"
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    staged = tmp / path.name
    try:
        if zarr:
            ds.to_zarr(staged, mode="w")
        else:
            ds.to_netcdf(staged)
        if zarr and path.exists():  # a folder cannot be renamed onto another: move the old one aside first
            old = tmp / "replaced"
            os.replace(path, old)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


__all__ = ["check_target", "open_cube", "write_cube"]

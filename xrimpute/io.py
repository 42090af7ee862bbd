"""Reading and writing cubes as files: :func:`open_dataset`, the one opener of data, and :func:`write_cube`.

:func:`open_cube` keeps the data's own dim names (a PDE sample stays on ``y`` /
``x``); for ERA5 archives whose dims should become ``time`` / ``latitude`` /
``longitude``, use :func:`xrimpute.datasets.open_era5`.
"""
from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import xarray as xr
import zarr

from .atomic import atomic_write
from .errors import ArgumentError

SUFFIXES = (".nc", ".nc4", ".netcdf", ".zarr")
GRIB_SUFFIXES = (".grib", ".grib1", ".grib2", ".grb", ".grb1", ".grb2")
# cfgrib's scalar coordinates for a surface analysis: constant, and in the way of concatenation
CFGRIB_SCALARS = ("number", "step", "surface")


def _require_cfgrib() -> None:
    try:
        import cfgrib  # noqa: F401
    except (ImportError, RuntimeError) as err:  # RuntimeError: cfgrib is there but the ecCodes library is not
        raise ImportError(
            'reading GRIB files needs cfgrib and ecCodes; install them with: pip install "xrimpute[grib]"'
        ) from err


def open_grib(path, chunks=None) -> xr.Dataset:
    """A GRIB file as cfgrib reads it, without writing index files next to (possibly read-only) data."""
    _require_cfgrib()
    return xr.open_dataset(path, engine="cfgrib", chunks=chunks, backend_kwargs={"indexpath": ""})


def tidy_cfgrib(ds: xr.Dataset) -> xr.Dataset:
    """Drop cfgrib's constant scalar coords and, for analyses (step 0), index time by the valid time."""
    ds = ds.drop_vars([name for name in CFGRIB_SCALARS if name in ds.coords and ds[name].ndim == 0])
    if "valid_time" in ds.coords and ds["valid_time"].dims == ("time",):
        if (ds["valid_time"].values == ds["time"].values).all():
            ds = ds.assign_coords(time=("time", ds["valid_time"].values, ds["valid_time"].attrs))
            ds = ds.drop_vars("valid_time")
    return ds


def _open_zarr(store, chunks, storage_options) -> xr.Dataset:
    """With consolidated metadata if the store has it (one read), else from the arrays' own, quietly."""
    options = {} if chunks == "store" else dict(chunks=chunks)
    try:
        return xr.open_zarr(store, consolidated=True, storage_options=storage_options, **options)
    except (ValueError, KeyError, FileNotFoundError):
        return xr.open_zarr(store, consolidated=False, storage_options=storage_options, **options)


def open_dataset(source, chunks="store", storage_options: dict | None = None) -> xr.Dataset:
    """A Dataset from whatever names data, lazily: the one opener of xrimpute.

    Parameters
    ----------
    source : xarray.Dataset, xarray.DataArray, str, path, list or zarr store
        A Dataset (returned as it is) or DataArray; a netCDF or GRIB file; a
        glob such as ``"data/*.nc"`` or a list of files (combined by
        coordinates); a zarr store as a local path, a URL (``gs://``, ``s3://``,
        ``https://``; needs the matching fsspec backend) or a store object.
    chunks : dict, int, str or None
        Dask chunks passed to xarray; ``"store"`` (default) reads a zarr store
        with dask in its own chunks, so that a large archive is read piece by
        piece, and files lazily without dask; None reads without dask.
    storage_options : dict, optional
        For a zarr URL, passed to fsspec.

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist or the glob matches nothing.
    """
    if isinstance(source, xr.DataArray):
        return source.to_dataset(name=source.name if source.name is not None else "data")
    if isinstance(source, xr.Dataset):
        return source
    files = None if chunks == "store" else chunks
    if isinstance(source, (list, tuple)):
        missing = [str(p) for p in source if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"these files do not exist: {missing}")
        return xr.open_mfdataset(list(source), chunks=files, combine="by_coords")
    if not isinstance(source, (str, os.PathLike)):
        return _open_zarr(source, chunks, storage_options)
    text = os.fspath(source)
    if "://" in text:
        return _open_zarr(text, chunks, storage_options)
    if any(char in text for char in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(text)))
        if not matches:
            raise FileNotFoundError(f"no files match the pattern {text!r}")
        return xr.open_mfdataset(matches, chunks=files, combine="by_coords")
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{text!r} does not exist; pass a netCDF or GRIB file, a glob such as 'era5/*.nc', "
            "a list of files, or a zarr store (local path or gs:// / https:// URL)"
        )
    if path.is_dir() or path.suffix == ".zarr":
        return _open_zarr(path, chunks, storage_options)
    if path.suffix.lower() in GRIB_SUFFIXES:
        return tidy_cfgrib(open_grib(path, chunks=files))
    return xr.open_dataset(path, chunks=files)


def open_cube(source, variables: str | list[str] | None = None, chunks="store") -> xr.Dataset:
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
        As for :func:`open_dataset`: by default a zarr store is read with dask
        in its own chunks, files lazily without dask.

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
    from .cube import CubeError, cube_variables, find_axes  # io sits below every module, cube included

    ds = open_dataset(source, chunks)
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
        raise ArgumentError(f"cannot tell the format of {str(path)!r}: name it *.nc (netCDF) or *.zarr")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; choose another name or allow overwriting")
    return path


def consolidate(store) -> None:
    """Gather a zarr store's metadata into one document, so that opening it is one read, and quiet.

    zarr warns that consolidated metadata is not yet part of the format 3
    specification; xarray and zarr-python read it all the same, so the warning
    would only alarm the user.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(os.fspath(store))


def write_cube(ds: xr.Dataset, path, overwrite: bool = False) -> Path:
    """Write ``ds`` to netCDF (``.nc``) or zarr (``.zarr``) so that a reader never sees half a file.

    The data goes to a temporary file or folder beside ``path``, which is then
    renamed onto ``path`` (:func:`xrimpute.atomic.atomic_write`); a failed write leaves nothing behind.

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
    with atomic_write(path) as partial:
        if path.suffix.lower() == ".zarr":
            ds.to_zarr(partial, mode="w", consolidated=False)
            consolidate(partial)
        else:
            ds.to_netcdf(partial)
    return path


__all__ = ["GRIB_SUFFIXES", "check_target", "consolidate", "open_cube", "open_dataset", "open_grib",
           "tidy_cfgrib", "write_cube"]

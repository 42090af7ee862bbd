"""ERA5 reanalysis: a small sample fetched with pooch, and a lazy opener for real archives.

Every function here returns cubes with the same layout: dims ``time, latitude,
longitude`` (extra dims such as ``level`` sit between time and latitude),
latitude ascending (south to north), longitude as stored by the source.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pooch
import requests
import xarray as xr

from xrimpute.cube import find_axes
from xrimpute.datasets._cache import DATA_DIR_ENV, cache_dir, with_default_permissions
from xrimpute.atomic import atomic_write
from xrimpute.errors import ArgumentError
from xrimpute.io import open_dataset, open_grib, tidy_cfgrib

BASE_URL = "https://github.com/pydata/xarray-data/raw/master/"
DATA_URL_ENV = "XRIMPUTE_DATA_URL"
SAMPLE_FILE = "era5-2mt-2019-03-uk.grib"


def _sample_pooch() -> pooch.Pooch:
    """The download manager, built per call so that the cache and mirror env vars are honoured."""
    fetcher = pooch.create(
        path=cache_dir(),
        base_url=os.environ.get(DATA_URL_ENV) or BASE_URL,
        registry=None,
        env=DATA_DIR_ENV,
        retry_if_failed=2,
    )
    with resources.files("xrimpute.datasets").joinpath("registry.txt").open("r", encoding="utf-8") as registry:
        fetcher.load_registry(registry)
    return fetcher


def _latitude_ascending(ds: xr.Dataset) -> xr.Dataset:
    index = ds.indexes.get("latitude")
    if index is None or index.is_monotonic_increasing:
        return ds
    ds = ds.isel(latitude=slice(None, None, -1)) if index.is_monotonic_decreasing else ds.sortby("latitude")
    ds["latitude"].attrs.pop("stored_direction", None)  # cfgrib's note on the on-disk order
    return ds


def _write_atomic(ds: xr.Dataset, target: Path) -> None:
    """Write netCDF so that a crash or a concurrent reader never sees a half-written file."""
    with atomic_write(target) as partial:
        ds.to_netcdf(partial, engine="netcdf4", encoding={name: {"zlib": True} for name in ds.data_vars})


def _grib_sample_to_netcdf(grib: Path, target: Path) -> None:
    with open_grib(grib) as raw:
        ds = _latitude_ascending(tidy_cfgrib(raw.load()))
    for var in ds.variables.values():
        var.encoding = {}  # cfgrib's decoding notes do not apply to the netCDF copy
    for var in ds.data_vars.values():
        # GRIB_* attrs describe the GRIB encoding (scan order, first grid point), no longer true here
        var.attrs = {k: v for k, v in var.attrs.items() if not k.startswith("GRIB_")}
    ds["t2m"].attrs["standard_name"] = "air_temperature"  # cfgrib writes "unknown"
    _write_atomic(ds, target)


def era5_sample(progressbar: bool = True) -> xr.Dataset:
    """ERA5 2 m temperature over the UK, hourly, March 2019: a ready-made cube to try xrimpute on.

    Downloads ``era5-2mt-2019-03-uk.grib`` (2.5 MB) once into the xrimpute cache
    (``$XRIMPUTE_DATA_DIR``, else the OS cache folder), checks its SHA256 hash,
    and converts it to netCDF beside the download, so that only the first call
    needs cfgrib (``pip install "xrimpute[grib]"``). Set ``$XRIMPUTE_DATA_URL``
    to fetch from a mirror that serves the same file name.

    Parameters
    ----------
    progressbar : bool
        Show a progress bar while downloading.

    Returns
    -------
    xarray.Dataset
        Variable ``t2m`` in K, dims ``(time, latitude, longitude)`` of sizes
        ``(744, 33, 49)``: 0.25 degree grid, 50-58 N, 10 W - 2 E, loaded in memory.
    """
    fetcher = _sample_pooch()
    url = fetcher.get_url(SAMPLE_FILE)
    try:
        grib = with_default_permissions(Path(fetcher.fetch(SAMPLE_FILE, progressbar=progressbar)))
    except ValueError as err:  # pooch: the hash did not match after all retries
        # a cached copy that failed its check (pooch tried to replace it) is no use either
        (Path(fetcher.abspath) / SAMPLE_FILE).unlink(missing_ok=True)
        raise ArgumentError(
            f"{err} Source: {url}. If {DATA_URL_ENV} points to a mirror, check that it serves "
            "the original file; nothing was kept in the cache."
        ) from err
    except requests.RequestException as err:
        raise ConnectionError(
            f"could not download {url} ({err}). Offline? Copy {SAMPLE_FILE} into {fetcher.abspath}, "
            f"or set {DATA_URL_ENV} to a mirror that serves it."
        ) from err
    converted = grib.with_suffix(".nc")
    if not converted.exists() or converted.stat().st_mtime < grib.stat().st_mtime:
        _grib_sample_to_netcdf(grib, converted)
    with xr.open_dataset(converted, engine="netcdf4") as ds:
        return ds.load()


def _normalise(ds: xr.Dataset) -> xr.Dataset:
    """Rename the cube dims to time / latitude / longitude, order them, latitude south to north."""
    axes = find_axes(ds)
    standard = dict(zip(axes.core, ("time", "latitude", "longitude")))
    ds = ds.rename({old: new for old, new in standard.items() if old != new})
    for name, attrs in (
        ("latitude", {"standard_name": "latitude", "units": "degrees_north"}),
        ("longitude", {"standard_name": "longitude", "units": "degrees_east"}),
    ):
        if name in ds.coords:
            ds[name].attrs = {**attrs, **ds[name].attrs}
    ds = _latitude_ascending(ds)
    return ds.transpose("time", ..., "latitude", "longitude")


def open_era5(
    path_or_url,
    variables: str | list[str] | None = None,
    time=None,
    chunks="auto",
    *,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open an ERA5 archive lazily (dask) as a cube ready for xrimpute.

    Accepts a netCDF or GRIB file, a glob or a list of netCDF files (combined
    with :func:`xarray.open_mfdataset`), or a zarr store given as a local path
    or a URL (``gs://``, ``s3://``, ``https://``; needs the matching fsspec
    backend, e.g. ``gcsfs``). A convenient source for a year or more of ERA5 is
    WeatherBench2's public zarr stores, for example::

        ds = open_era5(
            "gs://weatherbench2/datasets/era5/1959-2023_01_10-wb13-6h-1440x721_with_derived_variables.zarr",
            variables="2m_temperature",
            time="2020",
        )

    Whatever the source calls its dims (``valid_time``, ``lat``, ...; found from
    CF metadata, then from common names), the result has dims ``time``,
    ``latitude``, ``longitude`` in the order ``(time, [others,] latitude,
    longitude)`` (WeatherBench2 stores ``(time, longitude, latitude)``), with
    latitude ascending (ERA5 from the Copernicus store runs north to south).
    Longitudes keep the source convention (0-360 or -180-180).

    Parameters
    ----------
    path_or_url : str, path or list
        File, glob pattern, list of files, zarr directory or zarr URL.
    variables : str or list of str, optional
        Data variables to keep; all by default.
    time : slice or str, optional
        Time selection: a slice of dates, or a string such as ``"2020"`` or
        ``"2020-03"`` that selects that whole period.
    chunks : dict, int, str or None
        Dask chunks passed to xarray; ``"auto"`` lets dask choose from the
        stored chunking.
    storage_options : dict, optional
        Passed to fsspec for URLs, e.g. ``{"token": "anon"}``.

    Returns
    -------
    xarray.Dataset
        The selection, still lazy.
    """
    ds = _normalise(open_dataset(path_or_url, chunks, storage_options))
    if variables is not None:
        wanted = [variables] if isinstance(variables, str) else list(variables)
        unknown = [name for name in wanted if name not in ds.data_vars]
        if unknown:
            raise ArgumentError(f"unknown variable(s) {unknown}; the archive has {sorted(map(str, ds.data_vars))}")
        ds = ds[wanted]
    if time is not None:
        # a string becomes a one-period slice so that an exact timestamp keeps the time dim
        selected = ds.sel(time=slice(time, time) if isinstance(time, str) else time)
        if selected.sizes.get("time") == 0:
            times = ds.indexes["time"]
            raise ArgumentError(f"time={time!r} selects no time step; the archive covers {times[0]} to {times[-1]}")
        ds = selected
    return ds

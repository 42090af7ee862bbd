"""Station networks: read CF ``timeSeries`` datasets and put their observations on a cube's grid.

A station network in CF discrete-sampling-geometry form (orthogonal
multidimensional representation) has a ``featureType: timeSeries`` global
attribute, ``lat(station)`` and ``lon(station)`` coordinates and data
variables ``data(station, time)``. :func:`grid_stations` turns it into a cube
with NaN away from stations, ready for ``fit`` with
``mask=xrimpute.stations.station_spec(stations)`` (the :class:`~xrimpute.masks.Station`
spec with the stations' positions).
"""
from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from .cube import CubeError, find_axes
from .geometry import nearest_on_axis
from .masks import Station

LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}


def _station_dim(ds: xr.Dataset) -> str:
    feature = str(ds.attrs.get("featureType", "")).lower()
    if feature != "timeseries":
        raise CubeError(
            f"not a CF timeSeries dataset: its featureType attribute is {ds.attrs.get('featureType')!r}; "
            "station data needs featureType='timeSeries' with lat(station), lon(station) and data(station, time)"
        )
    ids = [v for v in ds.variables.values() if v.attrs.get("cf_role") == "timeseries_id" and v.ndim == 1]
    if ids:
        return ids[0].dims[0]
    lat = _coordinate(ds, None, "lat")
    return lat.dims[0]


def _coordinate(ds: xr.Dataset, dim: str | None, key: str) -> xr.DataArray:
    """The station latitude or longitude variable, found by standard name, units or name."""
    standard, units, names = (("latitude", LAT_UNITS, ("lat", "latitude")) if key == "lat"
                              else ("longitude", LON_UNITS, ("lon", "longitude")))
    for name, var in ds.variables.items():
        unit = str(var.attrs.get("units", "")).lower()
        is_coord = var.attrs.get("standard_name") == standard or unit in units or str(name).lower() in names
        if is_coord and var.ndim == 1 and (dim is None or var.dims == (dim,)):
            return ds[name]
    raise CubeError(f"no {standard} variable along the station dim {dim!r}; a CF timeSeries dataset needs "
                    f"{key}(station) with standard_name '{standard}'")


def cf_positions(ds: xr.Dataset) -> np.ndarray:
    """Station positions ``(n, 2)`` as (latitude, longitude) in degrees from a CF timeSeries dataset."""
    dim = _station_dim(ds)
    return np.stack([np.asarray(_coordinate(ds, dim, key).values, dtype=float) for key in ("lat", "lon")], axis=1)


def station_spec(ds: xr.Dataset, **options) -> Station:
    """The :class:`~xrimpute.masks.Station` spec of a CF ``timeSeries`` dataset (``lat(station)``, ``lon(station)``).

    ``options`` are the spec's fields (``context_ratio``, ``static``). Put the
    observations themselves on a grid with :func:`grid_stations`.
    """
    return Station(positions=cf_positions(ds), **options)


def _time_dim(ds: xr.Dataset, station: str) -> str:
    for name, var in ds.variables.items():
        if var.ndim == 1 and var.dims[0] != station and (
            var.attrs.get("standard_name") == "time" or var.attrs.get("axis") == "T" or str(name) == "time"
            or np.issubdtype(var.dtype, np.datetime64)
        ):
            return var.dims[0]
    raise CubeError("no time coordinate shared by the stations (an orthogonal timeSeries dataset has time(time)); "
                    "give the dataset a 1-D 'time' coordinate")


def _step_of(times: np.ndarray, steps: np.ndarray, tolerance) -> np.ndarray:
    """Index of the nearest cube step of each station time, -1 when none lies within ``tolerance``."""
    if tolerance is None:
        if len(steps) < 2:
            raise CubeError("the cube has a single time step: pass tolerance= to say which reports belong to it")
        spacing = np.sort(np.diff(steps))
        tolerance = spacing[len(spacing) // 2] / 2  # half the typical step
    if len(steps) == 1:
        nearest = np.zeros(len(times), dtype=int)
    else:
        right = np.searchsorted(steps, times).clip(1, len(steps) - 1)
        nearest = np.where(np.abs(times - steps[right - 1]) <= np.abs(steps[right] - times), right - 1, right)
    return np.where(np.abs(times - steps[nearest]) <= tolerance, nearest, -1)


def grid_stations(stations: xr.Dataset, like, *, tolerance=None) -> xr.Dataset:
    """Put station observations on the grid of a cube: nearest cell and step, NaN elsewhere.

    Parameters
    ----------
    stations : xarray.Dataset
        CF ``timeSeries`` dataset: ``lat(station)``, ``lon(station)`` in
        degrees, data variables ``(station, time)`` (NaN = no report).
    like : xarray.DataArray or xarray.Dataset
        The cube whose time, latitude and longitude (degrees) to use.
    tolerance : timedelta64 or float, optional
        How far a report may lie from a cube time step (default: half the
        cube's typical step). Reports go to the nearest step.

    Returns
    -------
    xarray.Dataset
        One variable per station variable, dims (time, lat, lon) with the
        cube's coordinates: the mean of the reports of the stations in a cell
        (co-located stations are averaged), NaN where no station reported.
        Stations outside the grid are dropped with a warning.
    """
    station = _station_dim(stations)
    time = _time_dim(stations, station)
    axes = find_axes(like)
    positions = cf_positions(stations)
    lat = np.asarray(like[axes.lat].values, dtype=float)
    lon = np.asarray(like[axes.lon].values, dtype=float)
    rows, lat_inside = nearest_on_axis(lat, positions[:, 0], period=None)
    cols, lon_inside = nearest_on_axis(lon, positions[:, 1], period=360.0)
    inside = lat_inside & lon_inside
    if not inside.any():
        raise CubeError(f"no station lies on the grid (lat {lat.min()}..{lat.max()}, lon {lon.min()}..{lon.max()})")
    if not inside.all():
        warnings.warn(f"{int((~inside).sum())} of {inside.size} stations lie outside the grid and are left out",
                      UserWarning, stacklevel=2)
    steps = like[axes.time].values
    step = _step_of(stations[time].values, steps, tolerance)
    shape = (steps.size, lat.size, lon.size)
    cell = rows * lon.size + cols
    variables = [n for n, v in stations.data_vars.items() if set(v.dims) == {station, time}
                 and np.issubdtype(v.dtype, np.number)]
    if not variables:
        raise CubeError(f"no numeric data variable with dims ({station!r}, {time!r}) in the station dataset")
    out = {}
    for name in variables:
        values = np.asarray(stations[name].transpose(station, time).values, dtype=float)
        index = step[None, :] * (lat.size * lon.size) + cell[:, None]
        use = np.isfinite(values) & (step >= 0)[None, :] & inside[:, None]
        total = np.bincount(index[use], values[use], minlength=np.prod(shape))
        count = np.bincount(index[use], minlength=np.prod(shape))
        with np.errstate(invalid="ignore", divide="ignore"):
            gridded = np.where(count > 0, total / count, np.nan).reshape(shape).astype(np.float32)
        out[name] = xr.Variable(axes.core, gridded, dict(stations[name].attrs))
    coords = {dim: like[dim] for dim in axes.core if dim in like.coords}
    attrs = {k: v for k, v in stations.attrs.items() if k != "featureType"}
    return xr.Dataset(out, coords=coords, attrs=attrs)

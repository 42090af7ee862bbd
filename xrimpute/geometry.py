"""Plain-numpy geometry shared by the mask specs and the observing-system simulators.

Orbits and swaths (:func:`ground_track`, :func:`swath_mask`,
:func:`orbital_period_s`), points on the sphere (:func:`unit_vectors`,
:func:`cell_centres`), station placement (:func:`station_cells`) and the
index geometry of a grid axis: splitting it into near-equal blocks
(:func:`block_edges`, :func:`block_index`) and picking evenly spaced indices
(:func:`evenly_spaced`). No xarray and no torch: both :mod:`xrimpute.masks`
and :mod:`xrimpute.observe` build on it.
"""
from __future__ import annotations

from itertools import chain

import numpy as np
from scipy.spatial import cKDTree

from .errors import ArgumentError

EARTH_RADIUS_KM = 6371.0
EARTH_MU_KM3_S2 = 398600.4418  # standard gravitational parameter of the Earth
SIDEREAL_DAY_S = 86164.0905
DEFAULT_ORBITS_PER_DAY = 14.2


# --- index geometry -----------------------------------------------------------------------------


def block_edges(size: int, parts: int) -> np.ndarray:
    """Start of each of ``parts`` near-equal blocks of ``size`` cells, and the end (the first ones one cell larger)."""
    if not 1 <= parts <= size:
        raise ArgumentError(f"cannot split {size} cells into {parts} blocks; use between 1 and {size} blocks")
    return np.r_[0, np.cumsum([len(a) for a in np.array_split(np.arange(size), parts)])]


def block_index(size: int, parts: int) -> np.ndarray:
    """Block number of each of ``size`` cells split into ``parts`` near-equal blocks (as :func:`block_edges`)."""
    return np.repeat(np.arange(parts), np.diff(block_edges(size, parts)))


def evenly_spaced(count: int, most: int) -> np.ndarray:
    """Up to ``most`` distinct indices into ``count`` items, evenly spread from the first to the last (all if fewer)."""
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(int))


# --- orbit geometry -----------------------------------------------------------------------------


def orbital_period_s(altitude_km: float) -> float:
    """Period in seconds of a circular orbit at ``altitude_km`` above a spherical Earth (Kepler's third law)."""
    if altitude_km <= 0:
        raise ArgumentError(f"altitude_km must be positive, got {altitude_km}")
    return float(2 * np.pi * np.sqrt((EARTH_RADIUS_KM + altitude_km) ** 3 / EARTH_MU_KM3_S2))


def resolve_orbits_per_day(orbits_per_day: float | None, altitude_km: float | None) -> float:
    """Revolutions per day from either ``orbits_per_day`` or ``altitude_km`` (default 14.2 when neither is given)."""
    if orbits_per_day is not None and altitude_km is not None:
        raise ArgumentError("give either orbits_per_day or altitude_km, not both")
    if altitude_km is not None:
        return 86400.0 / orbital_period_s(altitude_km)
    orbits_per_day = DEFAULT_ORBITS_PER_DAY if orbits_per_day is None else orbits_per_day
    if orbits_per_day <= 0:
        raise ArgumentError(f"orbits_per_day must be positive, got {orbits_per_day}")
    return float(orbits_per_day)


def ground_track(
    hours,
    *,
    inclination: float = 98.7,
    orbits_per_day: float | None = None,
    altitude_km: float | None = None,
    node_longitude: float = 0.0,
    phase: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-satellite point of a circular orbit over a rotating spherical Earth.

    Parameters
    ----------
    hours : array_like
        Times in hours since the epoch.
    inclination : float
        Orbit inclination in degrees (98.7 is a typical sun-synchronous orbiter;
        above 90 the orbit is retrograde).
    orbits_per_day : float, optional
        Revolutions per day (default 14.2); or give ``altitude_km`` instead.
    altitude_km : float, optional
        Orbit altitude, from which the period follows.
    node_longitude : float
        Longitude (degrees east) of the ascending node at the epoch.
    phase : float
        Argument of latitude at the epoch in degrees (0: crossing the equator northwards).

    Returns
    -------
    lat, lon : numpy.ndarray
        Degrees, shaped like ``hours``; longitude in [-180, 180). Nodal precession is neglected.
    """
    seconds = np.asarray(hours, dtype=float) * 3600.0
    period = 86400.0 / resolve_orbits_per_day(orbits_per_day, altitude_km)
    tilt = np.deg2rad(inclination)
    arg_lat = np.deg2rad(phase) + 2 * np.pi * seconds / period
    lat = np.arcsin(np.sin(tilt) * np.sin(arg_lat))
    inertial_lon = np.arctan2(np.cos(tilt) * np.sin(arg_lat), np.cos(arg_lat))
    lon = np.deg2rad(node_longitude) + inertial_lon - 2 * np.pi * seconds / SIDEREAL_DAY_S
    return np.rad2deg(lat), (np.rad2deg(lon) + 180.0) % 360.0 - 180.0


def unit_vectors(lat, lon) -> np.ndarray:
    """Points on the unit sphere ``(..., 3)`` of latitudes and longitudes in degrees (NaN stays NaN)."""
    lat, lon = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def cell_centres(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """2-D latitudes and longitudes of the cell centres of 1-D grid axes (2-D arrays pass through)."""
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    if lat.ndim == lon.ndim == 1:
        return np.meshgrid(lat, lon, indexing="ij")
    if lat.ndim == 2 and lat.shape == lon.shape:
        return lat, lon
    raise ArgumentError(
        f"lat and lon must be 1-D grid axes or 2-D arrays of the same shape, got {lat.shape} and {lon.shape}"
    )


def swath_mask(
    lat,
    lon,
    hours,
    *,
    step_hours: float | None = None,
    inclination: float = 98.7,
    swath_width_km: float = 1000.0,
    orbits_per_day: float | None = None,
    altitude_km: float | None = None,
    node_longitude: float = 0.0,
    phase: float = 0.0,
) -> np.ndarray:
    """Grid cells a polar orbiter's swath sees during each time step.

    A cell is seen in step ``k`` when its centre lies within half the swath
    width (great-circle distance) of the ground track flown between
    ``hours[k]`` and ``hours[k] + step_hours``.

    Parameters
    ----------
    lat, lon : array_like
        Cell centres in degrees: 1-D grid axes, or 2-D arrays of the same shape.
    hours : array_like
        Start of each time step, in hours since the orbit epoch, increasing.
    step_hours : float, optional
        Length of every step; by default the spacing of ``hours`` (the last
        step as long as the one before). Needed when there is only one step.
    inclination, orbits_per_day, altitude_km, node_longitude, phase
        The orbit, as in :func:`ground_track`.
    swath_width_km : float
        Full across-track width of the swath.

    Returns
    -------
    numpy.ndarray
        Boolean, ``(len(hours), *grid shape)``, True where seen.
    """
    if swath_width_km <= 0:
        raise ArgumentError(f"swath_width_km must be positive, got {swath_width_km}")
    orbits_per_day = resolve_orbits_per_day(orbits_per_day, altitude_km)
    hours = np.atleast_1d(np.asarray(hours, dtype=float))
    if step_hours is not None:
        durations = np.full(hours.shape, float(step_hours))
    elif hours.size > 1:
        spacing = np.diff(hours)
        durations = np.append(spacing, spacing[-1])
    else:
        raise ArgumentError("with a single time step, give step_hours (its length in hours)")
    if (durations <= 0).any():
        raise ArgumentError("hours must increase and step_hours must be positive")
    lat2, lon2 = cell_centres(lat, lon)
    cells = cKDTree(unit_vectors(lat2.ravel(), lon2.ravel()))
    half_width = swath_width_km / 2
    chord = 2 * np.sin(half_width / (2 * EARTH_RADIUS_KM))  # great-circle radius as a straight-line distance
    # track points a quarter of the half-width apart: the swath edge is then exact to within 1 %
    ground_speed_km_h = 2 * np.pi * EARTH_RADIUS_KM * orbits_per_day / 24
    spacing_h = half_width / 4 / ground_speed_km_h
    orbit = {"inclination": inclination, "orbits_per_day": orbits_per_day, "node_longitude": node_longitude}
    seen = np.zeros((hours.size, lat2.size), dtype=bool)
    for step, (start, duration) in enumerate(zip(hours, durations)):
        times = np.linspace(start, start + duration, int(np.ceil(duration / spacing_h)) + 1)
        track = unit_vectors(*ground_track(times, phase=phase, **orbit))
        hits = cells.query_ball_point(track, chord, return_sorted=False)
        seen[step, np.fromiter(chain.from_iterable(hits), dtype=np.intp)] = True
    return seen.reshape(hours.size, *lat2.shape)


# --- stations -----------------------------------------------------------------------------------


def nearest_on_axis(axis: np.ndarray, values: np.ndarray, period: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest grid value, and whether each value lies within half a cell of it."""
    offset = values[:, None] - axis[None, :]
    if period:
        offset = (offset + period / 2) % period - period / 2
    index = np.abs(offset).argmin(axis=1)
    half_cell = np.abs(np.diff(axis)).max() / 2 if axis.size > 1 else np.inf
    inside = np.abs(offset[np.arange(values.size), index]) <= half_cell * (1 + 1e-9)
    return index, inside


def station_cells(lat, lon, stations) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (row, column) holding each station.

    Parameters
    ----------
    lat, lon : array_like
        1-D grid axes in degrees (longitudes may use either 0-360 or -180-180).
    stations : array_like
        ``(n, 2)`` station positions as (latitude, longitude) in degrees.

    Returns
    -------
    rows, cols : numpy.ndarray
        Integer indices into ``lat`` and ``lon``.
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    points = np.asarray(stations, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or not len(points):
        raise ArgumentError(f"stations must be a non-empty list of (lat, lon) pairs, got shape {points.shape}")
    rows, lat_inside = nearest_on_axis(lat, points[:, 0], period=None)
    cols, lon_inside = nearest_on_axis(lon, points[:, 1], period=360.0)
    outside = points[~(lat_inside & lon_inside)]
    if len(outside):
        raise ArgumentError(
            f"station(s) {outside.tolist()} lie outside the grid (lat {lat.min()}..{lat.max()}, "
            f"lon {lon.min()}..{lon.max()})"
        )
    return rows, cols

"""Observing-system simulators: what a network of instruments would see of a complete cube.

:func:`observe` masks a cube (set to NaN where unobserved) the way a given
observing system would: random pixels, missing blocks, a polar-orbiting
satellite's swath, weather stations with outages, or drifting clouds. The
input is the truth; the output is the training or evaluation input.

The orbit geometry (:func:`ground_track`, :func:`swath_mask`,
:func:`orbital_period_s`) and the station placement (:func:`station_cells`)
are plain numpy in :mod:`xrimpute.geometry`, shared with the mask specs and
importable from here too.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import numpy as np
import xarray as xr

from xrimpute.cube import Axes, CubeError, cube_variables, find_axes
from xrimpute.errors import ArgumentError, ArgumentTypeError
from xrimpute.geometry import block_index, resolve_orbits_per_day, station_cells, swath_mask
from xrimpute.geometry import ground_track, orbital_period_s  # noqa: F401  (public here too, as before)

ATTR = "xrimpute_observation"
DEGREE_NAMES = {"lat", "latitude", "nav_lat", "lon", "longitude", "nav_lon"}


# --- stations -----------------------------------------------------------------------------------


def _station_uptime(rng, steps: int, stations: int, outage: float, outage_length: float) -> np.ndarray:
    """(steps, stations) True when reporting: a two-state Markov chain down ``outage`` of the time."""
    if outage == 0:
        return np.ones((steps, stations), dtype=bool)
    recover = 1.0 / outage_length
    fail = outage * recover / (1.0 - outage)  # keeps the long-run fraction of missed steps at `outage`
    if fail > 1:
        raise ArgumentError(
            f"outage={outage} cannot be reached with outage_length={outage_length}: outages that last "
            f"{outage_length} steps on average cover at most {outage_length / (outage_length + 1):.2f} of the "
            "steps; raise outage_length"
        )
    up = np.empty((steps, stations), dtype=bool)
    state = rng.random(stations) >= outage  # start from the long-run distribution
    for step in range(steps):
        up[step] = state
        draw = rng.random(stations)
        state = np.where(state, draw >= fail, draw < recover)
    return up


# --- the cube as the simulators see it ----------------------------------------------------------


def _in_degrees(coord: xr.DataArray, limit: float) -> bool:
    units = str(coord.attrs.get("units", "")).lower()
    if units:
        return units.startswith("degree")
    if coord.attrs.get("standard_name") in ("latitude", "longitude"):
        return True
    values = np.asarray(coord.values)
    return (
        str(coord.name).lower() in DEGREE_NAMES
        and np.issubdtype(values.dtype, np.number)
        and bool(np.abs(values).max() <= limit)
    )


@dataclass
class _Cube:
    """Shape and coordinates of a cube, as the simulators need them."""

    shape: tuple[int, int, int]  # (time, lat, lon)
    time: np.ndarray | None
    lat: xr.DataArray | None
    lon: xr.DataArray | None
    dims: tuple[str, str, str]

    @classmethod
    def of(cls, obj, axes: Axes) -> _Cube:
        def coord(dim):
            return obj[dim] if dim in obj.coords and obj[dim].ndim == 1 else None

        shape = tuple(obj.sizes[d] for d in axes.core)
        time = coord(axes.time)
        return cls(shape, None if time is None else time.values, coord(axes.lat), coord(axes.lon), axes.core)

    def degrees(self, bbox) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre latitudes and longitudes in degrees, from the coords or from ``bbox``."""
        _, height, width = self.shape
        if bbox is not None:
            if len(bbox) != 4:
                raise ArgumentError(f"bbox must be (lat0, lat1, lon0, lon1), got {bbox}")
            lat0, lat1, lon0, lon1 = map(float, bbox)
            if not (-90 <= min(lat0, lat1) and max(lat0, lat1) <= 90):
                raise ArgumentError(f"bbox latitudes must lie in [-90, 90], got {lat0}, {lat1}")
            return (
                lat0 + (np.arange(height) + 0.5) * (lat1 - lat0) / height,
                lon0 + (np.arange(width) + 0.5) * (lon1 - lon0) / width,
            )
        if self.lat is None or self.lon is None or not (_in_degrees(self.lat, 90) and _in_degrees(self.lon, 360)):
            raise CubeError(
                f"this observing system needs latitude and longitude in degrees, but the grid dims "
                f"{self.dims[1:]} have no such coordinates (units 'degrees_north' / 'degrees_east'); "
                "pass bbox=(lat0, lat1, lon0, lon1) to place the grid on the globe"
            )
        return np.asarray(self.lat.values, dtype=float), np.asarray(self.lon.values, dtype=float)

    def hours(self, hours_per_step: float | None) -> tuple[np.ndarray, float | None]:
        """Start of each step in hours since the first, and the step length when it is not read from dates."""
        steps = self.shape[0]
        if hours_per_step is not None:
            if hours_per_step <= 0:
                raise ArgumentError(f"hours_per_step must be positive, got {hours_per_step}")
            return np.arange(steps) * float(hours_per_step), float(hours_per_step)
        if self.time is not None:
            elapsed = self.time - self.time[0]
            if np.issubdtype(elapsed.dtype, np.timedelta64):
                return elapsed / np.timedelta64(1, "h"), None
            if elapsed.dtype == object and hasattr(elapsed[0], "total_seconds"):  # cftime dates
                return np.array([delta.total_seconds() / 3600 for delta in elapsed]), None
        return np.arange(steps, dtype=float), 1.0


# --- observing systems: each returns a (time, lat, lon) mask and what it realised ---------------
# (random draws and derived values, recorded with the options so that users can see what was applied)


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ArgumentError(f"{name} must be a fraction between 0 and 1, got {value}")


def _pixel(rng, cube: _Cube, *, rate: float, static: bool = False):
    _check_fraction("rate", rate)
    steps, height, width = cube.shape
    return rng.random((1 if static else steps, height, width)) < rate, {}


def _block(rng, cube: _Cube, *, grid=(3, 3), observed: int = 7, static: bool = False):
    steps, height, width = cube.shape
    rows, cols = (int(n) for n in grid)
    if rows < 1 or cols < 1 or rows > height or cols > width:
        raise ArgumentError(
            f"grid={tuple(grid)} does not fit the {height} x {width} field: use 1..{height} rows "
            f"and 1..{width} columns"
        )
    blocks = rows * cols
    if not 0 <= observed <= blocks:
        raise ArgumentError(f"observed={observed} must be between 0 and the {blocks} blocks of grid={tuple(grid)}")
    frames = 1 if static else steps
    kept = np.zeros((frames, blocks), dtype=bool)
    np.put_along_axis(kept, rng.random((frames, blocks)).argsort(axis=1)[:, :observed], True, axis=1)
    return kept.reshape(frames, rows, cols)[:, block_index(height, rows)][:, :, block_index(width, cols)], {}


def _swath(
    rng,
    cube: _Cube,
    *,
    inclination: float = 98.7,
    swath_width_km: float = 1000.0,
    orbits_per_day: float | None = None,
    altitude_km: float | None = None,
    hours_per_step: float | None = None,
    bbox=None,
):
    lat, lon = cube.degrees(bbox)
    hours, step_hours = cube.hours(hours_per_step)
    orbit = {
        "orbits_per_day": resolve_orbits_per_day(orbits_per_day, altitude_km),
        "node_longitude": rng.uniform(-180, 180),
        "phase": rng.uniform(0, 360),
    }
    mask = swath_mask(
        lat, lon, hours, step_hours=step_hours, inclination=inclination, swath_width_km=swath_width_km, **orbit
    )
    return mask, orbit


def _station(
    rng,
    cube: _Cube,
    *,
    stations=None,
    n: int = 20,
    outage: float = 0.0,
    outage_length: float = 6.0,
    bbox=None,
):
    steps, height, width = cube.shape
    if not 0 <= outage < 1:
        raise ArgumentError(f"outage must be a probability in [0, 1), got {outage}")
    if outage_length < 1:
        raise ArgumentError(f"outage_length is a mean number of steps and must be >= 1, got {outage_length}")
    if stations is not None:
        rows, cols = station_cells(*cube.degrees(bbox), stations)
    else:
        if not 1 <= n <= height * width:
            raise ArgumentError(f"n={n} stations must be between 1 and the {height * width} grid cells")
        rows, cols = np.divmod(rng.choice(height * width, size=n, replace=False), width)
    up = _station_uptime(rng, steps, len(rows), outage, outage_length)
    mask = np.zeros((steps, height * width), dtype=bool)
    np.logical_or.at(mask.T, rows * width + cols, up.T)  # .at: two stations may share a cell
    return mask.reshape(steps, height, width), {"cells": np.stack([rows, cols], axis=1)}


def _clouds(
    rng,
    cube: _Cube,
    *,
    coverage: float,
    length_scale: float = 5.0,
    speed: float = 1.0,
    persistence: float = 0.9,
):
    _check_fraction("coverage", coverage)
    _check_fraction("persistence", persistence)
    if length_scale <= 0 or speed < 0:
        raise ArgumentError(f"length_scale must be positive and speed >= 0, got {length_scale} and {speed}")
    steps, height, width = cube.shape
    # pad so that the periodic FFT field does not tie opposite edges of the domain together
    pad = int(np.ceil(3 * length_scale))
    shape = (height + 2 * pad, width + 2 * pad)
    freq_y, freq_x = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    # spectrum of a Gaussian smoothing kernel whose standard deviation is length_scale cells
    smoothing = np.exp(-2 * (np.pi * length_scale) ** 2 * (freq_y**2 + freq_x**2))
    heading = rng.uniform(0, 2 * np.pi)
    velocity = (speed * np.sin(heading), speed * np.cos(heading))  # cells per step, (rows, cols)
    advect = np.exp(-2j * np.pi * (freq_y * velocity[0] + freq_x * velocity[1]))
    renew = np.sqrt(1 - persistence**2)  # keeps the field's variance constant in time
    observed_cells = round(coverage * height * width)
    field = np.fft.rfft2(rng.standard_normal(shape)) * smoothing
    mask = np.zeros((steps, height * width), dtype=bool)
    for step in range(steps):
        if step:
            field = persistence * advect * field + renew * np.fft.rfft2(rng.standard_normal(shape)) * smoothing
        frame = np.fft.irfft2(field, s=shape)[pad : pad + height, pad : pad + width]
        mask[step, np.argsort(frame, axis=None)[:observed_cells]] = True  # the clearest cells
    return mask.reshape(steps, height, width), {"velocity_cells_per_step": velocity}


KINDS = {"pixel": _pixel, "block": _block, "swath": _swath, "station": _station, "clouds": _clouds}


def _settings(kind: str, options: dict) -> dict:
    """The options of ``kind`` with defaults filled in; clear errors for unknown or missing ones."""
    params = list(inspect.signature(KINDS[kind]).parameters.values())[2:]  # after (rng, cube)
    unknown = sorted(set(options) - {p.name for p in params})
    if unknown:
        known = [p.name for p in params]
        raise ArgumentTypeError(f"unknown option(s) {unknown} for kind {kind!r}; its options are {known}")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ArgumentTypeError(f"kind {kind!r} needs option(s) {missing}, e.g. observe(ds, {kind!r}, "
                                f"{missing[0]}=0.3)")
    return {p.name: options.get(p.name, p.default) for p in params}


def _plain(value):
    """JSON encoder fallback for numpy values."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)


def observe(ds: xr.DataArray | xr.Dataset, kind: str, *, seed: int = 0, **options):
    """Mask a complete cube the way an observing system would see it.

    Every data variable with the cube's time / latitude / longitude dims gets
    the same mask (NaN where unobserved); coords, attrs and other variables are
    kept. With a sample dim (``sample`` / ``trajectory``) each sample gets its
    own independent draw. The options, the observed fraction and what was
    realised (orbit, station cells, cloud velocity; one entry per sample) are
    stored as JSON in ``attrs["xrimpute_observation"]``.

    Parameters
    ----------
    ds : xarray.DataArray or xarray.Dataset
        The truth: a cube with time, latitude and longitude dims in any order.
    kind : str
        The observing system, with its ``options``:

        ``"pixel"``
            Independent cells: ``rate`` (fraction observed, required),
            ``static=False`` (True: the same cells at every step).
        ``"block"``
            The field cut into ``grid=(rows, cols)`` near-equal blocks of which
            ``observed=7`` are kept, drawn per step, or once if ``static=True``.
        ``"swath"``
            A polar orbiter (see :func:`swath_mask`): ``inclination=98.7``
            degrees, ``swath_width_km=1000``, ``orbits_per_day=14.2`` or
            ``altitude_km``; the node and position on the orbit are drawn at
            random. Step lengths come from a datetime time coordinate, else
            ``hours_per_step`` (default 1; when given it always wins). Needs
            lat/lon coords in degrees, or ``bbox=(lat0, lat1, lon0, lon1)``
            placing a plain x/y grid on the globe.
        ``"station"``
            Fixed stations reporting at every step: ``stations=[(lat, lon),
            ...]`` (each in its grid cell, see :func:`station_cells`; ``bbox``
            as for swath) or ``n=20`` random cells; ``outage=0.0`` is the
            fraction of steps a station misses, in runs of mean length
            ``outage_length=6`` steps.
        ``"clouds"``
            Drifting, evolving cloud cover from a smooth Gaussian random field:
            ``coverage`` (fraction observed in every frame, required),
            ``length_scale=5`` grid cells, ``speed=1`` cells per step in a random
            direction, ``persistence=0.9`` (AR(1) memory of the field per step).
    seed : int
        Seed of the random draws; the same seed gives the same mask.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Same type, dims and coords as ``ds``, NaN where unobserved (integer
        variables become float).

    Examples
    --------
    >>> seen = observe(truth, "clouds", coverage=0.3, length_scale=8)
    >>> seen = observe(truth, "swath", swath_width_km=2000, seed=1)
    """
    if kind not in KINDS:
        raise ArgumentError(f"unknown observing system kind={kind!r}; known kinds: {', '.join(KINDS)}")
    settings = _settings(kind, options)
    axes = find_axes(ds)
    cube = _Cube.of(ds, axes)
    rng = np.random.default_rng(seed)
    draws = [KINDS[kind](rng, cube, **settings) for _ in range(ds.sizes[axes.sample] if axes.sample else 1)]
    masks = np.stack([np.broadcast_to(mask, cube.shape) for mask, _ in draws])
    # no coords on the mask: it lines up by dim name and position, whatever the coordinate values
    mask = xr.DataArray(masks if axes.sample else masks[0], dims=axes.batch)

    record = {"kind": kind, "seed": seed, **settings}
    record["observed_fraction"] = round(float(masks.mean()), 6)
    realised = [extra for _, extra in draws]
    if any(realised):
        record["realised"] = realised if axes.sample else realised[0]
    text = json.dumps(record, default=_plain)

    if isinstance(ds, xr.DataArray):
        out = ds.where(mask)
        out.attrs = {**ds.attrs, ATTR: text}
        return out
    out = ds.copy()
    for name in cube_variables(ds, axes):
        masked = ds[name].where(mask)
        masked.attrs = {**ds[name].attrs, ATTR: text}
        out[name] = masked
    out.attrs = {**ds.attrs, ATTR: text}
    return out

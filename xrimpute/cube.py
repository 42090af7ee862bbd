"""xarray <-> arrays: the only module that knows how a cube is laid out.

A *cube* is a DataArray or Dataset with a time, a latitude(-like) and a
longitude(-like) dimension in any order, and optionally a *sample* dimension
of independent trajectories (``sample``, ``trajectory``). Every variable that
has the three cube dims becomes one or more *channels* (other dims such as
``level`` are stacked into channels). The core sees a float32 array
``(N, C, T, H, W)`` with NaN where unobserved, and knows nothing else.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask import is_dask_collection

from . import robust
from .errors import DataWarning, XrimputeError

TIME_NAMES = ("time", "t", "valid_time", "date", "datetime")
LAT_NAMES = ("lat", "latitude", "nav_lat", "rlat", "y", "yc", "south_north", "j")
LON_NAMES = ("lon", "longitude", "nav_lon", "rlon", "x", "xc", "west_east", "i")
SAMPLE_NAMES = ("sample", "trajectory")
CF_KEYS = {"time": ("time", "T"), "lat": ("latitude", "Y"), "lon": ("longitude", "X")}
CHANNEL = "__channel__"
SPREAD = "_std"  # suffix of the spread outputs
# encoding of the variable that does not fit its spread (packing, fill, time units)
PACKING = ("scale_factor", "add_offset", "dtype", "_FillValue", "missing_value", "units", "calendar")


FILL_MAGNITUDE = 1e30  # netCDF's default fill (9.97e36) and most others lie beyond this; no geophysical field does
FLOAT32_MAX = float(np.finfo(np.float32).max)
FILL_ATTRS = ("_FillValue", "missing_value")  # still in attrs (not encoding) when xarray did not decode them


class CubeError(XrimputeError, ValueError):
    """The input is not a cube xrimpute can work with; the message says how to fix it."""


@dataclass(frozen=True)
class Axes:
    """Names of the time, latitude and longitude dims of a cube, and its sample dim if any."""

    time: str
    lat: str
    lon: str
    sample: str | None = None

    @property
    def core(self) -> tuple[str, str, str]:
        return (self.time, self.lat, self.lon)

    @property
    def batch(self) -> tuple[str, ...]:
        """Dims that are not channels: the optional sample dim and the cube dims."""
        return ((self.sample,) if self.sample else ()) + self.core


def _cf_dim(obj, key: str) -> str | None:
    """The dimension cf-xarray finds for a standard name or axis, if exactly one."""
    try:
        import cf_xarray  # noqa: F401  (registers .cf)
    except ImportError:  # pragma: no cover - cf-xarray is a dependency
        return None
    for lookup in CF_KEYS[key]:
        try:
            names = obj.cf.axes.get(lookup, []) if len(lookup) == 1 else obj.cf.coordinates.get(lookup, [])
        except Exception:  # cf-xarray can raise on exotic metadata; fall back to names
            continue
        dims = [n for n in names if n in obj.dims]
        if not dims:  # a 1-D coordinate whose only dim is the axis
            dims = [obj[n].dims[0] for n in names if n in obj.coords and obj[n].ndim == 1]
        if len(set(dims)) == 1:
            return dims[0]
    return None


def find_axes(obj: xr.DataArray | xr.Dataset, time=None, lat=None, lon=None, sample=None) -> Axes:
    """Find the time / latitude / longitude dims by CF metadata, then by common names.

    Never assumes a dim order. Pass ``time=``, ``lat=``, ``lon=`` (and ``sample=``
    for a dim of independent trajectories) to override.
    """
    given = {"time": time, "lat": lat, "lon": lon}
    fallback = {"time": TIME_NAMES, "lat": LAT_NAMES, "lon": LON_NAMES}
    found = {}
    for key in ("time", "lat", "lon"):
        name = given[key] or _cf_dim(obj, key)
        if name is None:
            lower = {str(d).lower(): d for d in obj.dims}
            name = next((lower[n] for n in fallback[key] if n in lower), None)
        if name is None or name not in obj.dims:
            raise CubeError(
                f"could not find a {key} dimension among dims {tuple(obj.dims)}. "
                f"Name it one of {fallback[key][:3]}, give it CF attributes "
                f"(standard_name / axis / units), or pass {key}='<dim name>'."
            )
        found[key] = name
    if len(set(found.values())) != 3:
        raise CubeError(f"time, lat and lon must be three different dims, found {found}")
    if sample is None:
        sample = next((d for d in obj.dims if str(d).lower() in SAMPLE_NAMES), None)
    elif sample not in obj.dims:
        raise CubeError(f"sample dim {sample!r} is not among dims {tuple(obj.dims)}")
    return Axes(**found, sample=sample)


def _check_monotonic(obj, axes: Axes) -> None:
    for dim in axes.core:
        if dim not in obj.coords:
            continue
        index = obj.indexes.get(dim)
        if index is not None and not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
            raise CubeError(
                f"coordinate {dim!r} is not monotonic; sort it first, e.g. obj.sortby({dim!r})"
            )


def _check_time(obj, axes: Axes) -> None:
    """Warn on duplicated time stamps, and on uneven steps: windows take consecutive steps as equally spaced."""
    index = obj.indexes.get(axes.time)
    if index is None or len(index) < 3:
        return
    if index.has_duplicates:
        repeated = index[index.duplicated()]
        warnings.warn(f"{len(repeated)} time stamp(s) along {axes.time!r} are duplicated (first: {repeated[0]}); "
                      f"windows treat them as separate steps. Drop them first, e.g. "
                      f"obj.drop_duplicates({axes.time!r})", DataWarning, stacklevel=4)
        return
    try:
        steps = np.abs(np.diff(np.asarray(index.values)) / np.diff(np.asarray(index.values))[0]).astype(float)
    except (TypeError, ValueError, ZeroDivisionError):  # labels without arithmetic (strings): nothing to say
        return
    typical = np.median(steps)
    # calendar months (28-31 days) and years (365-366) count as regular; a missing step (twice the typical) does not
    uneven = (steps > 1.5 * typical) | (steps < 0.6 * typical)
    if uneven.any():
        first = int(np.flatnonzero(uneven)[0])
        warnings.warn(f"the time axis {axes.time!r} is unevenly spaced: {int(uneven.sum())} of {len(steps)} steps "
                      f"differ from the typical one (first between {index[first]} and {index[first + 1]}); "
                      "windows take consecutive steps as equally spaced. Resample to a regular axis "
                      "(e.g. obj.resample(...).mean()) if the gaps matter.", DataWarning, stacklevel=4)


def cube_variables(obj: xr.Dataset, axes: Axes) -> list[str]:
    """Data variables that carry all three cube dims (others pass through untouched)."""
    return [name for name, var in obj.data_vars.items() if set(axes.core) <= set(var.dims)]


def passed_through(obj: xr.Dataset, axes: Axes) -> dict[str, str]:
    """Data variables that are not modelled, each with the reason (the cube dims it lacks)."""
    return {
        str(name): f"lacks the dim(s) {[d for d in axes.core if d not in var.dims]} (has {tuple(var.dims)})"
        for name, var in obj.data_vars.items()
        if not set(axes.core) <= set(var.dims)
    }


def _warn_passed_through(ds: xr.Dataset, axes: Axes, variables: list[str]) -> None:
    """Say so when a variable that changes in time is left out: it looks like data to fill (e.g. on another grid).
    A coordinate's CF bounds (``time_bnds``, in most model output) describe the grid, not data: nothing to say."""
    passed = passed_through(ds, axes)
    import cf_xarray  # noqa: F401  (registers .cf)
    bounds = {name for names in ds.cf.bounds.values() for name in names}
    timed = [name for name in passed if name not in bounds and (axes.time in ds[name].dims or ds[name].ndim >= 3)]
    if timed:
        reasons = "; ".join(f"{name!r} {passed[name]}" for name in timed)
        warnings.warn(f"modelling {variables} on the grid {axes.core}; passing through unchanged, with their gaps: "
                      f"{reasons}. Regrid a variable onto the cube's grid to have it imputed.",
                      DataWarning, stacklevel=4)


@dataclass
class Layout:
    """How a cube maps to channels: enough to go back and to check a model fits."""

    axes: Axes
    variables: list[str]
    channels: list[str]  # one label per channel, e.g. "t2m" or "t[level=500]"
    channel_of: list[str]  # variable behind each channel
    extra_dims: dict[str, list] = field(default_factory=dict)  # stacked dims -> their values
    is_dataarray: bool = False
    passed: dict[str, str] = field(default_factory=dict)  # data variables not modelled -> why

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def _as_dataset(obj) -> tuple[xr.Dataset, bool]:
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else "data"
        return obj.to_dataset(name=name), True
    if isinstance(obj, xr.Dataset):
        return obj, False
    raise CubeError(f"expected an xarray DataArray or Dataset, got {type(obj).__name__}")


def layout_of(obj, axes: Axes | None = None) -> Layout:
    """Channels of a cube, without reading any data."""
    ds, is_da = _as_dataset(obj)
    axes = axes or find_axes(ds)
    _check_monotonic(ds, axes)
    _check_time(ds, axes)
    variables = cube_variables(ds, axes)
    if not variables:
        raise CubeError(
            f"no data variable has all of the dims {axes.core}; variables seen: "
            f"{ {k: v.dims for k, v in ds.data_vars.items()} }"
        )
    _warn_passed_through(ds, axes, variables)
    channels, channel_of, extra_dims = [], [], {}
    for name in variables:
        var = ds[name]
        extras = [d for d in var.dims if d not in axes.batch]
        if not extras:
            channels.append(name)
            channel_of.append(name)
            continue
        for d in extras:
            values = ds[d].values.tolist() if d in ds.coords else list(range(ds.sizes[d]))
            extra_dims[d] = values
        stacked = var.stack({CHANNEL: extras}) if len(extras) > 1 else var.rename({extras[0]: CHANNEL})
        for i in range(stacked.sizes[CHANNEL]):
            coords = np.unravel_index(i, [ds.sizes[d] for d in extras])
            label = ",".join(f"{d}={extra_dims[d][j]}" for d, j in zip(extras, coords))
            channels.append(f"{name}[{label}]")
            channel_of.append(name)
    return Layout(axes, variables, channels, channel_of, extra_dims, is_da, passed_through(ds, axes))


def _variable_channels(var: xr.DataArray, axes: Axes) -> xr.DataArray:
    """A variable as ([sample,] channel, time, lat, lon), extra dims stacked in a fixed order."""
    extras = [d for d in var.dims if d not in axes.batch]
    if not extras:
        var = var.expand_dims(CHANNEL)
    elif len(extras) > 1:
        var = var.stack({CHANNEL: extras})
    else:
        var = var.rename({extras[0]: CHANNEL})
    lead = (axes.sample,) if axes.sample and axes.sample in var.dims else ()
    return var.transpose(*lead, CHANNEL, *axes.core)


def to_array(obj, axes: Axes | None = None, layout: Layout | None = None, lazy: bool = False):
    """Read a cube into a float32 array ``(N, C, T, H, W)`` with NaN where unobserved.

    ``N`` is the size of the sample dim (1 without one). Loads the data, unless
    ``lazy`` and some variable is dask-backed: then the result is a dask array
    that reads nothing until computed (for archives larger than memory).
    Infinite values, float64 values beyond float32, values of fill-value
    magnitude (``|x| >= 1e30``) and values equal to a ``_FillValue`` /
    ``missing_value`` attribute xarray left undecoded are not observations:
    they become NaN, with one :class:`~xrimpute.errors.DataWarning` that
    counts them (dask-backed data is masked as it is read, uncounted).
    """
    ds, _ = _as_dataset(obj)
    layout = layout or layout_of(obj, axes)
    blocks, dropped = [], {}
    for name in layout.variables:
        var = ds[name]
        if not (np.issubdtype(var.dtype, np.floating) or np.issubdtype(var.dtype, np.integer) or var.dtype == bool):
            raise CubeError(f"variable {name!r} has dtype {var.dtype}; xrimpute needs real numbers (float or int). "
                            "Drop it or convert it first.")
        if not np.issubdtype(var.dtype, np.floating):
            warnings.warn(
                f"variable {name!r} has dtype {var.dtype}; it is cast to float32 "
                "(mark missing values as NaN, or decode them with mask_and_scale).",
                stacklevel=3,
            )
        data = _variable_channels(var, layout.axes).data
        fills = fill_values(var)
        if lazy and is_dask_collection(data):
            block = data.map_blocks(_as_observations, fills=fills, dtype=np.float32)
        else:
            data = np.asarray(data)
            counts = unusable_counts(data, fills)
            if any(counts.values()):
                dropped[name] = counts
            block = _as_observations(data, fills)
        blocks.append(block if layout.axes.sample else block[None])
    if dropped:
        _warn_unusable(dropped)
    if any(is_dask_collection(b) for b in blocks):
        return da.concatenate([da.asarray(b) for b in blocks], axis=1), layout
    return np.concatenate(blocks, axis=1), layout


def fill_values(var: xr.DataArray) -> tuple[float, ...]:
    """The ``_FillValue`` / ``missing_value`` a variable still carries in its attrs (xarray did not decode them)."""
    found = []
    for key in FILL_ATTRS:
        if key in var.attrs:
            found.extend(np.atleast_1d(np.asarray(var.attrs[key], dtype=float)).tolist())
    return tuple(v for v in found if np.isfinite(v))


def _kinds(data: np.ndarray, fills: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Masks of the values that cannot be observations, by kind (NaN aside); they exclude one another."""
    kinds = {}
    if np.issubdtype(data.dtype, np.floating):
        magnitude = np.abs(data)
        kinds["infinite"] = np.isinf(data)
        kinds["beyond the float32 range"] = np.isfinite(data) & (magnitude > FLOAT32_MAX)
        kinds[f"at fill-value magnitude (|x| >= {FILL_MAGNITUDE:g})"] = (magnitude >= FILL_MAGNITUDE) & (
            magnitude <= FLOAT32_MAX)
    fills = [f for f in fills if abs(f) < FILL_MAGNITUDE]  # larger ones are caught by their magnitude
    if np.issubdtype(data.dtype, np.integer):
        limits = np.iinfo(data.dtype)
        fills = [f for f in fills if limits.min <= f <= limits.max]
    if fills:
        kinds["equal to the _FillValue / missing_value attribute"] = np.isin(data, np.asarray(fills).astype(data.dtype))
    return kinds


def unusable_counts(data: np.ndarray, fills: tuple[float, ...] = ()) -> dict[str, int]:
    """How many values of ``data`` are not observations (NaN aside), by kind."""
    return {kind: int(mask.sum()) for kind, mask in _kinds(data, fills).items()}


def _as_observations(data: np.ndarray, fills: tuple[float, ...] = ()) -> np.ndarray:
    """``data`` as a float32 copy with NaN wherever a value is not an observation (infinite, fill value, ...)."""
    data = np.asarray(data)
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf here, then NaN below
        out = np.array(data, dtype=np.float32)
    for mask in _kinds(data, fills).values():
        out[mask] = np.nan
    return out


def usable(var: xr.DataArray) -> xr.DataArray:
    """Where ``var`` holds an observation: finite, below fill-value magnitude, not its undecoded fill value."""
    fills = fill_values(var)
    if is_dask_collection(var.data):
        return var.copy(data=var.data.map_blocks(lambda block: np.isfinite(_as_observations(block, fills)),
                                                 dtype=bool))
    return var.copy(data=np.isfinite(_as_observations(np.asarray(var.data), fills)))


def _warn_unusable(dropped: dict[str, dict[str, int]]) -> None:
    total = sum(sum(counts.values()) for counts in dropped.values())
    detail = "; ".join(f"{name!r}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
                       for name, counts in dropped.items())
    warnings.warn(f"{total} value(s) are not observations and are treated as gaps ({detail}). Mask them as NaN "
                  "(or open the file with mask_and_scale=True) to silence this.", DataWarning, stacklevel=3)


def from_array(values: np.ndarray, like, layout: Layout, suffix: str = "") -> xr.DataArray | xr.Dataset:
    """Put a ``(N, C, T, H, W)`` array back into the shape, dims order, coords and attrs of ``like``.

    ``suffix`` renames the variables (e.g. ``"_std"``); attrs and encoding are kept.
    """
    ds, is_da = _as_dataset(like)
    out = {}
    start = 0
    for name in layout.variables:
        var = ds[name]
        template = _variable_channels(var, layout.axes)
        n = template.sizes[CHANNEL]
        block = values[:, start : start + n] if layout.axes.sample else values[0, start : start + n]
        dtype = var.dtype if np.issubdtype(var.dtype, np.floating) else np.float32
        filled = template.copy(data=block.astype(dtype))
        start += n
        extras = [d for d in var.dims if d not in layout.axes.batch]
        if not extras:
            filled = filled.isel({CHANNEL: 0}, drop=True)
        elif len(extras) == 1:
            filled = filled.rename({CHANNEL: extras[0]})
        else:
            filled = filled.unstack(CHANNEL)
        filled = filled.transpose(*var.dims)
        filled.attrs = spread_attrs(var.attrs, name) if suffix == SPREAD else dict(var.attrs)
        filled.encoding = {k: v for k, v in var.encoding.items() if suffix != SPREAD or k not in PACKING}
        out[name] = filled
    if is_da:
        da = out[layout.variables[0]]
        da.name = None if like.name is None else f"{like.name}{suffix}"
        return da
    result = ds.copy()
    for name, var in out.items():
        result[name] = var
    if suffix:
        result = result[[n for n in layout.variables]].rename({n: f"{n}{suffix}" for n in layout.variables})
    return result


def spread_attrs(attrs: dict, name: str) -> dict:
    """CF attributes of the spread of variable ``name``: its units, no standard_name (it is not that quantity)."""
    kept = {k: attrs[k] for k in ("units", "grid_mapping", "coordinates") if k in attrs}
    what = attrs.get("long_name") or attrs.get("standard_name") or name
    methods = f"{attrs['cell_methods']} " if "cell_methods" in attrs else ""
    return {**kept, "long_name": f"ensemble spread of {what}",
            "cell_methods": f"{methods}realization: standard_deviation",
            "comment": "standard deviation over the imputation ensemble (xrimpute); 0 at observed cells"}


def check_spread_names(obj, layout: Layout) -> None:
    """Refuse, before any computing, a Dataset that already has a variable named like a spread output."""
    ds, _ = _as_dataset(obj)
    taken = [f"{name}{SPREAD}" for name in layout.variables if f"{name}{SPREAD}" in ds.variables]
    if taken and not layout.is_dataarray:
        raise CubeError(f"the data already has {taken}, the names return_std=True gives the spread; rename or drop "
                        f"them first (e.g. ds.drop_vars({taken}))")


def with_spread(result, spread, layout: Layout):
    """The filled cube and its spread: a Dataset with ``<var>_std`` variables linked from their parents by
    ``ancillary_variables``, or a ``(result, spread)`` pair of DataArrays."""
    if layout.is_dataarray:
        return result, spread
    result = result.copy()
    for name in layout.variables:
        linked = f"{result[name].attrs.get('ancillary_variables', '')} {name}{SPREAD}".strip()
        result[name].attrs = {**result[name].attrs, "ancillary_variables": linked}
    return result.merge(spread)


def merge_filled(obj, filled, layout: Layout):
    """``obj`` with the gaps of its modelled variables (NaN, non-finite and fill values) taken from ``filled``.

    ``filled`` is the cube :func:`from_array` builds in the shape of ``obj``.
    Every observation is kept bit for bit; attrs, encoding and other
    variables are those of ``obj``; dask-backed input stays lazy.
    """
    ds, is_da = _as_dataset(obj)
    fills, _ = _as_dataset(filled)
    out = ds.copy()
    for name in layout.variables:
        var = ds[name]
        merged = xr.where(usable(var), var, fills[name]).transpose(*var.dims)
        out[name] = var.copy(data=merged.data)
    if is_da:
        result = out[layout.variables[0]]
        result.name = obj.name
        return result
    return out


def coordinates(obj, layout: Layout) -> dict[str, np.ndarray]:
    """Latitude / longitude / time values of the cube (for grid checks and static inputs)."""
    ds, _ = _as_dataset(obj)
    return {
        key: (np.asarray(ds[dim].values) if dim in ds.coords else np.arange(ds.sizes[dim]))
        for key, dim in (("time", layout.axes.time), ("lat", layout.axes.lat), ("lon", layout.axes.lon))
    }


def time_positions(obj, layout: Layout) -> np.ndarray | None:
    """The time coordinate as floats (seconds from the first step for dates), or None (the step index) for other
    calendars such as cftime dates: where the classical fillers place the time steps."""
    times = coordinates(obj, layout)["time"]
    if np.issubdtype(times.dtype, np.datetime64) or np.issubdtype(times.dtype, np.timedelta64):
        return (times - times[0]) / np.timedelta64(1, "s")
    if np.issubdtype(times.dtype, np.number):
        return times.astype(np.float64)
    return None


CYCLES = {"daily": (86_400.0, 3), "annual": (365.25 * 86_400.0, 2)}
"""Each regular cycle :func:`cycle_phase` finds: its length in seconds, and how many of it a series must span."""


def cycle_phase(obj, layout: Layout, kind: str | None = None) -> tuple[str, np.ndarray] | None:
    """``(kind, phase)``: the regular cycle the steps of ``obj`` go through and where each lies in it (a fraction of
    it, ``(T,)``), from a time coordinate of dates (numpy or cftime, any calendar). ``"daily"``: the time of day,
    for steps shorter than a day over at least three days; ``"annual"``: the month and the day in it, for steps of
    a day to a month over at least two years. None where there is no such cycle (plain numbers, one step a year,
    a shorter series). With ``kind`` that cycle's phase whatever the steps (None without dates)."""
    times = coordinates(obj, layout)["time"]
    if np.issubdtype(times.dtype, np.datetime64):
        index = pd.DatetimeIndex(times)
        seconds = (times - times[0]) / np.timedelta64(1, "s")
    elif times.dtype == object and len(times) and hasattr(times[0], "calendar"):  # cftime dates
        index = xr.CFTimeIndex(times)
        seconds = np.array([(t - times[0]).total_seconds() for t in times])
    else:
        return None
    if kind is None and len(times) > 1:
        step, span = float(np.median(np.diff(seconds))), float(seconds[-1] - seconds[0])
        day = CYCLES["daily"][0]
        if 0 < step < day and span >= CYCLES["daily"][1] * day:
            kind = "daily"
        elif day <= step <= 31 * day and span >= CYCLES["annual"][1] * CYCLES["annual"][0]:
            kind = "annual"
    if kind == "daily":
        return kind, (np.asarray(index.hour) + np.asarray(index.minute) / 60 + np.asarray(index.second) / 3600) / 24
    if kind == "annual":
        return kind, (np.asarray(index.month) - 1 + (np.asarray(index.day) - 1) / np.asarray(index.days_in_month)) / 12
    return None


def check_observed(values: np.ndarray, layout: Layout) -> None:
    """Clear errors for cubes that carry no information to learn from."""
    check_counts(np.isfinite(values).sum(axis=(0, 2, 3, 4)), layout)


def warn_outliers(outliers: np.ndarray, layout: Layout) -> None:
    """Say how many values per channel were left out of the normalisation as gross outliers."""
    found = {layout.channels[i]: int(n) for i, n in enumerate(outliers) if n}
    if found:
        detail = ", ".join(f"{n} value(s) of {name!r}" for name, n in found.items())
        warnings.warn(f"{detail} lie more than {robust.FENCE:g} robust spreads from the median: left out of the normalisation "
                      "statistics (they are still training data). If they are errors, mask them as NaN.",
                      DataWarning, stacklevel=3)


def check_counts(counts: np.ndarray, layout: Layout) -> None:
    """:func:`check_observed` from the number of observed cells per channel (e.g. of a sample of chunks)."""
    if not np.any(counts):
        raise CubeError("the input is all NaN: there are no observed values to learn from")
    empty = [layout.channels[i] for i in np.flatnonzero(np.asarray(counts) == 0)]
    if empty:
        raise CubeError(
            f"channel(s) {empty} have no observed value; drop them before fitting "
            "(e.g. ds.drop_vars([...]))"
        )

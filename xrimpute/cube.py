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
import xarray as xr
from dask import is_dask_collection

TIME_NAMES = ("time", "t", "valid_time", "date", "datetime")
LAT_NAMES = ("lat", "latitude", "nav_lat", "rlat", "y", "yc", "south_north", "j")
LON_NAMES = ("lon", "longitude", "nav_lon", "rlon", "x", "xc", "west_east", "i")
SAMPLE_NAMES = ("sample", "trajectory")
CF_KEYS = {"time": ("time", "T"), "lat": ("latitude", "Y"), "lon": ("longitude", "X")}
CHANNEL = "__channel__"


class CubeError(ValueError):
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


def cube_variables(obj: xr.Dataset, axes: Axes) -> list[str]:
    """Data variables that carry all three cube dims (others pass through untouched)."""
    return [name for name, var in obj.data_vars.items() if set(axes.core) <= set(var.dims)]


@dataclass
class Layout:
    """How a cube maps to channels: enough to go back and to check a model fits."""

    axes: Axes
    variables: list[str]
    channels: list[str]  # one label per channel, e.g. "t2m" or "t[level=500]"
    channel_of: list[str]  # variable behind each channel
    extra_dims: dict[str, list] = field(default_factory=dict)  # stacked dims -> their values
    is_dataarray: bool = False

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
    variables = cube_variables(ds, axes)
    if not variables:
        raise CubeError(
            f"no data variable has all of the dims {axes.core}; variables seen: "
            f"{ {k: v.dims for k, v in ds.data_vars.items()} }"
        )
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
    return Layout(axes, variables, channels, channel_of, extra_dims, is_da)


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
    """
    ds, _ = _as_dataset(obj)
    layout = layout or layout_of(obj, axes)
    blocks = []
    for name in layout.variables:
        var = ds[name]
        if not np.issubdtype(var.dtype, np.floating):
            if np.issubdtype(var.dtype, np.integer) or var.dtype == bool:
                warnings.warn(
                    f"variable {name!r} has dtype {var.dtype}; it is cast to float32 "
                    "(mark missing values as NaN, or decode them with mask_and_scale).",
                    stacklevel=3,
                )
            else:
                raise CubeError(f"variable {name!r} has dtype {var.dtype}; xrimpute needs numbers")
        data = _variable_channels(var, layout.axes).data
        block = data.astype(np.float32) if lazy and is_dask_collection(data) else np.asarray(data, dtype=np.float32)
        blocks.append(block if layout.axes.sample else block[None])
    if any(is_dask_collection(b) for b in blocks):
        return da.concatenate([da.asarray(b) for b in blocks], axis=1), layout
    return np.concatenate(blocks, axis=1), layout


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
        filled.attrs = dict(var.attrs)
        filled.encoding = dict(var.encoding)
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


def coordinates(obj, layout: Layout) -> dict[str, np.ndarray]:
    """Latitude / longitude / time values of the cube (for grid checks and static inputs)."""
    ds, _ = _as_dataset(obj)
    return {
        key: (np.asarray(ds[dim].values) if dim in ds.coords else np.arange(ds.sizes[dim]))
        for key, dim in (("time", layout.axes.time), ("lat", layout.axes.lat), ("lon", layout.axes.lon))
    }


def check_observed(values: np.ndarray, layout: Layout) -> None:
    """Clear errors for cubes that carry no information to learn from."""
    check_counts(np.isfinite(values).sum(axis=(0, 2, 3, 4)), layout)


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

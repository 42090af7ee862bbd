"""Learnability check on a cube: where would a mask specification leave gaps unlearned?

A gap cell is learned only if, given a context, it has a positive probability
of being queried (Theorem 1 of the method). :func:`check` maps that
probability over the grid for a mask specification; :func:`plot_coverage`
draws the map; :func:`reach` tells never-observed cells left by chance
(filled) from those beyond the observing system's reach (left NaN);
:func:`permanent_mask` turns a static land-sea mask into never-observed
cells; :func:`infer` reads the observing system of a cube.
The computation lives in :mod:`xrimpute.masks`, which knows no xarray
(:func:`~xrimpute.masks.learnability`, :func:`~xrimpute.masks.infer`); this
module reads the masks from the cube and adds coordinates.
"""
from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr

from . import cube, masks
from .engine import choose_window, window_series
from .errors import ArgumentError


def _span(values: np.ndarray, first: int, last: int) -> str:
    a, b = values[first], values[last]
    return f"{a:g}..{b:g}" if np.issubdtype(np.asarray(values).dtype, np.number) else f"{a}..{b}"


def _observed(obj_or_mask) -> np.ndarray:
    """The boolean ``(N, C, T, H, W)`` observation mask of a cube (finite = observed); masks pass through."""
    if isinstance(obj_or_mask, (xr.DataArray, xr.Dataset)):
        return np.isfinite(cube.to_array(obj_or_mask)[0])
    return obj_or_mask


def infer(obj_or_mask, max_frames: int = 512) -> masks.Inference:
    """Read the observing system from the NaN pattern of a cube and pick the mask specification that copies it.

    Parameters
    ----------
    obj_or_mask : xarray.DataArray or xarray.Dataset, or array_like
        A cube with NaN where unobserved, or a boolean ``(N, C, T, H, W)``
        mask (True = observed). Variables are merged (a cell counts as
        observed when any variable is).
    max_frames : int
        Frames looked at, in runs of consecutive steps spread over the data.

    Returns
    -------
    Inference
        ``spec``, ``kind``, ``evidence`` and ``explanation``, from
        :func:`xrimpute.masks.infer` (whose Notes say how it decides).
    """
    return masks.infer(_observed(obj_or_mask), max_frames)


REACH_MEANINGS = "observed never_observed_filled never_observed_left_nan"


def reach(obj_or_mask) -> xr.DataArray:
    """Which never-observed cells imputation fills by default and which it leaves NaN (variables merged).

    Parameters
    ----------
    obj_or_mask : xarray.DataArray or xarray.Dataset, or array_like
        A cube with NaN where unobserved, or a boolean ``(N, C, T, H, W)`` mask.

    Returns
    -------
    xarray.DataArray
        ``(lat, lon)`` int8 flags: 0 observed at least once, 1 never observed but
        within the observing system's reach (a gap left by chance: filled, without
        training signal), 2 never observed and beyond reach (left NaN unless
        ``fill_never_observed=True``). Its attrs hold the numbers of the rule
        (``spacing``, ``density``, ``threshold``; see :mod:`xrimpute.masks.reach`).
        A model's ``permanent_mask`` adds to the cells left NaN.
    """
    observed = _observed(obj_or_mask)
    found = masks.reach(np.asarray(observed).any(axis=(0, 1, 2)))
    flags = np.where(found.unreachable, 2, np.where(observed.any(axis=(0, 1, 2)), 0, 1)).astype(np.int8)
    attrs = dict(long_name="reach of the observing system", flag_values=np.array([0, 1, 2], np.int8),
                 flag_meanings=REACH_MEANINGS, **found.to_dict())
    if isinstance(obj_or_mask, (xr.DataArray, xr.Dataset)):
        axes = cube.find_axes(obj_or_mask)
        dims = (axes.lat, axes.lon)
        coords = {dim: obj_or_mask[dim] for dim in dims if dim in obj_or_mask.coords}
        return xr.DataArray(flags, dims=dims, coords=coords, name="reach", attrs=attrs)
    return xr.DataArray(flags, dims=("lat", "lon"), name="reach", attrs=attrs)


def check(obj, mask="infer", *, window: int | None = None, observing=None, low: float = 0.05, max_windows: int = 256,
          n_draws: int = 256, seed: int = 0) -> xr.DataArray:
    """Query coverage of a mask specification over the grid of an incomplete cube.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        The cube, NaN where unobserved (variables merged).
    mask : str, dict or MaskSpec
        The context sampler to check, as for ``fit`` (default ``"infer"``).
    window : int, optional
        Time steps per training window; default the one ``fit`` would choose
        (:func:`xrimpute.engine.choose_window`).
    observing : MaskSpec, optional
        How the observations arise; default: what :func:`infer` reads.
    low : float
        Coverage under which a cell counts as poorly covered.
    max_windows : int
        Windows looked at (see :func:`xrimpute.masks.learnability`).
    n_draws : int
        Contexts drawn per window.
    seed : int
        Seed of the windows and contexts.

    Returns
    -------
    xarray.DataArray
        ``query_coverage`` over (lat, lon) with the cube's coordinates: the
        probability that a gap cell is queried given a context, averaged over
        the window's time steps; 0 means never learned, NaN never observed. Its
        attrs give the specs, the number of gap cells to fill (``cells_to_fill``:
        NaN cells in grid columns observed at some time), the shares of cells at
        zero coverage, below ``low`` and never observed, the worst regions, and a
        ``summary`` to print, worded from these numbers. ``never_observed_filled_share``
        and ``never_observed_left_nan_share`` split the never-observed cells
        by :func:`reach`: gaps left by chance, filled by default, and regions
        beyond the observing system's reach, left NaN.
    """
    values, layout = cube.to_array(obj)
    observed = np.isfinite(values)
    spec = masks.resolve(mask, observed, verbose=False)
    found = masks.infer(observed) if observing is None else None
    observing = observing if observing is not None else found.spec
    if window is None:  # as fit chooses
        window = choose_window(observed, observed.shape[2], window_series(values, spec))[0]
    report = masks.learnability(spec, observed, window, observing=observing, low=low, max_windows=max_windows,
                                n_draws=n_draws, seed=seed)
    dims = (layout.axes.lat, layout.axes.lon)
    coords = {dim: obj[dim] for dim in dims if dim in obj.coords}
    lat, lon = (np.asarray(obj[d].values) if d in obj.coords else np.arange(obj.sizes[d]) for d in dims)
    regions = [f"{layout.axes.lat} {_span(lat, *r['rows'])}, {layout.axes.lon} {_span(lon, *r['cols'])}: "
               f"{r['cells']} cells, mean coverage {r['coverage']:.2g}" for r in report.worst_regions()]
    gaps = np.nan_to_num(report.coverage, nan=1.0) < 1
    columns = observed.any(axis=(0, 2), keepdims=True)  # (1, C, 1, H, W): observed at some time
    attrs = dict(
        long_name="probability that a gap cell is queried given a context",
        units="1",
        spec=repr(spec),
        observing=repr(observing),
        window=window,
        cells_to_fill=int((~observed & columns).sum()),
        zero_coverage_share=round(report.zero_share, 4),
        low_coverage_share=round(report.low_share, 4),
        low_coverage_threshold=low,
        never_observed_share=round(report.never_share, 4),
        **_reach_shares(observed),
        mean_gap_coverage=round(float(report.coverage[gaps].mean()), 4) if gaps.any() else 1.0,
        worst_regions="; ".join(regions) or "none",
    )
    if found is not None:
        attrs["observing_explanation"] = found.explanation
    attrs["summary"] = _summary(attrs, found)
    return xr.DataArray(report.coverage, dims=dims, coords=coords, name="query_coverage", attrs=attrs)


def _reach_shares(observed: np.ndarray) -> dict:
    """Shares of the grid never observed and filled by default, or left NaN (:func:`reach`)."""
    found = reach(observed)
    return dict(never_observed_filled_share=round(float((found == 1).mean()), 4),
                never_observed_left_nan_share=round(float((found == 2).mean()), 4),
                reach_threshold=found.attrs["threshold"])


def _summary(attrs: dict, found) -> str:
    """The report, its verdict worded from the numbers (a share of 0 is never called large, nor 100% small)."""
    if attrs["cells_to_fill"] == 0:
        never = attrs["never_observed_share"]
        where = f" (outside the {never:.1%} of the grid never observed, which stays NaN)" if never else ""
        return f"Nothing to fill: every cell is observed{where}."
    zero, low = attrs["zero_coverage_share"], attrs["low_coverage_share"]
    slow = max(0.0, low - zero)  # below the threshold but above zero
    lines = [
        f"Query coverage of {attrs['spec']} (window {attrs['window']}); {attrs['cells_to_fill']} gap cells to fill",
        f"  observing system: {attrs['observing']}" + (f" (inferred: {found.kind})" if found is not None else ""),
    ]
    if "observing_explanation" in attrs:
        lines.append(textwrap.fill(attrs["observing_explanation"], 100, initial_indent="    ",
                                   subsequent_indent="    "))
    lines += [
        f"  never observed: {attrs['never_observed_share']:.1%} of the grid: "
        f"{attrs['never_observed_filled_share']:.1%} by chance (filled, without training signal), "
        f"{attrs['never_observed_left_nan_share']:.1%} beyond the observations' reach (left NaN)",
        f"  zero coverage (never learned):   {zero:.1%} of the observed cells",
        f"  coverage in (0, {attrs['low_coverage_threshold']:g}) (learned slowly): {slow:.1%} of the observed cells",
        f"  mean coverage of cells with gaps: {attrs['mean_gap_coverage']:.3f}",
        f"  worst regions: {attrs['worst_regions']}",
    ]
    if zero > 0.01:
        verdict = (f"{zero:.1%} of the observed cells are never learned: use a spec that copies the observations' "
                   "structure")
        if found is not None and repr(found.spec) != attrs["spec"]:
            verdict += f" (inferred: {found.spec!r})"
    elif zero > 0:
        verdict = f"a few observed cells ({zero:.2%}) are never learned; the rest can be"
    elif slow >= 0.5:
        verdict = (f"every observed cell can be learned, but {slow:.0%} of them only slowly (coverage below "
                   f"{attrs['low_coverage_threshold']:g}): train longer (more steps or max_time)")
    elif slow > 0:
        verdict = f"every observed cell has a positive probability of being queried; {slow:.1%} only a small one"
    else:
        verdict = "every observed cell has a positive probability of being queried"
    lines.append(f"  -> {verdict}")
    return "\n".join(lines)


def summary(coverage: xr.DataArray) -> str:
    """The readable summary of a :func:`check` result (also in ``coverage.attrs["summary"]``)."""
    return coverage.attrs["summary"]


def plot_coverage(coverage: xr.DataArray, ax=None, **kwargs):
    """Draw a :func:`check` map with xarray's plotting (0 = never learned; blank = never observed).

    ``kwargs`` go to ``DataArray.plot`` (default colour map ``viridis``, range 0..1).
    Returns the matplotlib artist.
    """
    import matplotlib.pyplot as plt  # plotting is optional

    ax = ax if ax is not None else plt.gca()
    options = dict(cmap="viridis", vmin=0.0, vmax=1.0, cbar_kwargs={"label": "query coverage"}, **kwargs)
    artist = coverage.plot(ax=ax, **options)
    attrs = coverage.attrs
    spec = textwrap.fill(attrs.get("spec", ""), 45)  # a spec's repr runs wider than one panel
    ax.set_title(f"{spec}\nzero coverage: {attrs.get('zero_coverage_share', 0):.0%} of observed "
                 f"cells, mean {attrs.get('mean_gap_coverage', float('nan')):.2f}", fontsize=9)
    return artist


def permanent_mask(ds: xr.Dataset, var: str = "lsm", *, threshold: float = 0.5, masked: str = "above") -> xr.Dataset:
    """Mark the cells of a static mask variable (e.g. land in a land-sea mask) as never observed.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube with a static variable ``var`` over (lat, lon), without time.
    var : str
        The mask variable (ERA5's land-sea mask ``lsm`` is 1 on land).
    threshold : float
        Cells with ``var`` above (``masked="above"``) or below (``"below"``)
        the threshold are masked.

    Returns
    -------
    xarray.Dataset
        ``ds`` without ``var``, its cube variables NaN on masked cells: fit
        then never queries them and impute leaves them NaN.
    """
    if var not in ds.data_vars:
        raise cube.CubeError(f"no variable {var!r} in the dataset; its variables are {list(ds.data_vars)}")
    if masked not in ("above", "below"):
        raise ArgumentError(f"masked must be 'above' or 'below', got {masked!r}")
    axes = cube.find_axes(ds)
    static = ds[var]
    if axes.time in static.dims or not set(static.dims) <= {axes.lat, axes.lon}:
        raise cube.CubeError(f"{var!r} has dims {static.dims}: a permanent mask needs a static (lat, lon) variable "
                             "without time")
    keep = ~(static > threshold) if masked == "above" else ~(static < threshold)
    out = ds.drop_vars(var)
    for name in cube.cube_variables(out, axes):
        out[name] = out[name].where(keep).assign_attrs(ds[name].attrs)
    return out

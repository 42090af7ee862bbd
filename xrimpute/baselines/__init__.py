"""Gap-filling baselines behind one interface: ``fill(obj, method=...)``.

``METHODS`` maps a method name to a numpy core ``core(values, **options) -> filled``
on ``(N, C, T, H, W)`` float arrays with NaN where unobserved; every sample and
channel is filled on its own unless a method says otherwise. Other modules add
their baselines with ``METHODS["name"] = core``. A core with a ``times``
parameter receives the positions of the time steps (the time coordinate as
float seconds or numbers; the step index for other calendars) unless the
caller passes ``times``. :func:`fill` keeps every observed value.
"""
from __future__ import annotations

import inspect

import numpy as np
import xarray as xr

from xrimpute import cube
from xrimpute.baselines.classical import (
    DineofResult,
    akima_array,
    dineof_array,
    interpolate_array,
    kriging_array,
    normalised_convolution_array,
    ns_inpaint_array,
    rbf_array,
    telea_array,
    temporal_array,
)
from xrimpute.baselines.learned import CORES as LEARNED_CORES
from xrimpute.baselines.learned import Learned, ambient, ctxdiff, diffputer, missdiff
from xrimpute.baselines.em_consistency import em_consistency_array
from xrimpute.errors import ArgumentError

__all__ = [
    "METHODS",
    "fill",
    "interpolate",
    "akima",
    "telea",
    "ns_inpaint",
    "temporal",
    "dineof",
    "DineofResult",
    "interpolate_array",
    "akima_array",
    "telea_array",
    "ns_inpaint_array",
    "temporal_array",
    "dineof_array",
    "rbf_array",
    "normalised_convolution_array",
    "kriging_array",
    "ctxdiff",
    "missdiff",
    "ambient",
    "diffputer",
    "Learned",
]


def _dineof_filled(values, **options):
    return dineof_array(values, **options).filled


METHODS = {
    "interpolate": interpolate_array,
    "akima": akima_array,
    "telea": telea_array,
    "ns_inpaint": ns_inpaint_array,
    "temporal": temporal_array,
    "dineof": _dineof_filled,
    # interpolators of station networks, frame by frame (kriging needs the optional PyKrige)
    "rbf": rbf_array,
    "normalised_convolution": normalised_convolution_array,
    "kriging": kriging_array,
    **LEARNED_CORES,  # ctxdiff, missdiff, ambient, diffputer (xrimpute.baselines.learned)
    "em_consistency": em_consistency_array,  # categorical or continuous (xrimpute.baselines.em_consistency)
}


def _fill_gaps(obj, filled: np.ndarray, layout: cube.Layout):
    """``obj`` with its gaps taken from ``filled``: the observed values stay those of ``obj``
    bit for bit, also where the cube's float32 array rounded them."""
    return obj.fillna(cube.from_array(filled, obj, layout))


def fill(obj: xr.DataArray | xr.Dataset, method: str = "interpolate", axes: cube.Axes | None = None, **options):
    """Fill every gap (NaN) of a cube with a baseline method.

    Parameters
    ----------
    obj : DataArray or Dataset
        A cube with time, latitude and longitude dims in any order, optionally a
        sample dim (each sample is filled on its own).
    method : str
        A key of :data:`METHODS`: ``"interpolate"``, ``"akima"`` (an Akima spline
        in time), ``"telea"``, ``"ns_inpaint"``,
        ``"temporal"``, ``"dineof"``, ``"rbf"`` (thin-plate spline),
        ``"normalised_convolution"``, ``"kriging"`` (ordinary, with PyKrige), or
        one registered by another module.
    axes : cube.Axes, optional
        The cube dims, when :func:`xrimpute.cube.find_axes` cannot find them.
    **options
        Passed to the method's core (e.g. ``radius=`` for ``"telea"``).

    Returns
    -------
    DataArray or Dataset
        Same type, dims, coords and attrs as ``obj``; observed values unchanged.
        A variable's field without any observation stays NaN.
    """
    if method not in METHODS:
        raise ArgumentError(f"unknown gap-filling method {method!r}; known methods: {sorted(METHODS)}")
    core = METHODS[method]
    values, layout = cube.to_array(obj, axes)
    if "times" in inspect.signature(core).parameters and "times" not in options:
        options["times"] = cube.time_positions(obj, layout)
    return _fill_gaps(obj, core(values, **options), layout)


def interpolate(obj, *, axes: cube.Axes | None = None):
    """Linear interpolation in time at each cell, then in space for cells never observed.

    See :func:`fill` for ``obj`` and ``axes`` and :func:`interpolate_array` for the method.
    """
    return fill(obj, "interpolate", axes=axes)


def akima(obj, *, axes: cube.Axes | None = None):
    """An Akima spline in time at each cell, then in space for cells never observed.

    See :func:`fill` for ``obj`` and ``axes`` and :func:`akima_array` for the method.
    """
    return fill(obj, "akima", axes=axes)


def telea(obj, radius: int = 3, *, axes: cube.Axes | None = None):
    """Per-frame inpainting with Telea's fast-marching method (OpenCV).

    See :func:`fill` for ``obj`` and ``axes`` and :func:`telea_array` for the method.
    """
    return fill(obj, "telea", axes=axes, radius=radius)


def ns_inpaint(obj, radius: int = 3, *, axes: cube.Axes | None = None):
    """Per-frame inpainting with the Navier-Stokes method (OpenCV).

    See :func:`fill` for ``obj`` and ``axes`` and :func:`ns_inpaint_array` for the method.
    """
    return fill(obj, "ns_inpaint", axes=axes, radius=radius)


def temporal(obj, *, axes: cube.Axes | None = None):
    """The observation nearest in time at each cell, the nearest cell's for cells never observed.

    See :func:`fill` for ``obj`` and ``axes`` and :func:`temporal_array` for the method.
    """
    return fill(obj, "temporal", axes=axes)


def dineof(obj, *, return_info: bool = False, axes: cube.Axes | None = None, **options):
    """Fill the gaps with DINEOF (iterated truncated EOF reconstruction).

    Parameters
    ----------
    obj, axes
        As for :func:`fill`.
    return_info : bool
        Also return the rank and cross-validation error of each channel.
    **options
        ``rank``, ``max_rank``, ``cv_fraction``, ``cv_min``, ``tol``, ``max_iter``,
        ``multivariate``, ``seed``: see :func:`dineof_array`.

    Returns
    -------
    filled : DataArray or Dataset
        As :func:`fill`.
    info : Dataset
        Only with ``return_info``: ``rank`` and ``cv_error`` over the dims
        ``([sample,] channel)``, ``channel`` labelled as in the cube layout.
    """
    values, layout = cube.to_array(obj, axes)
    result = dineof_array(values, **options)
    filled = _fill_gaps(obj, result.filled, layout)
    if not return_info:
        return filled
    sample = layout.axes.sample
    dims, index = ((sample, "channel"), slice(None)) if sample else (("channel",), 0)
    coords = {"channel": layout.channels}
    if sample and sample in obj.coords:
        coords[sample] = obj[sample].values
    info = xr.Dataset(
        {"rank": (dims, result.rank[index]), "cv_error": (dims, result.cv_error[index])}, coords=coords
    )
    return filled, info

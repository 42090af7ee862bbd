"""Scores of a reconstruction against the truth.

Every metric takes numpy arrays or xarray objects. Convention: a DataArray (or
array) gives a ``float``; a Dataset gives a ``dict`` of floats keyed by
variable, over the cube variables of ``truth`` (those with time, latitude and
longitude dims; every data variable when it is not a cube) that the prediction
also has. xarray inputs are matched to ``truth`` by dim name (any order) and
must share its coordinates exactly; a DataArray mask or prediction applies to
every variable of a Dataset ``truth``.

Cells where ``truth`` is NaN are left out; a NaN in the prediction where the
truth is finite makes the score NaN (an unfilled gap is not a zero error).
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from xrimpute import cube
from xrimpute.errors import ArgumentError, ArgumentTypeError

_TIME = "__metric_time__"


# ---------------------------------------------------------------- plumbing


def _variables(pred, truth: xr.Dataset) -> list[str]:
    shared = [name for name in truth.data_vars if name in pred.data_vars]
    try:
        axes = cube.find_axes(truth)
    except cube.CubeError:
        return shared
    return [name for name in shared if set(axes.core) <= set(truth[name].dims)] or shared


def _to_numpy(obj, truth, lead: tuple[str, ...] = ()):
    """``obj`` as an array laid out on the dims ``(*lead, *truth.dims)`` (size 1 where ``obj``
    lacks a dim), for a DataArray ``truth``; plain arrays pass through."""
    if obj is None:
        return None
    if not (isinstance(obj, xr.DataArray) and isinstance(truth, xr.DataArray)):
        return np.asarray(obj)
    absent = [d for d in lead if d not in obj.dims]
    if absent:
        raise ArgumentError(f"{obj.name or 'the ensemble'} has no dim {absent[0]!r}; its dims are {obj.dims}")
    extra = set(obj.dims) - set(truth.dims) - set(lead)
    if extra:
        raise ArgumentError(f"dims {sorted(map(str, extra))} are not dims of the truth {truth.dims}")
    obj, _ = xr.align(obj, truth, join="exact")
    missing = [d for d in truth.dims if d not in obj.dims]
    return obj.expand_dims(missing).transpose(*lead, *truth.dims).values


def _pick(obj, name):
    return obj[name] if isinstance(obj, xr.Dataset) else obj


def _for_each_variable(metric, truth: xr.Dataset, *others) -> dict[str, float]:
    """``metric(truth[name], *others)`` per variable; Dataset ``others`` give their own
    variable of that name, other inputs apply to every variable."""
    reference = next((o for o in others if isinstance(o, xr.Dataset)), truth)
    return {name: metric(truth[name], *(_pick(o, name) for o in others)) for name in _variables(reference, truth)}


def _per_variable(score, truth, *others, lead=()):
    """``score(truth, *others)`` on float64 numpy arrays laid out like ``truth``: a float for
    a DataArray or array ``truth``, a dict per variable for a Dataset. The first of
    ``others`` may carry the extra leading dims ``lead`` (ensemble members)."""
    if isinstance(truth, xr.Dataset):
        return _for_each_variable(lambda t, *o: _per_variable(score, t, *o, lead=lead), truth, *others)
    arrays = [_to_numpy(o, truth, lead if i == 0 else ()) for i, o in enumerate(others)]
    return score(np.asarray(truth, dtype=np.float64), *arrays)


def _cells(truth, where):
    """Cells scored: finite in the truth and selected by ``where``."""
    cells = np.isfinite(truth)
    return cells if where is None else cells & np.broadcast_to(np.asarray(where, dtype=bool), truth.shape)


def _mean(values, weights=None) -> float:
    if values.size == 0:
        return math.nan
    return float(np.mean(values) if weights is None else np.sum(weights * values) / np.sum(weights))


def _squared_error(truth, pred, where):
    cells = _cells(truth, where)
    pred = np.broadcast_to(np.asarray(pred, dtype=np.float64), truth.shape)
    return (pred[cells] - truth[cells]) ** 2, cells


def _gaps(observed):
    return observed.isnull() if isinstance(observed, (xr.DataArray, xr.Dataset)) else np.isnan(observed)


# ---------------------------------------------------------------- deterministic scores


def mse(pred, truth, where=None):
    """Mean squared error over the cells where ``truth`` is finite (and ``where`` is true)."""
    return _per_variable(lambda t, p, w: _mean(_squared_error(t, p, w)[0]), truth, pred, where)


def rmse(pred, truth, where=None):
    """Root of :func:`mse`."""
    return _per_variable(lambda t, p, w: math.sqrt(_mean(_squared_error(t, p, w)[0])), truth, pred, where)


def mse_gaps(pred, truth, observed):
    """Mean squared error on the gaps: cells that are NaN in ``observed`` but finite in ``truth``."""
    return mse(pred, truth, where=_gaps(observed))


def _nmse(truth, pred, where):
    squared, cells = _squared_error(truth, pred, where)
    return float(_mean(squared) / np.var(truth[cells])) if cells.any() else math.nan


def nmse(pred, truth, where=None):
    """:func:`mse` divided by the variance of ``truth`` over the same cells (1 = predicting its mean)."""
    return _per_variable(_nmse, truth, pred, where)


def latitude_weights(lat) -> np.ndarray:
    """``cos(latitude)`` normalised to mean 1 over the given latitudes (in degrees)."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.size == 0 or not np.all(np.abs(lat) <= 90):
        raise ArgumentError("latitudes must be in degrees, within [-90, 90]")
    weights = np.cos(np.deg2rad(lat))
    return weights / weights.mean()


def _grid_axes(obj) -> cube.Axes:
    """:func:`xrimpute.cube.find_axes` for fields with or without a time dim."""
    try:
        return cube.find_axes(obj)
    except cube.CubeError:
        return cube.find_axes(obj.expand_dims(_TIME), time=_TIME)


def lat_weighted_rmse(pred, truth, where=None):
    """Latitude-weighted RMSE (WeatherBench style).

    Each cell's squared error is weighted by ``cos(latitude)`` normalised to mean 1
    over the latitudes of the grid, so a global field counts area, not grid points;
    the result is the square root of the weighted mean over all scored cells (time
    included), not a mean of per-time RMSEs. The latitude dim is found with
    :func:`xrimpute.cube.find_axes` and needs a coordinate in degrees.
    """
    if isinstance(truth, xr.Dataset):
        return _for_each_variable(lambda t, p, w: lat_weighted_rmse(p, t, w), truth, pred, where)
    if not isinstance(truth, xr.DataArray):
        raise ArgumentTypeError("lat_weighted_rmse needs xarray inputs with a latitude coordinate")
    lat = _grid_axes(truth).lat
    if lat not in truth.coords:
        raise ArgumentError(f"the latitude dim {lat!r} needs a coordinate in degrees")
    weights = xr.DataArray(latitude_weights(truth[lat].values), dims=lat, coords={lat: truth[lat]})
    return _per_variable(lambda t, p, w, wt: math.sqrt(_mean(*_weighted(t, p, w, wt))), truth, pred, where, weights)


def _weighted(truth, pred, where, weights):
    squared, cells = _squared_error(truth, pred, where)
    return squared, np.broadcast_to(weights, truth.shape)[cells]


# ---------------------------------------------------------------- ensemble scores


def _members(ensemble, truth) -> np.ndarray:
    ensemble = np.asarray(ensemble, dtype=np.float64)
    return np.broadcast_to(ensemble, (ensemble.shape[0], *truth.shape))


def _crps(truth, ensemble, where, fair):
    cells = _cells(truth, where)
    members = np.sort(_members(ensemble, truth)[:, cells], axis=0)  # (m, cells)
    m = members.shape[0]
    error = np.mean(np.abs(members - truth[cells]), axis=0)
    # sum over all pairs |x_i - x_j| = 2 sum_i (2i - m - 1) x_(i) for sorted members, i = 1..m
    rank = 2 * np.arange(1, m + 1) - m - 1
    pair_sum = 2 * np.tensordot(rank, members, axes=1)
    pairs = m * (m - 1) if fair else m * m
    return _mean(error - pair_sum / (2 * pairs) if m > 1 else error)


def crps_ensemble(ensemble, truth, member_dim="sample", where=None, fair=True):
    """Continuous ranked probability score of an ensemble, averaged over cells.

    ``CRPS = E|X - y| - E|X - X'| / 2`` with members ``X, X'``. With ``fair=True`` (the
    default) ``E|X - X'|`` averages over the ``m (m - 1)`` pairs of distinct members:
    the unbiased estimate of the CRPS of the distribution the members are drawn
    from, fair between ensembles of different sizes. ``fair=False`` averages over
    all ``m^2`` pairs: the CRPS of the empirical distribution of the members. Both
    equal the mean absolute error for a single member or identical members. Uses
    the sorted-members form, ``O(m log m)`` per cell.

    Parameters
    ----------
    ensemble : DataArray, Dataset or ndarray
        Members along ``member_dim`` (along axis 0 for an array).
    truth : DataArray, Dataset or ndarray
        Same dims as ``ensemble`` without ``member_dim``.
    member_dim : str
        The dim of the members.
    where : optional
        Boolean mask of the cells to score.
    fair : bool
        The unbiased (fair) form rather than the empirical-distribution form.
    """
    return _per_variable(lambda t, e, w: _crps(t, e, w, fair), truth, ensemble, where, lead=(member_dim,))


def _spread_skill(truth, ensemble, where):
    cells = _cells(truth, where)
    members = _members(ensemble, truth)[:, cells]
    m = members.shape[0]
    if m < 2:
        raise ArgumentError("spread_skill needs at least 2 members")
    spread = math.sqrt(_mean(np.var(members, axis=0, ddof=1)))
    skill = math.sqrt(_mean((members.mean(axis=0) - truth[cells]) ** 2))
    return float(math.sqrt((m + 1) / m) * spread / np.float64(skill))  # inf for an exact mean


def spread_skill(ensemble, truth, member_dim="sample", where=None):
    """Spread-skill ratio: ensemble spread over the RMSE of the ensemble mean.

    ``sqrt((m + 1) / m) * sqrt(mean(s^2)) / sqrt(mean((mean_m - y)^2))`` with ``s^2``
    the unbiased variance of the ``m`` members at a cell. The factor corrects for
    the finite ensemble: when truth and members are exchangeable draws, the
    ensemble mean's squared error has expectation ``(1 + 1/m)`` times the member
    variance, so a calibrated ensemble scores 1 for any ``m``; below 1 means
    under-dispersed, above 1 over-dispersed. Members along ``member_dim`` (axis 0
    for an array).
    """
    return _per_variable(_spread_skill, truth, ensemble, where, lead=(member_dim,))


# ---------------------------------------------------------------- physical consistency


def _spacing(obj, dim) -> float | None:
    """Uniform spacing of a numeric coordinate, or None."""
    if dim not in obj.coords or obj.sizes[dim] < 2 or not np.issubdtype(obj[dim].dtype, np.number):
        return None
    steps = np.diff(np.asarray(obj[dim].values, dtype=np.float64))
    if not np.allclose(steps, steps[0], rtol=1e-6):
        raise ArgumentError(f"coordinate {dim!r} is not evenly spaced; pass the spacing explicitly")
    return float(abs(steps[0]))


def _required(value, name, hint):
    if value is None:
        raise ArgumentError(f"pass {name}= ({hint})")
    return value


def pde_residual_shallow_water(ds: xr.Dataset, *, dx=None, dt=None, f=None, g=None, nu=None,
                               names=("h", "u", "v")) -> dict[str, float]:
    """RMS residual of the rotating shallow-water equations of a (reconstructed) trajectory.

    Evaluates :func:`xrimpute.pde.shallow_water.shallow_water_residual` on depth and
    velocity (fourth-order differences, interior frames) and returns the RMS of each
    equation's residual: ``{"mass", "momentum_x", "momentum_y"}``. A trajectory of the
    equations scores at the level of the discretisation error; a reconstruction that
    fits the data but not the dynamics scores higher. NaN left in the fields gives NaN.

    Parameters
    ----------
    ds : Dataset
        Depth and velocities (``names``) with time, y and x dims in any order and an
        optional sample dim, on a periodic grid with equal spacing in x and y.
    dx, dt, f, g, nu : float, optional
        Grid spacing, frame interval, Coriolis parameter (scalar or one per sample),
        gravity and viscosity. Defaults come from the dataset as written by
        :func:`xrimpute.pde.shallow_water`: the attrs ``grid_spacing``, ``dt``,
        ``gravity``, ``viscosity`` and the variable ``coriolis``; then the coordinate
        spacing for ``dx`` and ``dt``, and ``g = 1``, ``nu = 0``.
    names : (str, str, str)
        Variables holding depth, x velocity and y velocity.
    """
    from xrimpute.pde.shallow_water import shallow_water_residual

    axes = cube.find_axes(ds)
    order = axes.batch  # ([sample,] time, y, x): x last, as the residual expects
    fields = [ds[name].transpose(*order).values for name in names]
    dx = dx or ds.attrs.get("grid_spacing") or _spacing(ds, axes.lon)
    dt = dt or ds.attrs.get("dt") or _spacing(ds, axes.time)
    if f is None and "coriolis" in ds:
        f = ds["coriolis"].transpose(*(d for d in order if d in ds["coriolis"].dims)).values
    residuals = shallow_water_residual(
        *fields,
        dx=_required(dx, "dx", "the grid spacing"),
        dt=_required(dt, "dt", "the time between frames"),
        f=_required(f, "f", "the Coriolis parameter"),
        g=g if g is not None else ds.attrs.get("gravity", 1.0),
        nu=nu if nu is not None else ds.attrs.get("viscosity", 0.0),
    )
    return {key: math.sqrt(float(np.mean(r**2))) for key, r in zip(("mass", "momentum_x", "momentum_y"), residuals)}


def _initial_state(obj):
    """A field as an array ``([sample,] y, x)``: the first frame when it has a time dim."""
    if not isinstance(obj, xr.DataArray):
        return np.asarray(obj, dtype=np.float64)
    axes = _grid_axes(obj)
    if axes.time in obj.dims:
        obj = obj.isel({axes.time: 0})
    lead = (axes.sample,) if axes.sample else ()
    return obj.transpose(*lead, axes.lat, axes.lon).values.astype(np.float64)


def advection_forecast_mse(initial_pred, initial_truth, velocity, steps: int = 50, *, dt: float, dx=None):
    """Forecast skill of a reconstructed initial state under linear advection.

    Both initial states are stepped forward ``steps`` intervals ``dt`` with
    :func:`xrimpute.pde.advection.advect_fd` at the same velocity, and the MSE
    between the two forecasts is averaged over the frames ``1 .. steps``. Since the
    same solver runs both, the score measures only the error of the initial state
    as the dynamics carry it.

    Parameters
    ----------
    initial_pred, initial_truth : DataArray, Dataset or ndarray
        Fields on a periodic grid, ``([sample,] y, x)``; for cubes with a time dim
        the first frame is used. Arrays end in ``(ny, nx)``.
    velocity : array_like, shape (2,) or (n_samples, 2)
        ``(c_x, c_y)``, one pair per sample (e.g. ``np.stack([ds.velocity_x,
        ds.velocity_y], -1)`` for :func:`xrimpute.pde.advection`).
    steps : int
        Intervals to integrate.
    dt : float
        Time of one interval.
    dx : float, optional
        Grid spacing (equal in x and y); default the spacing of the x coordinate.
    """
    from xrimpute.pde.advection import advect_fd

    def score(truth, pred):
        if isinstance(truth, xr.DataArray) and isinstance(pred, xr.DataArray):
            pred, truth = xr.align(pred, truth, join="exact")
        spacing = dx or (_spacing(truth, _grid_axes(truth).lon) if isinstance(truth, xr.DataArray) else None)
        spacing = _required(spacing, "dx", "the grid spacing")
        forecasts = [advect_fd(_initial_state(a), velocity, spacing, dt, steps)[..., 1:, :, :] for a in (pred, truth)]
        return float(np.mean((forecasts[0] - forecasts[1]) ** 2))

    if isinstance(initial_truth, xr.Dataset):
        return _for_each_variable(score, initial_truth, initial_pred)
    return score(initial_truth, initial_pred)

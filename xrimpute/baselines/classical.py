"""Classical gap fillers on numpy arrays: interpolation, inpainting, nearest in time, DINEOF, and the station
interpolators (thin-plate RBF, normalised convolution, ordinary kriging).

Every core takes one channel's field ``(T, H, W)`` or a whole cube array
``(N, C, T, H, W)`` (looping over samples and channels), with NaN where
unobserved, and returns an array of the same shape and dtype in which every
gap is filled and every observed value is kept exactly. A ``(T, H, W)`` block
without any observation stays NaN: there is nothing to fill it from.

``times`` (where taken) are the positions of the time steps, e.g. the time
coordinate as float; the default is the step index. Space is the grid index
space: distances count grid cells, not kilometres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay, QhullError, cKDTree

from ..errors import ArgumentError


def _per_field(core, values: np.ndarray, **options) -> np.ndarray:
    """Apply a ``(T, H, W)`` core to a field, or to every field of an ``(N, C, T, H, W)`` array."""
    values = np.asarray(values)
    if values.ndim == 3:
        return core(values, **options)
    if values.ndim != 5:
        raise ArgumentError(f"expected a (T, H, W) or (N, C, T, H, W) array, got shape {values.shape}")
    out = np.empty_like(values)
    for n in range(values.shape[0]):
        for c in range(values.shape[1]):
            out[n, c] = core(values[n, c], **options)
    return out


def _keep_observed(field: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """``filled`` in the dtype of ``field``, with the observed values of ``field`` bit for bit."""
    return np.where(np.isfinite(field), field, filled).astype(field.dtype, copy=False)


def _time_positions(times, n_steps: int) -> np.ndarray:
    if times is None:
        return np.arange(n_steps, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (n_steps,):
        raise ArgumentError(f"times has shape {times.shape}, expected ({n_steps},)")
    return times


def _bracket(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each step and cell of a ``(T, S)`` mask: the last observed step at or before it and
    the first at or after it (``-1`` / ``T`` where there is none)."""
    n_steps = observed.shape[0]
    step = np.arange(n_steps)[:, None]
    before = np.maximum.accumulate(np.where(observed, step, -1), axis=0)
    after = np.minimum.accumulate(np.where(observed, step, n_steps)[::-1], axis=0)[::-1]
    return before, after


def _fill_time(series: np.ndarray, times: np.ndarray, linear: bool) -> np.ndarray:
    """Fill a ``(T, S)`` array along time: linear between observations with nearest
    extrapolation at the ends, or the nearest observation (ties: the earlier step).
    Cells never observed stay NaN."""
    observed = np.isfinite(series)
    before, after = _bracket(observed)
    has_before, has_after = before >= 0, after < len(times)
    i0 = np.clip(before, 0, len(times) - 1)
    i1 = np.clip(after, 0, len(times) - 1)
    v0 = np.take_along_axis(series, i0, axis=0)
    v1 = np.take_along_axis(series, i1, axis=0)
    t = times[:, None]
    gap0, gap1 = np.abs(t - times[i0]), np.abs(times[i1] - t)  # abs: times may decrease
    if linear:
        span = np.where(has_before & has_after & (i1 > i0), gap0 + gap1, 1.0)
        inner = v0 + (v1 - v0) * (gap0 / span)
    else:
        inner = np.where(gap0 <= gap1, v0, v1)
    return np.where(has_before & has_after, inner, np.where(has_before, v0, v1))


def _fill_space(field: np.ndarray, known: np.ndarray, linear: bool) -> np.ndarray:
    """Fill the cells of a ``(T, H, W)`` field that are not ``known`` (an ``(H, W)`` mask of
    cells finite in every frame) from the known cells of the same frame: linear on a
    Delaunay triangulation of the known cells, nearest outside their hull or if
    ``linear`` is false. One triangulation and tree serve all frames."""
    unknown = ~known
    if not unknown.any() or not known.any():
        return field
    n_steps = field.shape[0]
    points = np.argwhere(known).astype(np.float64)
    queries = np.argwhere(unknown).astype(np.float64)
    columns = field[:, known].T  # (n_known, T)
    result = np.full((len(queries), n_steps), np.nan)
    if linear and len(points) >= 3:
        try:
            result = LinearNDInterpolator(Delaunay(points), columns)(queries)
        except QhullError:  # known cells on one line: no triangles, nearest does it all
            pass
    outside = np.isnan(result).any(axis=1)
    if outside.any():
        _, nearest = cKDTree(points).query(queries[outside])
        result[outside] = columns[nearest]
    field = field.copy()
    field[:, unknown] = result.T
    return field


def _fill_time_akima(series: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Fill a ``(T, S)`` array along time with the Akima spline through each cell's observations, as
    ``scipy.interpolate.Akima1DInterpolator`` draws it (and ``xarray``'s ``interpolate_na(method="akima")``),
    all cells at once; nearest beyond a cell's first and last observation, linear where a cell has only two.
    Cells never observed stay NaN."""
    filled = _fill_time(series, times, linear=True)  # the ends, and cells with too few observations for a spline
    observed = np.isfinite(series)
    counts = observed.sum(axis=0)
    cells = np.flatnonzero(counts >= 3)
    if not len(cells):
        return filled
    seen, n = observed[:, cells], counts[cells]
    order = np.argsort(~seen, axis=0, kind="stable")[: n.max()]  # each cell's observed steps first, in order
    x, y = times[order], np.take_along_axis(series[:, cells], order, axis=0)
    k = np.arange(len(order))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # past a cell's last observation: unused
        secant = np.diff(y, axis=0) / np.diff(x, axis=0)
    # secants padded by two extrapolated ones at either end (Akima 1970): m[j] is secant j - 2
    m = np.empty((len(order) + 3, len(cells)))
    m[2:-2] = secant
    m[1], m[0] = 2 * m[2] - m[3], 3 * m[2] - 2 * m[3]
    last = np.take_along_axis(m, n[None], axis=0)[0], np.take_along_axis(m, n[None] - 1, axis=0)[0]
    np.put_along_axis(m, n[None] + 1, 2 * last[0] - last[1], axis=0)
    np.put_along_axis(m, n[None] + 2, 3 * last[0] - 2 * last[1], axis=0)
    left, right = np.abs(m[1:-2] - m[:-3]), np.abs(m[3:] - m[2:-1])
    weight = left + right
    tiny = 1e-9 * np.where(k < n, weight, -np.inf).max(axis=0)  # scipy's rule for an undefined slope, per cell
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(weight > tiny, (right * m[1:-2] + left * m[2:-1]) / weight, 0.5 * (m[3:] + m[:-3]))
    # every step between two observations of its cell: the cubic Hermite piece through them
    before = np.cumsum(seen, axis=0) - 1  # rank of the last observation at or before each step
    inside = ~seen & (before >= 0) & (before < n - 1)
    at, column = np.nonzero(inside)
    i0 = before[at, column]
    x0, x1, y0, y1 = x[i0, column], x[i0 + 1, column], y[i0, column], y[i0 + 1, column]
    span = x1 - x0
    s = (times[at] - x0) / span
    value = ((2 * s**3 - 3 * s**2 + 1) * y0 + (s**3 - 2 * s**2 + s) * span * slope[i0, column]
             + (3 * s**2 - 2 * s**3) * y1 + (s**3 - s**2) * span * slope[i0 + 1, column])
    filled[at, cells[column]] = value
    return filled


def _time_then_space(field, times, linear, akima=False):
    """Fill along time at each cell (an Akima spline with ``akima``), then the cells never observed from the
    others in space."""
    n_steps = field.shape[0]
    series, times = field.reshape(n_steps, -1).astype(np.float64), _time_positions(times, n_steps)
    series = _fill_time_akima(series, times) if akima else _fill_time(series, times, linear)
    known = np.isfinite(series).all(axis=0).reshape(field.shape[1:])
    return _keep_observed(field, _fill_space(series.reshape(field.shape), known, linear))


def interpolate_array(values: np.ndarray, times=None) -> np.ndarray:
    """Linear interpolation in time at each cell, then in space for cells never observed.

    Along time: linear between the observations of a cell, the nearest observation
    beyond the first and last (as ``xarray``'s ``interpolate_na`` along time
    followed by a nearest fill). Cells never observed are then interpolated per
    frame, linearly on a Delaunay triangulation of the other cells, nearest
    outside their convex hull.

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    times : array_like of float, optional
        Positions of the ``T`` time steps (default: the step index).

    Returns
    -------
    ndarray
        Same shape and dtype, gaps filled.
    """
    return _per_field(_time_then_space, values, times=times, linear=True)


def akima_array(values: np.ndarray, times=None) -> np.ndarray:
    """An Akima spline in time at each cell, then in space for cells never observed.

    Along time: the Akima spline through the observations of a cell, as
    ``xarray``'s ``interpolate_na(method="akima")`` draws it (less prone to
    overshoot than a cubic spline; it follows a diurnal cycle that straight
    lines cut across), the nearest observation beyond the first and last,
    linear where a cell has only two. Cells never observed are then filled as
    :func:`interpolate_array` fills them.

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    times : array_like of float, optional
        Positions of the ``T`` time steps (default: the step index).

    Returns
    -------
    ndarray
        Same shape and dtype, gaps filled.
    """
    return _per_field(_time_then_space, values, times=times, linear=True, akima=True)


def temporal_array(values: np.ndarray, times=None) -> np.ndarray:
    """At each cell the observation nearest in time (ties: the earlier step); cells never
    observed take the series of the nearest cell (in grid cells) that was.

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    times : array_like of float, optional
        Positions of the ``T`` time steps (default: the step index).

    Returns
    -------
    ndarray
        Same shape and dtype, gaps filled.
    """
    return _per_field(_time_then_space, values, times=times, linear=False)


def _cv2():
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            'the "telea" and "ns_inpaint" baselines need OpenCV: pip install "xrimpute[classical]"'
        ) from error
    return cv2


def _inpaint_field(field, flag, radius):
    cv2 = _cv2()
    filled = np.full(field.shape, np.nan, dtype=np.float64)
    for t, frame in enumerate(field):
        observed = np.isfinite(frame)
        if not observed.any():
            continue
        if observed.all():
            filled[t] = frame
            continue
        # OpenCV's Telea is not scale invariant on float images and goes wrong on small
        # ranges such as [0, 1]; it works as designed on the 8-bit range, so map each
        # frame affinely onto [0, 255] in float32: nothing is quantised.
        low, high = frame[observed].min(), frame[observed].max()
        scale = (high - low) / 255.0 if high > low else 1.0
        image = np.where(observed, (frame - low) / scale, 0.0).astype(np.float32)
        mask = (~observed).astype(np.uint8)
        filled[t] = cv2.inpaint(image, mask, radius, flag).astype(np.float64) * scale + low
    # frames without a single observation take the nearest inpainted frame in time
    filled = _fill_time(filled.reshape(len(field), -1), np.arange(len(field), dtype=np.float64), False)
    return _keep_observed(field, filled.reshape(field.shape))


def telea_array(values: np.ndarray, radius: int = 3) -> np.ndarray:
    """Inpaint each frame with OpenCV's fast-marching method of Telea (2004).

    Works on float32 frames (mapped affinely onto [0, 255], never quantised).
    Frames without any observation take the nearest inpainted frame in time.

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    radius : int
        Neighbourhood radius in grid cells considered around each filled cell.

    Returns
    -------
    ndarray
        Same shape and dtype, gaps filled.
    """
    return _per_field(_inpaint_field, values, flag=_cv2().INPAINT_TELEA, radius=radius)


def ns_inpaint_array(values: np.ndarray, radius: int = 3) -> np.ndarray:
    """Inpaint each frame with OpenCV's Navier-Stokes method of Bertalmio et al. (2001).

    Same conventions as :func:`telea_array`.
    """
    return _per_field(_inpaint_field, values, flag=_cv2().INPAINT_NS, radius=radius)


# --------------------------------------------------------------------------- DINEOF


@dataclass
class DineofResult:
    """Output of :func:`dineof_array`.

    ``rank`` and ``cv_error`` are scalars for a ``(T, H, W)`` input and ``(N, C)``
    arrays for an ``(N, C, T, H, W)`` input (with ``multivariate=True`` the
    channels of a sample share one rank and error). ``cv_error`` is the RMS error
    on the held-back cells, in the units of the data (in standard deviations of
    each channel when multivariate); NaN where the rank was given, or for a block
    without observations (rank 0).
    """

    filled: np.ndarray
    rank: int | np.ndarray
    cv_error: float | np.ndarray


def _truncated_svd(matrix: np.ndarray, rank: int) -> np.ndarray:
    """Best rank-``rank`` approximation of ``matrix``: its projection onto the leading
    eigenvectors of the Gram matrix of its shorter side (the leading singular vectors)."""
    wide = matrix.shape[0] <= matrix.shape[1]
    gram = matrix @ matrix.T if wide else matrix.T @ matrix
    size = gram.shape[0]
    _, lead = scipy.linalg.eigh(gram, subset_by_index=(size - rank, size - 1))
    return lead @ (lead.T @ matrix) if wide else (matrix @ lead) @ lead.T


def _reconstruct(anomaly, missing, rank, tol, max_iter):
    """Replace the ``missing`` entries of ``anomaly`` (in place) by their rank-``rank`` SVD
    reconstruction until the RMS change of those entries falls below ``tol`` times the
    RMS of the known entries."""
    if not missing.any():  # nothing to reconstruct (station series observed at every step)
        return anomaly
    scale = math.sqrt(np.mean(anomaly[~missing] ** 2)) or 1.0
    for _ in range(max_iter):
        update = _truncated_svd(anomaly, rank)[missing]
        change = math.sqrt(np.mean((update - anomaly[missing]) ** 2))
        anomaly[missing] = update
        if change < tol * scale:
            break
    return anomaly


def _cross_validate(anomaly, observed, max_rank, cv_fraction, cv_min, tol, max_iter, seed):
    """Choose the number of modes on held-back observed cells.

    Returns the rank, its RMS error on those cells, and the matrix reconstructed with
    that rank with the held-back cells restored (the warm start of the refit)."""
    observed_cells = np.flatnonzero(observed)
    n_cv = max(cv_min, math.ceil(cv_fraction * observed_cells.size))
    if 2 * n_cv > observed_cells.size:
        raise ArgumentError(
            f"{observed_cells.size} observations are too few to hold back {n_cv} for "
            "cross-validation; pass rank=k to fix the number of modes instead"
        )
    held = np.random.default_rng(seed).choice(observed_cells, n_cv, replace=False)
    truth = anomaly.flat[held].copy()
    anomaly = anomaly.copy()
    anomaly.flat[held] = 0.0
    missing = ~observed
    missing.flat[held] = True
    # a gain below the iterations' own accuracy comes from iterating longer, not from the mode
    resolution = tol * math.sqrt(np.mean(anomaly[~missing] ** 2))
    errors, best = [], anomaly
    for k in range(1, max_rank + 1):
        anomaly = _reconstruct(anomaly, missing, k, tol, max_iter)
        error = math.sqrt(np.mean((anomaly.flat[held] - truth) ** 2))
        if errors and error > errors[-1] - resolution:
            break
        errors.append(error)
        best = anomaly.copy()
    best.flat[held] = truth
    return len(errors), errors[-1], best


def _dineof_matrix(matrix, rank, max_rank, cv_fraction, cv_min, tol, max_iter, seed):
    """DINEOF on a time x space matrix whose every row and column has an observation.

    Returns the filled matrix, the rank and the cross-validation RMS error."""
    observed = np.isfinite(matrix)
    mean = matrix[observed].mean()
    anomaly = np.where(observed, matrix - mean, 0.0)  # gaps start at the mean
    cv_error = math.nan
    if rank is None:
        max_rank = min(max_rank, min(matrix.shape) - 1)
        rank = 0
        if max_rank >= 1:
            rank, cv_error, anomaly = _cross_validate(
                anomaly, observed, max_rank, cv_fraction, cv_min, tol, max_iter, seed
            )
    rank = min(rank, min(matrix.shape))
    if rank >= 1:
        anomaly = _reconstruct(anomaly, ~observed, rank, tol, max_iter)
    return anomaly + mean, rank, cv_error


def _dineof_block(block, rank, max_rank, cv_fraction, cv_min, tol, max_iter, seed):
    """DINEOF on a ``(C, T, H, W)`` block, its channels stacked along space after
    standardisation. Steps and cells never observed are left out of the matrix and
    filled afterwards by :func:`interpolate_array` from the reconstruction."""
    n_channels, n_steps = block.shape[:2]
    data = block.astype(np.float64)
    observed = np.isfinite(data)
    mean = np.array([data[c][observed[c]].mean() for c in range(n_channels)])
    std = np.array([data[c][observed[c]].std() for c in range(n_channels)])
    std = np.where(std > 0, std, 1.0)
    standard = (data - mean[:, None, None, None]) / std[:, None, None, None]
    matrix = standard.transpose(1, 0, 2, 3).reshape(n_steps, -1)
    rows = np.isfinite(matrix).any(axis=1)
    cols = np.isfinite(matrix).any(axis=0)
    reduced, rank, cv_error = _dineof_matrix(
        matrix[np.ix_(rows, cols)], rank, max_rank, cv_fraction, cv_min, tol, max_iter, seed
    )
    full = np.full(matrix.shape, np.nan)
    full[np.ix_(rows, cols)] = reduced
    full = full.reshape(n_steps, n_channels, *block.shape[2:]).transpose(1, 0, 2, 3)
    filled = interpolate_array(full[:, None])[:, 0] * std[:, None, None, None] + mean[:, None, None, None]
    if n_channels == 1:  # report a single channel's error in its own units
        cv_error *= std[0]
    return _keep_observed(block, filled), rank, cv_error


def dineof_array(
    values: np.ndarray,
    rank: int | None = None,
    max_rank: int = 20,
    cv_fraction: float = 0.03,
    cv_min: int = 30,
    tol: float = 1e-5,
    max_iter: int = 500,
    multivariate: bool = False,
    seed: int = 0,
) -> DineofResult:
    """DINEOF: fill gaps by an iterated truncated EOF (SVD) reconstruction.

    Data Interpolating Empirical Orthogonal Functions (Beckers & Rixen 2003,
    J. Atmos. Oceanic Technol. 20, 1839-1856). Each field becomes a time x space
    matrix; the mean of the observed values is removed and the gaps start at 0
    (the mean). For ``k = 1, 2, ...`` the gaps are replaced by the rank-``k`` SVD
    reconstruction of the matrix until they change by less than ``tol`` (RMS,
    relative to the RMS of the observed anomalies), starting from the state
    reached with ``k - 1`` modes. The number of modes is chosen by
    cross-validation: a random set of observed cells is held back as gaps, and
    modes are added while their reconstruction error keeps decreasing by more
    than ``tol`` times the RMS of the observed anomalies (smaller gains are within
    the accuracy of the iterations). With the
    chosen rank the held-back cells are restored and the matrix is refitted.

    Steps and cells without any observation carry no information for the EOFs;
    they are left out of the matrix and filled by linear interpolation (in time,
    then space) of the reconstruction.

    Cost: each iteration forms the Gram matrix of the shorter side of the
    ``T x S`` matrix (``O(T S min(T, S))``) and its leading ``k`` eigenvectors
    (at most ``O(min(T, S)^3)``); the fit takes up to ``(max_rank + 1) * max_iter``
    iterations, far fewer when they converge. Memory is a few copies of the matrix.

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    rank : int, optional
        Number of modes; skips the cross-validation.
    max_rank : int
        Most modes tried by the cross-validation (capped below ``min(T, S)``).
    cv_fraction, cv_min : float, int
        Held-back share of the observed cells, and their least number.
    tol : float
        Convergence tolerance of the iterations at each rank.
    max_iter : int
        Most iterations at each rank.
    multivariate : bool
        Fit the channels of a sample together: each is standardised by the mean and
        standard deviation of its observed values and they share the EOFs.
    seed : int
        Seed of the held-back cells.

    Returns
    -------
    DineofResult
        ``filled`` (same shape and dtype as ``values``), ``rank`` and ``cv_error``.
    """
    values = np.asarray(values)
    options = dict(rank=rank, max_rank=max_rank, cv_fraction=cv_fraction, cv_min=cv_min,
                   tol=tol, max_iter=max_iter, seed=seed)
    if values.ndim == 3:
        if not np.isfinite(values).any():
            return DineofResult(values.copy(), 0, math.nan)
        filled, rank_, error = _dineof_block(values[None], **options)
        return DineofResult(filled[0], rank_, error)
    if values.ndim != 5:
        raise ArgumentError(f"expected a (T, H, W) or (N, C, T, H, W) array, got shape {values.shape}")
    filled = values.copy()
    ranks = np.zeros(values.shape[:2], dtype=int)
    errors = np.full(values.shape[:2], np.nan)
    groups = [list(range(values.shape[1]))] if multivariate else [[c] for c in range(values.shape[1])]
    for n in range(values.shape[0]):
        for group in groups:
            group = [c for c in group if np.isfinite(values[n, c]).any()]
            if group:
                filled[n, group], ranks[n, group], errors[n, group] = _dineof_block(values[n, group], **options)
    return DineofResult(filled, ranks, errors)


# -- interpolators that station users know: thin-plate RBF, normalised convolution, ordinary kriging -----------
DENSE_RBF = 1000  # observations per frame up to which the RBF solves the whole system (local neighbours beyond)


def _per_frame(field: np.ndarray, frame_core, least: int) -> np.ndarray:
    """Fill every frame of a ``(T, H, W)`` field with ``frame_core(points, values, queries)`` from its own
    observations; a frame with fewer than ``least`` of them takes their mean (or, without any, the nearest
    filled frame in time)."""
    filled = np.full(field.shape, np.nan, dtype=np.float64)
    for t, frame in enumerate(field):
        observed = np.isfinite(frame)
        if not observed.any():
            continue
        filled[t] = frame
        if observed.all():
            continue
        points, queries = np.argwhere(observed).astype(np.float64), np.argwhere(~observed).astype(np.float64)
        known = frame[observed].astype(np.float64)
        filled[t][~observed] = frame_core(points, known, queries) if len(known) >= least else known.mean()
    filled = _fill_time(filled.reshape(len(field), -1), np.arange(len(field), dtype=np.float64), False)
    return _keep_observed(field, filled.reshape(field.shape))


def _rbf_field(field, smoothing, neighbors):
    from scipy.interpolate import RBFInterpolator

    def frame_core(points, known, queries):
        local = neighbors if neighbors is not None else (None if len(known) <= DENSE_RBF else 64)
        scale = known.std() or 1.0  # the smoothing acts on standardised values

        def interpolated(kernel, degree=None):
            return RBFInterpolator(points, (known - known.mean()) / scale, kernel=kernel, degree=degree,
                                   smoothing=smoothing, neighbors=local)(queries) * scale + known.mean()

        try:
            return interpolated("thin_plate_spline")
        except np.linalg.LinAlgError:  # observations on one line (a swath's edge) fix no plane for the spline's trend
            return interpolated("linear", degree=0)

    return _per_frame(field, frame_core, least=3)


def rbf_array(values: np.ndarray, smoothing: float = 0.0, neighbors: int | None = None) -> np.ndarray:
    """Thin-plate spline radial basis function interpolation of each frame from its observations.

    :class:`scipy.interpolate.RBFInterpolator` with ``kernel="thin_plate_spline"``
    (and a linear trend), on the grid index space; where a frame's observations
    lie on one line, which fixes no trend plane, the linear kernel and a
    constant. Frames with fewer than 3 observations take their mean; frames
    without any, the nearest filled frame in time.

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    smoothing : float
        0 interpolates the observations exactly; larger values smooth (on values
        standardised per frame).
    neighbors : int, optional
        Observations each estimate uses; default all of them up to
        ``DENSE_RBF`` (1000) per frame, the nearest 64 beyond.
    """
    return _per_field(_rbf_field, values, smoothing=smoothing, neighbors=neighbors)


def _normalised_convolution_field(field, sigma, sigma_time):
    from scipy.ndimage import gaussian_filter

    observed = np.isfinite(field)
    data = np.where(observed, field, 0.0).astype(np.float64)
    weight = observed.astype(np.float64)
    filled = np.full(field.shape, np.nan)
    scale = 1.0
    while np.isnan(filled[~observed]).any() and scale * sigma <= 2 * max(field.shape[1:]):
        widths = (sigma_time, scale * sigma, scale * sigma)
        numerator = gaussian_filter(data, widths, mode="constant")
        certainty = gaussian_filter(weight, widths, mode="constant")
        reached = np.isnan(filled) & (certainty > 1e-12)  # a wider kernel only where the narrower found nothing
        filled[reached] = numerator[reached] / certainty[reached]
        scale *= 2
    return _keep_observed(field, filled)


def normalised_convolution_array(values: np.ndarray, sigma: float = 2.0, sigma_time: float = 1.0) -> np.ndarray:
    """Normalised convolution (Knutsson & Westin 1993): a Gaussian average over space and time of the observed
    cells only, ``G * (x m) / G * m`` with ``m`` the observation mask.

    Where no observation lies within reach of the kernel, its spatial width
    doubles until one does (up to twice the grid).

    Parameters
    ----------
    values : ndarray
        ``(T, H, W)`` or ``(N, C, T, H, W)``, NaN where unobserved.
    sigma : float
        Standard deviation of the kernel in space, in grid cells.
    sigma_time : float
        Standard deviation of the kernel in time, in steps (0: each frame alone).
    """
    if sigma <= 0 or sigma_time < 0:
        raise ArgumentError(f"sigma must be positive and sigma_time non-negative, got {sigma} and {sigma_time}")
    return _per_field(_normalised_convolution_field, values, sigma=sigma, sigma_time=sigma_time)


def _pykrige():
    try:
        from pykrige.ok import OrdinaryKriging
    except ImportError as error:
        raise ImportError('the "kriging" baseline needs PyKrige: pip install "xrimpute[kriging]"') from error
    return OrdinaryKriging


def _kriging_field(field, variogram_model):
    ordinary_kriging = _pykrige()

    def frame_core(points, known, queries):
        if np.ptp(known) == 0:  # a constant field: no variogram to fit
            return np.full(len(queries), known[0])
        model = ordinary_kriging(points[:, 1], points[:, 0], known, variogram_model=variogram_model)
        estimate, _ = model.execute("points", queries[:, 1], queries[:, 0])
        return np.asarray(estimate, dtype=np.float64)

    return _per_frame(field, frame_core, least=3)


def kriging_array(values: np.ndarray, variogram_model: str = "spherical") -> np.ndarray:
    """Ordinary kriging of each frame from its observations (PyKrige, an optional dependency).

    The variogram (``"linear"``, ``"power"``, ``"gaussian"``, ``"spherical"``,
    ``"exponential"``) is fitted to each frame's observations on the grid index
    space. Frames with fewer than 3 observations take their mean; frames
    without any, the nearest filled frame in time. Cost grows with the cube of
    the observations per frame: meant for station networks.
    """
    _pykrige()  # the clear error before any work
    return _per_field(_kriging_field, values, variogram_model=variogram_model)

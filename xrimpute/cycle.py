"""Each cell's regular cycle (the day's, or the year's): a baseline whose departures the first guess fills.

An hourly field swings through the day by a different amount in every cell
(land more than sea), and a gap of a few hours lies on that swing. Filling
the departures from each cell's mean cycle, and adding the cycle back, bends
the fill along the day where a line between the observations either side of
the gap cuts it short: on the ERA5 sample's moving blocks the first guess
alone filled 8-25 % better (``benchmarks/RESULTS.md``). A cell observed a
few times (sparse pixels of a monthly series) cannot tell its cycle from its
noise, but the cycle its neighbours share it can: a fit tries both, each
cell's own and one pooled over its neighbourhood (:data:`NEIGHBOURHOODS`),
and keeps either only where it fills its held-back cells better than no
cycle (:meth:`xrimpute.engine.Engine.fit`). Observations that see some phases
of the cycle only (a swath passing at the same hours each day) give no cycle
(:data:`COVERAGE`): the held-back cells, seen at those phases too, could not
tell how wrong it is at the others.

The cycle is a function of the phase of each step (the hour of the day, the
time of the year; :func:`xrimpute.cube.cycle_phase` reads it from the time
coordinate), so it needs no origin in time and carries over to other series.
This module knows no xarray: phases are plain arrays.
"""
from __future__ import annotations

import numpy as np
import torch
from dask import is_dask_collection

from .nets.prior import HISTORY_LEVELS, FirstGuess, Wrap, gaussian_kernel, smoothing_matrix, wrapping
from .passes import compute_pass

HARMONICS = 2
"""Harmonics of the cycle: on the ERA5 sample's moving blocks two filled 7-14 % better than one (classical
fillers, ``benchmarks/RESULTS.md``)."""
NEIGHBOURHOODS = (0.0, 8.0)
"""Widths in cells of the Gaussians over which a cell's neighbours pool their observations into its cycle, one
candidate each (0: each cell's own), chosen on the held-back cells (:meth:`xrimpute.engine.Engine.fit`): a cell
observed hourly for a month has a cycle of its own, one of sparse monthly pixels, seen five times, only the one it
shares (on OSTIA's 10 % pixels, seed 0, the guess on the pooled cycle filled the held-back cells 0.0079, on each
cell's own 0.0167, with none 0.0087; a prototype pooling over 1, 2 and 4 cells scored 0.0157, 0.0088 and 0.0080;
``benchmarks/RESULTS.md``)."""
RIDGE = 1.0
"""Observations' worth by which the harmonics' amplitudes are pulled towards 0."""
COVERAGE = 0.1
"""How evenly the observations within the widest of :data:`NEIGHBOURHOODS` round a cell must spread over the
cycle, against the series' own steps (the smallest eigenvalue of their normal equations relative to the steps',
1 for the whole series), for the cell to get a cycle: a swath seen near the same two hours each day (0.01)
cannot tell the day's swing at any other hour."""
CELLS_AT_ONCE = 2**22
"""Cells times steps that :func:`fit_cycle` holds in double precision at once in memory (32 MB an array: a few of
them next to a cube in memory, not a few copies of it), and :func:`without_cycle` makes of the cycle at once."""


def _blocks_of_steps(steps: int, cells: int) -> list[slice]:
    """The series' ``steps`` in blocks of at most :data:`CELLS_AT_ONCE` cells (``cells`` a step), one step at least."""
    size = max(1, CELLS_AT_ONCE // max(1, cells))
    return [slice(start, start + size) for start in range(0, steps, size)]


def harmonics(phase: np.ndarray, count: int = HARMONICS) -> np.ndarray:
    """``(T, 2 count)``: the cosine and sine of each harmonic at every step's ``phase`` (fractions of a cycle)."""
    angle = 2 * np.pi * np.asarray(phase, np.float64)[:, None] * np.arange(1, count + 1)
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1).reshape(len(angle), 2 * count)


def fit_cycle(values, observed, phase: np.ndarray, count: int = HARMONICS, periodic: Wrap = False,
              neighbourhoods: tuple[float, ...] = (0.0,), progress: bool = False, return_sums: bool = False):
    """``[(2 count, C, H, W), ...]``: each cell's cycle for each of ``neighbourhoods`` (Gaussian widths in cells
    over which the cell's neighbours pool their observations with its own; 0: its own alone), the amplitudes of
    its harmonics at ``phase`` ``(T,)`` fitted with its mean by least squares to the observations in ``values``
    ``(N, C, T, H, W)`` (any value where not ``observed``), pulled towards 0 by :data:`RIDGE`. A cell observed
    fewer than twice as often as there are terms, pooled, takes the cycles of the cells round it (normalised
    convolution over the spatial scales that fill a history baseline,
    :data:`~xrimpute.nets.prior.HISTORY_LEVELS`), weighed by their observations (round the axes that wrap,
    :func:`~xrimpute.nets.prior.wrapping` of ``periodic``); a cell whose neighbourhood (the widest of
    :data:`NEIGHBOURHOODS`) covers the cycle less evenly than :data:`COVERAGE`, none.
    The mean itself is not part of the cycle (the guess finds each cell's level). ``values`` and ``observed`` in
    memory (numpy or torch), or dask: then one pass over the archive, chunk by chunk, for all neighbourhoods (with
    a progress bar when ``progress``). With ``return_sums``, ``(cycles, sums)``: ``sums`` ``(N, C, H, W, 2 count)``
    float64, each cell's harmonics summed over its observed steps in each sample, from the same pass, from which
    :func:`departures_totals` takes the cycles out of a series' totals."""
    n, c, t, h, w = values.shape
    wraps_rows, wraps_columns = wrapping(periodic)
    rows = np.concatenate([np.ones((t, 1)), harmonics(phase, count)], 1)  # (T, P)
    terms = rows.shape[1]
    upper = np.triu_indices(terms)  # the matrix is symmetric: sum only its distinct products
    products = rows[:, upper[0]] * rows[:, upper[1]]  # (T, P (P + 1) / 2)
    if is_dask_collection(values) or is_dask_collection(observed):
        sums = compute_pass(*_normal_equations(values, observed, rows, products, return_sums), progress=progress,
                            desc="each cell's cycle: reading the archive")
    else:
        values, observed = np.asarray(values), np.asarray(observed)
        sums = None  # summed as the blocks come: each block's sums are a few doubles a cell
        for part in _blocks_of_steps(t, n * c * h * w):  # in double precision
            block = _normal_equations(values[:, :, part], observed[:, :, part], rows[part], products[part],
                                      return_sums)
            sums = block if sums is None else [total + part for total, part in zip(sums, block)]
    distinct, rhs = (torch.as_tensor(np.asarray(part, np.float64)) for part in sums[:2])

    def symmetric(sums):  # (C, H, W, P, P) from the distinct products
        matrix = torch.zeros(c, h, w, terms, terms, dtype=torch.float64)
        matrix[..., upper[0], upper[1]] = sums
        matrix[..., upper[1], upper[0]] = sums
        return matrix

    def pool(sums, width):  # (C, H, W, ...) summed over each cell's neighbourhood (its own weighing 1), by axis
        if width == 0:
            return sums
        kernel = gaussian_kernel(width)
        kernel = kernel / kernel.max()
        across = smoothing_matrix(kernel, h, wraps_rows).double()
        along = smoothing_matrix(kernel, w, wraps_columns).double()
        return torch.einsum("vw,cgw...->cgv...", along, torch.einsum("gh,chw...->cgw...", across, sums))

    # the directions the series' steps span (a 6-hourly series never sees the day's second sine)
    scales, axes = torch.linalg.eigh(torch.as_tensor(rows.T @ rows / t))
    spanned = axes[:, scales > 1e-9 * scales.max()] / scales[scales > 1e-9 * scales.max()].sqrt()
    pooled = {width: (symmetric(pool(distinct, width)), pool(rhs, width)) for width in neighbourhoods}
    # coverage is the observing system's, read over the widest neighbourhood whichever cycles are asked for: a cell
    # seen a few times takes its neighbours' cycle (below) where they see the whole cycle
    reach = max(NEIGHBOURHOODS)
    around = pooled[reach][0] if reach in pooled else symmetric(pool(distinct, reach))
    relative = spanned.T @ (around / around[..., :1, :1].clamp(min=1e-12)) @ spanned
    covered = (torch.linalg.eigvalsh(relative)[..., 0] >= COVERAGE).reshape(1, c, 1, h, w)
    pull = RIDGE / 2 * torch.eye(terms, dtype=torch.float64)  # a harmonic's diagonal sums cos^2, 1/2 on average
    pull[0, 0] = 1e-9
    cycles = []
    for width in neighbourhoods:
        gram, right = pooled[width]
        amplitudes = torch.linalg.solve(gram + pull, right[..., None])[..., 1:, 0]  # no mean
        enough = (gram[..., 0, 0] >= 2 * terms).reshape(1, c, 1, h, w)
        maps = amplitudes.permute(3, 0, 1, 2)[:, :, None].float()  # (2 count, C, 1, H, W)
        if bool(enough.any()) and not bool(enough.all()):  # cells with too few observations: their neighbours'
            spread, _ = FirstGuess(HISTORY_LEVELS, periodic=wraps_columns, row_period=h if wraps_rows else 0)(
                maps, enough.expand_as(maps))
            maps = torch.where(enough, maps, spread)
        cycles.append(torch.where(covered & enough.any(), maps, 0)[:, :, 0])
    return (cycles, np.asarray(sums[2], np.float64)) if return_sums else cycles


def _normal_equations(values, observed, rows: np.ndarray, products: np.ndarray, per_sample: bool = False):
    """``(C, H, W, D)`` and ``(C, H, W, P)`` float64: each cell's sums over its ``observed`` steps of the
    ``products`` ``(T, D)`` of ``rows`` ``(T, P)`` with each other, and of ``rows`` times its value (numpy, or
    dask: lazy); with ``per_sample`` also ``(N, C, H, W, P - 1)``, the sums of the harmonics (all but the first
    row) in each sample."""
    seen = observed.astype(np.float64)
    data = np.where(observed, values, 0.0).astype(np.float64)
    out = (np.tensordot(seen, products, axes=([2], [0])).sum(0), np.tensordot(data, rows, axes=([2], [0])).sum(0))
    return out + (np.tensordot(seen, rows[:, 1:], axes=([2], [0])),) if per_sample else out


def departures_totals(totals, sums: np.ndarray, amplitudes) -> np.ndarray:
    """``(N, 2C, H, W)`` float64: a series' :func:`~xrimpute.windows.series_totals` (normalised sums, then counts)
    as the departures from each cell's cycle (``amplitudes`` of :func:`fit_cycle`) give them, from the harmonics'
    ``sums`` that :func:`fit_cycle` returns over the same observations: no other pass over an archive."""
    totals = np.asarray(totals, np.float64).copy()
    c = totals.shape[1] // 2
    totals[:, :c] -= np.einsum("nchwk,kchw->nchw", sums, np.asarray(amplitudes, np.float64))
    return totals


def without_cycle(values, amplitudes, phase: np.ndarray, scale: np.ndarray):
    """``values`` ``(N, C, T, H, W)`` in data units less each cell's cycle (``amplitudes`` of :func:`fit_cycle`,
    normalised units, times ``scale`` ``(C,)``) at the steps' ``phase`` ``(T,)``: numpy, or dask (lazy, chunk by
    chunk)."""
    amplitudes, phase, scale = np.asarray(amplitudes, np.float32), np.asarray(phase), np.asarray(scale, np.float32)
    if not is_dask_collection(values):  # a block of steps at a time: no cube-sized cycle besides the result
        departures = np.array(values, copy=True)
        _, c, t, h, w = values.shape
        for part in _blocks_of_steps(t, c * h * w):
            departures[:, :, part] -= cycle_at(amplitudes, phase[part], scale)[None].astype(values.dtype, copy=False)
        return departures

    def block(chunk, block_info=None):
        _, (c0, c1), (t0, t1), (h0, h1), (w0, w1) = block_info[0]["array-location"]
        cycle = cycle_at(amplitudes[:, c0:c1, h0:h1, w0:w1], phase[t0:t1], scale[c0:c1])
        return chunk - cycle[None].astype(chunk.dtype)

    return values.map_blocks(block, dtype=values.dtype)


def cycle_at(amplitudes: torch.Tensor | np.ndarray, phase: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """``(C, T, H, W)`` float32: the cycle of :func:`fit_cycle` at the steps' ``phase`` ``(T,)``; in data units with
    ``scale`` ``(C,)`` (the normalisation's std), else normalised."""
    amplitudes = np.asarray(amplitudes, np.float32)
    count = amplitudes.shape[0] // 2
    cycle = np.einsum("tk,kchw->cthw", harmonics(phase, count).astype(np.float32), amplitudes)
    if scale is not None:
        cycle *= np.asarray(scale, np.float32)[:, None, None, None]
    return cycle


__all__ = ["CELLS_AT_ONCE", "COVERAGE", "HARMONICS", "NEIGHBOURHOODS", "RIDGE", "cycle_at", "departures_totals",
           "fit_cycle", "harmonics", "without_cycle"]

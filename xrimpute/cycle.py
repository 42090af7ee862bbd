"""Each cell's regular cycle (the day's, or the year's): a baseline whose departures the first guess fills.

An hourly field swings through the day by a different amount in every cell
(land more than sea), and a gap of a few hours lies on that swing. Filling
the departures from each cell's mean cycle, and adding the cycle back, bends
the fill along the day where a line between the observations either side of
the gap cuts it short: on the ERA5 sample's moving blocks the first guess
alone filled 8-25 % better (``benchmarks/RESULTS.md``). Where the cells'
neighbours at the same time say more (scattered pixels) a cycle fitted to few
observations per cell only adds its noise, so a fit keeps the cycle only where
it fills its held-back cells better (:meth:`xrimpute.engine.Engine.fit`).

The cycle is a function of the phase of each step (the hour of the day, the
time of the year; :func:`xrimpute.cube.cycle_phase` reads it from the time
coordinate), so it needs no origin in time and carries over to other series.
This module knows no xarray: phases are plain arrays.
"""
from __future__ import annotations

import numpy as np
import torch
from dask import compute, is_dask_collection

from .nets.prior import HISTORY_LEVELS, FirstGuess

HARMONICS = 2
"""Harmonics of the cycle: on the ERA5 sample's moving blocks two filled 7-14 % better than one (classical
fillers, ``benchmarks/RESULTS.md``)."""
RIDGE = 1.0
"""How strongly the harmonics' amplitudes are pulled towards 0, against a cell's share of observed steps."""
CELLS_AT_ONCE = 2**24
"""Cells times steps that :func:`fit_cycle` holds in double precision at once in memory (128 MB)."""


def harmonics(phase: np.ndarray, count: int = HARMONICS) -> np.ndarray:
    """``(T, 2 count)``: the cosine and sine of each harmonic at every step's ``phase`` (fractions of a cycle)."""
    angle = 2 * np.pi * np.asarray(phase, np.float64)[:, None] * np.arange(1, count + 1)
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1).reshape(len(angle), 2 * count)


def fit_cycle(values, observed, phase: np.ndarray, count: int = HARMONICS, periodic: bool = False) -> torch.Tensor:
    """``(2 count, C, H, W)``: each cell's cycle, the amplitudes of its harmonics at ``phase`` ``(T,)`` fitted with
    its mean by least squares to its observations in ``values`` ``(N, C, T, H, W)`` (any value where not
    ``observed``), pulled towards 0 by :data:`RIDGE`. A cell observed fewer than twice as often as there are terms
    takes the cycles of the cells round it (normalised convolution over the spatial scales that fill a history
    baseline, :data:`~xrimpute.nets.prior.HISTORY_LEVELS`), weighed by their
    observations (round the globe with ``periodic``); the mean itself is not part of the cycle (the guess finds each
    cell's level). ``values`` and ``observed`` in memory (numpy or torch), or dask: then one pass over the archive,
    chunk by chunk."""
    n, c, t, h, w = values.shape
    rows = np.concatenate([np.ones((t, 1)), harmonics(phase, count)], 1)  # (T, P)
    terms = rows.shape[1]
    upper = np.triu_indices(terms)  # the matrix is symmetric: sum only its distinct products
    products = rows[:, upper[0]] * rows[:, upper[1]]  # (T, P (P + 1) / 2)
    if is_dask_collection(values) or is_dask_collection(observed):
        gram, rhs = compute(*_normal_equations(values, observed, rows, products))
    else:
        values, observed = np.asarray(values), np.asarray(observed)
        per_block = max(1, CELLS_AT_ONCE // (n * c * h * w))  # a block of steps at a time, in double precision
        blocks = [_normal_equations(values[:, :, a : a + per_block], observed[:, :, a : a + per_block],
                                    rows[a : a + per_block], products[a : a + per_block])
                  for a in range(0, t, per_block)]
        gram, rhs = sum(gram for gram, _ in blocks), sum(rhs for _, rhs in blocks)
    distinct = torch.as_tensor(gram).reshape(c * h * w, -1)
    gram = torch.zeros(c * h * w, terms, terms, dtype=torch.float64)
    gram[:, upper[0], upper[1]] = distinct
    gram[:, upper[1], upper[0]] = distinct
    counts = gram[:, 0, 0]  # each cell's observed steps
    pull = torch.eye(terms, dtype=torch.float64)
    pull[0, 0] = 0
    gram = gram + (RIDGE * counts / (n * t))[:, None, None] * pull + 1e-9 * torch.eye(terms, dtype=torch.float64)
    right = torch.as_tensor(rhs).reshape(c * h * w, terms, 1)
    amplitudes = torch.linalg.solve(gram, right)[:, 1:, 0]  # (cells, 2 count): no mean
    enough = counts >= 2 * terms
    amplitudes = torch.where(enough[:, None], amplitudes, 0).float()
    maps = amplitudes.T.reshape(2 * count, c, h, w)
    if bool(enough.all()) or not bool(enough.any()):
        return maps
    # cells with too few observations: their neighbours' cycles
    own = enough.reshape(1, c, 1, h, w).expand(2 * count, c, 1, h, w)
    spread, _ = FirstGuess(HISTORY_LEVELS, periodic=periodic)(maps[:, :, None], own)
    return torch.where(own[:, :, 0], maps, spread[:, :, 0])


def _normal_equations(values, observed, rows: np.ndarray, products: np.ndarray):
    """``(C, H, W, D)`` and ``(C, H, W, P)`` float64: each cell's sums over its ``observed`` steps of the
    ``products`` ``(T, D)`` of ``rows`` ``(T, P)`` with each other, and of ``rows`` times its value (numpy, or
    dask: lazy)."""
    seen = observed.astype(np.float64)
    data = np.where(observed, values, 0.0).astype(np.float64)
    return (np.tensordot(seen, products, axes=([2], [0])).sum(0),
            np.tensordot(data, rows, axes=([2], [0])).sum(0))


def without_cycle(values, amplitudes, phase: np.ndarray, scale: np.ndarray):
    """``values`` ``(N, C, T, H, W)`` in data units less each cell's cycle (``amplitudes`` of :func:`fit_cycle`,
    normalised units, times ``scale`` ``(C,)``) at the steps' ``phase`` ``(T,)``: numpy, or dask (lazy, chunk by
    chunk)."""
    amplitudes, phase, scale = np.asarray(amplitudes, np.float32), np.asarray(phase), np.asarray(scale, np.float32)
    if not is_dask_collection(values):
        return values - cycle_at(amplitudes, phase, scale)[None].astype(values.dtype)

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
    return cycle if scale is None else np.asarray(scale, np.float32)[:, None, None, None] * cycle


__all__ = ["CELLS_AT_ONCE", "HARMONICS", "RIDGE", "cycle_at", "fit_cycle", "harmonics", "without_cycle"]

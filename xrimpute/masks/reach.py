"""Chance or structure: which never-observed cells lie outside the observing system's reach.

A cell never observed in the training data is either a gap the observations
left by chance (between scattered pixels, between stations) or part of a
region the observing system cannot reach (land in a sea-surface cube, outside
a regional network). Only the second kind stays NaN by default; every other
gap is filled. DINEOF and DINCAE take the land mask as an input file and
reconstruct every sea point; :func:`unreachable` infers such a mask from the
geometry of the observations when none is given.

The rule, per variable, on the ``(H, W)`` map of cells observed at least once:

1. ``spacing``: the median distance (in cells) from an observed cell to its
   nearest other observed cell (reported, and the scale of the next step).
2. ``density``: the local share of observed cells, the median over observed
   cells of ``k / (pi r_k^2)`` with ``r_k`` the distance to the ``k = 8``-th
   nearest other observed cell (1 at most). Local, so a large land area does
   not dilute it, and a hole does not inflate it.
3. ``chance_radius``: the radius of the largest hole that observations placed
   independently at that density leave by chance on the grid's ``A`` cells,
   ``sqrt(ln A / (pi * -ln(1 - density)))`` (the expected number of holes of
   radius ``r`` is ``A (1 - density)^(pi r^2)``).
4. ``threshold = max(MIN_RADIUS, SAFETY * chance_radius)``: a hole 1.5 times
   that radius has an area 2.25 times larger, so about ``A^-1.25`` such
   holes arise by chance on the grid.
5. A never-observed cell is unreachable when it lies in an empty disk (one
   holding no observed cell) of radius ``threshold``: within ``threshold`` of
   a *core* cell, a cell farther than ``threshold`` from every observed cell
   (the morphological opening of the never-observed region by that disk).
   The region so found never reaches between observations closer than
   ``2 * threshold`` apart.
6. Cells known to be outside the domain (a land mask the user gave) are no
   core: the region grows out of holes in the observations, not out of a
   coast, so sea cells beside land that sparse observations missed by chance
   are filled (the Mediterranean's altimetry at 1 % pixels: 170-230 sea cells
   NaN from the data alone, none with its land mask).

Scattered pixels (1 % a frame over 40 frames: a third of the cells observed
once) give a threshold of about 3.4 cells, and chance holes that wide are
rare; a station network covering 3 % of the cells gives about 11 cells, so
only areas far outside the network stay NaN; dense observations around land
give the floor of 1.5 cells, so land three cells across or wider stays NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

SAFETY = 1.5  # radius factor over the largest chance hole
MIN_RADIUS = 1.5  # cells: a region narrower than three cells is never called unreachable
NEIGHBOURS = 8  # k of the local density estimate
PROBES = 20000  # observed cells, evenly spread, whose neighbours give the spacing and density


@dataclass(frozen=True)
class Reach:
    """Where the observations of one variable reach, and the numbers the rule used (see :mod:`.reach`)."""

    unreachable: np.ndarray  # (H, W) bool: never observed and beyond the observing system's reach
    spacing: float  # median nearest-neighbour distance between observed cells, in cells
    density: float  # local share of observed cells (k-nearest-neighbour estimate)
    threshold: float  # distance from every observation (cells) beyond which a never-observed cell is structural

    def to_dict(self) -> dict:
        return dict(spacing=round(self.spacing, 3), density=round(self.density, 4), threshold=round(self.threshold, 3),
                    unreachable_cells=int(self.unreachable.sum()))


def reach(observed_once: np.ndarray, known: np.ndarray | None = None) -> Reach:
    """The unreachable never-observed cells of an ``(H, W)`` map of cells observed at least once. ``known``
    ``(H, W)``: cells known to lie outside the domain (a land mask the user gave); no unreachable region grows out
    of them, so the never-observed cells beside them are judged as any others (left out of the result)."""
    ever = np.asarray(observed_once, dtype=bool)
    known = np.zeros_like(ever) if known is None else np.asarray(known, dtype=bool)
    never = ~ever
    if not ever.any() or not never.any():  # nothing observed: nothing to reach from; nothing missing: nothing to judge
        return Reach(never & ~known, math.nan, float(ever.mean()), 0.0)
    points = np.argwhere(ever)
    k = min(NEIGHBOURS, len(points) - 1)
    if k == 0:  # a single observed cell: no spacing, no density to judge chance by
        return Reach(never.copy(), math.inf, 0.0, math.inf)
    probes = points[np.linspace(0, len(points) - 1, min(len(points), PROBES)).astype(int)]  # medians need no more
    distances = cKDTree(points).query(probes, k=k + 1)[0]
    spacing = float(np.median(distances[:, 1]))
    density = float(min(1.0, np.median(k / (math.pi * distances[:, k] ** 2))))
    chance = 0.0 if density >= 1 else math.sqrt(math.log(ever.size) / (math.pi * -math.log1p(-density)))
    threshold = max(MIN_RADIUS, SAFETY * chance)
    # farther than threshold from every observation, and not known land: a coast is no hole in the observations
    core = (ndimage.distance_transform_edt(never) > threshold) & ~known
    unreachable = never & (ndimage.distance_transform_edt(~core) <= threshold) if core.any() else np.zeros_like(never)
    return Reach(unreachable & ~known, spacing, density, threshold)


def gaps_in_reach(observed: np.ndarray, steps: int, cells: int) -> float:
    """Share of the gap cells of ``observed`` ``(N, C, T, H, W)`` with an observation within a window of ``steps``
    centred on them and ``cells`` either way in space (a box): the gaps a first guess of that reach sees from.

    Cells never observed in their series (land, say) are no gaps here; 1.0 when there are none.
    """
    reached = gaps = 0
    for series in np.asarray(observed, dtype=bool).reshape(-1, *np.shape(observed)[2:]):  # memory of one series
        near = ndimage.maximum_filter(series.view(np.uint8), size=(steps, 2 * cells + 1, 2 * cells + 1),
                                      mode="constant").astype(bool)
        gap = ~series & series.any(axis=0)
        gaps += int(gap.sum())
        reached += int((near & gap).sum())
    return reached / gaps if gaps else 1.0


def context_near_gaps(observed: np.ndarray, steps: int, cells: int) -> float:
    """The mean number of observations of ``observed`` ``(N, C, T, H, W)`` within a window of ``steps`` centred on
    a gap cell and ``cells`` either way in space (the box :func:`gaps_in_reach` looks in), over the gap cells: how
    much context a first guess of that reach has to go on. Cells never observed in their series are no gaps here;
    inf when there are none."""
    total = gaps = 0.0
    box = steps * (2 * cells + 1) ** 2
    for series in np.asarray(observed, dtype=bool).reshape(-1, *np.shape(observed)[2:]):  # memory of one series
        near = ndimage.uniform_filter(series.astype(np.float32), size=(steps, 2 * cells + 1, 2 * cells + 1),
                                      mode="constant") * box
        gap = ~series & series.any(axis=0)
        gaps += float(gap.sum())
        total += float(near[gap].sum())
    return total / gaps if gaps else math.inf


def gaps_near_in_time(observed: np.ndarray, steps: int) -> float:
    """Share of the gap cells of ``observed`` ``(N, C, T, H, W)`` whose own cell is observed within ``steps`` steps
    before or after them: the gaps a baseline from each cell's nearby steps reaches.

    Cells never observed in any series (land, say) are no gaps here; a cell observed in other series only (a
    block that never moves in one trajectory) is. 1.0 when there are none.
    """
    observed = np.asarray(observed, dtype=bool)
    gap = ~observed & observed.any(axis=(0, 2), keepdims=True)
    if not gap.any():
        return 1.0
    near = ndimage.maximum_filter1d(observed.view(np.uint8), size=2 * steps + 1, axis=2, mode="constant")
    return float((near.astype(bool) & gap).sum() / gap.sum())


def observations_persist(observed: np.ndarray) -> float:
    """Share of the cells of ``observed`` ``(N, C, T, H, W)`` observed at a step that are observed at the next
    too: 1 for blocks or stations that stay put, the coverage itself for pixels drawn anew every step. 1.0 for a
    single step or no observation."""
    observed = np.asarray(observed, dtype=bool)
    now = observed[:, :, :-1]
    count = now.sum()
    return float((now & observed[:, :, 1:]).sum() / count) if count else 1.0


def observed_run(observed: np.ndarray) -> float:
    """Mean number of steps in a row that ``observed`` ``(N, C, T, H, W)`` observes a cell, counted in steps of the
    series: a whole missing step (one that observes nothing in its series) breaks no run, being a gap of every
    cell rather than of the cell. ``T`` for blocks that never move within a series, missing steps or not, about
    ``1 / (1 - coverage)`` for pixels drawn anew every step; ``T`` with no observation."""
    observed = np.asarray(observed, dtype=bool)
    last = np.zeros(observed[:, :, 0].shape, bool)  # each series' cells at its last step that observed anything
    starts, cells, present = 0, np.zeros(len(observed)), np.zeros(len(observed))  # the last two per series
    for k in range(observed.shape[2]):  # a step at a time: a fit in memory makes no cube-sized temporaries of its mask
        now = observed[:, :, k]
        seen = now.any(axis=(1, 2, 3))
        starts += int((now & ~last)[seen].sum())
        last[seen] = now[seen]
        cells += now.sum(axis=(1, 2, 3))
        present += seen
    if not starts:
        return float(observed.shape[2])
    steps = cells[present > 0] * observed.shape[2] / present[present > 0]  # a series' missing steps inside its runs
    return float(steps.sum() / starts)


def gaps_only_where_never_observed(values: np.ndarray, permanent: np.ndarray, steps: int = 64) -> bool:
    """Whether ``values`` ``(N, C, T, H, W)`` (NaN = unobserved, in memory) has gaps to fill outside ``permanent``
    ``(C, H, W)``, and every one of them lies in a cell never observed: the complete series of a station network
    (a block that never moves in a single series is mostly beyond reach, :func:`reach`, so permanent). No training
    context ever queries such a cell. Read ``steps`` steps
    at a time, and no further than the first cell seen at some steps and not at others."""
    ever = np.zeros((values.shape[1], *values.shape[3:]), bool)
    always = np.ones_like(ever)
    for start in range(0, values.shape[2], steps):
        seen = np.isfinite(values[:, :, start : start + steps])
        ever |= seen.any(axis=(0, 2))
        always &= seen.all(axis=(0, 2))
        if (ever & ~always).any():
            return False
    return bool((~ever & ~np.asarray(permanent, bool)).any())


def unreachable(valid: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """``(C, H, W)``: per variable, the never-observed cells beyond the observing system's reach (:func:`reach`),
    outside the cells ``known`` (``(H, W)`` or ``(C, H, W)``) to lie outside the domain."""
    valid = np.asarray(valid, dtype=bool)
    known = np.zeros_like(valid) if known is None else np.broadcast_to(np.asarray(known, dtype=bool), valid.shape)
    return np.stack([reach(channel, land).unreachable for channel, land in zip(valid, known)])


__all__ = ["MIN_RADIUS", "NEIGHBOURS", "Reach", "SAFETY", "gaps_in_reach", "gaps_near_in_time",
           "gaps_only_where_never_observed", "observations_persist", "observed_run", "reach", "unreachable"]

"""Windows of consecutive time steps at inference: whole-series imputation and sampling, tiles, cuts.

Arrays are ``(N, C, T, H, W)``: N independent samples (trajectories) of T
time steps. A window is ``window`` consecutive steps of one sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .diffusion import VPSchedule, impute_ensemble, sample_multistep
from .errors import ArgumentError
from .flow import co_moving, displacement, shifted
from .masks import MaskSpec


def window_starts(length: int, window: int, stride: int = 1) -> list[int]:
    """Start indices covering ``length`` steps; the last window ends at the last step."""
    if length < window:
        raise ArgumentError(f"the series has {length} time steps, fewer than the window of {window}; use a smaller "
                            "window")
    starts = list(range(0, length - window + 1, max(1, stride)))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_seed(seed: int, sample: int, start: int, row: int = 0, col: int = 0) -> int:
    """Random seed of one window (sample, first time step, tile origin) of a series.

    A window draws its noise and contexts from its own seed, so its imputation
    is the same whatever it is batched with and however the series is cut
    into chunks or regions.
    """
    high, low = np.random.SeedSequence([seed, sample, start, row, col]).generate_state(2, np.uint32)
    return (int(high) << 31) ^ int(low)  # < 2**63: fits torch's manual_seed


def series_totals(values, mean: np.ndarray, std: np.ndarray, withheld: np.ndarray | None = None) -> np.ndarray:
    """``(N, 2C, H, W)`` float64: each cell's sum of normalised observations over its whole series, then their count.

    ``values`` ``(N, C, T, H, W)`` in data units (NaN = unobserved), numpy, or
    dask (then a lazy reduction: one pass over the archive when computed);
    ``withheld`` ``(N, H, W)`` cells count as unobserved. Cut to a window and less
    the window's own observations (:func:`outside_window`) they are the history
    a network's first guess may lean on (:func:`xrimpute.nets.prior.history_baseline`).
    """
    mean = np.asarray(mean, np.float64)[None, :, None, None, None]
    std = np.asarray(std, np.float64)[None, :, None, None, None]
    seen = np.isfinite(values)
    if withheld is not None:
        seen = seen & ~np.asarray(withheld, bool)[:, None, None]
    sums = np.where(seen, (values.astype(np.float64) - mean) / std, 0.0).sum(axis=2)
    return np.concatenate([sums, seen.sum(axis=2, dtype=np.float64)], axis=1)


def window_sums(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``(B, 2C, H, W)`` float64: each cell's sum of ``values`` ``(B, C, T, H, W)`` over its ``observed`` steps, then
    their count, as :func:`series_totals` counts a series."""
    seen = observed.to(torch.float64)
    return torch.cat([(values.to(torch.float64) * seen).sum(2), seen.sum(2)], dim=1)


def outside_window(totals, values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``(B, 2C, H, W)`` float32: the sums and counts of ``totals`` (:func:`series_totals` cut to each window,
    ``(B, 2C, H, W)``) less those of the windows' own observations ``observed`` of ``values`` (normalised,
    ``(B, C, T, H, W)``): what the series observed outside each window."""
    return (torch.as_tensor(totals, dtype=torch.float64) - window_sums(values, observed)).to(torch.float32)


NEARBY_DEPTH = 3
"""Observations :func:`nearby_observations` passes on either side of a window, nearest first: the nearest for a
straight baseline, three for a curve whose slopes at the nearest two lean on their neighbours
(:func:`xrimpute.nets.prior.nearby_baseline`)."""


def nearby_observations(values, observed, start: int, window: int, span: int, flow: bool = False,
                        velocity: tuple[float, float] | None = None, depth: int = NEARBY_DEPTH) -> np.ndarray:
    """``(4 depth C, ...)`` float32: each cell's ``depth`` nearest observations before the window of ``window``
    steps at ``start`` in a stretch ``values``, ``observed`` ``(C, T, ...)`` of a series (nearest first, ``depth``
    blocks of ``C`` channels) and how many steps before the window's first step each lies, then the nearest after
    and how many steps after its last (0 steps and value: none within ``span`` steps, or the stretch ends first).
    The input of a first guess that leans on nearby steps (:func:`xrimpute.nets.prior.nearby_baseline`); a
    stretch holding ``span`` steps either side of the window, or up to the series' ends, gives what the whole
    series gives.

    With ``flow``, the nearest observation along the flow instead of in place (:func:`along_flow`, with its
    ``velocity``): ``(4C, window, H, W)``, for every step of the window.
    """
    if flow:
        return along_flow(values, observed, start, window, span, velocity)
    values, observed = np.asarray(values), np.asarray(observed)
    before = slice(max(0, start - span), start)
    after = slice(start + window, min(values.shape[1], start + window + span))
    parts = []
    for part, outward in ((before, True), (after, False)):
        seen, near = observed[:, part], values[:, part]
        if seen.shape[1] == 0:
            parts += [np.zeros((depth * values.shape[0], *values.shape[2:]), np.float32)] * 2
            continue
        if outward:  # counted from the window outwards
            seen, near = seen[:, ::-1], near[:, ::-1]
        rank = np.cumsum(seen, axis=1)  # the how-many-th observation from the window each step holds
        found_values, found_steps = [], []
        for k in range(1, depth + 1):
            hit = seen & (rank == k)
            found, index = hit.any(1), np.argmax(hit, axis=1)
            value = np.take_along_axis(near, index[:, None], 1)[:, 0]
            found_values.append(np.where(found, value, 0.0).astype(np.float32))
            found_steps.append(np.where(found, index + 1, 0).astype(np.float32))
        parts += [np.concatenate(found_values), np.concatenate(found_steps)]
    return np.concatenate(parts)


def along_flow(values, observed, start: int, window: int, span: int,
               velocity: tuple[float, float] | None = None) -> np.ndarray:
    """``(4C, window, H, W)`` float32: for every step of the window of ``window`` steps at ``start`` in a stretch
    ``values``, ``observed`` ``(C, T, H, W)``, each cell's nearest observation before the window along the flow and
    how many steps before that step it lies, then the nearest after and how many steps after (0 steps and value:
    none within ``span`` steps of the window, or the stretch ends first).

    The flow is one displacement per step for the stretch's steps outside the window
    (:func:`xrimpute.flow.displacement`), so that nothing here depends on the window's own cells; the series is read
    along it from the window's middle (:func:`xrimpute.flow.co_moving`), where :func:`nearby_observations` finds the
    nearest observations in place, and each step of the window reads those where its cells' trajectories pass.
    ``velocity``: that displacement, where the caller already has it (:func:`flow_velocity`).
    """
    first = max(0, start - span)  # the stretch of the window and span steps either side: whatever a caller holds
    stop = min(np.shape(values)[1], start + window + span)
    values, observed, start = values[:, first:stop], observed[:, first:stop], start - first
    if velocity is None:
        velocity = flow_velocity(values, observed, start, window)
    middle = (window - 1) / 2
    moved, kept = co_moving(values, observed, start + middle, velocity)
    found = torch.as_tensor(nearby_observations(moved, kept, start, window, span, depth=1))
    steps = torch.arange(window, dtype=torch.float32)
    offsets = steps - middle  # a trajectory through a cell at step k passed its co-moving cell offset * velocity back
    before, before_gap, after, after_gap = found.chunk(4)
    parts = []
    for value, gap, beyond_edge in ((before, before_gap, steps), (after, after_gap, window - 1 - steps)):
        hit = (gap > 0).to(torch.float32)
        maps = torch.cat([value * hit, gap * hit, hit])[None].expand(window, -1, -1, -1)
        num, gaps, weight = shifted(maps, -offsets * velocity[0], -offsets * velocity[1]).transpose(0, 1).chunk(3)
        reached = weight >= 0.5
        parts += [torch.where(reached, num / weight.clamp(min=1e-6), 0.0),
                  torch.where(reached, gaps / weight.clamp(min=1e-6) + beyond_edge[:, None, None], 0.0)]
    return torch.cat(parts).numpy()


def flow_velocity(values, observed, start: int, window: int) -> tuple[float, float]:
    """The displacement per step of a stretch ``values``, ``observed`` ``(C, T, H, W)`` around the window of
    ``window`` steps at ``start`` (:func:`xrimpute.flow.displacement`), from its steps outside the window, so
    that nothing of :func:`along_flow` depends on the window's own cells (query cells among them)."""
    outside = np.asarray(observed).copy()
    outside[:, start : start + window] = False
    return displacement(values, outside)


@dataclass(frozen=True)
class Tiling:
    """Spatial tiles of ``size`` (rows, cols) cells overlapping by ``overlap``; columns wrap when ``periodic``.

    Tile origins form one lattice over the whole grid, so every part of the
    grid is imputed with the same tiles (and seeds) wherever it is computed.
    Overlaps are blended with weights that fall linearly towards tile edges
    (:meth:`weight`), so tiles leave no seams. A single tile of the grid's
    size is the untiled case.
    """

    size: tuple[int, int]
    overlap: tuple[int, int] = (0, 0)
    periodic: bool = False

    def __post_init__(self):
        if any(s < 1 or not 0 <= o < s for s, o in zip(self.size, self.overlap)):
            raise ArgumentError(f"tiles need positive sizes and overlaps smaller than the tile, got size={self.size}, "
                                f"overlap={self.overlap}")

    def origins(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """First row and first column of every tile on a ``height x width`` grid."""
        (th, tw), (oy, ox) = self.size, self.overlap
        if th > height or tw > width:
            raise ArgumentError(f"tiles of {th} x {tw} cells do not fit a {height} x {width} grid; use smaller tiles")
        rows = window_starts(height, th, th - oy)
        if self.periodic and tw < width:  # evenly spaced around the circle, the last one wrapping over the seam
            n = -(-width // (tw - ox))
            return rows, sorted({round(k * width / n) for k in range(n)})
        return rows, window_starts(width, tw, tw - ox)

    def weight(self) -> np.ndarray:
        """Blending weight ``(rows, cols)`` of a tile: 1 inside, falling linearly over the overlap."""
        ramps = []
        for size, overlap in zip(self.size, self.overlap):
            edge = np.minimum(np.arange(size), np.arange(size)[::-1])
            ramps.append(np.minimum(1.0, (edge + 1) / (overlap + 1)))
        return np.outer(*ramps)


@dataclass(frozen=True)
class Piece:
    """A cut of a larger series and the box of the series to impute from it.

    ``full`` is ``(T, H, W)`` of the whole series; the cut's first cell sits
    at ``origin`` = (sample, time step, row, column) of the series, and its
    columns continue modulo ``W`` (a cut may wrap over the seam of a global
    grid). ``box`` = ``((t0, t1), (y0, y1), (x0, x1))`` is the part of the
    series to return; the cut must hold every window and tile that touches it
    (:func:`plan` says which cut that is).
    """

    full: tuple[int, int, int]
    origin: tuple[int, int, int, int]
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @classmethod
    def whole(cls, shape: tuple[int, ...]) -> Piece:
        """The whole series ``(N, C, T, H, W)`` as one piece."""
        t, h, w = shape[2:]
        return cls((t, h, w), (0, 0, 0, 0), ((0, t), (0, h), (0, w)))

    def inside(self, cut: np.ndarray) -> np.ndarray:
        """The box's part of an array ``(N, C, ...)`` shaped like the cut."""
        (ta, tb), (ya, yb), (xa, xb) = self.box
        _, t0, y0, x0 = self.origin
        return cut[:, :, ta - t0 : tb - t0, ya - y0 : yb - y0][..., (np.arange(xa, xb) - x0) % self.full[2]]


def _circular_cover(needed: np.ndarray) -> tuple[int, int]:
    """``(first, length)`` of the shortest run of columns, modulo their count, that covers every needed one."""
    if needed.all():
        return 0, needed.size
    index = np.flatnonzero(needed)
    gaps = np.diff(np.append(index, index[0] + needed.size))
    widest = int(np.argmax(gaps))
    return int(index[(widest + 1) % index.size]), int(needed.size - gaps[widest] + 1)


def plan(full: tuple[int, int, int], box, window: int, stride: int, tiling: Tiling, halo: int = 0):
    """Windows and tiles touching ``box`` of a series, and the cut they read.

    Returns ``(jobs, cut)``: ``jobs`` lists ``(start, row, col)`` in a fixed
    order; ``cut`` = ``((t0, t1), (y0, y1), (x0, width))`` where the columns
    are ``x0, x0 + 1, ...`` modulo ``W``, ``width`` of them, and the steps
    reach ``halo`` beyond the windows either side (inside the series), for a
    denoiser that leans on nearby steps.
    """
    t, h, w = full
    (ta, tb), (ya, yb), (xa, xb) = box
    (th, tw) = tiling.size
    all_rows, all_cols = tiling.origins(h, w)
    starts = [s for s in window_starts(t, window, stride) if s < tb and s + window > ta]
    rows = [r for r in all_rows if r < yb and r + th > ya]
    cols = [c for c in all_cols if np.any(((c + np.arange(tw)) % w >= xa) & ((c + np.arange(tw)) % w < xb))]
    needed = np.zeros(w, bool)
    for c in cols:
        needed[(c + np.arange(tw)) % w] = True
    jobs = [(s, r, c) for s in starts for r in rows for c in cols]
    steps = (max(0, starts[0] - halo), min(t, starts[-1] + window + halo))
    return jobs, (steps, (rows[0], rows[-1] + th), _circular_cover(needed))


@torch.no_grad()
def impute_series(
    denoiser,
    values: np.ndarray,
    observed: np.ndarray,
    spec: MaskSpec,
    window: int,
    K: int = 10,
    stride: int = 1,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    autocast: bool = False,
    progress: bool = True,
    *,
    tiling: Tiling | None = None,
    static: np.ndarray | None = None,
    piece: Piece | None = None,
    context: str = "sampled",
    totals: np.ndarray | None = None,
    nearby_span: int = 0,
    flow: bool = False,
    share: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Impute every window (and tile) of every sample and blend the overlaps.

    Each cell's estimate is the weighted mean over the windows and tiles that
    contain it (windows weigh equally, tiles by :meth:`Tiling.weight`); the
    spread combines the ensemble spread within windows and the disagreement
    between them (law of total variance). Window randomness comes from
    :func:`window_seed`, so a cell gets the same value whether the series is
    imputed whole or piece by piece.

    Parameters
    ----------
    values, observed : ``(N, C, T, H, W)`` normalised values (0 where unobserved)
        and observation mask: the whole series, or with ``piece`` a cut of it.
    tiling : spatial tiles (default: one tile of the whole grid).
    static : full-grid static fields ``(S, H, W)`` cut out for every tile
        (default: the denoiser uses its own, for the untiled case).
    piece : where ``values`` sits in the series and which box to return.
    context : the contexts of each window's ensemble (:func:`~xrimpute.diffusion.impute_ensemble`).
    totals : :func:`series_totals` of the whole series ``(N, 2C, H, W)`` (every sample, the whole grid), for a
        denoiser whose guess leans on each window's history; with ``piece``, the samples of the series, not
        of the cut.
    nearby_span : for a denoiser whose guess leans on each cell's nearest observations around the window, how
        many steps either side it looks (:func:`nearby_observations`); a cut then holds them, as
        :func:`plan` with that ``halo`` cuts it. ``flow``: those along the flow instead of in place
        (``nearby_observations(..., flow=True)``).
    share : for a denoiser with a first guess, the share of its correction that each cell of the grid keeps,
        ``(C, H, W)`` (0: the guess alone), cut for every tile as ``static``; default the denoiser's own.

    Returns
    -------
    ``(mean, std)`` float32 arrays of the box (the whole series by default);
    observed cells keep their values exactly and have zero spread.
    """
    n, c = values.shape[:2]
    piece = piece or Piece.whole(values.shape)
    (_, h, w), (sample0, t0, y0, x0) = piece.full, piece.origin
    (ta, tb), (ya, yb), (xa, xb) = piece.box
    tiling = tiling or Tiling((h, w))
    (th, tw), tile_weight = tiling.size, tiling.weight()
    jobs, _ = plan(piece.full, piece.box, window, stride, tiling, nearby_span)
    column = np.full(w, -1)  # position in the cut of every column of the grid
    column[(x0 + np.arange(values.shape[-1])) % w] = np.arange(values.shape[-1])

    places = {}  # (start, row, col) -> where the job reads in the cut, writes in the box, and its own part
    weight = np.zeros((tb - ta, yb - ya, xb - xa))
    for s, r, col in jobs:
        cols = (col + np.arange(tw)) % w
        inside = (cols >= xa) & (cols < xb)
        t_lo, t_hi, r_lo, r_hi = max(s, ta), min(s + window, tb), max(r, ya), min(r + th, yb)
        read = (slice(s - t0, s - t0 + window), slice(r - y0, r - y0 + th), column[cols])
        if min(s - t0, r - y0, *column[cols]) < 0 or s - t0 + window > values.shape[2] or r - y0 + th > values.shape[3]:
            raise ArgumentError(f"the cut at {piece.origin} of shape {values.shape} lacks the window at step {s}, "
                                f"tile ({r}, {col}) of the box {piece.box}; cut it as windows.plan says")
        write = (slice(t_lo - ta, t_hi - ta), slice(r_lo - ya, r_hi - ya), cols[inside] - xa)
        own = (slice(t_lo - s, t_hi - s), slice(r_lo - r, r_hi - r), np.flatnonzero(inside))
        places[s, r, col] = read, write, own, tile_weight[own[1]][:, own[2]]
        weight[write] += places[s, r, col][3]

    total = np.zeros((n, c, *weight.shape))
    total_sq = np.zeros_like(total)
    items = [(i, job) for i in range(n) for job in jobs]
    generator_device = torch.device(device)

    def tiled(field, r, col):  # the tile at (r, col) of a field over the grid's last two axes
        return field[..., r : r + th, :][..., (col + np.arange(tw)) % w]

    for first in tqdm(range(0, len(items), batch_size), desc="imputing", disable=not progress, leave=False):
        batch = items[first : first + batch_size]
        cuts = [places[job][0] for _, job in batch]
        x = torch.as_tensor(np.stack([values[i][:, rt, rr][..., rc] for (i, _), (rt, rr, rc) in zip(batch, cuts)]))
        m = torch.as_tensor(np.stack([observed[i][:, rt, rr][..., rc] for (i, _), (rt, rr, rc) in zip(batch, cuts)]))
        tiles = history = nearby = kept = None
        if static is not None:
            tiles = torch.as_tensor(np.stack([tiled(static, r, col) for _, (_, r, col) in batch])).to(generator_device)
        if share is not None:
            kept = torch.as_tensor(np.stack([tiled(share[:, None], r, col)
                                             for _, (_, r, col) in batch])).to(generator_device)
        if totals is not None:
            history = outside_window(np.stack([tiled(totals[sample0 + i], r, col) for i, (_, r, col) in batch]),
                                     x, m).to(generator_device)
        if nearby_span:
            nearby = torch.as_tensor(np.stack([_nearby(values[i], observed[i], rt, rr, rc, window, nearby_span, flow)
                                               for (i, _), (rt, rr, rc) in zip(batch, cuts)])).to(generator_device)
        generators = [torch.Generator(device=generator_device).manual_seed(window_seed(seed, sample0 + i, s, r, col))
                      for i, (s, r, col) in batch]
        with torch.autocast(device_type=generator_device.type, dtype=torch.bfloat16, enabled=autocast):
            mean, std = impute_ensemble(denoiser, x.to(generator_device), m.to(generator_device), spec, K,
                                        generator=generators, context=context, static=tiles, history=history,
                                        nearby=nearby, share=kept)
        # float64 before the total-variance sums: in float32, sd**2 + mu**2 loses a spread far below the mean
        mean, std = mean.double().cpu().numpy(), std.double().cpu().numpy()
        for (i, job), mu, sd in zip(batch, mean, std):
            _, write, own, wt = places[job]
            mu, sd = mu[:, own[0], own[1]][..., own[2]], sd[:, own[0], own[1]][..., own[2]]
            total[i][(slice(None), *write)] += wt * mu  # total[i] first: one fancy index, kept in place
            total_sq[i][(slice(None), *write)] += wt * (sd**2 + mu**2)
    mean = total / weight
    std = np.sqrt(np.maximum(total_sq / weight - mean**2, 0.0))
    seen = piece.inside(observed)
    return np.where(seen, piece.inside(values), mean).astype(np.float32), np.where(seen, 0.0, std).astype(np.float32)


def _nearby(values, observed, steps: slice, rows: slice, cols: np.ndarray, window: int, span: int,
            flow: bool = False) -> np.ndarray:
    """:func:`nearby_observations` of the window at ``steps`` of one sample's cut ``(C, T, H, W)``, on a tile."""
    a, z = max(0, steps.start - span), min(values.shape[1], steps.stop + span)
    return nearby_observations(values[:, a:z, rows][..., cols], observed[:, a:z, rows][..., cols], steps.start - a,
                               window, span, flow)


@torch.no_grad()
def sample_series(denoiser, values: np.ndarray, observed: np.ndarray, schedule: VPSchedule, spec: MaskSpec,
                  imputation_spec: MaskSpec, window: int, *, n: int, steps: int, K: int, eta: float,
                  handover: float | None, domain: torch.Tensor, seed: int, batch_size: int,
                  device: torch.device, autocast: bool = False, progress: bool = False,
                  totals: np.ndarray | None = None, nearby_span: int = 0, flow: bool = False) -> np.ndarray:
    """``n`` members ``(n, N, C, T, H, W)`` of every sample by multi-step sampling, window by window.

    Windows tile the time axis (the last one overlaps the one before it,
    whose values are kept there) and are sampled independently, ``batch_size
    // n`` at a time from one random stream of ``seed``; ``values`` are
    normalised (0 where unobserved). ``totals``, ``nearby_span``, ``flow`` as for :func:`impute_series`.
    Other arguments as for :func:`xrimpute.diffusion.sample_multistep`.
    """
    total_steps = values.shape[2]
    starts = window_starts(total_steps, window, window)
    new_from = {s: max(0, (starts[k - 1] + window if k else 0) - s) for k, s in enumerate(starts)}
    jobs = [(i, s) for i in range(values.shape[0]) for s in starts]
    per_call = max(1, batch_size // n)
    generator = torch.Generator(device=device).manual_seed(seed)
    draws = np.zeros((n, *values.shape), np.float32)
    for first in tqdm(range(0, len(jobs), per_call), desc="sampling", disable=not progress, leave=False):
        batch = jobs[first : first + per_call]
        xb = torch.as_tensor(np.stack([values[i, :, s : s + window] for i, s in batch])).to(device)
        mb = torch.as_tensor(np.stack([observed[i, :, s : s + window] for i, s in batch])).to(device)
        history = nearby = None
        if totals is not None:
            history = outside_window(totals[[i for i, _ in batch]], xb.cpu(), mb.cpu()).to(device)
        if nearby_span:
            every = slice(None)
            nearby = torch.as_tensor(np.stack([_nearby(values[i], observed[i], slice(s, s + window), every, every,
                                                       window, nearby_span, flow) for i, s in batch])).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            out = sample_multistep(denoiser, xb, mb, schedule, spec, imputation_spec=imputation_spec, K=K,
                                   members=n, steps=steps, eta=eta, handover=handover, domain=domain,
                                   generator=generator, max_batch=batch_size, history=history, nearby=nearby)
        out = out.float().cpu().numpy()
        for j, (i, s) in enumerate(batch):
            draws[:, i, :, s + new_from[s] : s + window] = out[:, j, :, new_from[s] :]
    return draws

"""Training windows, from an array in memory or read piece by piece from an archive larger than memory.

Both samplers take ``(N, C, T, H, W)`` data and offer one interface to
:func:`xrimpute.training.train`: ``sample(batch_size, generator)`` draws a
batch ``(x, observed, inputs)``, ``read(jobs)`` cuts given windows,
``validation`` holds the windows and held-back cells to score on (or None),
``validation_jobs`` where those windows lie, ``validation_context(pad)`` the
series around them as training saw it (to score other fillers on the same
cells), :func:`reported` the sampler a fit's score is reported on, and
``close()`` stops any background work. :func:`training_windows` builds
the right one for a cube, holding back validation cells the same way for
both. :func:`statistics` gives the normalisation of either kind from all or
a sample of its time chunks. No xarray here.

``inputs`` is a dict of the denoiser's per-window keyword inputs: ``static``,
the tiles' cuts of full-grid static fields (e.g. position), and ``history``,
the sums and counts of each cell's training observations outside the window
(:func:`xrimpute.windows.outside_window`), and ``nearby``, each cell's
nearest training observations before and after the window
(:func:`xrimpute.windows.nearby_observations`), each present only where
needed: ``history`` with ``totals``, ``nearby`` where ``nearby_span`` (an
attribute of either sampler, which the caller may set to 0 once it knows the
network does without) is not 0.
"""
from __future__ import annotations

import copy
import functools
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch
from dask import compute, is_dask_collection

from . import masks, robust
from .errors import ArgumentError, WorkFailedError
from .geometry import evenly_spaced
from .passes import compute_pass
from .training import distributed_rank
from .windows import (Tiling, flow_velocity, nearby_observations, outside_window, series_totals, window_starts,
                      window_sums)

STRUCTURE_STEPS = 32  # consecutive steps the mask structure is judged on (all of a shorter series)
VALIDATION_WINDOWS = 16
"""Windows with held-back cells that score the network of a fit in memory while it trains, and the first guesses."""
WIDE_VALIDATION_CELLS = 2**22
"""Window cells (all variables) of every window with held-back cells, at most, that a fit in memory keeps to settle
whether a guess leaning on a series-wide baseline wins by its margin (``ArrayWindows.wide_validation``, made when
asked, from the held-back cells kept a bit each): on the
ERA5 sample's 10 % pixels 16 windows put the modes and the daily cycle 7 % ahead where all 148 put them behind, and
the default fit from the guess without them filled the gaps 15 % better (``benchmarks/RESULTS.md``)."""


@dataclass
class Statistics:
    """Normalisation and coverage of a cube, from all or a sample of its time chunks."""

    mean: np.ndarray  # (C,) float32
    std: np.ndarray  # (C,) float32, 1 for a constant channel
    valid: np.ndarray  # (C, H, W): cells observed at least once
    counts: np.ndarray  # (C,): observed cells per channel
    rate: float  # observed fraction of the cells in columns valid for some channel
    observed: np.ndarray  # (N, C, t, H, W): mask of STRUCTURE_STEPS consecutive steps, to infer the structure from
    chunks: tuple[int, int]  # chunks read, chunks in all
    outliers: np.ndarray  # (C,): values left out of mean and std, beyond the robust fence (xrimpute.robust)


def time_chunks(values) -> np.ndarray:
    """``(start, stop)`` rows of the time chunks of a dask array (one chunk for an in-memory array)."""
    sizes = np.asarray(values.chunks[2] if is_dask_collection(values) else (values.shape[2],), np.int64)
    ends = np.cumsum(sizes)
    return np.stack([ends - sizes, ends], axis=1)


def statistics(values, max_chunks: int = 8, seed: int = 0) -> Statistics:
    """Per-channel mean and spread, and coverage, from at most ``max_chunks`` time chunks drawn at random.

    An in-memory array is one chunk and is read whole. On a long archive a
    handful of chunks spread over it gives each variable's mean and spread to
    within a few percent, which is all normalisation needs, without a pass
    over the whole archive; chunks are read one at a time (memory: one time
    chunk). Cells never observed in the chunks read count as never observed.
    Mean and spread leave out the values beyond the robust fence of their
    chunk (:func:`xrimpute.robust.inliers`), so one gross error cannot blow
    them up; ``outliers`` counts them. The mask structure is judged on
    ``STRUCTURE_STEPS`` consecutive steps (or all), whatever the chunking.
    """
    spans = time_chunks(values)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(spans), min(max_chunks, len(spans)), replace=False))
    n, c, t, h, w = values.shape
    count, mean, m2, outliers = np.zeros(c, np.int64), np.zeros(c), np.zeros(c), np.zeros(c, np.int64)
    per_cell, steps, structure = np.zeros((c, h, w), np.int64), 0, None
    for k in picked:
        a, b = (int(v) for v in spans[k])
        block = np.asarray(values[:, :, a:b], dtype=np.float32)
        observed = np.isfinite(block)
        if structure is None or observed.shape[2] > structure.shape[2]:  # most windows to judge the structure on
            structure = observed
        per_cell += observed.sum(axis=(0, 2))
        steps += n * (b - a)
        for ch in range(c):  # merge the chunk's mean and sum of squares into the running ones (Chan et al.)
            v = block[:, ch][observed[:, ch]].astype(np.float64)
            keep = robust.inliers(v)
            outliers[ch] += v.size - int(keep.sum())
            v = v[keep]
            if v.size:
                total, delta = count[ch] + v.size, v.mean() - mean[ch]
                m2[ch] += ((v - v.mean()) ** 2).sum() + delta**2 * count[ch] * v.size / total
                mean[ch] += delta * v.size / total
                count[ch] = total
    if structure.shape[2] < min(t, STRUCTURE_STEPS):  # short chunks: too few windows to judge the structure on
        start = int(rng.integers(t - min(t, STRUCTURE_STEPS) + 1))
        structure = np.asarray(np.isfinite(values[:, :, start : start + STRUCTURE_STEPS]))  # booleans, chunk by chunk
    std = np.sqrt(m2 / np.maximum(count, 1))
    valid = per_cell > 0
    columns = valid.any(axis=0)
    rate = float(per_cell[:, columns].sum() / max(1, steps * c * int(columns.sum())))
    return Statistics(mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32), valid,
                      count, rate, structure, (len(picked), len(spans)), outliers)


def reserved_windows(n: int, length: int, window: int, fraction: float, grid: tuple[int, int],
                     tile: tuple[int, int] | None = None, seed: int = 0, most: int = 16) -> list[tuple]:
    """``(sample, start, row, col)`` of windows kept out of training to validate on, spread over the archive.

    About ``fraction`` of the non-overlapping windows, at most ``most``, none
    when ``fraction`` is 0 or the archive has fewer than 4 windows; a random
    tile of each when tiled (row and col 0 otherwise).
    """
    lattice = [(i, s) for i in range(n) for s in range(0, length - window + 1, window)]
    count = min(most, max(1, round(fraction * len(lattice)))) if fraction > 0 and len(lattice) >= 4 else 0
    rng = np.random.default_rng(seed)
    (th, tw) = tile or grid
    return [(*lattice[k], int(rng.integers(grid[0] - th + 1)), int(rng.integers(grid[1] - tw + 1)))
            for k in evenly_spaced(len(lattice), count)]


@dataclass
class _Piece:
    x: torch.Tensor  # (C, t, h, w) normalised, 0 where unobserved
    observed: torch.Tensor  # (C, t, h, w) bool
    static: torch.Tensor | None  # (S, h, w)
    starts: list[int]  # window starts allowed for training, relative to the piece
    origin: tuple[int, int, int]  # sample, first row and first column of the piece in the archive


@dataclass
class Stretch:
    """A window kept out of training for validation with the steps read around it, as the archive holds them."""

    sample: int
    start: int  # the stretch's first step in the series
    row: int
    col: int
    values: np.ndarray  # (C, steps, rows, cols) data units, NaN = unobserved


def _inputs(static=None, totals=None, x=None, observed=None, nearby=None) -> dict:
    """The denoiser's per-window inputs of a batch: ``static`` cuts ``(B, S, h, w)``, the history of windows
    ``x`` with ``observed`` cells from their series' ``totals`` cuts ``(B, 2C, h, w)``, and their ``nearby``
    observations (a list of ``(4C, h, w)``); None: not needed."""
    inputs = {} if static is None else {"static": static}
    if totals is not None:
        inputs["history"] = outside_window(totals, x, observed)
    if nearby is not None:
        inputs["nearby"] = torch.as_tensor(np.stack(nearby))
    return inputs


def _along_flow_kept(values, observed, start: int, window: int, span: int, velocity, hide: masks.MaskSpec | None,
                     generator: torch.Generator | None) -> np.ndarray:
    """The nearest observations along the flow ``velocity`` (found by the caller from every training observation
    of the stretch) among those a context ``hide`` draws over the stretch keeps: training meets observations left
    out for many steps, as the gaps do, and learns how far to trust a guess carried from far. All of them without
    ``hide`` or ``generator``."""
    if hide is not None and generator is not None:
        observed = hide.context(observed[None], generator)[0]
    return nearby_observations(values, observed, start, window, span, flow=True, velocity=velocity)


class ArrayWindows:
    """Random training windows from an in-memory array.

    ``values`` are normalised with 0 at unobserved cells; ``observed`` is boolean.
    With ``tile`` = (rows, cols) every window is cut to a random spatial tile,
    and with ``static`` (full-grid fields ``(S, H, W)``, e.g. position) each
    batch's inputs carry the tile's cut of them. With ``totals`` (the
    :func:`~xrimpute.windows.series_totals` of the ``observed`` cells) they
    carry each window's history, and with ``nearby_span`` each cell's
    nearest ``observed`` cells within that many steps either side of it
    (with ``flow``, along the flow: :func:`~xrimpute.windows.nearby_observations`; then, with ``hide``, a
    mask spec, each window that :meth:`sample` draws finds them among a context that the spec draws over the
    steps around it, so that training, like gaps that stay put, meets cells whose cell and trajectory the
    observations leave for many steps, and learns how far to trust a guess carried from far along the flow).
    """

    validation = None  # (x, observed, held back, static) windows to score on; set by training_windows
    validation_jobs = ()  # (sample, start, row, col) of each validation window; set by training_windows
    reserved_stretches = ()  # none: windows of a cube in memory are cut from it, not read (ChunkedWindows)
    validation_hidden = None  # per validation window, (C, 1, h, w) cells hidden at every step around it, or None
    validation_hidden_span = 0  # ... up to this many steps either side of the window
    held_cells = None  # the held-back cells, a bit each, where more windows hold some than validation scores
    validation_seed = 0  # where the validation windows' tiles lie
    guess_validation = None  # validation as imputation fills it (_overlapping_runs), to choose the first guess on
    reported_validation = None  # (validation, validation_jobs) of the cells a fit's score is reported on (reported)

    def __init__(self, values: np.ndarray, observed: np.ndarray, window: int,
                 tile: tuple[int, int] | None = None, static: np.ndarray | None = None,
                 totals: np.ndarray | None = None, nearby_span: int = 0, flow: bool = False,
                 hide: masks.MaskSpec | None = None):
        self.values = torch.as_tensor(values)
        self.observed = torch.as_tensor(observed)
        self.window = window
        self.tile = tile
        self.static = None if static is None or tile is None else torch.as_tensor(static)
        self.totals = None if totals is None else torch.as_tensor(totals)
        self.nearby_span, self.flow, self.hide = nearby_span, flow, hide
        self._velocities = {}  # (sample, start, row, col): the flow of each window met, which hiding leaves alone
        n, _, t = values.shape[:3]
        self.index = [(i, s) for i in range(n) for s in window_starts(t, window)]

    def __len__(self) -> int:
        return len(self.index)

    def training_series(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, observed)`` of the whole series as training sees it (the held-back cells unobserved)."""
        return self.values, self.observed

    def get(self, picks, origins=None, generator: torch.Generator | None = None):
        """Windows ``picks`` (indices into ``self.index``), cut to tiles at ``origins`` ``[(row, col), ...]``:
        ``(x, observed, inputs)``; ``generator`` draws what ``hide`` hides."""
        rows = [self.index[int(p)] for p in picks]
        return self.read([(i, s, *origin) for (i, s), origin in zip(rows, origins or [(0, 0)] * len(rows))],
                         generator)

    def sample(self, batch_size: int, generator: torch.Generator):
        picks = torch.randint(0, len(self.index), (batch_size,), generator=generator)
        if self.tile is None:
            return self.get(picks, generator=generator)
        h, w = self.values.shape[-2:]
        rows = torch.randint(0, h - self.tile[0] + 1, (batch_size,), generator=generator).tolist()
        cols = torch.randint(0, w - self.tile[1] + 1, (batch_size,), generator=generator).tolist()
        return self.get(picks, list(zip(rows, cols)), generator)

    def read(self, jobs, generator: torch.Generator | None = None,
             size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Windows at ``(sample, start, row, col)`` (tile-sized, or the whole grid, or of ``size`` cells; columns
        past the grid's last wrap round, as a tile over a global grid's seam): ``(x, observed, inputs)``; with
        ``generator``, the nearby observations of a sampler with ``hide`` leave some out."""
        (th, tw) = size or self.tile or self.values.shape[-2:]
        width = self.values.shape[-1]
        cuts = [(i, slice(s, s + self.window), slice(r, r + th), _columns(c, tw, width)) for i, s, r, c in jobs]
        x = torch.stack([self.values[i, :, t, y][..., z] for i, t, y, z in cuts])
        m = torch.stack([self.observed[i, :, t, y][..., z] for i, t, y, z in cuts])
        static = None if self.static is None else torch.stack([self.static[:, y, z] for _, _, y, z in cuts])
        totals = None if self.totals is None else torch.stack([self.totals[i, :, y][..., z] for i, _, y, z in cuts])
        nearby = [self._nearby(i, s, y, z, generator) for (i, s, _, _), (_, _, y, z) in zip(jobs, cuts)] \
            if self.nearby_span else None
        return x, m, _inputs(static, totals, x, m, nearby)

    def _nearby(self, sample: int, start: int, rows: slice, cols: slice,
                generator: torch.Generator | None = None) -> np.ndarray:
        """:func:`~xrimpute.windows.nearby_observations` of one window (tile), from its stretch of the series."""
        span = self.nearby_span
        first, stop = max(0, start - span), min(self.values.shape[2], start + self.window + span)
        values = self.values[sample, :, first:stop, rows][..., cols]
        observed = self.observed[sample, :, first:stop, rows][..., cols]
        if not self.flow:
            return nearby_observations(values, observed, start - first, self.window, span)
        key = (sample, start, rows.start, cols.start if isinstance(cols, slice) else int(cols[0]))
        if key not in self._velocities:
            self._velocities[key] = flow_velocity(values, observed, start - first, self.window)
        return _along_flow_kept(values, observed, start - first, self.window, span, self._velocities[key],
                                self.hide, generator)

    def validation_context(self, pad: int | None = None) -> list[tuple[np.ndarray, int, list]]:
        """The series around the validation windows as training saw it: normalised, NaN at every cell it did not
        see (the held-back cells among them), for scoring other fillers on the held-back cells.

        ``pad`` None: the whole series, once; else the steps of each window with up to ``pad`` steps either side,
        over the whole grid. Items ``(series (n, C, t, H, W), first step, [(window, cut), ...])``: ``series[cut]``
        is validation window (tile) ``window``. Where each window's held-back cells are hidden at every step around
        it (:attr:`validation_hidden`), each window comes apart with them hidden, ``pad`` None meaning as far as
        they are hidden (:attr:`validation_hidden_span`: a fit that turns the nearby steps down stops reading them,
        but its validation windows keep what they were built with).
        """
        def seen(i: slice, steps: slice) -> np.ndarray:  # a copy of those steps, as training saw them
            return np.where(self.observed[i, :, steps].numpy(), self.values[i, :, steps].numpy(), np.float32(np.nan))

        (th, tw) = self.tile or self.values.shape[-2:]
        length = self.values.shape[2]
        if self.validation_hidden is not None:
            pad = self.validation_hidden_span if pad is None else pad
            items = []
            spans = context_spans(self.validation_jobs, self.window, length, pad, apart=False)
            for b, ((i, s, r, c), (a, z)) in enumerate(zip(self.validation_jobs, spans)):
                series = seen(slice(i, i + 1), slice(a, z))
                region = series[0, :, :, r : r + th, c : c + tw]
                region[np.broadcast_to(self.validation_hidden[b], region.shape)] = np.nan
                items.append((series, a, [(b, (0, slice(None), slice(s - a, s - a + self.window), slice(r, r + th),
                                               slice(c, c + tw)))]))
            return items
        if pad is None:
            return [(seen(slice(None), slice(None)), 0,
                     [(b, (i, slice(None), slice(s, s + self.window), slice(r, r + th), slice(c, c + tw)))
                      for b, (i, s, r, c) in enumerate(self.validation_jobs)])]
        # only the steps round each window: no copy of the whole series
        spans = context_spans(self.validation_jobs, self.window, length, pad, apart=False)
        return [(seen(slice(i, i + 1), slice(a, z)), a, [(b, (0, slice(None), slice(s - a, s - a + self.window),
                                                              slice(r, r + th), slice(c, c + tw)))])
                for b, ((i, s, r, c), (a, z)) in enumerate(zip(self.validation_jobs, spans))]

    @functools.cached_property
    def wide_validation(self) -> tuple | None:
        """As ``validation``, from every window with held-back cells (:data:`WIDE_VALIDATION_CELLS` at most), made
        when first asked (delete it to free it); None where it would hold no more windows than ``validation``."""
        n, c, t, h, w = self.values.shape
        (th, tw) = self.tile or (h, w)
        most = WIDE_VALIDATION_CELLS // (c * self.window * th * tw)
        if self.held_cells is None or most <= VALIDATION_WINDOWS:  # no more windows than validation scores
            return None
        shape = tuple(self.observed.shape)
        heldout = np.unpackbits(self.held_cells, count=int(np.prod(shape))).view(bool).reshape(shape)
        return _validation_windows(self, heldout, self.validation_seed, max_windows=most)[0]

    def close(self) -> None:
        """Nothing runs in the background."""


class ChunkedWindows:
    """Random training windows (and tiles) read piece by piece from an archive larger than memory.

    A background thread reads *pieces* from the first batch on: one time chunk of one sample, plus
    the ``window - 1`` steps after it so that windows may cross chunk edges,
    over the whole grid, or with ``tile`` over a random box of twice the tile
    size. It normalises them with ``mean`` and ``std`` (per channel) while
    training runs. Batches are cut from a pool of ``pool`` pieces; every
    ``reuse`` batches the oldest piece makes way for the next one read, so
    memory holds at most ``pool + prefetch + 1`` pieces whatever the length
    of the archive. With ``pin_memory`` (for CUDA) batches come in pinned
    memory, so the copy to the GPU runs asynchronously. The order of pieces
    follows ``seed`` and the rank under torch.distributed (each rank reads its
    own), so runs are reproducible; a resumed run starts the order anew.

    ``sample`` returns ``(x, observed, inputs)``, the inputs holding the tiles'
    cuts of the full-grid ``static`` fields ``(S, H, W)`` and, with ``totals``
    (:func:`~xrimpute.windows.series_totals` of the training observations),
    each window's history, and with ``nearby_span`` each cell's nearest
    observations within that many steps either side (pieces are read with
    that many more steps either side; with ``flow``, along the flow). Windows
    overlapping the ``reserved`` ones (``(sample, start, ...)``, kept for
    validation) are never drawn, nor are their observations nearby steps of
    any window, and cells ``withheld`` (``(N, H, W)``: stations held out for
    validation, or where the gaps stay put the reserved windows' held-back
    cells) count as unobserved in training, at every step of their series.
    """

    validation = None  # (x, observed, held back, static) windows to score on; set by training_windows
    validation_jobs = ()  # (sample, start, row, col) of each validation window; set by training_windows
    reserved_stretches = ()  # each validation window's Stretch, as read for it and its imputation; by training_windows
    validation_hidden = None  # per validation window, (C, 1, h, w) cells hidden at every step around it, or None
    wide_validation = guess_validation = None  # none: an archive's reserved windows are its validation
    reported_validation = None  # ... and the cells its score is reported on

    def __init__(self, values, window: int, mean: np.ndarray, std: np.ndarray, *,
                 tile: tuple[int, int] | None = None, static: np.ndarray | None = None,
                 reserved=(), pool: int = 4, prefetch: int = 2, reuse: int = 4, seed: int = 0,
                 pin_memory: bool = False, withheld: np.ndarray | None = None, totals: np.ndarray | None = None,
                 nearby_span: int = 0, flow: bool = False, hide: masks.MaskSpec | None = None):
        self.values, self.window, self.tile, self.withheld = values, window, tile, withheld
        self.nearby_span, self.flow, self.hide = nearby_span, flow, hide
        self.totals = totals  # cut when a batch is drawn, so that training_windows may still take the reserved out
        self.mean = np.asarray(mean, np.float32)[:, None, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None, None]
        self.static = None if static is None or tile is None else np.asarray(static, np.float32)
        self.pool_size, self.reuse, self.pin_memory = pool, reuse, pin_memory
        n, _, t, h, w = values.shape
        self.box = (h, w) if tile is None else (min(h, 2 * tile[0]), min(w, 2 * tile[1]))
        self.blocked = {}  # sample -> starts of windows that would overlap a reserved one
        self.reserved_starts = {}  # sample -> starts of the reserved windows
        for i, s, *_ in reserved:
            self.blocked.setdefault(i, set()).update(range(s - window + 1, s + window))
            self.reserved_starts.setdefault(i, []).append(s)
        spans = time_chunks(values)
        spans = spans[spans[:, 0] <= t - window]  # chunks where a window can start
        pieces = np.concatenate([np.column_stack([np.full(len(spans), i), spans]) for i in range(n)])
        self.pieces = pieces[[bool(self._starts(*p)) for p in pieces]] if reserved else pieces  # (sample, a, b)
        if not len(self.pieces):
            raise ArgumentError(f"no window of {window} steps is left to train on ({t} steps, {len(reserved)} "
                                "windows kept for validation); use a smaller window or val_fraction=0")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._rng = np.random.default_rng([seed, distributed_rank()[0]])
        self._thread = threading.Thread(target=self._read_ahead, name="xrimpute-prefetch", daemon=True)
        self._pool: list[_Piece] = []
        self._batches = 0

    # -- background reading ----------------------------------------------------
    def _starts(self, i: int, a: int, b: int) -> list[int]:
        """Window starts in a time chunk allowed for training, relative to the chunk."""
        last, blocked = self.values.shape[2] - self.window, self.blocked.get(i, ())
        return [s - a for s in range(a, min(b, last + 1)) if s not in blocked]

    def _read(self, i: int, a: int, b: int, row: int, col: int, size: tuple[int, int], starts: list[int],
              withhold: bool = False) -> _Piece:
        (bh, bw) = size
        return self._piece(self.values[i, :, a:b, row : row + bh, col : col + bw], i, a, row, col, starts, withhold)

    def _piece(self, raw, i: int, a: int, row: int, col: int, starts: list[int], withhold: bool = False) -> _Piece:
        """The piece of the steps from ``a`` of sample ``i`` whose values ``raw`` (data units) were read at ``row``,
        ``col``: normalised, observed where finite (with ``withhold``, neither withheld nor in a reserved window)."""
        raw = np.asarray(raw, dtype=np.float32)
        (bh, bw) = raw.shape[-2:]
        observed = np.isfinite(raw)
        if withhold and self.withheld is not None:
            observed &= ~self.withheld[i, row : row + bh, col : col + bw]
        if withhold:  # the reserved windows' steps, which only nearby steps could reach
            for s in self.reserved_starts.get(i, ()):
                observed[:, max(s - a, 0) : max(s + self.window - a, 0)] = False
        x = np.where(observed, (raw - self.mean) / self.std, 0.0).astype(np.float32)
        static = None if self.static is None else torch.as_tensor(self.static[:, row : row + bh, col : col + bw])
        return _Piece(torch.as_tensor(x), torch.as_tensor(observed), static, starts, (i, row, col))

    def _read_ahead(self) -> None:
        h, w = self.values.shape[-2:]
        while not self._stop.is_set():
            try:
                i, a, b = (int(v) for v in self.pieces[self._rng.integers(len(self.pieces))])
                row, col = (int(self._rng.integers(size - box + 1)) for size, box in zip((h, w), self.box))
                stop = min(b + self.window - 1, self.values.shape[2])  # windows may run into the next chunk
                first, stop = max(0, a - self.nearby_span), min(stop + self.nearby_span, self.values.shape[2])
                starts = [s + a - first for s in self._starts(i, a, b)]
                item = self._read(i, first, stop, row, col, self.box, starts, withhold=True)
            except BaseException as err:  # handed to the training loop, which raises it
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _next_piece(self) -> _Piece:
        if self._thread.ident is None:  # from the first batch on, once a fit has settled what pieces carry
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise WorkFailedError("reading a piece of the archive for training failed") from item
        return item

    # -- sampling ----------------------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator):
        """A batch of random windows (tiles) from the pool: ``(x, observed, inputs)``."""
        while len(self._pool) < self.pool_size:
            self._pool.append(self._next_piece())
        if self._batches and self._batches % self.reuse == 0:
            self._pool = self._pool[1:] + [self._next_piece()]
        self._batches += 1
        (bh, bw), (th, tw) = self.box, self.tile or self.box
        slots = torch.randint(0, len(self._pool), (batch_size,), generator=generator).tolist()
        draws = torch.rand(batch_size, 3, generator=generator).numpy()
        xs, ms, statics, totals, nearby = [], [], [], [], []
        for slot, (u, v, z) in zip(slots, draws):
            piece = self._pool[slot]
            s = piece.starts[int(u * len(piece.starts))]
            r, c = int(v * (bh - th + 1)), int(z * (bw - tw + 1))
            cut = (slice(None), slice(s, s + self.window), slice(r, r + th), slice(c, c + tw))
            xs.append(piece.x[cut])
            ms.append(piece.observed[cut])
            if self.nearby_span:  # the piece holds the span either side of its windows
                tile = (slice(None), slice(None), *cut[2:])
                nearby.append(self._nearby(piece.x[tile], piece.observed[tile], s, generator))
            if piece.static is not None:
                statics.append(piece.static[:, r : r + th, c : c + tw])
            if self.totals is not None:
                i, row, col = piece.origin
                totals.append(self.totals[i, :, row + r : row + r + th, col + c : col + c + tw])
        x, m = torch.stack(xs), torch.stack(ms)
        inputs = _inputs(torch.stack(statics) if statics else None, np.stack(totals) if totals else None, x, m,
                         nearby or None)
        if self.pin_memory:
            return x.pin_memory(), m.pin_memory(), {name: v.pin_memory() for name, v in inputs.items()}
        return x, m, inputs

    def _nearby(self, values, observed, start: int, generator: torch.Generator) -> np.ndarray:
        """:func:`~xrimpute.windows.nearby_observations` of the window at ``start`` of a piece, as
        :meth:`ArrayWindows._nearby` finds them (along the flow, over the window's own stretch)."""
        if not self.flow:
            return nearby_observations(values, observed, start, self.window, self.nearby_span)
        first = max(0, start - self.nearby_span)
        stretch = slice(first, start + self.window + self.nearby_span)
        values, observed, start = values[:, stretch], observed[:, stretch], start - first
        velocity = flow_velocity(values, observed, start, self.window)
        return _along_flow_kept(values, observed, start, self.window, self.nearby_span, velocity, self.hide,
                                generator)

    def stretches(self, jobs, pad: int) -> list[Stretch]:
        """Each window at ``(sample, start, row, col)`` (tile-sized, or the whole grid) with ``pad`` steps either side
        (at least the ``nearby_span``, for :meth:`read`), all in one compute: each chunk read once."""
        (th, tw) = self.tile or self.values.shape[-2:]
        spans = context_spans(jobs, self.window, self.values.shape[2], pad, apart=False)
        raws = compute(*[self.values[i, :, a:z, r : r + th, c : c + tw] for (i, _, r, c), (a, z) in zip(jobs, spans)])
        return [Stretch(i, a, r, c, np.asarray(raw, np.float32))
                for (i, _, r, c), (a, _), raw in zip(jobs, spans, raws)]

    def read(self, jobs, stretches: list[Stretch]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Windows at ``(sample, start, row, col)`` (tile-sized, or the whole grid): ``(x, observed, inputs)``, from
        their :meth:`stretches` (read once, or made from another sampler's)."""
        (th, tw) = self.tile or self.values.shape[-2:]
        pieces = [self._piece(st.values[:, s - st.start : s - st.start + self.window], i, s, r, c, [0])
                  for (i, s, r, c), st in zip(jobs, stretches)]
        static = None if self.static is None else torch.stack([p.static for p in pieces])
        x, m = torch.stack([p.x for p in pieces]), torch.stack([p.observed for p in pieces])
        totals = None if self.totals is None else np.stack([self.totals[i, :, r : r + th, c : c + tw]
                                                            for i, _, r, c in jobs])
        nearby = None
        if self.nearby_span:  # the steps around, as training sees them
            nearby = []
            for (i, s, r, c), st in zip(jobs, stretches):
                a = max(st.start, s - self.nearby_span)  # a stretch read for more keeps to the span
                around = self._piece(st.values[:, a - st.start : s + self.window + self.nearby_span - st.start], i, a,
                                     r, c, [0], withhold=True)
                nearby.append(nearby_observations(around.x, around.observed, s - a, self.window, self.nearby_span,
                                                  self.flow))
        return x, m, _inputs(static, totals, x, m, nearby)

    def validation_context(self, pad: int = 0) -> list[tuple[np.ndarray, int, list]]:
        """Each validation window (tile) with up to ``pad`` steps either side that no other validation window
        shares, normalised, NaN at every cell training did not see (the held-back ones among them); cut from the
        ``reserved_stretches`` where they hold those steps (as for the held-back cells imputed as ``impute``
        fills them), else read from the archive, over the tile only. Items as for
        :meth:`ArrayWindows.validation_context`."""
        xs, ms, _, _ = self.validation
        (bh, bw) = self.tile or self.values.shape[-2:]
        spans = context_spans(self.validation_jobs, self.window, self.values.shape[2], pad, apart=True)
        held = self.reserved_stretches
        if len(held) == len(spans) and all(st.start <= a and z <= st.start + st.values.shape[1]
                                           for st, (a, z) in zip(held, spans)):  # as read for the windows
            raws = [st.values[:, a - st.start : z - st.start] for st, (a, z) in zip(held, spans)]
        else:
            raws = compute(*[self.values[i, :, a:z, r : r + bh, c : c + bw]  # one pass over the archive's chunks
                             for (i, _, r, c), (a, z) in zip(self.validation_jobs, spans)])
        out = []
        for b, ((i, s, r, c), (a, _), raw) in enumerate(zip(self.validation_jobs, spans, raws)):
            raw = np.asarray(raw, np.float32)
            seen = np.isfinite(raw)
            if self.withheld is not None:  # as training sees the steps around the window
                seen &= ~self.withheld[i, r : r + bh, c : c + bw]
            series = np.where(seen, (raw - self.mean) / self.std, np.nan).astype(np.float32)
            series[:, s - a : s - a + self.window] = np.where(ms[b].numpy(), xs[b].numpy(), np.float32(np.nan))
            if self.validation_hidden is not None:
                series[np.broadcast_to(self.validation_hidden[b], series.shape)] = np.nan
            out.append((series[None], a, [(b, (0, slice(None), slice(s - a, s - a + self.window)))]))
        return out

    def training_series(self):
        """``(values, observed)`` of the whole archive as training sees it, lazily (dask): normalised, and observed
        where finite, neither ``withheld`` nor at the steps of a reserved window (training draws no window that
        overlaps one)."""
        n, _, t = self.values.shape[:3]
        steps = np.ones((n, t), bool)
        for i, starts in self.reserved_starts.items():
            for s in starts:
                steps[i, s : s + self.window] = False
        observed = np.isfinite(self.values) & steps[:, None, :, None, None]
        if self.withheld is not None:
            observed = observed & ~self.withheld[:, None, None]
        return (self.values - self.mean) / self.std, observed

    def close(self) -> None:
        """Stop the background reader."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()


def context_spans(jobs, window: int, length: int, pad: int, apart: bool) -> list[tuple[int, int]]:
    """``(start, stop)`` steps around each window ``(sample, start, ...)`` of ``jobs``: up to ``pad`` steps either
    side inside a series of ``length`` steps; with ``apart``, short of the other windows of the same sample."""
    spans = []
    for i, s, *_ in jobs:
        a, z = max(0, s - pad), min(length, s + window + pad)
        if apart:
            for j, o, *_ in jobs:
                if j == i and o != s:
                    a, z = (max(a, o + window), z) if o < s else (a, min(z, o))
        spans.append((a, z))
    return spans


HOLDOUT_DRAWS = 8
"""Draws of the held-back cells a fit makes at most until one holds back an observed cell."""
CLOUDS_REACH = 24
"""Steps beyond a window's own in the runs whose clouds the held-back cells a fit in memory reports its score on
take (:func:`xrimpute.masks.other_clouds_keep`): as far as a first guess looks for a cell's own observations
(``xrimpute.nets.prior.NEARBY_SPAN``), so that round a held-back cell in time lie the clouds round a gap."""

CLOUDS_SHARE = 0.5
"""The clouds' cells held back for the reported score, as a share of ``val_fraction``: every one is lost to training,
in runs where the coverage falls to its square."""


def reported(windows):
    """The sampler whose validation cells a fit reports its score on, fits the share of its network's correction
    on and scores the classical fillers on: ``windows`` itself, or where it holds clouds' cells back apart for
    that (``reported_validation``), a view of it with those as its validation (the choices of the first guess,
    the context and the network's step stay on ``windows.validation``)."""
    if windows.reported_validation is None:
        return windows
    view = copy.copy(windows)
    view.validation, view.validation_jobs = windows.reported_validation
    view.reported_validation = view.guess_validation = view.held_cells = None
    vars(view).pop("wide_validation", None)
    return view


def station_shares(context: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """``folds`` shares ``(C, H, W)`` of the stations of validation windows' ``context`` ``(B, C, T, H, W)``, every
    station in one share: dealt in turn along a Z-order curve through the grid from a point drawn with ``seed``, so
    that neighbouring stations mostly fall in different shares. Drawn at random, a share could hold every station of
    a cluster far from the others, and score the guesses on reaching across the distance no gap spans (OSTIA's three
    easternmost stations: the thin plate's skill -2.7 there, ``benchmarks/RESULTS.md``)."""
    channels, h, w = context.shape[1], *context.shape[3:]
    stations = torch.nonzero(context.any(dim=(0, 2)).flatten()).squeeze(1)
    rows, cols = (stations % (h * w)) // w, stations % w
    order = torch.zeros_like(stations)
    for bit in range(max(h, w).bit_length()):  # interleave the bits of row and column
        order |= ((rows >> bit) & 1) << (2 * bit + 1) | ((cols >> bit) & 1) << (2 * bit)
    order = order * channels + stations // (h * w)
    start = int(torch.randint(len(stations), (1,), generator=torch.Generator().manual_seed(seed)))
    stations = stations[order.argsort()].roll(-start)
    shares = []
    for k in range(folds):
        fold = torch.zeros(channels * h * w, dtype=torch.bool)
        fold[stations[k::folds]] = True
        shares.append(fold.view(channels, h, w))
    return shares


class StationFolds:
    """``windows`` (station data in memory) and ``folds`` views of it, each holding back a share of its validation
    windows' context stations (:func:`station_shares`) at every step of the series and seeing the rest: scored on
    each in turn, every station says how a cell between stations is filled, rather than the few held back from
    training. A view holds its own copy of the observed cells, so each is made as the iteration reaches it."""

    def __init__(self, windows: ArrayWindows, folds: int, seed: int):
        self.windows = windows
        self.shares = station_shares(windows.validation[1], folds, seed)

    def __len__(self) -> int:
        return 1 + len(self.shares)

    def __iter__(self):
        yield self.windows
        xs, ms, _, inputs = self.windows.validation
        for share in self.shares:
            view = copy.copy(self.windows)
            view.observed = self.windows.observed & ~share[None, :, None]
            view.validation = (xs, ms & ~share[None, :, None], ms & share[None, :, None], inputs)
            view.reported_validation = view.guess_validation = view.held_cells = None
            vars(view).pop("wide_validation", None)
            yield view


def _held_still(observed: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation windows' ``(training sees, held back, held anywhere)`` where the gaps stay put: held-back cells
    drawn anew every step (an archive's reserved windows) or for runs that a window straddles are observed a step
    away, which a gap that stays put never is; a cell held back at any step of a window (``held``, ``(B, C, T, h,
    w)``) is held back at every step it is ``observed``, and ``(B, C, 1, h, w)`` says which, for hiding them at the
    steps around. A step held back whole where other steps of the window keep cells (a missing step,
    :class:`~xrimpute.masks.TimeGap`) stays a single step: it is a gap of every cell at that step only."""
    cells = (1, 3, 4)  # all but the step
    whole = ((held | ~observed).all(dim=cells, keepdim=True) & held.any(dim=cells, keepdim=True)
             & (observed & ~held).any(dim=cells, keepdim=True).any(2, keepdim=True))
    union = (held & ~whole).any(2, keepdim=True)
    out = observed & (union | (held & whole))
    return observed & ~out, out, union


def _columns(first: int, count: int, width: int):
    """``count`` columns from ``first`` of a grid ``width`` wide: a slice, or where they pass the seam (a tile of a
    wrapping grid's tiling), their indices modulo ``width``."""
    if first + count <= width:
        return slice(first, first + count)
    return np.arange(first, first + count) % width


def _placements(heldout, window: int, size: tuple[int, int], seed, max_windows: int = VALIDATION_WINDOWS,
                lattice: Tiling | None = None) -> tuple[list[tuple[int, int, int, int]], bool]:
    """The ``(sample, start, row, col)`` of up to ``max_windows`` windows (tiles of ``size``) holding cells of
    ``heldout`` ``(N, C, T, H, W)``, spread evenly over them, and whether windows holding some were left out; as
    :func:`_validation_windows` places them."""
    n, _, t, h, w = heldout.shape
    th, tw = size
    jobs = [(i, s) for i in range(n) for s in window_starts(t, window, window)]
    jobs = [j for j in jobs if heldout[j[0], :, j[1] : j[1] + window].any()]
    if lattice is None:
        rng = np.random.default_rng(seed)
        placed = [(i, s, int(rng.integers(h - th + 1)), int(rng.integers(w - tw + 1)))
                  for i, s in (jobs[k] for k in evenly_spaced(len(jobs), max_windows))]
        return placed, len(jobs) > max_windows
    rows, cols = lattice.origins(h, w)
    placed = [(i, s, r, q) for i, s in jobs for r in rows for q in cols]
    return [placed[k] for k in evenly_spaced(len(placed), max_windows)], len(placed) > max_windows


def _validation_windows(windows: ArrayWindows, heldout, seed, still: bool = False,
                        max_windows: int = VALIDATION_WINDOWS, lattice: Tiling | None = None):
    """Up to ``max_windows`` windows (tiles) of ``windows`` with held-back cells: ``(x, observed, heldout,
    inputs)``, the ``(sample, start, row, col)`` of each (:func:`_placements`), whether windows with held-back
    cells were left out, and with ``still`` (as for :func:`training_windows`) the cells hidden round each
    (``(B, C, 1, h, w)``, else None). ``lattice`` (an imputation's :class:`~xrimpute.windows.Tiling`): every one
    of its tiles in each window rather than one tile at random (the last over a global grid's seam, as
    imputation's), and in ``heldout``'s place each held-back cell's share of the blend that imputation weighs the
    tiles with."""
    n, c, t, h, w = windows.values.shape
    (th, tw) = lattice.size if lattice is not None else windows.tile or (h, w)
    window = windows.window
    placed, left_out = _placements(heldout, window, (th, tw), seed, max_windows, lattice)
    if lattice is not None:
        blend = torch.as_tensor(lattice.weight(), dtype=torch.float32)
        cover = torch.zeros(h, w)  # every cell's total weight over the tiles covering it
        rows, cols = lattice.origins(h, w)
        for r in rows:
            for q in cols:
                cover[r : r + th, _columns(q, tw, w)] += blend
    xs, ms, inputs = windows.read(placed, size=(th, tw))
    hs = torch.as_tensor(np.stack([heldout[i, :, s : s + window, r : r + th][..., _columns(q, tw, w)]
                                   for i, s, r, q in placed]))
    union = None
    if still:
        ms, hs, union = _held_still(ms | hs, hs)
        if windows.nearby_span:
            inputs["nearby"] = _nearby_hidden(windows, placed, union, (th, tw))
    if lattice is not None:
        hs = torch.stack([held * blend / cover[r : r + th, _columns(q, tw, w)]
                          for held, (_, _, r, q) in zip(hs, placed)])
    return (xs, ms, hs, inputs), placed, left_out, union


def _nearby_hidden(windows: ArrayWindows, placed, hidden: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The nearby observations of windows of ``size`` cells at ``placed`` ``(sample, start, row, col)`` without the
    cells ``hidden`` ``(B, C, 1, h, w)`` at any step."""
    (th, tw), window, span = size, windows.window, windows.nearby_span
    stretches = context_spans(placed, window, windows.values.shape[2], span, apart=False)
    width = windows.values.shape[-1]
    return torch.as_tensor(np.stack([
        nearby_observations(windows.values[i, :, a:z, r : r + th][..., _columns(q, tw, width)].numpy(),
                            windows.observed[i, :, a:z, r : r + th][..., _columns(q, tw, width)].numpy()
                            & ~cells.numpy(), s - a, window, span, flow=windows.flow)
        for (i, s, r, q), cells, (a, z) in zip(placed, hidden, stretches)]))


def _overlapping_runs(windows: ArrayWindows, validation, placed, hidden: torch.Tensor | None = None):
    """``validation`` (windows at ``placed``) as imputation fills it, for scoring the first guesses: ``(x,
    observed, held back, inputs, runs)``, where ``x``, ``observed`` and ``inputs`` are those of every window at
    stride 1 that overlaps one of ``placed`` (at its tile), ``held back`` is ``validation``'s, and ``runs`` the
    validation window of each and its start less that window's (:func:`~xrimpute.nets.prior.choose_guess`):
    imputation fills every cell as the mean over the windows holding it, which a guess that differs from window to
    window gains from (``benchmarks/RESULTS.md``). ``hidden``: cells hidden at every step of each validation window's
    overlapping ones too (gaps that stay put)."""
    window, last = windows.window, windows.values.shape[2] - windows.window
    size = tuple(validation[0].shape[-2:])
    jobs, runs = [], []
    for j, (i, s, r, q) in enumerate(placed):
        for start in range(max(0, s - window + 1), min(last, s + window - 1) + 1):
            jobs.append((i, start, r, q))
            runs.append((j, start - s))
    xs, ms, inputs = windows.read(jobs, size=size)
    owner = torch.as_tensor(runs)
    if hidden is not None:
        hidden = hidden[owner[:, 0]]
        ms &= ~hidden
        if windows.nearby_span:
            inputs["nearby"] = _nearby_hidden(windows, jobs, hidden, size)
    return xs, ms, validation[2], inputs, (owner[:, 0], owner[:, 1])


def _withheld_where_still(spec: masks.MaskSpec, observed: torch.Tensor, reserved, shape: tuple[int, int, int],
                          tile: tuple[int, int] | None, fraction: float, seed: int) -> np.ndarray:
    """``(N, H, W)``: where the gaps stay put, the cells an archive holds back in its ``reserved`` windows (observed
    as ``observed``, ``(B, C, T, h, w)``), drawn with the structure of ``spec`` (the parts of a fit's spec that stay
    put, :func:`xrimpute.masks.lasting`) once per series (the series of ``shape`` ``(N, H, W)``) and withheld from
    training at every step of it, as the gaps of blocks that never move are: held back only in the reserved
    windows, they would be trained on at the steps round them and filled from memory (``benchmarks/RESULTS.md``);
    an archive's runs of observation are unknown without a pass, so the series is the run. Only cells inside a
    reserved window are withheld; a draw that holds back no observed cell of one is drawn again, up to
    :data:`HOLDOUT_DRAWS` times."""
    n, h, w = shape
    (th, tw) = tile or (h, w)
    scored = np.zeros(shape, bool)  # the reserved windows' cells: withheld anywhere else, a cell would score nothing
    for i, _, r, c in reserved:
        scored[i, r : r + th, c : c + tw] = True
    generator = torch.Generator().manual_seed(seed)
    for _ in range(HOLDOUT_DRAWS):
        held = ~masks.holdout_keep(spec, (n, 1, 1, h, w), fraction, generator)[:, 0, 0].numpy() & scored
        cuts = torch.as_tensor(np.stack([held[i, r : r + th, c : c + tw] for i, _, r, c in reserved]))
        if (observed & cuts[:, None, None]).any():
            break
    return held


def withheld_stations(observed: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """``(H, W)``: a share ``fraction`` of the station cells of ``observed`` ``(N, C, T, H, W)``, drawn at random.

    Station data is validated on whole stations left out of training, so that
    the skill reported is the skill between stations (at least one station
    held out, at least one kept; none with fewer than two stations).
    """
    cells = np.flatnonzero(np.asarray(observed).any(axis=(0, 1, 2)))
    count = min(max(1, round(fraction * cells.size)), cells.size - 1) if fraction > 0 and cells.size >= 2 else 0
    out = np.zeros(observed.shape[-2] * observed.shape[-1], dtype=bool)
    out[np.random.default_rng(seed).permutation(cells)[:count]] = True
    return out.reshape(observed.shape[-2:])


def _lattice_windows(tile: tuple[int, int], lattice: Tiling) -> int:
    """Windows of imputation's tiles that the first guess is chosen on: as many cells as the validation windows."""
    return max(1, VALIDATION_WINDOWS * int(np.prod(tile)) // int(np.prod(lattice.size)))


def _scored_placements(heldout, window: int, tile: tuple[int, int] | None, lattice: Tiling | None, seed):
    """Where the windows a fit in memory scores its choices on lie (:func:`training_windows`): its validation
    windows, and with ``lattice`` those of imputation's tiles."""
    placed = _placements(heldout, window, tile or heldout.shape[-2:], seed)[0]
    if lattice is not None:
        placed += _placements(heldout, window, lattice.size, seed, _lattice_windows(tile, lattice), lattice)[0]
    return placed


def training_windows(values, spec: masks.MaskSpec, mean: np.ndarray, std: np.ndarray, *, window: int,
                     tile: tuple[int, int] | None = None, static: np.ndarray | None = None,
                     val_fraction: float = 0.05, seed: int = 0, pin_memory: bool = False,
                     valid: np.ndarray | None = None, history: bool = False, nearby_span: int = 0,
                     flow: bool = False, progress: bool = False, training_totals: np.ndarray | None = None,
                     overwrite: bool = False, reserved_stretches: list[Stretch] | None = None, still: bool = False,
                     lattice: Tiling | None = None):
    """The sampler of ``values`` ``(N, C, T, H, W)`` in data units (NaN = unobserved), with validation cells held back.

    A numpy array gives :class:`ArrayWindows`: ``val_fraction`` of the observed
    cells, drawn with the spec's structure, leave training, and up to 16
    windows holding some of them are scored. A dask array gives
    :class:`ChunkedWindows`: a few windows spread over the archive
    (:func:`reserved_windows`) never enter training, and the held-back cells
    are drawn inside them. Either way ``validation`` is ``(x, observed, held
    back, inputs)`` or None, ``validation_jobs`` their ``(sample, start, row,
    col)``, and the caller closes the sampler when done. With ``history`` the
    inputs carry each window's history: sums and counts of the training
    observations outside it (in an archive, one pass over it first); the
    held-back cells, and in an archive the reserved windows, are not among them;
    likewise with ``nearby_span`` for each cell's nearest observations within
    that many steps either side of the window (``flow``: along the flow). ``progress``:
    a bar over an archive's pass for the history. ``training_totals``: the
    history's totals over the training observations when known already (for
    departures from a cycle, :func:`xrimpute.cycle.departures_totals` of
    another sampler's), in place of that pass. ``overwrite``: a numpy ``values``
    becomes the windows' normalised copy itself (an array made for them, such as
    the departures from a cycle, that the caller no longer needs): one cube less.
    ``reserved_stretches``: in an archive, the windows kept for validation with the steps around them
    (:class:`Stretch`, those of another sampler of the same archive made anew, e.g. the departures from a cycle of
    its ``reserved_stretches``), in place of reading them again. ``still``: the gaps stay put (blocks that never
    move), so a cell held back at any step of a validation window is held back at every step of it and hidden at
    the steps around it (for its imputation, the classical fillers and its nearby observations): held-back cells
    drawn anew every step sit between steps that observe them, which the guesses leaning on nearby steps fill far
    better than the gaps (``benchmarks/RESULTS.md``); in memory the held-back cells are drawn for runs of as many
    steps as a cell stays observed (:func:`xrimpute.masks.observed_run`: a sample's length for blocks that never
    move), so that training never meets them at the steps around either, as it never meets the gaps; in an archive
    they are drawn once per series and withheld from training at every step of it (:func:`_withheld_where_still`).
    In memory, but for stations, ``guess_validation`` holds the held-back cells as imputation fills them, for
    choosing the first guess (:func:`_overlapping_runs`): with ``lattice``, the tiling imputation cuts the grid
    into (for windows of tiles), on its tiles rather than at random, as many cells as ``validation``'s.
    In memory, where the spec hides clouds (:func:`xrimpute.masks.clouded`), :data:`CLOUDS_SHARE` as many cells
    again are held back as the clouds of other runs of the window's and :data:`CLOUDS_REACH` more steps
    (:func:`xrimpute.masks.other_clouds_keep`) for the score a fit reports (``reported_validation``,
    :func:`reported`): choosing the first guess on them, where a held-back step keeps the square of its coverage,
    chose guesses that suit sparser data and filled some clouds worse, so the choices stay on the patches. The runs
    keep clear of the windows those choices are scored on and of the windows overlapping them, which so see what
    they saw without them, and the patches at the steps of the runs go back to training.
    For a station network's spec (:func:`xrimpute.masks.of_stations`, whole missing steps or not) the held-back
    cells are whole stations (:func:`withheld_stations`), in every step, that never enter
    training; in an archive they are drawn from ``valid`` (``(C, H, W)``, the
    cells observed at least once; without it, from the reserved windows, and
    training sees them elsewhere).
    """
    stations = masks.of_stations(spec)
    if not is_dask_collection(values):
        observed = np.isfinite(values)
        honest = None  # the held-back cells a fit reports its score on, where not those it chooses on
        spread = None  # the held-back cells of every window (held_cells), where not all of heldout
        if stations:
            heldout = observed & withheld_stations(observed, val_fraction, seed)
            train_observed = observed & ~heldout
        else:  # one pass each, no cube-sized temporaries: held back where observed and not kept
            # where the gaps stay put, so do the held-back cells, as long as a cell stays observed: a cell trained on
            # at the steps round those it was held back at is filled from memory (benchmarks/RESULTS.md)
            generator = torch.Generator().manual_seed(seed)
            span = min(observed.shape[2], max(1, round(masks.observed_run(observed)))) if still else 1
            for _ in range(HOLDOUT_DRAWS):  # so few units of a sample's length that a draw may hold back none
                keep = masks.holdout_keep(spec, observed.shape, val_fraction, generator, span).numpy()
                heldout = observed > keep
                if heldout.any():
                    break
            if masks.clouded(spec) and not still:
                # the clouds' runs of steps keep clear of the windows the choices are scored on (there a held-back
                # step keeps the square of its coverage, and the choices made on such windows suited sparser data
                # than the gaps'), and the patches among those steps go back to training
                busy = np.zeros(observed.shape[:1] + observed.shape[2:3], bool)
                for i, s, *_ in _scored_placements(heldout, window, tile, lattice, seed):
                    busy[i, max(0, s - window + 1) : s + 2 * window - 1] = True  # with the windows overlapping it
                others = masks.other_clouds_keep(observed.any(1, keepdims=True) & keep, CLOUDS_SHARE * val_fraction,
                                                 generator, window + CLOUDS_REACH, allowed=~busy, shortest=window)
                if others is not None:  # the windows keep their places: the patches given back lie apart
                    others = others.numpy()
                    lost = ~others.all(axis=(1, 3, 4))[:, None, :, None, None]
                    honest, spread, keep = observed & ~others, heldout & ~lost, (keep | lost) & others
            train_observed = observed & keep
            del keep  # before the normalised copy
        totals = training_totals if training_totals is not None or not history else \
            series_totals(np.where(train_observed, values, np.nan), mean, std)
        x = values if overwrite else values.copy()  # normalised in place: one copy of the cube at most
        x -= mean[None, :, None, None, None]
        x /= std[None, :, None, None, None]
        np.copyto(x, 0, where=~observed)  # not nan_to_num: its masks of NaN and of each infinity are three cubes
        windows = ArrayWindows(x, train_observed, window, tile=tile, static=static, totals=totals,
                               nearby_span=nearby_span, flow=flow, hide=spec)
        if heldout.any():
            windows.validation, windows.validation_jobs, left_out, hidden = _validation_windows(windows, heldout, seed,
                                                                                                still)
            if hidden is not None:
                windows.validation_hidden, windows.validation_hidden_span = hidden.numpy(), nearby_span
            if not stations:  # between stations the guess is the whole fill, frame by frame
                scored, placed = windows.validation, windows.validation_jobs
                if lattice is not None:  # imputation's tiles, as many cells as the validation windows
                    scored, placed, _, hidden = _validation_windows(windows, heldout, seed, still,
                                                                    _lattice_windows(tile, lattice), lattice)
                windows.guess_validation = _overlapping_runs(windows, scored, placed, hidden)
            # those scored may be fewer than the windows holding held-back cells; gaps that stay put lean on no
            # series-wide baseline with a margin
            if left_out and not still:
                windows.held_cells = np.packbits(heldout if spread is None else spread, axis=None)
                windows.validation_seed = seed
            if honest is not None and honest.any():
                windows.reported_validation = _validation_windows(windows, honest, seed)[:2]
        return windows
    n, _, t, h, w = values.shape
    reserved = reserved_windows(n, t, window, val_fraction, (h, w), tile, seed)
    withheld = np.broadcast_to(withheld_stations(valid[None, :, None], val_fraction, seed), (n, h, w)) \
        if stations and valid is not None and reserved else None
    windows = ChunkedWindows(values, window, mean, std, tile=tile, static=static, reserved=reserved, seed=seed,
                             pin_memory=pin_memory, withheld=withheld, nearby_span=nearby_span, flow=flow, hide=spec)
    try:
        if reserved:
            # with the steps the held-back cells are imputed from, as imputation fills them (ImputedHeldBack)
            windows.reserved_stretches = reserved_stretches or windows.stretches(reserved, window - 1 + nearby_span)
            xs, ms, inputs = windows.read(reserved, windows.reserved_stretches)
            lasting = masks.lasting(spec) if still and not stations else None
            if lasting is not None:  # before the history's pass, which leaves them out
                withheld = windows.withheld = _withheld_where_still(lasting, ms, reserved, (n, h, w), tile,
                                                                    val_fraction, seed)
        if training_totals is not None or not history:
            totals = training_totals
        else:  # one pass over the archive
            [totals] = compute_pass(series_totals(values, mean, std, withheld), progress=progress,
                                    desc="each cell's history: reading the archive")
            totals = np.asarray(totals)
    except BaseException:
        windows.close()
        raise
    windows.totals = totals
    if reserved:
        (th, tw) = tile or (h, w)
        if withheld is not None:  # the windows' cuts of the cells withheld from training
            keep = torch.as_tensor(np.stack([~withheld[i, r : r + th, c : c + tw] for i, _, r, c in reserved]))
            keep = keep[:, None, None]
        elif stations:
            keep = ~torch.as_tensor(withheld_stations(ms.numpy(), val_fraction, seed))
        else:
            keep = masks.holdout_keep(spec, tuple(ms.shape), val_fraction, torch.Generator().manual_seed(seed))
        if totals is not None and training_totals is None:
            # training never sees the reserved windows, so their observations leave the totals (withheld cells are
            # in none)
            counted = ms if withheld is None else ms & keep
            for (i, _, r, c), own in zip(reserved, window_sums(xs, counted).numpy()):
                totals[i, :, r : r + th, c : c + tw] -= own
        if totals is not None:
            inputs["history"] = torch.as_tensor(np.stack([totals[i, :, r : r + th, c : c + tw]
                                                          for i, _, r, c in reserved]), dtype=torch.float32)
        seen, held = ms & keep, ms & ~keep
        if still:
            seen, held, union = _held_still(ms, held)
            windows.validation_hidden = union.numpy()
            if "nearby" in inputs:  # each cell's nearby observations, the held-back cells hidden at every step
                hidden = [Stretch(st.sample, st.start, st.row, st.col,
                                  np.where(np.broadcast_to(cut, st.values.shape), np.float32(np.nan), st.values))
                          for st, cut in zip(windows.reserved_stretches, windows.validation_hidden)]
                inputs["nearby"] = windows.read(reserved, hidden)[2]["nearby"]
        if held.any():  # a few static blocks may hold back none (a fit then has no self-assessment, as in memory)
            windows.validation = (xs, seen, held, inputs)
            windows.validation_jobs = reserved
    return windows

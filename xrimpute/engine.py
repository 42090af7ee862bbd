"""The array-level model: fit, fill and sample on ``(N, C, T, H, W)`` arrays (NaN = unobserved). No xarray here.

:class:`Engine` holds a trained denoiser with its mask spec, normalisation
and :class:`ModelConfig`; :class:`ImputeConfig` declares the imputation
options once. :class:`xrimpute.CtxDiffModel` is the xarray face over an
Engine; lazy imputation, :func:`xrimpute.reconstruct` and the learned
baselines call the Engine directly.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from dask import is_dask_collection
from tqdm.auto import tqdm

from . import arguments, masks
from .diffusion import VPSchedule, impute_ensemble
from .errors import ArgumentError, ModelFileError, XrimputeError
from .atomic import atomic_write
from .cycle import NEIGHBOURHOODS, cycle_at, departures_totals, fit_cycle, without_cycle
from .nets import PRESETS, Denoiser
from .nets.prior import (BASELINE_MARGIN, CANDIDATES, FAR_GAPS, MODES_LABEL, NEARBY_SPAN, OWN_CURVE_LABEL,
                         OWN_CURVE_SHARE, FirstGuess, candidate_label, choose_guess, costly, field_covariances,
                         narrow_reach, spatial_modes, station_correlation, widest_reach, wrapping)
from .options import OPTIONS, mixed_precision, or_option, torch_threads
from .payload import read as read_payload
from .samplers import (ArrayWindows, Statistics, StationFolds, Stretch, reported, station_shares, statistics,
                       training_windows)
from .training import History, TrainConfig, resolve_device, seeded, train, with_budget
from .windows import Piece, Tiling, impute_series, sample_series, series_totals

log = logging.getLogger("xrimpute")

FORMAT = "xrimpute-model"
FORMAT_VERSION = 1
FLAGS = {"observed": 0, "imputed": 1, "imputed_without_training_signal": 2, "permanent_mask": 3}
"""Values of the CF flag variable of an imputation (:meth:`Engine.flags`)."""


class ModelMismatch(XrimputeError, ValueError):
    """The data does not fit the model (other variables, grid or window)."""


def _versions() -> dict:
    out = {}
    for name in ("xrimpute", "torch", "xarray", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def position_fields(lat: np.ndarray, lon: np.ndarray, degrees: bool) -> np.ndarray:
    """Static inputs ``(3, H, W)`` telling the network where it is on the grid."""
    if degrees:
        la = np.deg2rad(lat)[:, None] * np.ones((1, lon.size))
        lo = np.deg2rad(lon)[None, :] * np.ones((lat.size, 1))
        return np.stack([np.sin(la), np.sin(lo), np.cos(lo)]).astype(np.float32)
    y = np.linspace(-1, 1, lat.size)[:, None] * np.ones((1, lon.size))
    x = np.linspace(-1, 1, lon.size)[None, :] * np.ones((lat.size, 1))
    return np.stack([y, x, np.zeros_like(x)]).astype(np.float32)


def wraps_round(lon: np.ndarray, degrees: bool, period: float | None = None) -> bool:
    """Whether the grid's columns wrap round: longitudes in degrees that go once round the globe, or columns that go
    once round the ``period`` their coordinate declares (a periodic model domain, as the generated cubes of
    :mod:`xrimpute.datasets` declare theirs)."""
    if lon.size < 3:
        return False
    step = np.abs(np.diff(lon)).mean()

    def spans(length):
        return abs(lon.size * step - length) < 0.5 * step

    return bool((degrees and spans(360.0)) or (period is not None and spans(float(period))))


TILE = (128, 128)
"""The training tile of a grid with more than twice its cells, unless a fit names one (``tile="auto"``)."""
CPU_TILE = (32, 2048)
"""On the CPU: rows and cells of the training tile of a grid with more cells (``tile="auto"``)."""
BATCH = 16
"""Windows a training step holds unless a fit names how many (``batch_size=None``; :func:`training_batch`)."""


def training_tile(tile, rows: int, cols: int, device: str | torch.device = "cpu",
                  wraps: tuple[bool, bool] = (False, False), init: Engine | None = None) -> tuple[int, int] | None:
    """The tile a fit on ``device`` trains on: ``tile`` itself, or for ``"auto"`` the one ``init`` trained on (its
    network learned the edges, or the seams, of those windows), or for a new network:

    * on the CPU, tiles of at most :data:`CPU_TILE`'s rows and cells on a ``rows`` x ``cols`` grid of more cells:
      at a budget of minutes a step on a tile of a few thousand cells is several times cheaper, and the many more
      steps fill better (``benchmarks/RESULTS.md``); but the whole of a grid that ``wraps`` round both axes (a
      doubly periodic domain) of up to twice those cells, with half the windows a step (:func:`training_batch`):
      a tile of fewer rows ends where the field runs on across the seam, and a network trained on such tiles can
      neither wrap its rows at imputation nor learn them; trained whole, it filled the advected pixels four to six
      times better (``benchmarks/RESULTS.md``);
    * on a GPU, none on a grid of up to twice :data:`TILE`'s cells and :data:`TILE` beyond, so a step's cost stays
      that of a few hundred thousand cells on a global grid.
    """
    if not (isinstance(tile, str) and tile == "auto"):
        return tile
    if init is not None:
        return None if init.config.tile is None else tuple(init.config.tile)
    if resolve_device(device).type == "cpu":
        if rows * cols <= CPU_TILE[1] * (2 if all(wraps) else 1):
            return None
        side = min(rows, CPU_TILE[0])
        return side, min(cols, CPU_TILE[1] // side)
    if rows * cols <= 2 * TILE[0] * TILE[1]:
        return None
    return min(rows, TILE[0]), min(cols, TILE[1])


def training_batch(batch_size: int | None, tile: tuple[int, int] | None, rows: int, cols: int,
                   device: str | torch.device = "cpu") -> int:
    """Windows per training step: ``batch_size`` itself, or for None :data:`BATCH`, but where the CPU trains a
    ``rows`` x ``cols`` grid of more cells than :data:`CPU_TILE` holds whole (``tile`` None: by default a doubly
    periodic one, :func:`training_tile`), as many whole grids as hold :data:`BATCH` tiles' cells, at least one: a
    step then costs about what a tile's does, and a budget of minutes keeps its many steps."""
    if batch_size is not None:
        return batch_size
    if tile is None and resolve_device(device).type == "cpu" and rows * cols > CPU_TILE[1]:
        return max(1, BATCH * CPU_TILE[1] // (rows * cols))
    return BATCH


def imputation_tiling(grid: tuple[int, int], tile, net_wraps: bool, wraps: bool, overlap: int | None = None) -> Tiling:
    """Tiles of imputation of a ``grid`` by a network trained on ``tile`` (or None: the whole grid): the training
    tile, neighbours sharing ``overlap`` cells (default a quarter of the tile), wrapping round a global grid
    (``wraps``); one tile of the whole grid for an untiled model, and for a tiled one on a grid of at most twice
    :data:`TILE`'s cells (tiled for the steps, as by :data:`CPU_TILE`, not for memory) whose network wraps as the
    grid does (``net_wraps``): the network is convolutional, its position inputs cover the grid, and a gap that a
    tile's edge would cut is filled from every side."""
    grid, tile = tuple(grid), tuple(tile or grid)
    small = grid[0] * grid[1] <= 2 * TILE[0] * TILE[1]
    if tile == grid or (small and net_wraps == wraps):
        return Tiling(grid)
    shared = [size // 4 if overlap is None else min(overlap, size - 1) for size in tile]
    return Tiling(tile, tuple(shared), periodic=wraps)


WINDOWS = (5, 9, 13, 17)
"""The window lengths (time steps) a fit chooses among unless it names one (:func:`choose_window`), shortest first."""
REACH_MARGIN = 0.1
"""A longer window is chosen only where it brings more than this share of the gap cells within the guess's reach."""


def choose_window(observed: np.ndarray, steps: int, values: np.ndarray | None = None) -> tuple[int, dict[int, float]]:
    """The window for a series of ``steps`` observed as ``observed`` ``(N, C, T, H, W)``, and the share of gap cells
    each length of :data:`WINDOWS` brings within reach of an observation (:func:`xrimpute.masks.gaps_in_reach`, over
    the first guess's widest level in space).

    The shortest length whose share is within :data:`REACH_MARGIN` of the longest's: a window where most gaps already
    see an observation gains little from more steps (on pixels it did worse), while swaths that leave frames empty
    for hours need the reach (the measurements are in ``benchmarks/RESULTS.md``). Given ``values`` (the whole series,
    ``(N, C, T, H, W)``, NaN where unobserved), :data:`LONG_WINDOW` where the gaps have little context near them and
    the field persists (:func:`long_window_pays`).
    """
    lengths = sorted({min(length, steps) for length in WINDOWS})
    cells = widest_reach()
    reached = {length: masks.gaps_in_reach(observed, length, cells) for length in lengths}
    window = _within_reach(reached)
    if values is not None and window < LONG_WINDOW <= steps and long_window_pays(observed, values):
        window = LONG_WINDOW
    return window, reached


def _within_reach(reached: dict[int, float]) -> int:
    """The shortest window length of ``reached`` (length: share of the gaps in reach) within :data:`REACH_MARGIN` of
    the best share."""
    best = max(reached.values())
    return next(length for length in sorted(reached) if reached[length] >= best - REACH_MARGIN)


LONG_WINDOW = 13
"""The window of a fit whose gaps have little context near them in a field that persists (:func:`choose_window`)."""
SPARSE_CONTEXT = 300.0
"""Observations within the narrower levels' reach of a gap cell, in the shortest window (:data:`WINDOWS`), below
which a fit looks at how the field persists (:func:`long_window_pays`). On the Mediterranean's daily sea level
(``benchmarks/RESULTS.md``; 300 s fits, windows of 13 steps against 5) pixels at 1 % (18 observations near a gap)
and 10 % (179) and clouds leaving a fifth of it clear (267) filled 17-38 % better; clouds leaving 30 % clear (369)
1.5 times worse, half (576) 2.0 times, moving blocks (819-827) 2.4 to 3.9 times; pixels at 20 % (349) and 50 % (873)
12-14 % and 4 % better."""
PERSISTING_FIELD = 0.7
"""The share of a cell's departure that must persist half :data:`LONG_WINDOW` on (:func:`field_persistence`) for a
fit to take that window: the Mediterranean's daily sea level reads 0.78-0.83, the ERA5 sample's hourly temperature
0.51-0.63, whose 1 % pixels 13-step windows filled 7-11 % worse (0.0683 -> 0.0756, 0.0639 -> 0.0687), their steps
halved (``benchmarks/RESULTS.md``)."""
STEP_SHARE = 0.5
"""The most of a cell's change over half :data:`LONG_WINDOW` that one step may make (:func:`one_step_share`) for a
fit to take that window: the Mediterranean's daily sea level reads 0.04; 240 years of annual means 0.69-0.82, whose
persistence (0.82-0.86) is its warming trend's, and whose 10 % pixels 13-step windows filled 16 % worse."""
FIELD_PERSISTENCE_PAIRS = 30
"""Pairs of a cell's observations at a lag below which :func:`field_persistence` and :func:`one_step_share` say
nothing."""


def window_series(values, spec: masks.MaskSpec) -> np.ndarray | None:
    """``values`` where :func:`choose_window` may read them whole to see how the field persists: a series in memory,
    not a station network's (its fill is its guess, frame by frame); None for an archive, whose series are not read
    whole before the window is chosen."""
    return None if is_dask_collection(values) or masks.of_stations(spec) else values


def gaps_beyond_narrow_reach(observed: np.ndarray) -> bool:
    """Whether more than :data:`~xrimpute.nets.prior.FAR_GAPS` of the gaps of ``observed`` lie beyond the narrower
    levels' reach (:func:`~xrimpute.nets.prior.narrow_reach`), where the held-back cells, observed among
    observations, cannot judge the wide level: the chosen guess then gives way to its wide twin
    (``choose_guess(far=True)``)."""
    return masks.gaps_in_reach(observed, *narrow_reach()) < 1 - FAR_GAPS


def long_window_pays(observed: np.ndarray, values: np.ndarray) -> bool:
    """Whether the gaps of ``observed`` have fewer than :data:`SPARSE_CONTEXT` observations near them (a sample of
    steps will do) in the shortest window (:func:`xrimpute.masks.context_near_gaps` over the narrower levels' reach),
    at least :data:`PERSISTING_FIELD` of a cell's departure in ``values`` lasts half :data:`LONG_WINDOW` on
    (:func:`field_persistence`), and one step makes at most :data:`STEP_SHARE` of that lag's change
    (:func:`one_step_share`: a field that evolves, not noise about a trend): there the steps beyond a short window
    hold what the gaps lack."""
    if masks.context_near_gaps(observed, WINDOWS[0], narrow_reach()[1]) >= SPARSE_CONTEXT:
        return False
    lag = (LONG_WINDOW - 1) // 2
    lasting = field_persistence(values, lag)
    if lasting is None or lasting < PERSISTING_FIELD:
        return False
    share = one_step_share(values, lag)
    return share is not None and share <= STEP_SHARE


def field_persistence(values: np.ndarray, lag: int, far_lags: int = 16) -> float | None:
    """``1 - D(lag) / D(far)``, the least over the variables of ``values`` ``(N, C, T, H, W)`` (NaN where unobserved):
    ``D`` the mean squared difference of a cell's observations ``lag`` steps apart, ``D(far)`` that at ``far_lags``
    longer lags spread up to the series' length, pooled over cells and series (a variogram, which needs no cell's
    mean: sparse cells have too few observations for one). None where a variable has fewer than
    :data:`FIELD_PERSISTENCE_PAIRS` pairs at either, or the series is too short."""
    steps = values.shape[2]
    if steps <= lag + 1:
        return None
    far = tuple(np.unique(np.linspace(lag + 1, steps - 1, far_lags).astype(np.int64)))
    shares = [_variogram_ratio(values, channel, (lag,), far) for channel in range(values.shape[1])]
    if any(share is None for share in shares):
        return None
    return min(1.0 - share for share in shares)


def one_step_share(values: np.ndarray, lag: int) -> float | None:
    """``D(1) / D(lag)``, the most over the variables of ``values`` (as :func:`field_persistence`): the share of a
    cell's change over ``lag`` steps that one step already makes. Small where the field evolves from step to step
    (0.04 for the Mediterranean's daily sea level); near 1 where each step is noise about a slow trend (0.69-0.82
    for 240 years of annual means), whose persistence at ``lag`` is the trend's. None as :func:`field_persistence`."""
    if values.shape[2] <= lag:
        return None
    shares = [_variogram_ratio(values, channel, (1,), (lag,)) for channel in range(values.shape[1])]
    return None if any(share is None for share in shares) else max(shares)


def _variogram_ratio(values: np.ndarray, channel: int, lags: tuple, against: tuple) -> float | None:
    """The mean squared difference of a cell's observations of ``channel`` at ``lags`` steps apart over that at
    ``against``, pooled over cells and series; None with fewer than :data:`FIELD_PERSISTENCE_PAIRS` pairs either
    way or no difference at ``against``."""
    steps = values.shape[2]
    series = np.moveaxis(values[:, channel], 1, -1).reshape(-1, steps)  # (cells, T), each cell's series
    cell, step = np.nonzero(np.isfinite(series))
    key, seen = cell * steps + step, series[cell, step].astype(np.float64)  # keys in increasing order

    def differences(offsets):  # each observation's against the same cell's ``offset`` steps on, where observed
        found = []
        for offset in offsets:
            at = np.minimum(np.searchsorted(key, key + offset), len(key) - 1)
            paired = (key[at] == key + offset) & (step + offset < steps)
            found.append(seen[at[paired]] - seen[paired])
        return np.concatenate(found)

    near, away = differences(lags), differences(against)
    if min(near.size, away.size) < FIELD_PERSISTENCE_PAIRS or not (away**2).mean() > 0:
        return None
    return float((near**2).mean() / (away**2).mean())


def needs_history(observed: np.ndarray, steps: int) -> bool:
    """Whether a fit on a series observed as ``observed`` leans on each cell's history outside the window: where
    :func:`choose_window` needs more than the shortest window to bring the gaps within reach.

    Such observations (swaths that leave frames empty for hours) leave many gaps far in time from any window's
    context; there a baseline from the rest of the series took the gap error down by 15-22 % at equal steps, while
    on pixels, stations and moving blocks, which a short window reaches, it did harm (``benchmarks/RESULTS.md``).
    """
    return choose_window(observed, steps)[0] > WINDOWS[0]


NEARBY_REACH = 0.5
"""Share of the gaps that must have an observation of their own cell within half the nearby span for a fit to
consider the nearby steps (:func:`offers_nearby`)."""


def offers_nearby(observed: np.ndarray) -> bool:
    """Whether a fit on a series observed as ``observed`` scores first guesses from each cell's nearby steps (and
    may choose one): where at least :data:`NEARBY_REACH` of the gaps have an observation of their own cell within
    half of :data:`~xrimpute.nets.prior.NEARBY_SPAN` steps (:func:`xrimpute.masks.gaps_near_in_time`).

    The held-back cells a fit chooses on are observed cells, which nearly always have such observations; gaps
    that have none (blocks that never move) would meet a network trained to trust a guess they do not get: on
    the static Navier-Stokes blocks that took the gap error from 0.81 to 1.03 (``benchmarks/RESULTS.md``).
    """
    return masks.gaps_near_in_time(observed, NEARBY_SPAN // 2) >= NEARBY_REACH


NEVER_OBSERVED = 0.1
"""Share of the cells imputation fills that may never have been observed for a fit to try each cell's cycle
(:func:`offers_cycle`)."""


def offers_cycle(valid: np.ndarray, permanent: np.ndarray) -> bool:
    """Whether a fit may try the first guess on the departures from each cell's cycle (:mod:`xrimpute.cycle`):
    where at most :data:`NEVER_OBSERVED` of the cells imputation fills (``valid`` or not ``permanent``, ``(C, H,
    W)``) were never observed. A cell never observed takes its neighbours' cycle, and the held-back cells, observed
    at other steps, have their own: between the ERA5 sample's 40 stations they chose the cycle, which then
    filled the cells between them 5 % worse than the thin-plate spline alone (``benchmarks/RESULTS.md``)."""
    filled = np.asarray(valid, bool) | ~np.asarray(permanent, bool)
    return bool((filled & ~np.asarray(valid, bool)).sum() <= NEVER_OBSERVED * max(int(filled.sum()), 1))


def choose_preset(device: torch.device, gaps_near: bool, init: Engine | None = None,
                  stay_put: bool = True) -> str:
    """The network of ``preset="auto"``: ``init``'s own when given; ``"base"`` on a GPU; on the CPU ``"narrow"``,
    or ``"lite"`` (twice as wide, 55-65 % of the steps in the same time) where the gaps lie far in time from
    observations of their own cell (``gaps_near``, :func:`offers_nearby` of the observations, false) because the
    observations stay put (``stay_put``, :func:`offers_flow`): blocks that never move. There the network, not the
    first guess, fills the gaps from the field round them, and at a budget of minutes the width filled them 2 %
    better on average side by side; elsewhere the steps count for more: sparse pixels drawn anew every step (the
    ERA5 sample at 1 %) lie far in time from their cells' observations too, and there the width filled 20 % worse
    (``benchmarks/RESULTS.md``)."""
    if init is not None:
        return init.denoiser.config["preset"]
    if device.type == "cuda":
        return "base"
    return "narrow" if gaps_near or not stay_put else "lite"


PERSISTENCE = 0.5
"""Share of the cells observed at a step that must be observed at the next for a fit to consider the nearby steps
along the flow (:func:`offers_flow`)."""

LEAST_TRAINING_SHARE = 0.25
"""Share of a time budget that training keeps however long the rest of the fit takes (:func:`_training_budget`)."""

CONTEXT_MARGIN = 0.8
"""Share of the observed context's held-back error that the sampled contexts must score below to be a model's
default (:func:`choose_context`): they cost ``K`` passes a window to its one. Chosen by 0.4 to 22 % on the held-back
cells of seven fits, they filled the gaps 0.7 to 5 % worse than the observed context on five (the ERA5 1 % pixels,
the Mediterranean's moving blocks, the SST anomalies' 10 % pixels) and 3.5 to 3.8 % better on two (the annual
cube's 1 % pixels), taking 4.5 to 6 times as long; chosen by 2 to 6 times (the advected pixels), they filled 3 to 8
times better (``benchmarks/RESULTS.md``)."""


def offers_flow(observed: np.ndarray) -> bool:
    """Whether a fit on a series observed as ``observed`` scores first guesses from the nearby steps along the flow
    (:func:`xrimpute.windows.along_flow`), where it does not consider them in place (:func:`offers_nearby`, asked
    first): where the observations stay put (:func:`xrimpute.masks.observations_persist` at least
    :data:`PERSISTENCE`), as blocks that never move do, so that the gaps do too and the flow may carry observations
    into them. Sparse pixels drawn anew every step (ERA5 at 1 %) are left as they were: cells held back in a whole
    window could not stand for their gaps."""
    return masks.observations_persist(observed) >= PERSISTENCE


@dataclass
class ModelConfig:
    """What a model is apart from its weights and normalisation; saved as JSON (the ``info`` of a model file).

    The grid is the latitude / longitude (or row / column) coordinates the
    model was trained on; ``channels``, ``variables``, ``channel_of`` and
    ``axes`` say how a cube maps to channels; :meth:`Engine.fit` fills the
    facts of training (``train_rate``, ``statistics_chunks``, ``train``,
    ``validation``). ``extra`` keeps other JSON-able facts (e.g. ``em`` after
    EM rounds), saved at the top level like the rest. ``positions``: whether
    the network sees each cell's position as static inputs (files older than
    the option: True). ``periodic``: whether the columns wrap round (a global
    grid, or a periodic model domain); ``periodic_rows``: whether the rows do
    too (a doubly periodic domain; files older than the option: False), in a
    window that spans them. ``history``: whether the first guess leans on each
    cell's observations outside the window (None: :meth:`Engine.fit` decides,
    :func:`needs_history`; files older than the option: False). ``nearby``:
    whether it starts from each cell's nearest observations either side of the
    window (None: :meth:`Engine.fit` decides on the held-back cells; the
    network's config says how many steps, ``Denoiser.nearby_span``).
    ``correction``: per channel, the share of the network's correction to its
    first guess that imputation keeps, fitted on the held-back cells (None:
    all of it; see :meth:`HeldBack.correction_weights`). ``cycle``: the
    regular cycle (``"daily"``, ``"annual"``) whose departures the model
    fills, each cell's (:mod:`xrimpute.cycle`); to :meth:`Engine.fit`, the
    one it may try (with the steps' ``phase``), kept only where the held-back
    cells fill better; None: none.
    """

    channels: list[str]
    window: int | None  # None: Engine.fit chooses it for the observations (choose_window)
    grid: dict[str, list[float]]
    variables: list[str] = field(default_factory=list)
    channel_of: list[str] = field(default_factory=list)
    axes: dict = field(default_factory=dict)
    degrees: bool = False
    tile: list[int] | None = None
    periodic: bool = False
    periodic_rows: bool = False
    positions: bool | None = True  # None: Engine.fit decides (no position inputs for station data)
    history: bool | None = False  # None: Engine.fit decides (needs_history)
    nearby: bool | None = False  # None: Engine.fit decides (choose_guess on the held-back cells)
    train_rate: float = 1.0
    statistics_chunks: list[int] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    created: str = ""
    train: dict = field(default_factory=dict)
    validation: dict | None = None
    correction: list[float] | None = None  # per channel, the share of the network's correction imputation keeps
    cycle: str | None = None  # the cycle whose departures the model fills (Engine.cycle), or None
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_array(cls, shape: tuple[int, ...], window: int | None = 3,
                  tile: tuple[int, int] | None = None) -> ModelConfig:
        """The configuration of a plain ``(N, C, T, H, W)`` array: channels 0, 1, ...; grid indices; not periodic."""
        _, c, _, h, w = shape
        names = [str(i) for i in range(c)]
        return cls(names, window, dict(lat=list(map(float, range(h))), lon=list(map(float, range(w)))),
                   variables=names, channel_of=names, tile=None if tile is None else list(tile))

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.grid["lat"]), len(self.grid["lon"])

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("validation", "extra")}
        if self.validation:
            out["validation"] = self.validation
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, info: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in info.items() if k in known},
                   extra={k: v for k, v in info.items() if k not in known})


def train_config(**options) -> TrainConfig:
    """The optimisation settings for ``options`` (checked); bfloat16 on a GPU unless ``set_options(dtype="float32")``."""
    arguments.check(**{name: value for name, value in options.items() if name in arguments.RULES})
    return TrainConfig(**{"bf16": OPTIONS["dtype"] == "bfloat16", **options})


def grid_digest(grid: dict) -> str:
    """A short hash of the grid's coordinates: a checkpoint resumes only on the grid it was written for."""
    values = np.concatenate([np.asarray(grid["lat"], np.float64), [np.nan], np.asarray(grid["lon"], np.float64)])
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def check_fit_options(window, tile, val_fraction, device, history=None, nearby=None, preset="auto") -> None:
    """Refuse fit options that cannot work, before any data is read."""
    arguments.check(window=window, tile=tile, val_fraction=val_fraction)
    arguments.check_device(device)
    if preset != "auto" and preset not in PRESETS:
        raise ArgumentError(f"unknown network preset {preset!r}; choose 'auto' (narrow or lite on the CPU, base on "
                            f"a GPU) or one of {sorted(PRESETS)}")
    if history not in (None, True, False):
        raise ArgumentError(f"history must be True, False or None (decide from the observations), not {history!r}")
    if nearby not in (None, True, False):
        raise ArgumentError(f"nearby must be True, False or None (decide on the held-back cells), not {nearby!r}")


@dataclass(frozen=True)
class ImputeConfig:
    """The imputation options, declared once (see :meth:`xrimpute.CtxDiffModel.impute` for their meaning).

    ``device`` and ``progress`` left at None take the package-wide options
    (:func:`xrimpute.set_options`); ``spec`` None is the model's mask spec;
    ``context`` None is the one the model's fit scored best on its held-back
    cells (:attr:`Engine.context`). ``spread`` False says the spread is not
    wanted: with ``"observed"`` contexts, whose estimate is one pass, the other
    ``K - 1`` passes are then skipped, and so are the sampled contexts' passes
    of the first guess alone where it fills cells never observed (the filled
    values are the same).
    """

    K: int = 10
    seed: int = 0
    stride: int = 1
    batch_size: int = 8
    overlap: int | None = None
    fill_never_observed: bool | None = None
    adapt: bool = True
    observed_rate: float | None = None
    spec: masks.MaskSpec | None = None
    context: str | None = None
    spread: bool = True
    device: str | None = None
    progress: bool | None = None

    def __post_init__(self):
        arguments.check(K=self.K, seed=self.seed, stride=self.stride, batch_size=self.batch_size,
                        overlap=self.overlap, observed_rate=self.observed_rate, context=self.context)
        arguments.check_device(self.device)

    def resolved(self) -> ImputeConfig:
        """With ``device`` and ``progress`` taken from the package-wide options where None."""
        return replace(self, device=or_option("device", self.device), progress=or_option("progress", self.progress))


class Engine:
    """A trained context-query diffusion model on arrays ``(N, C, T, H, W)`` in data units (NaN = unobserved).

    Build one with :meth:`fit`; fill gaps with :meth:`fill`, draw members with
    :meth:`sample`, train further with :meth:`continue_training`; keep it with
    :meth:`save` / :meth:`load`.
    """

    def __init__(self, denoiser: Denoiser, spec: masks.MaskSpec, config: ModelConfig, mean: np.ndarray,
                 std: np.ndarray, valid: np.ndarray, history: History, schedule: VPSchedule = VPSchedule(),
                 permanent: np.ndarray | None = None, cycle: np.ndarray | None = None):
        self.denoiser = denoiser.eval()
        self.spec = spec
        self.schedule = schedule
        self.config = config
        self.mean, self.std, self.valid = mean, std, valid  # valid (C, H, W): cells observed at least once
        # permanent (C, H, W): cells left NaN by default; a model file older than the rule has none: every
        # never-observed cell, as it used to be
        self.permanent = ~np.asarray(valid, bool) if permanent is None else np.asarray(permanent, bool)
        self.history = history
        # cycle (2 harmonics, C, H, W): each cell's cycle in normalised units (config.cycle says which), or None
        self.cycle = None if cycle is None else np.asarray(cycle, np.float32)

    def left_nan(self, fill_never_observed: bool | None = None) -> np.ndarray:
        """``(C, H, W)``: cells whose gaps stay NaN. None: the permanent mask (the user's, and the regions beyond
        the observing system's reach, :mod:`xrimpute.masks.reach`); False: also every cell never observed in
        training; True: none."""
        if fill_never_observed is None:
            return self.permanent
        return np.zeros_like(self.permanent) if fill_never_observed else self.permanent | ~self.valid

    def flags(self, observed, fill_never_observed: bool | None = None, box=None):
        """The :data:`FLAGS` of every cell of an imputation of ``observed`` ``(N, C, T, H, W)`` (numpy or dask), int8.

        ``box`` ``((row0, row1), (col0, col1))``: the part of the grid ``observed`` covers (default all of it).

        ``imputed_without_training_signal``: a gap in a cell never observed in training, which no context ever
        queried (zero query coverage): no loss ever reached it, so its value is the network's first guess there
        (:class:`~xrimpute.nets.prior.FirstGuess`, from every observation whichever context imputes), without the
        untrained correction.
        """
        (ya, yb), (xa, xb) = box or ((0, None), (0, None))
        nan = self.left_nan(fill_never_observed)[None, :, None, ya:yb, xa:xb]
        unsignalled = ~self.valid[None, :, None, ya:yb, xa:xb]
        gap = np.where(nan, FLAGS["permanent_mask"],
                       np.where(unsignalled, FLAGS["imputed_without_training_signal"], FLAGS["imputed"]))
        return np.where(observed, FLAGS["observed"], gap).astype(np.int8)

    @property
    def window(self) -> int:
        return self.config.window

    @property
    def context(self) -> str:
        """The contexts of imputation by default: ``"observed"`` (every observation, one pass) or ``"sampled"`` (the
        mean over ``K`` sampled contexts) as the fit chose on its held-back cells (:func:`choose_context`);
        ``"sampled"`` for model files older than the choice."""
        return (self.config.validation or {}).get("context", "sampled")

    @property
    def train_config(self) -> TrainConfig:
        """The optimisation settings of the last training."""
        return TrainConfig(**{k: v for k, v in self.config.train.items() if k in TrainConfig.__dataclass_fields__})

    # -- fitting ---------------------------------------------------------------
    @classmethod
    def fit(cls, values, config: ModelConfig, mask="auto", *, train_config: TrainConfig = TrainConfig(),
            preset: str = "auto", val_fraction: float = 0.05, device="auto", checkpoint=None, progress: bool = True,
            verbose: bool = True, init: Engine | None = None, stats: Statistics | None = None,
            permanent_mask: np.ndarray | None = None, compare=None, phase: np.ndarray | None = None,
            started: float | None = None) -> Engine:
        """Train on ``values`` ``(N, C, T, H, W)``, a numpy or dask array (read piece by piece), NaN = unobserved.

        ``config`` describes the data (channels, grid, window, tile, periodic, periodic_rows);
        the returned engine's config adds the facts of training. ``mask``: as for
        :meth:`xrimpute.CtxDiffModel.fit`. ``train_config`` holds the optimisation
        settings, its seed also seeds the initial weights, the statistics and the
        held-back cells. ``stats`` (default: :func:`xrimpute.samplers.statistics`)
        are the normalisation and coverage. ``init``: an engine to start from.
        ``permanent_mask`` (boolean ``(H, W)`` or ``(C, H, W)``, True = e.g. land):
        cells whose gaps stay NaN, besides the never-observed regions beyond
        the observing system's reach (:func:`xrimpute.masks.unreachable`), which
        then grow out of no cell of the mask.
        ``compare(windows, training_seconds=None)``, when given, runs on the
        sampler (its ``validation_context`` is the series around the held-back
        cells, e.g. to score other fillers on them, as
        :func:`xrimpute.baselines.heldout.scorer` does): under a time budget
        before training, without ``training_seconds``, so that the budget
        spends what it takes; otherwise after training, with training's
        seconds; the dict it returns joins the validation. ``started``: the
        ``time.perf_counter()`` when the fit began (default: now): a
        ``train_config.max_time`` is the whole fit's budget from then, and
        training gets what the rest of the fit leaves of it
        (:func:`_training_budget`). ``phase`` ``(T,)``: where each step lies in
        ``config.cycle`` (fractions of it, :func:`xrimpute.cube.cycle_phase`):
        a fit whose gaps lie near observations of their own cells (with or
        without history) also tries the first guess on the departures from each
        cell's cycle (in memory or from an archive, whole grid or tiles), and keeps
        the cycle where it fills the held-back cells better (:mod:`xrimpute.cycle`).
        """
        started = time.perf_counter() if started is None else started
        check_fit_options(config.window, config.tile, val_fraction, device, config.history, config.nearby, preset)
        seed = train_config.seed
        stats = stats or statistics(values, seed=seed)
        spec = masks.resolve(mask, stats.observed, verbose=verbose)
        if config.window is None:  # chosen for the observations (an init's window is kept)
            config = _with_window(config, stats.observed, values.shape[2], init, verbose,
                                  window_series(values, spec))
        if config.history is None:  # likewise
            history = init.denoiser.uses_history if init is not None else needs_history(stats.observed, values.shape[2])
            config = replace(config, history=history)
            if verbose and history:
                log.info("the first guess leans on each cell's observations outside the window: the gaps lie far in "
                         "time from a short window's observations")
        masks.warn_if_unlearnable(spec, stats.observed, config.window)  # UserWarning if gaps get no query probability
        device = resolve_device(device)
        permanent = masks.unreachable(stats.valid, permanent_mask)
        if permanent_mask is not None:
            permanent = permanent | np.broadcast_to(np.asarray(permanent_mask, bool), permanent.shape)
        untrainable = (init is None and train_config.steps is None and train_config.max_time is None
                       and not is_dask_collection(values) and masks.gaps_only_where_never_observed(values, permanent))
        if untrainable:
            # imputation fills such cells with the first guess alone (no loss ever reached them: Engine._fill), so the
            # default budget could not change this cube's fill; an explicit one still trains, for other data
            train_config = replace(train_config, steps=0)
            if verbose:
                log.info("every gap lies in a cell never observed (complete station series, say), which "
                         "imputation fills with the first guess alone: training could not change "
                         "this fill, so the default time budget is not spent; pass max_time= or steps= to train "
                         "the network for data with gaps in observed cells")
        train_config = with_budget(train_config, device)
        near = offers_nearby(stats.observed)  # the held-back cells stay put where the gaps do (an init's too)
        gaps_near = near if init is None else None  # for the network and its first guess
        stay_put = offers_flow(stats.observed)  # likewise: the observations (and so the gaps) stay put
        if preset == "auto":
            preset = choose_preset(device, gaps_near, init, stay_put=stay_put)
            if verbose and preset == "lite" and init is None:
                log.info("a network twice as wide as the CPU's usual (preset='lite'): the gaps stay put, far in time "
                         "from observations of their own cell, so the network fills them from the field round them")
        mean, std = (stats.mean, stats.std) if init is None else (init.mean, init.std)

        if config.positions is None:  # station data: no position, so that a station learned from its neighbours
            config = replace(config, positions=not masks.of_stations(spec))  # carries over to every cell
        h, w = config.grid_shape
        tile = None if config.tile is None else (min(int(config.tile[0]), h), min(int(config.tile[1]), w))
        static = position_fields(np.asarray(config.grid["lat"], float), np.asarray(config.grid["lon"], float),
                                 config.degrees) if config.positions else np.zeros((0, h, w), np.float32)
        # tiles narrower than the grid are not periodic themselves; imputation wraps them round the globe instead;
        # the rows of a grid that wraps them wrap in the guess of a window that spans them (the whole grid), and in
        # the network where it trains on such windows
        # a new network works on the grid as it is, no cells padded (an init keeps its own way)
        exact_grid = init is None or init.denoiser.config.get("exact_grid", False)
        net = dict(n_channels=len(config.channels), window=config.window, preset=preset,
                   periodic=config.periodic and (tile is None or tile[1] == w), first_guess=True,
                   **({"row_period": h} if config.periodic_rows else {}),
                   **({"network_wraps_rows": True} if config.periodic_rows and (tile is None or tile[0] == h) else {}),
                   **({"history": True} if config.history else {}), **({"exact_grid": True} if exact_grid else {}),
                   **({"nearby": init.denoiser.nearby_span} if init is not None and init.denoiser.nearby_span else {}),
                   **({"flow": True} if init is not None and init.denoiser.flows else {}),
                   **({"curve": True} if init is not None and init.denoiser.config.get("curve") else {}),
                   **({"own_curve": init.denoiser.config["own_curve"]}
                      if init is not None and init.denoiser.config.get("own_curve") else {}))
        if init is not None and {k: v for k, v in init.denoiser.config.items() if k not in ("guess", "modes")} != net:
            raise ModelMismatch(f"init= has the network {init.denoiser.config}, this fit builds {net}; pass the "
                                "same window, preset, periodic and history")
        if init is not None and config.nearby is not None and config.nearby != bool(init.denoiser.nearby_span):
            raise ModelMismatch(f"init= has a first guess {'with' if init.denoiser.nearby_span else 'without'} "
                                f"nearby steps; pass nearby=None (keep the init's) or "
                                f"nearby={bool(init.denoiser.nearby_span)}")
        flow_offered = False
        if init is not None:
            offered, flow_offered = init.denoiser.nearby_span, init.denoiser.flows
        elif config.nearby is None:
            offered = NEARBY_SPAN if gaps_near else 0
            if not offered and not is_dask_collection(values) and stay_put:
                offered, flow_offered = NEARBY_SPAN, True
        else:
            offered = NEARBY_SPAN if config.nearby else 0

        config = replace(config, tile=None if tile is None else list(tile), train_rate=stats.rate,
                         statistics_chunks=list(stats.chunks), versions=_versions(),
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        build = functools.partial(training_windows, spec=spec, mean=mean, std=std, window=config.window, tile=tile,
                                  static=static, val_fraction=val_fraction, seed=seed,
                                  pin_memory=device.type == "cuda", valid=stats.valid, history=bool(config.history),
                                  nearby_span=offered, flow=flow_offered, progress=progress,
                                  still=stay_put and not near,
                                  lattice=None if tile is None or init is not None else imputation_tiling(
                                      (h, w), tile, net["periodic"], config.periodic))
        cycle = None
        windows = plain = build(values)  # the classical fillers of the self-assessment are scored on the values
        if init is not None and init.cycle is not None:  # its network learned the departures from its cycle
            cycle, config = torch.as_tensor(init.cycle), replace(config, cycle=init.config.cycle)
            windows = build(init.departures(values, phase), overwrite=True)  # the same held-back cells
        try:
            # the series-wide baselines the guess may lean on where the gaps' cells are observed near them, as the
            # held-back cells' are (a cell never observed has neither): each cell's cycle (under a history baseline
            # too: the history of the departures), and the series' spatial modes (in memory, on the whole grid,
            # without history)
            offers_modes = (gaps_near and not config.history and isinstance(windows, ArrayWindows)
                            and tile is None)
            modes = spatial_modes(windows.values, windows.observed) if offers_modes else None
            # and where the gaps stay put, far in time from their cells' observations (blocks that never move), the
            # series' own space-time covariance, which carries the field round them into them (in memory, or read
            # from an archive once, a share of it on a long one)
            offers_covariance = (init is None and not gaps_near and stay_put and not config.history
                                 and windows.validation is not None)
            if offers_covariance and verbose and is_dask_collection(values):
                log.info("estimating the series' space-time covariance: one pass over a share of the archive")
            covariances = (field_covariances(*windows.training_series(), periodic=(config.periodic_rows,
                                                                                    config.periodic))
                           if offers_covariance else None)
            wrap = dict(periodic=net["periodic"], row_period=net.get("row_period", 0))  # as the guess wraps
            folds = _station_folds(spec, init, config.nearby, windows.validation)
            # station data in memory on the whole grid: its own correlation over time, fitted anew for each share of
            # stations scored, and the fill between stations (the guess) scored on every station
            whole_stations = bool(folds) and tile is None and isinstance(windows, ArrayWindows)
            correlations = _station_correlations(windows, folds, seed, config.periodic) if whole_stations else None
            far = init is None and gaps_beyond_narrow_reach(stats.observed)
            guess, guesses = _first_guess(windows.validation if folds else _guess_validation(windows),
                                          wrap, init, config.nearby, modes,
                                          covariances, folds, seed, lambda: windows.wide_validation, correlations,
                                          averaged=train_config.steps == 0, far=far)
            folded = None
            if whole_stations and guess in CANDIDATES:
                xs, ms, hs = _with_station_folds(*windows.validation[:3], folds, seed)
                folded = dict(HeldBack(xs, ms, hs, {}, spec, device, seed).score(
                    _folded_guess(xs, ms, guess, correlations, wrap)), cells=int(hs.sum()))
                del xs, ms, hs
            if (gaps_near and guess is not None and config.cycle and phase is not None
                    and offers_cycle(stats.valid, permanent)):
                if verbose and is_dask_collection(values):
                    log.info(f"fitting each cell's {config.cycle} cycle: one pass over the archive")
                cycle, windows, modes, guess, guesses = _try_cycle(values, plain, build, phase, config.cycle, std,
                                                                   wrap, config.nearby, modes, guess, guesses,
                                                                   wraps=(config.periodic_rows, config.periodic),
                                                                   progress=progress, far=far)
                if verbose and cycle is not None:
                    log.info(f"the first guess fills the departures from the {config.cycle} cycle"
                             + guess.partition(f" + {config.cycle} cycle")[2])
            if guess is not None and not folds:
                guess = _with_own_curve(_guess_validation(windows), wrap, guess, config.cycle if cycle is not None
                                        else None, guesses)
            for made in (windows, plain):  # the guess is chosen: its own validation windows are not kept for training
                vars(made).pop("wide_validation", None)
                made.guess_validation = None
            label = None if guess is None else _without_cycle_label(guess, config.cycle)
            name, nearby, flow = candidate_label(label) if guess is not None else (None, bool(config.nearby), False)
            if init is not None:
                modes = init.denoiser.modes
            elif label is None or not label.endswith(MODES_LABEL):
                modes = None
            elif verbose:
                log.info(f"the first guess leans on the series' {len(modes) - 1} leading spatial modes, fitted to "
                         "each frame's observations")
            if init is None and nearby:
                net["nearby"] = NEARBY_SPAN
                if flow:
                    net["flow"] = True
                    if verbose:
                        log.info("the first guess follows the flow: the gaps stay put while the field moves "
                                 "through them")
                else:
                    net["curve"] = True
                    if label.endswith(OWN_CURVE_LABEL):
                        net["own_curve"] = OWN_CURVE_SHARE
            elif init is None:  # the network does without: no more nearby steps to cut
                windows.nearby_span = 0
                if windows.validation is not None:
                    windows.validation[3].pop("nearby", None)
            config = replace(config, nearby=bool(net.get("nearby")))
            if init is not None:
                covariance = None if init.denoiser.first_guess is None else init.denoiser.first_guess.covariance
            elif name is None or not CANDIDATES[name].get("covariance_steps"):
                covariance = None
            else:
                covariance = covariances[name]
                if verbose:
                    log.info("the first guess is the best linear estimate under the series' own space-time covariance"
                             + (", tapered where few pairs of cells share an offset" if CANDIDATES[name].get("tapered")
                                else "") + " (optimal interpolation)")
            if init is not None:
                correlation = init.denoiser.station_correlation
            elif name is None or not CANDIDATES[name].get("correlation"):
                correlation = None
            else:
                correlation = correlations[0]
                if verbose:
                    log.info("the first guess kriges each frame's departures from each cell's mean under the "
                             "correlation the stations measure over the series")
            with seeded(seed):  # the initial weights
                denoiser = Denoiser(net.pop("n_channels"), net.pop("window"), torch.as_tensor(static),
                                    guess=init.denoiser.config.get("guess") if init is not None else
                                    None if name is None else CANDIDATES[name], modes=modes,
                                    covariance=covariance, station_correlation=correlation, **net)
            if init is not None:
                denoiser.load_state_dict(init.denoiser.state_dict())
            fingerprint = dict(channels=config.channels, window=config.window, net=denoiser.config,
                               spec=spec.to_dict(), grid=grid_digest(config.grid))
            if tile is not None:
                fingerprint["tile"] = list(tile)
            # scored against the mean fill of the values, not of their departures from the cycle
            validate = None if windows.validation is None else HeldBack(
                *windows.validation, spec, device, seed, reference=None if cycle is None else
                _channel_reference(plain.validation))
            imputed = None if validate is None else ImputedHeldBack(validate, windows, denoiser.nearby_span,
                                                                    denoiser.flows, progress)
            # the score is reported, the share of the correction fitted and the classical fillers scored on cells
            # held back apart from those the choices are made on where those say little of the gaps (clouds:
            # samplers.reported)
            report, plain_report = reported(windows), reported(plain)
            imputed_report = None if imputed is None or report is windows else ImputedHeldBack(
                HeldBack(*report.validation, spec, device, seed, reference=None if cycle is None else
                         _channel_reference(plain_report.validation)), report, denoiser.nearby_span, denoiser.flows,
                progress)
            # on the values; under a time budget before training, so that the budget spends what it takes rather
            # than keeping a guess of it, and without one after, in a share of training's time
            budgeted = train_config.max_time is not None
            # station data: on every station in turn, as the fill between stations is scored
            compared_on = plain_report if folded is None else StationFolds(plain_report, folds, seed)
            compared = compare(compared_on) if compare is not None and budgeted and validate is not None else {}
            with torch_threads():  # not all cores when dask workers share them (xrimpute.options.cpu_threads)
                training = _training_budget(train_config, started, [imputed, imputed_report], denoiser, verbose,
                                            bool(compared))
                ema, history = train(denoiser, windows, spec, training, device=device, validate=validate,
                                     checkpoint=checkpoint, fingerprint=fingerprint, progress=progress)
            if untrainable:
                history.stopped = UNTRAINABLE
            scores, estimates, weights, weighted, context, network = {}, {}, None, None, None, None
            if imputed is not None and history.val:
                scores, estimates = _context_scores(ema, imputed)
                context = choose_context({name: score["nmse"] for name, score in scores.items()})
                # the share of the network's correction is fitted on the cells the score is reported on
                scoring, estimate = ((imputed, estimates[context]) if imputed_report is None else
                                     (imputed_report, imputed_report.estimate(ema, context)))
                network = scores[context] if imputed_report is None else imputed_report.score(estimate)
                if history.step:  # an untrained network corrects nothing
                    weights, weighted = scoring.correction_weights(ema, context, estimate)
            if compare is not None and not budgeted and history.val:
                compared = compare(compared_on, history.seconds)
        finally:
            windows.close()
            if plain is not windows:
                plain.close()
        validation = None
        if history.val:
            final = folded or weighted or network
            rmse = {name: float(np.sqrt(final["mse_per_channel"][i]) * std[i])
                    for i, name in enumerate(config.channels)}
            validation = dict(nmse=final["nmse"], skill=1 - final["nmse"], rmse=rmse,
                              cells=int(report.validation[2].sum()) if folded is None else folded["cells"],
                              context=context,
                              context_nmse={name: score["nmse"] for name, score in scores.items()},
                              first_guess=guess, first_guess_nmse=guesses,
                              **({"first_guess_folds": folds} if folds else {}),
                              **({"every_station": True} if folded is not None else {}),
                              **compared)
            if report is not windows:  # the network's score where the choices were made
                validation["chosen_on"] = dict(nmse=scores[context]["nmse"], cells=int(windows.validation[2].sum()))
            if weights is not None:
                validation.update(network_nmse=network["nmse"],
                                  correction_weight=dict(zip(config.channels, weights)))
        config = replace(config, validation=validation, correction=weights,
                         cycle=None if cycle is None else config.cycle,
                         train=dict(asdict(train_config), preset=preset, device=str(device)))
        return cls(ema.cpu(), spec, config, mean, std, stats.valid, history, permanent=permanent,
                   cycle=None if cycle is None else cycle.numpy())

    @classmethod
    def fit_array(cls, values: np.ndarray, mask="auto", *, window: int | None = None, tile="auto",
                  periodic: bool | tuple[bool, bool] = False, preset: str = "auto", val_fraction: float = 0.05,
                  device: str | None = None, checkpoint=None, progress: bool | None = None, verbose: bool = True,
                  init: Engine | None = None,
                  permanent_mask: np.ndarray | None = None, history: bool | None = None,
                  nearby: bool | None = None, **train_options) -> Engine:
        """:meth:`fit` on a plain array, with the options of :meth:`xrimpute.CtxDiffModel.fit`.

        Channels are named 0, 1, ...; the network sees the grid index as
        position (no latitude); ``train_options`` are those of
        :class:`~xrimpute.training.TrainConfig` (``steps``, ``batch_size``,
        ``lr``, ``max_time``, ``seed``, ...).
        """
        values = np.asarray(values, dtype=np.float32)
        rows, columns = wrapping(periodic)
        tile = training_tile(tile, *values.shape[-2:], or_option("device", device), (rows, columns), init)
        train_options["batch_size"] = training_batch(train_options.get("batch_size"), tile, *values.shape[-2:],
                                                     or_option("device", device))
        config = replace(ModelConfig.for_array(values.shape, window, tile), periodic=columns, periodic_rows=rows,
                         history=history, nearby=nearby)
        return cls.fit(values, config, mask, train_config=train_config(**train_options), preset=preset,
                       val_fraction=val_fraction, device=or_option("device", device), checkpoint=checkpoint,
                       progress=or_option("progress", progress), verbose=verbose, init=init,
                       permanent_mask=permanent_mask)

    def continue_training(self, values: np.ndarray, observed: np.ndarray, *, loss_fn=None, device="cpu",
                          progress: bool = True, facts: dict | None = None, phase: np.ndarray | None = None,
                          **changes) -> History:
        """Train the network further on ``values`` ``(N, C, T, H, W)`` in data units (e.g. a completion).

        Windows carry ``observed`` as their mask; the settings are those of the
        last training with ``changes`` (e.g. ``steps``, ``seed``) and the
        objective ``loss_fn`` (default the context-query loss). The network
        becomes the new EMA network and the history the new one; the validation
        score, which training on the held-back cells voids, is dropped, and
        ``facts`` (JSON-able) are kept in the configuration. ``phase`` as for
        :meth:`fill`.
        """
        totals = self.totals(np.where(observed, values, np.nan), phase)
        values = self.departures(values, phase)
        x = (values - self.mean[None, :, None, None, None]) / self.std[None, :, None, None, None]
        tile = self.config.tile and tuple(self.config.tile)
        windows = ArrayWindows(x, observed, self.window, tile=tile, static=self.denoiser.static.numpy(),
                               totals=totals, nearby_span=self.denoiser.nearby_span, flow=self.denoiser.flows,
                               hide=self.spec)
        with torch_threads():
            ema, self.history = train(self.denoiser.train().requires_grad_(True), windows, self.spec,
                                      replace(self.train_config, **changes), device=resolve_device(device),
                                      loss_fn=loss_fn, progress=progress)
        self.denoiser = ema.cpu().eval()
        self.config = replace(self.config, validation=None, correction=None,
                              extra={**self.config.extra, **(facts or {})})
        return self.history

    # -- imputation ------------------------------------------------------------
    def tiling(self, overlap: int | None = None) -> Tiling:
        """Tiles of imputation (:func:`imputation_tiling`), neighbours sharing ``overlap`` cells (default a quarter
        of the tile)."""
        return imputation_tiling(self.config.grid_shape, self.config.tile, self.denoiser.config["periodic"],
                                 self.config.periodic, overlap)

    def observed_rate(self, values):
        """Share of observed cells of ``values`` ``(N, C, T, H, W)`` in the grid columns the model knows.

        A float for a numpy array, a lazy dask scalar for a dask array.
        """
        columns = self.valid.any(0)
        seen = (np.isfinite(values) & columns).sum()
        rate = seen / (values.shape[0] * values.shape[1] * values.shape[2] * int(columns.sum()))
        return rate if is_dask_collection(values) else float(rate)

    def check_options(self, options: ImputeConfig) -> None:
        """Refuse options this model cannot honour, before any work: windows ``stride`` apart that leave steps
        between them unfilled, or a ``K`` x ``batch_size`` ensemble that cannot fit in memory."""
        arguments.check_stride(options.stride, self.window)
        rows, cols = self.tiling(options.overlap).size
        width = {**PRESETS[self.denoiser.config["preset"]], **self.denoiser.config}["channels"]
        arguments.check_memory(options.K, options.batch_size, len(self.config.channels), self.window, rows, cols,
                               width, or_option("device", options.device))

    def imputation_spec(self, options: ImputeConfig, rate=None) -> masks.MaskSpec:
        """The contexts of imputation: ``options.spec`` (default the model's), adapted to the observed share
        ``rate`` (default ``options.observed_rate``) when ``options.adapt``."""
        spec = options.spec or self.spec
        rate = options.observed_rate if rate is None else rate
        return spec.adapted(self.config.train_rate, float(rate)) if options.adapt else spec

    def totals(self, values, phase: np.ndarray | None = None) -> np.ndarray | None:
        """:func:`~xrimpute.windows.series_totals` of ``values`` ``(N, C, T, H, W)`` in data units (numpy, or dask:
        lazy), which imputing or sampling a series needs when the network leans on each window's history; else
        None. A model with a cycle sums the departures from it (``phase`` as for :meth:`fill`), as it trained."""
        if not self.denoiser.uses_history:
            return None
        return series_totals(self.departures(values, phase), self.mean, self.std)

    def _normalise(self, values: np.ndarray) -> np.ndarray:
        return np.nan_to_num((values - self.mean[None, :, None, None, None]) / self.std[None, :, None, None, None])

    def fill(self, values: np.ndarray, options: ImputeConfig = ImputeConfig(), *, spec: masks.MaskSpec | None = None,
             piece: Piece | None = None, net=None, totals: np.ndarray | None = None, phase: np.ndarray | None = None):
        """``(filled, spread)`` of ``values`` ``(N, C, T, H, W)`` (NaN = gap) in data units.

        ``values`` is the whole series, or with ``piece`` a cut of it
        (:class:`xrimpute.windows.Piece`); the result covers the piece's box.
        ``totals``: :meth:`totals` of the whole series, which a cut of it needs
        when the network leans on history (a whole series gives its own).
        ``spec`` is the imputation spec (default :meth:`imputation_spec` with the
        observed share of ``values``); ``net`` the denoiser to run (default the
        engine's, moved to ``options.device`` and back). ``phase``: where each
        step of the whole series lies in the model's cycle (:meth:`cycle_shift`),
        which a model that fills departures from one needs. Imputation in
        memory, lazy imputation and :func:`xrimpute.reconstruct` all come here.
        """
        options = options.resolved()
        if spec is None:
            spec = self.imputation_spec(options, None if options.observed_rate is not None or not options.adapt
                                        else self.observed_rate(values))
        if totals is None and self.denoiser.uses_history:
            if piece is not None:
                raise ArgumentError("this model's first guess leans on each cell's history; pass totals= "
                                    "(Engine.totals of the whole series) with a piece of it")
            totals = self.totals(values, phase)
        piece = piece or Piece.whole(values.shape)
        shift = self.cycle_shift(values.shape, phase, piece)
        device = resolve_device(options.device)
        own = net is None
        net = self.denoiser.to(device) if own else net
        try:
            with torch_threads():  # in a dask worker: the worker's share of the cores
                filled, spread = self._fill(values if shift is None else values - shift, spec, options, piece, net,
                                            device, totals)
        finally:
            if own:
                self.denoiser.cpu()
        if shift is None:
            return filled, spread
        return np.where(piece.inside(np.isfinite(values)), piece.inside(values), filled + piece.inside(shift)), spread

    def cycle_shift(self, shape: tuple[int, ...], phase: np.ndarray | None, piece: Piece | None = None):
        """``(N, C, T, H, W)`` in data units (broadcast): the model's cycle (:mod:`xrimpute.cycle`) at the steps and
        cells of a cut ``shape`` of a series (``piece``, default the whole of it) whose steps lie at ``phase``
        ``(T,)`` of the whole series; None for a model without a cycle."""
        if self.cycle is None:
            return None
        piece = piece or Piece.whole(shape)
        _, _, steps, rows, cols = shape
        _, first, row, col = piece.origin
        self._check_phase(phase, piece.full[0])
        amplitudes = self.cycle[:, :, row : row + rows][..., (col + np.arange(cols)) % piece.full[2]]
        cycle = cycle_at(amplitudes, np.asarray(phase)[first : first + steps], self.std)
        return np.broadcast_to(cycle[None], shape)

    def departures(self, values, phase: np.ndarray | None):
        """``values`` ``(N, C, T, H, W)`` (data units; numpy, or dask: lazy) less the model's cycle at the steps'
        ``phase`` (as for :meth:`cycle_shift`); ``values`` themselves for a model without a cycle."""
        if self.cycle is None:
            return values
        self._check_phase(phase, values.shape[2])
        return without_cycle(values, self.cycle, phase, self.std)

    def _check_phase(self, phase: np.ndarray | None, steps: int) -> None:
        if phase is None or len(phase) != steps:
            raise ArgumentError(f"this model fills the departures from each cell's {self.config.cycle} cycle, so it "
                                f"needs phase= with the place of each of the series' {steps} steps in it "
                                "(xrimpute.cube.cycle_phase of its time coordinate), as CtxDiffModel.impute "
                                f"passes it; got {'none' if phase is None else f'{len(phase)} steps'}")

    def _fill(self, values, spec, options: ImputeConfig, piece: Piece, net, device, totals):
        observed = np.isfinite(values)
        tiling = self.tiling(options.overlap)
        tiled = tiling.size != tuple(piece.full[1:]) and self.denoiser.static.shape[0] > 0
        static = self.denoiser.static.cpu().numpy() if tiled else None  # cut per tile
        context = options.context or self.context
        passes = 1 if context == "observed" and not options.spread else options.K  # the rest only give the spread
        run = functools.partial(impute_series, values=self._normalise(values), observed=observed, spec=spec,
                                window=self.window, K=passes, stride=options.stride,
                                batch_size=options.batch_size, device=device, seed=options.seed,
                                autocast=mixed_precision(device), progress=options.progress, tiling=tiling,
                                static=static, piece=piece, context=context, totals=totals,
                                nearby_span=self.denoiser.nearby_span, flow=self.denoiser.flows)
        guess = _first_guess_only(net) if getattr(net, "first_guess", None) is not None else None
        (ya, yb), (xa, xb) = piece.box[1:]
        left_nan = self.left_nan(options.fill_never_observed)  # none with True
        never = ~self.valid & ~left_nan  # (C, H, W): filled, though no loss ever reached them
        nan, untrained = (cells[None, :, None, ya:yb, xa:xb] for cells in (left_nan, never))
        seen = piece.inside(observed)
        share = None if guess is None or self.config.correction is None else np.asarray(self.config.correction)
        everywhere = guess is not None and not (~seen & ~nan & ~untrained).any()
        alone = guess is not None and untrained.any() and context == "observed" and not everywhere
        if everywhere:
            # every gap lies where the guess fills alone (a station network's complete series): no network pass
            mean = std = np.zeros(seen.shape, np.float32)
        elif share is not None or alone:
            # the share of the network's correction that its held-back cells trust, on the guess it corrected; none
            # where no loss ever reached, under the observed context, whose pass makes the guess from every
            # observation there (its sampled ones the guess's spread): no second pass of the guess alone
            kept = np.broadcast_to((np.ones(len(never)) if share is None else share)[:, None, None], never.shape)
            mean, std = run(net, share=np.where(never & alone, 0.0, kept).astype(np.float32))
        else:
            mean, std = run(net)
        if guess is not None and untrained.any() and not alone:
            # no loss ever reached these cells, so the network's correction there is untrained: keep the first guess,
            # made from every observation (a sampled context only leaves some out), with the spread the contexts give
            # it, as the network's own cells have theirs (with the observed context, how far sampled ones land from it)
            guess_mean, guess_std = run(guess, context="observed", K=passes if context == "observed" else 1)
            if context != "observed" and options.spread:
                guess_std = run(guess)[1]
            mean, std = np.where(untrained, guess_mean, mean), np.where(untrained, guess_std, std)
        scale, offset = self.std[None, :, None, None, None], self.mean[None, :, None, None, None]
        filled = np.where(seen, piece.inside(values), mean * scale + offset)
        spread = std * scale
        return np.where(nan & ~seen, np.nan, filled), np.where(nan, np.nan, spread)

    def sample(self, values: np.ndarray, n: int = 16, steps: int = 50, *, K: int = 10, eta: float = 0.0,
               handover: float | None = -1.0, seed: int = 0, batch_size: int = 16, device="cpu", adapt: bool = True,
               fill_never_observed: bool | None = None, progress: bool = False,
               phase: np.ndarray | None = None) -> np.ndarray:
        """``n`` imputations ``(n, N, C, T, H, W)`` of ``values`` by multi-step sampling (observations kept exactly).

        Options as for :meth:`xrimpute.CtxDiffModel.sample`; ``phase`` as for :meth:`fill`.
        """
        arguments.check(n=n, steps=steps, K=K, eta=eta, seed=seed, batch_size=batch_size)
        arguments.check_device(device)
        if (self.train_config.low_noise or 0.0) >= 1.0:
            warnings.warn("this model trained only at the small noise levels of single-step imputation (the CPU "
                          "default, low_noise=1.0), so the early steps of multi-step sampling ask it what it never "
                          "learned; for samples, fit with low_noise=0.0 (or 0.5) and more steps", UserWarning,
                          stacklevel=3)
        observed = np.isfinite(values)
        shift = self.cycle_shift(values.shape, phase)
        spec = self.spec
        if adapt:
            test_rate = float(observed[:, :, :, self.valid.any(0)].mean())
            spec = spec.adapted(self.config.train_rate, test_rate)
        # the sampler's state is complete: contexts keep the input fraction seen in training
        diffusion_spec = self.spec.adapted(self.config.train_rate, 1.0)
        device = resolve_device(device)
        self.denoiser.to(device)
        try:
            with torch_threads():
                draws = sample_series(self.denoiser, self._normalise(values if shift is None else values - shift),
                                      observed, self.schedule, diffusion_spec,
                                      spec, self.window, n=n, steps=steps, K=K, eta=eta, handover=handover,
                                      domain=torch.as_tensor(self.valid)[None, :, None].to(device), seed=seed,
                                      batch_size=batch_size, device=device, autocast=mixed_precision(device),
                                      progress=progress, totals=self.totals(values, phase),
                                      nearby_span=self.denoiser.nearby_span, flow=self.denoiser.flows)
        finally:
            self.denoiser.cpu()
        draws = draws * self.std[None, None, :, None, None, None] + self.mean[None, None, :, None, None, None]
        draws = draws if shift is None else draws + shift[None]
        draws = np.where(self.left_nan(fill_never_observed)[None, None, :, None] & ~observed, np.nan, draws)
        return np.where(observed, values, draws)

    # -- persistence -----------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights and configuration to one file, atomically (loaded safely with ``weights_only``)."""
        if Path(path).is_dir():
            raise ArgumentError(f"{str(path)!r} is a directory; pass the path of a file, e.g. 'model.xri'")
        config = dict(info=self.config.to_dict(), spec=self.spec.to_dict(), schedule=asdict(self.schedule),
                      net=self.denoiser.config, history=self.history.to_dict())
        payload = dict(format=FORMAT, format_version=FORMAT_VERSION, config=json.dumps(config),
                       state=self.denoiser.state_dict(), mean=torch.as_tensor(self.mean),
                       std=torch.as_tensor(self.std), valid=torch.as_tensor(self.valid),
                       permanent=torch.as_tensor(self.permanent),
                       **({} if self.cycle is None else {"cycle": torch.as_tensor(self.cycle)}))
        with atomic_write(path) as partial:
            torch.save(payload, partial)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Engine:
        """Read a model file written by :meth:`save`; anything else is refused with a
        :class:`~xrimpute.errors.ModelFileError` saying what is wrong."""
        payload = read_payload(path, "model file")
        config = _model_config(payload, str(path))
        net = dict(config["net"])
        try:
            modes = payload["state"]["modes"] if net.pop("modes", None) else None
            covariance = payload["state"]["first_guess.covariance"] \
                if net.get("guess", {}).get("covariance_steps") else None
            correlation = tuple(payload["state"][f"first_guess.station_{part}"] for part in ("fields", "parameters")) \
                if net.get("guess", {}).get("correlation") else None
            denoiser = Denoiser(net.pop("n_channels"), net.pop("window"), payload["state"]["static"], modes=modes,
                                covariance=covariance, station_correlation=correlation, **net)
            denoiser.load_state_dict(payload["state"])
            spec = masks.MaskSpec.from_dict(config["spec"])
            history, schedule = History(**config["history"]), VPSchedule(**config["schedule"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelFileError(f"{str(path)!r} is damaged: its network, mask or history cannot be rebuilt "
                                 f"({reason})") from None
        return cls(denoiser, spec, ModelConfig.from_dict(config["info"]), payload["mean"].numpy(),
                   payload["std"].numpy(), payload["valid"].numpy(), history, schedule,
                   permanent=payload["permanent"].numpy() if "permanent" in payload else None,
                   cycle=payload["cycle"].numpy() if "cycle" in payload else None)


def _model_config(payload: dict, path: str) -> dict:
    """The configuration of a model file's payload, once every part a model needs is there and consistent."""
    def damaged(what: str) -> ModelFileError:
        return ModelFileError(f"{path!r} is not a usable xrimpute model file: {what}")

    if payload.get("format") != FORMAT:
        kind = "a training checkpoint (resume it with fit(..., checkpoint=...))" if "fingerprint" in payload else \
            "not written by CtxDiffModel.save"
        raise ModelFileError(f"{path!r} is not an xrimpute model file: it is {kind}")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise damaged(f"its format_version is {version!r}, not a whole number")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} was written by a newer xrimpute (format {version}); upgrade xrimpute to read it")
    if missing := [key for key in ("config", "state", "mean", "std", "valid") if key not in payload]:
        raise damaged(f"it lacks {missing}")
    try:
        config = json.loads(payload["config"])
        info, net = config["info"], config["net"]
        channels, window, grid = info["channels"], info["window"], info["grid"]
        rows, cols = len(grid["lat"]), len(grid["lon"])
    except (TypeError, ValueError, KeyError) as err:
        raise damaged(f"its configuration is incomplete (no {err})" if isinstance(err, KeyError) else
                      f"its configuration is not readable JSON ({err})") from None
    if net.get("window") != window or net.get("n_channels") != len(channels):
        raise damaged(f"its configuration says window {window} and {len(channels)} channel(s), but its network was "
                      f"built for window {net.get('window')} and {net.get('n_channels')} channel(s)")
    shapes = {"mean": (len(channels),), "std": (len(channels),), "valid": (len(channels), rows, cols)}
    if "permanent" in payload:  # files written before the permanent mask have none
        shapes["permanent"] = shapes["valid"]
    for key, shape in shapes.items():
        if not isinstance(payload[key], torch.Tensor) or tuple(payload[key].shape) != shape:
            raise damaged(f"its {key} is not a tensor of shape {shape}")
    mean, std = payload["mean"], payload["std"]
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise damaged(f"its normalisation is not finite and positive (mean {mean.tolist()}, std {std.tolist()}); "
                      "fit the model again")
    return config


def _with_window(config: ModelConfig, observed: np.ndarray, steps: int, init: Engine | None,
                 verbose: bool, values: np.ndarray | None = None) -> ModelConfig:
    """``config`` with the window of ``init``, or else the one :func:`choose_window` finds for ``observed`` (and
    ``values``, the series in memory); the shares of gaps in reach are kept in the config (``window_reach``)."""
    if init is not None:
        return replace(config, window=init.window)
    window, reached = choose_window(observed, steps, values)
    if verbose:
        longer = ("; longer, as the gaps have little context near them in a field that persists and changes gradually"
                  if window > _within_reach(reached) else "")
        log.info("windows of %d steps (gaps with an observation within the first guess's reach: %s%s)", window,
                 ", ".join(f"{share:.0%} at {length} steps" for length, share in reached.items()), longer)
    shares = {str(length): round(share, 4) for length, share in reached.items()}
    return replace(config, window=window, extra={**config.extra, "window_reach": shares})


def _first_guess_only(net):
    """``net`` without its correction: the first guess from the context, as the network's output."""
    def guess(values, mask, t, static=None, history=None, nearby=None):
        return net.guess(values, mask, history, nearby)[0].to(values.dtype)
    return guess


UNTRAINABLE = "none: every gap lies in a cell never observed, which the first guess fills alone"
"""Why a fit trained no step (``model.history.stopped``): under the default budget, where training could not change
the fill (:func:`xrimpute.masks.gaps_only_where_never_observed`); an explicit ``steps`` or ``max_time`` trains."""

STATION_FOLDS = 5
"""Shares of the context stations that, each held back in turn from a copy of the validation windows, score the first
guesses of station data beside the stations held back from training: those are 5 % of the stations, two of the
40 of the ERA5 sample, and on the Pacific SST anomalies their choice filled one seed's gaps 18 % worse than the
spline (``benchmarks/RESULTS.md``). Between stations the guess is the whole fill."""


def _first_guess(validation, wrap: dict, init: Engine | None,
                 nearby: bool | None = None, modes=None, covariances=None, station_folds: int = 0,
                 seed: int = 0, wide=None, correlations=None, averaged: bool = False,
                 far: bool = False) -> tuple[str | None, dict]:
    """The first guess of :data:`~xrimpute.nets.prior.CANDIDATES`, with or without the nearby steps the validation
    inputs carry (``nearby`` True: with), or leaning on ``modes`` (the series' spatial modes, or None), or under
    ``covariances`` (the series' own, by the name of the candidate that takes each, or None), that best
    fills the held-back cells (a label of
    :func:`~xrimpute.nets.prior.choose_guess`), and every candidate's NMSE there; None (the defaults) without
    held-back cells or with ``init`` (whose guess is kept). ``station_folds`` (:func:`_station_folds`): the context
    stations also score them, in that many shares (:func:`_with_station_folds`, drawn with ``seed``), without the
    nearby steps, modes or covariance. ``wide``: a callable giving the validation windows' ``wide_validation`` (or
    None), on which a guess leaning on the modes must also win by its margin (:func:`_on_every_window`); called only
    then, since the windows make them when asked. ``wrap``: how the guess wraps round
    (:class:`~xrimpute.nets.prior.FirstGuess`'s ``periodic`` and ``row_period``). ``correlations``
    (:func:`_station_correlations`, with ``station_folds``): the stations' correlation of the training series and of
    each share's, under which the guess ``kriging over time`` scores too, chosen only where it beats the best of
    the others by :data:`~xrimpute.nets.prior.BASELINE_MARGIN`, as a guess leaning on the series must. ``averaged``:
    the averaged candidates too (``choose_guess(with_averaged=True)``), for a fit that trains no step. ``far``: more
    than :data:`~xrimpute.nets.prior.FAR_GAPS` of the gaps lie beyond the narrower levels' reach, so the chosen
    guess gives way to its wide twin (``choose_guess(far=True)``)."""
    if init is not None or validation is None:
        return None, {}
    xs, ms, hs, inputs, *runs = validation
    runs = runs[0] if runs else None
    if station_folds:
        xs, ms, hs = _with_station_folds(xs, ms, hs, station_folds, seed)
        # a station of a share keeps no observations at nearby steps, as a cell between stations has none; and the
        # series' modes and covariance, fitted to every training station, would know its values
        inputs, modes, covariances = {}, None, None
    label, errors = choose_guess(xs, ms, hs, **wrap, history=inputs.get("history"),
                                 nearby=inputs.get("nearby"), span=NEARBY_SPAN, curve=True, modes=modes,
                                 covariances=covariances, runs=runs, with_averaged=averaged, far=far)
    if correlations is not None:
        kriged = _correlation_errors(xs, ms, hs, correlations, wrap)
        errors.update(kriged)
        best = min(kriged, key=kriged.get)
        label = best if kriged[best] < BASELINE_MARGIN * errors[label] else label
    if nearby:  # the best of those with nearby steps
        label = min((name for name in errors if candidate_label(name)[1]), key=lambda name: errors[name])
    elif wide is not None and label.endswith(MODES_LABEL) and (windows := wide()) is not None:
        plain = min((name for name in errors if not costly(name)), key=errors.get)
        # against the best without them here and the same guess without them
        settled = _on_every_window(windows, wrap, modes, label, [plain, label.removesuffix(MODES_LABEL)])
        label = label if settled is None or settled[0] < BASELINE_MARGIN * settled[1] else plain
    return label, errors


def _with_own_curve(validation, wrap: dict, guess: str, kind: str | None, guesses: dict) -> str:
    """``guess`` (a label of :func:`_first_guess`, with ``kind``'s cycle where the guess fills the departures from
    it), and where it leans on the nearby steps in place, that guess with
    :data:`~xrimpute.nets.prior.OWN_CURVE_SHARE` of each cell's own curve in its baseline
    (:data:`~xrimpute.nets.prior.OWN_CURVE_LABEL` after the nearby steps), its NMSE on the held-back cells of
    ``validation`` added to ``guesses`` on their scale, unless the guess without it beats it there by
    :data:`~xrimpute.nets.prior.BASELINE_MARGIN`. Kept on a near tie: of six fits of four cubes' moving blocks
    that lean on the nearby steps, five filled the gaps 0.6-9 % better with it and one 1.7 % worse (trained, five of
    six too), where the held-back cells ranked the two within 1.4 % on four, three of them the wrong way
    (``benchmarks/RESULTS.md``). Chosen last, after the cycle:
    scored among the candidates, the own curve's few per cent kept the ERA5 sample's moving blocks from the cycle
    that filled them better."""
    base, cycled, cycle_name = guess.partition(f" + {kind} cycle") if kind else (guess, "", "")
    name, leaning, along_flow = candidate_label(base)
    if not leaning or along_flow:
        return guess
    xs, ms, hs, inputs, *runs = validation
    _, errors = choose_guess(xs, ms, hs, candidates={name: CANDIDATES[name]}, **wrap, history=inputs.get("history"),
                             nearby=inputs.get("nearby"), span=NEARBY_SPAN, curve=True, own=OWN_CURVE_SHARE,
                             runs=runs[0] if runs else None)
    without, with_own = errors[base], errors[base + OWN_CURVE_LABEL]
    own_label = base + OWN_CURVE_LABEL + cycled + cycle_name
    guesses[own_label] = guesses[guess] * with_own / max(without, 1e-12)
    return guess if without < BASELINE_MARGIN * with_own else own_label


def _on_every_window(wide, wrap: dict, modes, label: str, others: list[str], wide_others=None,
                     modes_others=None) -> tuple[float, float] | None:
    """The error of the guess ``label`` (of :func:`choose_guess`) on the held-back cells of ``wide``, and the least
    of the guesses ``others`` there (on ``wide_others`` with their ``modes_others`` where they differ: the values'
    windows beside their departures from a cycle), each against the mean fill of ``wide_others`` or ``wide``; None
    where a guess does not run there (a spline on windows denser than the validation's). A guess leaning on a
    series-wide baseline that wins on the validation windows by its margin must win here too: on 16 windows the
    differences of a few per cent that the margin weighs come and go (``samplers.WIDE_VALIDATION_CELLS``)."""
    def error(windows, modes, guess):
        xs, ms, hs, inputs = windows
        name = candidate_label(guess)[0]
        _, errors = choose_guess(xs, ms, hs, candidates={name: CANDIDATES[name]}, **wrap,
                                 history=inputs.get("history"), nearby=inputs.get("nearby"), span=NEARBY_SPAN,
                                 curve=True, modes=modes)
        return errors.get(guess)

    own = error(wide, modes, label)
    theirs = [error(wide, modes, other) if wide_others is None else error(wide_others, modes_others, other)
              for other in dict.fromkeys(others)]
    if own is None or None in theirs:
        return None
    if wide_others is not None:  # both against the values' mean fill
        own *= float(_channel_reference(wide).sum() / _channel_reference(wide_others).sum())
    return own, min(theirs)


def _station_folds(spec, init: Engine | None, nearby: bool | None, validation) -> int:
    """How many shares of the context stations also score the first guesses of a fit (``model.validation``'s
    ``first_guess_folds``): :data:`STATION_FOLDS` for station data whose guess leans on neither nearby steps
    (``nearby`` True) nor history, else 0 (the held-back cells alone)."""
    if (init is not None or validation is None or not masks.of_stations(spec) or nearby
            or validation[3].get("history") is not None):
        return 0
    return STATION_FOLDS


def _with_station_folds(xs: torch.Tensor, ms: torch.Tensor, hs: torch.Tensor, folds: int,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation windows ``(values, context, held back)`` ``(B, C, T, H, W)`` of station data, followed by ``folds``
    copies of them, each holding back a share of the context's stations (:func:`~xrimpute.samplers.station_shares`,
    as :class:`~xrimpute.samplers.StationFolds` does) and seeing the rest, so that every station scores a guess
    rather than the few held back from training."""
    contexts, held = [ms], [hs]
    for share in station_shares(ms, folds, seed):
        contexts.append(ms & ~share[None, :, None])
        held.append(ms & share[None, :, None])
    return xs.repeat(len(contexts), 1, 1, 1, 1), torch.cat(contexts), torch.cat(held)


def _station_correlations(windows, folds: int, seed: int, periodic: bool) -> list[tuple] | None:
    """The stations' correlation (:func:`~xrimpute.nets.prior.station_correlation`) of the training series of
    ``windows`` and of each of its views :class:`~xrimpute.samplers.StationFolds` gives (the shares
    :func:`_with_station_folds` scores), so that a station scored never informs its own guess; None where a series
    has too few or too many stations."""
    fitted = [station_correlation(*view.training_series(), periodic) for view in StationFolds(windows, folds, seed)]
    return None if any(model is None for model in fitted) else fitted


def _folded_guess(xs: torch.Tensor, ms: torch.Tensor, name: str, correlations: list[tuple] | None,
                  wrap: dict) -> torch.Tensor:
    """The guess ``name`` (of :data:`~xrimpute.nets.prior.CANDIDATES`) of station folds ``(xs, ms)``
    (:func:`_with_station_folds`), each copy of the windows kriged over time under its own share's correlation
    (``correlations``, :func:`_station_correlations`) where the guess does."""
    options = CANDIDATES[name]
    if not options.get("correlation"):
        return FirstGuess(**options, **wrap)(xs * ms, ms)[0]
    copies = len(correlations)
    return torch.cat([FirstGuess(**options, **wrap, station_correlation=model)(x * m, m)[0]
                      for x, m, model in zip(xs.chunk(copies), ms.chunk(copies), correlations)])


def _correlation_errors(xs: torch.Tensor, ms: torch.Tensor, hs: torch.Tensor, correlations: list[tuple],
                        wrap: dict) -> dict[str, float]:
    """The error of each guess kriging over time on the held-back cells of station folds ``(xs, ms, hs)``
    (:func:`_with_station_folds`) relative to the mean fill, as :func:`~xrimpute.nets.prior.choose_guess` gives
    the others' (:func:`_folded_guess`)."""
    reference = float((xs**2 * hs).sum().clamp(min=1e-12))
    return {name: float(((_folded_guess(xs, ms, name, correlations, wrap) - xs) ** 2 * hs).sum()) / reference
            for name, options in CANDIDATES.items() if options.get("correlation")}


def _cycle_label(kind: str, width: float) -> str:
    """What :meth:`Engine.fit` appends to a first guess's label (``model.validation``) when it fills the departures
    from each cell's ``kind`` cycle, its own (``width`` 0) or pooled over a neighbourhood of ``width`` cells
    (:data:`~xrimpute.cycle.NEIGHBOURHOODS`)."""
    source = "each cell's own" if width == 0 else f"pooled over {width:g} cells"
    return f" + {kind} cycle ({source})"


def _without_cycle_label(guess: str, kind: str | None) -> str:
    """A first guess's label without what :func:`_cycle_label` appended to it."""
    return guess.partition(f" + {kind} cycle")[0] if kind else guess


def _guess_validation(windows):
    """The validation windows of ``windows`` that score the first guesses: as imputation fills them
    (``guess_validation``, :func:`~xrimpute.samplers.training_windows`), else those that score the network."""
    return windows.validation if windows.guess_validation is None else windows.guess_validation


def _channel_reference(validation) -> torch.Tensor:
    """``(C,)``: the squared error of the mean fill on the held-back cells of ``validation`` (normalised units, where
    the mean fill is 0; of its scored windows where it holds runs of windows round them)."""
    xs, _, hs, _, *runs = validation
    xs = xs[runs[0][1] == 0] if runs else xs
    return (xs**2 * hs).sum(dim=(0, 2, 3, 4))


def _try_cycle(values: np.ndarray, plain, build, phase: np.ndarray, kind: str, std: np.ndarray, wrap: dict,
               nearby: bool | None, modes, guess: str, guesses: dict, wraps: tuple[bool, bool],
               progress: bool = False, far: bool = False):
    """``(cycle, windows, modes, guess, guesses)`` of a fit whose first guess fills the departures from each cell's
    ``kind`` cycle (:func:`~xrimpute.cycle.fit_cycle` of the training series of ``plain``, the held-back
    cells hidden; in an archive, one pass over it, which also gives the history of the departures), its own or
    pooled with its neighbours'
    (:data:`~xrimpute.cycle.NEIGHBOURHOODS`, whichever fills the held-back cells better), where that fills the
    held-back cells better than :data:`~xrimpute.nets.prior.BASELINE_MARGIN` times ``guess`` (the choice among
    ``guesses`` on ``plain``'s windows, of the values); else ``(None, plain, modes, guess, guesses)``; ``guesses``
    with those of every candidate cycle on the departures added. ``build(values)`` makes the windows: the same
    held-back cells for the departures. Every guess's NMSE is against the mean fill of the values.
    ``wrap``: how the guess wraps round (:class:`~xrimpute.nets.prior.FirstGuess`'s ``periodic`` and ``row_period``;
    a tile's columns do not); ``wraps``: whether the grid's rows and columns do.
    ``progress``: a bar over an archive's pass; ``far``: as :func:`_first_guess` takes it."""
    best, scored = None, {}  # (error, cycle, windows or None, modes, label), and every candidate's guesses
    # the history of the departures comes from that of the values and the same pass as the cycles
    history = plain.totals is not None
    fitted = fit_cycle(*plain.training_series(), phase, periodic=wraps, neighbourhoods=NEIGHBOURHOODS,
                       progress=progress, return_sums=history)
    cycles, sums = fitted if history else (fitted, None)

    def windows_of(cycle):  # the departures' windows (the same held-back cells) and their modes
        # an archive's validation windows: the departures of the stretches the values' windows read, not a new read
        stretches = [Stretch(st.sample, st.start, st.row, st.col, without_cycle(
            st.values[None], cycle[..., st.row : st.row + st.values.shape[-2], st.col : st.col + st.values.shape[-1]],
            phase[st.start : st.start + st.values.shape[1]], std)[0]) for st in plain.reserved_stretches]
        cycled = build(without_cycle(values, cycle, phase, std), overwrite=True,
                       training_totals=departures_totals(plain.totals, sums, cycle) if history else None,
                       reserved_stretches=stretches or None)
        return cycled, None if modes is None else spatial_modes(cycled.values, cycled.observed)

    # in memory a candidate's windows are a copy of the cube: each is closed once scored, and the winner's made
    # again unless it came last (from an archive that reads nothing: its validation windows come from the stretches)
    candidates = [(width, cycle) for width, cycle in zip(NEIGHBOURHOODS, cycles)
                  if bool(cycle.any())]  # else the observations cover too little of the cycle anywhere
    for k, (width, cycle) in enumerate(candidates):
        suffix = _cycle_label(kind, width)
        cycled, cycled_modes = windows_of(cycle)
        label, errors = _first_guess(_guess_validation(cycled), wrap, None, nearby, cycled_modes,
                                     wide=lambda: cycled.wide_validation, far=far)
        scale = float(_channel_reference(_guess_validation(cycled)).sum()
                      / _channel_reference(_guess_validation(plain)).sum())
        errors = {name + suffix: error * scale for name, error in errors.items()}
        scored.update(errors)
        better = best is None or errors[label + suffix] < best[0]
        if better and best is not None and best[2] is not None:
            best[2].close()
        if not (better and k == len(candidates) - 1):
            cycled.close()
            cycled = cycled_modes = None  # its copy of the cube goes before the next candidate's is made
        if better:
            best = (errors[label + suffix], cycle, cycled, cycled_modes, label + suffix)
    if best is None:
        return None, plain, modes, guess, guesses
    error, cycle, cycled, cycled_modes, label = best
    both = {**guesses, **scored}
    if error < BASELINE_MARGIN * guesses[guess]:
        if cycled is None:
            cycled, cycled_modes = windows_of(cycle)
        settled = None if cycled.wide_validation is None or plain.wide_validation is None else _on_every_window(
            cycled.wide_validation, wrap, cycled_modes, _without_cycle_label(label, kind),
            [guess, _without_cycle_label(label, kind)], plain.wide_validation, modes)
        if settled is None or settled[0] < BASELINE_MARGIN * settled[1]:
            return cycle, cycled, cycled_modes, label, both
    if cycled is not None:
        cycled.close()
    return None, plain, modes, guess, both


def _training_budget(config: TrainConfig, started: float, held_back: list[ImputedHeldBack | None], net,
                     verbose: bool, compared: bool = False) -> TrainConfig:
    """``config`` with its ``max_time``, the whole fit's budget from ``started``, cut to the seconds left for
    training: less those spent since (the statistics, the windows, the first guess's choice, the classical fillers'
    comparison where ``compared``) and the scoring of the held-back cells after training (the estimates of each of
    ``held_back`` that is not None, one stretch of each timed with ``net``). Counted from training alone, a 300 s
    fit of the shallow-water blocks took 374-382 s (``benchmarks/RESULTS.md``). Training keeps at least
    :data:`LEAST_TRAINING_SHARE` of the budget."""
    if config.max_time is None:
        return config
    after = sum(cells.seconds(copy.deepcopy(net).to(cells.device).eval()) for cells in held_back if cells is not None)
    spent = time.perf_counter() - started  # the timing above too
    left, least = config.max_time - spent - after, LEAST_TRAINING_SHARE * config.max_time
    parts = (["the statistics", "the first guess's choice"] + ["the classical fillers' comparison"] * compared
             + ["timing the scoring"] * (after > 0))
    before = ", ".join(parts[:-1]) + " and " + parts[-1]
    if verbose and left < least:
        log.info(f"the fit outside training takes about {spent + after:.0f} s of the {config.max_time:.0f} s time "
                 f"budget ({spent:.0f} s before it, {after:.0f} s after it): training for {least:.0f} s, and the "
                 "fit ends late; pass a larger max_time=")
    elif verbose:
        log.info(f"training for {left:.0f} s of the {config.max_time:.0f} s time budget: {spent:.0f} s went to "
                 f"{before}, about {after:.0f} s are kept for scoring the held-back cells after it")
    return replace(config, max_time=max(left, least))


def choose_context(errors: dict[str, float]) -> str:
    """The context a model imputes with by default, from each context's error on the held-back cells: the sampled
    ones only where they beat the observed one by :data:`CONTEXT_MARGIN`, since they cost ``K`` passes to its
    one and imputation then leaves no observation out."""
    return "sampled" if errors["sampled"] < CONTEXT_MARGIN * errors["observed"] else "observed"


def _context_scores(net, held_back: HeldBack) -> tuple[dict, dict]:
    """The final network's scores on the held-back cells with each context of imputation, and the estimates
    behind them, for :meth:`HeldBack.correction_weights` to reuse."""
    estimates = {context: held_back.estimate(net, context) for context in ("sampled", "observed")}
    return {context: held_back.score(estimate) for context, estimate in estimates.items()}, estimates


class HeldBack:
    """Held-back observed cells ``hs`` of fixed windows ``xs`` that a network sees through ``ms`` (and its
    per-window ``inputs``): calling it scores a network there (``validate`` of training)."""

    def __init__(self, xs, ms, hs, inputs, spec, device, seed, K: int = 4, reference: torch.Tensor | None = None):
        self.xs, self.ms, self.hs, self.spec, self.device, self.seed, self.K = xs, ms, hs, spec, device, seed, K
        self.inputs = {name: v.to(device) for name, v in inputs.items()}
        # (C,): the error of the mean fill that the NMSE divides by; default that of xs (departures from a cycle
        # are scored against the values' own, :func:`_channel_reference`)
        self.reference = _channel_reference((xs, ms, hs, inputs)) if reference is None else reference

    def estimate(self, net, context: str = "sampled") -> torch.Tensor:
        """``net``'s single-step estimate of the windows, the same contexts drawn for every network."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=mixed_precision(self.device)):
            mean, _ = impute_ensemble(net, self.xs.to(self.device), self.ms.to(self.device), self.spec,
                                      K=self.K, generator=generator, context=context, **self.inputs)
        return mean.float().cpu()

    def score(self, estimate: torch.Tensor) -> dict:
        """The NMSE of ``estimate`` on the held-back cells, and its MSE per variable (normalised units)."""
        err = ((estimate - self.xs) ** 2 * self.hs).sum(dim=(0, 2, 3, 4))
        cells = self.hs.sum(dim=(0, 2, 3, 4)).clamp(min=1)
        return dict(nmse=float(err.sum() / self.reference.sum().clamp(min=1e-12)),
                    mse_per_channel=(err / cells).tolist())

    def __call__(self, net, context: str = "sampled") -> dict:
        return self.score(self.estimate(net, context))

    def correction_weights(self, net, context: str,
                           estimate: torch.Tensor | None = None) -> tuple[list[float] | None, dict | None]:
        """The share of ``net``'s correction to its first guess that best fills the held-back cells, per variable
        (least squares, between 0 and 1, to two decimals), and the scores of the fill with those shares; ``(None,
        None)`` for a network without a first guess or where every share is 1. ``estimate``: ``net``'s
        :meth:`estimate` with ``context`` where the caller has it (an ensemble fewer to run)."""
        if getattr(net, "first_guess", None) is None:
            return None, None
        guess = self.estimate(_first_guess_only(net), context)
        estimate = self.estimate(net, context) if estimate is None else estimate
        correction, residual = estimate - guess, self.xs - guess
        dims = (0, 2, 3, 4)
        fitted = ((correction * residual * self.hs).sum(dims)
                  / (correction.square() * self.hs).sum(dims).clamp(min=1e-12)).clamp(0, 1)
        weights = [round(w, 2) for w in fitted.tolist()]
        if all(w == 1 for w in weights):
            return None, None
        return weights, self.score(guess + torch.tensor(weights).view(1, -1, 1, 1, 1) * correction)


class ImputedHeldBack(HeldBack):
    """The held-back cells of a :class:`HeldBack` estimated as imputation fills them: each validation window
    imputed with every window overlapping it (stride 1, overlaps blended), from the steps around it as training
    saw them (``windows.validation_context``, the series the classical fillers are scored on). A single window
    guesses its edge steps from one side; imputation averages the windows around each step, so scoring one
    window would rank the network below what it fills, most where the gaps move."""

    def __init__(self, held_back: HeldBack, windows, nearby_span: int = 0, flow: bool = False,
                 progress: bool = False):
        super().__init__(held_back.xs, held_back.ms, held_back.hs, {}, held_back.spec, held_back.device,
                         held_back.seed, held_back.K, held_back.reference)
        self.nearby_span, self.flow, self.progress = nearby_span, flow, progress
        window = self.xs.shape[2]
        static = held_back.inputs.get("static")
        totals = windows.totals
        self.stretches = []  # per validation window: values, observed, first step of the window, static, totals
        for series, _, places in windows.validation_context(window - 1 + nearby_span):
            for b, (sample, _, steps, *box) in places:
                cut = series[sample][(slice(None), slice(None), *box)]
                i, _, r, c = windows.validation_jobs[b]
                th, tw = cut.shape[-2:]
                own = None if totals is None else np.asarray(totals[i, :, r : r + th, c : c + tw])[None]
                self.stretches.append((np.nan_to_num(cut)[None], np.isfinite(cut)[None], steps.start,
                                       None if static is None else static[b].cpu().numpy(), own))

    def estimate(self, net, context: str = "sampled") -> torch.Tensor:
        """``net``'s imputation of the validation windows, the same contexts drawn for every network; the
        observed context's estimate is one pass, as imputation makes it."""
        stretches = tqdm(range(len(self.stretches)), desc="scoring held-back cells", disable=not self.progress,
                         leave=False)
        return torch.as_tensor(np.stack([self._imputed(net, b, context) for b in stretches]))

    def seconds(self, net) -> float:
        """About how long a fit's scoring with ``net`` takes after training: :meth:`estimate` with each context,
        the first guess alone with one (as long as the network, at most) and the training's last score (a
        window of each stretch, sampled), from the longest stretch imputed with each context and timed (the least
        of two runs)."""
        window = self.xs.shape[2]

        def windows(b):  # the windows imputation runs on stretch b: every one overlapping its validation window
            steps, start = self.stretches[b][0].shape[2], self.stretches[b][2]
            return min(steps - window, start + window - 1) - max(0, start - window + 1) + 1

        timed, taken = max(range(len(self.stretches)), key=windows), {}
        with torch.no_grad():
            self._imputed(net, timed, "observed")  # untimed: a first run of these shapes is slower
            for context in ("sampled", "observed"):
                taken[context] = min(self._timed(net, timed, context) for _ in range(2))  # others only slow a run
        each = {context: seconds / windows(timed) for context, seconds in taken.items()}  # a window's
        every = sum(windows(b) for b in range(len(self.stretches)))
        return every * (each["sampled"] + 2 * each["observed"]) + len(self.stretches) * each["sampled"]

    def _timed(self, net, b: int, context: str) -> float:
        start = time.perf_counter()
        self._imputed(net, b, context)
        return time.perf_counter() - start

    def _imputed(self, net, b: int, context: str) -> np.ndarray:
        """``net``'s imputation of validation window ``b`` from its stretch."""
        values, observed, start, static, totals = self.stretches[b]
        steps, h, w = values.shape[2:]
        window = self.xs.shape[2]
        piece = Piece((steps, h, w), (0, 0, 0, 0), ((start, start + window), (0, h), (0, w)))
        mean, _ = impute_series(net, values, observed, self.spec, window, K=1 if context == "observed" else self.K,
                                device=self.device, seed=self.seed + b, autocast=mixed_precision(self.device),
                                progress=False, static=static, piece=piece, context=context, totals=totals,
                                nearby_span=self.nearby_span, flow=self.flow)
        return mean[0]


__all__ = ["BATCH", "CONTEXT_MARGIN", "CPU_TILE", "FIELD_PERSISTENCE_PAIRS", "FLAGS", "LONG_WINDOW", "NEARBY_REACH",
           "NEVER_OBSERVED", "PERSISTENCE", "PERSISTING_FIELD", "REACH_MARGIN", "SPARSE_CONTEXT", "STEP_SHARE", "TILE",
           "WINDOWS",
           "choose_context", "choose_window", "field_persistence", "gaps_beyond_narrow_reach", "imputation_tiling",
           "long_window_pays", "needs_history", "one_step_share", "window_series",
           "offers_cycle", "offers_flow", "offers_nearby", "training_batch", "training_tile", "Engine",
           "HeldBack", "ImputeConfig", "ImputedHeldBack", "ModelConfig", "ModelMismatch", "position_fields",
           "wraps_round", "train_config"]

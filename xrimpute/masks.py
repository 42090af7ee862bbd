"""Mask specifications: how observations are structured, and contexts that copy it.

Every tensor here is a boolean observation mask ``(N, C, T, H, W)`` (True =
observed) on the unpadded grid. A :class:`MaskSpec` does three things:

* ``context(observed)`` draws a context mask inside ``observed`` with the
  *same structure* as the observing system (Principle 1 of the method: keep
  whole blocks for block data, random pixels for pixel data, ...);
* ``query(observed, context)`` says which cells enter the loss (default: all
  observed cells);
* ``cell_log_likelihood`` and ``units`` let :func:`query_coverage` compute, for
  every cell, the probability of being queried given a context (Theorem 1).
  A cell with zero probability is never learned.

Specs: :class:`Pixel`, :class:`Block`, :class:`Station`, :class:`Swath`,
:class:`TimeGap`, :class:`Patches` (alias :data:`Clouds`) and
:class:`Combined`. :func:`infer` reads the structure of a NaN pattern and
picks a spec; :func:`learnability` maps the query coverage of a spec over the
grid and :func:`warn_if_unlearnable` warns when gaps would never be learned.
Cells never observed (land, outside a station network) are a permanent mask:
they are excluded from the statistics and never queried.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

SPECS: dict[str, type[MaskSpec]] = {}
ALIASES = {"clouds": "patches", "auto": "infer"}
NOT_SAVED = {"saved": False}  # field metadata: metadata arrays that stay out of to_dict (and model files)
ZERO_COVERAGE = 1e-3  # queried in under one context in a thousand: in effect never learned


class MaskSpecError(ValueError):
    """A mask specification is unknown or breaks the context rule."""


@dataclass(frozen=True)
class MaskSpec:
    """Base class: a context sampler that follows one kind of observing system."""

    context_ratio: float = 0.7
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SPECS[cls.kind] = cls

    def __post_init__(self):
        if not 0.0 < self.context_ratio <= 1.0:
            raise MaskSpecError(f"context_ratio must be in (0, 1], got {self.context_ratio}")

    # -- sampling ---------------------------------------------------------
    def keep(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
        """Boolean ``(N, 1, T, H, W)`` (broadcastable) pattern of kept cells, before ``& observed``."""
        raise NotImplementedError

    def context(self, observed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A context mask inside ``observed`` with the structure of the observing system."""
        return observed & self.keep(tuple(observed.shape), generator, observed.device)

    def query(self, observed: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Cells that enter the loss: every observed cell (as in the paper's code)."""
        return observed

    # -- learnability -------------------------------------------------------
    def cell_log_likelihood(self, context: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Per-cell terms whose sum over a unit is ``log p(context | observed)`` there."""
        raise NotImplementedError

    def units(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Integer label ``(T, H, W)`` of the independent unit (pixel, block, ...) of each cell."""
        raise NotImplementedError

    def leave_out_log_likelihood(self, context: torch.Tensor, possible: torch.Tensor, labels: torch.Tensor,
                                 n_units: int) -> torch.Tensor:
        """``log p(context leaves unit u out | u observed as in possible)``, per window and unit ``(B, U)``.

        ``labels`` (flat, one per cell of a window) names the observing system's
        units. The default sums :meth:`cell_log_likelihood` over each unit.
        """
        ll = self.cell_log_likelihood(context, possible).double().reshape(context.shape[0], -1)
        return torch.zeros(ll.shape[0], n_units, dtype=ll.dtype).index_add_(1, labels, ll)

    # -- bookkeeping -------------------------------------------------------
    def adapted(self, train_rate: float, test_rate: float) -> MaskSpec:
        """The spec for data observed at ``test_rate`` when trained at ``train_rate``.

        Keeps the effective input fraction (context ratio x observation rate)
        equal to training (paper G.3), capped at 1.
        """
        if test_rate <= 0:
            return self
        ratio = min(1.0, self.context_ratio * train_rate / test_rate)
        return replace(self, context_ratio=ratio)

    def _for_holdout(self, keep_ratio: float) -> MaskSpec:
        """The spec whose ``keep`` holds back ``1 - keep_ratio`` of the cells, drawn anew every time step."""
        changes = {"context_ratio": keep_ratio}
        if "static" in {f.name for f in fields(self)}:
            changes["static"] = False
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able configuration (``kind`` plus fields; metadata arrays such as footprints left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    @staticmethod
    def from_dict(config: dict) -> MaskSpec:
        config = dict(config)
        kind = config.pop("kind")
        cls = SPECS.get(ALIASES.get(kind, kind))
        if cls is None:
            raise MaskSpecError(f"unknown mask kind {kind!r}; known: {sorted(SPECS)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device if generator is not None else device).to(device)


def _randn(shape, generator, device) -> torch.Tensor:
    on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=on).to(device)


def _global_labels(labels: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    """Unit labels ``(N, C, T*H*W)`` unique across windows and channels, and their number.

    ``labels`` is either one ``(T, H, W)`` labelling shared by every window, or
    ``(N, C, T, H, W)`` labels that are already unique across windows.
    """
    n, c = shape[:2]
    if labels.dim() == 3:
        per_window = int(labels.max()) + 1
        offsets = per_window * torch.arange(n * c, device=labels.device).view(n, c, 1)
        return labels.reshape(1, 1, -1) + offsets, per_window * n * c
    return labels.reshape(n, c, -1), int(labels.max()) + 1


def _unit_count(mask: torch.Tensor, labels: torch.Tensor, total: int) -> torch.Tensor:
    return torch.zeros(total, device=mask.device).index_add_(0, labels.reshape(-1), mask.reshape(-1).float())


def _whole_unit_log_likelihood(context: torch.Tensor, observed: torch.Tensor, labels: torch.Tensor,
                               ratio: float) -> torch.Tensor:
    """Per-cell log-likelihood of a context that keeps each observed unit whole with probability ``ratio``.

    A unit's log-probability (``log ratio`` if kept whole, ``log(1 - ratio)``
    if left out, ``-inf`` if cut) is spread evenly over its observed cells.
    """
    flat, total = _global_labels(labels.to(observed.device), tuple(observed.shape))
    observed_count, context_count = _unit_count(observed, flat, total), _unit_count(context, flat, total)
    kept = context_count > 0
    whole = context_count == observed_count
    unit_ll = torch.where(
        kept,
        torch.where(whole, torch.full_like(kept, math.log(ratio), dtype=torch.float), -math.inf),
        math.log1p(-ratio) if ratio < 1 else -math.inf,
    )
    unit_ll = torch.where(observed_count > 0, unit_ll, torch.where(kept, -math.inf, 0.0))
    share = (unit_ll / observed_count.clamp(min=1))[flat].reshape(observed.shape)
    stray = context & ~observed
    return torch.where(stray, -math.inf, torch.where(observed, share, 0.0))


@dataclass(frozen=True)
class Pixel(MaskSpec):
    """Independent pixels: the context keeps each observed cell with probability ``context_ratio``.

    ``static=True`` keeps the same cells in every time step of a window (for
    observing systems whose pixels do not change over time).
    """

    static: bool = False
    kind: ClassVar[str] = "pixel"

    def keep(self, shape, generator, device):
        n, _, t, h, w = shape
        return _rand((n, 1, 1 if self.static else t, h, w), generator, device) < self.context_ratio

    def cell_log_likelihood(self, context, observed):
        r = self.context_ratio
        ll = torch.where(context, math.log(r), math.log1p(-r) if r < 1 else -math.inf)
        ll = torch.where(observed, ll, torch.where(context, -math.inf, 0.0))
        if self.static:  # one draw per pixel: spread its log-probability over the window
            ll = ll / observed.shape[2]
        return ll

    def units(self, shape):
        t, h, w = shape
        labels = torch.arange(h * w).reshape(1, h, w)
        return labels.expand(t, h, w) if self.static else torch.arange(t * h * w).reshape(t, h, w)


def block_index(size: int, parts: int) -> np.ndarray:
    """Block number of each of ``size`` cells split into ``parts`` near-equal blocks."""
    if parts > size:
        raise MaskSpecError(f"cannot split {size} cells into {parts} blocks; use a smaller grid")
    return np.repeat(np.arange(parts), [len(a) for a in np.array_split(np.arange(size), parts)])


@dataclass(frozen=True)
class Block(MaskSpec):
    """Observations in whole blocks of a ``grid`` over space; the context keeps whole blocks.

    Each observed block is kept with probability ``context_ratio``, so a block
    missing from the context may or may not have been observed: every block
    keeps a positive probability of being queried (Figure 1 of the paper).
    ``static=True`` when the block pattern is fixed over the time steps of a window.
    """

    grid: tuple[int, int] = (3, 3)
    static: bool = False
    kind: ClassVar[str] = "block"

    def __post_init__(self):
        super().__post_init__()
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise MaskSpecError(f"grid must be two positive integers (rows, cols), got {self.grid}")

    def _expand(self, per_block: torch.Tensor, h: int, w: int) -> torch.Tensor:
        rows = torch.as_tensor(block_index(h, self.grid[0]), device=per_block.device)
        cols = torch.as_tensor(block_index(w, self.grid[1]), device=per_block.device)
        return per_block[..., rows, :][..., cols]

    def keep(self, shape, generator, device):
        n, _, t, h, w = shape
        per_block = _rand((n, 1, 1 if self.static else t, *self.grid), generator, device) < self.context_ratio
        return self._expand(per_block, h, w)

    def cell_log_likelihood(self, context, observed):
        return _whole_unit_log_likelihood(context, observed, self.units(tuple(observed.shape[2:])), self.context_ratio)

    def units(self, shape):
        t, h, w = shape
        g = self.grid[0] * self.grid[1]
        blocks = self._expand(torch.arange(g).reshape(*self.grid), h, w)
        steps = torch.zeros(t, 1, 1, dtype=torch.long) if self.static else torch.arange(t).reshape(t, 1, 1)
        return blocks.unsqueeze(0) + g * steps


def _as_positions(points) -> tuple[tuple[float, float], ...]:
    points = np.asarray(points, dtype=float).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    return tuple((float(a), float(b)) for a, b in points)


@dataclass(frozen=True)
class Station(Pixel):
    """Fixed stations: the context keeps a random subset of the stations that reported.

    Each observed cell is a station (co-located stations share a cell, see
    :func:`xrimpute.stations.grid_stations`). With ``static=True`` (default) a
    station is kept or dropped for all the time steps of a window, so the
    network learns every station from the others; ``static=False`` draws per
    step and so also learns to bridge a station's short outages from its
    neighbouring steps. ``context_ratio`` (default 0.7) is the share of
    stations kept. Cells that never hold a station are a permanent mask: they
    are never queried, so the model cannot learn the field between stations.
    ``positions`` lists the stations as (lat, lon) in degrees when they are
    known (:meth:`from_cf`); :meth:`cells` puts them on a grid.
    """

    static: bool = True
    positions: tuple = field(default=(), repr=False)
    kind: ClassVar[str] = "station"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "positions", _as_positions(self.positions))  # lists from JSON -> tuples

    @classmethod
    def from_cf(cls, ds, **options) -> Station:
        """The spec of a CF discrete-sampling-geometry ``timeSeries`` dataset (``lat(station)``, ``lon(station)``).

        ``options`` are the spec's fields (``context_ratio``, ``static``). Put
        the observations themselves on a grid with :func:`xrimpute.stations.grid_stations`.
        """
        from .stations import cf_positions  # the xarray-facing reader lives outside the core

        return cls(positions=cf_positions(ds), **options)

    def cells(self, lat, lon) -> np.ndarray:
        """``(H, W)`` boolean: the cells of the grid ``lat`` x ``lon`` (degrees) that hold a station."""
        if not self.positions:
            raise MaskSpecError("this Station spec has no positions; build it with Station.from_cf(ds) or "
                                "Station(positions=[(lat, lon), ...])")
        from .observe import station_cells  # shared geometry (nearest cell, longitude wrap)

        rows, cols = station_cells(lat, lon, self.positions)
        out = np.zeros((np.size(lat), np.size(lon)), dtype=bool)
        out[rows, cols] = True
        return out


def _segments(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected pieces (8-neighbours) of the True cells of each ``(H, W)`` frame, labelled 1.. across all frames."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # neighbours within a frame only
    labels, count = ndimage.label(frames.reshape(-1, *frames.shape[-2:]), structure=structure)
    return labels.reshape(frames.shape), count


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """Cells of ``(..., H, W)`` within one cell (8-neighbours) of a True cell."""
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    return (torch.nn.functional.max_pool2d(flat, 3, stride=1, padding=1) > 0).reshape(mask.shape)


@dataclass(frozen=True)
class Swath(MaskSpec):
    """Satellite swaths (any stripes): the context keeps or drops whole swath segments.

    A segment is a connected piece (8-neighbours) of the observed cells of one
    time step of one window, found by connected-component labelling with the
    variables merged. The context keeps each segment with probability
    ``context_ratio`` (default 0.7), independently per step. When a step holds
    a single segment the whole step is kept or dropped: the context then looks
    like an observation with fewer overpasses, and the cells between swaths
    keep a positive query probability. Segments are not joined across the
    grid's edges (longitude wrap).

    ``orientation`` (degrees, in the (column, row) index plane,
    counterclockwise from the column axis; 90 runs along the rows, north-south
    on a lat/lon grid) and ``width`` (cells across a stripe) describe the
    stripes. Pieces of stripe ``width`` cells long (squares in the stripes'
    frame) are the units that hold-out validation (:meth:`keep`) and the
    coverage check (:meth:`units`) work with. :func:`infer` estimates both.
    ``footprint`` holds the ``(T, H, W)`` mask made by :meth:`from_orbit` or
    :meth:`from_footprints` (metadata: not saved with a model).
    """

    orientation: float = 90.0
    width: float = 4.0
    footprint: np.ndarray | None = field(default=None, compare=False, repr=False, metadata=NOT_SAVED)
    kind: ClassVar[str] = "swath"

    def __post_init__(self):
        super().__post_init__()
        if not self.width > 0:
            raise MaskSpecError(f"width must be a positive number of cells, got {self.width}")

    def _pieces(self, h: int, w: int) -> tuple[torch.Tensor, int]:
        """Piece number ``(H, W)`` of each cell: squares of ``width`` cells in the frame of the stripes."""
        angle = math.radians(self.orientation)
        rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                    indexing="ij")
        along = cols * math.cos(angle) + rows * math.sin(angle)
        across = rows * math.cos(angle) - cols * math.sin(angle)
        along, across = (torch.floor((x - x.min()) / self.width).long() for x in (along, across))
        pieces = across * (int(along.max()) + 1) + along
        return pieces, int(pieces.max()) + 1

    def keep(self, shape, generator, device):
        n, _, t, h, w = shape
        pieces, n_pieces = self._pieces(h, w)
        per_piece = _rand((n, 1, t, n_pieces), generator, device) < self.context_ratio
        return per_piece[..., pieces.to(per_piece.device)]

    def context(self, observed, generator=None):
        labels, count = _segments(observed.any(1).cpu().numpy())
        kept = _rand((count + 1,), generator, observed.device) < self.context_ratio
        return observed & kept[torch.as_tensor(labels, dtype=torch.long, device=observed.device)].unsqueeze(1)

    def cell_log_likelihood(self, context, observed):
        labels, _ = _segments(observed.cpu().numpy())  # segments per window, channel and step
        return _whole_unit_log_likelihood(context, observed, torch.as_tensor(labels, dtype=torch.long),
                                          self.context_ratio)

    def leave_out_log_likelihood(self, context, possible, labels, n_units):
        # an observed unit next to a kept segment would have joined it: only units clear of the context
        # can have been left out, with the probability of dropping a segment
        touching = _dilate(context.any(1)).unsqueeze(1) & possible
        near = torch.zeros(context.shape[0], n_units, dtype=torch.float64).index_add_(
            1, labels, touching.reshape(context.shape[0], -1).double()) > 0
        left_out = math.log1p(-self.context_ratio) if self.context_ratio < 1 else -math.inf
        return torch.where(near, -math.inf, torch.full(near.shape, left_out, dtype=torch.float64))

    def units(self, shape):
        t, h, w = shape
        pieces, n_pieces = self._pieces(h, w)
        return pieces.unsqueeze(0) + n_pieces * torch.arange(t).reshape(t, 1, 1)

    @classmethod
    def from_mask(cls, footprint: np.ndarray, **options) -> Swath:
        """A spec with the orientation and width of the stripes in a ``(T, H, W)`` mask, which it keeps as footprint."""
        footprint = np.asarray(footprint, dtype=bool)
        stats = _spatial_statistics(footprint, np.ones(footprint.shape[1:], dtype=bool))
        return cls(**{**_swath_geometry(stats), **options}, footprint=footprint)

    @classmethod
    def from_orbit(cls, lat, lon, time, *, inclination: float = 98.7, swath_width_km: float = 1000.0,
                   orbits_per_day: float | None = None, altitude_km: float | None = None,
                   node_longitude: float = 0.0, phase: float = 0.0, step_hours: float | None = None,
                   **options) -> Swath:
        """The swath of a circular polar orbit over a grid: ``footprint`` is what it sees in each time step.

        Parameters
        ----------
        lat, lon : array_like
            Cell centres in degrees (1-D grid axes, or 2-D arrays of the same shape).
        time : array_like
            Start of each step: datetimes (``datetime64``) or hours since the orbit epoch.
            Datetimes count from the first step, as :func:`xrimpute.observe` does.
        inclination, swath_width_km, orbits_per_day, altitude_km, node_longitude, phase, step_hours
            The orbit and swath, as in :func:`xrimpute.observe.swath_mask` (which draws the mask).
        **options
            The spec's fields (``context_ratio``); orientation and width come from the mask.
        """
        from .observe import swath_mask  # shared orbit geometry

        mask = swath_mask(lat, lon, _hours(time), step_hours=step_hours, inclination=inclination,
                          swath_width_km=swath_width_km, orbits_per_day=orbits_per_day, altitude_km=altitude_km,
                          node_longitude=node_longitude, phase=phase)
        return cls.from_mask(mask, **options)

    @classmethod
    def from_footprints(cls, lat2d, lon2d, time, *, lat, lon, grid_time, **options) -> Swath:
        """The cells of a grid that Level-2 footprints cover, per time step.

        Parameters
        ----------
        lat2d, lon2d : sequence of 2-D arrays
            Pixel centres of each granule (scan lines x pixels) in degrees; NaN pixels are skipped.
        time : sequence
            Time of each granule (datetimes or hours). A granule belongs to the
            step ``k`` with ``grid_time[k] <= time < grid_time[k + 1]`` (the last
            step as long as the one before), as in :func:`xrimpute.observe.swath_mask`.
        lat, lon : array_like
            The grid's cell centres in degrees (1-D axes).
        grid_time : array_like
            Start of each time step of the grid.
        **options
            The spec's fields (``context_ratio``).

        A cell is covered when its centre lies within half a pixel diagonal of a
        pixel centre of a granule of that step.
        """
        from .observe import _cell_centres, _unit_vectors  # shared spherical geometry

        starts = _hours(grid_time)
        if starts.size < 2:
            raise MaskSpecError("grid_time needs at least two steps to tell how long a step is")
        ends = np.append(starts[1:], 2 * starts[-1] - starts[-2])
        grid_lat, grid_lon = _cell_centres(lat, lon)
        cells = _unit_vectors(grid_lat.ravel(), grid_lon.ravel())
        mask = np.zeros((starts.size, grid_lat.size), dtype=bool)
        granule_hours = _hours(time, origin=np.asarray(grid_time)[0])
        if not (len(lat2d) == len(lon2d) == len(granule_hours)):
            raise MaskSpecError(f"give one lat2d, lon2d and time per granule; got {len(lat2d)}, {len(lon2d)} and "
                                f"{len(granule_hours)}")
        for glat, glon, hour in zip(lat2d, lon2d, granule_hours):
            step = np.searchsorted(starts, hour, side="right") - 1
            if step < 0 or hour >= ends[step]:
                continue  # outside the grid's time span
            glat, glon = np.asarray(glat, dtype=float), np.asarray(glon, dtype=float)
            if glat.ndim != 2 or glat.shape != glon.shape:
                raise MaskSpecError(f"each footprint needs 2-D lat and lon arrays of the same shape, got "
                                    f"{glat.shape} and {glon.shape}")
            points = _unit_vectors(glat, glon)
            spacing = [np.linalg.norm(np.diff(points, axis=a), axis=-1) for a in (0, 1)]
            reach = 0.5 * np.hypot(*[np.nanmedian(d) if d.size else 0.0 for d in spacing])
            finite = np.isfinite(points).all(-1)
            if not finite.any():
                continue
            distance, _ = cKDTree(points[finite]).query(cells, distance_upper_bound=reach * 1.001)
            mask[step] |= np.isfinite(distance)
        return cls.from_mask(mask.reshape(starts.size, *grid_lat.shape), **options)


def _hours(time, origin=None) -> np.ndarray:
    """Hours since ``origin`` (default: the first value) of datetimes; plain numbers are hours already."""
    values = np.asarray(time)
    if np.issubdtype(values.dtype, np.datetime64):
        start = values.ravel()[0] if origin is None else np.asarray(origin)
        if not np.issubdtype(start.dtype, np.datetime64):
            raise MaskSpecError("give the granules' and the grid's times both as datetimes or both as hours")
        return (values - start) / np.timedelta64(1, "h")
    if np.issubdtype(values.dtype, np.number):
        if origin is not None and np.issubdtype(np.asarray(origin).dtype, np.datetime64):
            raise MaskSpecError("give the granules' and the grid's times both as datetimes or both as hours")
        return values.astype(float)
    raise MaskSpecError(f"times must be datetime64 values or hours, got dtype {values.dtype}")


@dataclass(frozen=True)
class TimeGap(MaskSpec):
    """Whole time steps missing: the context keeps each observed time step with probability ``context_ratio``.

    Default ``context_ratio`` 0.7. A dropped step may or may not have been
    observed, so every step of a window keeps a positive query probability and
    the network learns to fill whole steps from their neighbours. For steps
    missing on top of another structure use :class:`Combined` (``infer`` does).
    """

    kind: ClassVar[str] = "timegap"

    def keep(self, shape, generator, device):
        n, _, t, h, w = shape
        return (_rand((n, 1, t, 1, 1), generator, device) < self.context_ratio).expand(n, 1, t, h, w)

    def cell_log_likelihood(self, context, observed):
        return _whole_unit_log_likelihood(context, observed, self.units(tuple(observed.shape[2:])), self.context_ratio)

    def units(self, shape):
        t, h, w = shape
        return torch.arange(t).reshape(t, 1, 1).expand(t, h, w)


HALF_LAG_PER_SIGMA = 2 * math.sqrt(math.log(1 / math.sin(math.pi / 4)))
"""Lag, in kernel standard deviations, at which a Gaussian-smoothed field thresholded at its median
decorrelates to 1/2: the indicator's correlation is (2/pi) arcsin(rho) and rho(d) = exp(-d^2 / (4 sigma^2))."""


@dataclass(frozen=True)
class Patches(MaskSpec):
    """Spatially coherent gaps (clouds): the context drops coherent random patches of the observed cells.

    The patches come from a smooth Gaussian random field, drawn anew for every
    time step, thresholded to keep ``context_ratio`` (default 0.7) of the cells.
    ``length`` is the patches' correlation length in cells: the lag at which
    the autocorrelation of the keep/drop pattern falls to 1/2. :func:`infer`
    measures it on the data's mask, so dropped patches are the size of the gaps.
    The coverage check treats square tiles of ``length`` cells as independent
    units, each dropped whole with probability ``1 - context_ratio`` (an
    approximation: the field is nearly constant over such a tile).
    """

    length: float = 4.0
    kind: ClassVar[str] = "patches"

    def __post_init__(self):
        super().__post_init__()
        if not self.length > 0:
            raise MaskSpecError(f"length must be a positive number of cells, got {self.length}")

    def keep(self, shape, generator, device):
        n, _, t, h, w = shape
        sigma = self.length / HALF_LAG_PER_SIGMA
        pad = int(math.ceil(3 * sigma))  # so that the periodic FFT does not tie opposite edges together
        size = (h + 2 * pad, w + 2 * pad)
        noise = _randn((n * t, *size), generator, device)
        freq_y = torch.fft.fftfreq(size[0], device=device)[:, None]
        freq_x = torch.fft.rfftfreq(size[1], device=device)[None, :]
        smoothing = torch.exp(-2 * (math.pi * sigma) ** 2 * (freq_y**2 + freq_x**2))
        smooth = torch.fft.irfft2(torch.fft.rfft2(noise) * smoothing, s=size)[:, pad : pad + h, pad : pad + w]
        k = min(max(1, round(self.context_ratio * h * w)), h * w)
        threshold = smooth.reshape(n * t, -1).kthvalue(k, dim=1).values
        return (smooth <= threshold.view(-1, 1, 1)).reshape(n, 1, t, h, w)

    def cell_log_likelihood(self, context, observed):
        r = self.context_ratio
        flat, total = _global_labels(self.units(tuple(observed.shape[2:])).to(observed.device), tuple(observed.shape))
        per_tile = _unit_count(observed, flat, total).clamp(min=1)[flat].reshape(observed.shape)
        ll = torch.where(context, math.log(r), math.log1p(-r) if r < 1 else -math.inf) / per_tile
        return torch.where(observed, ll, torch.where(context, -math.inf, 0.0))

    def units(self, shape):
        t, h, w = shape
        side = max(1, round(self.length))
        rows, cols = torch.arange(h) // side, torch.arange(w) // side
        tiles = rows[:, None] * (int(cols.max()) + 1) + cols[None, :]
        return tiles.unsqueeze(0) + (int(tiles.max()) + 1) * torch.arange(t).reshape(t, 1, 1)


Clouds = Patches
"""Alias of :class:`Patches` (``mask="clouds"`` works too)."""


def _spread(ratios: list[float], target: float) -> list[float]:
    """Ratios times a common factor, each at most 1, whose product is ``target`` (in log space)."""
    logs, goal = np.log(ratios), math.log(target)
    order = np.argsort(-logs)  # the parts nearest 1 reach it first
    for capped in range(len(logs)):
        rest = order[capped:]
        shift = (goal - logs[rest].sum()) / len(rest)
        if (logs[rest] + shift <= 0).all():
            out = np.zeros_like(logs)
            out[rest] = logs[rest] + shift
            return [float(r) for r in np.exp(out)]
    return [1.0] * len(ratios)


@dataclass(frozen=True, init=False)
class Combined(MaskSpec):
    """Several structures at once (e.g. swaths under clouds): the context is the intersection of the parts' contexts.

    ``Combined(Swath(), Patches())``: each part draws its own context inside the
    observed cells and a cell is in the context when every part keeps it, so
    ``context_ratio`` is the product of the parts' ratios. Giving
    ``context_ratio`` scales the parts' ratios by a common factor to reach it
    (parts that would pass 1 stay at 1 and the others make up the rest). A
    cell is left out when any part drops it, which the coverage check uses.
    """

    parts: tuple = ()
    kind: ClassVar[str] = "combined"

    def __init__(self, *specs: MaskSpec, parts=(), context_ratio: float | None = None):
        specs = tuple(MaskSpec.from_dict(p) if isinstance(p, dict) else p for p in (specs or tuple(parts)))
        if len(specs) < 2 or not all(isinstance(p, MaskSpec) for p in specs):
            raise MaskSpecError("Combined needs two or more mask specs, e.g. Combined(Swath(), Patches())")
        if context_ratio is not None:
            if not 0.0 < context_ratio <= 1.0:
                raise MaskSpecError(f"context_ratio must be in (0, 1], got {context_ratio}")
            ratios = _spread([p.context_ratio for p in specs], context_ratio)
            specs = tuple(replace(p, context_ratio=r) for p, r in zip(specs, ratios))
        object.__setattr__(self, "parts", specs)
        object.__setattr__(self, "context_ratio", math.prod(p.context_ratio for p in specs))

    @property
    def label(self) -> str:
        return "+".join(p.kind for p in self.parts)

    def keep(self, shape, generator, device):
        keep = self.parts[0].keep(shape, generator, device)
        for part in self.parts[1:]:
            keep = keep & part.keep(shape, generator, device)
        return keep

    def context(self, observed, generator=None):
        context = self.parts[0].context(observed, generator)
        for part in self.parts[1:]:
            context = context & part.context(observed, generator)
        return context

    def cell_log_likelihood(self, context, observed):
        """Cell by cell, as if the parts kept each cell independently (kept with the product of the ratios)."""
        r = self.context_ratio
        ll = torch.where(context, math.log(r), math.log1p(-r) if r < 1 else -math.inf)
        return torch.where(observed, ll, torch.where(context, -math.inf, 0.0))

    def leave_out_log_likelihood(self, context, possible, labels, n_units):
        # left out when any part drops the unit: 1 - prod(1 - L_part)
        kept_by_all = torch.ones(context.shape[0], n_units, dtype=torch.float64)
        for part in self.parts:
            kept_by_all = kept_by_all * -torch.expm1(part.leave_out_log_likelihood(context, possible, labels, n_units))
        return torch.log1p(-kept_by_all)

    def units(self, shape):
        labels = self.parts[0].units(shape).reshape(-1)
        for part in self.parts[1:]:
            other = part.units(shape).reshape(-1)
            labels = torch.unique(labels * (int(other.max()) + 1) + other, return_inverse=True)[1]
        return labels.reshape(shape)

    def adapted(self, train_rate, test_rate):
        if test_rate <= 0:
            return self
        return Combined(*self.parts, context_ratio=min(1.0, self.context_ratio * train_rate / test_rate))

    def _for_holdout(self, keep_ratio):
        share = keep_ratio ** (1 / len(self.parts))
        return Combined(*[p._for_holdout(share) for p in self.parts])

    def to_dict(self):
        return {"kind": self.kind, "parts": [p.to_dict() for p in self.parts]}


def holdout_keep(spec: MaskSpec, shape: tuple[int, ...], fraction: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Cells kept for training when ``fraction`` of observations is held back for validation.

    Held-back cells follow the spec's structure (whole blocks for block data),
    drawn anew for every time step so that no cell is held back for good.
    """
    if fraction <= 0:
        return torch.ones(shape, dtype=torch.bool)
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    return spec._for_holdout(1.0 - fraction).keep(shape, generator, "cpu")


def resolve(mask, observed: np.ndarray | None = None, verbose: bool = True) -> MaskSpec:
    """A spec from a name, a dict or a spec.

    Names: ``"infer"`` (read the structure from ``observed`` with :func:`infer`;
    ``"auto"`` is an alias), ``"pixel"``, ``"block"``, ``"station"``,
    ``"swath"``, ``"timegap"``, ``"patches"`` (alias ``"clouds"``). With
    ``observed`` given, ``"block"`` finds the block grid, ``"swath"`` the
    stripes' orientation and width and ``"patches"`` the gaps' correlation length.
    """
    if isinstance(mask, MaskSpec):
        return mask
    if isinstance(mask, dict):
        return MaskSpec.from_dict(mask)
    name = ALIASES.get(mask, mask) if isinstance(mask, str) else None
    if name == "infer":
        if observed is None:
            raise MaskSpecError(f"mask={mask!r} needs the observation mask to look at")
        found = infer(observed)
        if verbose:
            print(f"xrimpute: mask={mask!r} chose {found.spec!r}. {found.explanation}")
        return found.spec
    if name in SPECS and name != "combined":
        if observed is not None and name in ("block", "swath", "patches"):
            return _fitted(name, _as_mask(observed))
        return SPECS[name]()
    names = sorted(set(SPECS) - {"combined"} | set(ALIASES) | {"infer"})
    raise MaskSpecError(
        f"unknown mask {mask!r}; use one of {names} or a MaskSpec "
        "(e.g. xrimpute.masks.Block(grid=(3, 3)) or xrimpute.masks.Combined(Swath(), Patches()))"
    )


def _fitted(name: str, observed: np.ndarray) -> MaskSpec:
    """The spec ``name`` with its shape parameters read from the observations."""
    if name == "block":
        found = find_block_grid(observed)
        return Block(grid=found[0], static=found[1]) if found is not None else Block()
    frames = _chunks(observed.any(1)).reshape(-1, *observed.shape[-2:])
    stats = _spatial_statistics(frames, frames.any(0))
    return Swath(**_swath_geometry(stats)) if name == "swath" else Patches(length=_patch_length(stats))


def _frames(observed: np.ndarray) -> np.ndarray:
    """All frames ``(N * T, H, W)`` of an ``(N, C, T, H, W)`` mask (channels merged with any)."""
    return observed.any(axis=1).reshape(-1, *observed.shape[-2:])


def _edges(size: int, parts: int) -> np.ndarray:
    """Start of each of ``parts`` near-equal blocks of ``size`` cells, and the end."""
    return np.r_[0, np.cumsum([len(a) for a in np.array_split(np.arange(size), parts)])]


def find_block_grid(observed: np.ndarray, max_blocks: int = 8, purity: float = 0.98):
    """``((rows, cols), static)`` if the observed cells come in whole blocks of a grid, else None.

    A grid fits when nearly every (frame, block) is fully observed or fully
    missing among cells that are ever observed (so land or padding does not
    break blocks), counting frames with gaps only (empty or complete frames
    fit any grid). The coarsest fitting grid that is not trivial wins.
    """
    frames = _frames(observed)
    ever = frames.any(axis=0)
    _, h, w = frames.shape
    seen = frames[:, ever].sum(1)
    with_gaps = (seen > 0) & (seen < ever.sum())
    if not with_gaps.any():
        return None

    def integral(images):  # summed-area tables: any block's count in four lookups
        return np.pad(images.astype(np.int32).cumsum(-2).cumsum(-1), [(0, 0)] * (images.ndim - 2) + [(1, 0), (1, 0)])

    def block_sums(table, rows, cols):
        r, c = _edges(h, rows), _edges(w, cols)
        return (table[..., r[1:], :][..., c[1:]] - table[..., r[:-1], :][..., c[1:]]
                - table[..., r[1:], :][..., c[:-1]] + table[..., r[:-1], :][..., c[:-1]])

    grids = [(rows, cols) for rows in range(1, max_blocks + 1) for cols in range(1, max_blocks + 1)
             if rows * cols >= 2 and rows <= h and cols <= w]
    ever_table = integral(ever)
    batch = max(1, int(2e7 // (h * w)))  # bounded memory on large grids
    counts = {g: [] for g in grids}
    for first in range(0, len(frames), batch):
        table = integral(frames[first : first + batch] & ever)
        for g in grids:
            counts[g].append(block_sums(table, *g))
    for rows, cols in grids:
        count, size = np.concatenate(counts[(rows, cols)]), block_sums(ever_table, rows, cols)
        whole = ((count == 0) | (count == size))[with_gaps][:, size >= 2]  # one-cell blocks are whole anyway
        partial = ~((count == 0).all(axis=0) | (count == size).all(axis=0))
        if whole.size and whole.mean() >= purity and partial.any():
            per_window = count.reshape(observed.shape[0], observed.shape[2], -1)
            static = bool((per_window == per_window[:, :1]).all())
            return (rows, cols), static
    return None


def infer_pixel_or_block(observed: np.ndarray) -> tuple[MaskSpec, str]:
    """Pick ``Pixel`` or ``Block`` from the NaN pattern, with a one-line reason."""
    grid = find_block_grid(observed)
    if grid is not None:
        (rows, cols), static = grid
        when = "fixed over time" if static else "changing between time steps"
        return Block(grid=(rows, cols), static=static), f"observations come in whole blocks of a {rows}x{cols} grid, {when}"
    frames = _frames(observed)
    rate = frames[:, frames.any(axis=0)].mean()
    return Pixel(), f"no block structure found; {rate:.0%} of cells observed, treated as independent pixels"


def query_coverage(
    spec: MaskSpec,
    observed: torch.Tensor | np.ndarray,
    observing: MaskSpec | None = None,
    n_draws: int = 256,
    seed: int = 0,
    return_gaps: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Probability that each cell is queried given a context drawn by ``spec`` (Theorem 1).

    ``observed`` holds observation masks ``(N, C, T, H, W)`` of training windows;
    ``observing`` describes how observations arise (its ``units`` are the
    independent pieces of the observing system; default: ``spec`` itself).
    For a context drawn from a random window, a cell outside the context is a
    query exactly when its unit was observed; by Bayes with the unit's
    observation frequency ``q`` and the context's likelihood ``L`` of leaving
    the whole unit out, that probability is ``q L / (q L + 1 - q)``.

    A gap cell in a unit that the context does reach is weighed the same way
    at the cell level: its frequency of being observed when its unit is,
    against the spec's likelihood of leaving that one cell out (zero for a
    block context, which keeps whole blocks).

    Returns ``(T, H, W)``: the mean of that probability (times how often the
    cell is observed when its unit is) over draws in which the cell is a gap of
    the window the context came from, which is the situation of imputation.
    Zero means the gap is never learned; cells never in a gap get 1. With
    ``return_gaps``, also the number of draws in which each cell was a gap.
    """
    observing = observing or spec
    observed = torch.as_tensor(np.asarray(observed)).bool() if not torch.is_tensor(observed) else observed.bool()
    n, c, t, h, w = observed.shape
    frames = observed.reshape(n * c, 1, t, h, w)
    labels = observing.units((t, h, w)).reshape(-1)
    n_units = int(labels.max()) + 1

    def unit_sum(x):  # (B, U) sums of per-cell values over units
        return torch.zeros(x.shape[0], n_units, dtype=x.dtype).index_add_(1, labels, x.reshape(x.shape[0], -1))

    unit_seen = unit_sum(frames.float()) > 0
    unit_rate = unit_seen.float().mean(0)  # q: how often each unit is observed
    cell_rate = frames.float().sum(0).reshape(-1) / unit_seen.float().sum(0).clamp(min=1)[labels]
    ever = frames.any(0, keepdim=True)  # what a unit looks like when it is observed

    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n * c, (n_draws,), generator=generator)
    context = spec.context(frames[picks], generator)
    unit_in_context = unit_sum(context.float()) > 0
    possible = ever.expand_as(context)

    def posterior(rate, loglik):  # P(observed | left out of the context), by Bayes
        odds = torch.where(rate < 1, rate / (1 - rate).clamp(min=1e-300), math.inf)
        return torch.sigmoid(torch.log(odds) + loglik).nan_to_num(0.0)

    # units left out: the log-likelihood of leaving the whole unit out, had it been observed
    unit_posterior = posterior(unit_rate.double(), spec.leave_out_log_likelihood(context, possible, labels, n_units))
    # gap cells of units the context reaches (so observed): the same, one cell at a time
    cells = torch.arange(t * h * w)
    cell_posterior = posterior(cell_rate.double(), spec.leave_out_log_likelihood(context, possible, cells, t * h * w))
    per_cell = torch.where(unit_in_context[:, labels], cell_posterior,
                           unit_posterior[:, labels] * cell_rate.double())
    gap = ~frames[picks].reshape(n_draws, -1)
    coverage = (per_cell * gap).sum(0) / gap.sum(0).clamp(min=1)
    coverage = torch.where(gap.any(0), coverage, 1.0).reshape(t, h, w).float()
    return (coverage, gap.sum(0).reshape(t, h, w)) if return_gaps else coverage


# --- reading the structure of a NaN pattern ------------------------------------------------------


def _as_mask(obj_or_mask) -> np.ndarray:
    """Boolean ``(N, C, T, H, W)`` observation mask of a cube (xarray) or of an array-like mask."""
    if hasattr(obj_or_mask, "dims") and hasattr(obj_or_mask, "coords"):
        from .cube import to_array  # xarray input only: the statistics below are plain numpy

        return np.isfinite(to_array(obj_or_mask)[0])
    mask = obj_or_mask.cpu().numpy() if torch.is_tensor(obj_or_mask) else np.asarray(obj_or_mask)
    if mask.ndim != 5:
        raise MaskSpecError(f"expected an xarray cube or a boolean (N, C, T, H, W) mask, got an array of shape "
                            f"{mask.shape}")
    return mask.astype(bool, copy=False)


def _chunks(frames: np.ndarray, max_frames: int = 512, length: int = 16) -> np.ndarray:
    """``(M, L, H, W)`` runs of consecutive frames of ``(N, T, H, W)``, at most ``max_frames`` in all, spread out."""
    n, t = frames.shape[:2]
    if n * t <= max_frames:
        return frames
    length = min(length, t)
    starts = [(i, s) for i in range(n) for s in range(0, t - length + 1, length)]
    picks = np.unique(np.linspace(0, len(starts) - 1, max(1, max_frames // length)).round().astype(int))
    return np.stack([frames[i, s : s + length] for i, s in (starts[p] for p in picks)])


def _percent(share: float) -> str:
    return f"{share:.1%}" if 0 < share < 0.01 or 0.99 < share < 1 else f"{share:.0%}"


def _evenly(count: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(int))


def _neighbour_correlation(maps: np.ndarray) -> float:
    """Correlation of the values of horizontally and vertically adjacent cells of ``(M, H, W)`` maps."""
    z = maps - maps.mean(axis=(1, 2), keepdims=True)
    variance = (z * z).mean()
    if variance == 0:
        return math.nan
    return float(((z[:, 1:] * z[:, :-1]).mean() + (z[:, :, 1:] * z[:, :, :-1]).mean()) / 2 / variance)


def _persistence(frames: np.ndarray, valid: np.ndarray, partial: np.ndarray, most: int = 64) -> float:
    """Mean correlation over valid cells between consecutive frames that both have gaps (1: fixed pattern)."""
    pairs = np.argwhere(partial[:, :-1] & partial[:, 1:])
    if not len(pairs):
        return math.nan
    pairs = pairs[_evenly(len(pairs), most)]
    a = frames[pairs[:, 0], pairs[:, 1]][:, valid].astype(float)
    b = frames[pairs[:, 0], pairs[:, 1] + 1][:, valid].astype(float)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))).mean())


def _autocorrelation(frames: np.ndarray, valid: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation ``(2L + 1, 2L + 1)`` over lags of the observed indicator, over valid cells only."""
    h, w = valid.shape
    shape = (2 * h, 2 * w)  # zero padding: no wrap-around
    v = valid.astype(float)
    pairs = np.fft.irfft2(np.abs(np.fft.rfft2(v, s=shape)) ** 2, s=shape)
    numerator, variance = np.zeros(shape), 0.0
    for frame in frames:
        z = (frame - frame[valid].mean()) * v
        numerator += np.fft.irfft2(np.abs(np.fft.rfft2(z, s=shape)) ** 2, s=shape)
        variance += (z * z).sum() / v.sum()
    rho = np.where(pairs > 0.5, numerator / np.maximum(variance * pairs, 1e-12), 0.0)
    rho = np.fft.fftshift(rho)
    return rho[h - max_lag : h + max_lag + 1, w - max_lag : w + max_lag + 1]


def _spatial_statistics(frames: np.ndarray, valid: np.ndarray, most: int = 48) -> dict:
    """Neighbour correlation, correlation lengths, orientation and segments of frames ``(F, H, W)`` with gaps.

    The correlation lengths are the half-axes of the region around lag 0 where
    the indicator's autocorrelation stays above 1/2 (from its second moments):
    the half-width of a stripe across it, half its length along it.
    """
    counts = frames[:, valid].sum(1)
    frames = frames[(counts > 0) & (counts < valid.sum())]
    if not len(frames):
        return dict(neighbour_correlation=math.nan, major=0.0, minor=0.0, orientation=90.0, anisotropy=1.0,
                    segments=0.0)
    h, w = valid.shape
    most = max(4, min(most, int(2e7 // (h * w))))  # bounded work on large grids
    frames = frames[_evenly(len(frames), most)]
    max_lag = max(1, min(min(h, w) // 2, 64))
    rho = _autocorrelation(frames, valid, max_lag)
    centre = max_lag
    neighbours = [rho[centre, centre + 1], rho[centre + 1, centre], rho[centre + 1, centre + 1],
                  rho[centre + 1, centre - 1]]
    lobe, _ = ndimage.label(rho >= 0.5)
    dy, dx = np.nonzero(lobe == lobe[centre, centre])
    dy, dx = dy - centre, dx - centre
    moments = np.array([[np.mean(dx * dx), np.mean(dx * dy)], [np.mean(dx * dy), np.mean(dy * dy)]])
    eigenvalues, eigenvectors = np.linalg.eigh(moments)
    # a uniformly filled ellipse with half-axes a > b has second moments a^2/4 and b^2/4
    major, minor = 2 * np.sqrt(np.maximum(eigenvalues[::-1], 0.0))
    orientation = float(np.degrees(np.arctan2(eigenvectors[1, 1], eigenvectors[0, 1])) % 180)
    labels, _ = _segments(frames)
    segments = [len(np.unique(f)) - 1 for f in labels]
    return dict(neighbour_correlation=float(np.mean(neighbours)), major=float(major), minor=float(minor),
                orientation=orientation, anisotropy=float(major / max(minor, 0.5)),
                segments=float(np.median(segments)))


def _swath_geometry(stats: dict) -> dict:
    """Swath fields from spatial statistics: a stripe of width w has a half-lag of w / 2 across it."""
    return dict(orientation=round(stats["orientation"], 1), width=round(max(1.0, 2 * stats["minor"]), 1))


def _patch_length(stats: dict) -> float:
    return round(max(1.0, math.sqrt(max(stats["major"], 0.5) * max(stats["minor"], 0.5))), 1)


def _statistics(frames: np.ndarray) -> dict:
    """Statistics of runs of frames ``(M, L, H, W)`` that tell observing systems apart."""
    valid = frames.any(axis=(0, 1))
    if not valid.any():
        raise MaskSpecError("no cell is ever observed: there is no structure to read (and nothing to learn)")
    fill = frames[:, :, valid].mean(-1)
    empty, full = fill == 0, fill == 1
    partial = ~empty & ~full
    ever = frames.any(1)
    reporting = frames.sum(axis=(1, 2, 3)) / np.maximum(frames.shape[1] * ever.sum(axis=(1, 2)), 1)
    stats = dict(
        never_observed=float(1 - valid.mean()),
        observed_fraction=float(fill.mean()),
        empty_frames=float(empty.mean()),
        empty_count=int(empty.sum()),
        partial_frames=float(partial.mean()),
        fixed_share=float(ever.mean()),  # share of the grid a run ever sees (small for stations)
        fixed_neighbours=_neighbour_correlation(ever.astype(float)),
        reporting=float(reporting[ever.any(axis=(1, 2))].mean()),
        persistence=_persistence(frames, valid, partial),
    )
    stats.update(_spatial_statistics(frames[partial], valid))
    return stats


@dataclass(frozen=True)
class Inference:
    """What :func:`infer` read from a NaN pattern.

    ``spec`` is the mask specification to train with, ``kind`` its name
    (``"pixel"``, ``"block"``, ``"station"``, ``"swath"``, ``"timegap"``,
    ``"patches"``, or parts joined by ``+`` such as ``"pixel+timegap"``),
    ``evidence`` the statistics behind the choice and ``explanation`` a
    paragraph saying why.
    """

    spec: MaskSpec
    kind: str
    evidence: dict
    explanation: str

    def __str__(self) -> str:
        return self.explanation


def infer(obj_or_mask, max_frames: int = 512) -> Inference:
    """Read the observing system from a NaN pattern and pick the mask specification that copies it.

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
        ``spec``, ``kind``, ``evidence`` and ``explanation``.

    Notes
    -----
    Cells never observed are a permanent mask (land, no station): reported as
    ``evidence["never_observed"]`` and left out of every statistic. Then, in
    order: no gaps at all; whole steps missing and the rest complete
    (:class:`TimeGap`); whole blocks of a grid (:class:`Block`); a fixed set of
    isolated cells (:class:`Station`); no spatial correlation between
    neighbours (:class:`Pixel`); coherent gaps that move between steps in a
    few stripes or elongated pieces (:class:`Swath`), or that persist
    (:class:`Patches`). Steps missing entirely on top of another structure
    add a :class:`TimeGap` part (:class:`Combined`).
    """
    observed = _as_mask(obj_or_mask)
    frames = _chunks(observed.any(1), max_frames)
    stats = _statistics(frames)
    evidence = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
    persistence = stats["persistence"] if math.isfinite(stats["persistence"]) else 0.0
    isolated = not stats["fixed_neighbours"] >= 0.3  # the cells a run sees are scattered, not in areas
    stations = isolated and stats["fixed_share"] < 0.25 and stats["reporting"] >= 0.5
    rate = f"{stats['observed_fraction']:.0%} of the cells are observed"
    if stats["partial_frames"] == 0 and stats["empty_frames"] == 0:
        if stations:
            spec, why = Station(), ("the same isolated cells are observed at every step and the others never "
                                    "(a station network without outages): there are no gaps to learn among them")
        elif isolated:
            spec, why = Pixel(static=True), ("the same scattered cells are observed at every step and the others "
                                             "never: there are no gaps to learn among them")
        else:
            spec, why = Pixel(), "every cell that is ever observed is observed at every step: there are no gaps"
    elif stats["partial_frames"] <= 0.02 and stats["empty_frames"] > 0:
        spec = TimeGap()
        why = (f"whole time steps are missing ({stats['empty_frames']:.0%} of the steps) and the other steps are "
               "complete; contexts keep a random subset of the observed steps")
    elif stations and persistence >= 0.5:
        spec = Station()
        why = (f"a fixed set of isolated cells is observed ({_percent(stats['fixed_share'])} of the grid, "
               f"reporting {stats['reporting']:.0%} of the steps): a station network; contexts keep a random "
               "subset of the stations, and the field between stations cannot be learned")
    elif (grid := find_block_grid(frames[:, None])) is not None:
        (rows, cols), static = grid
        evidence["block_grid"] = [rows, cols]
        spec = Block(grid=(rows, cols), static=static)
        why = (f"the observed cells come in whole blocks of a {rows}x{cols} grid, "
               f"{'fixed over time' if static else 'changing between time steps'}; contexts keep a random subset "
               "of the observed blocks")
    elif not stats["neighbour_correlation"] >= 0.2:
        static = persistence >= 0.9
        spec = Pixel(static=static)
        why = (f"neighbouring cells are observed independently (correlation {stats['neighbour_correlation']:.2f})"
               f"{', the same cells at every step' if static else ''} and {rate}; contexts keep each observed "
               "cell at random")
    elif stats["anisotropy"] >= 2.5 or (persistence < 0.4 and stats["segments"] <= 3):
        spec = Swath(**_swath_geometry(stats))
        why = (f"the observed cells form about {stats['segments']:g} connected piece(s) per step "
               f"(elongated {stats['anisotropy']:.1f}:1, about {spec.width:g} cells wide, oriented "
               f"{spec.orientation:g} deg) that move between steps (persistence {persistence:.2f}), like satellite "
               "swaths; contexts keep or drop whole swath segments")
    else:
        spec = Patches(length=_patch_length(stats))
        why = (f"gaps are spatially coherent (neighbour correlation {stats['neighbour_correlation']:.2f}, "
               f"correlation length about {spec.length:g} cells) and persist over time (persistence "
               f"{persistence:.2f}), like clouds; contexts drop coherent random patches of that size")
    if spec.kind in ("pixel", "block", "station", "patches") and stats["empty_frames"] >= 0.05 \
            and stats["empty_count"] >= 2:
        spec = Combined(spec, TimeGap())
        why += (f"; besides, {stats['empty_frames']:.0%} of the time steps are missing entirely, so contexts also "
                "drop whole steps")
    kind = spec.label if isinstance(spec, Combined) else spec.kind
    never = stats["never_observed"]
    permanent = (f" {_percent(never)} of the cells are never observed: a permanent mask (such as land), left out of "
                 "these statistics, never queried, and left NaN by impute." if never > 0 else "")
    explanation = f"The NaN pattern looks like {kind} observations: {why}.{permanent}"
    return Inference(spec, kind, evidence, explanation)


# --- learnability: where does a spec leave gaps unlearned? -----------------------------------------


def _windows(observed: np.ndarray, window: int, most: int) -> np.ndarray:
    """Up to ``most`` non-overlapping windows ``(M, 1, window, H, W)`` of the series, variables merged."""
    merged = observed.any(1)
    n, t = merged.shape[:2]
    window = min(window, t)
    starts = [(i, s) for i in range(n) for s in range(0, t - window + 1, window)]
    return np.stack([merged[i, s : s + window] for i, s in (starts[p] for p in _evenly(len(starts), most))])[:, None]


@dataclass(frozen=True)
class Learnability:
    """Query coverage of a spec over the grid (see :func:`learnability`)."""

    coverage: np.ndarray  # (H, W): mean query probability of gap cells over a window's steps; NaN never observed
    spec: MaskSpec
    observing: MaskSpec
    zero_share: float  # share of the cells ever observed with (near) zero coverage: never learned
    low_share: float  # ... with coverage below ``low``: learned slowly
    never_share: float  # share of the grid never observed (permanent mask)
    low: float

    def worst_regions(self, count: int = 3) -> list[dict]:
        """The largest connected regions of coverage below ``low``: index ranges, size and mean coverage."""
        poor = np.nan_to_num(self.coverage, nan=1.0) < self.low
        labels, found = ndimage.label(poor)
        regions = []
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[box] == index
            regions.append(dict(rows=(box[0].start, box[0].stop - 1), cols=(box[1].start, box[1].stop - 1),
                                cells=int(inside.sum()), coverage=float(self.coverage[box][inside].mean())))
        return sorted(regions, key=lambda r: (-r["cells"], r["coverage"]))[:count]


def learnability(spec: MaskSpec, observed, window: int, *, observing: MaskSpec | None = None, low: float = 0.05,
                 max_windows: int = 256, n_draws: int = 256, seed: int = 0) -> Learnability:
    """Map over the grid the probability that a gap is queried given a context (Theorem 1).

    Parameters
    ----------
    spec : MaskSpec
        The context sampler to check.
    observed : array_like or xarray object
        Boolean ``(N, C, T, H, W)`` mask or a cube with NaN gaps (variables merged).
    window : int
        Time steps per training window.
    observing : MaskSpec, optional
        How observations arise (its units are the observing system's pieces);
        default: what :func:`infer` reads from ``observed``.
    low : float
        Coverage under which a cell counts as poorly covered (learned slowly).
    max_windows, n_draws, seed
        Windows of the series looked at (non-overlapping, spread out) and
        contexts drawn (see :func:`query_coverage`).

    Returns
    -------
    Learnability
        ``coverage`` ``(H, W)``: the mean over a window's steps of
        :func:`query_coverage`, each step weighed by how often the cell is a
        gap there (NaN where never observed, 1 where never a gap), and the
        shares of cells at zero coverage (below :data:`ZERO_COVERAGE`, 1e-3:
        queried in under one context in a thousand), below ``low`` and never observed.
    """
    observed = _as_mask(observed)
    observing = observing or infer(observed).spec
    windows = _windows(observed, window, max_windows)
    per_step, gaps = query_coverage(spec, windows, observing=observing, n_draws=n_draws, seed=seed,
                                    return_gaps=True)
    gaps = gaps.double()  # weigh each step of the window by how often the cell is a gap there
    coverage = ((per_step * gaps).sum(0) / gaps.sum(0).clamp(min=1)).numpy()
    coverage = np.where(gaps.sum(0).numpy() > 0, coverage, 1.0)  # never a gap: nothing to learn
    valid = windows.any(axis=(0, 1, 2))  # observed in the windows looked at
    coverage = np.where(valid, coverage, np.nan)
    share = (lambda cells: float(cells[valid].mean())) if valid.any() else (lambda cells: 0.0)
    return Learnability(coverage=coverage.astype(np.float32), spec=spec, observing=observing,
                        zero_share=share(coverage < ZERO_COVERAGE), low_share=share(coverage < low),
                        never_share=float(1 - observed.any(axis=(0, 1, 2)).mean()), low=low)


def warn_if_unlearnable(spec: MaskSpec, observed, window: int, *, max_windows: int = 32, n_draws: int = 32,
                        seed: int = 0) -> Learnability:
    """Warn (UserWarning) when ``spec`` leaves gap cells with zero query probability, and say which spec fixes it.

    A quick version of :func:`learnability` on a few windows, run by
    :meth:`xrimpute.CtxDiffModel.fit`; the observing system is what
    :func:`infer` reads from ``observed``.
    """
    observed = _as_mask(observed)
    found = infer(observed)
    options = dict(max_windows=max_windows, n_draws=n_draws, seed=seed)
    report = learnability(spec, observed, window, observing=found.spec, **options)
    if report.zero_share > 0.01:
        fix = (" No other mask spec does better: the observations are too sparse or too regular there.")
        if found.spec != spec:
            better = learnability(found.spec, observed, window, observing=found.spec, **options)
            if better.zero_share < report.zero_share:
                fix = (f" The NaN pattern looks like {found.kind} observations: mask={found.spec!r} (or mask='infer') "
                       f"leaves {better.zero_share:.0%} at zero.")
        warnings.warn(
            f"mask {spec!r} gives {report.zero_share:.0%} of the observed grid cells zero probability of being "
            f"queried where they are gaps: the model never learns to fill them (contexts must copy the structure "
            f"of the observations).{fix} See xrimpute.check.check(obj, mask=...) for a coverage map.",
            UserWarning, stacklevel=3,
        )
    return report

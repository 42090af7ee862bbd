"""Mask specifications: the MaskSpec family, its context samplers and the hold-out of validation cells.

Every tensor here is a boolean observation mask ``(N, C, T, H, W)`` (True =
observed) on the unpadded grid; see :mod:`xrimpute.masks`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..errors import ArgumentError, XrimputeError
from ..geometry import block_index, cell_centres, station_cells, swath_mask, unit_vectors
from .spatial import label_segments, spatial_statistics, swath_geometry

SPECS: dict[str, type[MaskSpec]] = {}
ALIASES = {"clouds": "patches", "auto": "infer"}
NOT_SAVED = {"saved": False}  # field metadata: metadata arrays that stay out of to_dict (and model files)
SAVED_IF_SET = {"saved": "unless default"}  # field metadata: saved only when changed, so older files read the same


class MaskSpecError(XrimputeError, ValueError):
    """A mask specification is unknown or breaks the context rule."""


@dataclass(frozen=True)
class MaskSpec:
    """Base class: a context sampler that follows one kind of observing system.

    When the variables of a window are observed at different cells, each
    variable gets its own keep pattern: a shared one would keep a variable's
    cell whenever another variable's context holds it, so a gap of the one
    under the other's context would never be queried (Principle 1). Windows
    whose variables share one mask share one pattern. ``shared=True`` forces
    one pattern for all variables (the behaviour before per-variable
    contexts; for ablations).

    ``query_ratio`` below 1 puts only a random share of the observed cells in
    the loss (the paper's pixel code uses 0.7; its block code and the default
    here use every observed cell; Table 6 compares the two).
    """

    context_ratio: float = 0.7
    shared: bool = field(default=False, kw_only=True, metadata=SAVED_IF_SET)
    query_ratio: float = field(default=1.0, kw_only=True, metadata=SAVED_IF_SET)
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SPECS[cls.kind] = cls

    def __post_init__(self):
        if not 0.0 < self.context_ratio <= 1.0:
            raise MaskSpecError(f"context_ratio must be in (0, 1], got {self.context_ratio}")
        if not 0.0 < self.query_ratio <= 1.0:
            raise MaskSpecError(f"query_ratio must be in (0, 1], got {self.query_ratio}")

    # -- sampling ---------------------------------------------------------
    def keep(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
        """Boolean ``(N, C, T, H, W)`` (broadcastable) pattern of kept cells, before ``& observed``.

        One independent pattern per entry of ``shape[1]`` (1: one for all variables).
        """
        raise NotImplementedError

    def per_variable(self, observed: torch.Tensor) -> bool:
        """Whether contexts of ``observed`` draw one keep pattern per variable (their masks differ somewhere)."""
        return not self.shared and observed.shape[1] > 1 and not bool((observed == observed[:, :1]).all())

    def context(self, observed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A context mask inside ``observed`` with the structure of the observing system."""
        n, c, t, h, w = observed.shape
        if not self.per_variable(observed):
            return observed & self.keep((n, 1, t, h, w), generator, observed.device)
        return observed & share_where_identical(self.keep((n, c, t, h, w), generator, observed.device), observed)

    def query(self, observed: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Cells that enter the loss: every observed cell, or a random ``query_ratio`` of them (torch's global
        generator, which training seeds)."""
        if self.query_ratio >= 1:
            return observed
        return observed & (torch.rand(observed.shape, device=observed.device) < self.query_ratio)

    # -- learnability -------------------------------------------------------
    def cell_log_likelihood(self, context: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Per-cell terms whose sum over a unit is ``log p(context | observed)`` there."""
        raise NotImplementedError

    def units(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Integer label ``(T, H, W)`` of the independent unit (pixel, block, ...) of each cell: every step cut into
        the same pieces, labelled once for all steps or anew at each (query coverage pools a piece's steps)."""
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
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.metadata.get("saved", True) is True
                  or (f.metadata["saved"] == "unless default" and getattr(self, f.name) != f.default)}
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    @staticmethod
    def from_dict(config: dict) -> MaskSpec:
        config = dict(config)
        kind = config.pop("kind")
        cls = SPECS.get(ALIASES.get(kind, kind))
        if cls is None:
            raise MaskSpecError(f"unknown mask kind {kind!r}; known: {sorted(SPECS)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def share_where_identical(keep: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``keep`` ``(N, C, ...)`` with the first variable's pattern in every variable of the windows whose
    variables share one mask."""
    same = (observed == observed[:, :1]).flatten(1).all(1).view(-1, *([1] * (observed.dim() - 1)))
    return torch.where(same, keep[:, :1], keep)


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
        n, c, t, h, w = shape
        return _rand((n, c, 1 if self.static else t, h, w), generator, device) < self.context_ratio

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
        for size, parts in zip((h, w), self.grid):
            if parts > size:
                raise MaskSpecError(f"cannot split {size} cells into {parts} blocks; use a smaller grid")
        rows = torch.as_tensor(block_index(h, self.grid[0]), device=per_block.device)
        cols = torch.as_tensor(block_index(w, self.grid[1]), device=per_block.device)
        return per_block[..., rows, :][..., cols]

    def keep(self, shape, generator, device):
        n, c, t, h, w = shape
        per_block = _rand((n, c, 1 if self.static else t, *self.grid), generator, device) < self.context_ratio
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
    stations kept. Cells that never hold a station are never queried: the
    network learns a station from its neighbours, and a station model sees no
    position inputs, so that this carries over to the cells between stations,
    which imputation fills (flagged as without training signal).
    ``positions`` lists the stations as (lat, lon) in degrees when they are
    known (:func:`xrimpute.stations.station_spec` reads them from a CF
    ``timeSeries`` dataset); :meth:`cells` puts them on a grid.
    """

    static: bool = True
    positions: tuple = field(default=(), repr=False)
    kind: ClassVar[str] = "station"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "positions", _as_positions(self.positions))  # lists from JSON -> tuples

    def cells(self, lat, lon) -> np.ndarray:
        """``(H, W)`` boolean: the cells of the grid ``lat`` x ``lon`` (degrees) that hold a station."""
        if not self.positions:
            raise MaskSpecError("this Station spec has no positions; build it with xrimpute.stations.station_spec(ds) "
                                "or Station(positions=[(lat, lon), ...])")
        rows, cols = station_cells(lat, lon, self.positions)
        out = np.zeros((np.size(lat), np.size(lon)), dtype=bool)
        out[rows, cols] = True
        return out


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
        n, c, t, h, w = shape
        pieces, n_pieces = self._pieces(h, w)
        per_piece = _rand((n, c, t, n_pieces), generator, device) < self.context_ratio
        return per_piece[..., pieces.to(per_piece.device)]

    def context(self, observed, generator=None):
        # segments of each variable's own mask when the masks differ, else of the variables merged
        per_variable = self.per_variable(observed)
        labels, count = label_segments((observed if per_variable else observed.any(1, keepdim=True)).cpu().numpy())
        kept = _rand((count + 1,), generator, observed.device) < self.context_ratio
        keep = kept[torch.as_tensor(labels, dtype=torch.long, device=observed.device)]
        return observed & (share_where_identical(keep, observed) if per_variable else keep)

    def cell_log_likelihood(self, context, observed):
        labels, _ = label_segments(observed.cpu().numpy())  # segments per window, channel and step
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
        stats = spatial_statistics(footprint, np.ones(footprint.shape[1:], dtype=bool))
        return cls(**{**swath_geometry(stats), **options}, footprint=footprint)

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
            The orbit and swath, as in :func:`xrimpute.geometry.swath_mask` (which draws the mask).
        **options
            The spec's fields (``context_ratio``); orientation and width come from the mask.
        """
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
            step as long as the one before), as in :func:`xrimpute.geometry.swath_mask`.
        lat, lon : array_like
            The grid's cell centres in degrees (1-D axes).
        grid_time : array_like
            Start of each time step of the grid.
        **options
            The spec's fields (``context_ratio``).

        A cell is covered when its centre lies within half a pixel diagonal of a
        pixel centre of a granule of that step.
        """
        starts = _hours(grid_time)
        if starts.size < 2:
            raise MaskSpecError("grid_time needs at least two steps to tell how long a step is")
        ends = np.append(starts[1:], 2 * starts[-1] - starts[-2])
        grid_lat, grid_lon = cell_centres(lat, lon)
        cells = unit_vectors(grid_lat.ravel(), grid_lon.ravel())
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
            points = unit_vectors(glat, glon)
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
        n, c, t, h, w = shape
        return (_rand((n, c, t, 1, 1), generator, device) < self.context_ratio).expand(n, c, t, h, w)

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
        n, c, t, h, w = shape
        sigma = self.length / HALF_LAG_PER_SIGMA
        pad = int(math.ceil(3 * sigma))  # so that the periodic FFT does not tie opposite edges together
        size = (h + 2 * pad, w + 2 * pad)
        noise = _randn((n * c * t, *size), generator, device)
        freq_y = torch.fft.fftfreq(size[0], device=device)[:, None]
        freq_x = torch.fft.rfftfreq(size[1], device=device)[None, :]
        smoothing = torch.exp(-2 * (math.pi * sigma) ** 2 * (freq_y**2 + freq_x**2))
        smooth = torch.fft.irfft2(torch.fft.rfft2(noise) * smoothing, s=size)[:, pad : pad + h, pad : pad + w]
        k = min(max(1, round(self.context_ratio * h * w)), h * w)
        threshold = smooth.reshape(n * c * t, -1).kthvalue(k, dim=1).values
        return (smooth <= threshold.view(-1, 1, 1)).reshape(n, c, t, h, w)

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
                 generator: torch.Generator | None = None, span: int = 1) -> torch.Tensor:
    """Cells kept for training when ``fraction`` of observations is held back for validation.

    Held-back cells follow the spec's structure (whole blocks for block data),
    drawn anew for every run of ``span`` time steps (default every step, so
    that no cell is held back for good); a part that holds back whole steps
    (:class:`TimeGap`) draws every step whatever the span, as the steps an
    observing system misses are single steps, not runs.
    """
    if fraction <= 0:
        return torch.ones(shape, dtype=torch.bool)
    if not 0 < fraction < 1:
        raise ArgumentError(f"val_fraction must be in [0, 1), got {fraction}")
    if span < 1:
        raise ArgumentError(f"span must be at least one step, got {span}")
    n, _, t, h, w = shape  # one pattern for all variables: a random subset of each variable's cells either way
    holdout = spec._for_holdout(1.0 - fraction)
    keep = None
    for part in holdout.parts if isinstance(holdout, Combined) else (holdout,):  # in Combined.keep's order
        run = 1 if isinstance(part, TimeGap) else span
        drawn = part.keep((n, 1, -(-t // run), h, w), generator, "cpu").repeat_interleave(run, dim=2)[:, :, :t]
        keep = drawn if keep is None else keep & drawn
    return keep


def clouded(spec: MaskSpec) -> bool:
    """Whether ``spec`` hides clouds (a :class:`Patches` part): gaps whose held-back stand-ins, patches among
    observations, say little of how well the gaps are filled (:func:`other_clouds_keep`)."""
    return any(isinstance(p, Patches) for p in (spec.parts if isinstance(spec, Combined) else (spec,)))


def other_clouds_keep(observed, fraction: float, generator: torch.Generator | None = None, run: int = 1,
                      allowed=None, shortest: int = 1) -> torch.Tensor | None:
    """``(N, 1, T, H, W)``: the cells of ``observed`` ``(N, C, T, H, W)``, numpy or torch, kept when about
    ``fraction`` of its observations are held back as the clouds of other steps: runs of ``run`` steps, at random,
    each lose the cells that another run (of any series) does not observe, as DINEOF's cross-validation holds back
    the clouds of other images (Beckers et al. 2006), runs of steps so that round a held-back cell in time lie
    clouds as round a gap. Patches drawn among observations scored the ERA5 sample's clouds 6 to 27 times better
    than their gaps; these scored them 0.94 to 2.4 times better (``benchmarks/RESULTS.md``). ``allowed`` ``(N, T)``: the
    steps a run that loses clouds may cover (default all), the runs cut to the longest stretch of them but not
    below ``shortest`` steps. None where no run of them is left, or no other run to take the clouds of."""
    seen = torch.as_tensor(np.asarray(observed)).any(1)  # (N, T, H, W)
    n, t = seen.shape[:2]
    allowed = np.ones((n, t), bool) if allowed is None else np.asarray(allowed, bool)
    run = max(1, min(run, t, _longest_stretch(allowed)))
    if run < shortest or n * (t - run + 1) < 2:
        return None
    within = np.lib.stride_tricks.sliding_window_view(allowed, run, axis=1).all(-1)  # (N, T - run + 1)
    losing = np.flatnonzero(within)  # the runs that may lose clouds, numbered i * (T - run + 1) + start
    per_series = t - run + 1
    starts = n * per_series
    keep = torch.ones(n, 1, *seen.shape[1:], dtype=torch.bool)
    goal, held = fraction * float(seen.sum()), 0
    for first in losing[torch.randperm(len(losing), generator=generator).numpy()].tolist():
        if held >= goal:
            break
        other = int(torch.randint(starts - 1, (1,), generator=generator))
        other += other >= first  # any run but this one
        (i, s), (j, r) = divmod(first, per_series), divmod(other, per_series)
        dropped = seen[i, s : s + run] & ~seen[j, r : r + run] & keep[i, 0, s : s + run]
        keep[i, 0, s : s + run] &= ~dropped
        held += int(dropped.sum())
    return keep


def _longest_stretch(allowed: np.ndarray) -> int:
    """The most steps in a row that ``allowed`` ``(N, T)`` holds in one series."""
    edges = np.diff(np.pad(allowed.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    return int(max((np.flatnonzero(row == -1) - np.flatnonzero(row == 1)).max(initial=0) for row in edges))


def lasting(spec: MaskSpec) -> MaskSpec | None:
    """The parts of ``spec`` whose gaps may stay put: all but those of whole missing steps (:class:`TimeGap`);
    None where there are none."""
    parts = [p for p in (spec.parts if isinstance(spec, Combined) else (spec,)) if not isinstance(p, TimeGap)]
    return None if not parts else parts[0] if len(parts) == 1 else Combined(*parts)


def of_stations(spec: MaskSpec) -> bool:
    """Whether ``spec`` observes a station network, with or without whole missing steps (a :class:`TimeGap`
    part): validated on whole stations, learned without positions."""
    return isinstance(lasting(spec), Station)

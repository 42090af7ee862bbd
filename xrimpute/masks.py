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
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

import numpy as np
import torch

SPECS: dict[str, type[MaskSpec]] = {}


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

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @staticmethod
    def from_dict(config: dict) -> MaskSpec:
        config = dict(config)
        kind = config.pop("kind")
        cls = SPECS.get(kind)
        if cls is None:
            raise MaskSpecError(f"unknown mask kind {kind!r}; known: {sorted(SPECS)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device if generator is not None else device).to(device)


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
        r = self.context_ratio
        n, c, t, h, w = observed.shape
        labels = self.units((t, h, w)).to(observed.device).reshape(-1)
        n_units = int(labels.max()) + 1

        def per_unit(mask):  # (N, C, U) counts of cells per unit
            flat = mask.reshape(n, c, -1).float()
            return torch.zeros(n, c, n_units, device=mask.device).index_add_(2, labels, flat)

        observed_count, context_count = per_unit(observed), per_unit(context)
        kept = context_count > 0
        whole = context_count == observed_count  # a kept block must keep all its observed cells
        unit_ll = torch.where(
            kept,
            torch.where(whole, torch.full_like(kept, math.log(r), dtype=torch.float), -math.inf),
            math.log1p(-r) if r < 1 else -math.inf,
        )
        unit_ll = torch.where(observed_count > 0, unit_ll, torch.where(kept, -math.inf, 0.0))
        share = (unit_ll / observed_count.clamp(min=1))[..., labels].reshape(n, c, t, h, w)
        stray = context & ~observed
        return torch.where(stray, -math.inf, torch.where(observed, share, 0.0))

    def units(self, shape):
        t, h, w = shape
        g = self.grid[0] * self.grid[1]
        blocks = self._expand(torch.arange(g).reshape(*self.grid), h, w)
        steps = torch.zeros(t, 1, 1, dtype=torch.long) if self.static else torch.arange(t).reshape(t, 1, 1)
        return blocks.unsqueeze(0) + g * steps


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
    changes = {"context_ratio": 1.0 - fraction}
    if "static" in {f.name for f in fields(spec)}:
        changes["static"] = False
    return replace(spec, **changes).keep(shape, generator, "cpu")


def resolve(mask, observed: np.ndarray | None = None, verbose: bool = True) -> MaskSpec:
    """A spec from a string (``"pixel"``, ``"block"``, ``"auto"``), a dict or a spec."""
    if isinstance(mask, MaskSpec):
        return mask
    if isinstance(mask, dict):
        return MaskSpec.from_dict(mask)
    if mask == "auto":
        if observed is None:
            raise MaskSpecError('mask="auto" needs the observation mask to look at')
        spec, reason = infer_pixel_or_block(observed)
        if verbose:
            print(f"xrimpute: mask='auto' chose {spec}: {reason}")
        return spec
    if isinstance(mask, str) and mask in SPECS:
        if mask == "block" and observed is not None:
            found = find_block_grid(observed)
            if found is not None:
                return Block(grid=found[0], static=found[1])
        return SPECS[mask]()
    raise MaskSpecError(
        f"unknown mask {mask!r}; use one of {sorted(SPECS) + ['auto']} or a MaskSpec "
        "(e.g. xrimpute.masks.Block(grid=(3, 3)))"
    )


def _frames(observed: np.ndarray) -> np.ndarray:
    """All frames ``(N * T, H, W)`` of an ``(N, C, T, H, W)`` mask (channels merged with any)."""
    return observed.any(axis=1).reshape(-1, *observed.shape[-2:])


def find_block_grid(observed: np.ndarray, max_blocks: int = 8, purity: float = 0.98):
    """``((rows, cols), static)`` if the observed cells come in whole blocks of a grid, else None.

    A grid fits when nearly every (frame, block) is fully observed or fully
    missing among cells that are ever observed (so land or padding does not
    break blocks). The coarsest fitting grid that is not trivial wins.
    """
    frames = _frames(observed)
    ever = frames.any(axis=0)
    _, h, w = frames.shape
    for rows in range(1, max_blocks + 1):
        for cols in range(1, max_blocks + 1):
            if rows * cols < 2 or rows > h or cols > w:
                continue
            labels = (block_index(h, rows)[:, None] * cols + block_index(w, cols)[None, :])[ever]
            counts = np.stack([np.bincount(labels, f[ever], minlength=rows * cols) for f in frames])
            size = np.bincount(labels, minlength=rows * cols)
            whole = (counts == 0) | (counts == size)
            partial = ~((counts == 0).all(axis=0) | (counts == size).all(axis=0))
            if whole.mean() >= purity and partial.any():
                per_window = counts.reshape(observed.shape[0], observed.shape[2], -1)
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
) -> torch.Tensor:
    """Probability that each cell is queried given a context drawn by ``spec`` (Theorem 1).

    ``observed`` holds observation masks ``(N, C, T, H, W)`` of training windows;
    ``observing`` describes how observations arise (its ``units`` are the
    independent pieces of the observing system; default: ``spec`` itself).
    For a context drawn from a random window, a cell outside the context is a
    query exactly when its unit was observed; by Bayes with the unit's
    observation frequency ``q`` and the context's likelihood ``L`` of leaving
    the whole unit out, that probability is ``q L / (q L + 1 - q)``.

    Returns ``(T, H, W)``: the mean of that probability (times how often the
    cell is observed when its unit is) over draws in which the cell is a gap of
    the window the context came from, which is the situation of imputation.
    Zero means the gap is never learned; cells never in a gap get 1.
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
    # log-likelihood of leaving a whole unit out of the context, had it been observed
    loglik = unit_sum(spec.cell_log_likelihood(context, ever.expand_as(context)).double())
    loglik = torch.where(unit_in_context, 0.0, loglik)
    q = unit_rate.double()
    prior_odds = torch.where(q < 1, q / (1 - q).clamp(min=1e-300), math.inf)
    posterior = torch.where(
        unit_in_context, 1.0, torch.sigmoid(torch.log(prior_odds) + loglik).nan_to_num(0.0)
    )
    per_cell = posterior[:, labels] * cell_rate.double()
    gap = ~frames[picks].reshape(n_draws, -1)
    coverage = (per_cell * gap).sum(0) / gap.sum(0).clamp(min=1)
    return torch.where(gap.any(0), coverage, 1.0).reshape(t, h, w).float()

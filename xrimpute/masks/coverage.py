"""Query coverage (Theorem 1 of the method): where a spec leaves gaps that are never learned.

:func:`query_coverage` is the probability that a cell is queried given a
context; :func:`learnability` maps it over the grid and
:func:`warn_if_unlearnable` warns when gaps would never be learned.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..geometry import evenly_spaced
from .infer import infer, observation_mask
from .specs import MaskSpec

ZERO_COVERAGE = 1e-3  # queried in under one context in a thousand: in effect never learned


@dataclass(frozen=True)
class QueryDraws:
    """Query probabilities of the gap cells of ``D`` windows, each seen through one context (see :func:`query_probability`)."""

    probability: torch.Tensor  # (D, C, T, H, W) float64: P(the cell was a query | the context), for gap cells
    gap: torch.Tensor  # (D, C, T, H, W) bool: the cell is a gap of its window
    context: torch.Tensor  # (D, C, T, H, W) bool: the context drawn


def query_probability(spec: MaskSpec, observed: torch.Tensor | np.ndarray, observing: MaskSpec | None = None,
                      n_draws: int = 256, seed: int = 0) -> QueryDraws:
    """For ``n_draws`` windows of ``observed`` picked at random, a context drawn by ``spec`` and, for every gap
    cell of every variable, the probability that the cell was a query of training given that context (Theorem 1).

    ``observed`` holds observation masks ``(N, C, T, H, W)`` of training windows;
    ``observing`` describes how observations arise (its ``units`` are the
    independent pieces of the observing system; default: ``spec`` itself).
    Variable ``c``'s cell outside the context is a query exactly when its unit
    was observed; by Bayes with the unit's observation frequency ``q`` for that
    variable (over every window, and every step of a window where the same
    piece of the frame recurs: training starts windows at every step, so a
    short series is rated as a long one is) and the context's likelihood ``L``
    of leaving the whole unit out,
    that probability is ``q L / (q L + 1 - q)``. A gap cell in a unit that the
    context does reach is weighed the same way at the cell level: its frequency
    of being observed when its unit is, against the spec's likelihood of leaving
    that one cell out (zero for a block context, which keeps whole blocks).

    The contexts are drawn on whole windows, all variables at once, so the
    joint pattern is judged: where a window's variables differ and the spec
    shares one keep pattern among them (``shared=True``), another variable's
    context in a keep unit of the spec shows that the pattern keeps that unit,
    so a gap of this variable there was never a query (probability 0); another
    variable observed there but left out shows that the pattern drops it,
    which says nothing about this variable (probability ``q``). Per-variable
    patterns (the default when masks differ) are independent across variables.
    """
    observing = observing or spec
    observed = torch.as_tensor(np.asarray(observed)).bool() if not torch.is_tensor(observed) else observed.bool()
    n, c, t, h, w = observed.shape
    layout = observing.units((t, h, w))
    labels = layout.reshape(-1)
    n_units = int(labels.max()) + 1
    cells = torch.arange(t * h * w)
    piece, place = _recurring(layout, n_units)

    def unit_sum(x, by=labels, count=n_units):  # (B, U) sums of per-cell values over units
        return torch.zeros(x.shape[0], count, dtype=torch.float64).index_add_(1, by, x.reshape(x.shape[0], -1).double())

    def pooled(totals, by, count):  # totals (M,) summed over what shares a key of ``by``, handed back per entry
        return torch.zeros(count, dtype=torch.float64).index_add_(0, by, totals)[by]

    def posterior(rate, loglik):  # P(observed | left out of the context), by Bayes
        odds = torch.where(rate < 1, rate / (1 - rate).clamp(min=1e-300), math.inf)
        return torch.sigmoid(torch.log(odds) + loglik).nan_to_num(0.0)

    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (n_draws,), generator=generator)
    windows = observed[picks]
    context = spec.context(windows, generator)
    # windows whose variables differ under one shared keep pattern: the other variables reveal the pattern
    revealing = ~(windows == windows[:, :1]).flatten(1).all(1) if spec.shared else torch.zeros(n_draws, dtype=bool)
    keep_units = spec.units((t, h, w)).reshape(-1)
    probability = torch.zeros(windows.shape, dtype=torch.float64)
    for v in range(c):
        frames = observed[:, v : v + 1]
        unit_seen = unit_sum(frames) > 0
        # q: how often each unit of this variable is observed, and each cell when its unit is, over every window and
        # every step where the same piece recurs: training draws windows at every start, so a cell's place in a
        # window says nothing, and a short series has too few windows to rate each place alone
        seen_units = unit_seen.double().sum(0)
        unit_rate = pooled(seen_units, piece, n_units) / pooled(torch.full_like(seen_units, n), piece, n_units)
        seen_cells = pooled(frames.double().sum(0).reshape(-1), place, t * h * w)
        cell_rate = seen_cells / pooled(seen_units[labels], place, t * h * w).clamp(min=1)
        own = context[:, v : v + 1]
        possible = (seen_cells > 0).reshape(1, 1, t, h, w).expand_as(own)  # what a unit looks like when observed
        # units left out: the log-likelihood of leaving the whole unit out, had it been observed
        unit_posterior = posterior(unit_rate, spec.leave_out_log_likelihood(own, possible, labels, n_units))
        # gap cells of units the context reaches (so observed): the same, one cell at a time
        cell_posterior = posterior(cell_rate, spec.leave_out_log_likelihood(own, possible, cells, t * h * w))
        reached = unit_sum(own) > 0
        per_cell = torch.where(reached[:, labels], cell_posterior, unit_posterior[:, labels] * cell_rate)
        if revealing.any():
            others = torch.cat([windows[:, :v], windows[:, v + 1 :]], 1).any(1)
            others_context = torch.cat([context[:, :v], context[:, v + 1 :]], 1).any(1)
            count = int(keep_units.max()) + 1
            kept = unit_sum(others_context, keep_units, count)[:, keep_units] > 0
            dropped = (unit_sum(others, keep_units, count)[:, keep_units] > 0) & ~kept
            prior = torch.where(reached[:, labels], cell_rate, unit_rate[labels] * cell_rate)
            joint = torch.where(kept, 0.0, torch.where(dropped, prior, per_cell))
            per_cell = torch.where(revealing[:, None], joint, per_cell)
        probability[:, v] = per_cell.reshape(n_draws, t, h, w)
    return QueryDraws(probability=probability, gap=~windows, context=context)


def _recurring(layout: torch.Tensor, n_units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``(U,)`` and ``(T H W,)`` that pool the units of ``layout`` ``(T, H, W)`` and its cells over a window's
    steps: a unit keyed by the unit of the first step with its cells, a cell by its place in the frame (every spec
    cuts each step into the same pieces, :meth:`~xrimpute.masks.MaskSpec.units`)."""
    t, h, w = layout.shape
    first = layout[0].expand(t, h, w).reshape(-1)
    piece = torch.zeros(n_units, dtype=torch.long).index_put_((layout.reshape(-1),), first)
    return piece, torch.arange(h * w).repeat(t)


def query_coverage(
    spec: MaskSpec,
    observed: torch.Tensor | np.ndarray,
    observing: MaskSpec | None = None,
    n_draws: int = 256,
    seed: int = 0,
    return_gaps: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Probability that each cell is queried given a context drawn by ``spec`` (Theorem 1).

    Arguments as for :func:`query_probability`, which draws the contexts.
    Returns ``(T, H, W)``: the mean of the query probability over the draws
    and variables in which the cell is a gap of the window the context came
    from, which is the situation of imputation. Zero means the gap is never
    learned; cells never in a gap get 1. With ``return_gaps``, also the number
    of (draw, variable) pairs in which each cell was a gap.
    """
    draws = query_probability(spec, observed, observing, n_draws, seed)
    gap = draws.gap.double()
    count = gap.sum((0, 1))
    coverage = (draws.probability * gap).sum((0, 1)) / count.clamp(min=1)
    coverage = torch.where(count > 0, coverage, 1.0).float()
    return (coverage, count.long()) if return_gaps else coverage


def _windows(observed: np.ndarray, window: int, most: int) -> np.ndarray:
    """Up to ``most`` non-overlapping windows ``(M, C, window, H, W)`` of the series."""
    n, _, t = observed.shape[:3]
    window = min(window, t)
    starts = [(i, s) for i in range(n) for s in range(0, t - window + 1, window)]
    return np.stack([observed[i, :, s : s + window] for i, s in (starts[p] for p in evenly_spaced(len(starts), most))])


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
    zero_context_share: float = 0.0  # share of (context, variable, gap cell) situations with zero query probability

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
    observed : array_like
        Boolean ``(N, C, T, H, W)`` mask; :func:`xrimpute.check.check` maps the
        coverage of an xarray cube. Contexts are drawn on all variables at
        once and each variable's gaps are judged against the joint pattern.
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
        ``coverage`` ``(H, W)``: the mean of :func:`query_probability` over the
        draws, variables and steps in which the cell is a gap (NaN where never
        observed, 1 where never a gap), and the shares of cells at zero coverage
        (below :data:`ZERO_COVERAGE`, 1e-3: queried in under one context in a
        thousand), below ``low`` and never observed. ``zero_context_share`` is
        the share of gap situations (a context, a variable, a gap cell) with
        zero query probability: the ensemble members that fill a gap from an
        input never seen in training.
    """
    observed = observation_mask(observed)
    observing = observing or infer(observed).spec
    windows = _windows(observed, window, max_windows)
    draws = query_probability(spec, windows, observing=observing, n_draws=n_draws, seed=seed)
    gap = draws.gap.double()
    gaps = gap.sum((0, 1, 2))
    coverage = ((draws.probability * gap).sum((0, 1, 2)) / gaps.clamp(min=1)).numpy()
    coverage = np.where(gaps.numpy() > 0, coverage, 1.0)  # never a gap: nothing to learn
    valid = windows.any(axis=(0, 1, 2))  # observed in the windows looked at
    coverage = np.where(valid, coverage, np.nan)
    share = (lambda cells: float(cells[valid].mean())) if valid.any() else (lambda cells: 0.0)
    situations = draws.gap & torch.as_tensor(valid)
    zero_situations = float(((draws.probability < ZERO_COVERAGE) & situations).sum() / max(int(situations.sum()), 1))
    return Learnability(coverage=coverage.astype(np.float32), spec=spec, observing=observing,
                        zero_share=share(coverage < ZERO_COVERAGE), low_share=share(coverage < low),
                        never_share=float(1 - observed.any(axis=(0, 1, 2)).mean()), low=low,
                        zero_context_share=zero_situations)


def warn_if_unlearnable(spec: MaskSpec, observed, window: int, *, max_windows: int = 32, n_draws: int = 32,
                        seed: int = 0) -> Learnability:
    """Warn (UserWarning) when ``spec`` leaves gap cells with zero query probability, and say which spec fixes it.

    A quick version of :func:`learnability` on a few windows, run by
    :meth:`xrimpute.CtxDiffModel.fit`; the observing system is what
    :func:`infer` reads from ``observed``.
    """
    observed = observation_mask(observed)
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

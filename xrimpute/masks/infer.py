"""The structure of a NaN pattern: block grids, statistics that tell observing systems apart, and resolve.

:func:`infer` reads the observing system from a mask and picks the spec that
copies it; :func:`resolve` turns a name, a dict or a spec into a spec.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import block_edges, evenly_spaced
from .spatial import spatial_statistics, swath_geometry
from .specs import ALIASES, SPECS, Block, Combined, MaskSpec, MaskSpecError, Patches, Pixel, Station, Swath, TimeGap

log = logging.getLogger(__name__)


def observation_mask(mask) -> np.ndarray:
    """Boolean ``(N, C, T, H, W)`` observation mask (True = observed) of an array-like or tensor mask.

    The numeric core takes masks only; :func:`xrimpute.check.infer` and
    :func:`xrimpute.check.check` read them from an xarray cube.
    """
    if hasattr(mask, "dims") and hasattr(mask, "coords"):
        raise MaskSpecError("this function takes a boolean (N, C, T, H, W) mask, not an xarray object; for a cube "
                            "with NaN gaps use xrimpute.check.infer(obj) or xrimpute.check.check(obj, mask=...)")
    mask = mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if mask.ndim != 5:
        raise MaskSpecError(f"expected a boolean (N, C, T, H, W) mask (for an xarray cube use "
                            f"xrimpute.check.infer), got an array of shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _frames(observed: np.ndarray) -> np.ndarray:
    """All frames ``(N * T, H, W)`` of an ``(N, C, T, H, W)`` mask (channels merged with any)."""
    return observed.any(axis=1).reshape(-1, *observed.shape[-2:])


BLOCK_DROPOUT = 0.01
"""The share of a block's cells that may be missing from it when observed, or seen in it when missing, and it still
counts as whole (:func:`find_block_grid`): a real archive's coastal cells drop out on some days (9 of the
Mediterranean altimetry's 16 700 sea cells, 193 cell-days in 91 days), which broke a sixth of its observed blocks
and passed its moving blocks off as swaths (``benchmarks/RESULTS.md``)."""


def find_block_grid(observed: np.ndarray, max_blocks: int = 8, purity: float = 0.98):
    """``((rows, cols), static)`` if the observed cells come in whole blocks of a grid, else None.

    A grid fits when nearly every (frame, block) is observed or missing
    among cells that are ever observed (so land or padding does not break
    blocks), to within :data:`BLOCK_DROPOUT` of its cells, counting frames
    with gaps only (empty or complete frames fit any grid). The coarsest
    fitting grid that is not trivial wins.
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
        r, c = block_edges(h, rows), block_edges(w, cols)
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
        full, empty = count >= size * (1 - BLOCK_DROPOUT), count <= size * BLOCK_DROPOUT
        whole = (full | empty)[with_gaps][:, size >= 2]  # one-cell blocks are whole anyway
        partial = full.any(axis=0) & empty.any(axis=0) & (size >= 2)  # a block seen and missed, not a cell
        if whole.size and whole.mean() >= purity and partial.any():
            per_series = full.reshape(observed.shape[0], observed.shape[2], -1)
            # a whole missing step moves no block: fixed over time if fixed over the steps that observe anything
            static = all((steps == steps[:1]).all() for steps in (series[series.any(1)] for series in per_series))
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


def _chunks(frames: np.ndarray, max_frames: int = 512, length: int = 16) -> np.ndarray:
    """``(M, L, H, W)`` runs of consecutive frames of ``(N, T, H, W)``, at most ``max_frames`` in all, spread out."""
    n, t = frames.shape[:2]
    if n * t <= max_frames:
        return frames
    length = min(length, t)
    starts = [(i, s) for i in range(n) for s in range(0, t - length + 1, length)]
    picks = evenly_spaced(len(starts), max(1, max_frames // length))
    return np.stack([frames[i, s : s + length] for i, s in (starts[p] for p in picks)])


def _percent(share: float) -> str:
    return f"{share:.1%}" if 0 < share < 0.01 or 0.99 < share < 1 else f"{share:.0%}"


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
    pairs = pairs[evenly_spaced(len(pairs), most)]
    a = frames[pairs[:, 0], pairs[:, 1]][:, valid].astype(float)
    b = frames[pairs[:, 0], pairs[:, 1] + 1][:, valid].astype(float)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))).mean())


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
    stats.update(spatial_statistics(frames[partial], valid))
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


def infer(mask, max_frames: int = 512) -> Inference:
    """Read the observing system from a NaN pattern and pick the mask specification that copies it.

    Parameters
    ----------
    mask : array_like
        A boolean ``(N, C, T, H, W)`` mask (True = observed); for an xarray
        cube with NaN where unobserved, use :func:`xrimpute.check.infer`.
        Variables are merged (a cell counts as observed when any variable is).
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
    observed = observation_mask(mask)
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
    elif stats["partial_frames"] <= 0.02 and stats["empty_frames"] > 0 and not stations:
        spec = TimeGap()
        why = (f"whole time steps are missing ({stats['empty_frames']:.0%} of the steps) and the other steps are "
               "complete; contexts keep a random subset of the observed steps")
    elif stations and (persistence >= 0.5 or stats["partial_frames"] == 0):  # or all at every step that reports
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
        spec = Swath(**swath_geometry(stats))
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
    permanent = (f" {_percent(never)} of the cells are never observed: left out of these statistics and never "
                 "queried; impute fills those between observations and leaves NaN those beyond their reach "
                 "(xrimpute.check.reach maps which)." if never > 0 else "")
    explanation = f"The NaN pattern looks like {kind} observations: {why}.{permanent}"
    return Inference(spec, kind, evidence, explanation)


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
            log.info("mask=%r chose %r. %s", mask, found.spec, found.explanation)
        return found.spec
    if name in SPECS and name != "combined":
        if observed is not None and name in ("block", "swath", "patches"):
            return _fitted(name, observation_mask(observed))
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
    stats = spatial_statistics(frames, frames.any(0))
    return Swath(**swath_geometry(stats)) if name == "swath" else Patches(length=_patch_length(stats))

"""The package's classical fillers scored on the cells a fit held back, exactly as its network is scored there.

:func:`scorer` gives :meth:`xrimpute.engine.Engine.fit` a ``compare`` that
fills the series around the validation windows as training
saw it (every held-back cell hidden) with each classical filler, and scores
the fill on the network's validation cells: the same windows, cells and
normalisation, and the same normalised MSE (MSE / MSE of the mean fill). In
memory a filler sees the whole series (or, for one that fills frame by
frame, the validation frames, which gives the same fill), but where the fit
held cells back in a whole window (gaps that stay put), each window apart
with them hidden around it as the network had them; from an archive, each
validation window with the steps around it that no other validation window
shares. Fillers run from the cheapest while their estimated cost fits
in a time budget, small next to training; the others are skipped with the
reason.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from xrimpute.baselines.classical import (DENSE_RBF, akima_array, dineof_array, interpolate_array,
                                          normalised_convolution_array, ns_inpaint_array, rbf_array, telea_array,
                                          temporal_array)
from xrimpute.errors import SkillWarning
from xrimpute.samplers import ArrayWindows, StationFolds

MIN_BUDGET = 10.0  # seconds the comparison may always take (all it takes under a fit's time budget) ...
BUDGET_SHARE = 0.1  # ... or this share of the training time, if more, after a fit of a number of steps
NEIGHBOURS = 3  # observations a cell should have on either side in the steps read around an archive's window
MOST_READ = 20_000_000  # cells read from an archive at most for the comparison (80 MB in float32)
TIE = 5e-4
"""ctxdiff's MSE within this share of the best filler's is a tie, not a filler that fills better: the same to the
ratio's printed precision (the thin plate through stations and the RBF filler differ by their ridges, 1e-5)."""


def _per_cell(seconds_per_million: float) -> Callable[[np.ndarray], float]:
    return lambda series: seconds_per_million * series.size / 1e6


def _dineof_seconds(series: np.ndarray) -> float:
    """Measured on one core: about 15 us per cell and root of the shorter side of each time x space matrix."""
    n, c, t, h, w = series.shape
    return 1.5e-5 * n * c * t * h * w * math.sqrt(min(t, h * w))


def _rbf_seconds(series: np.ndarray) -> float:
    """Measured on one core: a frame of ``n`` observations and ``g`` gaps takes about 5e-11 n^3 + 8e-9 n g s
    solved whole, 70 us a gap solved from each one's neighbours (past :data:`~xrimpute.baselines.classical.DENSE_RBF`
    observations): on blocks that cover half of each frame, 15 times a cost per cell."""
    seen = np.isfinite(series).reshape(-1, series.shape[-2] * series.shape[-1]).sum(1).astype(np.float64)
    gaps = series.shape[-2] * series.shape[-1] - seen
    return float(np.where(seen > DENSE_RBF, 7e-5 * gaps, 5e-11 * seen**3 + 8e-9 * seen * gaps).sum())


def _dineof(values, **options):
    return dineof_array(values, **options).filled


@dataclass(frozen=True)
class Filler:
    """A classical filler as ``xrimpute.baselines.fill(..., method=name)`` runs it, with what its fill depends on
    (``reach``: steps either side; None: the whole series) and a rough estimate of its seconds on one core for a
    series ``(N, C, T, H, W)``."""

    core: Callable
    reach: int | None
    seconds: Callable[[np.ndarray], float]
    takes_times: bool = False


FILLERS = {  # cheapest first (per cell, measured on one core)
    "temporal": Filler(temporal_array, None, _per_cell(0.3), takes_times=True),
    "normalised_convolution": Filler(normalised_convolution_array, 4, _per_cell(0.3)),  # 4 sigma_time = 4 steps
    "interpolate": Filler(interpolate_array, None, _per_cell(1.0), takes_times=True),
    "akima": Filler(akima_array, None, _per_cell(2.5), takes_times=True),  # 2-3 times interpolate
    "ns_inpaint": Filler(ns_inpaint_array, 0, _per_cell(2.5)),
    "telea": Filler(telea_array, 0, _per_cell(3.0)),
    "rbf": Filler(rbf_array, 0, _rbf_seconds),
    "dineof": Filler(_dineof, None, _dineof_seconds),
}


def fill_call(method: str) -> str:
    """The call that fills a cube ``ds`` with ``method``."""
    return f'xrimpute.baselines.fill(ds, method="{method}")'


def scorer(times: np.ndarray | None = None, fillers: dict[str, Filler] | None = None):
    """``compare(windows, training_seconds=None)`` for :meth:`xrimpute.engine.Engine.fit`: :func:`score` with a
    budget of :data:`BUDGET_SHARE` of ``training_seconds``, and :data:`MIN_BUDGET` seconds at least, or alone where
    training's length is not known (a fit under a time budget compares before training, so that the seconds the
    fillers take are spent from the budget rather than kept for them). ``times``: the positions of the time steps,
    as ``fill`` gives them (:func:`xrimpute.cube.time_positions`)."""

    def compare(windows, training_seconds: float | None = None) -> dict:
        budget = MIN_BUDGET if training_seconds is None else max(MIN_BUDGET, BUDGET_SHARE * training_seconds)
        if isinstance(windows, StationFolds):
            return score_folds(windows, budget, times, fillers or FILLERS)
        return score(windows, budget, times, fillers or FILLERS)

    return compare


def score_folds(folds: StationFolds, budget: float, times: np.ndarray | None = None,
                fillers: dict[str, Filler] | None = None) -> dict:
    """:func:`score` over the held-back cells of every view of station data in ``folds``
    (:class:`~xrimpute.samplers.StationFolds`, each holding back a share of the stations through the series),
    ``budget`` shared among them: each filler's normalised MSE over all of them, where it ran on every one."""
    scored, references = [], []
    for windows in folds:  # one view at a time
        scored.append(score(windows, budget / len(folds), times, fillers))
        references.append(_reference(windows))
    names = [name for name in scored[0]["classical"] if all(name in each["classical"] for each in scored)]
    scores = {name: sum(each["classical"][name] * reference for each, reference in zip(scored, references))
              / max(sum(references), 1e-12) for name in names}
    skipped = {name: why for each in scored for name, why in each["classical_skipped"].items()}
    skipped.update({name: "failed or skipped on some shares of the stations" for each in scored
                    for name in each["classical"] if name not in scores})
    return dict(classical=scores, best_classical=min(scores, key=scores.get) if scores else None,
                classical_skipped=skipped, classical_seconds=sum(each["classical_seconds"] for each in scored),
                classical_context=f"the whole series, the stations held back from training and then each of "
                                  f"{len(folds) - 1} shares of the others in turn")


def score(windows, budget: float, times: np.ndarray | None = None, fillers: dict[str, Filler] | None = None) -> dict:
    """The normalised MSE of each of ``fillers`` (default :data:`FILLERS`) on the held-back cells of ``windows``
    (a sampler of :func:`xrimpute.samplers.training_windows`), within ``budget`` seconds.

    Returns ``classical`` (method: nmse), ``best_classical`` (the method of least nmse, or None),
    ``classical_skipped`` (method: why), ``classical_context`` (what the fillers saw) and ``classical_seconds``.
    """
    xs, ms, hs, _ = windows.validation
    xs, hs = xs.numpy().astype(np.float64), hs.numpy()
    reference = _reference(windows)
    in_memory = isinstance(windows, ArrayWindows)
    started = time.perf_counter()
    if in_memory:
        wide = None
    else:  # read once, with enough steps around each window for a few observations of each cell on either side
        most = (MOST_READ // (xs.shape[0] * xs.shape[1] * xs.shape[3] * xs.shape[4]) - xs.shape[2]) // 2
        wide = max(0, min(math.ceil(NEIGHBOURS / max(float(ms.float().mean()), 1e-3)), most))
        read = windows.validation_context(wide)
    contexts: dict = {}
    scores, skipped = {}, {}
    for name, filler in (fillers or FILLERS).items():
        pad = wide if filler.reach is None else filler.reach
        if pad not in contexts:
            contexts[pad] = windows.validation_context(pad) if in_memory else [_narrowed(item, pad) for item in read]
        estimate = sum(filler.seconds(series) for series, _, _ in contexts[pad])
        left = budget - (time.perf_counter() - started)
        if estimate > left:
            skipped[name] = f"about {estimate:.0f} s, more than the {max(left, 0):.0f} s left of {budget:.0f} s"
            continue
        try:
            error = sum(_error(filler, series, first, places, xs, hs, times) for series, first, places in contexts[pad])
        except ImportError as err:  # an optional dependency (OpenCV) is not installed
            skipped[name] = str(err)
            continue
        except (ValueError, RuntimeError, ArithmeticError) as err:  # a filler's failure must not cost the model
            skipped[name] = f"failed: {err}"
            continue
        scores[name] = error / max(reference, 1e-12)
    if not in_memory:
        context = f"each validation window with up to {wide} steps either side (archive input)"
    elif windows.validation_hidden is not None:
        context = (f"each validation window with up to {windows.validation_hidden_span} steps either side, its "
                   "held-back cells hidden throughout")
    else:
        context = "the whole series"
    return dict(classical=scores, best_classical=min(scores, key=scores.get) if scores else None,
                classical_skipped=skipped, classical_seconds=time.perf_counter() - started, classical_context=context)


def ratio_text(validation: dict) -> str:
    """ctxdiff's MSE on the held-back cells of ``validation`` (a model's) over the best classical filler's, in words
    for the repr and the warning: near a skill of 1 the two skills agree to three digits while one error is a
    fraction of the other. "" without a comparison, or where that filler fills the cells exactly. A ratio within a
    per cent of 1 keeps three decimals: "1 times" read as a tie in a warning that says one of them is better."""
    best = validation.get("best_classical")
    if best is None or validation["classical"][best] <= 0:
        return ""
    ratio = validation["nmse"] / validation["classical"][best]
    return f"ctxdiff's MSE {ratio:.3f} times its" if f"{ratio:.2g}" == "1" else f"ctxdiff's MSE {ratio:.2g} times its"


def warn_if_beaten(validation: dict, trained: bool = True) -> None:
    """One :class:`~xrimpute.errors.SkillWarning` when a classical filler scored better than the network on the
    held-back cells of ``validation`` (a model's), by more than a :data:`TIE`, naming it, both scores and the call
    that runs it; ``trained`` False: the fit trained no step, since training could not change its fill, so longer
    training is no remedy."""
    best = validation.get("best_classical")
    if best is None or validation["nmse"] <= (1 + TIE) * validation["classical"][best]:
        return
    ratio = ratio_text(validation)
    remedy = ("for now, or train longer (a larger max_time= or steps=)" if trained else
              "(ctxdiff's fill there is its first guess, which training cannot change)")
    warnings.warn(
        f"on the {validation['cells']} held-back cells the classical filler {best!r} scores skill "
        f"{1 - validation['classical'][best]:.3f} and ctxdiff {validation['skill']:.3f} (1 - MSE / MSE of the mean "
        f"fill{'; ' + ratio if ratio else ''}): fill with {fill_call(best)} {remedy}", SkillWarning, stacklevel=3)


def _reference(windows) -> float:
    """The squared error of the mean fill on the held-back cells of ``windows`` (0 in normalised units)."""
    xs, _, hs, _ = windows.validation
    return float((xs.double() ** 2 * hs).sum())


def _narrowed(item, pad: int):
    """An archive's context ``item`` (one window) cut to ``pad`` steps either side of its window."""
    series, first, [(b, (sample, channels, steps))] = item
    a, z = max(0, steps.start - pad), min(series.shape[2], steps.stop + pad)
    return series[:, :, a:z], first + a, [(b, (sample, channels, slice(steps.start - a, steps.stop - a)))]


def _error(filler: Filler, series, first: int, places, xs, hs, times) -> float:
    """Squared error of ``filler``'s fill of ``series`` on the held-back cells of the windows at ``places``."""
    options = {}
    if filler.takes_times and times is not None:
        options["times"] = np.asarray(times, np.float64)[first : first + series.shape[2]]
    with np.errstate(invalid="ignore", divide="ignore"):
        filled = filler.core(series, **options)
    # a cell the filler leaves empty (a field without observations) counts as the mean fill
    return float(sum(((np.nan_to_num(filled[cut], nan=0.0) - xs[b]) ** 2 * hs[b]).sum() for b, cut in places))


__all__ = ["FILLERS", "Filler", "fill_call", "score", "score_folds", "scorer", "warn_if_beaten"]

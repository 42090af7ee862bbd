"""Learned gap fillers on the network and trainer of ctxdiff: only the method differs.

Every method trains :class:`xrimpute.CtxDiffModel` (same U-Net, optimiser, EMA,
schedule and budget options) and changes only what the paper's baselines change:

* ``ctxdiff``: the method of the package (contexts shaped like the observations,
  single-step ensemble over ``K`` contexts); here for comparisons on equal terms.
* ``missdiff``: context = query = the whole observed mask in training, and the
  whole observed mask at inference (one pass, ``K = 1``, no adaptation).
* ``ambient`` (AmbientDiff): the context is the observed mask further corrupted
  once (each observed pixel dropped with probability ``corruption``), the query
  every observed cell; at inference, as in Daras et al.'s fixed-mask sampler
  and the paper's Table 3 "direct" row, one further corrupted mask (a subset of
  the observed cells at the training corruption), one pass (``K = 1``).

Both take ``sample_steps`` for multi-step inference instead (the mean of
``members`` conditional samples, as DiffPuter's E-step): the paper reports the
better of single-step and multi-step for every baseline.
* ``diffputer`` (DiffPuter): expectation-maximisation. The M-step trains the
  denoiser on the current completion as if it were complete (every cell in the
  context and in the query); the E-step re-imputes by conditional sampling
  (:func:`xrimpute.diffusion.sample_multistep` with the observations re-noised
  at every step) and averages a few members. The first completion puts the
  observed mean of each channel in the gaps.

``fit_<method>(train, ...)`` returns a :class:`Learned` whose ``impute(obj)``
fills any cube on the same grid; ``<method>(obj, train=None, ...)`` fits on
``train`` (default ``obj`` itself) and fills ``obj``. :data:`CORES` holds the
array versions for :data:`xrimpute.baselines.METHODS` (``<method>_array``),
which run :class:`xrimpute.engine.Engine` on the array itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from xrimpute import cube, masks
from xrimpute.engine import Engine, ImputeConfig
from xrimpute.errors import ArgumentError
from xrimpute.model import CtxDiffModel
from xrimpute.options import or_option

__all__ = ["CORES", "Learned", "ambient", "ambient_array", "ctxdiff", "ctxdiff_array", "diffputer",
           "diffputer_array", "fit_ambient", "fit_ctxdiff", "fit_diffputer", "fit_missdiff", "missdiff",
           "missdiff_array"]


@dataclass
class Learned:
    """A trained learned method: the model and how the method imputes with it.

    ``impute_options`` go to :meth:`CtxDiffModel.impute` (single-step methods);
    ``sampler_options`` (DiffPuter) make :meth:`impute` an E-step instead: the mean
    of ``members`` conditional samples. ``completion`` is DiffPuter's last
    completion of its training data.
    """

    method: str
    model: CtxDiffModel
    impute_options: dict = field(default_factory=dict)
    sampler_options: dict | None = None
    completion: xr.DataArray | xr.Dataset | None = None

    def impute(self, obj, *, seed: int = 0, progress: bool | None = False, fill_never_observed: bool | None = None):
        """``obj`` with its gaps filled by this method (same type, dims, coords; observed values kept).

        Cells never observed in the training data: as ``fill_never_observed`` of
        :meth:`xrimpute.CtxDiffModel.impute` (default: filled unless beyond the observations' reach).
        """
        options = dict(seed=seed, progress=progress, fill_never_observed=fill_never_observed)
        if self.sampler_options is None:
            return self.model.impute(obj, **options, **self.impute_options)
        return _e_step(self.model, obj, **options, **self.sampler_options)


def _observed(obj) -> np.ndarray:
    values, _ = cube.to_array(obj)
    return np.isfinite(values)


def fit_ctxdiff(train, mask="auto", *, K: int = 10, **fit_options) -> Learned:
    """The package's method: contexts with the structure of the observations, ``K``-context ensemble."""
    return Learned("ctxdiff", CtxDiffModel.fit(train, mask=mask, **fit_options), dict(K=K))


def _multistep(sample_steps: int | None, members: int) -> dict | None:
    """Sampler options of multi-step inference (RePaint-style conditional sampling), or None for single-step."""
    if sample_steps is None:
        return None
    if sample_steps < 1 or members < 1:
        raise ArgumentError(f"sample_steps and members must be at least 1, got {sample_steps} and {members}")
    return dict(members=members, steps=sample_steps, eta=1.0)


def fit_missdiff(train, mask="auto", *, verbose: bool = True, sample_steps: int | None = None, members: int = 4,
                 **fit_options) -> Learned:
    """MissDiff: the loss on observed cells with the whole observed mask as input.

    ``mask`` only shapes the held-back validation cells; the context is always
    every observed cell (context ratio 1). ``sample_steps``: multi-step
    inference, the mean of ``members`` conditional samples, instead of one pass.
    """
    spec = replace(masks.resolve(mask, _observed(train), verbose=verbose), context_ratio=1.0)
    model = CtxDiffModel.fit(train, mask=spec, verbose=verbose, **fit_options)
    return Learned("missdiff", model, dict(K=1, adapt=False), _multistep(sample_steps, members))


def fit_ambient(train, corruption: float = 0.2, *, K: int = 1, sample_steps: int | None = None, members: int = 4,
                **fit_options) -> Learned:
    """AmbientDiff: one further pixel-wise corruption of the observed mask as context.

    Each observed cell leaves the context with probability ``corruption``; the
    loss covers every observed cell. Inference feeds one further corrupted mask
    (the observed cells kept at ``1 - corruption``), ``K`` of them averaged
    (default one, as Daras et al.); ``sample_steps``: multi-step inference
    instead, the mean of ``members`` conditional samples.
    """
    if not 0 < corruption < 1:
        raise ArgumentError(f"corruption must be in (0, 1), the share of observed cells dropped; got {corruption}")
    model = CtxDiffModel.fit(train, mask=masks.Pixel(context_ratio=1.0 - corruption), **fit_options)
    return Learned("ambient", model, dict(K=K, adapt=False, spec=masks.Pixel(context_ratio=1.0 - corruption)),
                   _multistep(sample_steps, members))


def _e_step(model: CtxDiffModel, obj, *, members: int, steps: int, eta: float, seed: int, progress,
            fill_never_observed: bool | None = None):
    """The mean of ``members`` conditional samples in the gaps of ``obj``; observed values kept."""
    draws = model.sample(obj, n=members, steps=steps, eta=eta, handover=None, seed=seed, progress=progress,
                         dim="__member__", fill_never_observed=fill_never_observed)
    return obj.fillna(draws.mean("__member__"))


def fit_diffputer(train, *, rounds: int = 3, steps: int = 2000, steps_per_round: int | None = None,
                  warm_start: bool = True, members: int = 4, sample_steps: int = 20, eta: float = 1.0,
                  seed: int = 0, progress: bool | None = None, **fit_options) -> Learned:
    """DiffPuter: EM rounds of training on the completion (M) and conditional re-imputation (E).

    Parameters
    ----------
    train : the incomplete cube; its completion is what the rounds improve.
    rounds : M-step / E-step pairs.
    steps, steps_per_round : training budget: ``steps`` in all, split evenly over the
        rounds unless ``steps_per_round`` is given.
    warm_start : continue from the previous round's network (else a fresh network each round).
    members, sample_steps, eta : E-step: conditional samples averaged per cell, denoising
        steps per sample and fresh noise per step.
    **fit_options : the rest of :meth:`CtxDiffModel.fit` (window, preset, batch_size, ...).
    """
    if rounds < 1:
        raise ArgumentError(f"rounds must be at least 1, got {rounds}")
    per_round = steps_per_round or max(1, steps // rounds)
    fit_options = {"val_fraction": 0.0, "verbose": False, **fit_options}
    values, layout = cube.to_array(train)
    observed = np.isfinite(values)
    valid = observed.any(axis=(0, 2), keepdims=True)  # cells ever observed: the rest stays NaN
    start = np.array([np.nanmean(values[:, i]) for i in range(values.shape[1])], np.float32)
    first = np.where(observed | ~valid, values, start[None, :, None, None, None])
    completion = train.fillna(cube.from_array(first, train, layout))
    sampler = dict(members=members, steps=sample_steps, eta=eta)
    model = None
    for k in tqdm(range(rounds), desc="DiffPuter rounds", disable=progress is False, leave=False):
        model = CtxDiffModel.fit(completion, mask=masks.Pixel(context_ratio=1.0), steps=per_round,
                                 seed=seed + k, progress=progress, init=model if warm_start else None,
                                 **fit_options)
        completion = _e_step(model, train, seed=seed + k, progress=progress, **sampler)
    return Learned("diffputer", model, sampler_options=sampler, completion=completion)


def _fill(fit, obj, train, seed: int, **options):
    learned = fit(obj if train is None else train, seed=seed, **options)
    if learned.completion is not None and train is None:
        return learned.completion
    return learned.impute(obj, seed=seed)


def ctxdiff(obj, *, train=None, mask="auto", K: int = 10, seed: int = 0, **fit_options):
    """Fit the package's method on ``train`` (default ``obj``) and fill ``obj``; see :func:`fit_ctxdiff`."""
    return _fill(fit_ctxdiff, obj, train, seed, mask=mask, K=K, **fit_options)


def missdiff(obj, *, train=None, mask="auto", seed: int = 0, **fit_options):
    """Fit MissDiff on ``train`` (default ``obj``) and fill ``obj``; see :func:`fit_missdiff`."""
    return _fill(fit_missdiff, obj, train, seed, mask=mask, **fit_options)


def ambient(obj, *, train=None, corruption: float = 0.2, seed: int = 0, **fit_options):
    """Fit AmbientDiff on ``train`` (default ``obj``) and fill ``obj``; see :func:`fit_ambient`."""
    return _fill(fit_ambient, obj, train, seed, corruption=corruption, **fit_options)


def diffputer(obj, *, train=None, seed: int = 0, **options):
    """Run DiffPuter on ``train`` (default ``obj``: its last completion is the answer) and fill ``obj``;
    see :func:`fit_diffputer`."""
    return _fill(fit_diffputer, obj, train, seed, **options)


# -- the array cores (xrimpute.baselines.fill): the engine on the array itself ----------------------------
def _engine(values: np.ndarray, mask, seed: int, options: dict) -> Engine:
    """An engine fitted on ``values`` with :meth:`CtxDiffModel.fit`'s options, quietly unless asked."""
    return Engine.fit_array(values, mask, seed=seed, **{"progress": False, "verbose": False, **options})


def ctxdiff_array(values: np.ndarray, *, mask="auto", K: int = 10, seed: int = 0, **fit_options) -> np.ndarray:
    """:func:`ctxdiff` on an ``(N, C, T, H, W)`` array (NaN = gap)."""
    values = _checked(values)
    return _engine(values, mask, seed, fit_options).fill(values, ImputeConfig(K=K, seed=seed, progress=False))[0]


def missdiff_array(values: np.ndarray, *, mask="auto", seed: int = 0, **fit_options) -> np.ndarray:
    """:func:`missdiff` on an ``(N, C, T, H, W)`` array (NaN = gap)."""
    values = _checked(values)
    spec = replace(masks.resolve(mask, np.isfinite(values), verbose=fit_options.get("verbose", False)),
                   context_ratio=1.0)
    engine = _engine(values, spec, seed, fit_options)
    return engine.fill(values, ImputeConfig(K=1, adapt=False, seed=seed, progress=False))[0]


def ambient_array(values: np.ndarray, *, corruption: float = 0.2, seed: int = 0, **fit_options) -> np.ndarray:
    """:func:`ambient` on an ``(N, C, T, H, W)`` array (NaN = gap)."""
    values = _checked(values)
    if not 0 < corruption < 1:
        raise ArgumentError(f"corruption must be in (0, 1), the share of observed cells dropped; got {corruption}")
    engine = _engine(values, masks.Pixel(context_ratio=1.0 - corruption), seed, fit_options)
    options = ImputeConfig(K=1, adapt=False, spec=masks.Pixel(context_ratio=1.0 - corruption), seed=seed,
                           progress=False)
    return engine.fill(values, options)[0]


def diffputer_array(values: np.ndarray, *, rounds: int = 3, steps: int = 2000, steps_per_round: int | None = None,
                    warm_start: bool = True, members: int = 4, sample_steps: int = 20, eta: float = 1.0,
                    seed: int = 0, progress: bool = False, **fit_options) -> np.ndarray:
    """:func:`diffputer` on an ``(N, C, T, H, W)`` array (NaN = gap): the last completion."""
    values = _checked(values)
    if rounds < 1:
        raise ArgumentError(f"rounds must be at least 1, got {rounds}")
    per_round = steps_per_round or max(1, steps // rounds)
    observed = np.isfinite(values)
    valid = observed.any(axis=(0, 2), keepdims=True)  # cells ever observed: the rest stays NaN
    start = np.array([np.nanmean(values[:, i]) for i in range(values.shape[1])], np.float32)
    completion = np.where(observed | ~valid, values, start[None, :, None, None, None])
    engine = None
    for k in tqdm(range(rounds), desc="DiffPuter rounds", disable=not progress, leave=False):
        engine = _engine(completion, masks.Pixel(context_ratio=1.0), seed + k,
                         {"val_fraction": 0.0, **fit_options, "steps": per_round, "progress": progress,
                          "init": engine if warm_start else None})
        draws = engine.sample(values, members, sample_steps, eta=eta, handover=None, seed=seed + k,
                              device=or_option("device", None), progress=progress)
        completion = np.where(observed, values, draws.mean(axis=0))
    return completion


def _checked(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 5:
        raise ArgumentError(f"expected an (N, C, T, H, W) array, got shape {values.shape}")
    return values


CORES = {"ctxdiff": ctxdiff_array, "missdiff": missdiff_array, "ambient": ambient_array,
         "diffputer": diffputer_array}

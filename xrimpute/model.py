"""CtxDiffModel: fit once on an incomplete cube, impute many; save and load.

The xarray face of :class:`xrimpute.engine.Engine`: a cube goes to arrays
through :mod:`xrimpute.cube`, the engine fits, fills and samples them, and
the results come back in the shape of the cube. Dask-backed cubes are
imputed lazily by :func:`xrimpute.lazy.impute_lazy`.
"""
from __future__ import annotations

import html
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import xarray as xr

from . import cube, masks
from .engine import (BATCH, Engine, ImputeConfig, ModelConfig, ModelMismatch, check_fit_options,
                     position_fields, train_config, training_batch, training_tile, wraps_round)
from .errors import ArgumentError
from .lazy import filled_cube, flag_cube, impute_lazy, with_flags
from .nets.prior import wrapping
from .options import or_option
from .samplers import statistics

log = logging.getLogger("xrimpute")


def _period(obj, name: str) -> float | None:
    """The period the coordinate ``name`` declares in its ``period`` attribute, or None."""
    period = obj[name].attrs.get("period") if name in obj.coords else None
    try:
        return None if period is None else float(period)
    except (TypeError, ValueError):
        raise cube.CubeError(f"the {name!r} coordinate's 'period' attribute is {period!r}, not a number; set it to "
                             "the length after which the axis repeats (e.g. 2 * pi), or delete it") from None


def _is_degrees(attrs: dict) -> bool:
    return "degree" in str(attrs.get("units", "")).lower()


def permanent_cells(obj, layout: cube.Layout, permanent_mask) -> np.ndarray:
    """The ``permanent_mask`` argument of :meth:`CtxDiffModel.fit` as a boolean ``(H, W)`` or ``(C, H, W)`` array.

    A variable name of ``obj`` or a DataArray over (lat, lon), or an array;
    True (or a value above 0.5, e.g. a land fraction) marks a permanent cell.
    """
    axes, grid = layout.axes, tuple(obj.sizes[d] for d in (layout.axes.lat, layout.axes.lon))
    if isinstance(permanent_mask, str):
        if isinstance(obj, xr.DataArray) or permanent_mask not in obj.data_vars:
            raise ArgumentError(f"permanent_mask={permanent_mask!r} names no variable of the data; pass the name of a "
                                "static (lat, lon) mask variable of the Dataset, or the mask itself")
        permanent_mask = obj[permanent_mask]
    if isinstance(permanent_mask, xr.DataArray):
        if set(permanent_mask.dims) != {axes.lat, axes.lon}:
            raise ArgumentError(f"permanent_mask has dims {permanent_mask.dims}; it must be static over "
                                f"({axes.lat!r}, {axes.lon!r})")
        permanent_mask = permanent_mask.transpose(axes.lat, axes.lon).values
    mask = np.asarray(permanent_mask)
    if mask.shape not in (grid, (len(layout.channels), *grid)):
        raise ArgumentError(f"permanent_mask has shape {mask.shape}; the grid is {grid} (or {len(layout.channels)} "
                            f"channels of it)")
    return mask if mask.dtype == bool else np.nan_to_num(mask.astype(float)) > 0.5


def check_fits(engine: Engine, layout: cube.Layout, obj) -> None:
    """Raise :class:`ModelMismatch` unless ``obj`` has the engine's channels on its grid and a window's steps."""
    if layout.channels != engine.config.channels:
        raise ModelMismatch(f"this model was trained on channels {engine.config.channels}, the data has "
                            f"{layout.channels}; select the same variables (ds[[...]]) or fit a new model")
    coords = cube.coordinates(obj, layout)
    for key in ("lat", "lon"):
        grid = np.asarray(engine.config.grid[key])
        seen = coords[key].astype(float)
        if grid.shape != seen.shape or not np.allclose(grid, seen, rtol=0, atol=1e-6 * max(1.0, np.abs(grid).max())):
            raise ModelMismatch(
                f"the {key} grid differs from the model's ({grid.size} points from {grid[0]:g} to {grid[-1]:g}; "
                f"the data has {seen.size} from {seen[0]:g} to {seen[-1]:g}); regrid the data to the model's grid"
            )
    steps = obj.sizes[layout.axes.time]
    if steps < engine.window:
        raise ModelMismatch(f"the data has {steps} time steps, fewer than this model's window of {engine.window}; "
                            f"impute at least {engine.window} steps at once, or fit a model with window={steps}")


def phase_for(engine: Engine, layout: cube.Layout, obj) -> np.ndarray | None:
    """Where each step of ``obj`` lies in the cycle whose departures ``engine`` fills (None: it fills none); a
    :class:`ModelMismatch` if ``obj`` has no dates to tell."""
    if not engine.config.cycle:
        return None
    found = cube.cycle_phase(obj, layout, engine.config.cycle)
    if found is None:
        raise ModelMismatch(f"this model fills the departures from each cell's {engine.config.cycle} cycle, so it "
                            f"needs dates along {layout.axes.time!r} (numpy or cftime) to place the steps in it; "
                            "give the data its time coordinate")
    return found[1]


class CtxDiffModel:
    """A trained context-query diffusion model for one set of variables on one grid.

    Build one with :meth:`fit` (or ``obj.ctxdiff.fit(...)``), fill gaps with
    :meth:`impute`, keep it with :meth:`save` / :func:`xrimpute.load`.
    """

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- properties ------------------------------------------------------------
    @property
    def info(self) -> dict:
        """The configuration as saved (JSON-able): channels, variables, axes, grid, window, rates, validation, ..."""
        return self.engine.config.to_dict()

    @property
    def channels(self) -> list[str]:
        return self.engine.config.channels

    @property
    def window(self) -> int:
        return self.engine.window

    @property
    def validation(self) -> dict:
        """Skill on observed cells held back from training (normalised MSE, per-variable RMSE)."""
        return self.engine.config.validation or {}

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    @property
    def denoiser(self):
        return self.engine.denoiser

    @property
    def spec(self) -> masks.MaskSpec:
        return self.engine.spec

    @property
    def schedule(self):
        return self.engine.schedule

    @property
    def history(self):
        return self.engine.history

    @property
    def mean(self) -> np.ndarray:
        return self.engine.mean

    @property
    def std(self) -> np.ndarray:
        return self.engine.std

    @property
    def valid(self) -> np.ndarray:
        return self.engine.valid

    @property
    def permanent(self) -> np.ndarray:
        """``(C, H, W)``: cells whose gaps stay NaN by default (see ``fill_never_observed`` of :meth:`impute`)."""
        return self.engine.permanent

    def tiling(self, overlap: int | None = None):
        """The tiles of imputation; see :meth:`xrimpute.engine.Engine.tiling`."""
        return self.engine.tiling(overlap)

    # -- fitting ---------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        obj,
        mask="auto",
        *,
        window: int | None = None,
        preset: str = "auto",
        steps: int | None = None,
        batch_size: int | None = None,
        lr: float = 2e-3,
        max_time: float | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        device: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        periodic: bool | tuple[bool, bool] | None = None,
        tile: tuple[int, int] | str | None = "auto",
        progress: bool | None = None,
        verbose: bool = True,
        init: CtxDiffModel | None = None,
        permanent_mask=None,
        positions: bool | None = None,
        history: bool | None = None,
        nearby: bool | None = None,
        compare_classical: bool = True,
        **train_options,
    ) -> CtxDiffModel:
        """Train on an incomplete cube (NaN = unobserved); no complete sample is needed.

        Parameters
        ----------
        obj : xarray.DataArray or xarray.Dataset
            The cube, with time, latitude and longitude dims in any order; NaN
            marks unobserved cells.
        mask : str, dict or xrimpute.masks.MaskSpec, default "auto"
            How the observations are structured; training contexts copy that
            structure. ``"auto"`` (the same as ``"infer"``) reads it off the NaN
            pattern and logs what it chose; a kind (``"pixel"``, ``"block"``,
            ``"swath"``, ``"station"``, ``"timegap"``, ``"patches"``) or a
            :class:`~xrimpute.masks.MaskSpec` sets it.
        window : int, optional
            Time steps the network sees at once. By default 5, or 9, 13 or 17
            where that brings many more gaps within reach of an observation
            (swaths that leave frames empty for hours), never more than the
            series has (:func:`xrimpute.engine.choose_window`). The first guess
            the network starts from looks along them.
        preset : {"auto", "narrow", "lite", "tiny", "small", "base"}
            Network size, default ``"auto"``: ``"base"`` on a GPU; on the CPU ``"narrow"``
            (its body at half resolution, 16 channels wide), or ``"lite"`` (32 channels)
            where the gaps lie far in time from observations of their own cell (blocks
            that never move), which the network rather than its first guess fills
            (:func:`xrimpute.engine.choose_preset`); an ``init`` keeps its own. Every network starts
            from a classical first guess made from its context and learns the correction
            to it; a fit of a cube in memory on its whole grid may let that guess lean on
            the series' leading spatial modes, where they fill the held-back cells better
            (:func:`xrimpute.nets.prior.spatial_modes`); any fit where blocks never move may
            make it the best linear estimate under the series' own space-time covariance
            (:func:`xrimpute.nets.prior.covariance_guess`), and where its dates go through a day
            or a year (:func:`xrimpute.cube.cycle_phase`) the model may fill the departures
            from each cell's cycle (its own, or pooled over its neighbours where each cell is
            seen a few times; none where the observations see some phases only), likewise
            chosen, on tiles and from archives too (:mod:`xrimpute.cycle`); such a model asks
            for dates when it imputes.
        steps : int, optional
            Training steps (optimiser updates). Default: on the CPU, as many as
            ``max_time`` allows (a fit of 5 minutes unless given); on a GPU, 2000. Only an
            explicit ``steps`` without ``max_time`` trains reproducibly: a time
            budget depends on the machine's speed and load. Without either, none
            where every gap of a cube in memory lies in a cell never observed
            outside the permanent mask (complete station series, say), which
            imputation fills with the first guess alone: training could not change
            that fill (:func:`xrimpute.masks.gaps_only_where_never_observed`).
        batch_size : int, optional
            Windows per training step. Default 16; on the CPU, a grid trained
            whole that has more cells than a tile (a doubly periodic one, see
            ``tile``) takes as many whole windows as hold 16 tiles' cells (8 of
            a 64 x 64 grid), so that a step costs about what a tile's does.
        lr : float, default 2e-3
            Peak learning rate of the optimiser.
        max_time : float, optional
            The fit's time budget in seconds: training stops early, whatever
            ``steps`` says, so that the whole fit ends within about this long
            (training gets what reading the cube, choosing the first guess and
            scoring the held-back cells after it leave; the verbose log says how
            much); the learning-rate schedule spans training's share.
        val_fraction : float, default 0.05
            Share of observed cells held back, with the mask's structure, to score
            the model; they never enter training.
        seed : int, default 0
            Seed of the initial weights, the held-back cells and the training
            contexts: the same seed on the same machine gives the same model.
        device : str, optional
            Where to train: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; default
            the ``device`` of :func:`xrimpute.set_options` (``"auto"``: the GPU if
            there is one). Under ``set_options(dtype="float32")`` a GPU trains in
            full precision.
        checkpoint : str or path-like, optional
            File to write the training state to (atomically) as training goes; an
            existing one is resumed.
        periodic : bool or (bool, bool), optional
            Wrap the longitude (x) axis in the convolutions, the first guess and
            the tiles; a pair ``(rows, columns)`` wraps the rows (y) too, a
            doubly periodic domain, wherever a window spans them (imputation on
            the whole grid: one of up to twice 128 x 128 cells whose training
            tiles span its columns; tiles of fewer rows end at their edges).
            Default: the columns when the grid spans 360 degrees of longitude,
            or when the x coordinate declares a ``period`` attribute that its
            cells span; the rows when the y coordinate declares one (a periodic
            model domain; the generated cubes of :mod:`xrimpute.datasets`
            declare both).
        tile : tuple of int or "auto", default "auto"
            ``(rows, cols)``: train on random spatial tiles of a large grid (e.g.
            ``(128, 128)``), with the cells' position as an input so that one
            model serves the whole grid; imputation then blends overlapping tiles
            (a grid of at most twice 128 x 128 cells is imputed whole).
            ``"auto"`` (:func:`xrimpute.engine.training_tile`): on the CPU,
            tiles of at most 32 rows and 2048 cells on a grid of more cells,
            as a budget of minutes fills better with many cheap steps, but the
            whole of a doubly periodic grid of up to twice those cells, whose
            network then learns the field across both seams; on a GPU, 128 x
            128 tiles on a grid of more than twice their cells; the whole grid
            otherwise; with ``init``, the init's own tile. None: always the
            whole grid.
        progress : bool, optional
            Show progress bars (training's, and the passes over a dask
            archive before it: each cell's cycle, each cell's history);
            default the ``progress`` of :func:`xrimpute.set_options` (True).
        verbose : bool, default True
            Report the mask that ``mask="auto"`` chose, and why (through
            :mod:`logging`, logger ``xrimpute``), and warn when a classical filler
            beats the network on the held-back cells (see ``compare_classical``).
        init : CtxDiffModel, optional
            A model of the same variables, window and network to start from (warm
            start): its weights and normalisation are the starting point.
        permanent_mask : str, xarray.DataArray or array_like, optional
            Cells whose gaps stay NaN (land in a sea-surface cube): the name of a
            static (lat, lon) variable of the Dataset (e.g. ``"lsm"``), a DataArray
            over (lat, lon), or a boolean ``(lat, lon)`` array; True, or a value
            above 0.5 such as a land fraction, marks a permanent cell. Besides it,
            the never-observed regions beyond the observing system's reach stay NaN
            (:mod:`xrimpute.masks.reach`); every other gap is filled.
        positions : bool, optional
            Give the network each cell's position (latitude and longitude, or
            grid index) as inputs. Default: yes, except for station data
            (``mask="station"``), where the network learns each station from its
            neighbours only, so that what it learns between held-out stations
            carries over to every cell between them.
        history : bool, optional
            Let the first guess lean on each cell's observations outside the
            window (its mean over the rest of the series, shrunk towards its
            neighbours'), interpolating departures from it. Default: where the
            window the observations need is longer than the shortest
            (:func:`xrimpute.engine.needs_history`), e.g. swaths that leave
            frames empty for hours; not for pixels, stations or blocks, which a
            short window reaches. Imputation then reads the whole series once
            more (a pass over a dask archive) for each cell's totals.
        nearby : bool, optional
            Let the first guess start from the Akima spline through each
            cell's three observations just before and three just after the
            window (up to 24 steps either side; the line with one either
            side), interpolating departures from it. Default:
            where most gaps have an observation of their own within 12 steps
            (:func:`xrimpute.engine.offers_nearby`) and that guess fills the
            held-back cells better (:func:`xrimpute.nets.prior.choose_guess`),
            as for gaps that move every step. Where gaps stay put instead,
            a fit of an in-memory cube also scores the observations along the
            flow (one displacement per step, estimated from the steps around
            each window; :func:`xrimpute.windows.along_flow`), which carries
            observations into the gaps of a field that moves through them, on
            cells held back in the whole window; True or False decides it (in
            place). Imputing an archive then reads 24 more steps around every
            block.
        compare_classical : bool, default True
            Also score the package's classical fillers
            (:mod:`xrimpute.baselines`: interpolation in time, linear and Akima,
            Telea and Navier-Stokes inpainting, normalised convolution, ..., DINEOF
            when it fits) on the same held-back cells: under a time budget
            before training, in 10 s taken from the budget; where ``steps``
            alone bounds the fit, after training, in a tenth of its time (at
            least 10 s); into
            ``model.validation["classical"]``; if the best of them beats the
            network, warn (:class:`~xrimpute.errors.SkillWarning`, unless
            ``verbose=False``) with the call that runs it
            (:mod:`xrimpute.baselines.heldout`).
        **train_options
            Further optimisation settings of :class:`xrimpute.training.TrainConfig`
            (``warmup``, ``weight_decay``, ``ema_decay``, ``grad_clip``,
            ``val_every``, ``patience``, ``checkpoint_every``, ...).

        Returns
        -------
        CtxDiffModel
            The trained model; ``model.validation`` holds its skill on the
            held-back cells (filled as :meth:`impute` fills them, every window
            overlapping theirs blended), and where all of the network's correction to its
            first guess fills them worse than a share of it, the share that
            imputation keeps per variable (``correction_weight``; the
            network's own score is ``network_nmse``). Training scores its
            network there every ``val_every`` (100) steps and keeps the best:
            on a small cube the network learns its training windows by heart
            within the budget, and ``model.history.kept`` then names the step
            of the network kept. Where ``patience`` (5) scorings in a row
            score 5 % above the best, training goes back to the best network
            at half the learning rate (``model.history.restarts``), and the
            third time it stops: such a fit ends before its time budget.
            Where the gaps are clouds (a :class:`~xrimpute.masks.Patches`
            part), held-back patches among observations score the fill far
            better than its gaps (6-27 times on the ERA5 sample): ``nmse``,
            ``skill``, ``rmse``, ``cells``, the share of the correction and
            the classical fillers' scores are then those of half as many
            cells again, held back as the clouds of other runs of steps
            (:func:`xrimpute.masks.other_clouds_keep`), and ``chosen_on``
            holds the network's score on the patches, where the first guess,
            the context and the network kept were chosen.

        Notes
        -----
        Dask-backed input (e.g. a zarr archive opened lazily) is never loaded
        whole: normalisation comes from a sample of its time chunks, windows are
        read piece by piece in the background, and validation uses a few windows
        spread over the archive that training never sees.
        """
        started = time.perf_counter()  # a time budget counts from here
        check_fit_options(window, tile, val_fraction, or_option("device", device), history, nearby, preset)
        wraps = None if periodic is None else wrapping(periodic)
        # checked before any data is read; the batch of batch_size=None is settled once the tile is known
        options = train_config(steps=steps, batch_size=BATCH if batch_size is None else batch_size, lr=lr,
                               max_time=max_time, seed=seed, **train_options)
        values, layout = cube.to_array(obj, lazy=True)
        permanent = None if permanent_mask is None else permanent_cells(obj, layout, permanent_mask)
        # before the statistics read an archive
        periods = [_period(obj, axis) for axis in (layout.axes.lat, layout.axes.lon)] if periodic is None else None
        t = values.shape[2]
        if window is not None and t < window:
            raise cube.CubeError(f"only {t} time steps along {layout.axes.time!r}, fewer than window={window}; "
                                 "pass a smaller window or more time steps")
        stats = statistics(values, seed=seed)  # all of an in-memory cube, a sample of a dask one's chunks
        cube.check_counts(stats.counts, layout)
        cube.warn_outliers(stats.outliers, layout)
        if init is not None:
            check_fits(init.engine, layout, obj)
        coords = cube.coordinates(obj, layout)
        degrees = layout.axes.lat in obj.coords and _is_degrees(obj[layout.axes.lat].attrs)
        if wraps is None:  # latitudes never wrap round; rows only where their coordinate declares a period
            wraps = (wraps_round(coords["lat"], False, periods[0]), wraps_round(coords["lon"], degrees, periods[1]))
            for axis, wrap, period, plain in zip(("lat", "lon"), wraps, periods, (False, degrees)):
                if verbose and wrap and period is not None and not wraps_round(coords[axis], plain):
                    log.info(f"the grid wraps round along {getattr(layout.axes, axis)!r}: its {coords[axis].size} "
                             f"cells span the period of {period:g} that its coordinate declares")
        grid = (coords["lat"].size, coords["lon"].size)
        tile = training_tile(tile, *grid, or_option("device", device), wraps, None if init is None else init.engine)
        options = replace(options, batch_size=training_batch(batch_size, tile, *grid, or_option("device", device)))
        if verbose and batch_size is None and options.batch_size != BATCH and all(wraps):
            log.info(f"training on the whole grid, {options.batch_size} windows a step (a tile's cost): it wraps "
                     "round both axes, and a network trained on tiles would never learn the field across the seam")
        config = ModelConfig(
            channels=layout.channels, window=window, variables=layout.variables, channel_of=layout.channel_of,
            axes=asdict(layout.axes), grid=dict(lat=coords["lat"].astype(float).tolist(),
                                                lon=coords["lon"].astype(float).tolist()),
            degrees=degrees, tile=None if tile is None else list(tile),
            periodic=wraps[1], periodic_rows=wraps[0],
            positions=positions, history=history, nearby=nearby,
        )
        # imported here: the baselines package imports this module
        from .baselines.heldout import scorer, warn_if_beaten

        compare = scorer(cube.time_positions(obj, layout)) if compare_classical else None
        # the cycle a new model may try; an init brings its own (Engine.fit), and needs only the steps' phase
        kind, phase = (cube.cycle_phase(obj, layout) or (None, None)) if init is None else \
            (None, phase_for(init.engine, layout, obj))
        config = replace(config, cycle=kind)
        engine = Engine.fit(values, config, mask, train_config=options, preset=preset, val_fraction=val_fraction,
                            device=or_option("device", device), checkpoint=checkpoint,
                            progress=or_option("progress", progress), verbose=verbose,
                            init=None if init is None else init.engine, stats=stats, permanent_mask=permanent,
                            compare=compare, phase=phase, started=started)
        if verbose and engine.config.validation:
            warn_if_beaten(engine.config.validation, trained=bool(engine.history.step))
        return cls(engine)

    # -- imputation ------------------------------------------------------------
    def impute(self, obj, K: int = ImputeConfig.K, *, seed: int = ImputeConfig.seed, return_std: bool = False,
               stride: int = ImputeConfig.stride, batch_size: int = ImputeConfig.batch_size, device: str | None = None,
               adapt: bool = ImputeConfig.adapt, fill_never_observed: bool | None = ImputeConfig.fill_never_observed,
               progress: bool | None = None, spec: masks.MaskSpec | None = None, overlap: int | None = None,
               observed_rate: float | None = None, context: str | None = None, return_flags: bool = False):
        """Fill the gaps of ``obj``: same type, dims, coords and attrs, observed values kept.

        Parameters
        ----------
        obj : xarray.DataArray or xarray.Dataset
            Data with the model's variables on the model's grid, NaN in the gaps;
            dask-backed data gives a lazy result.
        K : int, default 10
            Context masks per window (the single-step ensemble): averaged with
            ``context="sampled"``; with ``"observed"`` they give the spread
            around the one pass that sees every observation, and are skipped
            unless ``return_std``.
        seed : int, default 0
            Seed of the contexts; every window draws from its own seed, so the
            result does not depend on batching or chunking.
        return_std : bool, default False
            Also return the ensemble spread, as ``<variable>_std`` variables of a
            Dataset or as a second DataArray.
        stride : int, default 1
            Step between overlapping windows (1: every window position).
        batch_size : int, default 8
            Windows through the network at once.
        device : str, optional
            Where the network runs; default the ``device`` of
            :func:`xrimpute.set_options` (``"auto"``: the GPU if there is one).
        adapt : bool, default True
            Keep the effective context fraction of training when the data is
            observed at another rate (paper G.3).
        fill_never_observed : bool, optional
            What to do with cells never observed in the training data. Default
            (None): fill them, except the permanent mask (the ``permanent_mask`` of
            fit, and never-observed regions beyond the observing system's reach,
            :mod:`xrimpute.masks.reach`), which stays NaN. True: fill every cell.
            False: leave every never-observed cell NaN.
        progress : bool, optional
            Show a progress bar; default the ``progress`` of
            :func:`xrimpute.set_options` (True).
        spec : xrimpute.masks.MaskSpec, optional
            The context sampler at inference; default the one of training.
        overlap : int, optional
            Cells shared by neighbouring tiles of a model that imputes in tiles
            (fitted with ``tile`` on a grid of more than twice 128 x 128 cells,
            or on tiles narrower than a global grid; a smaller grid is imputed
            whole, :meth:`xrimpute.engine.Engine.tiling`); default a quarter of
            the tile.
        observed_rate : float, optional
            Share of observed cells, for ``adapt``; default measured on ``obj``.
            For dask-backed input that is a lazy pass over all of it, so pass it
            when imputing a long archive.
        context : {"observed", "sampled"}, optional
            What each window's estimate sees. ``"observed"``: every observation,
            in one pass (the spread is how far ``K - 1`` sampled contexts land
            from it);
            ``"sampled"``: the mean over ``K`` contexts sampled as in training
            (the paper's estimate), ``K`` times the cost. Default: the one the
            fit chose on its held-back cells (``model.validation["context"]``):
            the sampled contexts where they filled those cells clearly better,
            by :data:`xrimpute.engine.CONTEXT_MARGIN`.
        return_flags : bool, default False
            Also return CF flag variables ``<variable>_flag`` (int8, ``flag_values``
            / ``flag_meanings``): ``observed``, ``imputed``,
            ``imputed_without_training_signal`` (a cell never observed in training,
            which no context ever queried: it takes the network's first guess,
            without the correction that no loss ever trained there),
            ``permanent_mask`` (left NaN).
            ``filled.where(flag != 2)`` masks the fills without training signal.

        Returns
        -------
        xarray.DataArray or xarray.Dataset
            ``obj`` with its gaps filled. With ``return_std=True``, a Dataset also
            holds the ``<variable>_std`` spreads, and a DataArray comes back as a
            ``(filled, spread)`` pair; ``return_flags=True`` adds the
            ``<variable>_flag`` variables to a Dataset, and the flags as the last
            item of a tuple for a DataArray.

        Notes
        -----
        Dask-backed input gives a lazy, dask-backed result that reads nothing until
        computed (:func:`xrimpute.lazy.impute_lazy`); its values equal the
        in-memory imputation's, as every window draws its randomness from its own
        seed (:func:`xrimpute.windows.window_seed`).
        """
        options = ImputeConfig(K=K, seed=seed, stride=stride, batch_size=batch_size, overlap=overlap,
                               fill_never_observed=fill_never_observed, adapt=adapt, observed_rate=observed_rate,
                               spec=spec, context=context, spread=return_std, device=device, progress=progress)
        self.engine.check_options(options)
        values, layout = cube.to_array(obj, lazy=True)
        check_fits(self.engine, layout, obj)
        phase = phase_for(self.engine, layout, obj)
        if return_std:
            cube.check_spread_names(obj, layout)
        if not isinstance(values, np.ndarray):
            result = impute_lazy(self.engine, obj, values, layout, options, return_std=return_std, phase=phase)
        else:
            filled, spread = self.engine.fill(values, options, phase=phase)
            result = filled_cube(filled, spread, obj, layout, return_std)
        if not return_flags:
            return result
        flags = self.engine.flags(np.isfinite(values), options.fill_never_observed)  # lazy for dask input
        return with_flags(result, flag_cube(flags, obj, layout), layout)

    def sample(self, obj, n: int = 16, steps: int = 50, *, K: int = 10, eta: float = 0.0,
               handover: float | None = -1.0, seed: int = 0, batch_size: int = 16, device: str | None = None,
               adapt: bool = True, dim: str = "member", fill_never_observed: bool | None = None,
               progress: bool | None = None):
        """``n`` imputations of ``obj`` by multi-step sampling, stacked along a new dim ``dim``.

        Every member keeps the observations exactly; the members differ in the gaps,
        and their spread shows what the data leave undetermined. The ensemble dim is
        called ``member`` because ``sample`` names independent trajectories in a cube.
        Windows tile the time axis (the last one overlaps the one before it, whose
        values are kept there) and are sampled independently.

        Parameters
        ----------
        obj : xarray.DataArray or xarray.Dataset
            Data with the model's variables on the model's grid, NaN in the gaps.
        n : int, default 16
            Members to draw.
        steps : int, default 50
            Denoising steps from pure noise (:func:`xrimpute.diffusion.sample_multistep`).
        K : int, default 10
            Contexts of the single-step ensemble that steers the start of each
            trajectory.
        eta : float, default 0.0
            Fresh noise per step: 0 is deterministic given the start, 1 ancestral.
        handover : float or None, default -1.0
            Log-SNR at which the diffusion expectation takes over from the
            single-step ensemble (:func:`xrimpute.diffusion.blend_weight`); None:
            never blend.
        seed : int, default 0
            Seed of the noise and the contexts.
        batch_size : int, default 16
            Most (window, member) pairs through the network at once.
        device : str, optional
            Where the network runs, as for :meth:`impute`.
        adapt : bool, default True
            As for :meth:`impute`.
        dim : str, default "member"
            Name of the new dim.
        fill_never_observed : bool, optional
            As for :meth:`impute`.
        progress : bool, optional
            As for :meth:`impute`.

        Returns
        -------
        xarray.DataArray or xarray.Dataset
            Same type as ``obj``, with the dim ``dim`` (coordinates ``0 .. n-1``)
            in front.
        """
        values, layout = cube.to_array(obj)
        check_fits(self.engine, layout, obj)
        if dim in obj.dims:
            raise ArgumentError(f"the data already has a dim {dim!r}; name the ensemble dim otherwise with dim=")
        draws = self.engine.sample(values, n, steps, K=K, eta=eta, handover=handover, seed=seed,
                                   batch_size=batch_size, device=or_option("device", device), adapt=adapt,
                                   fill_never_observed=fill_never_observed, progress=or_option("progress", progress),
                                   phase=phase_for(self.engine, layout, obj))
        members = [cube.merge_filled(obj, cube.from_array(member, obj, layout), layout) for member in draws]
        stacked = xr.concat(members, dim=dim, data_vars=layout.variables if not layout.is_dataarray else "all",
                            coords="minimal", compat="override", combine_attrs="override")
        return stacked.assign_coords({dim: np.arange(n)})

    # -- persistence -----------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights and configuration to one file, atomically (loaded safely with ``weights_only``)."""
        return self.engine.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CtxDiffModel:
        """Read a model written by :meth:`save`."""
        return cls(Engine.load(path))

    # -- display ---------------------------------------------------------------
    def _summary(self) -> list[tuple[str, str]]:
        train_info = self.info.get("train", {})
        wraps = [axes for axes, wrap in (("rows", self.info.get("periodic_rows")), ("columns", self.info["periodic"]))
                 if wrap]
        rows = [
            ("variables", ", ".join(self.channels)),
            ("grid", f"{len(self.info['grid']['lat'])} x {len(self.info['grid']['lon'])}, window {self.window}"
                     + (f", wrapping round its {' and '.join(wraps)}" if wraps else "")),
            ("mask", repr(self.spec)),
            ("network", f"{self.denoiser.config['preset']} U-Net, {self.n_parameters / 1e6:.2f} M parameters"
                        + (", first guess leaning on each cell's history outside the window"
                           if self.denoiser.uses_history else "")
                        + (f", first guess leaning on each cell's observations up to {self.denoiser.nearby_span} "
                           f"steps before and after the window{' along the flow' if self.denoiser.flows else ''}"
                           + (" (a curve through three on either side)" if self.denoiser.config.get("curve") else "")
                           + (f", {self.denoiser.config['own_curve']:.0%} of it each cell's own curve through the "
                              "window" if self.denoiser.config.get("own_curve") else "")
                           if self.denoiser.nearby_span else "")
                        + (f", first guess leaning on the series' {self.denoiser.config['modes']} leading spatial modes"
                           if self.denoiser.modes is not None else "")
                        + (f", filling the departures from each cell's {self.info['cycle']} cycle"
                           if self.info.get("cycle") else "")),
            ("training", f"{self.history.step[-1]} steps in {self.history.seconds:.0f} s on "
                         f"{train_info.get('device', '?')}"
                         + (f", keeping the network of step {self.history.kept}, the best on the held-back cells"
                            if self.history.kept else "")
                         + (f", back to its best network at a lower learning rate at step "
                            f"{', '.join(map(str, self.history.restarts))}" if self.history.restarts else "")
                         if self.history.step else self.history.stopped or "none"),
        ]
        never, filled = int((~self.valid).sum()), int((~self.valid & ~self.permanent).sum())
        if never or self.permanent.any():
            rows.append(("never seen", f"{filled} of {never} never-observed cells filled by default; "
                                       f"{int(self.permanent.sum())} in the permanent mask stay NaN"))
        if self.validation:
            from .baselines.heldout import ratio_text  # here: the baselines package imports this module

            v = self.validation
            rmse = ", ".join(f"{k} {x:.3g}" for k, x in v["rmse"].items())
            best = v.get("best_classical")
            ratio = ratio_text(v)
            versus = (f"; best classical filler {best} {1 - v['classical'][best]:.3f}" + (f", {ratio}" if ratio else "")
                      if best else "")
            under = (" under other steps' clouds" if "chosen_on" in v else
                     ", patches among observations, which flatter clouds' gaps" if masks.clouded(self.spec) else
                     ", every station's, each share of them held back in turn" if v.get("every_station") else "")
            rows.append(("validation", f"skill {v['skill']:.3f} = 1 - MSE / MSE of the mean fill, on {v['cells']} "
                                       f"held-back cells{under} (RMSE {rmse}){versus}"))
            if "chosen_on" in v:
                rows.append(("chosen on", f"the first guess, contexts and network on {v['chosen_on']['cells']} "
                                          "more held-back cells, patches among observations (the network's skill "
                                          f"there {1 - v['chosen_on']['nmse']:.3f}, which says less of the gaps)"))
            if v.get("first_guess") in v.get("first_guess_nmse", {}):
                alone = 1 - v["first_guess_nmse"][v["first_guess"]]
                folds = v.get("first_guess_folds")
                where = f"every station ({folds} shares held back in turn)" if folds else "the held-back cells"
                rows.append(("guess", f"first guess {v['first_guess']}, chosen among {len(v['first_guess_nmse'])} "
                                      f"on {where} (skill alone {alone:.3f})"))
            if "context_nmse" in v:
                scored = ", ".join(f"{name} {1 - nmse:.3f}" for name, nmse in v["context_nmse"].items())
                rows.append(("imputes", f"with {v['context']} contexts by default (skill by context: {scored})"))
            if "correction_weight" in v:
                kept = ", ".join(f"{name} {w:.2f}" for name, w in v["correction_weight"].items())
                whole = 1 - v["network_nmse"]
                rows.append(("correction", f"keeps a share of the network's correction to its first guess ({kept}), "
                                           f"fitted on the held-back cells; all of it: skill {whole:.3f}"))
            if "classical" in v:  # the skill of the classical fillers on the same cells, best first
                ranked = sorted(v["classical"].items(), key=lambda item: item[1])
                skipped = ", ".join(v["classical_skipped"])
                rows.append(("classical", (", ".join(f"{name} {1 - nmse:.3f}" for name, nmse in ranked) or "none")
                             + (f" (skipped: {skipped})" if skipped else "")))
        return rows

    def __repr__(self) -> str:
        return "<CtxDiffModel>\n" + "\n".join(f"  {k + ':':<12}{v}" for k, v in self._summary())

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self._summary())
        return f"<b>CtxDiffModel</b><table>{rows}</table>"


def load(path: str | os.PathLike) -> CtxDiffModel:
    """Read a model written by :meth:`CtxDiffModel.save`."""
    return CtxDiffModel.load(path)


def fit(obj, mask="auto", **options) -> CtxDiffModel:
    """Train a :class:`CtxDiffModel` on an incomplete cube; see :meth:`CtxDiffModel.fit`."""
    return CtxDiffModel.fit(obj, mask=mask, **options)


__all__ = ["CtxDiffModel", "ModelMismatch", "check_fits", "fit", "load", "position_fields"]

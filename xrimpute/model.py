"""CtxDiffModel: fit once on an incomplete cube, impute many; save and load.

This is where a cube (via :mod:`xrimpute.cube`) meets the core (masks,
diffusion, networks, training), which knows no xarray.
"""
from __future__ import annotations

import functools
import html
import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from . import cube, loader, masks
from .diffusion import VPSchedule, impute_ensemble, sample_multistep
from .nets import Denoiser
from .options import OPTIONS, mixed_precision
from .training import History, TrainConfig, atomic_save, resolve_device, seeded, train
from .windows import ArrayWindows, Piece, Tiling, impute_series, window_starts

FORMAT = "xrimpute-model"
FORMAT_VERSION = 1


class ModelMismatch(ValueError):
    """The data does not fit the model (other variables, grid or window)."""


def _versions() -> dict:
    out = {}
    for name in ("xrimpute", "torch", "xarray", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _is_degrees(attrs: dict) -> bool:
    return "degree" in str(attrs.get("units", "")).lower()


def position_fields(lat: np.ndarray, lon: np.ndarray, degrees: bool) -> np.ndarray:
    """Static inputs ``(3, H, W)`` telling the network where it is on the grid."""
    if degrees:
        la = np.deg2rad(lat)[:, None] * np.ones((1, lon.size))
        lo = np.deg2rad(lon)[None, :] * np.ones((lat.size, 1))
        return np.stack([np.sin(la), np.sin(lo), np.cos(lo)]).astype(np.float32)
    y = np.linspace(-1, 1, lat.size)[:, None] * np.ones((1, lon.size))
    x = np.linspace(-1, 1, lon.size)[None, :] * np.ones((lat.size, 1))
    return np.stack([y, x, np.zeros_like(x)]).astype(np.float32)


def _is_global(lon: np.ndarray, degrees: bool) -> bool:
    if not degrees or lon.size < 3:
        return False
    step = np.abs(np.diff(lon)).mean()
    return bool(abs(lon.size * step - 360.0) < 0.5 * step)


class CtxDiffModel:
    """A trained context-query diffusion model for one set of variables on one grid.

    Build one with :meth:`fit` (or ``obj.ctxdiff.fit(...)``), fill gaps with
    :meth:`impute`, keep it with :meth:`save` / :func:`xrimpute.load`.
    """

    def __init__(self, denoiser: Denoiser, spec: masks.MaskSpec, info: dict, mean: np.ndarray,
                 std: np.ndarray, valid: np.ndarray, history: History, schedule: VPSchedule = VPSchedule()):
        self.denoiser = denoiser.eval()
        self.spec = spec
        self.schedule = schedule
        self.info = info  # JSON-able: channels, variables, axes, grid, window, rates, validation, versions
        self.mean, self.std, self.valid = mean, std, valid
        self.history = history

    # -- properties ------------------------------------------------------------
    @property
    def channels(self) -> list[str]:
        return self.info["channels"]

    @property
    def window(self) -> int:
        return self.info["window"]

    @property
    def validation(self) -> dict:
        """Skill on observed cells held back from training (normalised MSE, per-variable RMSE)."""
        return self.info.get("validation", {})

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    # -- fitting ---------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        obj,
        mask="auto",
        *,
        window: int = 3,
        preset: str = "auto",
        steps: int = 2000,
        batch_size: int = 16,
        lr: float = 2e-3,
        max_time: float | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        device: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        periodic: bool | None = None,
        tile: tuple[int, int] | None = None,
        progress: bool | None = None,
        verbose: bool = True,
        init: CtxDiffModel | None = None,
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
        window : int, default 3
            Time steps the network sees at once.
        preset : {"auto", "tiny", "small", "base"}, default "auto"
            Network size; ``"auto"`` is ``"base"`` on a GPU and ``"tiny"`` on the CPU.
        steps : int, default 2000
            Training steps (optimiser updates).
        batch_size : int, default 16
            Windows per training step.
        lr : float, default 2e-3
            Peak learning rate of the optimiser.
        max_time : float, optional
            Stop training after this many seconds, whatever ``steps`` says.
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
        periodic : bool, optional
            Wrap the longitude axis in the convolutions; default: when the grid
            spans 360 degrees.
        tile : tuple of int, optional
            ``(rows, cols)``: train on random spatial tiles of a large grid (e.g.
            ``(128, 128)``), with the cells' position as an input so that one
            model serves the whole grid; imputation then blends overlapping tiles.
        progress : bool, optional
            Show a progress bar; default the ``progress`` of
            :func:`xrimpute.set_options` (True).
        verbose : bool, default True
            Report the mask that ``mask="auto"`` chose, and why (through
            :mod:`logging`, logger ``xrimpute``).
        init : CtxDiffModel, optional
            A model of the same variables, window and network to start from (warm
            start): its weights and normalisation are the starting point.
        **train_options
            Further optimisation settings of :class:`xrimpute.training.TrainConfig`
            (``warmup``, ``weight_decay``, ``ema_decay``, ``grad_clip``,
            ``val_every``, ``checkpoint_every``, ...).

        Returns
        -------
        CtxDiffModel
            The trained model; ``model.validation`` holds its skill on the
            held-back cells.

        Notes
        -----
        Dask-backed input (e.g. a zarr archive opened lazily) is never loaded
        whole: normalisation comes from a sample of its time chunks, windows are
        read piece by piece in the background, and validation uses a few windows
        spread over the archive that training never sees.
        """
        values, layout = cube.to_array(obj, lazy=True)
        lazy = not isinstance(values, np.ndarray)
        n, c, t, h, w = values.shape
        if t < window:
            raise cube.CubeError(f"only {t} time steps along {layout.axes.time!r}, fewer than window={window}; "
                                 "pass a smaller window or more time steps")
        stats = loader.statistics(values, seed=seed)  # all of an in-memory cube, a sample of a dask one's chunks
        cube.check_counts(stats.counts, layout)
        spec = masks.resolve(mask, stats.observed, verbose=verbose)
        masks.warn_if_unlearnable(spec, stats.observed, window)  # UserWarning if gaps get zero query probability
        device = resolve_device(OPTIONS["device"] if device is None else device)
        preset = ("base" if device.type == "cuda" else "tiny") if preset == "auto" else preset

        mean, std, valid = stats.mean, stats.std, stats.valid  # valid (C, H, W): cells observed at least once
        if init is not None:
            init._check(layout, obj)
            mean, std = init.mean, init.std

        coords = cube.coordinates(obj, layout)
        degrees = layout.axes.lat in obj.coords and _is_degrees(obj[layout.axes.lat].attrs)
        periodic = _is_global(coords["lon"], degrees) if periodic is None else periodic
        tile = None if tile is None else (min(int(tile[0]), h), min(int(tile[1]), w))
        static = position_fields(coords["lat"].astype(float), coords["lon"].astype(float), degrees)
        # tiles narrower than the grid are not periodic themselves; imputation wraps them round the globe instead
        with seeded(seed):  # the initial weights
            denoiser = Denoiser(c, window, torch.as_tensor(static), preset=preset,
                                periodic=periodic and (tile is None or tile[1] == w))
        if init is not None:
            if init.denoiser.config != denoiser.config:
                raise ModelMismatch(f"init= has the network {init.denoiser.config}, this fit builds "
                                    f"{denoiser.config}; pass the same window, preset and periodic")
            denoiser.load_state_dict(init.denoiser.state_dict())

        info = dict(
            channels=layout.channels, variables=layout.variables, channel_of=layout.channel_of,
            axes=asdict(layout.axes), grid=dict(lat=coords["lat"].astype(float).tolist(),
                                                lon=coords["lon"].astype(float).tolist()),
            window=window, degrees=degrees, tile=None if tile is None else list(tile), periodic=periodic,
            train_rate=stats.rate, statistics_chunks=list(stats.chunks),
            versions=_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        fingerprint = dict(channels=layout.channels, window=window, net=denoiser.config, spec=spec.to_dict())
        if tile is not None:
            fingerprint["tile"] = list(tile)
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, max_time=max_time, seed=seed,
                             **{"bf16": OPTIONS["dtype"] == "bfloat16", **train_options})
        validation = None
        if lazy:  # read piece by piece; a few windows spread over the archive are kept out to validate on
            reserved = loader.reserved_windows(n, t, window, val_fraction, (h, w), tile, seed)
            windows = loader.ChunkedWindows(values, window, mean, std, tile=tile, static=static, reserved=reserved,
                                            seed=seed, pin_memory=device.type == "cuda")
        else:
            observed = np.isfinite(values)
            x = np.nan_to_num((values - mean[None, :, None, None, None]) / std[None, :, None, None, None])
            generator = torch.Generator().manual_seed(seed)
            observed_t = torch.as_tensor(observed)
            heldout = (observed_t & ~masks.holdout_keep(spec, observed_t.shape, val_fraction, generator)).numpy()
            train_observed = observed & ~heldout
            windows = ArrayWindows(x, train_observed, window, tile=tile, static=static)
            if heldout.any():
                validation = _validation_windows(x, train_observed, heldout, window, tile, static, seed)
        try:
            if lazy and reserved:
                xs, ms, tiles = windows.read(reserved)
                keep = masks.holdout_keep(spec, tuple(ms.shape), val_fraction, torch.Generator().manual_seed(seed))
                heldout = ms & ~keep
                validation = (xs, ms & keep, heldout, tiles)
            validate = None if validation is None else _validator(*validation, spec, device, seed)
            ema, history = train(denoiser, windows, spec, config, device=device, validate=validate,
                                 checkpoint=checkpoint, fingerprint=fingerprint,
                                 progress=OPTIONS["progress"] if progress is None else progress)
        finally:
            if lazy:
                windows.close()
        if history.val:
            final = history.val[-1]
            rmse = {name: float(np.sqrt(final["mse_per_channel"][i]) * std[i]) for i, name in enumerate(layout.channels)}
            info["validation"] = dict(nmse=final["nmse"], skill=1 - final["nmse"], rmse=rmse,
                                      cells=int(heldout.sum()))
        info["train"] = dict(asdict(config), preset=preset, device=str(device))
        return cls(ema.cpu(), spec, info, mean, std, valid, history)

    # -- imputation ------------------------------------------------------------
    def _check(self, layout: cube.Layout, obj) -> None:
        if layout.channels != self.channels:
            raise ModelMismatch(f"this model was trained on channels {self.channels}, the data has "
                                f"{layout.channels}; select the same variables (ds[[...]]) or fit a new model")
        coords = cube.coordinates(obj, layout)
        for key in ("lat", "lon"):
            grid = np.asarray(self.info["grid"][key])
            seen = coords[key].astype(float)
            if grid.shape != seen.shape or not np.allclose(grid, seen, rtol=0, atol=1e-6 * max(1.0, np.abs(grid).max())):
                raise ModelMismatch(
                    f"the {key} grid differs from the model's ({grid.size} points from {grid[0]:g} to {grid[-1]:g}; "
                    f"the data has {seen.size} from {seen[0]:g} to {seen[-1]:g}); regrid the data to the model's grid"
                )

    def _normalise(self, values: np.ndarray) -> np.ndarray:
        return np.nan_to_num((values - self.mean[None, :, None, None, None]) / self.std[None, :, None, None, None])

    def tiling(self, overlap: int | None = None) -> Tiling:
        """Tiles of imputation: the training tile, neighbours sharing ``overlap`` cells (default a quarter
        of the tile), wrapping round a global grid; one tile of the whole grid for an untiled model."""
        grid = (len(self.info["grid"]["lat"]), len(self.info["grid"]["lon"]))
        tile = tuple(self.info.get("tile") or grid)
        if tile == grid:
            return Tiling(grid)
        shared = [size // 4 if overlap is None else min(overlap, size - 1) for size in tile]
        return Tiling(tile, tuple(shared), periodic=self.info.get("periodic", False))

    def observed_rate(self, values):
        """Share of observed cells of ``values`` ``(N, C, T, H, W)`` in the grid columns the model knows.

        A float for a numpy array, a lazy dask scalar for a dask array.
        """
        columns = self.valid.any(0)
        seen = (np.isfinite(values) & columns).sum()
        rate = seen / (values.shape[0] * values.shape[1] * values.shape[2] * int(columns.sum()))
        return float(rate) if isinstance(values, np.ndarray) else rate

    def impute(self, obj, K: int = 10, *, seed: int = 0, return_std: bool = False, stride: int = 1,
               batch_size: int = 8, device: str | None = None, adapt: bool = True,
               fill_never_observed: bool = False, progress: bool | None = None,
               spec: masks.MaskSpec | None = None, overlap: int | None = None, observed_rate: float | None = None):
        """Fill the gaps of ``obj``: same type, dims, coords and attrs, observed values kept.

        Parameters
        ----------
        obj : xarray.DataArray or xarray.Dataset
            Data with the model's variables on the model's grid, NaN in the gaps;
            dask-backed data gives a lazy result.
        K : int, default 10
            Context masks averaged per window (the single-step ensemble).
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
        fill_never_observed : bool, default False
            Also fill cells never observed in the training data (land, outside the
            domain); by default they stay NaN.
        progress : bool, optional
            Show a progress bar; default the ``progress`` of
            :func:`xrimpute.set_options` (True).
        spec : xrimpute.masks.MaskSpec, optional
            The context sampler at inference; default the one of training.
        overlap : int, optional
            Cells shared by neighbouring tiles of a model fitted with ``tile``;
            default a quarter of the tile.
        observed_rate : float, optional
            Share of observed cells, for ``adapt``; default measured on ``obj``.
            For dask-backed input that is a lazy pass over all of it, so pass it
            when imputing a long archive.

        Returns
        -------
        xarray.DataArray or xarray.Dataset
            ``obj`` with its gaps filled. With ``return_std=True``, a Dataset also
            holds the ``<variable>_std`` spreads, and a DataArray comes back as a
            ``(filled, spread)`` pair.

        Notes
        -----
        Dask-backed input gives a lazy, dask-backed result that reads nothing until
        computed (:func:`xrimpute.distributed.impute_lazy`); its values equal the
        in-memory imputation's, as every window draws its randomness from its own
        seed (:func:`xrimpute.windows.window_seed`).
        """
        values, layout = cube.to_array(obj, lazy=True)
        self._check(layout, obj)
        device = OPTIONS["device"] if device is None else device
        progress = OPTIONS["progress"] if progress is None else progress
        spec = self.spec if spec is None else spec
        options = dict(K=K, seed=seed, stride=stride, batch_size=batch_size, overlap=overlap,
                       fill_never_observed=fill_never_observed)
        if not isinstance(values, np.ndarray):
            from .distributed import impute_lazy  # the dask machinery, only for dask input

            return impute_lazy(self, obj, values, layout, spec, adapt=adapt, observed_rate=observed_rate,
                               return_std=return_std, device=device, **options)
        if adapt:
            spec = spec.adapted(self.info["train_rate"], self.observed_rate(values) if observed_rate is None
                                else observed_rate)
        device = resolve_device(device)
        self.denoiser.to(device)
        filled, spread = self.fill(values, spec, device=device, progress=progress, **options)
        self.denoiser.cpu()
        return self.as_cube(filled, spread, obj, layout, return_std)

    def fill(self, values: np.ndarray, spec: masks.MaskSpec, *, K: int = 10, seed: int = 0, stride: int = 1,
             batch_size: int = 8, device: str | torch.device = "cpu", overlap: int | None = None,
             fill_never_observed: bool = False, piece: Piece | None = None, net=None, progress: bool = False):
        """The imputation engine on arrays: ``values`` ``(N, C, T, H, W)`` (NaN = gap) in data units.

        ``values`` is the whole series, or with ``piece`` a cut of it
        (:class:`xrimpute.windows.Piece`); ``net`` is the denoiser to run (default
        the model's, on the device it is on). Returns ``(filled, spread)`` of the
        piece's box; :meth:`impute`, lazy imputation and
        :func:`xrimpute.reconstruct` all come here.
        """
        piece = piece or Piece.whole(values.shape)
        device = torch.device(device)
        observed = np.isfinite(values)
        tiling = self.tiling(overlap)
        tiled = tiling.size != tuple(piece.full[1:]) and self.denoiser.static.shape[0] > 0
        static = self.denoiser.static.cpu().numpy() if tiled else None  # cut per tile
        mean, std = impute_series(net or self.denoiser, self._normalise(values), observed, spec, self.schedule,
                                  self.window, K=K, stride=stride, batch_size=batch_size, device=device, seed=seed,
                                  autocast=mixed_precision(device), progress=progress, tiling=tiling, static=static,
                                  piece=piece)
        seen = piece.inside(observed)
        scale, offset = self.std[None, :, None, None, None], self.mean[None, :, None, None, None]
        filled = np.where(seen, piece.inside(values), mean * scale + offset)
        spread = std * scale
        if not fill_never_observed:
            (ya, yb), (xa, xb) = piece.box[1:]
            never = ~self.valid[None, :, None, ya:yb, xa:xb]
            filled = np.where(never & ~seen, np.nan, filled)
            spread = np.where(never, np.nan, spread)
        return filled, spread

    def as_cube(self, filled, spread, obj, layout: cube.Layout, return_std: bool = False):
        """Arrays ``(N, C, T, H, W)`` (numpy or dask) in the shape of ``obj``, observed values kept bit for bit."""
        result = obj.fillna(cube.from_array(filled, obj, layout))
        if not return_std:
            return result
        spread = cube.from_array(spread, obj, layout, suffix="_std")
        if layout.is_dataarray:
            return result, spread
        return result.merge(spread)

    def sample(self, obj, n: int = 16, steps: int = 50, *, K: int = 10, eta: float = 0.0,
               handover: float | None = -1.0, seed: int = 0, batch_size: int = 16, device: str | None = None,
               adapt: bool = True, dim: str = "member", fill_never_observed: bool = False,
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
        fill_never_observed : bool, default False
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
        self._check(layout, obj)
        if dim in obj.dims:
            raise ValueError(f"the data already has a dim {dim!r}; name the ensemble dim otherwise with dim=")
        observed = np.isfinite(values)
        spec = self.spec
        if adapt:
            test_rate = float(observed[:, :, :, self.valid.any(0)].mean())
            spec = spec.adapted(self.info["train_rate"], test_rate)
        # the sampler's state is complete: contexts keep the input fraction seen in training
        diffusion_spec = self.spec.adapted(self.info["train_rate"], 1.0)
        device = resolve_device(OPTIONS["device"] if device is None else device)
        progress = OPTIONS["progress"] if progress is None else progress
        self.denoiser.to(device)
        x = self._normalise(values)
        window, total_steps = self.window, values.shape[2]
        starts = window_starts(total_steps, window, window)
        new_from = {s: max(0, (starts[k - 1] + window if k else 0) - s) for k, s in enumerate(starts)}
        jobs = [(i, s) for i in range(values.shape[0]) for s in starts]
        per_call = max(1, batch_size // n)
        domain = torch.as_tensor(self.valid)[None, :, None].to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        draws = np.zeros((n, *values.shape), np.float32)
        for first in tqdm(range(0, len(jobs), per_call), desc="sampling", disable=not progress, leave=False):
            batch = jobs[first : first + per_call]
            xb = torch.as_tensor(np.stack([x[i, :, s : s + window] for i, s in batch])).to(device)
            mb = torch.as_tensor(np.stack([observed[i, :, s : s + window] for i, s in batch])).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=mixed_precision(device)):
                out = sample_multistep(self.denoiser, xb, mb, self.schedule, diffusion_spec, imputation_spec=spec,
                                       K=K, members=n, steps=steps, eta=eta, handover=handover, domain=domain,
                                       generator=generator, max_batch=batch_size)
            out = out.float().cpu().numpy()
            for j, (i, s) in enumerate(batch):
                draws[:, i, :, s + new_from[s] : s + window] = out[:, j, :, new_from[s] :]
        self.denoiser.cpu()
        draws = draws * self.std[None, None, :, None, None, None] + self.mean[None, None, :, None, None, None]
        if not fill_never_observed:
            draws = np.where(~self.valid[None, None, :, None] & ~observed, np.nan, draws)
        members = [obj.fillna(cube.from_array(member, obj, layout)) for member in draws]
        stacked = xr.concat(members, dim=dim, data_vars=layout.variables if not layout.is_dataarray else "all",
                            coords="minimal", compat="override", combine_attrs="override")
        return stacked.assign_coords({dim: np.arange(n)})

    # -- persistence -----------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights and configuration to one file, atomically (loaded safely with ``weights_only``)."""
        config = dict(info=self.info, spec=self.spec.to_dict(), schedule=asdict(self.schedule),
                      net=self.denoiser.config, history=self.history.to_dict())
        payload = dict(format=FORMAT, format_version=FORMAT_VERSION, config=json.dumps(config),
                       state=self.denoiser.state_dict(), mean=torch.as_tensor(self.mean),
                       std=torch.as_tensor(self.std), valid=torch.as_tensor(self.valid))
        atomic_save(payload, path)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CtxDiffModel:
        """Read a model written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no model file at {str(path)!r}")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not an xrimpute model file (written by CtxDiffModel.save)")
        if payload["format_version"] > FORMAT_VERSION:
            raise ValueError(f"{str(path)!r} was written by a newer xrimpute; upgrade xrimpute to read it")
        config = json.loads(payload["config"])
        net = dict(config["net"])
        static = payload["state"]["static"]
        denoiser = Denoiser(net.pop("n_channels"), net.pop("window"), static, **net)
        denoiser.load_state_dict(payload["state"])
        return cls(denoiser, masks.MaskSpec.from_dict(config["spec"]), config["info"],
                   payload["mean"].numpy(), payload["std"].numpy(), payload["valid"].numpy(),
                   History(**config["history"]), VPSchedule(**config["schedule"]))

    # -- display ---------------------------------------------------------------
    def _summary(self) -> list[tuple[str, str]]:
        train_info = self.info.get("train", {})
        rows = [
            ("variables", ", ".join(self.channels)),
            ("grid", f"{len(self.info['grid']['lat'])} x {len(self.info['grid']['lon'])}, window {self.window}"),
            ("mask", repr(self.spec)),
            ("network", f"{self.denoiser.config['preset']} U-Net, {self.n_parameters / 1e6:.2f} M parameters"),
            ("training", f"{self.history.step[-1] if self.history.step else 0} steps in "
                         f"{self.history.seconds:.0f} s on {train_info.get('device', '?')}"),
        ]
        if self.validation:
            v = self.validation
            rmse = ", ".join(f"{k} {x:.3g}" for k, x in v["rmse"].items())
            rows.append(("validation", f"skill {v['skill']:.3f} = 1 - MSE / MSE of the mean fill, on {v['cells']} "
                                       f"held-back cells (RMSE {rmse})"))
        return rows

    def __repr__(self) -> str:
        return "<CtxDiffModel>\n" + "\n".join(f"  {k + ':':<12}{v}" for k, v in self._summary())

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self._summary())
        return f"<b>CtxDiffModel</b><table>{rows}</table>"


def _validation_windows(x, train_observed, heldout, window, tile, static, seed, max_windows: int = 16):
    """Up to ``max_windows`` windows (tiles) with held-back cells: ``(x, observed, heldout, static)`` tensors."""
    n, c, t, h, w = x.shape
    (th, tw) = tile or (h, w)
    jobs = [(i, s) for i in range(n) for s in window_starts(t, window, window)]
    jobs = [j for j in jobs if heldout[j[0], :, j[1] : j[1] + window].any()]
    jobs = [jobs[k] for k in np.linspace(0, len(jobs) - 1, min(max_windows, len(jobs))).astype(int)]
    rng = np.random.default_rng(seed)
    cuts = [(i, slice(s, s + window), slice(r, r + th), slice(q, q + tw))
            for i, s in jobs for r, q in [(rng.integers(h - th + 1), rng.integers(w - tw + 1))]]
    xs, ms, hs = (torch.as_tensor(np.stack([a[i, :, ts, ys, zs] for i, ts, ys, zs in cuts]))
                  for a in (x, train_observed, heldout))
    tiles = None if tile is None else torch.as_tensor(np.stack([static[:, ys, zs] for _, _, ys, zs in cuts]))
    return xs, ms, hs, tiles


def _validator(xs, ms, hs, tiles, spec, device, seed, K: int = 4):
    """Score the EMA network on held-back observed cells ``hs`` of fixed windows, seeing ``ms``."""

    def validate(net) -> dict:
        generator = torch.Generator(device=device).manual_seed(seed)
        if tiles is not None:  # the ensemble's K x B batch repeats the windows k-major
            net = functools.partial(net, static=tiles.repeat(K, 1, 1, 1).to(device))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=mixed_precision(device)):
            mean, _ = impute_ensemble(net, xs.to(device), ms.to(device), spec, VPSchedule(), K=K, generator=generator)
        err = ((mean.float().cpu() - xs) ** 2 * hs).sum(dim=(0, 2, 3, 4))
        cells = hs.sum(dim=(0, 2, 3, 4)).clamp(min=1)
        ref = (xs**2 * hs).sum(dim=(0, 2, 3, 4))  # the observed-mean fill is 0 in normalised units
        return dict(nmse=float(err.sum() / ref.sum().clamp(min=1e-12)), mse_per_channel=(err / cells).tolist())

    return validate


def load(path: str | os.PathLike) -> CtxDiffModel:
    """Read a model written by :meth:`CtxDiffModel.save`."""
    return CtxDiffModel.load(path)


def fit(obj, mask="auto", **options) -> CtxDiffModel:
    """Train a :class:`CtxDiffModel` on an incomplete cube; see :meth:`CtxDiffModel.fit`."""
    return CtxDiffModel.fit(obj, mask=mask, **options)


__all__ = ["CtxDiffModel", "ModelMismatch", "fit", "load", "position_fields"]

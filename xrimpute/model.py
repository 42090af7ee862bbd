"""CtxDiffModel: fit once on an incomplete cube, impute many; save and load.

This is where a cube (via :mod:`xrimpute.cube`) meets the core (masks,
diffusion, networks, training), which knows no xarray.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from . import cube, masks
from .diffusion import VPSchedule, impute_ensemble
from .nets import Denoiser
from .training import History, TrainConfig, atomic_save, resolve_device, train
from .windows import ArrayWindows, impute_series, window_starts

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
        device: str = "auto",
        checkpoint: str | os.PathLike | None = None,
        periodic: bool | None = None,
        progress: bool = True,
        verbose: bool = True,
        **train_options,
    ) -> CtxDiffModel:
        """Train on an incomplete cube (NaN = unobserved); no complete sample is needed.

        Parameters
        ----------
        obj : DataArray or Dataset with time, latitude and longitude dims (any order).
        mask : ``"auto"``, ``"pixel"``, ``"block"`` or a :class:`xrimpute.masks.MaskSpec`:
            how the observations are structured; contexts copy that structure.
        window : time steps per sample (default 3).
        preset : network size, ``"tiny"``, ``"small"``, ``"base"`` or ``"auto"``
            (``"base"`` on a GPU, ``"tiny"`` on the CPU).
        steps, batch_size, lr, max_time : optimisation budget (``max_time`` in seconds).
        val_fraction : share of observed cells held back (with the mask's structure)
            to score the model; they never enter training.
        checkpoint : file to write the training state to (atomically); an existing
            one is resumed.
        periodic : wrap the longitude axis in convolutions (default: when it spans 360 deg).
        """
        values, layout = cube.to_array(obj)
        cube.check_observed(values, layout)
        n, c, t, h, w = values.shape
        if t < window:
            raise cube.CubeError(f"only {t} time steps along {layout.axes.time!r}, fewer than window={window}; "
                                 "pass a smaller window or more time steps")
        observed = np.isfinite(values)
        spec = masks.resolve(mask, observed, verbose=verbose)
        device = resolve_device(device)
        preset = ("base" if device.type == "cuda" else "tiny") if preset == "auto" else preset

        mean = np.array([np.nanmean(values[:, i]) for i in range(c)], np.float32)
        std = np.array([np.nanstd(values[:, i]) for i in range(c)], np.float32)
        std = np.where(std > 0, std, 1.0).astype(np.float32)
        x = np.nan_to_num((values - mean[None, :, None, None, None]) / std[None, :, None, None, None])
        valid = observed.any(axis=(0, 2))  # (C, H, W): cells observed at least once

        generator = torch.Generator().manual_seed(seed)
        observed_t = torch.as_tensor(observed)
        heldout = (observed_t & ~masks.holdout_keep(spec, observed_t.shape, val_fraction, generator)).numpy()
        train_observed = observed & ~heldout

        coords = cube.coordinates(obj, layout)
        degrees = layout.axes.lat in obj.coords and _is_degrees(obj[layout.axes.lat].attrs)
        periodic = _is_global(coords["lon"], degrees) if periodic is None else periodic
        static = position_fields(coords["lat"].astype(float), coords["lon"].astype(float), degrees)
        denoiser = Denoiser(c, window, torch.as_tensor(static), preset=preset, periodic=periodic)

        info = dict(
            channels=layout.channels, variables=layout.variables, channel_of=layout.channel_of,
            axes=asdict(layout.axes), grid=dict(lat=coords["lat"].astype(float).tolist(),
                                                lon=coords["lon"].astype(float).tolist()),
            window=window, degrees=degrees,
            train_rate=float(observed[:, :, :, valid.any(0)].mean()),
            versions=_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        fingerprint = dict(channels=layout.channels, window=window, net=denoiser.config, spec=spec.to_dict())
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, max_time=max_time, seed=seed, **train_options)
        windows = ArrayWindows(x, train_observed, window)
        validate = _validator(x, train_observed, heldout, spec, window, device, seed) if heldout.any() else None
        ema, history = train(denoiser, windows, spec, config, device=device, validate=validate,
                             checkpoint=checkpoint, fingerprint=fingerprint, progress=progress)
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

    def impute(self, obj, K: int = 10, *, seed: int = 0, return_std: bool = False, stride: int = 1,
               batch_size: int = 8, device: str = "auto", adapt: bool = True,
               fill_never_observed: bool = False, progress: bool = True):
        """Fill the gaps of ``obj``: same type, dims, coords and attrs, observed values kept.

        Parameters
        ----------
        K : context masks averaged per window (the single-step ensemble).
        return_std : also return the ensemble spread (as ``<var>_std`` variables of a
            Dataset, or a second DataArray).
        stride : step between overlapping windows (1 = every window position).
        adapt : keep the effective context fraction of training when the data is
            observed at another rate (paper G.3).
        fill_never_observed : also fill cells never observed in the training data
            (land, outside the domain); by default they stay NaN.
        """
        values, layout = cube.to_array(obj)
        self._check(layout, obj)
        observed = np.isfinite(values)
        spec = self.spec
        if adapt:
            test_rate = float(observed[:, :, :, self.valid.any(0)].mean())
            spec = spec.adapted(self.info["train_rate"], test_rate)
        device = resolve_device(device)
        self.denoiser.to(device)
        mean, std = impute_series(self.denoiser, self._normalise(values), observed, spec, self.schedule,
                                  self.window, K=K, stride=stride, batch_size=batch_size, device=device,
                                  seed=seed, autocast=device.type == "cuda", progress=progress)
        self.denoiser.cpu()
        scale, offset = self.std[None, :, None, None, None], self.mean[None, :, None, None, None]
        filled = np.where(observed, values, mean * scale + offset)
        spread = std * scale
        if not fill_never_observed:
            never = ~self.valid[None, :, None]
            filled = np.where(never & ~observed, np.nan, filled)
            spread = np.where(never, np.nan, spread)
        result = cube.from_array(filled, obj, layout)
        if not return_std:
            return result
        spread = cube.from_array(spread, obj, layout, suffix="_std")
        if layout.is_dataarray:
            return result, spread
        return result.merge(spread)

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
            rows.append(("validation", f"skill {v['skill']:.3f} on {v['cells']} held-back cells (RMSE {rmse})"))
        return rows

    def __repr__(self) -> str:
        return "<CtxDiffModel>\n" + "\n".join(f"  {k + ':':<12}{v}" for k, v in self._summary())

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self._summary())
        return f"<b>CtxDiffModel</b><table>{rows}</table>"


def _validator(x, train_observed, heldout, spec, window, device, seed, max_windows: int = 16, K: int = 4):
    """Score the EMA network on held-back observed cells of a fixed set of windows."""
    n, c, t = x.shape[:3]
    jobs = [(i, s) for i in range(n) for s in window_starts(t, window, window)]
    jobs = [j for j in jobs if heldout[j[0], :, j[1] : j[1] + window].any()]
    jobs = [jobs[k] for k in np.linspace(0, len(jobs) - 1, min(max_windows, len(jobs))).astype(int)]
    xs = torch.as_tensor(np.stack([x[i, :, s : s + window] for i, s in jobs]))
    ms = torch.as_tensor(np.stack([train_observed[i, :, s : s + window] for i, s in jobs]))
    hs = torch.as_tensor(np.stack([heldout[i, :, s : s + window] for i, s in jobs]))

    def validate(net) -> dict:
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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

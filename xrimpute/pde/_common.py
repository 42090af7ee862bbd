"""Pieces shared by the PDE generators: seeding, precision, batching, CF output."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from ..errors import ArgumentError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_positive(**values) -> None:
    """Raise a clear error for any argument that must be positive but is not."""
    for name, value in values.items():
        if not value > 0:
            raise ArgumentError(f"{name} must be positive, got {value!r}")


def resolve(dtype: str, device) -> tuple[torch.dtype, torch.device]:
    """Torch dtype and device for a generator run."""
    if dtype not in DTYPES:
        raise ArgumentError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype], torch.device(device or "cpu")


def sample_rngs(seed: int, n_samples: int) -> list[np.random.Generator]:
    """One independent generator per trajectory.

    Trajectory ``i`` depends only on ``seed`` and ``i``, so the first samples of a
    large run equal a smaller run with the same seed, whatever the batching.
    """
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_samples)]


def batches(n_samples: int, batch_size: int | None) -> list[slice]:
    """Slices that cover the samples in chunks of at most ``batch_size``."""
    step = n_samples if batch_size is None else batch_size
    check_positive(batch_size=step)
    return [slice(start, min(start + step, n_samples)) for start in range(0, n_samples, step)]


def progress_bar(total: int, enabled: bool, desc: str):
    return tqdm(total=total, disable=not enabled, desc=desc, unit="snapshot")


def as_tensor(array) -> tuple[torch.Tensor, bool]:
    """A float tensor for a numpy or torch input, and whether the input was numpy.

    Numpy input is computed on in float64; a floating tensor keeps its dtype and device.
    """
    if isinstance(array, torch.Tensor):
        return (array if array.is_floating_point() else array.double()), False
    return torch.as_tensor(np.asarray(array, dtype=np.float64)), True


def like_input(tensor: torch.Tensor, was_numpy: bool):
    return tensor.cpu().numpy() if was_numpy else tensor


def spectral_coords(size: int, length: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular wavenumbers ``(ky, kx)`` of an ``rfft2`` on a periodic square, shaped to broadcast."""
    step = length / size
    ky = 2 * np.pi * torch.fft.fftfreq(size, d=step, dtype=dtype, device=device)
    kx = 2 * np.pi * torch.fft.rfftfreq(size, d=step, dtype=dtype, device=device)
    return ky[:, None], kx[None, :]


def cube_dataset(
    fields: dict[str, tuple[np.ndarray, dict]],
    per_sample: dict[str, tuple[np.ndarray, dict]],
    x: np.ndarray,
    time: np.ndarray,
    attrs: dict,
) -> xr.Dataset:
    """A CF-annotated ``(sample, time, y, x)`` dataset on a periodic square grid of cells at ``x``.

    ``fields`` and ``per_sample`` map names to ``(values, attrs)``; ``attrs`` are the
    dataset attributes (title, equation, parameters, seed). Each space coordinate
    declares the domain's length in its ``period`` attribute, so that a fit wraps
    the grid round (:meth:`xrimpute.CtxDiffModel.fit`, ``periodic``).
    """
    n_samples = next(iter(fields.values()))[0].shape[0]
    space = {"units": "1", "long_name": "{} (nondimensional)", "period": float(x[1] - x[0]) * x.size}
    coords = {
        "sample": ("sample", np.arange(n_samples), {"long_name": "independent trajectory"}),
        "time": ("time", time, {"units": "1", "axis": "T", "standard_name": "time",
                                "long_name": "time (nondimensional)"}),
        "y": ("y", x, {**space, "axis": "Y", "long_name": space["long_name"].format("y")}),
        "x": ("x", x, {**space, "axis": "X", "long_name": space["long_name"].format("x")}),
    }
    data_vars = {name: (("sample", "time", "y", "x"), values, meta) for name, (values, meta) in fields.items()}
    data_vars |= {name: ("sample", values, meta) for name, (values, meta) in per_sample.items()}
    return xr.Dataset(data_vars, coords=coords, attrs={"Conventions": "CF-1.8", **attrs})

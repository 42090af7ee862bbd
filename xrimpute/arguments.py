"""Checks of the numeric arguments of fit, impute, sample and reconstruct, made before any long computation.

One rule per argument name (:data:`RULES`), so that ``K`` means the same
thing wherever it is passed. :func:`check` raises
:class:`~xrimpute.errors.ArgumentError` (a ``ValueError``) for a value out of
range and :class:`~xrimpute.errors.ArgumentTypeError` (a ``TypeError``) for
a value of the wrong type, each naming the argument, the value and the fix.
No xarray here.
"""
from __future__ import annotations

import math
import numbers
import os

import torch

from .errors import ArgumentError, ArgumentTypeError

SEED_LIMIT = 2**63  # torch and numpy both take seeds below this


def _whole(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be a whole number >= {least}, got {value!r} "
                                f"({type(value).__name__}); pass e.g. {name}={max(least, 1)}")
    if value < least:
        raise ArgumentError(f"{name} must be >= {least}, got {value}")


def _positive_int(name: str, value) -> None:
    _whole(name, value, 1)


def _seed(name: str, value) -> None:
    _whole(name, value, 0)
    if value >= SEED_LIMIT:
        raise ArgumentError(f"{name} must be below 2**63, got {value}")


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ArgumentError(f"{name} must be finite, got {value}")
    return float(value)


def _positive(name: str, value) -> None:
    if _real(name, value) <= 0:
        raise ArgumentError(f"{name} must be > 0, got {value}")


def _rate(name: str, value) -> None:
    if not 0 < _real(name, value) <= 1:
        raise ArgumentError(f"{name} is a share of observed cells and must lie in (0, 1], got {value}")


def _fraction(name: str, value) -> None:
    if not 0 <= _real(name, value) < 1:
        raise ArgumentError(f"{name} must lie in [0, 1), got {value}")


def _unit(name: str, value) -> None:
    if not 0 <= _real(name, value) <= 1:
        raise ArgumentError(f"{name} must lie in [0, 1], got {value}")


def _count(name: str, value) -> None:
    _whole(name, value, 0)


def _context(name: str, value) -> None:
    if value not in CONTEXTS:
        raise ArgumentError(f"{name} must be one of {CONTEXTS} (None: the model's choice from its fit), got {value!r}")


def _tile(name: str, value) -> None:
    if isinstance(value, str) and value == "auto":  # the fit's choice by grid size (xrimpute.engine.training_tile)
        return
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ArgumentTypeError(f"{name} must be a pair (rows, cols) such as (64, 64), got {value!r}")
    for size in value:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise ArgumentTypeError(f"{name} must be a pair of whole numbers such as (64, 64), got {value!r}")
        if size < 1:
            raise ArgumentError(f"{name} sizes must be >= 1, got {tuple(value)}; pass e.g. tile=(64, 64), or "
                                "tile=None to train on the whole grid")


CONTEXTS = ("sampled", "observed")  # the contexts of imputation (xrimpute.diffusion.impute_ensemble)

RULES = {
    "K": _positive_int,
    "steps": _positive_int,
    "window": _positive_int,
    "batch_size": _positive_int,
    "stride": _positive_int,
    "n": _positive_int,
    "workers": _positive_int,
    "seed": _seed,
    "tile": _tile,
    "overlap": _count,
    "patience": _count,
    "observed_rate": _rate,
    "max_time": _positive,
    "lr": _positive,
    "val_fraction": _fraction,
    "eta": _unit,
    "context": _context,
}
OPTIONAL = {"tile", "overlap", "observed_rate", "max_time", "steps", "window", "context"}  # None means "the default"


def check(**arguments) -> None:
    """Check each argument by the rule for its name; ``None`` passes for those that default to None.

    >>> check(K=10, stride=1, observed_rate=None)
    >>> check(K=0)
    Traceback (most recent call last):
    ...
    xrimpute.errors.ArgumentError: K must be >= 1, got 0
    """
    for name, value in arguments.items():
        if value is None and name in OPTIONAL:
            continue
        RULES[name](name, value)


def check_stride(stride: int, window: int) -> None:
    """Windows ``stride`` apart must overlap or touch, or the steps between them are never imputed."""
    check(stride=stride, window=window)
    if stride > window:
        raise ArgumentError(f"stride={stride} is larger than the model's window of {window} steps: "
                            f"{stride - window} step(s) between windows would stay unfilled; pass stride <= {window}")


def check_device(device) -> torch.device:
    """``device`` as a torch device that exists here (``"auto"`` and None pass as they are resolved later)."""
    if device is None or device == "auto":
        return device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ArgumentError(f"device={device!r} is not a torch device; pass 'auto', 'cpu', 'cuda' or 'cuda:0'") from err
    kind = resolved.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device={device!r}, but this torch has no usable CUDA GPU "
                                f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
                                "pass device='cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ArgumentError(f"device={device!r}, but only {torch.cuda.device_count()} CUDA device(s) are "
                                "visible; pass a smaller index")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise ArgumentError(f"device={device!r}, but the MPS backend is not available; pass 'cpu' or 'auto'")
    elif kind != "cpu":
        raise ArgumentError(f"device={device!r}: xrimpute runs on 'cpu', 'cuda' or 'mps'; pass one of those or 'auto'")
    return resolved


def memory_available(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's total, or the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        import psutil  # a dependency of distributed

        return psutil.virtual_memory().total
    except ImportError:  # pragma: no cover
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ensemble_bytes(K: int, batch_size: int, channels: int, window: int, rows: int, cols: int, width: int) -> int:
    """A lower bound on the memory one batch of the single-step ensemble allocates, in bytes.

    The ``K * batch_size`` noised windows, their contexts and the predictions
    (``channels * window`` planes each), and the first layer's ``width``
    feature maps, all float32. The network needs more; this is what it
    certainly needs.
    """
    planes = 3 * channels * window + width
    return 4 * K * batch_size * planes * rows * cols


def check_memory(K: int, batch_size: int, channels: int, window: int, rows: int, cols: int, width: int,
                 device) -> None:
    """Refuse ``K`` and ``batch_size`` whose ensemble cannot fit in the device's memory, before allocating it."""
    check(K=K, batch_size=batch_size)
    if device in (None, "auto"):  # as xrimpute.training.resolve_device will choose
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    need, have = ensemble_bytes(K, batch_size, channels, window, rows, cols, width), memory_available(device)
    if need > have:
        raise ArgumentError(
            f"K={K} contexts x batch_size={batch_size} windows of {rows} x {cols} cells need at least "
            f"{need / 2**30:.3g} GiB, more than the {have / 2**30:.3g} GiB of {device.type} memory; "
            f"pass a smaller K (K=10 is the usual choice) or batch_size, or a tiled model"
        )


__all__ = ["RULES", "check", "check_device", "check_memory", "check_stride", "ensemble_bytes", "memory_available"]

"""Reading the torch files xrimpute writes (model files, checkpoints), safely and with clear errors.

``torch.load(weights_only=True)`` only rebuilds tensors and plain data, so a
crafted pickle cannot run code; what it cannot read (random bytes, a
truncated file, a pickle of other objects) becomes a
:class:`~xrimpute.errors.ModelFileError` that names the file, never torch's
advice to retry with ``weights_only=False``. No xarray here.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import ModelFileError


def read(path: str | os.PathLike, what: str = "model file", map_location="cpu") -> dict:
    """The dict stored in the torch file at ``path``; ``what`` names the kind of file in messages."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory, not an xrimpute {what}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{str(path)!r} is empty (0 bytes): not an xrimpute {what}; it was probably cut short "
                             "while being copied, so copy or write it again")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, ImportError,
            zipfile.BadZipFile, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if any(word in reason.lower() for word in ("weights only", "weights_only", "unsupported global")):
            reason = "it holds objects other than tensors and plain data, which are never unpickled"
        raise ModelFileError(f"{str(path)!r} is not an xrimpute {what}: it could not be read safely ({reason})") \
            from None
    if not isinstance(payload, dict):
        raise ModelFileError(f"{str(path)!r} is not an xrimpute {what}: it holds a {type(payload).__name__}")
    return payload


__all__ = ["read"]

"""Where sample data lives on disk: one cache for downloads and generated samples (written with
:func:`xrimpute.atomic.atomic_write`)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pooch

DATA_DIR_ENV = "XRIMPUTE_DATA_DIR"


def cache_dir() -> Path:
    """The sample-data cache: ``$XRIMPUTE_DATA_DIR`` if set, else the OS cache for xrimpute."""
    return Path(os.environ.get(DATA_DIR_ENV) or pooch.os_cache("xrimpute"))


def _partner(path: Path, suffix: str) -> Path:
    """A fresh hidden name beside ``path`` (same folder, so ``os.replace`` onto ``path`` is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")


def with_default_permissions(path: Path) -> Path:
    """Give ``path`` the permissions a new file gets in its folder (pooch downloads through mkstemp: 0600).

    Left as it is where this process cannot change it (another user's file in a shared, read-only cache).
    """
    probe = _partner(path, ".probe")
    try:
        probe.touch()
        mode = probe.stat().st_mode & 0o777
        probe.unlink()
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:
        probe.unlink(missing_ok=True)
    return path

"""Where sample data lives on disk: one cache for downloads and generated samples."""
from __future__ import annotations

import os
from pathlib import Path

import pooch

DATA_DIR_ENV = "XRIMPUTE_DATA_DIR"


def cache_dir() -> Path:
    """The sample-data cache: ``$XRIMPUTE_DATA_DIR`` if set, else the OS cache for xrimpute."""
    return Path(os.environ.get(DATA_DIR_ENV) or pooch.os_cache("xrimpute"))

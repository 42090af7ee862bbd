"""Where the tests find the ERA5 sample: where a user's xrimpute keeps it, then the project's mirror.

Looked up when the tests are collected, before any test points ``$XRIMPUTE_DATA_DIR`` at a temporary
cache: first the cache that :func:`xrimpute.datasets.era5_sample` uses (``$XRIMPUTE_DATA_DIR``, else the
OS cache folder for xrimpute), then ``../shared/data`` beside the checkout. A test that needs the file
skips only when none of these has it, naming every place looked.
"""
from __future__ import annotations

import os
from pathlib import Path

import pooch
import pytest

from xrimpute.datasets._cache import DATA_DIR_ENV, cache_dir
from xrimpute.datasets.era5 import SAMPLE_FILE

ROOT = Path(__file__).resolve().parents[1]


def era5_places() -> list[Path]:
    places = [cache_dir() / SAMPLE_FILE]
    if os.environ.get(DATA_DIR_ENV):  # the OS cache too: the sample may sit there from a run without the variable
        places.append(Path(pooch.os_cache("xrimpute")) / SAMPLE_FILE)
    places.append(ROOT.parent / "shared" / "data" / SAMPLE_FILE)
    return places


ERA5_PLACES = era5_places()
ERA5_SAMPLE = next((place for place in ERA5_PLACES if place.is_file()), None)
ERA5_MISSING = (f"ERA5 sample {SAMPLE_FILE} not found; looked in "
                + ", ".join(str(place.parent) for place in ERA5_PLACES)
                + " (fetch it once with: xrimpute datasets fetch era5)")
needs_era5 = pytest.mark.skipif(ERA5_SAMPLE is None, reason=ERA5_MISSING)

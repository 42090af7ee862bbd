"""Passes over a whole archive (dask) before training: computed with a progress bar that says when they end.

A fit from a year-long archive reads all of it once or twice before its first
step (each cell's cycle, :func:`xrimpute.cycle.fit_cycle`; each cell's history,
:func:`xrimpute.samplers.training_windows`): minutes on a disk, more from object
storage, which a silent notebook cell would hide.
"""
from __future__ import annotations

from dask import compute
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback


def compute_pass(*collections, desc: str, progress: bool = True) -> tuple:
    """``dask.compute(*collections)``, with a bar over its tasks (``desc``) when ``progress``, on dask's local
    schedulers; under a distributed client its dashboard shows the tasks instead."""
    if not progress:
        return compute(*collections)
    with TqdmCallback(tqdm_class=tqdm, desc=desc, unit="task", leave=False):
        return compute(*collections)


__all__ = ["compute_pass"]

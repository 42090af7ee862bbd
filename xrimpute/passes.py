"""Passes over a whole archive (dask) before training: computed with a progress bar that says when they end.

A fit from a year-long archive reads all of it once or twice before its first
step (each cell's cycle, :func:`xrimpute.cycle.fit_cycle`; each cell's history,
:func:`xrimpute.samplers.training_windows`): minutes on a disk, more from object
storage, which a silent notebook cell would hide.
"""
from __future__ import annotations

import sys
import time
import uuid

import dask
from dask import compute
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

POLL_SECONDS = 0.5
"""How often the bar of a pass on a distributed cluster asks the scheduler how many of its tasks remain."""


def compute_pass(*collections, desc: str, progress: bool = True) -> tuple:
    """``dask.compute(*collections)``, with a bar over its tasks (``desc``) when ``progress``: on dask's local
    schedulers from their callbacks, on a distributed client from its scheduler, which alone sees the tasks that
    run on the workers."""
    if not progress:
        return compute(*collections)
    client = _distributed_client()
    if client is not None:
        return _compute_on_cluster(client, collections, desc)
    with TqdmCallback(tqdm_class=tqdm, desc=desc, unit="task", leave=False):
        return compute(*collections)


def _distributed_client():
    """The distributed client ``dask.compute`` would run on (the default one, or one set as dask's scheduler), or
    None: a local scheduler."""
    owner = getattr(dask.base.get_scheduler(), "__self__", None)  # a client's scheduler is its bound ``get``
    distributed = sys.modules.get("distributed")  # not imported: no client (and no second of importing it)
    return owner if distributed is not None and isinstance(owner, distributed.Client) else None


def _compute_on_cluster(client, collections, desc: str) -> tuple:
    """The collections computed on ``client``'s cluster, a bar following the tasks they need.

    The scheduler counts them (``distributed.diagnostics.progress.Progress``, the
    plugin behind ``distributed.progress``, which removes itself when they are
    done); the bar asks it every :data:`POLL_SECONDS`. Polling rather than
    ``distributed.progress``'s stream: on an in-process cluster that stream
    outlived its bar until the scheduler closed."""
    # nested, so that they travel to the scheduler by value: it need not have xrimpute installed
    async def watch(keys, name, dask_scheduler=None):
        from distributed.diagnostics.progress import Progress

        plugin = Progress(keys, dask_scheduler, complete=True, name=name)
        await plugin.setup()
        return len(plugin.all_keys)

    def remaining(name, dask_scheduler=None):
        plugin = dask_scheduler.plugins.get(name)
        return 0 if plugin is None else len(plugin.keys)

    def unwatch(name, dask_scheduler=None):
        if name in dask_scheduler.plugins:
            dask_scheduler.remove_plugin(name=name)

    futures = client.compute(list(collections))
    name = f"xrimpute-pass-{uuid.uuid4().hex}"
    try:
        total = client.run_on_scheduler(watch, [future.key for future in futures], name)
        with tqdm(total=total, desc=desc, unit="task", leave=False) as bar:
            while not all(future.done() for future in futures):
                time.sleep(POLL_SECONDS)
                bar.n = total - client.run_on_scheduler(remaining, name)
                bar.refresh()  # every poll: update() would skip the last ones once the rate makes its steps large
    finally:
        client.run_on_scheduler(unwatch, name)
    return tuple(client.gather(futures))


__all__ = ["compute_pass"]

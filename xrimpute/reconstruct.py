"""Resumable reconstruction of a whole archive into a zarr store, one ``dask.distributed`` task per region.

:func:`reconstruct` writes the target's layout, then fills it region by
region with ``region=`` writes aligned to the zarr chunks, each cut with
:func:`xrimpute.lazy.cut` and filled with :meth:`xrimpute.engine.Engine.fill`,
so that every value equals the in-memory imputation's. Every finished region
is recorded beside the store (:func:`record_folder`), where zarr never sees
it, so that a killed run resumes where it stopped and the finished store
holds nothing but zarr.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import dask
import dask.array as da
import numpy as np
import xarray as xr
from distributed import Client, LocalCluster, as_completed, get_worker
from tqdm.auto import tqdm

from . import cube
from .engine import Engine, ImputeConfig, ModelMismatch
from .errors import WorkFailedError, XrimputeError
from .geometry import evenly_spaced
from .atomic import atomic_write
from .io import consolidate, open_dataset
from .lazy import FLAG, cut, filled_cube, flag_attrs, flag_cube, model_digest, network, with_flags
from .model import CtxDiffModel, check_fits, phase_for
from .samplers import time_chunks
from .training import resolve_device

ZARR_FORMAT = 3  # of the target store: the current format; its metadata is consolidated when the run ends
RECORDS = ".xrimpute"  # the suffix of the record folder beside the target: run settings, model copy, regions
_lock = threading.Lock()
_engines: dict[tuple, Engine] = {}  # (path, mtime, size) -> engine, one per worker process
_sources: dict[str, xr.Dataset] = {}  # path -> lazily opened source, one per worker process
_totals: dict[str, np.ndarray] = {}  # path -> the archive's totals (Engine.totals), one per worker process


def record_folder(target) -> Path:
    """Where the run settings and finished regions of a reconstruction into ``target`` are kept: beside it."""
    target = Path(target)
    return target.with_name(target.name + RECORDS)


@dataclass(frozen=True)
class _Source:
    """An opened Dataset travelling to the workers once (scattered), not once per task."""

    dataset: xr.Dataset


@dataclass(frozen=True)
class _Job:
    """What a worker needs to fill one region: small and picklable, no tensors."""

    target: str
    model_path: str
    variables: list[str]
    layout: cube.Layout
    full: tuple[int, int, int]
    options: ImputeConfig  # with the run's observed rate; no spec (the model's), no progress bars
    return_std: bool
    run: str
    before_region: Callable[[int], None] | None
    totals_path: str | None = None  # each cell's totals over the archive, for a model that leans on history
    phase: tuple[float, ...] | None = None  # each step's place in the model's cycle (Engine.cycle_shift)


def _record_path(target, index: int) -> Path:
    return record_folder(target) / "regions" / f"{index:06d}.json"


def _cached_engine(path: str) -> Engine:
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key not in _engines:
            _engines[key] = Engine.load(path)
        return _engines[key]


def _cached_totals(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    with _lock:
        if path not in _totals:
            _totals[path] = np.load(path)
        return _totals[path]


def _cached_source(source) -> xr.Dataset:
    if isinstance(source, _Source):
        return source.dataset
    with _lock:
        if source not in _sources:
            _sources[source] = open_dataset(source, chunks={})
        return _sources[source]


def _worker_address() -> str | None:
    """The address of the dask worker running this task (None outside one). Engine.fill gives torch the worker's
    share of the cores (xrimpute.options.cpu_threads)."""
    try:
        return get_worker().address
    except ValueError:  # not on a worker
        return None


def _fill_region(job: _Job, index: int, box, source) -> dict:
    """Impute one region, write it into the target store, record it; skipped if already recorded."""
    record = _record_path(job.target, index)
    if record.exists():
        return json.loads(record.read_text())
    if job.before_region is not None:
        job.before_region(index)
    started = time.perf_counter()
    worker = _worker_address()
    engine, ds = _cached_engine(job.model_path), _cached_source(source)
    axes = job.layout.axes
    times, lats, lons, piece = cut(job.full, box, engine, job.options)
    with dask.config.set(scheduler="synchronous"):  # read here, in this task
        part = ds[job.variables].isel({axes.time: times, axes.lat: lats, axes.lon: lons}).load()
    values, _ = cube.to_array(part, layout=job.layout)
    filled, spread = engine.fill(values, job.options, spec=engine.imputation_spec(job.options), piece=piece,
                                 net=network(engine, resolve_device(job.options.device)),
                                 totals=_cached_totals(job.totals_path), phase=job.phase)
    (ta, tb), (ya, yb), (xa, xb) = box
    like = part.isel({axes.time: slice(ta - times.start, tb - times.start),  # the box's part of the cut
                     axes.lat: slice(ya - lats.start, yb - lats.start),
                     axes.lon: (np.arange(xa, xb) - piece.origin[3]) % job.full[2]})
    result = filled_cube(filled, spread, like, job.layout, job.return_std)
    observed = np.isfinite(cube.to_array(like, layout=job.layout)[0])
    flags = engine.flags(observed, job.options.fill_never_observed, box=((ya, yb), (xa, xb)))
    result = with_flags(result, flag_cube(flags, like, job.layout), job.layout)
    result = result.drop_vars(list(result.coords))
    for var in result.variables.values():
        var.encoding = {}  # the target store has its own
    region = {axes.time: slice(ta, tb), axes.lat: slice(ya, yb), axes.lon: slice(xa, xb)}
    result.to_zarr(job.target, region=region, mode="r+", consolidated=False, zarr_format=ZARR_FORMAT)
    content = dict(region=index, box=[list(b) for b in box], seconds=round(time.perf_counter() - started, 3),
                   worker=worker, host=socket.gethostname(), pid=os.getpid(), run=job.run,
                   finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with atomic_write(record, exclusive=True) as partial:  # a second record of the same region is dropped
        partial.write_text(json.dumps(content))
    return content


def _regions(ds: xr.Dataset, layout: cube.Layout, engine: Engine, chunks: dict | None):
    """Chunk sizes of the target along time / lat / lon, and the regions (boxes) tasks fill."""
    axes = layout.axes
    stored = dict(zip(ds[layout.variables[0]].dims, ds[layout.variables[0]].chunks or ()))
    sizes = {}
    for dim in axes.core:
        size = (chunks or {}).get(dim) or (stored[dim][0] if dim in stored else ds.sizes[dim])
        sizes[dim] = min(int(size), ds.sizes[dim])
    t, h, w = (ds.sizes[d] for d in axes.core)
    tiled = engine.tiling().size != (h, w)

    def spans(length, size):
        return [(a, min(a + size, length)) for a in range(0, length, size)]

    # an untiled model needs the whole grid for every window: a region spans the grid (several chunks)
    rows = spans(h, sizes[axes.lat]) if tiled else [(0, h)]
    cols = spans(w, sizes[axes.lon]) if tiled else [(0, w)]
    return sizes, [(bt, by, bx) for bt in spans(t, sizes[axes.time]) for by in rows for bx in cols]


def _template(ds: xr.Dataset, layout: cube.Layout, sizes: dict, return_std: bool, settings: dict):
    """The target's layout (Dataset, zarr encoding): dask placeholders never computed, other variables copied."""
    out = xr.Dataset(coords=ds.coords, attrs=dict(ds.attrs)).load()
    encoding = {}
    for name in layout.variables:
        var = ds[name]
        dtype = var.dtype if np.issubdtype(var.dtype, np.floating) else np.dtype(np.float32)
        shape = tuple(sizes.get(d, var.sizes[d]) for d in var.dims)
        for suffix in ("", "_std") if return_std else ("",):
            out[name + suffix] = xr.Variable(var.dims, da.empty(var.shape, chunks=shape, dtype=dtype), dict(var.attrs))
            encoding[name + suffix] = {"chunks": shape}
        out[name + FLAG] = xr.Variable(var.dims, da.empty(var.shape, chunks=shape, dtype=np.int8), flag_attrs(name))
        encoding[name + FLAG] = {"chunks": shape}
        linked = f"{out[name].attrs.get('ancillary_variables', '')} {name}{FLAG}".strip()
        out[name].attrs = {**out[name].attrs, "ancillary_variables": linked}
    for name in ds.data_vars:
        if name not in layout.variables:
            out[name] = ds[name].load()
    out.attrs["xrimpute_reconstruct"] = json.dumps({k: settings[k] for k in ("model", "K", "seed", "stride")})
    return out, encoding


def _write_run(book: Path, run: dict) -> None:
    """The run's settings, written atomically."""
    with atomic_write(book / "run.json") as partial:
        partial.write_text(json.dumps(run, indent=1))


class TargetError(XrimputeError, ValueError):
    """The target of :func:`reconstruct` would destroy data that is not an earlier reconstruction."""


class ResumeError(XrimputeError, ValueError):
    """A rerun of :func:`reconstruct` cannot resume the run begun in its target: the settings, model or source differ."""


ZARR_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def source_fingerprint(source, ds: xr.Dataset) -> str:
    """A hash of what the source holds, to refuse resuming a run after the source changed.

    Sizes, chunks, coordinates and attributes; for a file, its size and
    modification time; for a zarr store on disk, those of its metadata files
    (which a rewrite renews); for a Dataset in memory, its values.
    """
    # sorted keys: a zarr store lists its variables in no fixed order
    digest = hashlib.sha256(json.dumps([{str(k): v for k, v in ds.sizes.items()},
                                        {str(k): str(v.chunks) for k, v in ds.data_vars.items()},
                                        {str(k): str(sorted(v.attrs.items())) for k, v in ds.variables.items()}],
                                       sort_keys=True).encode())
    for name in sorted(map(str, ds.coords)):
        digest.update(name.encode() + np.ascontiguousarray(ds[name].values).tobytes())
    where = _location(source)
    if isinstance(where, Path) and where.is_file():
        stat = where.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif isinstance(where, Path) and where.is_dir():
        for meta in sorted(p for folder in [where, *filter(Path.is_dir, where.iterdir())] for p in folder.iterdir()
                           if p.name in ZARR_METADATA):
            stat = meta.stat()
            digest.update(f"{meta.relative_to(where)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif isinstance(source, xr.Dataset) and where is None:
        digest.update(dask.base.tokenize(source).encode())
    return digest.hexdigest()[:16]


def _location(store) -> str | Path | None:
    """Where a source or target lives, comparable with another: a resolved path, a URL, or None if unknown."""
    if isinstance(store, xr.DataArray):
        store = store.to_dataset(name="data")
    if isinstance(store, xr.Dataset):
        store = store.encoding.get("source")
    elif isinstance(store, (str, os.PathLike)):
        pass
    elif getattr(store, "root", None) is not None:  # a zarr LocalStore
        store = store.root
    elif getattr(store, "fs", None) is not None and getattr(store, "path", None) is not None:  # an fsspec store
        store = store.fs.unstrip_protocol(store.path)
    if store is None:
        return None
    text = os.fspath(store)
    return text.rstrip("/") if "://" in text else Path(text).expanduser().resolve()


def _check_apart(source, target: Path) -> None:
    """Refuse a target that is the source, lies inside it, or holds it: writing there would wipe the data read."""
    where, goal = _location(source), target.resolve()
    if not isinstance(where, Path):
        return
    if where == goal or goal.is_relative_to(where) or where.is_relative_to(goal):
        relation = "is" if where == goal else "lies inside" if goal.is_relative_to(where) else "holds"
        raise TargetError(f"the target {str(target)!r} {relation} the source {str(where)!r}: writing it would destroy "
                          "the observations being read; write to a separate path")


def _check_replaceable(target: Path) -> None:
    """``overwrite=True`` replaces only an empty folder, a zarr store or an earlier reconstruction (and its records)."""
    book = record_folder(target)
    if book.exists() and not (book / "run.json").exists():
        raise TargetError(f"overwrite=True would delete {str(book)!r}, which holds no reconstruction record; remove "
                          "it yourself or choose another target")
    if not target.exists():
        return
    if not target.is_dir():
        raise TargetError(f"overwrite=True would delete {str(target)!r}, a file, not a zarr store; remove it yourself "
                          "or choose another target")
    entries = sorted(p.name for p in target.iterdir())
    if not entries or {"zarr.json", ".zgroup", ".zarray"} & set(entries):
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise TargetError(f"overwrite=True would delete {str(target)!r}, a folder that is neither a zarr store nor an "
                      f"earlier reconstruction (it holds {shown}); remove it yourself or choose another target")


def _check_resume(book: Path, settings: dict, overwrite: bool) -> dict | None:
    """The earlier run's settings if this call resumes it; None to start afresh."""
    run_file, target = book / "run.json", book.with_name(book.name[: -len(RECORDS)])
    if overwrite or not target.exists():
        return None
    if not run_file.exists():
        raise FileExistsError(f"{str(target)!r} exists but has no reconstruction record beside it (not written by "
                              "xrimpute.reconstruct, or stopped while writing its layout); pass overwrite=True to "
                              "start afresh, or another target")
    earlier = json.loads(run_file.read_text())
    changed = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
    if "source" in changed:
        raise ResumeError(f"the source has changed since the run into {str(target)!r} began (its sizes, chunks, "
                          "coordinates or stored metadata differ): resuming would mix old and new data; pass "
                          "overwrite=True to start afresh")
    if changed:
        raise ResumeError(f"{str(target)!r} was started with other settings {changed} (earlier, now); rerun "
                          "with the same model and settings to resume, or pass overwrite=True to start afresh")
    return earlier


def reconstruct(source, model, target, client=None, K: int = ImputeConfig.K, *, seed: int = ImputeConfig.seed,
                stride: int = ImputeConfig.stride, overlap: int | None = None, return_std: bool = False,
                chunks: dict | None = None, adapt: bool = ImputeConfig.adapt, observed_rate: float | None = None,
                fill_never_observed: bool | None = ImputeConfig.fill_never_observed, device: str = "auto",
                batch_size: int = ImputeConfig.batch_size, overwrite: bool = False, progress: bool = True,
                before_region: Callable[[int], None] | None = None) -> xr.Dataset:
    """Fill the gaps of a whole archive into a zarr store on a dask cluster; a rerun resumes a killed run.

    Writes the target's layout first (``to_zarr(compute=False)``), then one
    task per region fills it with a ``region=`` write aligned to the zarr
    chunks and records the region in ``<target>.xrimpute/regions/`` beside the
    store (an atomic, exclusive file). A rerun with the same arguments skips recorded
    regions, so nothing is lost or written twice; a region whose worker died
    is recomputed elsewhere, with the same values. Workers load the model
    once per process from its file and read their region (with its halo)
    from the source themselves.

    Parameters
    ----------
    source : path or URL of a zarr store or netCDF file (each worker opens it),
        a zarr store object, or an xarray Dataset (sent to the workers once).
    model : a :class:`CtxDiffModel` (saved into the target for the workers) or
        the path of a saved one (on a file system the workers share).
    target : path of the zarr store to write (on a shared file system).
    client : a ``distributed.Client`` (any cluster: local, dask-cuda,
        dask-jobqueue, ...). Default: a local cluster of 2 worker processes with
        1 thread each, closed at the end. Workers that declare the resource
        ``GPU`` get one region at a time each (``resources={"GPU": 1}``).
    K, seed, stride, overlap, adapt, fill_never_observed, batch_size, device :
        as for :meth:`CtxDiffModel.impute`; regions equal the in-memory imputation.
    return_std : also write the spread as ``<var>_std``.
        The flags ``<var>_flag`` (observed, imputed, imputed without training
        signal, permanent mask; see ``return_flags`` of :meth:`CtxDiffModel.impute`)
        are always written.
    chunks : zarr chunk sizes of the target along the time / lat / lon dims
        (default: the source's chunks). Regions are one time chunk, and one
        spatial chunk for a tiled model (the whole grid otherwise).
    observed_rate : share of observed cells for ``adapt`` (default: estimated
        once from up to 8 time chunks spread over the archive, and kept for resumes).
    overwrite : start afresh even if ``target`` exists; only a zarr store, an
        empty folder or an earlier reconstruction is replaced (else :class:`TargetError`).
    before_region : called on the worker with the region's index before it is
        computed (monitoring, throttling; an exception fails that region).

    Returns
    -------
    xarray.Dataset
        The target store, opened lazily.

    Raises
    ------
    TargetError
        ``target`` is the source, lies inside it or holds it; or ``overwrite``
        would delete something other than a zarr store or an earlier reconstruction.
    """
    options = ImputeConfig(K=K, seed=seed, stride=stride, batch_size=batch_size, overlap=overlap,
                           fill_never_observed=fill_never_observed, adapt=adapt, observed_rate=observed_rate,
                           spread=return_std, device=device, progress=False)  # checks every argument first
    ds = open_dataset(source, chunks={})
    path = None if isinstance(model, CtxDiffModel) else os.fspath(model)
    engine = model.engine if path is None else Engine.load(path)
    engine.check_options(options)
    wanted = engine.config.variables
    if missing := [name for name in wanted if name not in ds.data_vars]:
        raise ModelMismatch(f"the model imputes {wanted}; the archive lacks {missing}")
    ds = ds[wanted + [name for name in ds.data_vars if name not in wanted]]  # the model's order, whatever the store's
    layout = cube.layout_of(ds)
    check_fits(engine, layout, ds)
    phase = phase_for(engine, layout, ds)
    if return_std:
        cube.check_spread_names(ds, layout)
    target = Path(target)
    _check_apart(source, target)
    if overwrite:
        _check_replaceable(target)
    sizes, boxes = _regions(ds, layout, engine, chunks)
    book = record_folder(target)
    settings = dict(model=model_digest(engine), K=K, seed=seed, stride=stride, overlap=overlap, adapt=adapt,
                    fill_never_observed=fill_never_observed, return_std=return_std, flags=True,
                    variables=layout.variables, chunks=sizes, regions=len(boxes), source=source_fingerprint(source, ds))
    earlier = _check_resume(book, settings, overwrite)

    pending = [i for i in range(len(boxes)) if earlier is None or not _record_path(target, i).exists()]
    if not pending:
        return _finish(target)
    own = client is None
    if own:
        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None))
    try:
        if earlier is None:
            if adapt and observed_rate is None:
                observed_rate = _estimate_rate(engine, ds, layout, client)
            template, encoding = _template(ds, layout, sizes, return_std, settings)
            shutil.rmtree(book, ignore_errors=True)  # records of an overwritten run
            template.to_zarr(target, mode="w", compute=False, encoding=encoding, consolidated=False,
                             zarr_format=ZARR_FORMAT)
            if path is None:
                path = os.fspath(engine.save(book / "model.xri"))
            earlier = dict(settings, observed_rate=observed_rate if adapt else None, model_path=os.path.abspath(path),
                           totals_path=_save_totals(engine, ds, layout, client, book, phase),
                           started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            (book / "regions").mkdir(parents=True, exist_ok=True)
            _write_run(book, earlier)
        options = replace(options, observed_rate=earlier["observed_rate"])
        job = _Job(os.fspath(target.absolute()), earlier["model_path"], layout.variables, layout,
                   tuple(ds.sizes[d] for d in layout.axes.core), options, return_std, uuid.uuid4().hex[:12],
                   before_region, earlier.get("totals_path"), None if phase is None else tuple(phase.tolist()))
        failed = _run(client, job, boxes, pending, source, ds, progress)
    finally:
        if own:
            client.shutdown()
    if failed:
        index, error = failed[0]
        message = (f"{len(failed)} of {len(boxes)} regions failed (region {index}: {error!r}); the others are "
                   f"recorded in {str(book)!r}: rerun reconstruct with the same arguments to finish")
        raise WorkFailedError(message) from error
    return _finish(target)


def _finish(target: Path) -> xr.Dataset:
    """Consolidate the complete store's metadata, so that a plain ``xr.open_zarr(target)`` reads it in one go
    and quietly, and open it."""
    consolidate(target)
    return xr.open_zarr(target, consolidated=True)


def _estimate_rate(engine: Engine, ds: xr.Dataset, layout: cube.Layout, client, most: int = 8) -> float:
    """Observed share from up to ``most`` time chunks spread evenly over the archive (all of a short one)."""
    values, _ = cube.to_array(ds, layout=layout, lazy=True)
    spans = time_chunks(values)
    picked = spans[evenly_spaced(len(spans), most)]
    sample = values[:, :, np.concatenate([np.arange(a, b) for a, b in picked])]
    rate = engine.observed_rate(sample)
    return float(rate) if isinstance(rate, float) else float(client.compute(rate).result())


def _save_totals(engine: Engine, ds: xr.Dataset, layout: cube.Layout, client, book: Path,
                 phase: np.ndarray | None) -> str | None:
    """Each cell's totals over the archive (one pass on the cluster; departures from the model's cycle at the steps'
    ``phase``), saved in the record folder for the workers, when the model leans on history; else None."""
    totals = engine.totals(cube.to_array(ds, layout=layout, lazy=True)[0], phase)
    if totals is None:
        return None
    if dask.is_dask_collection(totals):
        totals = client.compute(totals).result()
    path = book / "totals.npy"
    book.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial, open(partial, "wb") as file:
        np.save(file, np.asarray(totals))
    return os.fspath(path.absolute())


def _run(client, job: _Job, boxes, pending: list[int], source, ds: xr.Dataset, progress: bool) -> list:
    """Submit the pending regions, show progress, return ``[(index, error), ...]`` of those that failed."""
    handle = os.fspath(source) if isinstance(source, (str, os.PathLike)) else client.scatter(_Source(ds))
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    resources = {"GPU": 1} if any("GPU" in w.get("resources", {}) for w in workers) else None
    futures = {client.submit(_fill_region, job, i, boxes[i], handle, key=f"xrimpute-region-{job.run}-{i}",
                             resources=resources, pure=False): i for i in pending}
    failed = []
    with tqdm(total=len(boxes), initial=len(boxes) - len(pending), desc="reconstructing", unit="region",
              disable=not progress) as bar:
        for future in as_completed(futures, loop=client.loop):  # this client's, default or not
            if future.status == "error":
                failed.append((futures[future], future.exception()))
            bar.update()
    return sorted(failed, key=lambda f: f[0])


__all__ = ["RECORDS", "TargetError", "record_folder", "reconstruct"]

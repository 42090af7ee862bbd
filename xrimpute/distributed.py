"""Archives larger than memory: lazy imputation over dask chunks, and resumable reconstruction into zarr.

:func:`impute_lazy` (behind :meth:`CtxDiffModel.impute` on dask-backed input)
builds one task per output block; :func:`reconstruct` fills a whole archive
into a zarr store with one ``dask.distributed`` task per region and records
every finished region, so that a killed run resumes where it stopped. Both
cut their input with :func:`xrimpute.windows.plan` (a halo of ``window - 1``
steps in time, the tiles that reach into a block in space, wrapped round a
global grid) and impute with :meth:`CtxDiffModel.fill`. Every window draws its
randomness from its own seed, so every value equals the in-memory imputation's
whatever the chunking.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
import warnings
import weakref
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr
from distributed import Client, LocalCluster, as_completed, get_worker
from tqdm.auto import tqdm

from . import cube
from .loader import time_chunks
from .masks import MaskSpec
from .model import CtxDiffModel, ModelMismatch
from .training import resolve_device
from .windows import Piece, plan

RECORDS = ".xrimpute"  # bookkeeping group inside the target store: run settings, model copy, finished regions
_lock = threading.Lock()
_nets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {device: network copy}
_models: dict[tuple, CtxDiffModel] = {}  # (path, mtime, size) -> model, one per worker process
_sources: dict[str, xr.Dataset] = {}  # path -> lazily opened source, one per worker process


# -- shared pieces -----------------------------------------------------------------
def model_digest(model: CtxDiffModel) -> str:
    """SHA-256 of a model's configuration, weights and normalisation (the same for a saved and loaded copy)."""
    config = dict(info=model.info, spec=model.spec.to_dict(), schedule=asdict(model.schedule))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.denoiser.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for array in (model.mean, model.std, model.valid):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _network(model: CtxDiffModel, device: torch.device):
    """The model's denoiser on ``device``: its own on the CPU, else one copy per device, made once."""
    if device.type == "cpu":
        return model.denoiser
    with _lock:
        copies = _nets.setdefault(model, {})
        if str(device) not in copies:
            copies[str(device)] = copy.deepcopy(model.denoiser).to(device)
        return copies[str(device)]


def _cut(full, box, model: CtxDiffModel, stride: int, overlap):
    """``(time slice, row slice, columns, piece)``: what to read to impute ``box``."""
    _, ((t0, t1), (r0, r1), (x0, width)) = plan(full, box, model.window, stride, model.tiling(overlap))
    columns = (x0 + np.arange(width)) % full[2]
    return slice(t0, t1), slice(r0, r1), columns, Piece(tuple(full), (0, t0, r0, x0), box)


def _spans(sizes) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


# -- lazy imputation -----------------------------------------------------------------
def _fill_block(model, data, spec, rate, piece, device, options) -> np.ndarray:
    if rate is not None:
        spec = spec.adapted(model.info["train_rate"], float(rate))
    device = resolve_device(device)
    filled, spread = model.fill(np.asarray(data), spec, piece=piece, net=_network(model, device), device=device,
                                **options)
    return np.stack([filled, spread])


def impute_lazy(model: CtxDiffModel, obj, values, layout: cube.Layout, spec: MaskSpec, *, adapt: bool = True,
                observed_rate=None, return_std: bool = False, device: str = "auto", **options):
    """Lazy imputation of a dask-backed cube; what :meth:`CtxDiffModel.impute` does for dask input.

    One task per output block. Blocks follow the input's chunks in time (and
    sample), and in space too for a tiled model; an untiled model needs the
    whole grid for every window, so its blocks span the grid and the result
    is rechunked like the input. Each block reads what
    :func:`xrimpute.windows.plan` names: ``window - 1`` steps either side and
    the tiles reaching into it. ``values`` is ``cube.to_array(obj, lazy=True)``;
    the other arguments are :meth:`CtxDiffModel.impute`'s. With ``adapt`` and
    no ``observed_rate``, the rate is one lazy reduction over the input that
    every block waits for.
    """
    n, c, t, h, w = values.shape
    tiled = model.tiling(options.get("overlap")).size != (h, w)
    rate = (model.observed_rate(values) if observed_rate is None else observed_rate) if adapt else None
    shared = dask.delayed(model, name=f"xrimpute-model-{model_digest(model)[:16]}")  # one copy in the graph

    def block(n0, n1, box):  # (filled, spread) of one block, stacked
        times, lats, lons, piece = _cut((t, h, w), box, model, options["stride"], options.get("overlap"))
        data = values[n0:n1, :, times, lats]
        x0 = int(lons[0])
        data = (data[..., x0 : x0 + lons.size] if x0 + lons.size <= w  # one slice, or two across the seam
                else da.concatenate([data[..., x0:], data[..., : x0 + lons.size - w]], axis=-1))
        piece = Piece(piece.full, (n0, *piece.origin[1:]), piece.box)  # seeds know the sample
        task = dask.delayed(_fill_block, pure=True)(shared, data, spec, rate, piece, device, options)
        return da.from_delayed(task, (2, n1 - n0, c, *(b - a for a, b in box)), dtype=np.float32)

    rows = _spans(values.chunks[3]) if tiled else [(0, h)]
    cols = _spans(values.chunks[4]) if tiled else [(0, w)]
    steps = list(map(tuple, time_chunks(values).tolist()))
    both = da.block([[[[[[block(n0, n1, (bt, by, bx)) for bx in cols] for by in rows] for bt in steps]]
                      for n0, n1 in _spans(values.chunks[0])]])
    filled, spread = both[0].rechunk(values.chunks), both[1].rechunk(values.chunks)
    return model.as_cube(filled, spread, obj, layout, return_std)


# -- reconstruction --------------------------------------------------------------------
def open_source(source) -> xr.Dataset:
    """A Dataset from a Dataset or DataArray, a zarr store (path, URL or store object) or a netCDF file, lazily."""
    if isinstance(source, xr.DataArray):
        return source.to_dataset(name=source.name if source.name is not None else "data")
    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if "://" in path or path.rstrip("/").endswith(".zarr") or Path(path).is_dir():
            return _open_zarr(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"no archive at {path!r}; pass a zarr store, a netCDF file or an xarray Dataset")
        return xr.open_dataset(path, chunks={})
    return _open_zarr(source)


def _open_zarr(store) -> xr.Dataset:
    """With consolidated metadata if the store has it (one read), else from the arrays' own, quietly."""
    try:
        return xr.open_zarr(store, consolidated=True)
    except (ValueError, KeyError, FileNotFoundError):
        return xr.open_zarr(store, consolidated=False)


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
    options: dict
    rate: float | None
    return_std: bool
    device: str
    run: str
    before_region: Callable[[int], None] | None


def _record_path(target, index: int) -> Path:
    return Path(target) / RECORDS / "regions" / f"{index:06d}.json"


def _write_json(path: Path, content: dict) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    partial.write_text(json.dumps(content, indent=1))
    os.replace(partial, path)


def _record(path: Path, content: dict) -> None:
    """Record a finished region atomically and once: a second record of the same region is dropped."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    partial.write_text(json.dumps(content))
    try:
        os.link(partial, path)  # atomic and exclusive
    except FileExistsError:
        pass
    finally:
        partial.unlink()


def _cached_model(path: str) -> CtxDiffModel:
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key not in _models:
            _models[key] = CtxDiffModel.load(path)
        return _models[key]


def _cached_source(source) -> xr.Dataset:
    if isinstance(source, _Source):
        return source.dataset
    with _lock:
        if source not in _sources:
            _sources[source] = open_source(source)
        return _sources[source]


def _share_threads() -> str | None:
    """Torch uses the threads dask gives the worker, not every core of the machine; the worker's address."""
    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return None
    torch.set_num_threads(worker.state.nthreads)
    return worker.address


def _fill_region(job: _Job, index: int, box, source) -> dict:
    """Impute one region, write it into the target store, record it; skipped if already recorded."""
    record = _record_path(job.target, index)
    if record.exists():
        return json.loads(record.read_text())
    if job.before_region is not None:
        job.before_region(index)
    started = time.perf_counter()
    worker = _share_threads()
    model, ds = _cached_model(job.model_path), _cached_source(source)
    axes = job.layout.axes
    times, lats, lons, piece = _cut(job.full, box, model, job.options["stride"], job.options["overlap"])
    with dask.config.set(scheduler="synchronous"):  # read here, in this task
        cut = ds[job.variables].isel({axes.time: times, axes.lat: lats, axes.lon: lons}).load()
    values, _ = cube.to_array(cut, layout=job.layout)
    spec = model.spec if job.rate is None else model.spec.adapted(model.info["train_rate"], job.rate)
    device = resolve_device(job.device)
    filled, spread = model.fill(values, spec, piece=piece, net=_network(model, device), device=device, **job.options)
    (ta, tb), (ya, yb), (xa, xb) = box
    like = cut.isel({axes.time: slice(ta - times.start, tb - times.start),  # the box's part of the cut
                     axes.lat: slice(ya - lats.start, yb - lats.start),
                     axes.lon: (np.arange(xa, xb) - piece.origin[3]) % job.full[2]})
    result = model.as_cube(filled, spread, like, job.layout, job.return_std)
    result = result.drop_vars(list(result.coords))
    for var in result.variables.values():
        var.encoding = {}  # the target store has its own
    region = {axes.time: slice(ta, tb), axes.lat: slice(ya, yb), axes.lon: slice(xa, xb)}
    result.to_zarr(job.target, region=region, mode="r+", consolidated=False)
    content = dict(region=index, box=[list(b) for b in box], seconds=round(time.perf_counter() - started, 3),
                   worker=worker, host=socket.gethostname(), pid=os.getpid(), run=job.run,
                   finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _record(record, content)
    return content


def _regions(ds: xr.Dataset, layout: cube.Layout, model: CtxDiffModel, chunks: dict | None):
    """Chunk sizes of the target along time / lat / lon, and the regions (boxes) tasks fill."""
    axes = layout.axes
    stored = dict(zip(ds[layout.variables[0]].dims, ds[layout.variables[0]].chunks or ()))
    sizes = {}
    for dim in axes.core:
        size = (chunks or {}).get(dim) or (stored[dim][0] if dim in stored else ds.sizes[dim])
        sizes[dim] = min(int(size), ds.sizes[dim])
    t, h, w = (ds.sizes[d] for d in axes.core)
    tiled = model.tiling().size != (h, w)

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
    for name in ds.data_vars:
        if name not in layout.variables:
            out[name] = ds[name].load()
    out.attrs["xrimpute_reconstruct"] = json.dumps({k: settings[k] for k in ("model", "K", "seed", "stride")})
    return out, encoding


def _write_run(book: Path, run: dict) -> None:
    """The run's settings, as the attributes of the bookkeeping group (a zarr group, so zarr ignores it)."""
    _write_json(book / "zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": run})


class TargetError(ValueError):
    """The target of :func:`reconstruct` would destroy data that is not an earlier reconstruction."""


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
    """``overwrite=True`` replaces only an empty folder, a zarr store or an earlier reconstruction."""
    if not target.exists():
        return
    if not target.is_dir():
        raise TargetError(f"overwrite=True would delete {str(target)!r}, a file, not a zarr store; remove it yourself "
                          "or choose another target")
    entries = sorted(p.name for p in target.iterdir())
    if not entries or RECORDS in entries or {"zarr.json", ".zgroup", ".zarray"} & set(entries):
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise TargetError(f"overwrite=True would delete {str(target)!r}, a folder that is neither a zarr store nor an "
                      f"earlier reconstruction (it holds {shown}); remove it yourself or choose another target")


def _check_resume(book: Path, settings: dict, overwrite: bool) -> dict | None:
    """The earlier run's settings if this call resumes it; None to start afresh."""
    run_file = book / "zarr.json"
    if overwrite or not book.parent.exists():
        return None
    if not run_file.exists():
        raise FileExistsError(f"{str(book.parent)!r} exists but holds no reconstruction record (not written by "
                              "xrimpute.reconstruct, or stopped while writing its layout); pass overwrite=True to "
                              "start afresh, or another target")
    earlier = json.loads(run_file.read_text())["attributes"]
    changed = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
    if changed:
        raise ValueError(f"{str(book.parent)!r} was started with other settings {changed} (earlier, now); rerun "
                         "with the same model and settings to resume, or pass overwrite=True to start afresh")
    return earlier


def reconstruct(source, model, target, client=None, K: int = 10, *, seed: int = 0, stride: int = 1,
                overlap: int | None = None, return_std: bool = False, chunks: dict | None = None,
                adapt: bool = True, observed_rate: float | None = None, fill_never_observed: bool = False,
                device: str = "auto", batch_size: int = 8, overwrite: bool = False, progress: bool = True,
                before_region: Callable[[int], None] | None = None) -> xr.Dataset:
    """Fill the gaps of a whole archive into a zarr store on a dask cluster; a rerun resumes a killed run.

    Writes the target's layout first (``to_zarr(compute=False)``), then one
    task per region fills it with a ``region=`` write aligned to the zarr
    chunks and records the region in ``<target>/.xrimpute/regions/`` (an
    atomic, exclusive file). A rerun with the same arguments skips recorded
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
    ds = open_source(source)
    path = None if isinstance(model, CtxDiffModel) else os.fspath(model)
    model = model if path is None else CtxDiffModel.load(path)
    wanted = model.info["variables"]
    if missing := [name for name in wanted if name not in ds.data_vars]:
        raise ModelMismatch(f"the model imputes {wanted}; the archive lacks {missing}")
    ds = ds[wanted + [name for name in ds.data_vars if name not in wanted]]  # the model's order, whatever the store's
    layout = cube.layout_of(ds)
    model._check(layout, ds)
    if ds.sizes[layout.axes.time] < model.window:
        raise cube.CubeError(f"the archive has {ds.sizes[layout.axes.time]} time steps, fewer than the model's "
                             f"window of {model.window}")
    target = Path(target)
    _check_apart(source, target)
    if overwrite:
        _check_replaceable(target)
    sizes, boxes = _regions(ds, layout, model, chunks)
    book = target / RECORDS
    settings = dict(model=model_digest(model), K=K, seed=seed, stride=stride, overlap=overlap, adapt=adapt,
                    fill_never_observed=fill_never_observed, return_std=return_std, variables=layout.variables,
                    chunks=sizes, regions=len(boxes))
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
                observed_rate = _estimate_rate(model, ds, layout, client)
            template, encoding = _template(ds, layout, sizes, return_std, settings)
            shutil.rmtree(book, ignore_errors=True)  # records of an overwritten run
            template.to_zarr(target, mode="w", compute=False, encoding=encoding, consolidated=False)
            if path is None:
                path = os.fspath(model.save(book / "model.xri"))
            earlier = dict(settings, observed_rate=observed_rate if adapt else None, model_path=os.path.abspath(path),
                           started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            (book / "regions").mkdir(parents=True, exist_ok=True)
            _write_run(book, earlier)
        job = _Job(os.fspath(target.absolute()), earlier["model_path"], layout.variables, layout,
                   tuple(ds.sizes[d] for d in layout.axes.core),
                   dict(K=K, seed=seed, stride=stride, overlap=overlap, batch_size=batch_size,
                        fill_never_observed=fill_never_observed),
                   earlier["observed_rate"], return_std, device, uuid.uuid4().hex[:12], before_region)
        failed = _run(client, job, boxes, pending, source, ds, progress)
    finally:
        if own:
            client.shutdown()
    if failed:
        index, error = failed[0]
        raise RuntimeError(f"{len(failed)} of {len(boxes)} regions failed (region {index}: {error!r}); the others are "
                           f"recorded in {str(book)!r}: rerun reconstruct with the same arguments to finish") from error
    return _finish(target)


def _finish(target: Path) -> xr.Dataset:
    """Consolidate the complete store's metadata, so that a plain ``xr.open_zarr(target)`` reads it in one go
    and quietly, and open it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")  # zarr v3 stores
        zarr.consolidate_metadata(os.fspath(target))
    return xr.open_zarr(target, consolidated=True)


def _estimate_rate(model: CtxDiffModel, ds: xr.Dataset, layout: cube.Layout, client, most: int = 8) -> float:
    """Observed share from up to ``most`` time chunks spread evenly over the archive (all of a short one)."""
    values, _ = cube.to_array(ds, layout=layout, lazy=True)
    spans = time_chunks(values)
    picked = spans[np.unique(np.linspace(0, len(spans) - 1, min(most, len(spans))).round().astype(int))]
    sample = values[:, :, np.concatenate([np.arange(a, b) for a, b in picked])]
    rate = model.observed_rate(sample)
    return float(rate) if isinstance(rate, float) else float(client.compute(rate).result())


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
        for future in as_completed(futures):
            if future.status == "error":
                failed.append((futures[future], future.exception()))
            bar.update()
    return sorted(failed, key=lambda f: f[0])


__all__ = ["TargetError", "impute_lazy", "model_digest", "open_source", "reconstruct"]

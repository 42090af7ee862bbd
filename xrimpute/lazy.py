"""Lazy imputation of dask-backed cubes: one dask task per output block, over :meth:`Engine.fill`.

:func:`impute_lazy` (behind :meth:`CtxDiffModel.impute` on dask-backed input)
cuts its input with :func:`xrimpute.windows.plan` (a halo of ``window - 1``
steps in time, the tiles that reach into a block in space, wrapped round a
global grid) and fills every block with :meth:`xrimpute.engine.Engine.fill`.
Every window draws its randomness from its own seed, so every value equals
the in-memory imputation's whatever the chunking. :func:`xrimpute.reconstruct`
cuts its regions the same way (:func:`cut`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
import weakref
from dataclasses import asdict, replace

import dask
import dask.array as da
import numpy as np
import torch

from . import cube
from .engine import FLAGS, Engine, ImputeConfig
from .samplers import time_chunks
from .training import resolve_device
from .windows import Piece, plan

_lock = threading.Lock()
_nets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> {device: network copy}


def model_digest(engine: Engine) -> str:
    """SHA-256 of a model's configuration, weights and normalisation (the same for a saved and loaded copy)."""
    config = dict(info=engine.config.to_dict(), spec=engine.spec.to_dict(), schedule=asdict(engine.schedule))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in sorted(engine.denoiser.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for array in (engine.mean, engine.std, engine.valid):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def network(engine: Engine, device: torch.device):
    """The engine's denoiser on ``device``: its own on the CPU, else one copy per device, made once per process."""
    if device.type == "cpu":
        return engine.denoiser
    with _lock:
        copies = _nets.setdefault(engine, {})
        if str(device) not in copies:
            copies[str(device)] = copy.deepcopy(engine.denoiser).to(device)
        return copies[str(device)]


def cut(full, box, engine: Engine, options: ImputeConfig):
    """``(time slice, row slice, columns, piece)``: what to read to impute ``box`` of a series of ``full`` (T, H, W)."""
    _, ((t0, t1), (r0, r1), (x0, width)) = plan(full, box, engine.window, options.stride,
                                                engine.tiling(options.overlap), engine.denoiser.nearby_span)
    columns = (x0 + np.arange(width)) % full[2]
    return slice(t0, t1), slice(r0, r1), columns, Piece(tuple(full), (0, t0, r0, x0), box)


def spans(sizes) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of the given sizes."""
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def filled_cube(filled, spread, obj, layout: cube.Layout, return_std: bool = False):
    """Arrays ``(N, C, T, H, W)`` (numpy or dask) in the shape of ``obj``, observed values kept bit for bit."""
    result = cube.merge_filled(obj, cube.from_array(filled, obj, layout), layout)
    if not return_std:
        return result
    return cube.with_spread(result, cube.from_array(spread, obj, layout, suffix=cube.SPREAD), layout)


FLAG = "_flag"  # suffix of the flag variables


def flag_attrs(name: str) -> dict:
    """CF attributes of the flag variable of variable ``name`` (values :data:`xrimpute.engine.FLAGS`)."""
    return {"long_name": f"imputation flag of {name}", "flag_values": np.array(list(FLAGS.values()), np.int8),
            "flag_meanings": " ".join(FLAGS)}


def flag_cube(flags, obj, layout: cube.Layout):
    """The flags ``(N, C, T, H, W)`` (numpy or dask, :meth:`Engine.flags`) as CF flag variables ``<var>_flag``
    in the shape of ``obj`` (a DataArray for a DataArray)."""
    out = cube.from_array(flags, obj, layout, suffix=FLAG).astype(np.int8)
    for name, var in ([(obj.name, out)] if layout.is_dataarray else [(n, out[n + FLAG]) for n in layout.variables]):
        var.attrs = flag_attrs(name)
        var.encoding = {}
    return out


def with_flags(result, flags, layout: cube.Layout):
    """The result of an imputation with its flag variables: merged into a Dataset, each linked from its parent by
    ``ancillary_variables``; appended to the DataArray (or pair) otherwise."""
    if layout.is_dataarray:
        return (*result, flags) if isinstance(result, tuple) else (result, flags)
    result = result.copy()
    for name in layout.variables:
        linked = f"{result[name].attrs.get('ancillary_variables', '')} {name}{FLAG}".strip()
        result[name].attrs = {**result[name].attrs, "ancillary_variables": linked}
    return result.merge(flags)


def _fill_block(engine: Engine, data, spec, piece: Piece, options: ImputeConfig, totals, phase) -> np.ndarray:
    device = resolve_device(options.device)
    filled, spread = engine.fill(np.asarray(data), options, spec=spec, piece=piece, net=network(engine, device),
                                 totals=totals, phase=phase)
    return np.stack([filled, spread])


def impute_lazy(engine: Engine, obj, values, layout: cube.Layout, options: ImputeConfig, *,
                return_std: bool = False, phase: np.ndarray | None = None):
    """Lazy imputation of a dask-backed cube; what :meth:`CtxDiffModel.impute` does for dask input.

    One task per output block. Blocks follow the input's chunks in time (and
    sample), and in space too for a tiled model; an untiled model needs the
    whole grid for every window, so its blocks span the grid and the result
    is rechunked like the input. Each block reads what
    :func:`xrimpute.windows.plan` names: ``window - 1`` steps either side and
    the tiles reaching into it. ``values`` is ``cube.to_array(obj, lazy=True)``.
    With ``options.adapt`` and no ``options.observed_rate``, the rate is one
    lazy reduction over the input that every block waits for; so are each
    cell's totals over the series when the model leans on history
    (:meth:`Engine.totals`). ``phase``: as for :meth:`Engine.fill`.
    """
    n, c, t, h, w = values.shape
    options = replace(options, progress=False).resolved()  # no progress bar per block
    tiled = engine.tiling(options.overlap).size != (h, w)
    rate = options.observed_rate if options.observed_rate is not None or not options.adapt else \
        engine.observed_rate(values)
    shared = dask.delayed(engine, name=f"xrimpute-model-{model_digest(engine)[:16]}")  # one copy in the graph
    spec = shared.imputation_spec(options, rate)  # one task, waiting for a lazy rate
    totals = engine.totals(values, phase)  # None, or one reduction over the input

    def block(n0, n1, box):  # (filled, spread) of one block, stacked
        times, lats, lons, piece = cut((t, h, w), box, engine, options)
        data = values[n0:n1, :, times, lats]
        x0 = int(lons[0])
        data = (data[..., x0 : x0 + lons.size] if x0 + lons.size <= w  # one slice, or two across the seam
                else da.concatenate([data[..., x0:], data[..., : x0 + lons.size - w]], axis=-1))
        piece = Piece(piece.full, (n0, *piece.origin[1:]), piece.box)  # seeds know the sample
        task = dask.delayed(_fill_block, pure=True)(shared, data, spec, piece, options, totals, phase)
        return da.from_delayed(task, (2, n1 - n0, c, *(b - a for a, b in box)), dtype=np.float32)

    rows = spans(values.chunks[3]) if tiled else [(0, h)]
    cols = spans(values.chunks[4]) if tiled else [(0, w)]
    steps = list(map(tuple, time_chunks(values).tolist()))
    both = da.block([[[[[[block(n0, n1, (bt, by, bx)) for bx in cols] for by in rows] for bt in steps]]
                      for n0, n1 in spans(values.chunks[0])]])
    filled, spread = both[0].rechunk(values.chunks), both[1].rechunk(values.chunks)
    return filled_cube(filled, spread, obj, layout, return_std)


__all__ = ["FLAG", "cut", "filled_cube", "flag_attrs", "flag_cube", "with_flags", "impute_lazy", "model_digest", "network", "spans"]

"""Package-wide defaults (:func:`set_options`), CPU threads, and the environment report (:func:`show_versions`).

Functions that take ``device=`` or ``progress=`` fall back to these options when
the argument is left at ``None``, so a notebook can set them once::

    xrimpute.set_options(progress=False)          # from now on
    with xrimpute.set_options(device="cpu"):      # only inside the block
        model = ds.ctxdiff.fit(mask="pixel")

CPU threads
-----------
While a network trains or imputes on the CPU, xrimpute sets torch's thread count
(:func:`torch_threads`) by the rule of :func:`cpu_threads`, so that a fit beside
dask workers, or a dask worker beside its siblings, does not oversubscribe the
cores; torch's own setting is restored afterwards.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from .errors import ArgumentError

OPTIONS = {"device": "auto", "progress": True, "dtype": "bfloat16", "threads": "auto"}
DTYPES = ("bfloat16", "float32")
log = logging.getLogger("xrimpute")


def _check_device(value) -> None:
    if value == "auto":
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ArgumentError(f"device={value!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:1'") from err


def _check_progress(value) -> None:
    if not isinstance(value, bool):
        raise ArgumentError(f"progress must be True or False, got {value!r}")


def _check_dtype(value) -> None:
    if value not in DTYPES:
        raise ArgumentError(f"dtype must be one of {DTYPES}, got {value!r}")


def _check_threads(value) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ArgumentError(f"threads must be 'auto' or a whole number of at least 1, got {value!r}")


_CHECKS = {"device": _check_device, "progress": _check_progress, "dtype": _check_dtype, "threads": _check_threads}


class set_options:  # noqa: N801  (lower case: it is used like a function, as in xarray)
    """Set package-wide defaults, for good or inside a ``with`` block.

    Parameters
    ----------
    device : str, optional
        Where networks run when a function gets ``device=None``: ``"auto"``
        (default: the GPU if there is one, else the CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ...
    progress : bool, optional
        Show progress bars (tqdm) during training, imputation and sampling
        (default True).
    dtype : {"bfloat16", "float32"}, optional
        Precision of the network on a GPU: ``"bfloat16"`` (default) runs it
        under bfloat16 autocast, ``"float32"`` in full precision. On the CPU
        networks always run in float32.
    threads : int or "auto", optional
        torch CPU threads while a network trains or imputes on the CPU.
        ``"auto"`` (default) avoids oversubscribing cores that dask workers
        use; see :func:`cpu_threads` for the rule.

    Examples
    --------
    >>> import xrimpute
    >>> with xrimpute.set_options(progress=False):
    ...     xrimpute.options.OPTIONS["progress"]
    False
    >>> xrimpute.options.OPTIONS["progress"]
    True
    """

    def __init__(self, **options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ArgumentError(f"unknown option(s) {unknown}; the options are {sorted(OPTIONS)}")
        for name, value in options.items():
            _CHECKS[name](value)
        self._previous = {name: OPTIONS[name] for name in options}
        OPTIONS.update(options)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        OPTIONS.update(self._previous)


def get_options() -> dict:
    """A copy of the current package-wide options."""
    return dict(OPTIONS)


def or_option(name: str, value):
    """``value``, or the package-wide option ``name`` when ``value`` is None (an argument left at its default)."""
    return OPTIONS[name] if value is None else value


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _local_dask_threads() -> tuple[int, bool]:
    """Threads of the dask workers this process runs or started on this machine, and whether it is a worker."""
    if "distributed" not in sys.modules:  # no dask cluster without it; never import it just to look
        return 0, False
    from distributed import Nanny, Worker
    from distributed.worker import get_worker

    try:
        get_worker()
        inside = True
    except ValueError:
        inside = False
    in_process = sum(w.state.nthreads for w in list(Worker._instances) if w.status.name == "running")
    spawned = sum(n.nthreads or 0 for n in list(Nanny._instances) if n.status.name == "running")
    return in_process + spawned, inside


def cpu_threads() -> int:
    """The torch CPU threads for a network now: the ``threads`` option, or by the rule of ``"auto"``.

    The rule of ``"auto"`` starts from torch's own setting, ``torch.get_num_threads()``
    (every core, or ``$OMP_NUM_THREADS`` as it was when torch started, or what
    ``torch.set_num_threads`` set), and lowers it, first match:

    1. inside a dask worker, to the worker's share of the cores: the usable cores
       divided by the threads of all dask workers in that process (worker
       processes that dask's nanny starts already have ``OMP_NUM_THREADS=1``);
    2. in a process that runs dask workers on this machine (a ``LocalCluster``
       beside a notebook fit), to the cores those workers leave free, at least one.

    ``$OMP_NUM_THREADS`` is not read again later: starting a ``LocalCluster``
    sets it to 1 in the starting process too, for the workers' sake.

    Too many threads cost far more than too few: a thread pool that spins while
    another process holds its cores can slow a fit several times over. When
    other heavy processes share the machine, set ``threads=1`` (or start Python
    with ``OMP_NUM_THREADS=1``).

    Returns
    -------
    int
        At least 1.
    """
    if OPTIONS["threads"] != "auto":
        return OPTIONS["threads"]
    import torch

    own = torch.get_num_threads()
    workers, inside = _local_dask_threads()
    cores = _usable_cores()
    if inside:
        return max(1, min(own, cores // max(1, workers)))
    if workers:
        return max(1, min(own, cores - workers))
    return own


@contextlib.contextmanager
def torch_threads(threads: int | None = None):
    """Run the block with ``threads`` torch CPU threads (default :func:`cpu_threads`), then restore the setting.

    Inside a dask worker the setting stays: tasks on the worker's threads overlap,
    and one task restoring the count would change it under another.
    """
    import torch

    threads = cpu_threads() if threads is None else threads
    before = torch.get_num_threads()
    if threads != before:
        log.debug("torch CPU threads: %d (was %d)", threads, before)
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before and not _local_dask_threads()[1]:
            torch.set_num_threads(before)


def check_device_available(value: str, what: str = "device") -> None:
    """Raise ValueError, before any long work, when ``value`` is not a device or this torch cannot use it."""
    if value == "auto":
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"{what} {value!r} is not a device; use auto, cpu, cuda or cuda:1") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is not None and device.index < count or device.index is None and count:
            return
        found = f"{count} CUDA GPU(s)" if count else "no CUDA GPU"
        raise ArgumentError(f"{what} {value!r}: this torch ({torch.__version__}) sees {found}; use cpu or auto, "
                            "or install the torch build for your CUDA")
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        raise ArgumentError(f"{what} {value!r}: this torch ({torch.__version__}) cannot use {device.type} devices; "
                            "use cpu or auto")


def mixed_precision(device) -> bool:
    """Whether networks on ``device`` (a ``torch.device``) run under bfloat16 autocast."""
    return device.type == "cuda" and OPTIONS["dtype"] == "bfloat16"


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _torch_lines() -> list[tuple[str, str]]:
    try:
        import torch
    except ImportError:
        return [("torch", "not installed")]
    cuda = torch.cuda.is_available()
    lines = [("torch", torch.__version__), ("CUDA available", str(cuda))]
    if cuda:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines += [("CUDA version", str(torch.version.cuda)), ("GPUs", names)]
    return lines


def _cfgrib_line() -> tuple[str, str]:
    try:
        importlib.import_module("cfgrib")
    except ImportError:
        return ("cfgrib", "not installed (optional: GRIB files)")
    except RuntimeError as err:  # cfgrib is installed but the ecCodes library is not
        return ("cfgrib", f"{_version('cfgrib')}, ecCodes missing ({err})")
    return ("cfgrib", _version("cfgrib"))


def show_versions(file=None) -> None:
    """Print the versions of xrimpute, Python and the libraries it relies on, for bug reports.

    Parameters
    ----------
    file : file-like, optional
        Where to write (default ``sys.stdout``).
    """
    lines = [("xrimpute", _version("xrimpute")), ("python", sys.version.split()[0]),
             ("platform", platform.platform())]
    lines += _torch_lines()
    lines += [(name, _version(name)) for name in ("numpy", "scipy", "xarray", "dask", "distributed", "zarr",
                                                  "cf-xarray", "pooch", "netCDF4", "matplotlib")]
    lines.append(_cfgrib_line())
    width = max(len(name) for name, _ in lines) + 1
    print("\n".join(f"{name + ':':<{width}} {value}" for name, value in lines), file=file or sys.stdout)


__all__ = ["OPTIONS", "check_device_available", "cpu_threads", "get_options", "mixed_precision", "or_option",
           "set_options", "show_versions", "torch_threads"]

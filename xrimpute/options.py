"""Package-wide defaults (:func:`set_options`) and the environment report (:func:`show_versions`).

Functions that take ``device=`` or ``progress=`` fall back to these options when
the argument is left at ``None``, so a notebook can set them once::

    xrimpute.set_options(progress=False)          # from now on
    with xrimpute.set_options(device="cpu"):      # only inside the block
        model = ds.ctxdiff.fit(mask="pixel")
"""
from __future__ import annotations

import importlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

OPTIONS = {"device": "auto", "progress": True, "dtype": "bfloat16"}
DTYPES = ("bfloat16", "float32")


def _check_device(value) -> None:
    if value == "auto":
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={value!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:1'") from err


def _check_progress(value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"progress must be True or False, got {value!r}")


def _check_dtype(value) -> None:
    if value not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}")


_CHECKS = {"device": _check_device, "progress": _check_progress, "dtype": _check_dtype}


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
            raise ValueError(f"unknown option(s) {unknown}; the options are {sorted(OPTIONS)}")
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


__all__ = ["OPTIONS", "get_options", "mixed_precision", "set_options", "show_versions"]

"""xrimpute: learn complete dynamics from incomplete geophysical cubes and fill their gaps.

Importing xrimpute registers the ``.ctxdiff`` accessor on xarray objects. Everything else,
torch included, is imported on first use, so that ``import xrimpute`` and ``xrimpute --help``
stay quick: ``xrimpute.CtxDiffModel``, ``xrimpute.masks``, ``xrimpute.metrics`` and the
other names below load their module when first touched.
"""
import importlib
import logging
import sys
import types

from . import accessor as _accessor  # noqa: F401  (registers .ctxdiff)

__version__ = "0.1.0"


class _NotesHandler(logging.StreamHandler):
    """Shows the package's notes (the mask ``mask="auto"`` chose, ...) on stderr while the application has not
    configured logging; once the root logger has a handler, the notes go there instead, shown once."""

    def emit(self, record):
        if not logging.getLogger().handlers:
            super().emit(record)


_notes = _NotesHandler()
_notes.setFormatter(logging.Formatter("xrimpute: %(message)s"))
logging.getLogger(__name__).addHandler(_notes)
logging.getLogger(__name__).setLevel(logging.INFO)  # silence: logging.getLogger("xrimpute").setLevel("WARNING")

# public name -> module that defines it
_FUNCTIONS = {
    "CtxDiffModel": "model",
    "fit": "model",
    "load": "model",
    "reconstruct": "reconstruct",
    "observe": "observe",
    "set_options": "options",
    "show_versions": "options",
    "grid_stations": "stations",
}
_SUBMODULES = ("baselines", "bench", "check", "datasets", "io", "masks", "metrics", "plot")


class _Package(types.ModuleType):
    """The package module: a function named like its module (``observe``) stays the package's attribute when
    the module is imported later, as it did when ``__init__`` imported every function up front."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _FUNCTIONS.get(name) == name:
            return  # the module stays reachable as sys.modules["xrimpute.<name>"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(f".{_FUNCTIONS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'xrimpute' has no attribute {name!r}")
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FUNCTIONS) | set(_SUBMODULES))


__all__ = ["CtxDiffModel", "datasets", "fit", "grid_stations", "load", "masks", "observe", "plot", "reconstruct",
           "set_options", "show_versions", "__version__"]

"""The ``.ctxdiff`` accessor on DataArray and Dataset: a table of contents, no logic.

``fit``, ``impute`` and ``sample`` call the :class:`~xrimpute.CtxDiffModel` methods of
the same names, and ``check`` calls :func:`xrimpute.check.check`, on the accessor's
object. Their signatures and docstrings are generated from those functions (the
``obj`` parameter taken out, ``model`` added where a model is passed in), so that
``ds.ctxdiff.fit?`` in Jupyter shows every parameter and nothing is copied by hand.
The generation runs on first access, because the model's module imports torch.
"""
from __future__ import annotations

import importlib
import inspect
import os
import types

import xarray as xr

from .errors import ArgumentError

MODEL_PARAMETER = """model : CtxDiffModel, str or path-like, optional
    The model to use, or the path of a saved one; default the one that ``fit``
    returned on this same object (xarray makes a fresh accessor for every new
    object, such as ``ds.sel(...)`` or ``ds["t2m"]``: pass ``model=`` there, e.g.
    ``model="model.xri"``)."""


def _is_header(lines: list[str], k: int) -> bool:
    return k + 1 < len(lines) and lines[k].strip() != "" and set(lines[k + 1].strip()) == {"-"}


def _entries(block: list[str]) -> list[list[str]]:
    """The entries of a numpydoc Parameters block: a ``name : type`` line and its indented description."""
    entries: list[list[str]] = []
    for line in block:
        if line and not line[0].isspace():
            entries.append([line])
        elif entries:
            entries[-1].append(line)
    return entries


def adapted_docstring(doc: str, summary: str, source: str, drop: str = "obj", add: str | None = None) -> str:
    """The numpydoc docstring ``doc`` of a model method, retold for the accessor.

    The summary line becomes ``summary``, the parameter ``drop`` (the object the
    accessor stands for) is taken out, the entry ``add`` goes at the end of the
    Parameters, and a See Also section points at ``source``.
    """
    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index("Parameters") + 2
    end = next((k for k in range(start, len(lines)) if _is_header(lines, k)), len(lines))
    block = lines[start:end]
    while block and not block[-1].strip():
        block.pop()
    entries = [e for e in _entries(block) if e[0].split(":")[0].strip() != drop]
    if add is not None:
        entries.append(add.splitlines())
    see_also = ["See Also", "--------", f"{source} : the same, for any object."]
    rest = lines[end:]
    notes = next((k for k in range(len(rest)) if rest[k] == "Notes" and _is_header(rest, k)), len(rest))
    before = rest[:notes]
    while before and not before[-1].strip():
        before.pop()
    rest = before + [""] + see_also + ([""] + rest[notes:] if notes < len(rest) else [])
    return "\n".join([summary, *lines[1:start], *(line for e in entries for line in e), "", *rest])


def adapted_signature(function, drop: str = "obj", add: inspect.Parameter | None = None) -> inspect.Signature:
    """The signature of ``function`` as an accessor method: ``self`` first, without ``drop``, with ``add``."""
    signature = inspect.signature(function)
    kept = [p for name, p in signature.parameters.items() if name not in ("self", "cls", drop)]
    if add is not None:
        at = next((k for k, p in enumerate(kept) if p.kind is inspect.Parameter.VAR_KEYWORD), len(kept))
        kept.insert(at, add)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return signature.replace(parameters=[self, *kept])


class _Generated:
    """An accessor method whose signature and docstring are generated, on first access, from the function it calls.

    ``source`` is ``"module:qualified.name"`` of that function; ``passes_model``
    adds the ``model`` keyword.
    """

    def __init__(self, method, source: str, summary: str, passes_model: bool):
        self.method, self.source, self.summary, self.passes_model = method, source, summary, passes_model
        self.ready = False

    def _generate(self) -> None:
        module, name = self.source.split(":")
        target = importlib.import_module(module, __package__)
        for part in name.split("."):
            target = getattr(target, part)
        model = inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default=None,
                                  annotation="CtxDiffModel | None")
        add = model if self.passes_model else None
        self.method.__signature__ = adapted_signature(target, add=add)
        public = f"xrimpute.{name}" if module == ".model" else f"xrimpute{module}.{name}"
        self.method.__doc__ = adapted_docstring(target.__doc__, self.summary, public,
                                                add=MODEL_PARAMETER if self.passes_model else None)
        self.ready = True

    def __get__(self, accessor, owner=None):
        if not self.ready:
            self._generate()
        return self.method if accessor is None else types.MethodType(self.method, accessor)


def _generated(source: str, summary: str, passes_model: bool = False):
    return lambda method: _Generated(method, source, summary, passes_model)


@xr.register_dataarray_accessor("ctxdiff")
@xr.register_dataset_accessor("ctxdiff")
class CtxDiffAccessor:
    """Fit a context-query diffusion model on this incomplete cube and fill its gaps.

    ``obj.ctxdiff.fit(...)`` returns the model and remembers it on this accessor,
    so ``obj.ctxdiff.impute()`` follows in a notebook. xarray builds a fresh
    accessor for every new object (``ds.sel(...)``, ``ds["t2m"]``): pass ``model=`` there.
    """

    def __init__(self, obj):
        self._obj = obj
        self._model = None

    def _resolve(self, model):
        """``model`` (a CtxDiffModel, or the path of a saved one), else the one fitted on this accessor."""
        if isinstance(model, (str, os.PathLike)):
            from .model import load

            return load(model)
        model = model or self._model
        if model is None:
            raise ArgumentError("no model: call obj.ctxdiff.fit(...) on this same object first, "
                                "or pass model= (a fitted model, or the path of a saved one: model='model.xri')")
        return model

    @_generated(".model:CtxDiffModel.fit", "Train on this cube (NaN = unobserved) and remember the model here.")
    def fit(self, *args, **kwargs):
        from .model import CtxDiffModel

        self._model = CtxDiffModel.fit(self._obj, *args, **kwargs)
        return self._model

    @_generated(".model:CtxDiffModel.impute", "This cube with its gaps filled, observed values kept.",
                passes_model=True)
    def impute(self, *args, model=None, **kwargs):
        return self._resolve(model).impute(self._obj, *args, **kwargs)

    @_generated(".model:CtxDiffModel.sample", "Imputations of this cube by multi-step sampling, along a new dim.",
                passes_model=True)
    def sample(self, *args, model=None, **kwargs):
        return self._resolve(model).sample(self._obj, *args, **kwargs)

    @_generated(".check:check", "Query coverage of a mask specification over this cube's grid.")
    def check(self, *args, **kwargs):
        from .check import check

        return check(self._obj, *args, **kwargs)

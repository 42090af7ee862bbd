"""The ``.ctxdiff`` accessor on DataArray and Dataset: a table of contents, no logic."""
from __future__ import annotations

import xarray as xr

from .check import check as _check
from .model import CtxDiffModel


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
        self._model: CtxDiffModel | None = None

    def _resolve(self, model: CtxDiffModel | None) -> CtxDiffModel:
        model = model or self._model
        if model is None:
            raise ValueError("no model: call obj.ctxdiff.fit(...) on this same object first, "
                             "or pass model= (e.g. model=xrimpute.load('model.xri'))")
        return model

    def fit(self, mask="auto", **options) -> CtxDiffModel:
        """Train on this cube (NaN = unobserved); see :meth:`xrimpute.CtxDiffModel.fit`."""
        self._model = CtxDiffModel.fit(self._obj, mask=mask, **options)
        return self._model

    def impute(self, K: int = 10, model: CtxDiffModel | None = None, **options):
        """This cube with its gaps filled; see :meth:`xrimpute.CtxDiffModel.impute`."""
        return self._resolve(model).impute(self._obj, K=K, **options)

    def check(self, mask="infer", **options):
        """Query coverage map of a mask spec on this cube; see :func:`xrimpute.check.check`."""
        return _check(self._obj, mask=mask, **options)

    def sample(self, n: int = 16, model: CtxDiffModel | None = None, **options):
        """``n`` imputations along a new ``member`` dim; see :meth:`xrimpute.CtxDiffModel.sample`."""
        return self._resolve(model).sample(self._obj, n=n, **options)

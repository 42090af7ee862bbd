"""Figures for a first look: truth against imputations, training curves, coverage and spread maps.

Every function draws with xarray's own ``.plot`` and returns the matplotlib
``Figure``. matplotlib is imported only when a function is called (install it
with ``pip install "xrimpute[plot]"``).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .cube import SPREAD, find_axes, layout_of
from .errors import ArgumentError

PANEL_INCHES = 3.2


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError('xrimpute.plot needs matplotlib; install it with: pip install "xrimpute[plot]"') from err
    return plt


def _variable(obj, variable: str | None) -> xr.DataArray:
    """One cube variable of a Dataset (the first by default), or the DataArray itself."""
    if isinstance(obj, xr.DataArray):
        return obj
    names = layout_of(obj).variables
    if variable is None:
        return obj[names[0]]
    if variable not in obj.data_vars:
        raise ArgumentError(f"no variable {variable!r}; choose one of {names}")
    return obj[variable]


def _map(obj, variable=None, time=0, sample=0) -> xr.DataArray:
    """The 2-D latitude x longitude field of ``obj`` at one time step and sample.

    ``time`` is a position (int) or a label (anything else, nearest match).
    """
    field = _variable(obj, variable)
    axes = find_axes(field)
    if axes.sample is not None:
        field = field.isel({axes.sample: sample})
    if isinstance(time, (int, np.integer)):
        field = field.isel({axes.time: int(time)})
    else:
        field = field.sel({axes.time: time}, method="nearest")
    others = [d for d in field.dims if d not in (axes.lat, axes.lon)]
    if others:
        raise ArgumentError(f"the field still has the dim(s) {others} besides {axes.lat}/{axes.lon}; "
                            f"select one value first, e.g. obj.isel({others[0]}=0)")
    return field.transpose(axes.lat, axes.lon)


def _title(field: xr.DataArray, label: str) -> str:
    return label if field.name is None else f"{label}: {field.name}"


def _row(fields: list[xr.DataArray], titles: list[str], shared: bool = True, **plot_options):
    """A row of maps with one colour scale and one colour bar."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(fields), figsize=(PANEL_INCHES * len(fields) + 0.8, PANEL_INCHES),
                             squeeze=False, layout="constrained", sharex=shared, sharey=shared)
    finite = [f.values[np.isfinite(f.values)] for f in fields]
    finite = np.concatenate(finite) if any(v.size for v in finite) else np.zeros(1)
    plot_options = {"vmin": float(finite.min()), "vmax": float(finite.max()), **plot_options}
    image = None
    for ax, field, title in zip(axes[0], fields, titles):
        image = field.plot(ax=ax, add_colorbar=False, **plot_options)
        ax.set_title(title)
    units = fields[0].attrs.get("units")
    label = f"{fields[0].name or ''} [{units}]" if units else (fields[0].name or "")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.9, label=label)
    return fig


def compare(truth, observed, *filled, time=0, names=None, sample=0, variable=None):
    """Truth, observations and imputations side by side on one colour scale.

    Parameters
    ----------
    truth : xarray.DataArray or xarray.Dataset, or None
        The complete field, when known (None leaves its panel out).
    observed : xarray.DataArray or xarray.Dataset
        The input with gaps (NaN).
    *filled : xarray.DataArray or xarray.Dataset
        Imputations to show, e.g. ``model.impute(observed)`` and a baseline.
    time : int or label
        Time step to show: a position (int) or a coordinate label (nearest).
    names : list of str, optional
        Panel titles of the imputations (default ``"imputed 1"``, ...).
    sample : int
        Position along the sample dim, for cubes with one.
    variable : str, optional
        Variable of a Dataset (default: the first with time/lat/lon dims).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per field and a shared colour bar.
    """
    names = list(names) if names is not None else [f"imputed {i + 1}" if len(filled) > 1 else "imputed"
                                                   for i in range(len(filled))]
    if len(names) != len(filled):
        raise ArgumentError(f"{len(names)} names for {len(filled)} imputations")
    pick = dict(variable=variable, time=time, sample=sample)
    fields, titles = [], []
    if truth is not None:
        fields.append(_map(truth, **pick))
        titles.append("truth")
    seen = _map(observed, **pick)
    fields.append(seen)
    titles.append(f"observed ({float(np.isfinite(seen.values).mean()):.0%})")
    fields += [_map(f, **pick) for f in filled]
    titles += names
    return _row(fields, titles)


def _spread_field(std, variable: str | None) -> xr.DataArray:
    """The spread variable (``<name>_std``) of ``impute(..., return_std=True)``'s output, never the field itself."""
    if isinstance(std, xr.DataArray):
        if std.name is not None and not str(std.name).endswith(SPREAD):
            raise ArgumentError(f"{std.name!r} is not a spread (no {SPREAD!r} suffix); pass the second output "
                                "of impute(..., return_std=True)")
        return std
    spreads = [str(name) for name in std.data_vars if str(name).endswith(SPREAD)]
    if not spreads:
        raise ArgumentError(f"no spread variable (*{SPREAD}) among {list(map(str, std.data_vars))}; pass the "
                            "output of impute(..., return_std=True)")
    if variable is None:
        return std[spreads[0]]
    name = variable if variable.endswith(SPREAD) else variable + SPREAD
    if name not in spreads:
        raise ArgumentError(f"no spread of {variable!r}; choose one of {spreads}")
    return std[name]


def spread(std, time=0, sample=0, variable=None):
    """Map of the ensemble spread (``impute(..., return_std=True)``): where the data leave the field uncertain.

    Parameters
    ----------
    std : xarray.DataArray or xarray.Dataset
        The output of ``impute(..., return_std=True)``: a Dataset holding
        ``<variable>_std`` spreads, or the spread DataArray (its second output
        for a DataArray).
    time, sample
        As for :func:`compare`.
    variable : str, optional
        Whose spread to draw, ``"t2m"`` or ``"t2m_std"`` (default: the first
        spread of the Dataset).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        When ``std`` holds no spread (a Dataset without ``*_std`` variables, or
        a DataArray named otherwise), rather than drawing the field itself.
    """
    field = _map(_spread_field(std, variable), time=time, sample=sample)
    return _row([field], [_title(field, "ensemble spread")], vmin=0.0, cmap="magma")


def coverage(coverage_map, low: float | None = None):
    """Map of the probability that a gap cell is queried in training (Theorem 1 of the method).

    Cells at zero are never learned: their imputation is arbitrary. A contour
    marks ``low``.

    Parameters
    ----------
    coverage_map : xarray.DataArray or numpy.ndarray
        2-D query coverage in [0, 1] (NaN where never observed): the result of
        :func:`xrimpute.check.check`, or the ``coverage`` of
        :func:`xrimpute.masks.learnability`.
    low : float, optional
        Level of the contour: cells below it are learned slowly (default: the
        threshold the check used, else 0.05).

    Returns
    -------
    matplotlib.figure.Figure
        The map and its colour bar.
    """
    from .check import plot_coverage

    plt = _pyplot()
    field = coverage_map if isinstance(coverage_map, xr.DataArray) else \
        xr.DataArray(np.asarray(coverage_map), dims=("y", "x"), name="query_coverage")
    if field.ndim != 2:
        raise ArgumentError(f"expected a 2-D coverage map, got dims {field.dims}")
    low = field.attrs.get("low_coverage_threshold", 0.05) if low is None else low
    fig, ax = plt.subplots(figsize=(PANEL_INCHES + 1.2, PANEL_INCHES), layout="constrained")
    if np.nanmin(field.values) < low < np.nanmax(field.values):  # lines stay above the map drawn next
        field.plot.contour(ax=ax, levels=[low], colors="white", linewidths=0.8, add_colorbar=False)
    plot_coverage(field, ax=ax)
    if "spec" not in field.attrs:  # not a check result: no spec to name
        ax.set_title("query coverage")
    return fig


def training_curves(model):
    """Training loss and, when there was validation, the skill on held-back observations.

    Parameters
    ----------
    model : xrimpute.CtxDiffModel or xrimpute.training.History
        A fitted (or loaded) model, whose ``history`` is drawn, or a history.

    Returns
    -------
    matplotlib.figure.Figure
        Loss against step (log scale), and validation skill (1 - normalised MSE
        of held-back cells) against step when the model was validated, with
        the step of the network training kept where it is not the last, and the
        steps where training went back to its best network.
    """
    plt = _pyplot()
    history = getattr(model, "history", model)
    if not history.step:
        raise ArgumentError("the model has no training history to draw")
    panels = 2 if history.val else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False, layout="constrained")
    loss = axes[0, 0]
    loss.plot(history.step, history.loss)
    loss.set(xlabel="step", ylabel="context-query loss", yscale="log", title="training loss")
    if history.val:
        skill = axes[0, 1]
        skill.plot(history.val_step, [1 - v["nmse"] for v in history.val], marker=".")
        skill.set(xlabel="step", ylabel="skill (1 - NMSE)", title="held-back observations")
        if history.kept:  # training returned an earlier network than the last
            skill.axvline(history.kept, color="grey", linestyle="--", label=f"network kept (step {history.kept})")
        for i, step in enumerate(history.restarts):
            skill.axvline(step, color="grey", linestyle=":", label="back to the best network" if i == 0 else None)
        if history.kept or history.restarts:
            skill.legend()
    return fig


__all__ = ["compare", "coverage", "spread", "training_curves"]

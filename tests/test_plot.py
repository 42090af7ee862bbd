"""Plot helpers return figures with the expected panels (Agg backend, no display)."""
import sys

import numpy as np
import pytest
import xarray as xr

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is an extra: pip install 'xrimpute[plot]'")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import xrimpute.plot as xplot  # noqa: E402
from synthetic import blobs, latlon_cube  # noqa: E402
from xrimpute.training import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def cube():
    truth = blobs(n=2, t=6, size=12, seed=0)
    observed = truth.where(np.random.default_rng(0).random(truth.shape) < 0.3)
    return truth, observed


def map_axes(fig):
    """The map panels of a figure, without its colour bar."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_compare_draws_truth_observed_and_each_imputation_on_one_colour_scale(cube):
    truth, observed = cube
    fig = xplot.compare(truth, observed, observed.fillna(0.0), observed.fillna(1.0), names=["zeros", "ones"],
                        time=2, sample=1)
    assert len(fig.axes) == 5  # four maps and one colour bar
    panels = fig.axes[:4]
    assert [ax.get_title() for ax in panels][::2] == ["truth", "zeros"]
    assert panels[1].get_title().startswith("observed (")
    limits = {panels[i].collections[0].get_clim() for i in range(4)}
    assert len(limits) == 1  # shared scale
    lo, hi = limits.pop()
    field = truth.isel(sample=1, time=2)
    assert lo == pytest.approx(min(float(field.min()), 0.0)) and hi == pytest.approx(max(float(field.max()), 1.0))


def test_compare_without_truth_selects_a_time_label_and_a_dataset_variable():
    ds = latlon_cube(t=6)
    seen = ds.where(xr.DataArray(np.random.default_rng(1).random(ds["t2m"].shape) < 0.5, dims=ds["t2m"].dims))
    fig = xplot.compare(None, seen, ds, time=ds["time"].values[4], variable="sp")
    assert len(fig.axes) == 3
    assert fig.axes[1].get_title() == "imputed"
    shown = fig.axes[1].collections[0].get_array()
    np.testing.assert_allclose(np.asarray(shown).ravel(), ds["sp"].isel(time=4).values.ravel())


def test_compare_refuses_fields_with_an_unselected_extra_dim():
    ds = latlon_cube(t=4).drop_vars("lsm").expand_dims(level=[500, 850])
    with pytest.raises(ValueError, match="select one value first"):
        xplot.compare(None, ds, variable="t2m")


def test_spread_and_coverage_are_one_map_and_a_colour_bar(cube):
    truth, _ = cube
    fig = xplot.spread(truth.std("sample").rename("u_std"), time=3)
    assert len(fig.axes) == 2 and len(map_axes(fig)) == 1
    coverage = np.linspace(0, 1, 100).reshape(10, 10)
    fig = xplot.coverage(coverage)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "query coverage"
    contour, image = fig.axes[0].collections  # the contour at low=0.05 and the map
    assert image.get_clim() == (0.0, 1.0) and len(contour.get_paths()) > 0


def test_spread_of_an_imputed_dataset_draws_the_std_variable_not_the_field(cube):
    truth, _ = cube
    filled = truth.to_dataset(name="u")
    filled["u_std"] = truth.std("sample") * 0 + 0.5  # a constant spread, far from the field's values
    fig = xplot.spread(filled, time=3)
    (image,) = map_axes(fig)[0].collections
    assert np.allclose(image.get_array(), 0.5) and map_axes(fig)[0].get_title() == "ensemble spread: u_std"
    assert map_axes(xplot.spread(filled, time=3, variable="u"))[0].get_title() == "ensemble spread: u_std"


def test_spread_of_data_without_a_spread_refuses_to_draw_the_field(cube):
    truth, _ = cube
    with pytest.raises(ValueError, match=r"no spread variable \(\*_std\) among \['u'\]"):
        xplot.spread(truth.to_dataset(name="u"))
    with pytest.raises(ValueError, match="'u' is not a spread"):
        xplot.spread(truth.rename("u"))


def test_coverage_of_a_check_result_names_the_spec_and_its_zero_share(cube):
    from xrimpute.check import check

    _, observed = cube
    fig = xplot.coverage(check(observed, mask="pixel", max_windows=8, n_draws=16))
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title().startswith("Pixel(") and "zero coverage" in fig.axes[0].get_title()


def test_training_curves_show_loss_and_validation_skill():
    history = History(step=[0, 10, 20], loss=[1.0, 0.5, 0.3], val_step=[10, 20],
                      val=[{"nmse": 0.6}, {"nmse": 0.4}], seconds=1.0)
    fig = xplot.training_curves(history)
    assert len(fig.axes) == 2
    skill = fig.axes[1].lines[0].get_ydata()
    np.testing.assert_allclose(skill, [0.4, 0.6])
    assert len(xplot.training_curves(History(step=[0, 10], loss=[1.0, 0.5])).axes) == 1
    assert not fig.axes[1].get_legend()


def test_training_curves_mark_the_network_kept_before_the_last_step():
    history = History(step=[0, 10, 20], loss=[1.0, 0.5, 0.3], val_step=[10, 20],
                      val=[{"nmse": 0.4}, {"nmse": 0.6}], seconds=1.0, kept=10)
    skill = xplot.training_curves(history).axes[1]
    assert skill.lines[1].get_xdata()[0] == 10 and "step 10" in skill.get_legend().get_texts()[0].get_text()


def test_training_curves_mark_the_returns_to_the_best_network():
    history = History(step=[0, 10, 20, 30], loss=[1.0, 0.5, 0.3, 0.2], val_step=[10, 20, 30],
                      val=[{"nmse": 0.4}, {"nmse": 0.6}, {"nmse": 0.5}], seconds=1.0, kept=10, restarts=[20])
    skill = xplot.training_curves(history).axes[1]
    assert [line.get_xdata()[0] for line in skill.lines[1:]] == [10, 20]
    assert [t.get_text() for t in skill.get_legend().get_texts()] == ["network kept (step 10)",
                                                                      "back to the best network"]


def test_a_missing_matplotlib_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "xrimpute\[plot\]"'):
        xplot.spread(latlon_cube()[["t2m"]].rename(t2m="t2m_std"))

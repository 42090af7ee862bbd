"""The interpolators station users know, as baselines: thin-plate RBF, normalised convolution, ordinary kriging."""
import numpy as np
import pytest
import xarray as xr

from xrimpute.baselines import METHODS, fill

STATION_METHODS = ["rbf", "normalised_convolution", "kriging"]


def smooth_field(n_steps=6, size=24):
    t = np.arange(n_steps)[:, None, None]
    y, x = np.mgrid[0:size, 0:size]
    return np.sin(x / 5.0 + 0.2 * t) * np.cos(y / 6.0) + 0.3 * np.cos((x + y) / 7.0)


def stations(field, share=0.08, seed=0):
    """A fixed network of ``share`` of the cells, with one frame missing every report."""
    cells = np.random.default_rng(seed).random(field.shape[1:]) < share
    values = np.where(cells, field, np.nan)
    values[2] = np.nan
    return values


@pytest.mark.parametrize("method", STATION_METHODS)
def test_station_interpolators_fill_every_cell_keep_the_stations_and_beat_the_mean(method):
    if method == "kriging":
        pytest.importorskip("pykrige")
    truth = smooth_field()
    values = stations(truth)
    filled = METHODS[method](values[None, None])[0, 0]
    gaps = np.isnan(values)
    assert np.isfinite(filled).all()
    assert np.array_equal(filled[~gaps], values[~gaps])
    error = np.sqrt(np.mean((filled[gaps] - truth[gaps]) ** 2))
    assert error < 0.5 * truth[gaps].std()  # far better than the mean of the field


def test_normalised_convolution_reaches_cells_far_from_any_station():
    values = np.full((3, 40, 40), np.nan)
    values[:, 0, 0] = 1.0  # one station in a corner: a narrow kernel alone never reaches the far corner
    filled = METHODS["normalised_convolution"](values, sigma=1.0)
    assert np.allclose(filled, 1.0)


def test_station_interpolators_run_through_fill_on_a_cube():
    values = stations(smooth_field())
    da = xr.DataArray(values.astype(np.float32), dims=("time", "lat", "lon"), name="t")
    out = fill(da, method="rbf")
    assert not out.isnull().any() and out.dtype == np.float32


def test_kriging_without_pykrige_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pykrige", None)
    monkeypatch.setitem(sys.modules, "pykrige.ok", None)
    with pytest.raises(ImportError, match=r"xrimpute\[kriging\]"):
        METHODS["kriging"](stations(smooth_field())[None, None])

"""The learnability check: coverage maps on the cube's grid, their summary and plot, and the fit warning."""
import logging
import subprocess
import sys
import warnings

import matplotlib
import pytest
import xarray as xr

from synthetic import latlon_cube
from xrimpute import observe
from xrimpute.check import check, permanent_mask, plot_coverage, summary
from xrimpute.cube import CubeError
from xrimpute.engine import WINDOWS
from xrimpute.masks import Block, Pixel

matplotlib.use("Agg")

FIT = dict(steps=1, batch_size=2, window=3, progress=False, verbose=False, compare_classical=False)  # masks only


@pytest.fixture(scope="module")
def blocks():
    """Two variables on a lat/lon grid seen in 3x3 blocks (5 of 9 per step), with two columns of land."""
    ds = latlon_cube(t=12, nlat=12, nlon=12)
    seen = observe(ds, "block", grid=(3, 3), observed=5, seed=0)
    land = ds.lon <= ds.lon[1]
    return seen.where(~land).assign(lsm=ds["lsm"])


def test_check_maps_coverage_on_the_cubes_grid(blocks):
    coverage = check(blocks, mask="pixel", window=3)
    assert coverage.dims == ("lat", "lon") and coverage.name == "query_coverage"
    xr.testing.assert_identical(coverage.lat, blocks.lat)
    xr.testing.assert_identical(coverage.lon, blocks.lon)
    assert bool(coverage.isel(lon=[0, 1]).isnull().all())  # land: never observed, left out
    assert float(coverage.isel(lon=slice(2, None)).max()) < 1e-3  # pixel contexts never reach missing blocks
    attrs = coverage.attrs
    assert attrs["zero_coverage_share"] == 1.0 and attrs["never_observed_share"] == pytest.approx(2 / 12, abs=1e-3)
    assert attrs["observing"].startswith("Block(") and "grid=(3, 3)" in attrs["observing"]
    assert attrs["worst_regions"].startswith("lat 40..60, lon -6..12: 120 cells")


def test_check_of_the_inferred_spec_covers_every_observed_cell(blocks):
    coverage = blocks.ctxdiff.check(window=3)
    assert coverage.attrs["spec"] == coverage.attrs["observing"] and coverage.attrs["zero_coverage_share"] == 0
    assert float(coverage.isel(lon=slice(2, None)).min()) > 0.1
    text = summary(coverage)
    assert "zero coverage (never learned):   0.0%" in text and "positive probability" in text
    assert "(inferred: block)" in text
    xr.testing.assert_identical(coverage, check(blocks, mask=Block(grid=(3, 3)), window=3))


def test_summary_names_the_fix_and_plot_draws_the_map(blocks, tmp_path):
    coverage = check(blocks, mask=Pixel(context_ratio=0.6), window=3, n_draws=64)
    print(summary(coverage))
    assert "never learned" in summary(coverage) and "inferred: Block(" in summary(coverage)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    artist = plot_coverage(coverage, ax=ax)
    share = coverage.attrs["zero_coverage_share"]
    assert artist.axes is ax and 0.8 < share < 1 and f"zero coverage: {share:.0%}" in ax.get_title()
    fig.savefig(tmp_path / "coverage.png")
    plt.close(fig)
    assert (tmp_path / "coverage.png").stat().st_size > 1000


def test_fit_warns_for_pixel_contexts_on_block_data_and_not_for_block_contexts(blocks):
    with pytest.warns(UserWarning, match=r"100% of the observed grid cells zero probability.*mask=Block\(") as record:
        blocks.ctxdiff.fit(mask="pixel", **FIT)
    assert "looks like block observations" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = blocks.ctxdiff.fit(mask="block", **FIT)
    assert model.spec.grid == (3, 3)


def test_fit_logs_why_it_chose_the_inferred_mask_and_prints_nothing(blocks, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="xrimpute"):
        blocks.ctxdiff.fit(mask="infer", **{**FIT, "verbose": True})
    (note,) = [r.getMessage() for r in caplog.records if r.name.startswith("xrimpute")]
    assert "mask='infer' chose Block(" in note and "whole blocks of a 3x3 grid" in note
    assert "17% of the cells are never observed" in note
    assert capsys.readouterr().out == ""


def test_the_mask_note_shows_on_stderr_by_default_and_can_be_silenced(tmp_path):
    code = ("import logging, sys, numpy as np\nfrom xrimpute.masks import resolve\n"
            "observed = np.random.default_rng(0).random((1, 1, 6, 8, 8)) < 0.5\n"
            "resolve('auto', observed)\nlogging.getLogger('xrimpute').setLevel('WARNING')\n"
            "resolve('auto', observed)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr.count("xrimpute: mask='auto' chose Pixel(") == 1


def test_permanent_mask_from_a_land_sea_variable():
    ds = latlon_cube(t=6)
    masked = permanent_mask(ds, "lsm")
    land = ds["lsm"] > 0.5
    assert "lsm" not in masked and set(masked.data_vars) == {"t2m", "sp"}
    assert bool(masked["t2m"].where(land).isnull().all()) and int(masked["sp"].isnull().sum()) == 6 * int(land.sum())
    assert masked["t2m"].attrs == ds["t2m"].attrs
    sea = permanent_mask(ds, "lsm", masked="below")
    assert bool(sea["t2m"].where(~land).isnull().all())
    with pytest.raises(CubeError, match="no variable 'land'"):
        permanent_mask(ds, "land")
    with pytest.raises(CubeError, match="static"):
        permanent_mask(ds, "t2m")
    coverage = check(masked)  # the land is never observed: NaN on the map, not a learnability problem
    assert bool(coverage.where(land).isnull().all()) and coverage.attrs["zero_coverage_share"] == 0
    assert coverage.attrs["never_observed_share"] == pytest.approx(float(land.mean()), abs=1e-3)



def test_a_complete_cube_has_nothing_to_fill():
    ds = latlon_cube(t=6, nlat=8, nlon=8)
    coverage = check(ds.drop_vars("lsm"))
    assert coverage.attrs["cells_to_fill"] == 0
    assert summary(coverage).startswith("Nothing to fill") and "pixel" not in summary(coverage).lower()


def test_the_verdict_follows_the_numbers_when_every_cell_is_learned_slowly(blocks):
    coverage = check(blocks.drop_vars("lsm"), mask="block", window=3, low=1.0, n_draws=64)  # all coverage below 1
    assert coverage.attrs["zero_coverage_share"] == 0 and coverage.attrs["low_coverage_share"] == 1
    verdict = summary(coverage).splitlines()[-1]
    assert "only slowly" in verdict and "train longer" in verdict
    assert "every observed cell has a positive probability" not in summary(coverage)


def test_check_looks_at_the_window_fit_uses_by_default(blocks):
    assert check(blocks, n_draws=16).attrs["window"] == min(WINDOWS[0], blocks.sizes["time"])
    assert check(blocks.isel(time=slice(0, 3)), n_draws=16).attrs["window"] == 3  # a shorter cube: every step

"""The window a fit chooses: longer only where it brings many more gaps within reach of an observation."""
import numpy as np
import pytest

from synthetic import blobs
from xrimpute.check import check
from xrimpute.engine import LONG_WINDOW, Engine, choose_window, field_persistence, one_step_share
from xrimpute.masks import context_near_gaps, gaps_in_reach


def every_eighth_frame(t: int = 32, size: int = 6) -> np.ndarray:
    """``(1, 1, t, size, size)``: whole frames observed at steps 0, 8, 16, ..., none between (a passing swath)."""
    observed = np.zeros((1, 1, t, size, size), bool)
    observed[:, :, ::8] = True
    return observed


def test_gaps_in_reach_counts_the_gap_cells_with_an_observation_within_the_window_and_the_radius():
    observed = every_eighth_frame()
    # gap frames 1..7, 9..15, 17..23, 25..31: within 2 steps of an observed frame, 14 of 28; within 4, all but 29..31
    assert gaps_in_reach(observed, 5, 0) == pytest.approx(14 / 28)
    assert gaps_in_reach(observed, 9, 0) == pytest.approx(25 / 28)
    one = np.zeros((1, 1, 3, 1, 9), bool)
    one[0, 0, 1, 0, 0] = True  # one cell observed once, in the middle step
    # gaps of column 0 (2) are within reach in time; of the other columns, never observed, none count
    assert gaps_in_reach(one, 3, 0) == 1.0
    one[0, 0, 1, 0, 8] = True
    assert gaps_in_reach(one, 3, 2) == 1.0
    one[0, 0, :, 0, 4] = [True, False, False]  # column 4 is 4 cells from columns 0 and 8 (observed at step 1)
    # column 4 at step 1 sees its own step 0; at step 2 nothing within 3 cells and 1 step: 5 of 6 gap cells
    assert gaps_in_reach(one, 3, 3) == pytest.approx(5 / 6)
    assert gaps_in_reach(np.ones((1, 1, 4, 3, 3), bool), 5, 1) == 1.0


def test_the_longer_window_is_chosen_only_where_it_reaches_many_more_gaps():
    window, reached = choose_window(every_eighth_frame(), 32)
    assert reached == pytest.approx({5: 14 / 28, 9: 25 / 28, 13: 27 / 28, 17: 1.0})
    assert window == 13  # the shortest within a tenth of the gaps of the longest's reach
    scattered = np.random.default_rng(0).random((1, 1, 32, 12, 12)) < 0.1
    assert choose_window(scattered, 32)[0] == 5
    assert choose_window(every_eighth_frame(t=4), 4)[0] == 4  # never longer than the series


@pytest.fixture(scope="module")
def swath_like():
    cube = blobs(n=1, t=24, size=12, seed=0).values[:, None].astype(np.float32)
    return np.where(every_eighth_frame(t=24, size=12), cube, np.nan)


@pytest.mark.filterwarnings("ignore:mask Pixel")  # whole frames or none: no mask can learn its gaps
def test_a_fit_chooses_its_window_for_the_observations_and_keeps_a_named_one(swath_like):
    chosen = Engine.fit_array(swath_like, mask="pixel", steps=2, batch_size=2, progress=False,
                              verbose=False)
    assert chosen.window == 13 and chosen.denoiser.config["window"] == 13
    assert set(chosen.config.extra["window_reach"]) == {"5", "9", "13", "17"}
    named = Engine.fit_array(swath_like, mask="pixel", window=3, steps=2, batch_size=2,
                             progress=False, verbose=False)
    assert named.window == 3 and "window_reach" not in named.config.extra
    further = Engine.fit_array(swath_like, mask="pixel", init=chosen, steps=1, batch_size=2, progress=False,
                               verbose=False)
    assert further.window == 13  # a fit that starts from a model keeps its window


def test_check_looks_at_the_window_a_fit_would_choose():
    cube = blobs(n=1, t=24, size=12, seed=0)
    passes = cube.where(every_eighth_frame(t=24, size=12)[0, 0])
    assert check(passes, mask="pixel", n_draws=4).attrs["window"] == 13


def test_context_near_gaps_counts_the_observations_in_each_gap_cells_box():
    observed = np.zeros((1, 1, 5, 1, 5), bool)
    observed[0, 0, 2, 0, 2] = True  # one observation in the middle
    # every other cell of row 0 is no gap: never observed; the column 2 gaps each see it within 3 steps
    assert context_near_gaps(observed, 5, 0) == pytest.approx(1.0)
    assert context_near_gaps(observed, 3, 0) == pytest.approx(2 / 4)  # steps 1 and 3 see it, 0 and 4 do not
    observed[0, 0, :, 0, 4] = [True, True, False, True, True]
    # within two cells and two steps: column 2's gaps see its own observation and two or three of column 4's,
    # column 4's gap (step 2) its own four and column 2's one
    assert context_near_gaps(observed, 5, 2) == pytest.approx((3 + 4 + 4 + 3 + 5) / 5)
    assert context_near_gaps(np.ones((1, 1, 3, 2, 2), bool), 3, 1) == np.inf


def ar1_cube(lag_one: float, t: int = 400, size: int = 20, seed: int = 0) -> np.ndarray:
    """``(1, 1, t, size, size)``: each cell an autoregression of order one, correlation ``lag_one`` a step apart."""
    rng = np.random.default_rng(seed)
    series = np.zeros((t, size, size))
    series[0] = rng.normal(size=(size, size))
    for k in range(1, t):
        series[k] = lag_one * series[k - 1] + np.sqrt(1 - lag_one**2) * rng.normal(size=(size, size))
    return series[None, None].astype(np.float32)


def test_field_persistence_is_the_correlation_a_lag_on_from_a_cells_sparse_observations():
    rng = np.random.default_rng(1)
    sparse = rng.random((1, 1, 400, 20, 20)) < 0.04
    slow, white = ar1_cube(0.98), ar1_cube(0.0)
    assert field_persistence(np.where(sparse, slow, np.nan), 6) == pytest.approx(0.98**6, abs=0.08)
    assert field_persistence(np.where(sparse, white, np.nan), 6) == pytest.approx(0.0, abs=0.15)
    # two variables: the one that persists less
    both = np.concatenate([np.where(sparse, slow, np.nan), np.where(sparse, white, np.nan)], axis=1)
    assert field_persistence(both, 6) == pytest.approx(field_persistence(np.where(sparse, white, np.nan), 6))
    assert field_persistence(np.where(sparse, slow, np.nan)[:, :, :7], 6) is None  # no lag beyond 6
    assert field_persistence(np.where(rng.random(sparse.shape) < 0.002, slow, np.nan), 6) is None  # too few pairs


def noise_about_a_trend(t: int = 400, size: int = 20, seed: int = 0) -> np.ndarray:
    """``(1, 1, t, size, size)``: white noise about a trend that rises eight noise deviations over the series."""
    rng = np.random.default_rng(seed)
    return (np.linspace(0, 8, t)[:, None, None] + rng.normal(size=(t, size, size)))[None, None].astype(np.float32)


def test_one_step_share_tells_a_field_that_evolves_from_noise_about_a_trend():
    sparse = np.random.default_rng(3).random((1, 1, 400, 20, 20)) < 0.04
    slow, trend = np.where(sparse, ar1_cube(0.98), np.nan), np.where(sparse, noise_about_a_trend(), np.nan)
    assert one_step_share(slow, 6) == pytest.approx((1 - 0.98) / (1 - 0.98**6), abs=0.08)
    assert one_step_share(trend, 6) == pytest.approx(1.0, abs=0.15)
    assert field_persistence(trend, 6) > 0.7  # the trend alone makes it look persistent
    assert one_step_share(np.concatenate([slow, trend], axis=1), 6) == pytest.approx(one_step_share(trend, 6))
    assert one_step_share(slow[:, :, :6], 6) is None  # no lag of 6
    assert one_step_share(np.where(sparse & (np.random.default_rng(4).random(sparse.shape) < 0.05), slow,
                                   np.nan), 6) is None  # too few pairs a step apart


@pytest.mark.filterwarnings("ignore:mask Pixel")  # 1 % pixels: some observed cells are never queried
def test_a_long_window_where_the_gaps_have_little_context_and_the_field_persists():
    rng = np.random.default_rng(2)
    sparse, dense = (rng.random((1, 1, 400, 40, 40)) < rate for rate in (0.01, 0.6))
    assert context_near_gaps(sparse, 5, 10) < 30 and context_near_gaps(dense, 5, 10) > 300
    slow, quick = ar1_cube(0.98, size=40), ar1_cube(0.8, size=40)
    assert choose_window(sparse, 400, np.where(sparse, slow, np.nan))[0] == LONG_WINDOW == 13
    assert choose_window(sparse, 400)[0] == 5  # without the values: by reach alone
    assert choose_window(sparse, 400, np.where(sparse, quick, np.nan))[0] == 5
    assert choose_window(sparse, 400, np.where(sparse, noise_about_a_trend(size=40), np.nan))[0] == 5
    assert choose_window(dense, 400, np.where(dense, slow, np.nan))[0] == 5
    quarter = np.random.default_rng(5).random(sparse.shape) < 0.25  # near 20 % pixels on a larger grid
    assert 300 < context_near_gaps(quarter, 5, 10) < 450
    assert choose_window(quarter, 400, np.where(quarter, slow, np.nan))[0] == 5
    assert choose_window(sparse[:, :, :12], 12, np.where(sparse, slow, np.nan)[:, :, :12])[0] == 5  # too short
    # moving blocks: their gaps lie beside much context
    blocks = np.repeat(np.repeat(rng.random((1, 1, 400, 4, 4)) < 5 / 9, 10, axis=3), 10, axis=4)
    assert context_near_gaps(blocks, 5, 10) > 300
    assert choose_window(blocks, 400, np.where(blocks, slow, np.nan))[0] == 5
    fit = dict(steps=1, batch_size=2, progress=False, verbose=False)
    small = rng.random((1, 1, 400, 16, 16)) < 0.2  # a fifth of the cells: some 200 observations near a gap
    assert Engine.fit_array(np.where(small, ar1_cube(0.98, size=16), np.nan), "pixel", **fit).window == 13
    # a station network's fill is its guess, frame by frame: the window by reach, however sparse and persistent
    # (a complete network has no gaps to look at; one with outages does)
    stations = np.zeros(sparse.shape, bool)
    stations[..., ::20, ::20] = rng.random((1, 1, 400, 2, 2)) < 0.9
    assert choose_window(stations, 400, np.where(stations, slow, np.nan))[0] == 13
    assert Engine.fit_array(np.where(stations, slow, np.nan), "station", **fit).window == 5

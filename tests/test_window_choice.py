"""The window a fit chooses: longer only where it brings many more gaps within reach of an observation."""
import numpy as np
import pytest

from synthetic import blobs
from xrimpute.check import check
from xrimpute.engine import Engine, choose_window
from xrimpute.masks import gaps_in_reach


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

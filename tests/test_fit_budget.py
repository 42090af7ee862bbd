"""A time budget covers the whole fit: training gets what the statistics, the first guess's choice, the classical
fillers' comparison and the scoring of the held-back cells leave of it."""
import logging
import re

import numpy as np
import pytest

from synthetic import blobs
from xrimpute.baselines.heldout import FILLERS, MIN_BUDGET
from xrimpute.engine import ImputedHeldBack

SPLIT = re.compile(r"training for (\d+) s of the (\d+) s time budget: (\d+) s went to .*, about (\d+) s are kept")


def fit_logged(caplog, max_time: float):
    observed = blobs(n=2, t=16, size=16, seed=0)
    observed = observed.where(np.random.default_rng(0).random(observed.shape) < 0.4)
    with caplog.at_level(logging.INFO, logger="xrimpute"):
        model = observed.ctxdiff.fit(mask="pixel", max_time=max_time, batch_size=2, progress=False, seed=0)
    return model, [r.getMessage() for r in caplog.records if r.name.startswith("xrimpute")]


@pytest.mark.filterwarnings("ignore::xrimpute.errors.SkillWarning")
def test_training_gets_what_the_rest_of_the_fit_leaves_of_its_time_budget(caplog):
    model, messages = fit_logged(caplog, max_time=24.0)
    (split,) = [m for m in messages if SPLIT.search(m)]
    training, budget, before, after = map(int, SPLIT.search(split).groups())
    assert budget == 24 and abs(training - (budget - before - after)) <= 1.5  # each figure is rounded
    # the classical fillers ran before training, in their budget, and what they took counts among the seconds spent
    assert "the classical fillers' comparison" in split
    assert model.validation["classical_seconds"] <= min(before + 0.5, MIN_BUDGET + 1)
    # training stopped at its share, one step past it at most, and the model keeps the budget the user gave
    assert training - 1.5 <= model.history.seconds <= training + 1.5 and "time budget" in model.history.stopped
    assert model.engine.config.train["max_time"] == 24.0
    assert model.validation["classical_seconds"] >= 0 and model.validation["classical"]


@pytest.mark.filterwarnings("ignore::xrimpute.errors.SkillWarning")
def test_a_budget_too_short_for_the_rest_of_the_fit_still_trains_a_quarter_of_it_and_says_so(caplog, monkeypatch):
    monkeypatch.setattr(ImputedHeldBack, "seconds", lambda self, net: 20.0)  # a scoring longer than the budget
    model, messages = fit_logged(caplog, max_time=8.0)
    (late,) = [m for m in messages if "the fit ends late" in m]
    assert "training for 2 s" in late and "pass a larger max_time=" in late
    assert 1.5 <= model.history.seconds <= 4.0


def test_the_rbf_fillers_cost_follows_its_gaps_not_its_cells():
    rng = np.random.default_rng(0)
    half = rng.normal(size=(1, 1, 4, 64, 64))  # past DENSE_RBF observations a frame: a local solve per gap
    half[..., :, 32:] = np.nan
    sparse = np.where(rng.random(half.shape) < 0.1, rng.normal(size=half.shape), np.nan)  # one solve per frame
    seconds = FILLERS["rbf"].seconds
    assert seconds(half) == pytest.approx(7e-5 * 4 * 64 * 32)
    assert seconds(half) > 5 * seconds(sparse)  # as many cells; on one core they took 0.36 s and 0.07 s


@pytest.mark.filterwarnings("ignore::xrimpute.errors.SkillWarning")
@pytest.mark.parametrize("budget", [dict(max_time=20.0), dict(steps=4)])
def test_the_classical_fillers_compare_before_training_under_a_time_budget_and_after_it_otherwise(monkeypatch,
                                                                                                 budget):
    import xrimpute.engine
    from xrimpute.baselines import heldout

    calls, score, train = [], heldout.score, xrimpute.engine.train

    def scored(windows, seconds, *args):
        calls.append(("compare", seconds))
        return score(windows, seconds, *args)

    def trained(*args, **kwargs):
        calls.append(("train", None))
        return train(*args, **kwargs)

    monkeypatch.setattr(heldout, "score", scored)
    monkeypatch.setattr(xrimpute.engine, "train", trained)
    observed = blobs(n=2, t=16, size=16, seed=0)
    observed = observed.where(np.random.default_rng(0).random(observed.shape) < 0.4)
    model = observed.ctxdiff.fit(mask="pixel", batch_size=2, progress=False, verbose=False, seed=0, **budget)
    order = [name for name, _ in calls]
    if "max_time" in budget:  # its seconds are spent from the budget, not guessed and kept
        assert order == ["compare", "train"] and calls[0][1] == MIN_BUDGET
    else:  # a tenth of training's time, 10 s at least
        assert order == ["train", "compare"] and calls[1][1] == max(MIN_BUDGET, 0.1 * model.history.seconds)
    assert model.validation["classical"]

"""Training returns the EMA network that scored best on the held-back cells, not the last one: a small cube's network
learns its training windows by heart within the budget, and its held-back score worsens as it does. Also: the
training bar under a time budget keeps its total when the steps outrun the estimate."""
import functools
import re
import time

import torch

import xrimpute
from synthetic import blobs
from xrimpute.diffusion import context_query_loss
from xrimpute.masks import Pixel
from xrimpute.nets import Denoiser
from xrimpute.training import MAX_RESTARTS, History, TrainConfig, overfitting, train


class RandomWindows:
    """Windows of noise, half of their cells observed: enough to take optimiser steps."""

    def sample(self, batch, generator):
        x = torch.randn((batch, 1, 3, 8, 8), generator=generator)
        return x, torch.rand((batch, 1, 3, 8, 8), generator=generator) < 0.5


class ScriptedScores:
    """A validation that reads its scores from a list and keeps a copy of every network it scores."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, net):
        self.seen.append({name: value.clone() for name, value in net.state_dict().items()})
        return dict(nmse=self.scores[len(self.seen) - 1])


def fit(scores, steps, checkpoint=None, patience=5):
    validate = ScriptedScores(scores)
    config = TrainConfig(steps=steps, batch_size=2, val_every=2, checkpoint_every=2, warmup=0.0, seed=0,
                         patience=patience)
    net, history = train(Denoiser(1, 3, torch.zeros(0, 8, 8), preset="narrow"), RandomWindows(), Pixel(), config,
                         validate=validate, checkpoint=checkpoint, fingerprint=dict(test=1), progress=False)
    return net, history, validate


def same(state, net):
    return all(torch.equal(value, net.state_dict()[name]) for name, value in state.items())


def test_training_returns_the_network_of_the_best_validation_and_names_its_step():
    net, history, validate = fit([0.5, 0.3, 0.4, 0.6], steps=8)
    assert history.val_step == [2, 4, 6, 8] and history.kept == 4
    assert same(validate.seen[1], net) and not same(validate.seen[3], net)


def test_the_last_network_is_kept_where_it_scored_best_or_nearly():
    for scores in ([0.5, 0.4, 0.3, 0.2], [0.5, 0.3, 0.4, 0.31]):  # 0.3 is within KEEP_MARGIN of 0.31
        net, history, validate = fit(scores, steps=8)
        assert history.kept is None and same(validate.seen[3], net)


def test_a_resumed_training_keeps_the_best_network_of_the_steps_before_its_checkpoint(tmp_path):
    checkpoint = tmp_path / "state.pt"
    _, _, before = fit([0.5, 0.3], steps=4, checkpoint=checkpoint)
    net, history, _ = fit([0.6, 0.7], steps=8, checkpoint=checkpoint)
    assert history.val_step == [2, 4, 6, 8] and history.kept == 4
    assert same(before.seen[1], net)


def distance(state, other):
    return sum(float((value - other[name]).square().sum()) for name, value in state.items() if value.is_floating_point())


def test_overfitting_needs_every_recent_scoring_past_the_margin_since_the_best_and_the_last_return():
    history = History(val_step=[2, 4, 6, 8], val=[dict(nmse=v) for v in (0.5, 0.3, 0.4, 0.4)])
    best = (0.3, 4, {})
    assert overfitting(history, best, patience=2)
    assert not overfitting(history, best, patience=3)  # the best itself is among the last three
    assert not overfitting(history, best, patience=0)
    assert not overfitting(History(val_step=[2, 4, 6, 8], val=[dict(nmse=v) for v in (0.5, 0.3, 0.4, 0.31)]),
                           best, patience=2)  # 0.31 is within KEEP_MARGIN of 0.3
    assert not overfitting(History(val_step=history.val_step, val=history.val, restarts=[6]), best, patience=2)


def test_a_worsening_score_sends_training_back_to_the_best_network_and_then_stops_it():
    scores = [0.5, 0.3] + [0.4] * 2 * (MAX_RESTARTS + 1) + [0.1] * 20
    net, history, validate = fit(scores, steps=60, patience=2)
    assert history.restarts == [8 + 4 * i for i in range(MAX_RESTARTS)]
    stop = 8 + 4 * MAX_RESTARTS
    assert history.step[-1] == stop and history.val_step[-1] == stop and "held-back score worsened" in history.stopped
    assert history.kept == 4 and same(validate.seen[1], net)
    best, before, after = validate.seen[1], validate.seen[3], validate.seen[4]  # scored at steps 4, 8 and 10
    assert distance(after, best) < 0.5 * distance(before, best)  # two steps after going back to the best


def test_the_repr_names_the_network_kept_and_the_returns_to_it_also_after_loading(tmp_path):
    observed = xrimpute.observe(blobs(n=2, t=12, size=16, seed=1), "pixel", rate=0.3, seed=0)
    model = observed.ctxdiff.fit(mask="pixel", steps=3, batch_size=2, progress=False, seed=0)
    assert "keeping the network" not in repr(model) and "back to its best" not in repr(model)
    model.history.kept, model.history.restarts = 2, [1, 2]  # as a fit that learned its windows by heart leaves them
    for shown in (model, xrimpute.load(model.save(tmp_path / "m.xri"))):
        training = repr(shown).split("training:")[1].split("\n")[0]
        assert "keeping the network of step 2" in training
        assert "back to its best network at a lower learning rate at step 1, 2" in training


def test_the_bar_keeps_a_total_when_the_steps_outrun_the_budgets_estimate(capsys):
    # the first 25 steps take 60 % of the budget, the rest run at full speed: the total estimated at step 25 (about
    # 25 / 0.6 = 42) falls short before the next estimate at step 50, and the bar lost its total there ("34step
    # [00:03, ...]"), no end in sight; timed by the clock, not by a count of sleeps, so a slow machine slows both
    started, calls, budget = [], [], 5.0

    def slow_then_fast(*args):
        started[:] = started or [time.perf_counter()]
        calls.append(None)
        if len(calls) == 25:
            time.sleep(max(0.0, started[0] + 0.6 * budget - time.perf_counter()))
        return functools.partial(context_query_loss, low_noise=1.0)(*args)

    config = TrainConfig(steps=10**6, max_time=budget, batch_size=2, warmup=0.0, seed=0)
    _, history = train(Denoiser(1, 3, torch.zeros(0, 8, 8), preset="narrow"), RandomWindows(), Pixel(), config,
                       progress=True, loss_fn=slow_then_fast)
    assert history.step[-1] > 45  # the fast steps did outrun the first estimate
    shown = capsys.readouterr().err.replace("\r", "\n").splitlines()
    first_total = next(i for i, line in enumerate(shown) if re.search(r"\d+/\d+ \[", line))
    assert not [line for line in shown[first_total:] if re.search(r"\d+step \[", line)]

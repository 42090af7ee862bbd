"""Training returns the EMA network that scored best on the held-back cells, not the last one: a small cube's network
learns its training windows by heart within the budget, and its held-back score worsens as it does."""
import torch

from xrimpute.masks import Pixel
from xrimpute.nets import Denoiser
from xrimpute.training import TrainConfig, train


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


def fit(scores, steps, checkpoint=None):
    validate = ScriptedScores(scores)
    config = TrainConfig(steps=steps, batch_size=2, val_every=2, checkpoint_every=2, warmup=0.0, seed=0)
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

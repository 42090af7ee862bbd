"""The share of the network's correction to its first guess that imputation keeps, fitted on held-back cells."""
import numpy as np
import torch

from synthetic import blobs
from xrimpute.engine import Engine, HeldBack, ImputeConfig
from xrimpute.masks import Pixel


class Corrector(torch.nn.Module):
    """A stand-in network: its first guess is 0 and its estimate ``target`` wherever it is asked."""

    first_guess = "space"

    def __init__(self, target):
        super().__init__()
        self.target = target

    def guess(self, values, mask, history=None, nearby=None):
        return torch.zeros_like(values), torch.ones_like(values)

    def forward(self, values, mask, t, **inputs):
        return self.target.repeat(values.shape[0] // self.target.shape[0], 1, 1, 1, 1)


def held_back(seed=0):
    generator = torch.Generator().manual_seed(seed)
    xs = torch.randn(3, 2, 5, 16, 16, generator=generator)
    ms = torch.rand(xs.shape, generator=generator) < 0.5
    hs = ~ms & (torch.rand(xs.shape, generator=generator) < 0.5)
    return xs, HeldBack(xs, ms, hs.float(), {}, Pixel(0.7), torch.device("cpu"), seed=0)


def test_a_correction_twice_too_large_is_kept_by_half_and_then_fills_the_held_back_cells_exactly():
    xs, cells = held_back()
    weights, scores = cells.correction_weights(Corrector(2 * xs), "observed")
    assert weights == [0.5, 0.5] and scores["nmse"] < 1e-10
    assert cells(Corrector(2 * xs), "observed")["nmse"] > 0.9  # all of it: as far off as the guess of 0


def test_a_correction_unrelated_to_the_truth_is_dropped_and_a_right_one_kept_whole():
    xs, cells = held_back()
    noise = torch.randn(xs.shape, generator=torch.Generator().manual_seed(5))
    weights, scores = cells.correction_weights(Corrector(noise), "sampled")
    assert max(weights) <= 0.1 and abs(scores["nmse"] - 1) < 0.05  # near the guess of 0, the mean fill
    assert cells.correction_weights(Corrector(xs), "sampled") == (None, None)  # every share 1: nothing to keep


def test_an_estimate_the_caller_already_has_is_used_instead_of_running_the_network_again():
    xs, cells = held_back()
    made = cells.estimate(Corrector(2 * xs), "observed")
    assert cells.correction_weights(Corrector(2 * xs), "observed", made) == cells.correction_weights(
        Corrector(2 * xs), "observed")
    weights, _ = cells.correction_weights(Corrector(-xs), "observed", made)  # the network is not run again
    assert weights == [0.5, 0.5]


def test_a_variable_whose_correction_helps_keeps_it_and_one_whose_correction_harms_drops_it():
    xs, cells = held_back()
    target = torch.stack([xs[:, 0], -xs[:, 1]], dim=1)
    weights, _ = cells.correction_weights(Corrector(target), "observed")
    assert weights == [1.0, 0.0]


def test_imputation_keeps_the_fitted_share_of_the_correction_on_the_guess_it_corrected(tmp_path):
    rng = np.random.default_rng(1)
    truth = blobs(n=2, t=8, size=16, seed=2).values[:, None].astype(np.float32)
    values = np.where(rng.random(truth.shape) < 0.3, truth, np.nan)
    engine = Engine.fit_array(values, mask="pixel", steps=3, batch_size=2, progress=False, verbose=False)
    options = ImputeConfig(K=2, progress=False, context="sampled")
    with torch.no_grad():  # a visible correction everywhere
        engine.denoiser.unet.head[-1].conv.bias.fill_(0.5)
    filled = {}
    for share in (None, [0.0], [0.5]):
        engine.config.correction = share
        filled[str(share)] = engine.fill(values, options)[0]
    assert Engine.load(engine.save(tmp_path / "m.xri")).config.correction == [0.5]
    torch.nn.init.zeros_(engine.denoiser.unet.head[-1].conv.bias)
    torch.nn.init.zeros_(engine.denoiser.unet.head[-1].conv.weight)
    engine.config.correction = None
    guessed = engine.fill(values, options)[0]  # the network's output is its guess
    gaps = np.isnan(values)
    np.testing.assert_allclose(filled["[0.0]"][gaps], guessed[gaps], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(filled["[0.5]"][gaps], (filled["None"][gaps] + guessed[gaps]) / 2, rtol=1e-4,
                               atol=1e-4)
    assert np.abs(filled["None"][gaps] - guessed[gaps]).min() > 0.1


def test_a_kept_share_of_the_correction_costs_no_second_pass_of_the_first_guess(monkeypatch):
    rng = np.random.default_rng(1)
    truth = blobs(n=1, t=16, size=16, seed=2).values[:, None].astype(np.float32)
    values = np.where(rng.random(truth.shape) < 0.5, truth, np.nan)
    engine = Engine.fit_array(values, mask="pixel", steps=2, batch_size=2, progress=False, verbose=False)
    assert engine.valid.all()  # no untrained cells, whose guess is a pass of its own
    guesses = []
    guess = type(engine.denoiser).guess
    monkeypatch.setattr(type(engine.denoiser), "guess", lambda self, *a, **k: guesses.append(1) or guess(self, *a, **k))
    counts = {}
    for share in (None, [0.5]):
        engine.config.correction = share
        guesses.clear()
        engine.fill(values, ImputeConfig(K=2, progress=False, context="sampled"))
        counts[str(share)] = len(guesses)
    assert counts["[0.5]"] == counts["None"] > 0

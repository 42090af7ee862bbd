"""The classical first guess inside the network, the half-resolution preset and budget-aware training."""
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from xrimpute.diffusion import LOW_NOISE_T, VPSchedule, context_query_loss
from xrimpute.masks import Pixel
from xrimpute.nets import Denoiser
from xrimpute.nets.prior import FirstGuess
from xrimpute.training import TrainConfig, learning_rate_factor


def smooth_field(t=5, h=24, w=32, seed=0):
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    yy, xx = np.meshgrid(np.linspace(0, 2 * np.pi, h), np.linspace(0, 2 * np.pi, w), indexing="ij")
    frames = [np.sin(yy + 0.2 * k + phase) * np.cos(xx - 0.1 * k) for k in range(t)]
    return torch.as_tensor(np.stack(frames), dtype=torch.float32)[None, None]  # (1, 1, T, H, W)


def test_the_first_guess_of_a_smooth_field_from_a_fifth_of_its_cells_is_close():
    x = smooth_field()
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.2
    guess, certainty = FirstGuess()(x * mask, mask)
    gaps = ~mask
    nmse = float(((guess - x)[gaps] ** 2).mean() / x[gaps].var())
    assert nmse < 0.05, nmse  # the mean fill scores 1
    assert certainty.shape == x.shape and float(certainty.max()) <= 1.0 + 1e-6


def test_the_first_guess_wraps_longitude_when_periodic():
    x = torch.zeros(1, 1, 1, 4, 16)
    mask = torch.zeros_like(x, dtype=torch.bool)
    x[..., 0], mask[..., 0] = 1.0, True  # only the first column is seen
    wrapped, _ = FirstGuess(scales=(1.0,), time_scale=0, periodic=True)(x, mask)
    flat, _ = FirstGuess(scales=(1.0,), time_scale=0, periodic=False)(x, mask)
    assert float(wrapped[..., -1].min()) == pytest.approx(1.0)  # the last column neighbours the first
    assert float(flat[..., -1].max()) == 0.0  # out of reach without wrapping


def test_a_periodic_grid_narrower_than_the_widest_kernel_wraps_round():
    x = torch.ones(1, 1, 2, 4, 3)
    mask = torch.ones_like(x, dtype=torch.bool)
    guess, _ = FirstGuess(periodic=True)(x, mask)  # the 4-cell scale reaches 10 cells: beyond the 3 columns
    assert torch.allclose(guess, x)


def test_changing_a_query_value_leaves_the_network_input_unchanged():
    torch.manual_seed(0)
    net = Denoiser(1, 3, torch.zeros(3, 16, 16), preset="lite", first_guess=True)
    seen = []

    def recording(values, mask, t):  # what the network and its first guess get
        seen.append((values.clone(), mask.clone(), *net.first_guess(values, mask)))
        return net(values, mask, t)

    x = smooth_field(3, 16, 16)
    observed = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    spec = Pixel(0.5)
    context_query_loss(recording, x, observed, spec, VPSchedule(), torch.Generator().manual_seed(3))
    context = seen[0][1]
    query = spec.query(observed, context)
    outside = query & ~context
    assert outside.any()
    changed = torch.where(outside, x + 100.0, x)
    context_query_loss(recording, changed, observed, spec, VPSchedule(), torch.Generator().manual_seed(3))
    for before, after in zip(seen[0], seen[1]):
        assert torch.equal(before, after)


def test_an_untrained_network_returns_the_first_guess():
    net = Denoiser(1, 5, torch.zeros(3, 20, 28), preset="lite", first_guess=True)
    x = smooth_field(5, 20, 28)
    mask = torch.rand(x.shape) < 0.3
    with torch.no_grad():
        out = net(x * mask, mask, torch.full((1,), 1e-3))
    guess, _ = net.first_guess(x * mask, mask)
    assert torch.allclose(out, guess)


def test_the_lite_preset_costs_under_a_third_of_tiny_per_step():
    def flops(preset):
        net = Denoiser(1, 3, torch.zeros(3, 32, 64), preset=preset, first_guess=preset == "lite")
        x = torch.randn(4, 1, 3, 32, 64)
        with FlopCounterMode(display=False) as counter:
            net(x, x > 0, torch.rand(4)).square().mean().backward()
        return counter.get_total_flops()

    assert flops("lite") < flops("tiny") / 3


def test_a_time_budget_gets_a_whole_schedule():
    config = TrainConfig(steps=10**6, lr=1.0, max_time=100.0, warmup=0.1, final_lr=0.1)
    assert learning_rate_factor(config, 10, 5.0) == pytest.approx(0.5)  # half-way through the warm-up
    assert learning_rate_factor(config, 100, 10.0) == pytest.approx(1.0)
    assert learning_rate_factor(config, 500, 55.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate_factor(config, 900, 100.0) == pytest.approx(0.1)


def test_a_step_budget_without_time_is_scheduled_by_steps():
    config = TrainConfig(steps=200, lr=1.0, warmup=0.05)
    assert learning_rate_factor(config, 5, 1e9) == pytest.approx(0.5)  # elapsed time plays no part
    assert learning_rate_factor(config, 200, 0.0) == pytest.approx(config.final_lr)


def test_low_noise_training_draws_that_share_of_times_below_the_threshold():
    t = VPSchedule().sample_t(1000, torch.Generator().manual_seed(0), low_noise=0.25)
    assert int((t <= LOW_NOISE_T).sum()) >= 250
    assert float(t[:250].max()) <= LOW_NOISE_T and float(t[250:].max()) > 0.9

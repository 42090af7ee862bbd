"""Imputation that sees every observation ("observed" contexts) against the paper's sampled contexts."""
import numpy as np
import pytest
import torch

import xrimpute
from synthetic import blobs
from xrimpute.diffusion import impute_ensemble
from xrimpute.engine import CONTEXT_MARGIN, choose_context
from xrimpute.errors import ArgumentError
from xrimpute.masks import Pixel


def context_mean(values, mask, t):
    """A stand-in network whose estimate everywhere is the mean of the values its context shows."""
    total = (values * mask).sum(dim=(1, 2, 3, 4), keepdim=True)
    return (total / mask.sum(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1)).expand_as(values)


def test_observed_contexts_estimate_from_every_observation_and_sampled_ones_give_the_spread():
    x = torch.arange(2 * 1 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 1, 3, 4, 4)
    observed = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    mean, std = impute_ensemble(context_mean, x, observed, Pixel(0.5), K=6,
                                generator=torch.Generator().manual_seed(1), context="observed")
    every = context_mean(x, observed, None)
    gaps = ~observed
    assert torch.equal(mean[gaps], every[gaps])  # the network reads the observations as they are, unnoised
    assert torch.equal(mean[observed], x[observed]) and float(std[gaps].min()) > 0  # sampled members land elsewhere
    alone, no_spread = impute_ensemble(context_mean, x, observed, Pixel(0.5), K=1,
                                       generator=torch.Generator().manual_seed(1), context="observed")
    assert torch.allclose(alone, mean) and float(no_spread.abs().max()) == 0.0
    sampled, _ = impute_ensemble(context_mean, x, observed, Pixel(0.5), K=6,
                                 generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(sampled[gaps], every[gaps], rtol=1e-4)  # the sampled contexts leave observations out


@pytest.fixture(scope="module")
def fitted():
    cube = blobs(n=2, t=8, size=16, seed=0)
    observed = cube.where(np.random.default_rng(0).random(cube.shape) < 0.4)
    return observed, observed.ctxdiff.fit(mask="pixel", steps=4, batch_size=2, progress=False, seed=0,
                                          compare_classical=False)


def test_the_fit_scores_both_contexts_on_its_held_back_cells_and_imputes_with_the_better(fitted):
    observed, model = fitted
    v = model.validation
    assert set(v["context_nmse"]) == {"sampled", "observed"}
    assert v["context"] == choose_context(v["context_nmse"])
    assert v.get("network_nmse", v["nmse"]) == v["context_nmse"][v["context"]]  # before any share of the correction
    other = ({"sampled", "observed"} - {v["context"]}).pop()
    default = model.impute(observed, K=3, progress=False)
    chosen = model.impute(observed, K=3, progress=False, context=v["context"])
    overridden = model.impute(observed, K=3, progress=False, context=other)
    np.testing.assert_array_equal(default.values, chosen.values)
    assert not np.allclose(default.values, overridden.values)
    assert f"with {v['context']} contexts by default" in repr(model)


def test_sampled_contexts_which_cost_k_passes_are_the_default_only_where_they_clearly_fill_better():
    assert choose_context({"sampled": 0.01, "observed": 0.05}) == "sampled"
    assert choose_context({"sampled": 0.99 * CONTEXT_MARGIN, "observed": 1.0}) == "sampled"
    assert choose_context({"sampled": 1.01 * CONTEXT_MARGIN, "observed": 1.0}) == "observed"  # better, not clearly
    assert choose_context({"sampled": 0.3, "observed": 0.3}) == "observed"  # a tie leaves no observation out
    assert choose_context({"sampled": 0.3, "observed": 0.2}) == "observed"


def test_an_unknown_context_is_refused_before_any_work(fitted):
    observed, model = fitted
    with pytest.raises(ArgumentError, match="context must be one of"):
        model.impute(observed, context="all")


def test_a_model_file_without_the_choice_imputes_with_sampled_contexts(fitted, tmp_path):
    _, model = fitted
    engine = xrimpute.load(model.save(tmp_path / "m.xri")).engine
    assert engine.context == model.validation["context"]
    engine.config.validation.pop("context")
    assert engine.context == "sampled"


def test_cells_no_loss_ever_reached_take_the_first_guess_and_the_others_the_networks_correction():
    from xrimpute.engine import Engine, ImputeConfig

    rng = np.random.default_rng(1)
    truth = blobs(n=2, t=8, size=16, seed=2).values[:, None].astype(np.float32)  # (N, 1, T, H, W)
    stations = rng.random((16, 16)) < 0.15
    values = np.where(stations & (rng.random(truth.shape) < 0.8), truth, np.nan)  # stations with outages
    engine = Engine.fit_array(values, mask="station", steps=3, lr=1e-2, batch_size=2, progress=False, verbose=False)
    engine.config.correction = None  # all of the network's correction, whatever the held-back cells said
    with torch.no_grad():  # a visible correction everywhere, as an undertrained network has
        engine.denoiser.unet.head[-1].conv.bias.fill_(0.5)
    filled, _ = engine.fill(values, ImputeConfig(K=2, fill_never_observed=True, progress=False))
    torch.nn.init.zeros_(engine.denoiser.unet.head[-1].conv.bias)
    guessed, _ = engine.fill(values, ImputeConfig(K=2, fill_never_observed=True, progress=False))
    untrained = ~engine.valid[None, :, None] & np.ones_like(values, bool)
    outage = np.isnan(values) & engine.valid[None, :, None]
    assert untrained.any() and outage.any()
    np.testing.assert_allclose(filled[untrained], guessed[untrained], rtol=1e-5, atol=1e-5)
    assert np.abs(filled[outage] - guessed[outage]).min() > 0.1  # the correction stays where it was trained


def test_cells_no_loss_ever_reached_take_the_guess_from_every_observation_whichever_context_imputes():
    from xrimpute.engine import Engine, ImputeConfig

    rng = np.random.default_rng(3)
    truth = blobs(n=2, t=8, size=16, seed=4).values[:, None].astype(np.float32)
    stations = rng.random((16, 16)) < 0.15
    values = np.where(stations & (rng.random(truth.shape) < 0.8), truth, np.nan)
    engine = Engine.fit_array(values, mask="station", steps=3, batch_size=2, progress=False, verbose=False)
    options = dict(K=3, fill_never_observed=True, progress=False)
    sampled, sampled_spread = engine.fill(values, ImputeConfig(context="sampled", **options))
    calls = {"network": 0, "open": 0, "guess alone": 0}

    def guessed(*_):  # a guess made outside a network pass
        calls["guess alone"] += calls["open"] == 0

    hooks = [engine.denoiser.register_forward_pre_hook(lambda *_: calls.update(network=calls["network"] + 1,
                                                                                 open=calls["open"] + 1)),
             engine.denoiser.register_forward_hook(lambda *_: calls.update(open=calls["open"] - 1)),
             engine.denoiser.first_guess.register_forward_hook(guessed)]
    try:
        observed, observed_spread = engine.fill(values, ImputeConfig(context="observed", **options))
    finally:
        for hook in hooks:
            hook.remove()
    untrained = ~engine.valid[None, :, None] & np.ones_like(values, bool)
    outage = np.isnan(values) & engine.valid[None, :, None]
    assert untrained.any() and outage.any()
    # a sampled context leaves stations out, which the guess between them has no reason to
    np.testing.assert_allclose(sampled[untrained], observed[untrained], rtol=1e-5, atol=1e-5)
    assert not np.allclose(sampled[outage], observed[outage], rtol=1e-3, atol=1e-3)  # the network's cells differ
    assert sampled_spread[untrained].min() > 0  # their spread is still the sampled contexts'
    assert observed_spread[untrained].min() > 0  # and how far those land from it under the observed context
    # with the observed context the network's own pass gives them the guess: no pass of the guess alone
    assert calls["network"] and not calls["guess alone"]


def test_observed_contexts_without_the_spread_run_one_pass_per_window_and_fill_the_same(fitted):
    observed, model = fitted  # a DataArray
    windows = []
    hook = model.engine.denoiser.register_forward_hook(lambda net, args, out: windows.append(args[0].shape[0]))
    try:
        alone = model.impute(observed, K=4, progress=False, context="observed")
        one_pass = sum(windows)
        both, _ = model.impute(observed, K=4, progress=False, context="observed", return_std=True)
    finally:
        hook.remove()
    assert sum(windows) - one_pass == 4 * one_pass
    np.testing.assert_allclose(alone.values, both.values, rtol=1e-5, atol=1e-6)  # batch sizes differ

"""Observations carried by the flow: the displacement, the nearest observations along it, the choice, a fit."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import xrimpute
from test_lazy import archive, imputed_alike_on_every_path
from xrimpute.baselines.heldout import scorer
from xrimpute.engine import Engine, ImputeConfig, ModelConfig, train_config
from xrimpute.flow import co_moving, displacement
from xrimpute.nets import Denoiser
from xrimpute.nets.prior import CANDIDATES, FLOW_LABEL, NEARBY_SPAN, candidate_label, nearby_baseline
from xrimpute.windows import nearby_observations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def advected(velocity, t=30, h=24, w=28, n=1, seed=0) -> np.ndarray:
    """``(n, 1, t, h, w)``: a smooth random field translated by ``velocity`` (rows, cols) cells a step."""
    rng = np.random.default_rng(seed)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    out = np.zeros((n, 1, t, h, w), np.float32)
    for i in range(n):
        for _ in range(6):
            ky, kx = rng.uniform(-0.5, 0.5, 2)
            phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0)
            for s in range(t):
                y, x = rows - velocity[0] * s, cols - velocity[1] * s
                out[i, 0, s] += amplitude * np.sin(ky * y + kx * x + phase)
    return out


def static_gap(shape, rows=slice(8, 16), cols=slice(10, 18)) -> np.ndarray:
    """Observed everywhere but a block that never moves; in a second sample, if any, another block (so that every
    cell is observed somewhere, and the blocks are gaps, not land)."""
    observed = np.ones(shape, bool)
    observed[..., rows, cols] = False
    if len(shape) == 5 and shape[0] > 1:
        observed[1:] = True
        observed[1:, ..., 2:10, 14:24] = False
    return observed


def test_the_displacement_of_a_field_moving_under_a_gap_that_stays_put():
    for velocity in [(0.75, -1.25), (0.0, 1.0), (-1.5, 0.5)]:
        values = advected(velocity)[0]
        found = displacement(np.where(static_gap(values.shape), values, 0), static_gap(values.shape))
        np.testing.assert_allclose(found, velocity, atol=0.13)
    values = advected((0.0, 0.0))[0]
    assert displacement(values, static_gap(values.shape)) == (0.0, 0.0)
    stations = np.zeros(values.shape, bool)
    stations[:, :, [3, 9, 15], [4, 20, 11]] = True  # a shift leaves no cell observed in both frames
    assert displacement(values, stations) == (0.0, 0.0)
    assert displacement(values[:, :1], np.ones_like(values[:, :1], bool)) == (0.0, 0.0)


def test_co_moving_frames_hold_a_trajectory_in_one_cell():
    values = advected((1.0, -2.0), t=6)[0]
    moved, kept = co_moving(values, np.ones(values.shape, bool), 2, (1.0, -2.0))
    inner = (slice(None), slice(None), slice(5, 19), slice(10, 18))  # reached from inside the grid at every step
    assert kept[inner].all()
    assert not kept[:, 5, -3:].any() and not kept[:, 5, :, :6].any()  # three steps on, the fluid left the grid there
    np.testing.assert_allclose(moved[inner], np.broadcast_to(values[:, 2:3], values.shape)[inner], atol=1e-5)


def test_along_the_flow_the_cells_of_a_gap_that_stays_put_meet_their_upstream_observations():
    velocity = (0.5, 1.0)
    truth = advected(velocity)[0]
    observed = static_gap(truth.shape)
    values = np.where(observed, truth, 0).astype(np.float32)
    start, window = 12, 5
    out = nearby_observations(values, observed, start, window, NEARBY_SPAN, flow=True)
    assert out.shape == (4, window, *truth.shape[-2:])
    before, before_steps, after, after_steps = out
    gap = ~observed[0, start : start + window]
    assert (before_steps[gap] > 0).mean() > 0.9 and (after_steps[gap] > 0).mean() > 0.9
    assert in_place_reach(values, observed, start, window) == 0.0  # the gap never sees its own cells observed
    now = truth[0, start : start + window]
    for value, steps in ((before, before_steps), (after, after_steps)):
        reached = gap & (steps > 0)
        error = np.abs(value[reached] - now[reached])  # the same fluid, steps away (bilinear reads blur some)
        assert np.median(error) < 0.02 and (error < 0.1).mean() > 0.9, (np.median(error), (error < 0.1).mean())
    line, known = nearby_baseline(torch.as_tensor(out)[None], window)
    error = float(((line[0] - torch.as_tensor(truth[:, start : start + window])) ** 2)[0][torch.as_tensor(gap)].mean())
    assert known[0, 0][torch.as_tensor(gap)].float().mean() > 0.9 and error < 0.01 * truth.var()
    inside = values.copy()
    inside[:, start : start + window] = np.random.default_rng(0).standard_normal(inside[:, :window].shape)
    np.testing.assert_array_equal(nearby_observations(inside, observed, start, window, NEARBY_SPAN, flow=True), out)


def in_place_reach(values, observed, start, window) -> float:
    """Share of the window's gap cells with an observation of their own cell either side."""
    _, before_steps, _, after_steps = nearby_observations(values, observed, start, window, NEARBY_SPAN, depth=1)
    gap = ~observed[0, start]
    return float(((before_steps > 0) | (after_steps > 0))[gap].mean())


def test_at_rest_the_flow_gives_the_nearby_observations_in_place_counted_from_each_step():
    rng = np.random.default_rng(0)
    values = np.broadcast_to(rng.standard_normal((1, 1, 9, 11)), (1, 30, 9, 11)).astype(np.float32)
    observed = rng.random(values.shape) < 0.3
    start, window = 10, 4
    flow = nearby_observations(values, observed, start, window, NEARBY_SPAN, flow=True)
    still = nearby_observations(values, observed, start, window, NEARBY_SPAN, depth=1)
    k = np.arange(window)[:, None, None]
    np.testing.assert_allclose(flow[0], np.broadcast_to(still[0], flow[0].shape), atol=1e-5)
    np.testing.assert_allclose(flow[1], np.where(still[1] > 0, still[1] + k, 0), atol=1e-5)
    np.testing.assert_allclose(flow[3], np.where(still[3] > 0, still[3] + window - 1 - k, 0), atol=1e-5)


def test_a_baseline_along_the_flow_draws_each_steps_own_line():
    nearby = torch.zeros(1, 4, 2, 1, 1)  # one channel, a window of 2 steps, one cell
    nearby[0, :, 0, 0, 0] = torch.tensor([1.0, 2.0, 4.0, 4.0])  # step 0: 1 two steps before, 4 four after
    nearby[0, :, 1, 0, 0] = torch.tensor([0.0, 0.0, 3.0, 20.0])  # step 1: 3 twenty steps after, nothing before
    line, known = nearby_baseline(nearby, 2, span=24)
    assert line[0, 0, 0, 0, 0] == pytest.approx(1 + 3 * 2 / 6) and known[0, 0, 0].all()
    assert line[0, 0, 1, 0, 0] == pytest.approx(3.0) and known[0, 0, 1].all()  # along the flow one reaches span
    assert not nearby_baseline(nearby, 2, span=16)[1][0, 0, 1].any()


def test_a_network_along_the_flow_asks_for_its_own_nearby_steps():
    net = Denoiser(1, 3, preset="lite", first_guess=True, nearby=NEARBY_SPAN, flow=True)
    assert net.flows and net.config["flow"] is True
    assert "flow" not in Denoiser(1, 3, preset="lite", first_guess=True, nearby=NEARBY_SPAN).config
    x, m, t = torch.zeros(1, 1, 3, 8, 8), torch.ones(1, 1, 3, 8, 8, dtype=torch.bool), torch.full((1,), 0.1)
    with pytest.raises(ValueError, match="along the flow"):
        net(x, m, t, nearby=torch.zeros(1, 4, 8, 8))
    assert net(x, m, t, nearby=torch.zeros(1, 4, 3, 8, 8)).shape == x.shape
    with pytest.raises(ValueError, match="pass nearby="):
        Denoiser(1, 3, preset="lite", first_guess=True, flow=True)


def fill_error(engine, values, truth) -> float:
    filled, _ = engine.fill(values, ImputeConfig(K=2, seed=0, batch_size=4, progress=False))
    gaps = np.isnan(values)
    return float(np.mean((filled - truth)[gaps] ** 2) / truth[gaps].var())


def without_smooth_solves(monkeypatch):
    for name in [name for name, options in CANDIDATES.items()
                 if options.get("bending") or options.get("covariance_steps")]:
        monkeypatch.delitem(CANDIDATES, name)


def test_a_fit_follows_the_flow_where_it_carries_observations_into_gaps_that_stay_put(tmp_path, monkeypatch):
    # the flow against the normalised convolution in place: bending, a smooth surface through each frame or window,
    # fills these smooth blobs in place nearly as well, and the series' covariance, whose lags carry the drift, better
    # (0.14 of the mean fill's error on the held-back cells against the flow's 0.23): with them the choice is not
    # about the flow
    without_smooth_solves(monkeypatch)
    truth = np.concatenate([advected((0.75, -1.0), seed=1), advected((-1.0, 0.5), seed=2)])
    values = np.where(static_gap(truth.shape), truth, np.nan).astype(np.float32)
    fit = dict(mask="block", steps=2, batch_size=4, progress=False, verbose=False, seed=0)
    config = replace(ModelConfig.for_array(values.shape, None, None), nearby=None)
    engine = Engine.fit(values, config, "block", train_config=train_config(steps=2, batch_size=4, seed=0),
                        progress=False, verbose=False, compare=scorer())
    validation = engine.config.validation
    label = validation["first_guess"]
    assert candidate_label(label)[2] and label.endswith(FLOW_LABEL), validation["first_guess_nmse"]
    # the classical fillers see what the network saw: every cell held back in a window hidden around it (seeing
    # them a step away, interpolation in time scored 0.003 and DINEOF 2e-9 here)
    assert min(validation["classical"].values()) > 0.1 and "hidden" in validation["classical_context"]
    assert engine.denoiser.flows and engine.denoiser.nearby_span == NEARBY_SPAN
    in_place = Engine.fit_array(values, nearby=False, **fit)
    assert fill_error(engine, values, truth) < 0.3 * fill_error(in_place, values, truth)
    again = Engine.load(engine.save(tmp_path / "flow.xri"))
    assert again.denoiser.flows
    options = ImputeConfig(K=2, seed=0, batch_size=4, progress=False)
    np.testing.assert_array_equal(again.fill(values, options)[0], engine.fill(values, options)[0])
    with pytest.warns(UserWarning, match="small noise levels"):  # a CPU fit's; multi-step sampling still runs
        draws = engine.sample(values[:1, :, :12], n=1, steps=2, K=1)
    assert draws.shape == (1, 1, 1, 12, *values.shape[-2:]) and np.isfinite(draws).all()


def test_an_archive_trains_along_the_flow_with_the_nearby_steps_a_drawn_context_keeps_as_an_array_does(monkeypatch):
    import dask.array as da

    from xrimpute import samplers, windows
    from xrimpute.masks import Block

    truth = advected((0.75, -1.0), t=40, seed=1)
    values = np.where(static_gap(truth.shape), truth, np.nan).astype(np.float32)
    archive_values = da.from_array(values, chunks=(1, 1, 10, 24, 28))
    options = dict(window=5, mean=np.zeros(1), std=np.ones(1), nearby_span=NEARBY_SPAN, flow=True, seed=0)
    found, flows = {}, []

    def recorded(*args):
        flows.append(original(*args))
        return flows[-1]

    original = windows.flow_velocity
    monkeypatch.setattr(windows, "flow_velocity", recorded)
    monkeypatch.setattr(samplers, "flow_velocity", recorded)
    for name, hide in (("hidden", Block(grid=(3, 3), static=True)), ("all", None)):
        sampler = samplers.ChunkedWindows(archive_values, hide=hide, **options)
        try:  # the same windows: they are drawn before anything is hidden
            found[name] = sampler.sample(8, torch.Generator().manual_seed(0))[2]["nearby"]
        finally:
            sampler.close()
    hidden, everything = (found[name].chunk(4, dim=1) for name in ("hidden", "all"))
    assert 0 < (hidden[1] > 0).sum() < (everything[1] > 0).sum()  # a drawn context leaves some out, as gaps do
    assert len(flows) == 16 and flows[:8] == flows[8:]  # the flow itself from every training observation


def test_a_fit_keeps_its_guess_in_place_where_the_flow_carries_nothing():
    steps = np.arange(30)[:, None, None]
    rough = np.random.default_rng(1).standard_normal((1, 24, 28))
    standing = np.sin(0.2 * steps + 3 * rough)[None, None].repeat(2, 0).astype(np.float32)  # moves nowhere
    values = np.where(static_gap(standing.shape), standing, np.nan).astype(np.float32)
    config = replace(ModelConfig.for_array(values.shape, None, None), nearby=None)
    engine = Engine.fit(values, config, "block", train_config=train_config(steps=1, batch_size=2, seed=0),
                        progress=False, verbose=False, compare=scorer())
    scored = engine.config.validation["first_guess_nmse"]
    assert any(label.endswith(FLOW_LABEL) for label in scored)  # offered: the gaps stay put
    assert not engine.denoiser.flows and not engine.denoiser.nearby_span, scored
    # the fit stopped reading the nearby steps, but the fillers see each window as far as its cells were hidden
    context = engine.config.validation["classical_context"]
    assert f"up to {NEARBY_SPAN} steps either side" in context, context


@pytest.mark.slow
def test_a_model_along_the_flow_imputes_lazily_and_by_reconstruct_as_in_memory(tmp_path, cluster, monkeypatch):
    without_smooth_solves(monkeypatch)  # so that the flow is chosen (see the test above)
    data = archive(t=30, missing=0.0)
    for k, (name, velocity) in enumerate(zip(data.data_vars, [(0.5, 1.0), (-1.0, 0.5)])):
        field = advected(velocity, t=30, h=24, w=24, seed=k)[0, 0]
        field[:26, 6:14, 8:16] = np.nan  # a block that stays put for 26 of the 30 steps
        data[name] = data[name].copy(data=field)
    data.chunk(time=5).to_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, mask="block", steps=2, batch_size=4, progress=False, verbose=False, seed=0)
    assert model.engine.denoiser.flows, model.validation["first_guess_nmse"]
    assert "along the flow" in repr(model)
    model.save(tmp_path / "model.xri")
    imputed_alike_on_every_path(tmp_path, data, model, cluster)

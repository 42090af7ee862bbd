"""Multi-step sampling: the DDIM step, exact Gaussian posteriors, and CtxDiffModel.sample."""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from synthetic import blobs
from xrimpute import diffusion
from xrimpute.diffusion import (VPSchedule, ddim_step, impute_ensemble, log_snr, sample_multistep,
                                sampling_times, time_of_log_snr)
from xrimpute.masks import Pixel

SCHEDULE = VPSchedule()
D = 6  # cells of the Gaussian test vector, laid out as a (1, 1, 1, D) window
FULL = Pixel(context_ratio=1.0)  # context = every cell offered


def ar1_covariance(d: int = D, rho: float = 0.8) -> torch.Tensor:
    i = torch.arange(d, dtype=torch.float64)
    return rho ** (i[:, None] - i[None, :]).abs()


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor):
    """The exact x0-prediction ``E[x0 | x_t on the context]`` for ``x0 ~ N(mean, cov)``.

    Same signature as :class:`xrimpute.nets.Denoiser`: values and mask ``(B, 1, 1, 1, D)``,
    ``t`` ``(B,)``. ``cov`` may be singular (coordinates known exactly).
    """

    def denoise(values, mask, t):
        b = values.shape[0]
        x, m = values.reshape(b, -1).double(), mask.reshape(b, -1)
        keys, which = torch.unique(torch.cat([m.double(), t.double()[:, None]], 1), dim=0, return_inverse=True)
        pred = torch.empty_like(x)
        for k, key in enumerate(keys):  # one linear map per (context, time) in the batch
            rows, cells = which == k, key[:-1].bool()
            alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(key[-1]))
            system = alpha**2 * cov[cells][:, cells] + sigma**2 * torch.eye(int(cells.sum()), dtype=torch.float64)
            gain = alpha * cov[:, cells] @ torch.linalg.inv(system)
            pred[rows] = mean + (x[rows][:, cells] - alpha * mean[cells]) @ gain.T
        return pred.reshape(values.shape).float()

    return denoise


def posterior(cov, known, values):
    """Mean and covariance of ``x | x[known] = values[known]`` (zero on the known block)."""
    u = ~known
    gain = cov[u][:, known] @ torch.linalg.inv(cov[known][:, known])
    mean = values.clone()
    mean[u] = gain @ values[known]
    post = torch.zeros_like(cov)
    post[np.ix_(u.numpy(), u.numpy())] = cov[u][:, u] - gain @ cov[known][:, u]
    return mean, post


def draw(denoiser, known, values, n=4000, steps=250, eta=0.0, seed=0, **options):
    """``n`` sampler members of one window, as ``(n, D)`` float64.

    Many steps: the first-order solver falls short of the spread by about 1 / steps.
    """
    x = torch.where(known, values, 0.0).float().view(1, 1, 1, 1, D)
    generator = torch.Generator().manual_seed(seed)
    out = sample_multistep(denoiser, x, known.view(1, 1, 1, 1, D), SCHEDULE, FULL, members=n, steps=steps,
                           eta=eta, generator=generator, **options)
    return out.view(n, D).double()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case():
    cov = ar1_covariance()
    known = torch.tensor([True, False, False, True, False, False])
    values = torch.tensor([1.2, 0.0, 0.0, -0.6, 0.0, 0.0], dtype=torch.float64)
    mean, post = posterior(cov, known, values)
    return cov, known, values, mean, post


def moments_error(samples, mean, cov, cells):
    """Largest mean error in posterior standard deviations and largest relative variance error."""
    sd = cov.diagonal()[cells].sqrt()
    mean_err = ((samples[:, cells].mean(0) - mean[cells]).abs() / sd).max().item()
    var_err = (samples[:, cells].var(0) / cov.diagonal()[cells] - 1).abs().max().item()
    return mean_err, var_err


def test_log_snr_inverts_and_the_time_grid_runs_from_one_to_zero():
    for t in (1e-3, 0.05, 0.5, 1.0):
        assert time_of_log_snr(SCHEDULE, log_snr(SCHEDULE, t)) == pytest.approx(t, rel=1e-9)
    times = sampling_times(SCHEDULE, 8)
    assert times[0] == 1.0 and times[-1] == 0.0 and times[-2] == pytest.approx(SCHEDULE.t_min)
    lams = [log_snr(SCHEDULE, t) for t in times[:-1]]
    assert np.allclose(np.diff(lams), np.diff(lams)[0])  # uniform in log-SNR
    with pytest.raises(ValueError, match="at least 1"):
        sampling_times(SCHEDULE, 0)


def test_ddim_step_equals_the_noise_form_and_ends_on_the_prediction():
    g = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t, s = 0.6, 0.2
    a_t, s_t = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    a_s, s_s = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(s, dtype=torch.float64)))
    h = math.log(a_s / s_s) - math.log(a_t / s_t)
    eps = (x_t - a_t * x0) / s_t
    noise_form = (a_s / a_t) * x_t - s_s * math.expm1(h) * eps
    torch.testing.assert_close(ddim_step(x_t, x0, t, s, SCHEDULE), noise_form)
    torch.testing.assert_close(ddim_step(x_t, x0, t, 0.0, SCHEDULE), x0)
    # eta = 1 draws from q(x_s | x_t, x0): mean and variance of the forward posterior
    many = ddim_step(x_t[:1, :1].expand(200_000, 1), x0[:1, :1].expand(200_000, 1), t, s, SCHEDULE, eta=1.0,
                     generator=g)
    decay = math.exp(-h)
    mean = (s_s / s_t) * decay * x_t[0, 0] + a_s * (1 - decay**2) * x0[0, 0]
    assert float(many.mean()) == pytest.approx(float(mean), abs=0.005)
    assert float(many.var()) == pytest.approx(s_s**2 * (1 - decay**2), rel=0.02)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampler_draws_the_exact_gaussian_posterior(case, eta):
    """With the exact x0-prediction of the posterior law, the sampler must return that law."""
    cov, known, values, mean, post = case
    samples = draw(gaussian_denoiser(mean, post), known, values, eta=eta)
    assert torch.equal(samples[:, known], values[known].float().double().expand(len(samples), -1))
    mean_err, var_err = moments_error(samples, mean, post, ~known)
    assert mean_err < 0.1 and var_err < 0.1, (mean_err, var_err)
    u = (~known).numpy()
    corr = np.corrcoef(samples[:, u].T.numpy())
    sd = post.diagonal()[~known].sqrt()
    true_corr = (post[np.ix_(u, u)] / (sd[:, None] * sd[None, :])).numpy()
    assert np.abs(corr - true_corr).max() < 0.06


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampler_draws_the_prior_when_nothing_is_observed(case, eta):
    cov = case[0]
    none = torch.zeros(D, dtype=torch.bool)
    samples = draw(gaussian_denoiser(torch.zeros(D, dtype=torch.float64), cov), none, torch.zeros(D), eta=eta)
    mean_err, var_err = moments_error(samples, torch.zeros(D, dtype=torch.float64), cov, ~none)
    assert mean_err < 0.1 and var_err < 0.1, (mean_err, var_err)
    assert np.abs(np.cov(samples.T.numpy()) - cov.numpy()).max() < 0.1


def buggy_step(x_t, x0_hat, t, s, schedule, eta=0.0, generator=None):
    """The known wrong step: ``sigma_t e^h eps`` in place of ``sigma_s (e^h - 1) eps``."""
    if s <= 0:
        return x0_hat
    a_t, s_t = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    a_s, s_s = (float(v) for v in schedule.alpha_sigma(torch.tensor(s, dtype=torch.float64)))
    h = math.log(a_s / s_s) - math.log(a_t / s_t)
    return (a_s / a_t) * x_t - s_t * math.exp(h) * (x_t - a_t * x0_hat) / s_t


def test_the_buggy_step_fails_the_posterior_test(case, monkeypatch):
    cov, known, values, mean, post = case
    monkeypatch.setattr(diffusion, "ddim_step", buggy_step)
    samples = draw(gaussian_denoiser(mean, post), known, values)
    _, var_err = moments_error(samples, mean, post, ~known)
    assert var_err > 0.5, var_err  # the spread collapses far outside the tolerance of 0.1


def test_imputation_expectation_steers_a_prior_only_model_to_the_posterior_mean(case):
    """A model of the prior alone, conditioned RePaint-style, is biased (noisy observations
    condition weakly at high noise); blending in the single-step ensemble removes most of it."""
    cov, known, values, mean, post = case
    prior = gaussian_denoiser(torch.zeros(D, dtype=torch.float64), cov)
    plain = draw(prior, known, values, n=2000, eta=1.0, handover=None)
    blended = draw(prior, known, values, n=2000, eta=1.0, imputation_spec=FULL, K=1, handover=0.0)
    plain_err, _ = moments_error(plain, mean, post, ~known)
    blended_err, _ = moments_error(blended, mean, post, ~known)
    assert blended_err < 0.5 * plain_err and blended_err < 0.3, (plain_err, blended_err)
    x = torch.where(known, values, 0.0).float().view(1, 1, 1, 1, D)
    anchor, _ = impute_ensemble(prior, x, known.view(1, 1, 1, 1, D), FULL, K=1,
                                generator=torch.Generator().manual_seed(0))
    assert torch.allclose(anchor.view(D).double()[~known], mean[~known], atol=0.02)  # the posterior mean


# -- CtxDiffModel.sample ----------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    truth = blobs(n=3, t=6, size=16, seed=0)
    observed = truth.where(np.random.default_rng(1).random(truth.shape) < 0.3)
    model = observed.ctxdiff.fit(mask="pixel", steps=30, batch_size=8, progress=False, verbose=False)
    return observed, model


def test_sample_returns_members_that_keep_observations_and_spread_in_gaps(fitted):
    observed, model = fitted
    members = observed.ctxdiff.sample(n=4, model=model, steps=8, seed=1, progress=False)
    assert members.dims == ("member",) + observed.dims and members.sizes["member"] == 4
    assert list(members["member"].values) == [0, 1, 2, 3]
    assert int(members.isnull().sum()) == 0
    seen = observed.notnull()
    for k in range(4):
        xr.testing.assert_identical(members.isel(member=k, drop=True).where(seen), observed)
    spread = members.std("member")
    assert float(spread.where(seen).max()) == 0
    assert float(spread.where(~seen).min()) > 0  # every gap differs between members


def test_sample_on_a_dataset_is_reproducible_and_refuses_a_taken_dim_name(fitted):
    observed, model = fitted
    ds = observed.isel(sample=[0]).to_dataset(name="u")
    ds["note"] = ("x", np.arange(ds.sizes["x"], dtype=float))
    a = model.sample(ds, n=2, steps=4, seed=3, progress=False)
    b = model.sample(ds, n=2, steps=4, seed=3, progress=False)
    xr.testing.assert_identical(a, b)
    assert a["u"].dims[0] == "member" and a["note"].dims == ("x",)
    with pytest.raises(ValueError, match="already has a dim 'sample'"):
        model.sample(observed, n=2, dim="sample")

"""The diffusion maths: VP noise schedule, the context-query loss, and imputation.

All tensors are ``(B, C, T, H, W)``; masks are boolean (True = observed / in
the context). ``denoiser(values, mask, t)`` is any callable returning the
predicted clean field ``x0`` (data matching), e.g. :class:`xrimpute.nets.Denoiser`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ArgumentError
from .masks import MaskSpec


LOW_NOISE_T = 0.02  # sigma about 0.07 of the normalised data: what imputation at t = 1e-3 sees, with a margin


@dataclass(frozen=True)
class VPSchedule:
    """Variance-preserving schedule with a linear beta(t) (the paper's code's settings)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def sample_t(self, n: int, generator=None, device=None, low_noise: float = 0.0) -> torch.Tensor:
        """``n`` times, uniform on ``[t_min, 1]``; a share ``low_noise`` of them (the first ones) uniform on
        ``[t_min, LOW_NOISE_T]``, the noise levels at which single-step imputation runs."""
        u = torch.rand(n, generator=generator, device=device)
        top = torch.ones(n, device=device)
        top[: round(low_noise * n)] = LOW_NOISE_T
        return self.t_min + (top - self.t_min) * u


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1, 1)


def noised(x: torch.Tensor, t: torch.Tensor, schedule: VPSchedule, generator=None) -> torch.Tensor:
    """``alpha_t x + sigma_t eps`` (the forward process)."""
    alpha, sigma = schedule.alpha_sigma(t)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _per_sample(alpha) * x + _per_sample(sigma) * eps


def context_query_loss(
    denoiser,
    x: torch.Tensor,
    observed: torch.Tensor,
    spec: MaskSpec,
    schedule: VPSchedule,
    generator: torch.Generator | None = None,
    low_noise: float = 0.0,
) -> torch.Tensor:
    """Mean squared error of the x0-prediction on query cells, seeing only the context.

    ``x`` holds observed values (anything at unobserved cells, e.g. 0). The
    noised observations are masked to a context drawn by ``spec`` inside
    ``observed``; the loss is taken on ``spec.query`` cells. A share
    ``low_noise`` of the windows is noised only slightly (``t <= LOW_NOISE_T``):
    single-step imputation only ever asks the network at ``t = 1e-3``, so on a
    small budget those steps are the useful ones; the rest keep the whole range
    that multi-step sampling needs. The optimum at every ``t`` is unchanged.
    """
    t = schedule.sample_t(x.shape[0], generator, x.device, low_noise)
    x_t = noised(x, t, schedule, generator)
    context = spec.context(observed, generator)
    query = spec.query(observed, context)
    pred = denoiser(x_t * context, context, t)
    err = (pred.float() - x) ** 2 * query
    return err.sum() / query.sum().clamp(min=1)


@torch.no_grad()
def impute_ensemble(
    denoiser,
    x: torch.Tensor,
    observed: torch.Tensor,
    spec: MaskSpec,
    K: int = 10,
    delta: float = 1e-3,
    max_batch: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    context: str = "sampled",
    **inputs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-step ensemble imputation: mean and spread over ``K`` context masks.

    The network is asked at ``t = delta``, its lowest noise level, with the
    observations as they are: the paper noises them to ``delta`` first, about
    1 % of a standard deviation on every context value, which a first guess
    through the context passes on to the gaps (``docs/method.md``). ``K``
    contexts drawn inside ``observed`` go through the denoiser as one batch
    of ``K * B`` (split into pieces of at most ``max_batch`` only when memory demands);
    observed cells are put back exactly and get zero spread. ``generator`` may
    be a list with one generator per window: then window ``b``'s contexts
    come from ``generator[b]`` alone, so its result does not depend on
    the windows batched with it. ``inputs`` are the denoiser's per-window
    keyword inputs ``(B, ...)``, e.g. ``static`` fields for tiles or ``history``
    (None: not given).

    ``context="observed"``: the first member's context is every observed cell
    and the estimate is that member alone, so no observation is left out; the
    spread is the root-mean-square difference from it of the other ``K - 1``
    members, whose contexts are sampled (zero for ``K=1``). Which of the two estimates is better depends on the data; a fit
    scores both on its held-back cells.
    """
    if context not in ("sampled", "observed"):
        raise ArgumentError(f"context must be 'sampled' or 'observed', not {context!r}")
    b = x.shape[0]
    t = torch.full((b,), delta, device=x.device)
    if isinstance(generator, (list, tuple)):
        contexts = torch.stack([spec.context(observed[j : j + 1].expand(K, *x.shape[1:]), g)
                                for j, g in enumerate(generator)], dim=1).flatten(0, 1)  # (K * B, ...), k major
    else:
        contexts = spec.context(observed.repeat(K, 1, 1, 1, 1), generator)
    if context == "observed":  # member 0 sees every observation; the others still give the spread
        contexts = torch.cat([observed.to(contexts.dtype), contexts[b:]])
    xs, t_k = x.repeat(K, 1, 1, 1, 1), t.repeat(K)
    preds = _predict(denoiser, xs * contexts, contexts, t_k, max_batch, _repeated(inputs, K)).view(K, *x.shape)
    if context == "observed":  # the spread around the estimate of the members that leave observations out
        estimate = preds[0]
        spread = (preds[1:] - estimate).square().mean(0).sqrt() if K > 1 else torch.zeros_like(x)
    else:
        estimate, spread = preds.mean(0), preds.std(0, unbiased=False) if K > 1 else torch.zeros_like(x)
    mean = torch.where(observed, x, estimate)
    std = torch.where(observed, 0.0, spread)
    return mean, std


# -- multi-step sampling (paper Appendix E) -------------------------------------


def log_snr(schedule: VPSchedule, t: float) -> float:
    """``lambda(t) = log(alpha_t / sigma_t)``, decreasing in ``t``."""
    log_alpha = float(schedule.log_alpha(torch.tensor(t, dtype=torch.float64)))
    return log_alpha - 0.5 * float(torch.log(-torch.expm1(torch.tensor(2 * log_alpha, dtype=torch.float64))))


def time_of_log_snr(schedule: VPSchedule, lam: float) -> float:
    """The time ``t`` at which ``log(alpha_t / sigma_t) = lam`` (inverse of :func:`log_snr`)."""
    # alpha^2 = sigmoid(2 lam); solve the quadratic log_alpha(t) = log(alpha)
    log_alpha = -0.5 * float(torch.nn.functional.softplus(torch.tensor(-2.0 * lam, dtype=torch.float64)))
    spread = schedule.beta_max - schedule.beta_min
    return (-0.5 * schedule.beta_min + (0.25 * schedule.beta_min**2 - spread * log_alpha) ** 0.5) / (0.5 * spread)


def sampling_times(schedule: VPSchedule, steps: int, t_end: float | None = None) -> list[float]:
    """``steps + 1`` times from 1 down to 0: ``steps`` uniform in log-SNR from ``t = 1`` to ``t_end``
    (default ``schedule.t_min``), then 0, where the last step returns the x0-prediction."""
    if steps < 1:
        raise ArgumentError(f"steps must be at least 1, got {steps}")
    t_end = schedule.t_min if t_end is None else t_end
    first, last = log_snr(schedule, 1.0), log_snr(schedule, t_end)
    lams = torch.linspace(first, last, steps, dtype=torch.float64).tolist() if steps > 1 else [first]
    return [1.0] + [time_of_log_snr(schedule, lam) for lam in lams[1:]] + [0.0]


def _alpha_sigma(schedule: VPSchedule, t: float) -> tuple[float, float]:
    if t <= 0:
        return 1.0, 0.0
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha), float(sigma)


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t: float, s: float, schedule: VPSchedule,
              eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM / first-order DPM-Solver step from time ``t`` to the less noisy time ``s < t``.

    With ``lambda = log(alpha / sigma)`` and ``h = lambda_s - lambda_t > 0``, the
    deterministic step (``eta = 0``) for an x0-prediction is

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) x0_hat,

    the same as the noise form ``x_s = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) eps_hat``
    with ``eps_hat = (x_t - alpha_t x0_hat) / sigma_t``. ``eta > 0`` replaces part of
    the predicted noise by fresh noise of standard deviation
    ``eta sigma_s sqrt(1 - e^{-2h})``; ``eta = 1`` is the ancestral step (a draw
    from the forward posterior ``q(x_s | x_t, x0_hat)``). ``s = 0`` returns ``x0_hat``.
    """
    alpha_t, sigma_t = _alpha_sigma(schedule, t)
    alpha_s, sigma_s = _alpha_sigma(schedule, s)
    decay = sigma_s * alpha_t / (alpha_s * sigma_t)  # e^{-h}, 0 at s = 0
    fresh = eta * sigma_s * max(0.0, 1.0 - decay**2) ** 0.5
    kept = (sigma_s**2 - fresh**2) ** 0.5  # noise carried over from x_t
    x_s = (kept / sigma_t) * x_t + (alpha_s - kept * alpha_t / sigma_t) * x0_hat
    if fresh > 0:
        x_s = x_s + fresh * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    return x_s


def blend_weight(lam: float, handover: float | None = -1.0, width: float = 1.0) -> float:
    """Weight of the diffusion expectation at log-SNR ``lam``; the imputation expectation gets the rest.

    ``sigmoid((lam - handover) / width)``: near 0 at the start of the trajectory
    (``t = 1``, ``lam`` about -5), where the noisy state says little and the
    single-step ensemble carries the observations, and near 1 at its end
    (``lam`` about +4.6 at ``t = 1e-3``), where the denoised state gives the
    detail and the diversity. The two weigh equally at ``lam = handover``
    (``alpha = sigma`` at 0). ``handover=None`` uses the diffusion expectation
    alone (plain RePaint-style conditioning).

    The handover trades bias for spread. Re-noised observations condition the
    state weakly at high noise, so plain conditioning leaves the members off the
    posterior mean and too spread; the single-step ensemble pulls them to it
    and narrows them. With exact x0-predictions of a Gaussian prior
    (``tests/test_sampler.py``, AR(1) correlation 0.8, a third observed) the
    members' mean is off by up to 0.6 posterior standard deviations with 1.3-1.9x
    the posterior variance for ``None``, 0.3 with 0.6-0.9x for the default -1,
    and 0.15 with 0.3-0.4x for 0.
    """
    if handover is None:
        return 1.0
    return float(torch.sigmoid(torch.tensor((lam - handover) / width)))


def _repeated(inputs: dict, times: int) -> dict:
    """Per-window inputs (None: not given) for a batch of ``times`` repeats of the windows, repeat-major."""
    return {name: v.repeat(times, *[1] * (v.dim() - 1)) for name, v in inputs.items() if v is not None}


def _predict(denoiser, values, mask, t, max_batch, inputs: dict | None = None):
    """The denoiser on a batch in pieces of at most ``max_batch``; ``inputs`` are cut alike."""
    step, inputs = max_batch or values.shape[0], inputs or {}
    return torch.cat([denoiser(values[i : i + step], mask[i : i + step], t[i : i + step],
                               **{name: v[i : i + step] for name, v in inputs.items()}).float()
                      for i in range(0, values.shape[0], step)])


@torch.no_grad()
def sample_multistep(
    denoiser,
    x: torch.Tensor,
    observed: torch.Tensor,
    schedule: VPSchedule,
    diffusion_spec: MaskSpec,
    *,
    imputation_spec: MaskSpec | None = None,
    K: int = 10,
    members: int = 1,
    steps: int = 50,
    eta: float = 0.0,
    handover: float | None = -1.0,
    width: float = 1.0,
    domain: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    **inputs: torch.Tensor | None,
) -> torch.Tensor:
    """Draw ``members`` imputations of each window by a reverse diffusion (paper Appendix E).

    From pure noise at ``t = 1`` down to 0 over :func:`sampling_times`, each step
    (:func:`ddim_step`) uses the x0-estimate

        x0_hat = w * diffusion expectation + (1 - w) * imputation expectation,

    * diffusion expectation: the denoiser on the current state seen through one
      context drawn afresh by ``diffusion_spec`` inside ``domain`` (default: every
      cell), i.e. an input that looks like a training input (the state is
      complete, so ``diffusion_spec`` should carry the training input fraction);
    * imputation expectation: :func:`impute_ensemble` with ``imputation_spec``
      and ``K`` contexts, computed once per window and shared by its members;
      without ``imputation_spec`` (or with ``handover=None``) the diffusion
      expectation is used alone;
    * ``w = blend_weight(lambda_t, handover, width)``: from the imputation
      expectation at high noise to the diffusion expectation at low noise.

    Before every step the observed cells of the state are re-noised from the
    observations to the current time (RePaint-style), so only the gaps follow
    the model; the result keeps the observations exactly. ``eta`` adds fresh
    noise at every step (0: deterministic given the start; 1: ancestral). The
    first-order steps fall short of the spread by a share of about ``5 / steps``
    (``eta = 0``) to ``9 / steps`` (``eta = 1``) of the variance on a Gaussian
    with exact x0-predictions: 50 steps give about 90 %.

    ``inputs``: the denoiser's per-window keyword inputs, as for :func:`impute_ensemble`.

    Returns ``(members, B, C, T, H, W)``.
    """
    b = x.shape[0]
    anchor = None
    if imputation_spec is not None and handover is not None:
        anchor, _ = impute_ensemble(denoiser, x, observed, imputation_spec, K=K,
                                    max_batch=max_batch, generator=generator, **inputs)
        anchor = anchor.float().repeat(members, 1, 1, 1, 1)
    xs = x.float().repeat(members, 1, 1, 1, 1)
    seen = observed.repeat(members, 1, 1, 1, 1)
    inside = (torch.ones_like(seen) if domain is None else domain.expand_as(seen)).bool()
    times = sampling_times(schedule, steps)
    state = torch.randn(xs.shape, generator=generator, device=xs.device) * _alpha_sigma(schedule, times[0])[1]
    for t, s in zip(times[:-1], times[1:]):
        alpha, sigma = _alpha_sigma(schedule, t)
        renoised = alpha * xs + sigma * torch.randn(xs.shape, generator=generator, device=xs.device)
        state = torch.where(seen, renoised, state)
        context = diffusion_spec.context(inside, generator)
        t_batch = torch.full((state.shape[0],), t, device=xs.device)
        x0_hat = _predict(denoiser, state * context, context, t_batch, max_batch, _repeated(inputs, members))
        if anchor is not None:
            w = blend_weight(log_snr(schedule, t), handover, width)
            x0_hat = w * x0_hat + (1 - w) * anchor
        state = ddim_step(state, x0_hat, t, s, schedule, eta, generator)
    return torch.where(seen, xs, state).view(members, b, *x.shape[1:])

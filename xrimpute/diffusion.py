"""The diffusion maths: VP noise schedule, the context-query loss, and imputation.

All tensors are ``(B, C, T, H, W)``; masks are boolean (True = observed / in
the context). ``denoiser(values, mask, t)`` is any callable returning the
predicted clean field ``x0`` (data matching), e.g. :class:`xrimpute.nets.Denoiser`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .masks import MaskSpec


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

    def sample_t(self, n: int, generator=None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (1 - self.t_min) * u


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
) -> torch.Tensor:
    """Mean squared error of the x0-prediction on query cells, seeing only the context.

    ``x`` holds observed values (anything at unobserved cells, e.g. 0). The
    noised observations are masked to a context drawn by ``spec`` inside
    ``observed``; the loss is taken on ``spec.query`` cells.
    """
    t = schedule.sample_t(x.shape[0], generator, x.device)
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
    schedule: VPSchedule,
    K: int = 10,
    delta: float = 1e-3,
    max_batch: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-step ensemble imputation: mean and spread over ``K`` context masks.

    The observations are noised once to ``t = delta``; ``K`` contexts drawn
    inside ``observed`` go through the denoiser as one batch of ``K * B``
    (split into pieces of at most ``max_batch`` only when memory demands);
    observed cells are put back exactly and get zero spread.
    """
    b = x.shape[0]
    t = torch.full((b,), delta, device=x.device)
    x_delta = noised(x, t, schedule, generator)
    xs = x_delta.repeat(K, 1, 1, 1, 1)
    observed_k = observed.repeat(K, 1, 1, 1, 1)
    contexts = spec.context(observed_k, generator)
    t_k = t.repeat(K)
    step = max_batch or xs.shape[0]
    preds = torch.cat(
        [
            denoiser(xs[i : i + step] * contexts[i : i + step], contexts[i : i + step], t_k[i : i + step]).float()
            for i in range(0, xs.shape[0], step)
        ]
    ).view(K, *x.shape)
    mean = torch.where(observed, x, preds.mean(0))
    std = torch.where(observed, 0.0, preds.std(0, unbiased=False) if K > 1 else torch.zeros_like(x))
    return mean, std


"""Windows of consecutive time steps: training batches and whole-series imputation.

Arrays are ``(N, C, T, H, W)``: N independent samples (trajectories) of T
time steps. A window is ``window`` consecutive steps of one sample.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .diffusion import VPSchedule, impute_ensemble
from .masks import MaskSpec


def window_starts(length: int, window: int, stride: int = 1) -> list[int]:
    """Start indices covering ``length`` steps; the last window ends at the last step."""
    if length < window:
        raise ValueError(f"the series has {length} time steps, fewer than the window of {window}; use a smaller window")
    starts = list(range(0, length - window + 1, max(1, stride)))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


class ArrayWindows:
    """Random training windows from an in-memory array.

    ``values`` are normalised with 0 at unobserved cells; ``observed`` is boolean.
    """

    def __init__(self, values: np.ndarray, observed: np.ndarray, window: int):
        self.values = torch.as_tensor(values)
        self.observed = torch.as_tensor(observed)
        self.window = window
        n, _, t = values.shape[:3]
        self.index = [(i, s) for i in range(n) for s in window_starts(t, window)]

    def __len__(self) -> int:
        return len(self.index)

    def get(self, picks) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.index[int(p)] for p in picks]
        x = torch.stack([self.values[i, :, s : s + self.window] for i, s in rows])
        m = torch.stack([self.observed[i, :, s : s + self.window] for i, s in rows])
        return x, m

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(torch.randint(0, len(self.index), (batch_size,), generator=generator))


@torch.no_grad()
def impute_series(
    denoiser,
    values: np.ndarray,
    observed: np.ndarray,
    spec: MaskSpec,
    schedule: VPSchedule,
    window: int,
    K: int = 10,
    stride: int = 1,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    autocast: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Impute every window of every sample and blend overlapping windows.

    Each step's estimate is the mean over the windows that contain it; the
    spread combines the ensemble spread within windows and the disagreement
    between windows (law of total variance). Returns ``(mean, std)`` arrays
    shaped like ``values``; observed cells keep their values exactly.
    """
    n, c, t, h, w = values.shape
    starts = window_starts(t, window, stride)
    jobs = [(i, s) for i in range(n) for s in starts]
    total = np.zeros((n, c, t, h, w), np.float64)
    total_sq = np.zeros_like(total)
    count = np.zeros((1, 1, t, 1, 1), np.float64)
    for s in starts:
        count[0, 0, s : s + window] += 1
    generator = torch.Generator(device=device).manual_seed(seed)
    for first in tqdm(range(0, len(jobs), batch_size), desc="imputing", disable=not progress, leave=False):
        batch = jobs[first : first + batch_size]
        x = torch.stack([torch.as_tensor(values[i, :, s : s + window]) for i, s in batch]).to(device)
        m = torch.stack([torch.as_tensor(observed[i, :, s : s + window]) for i, s in batch]).to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            mean, std = impute_ensemble(denoiser, x, m, spec, schedule, K=K, generator=generator)
        mean, std = mean.float().cpu().numpy(), std.float().cpu().numpy()
        for (i, s), mu, sd in zip(batch, mean, std):
            total[i, :, s : s + window] += mu
            total_sq[i, :, s : s + window] += sd**2 + mu**2
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    mean = np.where(observed, values, mean)
    return mean.astype(np.float32), np.where(observed, 0.0, std).astype(np.float32)

"""The training loop: AdamW, EMA, clipping, bf16 on CUDA, validation, atomic checkpoints, resume."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .diffusion import VPSchedule, context_query_loss
from .masks import MaskSpec


@dataclass
class TrainConfig:
    """Optimisation settings. ``max_time`` (seconds) stops early, whatever ``steps`` says."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    max_time: float | None = None
    log_every: int = 25
    val_every: int = 500
    checkpoint_every: int = 250
    seed: int = 0
    bf16: bool = True


@dataclass
class History:
    """What happened during training, kept with the model."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class CheckpointMismatch(ValueError):
    """A checkpoint belongs to another model (variables, window, network)."""


def train(
    denoiser: torch.nn.Module,
    windows,
    spec: MaskSpec,
    config: TrainConfig,
    schedule: VPSchedule = VPSchedule(),
    device: torch.device = torch.device("cpu"),
    validate=None,
    checkpoint: str | os.PathLike | None = None,
    fingerprint: dict | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, History]:
    """Train ``denoiser`` with the context-query loss on windows drawn from ``windows``.

    ``windows.sample(batch, generator) -> (x, observed)``. ``validate(ema_net)``
    returns a dict of metrics, run every ``config.val_every`` steps and at the
    end. With ``checkpoint``, the state is written atomically every
    ``config.checkpoint_every`` steps and training resumes from it if it exists
    (``fingerprint`` must match). Returns the EMA network and the history.
    """
    denoiser = denoiser.to(device)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    torch.manual_seed(config.seed)
    picks = torch.Generator().manual_seed(config.seed)
    noise = torch.Generator(device=device).manual_seed(config.seed + 1)
    history, start = History(), 0

    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["fingerprint"] != (fingerprint or {}):
            raise CheckpointMismatch(
                f"checkpoint {str(checkpoint)!r} was written for {state['fingerprint']}, "
                f"not for {fingerprint}; pass another checkpoint path or delete it to start afresh"
            )
        denoiser.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        picks.set_state(state["picks"])
        noise.set_state(state["noise"].to(noise.get_state().device))
        history = History(**state["history"])
        start = int(state["step"])

    def save(step):
        atomic_save(
            dict(net=denoiser.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                 picks=picks.get_state(), noise=noise.get_state(), history=history.to_dict(),
                 step=step, fingerprint=fingerprint or {}),
            checkpoint,
        )

    autocast = config.bf16 and device.type == "cuda"
    t0 = time.perf_counter() - history.seconds
    running = torch.zeros((), device=device)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="training",
               disable=not progress, leave=False)
    step = start
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
        x, observed = windows.sample(config.batch_size, picks)
        x, observed = x.to(device, non_blocking=True), observed.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = context_query_loss(denoiser, x, observed, spec, schedule, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), config.grad_clip)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), denoiser.parameters()):
                e.lerp_(p.detach(), 1 - decay)
            for e, b in zip(ema.buffers(), denoiser.buffers()):
                e.copy_(b)
        running += loss.detach()
        done = step + 1
        stopping = config.max_time is not None and time.perf_counter() - t0 > config.max_time
        if done % config.log_every == 0 or done == config.steps or stopping:  # one host sync per interval
            since = done - (history.step[-1] if history.step else start)
            history.step.append(done)
            history.loss.append(float(running) / max(1, since))
            running.zero_()
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
        if validate is not None and done % config.val_every == 0 and done < config.steps:
            history.val_step.append(done)
            history.val.append(validate(ema))
        if checkpoint is not None and done % config.checkpoint_every == 0:
            history.seconds = time.perf_counter() - t0
            save(done)
        if stopping:
            break
    bar.close()
    history.seconds = time.perf_counter() - t0
    if validate is not None:
        history.val_step.append(step + 1)
        history.val.append(validate(ema))
    if checkpoint is not None:
        save(step + 1)
    return ema, history

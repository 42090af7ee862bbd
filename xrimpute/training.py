"""The training loop: AdamW, EMA, clipping, bf16 on CUDA, validation, atomic checkpoints, resume, DDP.

Under ``torchrun`` (``torch.distributed`` initialised before :func:`train`)
the network is wrapped in DistributedDataParallel: every rank draws its own
windows, gradients are averaged, so weights and EMA stay identical on all
ranks, and rank 0 alone writes checkpoints, validates and shows progress.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .diffusion import VPSchedule, context_query_loss
from .atomic import atomic_write
from .errors import NonFiniteLossError, XrimputeError
from .masks import MaskSpec
from .payload import read as read_state


@dataclass
class TrainConfig:
    """Optimisation settings. ``max_time`` (seconds) stops early, whatever ``steps`` says (of
    :meth:`xrimpute.engine.Engine.fit`, the whole fit's budget, of which training gets what the rest leaves).

    The learning rate follows the run's progress, the larger of the share of
    ``steps`` done and the share of ``max_time`` spent: a linear warm-up over
    the first ``warmup`` of the run, then a cosine decay to ``final_lr`` times
    ``lr`` at its end. So a time budget gets a whole schedule whatever number of
    steps it allows. ``low_noise`` is the share of windows trained at the
    small noise levels that single-step imputation uses (see
    :func:`~xrimpute.diffusion.context_query_loss`). ``steps`` and
    ``low_noise`` left at None are resolved per device by :func:`with_budget`.
    ``patience``: the scorings on the held-back cells in a row that must all
    score :data:`KEEP_MARGIN` above the best before training goes back to the
    best network at a lower learning rate (:func:`overfitting`); 0 never does.
    """

    steps: int | None = 2000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: float = 0.05
    final_lr: float = 0.1
    low_noise: float | None = None
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    max_time: float | None = None
    log_every: int = 25
    val_every: int = 100  # a small cube's network can pass its best within a few hundred steps
    patience: int = 5
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
    stopped: str = ""  # why training ended: the steps were done, the time budget, or a worsening held-back score
    kept: int | None = None  # the step whose EMA network training returned, where not the last: the best validated
    restarts: list[int] = field(default_factory=list)  # the steps where training went back to the best network

    def to_dict(self) -> dict:
        return asdict(self)


def distributed_rank() -> tuple[int, int]:
    """``(rank, world size)`` when ``torch.distributed`` is initialised, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the GPU if there is one (under torchrun the one of ``$LOCAL_RANK``), else the CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if distributed_rank()[1] > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda")
    return torch.device(device)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: a crash never leaves half a file."""
    with atomic_write(path) as partial:
        torch.save(obj, partial)


class CheckpointMismatch(XrimputeError, ValueError):
    """A checkpoint belongs to another model (variables, window, network)."""


@contextlib.contextmanager
def seeded(seed: int, device: torch.device = torch.device("cpu")):
    """Inside: the global torch stream (initial weights, dropout) seeded with ``seed``. Afterwards: the caller's
    own stream, untouched."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


log = logging.getLogger("xrimpute")

CPU_BUDGET = 300.0  # seconds: a fit on the CPU that names neither steps nor max_time trains this long
GPU_STEPS = 2000  # the steps of a fit on a GPU that names neither
STEP_CAP = 10**7  # "until the time budget ends"


def with_budget(config: TrainConfig, device: torch.device) -> TrainConfig:
    """``config`` with ``steps=None`` and ``low_noise=None`` resolved for ``device``, and bfloat16 only where it
    is used (a GPU).

    ``low_noise`` None: on the CPU every window trains at the noise levels of
    single-step imputation (1.0), which at CPU budgets is worth several times
    the steps; on a GPU, the whole range of the paper (0.0).

    Without ``steps``: on the CPU the fit runs for ``max_time`` (default
    :data:`CPU_BUDGET` seconds); on a GPU for :data:`GPU_STEPS` steps, or until
    ``max_time``. A time budget depends on the machine's speed and load, so only
    an explicit ``steps`` without ``max_time`` trains reproducibly.
    """
    config = replace(config, bf16=config.bf16 and device.type == "cuda")
    if config.low_noise is None:  # a CPU budget is spent where single-step imputation asks the network
        config = replace(config, low_noise=1.0 if device.type == "cpu" else 0.0)
    if config.steps is not None:
        return config
    if device.type == "cuda" and config.max_time is None:
        return replace(config, steps=GPU_STEPS)
    if config.max_time is None:
        log.info("a time budget of %.0f s, the default on the CPU; pass max_time= for another budget, or steps= for "
                 "an exact, reproducible run", CPU_BUDGET)
    return replace(config, steps=STEP_CAP, max_time=CPU_BUDGET if config.max_time is None else config.max_time)


def run_progress(config: TrainConfig, step: int, seconds: float) -> float:
    """How far through its run training is, from 0 to 1: by steps, or by the time budget if that ends first."""
    done = step / max(1, config.steps)
    if config.max_time is not None:
        done = max(done, seconds / config.max_time)
    return min(1.0, done)


def learning_rate_factor(config: TrainConfig, step: int, seconds: float) -> float:
    """The multiple of ``config.lr`` at ``step``: linear warm-up, then cosine decay to ``config.final_lr``."""
    progress = run_progress(config, step, seconds)
    if config.warmup > 0 and progress < config.warmup:
        return max(progress / config.warmup, 1.0 / max(1, config.steps))
    tail = (progress - config.warmup) / max(1e-12, 1 - config.warmup)
    return config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * tail))


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
    loss_fn=None,
) -> tuple[torch.nn.Module, History]:
    """Train ``denoiser`` with the context-query loss on windows drawn from ``windows``.

    ``windows.sample(batch, generator) -> (x, observed)``, or ``(x, observed,
    inputs)`` with the denoiser's per-window keyword inputs (e.g. ``static``
    fields for tiles, the windows' ``history``). Another objective goes in
    ``loss_fn(denoiser, x, observed, spec, schedule, generator) -> scalar loss``
    (default: :func:`~xrimpute.diffusion.context_query_loss`). ``validate(ema_net)``
    returns a dict of metrics, run every ``config.val_every`` steps and at the
    end; where they hold ``nmse``, the EMA network of the lowest is returned
    where it scored :data:`KEEP_MARGIN` below the last (``History.kept`` names
    its step), else the last; where the score keeps worsening
    (:func:`overfitting`), training goes back to the best network at a lower
    learning rate (``History.restarts``), and after :data:`MAX_RESTARTS`
    returns it stops. With ``checkpoint``, the state is written
    atomically every ``config.checkpoint_every`` steps and training resumes
    from it if it exists (``fingerprint`` must match). Returns the EMA network
    and the history (under DDP, rank 0's history is the one with validation
    scores, and rank 0's network the one kept).
    """
    device = torch.device(device)
    config = with_budget(config, device)  # a no-op on a config that Engine.fit resolved already
    loss_fn = loss_fn or functools.partial(context_query_loss, low_noise=config.low_noise)
    with seeded(config.seed, device):  # dropout draws from the global stream
        return _train(denoiser, windows, spec, config, schedule, device, validate, checkpoint, fingerprint, progress,
                      loss_fn)


KEEP_MARGIN = 0.05
"""How much better than the last an earlier network must score on the held-back cells to be kept instead: the score
of a few windows moves by a per cent or two between scorings where the network no longer improves, while a network
that learned its windows by heart scored 17-40 % worse at the end than at its best (``benchmarks/RESULTS.md``)."""


RESTART_LR = 0.5
"""The learning rate's factor at each return to the best network."""
MAX_RESTARTS = 2
"""Returns to the best network before training stops the next time the held-back score worsens."""


def overfitting(history: History, best: tuple | None, patience: int) -> bool:
    """Whether the last ``patience`` scorings since the best one (and since the last return to it) all scored
    :data:`KEEP_MARGIN` above it: the network is learning its training windows by heart."""
    if not patience or best is None or len(history.val) < patience:
        return False
    since = max(best[1], history.restarts[-1] if history.restarts else 0)
    recent = list(zip(history.val_step, history.val))[-patience:]
    return all(step > since and (record.get("nmse") or 0.0) > best[0] / (1 - KEEP_MARGIN) for step, record in recent)


def _validated(validate, ema, step: int, history: History, best: tuple | None) -> tuple | None:
    """Scores ``ema`` at ``step`` into ``history``; returns ``best`` or, where it scored better, ``ema``'s own
    ``(score, step, state)``; None where the validation gives no ``nmse``."""
    history.val_step.append(step)
    history.val.append(validate(ema))
    score = history.val[-1].get("nmse")
    if score is None:
        return None
    if best is None or score < best[0]:
        return score, step, {name: value.detach().clone() for name, value in ema.state_dict().items()}
    return best


def _train(denoiser, windows, spec, config, schedule, device, validate, checkpoint, fingerprint, progress, loss_fn):
    rank, world = distributed_rank()
    denoiser = denoiser.to(device)
    model = denoiser
    if world > 1:  # wrapping broadcasts rank 0's weights, so the EMA copy below is the same everywhere
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(denoiser, device_ids=ids)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    # listed once rather than walked from the modules at every step
    params, averaged = list(denoiser.parameters()), list(zip(ema.parameters(), denoiser.parameters()))
    buffers = list(zip(ema.buffers(), denoiser.buffers()))
    fused = device.type in ("cuda", "cpu")  # one kernel over all parameters: a few per cent of a step on the CPU
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)

    def streams(seed):  # random windows and noise, different on every rank
        return (torch.Generator().manual_seed(seed + 7919 * rank),
                torch.Generator(device=device).manual_seed(seed + 1 + 7919 * rank))

    picks, noise = streams(config.seed)
    history, start = History(), 0
    best = None  # the best validated EMA network so far: (score, step, its state)

    if checkpoint is not None and Path(checkpoint).exists():
        state = read_state(checkpoint, "training checkpoint", map_location=device)
        if "fingerprint" not in state:
            kind = "a model file" if "format" in state else "something else"
            raise CheckpointMismatch(f"{str(checkpoint)!r} is {kind}, not a training checkpoint; give checkpoint= a "
                                     "new path (and init=xrimpute.load(...) to start from a model)")
        if state["fingerprint"] != (fingerprint or {}):
            raise CheckpointMismatch(
                f"checkpoint {str(checkpoint)!r} was written for {state['fingerprint']}, "
                f"not for {fingerprint}; pass another checkpoint path or delete it to start afresh"
            )
        if int(state["step"]) > config.steps:
            raise CheckpointMismatch(f"checkpoint {str(checkpoint)!r} is at step {int(state['step'])}, past "
                                     f"steps={config.steps}; pass steps >= {int(state['step'])} to resume it, or "
                                     "another checkpoint path")
        denoiser.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        history = History(**state["history"])
        start = int(state["step"])
        best = state.get("best")
        saved = state["picks"], state["noise"]
        if world > 1 and isinstance(saved[0], list) and len(saved[0]) == world:
            saved = saved[0][rank], saved[1][rank]
        if isinstance(saved[0], torch.Tensor):
            picks.set_state(saved[0])
            noise.set_state(saved[1].to(noise.get_state().device))
        else:  # written by another number of processes: fresh streams for this step
            picks, noise = streams(config.seed + start)

    def save(step):
        picks_state, noise_state = picks.get_state(), noise.get_state()
        if world > 1:  # every rank's random streams, so that each resumes its own
            states = [None] * world
            dist.all_gather_object(states, (picks_state, noise_state.cpu()))
            picks_state, noise_state = [p for p, _ in states], [n for _, n in states]
        if rank == 0:
            atomic_save(
                dict(net=denoiser.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                     picks=picks_state, noise=noise_state, history=history.to_dict(),
                     step=step, fingerprint=fingerprint or {}, best=best),
                checkpoint,
            )

    autocast = config.bf16 and device.type == "cuda"
    t0 = time.perf_counter() - history.seconds
    running = torch.zeros((), device=device)
    # a time budget's bar counts towards the steps the budget is projected to allow, and stays to say why it stopped
    bar = tqdm(initial=start, total=config.steps if config.max_time is None else None, desc="training", unit="step",
               disable=not progress or rank > 0 or config.steps == 0, leave=config.max_time is not None)
    if config.max_time is not None:
        bar.set_postfix_str(f"time budget {config.max_time:.0f} s")
    step, stopping, by_heart = start, False, False
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = (config.lr * RESTART_LR ** len(history.restarts)
                           * learning_rate_factor(config, step, time.perf_counter() - t0))
        x, observed, *inputs = windows.sample(config.batch_size, picks)
        x, observed = x.to(device, non_blocking=True), observed.to(device, non_blocking=True)
        inputs = {name: v.to(device, non_blocking=True) for name, v in (inputs[0] if inputs else {}).items()}
        net = functools.partial(model, **inputs) if inputs else model
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(net, x, observed, spec, schedule, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in averaged:
                e.lerp_(p.detach(), 1 - decay)
            for e, b in buffers:
                e.copy_(b)
        running += loss.detach()
        done = step + 1
        stopping = config.max_time is not None and time.perf_counter() - t0 > config.max_time
        if world > 1 and config.max_time is not None:  # all ranks stop at the same step
            flag = torch.tensor(float(stopping), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopping = bool(flag)
        if validate is not None and rank == 0 and done % config.val_every == 0 and done < config.steps:
            best = _validated(validate, ema, done, history, best)
            if world == 1 and overfitting(history, best, config.patience):  # one rank alone cannot go back
                if len(history.restarts) == MAX_RESTARTS:
                    by_heart = True
                else:  # from the best network, at a lower learning rate, with the optimiser's moments afresh
                    history.restarts.append(done)
                    denoiser.load_state_dict(best[2])
                    ema.load_state_dict(best[2])
                    optimizer.state.clear()
        if done % config.log_every == 0 or done == config.steps or stopping or by_heart:  # one host sync per interval
            if world > 1:
                dist.all_reduce(running)
                running /= world
            since = done - (history.step[-1] if history.step else start)
            history.step.append(done)
            history.loss.append(float(running) / max(1, since))
            if not math.isfinite(history.loss[-1]):
                raise NonFiniteLossError(
                    f"the training loss became non-finite at step {done} (or in the {since - 1} before it): the data "
                    "probably hold values far out of range (gross errors, fill values below 1e30); mask them as "
                    "NaN, or lower lr")
            running.zero_()
            if config.max_time is not None:
                elapsed = time.perf_counter() - t0
                bar.total = min(config.steps, max(done, round(done / max(elapsed, 1e-9) * config.max_time)))
                bar.set_postfix_str(f"loss {history.loss[-1]:.4f}, time budget {config.max_time:.0f} s")
            else:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
        if checkpoint is not None and done % config.checkpoint_every == 0:
            history.seconds = time.perf_counter() - t0
            save(done)
        if bar.total is not None and bar.n >= bar.total:  # faster steps outran the estimate: keep the end in sight
            bar.total = bar.n + 1
        bar.update(1)
        if stopping or by_heart:
            break
    history.seconds = time.perf_counter() - t0
    if by_heart:
        history.stopped = (f"the held-back score worsened after {step + 1 - start} steps, {MAX_RESTARTS} returns to "
                           "the best network at a lower learning rate included")
    elif stopping:
        history.stopped = f"the time budget of {config.max_time:.0f} s ended it after {step + 1 - start} steps"
    else:
        history.stopped = f"all {config.steps} steps done"
    bar.total = bar.n
    bar.set_description(f"training: {history.stopped}")
    bar.close()
    scored = validate is not None and rank == 0
    if scored and (not history.val_step or history.val_step[-1] != step + 1):  # not scored at its last step yet
        best = _validated(validate, ema, step + 1, history, best)
    if checkpoint is not None:
        save(step + 1)  # the last EMA network, the best beside it: a longer run resumes where this one stopped
    if scored and best is not None and best[0] < (1 - KEEP_MARGIN) * history.val[-1]["nmse"]:
        # the network had begun to learn its training windows by heart
        ema.load_state_dict(best[2])
        history.kept = best[1]
    return ema, history

"""EM with consistency regularisation: a masked-diffusion baseline for categorical fields.

Cloud flags, sea-ice presence, precipitation occurrence and land-cover classes
are categorical. This baseline learns them from incomplete cubes with a
discrete *absorbing-state* diffusion:

- forward process: at noise level ``t`` every cell is replaced by a [MASK]
  state with probability ``t``; cells without an observation are [MASK] always;
- a network (:class:`CategoricalDenoiser`, the project's U-Net on one-hot
  inputs) predicts per-cell class logits of the clean field from a masked state;
- loss: the cross-entropy on cells that are observed and masked, plus a
  *consistency* term: the prediction from a noisier state (student, ``t + dt``,
  a superset of the teacher's masked cells) is pulled towards the network's own
  stop-gradient prediction from the less noisy state (teacher, ``t``) on every
  cell the teacher does not see, gaps included. The teacher's soft prediction
  is discretised by **argmax** (a one-hot target, so the KL is the
  cross-entropy to the teacher's most likely class);
- EM rounds: the first fit uses the observed cells only; each round then
  imputes the gaps by iterative unmasking (E-step; by default the most
  confident cells first, each set to its most likely class) and continues
  training, warm started, on the completed cube (M-step); observed cells
  always keep their observed values.

The final output is the network's per-cell class distribution given all
observed cells (averaged over the overlapping windows that contain a step) and
the most probable class; observed cells keep their class with probability 1.

For continuous fields the same idea is a loss option of the Gaussian model:
:func:`consistency_loss` (teacher at ``t``, student at ``t + dt``) plugs into
:func:`xrimpute.training.train`, and :func:`em_consistency_continuous` wraps a
:class:`~xrimpute.model.CtxDiffModel` in EM rounds.

The maths (``CategoricalDenoiser`` to ``categorical_probabilities``) is torch
and numpy only; :func:`em_consistency`, :func:`fit_em_consistency`,
:func:`em_consistency_continuous` and the registry core
:func:`em_consistency_array` (``fill(obj, method="em_consistency")``) are the
thin entries.
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from xrimpute import cube, training
from xrimpute.baselines.learned import Learned
from xrimpute.diffusion import noised
from xrimpute.engine import Engine, ImputeConfig
from xrimpute.errors import ArgumentError
from xrimpute.model import CtxDiffModel, position_fields
from xrimpute.nets import Denoiser
from xrimpute.options import or_option
from xrimpute.samplers import ArrayWindows
from xrimpute.training import TrainConfig, resolve_device
from xrimpute.windows import window_starts

NEG = -1e4  # logit of classes a channel does not have: finite, so that 0 x logit stays 0


# -- the network -----------------------------------------------------------------
class CategoricalDenoiser(nn.Module):
    """Per-cell class logits of the clean window from a partly masked one.

    A :class:`~xrimpute.nets.Denoiser` whose channels are the one-hot classes:
    channel ``c`` with ``n_classes[c]`` classes becomes ``max(n_classes)``
    one-hot inputs (zero at masked cells) next to their visibility mask (the
    mask-state channel), and as many logits out. ``forward(codes, visible, t)``
    takes integer codes ``(B, C, T, H, W)`` (anything at masked cells), a
    boolean ``visible`` and the masked fraction ``t`` ``(B,)``, and returns
    logits ``(B, C, T, H, W, K)``; classes a channel lacks get a logit of -1e4.
    """

    def __init__(self, n_classes, window: int, static: torch.Tensor | None = None, preset: str = "tiny",
                 periodic: bool = False, **overrides):
        super().__init__()
        n_classes = [int(k) for k in n_classes]
        if min(n_classes) < 1:
            raise ArgumentError(f"every channel needs at least one class, got n_classes={n_classes}")
        k = max(n_classes)
        self.config = dict(n_classes=n_classes, window=window, preset=preset, periodic=periodic, **overrides)
        self.register_buffer("has_class", torch.arange(k)[None] < torch.tensor(n_classes)[:, None])  # (C, K)
        self.net = Denoiser(len(n_classes) * k, window, static, preset=preset, periodic=periodic, **overrides)

    @property
    def n_classes_max(self) -> int:
        return self.has_class.shape[1]

    def forward(self, codes: torch.Tensor, visible: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c, w, h, wd = codes.shape
        k = self.n_classes_max
        onehot = F.one_hot(codes.clamp(0, k - 1), k) * visible[..., None]  # (B, C, T, H, W, K)
        onehot = onehot.movedim(-1, 2).reshape(b, c * k, w, h, wd).float()
        mask = visible[:, :, None].expand(b, c, k, w, h, wd).reshape(b, c * k, w, h, wd)
        logits = self.net(onehot, mask, t).reshape(b, c, k, w, h, wd).movedim(2, -1)
        return logits.masked_fill(~self.has_class[:, None, None, None, :], NEG)


# -- the absorbing process and the losses ------------------------------------------
def _uniform(shape, generator, device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def absorb(observed: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Visible cells after the forward process at levels ``t`` ``(B,)``.

    Every cell goes to [MASK] with probability ``t``; unobserved cells are
    masked always. Returns a boolean ``visible`` shaped like ``observed``.
    """
    u = _uniform(observed.shape, generator, observed.device)
    return observed & (u >= t.view(-1, *[1] * (observed.dim() - 1)))


def absorb_further(visible: torch.Tensor, t: torch.Tensor, dt: float, generator=None) -> torch.Tensor:
    """The state at ``t + dt`` from the state at ``t``: each visible cell is masked with
    probability ``dt / (1 - t)``, so the cells masked at ``t`` stay masked (nested states)."""
    rate = (dt / (1 - t).clamp(min=dt)).view(-1, *[1] * (visible.dim() - 1))
    return visible & (_uniform(visible.shape, generator, visible.device) >= rate)


def masked_fraction(visible: torch.Tensor) -> torch.Tensor:
    """Share of masked cells per sample: the noise level the network is told."""
    return 1 - visible.flatten(1).float().mean(1)


def consistency_term(net, codes, visible, teacher_logits, t, dt: float, generator=None) -> torch.Tensor:
    """KL from the teacher's discretised prediction at ``t`` to the student's at ``t + dt``.

    The teacher's logits are detached (stop-gradient) and reduced to their
    argmax; the KL to a one-hot target is the cross-entropy to that class. It
    is taken on every cell the teacher does not see (gaps included).
    """
    target = teacher_logits.detach().argmax(-1)
    student_visible = absorb_further(visible, t, dt, generator)
    student = net(codes, student_visible, masked_fraction(student_visible))
    cells = ~visible
    if not cells.any():
        return student.sum() * 0.0
    return F.cross_entropy(student[cells].float(), target[cells])


def masked_diffusion_loss(net, codes, observed, consistency_weight: float = 0.0, dt: float = 0.1,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Cross-entropy on masked observed cells, plus ``consistency_weight`` x :func:`consistency_term`.

    ``codes`` ``(B, C, T, H, W)`` integer classes (anything where unobserved),
    ``observed`` boolean. ``t`` is uniform on ``(0, 1)``, or on ``(0, 1 - dt)``
    when the consistency term needs room for the student at ``t + dt``.
    """
    b = codes.shape[0]
    t = _uniform((b,), generator, codes.device) * (1 - dt if consistency_weight else 1.0)
    visible = absorb(observed, t, generator)
    logits = net(codes, visible, masked_fraction(visible))
    target = observed & ~visible
    loss = F.cross_entropy(logits[target].float(), codes[target]) if target.any() else logits.sum() * 0.0
    if consistency_weight:
        loss = loss + consistency_weight * consistency_term(net, codes, visible, logits, t, dt, generator)
    return loss


def categorical_loss(consistency_weight: float = 0.0, dt: float = 0.1):
    """:func:`masked_diffusion_loss` as a ``loss_fn`` for :func:`xrimpute.training.train`."""

    def loss_fn(net, codes, observed, spec, schedule, generator):  # spec, schedule: the Gaussian model's
        return masked_diffusion_loss(net, codes, observed, consistency_weight, dt, generator)

    return loss_fn


# -- imputation ----------------------------------------------------------------------
def _onehot(codes: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(codes.clamp(0, k - 1), k).float()


@torch.no_grad()
def predict(net, codes: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, C, T, H, W, K)`` of every cell given all observed cells
    (one-hot on the observed class where observed)."""
    probs = net(codes, observed, masked_fraction(observed)).float().softmax(-1)
    return torch.where(observed[..., None], _onehot(codes, probs.shape[-1]), probs)


@torch.no_grad()
def unmask(net, codes: torch.Tensor, observed: torch.Tensor, steps: int = 8, order: str = "confidence",
           sample: bool = True, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the masked cells by iterative unmasking in ``steps`` rounds.

    Each round predicts all masked cells and reveals an equal share of those
    left: the most confident ones (``order="confidence"``) or random ones
    (``"random"``), with a class drawn from the prediction (``sample=True``)
    or its argmax. Observed cells are never changed. Returns the completed
    codes and, per cell, the class probabilities it was decided with.
    """
    if order not in ("confidence", "random"):
        raise ArgumentError(f"order must be 'confidence' or 'random', got {order!r}")
    k = net.n_classes_max
    codes = torch.where(observed, codes, 0)
    visible = observed.clone()
    decided = _onehot(codes, k) * observed[..., None]
    b = codes.shape[0]
    for step in range(steps):
        hidden = ~visible
        left = hidden.flatten(1).sum(1)
        if not left.any():
            break
        probs = net(codes, visible, masked_fraction(visible)).float().softmax(-1)
        score = probs.amax(-1) if order == "confidence" else _uniform(hidden.shape, generator, codes.device)
        score = score.masked_fill(visible, -1.0).flatten(1)
        ranks = torch.empty_like(score, dtype=torch.long).scatter_(
            1, score.argsort(1, descending=True), torch.arange(score.shape[1], device=codes.device).expand(b, -1))
        share = torch.div(left + (steps - step - 1), steps - step, rounding_mode="floor")  # ceil(left / rounds left)
        reveal = (ranks < share[:, None]).view_as(hidden) & hidden
        p = probs[reveal]
        chosen = torch.multinomial(p, 1, generator=generator).squeeze(1) if sample else p.argmax(-1)
        codes = codes.masked_scatter(reveal, chosen)
        decided[reveal] = p
        visible |= reveal
    return codes, decided


@torch.no_grad()
def over_windows(fn, codes: np.ndarray, observed: np.ndarray, window: int, k: int, stride: int = 1,
                 batch_size: int = 8, device="cpu", progress: bool = True, desc: str = "imputing") -> np.ndarray:
    """Apply ``fn(codes, observed) -> (B, C, window, H, W, K)`` to every window of a series, averaging overlaps.

    ``codes`` ``(N, C, T, H, W)`` integers, ``observed`` boolean. Returns ``(N, C, T, H, W, K)`` float32.
    """
    n, c, t, h, w = codes.shape
    jobs = [(i, s) for i in range(n) for s in window_starts(t, window, stride)]
    total = np.zeros((n, c, t, h, w, k), np.float32)
    count = np.zeros((n, 1, t, 1, 1, 1), np.float32)
    for first in tqdm(range(0, len(jobs), batch_size), desc=desc, disable=not progress, leave=False):
        batch = jobs[first : first + batch_size]
        x = torch.stack([torch.as_tensor(codes[i, :, s : s + window]) for i, s in batch]).to(device)
        m = torch.stack([torch.as_tensor(observed[i, :, s : s + window]) for i, s in batch]).to(device)
        out = fn(x, m).float().cpu().numpy()
        for (i, s), o in zip(batch, out):
            total[i, :, s : s + window] += o
            count[i, :, s : s + window] += 1
    return total / count


def fit_categorical(codes: np.ndarray, observed: np.ndarray, n_classes, *, window: int = 3, rounds: int = 2,
                    steps: int = 1200, consistency_weight: float = 0.5, dt: float = 0.1, unmask_steps: int = 4,
                    order: str = "confidence", sample: bool = False, static=None, preset: str = "tiny",
                    periodic: bool = False, batch_size: int = 16, lr: float = 2e-3, seed: int = 0,
                    device: str = "auto", progress: bool = True, **train_options) -> CategoricalDenoiser:
    """Train a :class:`CategoricalDenoiser` by EM with consistency regularisation.

    Parameters
    ----------
    codes : ``(N, C, T, H, W)`` integer classes (anything where unobserved).
    observed : boolean, same shape.
    n_classes : number of classes of each channel.
    rounds : EM rounds after the first fit on the observed cells (0: no EM).
    steps : training steps in all, split evenly over the first fit and the M-steps.
    consistency_weight, dt : weight of the consistency term (0: plain masked
        diffusion) and the gap between the teacher's and the student's noise level.
    unmask_steps, order, sample : the E-step's iterative unmasking (see :func:`unmask`); a
        cell is completed with the class that most windows containing it gave it.
    static : ``(S, H, W)`` fields appended to the network's input (e.g. position).
    **train_options : further :class:`~xrimpute.training.TrainConfig` fields.

    Returns the EMA network of the last round, on the CPU.
    """
    if codes.shape != observed.shape or codes.ndim != 5:
        raise ArgumentError(f"codes {codes.shape} and observed {observed.shape} must both be (N, C, T, H, W)")
    if not observed.any():
        raise ArgumentError("no cell is observed: there is nothing to learn from")
    device = resolve_device(device)
    codes = np.where(observed, codes, 0).astype(np.int64)
    with training.seeded(seed):  # the initial weights
        net = CategoricalDenoiser(n_classes, window, None if static is None else torch.as_tensor(static),
                                  preset=preset, periodic=periodic)
    config = TrainConfig(steps=max(1, steps // (rounds + 1)), batch_size=batch_size, lr=lr, seed=seed,
                         **train_options)
    loss_fn = categorical_loss(consistency_weight, dt)
    data = ArrayWindows(codes, observed, window)
    generator = torch.Generator(device=device).manual_seed(seed)

    def e_step(x, m):
        return _onehot(unmask(ema, x, m, unmask_steps, order, sample, generator)[0], net.n_classes_max)

    for r in tqdm(range(rounds + 1), desc="EM rounds", disable=not progress or rounds == 0, leave=False):
        warm = replace(config, seed=seed + r, warmup=min(config.warmup, 0.1))  # a trained start
        ema, _ = training.train(net, data, None, warm if r else config, device=device, loss_fn=loss_fn,
                                progress=progress)
        if r < rounds:  # E-step: a cell takes the class most windows that contain it gave it
            votes = over_windows(e_step, codes, observed, window, net.n_classes_max, batch_size=batch_size,
                                 device=device, progress=progress, desc="E-step")
            completed = np.where(observed, codes, votes.argmax(-1))
            data = ArrayWindows(completed, np.ones_like(observed), window)
    return ema.cpu().eval()


def categorical_probabilities(codes: np.ndarray, observed: np.ndarray, n_classes, *, window: int = 3,
                              batch_size: int = 16, device: str | None = None, progress: bool | None = None,
                              **options) -> np.ndarray:
    """Fit by :func:`fit_categorical`, then each cell's class probabilities ``(N, C, T, H, W, K)``
    given all observed cells, averaged over the overlapping windows that contain it."""
    device, progress = resolve_device(or_option("device", device)), or_option("progress", progress)
    net = fit_categorical(codes, observed, n_classes, window=window, batch_size=batch_size, device=device,
                          progress=progress, **options).to(device)
    return over_windows(lambda x, m: predict(net, x, m), np.where(observed, codes, 0), observed, window,
                        net.n_classes_max, batch_size=batch_size, device=device, progress=progress)


# -- the continuous (Gaussian) variant ----------------------------------------------------
def consistency_loss(weight: float = 1.0, dt: float = 0.05, completed: bool = False):
    """A ``loss_fn`` for :func:`xrimpute.training.train`: context-query loss plus consistency.

    The teacher sees the context of ``x_t`` at ``t``; the student sees the same
    context one step later on the same trajectory, ``x_{t+dt} ~ q(x_{t+dt} | x_t)``,
    and is pulled (squared error, all cells) towards the teacher's stop-gradient
    x0-prediction. ``weight=0`` is the plain context-query loss. With
    ``completed=True`` the windows hold completed data (NaN where nothing is
    known): every finite cell is a target, contexts are still drawn inside the
    observed cells.
    """

    def loss_fn(denoiser, x, observed, spec, schedule, generator):
        b = x.shape[0]
        room = dt if weight else 0.0
        t = schedule.t_min + (1 - room - schedule.t_min) * _uniform((b,), generator, x.device)
        query_all = torch.isfinite(x)
        x = torch.nan_to_num(x)
        x_t = noised(x, t, schedule, generator)
        context = spec.context(observed, generator)
        query = query_all if completed else spec.query(observed, context)
        pred = denoiser(x_t * context, context, t)
        loss = ((pred.float() - x) ** 2 * query).sum() / query.sum().clamp(min=1)
        if not weight:
            return loss
        (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(t + dt)
        ratio = (a_s / a_t).view(-1, 1, 1, 1, 1)
        spread = (s_s.view(-1, 1, 1, 1, 1) ** 2 - ratio**2 * s_t.view(-1, 1, 1, 1, 1) ** 2).clamp(min=0).sqrt()
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x_t.dtype)
        student = denoiser((ratio * x_t + spread * eps) * context, context, t + dt)
        return loss + weight * ((student.float() - pred.detach().float()) ** 2).mean()

    return loss_fn


def fit_em_consistency(train, mask="auto", *, rounds: int = 2, steps: int = 2000, K: int = 10,
                       consistency_weight: float = 1.0, dt: float = 0.05, seed: int = 0, device: str | None = None,
                       progress: bool | None = None, **fit_options) -> Learned:
    """EM rounds with consistency regularisation around a :class:`~xrimpute.model.CtxDiffModel`.

    The first fit is :meth:`CtxDiffModel.fit` on the observed cells (so
    ``rounds=0`` is plain ctxdiff). Each round imputes the gaps of ``train``
    with the current model (E-step, ``K`` contexts) and continues training it,
    warm started, on the completed cube with :func:`consistency_loss`
    (M-step): contexts are drawn inside the observed cells, targets are all
    known cells. Observed values are never changed.

    Parameters
    ----------
    train : DataArray or Dataset, a cube with NaN where unobserved.
    mask : how the observations are structured (see :meth:`CtxDiffModel.fit`).
    rounds : EM rounds after the first fit.
    steps : training steps in all, split evenly over the first fit and the M-steps.
    K : contexts per window in the E-steps and in :meth:`Learned.impute`.
    consistency_weight, dt : see :func:`consistency_loss`.
    **fit_options : the rest of :meth:`CtxDiffModel.fit` (``window``, ``preset``, ``batch_size``, ...).

    Returns
    -------
    A :class:`~xrimpute.baselines.learned.Learned` whose ``impute(obj)`` fills any cube on the grid.
    """
    per_round = max(1, steps // (rounds + 1))
    model = CtxDiffModel.fit(train, mask=mask, steps=per_round, seed=seed, device=device, progress=progress,
                             **{"verbose": False, **fit_options})
    values, _ = cube.to_array(train)
    _em_rounds(model.engine, values, rounds=rounds, steps=steps, K=K, consistency_weight=consistency_weight, dt=dt,
               seed=seed, device=device, progress=progress)
    return Learned("em_consistency", model, dict(K=K))


def _em_rounds(engine: Engine, values: np.ndarray, *, rounds: int, steps: int, K: int, consistency_weight: float,
               dt: float, seed: int, device: str | None, progress: bool | None) -> None:
    """The EM rounds of :func:`fit_em_consistency` on ``values`` ``(N, C, T, H, W)``, training ``engine`` further."""
    device, progress = or_option("device", device), or_option("progress", progress)
    observed = np.isfinite(values)
    loss_fn = consistency_loss(consistency_weight, dt, completed=True)
    facts = {"em": dict(rounds=rounds, steps=steps, consistency_weight=consistency_weight, dt=dt, K=K)}
    for r in tqdm(range(rounds), desc="EM rounds", disable=not progress or rounds == 0, leave=False):
        filled, _ = engine.fill(values, ImputeConfig(K=K, seed=seed + r, device=device, progress=progress))
        # the M-steps train on the held-back cells too: the engine drops the first fit's validation score
        engine.continue_training(filled, observed, loss_fn=loss_fn, device=device, progress=progress, facts=facts,
                                 seed=seed + 1 + r)


def em_consistency_continuous_array(values: np.ndarray, *, mask="auto", rounds: int = 2, steps: int = 2000,
                                    K: int = 10, consistency_weight: float = 1.0, dt: float = 0.05, seed: int = 0,
                                    device: str | None = None, progress: bool | None = None,
                                    **fit_options) -> np.ndarray:
    """:func:`em_consistency_continuous` on an ``(N, C, T, H, W)`` array (NaN = gap), with the engine itself."""
    values = np.asarray(values, dtype=np.float32)
    engine = Engine.fit_array(values, mask, steps=max(1, steps // (rounds + 1)), seed=seed, device=device,
                              progress=progress, **{"verbose": False, **fit_options})
    _em_rounds(engine, values, rounds=rounds, steps=steps, K=K, consistency_weight=consistency_weight, dt=dt,
               seed=seed, device=device, progress=progress)
    return engine.fill(values, ImputeConfig(K=K, seed=seed, progress=False))[0]


def em_consistency_continuous(obj, *, train=None, seed: int = 0, **options):
    """Fit :func:`fit_em_consistency` on ``train`` (default ``obj``) and fill the gaps of ``obj``
    (same type, dims, coords and attrs; observed values kept)."""
    learned = fit_em_consistency(obj if train is None else train, seed=seed, **options)
    return learned.impute(obj, seed=seed)


# -- categories and the xarray entry ---------------------------------------------------------
def _is_integral(values: np.ndarray) -> bool:
    return bool(np.all(values == np.round(values)))


def is_categorical(var: xr.DataArray, max_categories: int = 16) -> bool:
    """A variable is categorical when it has CF ``flag_values``, an integer or boolean dtype,
    or at most ``max_categories`` distinct observed values that are all integers."""
    if "flag_values" in var.attrs or var.dtype == bool or np.issubdtype(var.dtype, np.integer):
        return True
    seen = np.asarray(var.values)
    seen = seen[np.isfinite(seen)]
    return seen.size > 0 and _is_integral(seen) and np.unique(seen).size <= max_categories


def categories_of(var: xr.DataArray) -> tuple[np.ndarray, list[str] | None]:
    """The category values of a variable and their meanings.

    From CF ``flag_values`` / ``flag_meanings`` when present, ``[False, True]``
    for booleans, else the sorted unique observed values.
    """
    if "flag_values" in var.attrs:
        values = np.atleast_1d(np.asarray(var.attrs["flag_values"]))
        meanings = var.attrs.get("flag_meanings")
        meanings = str(meanings).split() if meanings is not None else None
        if meanings is not None and len(meanings) != values.size:
            raise ArgumentError(f"variable {var.name!r} has {values.size} flag_values but {len(meanings)} "
                                "flag_meanings; give one meaning (a word) per value")
        if np.unique(values).size != values.size:
            raise ArgumentError(f"variable {var.name!r} repeats a value in flag_values {values.tolist()}")
        return values, meanings
    if var.dtype == bool:
        return np.array([False, True]), None
    seen = np.asarray(var.values)
    seen = seen[np.isfinite(seen)] if np.issubdtype(seen.dtype, np.floating) else seen.ravel()
    return np.unique(seen), None


def encode(values: np.ndarray, categories: np.ndarray, name: str = "data") -> np.ndarray:
    """Integer codes (index into ``categories``) of the finite ``values``; -1 where NaN."""
    finite = np.isfinite(values)
    order = np.argsort(categories)
    cats = np.asarray(categories, dtype=np.float64)[order]
    pos = np.clip(np.searchsorted(cats, values[finite]), 0, cats.size - 1)
    stray = cats[pos] != values[finite]
    if stray.any():
        raise ArgumentError(f"variable {name!r} has values {np.unique(values[finite][stray])[:10].tolist()} that are "
                            f"not among its categories {np.asarray(categories).tolist()}; fix the data or its "
                            "flag_values attribute")
    codes = np.full(values.shape, -1, np.int64)
    codes[finite] = order[pos]
    return codes


def _with_gaps_as_nan(ds: xr.Dataset, names) -> xr.Dataset:
    """Integer variables mark gaps with their ``_FillValue`` / ``missing_value`` attribute."""
    for name in names:
        var = ds[name]
        fill = var.attrs.get("_FillValue", var.attrs.get("missing_value"))
        if np.issubdtype(var.dtype, np.integer) and fill is not None:
            ds = ds.assign({name: var.where(var != fill)})
    return ds


def _positions(obj, layout: cube.Layout) -> np.ndarray:
    coords = cube.coordinates(obj, layout)
    lat = obj[layout.axes.lat] if layout.axes.lat in obj.coords else None
    degrees = lat is not None and "degree" in str(lat.attrs.get("units", "")).lower()
    return position_fields(coords["lat"].astype(float), coords["lon"].astype(float), degrees)


def em_consistency(obj, *, max_categories: int = 16, **options):
    """Fill the gaps of a categorical cube by EM with consistency regularisation.

    Parameters
    ----------
    obj : DataArray or Dataset with time, latitude and longitude dims; every cube
        variable categorical: CF ``flag_values`` (with ``flag_meanings``), integer
        codes or booleans (gaps as NaN, or an integer ``_FillValue``), or floats that
        take at most ``max_categories`` integer values. Continuous fields go to
        :func:`em_consistency_continuous`.
    **options : ``rounds``, ``steps``, ``consistency_weight``, ``dt``, ``window``,
        ``unmask_steps``, ``order``, ``sample``, ``preset``, ``batch_size``, ``lr``,
        ``seed``, ``device``, ``progress``: see :func:`fit_categorical`
        (``rounds=0, consistency_weight=0`` is plain masked diffusion).

    Returns
    -------
    labels : same type, dims, coords and attrs as ``obj``: the most probable
        category of every cell, observed cells unchanged (integer and boolean
        variables keep their dtype).
    probabilities : per variable ``<var>_prob`` with an extra ``category`` dim
        (coords: the category values; ``flag_values`` / ``flag_meanings`` in the
        attrs), summing to 1; observed cells have probability 1 on their class.
        The dim is ``<var>_category`` when a Dataset's variables have different
        categories. A DataArray gives ``(labels, probabilities)``, a Dataset one
        Dataset with both.
    """
    is_da = isinstance(obj, xr.DataArray)
    original = obj.to_dataset(name=obj.name if obj.name is not None else "data") if is_da else obj
    layout = cube.layout_of(original)
    continuous = [n for n in layout.variables if not is_categorical(original[n], max_categories)]
    if continuous:
        raise ArgumentError(f"variable(s) {continuous} look continuous (no flag_values, not integer codes with at most "
                            f"{max_categories} values); fill them with em_consistency_continuous, give them "
                            "flag_values, or raise max_categories")
    cats = {n: categories_of(original[n]) for n in layout.variables}
    ds = _with_gaps_as_nan(original, layout.variables)
    with warnings.catch_warnings():  # integer and boolean codes are expected here
        warnings.filterwarnings("ignore", message=".*is cast to float32")
        values, layout = cube.to_array(ds, layout=layout)
    cube.check_observed(values, layout)
    observed = np.isfinite(values)
    codes = np.stack([encode(values[:, i], cats[v][0], v) for i, v in enumerate(layout.channel_of)], axis=1)
    probs = categorical_probabilities(codes, observed, [cats[v][0].size for v in layout.channel_of],
                                      static=_positions(ds, layout), **options)
    best = probs.argmax(-1)
    labels = np.stack([cats[v][0].astype(np.float64)[best[:, i]] for i, v in enumerate(layout.channel_of)], axis=1)
    filled = cube.from_array(np.where(observed, values, labels), ds, layout)
    shared = len({tuple(np.asarray(c[0]).tolist()) for c in cats.values()}) == 1
    for name in layout.variables:
        if original[name].dtype == bool or np.issubdtype(original[name].dtype, np.integer):
            filled[name] = filled[name].astype(original[name].dtype)  # every cell is filled now
        filled[f"{name}_prob"] = _probabilities(probs, ds, layout, name, *cats[name],
                                                "category" if shared else f"{name}_category")
    if is_da:
        name = layout.variables[0]
        return filled[name].rename(obj.name), filled[f"{name}_prob"].rename(
            None if obj.name is None else f"{obj.name}_prob")
    return filled


def _probabilities(probs, ds, layout, name, categories, meanings, dim) -> xr.DataArray:
    """``<name>_prob``: the variable's dims plus ``dim`` over its categories."""
    channels = [i for i, v in enumerate(layout.channel_of) if v == name]
    slices = []
    for k in range(categories.size):
        block = np.full(probs.shape[:-1], np.nan, np.float32)
        block[:, channels] = probs[..., k][:, channels]
        slices.append(cube.from_array(block, ds, layout)[name].astype(np.float32))
    attrs = {"long_name": f"probability of each category of {name}", "units": "1", "flag_values": categories}
    if meanings is not None:
        attrs["flag_meanings"] = " ".join(meanings)
    coord = xr.Variable(dim, categories, {"flag_meanings": attrs["flag_meanings"]} if meanings else {})
    prob = xr.concat(slices, dim=dim).assign_coords({dim: coord}).transpose(*ds[name].dims, dim)
    prob.attrs, prob.encoding, prob.name = attrs, {}, f"{name}_prob"
    return prob


# -- the registry core -----------------------------------------------------------------------
def em_consistency_array(values: np.ndarray, kind: str = "auto", max_categories: int = 16, **options) -> np.ndarray:
    """Registry core for ``fill(obj, method="em_consistency")`` on ``(N, C, T, H, W)`` arrays.

    ``kind="auto"`` treats the cube as categorical when every channel's
    observed values are integers with at most ``max_categories`` distinct
    values (categories: the sorted unique observed values), as continuous
    otherwise; ``"categorical"`` / ``"continuous"`` force it. Options go to
    :func:`fit_categorical` or :func:`em_consistency_continuous_array`. On arrays the
    network sees the grid index as position (no latitude).
    """
    values = np.asarray(values, dtype=np.float32)
    if kind not in ("auto", "categorical", "continuous"):
        raise ArgumentError(f"kind must be 'auto', 'categorical' or 'continuous', got {kind!r}")
    observed = np.isfinite(values)
    if kind == "auto":
        channels = [values[:, c][observed[:, c]] for c in range(values.shape[1])]
        kind = "categorical" if all(_is_integral(v) and np.unique(v).size <= max_categories
                                    for v in channels) else "continuous"
    options = {"progress": False, **options}
    if kind == "continuous":
        return em_consistency_continuous_array(values, **options)
    cats = [np.unique(values[:, c][observed[:, c]]) for c in range(values.shape[1])]
    codes = np.stack([encode(values[:, c], cats[c]) for c in range(values.shape[1])], axis=1)
    probs = categorical_probabilities(codes, observed, [c.size for c in cats], **options)
    labels = np.stack([cats[c][probs[:, c].argmax(-1)] for c in range(values.shape[1])], axis=1)
    return np.where(observed, values, labels).astype(np.float32)


__all__ = [
    "CategoricalDenoiser", "absorb", "absorb_further", "masked_fraction", "consistency_term",
    "masked_diffusion_loss", "categorical_loss", "predict", "unmask", "over_windows", "fit_categorical",
    "categorical_probabilities", "consistency_loss", "fit_em_consistency", "em_consistency_continuous",
    "em_consistency_continuous_array",
    "is_categorical", "categories_of", "encode", "em_consistency", "em_consistency_array",
]

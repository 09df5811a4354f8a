"""Training velocity models by (conditional) flow matching, with resumable run directories.

The loss (one Monte-Carlo sample per data point)::

    t ~ U[0, T],  (x_t, u) = path.sample(x0, t),  y' = NULL with probability p_uncond else y,
    L(theta) = mean || model(x_t, t, y') - u ||^2

optimised with Adam, gradient-norm clipping and an exponential moving average of the weights
(``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``:
``ema <- decay * ema + (1 - decay) * theta`` after every step, the first step copies).

* :func:`fit` is the core loop: any velocity module, any tensor data (images or 2D points), an
  optional run directory.  :func:`train` runs a :class:`TrainConfig` (data set + UNet + path).
  The step, seeding, log window and checkpoint helpers are those of :mod:`kaclib.loop`, shared
  with the distillation stages (:mod:`kaclib.distill.stage`); the loss is
  :class:`kaclib.losses.FlowMatchingLoss`.
* Determinism: every random draw of step ``k`` on rank ``r`` comes from generators seeded with
  ``splitmix64(seed, r, k)`` (noise, times, label dropout, the global RNG that dropout layers use),
  and the data order is a fixed sequence of seeded epoch permutations indexed by ``k``.  A step is
  thus a pure function of (weights, optimizer state, seed, rank, k): resuming from a checkpoint
  reproduces an uninterrupted run bit for bit (on the same device and world size).
* Several processes: under ``torchrun --nproc_per_node=N`` (or any initialised process group) the
  model is wrapped in ``DistributedDataParallel``; the global batch ``batch_size`` is split evenly
  across ranks (each rank reads a different slice of the data order and its own noise stream),
  gradients are averaged, and only rank 0 writes checkpoints and logs.

Command line: ``python -m kaclib train`` (:mod:`kaclib.cli`), under ``torchrun`` too::

    python -m kaclib train --profile cpu --run-dir runs/x [--config cfg.json] [--set steps=2000 ...]
    torchrun --standalone --nproc_per_node=4 -m kaclib train --config cfg.json --run-dir runs/x
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import accel as _accel
from . import runs
from .accel import AccelConfig
from .kac import check_finite_param
from .loaded_run import LoadedRun, load_run, run_sampling_defaults  # re-exported
from .loop import (
    EpochOrder,
    FiniteGuard,
    LogWindow,
    _dist_info,
    batch_indices,
    init_distributed,
    load_checkpoint_into,
    optimizer_step,
    rng_devices,
    save_checkpoint,
    seed_step,
    step_seed,
)
from .losses import FlowMatchingLoss
from .train_config import (
    MAX_BATCH,
    MAX_STEPS,
    MUTABLE_FIELDS,
    TrainConfig,
    _check_clip,
    _check_int,
    _check_prob,
    resolve_model_config,
)

__all__ = [
    "TrainConfig",
    "FitResult",
    "TrainResult",
    "LoadedRun",
    "fit",
    "train",
    "load_run",
    "run_sampling_defaults",
    "resolve_model_config",
    "init_distributed",
    "step_seed",
    "batch_indices",
    "MUTABLE_FIELDS",
]

# the run's configuration lives in kaclib.train_config (re-exported here)

_EpochOrder = EpochOrder  # the name before kaclib.loop (the tests import it)
_FiniteGuard = FiniteGuard


# =============================================================================== the loop


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model``: the trained (bare) module; ``ema``: its EMA copy (bare module, eval mode);
    ``step``: steps done in total; ``start_step``: where this call started (> 0 after a resume);
    ``losses``: per-step training losses of this call (this rank's batch; CPU float tensor);
    ``seconds_per_step``: wall time of this call / its steps.
    """

    model: nn.Module
    ema: nn.Module
    step: int
    start_step: int
    losses: torch.Tensor
    seconds_per_step: float
    run_dir: Path | None = None


def _validate_data(data, labels, num_classes, batch_size, world):
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError("data must be a tensor of shape (N, ...) with N >= 1")
    if not data.is_floating_point():
        raise ValueError(f"data must be floating point, got {data.dtype}")
    if labels is not None:
        if (
            not isinstance(labels, torch.Tensor)
            or labels.shape != (data.shape[0],)
            or labels.dtype != torch.long
        ):
            raise ValueError(f"labels must be an int64 tensor of shape ({data.shape[0]},)")
        _check_int("num_classes", num_classes, 1)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes})")
    _check_int("batch_size", batch_size, 1, MAX_BATCH)
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world}")


def _check_fit_args(hp: dict) -> SimpleNamespace:
    """The hyper-parameters of :func:`fit` checked (numbers normalised), as attributes."""
    _check_int("steps", hp["steps"], 0, MAX_STEPS)
    hp["lr"] = check_finite_param("lr", hp["lr"], positive=True)
    hp["p_uncond"] = _check_prob("p_uncond", hp["p_uncond"])
    hp["grad_clip"] = _check_clip(hp["grad_clip"])
    hp["ema_decay"] = _check_prob("ema_decay", hp["ema_decay"], upper_open=True)
    _check_int("seed", hp["seed"], 0)
    _check_int("checkpoint_every", hp["checkpoint_every"], 0)
    _check_int("log_every", hp["log_every"], 1)
    return SimpleNamespace(**hp)


def _fit_config(path, hp: SimpleNamespace, acc) -> dict:
    """The default ``config.json`` of :func:`fit`.

    The default ``config.json`` of :func:`fit`: its hyper-parameters, the path's config and the
    accelerator switches unless plain fp32.
    """
    keys = ("batch_size", "lr", "p_uncond", "grad_clip", "ema_decay", "seed", "num_classes", "steps")
    config = {
        "fit": {k: getattr(hp, k) for k in keys + ("checkpoint_every", "log_every")},
        "path": path.config(),
    }
    if acc != _accel.OFF:
        config["accel"] = acc.to_dict()
    return config


_rng_devices = rng_devices  # the name this module used before kaclib.loop


def _open_run_dir(run_dir, config, acc, resume, model, ema, optimizer, lock, is_main, world):
    """Check or write ``run_dir`` for :func:`fit` and load its checkpoint when resuming.

    Check / write ``run_dir`` for :func:`fit` (rank 0 takes its lock on ``lock``) and load its
    checkpoint when resuming.  Returns ``(config, start, last_good)``.
    """
    saved = runs.read_config(run_dir) if (run_dir / runs.CONFIG_FILE).is_file() else None
    config = _accel.resume_config(saved, config, acc, run_dir)  # the recorded arithmetic stays
    mutable = [k for k in MUTABLE_FIELDS] + [f"fit.{k}" for k in MUTABLE_FIELDS]
    config = json.loads(json.dumps(config))
    start, last_good = 0, None  # last_good: step of the last checkpoint (never a non-finite one)
    try:
        if is_main:
            lock.enter_context(runs.writer(run_dir))
        exists = runs.prepare_run_dir(run_dir, config, resume=resume, mutable=mutable, write=is_main)
        if world > 1:
            dist.barrier()  # rank 0 has recovered / written the directory
            exists = runs.has_checkpoint(run_dir)
        ckpt = None
        if exists:
            ckpt, state = load_checkpoint_into(run_dir, model, ema, optimizer)
            _check_world_size(run_dir, state, world)
            start = last_good = ckpt.step
        if is_main:
            runs.rewind_metrics(run_dir, ckpt)  # checked against the checkpoint, cut back to it
    except BaseException:
        lock.__exit__(*sys.exc_info())
        raise
    return config, start, last_good


def _check_world_size(run_dir, state: dict, world: int) -> None:
    """Refuse to resume on another number of processes than the checkpoint was written by.

    Each rank draws its own slice of the batch and its own noise stream, so the continuation on
    another world size would silently differ from the uninterrupted run.
    """
    saved = state.get("world_size", 1)
    if saved != world:
        raise runs.RunDirError(
            f"{run_dir}: the checkpoint was written by {saved} process(es), this run has {world}; "
            f"resume with the same number (the batch split and noise streams depend on it)"
        )


def _wrap_model(model, labels, world, device, acc):
    """The module the steps call: ``model`` wrapped in DDP on several ranks, compiled on request."""
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=labels is None,
        )
    if acc.compile:
        net = _accel.compile_model(net, device)
    return net


def fit(
    model: nn.Module,
    path,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 5e-4,
    p_uncond: float = 0.1,
    grad_clip: float | None = 1.0,
    ema_decay: float = 0.999,
    seed: int = 0,
    device=None,
    run_dir: str | os.PathLike | None = None,
    config: dict | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    log_every: int = 100,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    accel: AccelConfig | None = None,
) -> FitResult:
    """Train ``model(x, t, y) -> u`` on ``path``'s regression target (module docstring's loss).

    ``data`` ``(N, ...)`` float; ``labels`` ``(N,)`` int64 in ``[0, num_classes)`` or ``None``
    (unconditional: the model gets ``y=None`` and ``p_uncond`` is unused).  Dropped labels become
    ``num_classes`` (the null class).  ``steps`` is the total step count (a resumed run continues
    up to it).  With ``run_dir``: ``config`` (default: these hyper-parameters and the path's config)
    is checked against / written to ``config.json``, checkpoints go there every
    ``checkpoint_every`` steps and at the end, metrics every ``log_every`` steps; ``resume=True``
    continues from the checkpoint found there.  ``callback(step, info)`` runs after every step
    (``info``: ``loss`` tensor, ``grad_norm`` tensor).  ``accel``: the accelerator switches
    (:class:`kaclib.accel.AccelConfig`, resolved on ``device``; ``None`` is plain fp32,
    :data:`kaclib.accel.OFF`); recorded in the default ``config`` unless plain fp32, and a resumed
    run must keep the arithmetic its ``config.json`` records (:func:`kaclib.accel.resume_config`).
    The steps are those of :mod:`kaclib.loop` with :class:`kaclib.losses.FlowMatchingLoss`.
    """
    hp = _check_fit_args(dict(
        batch_size=batch_size, lr=lr, p_uncond=p_uncond, grad_clip=grad_clip, ema_decay=ema_decay,
        seed=seed, num_classes=num_classes, steps=steps, checkpoint_every=checkpoint_every,
        log_every=log_every,
    ))  # fmt: skip
    rank, world = _dist_info()
    _validate_data(data, labels, num_classes, batch_size, world)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    acc = AccelConfig.from_dict(accel if accel is not None else _accel.OFF).resolve(device)
    model = _accel.prepare_model(model.to(device), dataclasses.replace(acc, compile=False), device)
    data = _accel.to_device(data, device)
    labels = _accel.to_device(labels, device) if labels is not None else None
    optimizer = _accel.make_optimizer(model.parameters(), hp.lr, acc, device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(hp.ema_decay))
    start, last_good = 0, None
    lock = contextlib.ExitStack()  # rank 0 holds the run directory's lock while it trains
    if run_dir is not None:
        run_dir = runs.check_run_path(run_dir)
        config = _fit_config(path, hp, acc) if config is None else config
        config, start, last_good = _open_run_dir(
            run_dir, config, acc, resume, model, ema, optimizer, lock, rank == 0, world
        )
    loop = _FitLoop(
        net=_wrap_model(model, labels, world, device, acc), model=model, optimizer=optimizer, ema=ema,
        loss_fn=FlowMatchingLoss(path, hp.p_uncond, num_classes), data=data, labels=labels,
        order=EpochOrder(data.shape[0], seed), hp=hp, rank=rank, world=world, device=device, acc=acc,
        run_dir=run_dir, config=config, guard=FiniteGuard(run_dir, start, last_good),
    )  # fmt: skip
    with lock:
        losses = loop.run(start, progress and rank == 0, callback)
    return FitResult(
        model=model.eval(),
        ema=ema.module.eval(),
        step=max(steps, start),
        start_step=start,
        losses=losses.cpu(),
        seconds_per_step=loop.elapsed / max(steps - start, 1),
        run_dir=run_dir,
    )


@dataclass
class _FitLoop:
    """The steps of :func:`fit` on this rank.

    The steps of :func:`fit` on this rank: :func:`_train_step`, the log window, checkpoints
    (rank 0) and the finite guard.
    """

    net: nn.Module
    model: nn.Module
    optimizer: object
    ema: AveragedModel
    loss_fn: Callable
    data: torch.Tensor
    labels: torch.Tensor | None
    order: EpochOrder
    hp: SimpleNamespace
    rank: int
    world: int
    device: torch.device
    acc: AccelConfig
    run_dir: Path | None
    config: dict | None
    guard: FiniteGuard
    elapsed: float = 0.0

    def run(self, start: int, progress: bool, callback) -> torch.Tensor:
        """Steps ``start .. hp.steps``; returns their losses (on the device)."""
        hp, device = self.hp, self.device
        losses = torch.zeros(max(hp.steps - start, 0), device=device)
        window = LogWindow(start, zero=torch.zeros((), device=device))
        bar = tqdm(total=hp.steps, initial=start, disable=not progress, desc="train", dynamic_ncols=True)
        self.model.train()
        with torch.random.fork_rng(devices=rng_devices(device)), bar, _accel.tf32_policy(device, self.acc):
            for k in range(start, hp.steps):
                loss, grad_norm = _train_step(
                    self.net, self.model, self.optimizer, self.ema, self.loss_fn, self.data, self.labels,
                    self.order, k, hp.batch_size, self.rank, self.world, hp.seed, hp.grad_clip, device,
                    self.acc,
                )  # fmt: skip
                losses[k - start] = loss.detach()
                window.add(loss.detach())
                step = k + 1
                bar.update(1)
                if step % hp.log_every == 0 or step == hp.steps:
                    self.log(step, losses, window, grad_norm, bar)
                if self.run_dir is not None and self.rank == 0:
                    if (hp.checkpoint_every and step % hp.checkpoint_every == 0) or step == hp.steps:
                        self.checkpoint(step, losses)
                if callback is not None:
                    callback(step, {"loss": loss.detach(), "grad_norm": grad_norm})
        if hp.steps > start:
            self.guard.check_losses(losses, hp.steps)
            self.guard.check_weights(hp.steps, self.model, self.ema.module)
        self.elapsed = time.perf_counter() - window.t0
        return losses

    def log(self, step: int, losses, window: LogWindow, grad_norm, bar) -> None:
        self.guard.check_losses(losses, step)
        mean = window.mean()
        if self.world > 1:
            dist.all_reduce(mean)
            mean /= self.world
        record = window.record(step, mean, grad_norm, self.hp.lr, "sec_per_step")
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if self.rank == 0 and self.run_dir is not None:
            runs.append_jsonl(self.run_dir / runs.METRICS_FILE, record)

    def checkpoint(self, step: int, losses) -> None:
        self.guard.check_losses(losses, step)
        self.guard.check_weights(step, self.model, self.ema.module)
        hp = self.hp
        _save_checkpoint(
            self.run_dir, self.model, self.ema, self.optimizer, step, hp.seed, self.world, self.config
        )
        self.guard.last_good = step


def _train_step(
    net,
    model,
    optimizer,
    ema,
    loss_fn,
    data,
    labels,
    order,
    k,
    batch_size,
    rank,
    world,
    seed,
    grad_clip,
    device,
    acc=None,
):
    """One optimisation step of ``loss_fn`` (:class:`kaclib.losses.FlowMatchingLoss`).

    One optimisation step of ``loss_fn`` (:class:`kaclib.losses.FlowMatchingLoss`); every random
    draw comes from ``step_seed(seed, rank, k, ...)``: stream 1 seeds the global RNG (dropout), stream
    0 the step's generator.
    """
    g = seed_step(device, step_seed(seed, rank, k, 1), step_seed(seed, rank, k, 0))
    idx = batch_indices(order, k, batch_size, rank, world).to(device)
    loss = loss_fn(net, data[idx], None if labels is None else labels[idx], g, acc)
    return loss, optimizer_step(model, ema, optimizer, loss, grad_clip)


# =============================================================================== checkpoints


def _save_checkpoint(
    run_dir: Path, model, ema, optimizer, step: int, seed: int, world: int, config: dict
) -> None:
    extra = {
        "seed": seed,
        "world_size": world,
        "rng": "per-step: torch.Generator seeded with step_seed(seed, rank, step, stream)",
    }
    save_checkpoint(run_dir, model, ema, optimizer, step, extra, config)


# =============================================================================== configs -> runs


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``model``/``ema``: trained bare modules (eval mode); ``path``: the path object;
    ``config``: the resolved :class:`TrainConfig`; ``step``: steps done; ``losses``: per-step
    losses of this call; ``seconds_per_step``; ``run_dir``.
    """

    model: nn.Module
    ema: nn.Module
    path: object
    config: TrainConfig
    step: int
    losses: torch.Tensor
    seconds_per_step: float
    run_dir: Path | None


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike | None,
    device=None,
    resume: bool = False,
    progress: bool = True,
    data_root: str | os.PathLike | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``config`` (data set, UNet, path) into ``run_dir`` (``None``: nothing written).

    Joins the ``torchrun`` process group when ``WORLD_SIZE > 1`` (and leaves it at the end when it
    created it).  ``device`` defaults to CUDA when available.
    """
    from .data import load_dataset
    from .models import UNetConfig, build_model

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    created_group = not (dist.is_available() and dist.is_initialized())
    rank, world, dev = init_distributed(device)
    created_group = created_group and world > 1
    try:
        cfg = config.resolved()
        acc = cfg.accel.resolve(dev)  # recorded as run on this device; plain fp32 records nothing
        cfg = cfg.replace(accel=acc if acc != _accel.OFF else AccelConfig())
        data = load_dataset(cfg.dataset, "train", root=data_root, seed=cfg.data_seed)
        path = cfg.path.build()
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        model = build_model(UNetConfig.from_dict(cfg.model), path=path)
        res = fit(
            model,
            path,
            data.images,
            data.labels,
            data.num_classes,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            p_uncond=cfg.p_uncond,
            grad_clip=cfg.grad_clip,
            ema_decay=cfg.ema_decay,
            seed=cfg.seed,
            device=dev,
            run_dir=run_dir,
            config=cfg.to_dict(),
            resume=resume,
            checkpoint_every=cfg.checkpoint_every,
            log_every=cfg.log_every,
            progress=progress,
            callback=callback,
            accel=acc,
        )
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()
    return TrainResult(
        model=res.model,
        ema=res.ema,
        path=path,
        config=cfg,
        step=res.step,
        losses=res.losses,
        seconds_per_step=res.seconds_per_step,
        run_dir=Path(run_dir) if run_dir is not None else None,
    )

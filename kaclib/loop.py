"""The pieces every training loop of the package shares.

Teacher training (:func:`kaclib.train.fit`)
and each distillation stage (:func:`kaclib.distill.train_stage`, which the few-step methods of
:mod:`kaclib.fewstep` drive with their own losses).

A loop step is::

    g = seed_step(device, s_global, s_batch)         # the per-step seeds (global RNG + a generator)
    loss = loss_fn(net, batch..., g)                  # a loss callable (kaclib.losses, distill.endpoint)
    grad_norm = optimizer_step(model, ema, optimizer, loss, grad_clip)

inside ``torch.random.fork_rng(devices=rng_devices(device))`` so that the caller's RNG state is
untouched; every ``log_every`` steps a :class:`LogWindow` turns the losses since the last record
into a ``metrics.jsonl`` record, and :func:`save_checkpoint` / :func:`load_checkpoint_into` write
and restore the weights, EMA and optimizer (plus a loop's own fields in ``state.pt``).

Seeds: :func:`step_seed` mixes integer keys with splitmix64; data orders are :class:`EpochOrder`
sequences of seeded epoch permutations, read by :func:`batch_indices`.  Each step is thus a pure
function of (weights, optimizer state, seed, step), which makes resuming bit-identical.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import runs

__all__ = [
    "step_seed",
    "EpochOrder",
    "batch_indices",
    "rng_devices",
    "seed_step",
    "optimizer_step",
    "LogWindow",
    "FiniteGuard",
    "init_distributed",
    "save_checkpoint",
    "load_checkpoint_into",
]

# =============================================================================== randomness

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(*keys: int) -> int:
    """A 63-bit seed mixing integer keys (``seed, rank, step, stream``) with splitmix64."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h >> 1


class EpochOrder:
    """An endless data order: epoch ``e`` is ``randperm(N)`` seeded by ``step_seed(seed, -1, e)``."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def perm(self, epoch: int) -> torch.Tensor:
        """The data permutation of ``epoch`` (cached)."""
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(step_seed(self.seed, _MASK64, epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        epochs, offsets = positions // self.n, positions % self.n
        out = torch.empty_like(positions)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self.perm(e)[offsets[sel]]
        return out


def batch_indices(
    order: EpochOrder, step: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Data indices of one rank at one step.

    Data indices of rank ``rank`` at step ``step`` (0-based): its slice of global positions
    ``[step * B, (step + 1) * B)`` of the epoch sequence (``B`` = global batch).
    """
    per_rank = batch_size // world_size
    start = step * batch_size + rank * per_rank
    return order[torch.arange(start, start + per_rank)]


def rng_devices(device: torch.device) -> list:
    """The CUDA devices whose RNG a loop forks.

    For ``torch.random.fork_rng(devices=...)``: the
    device's index, or the current CUDA device for a bare ``"cuda"`` (the one
    ``torch.cuda.manual_seed`` seeds); none on the CPU.
    """
    return (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )


def seed_step(device: torch.device, s_global: int, s_batch: int) -> torch.Generator:
    """Seed one step; return the generator for the step's own draws.

    Seeds the global RNG (dropout and other users of it; CUDA's too on a CUDA device)
    with ``s_global``; returns a generator on ``device`` seeded with ``s_batch`` for the step's
    own draws (batch, times, noise).
    """
    torch.default_generator.manual_seed(s_global)
    if device.type == "cuda":
        torch.cuda.manual_seed(s_global)
    return torch.Generator(device=device).manual_seed(s_batch)


# =============================================================================== the step


def optimizer_step(model, ema, optimizer, loss: torch.Tensor, grad_clip: float | None) -> torch.Tensor:
    """One optimiser step with clipping and EMA update; returns the gradient norm.

    Zero-grad, backward ``loss``, clip the gradient norm of ``model`` to ``grad_clip`` (``None``:
    no clipping), step ``optimizer``, update ``ema`` (an ``AveragedModel``) and copy the buffers
    into it (buffers are copied, not averaged: integer buffers cannot be).  Returns the gradient
    norm before clipping (a detached tensor: no synchronisation).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = grad_clip if grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    ema.update_parameters(model)
    with torch.no_grad():
        for b_ema, b_model in zip(ema.module.buffers(), model.buffers()):
            b_ema.copy_(b_model)
    return grad_norm.detach()


# =============================================================================== metrics


class LogWindow:
    """The losses since the last ``metrics.jsonl`` record and the clock of a loop.

    ``zero`` is the empty sum: ``0.0`` (losses added as floats) or a 0-dim tensor on the device
    (losses added as tensors, summed without a GPU synchronisation).  :meth:`record` returns
    ``{"step", "loss", "grad_norm", "lr", **fields, "elapsed_s", rate_key}`` (``rate_key``: the
    seconds per step since the last record; teacher runs call it ``sec_per_step``, distillation
    stages ``sec_per_iter``, the keys their ``metrics.jsonl`` have always had) and starts a new
    window.  ``loss`` is the window's mean, or ``mean(window_mean)`` when given (the mean over
    ranks).
    """

    def __init__(self, start: int, zero=0.0):
        self.zero = zero
        self.total, self.n = zero, 0
        self.t0 = time.perf_counter()
        self.last_t, self.last_step = self.t0, start

    def add(self, loss) -> None:
        """Add one step's loss to the window."""
        self.total += loss
        self.n += 1

    def mean(self):
        """Mean loss of the window."""
        return self.total / self.n

    def record(self, step: int, loss, grad_norm, lr, rate_key: str, **fields) -> dict:
        """Log record of the window ending at ``step``; starts a new window."""
        now = time.perf_counter()
        rec = {"step": step, "loss": float(loss), "grad_norm": float(grad_norm), "lr": lr, **fields}
        rec["elapsed_s"] = now - self.t0
        rec[rate_key] = (now - self.last_t) / max(step - self.last_step, 1)
        if isinstance(self.total, torch.Tensor):
            self.total.zero_()
        else:
            self.total = self.zero
        self.n, self.last_t, self.last_step = 0, now, step
        return rec


# =============================================================================== distributed runs


def init_distributed(device=None) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), if not done yet.

    Backend NCCL on CUDA, gloo on CPU; on CUDA each process uses ``cuda:LOCAL_RANK``.
    Returns ``(rank, world_size, device)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if want_cuda:
            local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    if device is None:
        device = "cuda" if want_cuda else "cpu"
    return 0, 1, torch.device(device)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# =============================================================================== finite values


class FiniteGuard:
    """Stop training at the first non-finite loss or weight.

    Stops training at the first non-finite loss (checked at every log step, before every
    checkpoint and at the end: no extra GPU synchronisation) or non-finite weights (before every
    checkpoint and at the end), naming the step and the last good checkpoint, which is kept: a
    NaN is never saved.
    """

    def __init__(self, run_dir, start: int, last_good: int | None):
        self.run_dir, self.start, self.checked, self.last_good = run_dir, start, start, last_good

    def _stop(self, what: str, step: int):
        if self.run_dir is None:
            kept = "nothing was saved"
        elif self.last_good is None:
            kept = f"no checkpoint was written to {self.run_dir}"
        else:
            kept = f"the last good checkpoint (step {self.last_good}) in {self.run_dir} is kept"
        raise runs.NonFiniteError(
            f"{what} at step {step}: training stopped; {kept} "
            "(a learning rate, path parameter or guidance weight too large?)"
        )

    def check_losses(self, losses: torch.Tensor, step: int) -> None:
        """Stop at the first non-finite loss up to ``step``."""
        seg = losses[self.checked - self.start : step - self.start]
        bad = ~torch.isfinite(seg)
        if bool(bad.any()):
            self._stop("non-finite loss (NaN or inf)", self.checked + int(bad.nonzero()[0, 0]) + 1)
        self.checked = max(self.checked, step)

    def check_weights(self, step: int, *modules) -> None:
        """Stop when a module's weights are non-finite at ``step``."""
        for m in modules:
            try:
                runs.check_finite(m, "the model")
            except runs.NonFiniteError:
                self._stop("non-finite weights (NaN or inf)", step)


# =============================================================================== checkpoints


def save_checkpoint(
    run_dir: Path, model, ema, optimizer, step: int, extra: dict, config: dict | None = None
) -> None:
    """Write a verified checkpoint of a training run.

    Write a verified checkpoint of ``run_dir`` (:func:`kaclib.runs.save_checkpoint`): ``model``
    and ``ema.module`` weights, and ``state.pt`` = ``{"step", "optimizer", "ema_n_averaged",
    **extra}`` (``extra``: the loop's own fields); ``config`` is recorded in the manifest.
    """
    meta = {"step": str(step)}
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "ema_n_averaged": int(ema.n_averaged),
        **extra,
    }
    runs.save_checkpoint(
        run_dir,
        {
            runs.MODEL_FILE: runs.weights_bytes(model, meta),
            runs.EMA_FILE: runs.weights_bytes(ema.module, meta),
            runs.STATE_FILE: runs.save_torch_bytes(state),
        },
        config=config,
        step=step,
    )


def load_checkpoint_into(run_dir: Path, model, ema, optimizer) -> tuple["runs.Checkpoint", dict]:
    """Load the verified checkpoint of a run into model, EMA and optimizer.

    Load the verified checkpoint of ``run_dir`` into ``model``, ``ema`` (an ``AveragedModel``) and
    ``optimizer``; returns the checkpoint and its ``state.pt`` dict (for a loop's own fields).  Used
    by teacher training and by every distillation stage.
    """
    ckpt = runs.read_checkpoint(run_dir)
    state = ckpt.state("cpu")
    ckpt.load_into(model, runs.MODEL_FILE)
    ckpt.load_into(ema.module, runs.EMA_FILE)
    try:
        ema.n_averaged.fill_(state["ema_n_averaged"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise runs.RunDirError(
            f"{run_dir / runs.STATE_FILE}: the optimizer state does not fit this run ({e})"
        ) from None
    if state["step"] != ckpt.step:
        raise runs.RunDirError(
            f"{run_dir / runs.STATE_FILE}: step {state['step']}, but {runs.MANIFEST_FILE} says {ckpt.step}"
        )
    return ckpt, state

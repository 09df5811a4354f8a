"""The training loop of one distillation stage (:func:`train_stage`).

A stage distils a frozen :class:`~kaclib.distill.teacher.TeacherField` into the student of a
:class:`~kaclib.distill.teacher.Handoff` with the endpoint loss of :mod:`kaclib.distill.endpoint`
on the tuples of a source of :mod:`kaclib.distill.sources`.  With a run directory the stage writes
``model.safetensors``, ``ema.safetensors`` (the student), ``state.pt`` and ``metrics.jsonl``
(:func:`kaclib.distill.run_ladder` adds ``config.json`` and, once the stage is finished,
``result.json``).  Every random draw of iteration ``j`` of stage ``i`` comes from generators seeded
with ``step_seed(seed, i, j, stream)``; together with the checkpointed optimizer, EMA and roll-out
population an interrupted stage resumes bit for bit (on CPU).

After the stage's budget an optional quality gate ``gate_fn(student_ema, teacher, spec) -> dict``
(:mod:`kaclib.distill.gate`) decides whether training continues in chunks of ``gate_chunk``
iterations, at most ``gate_max_extra`` extra iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import accel as _accel
from .. import runs
from ..loop import (
    LogWindow,
    load_checkpoint_into,
    optimizer_step,
    rng_devices,
    save_checkpoint,
    seed_step,
    step_seed,
)
from .config import DistillConfig, StageSpec
from .endpoint import EndpointLoss
from .sources import _S_BATCH, _S_GLOBAL, StageContext, make_source
from .teacher import Handoff, TeacherField, freeze

RESULT_FILE = "result.json"


@dataclass
class StageResult:
    """A finished stage.

    ``student``: the EMA student (eval mode); ``model``: the raw weights; ``teacher``: the frozen
    teacher it was distilled from; ``iters``: iterations done (gate extensions included);
    ``losses``: this call's per-iteration losses (velocity scale); ``teacher_passes``: teacher
    network passes x samples spent (pool included); ``gate``: the gate's evaluations; ``seconds``:
    wall time of this call.
    """

    spec: StageSpec
    student: nn.Module
    model: nn.Module
    teacher: nn.Module
    iters: int
    losses: torch.Tensor
    teacher_passes: int
    gate: list
    seconds: float
    run_dir: Path | None = None
    resumed_from: int = 0


def _lr_at(it: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (it + 1) / warmup) if warmup > 0 else lr


def _stage_context(teacher, path, spec, config: DistillConfig, data, labels, num_classes, device, progress):
    """Validate a stage's data and return the :class:`StageContext` its batch sources work in.

    Forward states' data are validated on ``device``.
    """
    if num_classes is None:
        num_classes = teacher.num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if config.states == "forward":
        if data is None or labels is None:
            raise ValueError("states='forward' needs data and labels")
        if labels.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
        data, labels = data.to(device), labels.to(device)
    shape = tuple(data.shape[1:]) if data is not None else None
    if shape is None:
        raise ValueError("data (or at least one example of the state shape) is needed")
    return StageContext(
        teacher=teacher,
        path=path,
        spec=spec,
        data=data,
        labels=labels,
        num_classes=num_classes,
        seed=config.seed,
        batch_size=config.batch_size,
        pool_size=config.pool_size,
        states=config.states,
        device=device,
        progress=progress,
        shape=shape,
        dtype=data.dtype,
        T=float(path.T),
    )


def _lock_stage_dir(lock: contextlib.ExitStack, run_dir, run_config, config, spec):
    """Create and lock (on ``lock``) the stage directory; returns the config its checkpoints record.

    That config is ``run_config``, else the ``config.json`` the caller wrote, else this stage's own.
    """
    if run_dir is None:
        return run_config
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.enter_context(runs.run_lock(run_dir))
    if run_config is None:
        run_config = (
            runs.read_config(run_dir)
            if (run_dir / runs.CONFIG_FILE).is_file()
            else {"distill": config.to_dict(), "stage": spec.to_dict()}
        )
    return run_config


def train_stage(
    teacher: TeacherField,
    handoff: Handoff,
    path,
    spec: StageSpec,
    config: DistillConfig,
    data: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    *,
    device="cpu",
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    gate_fn: Callable | None = None,
    run_config: dict | None = None,
    loss_fn: Callable | None = None,
    batch_fn: Callable | None = None,
) -> StageResult:
    """Distil ``teacher`` into ``handoff.student`` for one stage.

    The loss is that of :mod:`kaclib.distill.endpoint`, on the states of
    :mod:`kaclib.distill.sources`.

    Parameters
    ----------
    data, labels
        ``(N, ...)`` and ``(N,)``, needed for forward states (roll-outs draw labels uniformly from
        ``num_classes``).
    run_dir
        Its ``config.json`` already written by the caller; checkpoints go there every
        ``config.checkpoint_every`` iterations and at the end.
    resume
        ``True`` continues from a checkpoint in ``run_dir``.
    gate_fn
        ``gate_fn(student_ema, teacher, spec) -> dict`` with key ``"pass"`` implements the quality
        gate (``run_ladder`` supplies one when ``config.gate``).
    callback
        ``callback(iteration, info)`` runs after every iteration.
    loss_fn
        A hook for other few-step methods (:mod:`kaclib.fewstep`):
        ``loss_fn(student, x, k, y, target)`` replaces :class:`EndpointLoss` (default
        ``EndpointLoss(spec.student_steps, path.T)``).
    batch_fn
        A hook for other few-step methods: ``batch_fn(it, g) -> (x, k, y, target)`` replaces the
        batch source chosen by ``config.states``/``config.targets``.  It must be a pure function of
        ``it`` and the per-iteration generator ``g`` so that a resumed stage replays it; the loop
        hands its four tensors to ``loss_fn`` unchanged.
    """
    if not isinstance(teacher, TeacherField):
        raise ValueError("teacher must be a TeacherField")
    device = torch.device(device)
    ctx = _stage_context(teacher, path, spec, config, data, labels, num_classes, device, progress)
    acc = config.accel.resolve(device)
    layout = dataclasses.replace(acc, compile=False)  # channels-last weights (in place), no compile
    student, optimizer, ema = (
        _accel.prepare_model(handoff.student, layout, device),
        handoff.optimizer,
        handoff.ema.to(device),
    )
    frozen = freeze(_accel.prepare_model(teacher.model, layout, device))
    run_dir = runs.check_run_path(run_dir) if run_dir is not None else None
    with contextlib.ExitStack() as lock:  # the stage directory's lock, held while the stage trains
        run_config = _lock_stage_dir(lock, run_dir, run_config, config, spec)
        source = make_source(ctx, run_dir, config.states, config.targets, batch_fn)
        loop = _StageLoop(spec, config, device, run_dir, run_config, student, optimizer, ema, ctx, source)
        loop.restore(resume)
        if loss_fn is None:
            loss_fn = EndpointLoss(spec.student_steps, float(path.T))
        it = loop.run(teacher, loss_fn, acc, progress, callback, gate_fn)
    student.eval()
    return StageResult(
        spec=spec,
        student=ema.module.eval(),
        model=student,
        teacher=frozen,
        iters=it,
        losses=torch.tensor(loop.losses),
        teacher_passes=ctx.counter[0],
        gate=loop.gate_log,
        seconds=time.perf_counter() - loop.window.t0,
        run_dir=run_dir,
        resumed_from=loop.start,
    )


class _StageLoop:
    """The iterations of one stage: resume, optimizer steps, metrics, checkpoints and the gate."""

    def __init__(self, spec, config, device, run_dir, run_config, student, optimizer, ema, ctx, source):
        self.spec, self.config, self.device = spec, config, device
        self.run_dir, self.run_config = run_dir, run_config
        self.student, self.optimizer, self.ema = student, optimizer, ema
        self.ctx, self.source = ctx, source
        self.start, self.target_iters, self.gate_log, self.last_good = 0, spec.iters, [], None
        self.losses = []

    def restore(self, resume: bool) -> None:
        """Continue from the stage directory's checkpoint (``resume=True``), or start afresh."""
        run_dir, spent = self.run_dir, 0
        if run_dir is not None and runs.has_checkpoint(run_dir):
            if not resume:
                raise FileExistsError(
                    f"{run_dir} already holds a checkpoint: pass resume=True to continue it"
                )
            # verified against its manifest
            ckpt, state = load_checkpoint_into(run_dir, self.student, self.ema, self.optimizer)
            try:
                self.start, self.target_iters, self.gate_log = (
                    int(state["step"]),
                    int(state["target_iters"]),
                    list(state["gate"]),
                )
                spent = int(state["teacher_passes"])
                self.source.load(state)
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                raise runs.RunDirError(
                    f"{run_dir / runs.STATE_FILE}: not the state of this stage ({e})"
                ) from None
            self.last_good = self.start
            runs.rewind_metrics(run_dir, ckpt)
        elif run_dir is not None:
            runs.rewind_metrics(run_dir, None)
        self.ctx.counter[0] = spent

    def stop(self, what: str, it: int):
        """Raise :class:`kaclib.runs.NonFiniteError`, naming what is kept."""
        run_dir, last_good = self.run_dir, self.last_good
        kept = (
            (
                "no checkpoint was written"
                if last_good is None
                else f"the last good checkpoint (iteration {last_good}) in {run_dir} is kept"
            )
            if run_dir is not None
            else "nothing was saved"
        )
        raise runs.NonFiniteError(
            f"stage {self.spec.index}: {what} at iteration {it}: distillation stopped; {kept} "
            "(a learning rate or guidance weight too large, or a non-finite teacher?)"
        )

    def checkpoint(self, step: int) -> None:
        for m in (self.student, self.ema.module):
            try:
                runs.check_finite(m, "the student")
            except runs.NonFiniteError:
                self.stop("non-finite weights (NaN or inf)", step)
        if self.run_dir is not None:
            extra = {
                "target_iters": self.target_iters,
                "gate": self.gate_log,
                "teacher_passes": self.ctx.counter[0],
                "seed": self.config.seed,
                **self.source.state(),
            }
            save_checkpoint(
                self.run_dir, self.student, self.ema, self.optimizer, step, extra, self.run_config
            )
            self.last_good = step

    def step(self, it: int, loss_fn, acc):
        """Iteration ``it`` (0-based): seed, batch, loss, optimizer and EMA update.

        Returns ``(loss, grad_norm, lr)``.
        """
        config, spec, device, student = self.config, self.spec, self.device, self.student
        g = seed_step(
            device,
            step_seed(config.seed, spec.index, it, _S_GLOBAL),
            step_seed(config.seed, spec.index, it, _S_BATCH),
        )
        student.train()
        with _accel.autocast(device, acc):  # bf16 passes; states, targets and loss stay fp32
            x, k, y, target = self.source.batch(it, g)
            loss = loss_fn(student, x, k, y, target)
        lr = _lr_at(it, spec.lr, config.warmup_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        grad_norm = optimizer_step(student, self.ema, self.optimizer, loss, config.grad_clip)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            self.stop("non-finite loss (NaN or inf)", it + 1)
        return lv, grad_norm, lr

    def log(self, it: int, grad_norm, lr: float, bar) -> None:
        """One ``metrics.jsonl`` record: the mean loss since the last one."""
        w = self.window
        rec = w.record(it, w.mean(), grad_norm, lr, "sec_per_iter", teacher_passes=self.ctx.counter[0])
        bar.set_postfix(loss=f"{rec['loss']:.4g}")
        if self.run_dir is not None:
            runs.append_jsonl(self.run_dir / runs.METRICS_FILE, rec)

    def ask_gate(self, it: int, gate_fn, teacher) -> bool:
        """Ask the gate once per step count reached; ``True`` when it passes."""
        if not (self.gate_log and self.gate_log[-1]["step"] == it):
            rec = dict(gate_fn(self.ema.module.eval(), teacher, self.spec))
            rec["step"] = it
            self.gate_log.append(rec)
            if self.run_dir is not None:
                runs.append_jsonl(self.run_dir / runs.METRICS_FILE, {"step": it, "gate": rec})
        return bool(self.gate_log[-1]["pass"])

    def run(self, teacher, loss_fn, acc, progress, callback, gate_fn) -> int:
        """Train to the budget (extended while the gate fails); returns the iterations done."""
        config, spec, device = self.config, self.spec, self.device
        self.window = LogWindow(self.start)  # the stage's clock (t0) and its log window
        cap = spec.iters + (config.gate_max_extra if gate_fn is not None else 0)
        bar = tqdm(
            total=self.target_iters,
            initial=self.start,
            desc=f"stage {spec.index}: {spec.teacher_steps}->{spec.student_steps} steps",
            disable=not progress,
            dynamic_ncols=True,
        )
        with torch.random.fork_rng(devices=rng_devices(device)), bar, _accel.tf32_policy(device, acc):
            it = self.start
            while True:
                while it < self.target_iters:
                    lv, grad_norm, lr = self.step(it, loss_fn, acc)
                    self.losses.append(lv)
                    self.window.add(lv)
                    it += 1
                    bar.update(1)
                    if it % config.log_every == 0 or it == self.target_iters:
                        self.log(it, grad_norm, lr, bar)
                    if (
                        config.checkpoint_every
                        and it % config.checkpoint_every == 0
                        and it < self.target_iters
                    ):
                        self.checkpoint(it)
                    if callback is not None:
                        callback(it, {"loss": lv, "grad_norm": float(grad_norm), "stage": spec.index})
                # the budget is spent: done, or ask the gate (once per step count reached)
                if gate_fn is None or self.ask_gate(it, gate_fn, teacher) or self.target_iters >= cap:
                    break
                self.target_iters = min(self.target_iters + config.gate_chunk, cap)
                bar.total = self.target_iters
                bar.refresh()
            self.checkpoint(it)
        return it


def load_finished_stage(spec: StageSpec, sdir: Path, handoff: Handoff) -> StageResult:
    """The :class:`StageResult` of a stage finished before.

    Its weights are loaded into ``handoff``'s student and EMA; its ``losses`` are empty.
    """
    done = sdir / RESULT_FILE
    summary = runs.read_json_object(done)
    ckpt = runs.read_checkpoint(sdir, names=(runs.MODEL_FILE, runs.EMA_FILE))
    ckpt.load_into(handoff.student, runs.MODEL_FILE)
    ckpt.load_into(handoff.ema.module, runs.EMA_FILE)
    try:
        return StageResult(
            spec=spec,
            student=handoff.ema.module.eval(),
            model=handoff.student.eval(),
            teacher=handoff.teacher,
            iters=int(summary["iters"]),
            losses=torch.zeros(0),
            teacher_passes=int(summary["teacher_passes"]),
            gate=list(summary["gate"]),
            seconds=0.0,
            run_dir=sdir,
            resumed_from=int(summary["iters"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise runs.RunDirError(f"{done}: not a stage result ({e})") from None


def write_stage_result(res: StageResult, spec: StageSpec, sdir: Path) -> None:
    """``result.json``: marks the stage finished (a resumed ladder loads it instead of training)."""
    prev = runs.read_jsonl(sdir / runs.METRICS_FILE)
    losses = [r["loss"] for r in prev if "loss" in r]
    runs.atomic_write_json(
        sdir / RESULT_FILE,
        {
            "iters": res.iters,
            "teacher_passes": res.teacher_passes,
            "gate": res.gate,
            "final_loss": losses[-1] if losses else None,
            "stage": spec.to_dict(),
        },
    )

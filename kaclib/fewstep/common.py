"""What the few-step methods share: training fields, budget accounting, stage runs and the 1-step map.

Every method of :mod:`kaclib.fewstep` trains its student with the stage loop of
:func:`kaclib.distill.train_stage` (same Adam, learning-rate warm-up, gradient clipping, EMA with
warm-up, per-iteration seeding, checkpoints and bit-for-bit resume); a method only supplies its own
loss (the ``loss_fn`` hook) and, where its states are not forward-noised data, its own batches (the
``batch_fn`` hook).  The budget of a run is counted the way :class:`kaclib.distill.StageResult`
counts it:

* ``student_iters``: optimiser steps of the student, all stages together;
* ``teacher_passes``: network forward passes x samples of every FROZEN model used to make targets
  (a distilled teacher of a later stage included, as in a DistillKac ladder);
* ``flow_teacher_passes``: the share of ``teacher_passes`` spent on the original flow teacher.

A run directory holds ``config.json`` (``{"method", "fewstep": config.to_dict(), "path", ...}``)
and one sub-directory per stage with the files of :func:`kaclib.distill.train_stage` plus
``result.json``; a finished stage is loaded, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import runs
from ..accel import AccelConfig
from ..configs import JSONConfig
from ..distill import (
    RESULT_FILE,
    DistillConfig,
    StageResult,
    StageSpec,
    TeacherField,
    freeze,
    hand_off,
    load_finished_stage,
    train_stage,
    write_stage_result,
)
from ..solvers import NFE_PER_STEP, grid_times

__all__ = [
    "FewStepResult",
    "TrainFields",
    "grid_times",
    "one_step_map",
    "open_run_dir",
    "run_stage",
    "stage_config",
    "student_handoff",
    "teacher_evals_per_step",
]


@dataclass(frozen=True)
class TrainFields(JSONConfig):
    """Optimisation fields shared by every few-step config.

    They mean what they mean in :class:`kaclib.distill.DistillConfig` (which validates them).  ``lr`` is
    one value for every stage of a method; ``accel`` (:class:`kaclib.accel.AccelConfig`, left out of
    :meth:`to_dict` when default) the accelerator switches of the stage loop.
    """

    batch_size: int = 128
    lr: float = 3e-4
    grad_clip: float | None = 1.0
    ema_decay: float = 0.99
    ema_warmup: bool = True
    warmup_iters: int = 0
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self):
        object.__setattr__(self, "accel", AccelConfig.from_dict(self.accel))
        self.distill_config()  # validates the shared fields (one-line ValueError)

    def distill_config(self, ladder=(2, 1)) -> DistillConfig:
        """The :class:`DistillConfig` that :func:`kaclib.distill.train_stage` runs with.

        Forward states, online targets, no gate; ``ladder`` is informative only.
        """
        return DistillConfig(
            ladder=tuple(ladder),
            lr=self.lr,
            batch_size=self.batch_size,
            grad_clip=self.grad_clip,
            ema_decay=self.ema_decay,
            ema_warmup=self.ema_warmup,
            warmup_iters=self.warmup_iters,
            seed=self.seed,
            checkpoint_every=self.checkpoint_every,
            log_every=self.log_every,
            accel=self.accel,
        )

    @classmethod
    def from_dict(cls, d: dict):
        """The config of ``d`` (its fields checked by ``check_fields``; lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cls.check_fields(d).items()})

    def planned_budget(self, evals_per_step: int = 1) -> dict:
        """The budget a run of this config will spend, before running it (pure function).

        Returns ``{"student_iters", "teacher_passes", "flow_teacher_passes"}``; ``evals_per_step`` is
        the flow teacher's network passes per sample and solver step (``TeacherField``: 2 for midpoint,
        times 2 for a guided field; :func:`teacher_evals_per_step`).  Distilled intermediate teachers
        cost 1 pass per step.  Every method implements it; the run's :class:`FewStepResult` reports the
        same numbers.
        """
        raise NotImplementedError


def teacher_evals_per_step(teacher: TeacherField) -> int:
    """Network passes per sample of ONE solver step of ``teacher`` (evaluations x passes per evaluation)."""
    return NFE_PER_STEP[teacher.solver] * teacher.passes_per_eval()


def check_int(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


@dataclass(frozen=True)
class FewStepResult:
    """A finished few-step run.

    ``student``: the final EMA student (eval mode), sampled with ``student_steps`` Euler steps of
    size ``T / student_steps`` (:func:`one_step_map` for 1 step); ``stages``: the
    :class:`kaclib.distill.StageResult` of every training stage; ``student_iters``,
    ``teacher_passes``, ``flow_teacher_passes``: the budget (module docstring); ``extra``: method
    specifics (e.g. the reflow couplings' cost); ``seconds``: wall time of this call.
    """

    method: str
    config: object
    student: nn.Module
    student_steps: int
    stages: tuple
    student_iters: int
    teacher_passes: int
    flow_teacher_passes: int
    seconds: float
    run_dir: Path | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    def budget(self) -> dict:
        """``{"method", "student_iters", "teacher_passes", "flow_teacher_passes"}`` (JSON-ready)."""
        return {
            "method": self.method,
            "student_iters": self.student_iters,
            "teacher_passes": self.teacher_passes,
            "flow_teacher_passes": self.flow_teacher_passes,
        }


@torch.no_grad()
def one_step_map(student: nn.Module, x_T: torch.Tensor, T: float = 1.0, y=None) -> torch.Tensor:
    """The student's 1-step sample ``x_T - T u_phi(x_T, T, y)`` (one Euler step from ``T`` to 0)."""
    t = torch.full((x_T.shape[0],), float(T), dtype=x_T.dtype, device=x_T.device)
    return x_T - T * student(x_T, t, y)


def student_handoff(student: nn.Module, teacher: nn.Module, fields: TrainFields, device="cpu"):
    """A :class:`kaclib.distill.Handoff` from a trainable ``student`` to a frozen ``teacher``.

    The trainable student starts from ``student`` (a deep copy; fresh Adam (fused where ``fields.accel``
    says so on ``device``), fresh EMA, exactly :func:`kaclib.distill.hand_off`) and the frozen teacher
    is ``teacher`` (frozen in place).  With ``student is teacher`` this is ``hand_off(teacher)``.
    """
    same = student is teacher
    device = torch.device(device)
    accel = fields.accel.resolve(device)
    params = list(student.parameters())
    if (
        params and params[0].device != device
    ):  # the optimizer must hold the student's parameters on ``device``
        student = copy.deepcopy(student).to(device)
    handoff = hand_off(
        student, lr=fields.lr, ema_decay=fields.ema_decay, ema_warmup=fields.ema_warmup, accel=accel
    )
    return handoff if same else dataclasses.replace(handoff, teacher=freeze(teacher))


def stage_config(
    method: str, config: TrainFields, spec: StageSpec, path, info: dict | None, steps: int, w: float
) -> dict:
    """The ``config.json`` of one stage directory.

    It holds ``info`` (e.g. the teacher's ``"model"``, ``"dataset"``), the path, the method's config,
    the stage and a ``"distilled"`` section (the student samples with ``steps`` Euler steps, guidance
    weight ``w`` baked in).
    """
    return {
        **(info or {}),
        "path": path.config(),
        "method": method,
        "fewstep": config.to_dict(),
        "stage": spec.to_dict(),
        "distilled": {
            "steps": steps,
            "sampler": "euler",
            "w": w,
            "guidance_baked_in": True,
            "sample_w": 1.0,
            "method": method,
            "stage": spec.index,
        },
    }


def open_run_dir(run_dir, top: dict, resume: bool) -> Path:
    """Create (or, with ``resume``, re-open) a few-step run directory holding ``top`` as ``config.json``.

    A directory that already holds a run, without ``resume``: ``FileExistsError``.
    """
    run_dir = runs.check_run_path(run_dir)
    if (run_dir / runs.CONFIG_FILE).is_file() and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a few-step run: pass resume=True to continue it, "
            "or use another run directory"
        )
    with runs.writer(run_dir):
        runs.prepare_run_dir(run_dir, top, resume=True, rewrite=True)
    return run_dir


def run_stage(
    name: str,
    teacher: TeacherField,
    handoff,
    path,
    spec: StageSpec,
    config: TrainFields,
    data,
    labels,
    num_classes: int,
    *,
    run_dir: Path | None,
    run_config: dict,
    device="cpu",
    progress=False,
    callback: Callable | None = None,
    loss_fn=None,
    batch_fn=None,
) -> StageResult:
    """Train one stage with :func:`kaclib.distill.train_stage` (hooks ``loss_fn``/``batch_fn``).

    With ``run_dir`` it trains in ``run_dir/name``: a finished stage (``result.json``) is loaded, an
    interrupted one resumes from its checkpoint.
    """
    kw = dict(device=device, progress=progress, callback=callback, loss_fn=loss_fn, batch_fn=batch_fn)
    dcfg = config.distill_config(
        (spec.teacher_steps, spec.student_steps) if spec.teacher_steps > spec.student_steps else (2, 1)
    )
    if run_dir is None:
        return train_stage(teacher, handoff, path, spec, dcfg, data, labels, num_classes, **kw)
    sdir = run_dir / name
    with runs.writer(sdir):
        runs.prepare_run_dir(sdir, run_config, resume=True)
    if (sdir / RESULT_FILE).is_file():
        return load_finished_stage(spec, sdir, handoff)
    res = train_stage(
        teacher,
        handoff,
        path,
        spec,
        dcfg,
        data,
        labels,
        num_classes,
        run_dir=sdir,
        resume=True,
        run_config=run_config,
        **kw,
    )
    write_stage_result(res, spec, sdir)
    return res


def check_inputs(teacher, path, data, labels, num_classes):
    """Validate the common inputs of the ``run_*`` functions; returns ``(labels, num_classes)``.

    Labels default to zeros, ``num_classes`` to the teacher's or 1.
    """
    if not isinstance(teacher, TeacherField):
        raise ValueError(f"teacher must be a kaclib.distill.TeacherField, got {type(teacher).__name__}")
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError("data must be a (N, ...) tensor of training examples")
    if labels is None:
        labels = torch.zeros(data.shape[0], dtype=torch.long)
    num_classes = num_classes if num_classes is not None else (teacher.num_classes or 1)
    for name in ("T", "sample_latent", "config"):
        if not hasattr(path, name):
            raise ValueError(f"path must be a kaclib.paths path (it has no {name!r})")
    return labels, num_classes


def as_path(run_dir) -> Path | None:
    """``run_dir`` as a :class:`~pathlib.Path` (``None`` stays ``None``: a run without a directory)."""
    return Path(os.fspath(run_dir)) if run_dir is not None else None

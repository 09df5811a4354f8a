"""Teachers and the hand-off between stages.

* The first teacher is a flow-matching model sampled with the GUIDED velocity
  ``GuidedVelocity(teacher, w)`` (2 network passes per evaluation, batched) and the integrator
  ``teacher_solver`` (``euler``, ``ab2`` restarted in every interval with an Euler substep, or
  ``midpoint``).  The student learns ``y -> `` the guided field, so guidance is baked in: it samples
  with ONE network pass per step and no unconditional pass (``w = 1`` at sampling time).
* Later teachers are distilled students.  A distilled model is only meaningful as an Euler step of
  its own size at its own grid times, so it is always integrated with Euler on its own grid,
  unguided, called with the labels (``teacher_solver`` applies to the flow-matching teacher only).

At a ladder boundary :func:`hand_off` turns the finished student (its EMA weights) into the next
frozen teacher (:func:`freeze`) plus a fresh student copy with a fresh optimizer and a fresh EMA.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .. import accel as _accel
from ..accel import AccelConfig
from ..guidance import GuidedVelocity
from ..kac import check_finite_param
from ..solvers import SOLVERS


@dataclass
class TeacherField:
    """A frozen teacher and how it is integrated.

    ``guided=True`` (a flow-matching teacher): the velocity is ``GuidedVelocity(model, w,
    num_classes)`` integrated with ``solver``.  ``guided=False`` (a distilled student): the model
    itself, called with the labels, integrated with Euler on its own grid.
    """

    model: nn.Module
    guided: bool
    w: float = 1.0
    num_classes: int | None = None
    solver: str = "euler"

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not self.guided and self.solver != "euler":
            raise ValueError(
                "a distilled teacher is an Euler stepper on its own grid: its solver must be 'euler'"
            )
        if self.guided:
            if self.num_classes is None:
                raise ValueError("a guided teacher needs num_classes (the null label's index)")
            self.velocity = GuidedVelocity(self.model, self.w, self.num_classes)
        else:
            self.velocity = self.model

    def passes_per_eval(self) -> int:
        """Network passes per sample and evaluation (2 for a guided field with w not in {0, 1})."""
        return self.velocity.passes_per_call() if self.guided else 1


def freeze(model: nn.Module) -> nn.Module:
    """``eval()`` + ``requires_grad_(False)`` (in place); returns the model."""
    return model.eval().requires_grad_(False)


@dataclass
class Handoff:
    """What a stage starts from: teacher, student, optimizer and EMA.

    A frozen ``teacher``, a trainable ``student`` (a copy of the teacher), a fresh Adam
    ``optimizer`` and a fresh EMA ``ema`` of the student.
    """

    teacher: nn.Module
    student: nn.Module
    optimizer: torch.optim.Optimizer
    ema: AveragedModel


def _ema_avg_fn(decay: float, warmup: bool):
    """The EMA averaging function ``ema <- d ema + (1 - d) theta``.

    ``d = min(decay, (1 + n)/(10 + n))`` after ``n`` updates when ``warmup`` (else ``d = decay``):
    a short stage's EMA then averages its last iterations instead of keeping a share
    ``decay^iters`` of the initial weights (0.999^500 = 0.61).
    """

    def avg_fn(avg, cur, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        return avg * d + cur * (1.0 - d)

    return avg_fn


def hand_off(
    model: nn.Module,
    lr: float = 3e-4,
    ema_decay: float = 0.99,
    ema_warmup: bool = True,
    accel: AccelConfig | None = None,
) -> Handoff:
    """The one place where a model becomes a teacher.

    It makes a frozen deep copy of ``model`` (``eval()``, ``requires_grad_(False)``) the teacher, a
    second deep copy the trainable student, with a fresh Adam optimizer on the student and a fresh
    EMA of it (first update copies; see :func:`_ema_avg_fn` for ``ema_warmup``).

    ``model`` itself is left untouched.  At a ladder boundary ``model`` is the finished stage's
    EMA student; the first stage hands off the flow-matching teacher.  ``accel``: the optimizer is
    fused Adam when it says so (resolved on ``model``'s device; ``None``: plain Adam).
    """
    lr = check_finite_param("lr", lr, positive=True)
    teacher = freeze(copy.deepcopy(model))
    student = copy.deepcopy(model).train().requires_grad_(True)
    params = list(student.parameters())
    optimizer = _accel.make_optimizer(params, lr, accel, params[0].device if params else "cpu")
    ema = AveragedModel(
        student, avg_fn=_ema_avg_fn(check_finite_param("ema_decay", ema_decay, nonneg=True), ema_warmup)
    )
    return Handoff(teacher=teacher, student=student, optimizer=optimizer, ema=ema)

"""Progressive distillation (Salimans & Ho 2022) in this project's velocity parameterisation.

Progressive distillation (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion
Models", ICLR 2022, arXiv:2202.00512), in the velocity parameterisation of this project.

A halving ladder ``S -> S/2 -> ... -> 1`` (:func:`progressive_schedule`).  In every stage the
student's ONE step of size ``Delta = T/M`` must match TWO steps of its teacher of size ``Delta/2``
(the flow teacher integrated with its solver in the first stage, then the previous student with
Euler on its own grid).  For a state ``x`` at ``t_k`` the target is the teacher's average velocity
over the interval (:func:`progressive_target`)::

    x_mid = Phi_teacher(x; t_k -> t_k - Delta/2),   x_end = Phi_teacher(x_mid; -> t_{k+1})
    u_target = (x - x_end) / Delta
    loss = mean || u_phi(x, t_k, y) - u_target ||^2                        (ProgressiveLoss)

This is Salimans & Ho's Algorithm 2 with their ``x``-space target replaced by the velocity target
of a flow (a flow's Euler step is deterministic, like their DDIM step); their "truncated SNR"
weighting has no counterpart for a velocity loss and is left out.  Each stage's student starts
from its teacher's weights (their Algorithm 2, and :func:`kaclib.distill.hand_off`).

In a flow parameterisation this loss equals DistillKac's :class:`kaclib.distill.EndpointLoss` at
two substeps (``(pred - x_end)/Delta = u_target - u_phi``): progressive distillation IS the
DistillKac ladder with halving steps; what differs between the two is the schedule (many short
halving stages against few long stages).  Both are kept so that the benchmark compares them at the
same budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..distill import StageSpec, TeacherField, segment_endpoint
from .common import (
    FewStepResult,
    TrainFields,
    as_path,
    check_inputs,
    check_int,
    grid_times,
    open_run_dir,
    run_stage,
    stage_config,
    student_handoff,
)

__all__ = [
    "ProgressiveConfig",
    "ProgressiveLoss",
    "progressive_schedule",
    "progressive_target",
    "run_progressive",
]

METHOD = "progressive"


def progressive_schedule(
    start_steps: int = 64, end_steps: int = 1, iters=500, lr: float = 3e-4
) -> list[StageSpec]:
    """The halving stages ``start_steps -> start_steps/2 -> ... -> end_steps`` (pure function).

    ``start_steps / end_steps`` must be a power of two >= 2; ``iters`` is one int for every stage or
    one per stage.  Every stage has ``substeps = 2``.
    """
    check_int("start_steps", start_steps, 2)
    check_int("end_steps", end_steps, 1)
    ratio = start_steps // end_steps
    if start_steps % end_steps or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"start_steps / end_steps must be a power of two >= 2, got {start_steps} / {end_steps}"
        )
    n = ratio.bit_length() - 1
    if isinstance(iters, (list, tuple)):
        if len(iters) != n:
            raise ValueError(f"iters has {len(iters)} entries but the halving ladder has {n} stages")
        iters_t = tuple(check_int("iters", v, 0) for v in iters)
    else:
        iters_t = (check_int("iters", iters, 0),) * n
    return [
        StageSpec(
            index=i + 1,
            teacher_steps=start_steps >> i,
            student_steps=start_steps >> (i + 1),
            substeps=2,
            lr=float(lr),
            iters=iters_t[i],
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class ProgressiveConfig(TrainFields):
    """A progressive-distillation run (JSON round trip ``to_dict``/``from_dict``).

    ``start_steps``/``end_steps``/``iters``: :func:`progressive_schedule`; ``iters`` per stage (an
    int for all or a tuple).  The optimisation fields are those of :class:`TrainFields`.
    """

    start_steps: int = 64
    end_steps: int = 1
    iters: int | tuple = 500

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.iters, list):
            object.__setattr__(self, "iters", tuple(self.iters))
        self.stages()

    def stages(self) -> list[StageSpec]:
        """The stage schedule of this run."""
        return progressive_schedule(self.start_steps, self.end_steps, self.iters, self.lr)

    @property
    def total_iters(self) -> int:
        """Student iterations over all stages."""
        return sum(s.iters for s in self.stages())

    def planned_budget(self, evals_per_step: int = 1) -> dict:
        """Planned evaluation budget of the whole schedule.

        Stage 1: ``iters * batch_size * 2`` flow-teacher steps; later stages ``* 2`` Euler steps of
        the previous student (1 pass each).  See :meth:`TrainFields.planned_budget`.
        """
        specs = self.stages()
        flow = specs[0].iters * self.batch_size * 2 * check_int("evals_per_step", evals_per_step, 1)
        later = sum(s.iters * self.batch_size * 2 for s in specs[1:])
        return {
            "student_iters": self.total_iters,
            "teacher_passes": flow + later,
            "flow_teacher_passes": flow,
        }


@torch.no_grad()
def progressive_target(
    velocity, x: torch.Tensor, k: torch.Tensor, y, student_steps: int, T: float = 1.0, method: str = "euler"
) -> torch.Tensor:
    """The teacher's average velocity over one student step (two half steps).

    The teacher's average velocity ``(x - x_end)/Delta`` over student step ``k``, ``x_end`` two
    teacher steps of size ``Delta/2`` (:func:`kaclib.distill.segment_endpoint` with 2 substeps).
    """
    end = segment_endpoint(velocity, x, k, y, student_steps, 2, T, method)
    return (x - end) * (student_steps / T)


@dataclass(frozen=True)
class ProgressiveLoss:
    """Progressive distillation's loss: student velocity against the two-half-step target.

    ``mean || u_phi(x, t_k, y) - (x - x_end)/Delta ||^2`` for ``target = x_end``, the teacher's end
    point after two half steps (a callable in the style of :class:`kaclib.distill.EndpointLoss`).
    """

    student_steps: int
    T: float = 1.0

    def __call__(
        self, student: nn.Module, x: torch.Tensor, k: torch.Tensor, y, target: torch.Tensor
    ) -> torch.Tensor:
        """Loss of ``student`` on a batch at grid indices ``k``."""
        t = grid_times(k.to(x.device), self.student_steps, self.T, x.dtype)
        u_target = (x - target) * (self.student_steps / self.T)
        return torch.mean((student(x, t, y).to(target.dtype) - u_target) ** 2)


def _stage_teacher(first: TeacherField, model: nn.Module, index: int) -> TeacherField:
    if index == 1:
        return first
    return TeacherField(model, guided=False, num_classes=first.num_classes, solver="euler")


def run_progressive(
    teacher: TeacherField,
    path,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    config: ProgressiveConfig | None = None,
    *,
    student: nn.Module | None = None,
    num_classes: int | None = None,
    run_dir=None,
    resume: bool = False,
    info: dict | None = None,
    device="cpu",
    progress: bool = False,
    callback=None,
) -> FewStepResult:
    """Progressive distillation of ``teacher`` down the halving ladder of ``config``.

    ``teacher``: the flow teacher as a :class:`kaclib.distill.TeacherField` (its solver integrates
    the first stage's half steps); ``data``/``labels``: training examples for forward-noised
    states; ``student``: the first student's initial network (default: the teacher's own model, as
    in the paper); ``run_dir``: checkpoints and ``config.json`` (``info`` is merged into it);
    ``resume``: continue a run directory.  Returns a :class:`FewStepResult` whose ``student``
    samples with ``config.end_steps`` Euler steps.
    """
    config = config or ProgressiveConfig()
    if not isinstance(config, ProgressiveConfig):
        raise ValueError(f"config must be a ProgressiveConfig, got {type(config).__name__}")
    labels, num_classes = check_inputs(teacher, path, data, labels, num_classes)
    t0 = time.perf_counter()
    run_dir = as_path(run_dir)
    if run_dir is not None:
        open_run_dir(
            run_dir,
            {**(info or {}), "method": METHOD, "fewstep": config.to_dict(), "path": path.config()},
            resume,
        )
    current, stages = student if student is not None else teacher.model, []
    flow_passes = 0
    for spec in config.stages():
        handoff = student_handoff(current, teacher.model if spec.index == 1 else current, config, device)
        stage_teacher = _stage_teacher(teacher, handoff.teacher, spec.index)
        run_config = stage_config(
            METHOD, config, spec, path, info, spec.student_steps, teacher.w if teacher.guided else 1.0
        )
        res = run_stage(
            f"stage-{spec.index}-{spec.student_steps}steps",
            stage_teacher,
            handoff,
            path,
            spec,
            config,
            data,
            labels,
            num_classes,
            run_dir=run_dir,
            run_config=run_config,
            device=device,
            progress=progress,
            callback=callback,
            loss_fn=ProgressiveLoss(spec.student_steps, float(path.T)),
        )
        if spec.index == 1:
            flow_passes = res.teacher_passes
        stages.append(res)
        current = res.student
    return FewStepResult(
        method=METHOD,
        config=config,
        student=current,
        student_steps=config.end_steps,
        stages=tuple(stages),
        student_iters=sum(s.iters for s in stages),
        teacher_passes=sum(s.teacher_passes for s in stages),
        flow_teacher_passes=flow_passes,
        seconds=time.perf_counter() - t0,
        run_dir=run_dir,
    )

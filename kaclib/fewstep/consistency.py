"""Consistency distillation (Song et al. 2023), with the flow teacher as the ODE solver.

The method is Algorithm 2 of Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023,
arXiv:2303.01469.

Parameterisation.  The consistency function is built from a velocity network ``u_phi``::

    f_phi(x, t) = x - t u_phi(x, t, y)

so ``f_phi(x, 0) = x`` EXACTLY for every network (the boundary condition of Song et al., here
with ``c_skip = 1``, ``c_out = -t``), and ``f_phi(x_T, T)`` is one Euler step of size ``T`` from
``T`` to 0: the distilled 1-step sampler is the student's 1-step Euler map, as for every method of
:mod:`kaclib.fewstep`.

Loss.  On the grid ``t_n = T (N - n)/N`` (``n = 0..N``, sampling from ``t_0 = T`` to ``t_N = 0``)
with a state ``x`` at ``t_n`` (forward-noised data, ``n`` uniform in ``0..N-1``)::

    x_hat = Phi_teacher(x; t_n -> t_{n+1})         ONE teacher step (its solver), no_grad
    loss  = mean || f_phi(x, t_n) - f_{phi^-}(x_hat, t_{n+1}) ||^2 / Delta^2,   Delta = T/N

``phi^-`` is the target network: the EMA of the student that :func:`kaclib.distill.train_stage`
keeps anyway (``torch.optim.swa_utils.AveragedModel``, decay ``ema_decay`` with warm-up); it is
also the student that is saved, as in the paper's CD with ``mu = ema_decay``.  The distance is the
squared L2 (the paper's ``d = l2``; LPIPS is not used at this scale).  Dividing by the constant
``Delta^2`` does not move the minimiser; it puts the loss on the velocity scale of
:class:`kaclib.distill.EndpointLoss`.  In the project's index convention ``t_n`` is the HIGHER time
of the pair (Song et al.'s ``t_{n+1}``).

Sampling.  One step is the student's Euler map; :func:`consistency_sample` is the paper's
multistep consistency sampling (Algorithm 1): ``x <- f(x_T, T)``, then for each lower grid time
``t_k`` re-noise ``x`` to ``t_k`` with the PATH's own forward law (``path.sample(x, t_k)``: Kac
noise for a Kac teacher) and map back, ``x <- f(x_{t_k}, t_k)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..distill import StageSpec, TeacherField
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
    "ConsistencyConfig",
    "ConsistencyLoss",
    "consistency_fn",
    "consistency_sample",
    "consistency_spec",
    "run_consistency",
]

METHOD = "consistency"


@dataclass(frozen=True)
class ConsistencyConfig(TrainFields):
    """The settings of a consistency-distillation run.

    ``N`` discretisation steps of ``[0, T]``, ``iters`` student iterations; ``ema_decay`` is the
    target network's ``mu``.  Other fields: :class:`TrainFields`.
    """

    N: int = 18
    iters: int = 2000

    def __post_init__(self):
        super().__post_init__()
        check_int("N", self.N, 1)
        check_int("iters", self.iters, 0)

    @property
    def total_iters(self) -> int:
        """Student iterations of the whole run: ``iters`` (one stage)."""
        return self.iters

    def planned_budget(self, evals_per_step: int = 1) -> dict:
        """``iters * batch_size`` single flow-teacher steps (:meth:`TrainFields.planned_budget`)."""
        flow = self.iters * self.batch_size * check_int("evals_per_step", evals_per_step, 1)
        return {"student_iters": self.iters, "teacher_passes": flow, "flow_teacher_passes": flow}


def consistency_spec(config: ConsistencyConfig) -> StageSpec:
    """The single stage: ``N`` grid intervals, ONE teacher step per interval."""
    return StageSpec(
        index=1, teacher_steps=config.N, student_steps=config.N, substeps=1, lr=config.lr, iters=config.iters
    )


def consistency_fn(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
    """``f(x, t) = x - t u(x, t, y)`` (``t`` a ``(B,)`` tensor); ``f(x, 0) = x`` exactly."""
    return x - t.reshape(t.shape + (1,) * (x.ndim - 1)).to(x.dtype) * model(x, t, y)


@torch.no_grad()
def consistency_sample(
    model: nn.Module, path, x_T: torch.Tensor, steps: int, y=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

    On the grid ``t_k = T (steps - k)/steps``: ``x = f(x_T, T)``; for ``k = 1 .. steps - 1``:
    ``x = f(path.sample(x, t_k).x_t, t_k)``.  ``steps = 1`` is :func:`kaclib.fewstep.one_step_map`;
    ``generator`` draws the re-noising (the path's forward law).
    """
    steps = check_int("steps", steps, 1)
    T = float(path.T)
    was = model.training
    model.eval()
    try:
        n = x_T.shape[0]
        x = consistency_fn(model, x_T, torch.full((n,), T, dtype=x_T.dtype, device=x_T.device), y)
        for k in range(1, steps):
            t = torch.full((n,), T * (steps - k) / steps, dtype=x_T.dtype, device=x_T.device)
            x = consistency_fn(model, path.sample(x, t, generator=generator).x_t, t, y)
    finally:
        model.train(was)
    return x


@dataclass(frozen=True)
class ConsistencyLoss:
    """The consistency-distillation loss (module docstring) for ``target = x_hat``.

    ``x_hat`` is one teacher step from ``x`` at ``t_k`` to ``t_{k+1}``; ``target_net`` is ``phi^-``
    (the EMA module, updated in place by the stage loop; evaluated without gradients).
    """

    N: int
    target_net: nn.Module
    T: float = 1.0

    def __call__(
        self, student: nn.Module, x: torch.Tensor, k: torch.Tensor, y, target: torch.Tensor
    ) -> torch.Tensor:
        """The loss of a batch ``x`` at grid index ``k`` against its teacher step ``target``."""
        k = k.to(x.device)
        t_hi = grid_times(k, self.N, self.T, x.dtype)
        t_lo = grid_times(k + 1, self.N, self.T, x.dtype)
        with torch.no_grad():
            was = self.target_net.training
            f_minus = consistency_fn(self.target_net.eval(), target, t_lo, y)
            self.target_net.train(was)
        f = consistency_fn(student, x, t_hi, y)
        return torch.mean((f.to(target.dtype) - f_minus.to(target.dtype)) ** 2) * (self.N / self.T) ** 2


def run_consistency(
    teacher: TeacherField,
    path,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    config: ConsistencyConfig | None = None,
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
    """Consistency distillation of ``teacher`` (one stage, ``config.N`` intervals).

    Arguments as :func:`kaclib.fewstep.run_progressive`; the student (default: a copy of the
    teacher's model, as in the paper) samples with ONE Euler step: ``f_phi(x_T, T)``.
    """
    config = config or ConsistencyConfig()
    if not isinstance(config, ConsistencyConfig):
        raise ValueError(f"config must be a ConsistencyConfig, got {type(config).__name__}")
    labels, num_classes = check_inputs(teacher, path, data, labels, num_classes)
    t0 = time.perf_counter()
    run_dir = as_path(run_dir)
    if run_dir is not None:
        open_run_dir(
            run_dir,
            {**(info or {}), "method": METHOD, "fewstep": config.to_dict(), "path": path.config()},
            resume,
        )
    spec = consistency_spec(config)
    handoff = student_handoff(
        student if student is not None else teacher.model, teacher.model, config, device
    )
    loss = ConsistencyLoss(config.N, handoff.ema.module, float(path.T))
    run_config = stage_config(METHOD, config, spec, path, info, 1, teacher.w if teacher.guided else 1.0)
    res = run_stage(
        "stage-1-consistency",
        teacher,
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
        loss_fn=loss,
    )
    return FewStepResult(
        method=METHOD,
        config=config,
        student=res.student,
        student_steps=1,
        stages=(res,),
        student_iters=res.iters,
        teacher_passes=res.teacher_passes,
        flow_teacher_passes=res.teacher_passes,
        seconds=time.perf_counter() - t0,
        run_dir=run_dir,
    )

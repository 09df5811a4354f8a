"""The two end points of one stage (DistillKac's endpoint-only loss).

A stage turns a teacher that is sampled with ``S = M N`` steps into a student sampled with ``M``
Euler steps.  The student grid is ``t_k = T (M - k)/M``, ``Delta = T/M``; the teacher's grid is
``T (S - i)/S`` (exactly :func:`kaclib.solvers.time_grid`), so student step ``k`` covers teacher
steps ``k N .. k N + N - 1``.  For a state ``x`` at ``t_k`` with label ``y``::

    target = Phi_teacher^N(x; t_k -> t_{k+1}, y)          N teacher substeps, no_grad, eval()
    pred   = x - Delta * u_phi(x, t_k, y)                  ONE student Euler step
    loss   = mean ||pred - target||^2 / Delta^2

Only the two end points are compared; nothing between them is supervised.  Dividing by the
constant ``Delta^2`` does not move the minimiser; it puts the loss (and the gradient norm that
``grad_clip`` acts on) on the velocity scale of teacher training, whatever the stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..solvers import NFE_PER_STEP, SOLVERS, grid_times, step


@torch.no_grad()
def segment_endpoint(
    velocity,
    x: torch.Tensor,
    k: torch.Tensor,
    y: torch.Tensor | None,
    student_steps: int,
    substeps: int,
    T: float = 1.0,
    method: str = "euler",
    return_path: bool = False,
):
    """Integrate ``dx/dt = velocity(x, t, y)`` from ``t_k`` to ``t_{k+1}`` of the student grid.

    It takes ``substeps`` steps of ``method``; ``t_k`` is on the ``student_steps`` grid (per-sample
    ``k``, a ``(B,)`` int tensor).

    The substeps lie on the ``student_steps * substeps`` teacher grid; AB-2 restarts in every
    interval with an Euler substep; midpoint evaluates at the half-substep times.  Runs under
    ``no_grad``.  ``return_path=True`` returns ``(end, path)``, ``path`` the ``(substeps + 1, *x.shape)``
    states at the substep times ``t_k, t_k - h, ..., t_{k+1}`` (``path[0] = x``, ``path[-1] = end``).
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    S = student_steps * substeps
    h = T / S
    i0 = k.to(x.device) * substeps
    u_prev = None
    states = [x] if return_path else None
    for j in range(substeps):
        t = grid_times(i0 + j, S, T, x.dtype)
        t_mid = None
        if method == "midpoint":
            t_mid = (T * (S - (i0 + j).to(torch.float64) - 0.5) / S).to(x.dtype)
        x, u_prev = step(velocity, x, t, h, y, method, u_prev, t_mid)
        if states is not None:
            states.append(x)
    return (x, torch.stack(states)) if return_path else x


def student_step(
    student: nn.Module, x: torch.Tensor, k: torch.Tensor, y, student_steps: int, T: float = 1.0
) -> torch.Tensor:
    """The student's one Euler step ``x - Delta u_phi(x, t_k, y)`` (with gradients)."""
    t = grid_times(k.to(x.device), student_steps, T, x.dtype)
    return x - (T / student_steps) * student(x, t, y)


@dataclass(frozen=True)
class EndpointLoss:
    """The endpoint-only distillation loss of one stage (DistillKac).

    A callable in the manner of EDM's losses:
    ``(1 / Delta^2) E || x_k - Delta u_phi(x_k, t_k, y) - target ||^2``, ``target`` the frozen
    teacher's end point of its ``N`` substeps from ``t_k`` to ``t_{k+1}`` (:func:`segment_endpoint`)
    and ``Delta = T / student_steps``.  Dividing by ``Delta^2`` makes it the squared error of the
    student's *velocity* against the teacher's average velocity over the interval, so its scale
    does not depend on the stage.
    """

    student_steps: int
    T: float = 1.0

    def __call__(
        self, student: nn.Module, x: torch.Tensor, k: torch.Tensor, y, target: torch.Tensor
    ) -> torch.Tensor:
        """The student's loss at states ``x``, steps ``k``, against the teacher's ``target``."""
        delta = self.T / self.student_steps
        pred = student_step(student, x, k, y, self.student_steps, self.T)
        return torch.mean((pred.to(target.dtype) - target) ** 2) / delta**2


def _evals_per_substep(method: str) -> int:
    return NFE_PER_STEP[method]

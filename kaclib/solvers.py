"""Fixed-step ODE samplers from noise (``t = T``) down to data (``t = 0``).

The sampling ODE is ``dx/dt = u(x, t)`` integrated backwards in time on the uniform grid
``t_k = T - k h``, ``h = T / S``, ``k = 0..S``:

* Euler (1 evaluation per step):       ``x_{k+1} = x_k - h u(x_k, t_k)``
* midpoint (explicit RK2, 2 per step): ``x_{k+1} = x_k - h u(x_k - (h/2) u(x_k, t_k), t_k - h/2)``
* AB-2 (Adams-Bashforth, 1 per step):  ``x_{k+1} = x_k - h (3/2 u_k - 1/2 u_{k-1})``,
  ``u_k = u(x_k, t_k)``, with an Euler first step.

Euler has global order 1, midpoint and AB-2 order 2.  ``nfe`` counts right-hand-side evaluations;
``network_passes`` counts forward passes per sample (a batched guided field costs 2 per evaluation,
see :class:`kaclib.guidance.GuidedVelocity`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .accel import velocity_fn

__all__ = [
    "SOLVERS",
    "NFE_PER_STEP",
    "SampleResult",
    "grid_times",
    "nfe_for",
    "passes_per_call",
    "sample",
    "step",
    "time_grid",
]

SOLVERS = ("euler", "midpoint", "ab2")
NFE_PER_STEP = {"euler": 1, "midpoint": 2, "ab2": 1}

Velocity = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class SampleResult:
    """Output of :func:`sample`.

    ``x``: the final state at ``t = 0``; ``steps``: solver steps; ``nfe``: right-hand-side
    evaluations; ``network_passes``: network forward passes per sample; ``times``: the grid
    ``(steps + 1,)`` from ``T`` to 0 (float64); ``trajectory``: ``(steps + 1, *x.shape)`` states
    including ``x_T`` (only with ``return_trajectory=True``), else ``None``.
    """

    x: torch.Tensor
    steps: int
    nfe: int
    network_passes: int
    times: torch.Tensor
    method: str
    trajectory: torch.Tensor | None = None


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return steps


def _check_method(method) -> str:
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    return method


def nfe_for(method: str, steps: int) -> int:
    """Right-hand-side evaluations of ``steps`` steps of ``method``."""
    return NFE_PER_STEP[_check_method(method)] * _check_steps(steps)


def time_grid(steps: int, T: float = 1.0) -> torch.Tensor:
    """``t_k = T (1 - k/steps)``, ``k = 0..steps`` in float64 (exactly ``T`` first and 0 last)."""
    steps = _check_steps(steps)
    k = torch.arange(steps + 1, dtype=torch.float64)
    return T * (steps - k) / steps


def grid_times(index: torch.Tensor, steps: int, T: float, dtype) -> torch.Tensor:
    """Entries ``index`` of :func:`time_grid`, one time per sample.

    ``T (steps - index)/steps``, computed in float64 and cast to ``dtype``: the times a stage's
    student or a teacher substep sees.
    """
    return (T * (steps - index.to(torch.float64)) / steps).to(dtype)


def passes_per_call(velocity, t: torch.Tensor | None = None) -> int:
    """Network forward passes per sample that one call of ``velocity`` costs.

    What the velocity reports itself (``velocity.passes_per_call(t)``, e.g. a guided field's 2),
    else 1 (a bare model or a plain function).  The solver counts passes this way and knows nothing
    else of guidance.
    """
    fn = getattr(velocity, "passes_per_call", None)
    return int(fn(t)) if callable(fn) else 1


def step(velocity, x: torch.Tensor, t: torch.Tensor, h: float, y, method: str, u_prev=None, t_mid=None):
    """One step of ``method`` from time ``t`` down to ``t - h``.

    These are the step rules every integration of the library uses (:func:`sample` and the teacher's
    segments of :mod:`kaclib.distill`).

    ``t`` (and, for midpoint, ``t_mid``, the half-step time) are ``(B,)`` tensors computed by the
    caller on its own grid.  AB-2 takes ``u_prev``, the velocity of the previous step (``None``:
    an Euler start).  Returns ``(x_next, u)``, ``u`` the velocity at ``(x, t)`` for AB-2's next step
    (``None`` for the other methods).
    """
    if method == "euler":
        return x - h * velocity(x, t, y), None
    if method == "midpoint":
        x_mid = x - (0.5 * h) * velocity(x, t, y)
        return x - h * velocity(x_mid, t_mid, y), None
    u = velocity(x, t, y)
    return (x - h * u if u_prev is None else x - h * (1.5 * u - 0.5 * u_prev)), u


@torch.no_grad()
def sample(
    velocity: Velocity,
    x_T: torch.Tensor,
    steps: int,
    method: str = "euler",
    T: float = 1.0,
    y: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    accel=None,
) -> SampleResult:
    """Integrate ``dx/dt = velocity(x, t, y)`` from ``x_T`` at ``t = T`` down to ``t = 0``.

    ``velocity`` is called with ``t`` a ``(B,)`` tensor of ``x_T``'s dtype and device.  Runs under
    ``torch.no_grad()``.  Deterministic (no randomness is drawn here).  ``accel`` (a
    :class:`kaclib.accel.AccelConfig`, resolved on ``x_T``'s device) runs ``velocity`` under bf16
    autocast / channels-last inputs when it asks for them; the state stays in ``x_T``'s dtype.
    ``None``: ``velocity`` is called as it is.
    """
    steps = _check_steps(steps)
    method = _check_method(method)
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 1:
        raise ValueError("x_T must be a tensor of shape (B, ...)")
    if not x_T.is_floating_point():
        raise ValueError(f"x_T must be floating point, got {x_T.dtype}")
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"T must be a real number, got {T!r}") from None
    if not math.isfinite(T) or T <= 0:
        raise ValueError(f"T must be finite and > 0, got {T!r}")
    B = x_T.shape[0]
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (B,)):
        raise ValueError(f"y must be None or a ({B},) tensor, got {getattr(y, 'shape', y)!r}")

    times = time_grid(steps, T)
    h = T / steps
    counters = {"nfe": 0, "passes": 0}
    field = velocity_fn(velocity, accel, x_T.device)

    def u(x: torch.Tensor, tt: torch.Tensor, y) -> torch.Tensor:
        counters["nfe"] += 1
        counters["passes"] += passes_per_call(velocity, tt)
        return field(x, tt, y)

    def full(t: float) -> torch.Tensor:
        return torch.full((B,), t, dtype=x_T.dtype, device=x_T.device)

    x = x_T
    traj = [x_T] if return_trajectory else None
    u_prev = None
    for k in tqdm(range(steps), disable=not progress, desc=f"{method} sampling", leave=False):
        t_k = float(times[k])
        t_mid = full(t_k - 0.5 * h) if method == "midpoint" else None
        x, u_prev = step(u, x, full(t_k), h, y, method, u_prev, t_mid)
        if traj is not None:
            traj.append(x)
    return SampleResult(
        x=x,
        steps=steps,
        nfe=counters["nfe"],
        network_passes=counters["passes"],
        times=times,
        method=method,
        trajectory=torch.stack(traj) if traj is not None else None,
    )

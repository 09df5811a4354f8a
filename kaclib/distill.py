"""Endpoint-only distillation (DistillKac): the 100 -> 20 -> 4 -> 2 -> 1 ladder.

One stage
---------
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

* The first teacher is a flow-matching model sampled with the GUIDED velocity
  ``GuidedVelocity(teacher, w)`` (2 network passes per evaluation, batched) and the integrator
  ``teacher_solver`` (``euler``, ``ab2`` restarted in every interval with an Euler substep, or
  ``midpoint``).  The student learns ``y -> `` the guided field, so guidance is baked in: it samples
  with ONE network pass per step and no unconditional pass (``w = 1`` at sampling time).
* Later teachers are distilled students.  A distilled model is only meaningful as an Euler step of
  its own size at its own grid times, so it is always integrated with Euler on its own grid,
  unguided, called with the labels (``teacher_solver`` applies to the flow-matching teacher only).

States (``states``): ``"forward"`` draws ``x = path.sample(x0, t_k).x_t`` from training data at a
uniform student grid index ``k``; ``"rollout"`` uses the teacher's own trajectories from the latent
``x_T`` (the states the sampler will actually visit).  Targets (``targets``): ``"online"`` computes
the teacher end points for every batch (``N`` teacher evaluations per sample and iteration);
``"pool"`` computes ``pool_size`` tuples ``(state, k, label, end point)`` once per stage (saved as
``pool.safetensors`` in the stage directory) and every batch reads from it.  Online roll-outs are a
population of ``batch_size`` teacher trajectories at staggered grid positions: every iteration
advances each by one student interval (its new state is that interval's target) and a trajectory
that reaches ``t = 0`` restarts from fresh noise with a fresh label, so roll-out states cost the
same ``N`` evaluations per sample as forward states.

The ladder
----------
:func:`ladder_schedule` turns a ladder of step counts into :class:`StageSpec` s; consecutive counts
must divide (``N = ladder[i] / ladder[i+1]``).  At a boundary :func:`hand_off` turns the finished
student (its EMA weights) into the next frozen teacher plus a fresh student copy with a fresh
optimizer and a fresh EMA.  A single stage ``100 -> 1`` is the ladder ``(100, 1)``.

:func:`run_ladder` writes ``run_dir/config.json`` and, per stage,
``run_dir/stage-<i>-<M>steps/`` with ``config.json`` (``"model"`` and ``"path"`` so that
:func:`kaclib.train.load_run` opens it, plus a ``"distilled"`` section: ``steps``, ``sampler``
(``"euler"``), ``w`` (the guidance weight BAKED IN; sample with ``sample_w = 1``), ``teacher``),
``model.safetensors``, ``ema.safetensors`` (the student), ``state.pt``, ``metrics.jsonl`` and
``result.json`` once the stage is finished.  Every random draw of iteration ``j`` of stage ``i``
comes from generators seeded with ``step_seed(seed, i, j, stream)``; together with the checkpointed
optimizer, EMA and roll-out population an interrupted ladder resumes bit for bit (on CPU).

Defaults, and why (measured on 8x8 digits, ``benchmarks/ladder.py``)
----------------------------------------------------------------------
* ``teacher_solver="ab2"``: at the same cost as Euler, its end point over a 100 -> 20 interval
  (``N = 5``) is about 2x closer to a 16x finer midpoint reference (relative error 0.37% against
  0.84% of the interval's displacement); midpoint is closer still but costs 2 evaluations.
* ``ema_decay=0.99`` with ``ema_warmup``: a stage is short (hundreds of iterations).  An EMA of
  0.999 started at the teacher's weights still holds ``0.999^500 = 61%`` of them after 500
  iterations: the saved student is a weight-space blend of teacher and trained student, which
  scored WORSE than both (a 20-step student worse than the teacher at 20 steps, a 4-step student
  worse than its teacher at 4 steps) and was handed on down the ladder.  This, not the clock
  ``g = t^2``, reproduced a prototype's "ladder breaks at 20 -> 4" (see ``ema_study`` in
  ``benchmarks/results/ladder.json``).
* ``states="forward"``, ``targets="online"``: students trained on forward-noised states had
  per-time end-point errors on the teacher's own roll-out states of the same size as on forward
  states (ratios 0.9-1.6, ``g = t^2`` study), so the state distribution was not what limited them;
  forward states need no teacher roll-out.  (A student TRAINED on roll-outs was not compared at
  scale for lack of CPU time.)  Pools trade teacher compute for reuse (the single-stage
  100 -> 1 student needs one: 100 guided substeps per sample and iteration).

Quality gate (``gate=True``): after a stage's budget the student (``M`` Euler steps) and its
teacher sampled with ``M`` steps (the flow teacher guided with ``gate_solver``; a distilled teacher
with Euler) are scored on ``gate_n`` samples with :class:`kaclib.evaluation.Evaluator`; while the
student's FID is worse than ``(1 + gate_tol)`` times the teacher's, training continues in chunks of
``gate_chunk`` iterations, at most ``gate_max_extra`` extra iterations.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import accel as _accel
from . import runs
from .accel import AccelConfig
from .guidance import GuidedVelocity, check_guidance_weight
from .kac import check_finite_param
from .solvers import SOLVERS
from .train import _EpochOrder, batch_indices, load_checkpoint_into, step_seed

__all__ = [
    "StageSpec",
    "DistillConfig",
    "Handoff",
    "TeacherField",
    "StageResult",
    "LadderResult",
    "ladder_schedule",
    "check_ladder",
    "hand_off",
    "segment_endpoint",
    "student_step",
    "EndpointLoss",
    "train_stage",
    "run_ladder",
    "load_ladder",
    "config_for_profile",
    "stage_dir_name",
    "ladder_cache_dir",
    "STATES",
    "TARGETS",
]

STATES = ("forward", "rollout")
TARGETS = ("online", "pool")
RESULT_FILE = "result.json"
POOL_FILE = "pool.safetensors"
MAX_BATCH = 16384  # as kaclib.train.MAX_BATCH
MAX_POOL = 10**6  # a 10^6-tuple CIFAR-10 pool already holds 23 GiB
MUTABLE_FIELDS = ("distill.checkpoint_every", "distill.log_every") + tuple(
    f"distill.accel.{k}" for k in _accel.MUTABLE_ON_RESUME
)

# generator streams of step_seed(seed, stage, iteration, stream)
_S_BATCH, _S_GLOBAL, _S_POOL, _S_WALKERS, _S_ORDER = 0, 1, 2, 3, 4
_POOL_ITER = -2  # "iteration" keys of one-off draws (pool, initial roll-out population)
_WALKER_ITER = -3


# =============================================================================== schedule


def check_ladder(ladder) -> tuple:
    """Validate a ladder of step counts; returns it as a tuple of ints.

    A ladder is a strictly decreasing sequence of at least two positive ints in which every count
    is divisible by the next one (the student's step must cover a whole number of teacher steps).
    """
    if isinstance(ladder, (str, bytes)) or not isinstance(ladder, Sequence):
        raise ValueError(
            f"ladder must be a sequence of step counts such as (100, 20, 4, 2, 1), got {ladder!r}"
        )
    ladder = tuple(ladder)
    if len(ladder) < 2:
        raise ValueError(f"ladder needs at least two step counts (teacher, student), got {ladder!r}")
    for s in ladder:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"ladder step counts must be positive ints, got {s!r} in {ladder!r}")
    for a, b in zip(ladder, ladder[1:]):
        if b >= a:
            raise ValueError(f"ladder must be strictly decreasing, got {a} -> {b} in {ladder!r}")
        if a % b:
            raise ValueError(
                f"ladder steps must divide: {b} does not divide {a} in {ladder!r} "
                f"(a {b}-step student cannot cover whole {a}-step teacher steps)"
            )
    return ladder


def _per_stage(name: str, value, n: int, kind) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but the ladder has {n} stages")
        return tuple(kind(name, v) for v in value)
    return (kind(name, value),) * n


def _int_ge0(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an int >= 0 (or one per stage), got {v!r}")
    return v


def _pos_float(name, v) -> float:
    return check_finite_param(name, v, positive=True)


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``teacher_steps -> student_steps`` with ``substeps = teacher_steps/student_steps``
    teacher steps per student step, learning rate ``lr`` and ``iters`` iterations (before the gate)."""

    index: int
    teacher_steps: int
    student_steps: int
    substeps: int
    lr: float
    iters: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def ladder_schedule(ladder=(100, 20, 4, 2, 1), iters=500, lr=3e-4) -> list[StageSpec]:
    """The stages of a ladder (pure function).

    ``iters`` and ``lr`` are one value for every stage or one per stage.  Stage ``i`` (1-based)
    distils ``ladder[i-1]`` into ``ladder[i]`` steps with ``substeps = ladder[i-1] // ladder[i]``.
    Raises ``ValueError`` for a ladder that is not strictly decreasing with dividing steps.
    """
    ladder = check_ladder(ladder)
    n = len(ladder) - 1
    iters_t = _per_stage("iters", iters, n, _int_ge0)
    lr_t = _per_stage("lr", lr, n, _pos_float)
    return [
        StageSpec(
            index=i + 1, teacher_steps=a, student_steps=b, substeps=a // b, lr=lr_t[i], iters=iters_t[i]
        )
        for i, (a, b) in enumerate(zip(ladder, ladder[1:]))
    ]


def stage_dir_name(spec: StageSpec) -> str:
    return f"stage-{spec.index}-{spec.student_steps}steps"


# =============================================================================== configuration


def _tuple_or_scalar(v):
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distillation ladder (JSON round trip: ``to_dict``/``from_dict``).

    ``ladder``/``iters``/``lr``: see :func:`ladder_schedule`.  ``w``: guidance weight of the first
    (flow-matching) teacher, baked into the students.  ``teacher_solver``: integrator of the flow
    teacher's substeps.  ``states``/``targets``/``pool_size``: see the module docstring.
    ``ema_decay``/``ema_warmup``: EMA of each stage's student (fresh per stage; the EMA weights
    are the student that is saved, evaluated and handed on); with ``ema_warmup`` the decay after
    ``n`` updates is ``min(ema_decay, (1 + n)/(10 + n))``, so no share of the initial (teacher)
    weights lingers at the end of a short stage.  ``warmup_iters``: linear learning-rate warm-up of
    each stage's fresh Adam.  ``dataset``: data for forward states (default: the teacher's).
    ``gate*``: the optional quality gate (module docstring).  ``accel``: the accelerator switches
    (:class:`kaclib.accel.AccelConfig`: bf16 autocast of student and teacher passes, fused Adam,
    channels-last weights, TF32; the default decides per device); :func:`run_ladder` records them
    resolved, and :meth:`to_dict` leaves the default out (configs serialise as before the field).
    """

    ladder: tuple = (100, 20, 4, 2, 1)
    iters: int | tuple = 500
    lr: float | tuple = 3e-4
    w: float = 1.0
    teacher_solver: str = "ab2"
    states: str = "forward"
    targets: str = "online"
    pool_size: int = 4096
    batch_size: int = 128
    grad_clip: float | None = 1.0
    ema_decay: float = 0.99
    ema_warmup: bool = True
    warmup_iters: int = 0
    seed: int = 0
    data_seed: int = 0
    dataset: str | None = None
    gate: bool = False
    gate_n: int = 512
    gate_tol: float = 0.1
    gate_chunk: int = 250
    gate_max_extra: int = 1000
    gate_solver: str = "ab2"
    gate_seed: int = 1234
    checkpoint_every: int = 250
    log_every: int = 50
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self):
        object.__setattr__(self, "accel", AccelConfig.from_dict(self.accel))
        object.__setattr__(self, "ladder", check_ladder(_tuple_or_scalar(self.ladder)))
        object.__setattr__(self, "iters", _tuple_or_scalar(self.iters))
        object.__setattr__(self, "lr", _tuple_or_scalar(self.lr))
        ladder_schedule(self.ladder, self.iters, self.lr)  # validates iters and lr
        object.__setattr__(self, "w", check_guidance_weight(self.w))
        for name, value, allowed in (
            ("teacher_solver", self.teacher_solver, SOLVERS),
            ("gate_solver", self.gate_solver, SOLVERS),
            ("states", self.states, STATES),
            ("targets", self.targets, TARGETS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, minimum in (
            ("pool_size", 1),
            ("batch_size", 1),
            ("warmup_iters", 0),
            ("seed", 0),
            ("data_seed", 0),
            ("gate_n", 2),
            ("gate_chunk", 1),
            ("gate_max_extra", 0),
            ("gate_seed", 0),
            ("checkpoint_every", 0),
            ("log_every", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
        for name, maximum in (("batch_size", MAX_BATCH), ("pool_size", MAX_POOL)):
            v = getattr(self, name)
            if (
                v > maximum
            ):  # a pool holds states and targets: 2 x 3 x 32 x 32 float32 = 24.6 kB per CIFAR tuple
                raise ValueError(
                    f"{name} must be <= {maximum}, got {v!r} (about {v * 24576 / 2**30:.3g} GiB of "
                    "32x32 RGB states and targets: an absurd value that would exhaust memory)"
                )
        if self.grad_clip is not None:
            object.__setattr__(
                self, "grad_clip", check_finite_param("grad_clip", self.grad_clip, positive=True)
            )
        d = check_finite_param("ema_decay", self.ema_decay, nonneg=True)
        if d >= 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        object.__setattr__(self, "ema_decay", d)
        object.__setattr__(self, "gate_tol", check_finite_param("gate_tol", self.gate_tol, nonneg=True))
        for name in ("gate", "ema_warmup"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.dataset is not None and (not isinstance(self.dataset, str) or not self.dataset):
            raise ValueError(f"dataset must be None or a data set name, got {self.dataset!r}")

    def stages(self) -> list[StageSpec]:
        return ladder_schedule(self.ladder, self.iters, self.lr)

    @property
    def total_iters(self) -> int:
        """Iterations of all stages (before any gate extension)."""
        return sum(s.iters for s in self.stages())

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        if self.accel == AccelConfig():
            d.pop("accel")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DistillConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "DistillConfig":
        return dataclasses.replace(self, **changes)


def config_for_profile(profile=None, **changes) -> DistillConfig:
    """The :class:`DistillConfig` of a run profile (:mod:`kaclib.profiles`): its ``distill_ladder``,
    ``distill_iters`` (per stage), ``guidance_w`` and ``batch_size``; the other fields keep the
    defaults of :class:`DistillConfig` (chosen by measurement, see the book); ``changes`` replace
    fields."""
    from .profiles import Profile, get_profile

    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = DistillConfig(
        ladder=tuple(prof.distill_ladder),
        iters=prof.distill_iters,
        w=prof.guidance_w,
        batch_size=prof.batch_size,
    )
    return cfg.replace(**changes) if changes else cfg


# =============================================================================== teachers and hand-off


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
    """What a stage starts from: a frozen ``teacher``, a trainable ``student`` (a copy of the
    teacher), a fresh Adam ``optimizer`` and a fresh EMA ``ema`` of the student."""

    teacher: nn.Module
    student: nn.Module
    optimizer: torch.optim.Optimizer
    ema: AveragedModel


def _ema_avg_fn(decay: float, warmup: bool):
    """``ema <- d ema + (1 - d) theta`` with ``d = min(decay, (1 + n)/(10 + n))`` after ``n``
    updates when ``warmup`` (else ``d = decay``): a short stage's EMA then averages its last
    iterations instead of keeping a share ``decay^iters`` of the initial weights (0.999^500 = 0.61)."""

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
    """The one place where a model becomes a teacher: a frozen deep copy of ``model`` (``eval()``,
    ``requires_grad_(False)``) as the teacher, a second deep copy as the trainable student, a fresh
    Adam optimizer on the student and a fresh EMA of it (first update copies; see
    :func:`_ema_avg_fn` for ``ema_warmup``).

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


# =============================================================================== the two end points


def _grid_times(index: torch.Tensor, steps: int, T: float, dtype) -> torch.Tensor:
    """``T (steps - index)/steps`` computed in float64 (as :func:`kaclib.solvers.time_grid`)."""
    return (T * (steps - index.to(torch.float64)) / steps).to(dtype)


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
    """Integrate ``dx/dt = velocity(x, t, y)`` with ``substeps`` steps of ``method`` from ``t_k`` to
    ``t_{k+1}`` of the ``student_steps`` grid (per-sample ``k``, a ``(B,)`` int tensor).

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
        t = _grid_times(i0 + j, S, T, x.dtype)
        if method == "euler":
            x = x - h * velocity(x, t, y)
        elif method == "midpoint":
            x_mid = x - (0.5 * h) * velocity(x, t, y)
            t_mid = (T * (S - (i0 + j).to(torch.float64) - 0.5) / S).to(x.dtype)
            x = x - h * velocity(x_mid, t_mid, y)
        else:
            u = velocity(x, t, y)
            x = x - h * u if u_prev is None else x - h * (1.5 * u - 0.5 * u_prev)
            u_prev = u
        if states is not None:
            states.append(x)
    return (x, torch.stack(states)) if return_path else x


def student_step(
    student: nn.Module, x: torch.Tensor, k: torch.Tensor, y, student_steps: int, T: float = 1.0
) -> torch.Tensor:
    """The student's one Euler step ``x - Delta u_phi(x, t_k, y)`` (with gradients)."""
    t = _grid_times(k.to(x.device), student_steps, T, x.dtype)
    return x - (T / student_steps) * student(x, t, y)


@dataclass(frozen=True)
class EndpointLoss:
    """The endpoint-only distillation loss of one stage (DistillKac), a callable in the manner of
    EDM's losses: ``(1 / Delta^2) E || x_k - Delta u_phi(x_k, t_k, y) - target ||^2``, ``target``
    the frozen teacher's end point of its ``N`` substeps from ``t_k`` to ``t_{k+1}``
    (:func:`segment_endpoint`) and ``Delta = T / student_steps``.  Dividing by ``Delta^2`` makes it
    the squared error of the student's *velocity* against the teacher's average velocity over the
    interval, so its scale does not depend on the stage."""

    student_steps: int
    T: float = 1.0

    def __call__(
        self, student: nn.Module, x: torch.Tensor, k: torch.Tensor, y, target: torch.Tensor
    ) -> torch.Tensor:
        delta = self.T / self.student_steps
        pred = student_step(student, x, k, y, self.student_steps, self.T)
        return torch.mean((pred.to(target.dtype) - target) ** 2) / delta**2


def _evals_per_substep(method: str) -> int:
    return 2 if method == "midpoint" else 1


# =============================================================================== batch sources


class _Source:
    """Supplies ``(x, k, y, target)`` for iteration ``it``; ``state()``/``load()`` for checkpoints."""

    teacher_samples = 0  # teacher substep-evaluations x samples spent so far (one-off + online)

    def batch(self, it: int, g: torch.Generator):
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load(self, state: dict) -> None:
        pass


class _HookSource(_Source):
    """The ``batch_fn(it, g)`` hook of :func:`train_stage` as a source (stateless: replayed on resume)."""

    def __init__(self, batch_fn):
        self.batch_fn = batch_fn

    def batch(self, it, g):
        return self.batch_fn(it, g)


class _ForwardOnline(_Source):
    def __init__(self, ctx):
        self.ctx = ctx
        self.order = _EpochOrder(ctx.data.shape[0], step_seed(ctx.seed, ctx.spec.index, _S_ORDER))

    def batch(self, it, g):
        c = self.ctx
        idx = batch_indices(self.order, it, c.batch_size).to(c.device)
        x0, y = c.data[idx], c.labels[idx]
        k = torch.randint(c.spec.student_steps, (x0.shape[0],), generator=g, device=c.device)
        x = c.path.sample(x0, _grid_times(k, c.spec.student_steps, c.T, x0.dtype), generator=g).x_t
        return x, k, y, c.target(x, k, y)


class _RolloutOnline(_Source):
    """``batch_size`` teacher trajectories at staggered grid positions, advanced one interval per
    iteration; each restarts from fresh noise and label after reaching ``t = 0``."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.x = self.k = self.y = None

    def init(self):
        c = self.ctx
        B, M = c.batch_size, c.spec.student_steps
        g = torch.Generator(device=c.device).manual_seed(
            step_seed(c.seed, c.spec.index, _WALKER_ITER, _S_WALKERS)
        )
        x = c.path.sample_latent((B,) + c.shape, generator=g, device=c.device, dtype=c.dtype)
        y = torch.randint(c.num_classes, (B,), generator=g, device=c.device)
        k = torch.arange(B, device=c.device) % M  # staggered phases
        for s in range(M - 1):  # roll each trajectory to its phase
            sel = k > s
            if sel.any():
                x[sel] = c.target(x[sel], torch.full((int(sel.sum()),), s, device=c.device), y[sel])
        self.x, self.k, self.y = x, k, y

    def batch(self, it, g):
        c = self.ctx
        if self.x is None:
            self.init()
        x, k, y = self.x, self.k, self.y
        target = c.target(x, k, y)
        nk = k + 1
        done = nk >= c.spec.student_steps
        nx, ny = target.clone(), y.clone()
        if done.any():
            n = int(done.sum())
            nx[done] = c.path.sample_latent((n,) + c.shape, generator=g, device=c.device, dtype=c.dtype)
            ny[done] = torch.randint(c.num_classes, (n,), generator=g, device=c.device)
            nk = torch.where(done, torch.zeros_like(nk), nk)
        self.x, self.k, self.y = nx, nk, ny
        return x, k, y, target

    def state(self):
        return {
            "walkers": None if self.x is None else {"x": self.x.cpu(), "k": self.k.cpu(), "y": self.y.cpu()}
        }

    def load(self, state):
        w = state.get("walkers")
        if w is not None:
            d = self.ctx.device
            self.x, self.k, self.y = w["x"].to(d), w["k"].to(d), w["y"].to(d)


class _Pool(_Source):
    """``pool_size`` tuples computed once (saved in the stage directory) and read in epochs."""

    def __init__(self, ctx, run_dir: Path | None):
        self.ctx, self.run_dir = ctx, run_dir
        self.pool = None
        self.order = None
        self.sha256 = None  # of the pool file: checkpointed, checked when a resumed stage reads it

    def state(self):
        return {"pool_sha256": self.sha256}

    def load(self, state):
        self.sha256 = state.get("pool_sha256")

    def _build(self):
        c = self.ctx
        M, P = c.spec.student_steps, c.pool_size
        g = torch.Generator(device=c.device).manual_seed(step_seed(c.seed, c.spec.index, _POOL_ITER, _S_POOL))
        chunk = max(1, 4 * c.batch_size)
        xs, ks, ys, ts = [], [], [], []
        if c.states == "forward":
            order = _EpochOrder(c.data.shape[0], step_seed(c.seed, c.spec.index, _POOL_ITER, _S_ORDER))
            n_chunks = math.ceil(P / chunk)
            for i in tqdm(
                range(n_chunks), desc=f"stage {c.spec.index} pool", disable=not c.progress, leave=False
            ):
                b = min(chunk, P - i * chunk)
                idx = order[torch.arange(i * chunk, i * chunk + b)].to(c.device)
                x0, y = c.data[idx], c.labels[idx]
                k = torch.randint(M, (b,), generator=g, device=c.device)
                x = c.path.sample(x0, _grid_times(k, M, c.T, x0.dtype), generator=g).x_t
                xs.append(x), ks.append(k), ys.append(y), ts.append(c.target(x, k, y))
        else:  # whole teacher trajectories: M tuples each
            n_traj = math.ceil(P / M)
            n_chunks = math.ceil(n_traj / chunk)
            for i in tqdm(
                range(n_chunks), desc=f"stage {c.spec.index} pool", disable=not c.progress, leave=False
            ):
                b = min(chunk, n_traj - i * chunk)
                x = c.path.sample_latent((b,) + c.shape, generator=g, device=c.device, dtype=c.dtype)
                y = torch.randint(c.num_classes, (b,), generator=g, device=c.device)
                traj = [x]
                for s in range(M):
                    traj.append(c.target(x, torch.full((b,), s, device=c.device, dtype=torch.long), y))
                    x = traj[-1]
                traj = torch.stack(traj, 1)  # (b, M + 1, ...): trajectory-major, so [:P] keeps whole ones
                xs.append(traj[:, :-1].flatten(0, 1)), ts.append(traj[:, 1:].flatten(0, 1))
                ks.append(torch.arange(M, device=c.device).repeat(b)), ys.append(y.repeat_interleave(M))
        pool = {
            "x": torch.cat(xs)[:P],
            "k": torch.cat(ks)[:P],
            "y": torch.cat(ys)[:P],
            "target": torch.cat(ts)[:P],
        }
        return {key: v.contiguous() for key, v in pool.items()}

    def _ensure(self):
        if self.pool is not None:
            return
        c = self.ctx
        f = self.run_dir / POOL_FILE if self.run_dir is not None else None
        if f is not None and f.is_file():
            data = f.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if self.sha256 is not None and sha != self.sha256:
                raise runs.RunDirError(
                    f"{f} does not match its fingerprint in {runs.STATE_FILE} (damaged or replaced)"
                )
            self.pool = {k: v.to(c.device) for k, v in runs.load_tensors(data, f).items()}
            self.sha256 = sha
        else:
            self.pool = self._build()
            if f is not None:
                from safetensors.torch import save

                data = save({k: v.cpu() for k, v in self.pool.items()})
                runs.atomic_write_bytes(f, data)
                self.sha256 = hashlib.sha256(data).hexdigest()
        self.order = _EpochOrder(self.pool["x"].shape[0], step_seed(c.seed, c.spec.index, _S_ORDER))

    def batch(self, it, g):
        self._ensure()
        idx = batch_indices(self.order, it, self.ctx.batch_size).to(self.ctx.device)
        return self.pool["x"][idx], self.pool["k"][idx], self.pool["y"][idx], self.pool["target"][idx]


@dataclass
class _Ctx:
    teacher: TeacherField
    path: object
    spec: StageSpec
    data: torch.Tensor | None
    labels: torch.Tensor | None
    num_classes: int
    seed: int
    batch_size: int
    pool_size: int
    states: str
    device: torch.device
    progress: bool
    shape: tuple
    dtype: torch.dtype
    T: float = 1.0
    counter: list = field(default_factory=lambda: [0])

    def target(self, x, k, y):
        tf = self.teacher
        self.counter[0] += (
            x.shape[0] * self.spec.substeps * _evals_per_substep(tf.solver) * tf.passes_per_eval()
        )
        return segment_endpoint(
            tf.velocity, x, k, y, self.spec.student_steps, self.spec.substeps, self.T, tf.solver
        )


# =============================================================================== one stage


@dataclass
class StageResult:
    """A finished stage.  ``student``: the EMA student (eval mode); ``model``: the raw weights;
    ``teacher``: the frozen teacher it was distilled from; ``iters``: iterations done (gate
    extensions included); ``losses``: this call's per-iteration losses (velocity scale);
    ``teacher_passes``: teacher network passes x samples spent (pool included);
    ``gate``: the gate's evaluations; ``seconds``: wall time of this call."""

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


def _save_stage_checkpoint(
    run_dir: Path, student, ema, optimizer, step, extra: dict, config: dict | None = None
) -> None:
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
            runs.MODEL_FILE: runs.weights_bytes(student, meta),
            runs.EMA_FILE: runs.weights_bytes(ema.module, meta),
            runs.STATE_FILE: runs.save_torch_bytes(state),
        },
        config=config,
        step=step,
    )


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
    """Distil ``teacher`` into ``handoff.student`` for one stage (see the module docstring).

    ``data`` ``(N, ...)``/``labels`` ``(N,)`` are needed for forward states (roll-outs draw labels
    uniformly from ``num_classes``).  With ``run_dir`` (its ``config.json`` already written by the
    caller) checkpoints go there every ``config.checkpoint_every`` iterations and at the end, and
    ``resume=True`` continues from one.  ``gate_fn(student_ema, teacher, spec) -> dict`` with key
    ``"pass"`` implements the quality gate (``run_ladder`` supplies one when ``config.gate``).
    ``callback(iteration, info)`` runs after every iteration.

    Hooks for other few-step methods (:mod:`kaclib.fewstep`): ``loss_fn(student, x, k, y, target)``
    replaces :class:`EndpointLoss` (default ``EndpointLoss(spec.student_steps, path.T)``);
    ``batch_fn(it, g) -> (x, k, y, target)`` replaces the batch source chosen by ``config.states``/
    ``config.targets`` (it must be a pure function of ``it`` and the per-iteration generator ``g``
    so that a resumed stage replays it; the loop hands its four tensors to ``loss_fn`` unchanged).
    """
    if not isinstance(teacher, TeacherField):
        raise ValueError("teacher must be a TeacherField")
    device = torch.device(device)
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
    dtype = data.dtype

    acc = config.accel.resolve(device)
    layout = dataclasses.replace(acc, compile=False)  # channels-last weights (in place), no compile
    student, optimizer, ema = (
        _accel.prepare_model(handoff.student, layout, device),
        handoff.optimizer,
        handoff.ema.to(device),
    )
    frozen = freeze(_accel.prepare_model(teacher.model, layout, device))
    ctx = _Ctx(
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
        dtype=dtype,
        T=float(path.T),
    )
    run_dir = runs.check_run_path(run_dir) if run_dir is not None else None
    lock = contextlib.ExitStack()  # the stage directory's lock, held while the stage trains
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.enter_context(runs.run_lock(run_dir))
        if run_config is None:  # the config.json the caller wrote, else this stage's own
            run_config = (
                runs.read_config(run_dir)
                if (run_dir / runs.CONFIG_FILE).is_file()
                else {"distill": config.to_dict(), "stage": spec.to_dict()}
            )
    try:
        return _train_stage(
            teacher,
            handoff,
            path,
            spec,
            config,
            data,
            labels,
            num_classes,
            device,
            run_dir,
            resume,
            progress,
            callback,
            gate_fn,
            run_config,
            student,
            optimizer,
            ema,
            frozen,
            ctx,
            loss_fn=loss_fn,
            batch_fn=batch_fn,
        )
    finally:
        lock.close()


def _train_stage(
    teacher,
    handoff,
    path,
    spec,
    config,
    data,
    labels,
    num_classes,
    device,
    run_dir,
    resume,
    progress,
    callback,
    gate_fn,
    run_config,
    student,
    optimizer,
    ema,
    frozen,
    ctx,
    loss_fn=None,
    batch_fn=None,
):
    acc = config.accel.resolve(device)
    if batch_fn is not None:
        source = _HookSource(batch_fn)
    elif config.targets == "pool":
        source = _Pool(ctx, run_dir)
    elif config.states == "forward":
        source = _ForwardOnline(ctx)
    else:
        source = _RolloutOnline(ctx)

    start, target_iters, gate_log, spent, last_good = 0, spec.iters, [], 0, None
    if run_dir is not None and runs.has_checkpoint(run_dir):
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a checkpoint: pass resume=True to continue it")
        ckpt, state = load_checkpoint_into(run_dir, student, ema, optimizer)  # verified against its manifest
        try:
            start, target_iters, gate_log = (
                int(state["step"]),
                int(state["target_iters"]),
                list(state["gate"]),
            )
            spent = int(state["teacher_passes"])
            source.load(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise runs.RunDirError(
                f"{run_dir / runs.STATE_FILE}: not the state of this stage ({e})"
            ) from None
        last_good = start
        runs.rewind_metrics(run_dir, ckpt)
    elif run_dir is not None:
        runs.rewind_metrics(run_dir, None)
    ctx.counter[0] = spent

    M = spec.student_steps
    if loss_fn is None:
        loss_fn = EndpointLoss(M, float(path.T))
    clip = config.grad_clip if config.grad_clip is not None else math.inf
    losses = []
    window, window_n = 0.0, 0
    t0 = time.perf_counter()
    last_t, last_step = t0, start
    cap = spec.iters + (config.gate_max_extra if gate_fn is not None else 0)
    bar = tqdm(
        total=target_iters,
        initial=start,
        desc=f"stage {spec.index}: {spec.teacher_steps}->{M} steps",
        disable=not progress,
        dynamic_ncols=True,
    )

    def stop(what, it):
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
            f"stage {spec.index}: {what} at iteration {it}: distillation stopped; {kept} "
            "(a learning rate or guidance weight too large, or a non-finite teacher?)"
        )

    def checkpoint(step):
        nonlocal last_good
        for m in (student, ema.module):
            try:
                runs.check_finite(m, "the student")
            except runs.NonFiniteError:
                stop("non-finite weights (NaN or inf)", step)
        if run_dir is not None:
            extra = {
                "target_iters": target_iters,
                "gate": gate_log,
                "teacher_passes": ctx.counter[0],
                "seed": config.seed,
                **source.state(),
            }
            _save_stage_checkpoint(run_dir, student, ema, optimizer, step, extra, run_config)
            last_good = step

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), bar, _accel.tf32_policy(device, acc):
        it = start
        while True:
            while it < target_iters:
                s_global = step_seed(config.seed, spec.index, it, _S_GLOBAL)
                torch.default_generator.manual_seed(s_global)
                if device.type == "cuda":
                    torch.cuda.manual_seed(s_global)
                g = torch.Generator(device=device).manual_seed(
                    step_seed(config.seed, spec.index, it, _S_BATCH)
                )
                student.train()
                with _accel.autocast(device, acc):  # bf16 passes; states, targets and loss stay fp32
                    x, k, y, target = source.batch(it, g)
                    loss = loss_fn(student, x, k, y, target)
                lr = _lr_at(it, spec.lr, config.warmup_iters)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
                optimizer.step()
                ema.update_parameters(student)
                with torch.no_grad():
                    for b_ema, b_model in zip(ema.module.buffers(), student.buffers()):
                        b_ema.copy_(b_model)
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    stop("non-finite loss (NaN or inf)", it + 1)
                losses.append(lv)
                window += lv
                window_n += 1
                it += 1
                bar.update(1)
                if it % config.log_every == 0 or it == target_iters:
                    now = time.perf_counter()
                    rec = {
                        "step": it,
                        "loss": window / window_n,
                        "grad_norm": float(grad_norm),
                        "lr": lr,
                        "teacher_passes": ctx.counter[0],
                        "elapsed_s": now - t0,
                        "sec_per_iter": (now - last_t) / max(it - last_step, 1),
                    }
                    bar.set_postfix(loss=f"{rec['loss']:.4g}")
                    if run_dir is not None:
                        runs.append_jsonl(run_dir / runs.METRICS_FILE, rec)
                    window, window_n, last_t, last_step = 0.0, 0, now, it
                if config.checkpoint_every and it % config.checkpoint_every == 0 and it < target_iters:
                    checkpoint(it)
                if callback is not None:
                    callback(it, {"loss": lv, "grad_norm": float(grad_norm), "stage": spec.index})
            # the budget is spent: done, or ask the gate (once per step count reached)
            if gate_fn is None:
                break
            if not (gate_log and gate_log[-1]["step"] == it):
                rec = dict(gate_fn(ema.module.eval(), teacher, spec))
                rec["step"] = it
                gate_log.append(rec)
                if run_dir is not None:
                    runs.append_jsonl(run_dir / runs.METRICS_FILE, {"step": it, "gate": rec})
            if gate_log[-1]["pass"] or target_iters >= cap:
                break
            target_iters = min(target_iters + config.gate_chunk, cap)
            bar.total = target_iters
            bar.refresh()
        checkpoint(it)
    student.eval()
    return StageResult(
        spec=spec,
        student=ema.module.eval(),
        model=student,
        teacher=frozen,
        iters=it,
        losses=torch.tensor(losses),
        teacher_passes=ctx.counter[0],
        gate=gate_log,
        seconds=time.perf_counter() - t0,
        run_dir=run_dir,
        resumed_from=start,
    )


# =============================================================================== the ladder


@dataclass
class LadderResult:
    """``stages``: one :class:`StageResult` per stage (stages finished before a resume are loaded,
    with empty ``losses``); ``student``: the last stage's EMA student; ``path``; ``config``;
    ``teacher``: the flow teacher's :class:`kaclib.train.LoadedRun`; ``seconds``: wall time."""

    run_dir: Path
    config: DistillConfig
    stages: list
    student: nn.Module
    path: object
    teacher: object
    seconds: float

    def stage_dirs(self) -> list[Path]:
        return [s.run_dir for s in self.stages]


def _relative(path: Path, ladder_dir: Path) -> str:
    """``path`` relative to the ladder directory (configs hold no absolute paths: a ladder moved or
    copied together with its teacher resumes)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(ladder_dir))


def _teacher_info(loaded, teacher_run_dir: Path, ladder_dir: Path) -> dict:
    raw = runs.read_config(teacher_run_dir)
    distilled = raw.get("distilled")
    ema = runs.read_checkpoint(teacher_run_dir, names=(runs.EMA_FILE,)).manifest["files"][runs.EMA_FILE]
    return {
        "run_dir": _relative(teacher_run_dir, ladder_dir),
        "ema_sha256": ema["sha256"],  # the teacher's identity (its location may change)
        "model": raw["model"],
        "path": raw["path"],
        "dataset": raw.get("dataset"),
        "step": loaded.step,
        "distilled": distilled,
    }


def _make_gate(config: DistillConfig, dataset: str, path, num_classes: int, device):
    """The quality gate: FID of the student (M Euler steps) against its teacher at M steps."""
    from .evaluation import Evaluator, generate

    evaluator = Evaluator(dataset)
    labels = torch.arange(config.gate_n) % num_classes

    def gate(student, teacher: TeacherField, spec: StageSpec) -> dict:
        M = spec.student_steps
        s = generate(
            student,
            path,
            labels,
            M,
            method="euler",
            w=1.0,
            num_classes=num_classes,
            seed=config.gate_seed,
            progress=False,
        )
        if teacher.guided:
            tg = generate(
                teacher.model,
                path,
                labels,
                M,
                method=config.gate_solver,
                w=teacher.w,
                num_classes=num_classes,
                seed=config.gate_seed,
                progress=False,
            )
        else:
            tg = generate(
                teacher.model,
                path,
                labels,
                M,
                method="euler",
                w=1.0,
                num_classes=num_classes,
                seed=config.gate_seed,
                progress=False,
            )
        fs, ft = evaluator.score(s.images, s.labels), evaluator.score(tg.images, tg.labels)
        return {
            "student_fid": fs.fid,
            "teacher_fid": ft.fid,
            "student_accuracy": fs.accuracy,
            "teacher_accuracy": ft.accuracy,
            "metric": fs.metric_name,
            "n": config.gate_n,
            "pass": bool(fs.fid <= ft.fid * (1 + config.gate_tol)),
        }

    return gate


def _stage_config(
    config: DistillConfig, spec: StageSpec, tinfo: dict, dataset: str, teacher_dir: str
) -> dict:
    return {
        "model": tinfo["model"],
        "path": tinfo["path"],
        "dataset": dataset,
        "distilled": {
            "steps": spec.student_steps,
            "sampler": "euler",
            "w": config.w,
            "guidance_baked_in": True,
            "sample_w": 1.0,
            "teacher": teacher_dir,
            "teacher_steps": spec.teacher_steps,
            "substeps": spec.substeps,
            "stage": spec.index,
            "ladder": list(config.ladder),
            "flow_teacher": tinfo["run_dir"],
        },
        "stage": spec.to_dict(),
        "distill": config.to_dict(),
    }


def run_ladder(
    teacher_run_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: DistillConfig | None = None,
    device="cpu",
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    data_root: str | os.PathLike | None = None,
) -> LadderResult:
    """Distil the teacher of ``teacher_run_dir`` down ``config.ladder`` into ``run_dir``.

    The teacher run is opened with :func:`kaclib.train.load_run` (EMA weights).  A flow-matching
    teacher is sampled guided (``config.w``); a teacher that is itself a distilled run (its config
    has a ``"distilled"`` section) is an Euler stepper, and ``config.ladder[0]`` must equal its
    step count.  ``resume=True`` continues an interrupted ladder (finished stages are loaded, the
    interrupted one resumes from its checkpoint; on a new directory it simply starts);
    ``resume=False`` refuses a directory that already holds a ladder.  ``callback(iteration,
    info)`` runs after every iteration (``info["stage"]`` names the stage).
    """
    from .data import load_dataset
    from .train import load_run

    config = config or DistillConfig()
    if not isinstance(config, DistillConfig):
        raise ValueError(f"config must be a DistillConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    device = torch.device(device)
    teacher_run_dir, run_dir = runs.check_run_path(teacher_run_dir), runs.check_run_path(run_dir)
    loaded = load_run(teacher_run_dir, ema=True, device=device)  # verified; refuses a non-finite teacher
    tinfo = _teacher_info(loaded, teacher_run_dir, run_dir)
    num_classes = int(tinfo["model"]["num_classes"])
    dataset = config.dataset or tinfo["dataset"]
    if dataset is None:
        raise ValueError("the teacher's config names no data set: set DistillConfig.dataset")
    if tinfo["distilled"] is not None:
        if int(tinfo["distilled"]["steps"]) != config.ladder[0]:
            raise ValueError(
                f"the teacher is a distilled {tinfo['distilled']['steps']}-step model, "
                f"but the ladder starts at {config.ladder[0]} steps"
            )
    acc = config.accel.resolve(device)
    config = config.replace(
        accel=acc
    )  # recorded as run on this device: a changed arithmetic is a config mismatch
    top = {"distill": config.to_dict(), "teacher": tinfo, "dataset": dataset}
    if (run_dir / runs.CONFIG_FILE).is_file() and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a distillation ladder: pass resume=True to continue it, "
            "or use another run directory"
        )
    # everything that can fail on bad input (teacher, data) comes before the first write
    data = load_dataset(dataset, "train", root=data_root, seed=config.data_seed)
    m = tinfo["model"]
    want = (m.get("in_channels"), m.get("image_size"), m.get("image_size"))
    if None not in want and tuple(data.images.shape[1:]) != want:
        raise ValueError(
            f"data set {dataset} has images of shape {tuple(data.images.shape[1:])}, the teacher makes {want}"
        )
    path = loaded.path
    gate_fn = _make_gate(config, dataset, path, num_classes, device) if config.gate else None
    with runs.writer(run_dir):
        runs.prepare_run_dir(
            run_dir, top, resume=resume, mutable=MUTABLE_FIELDS + ("teacher.run_dir",), rewrite=True
        )
        results, current = _run_stages(
            config,
            run_dir,
            loaded,
            tinfo,
            dataset,
            data,
            path,
            num_classes,
            acc,
            device,
            progress,
            callback,
            gate_fn,
            teacher_run_dir,
        )
    return LadderResult(
        run_dir=run_dir,
        config=config,
        stages=results,
        student=current,
        path=path,
        teacher=loaded,
        seconds=time.perf_counter() - t_start,
    )


def _run_stages(
    config,
    run_dir,
    loaded,
    tinfo,
    dataset,
    data,
    path,
    num_classes,
    acc,
    device,
    progress,
    callback,
    gate_fn,
    teacher_run_dir,
):
    current = loaded.model
    results = []
    teacher_dir = _relative(teacher_run_dir, run_dir)
    for spec in config.stages():
        sdir = run_dir / stage_dir_name(spec)
        first_flow = spec.index == 1 and tinfo["distilled"] is None
        ho = hand_off(
            current, lr=spec.lr, ema_decay=config.ema_decay, ema_warmup=config.ema_warmup, accel=acc
        )
        tf = TeacherField(
            ho.teacher,
            guided=first_flow,
            w=config.w,
            num_classes=num_classes,
            solver=config.teacher_solver if first_flow else "euler",
        )
        scfg = _stage_config(config, spec, tinfo, dataset, teacher_dir)
        stage_mutable = MUTABLE_FIELDS + ("distilled.teacher", "distilled.flow_teacher")
        with runs.writer(sdir):
            runs.prepare_run_dir(sdir, scfg, resume=True, mutable=stage_mutable)
        done = sdir / RESULT_FILE
        if done.is_file():
            summary = runs.read_json_object(done)
            ckpt = runs.read_checkpoint(sdir, names=(runs.MODEL_FILE, runs.EMA_FILE))
            ckpt.load_into(ho.student, runs.MODEL_FILE)
            ckpt.load_into(ho.ema.module, runs.EMA_FILE)
            try:
                res = StageResult(
                    spec=spec,
                    student=ho.ema.module.eval(),
                    model=ho.student.eval(),
                    teacher=ho.teacher,
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
        else:
            res = train_stage(
                tf,
                ho,
                path,
                spec,
                config,
                data.images,
                data.labels,
                num_classes,
                device=device,
                run_dir=sdir,
                resume=True,
                progress=progress,
                callback=callback,
                gate_fn=gate_fn,
                run_config=scfg,
            )
            prev = runs.read_jsonl(sdir / runs.METRICS_FILE)
            losses = [r["loss"] for r in prev if "loss" in r]
            runs.atomic_write_json(
                done,
                {
                    "iters": res.iters,
                    "teacher_passes": res.teacher_passes,
                    "gate": res.gate,
                    "final_loss": losses[-1] if losses else None,
                    "stage": spec.to_dict(),
                },
            )
        results.append(res)
        current = res.student
        teacher_dir = _relative(sdir, run_dir)
    return results, current


def load_ladder(run_dir: str | os.PathLike, device="cpu") -> dict:
    """``{student_steps: LoadedRun}`` of every finished stage of a ladder directory."""
    from .train import load_run

    run_dir = Path(run_dir)
    cfg = DistillConfig.from_dict(runs.read_config(run_dir)["distill"])
    out = {}
    for spec in cfg.stages():
        sdir = run_dir / stage_dir_name(spec)
        if (sdir / RESULT_FILE).is_file():
            out[spec.student_steps] = load_run(sdir, ema=True, device=device)
    return out


def ladder_cache_dir(teacher_dir: str | os.PathLike, config: DistillConfig, root=None) -> Path:
    """Where the benchmarks cache the ladder of ``config`` distilled from the teacher run
    ``teacher_dir``: ``<root>/ladder-<hash>``, the hash of the teacher directory's NAME (teacher
    runs are named by their config hash, so a moved cache still matches) and ``config.to_dict()``.
    ``root`` defaults to :func:`kaclib.artifacts.cache_root`."""
    from .artifacts import cache_root, config_hash

    if not isinstance(config, DistillConfig):
        raise ValueError(f"config must be a DistillConfig, got {type(config).__name__}")
    root = Path(root) if root is not None else cache_root()
    return root / f"ladder-{config_hash({'teacher': Path(teacher_dir).name, 'distill': config.to_dict()})}"
